//! Following state changes with `subscribe`: a daemon starts, is killed,
//! is restarted by tend, and is stopped. Every change arrives as a
//! `ProcessEvent` with the old and new state, a reason and the PID.
//!
//! Run with (set `RUST_LOG=tend=debug` to also see tend's own log):
//!
//! ```text
//! cargo run -p tend --example events
//! ```

use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tend::{BackgroundProcessConfig, BackgroundProcessManager, ProcessState, Subscription};
use tracing_subscriber::EnvFilter;

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .init();
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let manager = BackgroundProcessManager::new();

    // Subscribe first: a subscription sees the events sent after it exists.
    let events = manager.subscribe();
    let printer = tokio::spawn(print_events(events));

    let result = start_crash_stop(&manager, sockets.path()).await;
    manager.stop_all_processes().await;
    // The printer ends when it has seen `Stopped`; do not wait forever if
    // something went wrong.
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    result
}

async fn start_crash_stop(
    manager: &BackgroundProcessManager,
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    manager
        .start_process(
            BackgroundProcessConfig::new("echo", "python3")
                .args([ECHO_DAEMON])
                .socket_path(dir.join("echo.sock"))
                // Restart quickly so the example is short (default 5 s).
                .restart_delay(Duration::from_millis(200)),
        )
        .await?;

    // Simulate a crash: SIGKILL the daemon behind tend's back.
    let pid = manager.pid("echo")?.ok_or("no pid while running")?;
    println!("-- killing pid {pid}");
    kill_process(Pid::from_raw(pid as i32).ok_or("bad pid")?, Signal::KILL)?;

    // Wait until tend has brought up a new incarnation.
    wait_until(Duration::from_secs(10), || {
        manager.is_running("echo") && manager.pid("echo").ok().flatten().is_some_and(|p| p != pid)
    })
    .await?;
    println!("-- restarted as pid {:?}; stopping", manager.pid("echo")?);
    manager.stop_process("echo").await?;
    Ok(())
}

async fn print_events(mut events: Subscription) {
    while let Some(event) = events.recv().await {
        let pid = event.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "{}: {} -> {} (pid {pid}): {}",
            event.name, event.from, event.to, event.reason
        );
        if event.to == ProcessState::Stopped {
            return;
        }
    }
}

/// Checks `condition` every few milliseconds until it holds or `timeout`
/// passes. (Polling is fine in an example; tend itself waits on events.)
async fn wait_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return Err("timed out waiting for the restart".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
