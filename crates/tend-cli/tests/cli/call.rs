//! `tend call`: results and RPC errors of the Python example daemon, bad
//! params, one multiplexed connection per daemon, timeouts, and a call in
//! flight holding up no other client.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::harness::*;

/// A JSON-RPC daemon that numbers its connections and answers every
/// request with the number of the connection it came on.
const CONNECTION_NUMBERS: &str = r#"
import itertools, json, os, socket, threading
numbers = itertools.count(1)
server = socket.socket(socket.AF_UNIX)
server.bind(os.environ["SOCKET_PATH"])
server.listen(64)
def serve(conn, number):
    replies = conn.makefile("w")
    for line in conn.makefile("r"):
        request = json.loads(line)
        if "id" in request:
            replies.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": number}) + "\n")
            replies.flush()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn, next(numbers)), daemon=True).start()
"#;

/// A daemon that appends every line it receives to `$RECORD` and never
/// answers.
const SILENT_RECORDER: &str = r#"
import os, socket, threading
out = open(os.environ["RECORD"], "a", buffering=1)
server = socket.socket(socket.AF_UNIX)
server.bind(os.environ["SOCKET_PATH"])
server.listen(64)
def serve(conn):
    for line in conn.makefile("r"):
        out.write(line)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

fn config(sandbox: &Sandbox) -> PathBuf {
    let echo = example_daemons().join("echo_daemon.py");
    sandbox.config(&format!(
        r#"
[process.echo]
command = "python3"
args = ["{echo}"]
socket = "echo.sock"
startup_timeout = "20s"

[process.numbers]
command = "python3"
args = ["-c", '''{CONNECTION_NUMBERS}''']
socket = "numbers.sock"
startup_timeout = "20s"

[process.silent]
command = "python3"
args = ["-c", '''{SILENT_RECORDER}''']
socket = "silent.sock"
env = {{ RECORD = "{record}" }}
startup_timeout = "20s"

[process.worker]
command = "{testd}"
"#,
        echo = echo.display(),
        testd = testd().display(),
        record = sandbox.path().join("silent.jsonl").display(),
    ))
}

/// The JSON `tend call` printed.
#[track_caller]
fn result(run: &Run) -> Value {
    run.expect_success();
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {}", run.command, run.stdout))
}

#[test]
fn results_are_printed_as_json_and_errors_exit_non_zero() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("echo", "running"), ("numbers", "running")],
    );

    assert_eq!(
        result(&sandbox.run(&["call", "echo", "ping", "-c", c])),
        "pong"
    );
    let params = json!({"text": "héllo", "list": [1, 2.5, null], "nested": {"ok": true}});
    let echoed = sandbox.run(&["call", "echo", "echo", &params.to_string(), "-c", c]);
    assert_eq!(result(&echoed), params);
    assert!(
        echoed.stdout.contains("\n  \"list\""),
        "not pretty: {}",
        echoed.stdout
    );
    assert_eq!(
        result(&sandbox.run(&["call", "echo", "echo", "[1, \"two\"]", "-c", c])),
        json!([1, "two"])
    );
    // No params: the echo daemon answers null, printed as such.
    let null = sandbox.run(&["call", "echo", "echo", "-c", c]);
    assert_eq!(result(&null), Value::Null);
    assert_eq!(null.stdout, "null\n");

    // The daemon's error: exit 1, code and message on stderr.
    let unknown = sandbox.run(&["call", "echo", "no_such_method", "-c", c]);
    unknown.expect_code(1);
    assert!(unknown.stdout.is_empty(), "{}", unknown.stdout);
    assert!(unknown.stderr.contains("-32601"), "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("Method not found: no_such_method"),
        "{}",
        unknown.stderr
    );

    // Params that are not JSON, or not an object or array: exit 2, before
    // anything is sent.
    for bad in ["{text: 1}", "[1,", "42", "\"text\""] {
        let run = sandbox.run(&["call", "echo", "echo", bad, "-c", c]);
        run.expect_code(2);
        assert!(run.stderr.contains("PARAMS_JSON"), "{bad}: {}", run.stderr);
    }
    sandbox
        .run(&["call", "echo", "ping", "--timeout", "0s", "-c", c])
        .expect_code(2);

    // Unknown daemons, daemons without a socket.
    let nobody = sandbox.run(&["call", "nobody", "ping", "-c", c]);
    nobody.expect_code(2);
    assert!(
        nobody.stderr.contains("no daemon named \"nobody\""),
        "{}",
        nobody.stderr
    );
    let worker = sandbox.run(&["call", "worker", "ping", "-c", c]);
    worker.expect_code(1);
    assert!(worker.stderr.contains("no socket"), "{}", worker.stderr);

    // Every call goes over the daemon's one persistent connection, also
    // calls made at the same time.
    let first = result(&sandbox.run(&["call", "numbers", "which", "-c", c]));
    assert!(first.is_u64(), "{first}");
    let parallel: Vec<_> = (0..4)
        .map(|_| {
            sandbox
                .command(&["call", "numbers", "which", "-c", c])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in parallel {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let number: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(number, first, "a call opened another connection");
    }
    assert_eq!(
        result(&sandbox.run(&["call", "numbers", "which", "-c", c])),
        first
    );

    // A stopped daemon is not called.
    sandbox.run(&["stop", "echo", "-c", c]).expect_success();
    let stopped = sandbox.run(&["call", "echo", "ping", "-c", c]);
    stopped.expect_code(1);
    assert!(stopped.stderr.contains("is stopped"), "{}", stopped.stderr);
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn a_call_in_flight_holds_up_no_other_client_and_times_out() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    wait_for_states(
        &sandbox,
        &config,
        &[("echo", "running"), ("silent", "running")],
    );

    // A call the silent daemon never answers…
    let mut waiting = sandbox
        .command(&["call", "silent", "ping", "--timeout", "10m", "-c", c])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // …is in flight once the daemon has received it.
    let record = sandbox.path().join("silent.jsonl");
    let deadline = Instant::now() + SOON;
    wait_until("the call to reach the silent daemon", deadline, || {
        requests(&record) == 1
    });

    // Meanwhile the supervisor answers other clients, and other calls.
    status(&sandbox, &config).expect("status while a call waits");
    assert_eq!(
        result(&sandbox.run(&["call", "echo", "ping", "-c", c])),
        "pong"
    );
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the call ended early"
    );

    // A call with a short timeout fails with a clear message.
    let started = Instant::now();
    let timed_out = sandbox.run(&["call", "silent", "ping", "--timeout", "300ms", "-c", c]);
    timed_out.expect_code(1);
    assert!(
        timed_out.stderr.contains("no reply within"),
        "{}",
        timed_out.stderr
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The timed-out call was sent too; the first call still waits.
    let deadline = Instant::now() + SOON;
    wait_until("the second call to reach the daemon", deadline, || {
        requests(&record) == 2
    });
    assert!(waiting.try_wait().unwrap().is_none());
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    sandbox.run(&["down", "-c", c]).expect_success();
}

/// The JSON-RPC requests the silent daemon received.
fn requests(record: &std::path::Path) -> usize {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("\"method\":\"ping\""))
        .count()
}
