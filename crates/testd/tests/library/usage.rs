//! Resource usage in `process_info` and the cost of reading it.

use std::time::{Duration, Instant};

use tend::{BackgroundProcessManager, ContainmentChoice};

use crate::harness::{SOON, Sandbox, testd};

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
        // References under the same load: one read of each daemon's
        // `cpu.stat` (all that list() read before the memory fallback), or
        // of each leader's `/proc/<pid>/stat`.
        let pids: Vec<u32> = manager.list().iter().filter_map(|i| i.pid).collect();
        let files: Vec<std::path::PathBuf> = match manager.cgroup_path() {
            Some(cgroup) => (0..DAEMONS)
                .map(|i| cgroup.join(format!("d-w{i}/cpu.stat")))
                .collect(),
            None => pids
                .iter()
                .map(|pid| format!("/proc/{pid}/stat").into())
                .collect(),
        };
        let begin = Instant::now();
        for _ in 0..ROUNDS {
            for file in &files {
                let _ = std::fs::read(file);
            }
        }
        let reference = begin.elapsed() / (ROUNDS * DAEMONS as u32);
        eprintln!("  reference: one read of {:?}: {reference:?}", files[0]);
        manager.stop_all_processes().await;
    }
}

fn manager_in(sb: &Sandbox, choice: ContainmentChoice) -> BackgroundProcessManager {
    BackgroundProcessManager::builder()
        .state_dir(sb.state_dir())
        .containment(choice)
        .build()
}

/// A running daemon's CPU time and memory are in its snapshot, under
/// either containment (the memory from `/proc` where the v2 memory
/// controller is missing, as on hybrid hosts).
#[tokio::test]
async fn usage_of_a_running_daemon() {
    for choice in [ContainmentChoice::Auto, ContainmentChoice::ProcessGroup] {
        let sb = Sandbox::new();
        let manager = manager_in(&sb, choice);
        manager
            .start_process(sb.worker("busy", &["--never-bind"]))
            .await
            .unwrap();
        let _tracked = crate::harness::Tracked::new(manager.pid("busy").ok().flatten().unwrap());
        let containment = manager.containment().unwrap();
        assert_eq!(
            manager.process_info("busy").unwrap().containment,
            Some(containment)
        );
        // Ready at spawn: the leader may not have exec'd testd yet, which
        // maps its binary and a tokio runtime, well over 256 KiB.
        let memory = || {
            let usage = manager.process_info("busy").unwrap().usage;
            usage.expect("usage of a live daemon").memory_bytes
        };
        crate::harness::wait_for(&format!("{containment}: testd's memory"), SOON, || {
            memory().is_some_and(|bytes| bytes > 256 << 10)
        })
        .await;
        let memory = memory().unwrap();
        assert!(memory < 1 << 30, "{containment}: {memory} bytes");
        manager.stop_process("busy").await.unwrap();
        assert_eq!(manager.process_info("busy").unwrap().usage, None);
    }
}

/// Limits under process-group containment are refused before anything is
/// spawned, with the daemon, the limit and the reason named.
#[tokio::test]
async fn limits_are_refused_with_process_groups() {
    let sb = Sandbox::new();
    let manager = manager_in(&sb, ContainmentChoice::ProcessGroup);
    let error = manager
        .start_process(sb.worker("capped", &["--never-bind"]).pids_max(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            tend::Error::LimitUnavailable {
                limit: "pids_max",
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("\"capped\""), "{text}");
    assert!(text.contains("pids_max needs cgroup containment"), "{text}");
    assert_refused_in_error(&manager, "capped", &text).await;
}

/// Where the controller is delegated, the limit is written to the daemon's
/// cgroup; where it is not, the start fails with the reason and nothing is
/// left running or registered.
async fn limit_applies_or_is_refused(
    limit: &str,
    config: impl Fn(tend::BackgroundProcessConfig) -> tend::BackgroundProcessConfig,
    file: &str,
    written: &str,
) {
    let sb = Sandbox::new();
    let manager = manager_in(&sb, ContainmentChoice::Cgroup);
    let name = "capped";
    let started = manager
        .start_process(config(sb.worker(name, &["--never-bind"])))
        .await;
    let Some(cgroup) = manager.cgroup_path() else {
        eprintln!("skipped: no cgroup containment here: {started:?}");
        return;
    };
    match started {
        Ok(()) => {
            let _tracked = crate::harness::Tracked::new(manager.pid(name).ok().flatten().unwrap());
            let value =
                std::fs::read_to_string(cgroup.join(format!("d-{name}")).join(file)).unwrap();
            assert_eq!(value.trim(), written, "{file}");
            eprintln!("{limit}: applied ({file} = {written})");
            manager.stop_process(name).await.unwrap();
        }
        Err(error) => {
            eprintln!("{limit}: refused here, as it should be: {error}");
            let text = error.to_string();
            assert!(
                matches!(&error, tend::Error::LimitUnavailable { limit: l, .. } if *l == limit),
                "{error:?}"
            );
            assert!(text.contains(&format!("cannot start \"{name}\"")), "{text}");
            assert!(text.contains(&format!("{limit} needs the")), "{text}");
            assert!(text.contains("controller"), "{text}");
            assert!(text.contains(&format!("remove {limit}")), "{text}");
            assert_refused_in_error(&manager, name, &text).await;
            // No daemon cgroup was made, so nothing can run in one.
            assert!(!cgroup.join(format!("d-{name}")).exists());
        }
    }
}

/// A refused daemon is in `Error` with the refusal as its last error,
/// with no PID, and stopping it does nothing.
async fn assert_refused_in_error(manager: &BackgroundProcessManager, name: &str, text: &str) {
    let info = manager
        .process_info(name)
        .expect("the refused daemon is listed");
    assert_eq!(info.state, tend::ProcessState::Error);
    assert_eq!(info.pid, None);
    assert_eq!(info.usage, None);
    assert_eq!(info.last_error.as_deref(), Some(text));
    manager.stop_process(name).await.unwrap();
    assert_eq!(manager.state(name).ok(), Some(tend::ProcessState::Error));
}

#[tokio::test]
async fn memory_max_applies_or_is_refused() {
    limit_applies_or_is_refused(
        "memory_max",
        |c| c.memory_max(256 << 20),
        "memory.max",
        "268435456",
    )
    .await;
}

#[tokio::test]
async fn pids_max_applies_or_is_refused() {
    limit_applies_or_is_refused("pids_max", |c| c.pids_max(32), "pids.max", "32").await;
}

#[tokio::test]
async fn cpu_max_applies_or_is_refused() {
    limit_applies_or_is_refused("cpu_max", |c| c.cpu_max(0.5), "cpu.max", "50000 100000").await;
}
