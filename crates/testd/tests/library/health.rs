//! Health checks: a daemon that is alive but no longer serves its socket
//! is restarted.

use std::time::Duration;

use tend::{HealthCheck, HealthProbe, ProcessState};

use crate::harness::*;

fn fast_checks() -> HealthCheck {
    HealthCheck::new(Duration::from_millis(100), Duration::from_millis(100), 2)
}

/// Starts a daemon whose first incarnation has `fault`, then waits for the
/// health checks to replace it with a healthy one; checks the new one.
async fn assert_replaced_by_health_checks(fault: &[&str], probe: HealthProbe) {
    assert_replaced_with_clients(fault, probe, 0).await;
}

/// [`assert_replaced_by_health_checks`], with `clients` connections made
/// to the first incarnation (and held) once it is running.
async fn assert_replaced_with_clients(fault: &[&str], probe: HealthProbe, clients: usize) {
    let sb = Sandbox::new();
    let once = sb.path("once");
    let mut args = fault.to_vec();
    args.extend(["--faults-once", once.to_str().unwrap()]);
    let first = sb
        .start(
            sb.daemon("a", &args)
                .healthcheck(fast_checks())
                .health_probe(probe),
        )
        .await;
    let _clients: Vec<_> = (0..clients)
        .map(|_| std::os::unix::net::UnixStream::connect(sb.socket("a")).expect("connect"))
        .collect();
    let mut info = None;
    wait_for("a to be replaced", SOON, || {
        let now = sb.manager.process_info("a").unwrap();
        let replaced = now.state == ProcessState::Running && now.pid != Some(first.pid);
        info = Some(now);
        replaced
    })
    .await;
    let info = info.unwrap();
    assert_eq!(info.restart_attempts, 1);
    let reason = info.last_error.expect("the failure is recorded");
    assert!(reason.contains("health check"), "{reason}");
    assert!(!first.alive(), "the unhealthy daemon was left running");
    ping(&sb.socket("a")).await.expect("the new daemon accepts");
}

#[tokio::test]
async fn daemon_that_stops_accepting_is_restarted() {
    assert_replaced_by_health_checks(&["--stop-accepting-after", "200"], HealthProbe::Connect)
        .await;
}

/// `--never-accept` listens with a backlog of 1: the readiness connect and
/// one client fill it, and a connect check then fails as a connect would.
#[tokio::test]
async fn daemon_whose_backlog_is_full_is_restarted() {
    assert_replaced_with_clients(&["--never-accept"], HealthProbe::Connect, 1).await;
}

/// Nobody else needs to connect for an accept check to see that a daemon
/// never accepts.
#[tokio::test]
async fn daemon_that_never_accepts_is_restarted_by_accept_checks() {
    assert_replaced_by_health_checks(&["--never-accept"], HealthProbe::Accept).await;
}

#[tokio::test]
async fn daemon_that_accepts_but_never_answers_is_restarted_by_ping_checks() {
    assert_replaced_by_health_checks(&["--wedge"], HealthProbe::Ping).await;
}

#[tokio::test]
async fn failed_health_checks_are_counted() {
    let sb = Sandbox::new();
    // One failure short of a restart: the count shows, the pid stays.
    let mut checks = fast_checks();
    checks.retries = 1000;
    let daemon = sb
        .start(
            sb.daemon("a", &["--stop-accepting-after", "300"])
                .healthcheck(checks),
        )
        .await;
    wait_for("failed health checks to be counted", SOON, || {
        sb.manager.process_info("a").unwrap().failed_health_checks >= 2
    })
    .await;
    let info = sb.manager.process_info("a").unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.pid, Some(daemon.pid));
}
