//! The control socket: private, refuses garbage without being disturbed,
//! and answers `status` while a daemon is stuck starting.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
};

use serde_json::Value;

use crate::harness::*;

/// Sends `request` bytes and reads one response line.
fn exchange(reader: &mut BufReader<UnixStream>, request: &[u8]) -> Value {
    reader.get_mut().write_all(request).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn connect(sandbox: &Sandbox) -> BufReader<UnixStream> {
    let stream = UnixStream::connect(sandbox.state_dir().join("tend.sock")).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    BufReader::new(stream)
}

#[test]
fn garbage_gets_errors_and_the_supervisor_keeps_serving() {
    let sandbox = Sandbox::new();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.ok]
command = "{testd}"
socket = "ok.sock"

[process.stuck]
command = "{testd}"
args = ["--never-bind"]
socket = "stuck.sock"
startup_timeout = "10m"
"#,
        testd = testd.display(),
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    // status answers while `stuck` is still starting.
    wait_for_states(
        &sandbox,
        &config,
        &[("ok", "running"), ("stuck", "starting")],
    );

    let socket = sandbox.state_dir().join("tend.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    let mut conn = connect(&sandbox);
    for garbage in [
        &b"hello\n"[..],
        b"{\"cmd\":\"reboot\"}\n",
        b"{\"cmd\":\"start\"}\n",
        b"{\"cmd\":\"stop\",\"name\":42}\n",
        b"[1,2,3]\n",
        b"\xff\xfe\xfd\n",
        b"{\"cmd\":\"status\"\n",
    ] {
        let response = exchange(&mut conn, garbage);
        assert_eq!(response["ok"], false, "{response} for {garbage:?}");
        assert!(
            response["error"]
                .as_str()
                .unwrap()
                .contains("invalid request"),
            "{response}"
        );
    }
    // Blank lines are skipped; the same connection still serves requests.
    let response = exchange(&mut conn, b"\n\n{\"cmd\":\"status\",\"name\":\"stuck\"}\n");
    assert_eq!(response["ok"], true, "{response}");
    assert_eq!(response["processes"][0]["state"], "starting");
    let info = exchange(&mut conn, b"{\"cmd\":\"info\"}\n");
    assert_eq!(info["supervisor"]["pid"], up.pid());

    // An oversized request is answered with an error, then the connection
    // is closed.
    let mut big = connect(&sandbox);
    let writer = big.get_ref().try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let mut writer = writer;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..32 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut line = String::new();
    big.read_line(&mut line).unwrap();
    let response: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(response["ok"], false);
    assert!(
        response["error"].as_str().unwrap().contains("longer than"),
        "{response}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        big.read_to_end(&mut rest).unwrap_or(0),
        0,
        "connection closed"
    );
    flood.join().unwrap();

    // A client that connects and hangs up at once does no harm either.
    drop(UnixStream::connect(&socket).unwrap());
    // Nor one that sends half a request and leaves.
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(b"{\"cmd\":\"sta").unwrap();
    drop(half);

    // The supervisor is undisturbed: status, then stopping the stuck
    // daemon, which cancels its start.
    let processes = status(&sandbox, &config).expect("status after garbage");
    assert_eq!(process(&processes, "ok")["state"], "running");
    sandbox.run(&["stop", "stuck", "-c", c]).expect_success();
    let processes = status(&sandbox, &config).unwrap();
    assert_eq!(process(&processes, "stuck")["state"], "stopped");
    sandbox.run(&["down", "-c", c]).expect_success();
    assert!(up.wait().success());
}

#[test]
fn status_answers_while_a_stop_waits_out_a_grace_period() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.slow]\ncommand = \"{}\"\nargs = [\"--ignore-sigterm\"]\nshutdown_grace_period = \"10m\"\n",
        testd().display()
    ));
    let c = config.to_str().unwrap().to_owned();
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("slow", "running")]);
    let mut stop = sandbox
        .command(&["stop", "slow", "-c", &c])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let processes = wait_for_states(&sandbox, &config, &[("slow", "stopping")]);
    assert!(processes[0]["pid"].is_u64());
    // The stop is still waiting for the grace period.
    assert!(stop.try_wait().unwrap().is_none());
    stop.kill().unwrap();
    stop.wait().unwrap();
}

/// Runs only as root, which can run a client as another user: the
/// supervisor must refuse it even when the files' modes would let it in.
#[test]
fn peers_of_another_uid_are_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        "[process.a]\ncommand = \"{}\"\n",
        testd().display()
    ));
    let _up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("a", "running")]);
    // Open the way through the file system, so only SO_PEERCRED is left.
    // (Folders others may write would make the client refuse the server
    // first: see `trust`.)
    let socket = sandbox.state_dir().join("tend.sock");
    for (path, mode) in [
        (sandbox.path(), 0o755),
        (&sandbox.state_dir(), 0o755),
        (&socket, 0o777),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let nobody = 65534;
    let output = sandbox
        .command(&["status", "--socket", socket.to_str().unwrap()])
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied: this supervisor serves uid 0 only"),
        "{stderr}"
    );
    // The owner is still served.
    assert!(status(&sandbox, &config).is_some());
}

/// The next response line.
fn next(reader: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn watch_pushes_each_state_change_and_refreshes_samples() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(&format!(
        r#"
[process.talker]
command = "{testd}"
args = ["--stdout", "first words"]
socket = "talker.sock"
"#,
        testd = testd().display(),
    ));
    let c = config.to_str().unwrap();
    let mut up = sandbox.up(&config);
    wait_for_states(&sandbox, &config, &[("talker", "running")]);

    let mut watch = connect(&sandbox);
    let first = exchange(
        &mut watch,
        b"{\"cmd\":\"watch\",\"usage_interval_ms\":200}\n",
    );
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["processes"][0]["state"], "running", "{first}");
    assert_eq!(first["samples"][0]["name"], "talker", "{first}");
    assert_eq!(
        first["samples"][0]["last_line"]["text"], "first words",
        "{first}"
    );

    // A refresh on the timer: usage of the live incarnation.
    let sample = loop {
        let response = next(&mut watch);
        if response.get("samples").is_some() {
            break response;
        }
    };
    assert!(sample["samples"][0]["usage"]["cpu_us"].is_u64(), "{sample}");

    // Each change of the stop, pushed with the daemon after it.
    sandbox.run(&["stop", "talker", "-c", c]).expect_success();
    let mut changes = Vec::new();
    while changes.last() != Some(&("stopping".to_owned(), "stopped".to_owned())) {
        let response = next(&mut watch);
        if let Some(event) = response.get("event") {
            assert_eq!(event["name"], "talker", "{response}");
            assert_eq!(response["process"]["state"], event["to"], "{response}");
            changes.push((
                event["from"].as_str().unwrap().to_owned(),
                event["to"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert_eq!(
        changes,
        [("running", "stopping"), ("stopping", "stopped")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );

    // The supervisor's exit ends the watch.
    sandbox.run(&["down", "-c", c]).expect_success();
    let mut rest = String::new();
    watch.read_to_string(&mut rest).unwrap();
    assert!(up.wait().success());
}
