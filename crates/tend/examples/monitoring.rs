//! Reading what tend knows about its daemons: `is_running`, `state`,
//! `pid`, `process_info` and `list`, plus the captured output (`logs`).
//!
//! Queries read a snapshot the supervisor publishes; they never wait for a
//! daemon. Run with:
//!
//! ```text
//! cargo run -p tend --example monitoring
//! ```

use tend::{BackgroundProcessConfig, BackgroundProcessManager, HealthCheck};

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let manager = BackgroundProcessManager::new();
    let result = monitor(&manager, sockets.path()).await;
    manager.stop_all_processes().await;
    result
}

async fn monitor(
    manager: &BackgroundProcessManager,
    dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    for name in ["alpha", "beta"] {
        manager
            .start_process(
                BackgroundProcessConfig::new(name, "python3")
                    .args([ECHO_DAEMON])
                    .socket_path(dir.join(format!("{name}.sock")))
                    .healthcheck(HealthCheck::default()),
            )
            .await?;
    }

    // The quick checks.
    println!("is_running(alpha) = {}", manager.is_running("alpha"));
    println!("state(alpha)      = {:?}", manager.state("alpha")?);
    println!("pid(alpha)        = {:?}", manager.pid("alpha")?);
    println!("state(unknown)    = {:?}", manager.state("unknown"));

    // Everything about one process.
    let info = manager.process_info("alpha")?;
    println!("\nprocess_info(alpha):");
    println!("  state                {}", info.state);
    println!("  pid                  {:?}", info.pid);
    println!("  uptime               {:?}", info.uptime);
    println!("  failed_health_checks {}", info.failed_health_checks);
    println!("  restart_attempts     {}", info.restart_attempts);
    println!("  last_error           {:?}", info.last_error);
    println!("  last_exit            {:?}", info.last_exit);

    // The snapshot serialises to JSON (times in milliseconds).
    println!("  as JSON: {}", serde_json::to_string(&info)?);

    // The daemon's own output, captured line by line.
    for line in manager.logs("alpha", 5)? {
        println!("  log ({:?}): {}", line.stream, line.text);
    }

    // All processes, sorted by name; a stopped one stays listed.
    manager.stop_process("beta").await?;
    println!(
        "\n{:<8} {:<9} {:>8} {:>9}",
        "NAME", "STATE", "PID", "RESTARTS"
    );
    for info in manager.list() {
        let pid = info.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "{:<8} {:<9} {:>8} {:>9}",
            info.name,
            info.state.as_str(),
            pid,
            info.restart_attempts
        );
    }
    Ok(())
}
