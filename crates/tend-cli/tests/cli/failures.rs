//! Failures people can read: one message per failure with the daemon's
//! output indented under it (only where it explains the failure),
//! wall-clock times, restarts and SIGKILLs said, `--exit-on-failure`,
//! `status --check`, the whole last error, one wording for an unknown
//! daemon, and exit codes by the documented rule.

use crate::harness::*;

/// Whether `line` starts with a wall-clock time `HH:MM:SS.mmm` and two
/// spaces.
fn timed(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 14
        && bytes[..12].iter().enumerate().all(|(i, b)| match i {
            2 | 5 => *b == b':',
            8 => *b == b'.',
            _ => b.is_ascii_digit(),
        })
        && &line[12..14] == "  "
}

#[test]
fn a_failure_is_one_message_with_its_stderr_indented_under_it() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, "cannot read db.conf\\nsee --help");
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("good", "running"), ("bad", "error")]);
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success());
    let (stdout, stderr) = (up.stdout(), up.stderr());

    let failure: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(" bad ") && line.contains(" -> error"))
        .collect();
    assert_eq!(failure.len(), 1, "one message for one failure:\n{stdout}");
    assert!(timed(failure[0]), "{}", failure[0]);
    assert!(
        failure[0].ends_with("(exited with code 1 before it was ready)"),
        "{}",
        failure[0]
    );
    assert!(
        stdout.contains("before it was ready)\n    cannot read db.conf\n    see --help\n"),
        "{stdout}"
    );
    // Every event line carries the time of day.
    for line in stdout.lines().filter(|l| l.contains(" -> ")) {
        assert!(timed(line), "{line}");
    }
    // Nothing repeats it on stderr, and redirected output has no colour.
    assert!(!stderr.contains("bad"), "{stderr}");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'));
}

#[test]
fn exit_on_failure_stops_everything_and_exits_with_1() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, "no config");
    let mut up = sandbox.command(&["up", "--exit-on-failure", "-c", config.to_str().unwrap()]);
    let output = up.output().expect("tend up runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("bad failed, so every daemon was stopped (--exit-on-failure)"),
        "{stderr}"
    );
    assert!(stdout.contains("tend: all daemons stopped"), "{stdout}");
    assert!(sandbox.marked_processes().is_empty());
}

#[test]
fn a_daemon_that_fails_later_ends_an_exit_on_failure_up() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.late]\ncommand = \"{}\"\nargs = [\"--exit-after\", \"300\", \"--stderr\", \"lost the database\"]\nsocket = \"late.sock\"\nmax_restart_attempts = 1\nrestart_delay = \"100ms\"\n",
        testd().display()
    ));
    let output = sandbox
        .command(&["up", "--exit-on-failure", "-c", config.to_str().unwrap()])
        .output()
        .expect("tend up runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    // The restart is announced with its delay and attempt, the output
    // that explains the exit under it; then the end.
    assert!(stdout.contains("restarting in "), "{stdout}");
    assert!(
        stdout.contains(", attempt 1 of 1)\n    lost the database\n"),
        "{stdout}"
    );
    assert!(stdout.contains("gave up after 1 restart)"), "{stdout}");
}

#[test]
fn status_check_and_the_whole_last_error() {
    let sandbox = Sandbox::new();
    let long = "x".repeat(150);
    let config = good_and_bad_config(&sandbox, &format!("{long}\\nlast words"));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("good", "running"), ("bad", "error")]);

    let check = sandbox.run(&["status", "--check", "-c", c]);
    check.expect_code(1);
    assert!(
        check.stderr.contains("check failed: bad is error"),
        "{}",
        check.stderr
    );
    sandbox
        .run(&["status", "good", "--check", "-c", c])
        .expect_success();

    let one = sandbox.run(&["status", "bad", "-c", c]);
    one.expect_success();
    assert!(
        one.stdout.contains(&format!(
            "last error:\n  \"bad\" exited with code 1 before it was ready:\n  {long}\n  last words\n"
        )),
        "{}",
        one.stdout
    );
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn an_unknown_daemon_is_one_message_and_a_usage_error() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, "x");
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("good", "running")]);
    let expected = format!(
        "tend: no daemon named \"nobody\" in {} (its daemons: good, bad)\n",
        config.display()
    );
    for args in [
        vec!["status", "nobody"],
        vec!["start", "nobody"],
        vec!["stop", "nobody"],
        vec!["restart", "nobody"],
        vec!["logs", "nobody"],
        vec!["call", "nobody", "ping"],
    ] {
        let mut args = args;
        args.extend(["-c", c]);
        let run = sandbox.run(&args);
        run.expect_code(2);
        assert_eq!(run.stderr, expected, "{}", run.command);
    }
    // A start of a daemon that runs: the state asked for holds, exit 0.
    let again = sandbox.run(&["start", "good", "-c", c]);
    again.expect_success();
    assert!(
        again.stdout.starts_with("good: running, pid "),
        "{}",
        again.stdout
    );
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn a_stop_that_ran_out_of_grace_says_sigkill_was_sent() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.stubborn]\ncommand = \"{}\"\nargs = [\"--ignore-sigterm\"]\nsocket = \"s.sock\"\nshutdown_grace_period = \"200ms\"\n",
        testd().display()
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("stubborn", "running")]);
    sandbox.run(&["stop", "stubborn", "-c", c]).expect_success();
    sandbox.run(&["down", "-c", c]).expect_success();
    up.wait();
    let stdout = up.stdout();
    assert!(
        stdout.contains("(stopped; the grace period of 200 ms ran out, so SIGKILL was sent)"),
        "{stdout}"
    );
}

#[test]
fn health_is_unknown_until_a_first_check_ran() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.slowcheck]\ncommand = \"{testd}\"\nsocket = \"h.sock\"\n[process.slowcheck.healthcheck]\ninterval = \"1h\"\n\n[process.quickcheck]\ncommand = \"{testd}\"\nsocket = \"q.sock\"\n[process.quickcheck.healthcheck]\ninterval = \"50ms\"\n",
        testd = testd().display()
    ));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("slowcheck", "running")]);
    assert_eq!(process(&processes, "slowcheck")["health_checked"], false);
    let table = sandbox.run(&["status", "-c", c]);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("slowcheck"))
        .unwrap()
        .to_owned();
    let health = row.split_whitespace().nth(8);
    assert_eq!(health, Some("-"), "{}", table.stdout);
    // Once a check ran, it says so.
    wait_until(
        "quickcheck's first check",
        std::time::Instant::now() + SOON,
        || {
            status(&sandbox, &config).is_some_and(|processes| {
                process(&processes, "quickcheck")["health_checked"] == true
            })
        },
    );
    let table = sandbox.run(&["status", "quickcheck", "-c", c]);
    let row = table.stdout.lines().nth(1).unwrap_or_default().to_owned();
    assert_eq!(
        row.split_whitespace().nth(8),
        Some("ok"),
        "{}",
        table.stdout
    );
    sandbox.run(&["down", "-c", c]).expect_success();
}
