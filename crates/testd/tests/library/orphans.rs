//! Orphan records: what a manager does with the records of dead managers,
//! simulated by writing journals by hand for processes the test spawned —
//! and what it refuses to touch: files another user planted, links, and
//! the single-record files of older versions, which nothing reads any
//! more.

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::{Value, json};
use tend::BackgroundProcessManager;

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

/// The record a manager `owner` would have written for `name` running as
/// `pid` (leading its own group), but with `start_time`.
fn record_json(name: &str, pid: u32, start_time: u64, owner: &Owner) -> Value {
    let stat = proc_stat(pid);
    json!({
        "name": name,
        "pid": pid,
        "pgid": pid,
        "sid": stat.map_or(pid as i32, |s| s.sid),
        "start_time": start_time,
        "owner_pid": owner.pid,
        "owner_start_time": owner.start_time,
        "socket_path": null,
        "grace_ms": 500,
    })
}

/// The exact record of `process` for `name`.
fn exact_record(name: &str, process: &Spawned, owner: &Owner) -> Value {
    let start_time = proc_stat(process.pid()).unwrap().start_time;
    record_json(name, process.pid(), start_time, owner)
}

/// Writes the journal a manager `owner` would have left with one record,
/// of `name` running as `pid` but with `start_time`.
fn write_record(sb: &Sandbox, name: &str, pid: u32, start_time: u64, owner: &Owner) -> PathBuf {
    write_journal(sb, owner, &add(record_json(name, pid, start_time, owner)))
}

/// Writes a journal with the exact record of `process` for `name`.
fn record_of(sb: &Sandbox, name: &str, process: &Spawned, owner: &Owner) -> PathBuf {
    let start_time = proc_stat(process.pid()).unwrap().start_time;
    write_record(sb, name, process.pid(), start_time, owner)
}

/// A journal line recording `record`.
fn add(record: Value) -> String {
    format!("{}\n", json!({ "add": record }))
}

/// A journal line ending the record of `name` running as `pid`.
fn tombstone(name: &str, pid: u32) -> String {
    format!("{}\n", json!({ "remove": { "name": name, "pid": pid } }))
}

/// Writes `text` as the journal of manager `owner`.
fn write_journal(sb: &Sandbox, owner: &Owner, text: &str) -> PathBuf {
    let dir = sb.orphans_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // A serial no registry of this test process reaches, so a journal
    // naming this process as its manager is not its manager's own.
    let path = dir.join(format!("{}.{}.99999.journal", owner.pid, owner.start_time));
    std::fs::write(&path, text).unwrap();
    path
}

/// The journals in `sb`'s orphans directory.
fn journals(sb: &Sandbox) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sb.orphans_dir()) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect()
}

/// The records in force in the journal at `path`, by name: its records
/// minus its tombstones (a last line without its newline is not one yet).
fn replay(path: &PathBuf) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).expect("the journal exists");
    let mut records = BTreeMap::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let entry: Value = serde_json::from_str(line).expect("a journal line is JSON");
        if let Some(record) = entry.get("add") {
            records.insert(record["name"].as_str().unwrap().to_owned(), record.clone());
        } else {
            records.remove(entry["remove"]["name"].as_str().unwrap());
        }
    }
    records
}

/// The records in force in all of `sb`'s journals, by name.
fn journal_records(sb: &Sandbox) -> BTreeMap<String, Value> {
    journals(sb).iter().flat_map(replay).collect()
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
    let [journal] = &journals(&sb)[..] else {
        panic!("not one journal: {:?}", journals(&sb));
    };
    let own_prefix = format!("{}.", std::process::id());
    assert!(
        journal
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&own_prefix),
        "{journal:?} is not named after this manager"
    );
    let records = replay(journal);
    let record = records.get("a").expect("a record exists");
    assert_eq!(record["pid"], daemon.pid);
    assert_eq!(
        record["start_time"],
        proc_stat(daemon.pid).unwrap().start_time
    );
    sb.manager.stop_process("a").await.unwrap();
    assert!(
        !replay(journal).contains_key("a"),
        "the record outlived the daemon"
    );
}

#[tokio::test]
async fn no_record_is_left_once_the_daemon_gave_up() {
    let sb = Sandbox::new();
    let config = sb
        .daemon("a", &["--exit-after", "300"])
        .max_restart_attempts(1);
    sb.manager.start_process(config).await.unwrap();
    wait_for("a to give up", SOON, || {
        sb.manager.state("a").ok() == Some(tend::ProcessState::Error)
    })
    .await;
    let records = journal_records(&sb);
    assert!(records.is_empty(), "records left: {records:?}");
    let others: Vec<_> = std::fs::read_dir(sb.orphans_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "journal"))
        .collect();
    assert!(others.is_empty(), "files other than journals: {others:?}");
}

/// Older versions wrote one `<name>@<pid>.json` file per daemon; nothing
/// writes them any more, and nothing reads them: such a file is neither
/// acted on nor removed.
#[tokio::test]
async fn legacy_single_record_file_is_neither_read_nor_removed() {
    let sb = Sandbox::new();
    let mut daemon = Spawned::testd(&[]);
    let owner = Owner::dead();
    std::fs::create_dir_all(sb.orphans_dir()).unwrap();
    let legacy = sb.orphans_dir().join(format!("orph@{}.json", owner.pid));
    std::fs::write(&legacy, exact_record("orph", &daemon, &owner).to_string()).unwrap();
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report, tend::CleanupReport::default());
    assert!(!daemon.exited(), "a legacy record was acted on");
    assert!(legacy.exists());
}

// ---- journals ---------------------------------------------------------------

#[tokio::test]
async fn journal_of_a_dead_manager_is_replayed_cleaned_and_removed() {
    let sb = Sandbox::new();
    let owner = Owner::dead();
    let mut orphan = Spawned::testd(&[]);
    // Recorded, then ended: the dead manager saw its group go, so whatever
    // now runs under its PID is not the daemon's.
    let mut ended = Spawned::testd(&[]);
    // Its record was being written when the manager was killed.
    let mut torn = Spawned::testd(&[]);
    let torn_line = add(exact_record("torn", &torn, &owner));
    let gone = dead_pid();
    let journal = write_journal(
        &sb,
        &owner,
        &[
            add(exact_record("orph", &orphan, &owner)),
            add(exact_record("ended", &ended, &owner)),
            add(record_json("gone", gone, 12345, &owner)),
            tombstone("ended", ended.pid()),
            torn_line[..torn_line.len() / 2].to_owned(),
        ]
        .concat(),
    );
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["orph"], "{report:?}");
    assert_eq!(report.stale, ["gone"], "{report:?}");
    assert!(orphan.exited(), "the orphan survived its cleanup");
    assert!(
        !ended.exited(),
        "a process whose record was ended was killed"
    );
    assert!(!torn.exited(), "a torn record was acted on");
    assert!(!journal.exists(), "the cleaned journal was kept");
}

#[tokio::test]
async fn unreadable_journal_lines_are_skipped_and_the_rest_cleaned() {
    let sb = Sandbox::new();
    let owner = Owner::dead();
    let mut orphan = Spawned::testd(&[]);
    let journal = write_journal(
        &sb,
        &owner,
        &[
            "{not json\n".to_owned(),
            add(exact_record("orph", &orphan, &owner)),
        ]
        .concat(),
    );
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["orph"], "{report:?}");
    assert!(orphan.exited(), "the orphan survived its cleanup");
    assert!(!journal.exists());
}

#[tokio::test]
async fn starting_a_daemon_cleans_only_its_name_from_a_dead_journal() {
    let sb = Sandbox::new();
    let owner = Owner::dead();
    let mut orphan_a = Spawned::testd(&[]);
    let mut orphan_b = Spawned::testd(&[]);
    let journal = write_journal(
        &sb,
        &owner,
        &[
            add(exact_record("a", &orphan_a, &owner)),
            add(exact_record("b", &orphan_b, &owner)),
        ]
        .concat(),
    );
    let _daemon = sb.start(sb.daemon("a", &[])).await;
    assert!(
        orphan_a.exited(),
        "the orphan of \"a\" survived a new start of \"a\""
    );
    assert!(
        !orphan_b.exited(),
        "starting \"a\" killed the orphan of \"b\""
    );
    let left: Vec<_> = replay(&journal).into_keys().collect();
    assert_eq!(left, ["b"]);

    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["b"], "{report:?}");
    assert_eq!(report.owned_by_live_manager, ["a"], "{report:?}");
    assert!(orphan_b.exited());
    assert!(!journal.exists(), "the cleaned journal was kept");
}

/// Two managers on one state directory clean the same dead journal at
/// once: its lock makes one of them clean it and the other find it gone,
/// so each orphan is reported killed once.
#[tokio::test]
async fn managers_cleaning_one_dead_journal_at_once_kill_each_orphan_once() {
    let sb = Sandbox::new();
    let other = BackgroundProcessManager::builder()
        .state_dir(sb.state_dir())
        .build();
    let owner = Owner::dead();
    // One ignores SIGTERM, so the first cleanup holds the lock a while.
    let mut orphans = [Spawned::testd(&[]), Spawned::testd(&["--ignore-sigterm"])];
    let journal = write_journal(
        &sb,
        &owner,
        &[
            add(exact_record("a", &orphans[0], &owner)),
            add(exact_record("b", &orphans[1], &owner)),
        ]
        .concat(),
    );
    let (one, two) = tokio::join!(sb.manager.cleanup_orphans(), other.cleanup_orphans());
    let (one, two) = (one.unwrap(), two.unwrap());
    let mut killed = [one.killed.clone(), two.killed.clone()].concat();
    killed.sort();
    assert_eq!(killed, ["a", "b"], "{one:?} {two:?}");
    assert!(
        one.stale.is_empty() && two.stale.is_empty(),
        "{one:?} {two:?}"
    );
    assert!(orphans.iter_mut().all(Spawned::exited));
    assert!(!journal.exists(), "the cleaned journal was kept");
}

#[tokio::test]
async fn journal_of_another_live_manager_is_left_alone() {
    let sb = Sandbox::new();
    let other_manager = Spawned::testd(&[]);
    let owner = Owner::live(other_manager.pid());
    let mut daemon = Spawned::testd(&[]);
    let text = add(exact_record("orph", &daemon, &owner));
    let journal = write_journal(&sb, &owner, &text);
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.owned_by_live_manager, ["orph"], "{report:?}");
    assert!(report.killed.is_empty() && report.stale.is_empty());
    assert!(!daemon.exited());
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), text);
}

#[tokio::test]
async fn manager_dropped_with_nothing_running_deletes_its_journal() {
    let sb = Sandbox::new();
    let manager = BackgroundProcessManager::builder()
        .state_dir(sb.state_dir())
        .build();
    manager.start_process(sb.daemon("a", &[])).await.unwrap();
    assert_eq!(journals(&sb).len(), 1);
    manager.stop_process("a").await.unwrap();
    drop(manager);
    // The last supervisor task may still hold the registry for a moment.
    wait_for("the journal to be deleted", SOON, || {
        journals(&sb).is_empty()
    })
    .await;
}

// ---- what cleanup refuses to touch -------------------------------------------

/// Whether this process may act as another user (chown); root-only tests
/// print why they are skipped otherwise.
fn root_or_skip() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to plant files of another user (uid 65534)");
    }
    root
}

/// Changes the owner of `path` to the attacker, uid and gid 65534.
fn give_to_attacker(path: &std::path::Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

/// The record of `victim` (a process of this user the attacker wants
/// killed) naming `precious` (a file only this user may delete) as its
/// socket.
fn bait(victim: &Spawned, owner: &Owner, precious: &std::path::Path) -> String {
    let mut record = exact_record("bait", victim, owner);
    record["socket_path"] = json!(precious);
    add(record)
}

/// Another local user dropped a journal into the orphans directory (here
/// one the test chowns to uid 65534) naming a process and a file of this
/// user: it is never read, so neither is touched.
#[tokio::test]
async fn journal_another_user_planted_is_never_read() {
    if !root_or_skip() {
        return;
    }
    let sb = Sandbox::new();
    let mut victim = Spawned::testd(&[]);
    let precious = sb.path("precious");
    std::fs::write(&precious, "keep").unwrap();
    let owner = Owner::dead();
    sb.manager.cleanup_orphans().await.unwrap();
    let journal = write_journal(&sb, &owner, &bait(&victim, &owner, &precious));
    give_to_attacker(&journal);
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report, tend::CleanupReport::default());
    let _daemon = sb.start(sb.daemon("bait", &[])).await;
    assert!(!victim.exited(), "a planted journal got a process killed");
    assert!(precious.exists(), "a planted journal got a file deleted");
    assert!(journal.exists(), "another user's file was removed");
}

/// Another local user created the default state directory (or its
/// `orphans/`) before this user's first manager ran, and put a journal in
/// it: the manager refuses the directory, naming its owner, and touches
/// nothing.
#[tokio::test]
async fn state_directory_another_user_created_first_is_refused() {
    if !root_or_skip() {
        return;
    }
    for planted in ["state", "state/orphans"] {
        let sb = Sandbox::new();
        let mut victim = Spawned::testd(&[]);
        let precious = sb.path("precious");
        std::fs::write(&precious, "keep").unwrap();
        let owner = Owner::dead();
        let journal = write_journal(&sb, &owner, &bait(&victim, &owner, &precious));
        for path in [sb.state_dir(), sb.orphans_dir(), journal.clone()] {
            if path.starts_with(sb.path(planted)) {
                give_to_attacker(&path);
            }
        }
        let err = sb.manager.cleanup_orphans().await.unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{planted}: {err}");
        let err = sb
            .manager
            .start_process(sb.daemon("bait", &[]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{planted}: {err}");
        assert!(
            !victim.exited(),
            "{planted}: a planted journal got a process killed"
        );
        assert!(
            precious.exists(),
            "{planted}: a planted journal got a file deleted"
        );
        assert!(journal.exists());
    }
}

/// A journal that is a symlink to, or a hard link of, a file elsewhere is
/// not read: whoever can write to that file does not get to name
/// processes to kill.
#[tokio::test]
async fn journal_that_is_a_link_is_never_read() {
    let sb = Sandbox::new();
    let mut victim = Spawned::testd(&[]);
    let precious = sb.path("precious");
    std::fs::write(&precious, "keep").unwrap();
    sb.manager.cleanup_orphans().await.unwrap();
    for hard in [false, true] {
        let owner = Owner::dead();
        let outside = sb.path(&format!("outside-{hard}"));
        std::fs::write(&outside, bait(&victim, &owner, &precious)).unwrap();
        let link = write_journal(&sb, &owner, "");
        std::fs::remove_file(&link).unwrap();
        if hard {
            std::fs::hard_link(&outside, &link).unwrap();
        } else {
            std::os::unix::fs::symlink(&outside, &link).unwrap();
        }
        let report = sb.manager.cleanup_orphans().await.unwrap();
        assert_eq!(report, tend::CleanupReport::default(), "hard link: {hard}");
        assert!(
            !victim.exited(),
            "hard link {hard}: a linked journal got a process killed"
        );
        assert!(precious.exists());
        assert!(outside.exists() && link.symlink_metadata().is_ok());
    }
}

/// A record naming group 1 would be `kill(-1, …)`, every process of the
/// user; one naming PID 1 the init process. Neither is signalled: the
/// record is dropped as stale.
#[tokio::test]
async fn record_naming_pid_or_group_1_is_dropped_without_a_signal() {
    let sb = Sandbox::new();
    let mut bystander = Spawned::testd(&[]);
    let owner = Owner::dead();
    let mut pgid_one = record_json("everyone", 1, proc_stat(1).unwrap().start_time, &owner);
    pgid_one["pgid"] = json!(1);
    let journal = write_journal(&sb, &owner, &add(pgid_one));
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.stale, ["everyone"], "{report:?}");
    assert!(report.killed.is_empty(), "{report:?}");
    assert!(!bystander.exited());
    assert!(!journal.exists());
}

/// A cleaned daemon's recorded socket path is removed only while it is
/// still a socket: a file, or a link to a socket, that took its place is
/// kept.
#[tokio::test]
async fn recorded_socket_path_is_removed_only_while_it_is_a_socket() {
    let sb = Sandbox::new();
    let owner = Owner::dead();
    let mut orphans = [
        Spawned::testd(&[]),
        Spawned::testd(&[]),
        Spawned::testd(&[]),
    ];
    let socket = sb.path("real.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let file = sb.path("file.sock");
    std::fs::write(&file, "keep").unwrap();
    let elsewhere = sb.path("elsewhere.sock");
    let _other = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
    let link = sb.path("link.sock");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let mut lines = String::new();
    for (name, (orphan, path)) in ["s", "f", "l"]
        .iter()
        .zip(orphans.iter().zip([&socket, &file, &link]))
    {
        let mut record = exact_record(name, orphan, &owner);
        record["socket_path"] = json!(path);
        lines += &add(record);
    }
    write_journal(&sb, &owner, &lines);
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["f", "l", "s"], "{report:?}");
    assert!(orphans.iter_mut().all(Spawned::exited));
    assert!(!socket.exists(), "the recorded socket was kept");
    assert!(file.exists(), "a file in place of the socket was removed");
    assert!(link.symlink_metadata().is_ok(), "a link was removed");
    assert!(elsewhere.exists(), "a link was followed");
}

/// This process's cgroup v2 directory, if there is a writable one.
fn own_cgroup() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let (fields, fs) = line.split_once(" - ")?;
        (fs.split(' ').next()? == "cgroup2").then(|| fields.split(' ').nth(4).map(PathBuf::from))?
    })?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = mount.join(own.trim_start_matches('/'));
    let probe = dir.join(format!("tend-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir)
}

/// Cgroup directories a test made, removed (innermost first) on drop,
/// after the processes in them were killed.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    /// Makes `path` (and records it for removal) and moves `process` in.
    fn make_with(&mut self, path: PathBuf, process: &Spawned) {
        std::fs::create_dir_all(&path).unwrap();
        self.0.push(path.parent().unwrap().to_owned());
        self.0.push(path.clone());
        std::fs::write(path.join("cgroup.procs"), process.pid().to_string()).unwrap();
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            // The kernel unlinks a dead task from its cgroup a moment after
            // its parent reaped it: until then the cgroup is busy.
            let deadline = std::time::Instant::now() + SOON;
            while path.exists()
                && std::fs::remove_dir(path).is_err()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// A record's cgroup is used only when it is proven tend's: named
/// `tend-<journal's manager>/d-<name>` and created by this user. A planted
/// record naming another user's cgroup, or a cgroup that is not where its
/// manager would put the daemon, kills nothing in it; the proven one is
/// stopped as a whole.
#[tokio::test]
async fn recorded_cgroup_is_used_only_when_proven_tends() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to make cgroups of another user");
        return;
    }
    let Some(own) = own_cgroup() else {
        eprintln!("skipped: no writable cgroup v2 here");
        return;
    };
    let sb = Sandbox::new();
    let (theirs, misplaced, ours) = (Owner::dead(), Owner::dead(), Owner::dead());
    let mut in_theirs = Spawned::testd(&[]);
    let mut in_misplaced = Spawned::testd(&[]);
    let mut in_ours = Spawned::testd(&[]);
    let mut cgroups = Cgroups(Vec::new());
    let cgroup_of = |owner: &Owner, leaf: &str| {
        own.join(format!("tend-{}.{}.99999", owner.pid, owner.start_time))
            .join(leaf)
    };
    // Another user's: made by root here, then given to uid 65534, as if
    // that user had made it under a cgroup delegated to them.
    let their_cgroup = cgroup_of(&theirs, "d-victim");
    cgroups.make_with(their_cgroup.clone(), &in_theirs);
    for dir in [&their_cgroup, their_cgroup.parent().unwrap()] {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    // Ours, but not where manager `misplaced` puts daemon "x".
    let wrong_place = cgroup_of(&misplaced, "d-elsewhere");
    cgroups.make_with(wrong_place.clone(), &in_misplaced);
    let our_cgroup = cgroup_of(&ours, "d-ours");
    cgroups.make_with(our_cgroup.clone(), &in_ours);

    let journal = |name: &str, owner: &Owner, cgroup: &PathBuf| {
        let mut record = record_json(name, dead_pid(), 1, owner);
        record["cgroup"] = json!(cgroup);
        write_journal(&sb, owner, &add(record));
    };
    journal("victim", &theirs, &their_cgroup);
    journal("x", &misplaced, &wrong_place);
    journal("ours", &ours, &our_cgroup);
    let report = sb.manager.cleanup_orphans().await.unwrap();
    assert_eq!(report.killed, ["ours"], "{report:?}");
    assert!(in_ours.exited(), "the process in the proven cgroup lives");
    assert!(!in_theirs.exited(), "another user's cgroup was acted on");
    assert!(!in_misplaced.exited(), "a misplaced cgroup was acted on");
    drop((in_theirs, in_misplaced, in_ours));
}
