//! up → status JSON → stop / start / restart → logs → down, with the
//! Python example daemon and a native one.

use std::{process::Stdio, time::Instant};

use crate::harness::*;

fn config(sandbox: &Sandbox) -> std::path::PathBuf {
    let testd = testd();
    let echo = example_daemons().join("echo_daemon.py");
    sandbox.config(&format!(
        r#"
[process.echo]
command = "python3"
args = ["{echo}"]
socket = "echo.sock"
startup_timeout = "20s"

[process.echo.healthcheck]
interval = "200ms"
timeout = "2s"
retries = 3

[process.native]
command = "{testd}"
args = ["--stdout", "hello from native"]
socket = "native.sock"
startup_timeout = "20s"
"#,
        echo = echo.display(),
        testd = testd.display(),
    ))
}

#[test]
fn up_status_stop_start_restart_logs_down() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);

    // status --json: every documented field, for both daemons.
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("echo", "running"), ("native", "running")],
    );
    for process in &processes {
        for field in [
            "name",
            "state",
            "pid",
            "restart_attempts",
            "failed_health_checks",
            "last_error",
        ] {
            assert!(process.get(field).is_some(), "{field} missing in {process}");
        }
    }
    let echo = Tracked::new(pid_of(process(&processes, "echo")));
    let native = Tracked::new(pid_of(process(&processes, "native")));
    assert!(echo.alive() && native.alive());
    assert!(sandbox.state_dir().join("echo.sock").exists());

    // The table.
    let table = sandbox.run(&["status", "-c", c]);
    table.expect_success();
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("native"), "{}", table.stdout);

    // stop returns once the daemon is gone.
    sandbox.run(&["stop", "native", "-c", c]).expect_success();
    assert!(!native.alive(), "stop returned while the daemon lived");
    let after_stop = status(&sandbox, &config).unwrap();
    assert_eq!(process(&after_stop, "native")["state"], "stopped");
    assert_eq!(
        process(&after_stop, "native")["pid"],
        serde_json::Value::Null
    );

    // start returns once it is running again.
    let started = sandbox.run(&["start", "native", "-c", c]);
    started.expect_success();
    assert!(started.stdout.contains("running"), "{}", started.stdout);
    let after_start = status(&sandbox, &config).unwrap();
    assert_eq!(process(&after_start, "native")["state"], "running");
    let restarted_native = Tracked::new(pid_of(process(&after_start, "native")));
    assert!(restarted_native.alive());

    // Starting a running daemon: the state asked for holds (exit 0).
    let again = sandbox.run(&["start", "native", "-c", c]);
    again.expect_success();
    assert!(
        again.stdout.starts_with("native: running, pid "),
        "{}",
        again.stdout
    );

    // restart gives a new incarnation.
    sandbox.run(&["restart", "echo", "-c", c]).expect_success();
    assert!(!echo.alive());
    let after_restart = status(&sandbox, &config).unwrap();
    let new_echo = pid_of(process(&after_restart, "echo"));
    assert_ne!(new_echo, echo.pid);

    // status NAME
    let one = sandbox.run(&["status", "native", "--json", "-c", c]);
    one.expect_success();
    let one: Vec<serde_json::Value> = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["name"], "native");

    // logs: the native daemon printed its line at each start.
    let logs = sandbox.run(&["logs", "native", "-c", c]);
    logs.expect_success();
    assert_eq!(
        logs.stdout.matches("hello from native").count(),
        2,
        "{}",
        logs.stdout
    );
    let last = sandbox.run(&["logs", "native", "-n", "1", "-c", c]);
    assert_eq!(last.stdout.lines().count(), 1, "{}", last.stdout);
    let echo_logs = sandbox.run(&["logs", "echo", "-c", c]);
    assert!(
        echo_logs.stdout.contains("listening on"),
        "{}",
        echo_logs.stdout
    );
    // The default log file in the state directory has them too.
    let log_file = std::fs::read_to_string(sandbox.state_dir().join("logs/native.log")).unwrap();
    assert!(log_file.contains("hello from native"), "{log_file}");

    // logs -f: a new line arrives while following.
    let mut follow = sandbox
        .command(&["logs", "native", "-f", "-n", "0", "-c", c])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_channel(follow.stdout.take().unwrap());
    sandbox
        .run(&["restart", "native", "-c", c])
        .expect_success();
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("a followed line");
        if line == "hello from native" {
            break;
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();

    // down returns once the supervisor is gone, having stopped everything.
    let pids: Vec<Tracked> = status(&sandbox, &config)
        .unwrap()
        .iter()
        .map(|p| Tracked::new(pid_of(p)))
        .collect();
    let down = sandbox.run(&["down", "-c", c]);
    down.expect_success();
    for pid in &pids {
        assert!(!pid.alive(), "daemon {} outlived `tend down`", pid.pid);
    }
    assert!(up.wait().success(), "{}", up.stderr());
    assert!(!sandbox.state_dir().join("tend.sock").exists());
    assert!(!sandbox.state_dir().join("echo.sock").exists());
    let out = up.stdout();
    assert!(out.contains("native  starting -> running"), "{out}");
    assert!(out.contains("tend: all daemons stopped"), "{out}");

    // Nothing answers any more, and the message says so.
    let gone = sandbox.run(&["status", "-c", c]);
    gone.expect_code(1);
    assert!(
        gone.stderr.contains("no tend supervisor is running"),
        "{}",
        gone.stderr
    );
}

#[test]
fn a_daemon_that_fails_to_start_is_left_in_error_and_the_others_run() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, "cannot open the database");
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("good", "running"), ("bad", "error")]);
    let error = process(&processes, "bad")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("cannot open the database"), "{error}");

    let retry = sandbox.run(&["start", "bad", "-c", c]);
    retry.expect_code(1);
    assert!(
        retry.stderr.contains("cannot open the database"),
        "{}",
        retry.stderr
    );

    let table = sandbox.run(&["status", "-c", c]);
    assert!(table.stdout.contains("error"), "{}", table.stdout);
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn start_of_a_starting_daemon_waits_for_it_to_run_or_fail() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        r#"
[process.slow]
command = "{testd}"
args = ["--listen-delay", "1500"]
socket = "slow.sock"

[process.doomed]
command = "{testd}"
args = ["--never-bind", "--stderr", "no database here", "--exit-after", "3000", "--exit-code", "3"]
socket = "doomed.sock"
restart = "never"
"#,
        testd = testd().display(),
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("slow", "starting"), ("doomed", "starting")],
    );

    // Not a second start and not "already starting": the answer is how
    // the start under way ends.
    let slow = sandbox.run(&["start", "slow", "-c", c]);
    slow.expect_success();
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(process(&processes, "slow")["state"], "running");
    assert_eq!(process(&processes, "slow")["restart_attempts"], 0);

    let doomed = sandbox.run(&["start", "doomed", "-c", c]);
    doomed.expect_code(1);
    assert!(
        doomed.stderr.contains("no database here"),
        "{}",
        doomed.stderr
    );
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(process(&processes, "doomed")["state"], "error");
    up.down(&sandbox, &config);
}
