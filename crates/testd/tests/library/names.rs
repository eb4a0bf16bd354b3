//! Daemons whose process name is not UTF-8: the kernel keeps 15 bytes of
//! the file name exec'd, cutting `testd-демон-плагин` in the middle of a
//! character. tend must still see such processes as alive.

use std::{path::PathBuf, time::Duration};

use tend::ProcessState;
use tokio::time::Instant;

use crate::harness::*;

/// The name of the reported case, 30 bytes, cut by the kernel to 15 bytes
/// ending in the first byte of "н".
const NAME: &str = "testd-демон-плагин";

/// A symlink to `testd` named [`NAME`] in the sandbox: exec'ing it gives
/// the process (and the children it forks) a name that is not UTF-8.
fn testd_with_cut_name(sb: &Sandbox) -> PathBuf {
    let link = sb.path(NAME);
    std::os::unix::fs::symlink(testd(), &link).expect("symlink to testd");
    link
}

/// The name as the kernel keeps it, checked on a live process.
fn assert_name_is_cut(pid: u32) {
    let comm = std::fs::read(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm, b"testd-\xd0\xb4\xd0\xb5\xd0\xbc\xd0\xbe\xd0\n");
}

#[tokio::test]
async fn stop_waits_for_a_member_named_mid_character_and_kills_it_after_the_grace() {
    let sb = Sandbox::new();
    let grace = Duration::from_secs(2);
    let config = tend::BackgroundProcessConfig::new("a", testd_with_cut_name(&sb))
        .args(["--fork-children", "1", "--children-ignore-sigterm"])
        .socket_path(sb.socket("a"))
        .startup_timeout(Duration::from_secs(10))
        .shutdown_grace_period(grace);
    let leader = sb.start(config).await;
    let children = sb.wait_for_pids("a", "child ", 1).await;
    assert_name_is_cut(leader.pid);
    assert_name_is_cut(children[0].pid);

    // The spawn wrote an orphan record naming the daemon.
    let journals: Vec<String> = std::fs::read_dir(sb.orphans_dir())
        .expect("orphans directory")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        journals
            .iter()
            .any(|j| j.contains("\"name\":\"a\"") && j.contains(&format!("\"pid\":{}", leader.pid))),
        "no orphan record for daemon a (pid {}) in {journals:?}",
        leader.pid
    );

    let began = Instant::now();
    sb.manager.stop_process("a").await.unwrap();
    let took = began.elapsed();
    assert!(
        !children[0].alive(),
        "the member that ignores SIGTERM outlived the stop"
    );
    assert!(took >= grace, "stopped after {took:?}, within the grace of {grace:?}");
    assert_eq!(sb.manager.state("a"), Some(ProcessState::Stopped));
}
