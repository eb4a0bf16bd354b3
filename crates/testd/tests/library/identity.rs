//! Daemons run as another user and group, with their own umask and
//! resource limits: checked in `/proc/PID/status` and `/proc/PID/limits`
//! of the real daemon. These need root (CI runs as root); elsewhere each
//! says it was skipped.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::PathBuf,
};

use rustix::process::Signal;
use tend::{Error, ProcessState, Rlimit};

use crate::harness::{SOON, Sandbox, Tracked, run_embedder, wait_for};

/// uid and gid of `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: running a daemon as another user needs root");
    false
}

/// A directory in the sandbox that `nobody` may create its socket in (the
/// sandbox itself is 0700): the sandbox opened for traversal only.
fn nobodys_dir(sb: &Sandbox) -> PathBuf {
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let dir = sb.path("n");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

/// The value of `field` in `/proc/<pid>/status`, whitespace-separated.
fn status(pid: u32, field: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Soft and hard value of the limit `what` in `/proc/<pid>/limits`.
fn limit(pid: u32, what: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(what))
        .unwrap_or_else(|| panic!("no {what} in the limits of {pid}"));
    let mut values = line.split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_daemon_runs_with_the_configured_user_groups_umask_and_limits() {
    if !is_root() {
        return;
    }
    let sb = Sandbox::new();
    let socket = nobodys_dir(&sb).join("a.sock");
    let config = sb
        .daemon("a", &[])
        .socket_path(&socket)
        .user("nobody")
        .group("nogroup")
        .supplementary_groups([4242u32])
        .umask(0o027)
        .rlimit(Rlimit::Nofile, Some(256), Some(512))
        .rlimit(Rlimit::Core, Some(0), Some(0));
    let daemon = sb.start(config).await;
    let all = |id: u32| vec![id.to_string(); 4];
    assert_eq!(
        status(daemon.pid, "Uid"),
        all(NOBODY),
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        status(daemon.pid, "Gid"),
        all(NOBODY),
        "real, effective, saved, fs gid"
    );
    let mut groups = status(daemon.pid, "Groups");
    groups.sort();
    assert_eq!(groups, ["4242", "65534"], "none of the manager's groups");
    assert_eq!(status(daemon.pid, "Umask"), ["0027"]);
    assert_eq!(
        limit(daemon.pid, "Max open files"),
        ("256".into(), "512".into())
    );
    assert_eq!(
        limit(daemon.pid, "Max core file size"),
        ("0".into(), "0".into())
    );
    // The daemon made its socket as nobody, and readiness saw it.
    assert_eq!(std::fs::metadata(&socket).unwrap().uid(), NOBODY);

    // A crash leaves nobody's socket behind: the restart removes it as
    // the daemon's own, and the new incarnation has the same identity.
    daemon.signal(Signal::KILL);
    daemon.wait_dead("the killed daemon").await;
    let mut restarted = None;
    wait_for("the daemon to be restarted", SOON, || {
        restarted = sb
            .manager
            .pid("a")
            .ok()
            .flatten()
            .filter(|&p| p != daemon.pid);
        restarted.is_some() && sb.manager.is_running("a")
    })
    .await;
    let restarted = Tracked::new(restarted.unwrap());
    assert_eq!(status(restarted.pid, "Uid"), all(NOBODY));
    sb.manager.stop_process("a").await.unwrap();
    assert_eq!(sb.manager.state("a").unwrap(), ProcessState::Stopped);
}

#[tokio::test]
async fn an_unknown_user_or_group_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &[])
        .user("no-such-user-tend")
        .supplementary_groups(["no-such-group-tend"]);
    let Err(Error::InvalidConfig { problems, .. }) = sb.manager.start_process(config).await else {
        panic!("an unknown user was accepted");
    };
    let text = problems.to_string();
    assert!(
        text.contains("user: no user named \"no-such-user-tend\""),
        "{text}"
    );
    assert!(sb.manager.state("a").is_err(), "nothing was registered");
}

#[tokio::test]
async fn a_daemon_run_as_nobody_still_dies_with_its_sigkilled_manager() {
    if !is_root() {
        return;
    }
    let sb = Sandbox::new();
    let sockets = nobodys_dir(&sb);
    // No guard: only the parent-death signal, armed after the change of
    // user (which clears it), can stop the daemon.
    let (mut app, daemons) = run_embedder(
        &sb.state_dir(),
        &sockets,
        &["a"],
        &[(tend::GUARD_ENV, "0"), ("TEND_EMBEDDER_USER", "nobody")],
    )
    .await;
    let daemon = Tracked::new(daemons[0].1);
    assert_eq!(status(daemon.pid, "Uid")[0], NOBODY.to_string());
    app.kill().await.expect("kill tend-embedder");
    daemon
        .wait_dead("a nobody daemon of a killed manager")
        .await;
}
