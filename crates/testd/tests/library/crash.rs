//! Crashes after readiness: restarts, the restart budget, and its reset.

use std::time::Duration;

use rustix::process::Signal;
use tend::{ExitStatus, ProcessInfo, ProcessState};
use tokio::time::Instant;

use crate::harness::*;

/// Waits until `name` runs under a PID other than `old` and returns its
/// snapshot at that moment.
async fn wait_restarted(sb: &Sandbox, name: &str, old: u32) -> ProcessInfo {
    let mut info = None;
    wait_for(
        &format!("{name} to run again under a new pid"),
        SOON,
        || {
            let now = sb.manager.process_info(name).unwrap();
            let restarted = now.state == ProcessState::Running && now.pid.is_some_and(|p| p != old);
            info = Some(now);
            restarted
        },
    )
    .await;
    info.unwrap()
}

#[tokio::test]
async fn killed_daemon_is_restarted_with_a_new_pid() {
    let sb = Sandbox::new();
    let first = sb.start(sb.daemon("a", &[])).await;
    first.signal(Signal::KILL);
    let info = wait_restarted(&sb, "a", first.pid).await;
    assert_eq!(info.restart_attempts, 1);
    assert_eq!(info.last_exit, Some(ExitStatus::Signal(9)));
    let reason = info.last_error.expect("the crash is recorded");
    assert!(reason.contains("signal 9"), "{reason}");
    let second = Tracked::new(info.pid.unwrap());
    assert!(second.alive());
    ping(&sb.socket("a")).await.expect("the new daemon accepts");
}

#[tokio::test]
async fn daemon_that_exits_by_itself_is_restarted_and_its_exit_recorded() {
    let sb = Sandbox::new();
    let once = sb.path("once");
    let first = sb
        .start(sb.daemon(
            "a",
            &[
                "--exit-after",
                "300",
                "--exit-code",
                "7",
                "--faults-once",
                once.to_str().unwrap(),
            ],
        ))
        .await;
    let info = wait_restarted(&sb, "a", first.pid).await;
    assert_eq!(info.restart_attempts, 1);
    assert_eq!(info.last_exit, Some(ExitStatus::Code(7)));
    let reason = info.last_error.expect("the crash is recorded");
    assert!(reason.contains("code 7"), "{reason}");
}

#[tokio::test]
async fn aborted_daemon_is_restarted_and_its_signal_recorded() {
    let sb = Sandbox::new();
    let once = sb.path("once");
    let first = sb
        .start(sb.daemon(
            "a",
            &[
                "--abort-after",
                "300",
                "--faults-once",
                once.to_str().unwrap(),
            ],
        ))
        .await;
    let info = wait_restarted(&sb, "a", first.pid).await;
    assert_eq!(info.restart_attempts, 1);
    assert_eq!(info.last_exit, Some(ExitStatus::Signal(6)));
    let reason = info.last_error.expect("the crash is recorded");
    assert!(reason.contains("SIGABRT"), "{reason}");
}

#[tokio::test]
async fn gives_up_after_max_restart_attempts_with_the_reason() {
    let sb = Sandbox::new();
    let starts = sb.path("starts");
    let config = sb
        .daemon(
            "a",
            &[
                "--exit-after",
                "300",
                "--exit-code",
                "4",
                "--stderr",
                "oops",
                "--record-start",
                starts.to_str().unwrap(),
            ],
        )
        .max_restart_attempts(2);
    sb.manager.start_process(config).await.unwrap();
    wait_for("a to give up", SOON, || {
        sb.manager.state("a").ok() == Some(ProcessState::Error)
    })
    .await;
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.pid, None);
    assert_eq!(info.last_exit, Some(ExitStatus::Code(4)));
    let reason = info.last_error.expect("the reason is recorded");
    assert!(reason.contains("code 4"), "{reason}");
    assert!(reason.contains("gave up after 2 restarts"), "{reason}");
    assert!(reason.contains("oops"), "{reason}");
    let spawned = pids_in(&lines(&starts), "");
    assert_eq!(spawned.len(), 1 + 2, "spawns: {spawned:?}");
    assert!(spawned.iter().all(|&pid| !alive(pid)));
}

#[tokio::test]
async fn restart_counter_resets_after_a_stable_run() {
    let sb = Sandbox::new();
    // With one restart allowed, a second crash would be fatal unless the
    // counter went back to zero in between.
    let config = sb
        .daemon("a", &[])
        .max_restart_attempts(1)
        .stable_period(Duration::from_millis(300));
    let first = sb.start(config).await;
    first.signal(Signal::KILL);
    let info = wait_restarted(&sb, "a", first.pid).await;
    assert_eq!(info.restart_attempts, 1);
    let second = Tracked::new(info.pid.unwrap());
    wait_for("the restart counter to reset", SOON, || {
        sb.manager.process_info("a").unwrap().restart_attempts == 0
    })
    .await;
    second.signal(Signal::KILL);
    let info = wait_restarted(&sb, "a", second.pid).await;
    assert_eq!(info.restart_attempts, 1);
}

#[tokio::test]
async fn children_of_a_crashed_daemon_are_killed_before_the_restart() {
    let sb = Sandbox::new();
    // Children that ignore SIGTERM die only if tend waits for the whole
    // group (and SIGKILLs it after the grace period) before restarting.
    let config = sb
        .daemon("a", &["--fork-children", "2", "--children-ignore-sigterm"])
        .shutdown_grace_period(Duration::from_millis(300));
    let first = sb.start(config).await;
    let children = sb.wait_for_pids("a", "child ", 2).await;
    first.signal(Signal::KILL);
    wait_restarted(&sb, "a", first.pid).await;
    for child in &children {
        assert!(!child.alive(), "child {} of the crashed daemon", child.pid);
    }
}

#[tokio::test]
async fn stop_during_the_restart_delay_cancels_the_restart() {
    let sb = Sandbox::new();
    let starts = sb.path("starts");
    let config = sb
        .daemon("a", &["--record-start", starts.to_str().unwrap()])
        .restart_delay(Duration::from_secs(60));
    let first = sb.start(config).await;
    first.signal(Signal::KILL);
    wait_for("a to wait for its restart", SOON, || {
        let info = sb.manager.process_info("a").unwrap();
        info.state == ProcessState::Starting && info.pid.is_none()
    })
    .await;
    let began = Instant::now();
    within("stop", SOON, sb.manager.stop_process("a"))
        .await
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "waited out the delay"
    );
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
    assert_eq!(lines(&starts).len(), 1, "the restart happened anyway");
}

/// Output explains a failure only where the daemon ended on its own: a
/// kill by a signal is reported without the stderr tail, and the event of
/// the restart says when and which attempt it is.
#[tokio::test]
async fn a_signal_death_carries_no_stderr_tail_and_the_restart_is_announced() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let first = sb
        .start(
            sb.daemon("a", &["--stderr", "unrelated noise"])
                .max_restart_attempts(3),
        )
        .await;
    first.signal(Signal::KILL);
    let info = wait_restarted(&sb, "a", first.pid).await;
    let reason = info.last_error.expect("the crash is recorded");
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert!(!reason.contains("unrelated noise"), "{reason}");
    let restarting = loop {
        let event = tokio::time::timeout(SOON, events.recv())
            .await
            .expect("an event in time")
            .expect("the manager is alive");
        if event.from == ProcessState::Running && event.to == ProcessState::Starting {
            break event.reason;
        }
    };
    assert!(
        restarting.contains("restarting in ") && restarting.ends_with(", attempt 1 of 3"),
        "{restarting}"
    );
}
