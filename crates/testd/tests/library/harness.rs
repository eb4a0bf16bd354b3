//! Shared helpers: a short temp dir per test, a manager rooted in it, the
//! test daemon's path, and waiting on conditions with deadlines.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use tend::{BackgroundProcessConfig, BackgroundProcessManager};
use tokio::time::Instant;

/// Path of the `testd` binary built with these tests.
pub fn testd() -> &'static str {
    env!("CARGO_BIN_EXE_testd")
}

/// A per-test directory under /tmp with a short path (socket paths must
/// stay under 108 bytes), and a manager whose state lives in it. Dropping
/// it kills every daemon the manager still runs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub manager: BackgroundProcessManager,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("td")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let manager = BackgroundProcessManager::builder()
            .state_dir(dir.path().join("state"))
            .build();
        Sandbox { dir, manager }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// A config running `testd` with `args`, a socket in the sandbox, and
    /// fast timings suitable for tests.
    pub fn daemon(&self, name: &str, args: &[&str]) -> BackgroundProcessConfig {
        BackgroundProcessConfig::new(name, testd())
            .args(args.iter().copied())
            .socket_path(self.socket(name))
            .startup_timeout(Duration::from_secs(10))
            .shutdown_grace_period(Duration::from_secs(5))
            .restart_delay(Duration::from_millis(10))
    }
}

/// Waits until `condition` holds, checking it each time `tick` resolves,
/// or panics with `what` at the deadline.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut condition: F) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `future` with a deadline, panicking with `what` if it passes.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
