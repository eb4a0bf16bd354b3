//! Orphan records: what a manager does with the records of dead managers,
//! simulated by writing records by hand for processes the test spawned.

use std::path::PathBuf;

use serde_json::json;

use crate::harness::*;

/// Who a hand-written record names as its manager.
struct Owner {
    pid: u32,
    start_time: u64,
}

impl Owner {
    /// A manager that has exited: the PID of a reaped process.
    fn dead() -> Self {
        Owner {
            pid: dead_pid(),
            start_time: 1,
        }
    }

    /// A live process, identified exactly.
    fn live(pid: u32) -> Self {
        let start_time = proc_stat(pid).expect("owner is alive").start_time;
        Owner { pid, start_time }
    }
}

/// Writes the record a manager `owner` would have written for `name`
/// running as `pid` (leading its own group), but with `start_time`.
fn write_record(sb: &Sandbox, name: &str, pid: u32, start_time: u64, owner: &Owner) -> PathBuf {
    let stat = proc_stat(pid);
    let record = json!({
        "name": name,
        "pid": pid,
        "pgid": pid,
        "sid": stat.map_or(pid as i32, |s| s.sid),
        "start_time": start_time,
        "owner_pid": owner.pid,
        "owner_start_time": owner.start_time,
        "socket_path": null,
        "grace_ms": 500,
    });
    let dir = sb.orphans_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}@{}.json", owner.pid));
    std::fs::write(&path, record.to_string()).unwrap();
    path
}

/// Writes an exact record of `process` for `name`.
fn record_of(sb: &Sandbox, name: &str, process: &Spawned, owner: &Owner) -> PathBuf {
    let start_time = proc_stat(process.pid()).unwrap().start_time;
    write_record(sb, name, process.pid(), start_time, owner)
}

#[tokio::test]
async fn orphan_of_a_dead_manager_is_killed_by_cleanup() {
    let sb = Sandbox::new();
    let mut orphan = Spawned::testd(&[]);
    let record = record_of(&sb, "orph", &orphan, &Owner::dead());
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["orph"]);
    assert!(report.stale.is_empty() && report.owned_by_live_manager.is_empty());
    assert!(orphan.exited(), "the orphan survived its cleanup");
    assert!(!record.exists(), "the record was kept");
}

#[tokio::test]
async fn orphan_that_ignores_sigterm_is_killed_by_cleanup() {
    let sb = Sandbox::new();
    let mut orphan = Spawned::testd(&["--ignore-sigterm"]);
    record_of(&sb, "orph", &orphan, &Owner::dead());
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["orph"]);
    assert!(orphan.exited(), "the orphan survived its cleanup");
}

#[tokio::test]
async fn record_whose_pid_now_belongs_to_another_process_is_stale_and_spares_it() {
    let sb = Sandbox::new();
    let mut stranger = Spawned::testd(&[]);
    let real_start = proc_stat(stranger.pid()).unwrap().start_time;
    let record = write_record(&sb, "orph", stranger.pid(), real_start + 7, &Owner::dead());
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.stale, ["orph"]);
    assert!(report.killed.is_empty());
    assert!(
        !stranger.exited(),
        "a process that reused the PID was killed"
    );
    assert!(!record.exists(), "the stale record was kept");
}

#[tokio::test]
async fn record_of_a_process_that_is_gone_is_stale() {
    let sb = Sandbox::new();
    let gone = dead_pid();
    let record = write_record(&sb, "orph", gone, 12345, &Owner::dead());
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.stale, ["orph"]);
    assert!(!record.exists());
}

#[tokio::test]
async fn record_of_this_live_manager_process_is_left_alone() {
    let sb = Sandbox::new();
    let mut daemon = Spawned::testd(&[]);
    let record = record_of(&sb, "orph", &daemon, &Owner::live(std::process::id()));
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.owned_by_live_manager, ["orph"]);
    assert!(report.killed.is_empty() && report.stale.is_empty());
    assert!(!daemon.exited());
    assert!(record.exists());
}

#[tokio::test]
async fn record_of_another_live_manager_is_left_alone() {
    let sb = Sandbox::new();
    let other_manager = Spawned::testd(&[]);
    let mut daemon = Spawned::testd(&[]);
    let record = record_of(&sb, "orph", &daemon, &Owner::live(other_manager.pid()));
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.owned_by_live_manager, ["orph"]);
    assert!(!daemon.exited());
    assert!(record.exists());
}

#[tokio::test]
async fn starting_a_daemon_first_stops_the_orphan_of_its_name() {
    let sb = Sandbox::new();
    let mut orphan = Spawned::testd(&[]);
    record_of(&sb, "a", &orphan, &Owner::dead());
    let _daemon = sb.start(sb.daemon("a", &[])).await;
    assert!(
        orphan.exited(),
        "the orphan of \"a\" survived a new start of \"a\""
    );
}

#[tokio::test]
async fn running_daemon_is_recorded_until_it_stops() {
    let sb = Sandbox::new();
    let daemon = sb.start(sb.daemon("a", &[])).await;
    let record_path = sb
        .orphans_dir()
        .join(format!("a@{}.json", std::process::id()));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("a record exists")).unwrap();
    assert_eq!(record["pid"], daemon.pid);
    assert_eq!(
        record["start_time"],
        proc_stat(daemon.pid).unwrap().start_time
    );
    sb.manager.stop_process("a").await.unwrap();
    assert!(!record_path.exists(), "the record outlived the daemon");
}

#[tokio::test]
async fn no_record_is_left_once_the_daemon_gave_up() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &["--exit-after", "300"])
        .max_restart_attempts(1);
    sb.manager.start_process(config).await.unwrap();
    wait_for("a to give up", SOON, || {
        sb.manager.state("a") == Some(tend::ProcessState::Error)
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(sb.orphans_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "records left: {left:?}");
}

#[tokio::test]
async fn unreadable_record_is_removed() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.orphans_dir()).unwrap();
    let record = sb.orphans_dir().join("junk@1.json");
    std::fs::write(&record, "{not json").unwrap();
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report, tend::CleanupReport::default());
    assert!(!record.exists());
}
