//! `tend-embedder`: the smallest app that embeds tend, for tests of what
//! becomes of its daemons when the app itself dies (for instance by
//! SIGKILL, when no destructor runs).
//!
//! ```text
//! tend-embedder STATE_DIR SOCKET_DIR TESTD SPEC...
//! ```
//!
//! Each SPEC is a daemon name followed by `testd` flags, separated by
//! spaces: `"b --ignore-sigterm"`. The daemons run TESTD, listen on
//! `SOCKET_DIR/<name>.sock`, and get a 500 ms shutdown grace period; the
//! manager keeps its orphan records in STATE_DIR. They are started one
//! after the other; for each, one line `started <name> <pid>` is printed,
//! then `ready`, and the program waits forever. A failed start prints
//! `failed <name>: <error>` to stderr and exits 1; a usage error exits 100.

use std::{path::PathBuf, time::Duration};

use tend::{BackgroundProcessConfig, BackgroundProcessManager};

const USAGE: &str = "usage: tend-embedder STATE_DIR SOCKET_DIR TESTD SPEC...";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state_dir, socket_dir, testd, specs @ ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(100);
    };
    if specs.is_empty() {
        eprintln!("{USAGE}");
        std::process::exit(100);
    }
    let manager = BackgroundProcessManager::builder()
        .state_dir(state_dir)
        .build();
    for spec in specs {
        let mut words = spec.split_whitespace();
        let Some(name) = words.next() else {
            eprintln!("empty SPEC\n{USAGE}");
            std::process::exit(100);
        };
        let config = BackgroundProcessConfig::new(name, testd)
            .args(words)
            .socket_path(PathBuf::from(socket_dir).join(format!("{name}.sock")))
            .startup_timeout(Duration::from_secs(10))
            .shutdown_grace_period(Duration::from_millis(500));
        if let Err(e) = manager.start_process(config).await {
            eprintln!("failed {name}: {e}");
            std::process::exit(1);
        }
        let pid = manager.pid(name).unwrap_or_default();
        println!("started {name} {pid}");
    }
    println!("ready");
    std::future::pending::<()>().await;
}
