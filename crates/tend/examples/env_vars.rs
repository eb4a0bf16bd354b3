//! Passing environment variables to a daemon.
//!
//! A daemon inherits the caller's environment; `env` and `envs` add to it
//! (a later entry wins), and tend sets `SOCKET_PATH` itself. The example
//! reads the running daemon's environment back from `/proc/<pid>/environ`
//! to show what it got. Run with:
//!
//! ```text
//! cargo run -p tend --example env_vars
//! ```

use tend::{BackgroundProcessConfig, BackgroundProcessManager};

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let manager = BackgroundProcessManager::new();

    let config = BackgroundProcessConfig::new("with-env", "python3")
        .args([ECHO_DAEMON])
        .socket_path(sockets.path().join("with-env.sock"))
        // In an app the key would come from its own settings.
        .envs([("API_KEY", "demo-key"), ("PORT", "8080")])
        .env("LOG_LEVEL", "info")
        // Set twice: the later value is the one the daemon sees.
        .env("LOG_LEVEL", "debug");

    let result = show_environment(&manager, config).await;
    manager.stop_all_processes().await;
    result
}

async fn show_environment(
    manager: &BackgroundProcessManager,
    config: BackgroundProcessConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    manager.start_process(config).await?;
    let pid = manager.pid("with-env")?.ok_or("no pid while running")?;

    // Linux only: the environment the daemon was started with.
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    for entry in environ.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        let shown = ["API_KEY=", "PORT=", "LOG_LEVEL=", "SOCKET_PATH="]
            .iter()
            .any(|key| entry.starts_with(key));
        if shown {
            println!("daemon {pid} has {entry}");
        }
    }
    Ok(())
}
