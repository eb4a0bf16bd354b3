//! Daemon-written text reaches the terminal with its control characters
//! escaped: `tend logs` (plain and `-f`; `--raw` keeps them), `tend call`'s
//! RPC errors, start errors with a stderr tail in `tend up` and
//! `tend start`, `tend up`'s event lines and the status table.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::harness::*;

/// Retitles the terminal, then clears the screen.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J";
/// [`HOSTILE`] as tend shows it.
const HOSTILE_ESCAPED: &str = r"\x1b]0;pwned\x07\x1b[2J";
/// [`HOSTILE`] in a TOML basic string.
const HOSTILE_TOML: &str = r"\u001b]0;pwned\u0007\u001b[2J";

/// Panics if `text` holds a control character other than a newline or a
/// tab.
#[track_caller]
fn assert_no_controls(what: &str, text: &str) {
    let found: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(
        found.is_empty(),
        "{what} printed control characters {found:?}:\n{text}"
    );
}

#[test]
fn logs_are_escaped_unless_raw() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.noisy]
command = "{testd}"
args = ["--stdout", "title {HOSTILE_TOML} cleared", "--stderr", "csi \u009b2J\tПривет, мир"]
socket = "noisy.sock"
"#,
        testd = testd.display(),
    ));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("noisy", "running")]);
    let raw_title = format!("title {HOSTILE} cleared");
    let raw_csi = "csi \u{9b}2J\tПривет, мир";
    let mut raw = String::new();
    wait_until("both lines in the logs", Instant::now() + SOON, || {
        raw = sandbox.run(&["logs", "noisy", "--raw", "-c", c]).stdout;
        raw.contains(&raw_title) && raw.contains(raw_csi)
    });

    // Plain: visible escapes, the tab and the Cyrillic text as written.
    let plain = sandbox.run(&["logs", "noisy", "-c", c]);
    plain.expect_success();
    assert!(
        plain
            .stdout
            .contains(&format!("title {HOSTILE_ESCAPED} cleared\n")),
        "{}",
        plain.stdout
    );
    assert!(
        plain.stdout.contains("csi \\u{9b}2J\tПривет, мир\n"),
        "{}",
        plain.stdout
    );
    assert_no_controls("tend logs", &plain.stdout);

    // Following: the same escapes on the lines as they stream.
    let mut follow = sandbox
        .command(&["logs", "noisy", "-f", "-c", c])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tend logs -f");
    let lines = line_channel(follow.stdout.take().expect("piped stdout"));
    let deadline = Instant::now() + SOON;
    let mut followed = Vec::new();
    while followed.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.max(Duration::from_millis(1))) {
            // tend's marker where the incarnation began.
            Ok(line) if line.starts_with("--- started, pid ") => {}
            Ok(line) => followed.push(line),
            Err(_) => break,
        }
    }
    kill(follow.id(), rustix::process::Signal::KILL);
    let _ = follow.wait();
    // The two lines came through different pipes (stdout and stderr):
    // their order is not defined.
    followed.sort();
    assert_eq!(
        followed,
        [
            "[stderr] csi \\u{9b}2J\tПривет, мир".to_owned(),
            format!("title {HOSTILE_ESCAPED} cleared"),
        ],
    );

    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn a_daemons_rpc_error_message_is_escaped() {
    let sandbox = Sandbox::new();
    let echo = example_daemons().join("echo_daemon.py");
    let config = sandbox.config(&format!(
        r#"
[process.echo]
command = "python3"
args = ["{echo}"]
socket = "echo.sock"
startup_timeout = "20s"
"#,
        echo = echo.display(),
    ));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("echo", "running")]);

    // The example daemon names the unknown method in its error message,
    // so the method carries what the daemon sends back: escape sequences,
    // and a newline that would start a forged line of tend's.
    let method = format!("{HOSTILE}\ntend: all is well");
    let call = sandbox.run(&["call", "echo", &method, "-c", c]);
    call.expect_code(1);
    assert!(
        call.stderr.contains(&format!(
            "RPC error -32601: Method not found: {HOSTILE_ESCAPED}\\ntend: all is well\n"
        )),
        "{}",
        call.stderr
    );
    assert_eq!(call.stderr.lines().count(), 1, "{}", call.stderr);
    assert_no_controls("tend call", &call.stderr);

    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn a_start_error_with_a_hostile_stderr_tail_is_escaped() {
    let sandbox = Sandbox::new();
    let config = good_and_bad_config(&sandbox, &format!("dying\\r{HOSTILE_TOML}"));
    let c = config.to_str().unwrap();
    let up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("good", "running"), ("bad", "error")]);
    let tail = format!("dying\\r{HOSTILE_ESCAPED}");

    // `tend up`: the failure once, on stdout, the tail indented under it.
    let indented = format!("before it was ready)\n    {tail}\n");
    wait_until(
        "tend up to report the failed start",
        Instant::now() + SOON,
        || up.stdout().contains(&indented),
    );
    let up_stdout = up.stdout();
    assert_no_controls("tend up (stdout)", &up_stdout);
    let up_stderr = up.stderr();
    assert!(!up_stderr.contains("bad"), "{up_stderr}");
    assert_no_controls("tend up (stderr)", &up_stderr);

    // `tend start`: the same reason.
    let retry = sandbox.run(&["start", "bad", "-c", c]);
    retry.expect_code(1);
    assert!(retry.stderr.contains(&tail), "{}", retry.stderr);
    assert_no_controls("tend start", &retry.stderr);

    // The status table, for all daemons and for one.
    for args in [&["status", "-c", c][..], &["status", "bad", "-c", c]] {
        let table = sandbox.run(args);
        table.expect_success();
        // The table cuts long errors: the start of the escapes is enough.
        assert!(table.stdout.contains(r"dying\r\x1b]0;"), "{}", table.stdout);
        assert_no_controls("tend status", &table.stdout);
    }
    // --json keeps the text as the daemon wrote it (JSON escapes it).
    let json = status(&sandbox, &config).expect("status --json");
    let error = process(&json, "bad")["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains(&format!("dying\r{HOSTILE}")), "{error:?}");

    sandbox.run(&["down", "-c", c]).expect_success();
}
