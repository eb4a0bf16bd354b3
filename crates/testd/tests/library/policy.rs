//! Restart policies, the retry of a failing first start, the stop signal
//! and the "healthy" event.

use std::time::Duration;

use tend::{
    BackgroundProcessConfig, Error, ExitStatus, HealthCheck, ProcessState, RestartPolicy,
    StopSignal,
};

use crate::harness::*;

/// A socket-less worker that records each start in `starts`, exits with
/// `code` after `ms`, and is restarted quickly.
fn exiting(sb: &Sandbox, name: &str, code: &str, ms: &str) -> BackgroundProcessConfig {
    let starts = sb.path(&format!("{name}.starts"));
    sb.worker(
        name,
        &[
            "--never-bind",
            "--record-start",
            starts.to_str().unwrap(),
            "--exit-after",
            ms,
            "--exit-code",
            code,
        ],
    )
}

fn starts(sb: &Sandbox, name: &str) -> usize {
    lines(&sb.path(&format!("{name}.starts"))).len()
}

async fn wait_state(sb: &Sandbox, name: &str, state: ProcessState) -> tend::ProcessInfo {
    let mut info = None;
    wait_for(&format!("{name} to be {state}"), SOON, || {
        let now = sb.manager.process_info(name).unwrap();
        let reached = now.state == state;
        info = Some(now);
        reached
    })
    .await;
    info.unwrap()
}

#[tokio::test]
async fn on_failure_leaves_a_clean_exit_stopped_and_completed() {
    let sb = Sandbox::new();
    let config = exiting(&sb, "task", "0", "50").restart(RestartPolicy::OnFailure);
    let _daemon = sb.start(config).await;
    let info = wait_state(&sb, "task", ProcessState::Stopped).await;
    assert!(info.completed, "{info:?}");
    assert_eq!(info.last_exit, Some(ExitStatus::Code(0)));
    assert_eq!(info.last_error, None);
    assert_eq!(info.restart_attempts, 0);
    assert_eq!(starts(&sb, "task"), 1, "a completed task is not run again");
}

#[tokio::test]
async fn on_failure_restarts_a_failing_exit() {
    let sb = Sandbox::new();
    let config = exiting(&sb, "task", "3", "50")
        .restart(RestartPolicy::OnFailure)
        .max_restart_attempts(2);
    let _daemon = sb.start(config).await;
    let info = wait_state(&sb, "task", ProcessState::Error).await;
    assert!(!info.completed);
    assert_eq!(starts(&sb, "task"), 3, "the first run and two restarts");
    let reason = info.last_error.unwrap();
    assert!(
        reason.contains("exited with code 3; gave up after 2 restarts"),
        "{reason}"
    );
}

#[tokio::test]
async fn never_ends_a_failure_in_error_without_a_restart() {
    let sb = Sandbox::new();
    let config = exiting(&sb, "task", "4", "50").restart(RestartPolicy::Never);
    let _daemon = sb.start(config).await;
    let info = wait_state(&sb, "task", ProcessState::Error).await;
    assert_eq!(starts(&sb, "task"), 1);
    let reason = info.last_error.unwrap();
    assert!(
        reason.contains("exited with code 4; restart = never"),
        "{reason}"
    );
}

#[tokio::test]
async fn never_completes_a_one_shot_task_and_a_new_start_clears_the_mark() {
    let sb = Sandbox::new();
    let config = exiting(&sb, "task", "0", "50").restart(RestartPolicy::Never);
    let _first = sb.start(config.clone()).await;
    let info = wait_state(&sb, "task", ProcessState::Stopped).await;
    assert!(info.completed);
    sb.manager.start_process(config).await.unwrap();
    // Running, or already completed again: either way the mark was reset
    // in between, which a second `completed` with two starts proves.
    let info = wait_state(&sb, "task", ProcessState::Stopped).await;
    assert!(info.completed);
    assert_eq!(starts(&sb, "task"), 2);
}

#[tokio::test]
async fn always_restarts_a_clean_exit_as_before() {
    let sb = Sandbox::new();
    let config = exiting(&sb, "task", "0", "50").max_restart_attempts(1);
    assert_eq!(config.restart, RestartPolicy::Always);
    let _daemon = sb.start(config).await;
    let info = wait_state(&sb, "task", ProcessState::Error).await;
    assert!(!info.completed);
    assert_eq!(starts(&sb, "task"), 2);
}

#[tokio::test]
async fn a_failing_first_start_fails_at_once_by_default() {
    let sb = Sandbox::new();
    let starts_file = sb.path("a.starts");
    let config = sb.daemon(
        "a",
        &[
            "--record-start",
            starts_file.to_str().unwrap(),
            "--fail-starts",
            "1",
        ],
    );
    let error = sb.manager.start_process(config).await.unwrap_err();
    assert!(matches!(error, Error::ExitedBeforeReady { .. }), "{error}");
    assert_eq!(lines(&starts_file).len(), 1);
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Error));
}

#[tokio::test]
async fn a_failing_first_start_is_retried_when_asked() {
    let sb = Sandbox::new();
    let starts_file = sb.path("a.starts");
    let config = sb
        .daemon(
            "a",
            &[
                "--record-start",
                starts_file.to_str().unwrap(),
                "--fail-starts",
                "2",
            ],
        )
        .retry_first_start(true);
    let daemon = sb.start(config).await;
    assert!(daemon.alive());
    assert_eq!(
        lines(&starts_file).len(),
        3,
        "two failed starts, then one that ran"
    );
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.restart_attempts, 2);
    ping(&sb.socket("a")).await.unwrap();
}

#[tokio::test]
async fn a_retried_first_start_gives_up_after_the_budget_with_the_last_error() {
    let sb = Sandbox::new();
    let starts_file = sb.path("a.starts");
    let config = sb
        .daemon(
            "a",
            &[
                "--record-start",
                starts_file.to_str().unwrap(),
                "--fail-starts",
                "10",
                "--exit-code",
                "9",
            ],
        )
        .retry_first_start(true)
        .max_restart_attempts(2);
    let error = sb.manager.start_process(config).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::ExitedBeforeReady {
                status: ExitStatus::Code(9),
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(lines(&starts_file).len(), 3);
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Error);
    assert!(
        info.last_error.unwrap().contains("after 2 retries"),
        "the status says the start was retried"
    );
}

#[tokio::test]
async fn the_stop_signal_is_the_one_configured() {
    let sb = Sandbox::new();
    for signal in [StopSignal::Int, StopSignal::Quit, StopSignal::Hup] {
        let name = format!("d{}", signal.number());
        let record = sb.path(&format!("{name}.signal"));
        let config = sb
            .daemon(&name, &["--record-signal", record.to_str().unwrap()])
            .stop_signal(signal);
        let daemon = sb.start(config).await;
        sb.manager.stop_process(&name).await.unwrap();
        assert!(!daemon.alive());
        assert_eq!(lines(&record), [signal.name()]);
        let info = sb.manager.process_info(&name).unwrap();
        assert_eq!(info.state, ProcessState::Stopped);
        assert!(!info.completed, "a requested stop is no completion");
    }
}

#[tokio::test]
async fn a_daemon_deaf_to_its_stop_signal_is_still_killed_after_the_grace_period() {
    let sb = Sandbox::new();
    // testd without --record-signal stops on SIGTERM and SIGINT only, and
    // SIGWINCH is ignored by default: it never acts on it.
    let grace = Duration::from_millis(300);
    let config = sb
        .daemon("a", &[])
        .stop_signal(StopSignal::Winch)
        .shutdown_grace_period(grace);
    let daemon = sb.start(config).await;
    let began = tokio::time::Instant::now();
    within("stop", SOON, sb.manager.stop_process("a"))
        .await
        .unwrap();
    assert!(
        began.elapsed() >= grace,
        "killed only after the grace period"
    );
    assert!(!daemon.alive());
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Stopped));
}

#[tokio::test]
async fn the_first_passed_health_check_is_an_event_and_a_flag() {
    let sb = Sandbox::new();
    let mut events = sb.manager.subscribe();
    let config = sb.daemon("a", &[]).healthcheck(HealthCheck::new(
        Duration::from_millis(50),
        Duration::from_secs(5),
        3,
    ));
    let _daemon = sb.start(config).await;
    within("the healthy event", SOON, async {
        loop {
            let event = events.recv().await.unwrap();
            if event.reason.starts_with("healthy") {
                assert_eq!(
                    (event.from, event.to),
                    (ProcessState::Running, ProcessState::Running)
                );
                assert!(event.from.can_change_to(event.to));
                break;
            }
        }
    })
    .await;
    let info = sb.manager.process_info("a").unwrap();
    assert!(info.passed_health_check);
    assert!(info.started_at.is_some(), "the start time is kept");
}
