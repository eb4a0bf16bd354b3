//! `tend logs`: every daemon interleaved with its name, streams and
//! incarnations told apart, timestamps, following, the log files (with
//! times, read when no supervisor runs) and their retention.

use std::{fs, process::Stdio, time::Instant};

use crate::harness::*;

/// A config with `web` (stdout), `db` (stderr) and `flaky`, which exits
/// once after 300 ms and runs on after its restart.
fn config(sandbox: &Sandbox) -> std::path::PathBuf {
    let once = sandbox.path().join("once");
    sandbox.config(&format!(
        r#"
[process.web]
command = "{testd}"
args = ["--stdout", "web says hi"]
socket = "web.sock"

[process.db]
command = "{testd}"
args = ["--stderr", "db warns"]
socket = "db.sock"

[process.flaky]
command = "{testd}"
args = ["--stdout", "flaky up", "--exit-after", "300", "--faults-once", "{once}"]
socket = "flaky.sock"
restart_delay = "50ms"
"#,
        testd = testd().display(),
        once = once.display(),
    ))
}

/// Waits until `flaky` runs again after its one crash.
fn wait_for_restart(sandbox: &Sandbox, config: &std::path::Path) -> u32 {
    let mut pid = 0;
    wait_until("flaky to be restarted", Instant::now() + SOON, || {
        let Some(processes) = status(sandbox, config) else {
            return false;
        };
        let flaky = process(&processes, "flaky");
        if flaky["state"] == "running" && flaky["last_exit"].is_string() {
            pid = pid_of(flaky);
            return true;
        }
        false
    });
    pid
}

#[test]
fn every_daemon_interleaved_with_names_streams_and_incarnations() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("web", "running"), ("db", "running"), ("flaky", "running")],
    );
    let pid = wait_for_restart(&sandbox, &config);
    let mut all = String::new();
    wait_until("every line in the logs", Instant::now() + SOON, || {
        all = sandbox.run(&["logs", "-c", c]).stdout;
        all.matches("flaky | flaky up").count() == 2
    });
    for line in [
        "web   | web says hi",
        "db    | [stderr] db warns",
        "web   | --- started, pid ",
        &format!("flaky | --- restarted, pid {pid} ---"),
    ] {
        assert!(all.contains(line), "{line}:\n{all}");
    }
    // In time order: each incarnation's marker before its output.
    let at = |text: &str| all.find(text).unwrap_or_else(|| panic!("{text}:\n{all}"));
    assert!(at("flaky | --- started") < at("flaky | flaky up"));
    assert!(at("flaky | --- restarted") < all.rfind("flaky | flaky up").unwrap());
    assert!(!all.contains('\x1b'), "no colour when piped");

    // One daemon: its lines without a prefix; -t puts the time first.
    let one = sandbox.run(&["logs", "db", "-t", "-c", c]);
    one.expect_success();
    let last = one.stdout.lines().last().unwrap();
    let (time, rest) = last.split_once(' ').unwrap();
    assert_eq!(rest, "[stderr] db warns", "{last}");
    assert!(
        time.len() >= "2026-12-02T16:05:10.153Z".len() && time.contains('T'),
        "{time}"
    );

    // The log file has the time and stream of each line.
    let file = fs::read_to_string(sandbox.state_dir().join("logs/db.log")).unwrap();
    let line = file.lines().find(|l| l.ends_with(" err db warns")).unwrap();
    assert!(line.starts_with("20") && line.contains('T'), "{file}");
    assert!(
        file.lines().next().unwrap().contains(" tend started, pid "),
        "{file}"
    );

    sandbox.run(&["down", "-c", c]).expect_success();

    // No supervisor: the same lines, from the files.
    let offline = sandbox.run(&["logs", "-c", c]);
    offline.expect_success();
    assert!(
        offline.stderr.contains("from the log files"),
        "{}",
        offline.stderr
    );
    for line in ["web   | web says hi", "db    | [stderr] db warns"] {
        assert!(offline.stdout.contains(line), "{line}:\n{}", offline.stdout);
    }
    let flaky = sandbox.run(&["logs", "flaky", "-n", "2", "-c", c]);
    assert_eq!(
        flaky.stdout,
        format!("--- restarted, pid {pid} ---\nflaky up\n"),
        "{}",
        flaky.stderr
    );
    let follow = sandbox.run(&["logs", "-f", "-c", c]);
    follow.expect_code(1);
    assert!(
        follow.stderr.contains("-f follows a running supervisor"),
        "{}",
        follow.stderr
    );
    sandbox.run(&["logs", "nobody", "-c", c]).expect_code(2);
}

#[test]
fn follow_every_daemon() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("web", "running"), ("db", "running")]);
    let mut follower = sandbox
        .command(&["logs", "-f", "-n", "1", "-c", c])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tend logs -f");
    let lines = line_channel(follower.stdout.take().unwrap());
    // The supervisor subscribes the follower before it sends the recent
    // line: once that is here, the restart below cannot be missed.
    lines.recv_timeout(SOON).expect("the most recent line");
    let restart = sandbox.run(&["restart", "web", "-c", c]);
    restart.expect_success();
    let deadline = Instant::now() + SOON;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "web   | web says hi") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no new line of web's; saw {seen:#?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("web   | --- restarted, pid ")),
        "{seen:#?}"
    );
    kill(follower.id(), rustix::process::Signal::KILL);
    let _ = follower.wait();
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn retention_is_configured_per_daemon() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.loud]\ncommand = \"{}\"\nargs = [\"--flood\", \"20000\"]\nsocket = \"loud.sock\"\nlog_file_max_size = \"4KiB\"\nlog_file_keep = 1\n",
        testd().display()
    ));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("loud", "running")]);
    let logs = sandbox.state_dir().join("logs");
    wait_until("a rotation", Instant::now() + SOON, || {
        logs.join("loud.log.1").exists()
    });
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(!logs.join("loud.log.2").exists());
    for file in ["loud.log", "loud.log.1"] {
        let size = fs::metadata(logs.join(file)).unwrap().len();
        assert!(size <= 4096, "{file}: {size} bytes");
    }

    let bad = sandbox.config_named(
        "bad.toml",
        "[process.a]\ncommand = \"x\"\nlog_file_keep = 0\n",
    );
    let check = sandbox.run(&["check", "-c", bad.to_str().unwrap()]);
    check.expect_code(2);
    assert!(
        check
            .stderr
            .contains("bad.toml:3: process.a.log_file_keep: must be at least 1"),
        "{}",
        check.stderr
    );
}
