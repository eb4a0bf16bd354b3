//! Stopping every daemon when the app shuts down.
//!
//! The app waits for Ctrl-C, SIGTERM, or (so the example ends by itself)
//! one second, then calls `stop_all_processes`, which stops every daemon in
//! parallel and refuses later starts. Run with:
//!
//! ```text
//! cargo run -p tend --example app_shutdown
//! ```
//!
//! Press Ctrl-C within the first second to shut down on the signal instead.

use std::time::Duration;

use tend::{BackgroundProcessConfig, BackgroundProcessManager};
use tokio::signal::unix::{SignalKind, signal};

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let manager = BackgroundProcessManager::new();
    // Register for SIGTERM before starting anything, so a signal that
    // arrives during the starts is not lost.
    let mut sigterm = signal(SignalKind::terminate())?;

    for name in ["plugin-a", "plugin-b", "plugin-c"] {
        let started = manager
            .start_process(
                BackgroundProcessConfig::new(name, "python3")
                    .args([ECHO_DAEMON])
                    .socket_path(sockets.path().join(format!("{name}.sock"))),
            )
            .await;
        if let Err(e) = started {
            eprintln!("{name} did not start: {e}");
        }
    }
    let running = manager.list().iter().filter(|i| i.pid.is_some()).count();
    println!("{running} daemons running; waiting for Ctrl-C, SIGTERM or 1 s");

    let why = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = sigterm.recv() => "SIGTERM",
        () = tokio::time::sleep(Duration::from_secs(1)) => "timer",
    };

    println!("shutting down ({why})");
    manager.stop_all_processes().await;
    for info in manager.list() {
        println!("  {} is {}", info.name, info.state);
    }

    // The manager now refuses to start anything.
    let late = BackgroundProcessConfig::new("late", "python3").args([ECHO_DAEMON]);
    if let Err(e) = manager.start_process(late).await {
        println!("a start after shutdown is refused: {e}");
    }
    Ok(())
}
