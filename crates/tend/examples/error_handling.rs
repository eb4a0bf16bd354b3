//! What a failure looks like: the error `start_process` returns, and the
//! `last_error` that `process_info` keeps afterwards.
//!
//! Five daemons fail in different ways: one exits before it listens, one
//! never listens, one cannot be executed, one has an invalid config, and
//! one fails repeatedly after it was running until tend gives up. Run with:
//!
//! ```text
//! cargo run -p tend --example error_handling
//! ```

use std::{path::Path, time::Duration};

use tend::{BackgroundProcessConfig, BackgroundProcessManager, Error, ProcessState};

/// Writes to stderr and exits before binding its socket.
const EXITS_EARLY: &str = r#"
import sys
print("config.json: no such file", file=sys.stderr)
sys.exit(3)
"#;

/// Runs but never creates its socket.
const NEVER_LISTENS: &str = "import time; time.sleep(60)";

/// Listens, then fails a moment later.
const FAILS_LATER: &str = r#"
import os, socket, sys, time
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(os.environ["SOCKET_PATH"])
server.listen()
time.sleep(0.3)
print("lost the connection to the database", file=sys.stderr)
sys.exit(1)
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let manager = BackgroundProcessManager::new();
    let result = fail_in_five_ways(&manager, sockets.path()).await;
    manager.stop_all_processes().await;
    result
}

async fn fail_in_five_ways(
    manager: &BackgroundProcessManager,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let python = |name: &str, script: &str| {
        BackgroundProcessConfig::new(name, "python3")
            .args(["-c", script])
            .socket_path(dir.join(format!("{name}.sock")))
    };

    // 1. The daemon exits before it is ready: the error carries its exit
    //    status and the last lines of its stderr.
    try_start(manager, python("exits-early", EXITS_EARLY)).await;

    // 2. Nothing accepts on the socket in time: tend kills the process
    //    group and reports the timeout.
    try_start(
        manager,
        python("never-listens", NEVER_LISTENS).startup_timeout(Duration::from_secs(1)),
    )
    .await;

    // 3. The program cannot be executed at all.
    try_start(
        manager,
        BackgroundProcessConfig::new("missing", "no-such-program-here")
            .socket_path(dir.join("missing.sock")),
    )
    .await;

    // 4. The config is rejected before anything runs; every problem is
    //    listed at once, and no process of that name is recorded.
    try_start(
        manager,
        BackgroundProcessConfig::new("bad config", "python3")
            .socket_path("relative.sock")
            .startup_timeout(Duration::ZERO),
    )
    .await;

    // 5. A daemon that was running fails, is restarted once, fails again,
    //    and tend gives up: its state becomes `Error`.
    let mut events = manager.subscribe();
    manager
        .start_process(
            python("fails-later", FAILS_LATER)
                .max_restart_attempts(1)
                .restart_delay(Duration::from_millis(100)),
        )
        .await?;
    println!("fails-later: started");
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if event.name == "fails-later" && event.to == ProcessState::Error {
                return;
            }
        }
    })
    .await?;
    let info = manager.process_info("fails-later")?;
    println!(
        "fails-later: state {}, {} restart(s), last_error: {}",
        info.state,
        info.restart_attempts,
        info.last_error.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// Starts `config` and prints why it failed.
async fn try_start(manager: &BackgroundProcessManager, config: BackgroundProcessConfig) {
    let name = config.name.clone();
    let Err(error) = manager.start_process(config).await else {
        println!("{name}: started (unexpectedly)");
        return;
    };
    // The variants say what kind of failure it was; `Error` is
    // non-exhaustive, so a catch-all arm is required.
    let kind = match &error {
        Error::ExitedBeforeReady { status, .. } => format!("exited before ready ({status})"),
        Error::StartupTimeout { timeout, .. } => format!("startup timeout ({timeout:?})"),
        Error::Spawn { source, .. } => format!("could not spawn ({source})"),
        Error::InvalidConfig { problems, .. } => {
            format!("invalid config ({} problems)", problems.len())
        }
        _ => "other".to_owned(),
    };
    println!("{name}: {kind}");
    println!("  error:      {error}");
    match manager.process_info(&name) {
        Ok(info) => println!(
            "  state:      {}\n  last_error: {}",
            info.state,
            info.last_error.as_deref().unwrap_or("-")
        ),
        Err(_) => println!("  (no process of that name was recorded)"),
    }
}
