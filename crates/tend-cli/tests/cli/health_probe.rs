//! `probe = "ping"` restarts a daemon that accepts connections but never
//! answers; `probe = "connect"` does not notice it.

use std::time::Instant;

use crate::harness::*;

#[test]
fn a_wedged_daemon_is_restarted_by_the_ping_probe_only() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let daemon = |name: &str, probe: &str| {
        format!(
            r#"
[process.{name}]
command = "{testd}"
args = ["--wedge"]
socket = "{name}.sock"
restart_delay = "100ms"

[process.{name}.healthcheck]
probe = "{probe}"
interval = "200ms"
timeout = "200ms"
retries = 2
"#,
            testd = testd.display(),
        )
    };
    let config = sandbox.config(&(daemon("pinged", "ping") + &daemon("connected", "connect")));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("pinged", "running"), ("connected", "running")],
    );
    let connected = Tracked::new(pid_of(process(&processes, "connected")));

    // Two pings time out in a row: the pinged daemon is restarted.
    let mut last = Vec::new();
    let deadline = Instant::now() + SOON;
    wait_until("the pinged daemon to be restarted", deadline, || {
        last = status(&sandbox, &config).unwrap_or_default();
        last.iter().any(|p| {
            p["name"] == "pinged" && p["restart_attempts"].as_u64().is_some_and(|n| n >= 1)
        })
    });
    let pinged = process(&last, "pinged");
    let reason = pinged["last_error"].as_str().unwrap_or_default();
    assert!(reason.contains("ping"), "{pinged}");

    // Over the same time the connect probe, which the daemon answers by
    // accepting, found nothing wrong.
    let connected_now = process(&last, "connected");
    assert_eq!(connected_now["state"], "running", "{connected_now}");
    assert_eq!(connected_now["restart_attempts"], 0, "{connected_now}");
    assert_eq!(connected_now["failed_health_checks"], 0, "{connected_now}");
    assert_eq!(pid_of(connected_now), connected.pid);
    assert!(connected.alive());
    sandbox.run(&["down", "-c", c]).expect_success();
}
