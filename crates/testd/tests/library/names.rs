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
    assert!(
        took >= grace,
        "stopped after {took:?}, within the grace of {grace:?}"
    );
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

/// `testd` run through [`testd_with_cut_name`], in its own process group.
fn spawn_with_cut_name(link: &std::path::Path) -> Spawned {
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(link)
        .env_remove("SOCKET_PATH")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn testd through the link");
    let spawned = Spawned { child };
    // The kernel names the process late in exec, after a vfork-style
    // parent has been let go: wait for the name.
    let comm = format!("/proc/{}/comm", spawned.pid());
    let deadline = std::time::Instant::now() + SOON;
    while !std::fs::read(&comm).is_ok_and(|c| c.starts_with(b"testd-")) {
        assert!(std::time::Instant::now() < deadline, "testd was not exec'd");
        std::thread::sleep(Duration::from_millis(1));
    }
    spawned
}

/// A live manager whose name is cut mid-character is alive to another
/// manager's cleanup, which leaves its daemon (named so too) alone.
#[tokio::test]
async fn cleanup_leaves_alone_the_daemon_of_a_live_manager_named_mid_character() {
    let sb = Sandbox::new();
    let link = testd_with_cut_name(&sb);
    let other_manager = spawn_with_cut_name(&link);
    let mut daemon = spawn_with_cut_name(&link);
    assert_name_is_cut(other_manager.pid());
    assert_name_is_cut(daemon.pid());
    let owner = proc_stat(other_manager.pid()).expect("the other manager's stat");
    let stat = proc_stat(daemon.pid()).expect("the daemon's stat");
    let record = serde_json::json!({ "add": {
        "name": "orph",
        "pid": daemon.pid(),
        "pgid": daemon.pid(),
        "sid": stat.sid,
        "start_time": stat.start_time,
        "owner_pid": other_manager.pid(),
        "owner_start_time": owner.start_time,
        "socket_path": null,
        "grace_ms": 500,
    }});
    let dir = sb.orphans_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join(format!(
        "{}.{}.0.journal",
        other_manager.pid(),
        owner.start_time
    ));
    std::fs::write(&journal, format!("{record}\n")).unwrap();
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.owned_by_live_manager, ["orph"], "{report:?}");
    assert!(report.killed.is_empty() && report.stale.is_empty());
    assert!(!daemon.exited(), "the live manager's daemon was killed");
}
