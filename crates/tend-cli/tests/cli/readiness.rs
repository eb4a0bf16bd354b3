//! Readiness kinds through `tend up`: the bundled redis example ready by
//! notify (where redis-server is installed), a TCP daemon, and a daemon
//! whose readiness is not checked, as `tend status` shows them.

use std::{fs, path::Path};

use crate::harness::*;

#[test]
fn the_redis_example_is_ready_by_notify_and_shows_its_status() {
    if !["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!(
            "SKIPPED the_redis_example_is_ready_by_notify_and_shows_its_status: \
             redis-server is not installed (apt-get install redis-server)"
        );
        return;
    }
    let sandbox = Sandbox::new();
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs/redis-notify.toml");
    let text = fs::read_to_string(example).unwrap();
    let config = sandbox.config_named(
        "tend.toml",
        &format!("[settings]\nstate_dir = \"st\"\n\n{text}"),
    );
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    let processes = wait_for_states(&sandbox, &config, &[("redis", "running")]);
    let redis = process(&processes, "redis");
    let _tracked = Tracked::new(pid_of(redis));
    let status = redis["status_text"].as_str().unwrap_or_default();
    assert!(status.contains("Ready to accept connections"), "{redis}");
    assert_eq!(redis["readiness_checked"], true, "{redis}");
    // Running means it serves.
    let mut stream =
        std::os::unix::net::UnixStream::connect(sandbox.path().join("redis.sock")).unwrap();
    std::io::Write::write_all(&mut stream, b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    std::io::Read::read_exact(&mut stream, &mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let table = sandbox.run(&["status", "-c", c]);
    assert!(
        table.stdout.contains("status: Ready to accept connections"),
        "{}",
        table.stdout
    );
    sandbox.run(&["down", "-c", c]).expect_success();
}

#[test]
fn tcp_readiness_and_unchecked_readiness_in_status() {
    let sandbox = Sandbox::new();
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let testd = testd();
    let config = sandbox.config(&format!(
        r#"
[process.web]
command = "{testd}"
args = ["--tcp", "{address}", "--http", "--bind-delay", "200"]
ready = {{ tcp = "{address}" }}
[process.web.healthcheck]
probe = "http"
url = "http://{address}/healthz"
interval = "200ms"

[process.worker]
command = "{testd}"
ready = {{ none = true }}
"#,
        testd = testd.display(),
    ));
    let c = config.to_str().unwrap();
    let _up = sandbox.up(&config);
    let processes = wait_for_states(
        &sandbox,
        &config,
        &[("web", "running"), ("worker", "running")],
    );
    let web = process(&processes, "web");
    let worker = process(&processes, "worker");
    let _web = Tracked::new(pid_of(web));
    let _worker = Tracked::new(pid_of(worker));
    assert_eq!(web["readiness_checked"], true, "{web}");
    assert_eq!(worker["readiness_checked"], false, "{worker}");
    std::net::TcpStream::connect(address).expect("running means the port accepts");
    let table = sandbox.run(&["status", "-c", c]);
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("worker"))
        .unwrap_or_default()
        .to_owned();
    assert!(line.contains("not checked"), "{}", table.stdout);
    sandbox.run(&["down", "-c", c]).expect_success();
}
