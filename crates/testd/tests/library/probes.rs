//! Readiness and health probe kinds beyond the Unix socket, with real
//! daemons: notify (and its watchdog), tcp, http, exec, log lines, none,
//! and a real systemd-notify daemon (redis-server) where it is installed.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, SystemTime},
};

use tend::{
    Error, ExecProbe, HealthCheck, HealthProbe, HttpProbe, ProcessState, Readiness, Stream,
    TcpProbe,
};

use crate::harness::*;

/// A loopback address no one listens on right now (the port may be taken
/// again before the daemon binds it, which is unlikely and fails loudly).
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn fast_checks(retries: u32) -> HealthCheck {
    HealthCheck::new(
        Duration::from_millis(100),
        Duration::from_millis(300),
        retries,
    )
}

/// The value `--print-env NAME` printed for `name`.
async fn printed_env(sb: &Sandbox, daemon: &str, var: &str) -> String {
    let prefix = format!("env {var}=");
    let mut value = None;
    wait_for(&format!("{daemon} to print {var}"), SOON, || {
        value = sb
            .log_texts(daemon, Stream::Stdout)
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned));
        value.is_some()
    })
    .await;
    value.unwrap()
}

#[tokio::test]
async fn notify_readiness_waits_for_ready_and_ignores_outsiders() {
    let sb = Sandbox::new();
    let first = sb.path("first");
    let ready = sb.path("ready");
    let args = [
        "--print-env",
        "NOTIFY_SOCKET",
        "--notify",
        "--notify-wait-file",
        first.to_str().unwrap(),
        "--notify-first",
        "STATUS=member says wait",
        "--notify-ready-file",
        ready.to_str().unwrap(),
        "--notify-status",
        "serving 3 clients",
    ];
    let config = sb.worker("n", &args).readiness(Readiness::Notify);
    let start = sb.manager.start_process(config);
    let drive = async {
        let socket = printed_env(&sb, "n", "NOTIFY_SOCKET").await;
        let pid = sb.manager.pid("n").ok().flatten().expect("spawned");
        let guard = Tracked::new(pid);
        // The socket is private to this user, in a 0700 directory.
        let dir = Path::new(&socket).parent().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&dir.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "{dir:?}");
        // This test process is outside the daemon's cgroup and group.
        UnixDatagram::unbound()
            .unwrap()
            .send_to(b"READY=1\nSTATUS=forged\nMAINPID=1234", &socket)
            .unwrap();
        std::fs::write(&first, "").unwrap();
        // Datagrams are read in order: once the member's arrived, the
        // forged one was read, and ignored.
        wait_for("the member's status", SOON, || {
            sb.manager.process_info("n").unwrap().status_text.as_deref() == Some("member says wait")
        })
        .await;
        let info = sb.manager.process_info("n").unwrap();
        assert_eq!(
            info.state,
            ProcessState::Starting,
            "a forged READY=1 counted"
        );
        assert_eq!(info.main_pid, None);
        std::fs::write(&ready, "").unwrap();
        guard
    };
    let (started, daemon) =
        within("notify start", SOON, async { tokio::join!(start, drive) }).await;
    started.expect("ready by notify");
    let info = sb.manager.process_info("n").unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert!(info.readiness_checked);
    assert_eq!(info.status_text.as_deref(), Some("serving 3 clients"));
    assert_eq!(
        info.main_pid,
        Some(daemon.pid),
        "MAINPID of a member is taken"
    );
}

#[tokio::test]
async fn garbage_and_oversized_notify_datagrams_are_dropped() {
    let sb = Sandbox::new();
    let config = sb
        .worker(
            "g",
            &[
                "--notify-first",
                "ERRNO=110\nSTOPPING=1",
                "--notify-garbage",
                "--notify",
                "--notify-status",
                "after garbage",
            ],
        )
        .readiness(Readiness::Notify);
    let daemon = sb.start(config).await;
    let info = sb.manager.process_info("g").unwrap();
    assert_eq!(info.status_text.as_deref(), Some("after garbage"));
    assert_eq!(info.main_pid, Some(daemon.pid));
    assert_eq!(info.status_errno, Some(110), "ERRNO= is kept");
    assert!(daemon.alive());
}

#[tokio::test]
async fn a_missed_watchdog_replaces_the_daemon_and_a_fed_one_keeps_running() {
    let sb = Sandbox::new();
    let every = Duration::from_millis(400);
    let fed = sb
        .start(
            sb.worker(
                "fed",
                &[
                    "--print-env",
                    "WATCHDOG_USEC",
                    "--notify",
                    "--watchdog-pings",
                    "-1",
                ],
            )
            .readiness(Readiness::Notify)
            .watchdog(every),
        )
        .await;
    assert_eq!(printed_env(&sb, "fed", "WATCHDOG_USEC").await, "400000");
    let starved = sb
        .start(
            sb.worker("starved", &["--notify", "--watchdog-pings", "2"])
                .readiness(Readiness::Notify)
                .watchdog(every),
        )
        .await;
    wait_for("the starved daemon to be replaced", SOON, || {
        let info = sb.manager.process_info("starved").unwrap();
        info.restart_attempts >= 1 || info.state == ProcessState::Error
    })
    .await;
    let info = sb.manager.process_info("starved").unwrap();
    let reason = info.last_error.unwrap_or_default();
    assert!(reason.contains("missed its watchdog"), "{reason}");
    starved.wait_dead("the starved daemon").await;
    let fed_info = sb.manager.process_info("fed").unwrap();
    assert_eq!(fed_info.state, ProcessState::Running);
    assert_eq!(fed_info.pid, Some(fed.pid));
    assert_eq!(fed_info.restart_attempts, 0);
}

#[tokio::test]
async fn tcp_readiness_notices_a_late_listen_within_milliseconds() {
    let sb = Sandbox::new();
    let address = free_address();
    let stamps = sb.path("stamps");
    let config = sb
        .worker(
            "t",
            &[
                "--tcp",
                &address.to_string(),
                "--bind-delay",
                "100",
                "--listen-delay",
                "300",
                "--timestamps",
                stamps.to_str().unwrap(),
            ],
        )
        .readiness(Readiness::Tcp(TcpProbe::new(address)));
    let mut events = sb.manager.subscribe();
    let _daemon = sb.start(config).await;
    TcpStream::connect(address).expect("running means the port accepts");
    let running = loop {
        let event = within("the running event", SOON, events.recv())
            .await
            .unwrap();
        if event.name == "t" && event.to == ProcessState::Running {
            break event.time;
        }
    };
    // testd writes its stamps right after listen() returned, which tend
    // may notice first.
    wait_for("the daemon's stamps", SOON, || !lines(&stamps).is_empty()).await;
    let listened: u128 = lines(&stamps)[0]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let listened = SystemTime::UNIX_EPOCH + Duration::from_nanos(listened as u64);
    let late = running.duration_since(listened).unwrap_or_default();
    // A few milliseconds unloaded; slack for a loaded CI machine.
    assert!(
        late < Duration::from_millis(150),
        "noticed {late:?} after listen"
    );
}

#[tokio::test]
async fn tcp_health_checks_replace_a_daemon_that_stops_listening() {
    let sb = Sandbox::new();
    let address = free_address();
    let once = sb.path("once");
    let config = sb
        .worker(
            "t",
            &[
                "--tcp",
                &address.to_string(),
                "--stop-accepting-after",
                "300",
                "--faults-once",
                once.to_str().unwrap(),
            ],
        )
        .readiness(Readiness::Tcp(TcpProbe::new(address)))
        .healthcheck(fast_checks(2))
        .health_probe(HealthProbe::Tcp(TcpProbe::new(address)));
    let first = sb.start(config).await;
    wait_for("the daemon to be replaced", SOON, || {
        let info = sb.manager.process_info("t").unwrap();
        info.state == ProcessState::Running && info.pid != Some(first.pid)
    })
    .await;
    let reason = sb.manager.process_info("t").unwrap().last_error.unwrap();
    assert!(
        reason.contains("health checks") && reason.contains("refused"),
        "{reason}"
    );
    first.wait_dead("the first incarnation").await;
    TcpStream::connect(address).expect("the new incarnation listens");
}

#[tokio::test]
async fn a_non_loopback_address_needs_remote() {
    let sb = Sandbox::new();
    let far: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let error = sb
        .manager
        .start_process(
            sb.worker("far", &[])
                .readiness(Readiness::Tcp(TcpProbe::new(far))),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("remote = true"), "{error}");
    // Configured explicitly, it is probed (and here never answers).
    let error = sb
        .manager
        .start_process(
            sb.worker("far", &[])
                .readiness(Readiness::Tcp(TcpProbe::new(far).remote(true)))
                .startup_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::NotReady { waited_for, .. } if waited_for.contains("192.0.2.1:80")),
        "{error}"
    );
}

fn http_url(address: SocketAddr, path: &str) -> String {
    format!("http://{address}{path}")
}

#[tokio::test]
async fn http_readiness_over_tcp_waits_for_a_late_bind() {
    let sb = Sandbox::new();
    let address = free_address();
    let config = sb
        .worker(
            "h",
            &[
                "--tcp",
                &address.to_string(),
                "--http",
                "--bind-delay",
                "300",
            ],
        )
        .readiness(Readiness::Http(HttpProbe::new(http_url(
            address, "/healthz",
        ))));
    let _daemon = sb.start(config).await;
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn http_readiness_over_the_daemons_unix_socket() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("u", &["--http", "--http-status", "204"])
        .readiness(Readiness::Http(
            HttpProbe::new("/status").expect_status(204),
        ))
        .healthcheck(fast_checks(2))
        .health_probe(HealthProbe::Http(
            HttpProbe::new("/status").expect_status(204),
        ));
    let daemon = sb.start(config).await;
    assert!(sb.manager.process_info("u").unwrap().readiness_checked);
    assert!(daemon.alive());
}

/// Starts a daemon answering HTTP with `flags` and a short startup
/// timeout, and returns why it was never ready.
async fn http_not_ready(flags: &[&str]) -> String {
    let sb = Sandbox::new();
    let address = free_address();
    let mut args = vec!["--tcp", &*Box::leak(address.to_string().into_boxed_str())];
    args.extend_from_slice(flags);
    let started = std::time::Instant::now();
    let error = sb
        .manager
        .start_process(
            sb.worker("h", &args)
                .readiness(Readiness::Http(HttpProbe::new(http_url(address, "/"))))
                .startup_timeout(Duration::from_millis(1500)),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < SOON, "the start hung");
    let Error::NotReady { waited_for, .. } = &error else {
        panic!("expected NotReady, got {error:?}");
    };
    assert!(sb.manager.process_info("h").unwrap().pid.is_none());
    waited_for.clone()
}

#[tokio::test]
async fn http_answers_that_do_not_pass_are_not_ready() {
    let reason = http_not_ready(&["--http", "--http-status", "503"]).await;
    assert!(reason.contains("answered 503, expected 2xx"), "{reason}");
    let reason = http_not_ready(&["--http-garbage"]).await;
    assert!(reason.contains("no valid answer"), "{reason}");
    let reason = http_not_ready(&["--http", "--wedge"]).await;
    assert!(reason.contains("no answer within"), "{reason}");
}

#[tokio::test]
async fn exec_readiness_runs_in_the_daemons_env_and_cwd() {
    let sb = Sandbox::new();
    let marker = "ready-marker";
    // A relative path: found only from the daemon's working directory.
    let config = sb
        .worker("cwd", &["--bind-delay", "200", "--pid-file", marker])
        .plugin_path(sb.dir.path())
        .readiness(Readiness::Exec(ExecProbe::new(["test", "-e", marker])));
    let _daemon = sb.start(config).await;
    assert!(
        sb.path(marker).exists(),
        "running before the command passed"
    );
    // `printenv NAME` fails when NAME is not in its environment.
    let config = sb
        .worker("env", &[])
        .env("PROBE_ONLY_IN_DAEMON_ENV", "yes")
        .readiness(Readiness::Exec(ExecProbe::new([
            "printenv",
            "PROBE_ONLY_IN_DAEMON_ENV",
        ])));
    let _daemon = sb.start(config).await;
    let error = sb
        .manager
        .start_process(
            sb.worker("noenv", &[])
                .readiness(Readiness::Exec(ExecProbe::new([
                    "printenv",
                    "PROBE_ONLY_IN_DAEMON_ENV",
                ])))
                .startup_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("exited with code 1"), "{error}");
}

/// PIDs of live processes whose command line holds `needle`.
fn processes_running(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[tokio::test]
async fn an_exec_check_that_overruns_is_killed_with_its_group() {
    let sb = Sandbox::new();
    // Unique, so only this test's sleeps are found.
    let nap = format!(
        "{}.{}",
        600 + fastrand::u32(0..1000),
        fastrand::u32(0..1000)
    );
    let config = sb
        .worker("slow", &[])
        .readiness(Readiness::None)
        .healthcheck(HealthCheck::new(
            Duration::from_millis(100),
            Duration::from_millis(300),
            1,
        ))
        .health_probe(HealthProbe::Exec(ExecProbe::new(["sleep", nap.as_str()])))
        .max_restart_attempts(0);
    let _daemon = sb.start(config).await;
    wait_for("the health check to fail", SOON, || {
        sb.manager.process_info("slow").unwrap().state == ProcessState::Error
    })
    .await;
    let reason = sb.manager.process_info("slow").unwrap().last_error.unwrap();
    assert!(reason.contains("did not finish within"), "{reason}");
    wait_for("the overrunning check to be gone", SOON, || {
        processes_running(&nap).is_empty()
    })
    .await;
}

#[tokio::test]
async fn log_readiness_waits_for_a_matching_line() {
    let sb = Sandbox::new();
    let config = sb
        .worker(
            "l",
            &[
                "--stdout",
                "starting up",
                "--bind-delay",
                "200",
                "--announce",
                "Ready to accept connections tcp",
            ],
        )
        .readiness(Readiness::Log(r"(?i)ready to accept\b".into()));
    let _daemon = sb.start(config).await;
    let lines = sb.log_texts("l", Stream::Stdout);
    assert!(
        lines.iter().any(|l| l.contains("Ready to accept")),
        "running before the line: {lines:?}"
    );
    let error = sb
        .manager
        .start_process(
            sb.worker("quiet", &["--stdout", "nothing to see"])
                .readiness(Readiness::Log("never printed".into()))
                .startup_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no line of output matched"),
        "{error}"
    );
}

#[tokio::test]
async fn readiness_none_is_reported_as_not_checked() {
    let sb = Sandbox::new();
    let _none = sb
        .start(sb.worker("none", &[]).readiness(Readiness::None))
        .await;
    assert!(!sb.manager.process_info("none").unwrap().readiness_checked);
    let _socket = sb.start(sb.daemon("sock", &[])).await;
    assert!(sb.manager.process_info("sock").unwrap().readiness_checked);
}

/// redis-server, a real daemon speaking the systemd notify protocol, is
/// ready by notify through tend (skipped, saying why, where it is not
/// installed; CI installs it).
#[tokio::test]
async fn redis_server_is_ready_by_notify() {
    let Some(redis) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!(
            "SKIPPED redis_server_is_ready_by_notify: redis-server is not installed (apt-get install redis-server)"
        );
        return;
    };
    let sb = Sandbox::new();
    let socket = sb.path("redis.sock");
    let config = tend::BackgroundProcessConfig::new("redis", redis)
        .args([
            "--supervised",
            "systemd",
            "--port",
            "0",
            "--unixsocket",
            socket.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            sb.dir.path().to_str().unwrap(),
        ])
        .readiness(Readiness::Notify)
        .startup_timeout(Duration::from_secs(20));
    let _daemon = sb.start(config).await;
    let info = sb.manager.process_info("redis").unwrap();
    assert_eq!(info.state, ProcessState::Running);
    let status = info.status_text.unwrap_or_default();
    assert!(status.contains("Ready to accept connections"), "{status:?}");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("redis accepts");
    stream.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    sb.manager.stop_process("redis").await.unwrap();
}
