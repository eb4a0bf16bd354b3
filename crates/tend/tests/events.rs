//! Event delivery to daemons: order, restarts, limits. The daemon is a
//! small Python program, `examples/daemons/recorder.py`, that appends every
//! line it receives to a file.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use tend::{BackgroundProcessConfig, BackgroundProcessManager, Error};

const RECORDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/recorder.py"
);

struct Fixture {
    dir: tempfile::TempDir,
    manager: BackgroundProcessManager,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("te")
            .tempdir_in("/tmp")
            .unwrap();
        let manager = BackgroundProcessManager::builder()
            .state_dir(dir.path().join("state"))
            .build();
        Fixture { dir, manager }
    }

    fn recorder(&self, name: &str) -> BackgroundProcessConfig {
        BackgroundProcessConfig::new(name, "python3")
            .args([RECORDER])
            .socket_path(self.dir.path().join(format!("{name}.sock")))
            .env("RECORD", self.record(name))
            .restart_delay(Duration::from_millis(10))
            .startup_timeout(Duration::from_secs(20))
    }

    fn record(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.jsonl"))
    }
}

/// The `data` of every `on_event` notification the daemon recorded.
fn received(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["method"] == "on_event")
        .map(|m| m["params"]["data"].clone())
        .collect()
}

async fn wait_for_events(path: &Path, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = received(path);
        if got.len() >= count {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} events arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn events_arrive_in_publish_order_and_after_a_restart() {
    let fx = Fixture::new();
    let m = &fx.manager;
    m.start_process(fx.recorder("rec").events(["tick"]))
        .await
        .unwrap();
    for i in 0..200 {
        assert_eq!(m.publish("tick", json!(i)).unwrap(), 1);
        // Not subscribed: never delivered.
        assert_eq!(m.publish("other", json!(-1)).unwrap(), 0);
    }
    let first = wait_for_events(&fx.record("rec"), 200).await;
    assert_eq!(first, (0..200).map(|i| json!(i)).collect::<Vec<_>>());

    let pid = m.pid("rec").ok().flatten().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(m.is_running("rec") && m.pid("rec").ok().flatten() != Some(pid)) {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 200..300 {
        m.publish("tick", json!(i)).unwrap();
    }
    let all = wait_for_events(&fx.record("rec"), 300).await;
    assert_eq!(all, (0..300).map(|i| json!(i)).collect::<Vec<_>>());
    m.stop_all_processes().await;
}

#[tokio::test]
async fn subscriptions_need_a_known_daemon_with_a_socket() {
    let fx = Fixture::new();
    let m = &fx.manager;
    assert!(matches!(
        m.subscribe_daemon("nobody", ["x"]),
        Err(Error::UnknownProcess(_))
    ));
    let worker = BackgroundProcessConfig::new("worker", "python3")
        .args(["-c", "import time; time.sleep(60)"]);
    m.start_process(worker).await.unwrap();
    assert!(matches!(
        m.subscribe_daemon("worker", ["x"]),
        Err(Error::NoSocket(_))
    ));
    let bad = BackgroundProcessConfig::new("bad", "python3").events(["x"]);
    assert!(matches!(
        m.start_process(bad).await,
        Err(Error::InvalidConfig { .. })
    ));
    m.stop_all_processes().await;
}

#[tokio::test]
async fn oversized_events_are_refused() {
    let fx = Fixture::new();
    let big = "x".repeat(tend::defaults::MAX_EVENT_BYTES + 1);
    assert!(matches!(
        fx.manager.publish("big", json!(big)),
        Err(Error::EventTooLarge { .. })
    ));
}
