//! Reliability of `tend up` under abuse (see `docs/RELIABILITY.md`): a
//! `kill -9` that leaves a double-forked escapee behind, clients that
//! never send or send 100 MB, arbitrary bytes and mutated requests on the
//! control socket, and mutated config files for `tend check`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::Shutdown,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use rustix::process::Signal;
use serde_json::Value;

use crate::harness::*;

/// `TEND_MANAGER_ID=<pid>.<start time>` of the `tend up` in process `pid`:
/// every daemon it spawns, and every descendant that keeps the daemon's
/// environment, carries it.
fn manager_marker(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("tend up is alive");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    format!("TEND_MANAGER_ID={pid}.{}", fields[19])
}

/// The process group and session of `pid`, from `/proc/<pid>/stat`.
fn group_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// Live processes whose environment holds `entry`, found by walking /proc.
fn marked(entry: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        })
        .filter(|&pid| Tracked::new(pid).alive())
        .collect()
}

/// After `kill -9` of `tend up`, the daemon leaders die of their
/// parent-death signal within a second; the survivors — a daemon ignoring
/// SIGTERM and children in a daemon's group — are stopped by the next
/// `tend up`. The double-forked escapee the subreaper can no longer reach
/// carries the dead run's `TEND_MANAGER_ID`, but once reparented nothing in
/// process groups proves it descends from a daemon, and the marker alone
/// may only report: the next `tend up` names it and leaves it alive.
/// Cgroup containment, being added separately, is what proves and kills
/// it; the test kills it itself.
#[test]
fn escapee_of_a_killed_up_is_stopped_or_reported_by_the_next_up() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        r#"
[process.escaper]
command = "{testd}"
args = ["--double-fork"]
socket = "escaper.sock"

[process.forker]
command = "{testd}"
args = ["--fork-children", "2"]

[process.stubborn]
command = "{testd}"
args = ["--ignore-sigterm"]
shutdown_grace_period = "300ms"
"#,
        testd = testd().display(),
    ));
    let c = config.to_str().unwrap();
    // No guard: what the killed run leaves is the next run's to clean.
    let mut first = sandbox.up_with_env(&config, &[(tend::GUARD_ENV, "0")]);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[
            ("escaper", "running"),
            ("forker", "running"),
            ("stubborn", "running"),
        ],
    );
    let marker = manager_marker(first.pid());
    let leaders: Vec<Tracked> = ["escaper", "forker"]
        .iter()
        .map(|name| Tracked::new(pid_of(process(&processes, name))))
        .collect();
    let stubborn = pid_of(process(&processes, "stubborn"));
    // 3 daemons, 2 children and 1 escapee: the double fork's grandchild,
    // in no daemon's group (its parent, which leads the new session,
    // exits at once).
    let mut escapee = 0;
    wait_until("every daemon's descendants", Instant::now() + SOON, || {
        let all = marked(&marker);
        let outsiders: Vec<(u32, u32, u32)> = all
            .iter()
            .filter_map(|&pid| group_and_session(pid).map(|(g, s)| (pid, g, s)))
            .filter(|&(pid, group, _)| pid != stubborn && !leaders.iter().any(|l| l.pid == group))
            .collect();
        match outsiders[..] {
            [(pid, _, session)] if all.len() == 6 && session != pid => {
                escapee = pid;
                true
            }
            _ => false,
        }
    });
    let escapee = Tracked::new(escapee);
    // With cgroup containment the escapee never left its daemon's cgroup.
    let contained_by_cgroup = in_tend_cgroup(escapee.pid);

    first.signal(Signal::KILL);
    first.wait();
    let killed_at = Instant::now();
    wait_until(
        "the daemons of a killed tend up to die",
        killed_at + Duration::from_secs(1),
        || leaders.iter().all(|l| !l.alive()),
    );
    let survivors = marked(&marker);
    assert_eq!(survivors.len(), 4, "survivors {survivors:?}");

    let mut second = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[
            ("escaper", "running"),
            ("forker", "running"),
            ("stubborn", "running"),
        ],
    );
    let left = marked(&marker);
    let out = second.stdout();
    assert!(out.contains("left running by an earlier tend"), "{out}");
    if contained_by_cgroup {
        // Stopped with what was left in its daemon's cgroup.
        assert!(left.is_empty(), "alive after the next tend up: {left:?}");
    } else {
        // Nothing proves it descends from a daemon: reported, left alive.
        assert_eq!(left, [escapee.pid], "alive after the next tend up");
        assert!(
            out.contains("not proven") && out.contains(&escapee.pid.to_string()),
            "{out}"
        );
        kill(escapee.pid, Signal::KILL);
        wait_until("the reported escapee to die", Instant::now() + SOON, || {
            !escapee.alive()
        });
    }

    // And `tend down` leaves nothing of the sandbox running.
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(second.wait().success());
    let left = sandbox.marked_processes();
    assert!(left.is_empty(), "alive after tend down: {left:?}");
}

fn one_daemon(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.config(&format!(
        "[process.a]\ncommand = \"{}\"\nsocket = \"a.sock\"\n",
        testd().display()
    ))
}

fn connect(sandbox: &Sandbox) -> UnixStream {
    let stream = UnixStream::connect(sandbox.state_dir().join("tend.sock")).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
}

/// A client that connects and never sends, and one that sends 100 MB
/// without a newline, hold up no other client.
#[test]
fn silent_and_flooding_clients_do_not_stall_others() {
    let sandbox = Sandbox::new();
    let config = one_daemon(&sandbox);
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);

    let _silent = connect(&sandbox);
    let flooder = connect(&sandbox);
    let mut writer = flooder.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1024 * 1024];
        let mut sent = 0usize;
        for _ in 0..100 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    for _ in 0..5 {
        let began = Instant::now();
        let processes = status(&sandbox, &config).expect("status answers");
        assert_eq!(process(&processes, "a")["state"], "running");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "status took {:?}",
            began.elapsed()
        );
    }
    // The flooder is told off and cut off after 1 MB.
    let mut line = String::new();
    BufReader::new(&flooder).read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");
    let sent = flood.join().unwrap();
    assert!(
        sent < 100 * 1024 * 1024,
        "the supervisor read all {sent} bytes"
    );
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success());
}

/// Valid requests, as mutation seeds.
const REQUESTS: &[&str] = &[
    r#"{"cmd":"info"}"#,
    r#"{"cmd":"status"}"#,
    r#"{"cmd":"status","name":"a"}"#,
    r#"{"cmd":"start","name":"a"}"#,
    r#"{"cmd":"stop","name":"a"}"#,
    r#"{"cmd":"restart","name":"a"}"#,
    r#"{"cmd":"logs","name":"a","lines":5,"follow":true}"#,
    r#"{"cmd":"publish","event":"e","data":{"x":[1,2.5,null]}}"#,
];

/// A request: arbitrary bytes, or a valid request mutated by flipping,
/// inserting, deleting and truncating bytes.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0u8..4);
    let mutated = (prop::sample::select(REQUESTS), vec(edit, 0..6)).prop_map(|(seed, edits)| {
        let mut bytes = seed.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
        bytes
    });
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        3 => mutated,
    ]
    // `down` would end the supervisor; `call` may wait out its timeout.
    .prop_filter("neither down nor call", |b| {
        let text = String::from_utf8_lossy(b);
        !text.contains("down") && !text.contains("call")
    })
}

/// Arbitrary bytes and mutated requests on the control socket: every line
/// is answered with a JSON response (or skipped when blank), nothing
/// crashes the supervisor, and it keeps answering `status` afterwards.
#[test]
fn arbitrary_requests_are_answered_and_the_supervisor_keeps_serving() {
    let sandbox = Sandbox::new();
    let config = one_daemon(&sandbox);
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(200)
    });
    runner
        .run(&request(), |bytes| {
            let mut stream = connect(&sandbox);
            stream.write_all(&bytes).unwrap();
            stream.write_all(b"\n").unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            let read = stream.read_to_string(&mut answer);
            prop_assert!(read.is_ok(), "reading the answer: {read:?}");
            for line in answer.lines() {
                let response: Value = serde_json::from_str(line)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
                prop_assert!(response["ok"].is_boolean(), "{line}");
                if response["ok"] == false {
                    prop_assert!(response["error"].is_string(), "{line}");
                }
            }
            Ok(())
        })
        .unwrap();
    let processes = status(&sandbox, &config).expect("status after the abuse");
    assert_eq!(processes.len(), 1);
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success(), "{}", up.stderr());
}

const CONFIG: &str = r#"[settings]
state_dir = "st"

[process.echo]
command = "python3"
args = ["daemon.py", "--verbose"]
cwd = "."
socket = "echo.sock"
env = { LOG_LEVEL = "debug", EMPTY = "" }
startup_timeout = "30s"
shutdown_grace_period = "1m30s"
max_restart_attempts = 3
restart_delay = 500
stable_period = "60s"
log_file = "echo.log"

[process.echo.healthcheck]
interval = "30s"
timeout = "5s"
retries = 3
probe = "ping"

[process.worker]
command = "/bin/true"
"#;

/// A config file mutated line by line and byte by byte.
fn config_text() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0u8..6,
    );
    let tokens = prop::sample::select(vec![
        "\"",
        "[",
        "]",
        "=",
        "{",
        "}",
        ",",
        "\n",
        "-1",
        "99999999999999999999",
        "\"1e9h\"",
        "true",
        "[process]",
        "[process.a.healthcheck]",
        "\u{0}",
        "\u{fffd}",
        "é",
        "\"../x\"",
        "'''",
    ]);
    (vec((edit, tokens), 0..5)).prop_map(|edits| {
        let mut lines: Vec<Vec<u8>> = CONFIG.lines().map(|l| l.as_bytes().to_vec()).collect();
        for ((line, at, kind), token) in edits {
            let l = line.index(lines.len());
            match kind {
                0 => {
                    lines.remove(l);
                }
                1 => {
                    let copy = lines[l].clone();
                    lines.insert(l, copy);
                }
                2 => {
                    // Replace the value of a `key = value` line.
                    if let Some(eq) = lines[l].iter().position(|&b| b == b'=') {
                        lines[l].truncate(eq + 1);
                        lines[l].extend_from_slice(b" ");
                        lines[l].extend_from_slice(token.as_bytes());
                    }
                }
                3 => {
                    let i = at.index(lines[l].len() + 1);
                    lines[l].splice(i..i, token.bytes());
                }
                4 => {
                    let i = at.index(lines[l].len() + 1);
                    lines[l].truncate(i);
                }
                _ => {
                    if !lines[l].is_empty() {
                        let i = at.index(lines[l].len());
                        lines[l][i] ^= 0x80;
                    }
                }
            }
            if lines.is_empty() {
                lines.push(Vec::new());
            }
        }
        lines.join(&b'\n')
    })
}

/// `tend check` on mutated config files exits 0 or 2, never panics, and
/// names the file (and the line, for a TOML syntax error).
#[test]
fn check_on_mutated_configs_exits_0_or_2_naming_the_file() {
    let sandbox = Sandbox::new();
    let file = sandbox.path().join("mutated.toml");
    let name = file.to_str().unwrap().to_owned();
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(160)
    });
    runner
        .run(&config_text(), |text| {
            std::fs::write(&file, &text).unwrap();
            let run = sandbox.run(&["check", "-c", &name]);
            let code = run.status.code();
            prop_assert!(
                code == Some(0) || code == Some(2),
                "exit {code:?} for\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&text),
                run.stderr
            );
            prop_assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
            if code == Some(2) {
                prop_assert!(run.stderr.starts_with("tend: "), "{}", run.stderr);
                prop_assert!(run.stderr.contains(&name), "{}", run.stderr);
                if run.stderr.contains("invalid TOML") {
                    let with_line = format!("{name}:");
                    let at_line = run.stderr.lines().any(|l| {
                        l.trim_start()
                            .strip_prefix(&with_line)
                            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                    });
                    prop_assert!(at_line, "no line number in:\n{}", run.stderr);
                }
            }
            Ok(())
        })
        .unwrap();
}
