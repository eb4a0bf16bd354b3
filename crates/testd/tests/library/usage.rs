//! Resource usage in `process_info` and the cost of reading it.

use std::time::{Duration, Instant};

use tend::{BackgroundProcessManager, ContainmentChoice};

use crate::harness::{Sandbox, testd};

/// Starts 200 workers under each containment and times `list()`: run with
/// `cargo test --release -p testd --test library list_cost -- --ignored
/// --nocapture` and read the printed cost per daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn list_cost_per_daemon() {
    const DAEMONS: usize = 200;
    const ROUNDS: u32 = 50;
    for choice in [ContainmentChoice::Cgroup, ContainmentChoice::ProcessGroup] {
        let sb = Sandbox::new();
        let manager = BackgroundProcessManager::builder()
            .state_dir(sb.state_dir())
            .containment(choice)
            .build();
        let mut refused = None;
        for i in 0..DAEMONS {
            let config = tend::BackgroundProcessConfig::new(format!("w{i}"), testd())
                .args(["--never-bind"])
                .shutdown_grace_period(Duration::from_secs(5));
            if let Err(e) = manager.start_process(config).await {
                refused = Some(e);
                break;
            }
        }
        if let Some(e) = refused {
            eprintln!("{choice:?} not available here: {e}");
            manager.stop_all_processes().await;
            continue;
        }
        let _ = manager.list();
        let begin = Instant::now();
        for _ in 0..ROUNDS {
            assert_eq!(manager.list().len(), DAEMONS);
        }
        let per_daemon = begin.elapsed() / (ROUNDS * DAEMONS as u32);
        eprintln!(
            "list() with {:?}: {per_daemon:?} per daemon ({DAEMONS} daemons, {ROUNDS} rounds)",
            manager.containment().unwrap()
        );
        manager.stop_all_processes().await;
    }
}
