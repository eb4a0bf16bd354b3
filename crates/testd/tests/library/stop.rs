//! Stopping: graceful and forced, whole process groups, cancelling a
//! start, stop_all, restart_process.

use std::{future::Future, time::Duration};

use tend::{BackgroundProcessManager, Error, ExitStatus, ProcessState};
use tokio::time::Instant;

use crate::harness::*;

#[tokio::test]
async fn stop_leaves_the_daemon_stopped_dead_and_without_socket() {
    let sb = Sandbox::new();
    let daemon = sb.start(sb.daemon("a", &[])).await;
    sb.manager.stop_process("a").await.unwrap();
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Stopped);
    assert_eq!(info.pid, None);
    assert!(!daemon.alive());
    assert!(!sb.socket("a").exists());
}

#[tokio::test]
async fn stop_of_a_cooperative_daemon_does_not_wait_out_the_grace_period() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &[])
        .shutdown_grace_period(Duration::from_secs(30));
    let _daemon = sb.start(config).await;
    let began = Instant::now();
    within(
        "stop",
        Duration::from_secs(25),
        sb.manager.stop_process("a"),
    )
    .await
    .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "stop took {:?} with a 30 s grace period",
        began.elapsed()
    );
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

#[tokio::test]
async fn daemon_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sb = Sandbox::new();
    let grace = Duration::from_millis(500);
    let config = sb
        .daemon("a", &["--ignore-sigterm"])
        .shutdown_grace_period(grace);
    let daemon = sb.start(config).await;
    let began = Instant::now();
    sb.manager.stop_process("a").await.unwrap();
    assert!(
        began.elapsed() >= grace,
        "stopped after {:?}",
        began.elapsed()
    );
    assert!(!daemon.alive());
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Stopped);
    assert_eq!(info.last_exit, Some(ExitStatus::Signal(9)));
}

#[tokio::test]
async fn stop_kills_the_children_in_the_daemon_group() {
    let sb = Sandbox::new();
    let _daemon = sb.start(sb.daemon("a", &["--fork-children", "2"])).await;
    let children = sb.wait_for_pids("a", "child ", 2).await;
    assert!(children.iter().all(Tracked::alive));
    sb.manager.stop_process("a").await.unwrap();
    for child in &children {
        assert!(!child.alive(), "child {} outlived the stop", child.pid);
    }
}

#[tokio::test]
async fn stop_kills_children_that_ignore_sigterm_after_the_grace_period() {
    let sb = Sandbox::new();
    let grace = Duration::from_millis(500);
    let config = sb
        .daemon("a", &["--fork-children", "2", "--children-ignore-sigterm"])
        .shutdown_grace_period(grace);
    let _daemon = sb.start(config).await;
    let children = sb.wait_for_pids("a", "child ", 2).await;
    let began = Instant::now();
    sb.manager.stop_process("a").await.unwrap();
    assert!(
        began.elapsed() >= grace,
        "stopped after {:?}",
        began.elapsed()
    );
    for child in &children {
        assert!(!child.alive(), "child {} outlived the stop", child.pid);
    }
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

/// Starts daemon `a`, which never binds, in the background; once it is
/// `starting` with a PID, runs `stop` and checks that the pending start
/// fails as stopped and that the daemon is gone.
async fn assert_stop_cancels_a_pending_start<F: Future<Output = ()>>(
    stop: impl FnOnce(BackgroundProcessManager) -> F,
) {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &["--never-bind"])
        .startup_timeout(Duration::from_secs(30));
    let manager = sb.manager.clone();
    let start = tokio::spawn(async move { manager.start_process(config).await });
    let mut pid = None;
    wait_for("a to be starting with a pid", SOON, || {
        let info = sb.manager.process_info("a").ok();
        pid = info
            .filter(|i| i.state == ProcessState::Starting)
            .and_then(|i| i.pid);
        pid.is_some()
    })
    .await;
    let daemon = Tracked::new(pid.unwrap());
    let began = Instant::now();
    stop(sb.manager.clone()).await;
    assert!(began.elapsed() < Duration::from_secs(10));
    let result = within("the cancelled start", SOON, start).await.unwrap();
    assert!(matches!(result, Err(Error::Stopped(_))), "{result:?}");
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
    assert!(!daemon.alive());
}

#[tokio::test]
async fn stop_during_starting_cancels_the_start() {
    assert_stop_cancels_a_pending_start(|manager| async move {
        manager.stop_process("a").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn second_stop_during_a_stop_returns_once_the_group_is_gone() {
    let sb = Sandbox::new();
    let grace = Duration::from_millis(500);
    let config = sb
        .daemon("a", &["--ignore-sigterm"])
        .shutdown_grace_period(grace);
    let daemon = sb.start(config).await;
    let first = async {
        sb.manager.stop_process("a").await.unwrap();
        assert!(!daemon.alive(), "the first stop returned early");
    };
    let second = async {
        wait_for("a to be stopping", SOON, || {
            sb.manager.state("a").ok() == Some(ProcessState::Stopping)
        })
        .await;
        sb.manager.stop_process("a").await.unwrap();
        assert!(!daemon.alive(), "the second stop returned early");
    };
    tokio::join!(first, second);
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

#[tokio::test]
async fn stop_all_cancels_a_pending_start() {
    assert_stop_cancels_a_pending_start(|manager| async move {
        manager.stop_all_processes().await;
    })
    .await;
}

#[tokio::test]
async fn stop_of_a_stopped_process_does_nothing() {
    let sb = Sandbox::new();
    let _daemon = sb.start(sb.daemon("a", &[])).await;
    sb.manager.stop_process("a").await.unwrap();
    sb.manager.stop_process("a").await.unwrap();
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

#[tokio::test]
async fn stop_of_a_process_in_error_does_nothing() {
    let sb = Sandbox::new();
    sb.manager
        .start_process(sb.daemon("a", &["--exit-immediately"]))
        .await
        .unwrap_err();
    sb.manager.stop_process("a").await.unwrap();
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Error));
}

#[tokio::test]
async fn stop_of_an_unknown_name_is_an_error() {
    let sb = Sandbox::new();
    let error = sb.manager.stop_process("nobody").await.unwrap_err();
    assert!(
        matches!(error, Error::UnknownProcess(ref n) if n == "nobody"),
        "{error:?}"
    );
}

#[tokio::test]
async fn stop_all_stops_every_daemon_in_parallel() {
    let sb = Sandbox::new();
    let names = ["a", "b", "c", "d", "e"];
    let mut daemons = Vec::new();
    for name in names {
        daemons.push(sb.start(sb.daemon(name, &["--term-delay", "500"])).await);
    }
    let began = Instant::now();
    sb.manager.stop_all_processes().await;
    // One after the other would take at least 5 × 500 ms.
    assert!(
        began.elapsed() < Duration::from_millis(2400),
        "stop_all took {:?}",
        began.elapsed()
    );
    for (name, daemon) in names.iter().zip(&daemons) {
        assert_eq!(
            sb.manager.state(name).ok(),
            Some(ProcessState::Stopped),
            "{name}"
        );
        assert!(!daemon.alive(), "{name}");
    }
}

#[tokio::test]
async fn starts_are_refused_after_stop_all() {
    let sb = Sandbox::new();
    let _daemon = sb.start(sb.daemon("a", &[])).await;
    sb.manager.stop_all_processes().await;
    let error = sb
        .manager
        .start_process(sb.daemon("b", &[]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ShuttingDown(_)), "{error:?}");
    let error = sb
        .manager
        .start_process(sb.daemon("a", &[]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ShuttingDown(_)), "{error:?}");
    assert_eq!(sb.manager.state("b").ok(), None);
}

#[tokio::test]
async fn restart_process_runs_a_new_incarnation() {
    let sb = Sandbox::new();
    let first = sb.start(sb.daemon("a", &[])).await;
    sb.manager.restart_process("a").await.unwrap();
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Running);
    let second = Tracked::new(info.pid.unwrap());
    assert_ne!(second.pid, first.pid);
    assert!(!first.alive());
    assert!(second.alive());
    ping(&sb.socket("a")).await.expect("the new daemon accepts");
}

#[tokio::test]
async fn dropping_the_manager_kills_its_daemons() {
    let sb = Sandbox::new();
    let config = sb.daemon("a", &["--ignore-sigterm", "--fork-children", "1"]);
    let daemon = sb.start(config).await;
    let children = sb.wait_for_pids("a", "child ", 1).await;
    let Sandbox { manager, dir: _dir } = sb;
    drop(manager);
    daemon.wait_dead("the daemon of a dropped manager").await;
    for child in &children {
        child
            .wait_dead("the child of a dropped manager's daemon")
            .await;
    }
}

/// A daemon killed at the end of its grace period (by `cgroup.kill` with
/// cgroup containment) starts again normally under the same name: this
/// kernel SIGKILLs every child `clone3` puts into a cgroup killed before,
/// so tend replaces (or joins the slow way) a cgroup it killed.
#[tokio::test]
async fn a_daemon_killed_after_its_grace_starts_again_under_its_name() {
    let sb = Sandbox::new();
    for round in 0..3 {
        let config = sb
            .daemon("stubborn", &["--ignore-sigterm"])
            .shutdown_grace_period(Duration::from_millis(100));
        let daemon = sb.start(config).await;
        within("stop", SOON, sb.manager.stop_process("stubborn"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(!daemon.alive(), "round {round}");
    }
}
