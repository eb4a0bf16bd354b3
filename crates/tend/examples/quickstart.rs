//! The quick start: start one plugin daemon with every setting of the
//! classic quick start spelled out, check that it runs, then stop it.
//!
//! The daemon is `examples/daemons/echo_daemon.py`, a small JSON-RPC
//! service that follows tend's daemon contract. Run with:
//!
//! ```text
//! cargo run -p tend --example quickstart
//! ```

use std::path::Path;

use tend::{BackgroundProcessConfig, BackgroundProcessManager, HealthCheck, defaults};

/// The folder of the example plugin; the daemon runs with it as its
/// working directory.
const PLUGIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/daemons");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Unix socket paths are limited to 107 bytes, so keep them short.
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let socket_path = sockets.path().join("my-plugin.sock");
    assert!(Path::new(PLUGIN_DIR).join("echo_daemon.py").is_file());

    let manager = BackgroundProcessManager::new();

    // Start a daemon. `start_process` returns once its socket accepts a
    // connection, or with the reason it could not get there.
    manager
        .start_process(
            BackgroundProcessConfig::new("my-plugin", "python3")
                .plugin_path(PLUGIN_DIR)
                .args(["echo_daemon.py"])
                .socket_path(&socket_path)
                .startup_timeout(defaults::STARTUP_TIMEOUT)
                .shutdown_grace_period(defaults::SHUTDOWN_GRACE_PERIOD)
                .healthcheck(HealthCheck::new(
                    defaults::HEALTH_CHECK_INTERVAL,
                    defaults::HEALTH_CHECK_TIMEOUT,
                    defaults::MAX_HEALTH_CHECK_FAILURES,
                )),
        )
        .await?;
    println!(
        "my-plugin is {} with pid {:?}, serving {}",
        manager.state("my-plugin")?,
        manager.pid("my-plugin")?,
        socket_path.display()
    );

    // Stop a daemon: SIGTERM to its process group, SIGKILL after the grace
    // period; returns as soon as no member of the group is left.
    let asked = tokio::time::Instant::now();
    manager.stop_process("my-plugin").await?;
    println!(
        "my-plugin is {} after {:?}; socket file left behind: {}",
        manager.state("my-plugin")?,
        asked.elapsed(),
        socket_path.exists()
    );

    // Stop all daemons (on app shutdown).
    manager.stop_all_processes().await;
    Ok(())
}
