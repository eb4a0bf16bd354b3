//! `tend up` under a service manager: with `NOTIFY_SOCKET` set it sends
//! `STATUS=` lines as states change, `READY=1` only once every daemon is
//! running, and `STOPPING=1` when it shuts down, to a socket path or an
//! abstract address. The test is the service manager: it binds the
//! datagram socket and reads what arrives.

use std::{
    os::{linux::net::SocketAddrExt, unix::net::UnixDatagram},
    path::Path,
    time::{Duration, Instant},
};

use crate::harness::*;

/// The next datagram, or `None` at `deadline`.
fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .expect("read timeout");
    let mut buffer = [0u8; 4096];
    let read = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..read]).into_owned())
}

/// Reads datagrams until one holds `line`; returns the ones before it and
/// that one.
#[track_caller]
fn read_until(socket: &UnixDatagram, line: &str) -> (Vec<String>, String) {
    let deadline = Instant::now() + SOON;
    let mut before = Vec::new();
    while let Some(message) = next_message(socket, deadline) {
        if message.lines().any(|l| l == line) {
            return (before, message);
        }
        before.push(message);
    }
    panic!("no {line} within {SOON:?}; got {before:?}");
}

fn config(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.config(&format!(
        r#"
[process.fast]
command = "{testd}"
args = ["--print-env", "NOTIFY_SOCKET"]
socket = "fast.sock"

[process.slow]
command = "{testd}"
args = ["--bind-delay", "1500"]
socket = "slow.sock"
"#,
        testd = testd().display(),
    ))
}

fn down(sandbox: &Sandbox, config: &Path) {
    sandbox
        .run(&["down", "-c", config.to_str().unwrap()])
        .expect_success();
}

#[test]
fn ready_once_every_daemon_runs_and_stopping_on_down() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let path = sandbox.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut up = sandbox.up_with_env(&config, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);

    let (before, ready) = read_until(&socket, "READY=1");
    // Sent after the events that made both daemons running were printed.
    let printed = up.stdout();
    for name in ["fast", "slow"] {
        assert!(
            printed
                .lines()
                .any(|l| l.contains(name) && l.contains("-> running")),
            "READY=1 before {name} ran:\n{printed}"
        );
    }
    let processes = status(&sandbox, &config).expect("status");
    for name in ["fast", "slow"] {
        assert_eq!(process(&processes, name)["state"], "running");
    }
    assert!(ready.contains("STATUS=2 daemons: 2 running"), "{ready:?}");
    assert!(before.iter().all(|m| !m.contains("READY=1")), "{before:?}");
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("starting")),
        "no status line while starting: {before:?}"
    );

    // The daemons do not inherit the variable: only tend speaks for itself.
    let logs = sandbox.run(&["logs", "fast", "-c", config.to_str().unwrap()]);
    assert!(
        logs.stdout.contains("env NOTIFY_SOCKET unset"),
        "{}",
        logs.stdout
    );

    down(&sandbox, &config);
    let (_, stopping) = read_until(&socket, "STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    assert!(up.wait().success());
}

#[test]
fn an_abstract_notify_socket_is_reached() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let name = format!("tend-test-notify-{}-{}", std::process::id(), fastrand_u64());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
    let mut up = sandbox.up_with_env(&config, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    read_until(&socket, "READY=1");
    down(&sandbox, &config);
    read_until(&socket, "STOPPING=1");
    assert!(up.wait().success());
}

#[test]
fn a_bad_notify_socket_is_reported_and_tend_runs_on() {
    let sandbox = Sandbox::new();
    let config = config(&sandbox);
    let mut up = sandbox.up_with_env(&config, &[("NOTIFY_SOCKET", "vsock:2:999")]);
    wait_for_states(
        &sandbox,
        &config,
        &[("fast", "running"), ("slow", "running")],
    );
    assert!(
        up.stderr()
            .contains("NOTIFY_SOCKET=vsock:2:999 is neither a socket path"),
        "{}",
        up.stderr()
    );
    down(&sandbox, &config);
    assert!(up.wait().success());
}

/// A number unlikely to be another test's: abstract names are per network
/// namespace, not per folder.
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
