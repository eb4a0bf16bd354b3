//! The orphan registry: what a manager spawned, kept in the state
//! directory so daemons that outlive a killed manager are found and
//! stopped later — and only those.
//!
//! Each manager appends to one journal,
//! `<state_dir>/orphans/<pid>.<start time>.<n>.journal`, named by its PID
//! and start time (`n` tells apart the registries of one process). A
//! record line, `{"add": {…}}`, is appended right after spawn (before
//! readiness), and a tombstone line, `{"remove": {"name": …, "pid": …}}`,
//! once the daemon's group is gone. One file per manager rather than one
//! per daemon: on a disk file system, creating, renaming and unlinking a
//! file per spawn was a third of the manager's CPU when starting 1,000
//! daemons (ext4's inode allocation), while an append to a file kept open
//! is one `write(2)`. Lines are not synced to disk: the journal has to
//! survive a killed manager *process*, not a machine crash, and the page
//! cache outlives the process. Once a journal has more than twice as many
//! lines as live records (plus some slack), it is rewritten with only
//! those; a manager dropped with no live record deletes its journal
//! (`journal.rs`).
//!
//! # What cleanup touches
//! Cleanup acts only on what it can prove is its own (`cleanup.rs`):
//! - **Journals of this user.** The orphans directory is a [`PrivateDir`]
//!   (opened once with `O_NOFOLLOW`, refused unless this user's), and
//!   every journal in it is opened, renamed and removed through its
//!   descriptor with `O_NOFOLLOW`. A journal that is a symlink, has
//!   several links, is not a regular file or belongs to another user is
//!   skipped with a warning (once) and never read.
//! - **Records tend would write.** A record naming a PID or group of 1 or
//!   less, a daemon that does not lead its group, or a manager other than
//!   the one the journal is named after is dropped without acting on it.
//! - **Dead managers' daemons, proven.** Only the journals of dead
//!   managers are cleaned, under an exclusive `flock` (managers sharing a
//!   state directory may clean the same one at once). A group is killed
//!   when its leader is alive with the recorded start time, or when
//!   members left in it share the leader's session, started after it and
//!   carry its manager's `TEND_MANAGER_ID` — never when it holds the
//!   process running the cleanup or one of its ancestors. A record's
//!   socket path is removed only if it is still a socket.
//! - **Marked processes, proven besides.** A process carrying a dead
//!   manager's `TEND_MANAGER_ID` outside the groups is killed only if it
//!   started after that manager and descends from one of its daemons this
//!   cleanup proved; otherwise it is reported in
//!   [`CleanupReport::suspects`] and left alone.
//!
//! What cleanup could not clean stays in the journal, which is rewritten
//! (or deleted when nothing is left). All the groups and processes found
//! are signalled at once, so a cleanup lasts one grace period. Each
//! daemon gets the stop signal its record names (`"stop_signal"`, left
//! out for SIGTERM), then SIGKILL.

mod cleanup;
mod journal;

use std::{
    collections::HashSet,
    ffi::OsString,
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

use crate::{BackgroundProcessConfig, config::StopSignal, private_dir::PrivateDir, procfs};
use journal::Journal;

/// Numbers the registries of this process: two managers of one process
/// sharing a state directory must not share a journal, since each
/// compacts it to its own records.
static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(0);

/// What tend knows about one spawned daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrphanRecord {
    pub name: String,
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub start_time: u64,
    pub owner_pid: u32,
    pub owner_start_time: u64,
    pub socket_path: Option<std::path::PathBuf>,
    pub grace_ms: u64,
    /// The daemon's cgroup, with cgroup containment: everything in it is
    /// the daemon's by construction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::path::PathBuf>,
    /// The signal that asks the daemon to stop, by name
    /// (`"stop_signal": "SIGQUIT"`). Left out for SIGTERM, so records of
    /// the default read as they did before the field existed; a record
    /// without it, or with a value that names no stop signal, means
    /// SIGTERM (see [`stop_signal_field`]).
    #[serde(
        default,
        skip_serializing_if = "stop_signal_field::is_default",
        with = "stop_signal_field"
    )]
    pub stop_signal: StopSignal,
}

/// The `stop_signal` of an [`OrphanRecord`], written as the signal's name.
/// Reading never fails on it: a value that names no stop signal (a newer
/// tend's, or damage) falls back to SIGTERM with a warning, so the rest of
/// the record — checked as strictly as ever — still gets its daemon
/// stopped.
mod stop_signal_field {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::StopSignal;

    /// Whether the record may leave the field out: SIGTERM.
    pub fn is_default(signal: &StopSignal) -> bool {
        *signal == StopSignal::Term
    }

    pub fn serialize<S: Serializer>(signal: &StopSignal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(signal.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<StopSignal, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let named = match &value {
            serde_json::Value::String(name) => StopSignal::from_name(name),
            _ => None,
        };
        Ok(named.unwrap_or_else(|| {
            tracing::warn!(
                stop_signal = %value,
                "an orphan record names no stop signal tend knows; its daemon gets SIGTERM"
            );
            StopSignal::Term
        }))
    }
}

/// What a cleanup did. Fields may be added in any release.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupReport {
    /// Names of daemons from dead managers that were found alive and killed.
    pub killed: Vec<String>,
    /// Records dropped because their processes were already gone, their
    /// PID now belongs to another process, or the record is not one tend
    /// writes (it names PID or group 1 or less, or a manager other than
    /// its journal's).
    pub stale: Vec<String>,
    /// Records left alone because their manager is still alive.
    pub owned_by_live_manager: Vec<String>,
    /// PIDs of descendants of dead managers' daemons that had escaped
    /// their process group (they carry the manager's `TEND_MANAGER_ID`)
    /// and were proven to descend from a daemon this cleanup stopped, and
    /// were killed.
    pub escaped: Vec<u32>,
    /// PIDs of processes left alone although they may be leftovers of a
    /// dead manager: they carry its `TEND_MANAGER_ID` but nothing proves
    /// they descend from its daemons (a double-forked descendant
    /// reparented to init looks like that, and so does any process that
    /// copied the variable), or they share a proven daemon's group with
    /// the process running the cleanup or one of its ancestors. Each is
    /// logged as a warning; check them and kill them yourself.
    pub suspects: Vec<u32>,
}

/// The orphan records of one manager, and the cleanup of dead managers'.
pub(crate) struct OrphanRegistry {
    /// `<state_dir>/orphans`, shared with any other manager of the state
    /// directory.
    dir: Arc<PrivateDir>,
    /// This process's PID and start time.
    owner: (u32, u64),
    /// This manager's journal. Supervisors on any thread write to it; the
    /// lock keeps their lines whole and the file in step with memory.
    journal: Mutex<Journal>,
    /// Makes this manager's cleanups of dead journals take turns here,
    /// where waiting costs nothing, rather than each block a thread in
    /// `flock`.
    cleaning: tokio::sync::Mutex<()>,
    /// Files of the orphans directory refused as journals (not this
    /// user's, links): warned about once.
    refused: Mutex<HashSet<OsString>>,
}

impl OrphanRegistry {
    /// Opens (creating with mode 0700) `orphans/` in the state directory,
    /// through its descriptor and with the same checks. The journal itself
    /// is created by the first write.
    pub fn open(state_dir: &PrivateDir) -> io::Result<Self> {
        let dir = Arc::new(state_dir.subdir("orphans")?);
        let owner = procfs::own_identity();
        let serial = NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed);
        let journal = Journal::new(dir.clone(), journal::journal_name(owner, serial));
        Ok(OrphanRegistry {
            dir,
            owner,
            journal: Mutex::new(journal),
            cleaning: tokio::sync::Mutex::new(()),
            refused: Mutex::new(HashSet::new()),
        })
    }

    /// This manager's identity as daemons see it in `TEND_MANAGER_ID`.
    pub fn manager_id(&self) -> String {
        format!("{}.{}", self.owner.0, self.owner.1)
    }

    /// Locks this manager's journal.
    fn journal(&self) -> MutexGuard<'_, Journal> {
        // A panic while appending leaves at worst a partial line, which
        // `out_of_sync` already accounts for.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds the record for a freshly spawned leader of daemon `config`.
    pub fn record_for(
        &self,
        config: &BackgroundProcessConfig,
        pid: u32,
        stat: &procfs::ProcStat,
        cgroup: Option<&Path>,
    ) -> OrphanRecord {
        OrphanRecord {
            name: config.name.clone(),
            pid: pid as i32,
            pgid: stat.pgid,
            sid: stat.sid,
            start_time: stat.start_time,
            owner_pid: self.owner.0,
            owner_start_time: self.owner.1,
            socket_path: config.socket_path.clone(),
            grace_ms: config.shutdown_grace_period.as_millis() as u64,
            cgroup: cgroup.map(Path::to_path_buf),
            stop_signal: config.stop_signal,
        }
    }

    /// Records `record` in this manager's journal (one appended line). It
    /// replaces an earlier record of the same name.
    pub fn write(&self, record: &OrphanRecord) -> io::Result<()> {
        self.journal().add(record)
    }

    /// Ends this manager's record for `name` (one appended tombstone).
    pub fn remove(&self, name: &str) {
        if let Err(e) = self.journal().remove(name) {
            tracing::debug!(name, error = %e, "cannot write an orphan tombstone");
        }
    }

    /// Cleans the records of dead managers, for one name or all, and the
    /// escaped descendants of the daemons it cleans.
    pub async fn cleanup(&self, only: Option<&str>) -> CleanupReport {
        let mut report = CleanupReport::default();
        let selected = |name: &String| only.is_none_or(|n| n == name);
        // This manager's records are in memory; its file may lag behind
        // by a line being written.
        let own_journal = {
            let journal = self.journal();
            report
                .owned_by_live_manager
                .extend(journal.live.keys().filter(|n| selected(n)).cloned());
            journal.name().to_owned()
        };
        let Ok(entries) = self.dir.entries() else {
            return report;
        };
        let mut dead = Vec::new();
        for name in entries {
            if name == own_journal {
                continue;
            }
            let Some(owner) = journal::journal_owner(&name) else {
                continue;
            };
            let bytes = match journal::read(&self.dir, &name) {
                Ok(Some(bytes)) => bytes,
                // Its manager was dropped, or another cleanup finished it.
                Ok(None) => continue,
                Err(e) => {
                    self.refuse(name, &e);
                    continue;
                }
            };
            if only.is_some_and(|name| !journal::mentions(&bytes, name)) {
                continue;
            }
            if self.owner_alive(owner) {
                let live = journal::replay(&bytes, &name).live;
                report
                    .owned_by_live_manager
                    .extend(live.into_keys().filter(selected));
                continue;
            }
            dead.push((name, owner));
        }
        // A full cleanup also looks for dead managers' cgroups that no
        // journal names (a journal lost or never written).
        if dead.is_empty() && only.is_some() {
            return report;
        }
        // Locked in one order by every manager, so two cleanups never each
        // hold a journal the other waits for.
        dead.sort();
        let _turn = self.cleaning.lock().await;
        let mut locked = Vec::new();
        for (name, owner) in dead {
            match journal::lock(&self.dir, name.clone(), owner).await {
                Ok(Some(journal)) => locked.push(journal),
                Ok(None) => {}
                Err(e) => self.refuse(name, &e),
            }
        }
        // What is in a dead manager's cgroups is its own by construction:
        // stopped first, as a whole, so the record cleanup that follows
        // finds those daemons gone.
        let in_cgroups =
            cleanup::clean_cgroups(&locked, only, |owner| self.owner_alive(owner)).await;
        let tombstones = cleanup::clean(&mut locked, only, &mut report).await;
        in_cgroups.report_into(&mut report);
        for (journal, tombstones) in locked.iter().zip(tombstones) {
            if let Err(e) = journal::settle(&self.dir, journal, &tombstones) {
                tracing::warn!(journal = ?journal.name, error = %e, "cannot update a dead manager's orphan journal");
            }
        }
        // Dropping `locked` closes the journals, which releases the locks.
        report
    }

    /// Logs, once per file, why the journal `name` is not read.
    fn refuse(&self, name: OsString, error: &io::Error) {
        let path = self.dir.path().join(&name);
        if error.kind() != io::ErrorKind::PermissionDenied {
            tracing::warn!(?path, %error, "cannot read an orphan journal");
            return;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.insert(name) {
            tracing::warn!(?path, %error, "ignoring a file in the orphans directory that is not this user's own journal; remove it");
        }
    }

    /// Whether the manager `owner` (PID and start time) still runs: this
    /// one, or a live process with that PID and start time.
    fn owner_alive(&self, owner: (u32, u64)) -> bool {
        if owner == self.owner {
            return true;
        }
        // A stat that cannot be read or parsed does not prove the owner
        // dead: its daemons are left alone.
        match procfs::stat(owner.0 as i32) {
            Ok(Some(s)) => s.start_time == owner.1 && s.is_alive(),
            Ok(None) => false,
            Err(_) => true,
        }
    }
}

impl Drop for OrphanRegistry {
    /// Deletes the journal when it records nothing. Records still in force
    /// name daemons whose group outlived a stop: they stay for a later
    /// manager's cleanup.
    fn drop(&mut self) {
        let journal = self.journal.get_mut().unwrap_or_else(|e| e.into_inner());
        if journal.live.is_empty() {
            journal.delete();
        } else if journal.out_of_sync {
            // A failed write left the file behind the records in memory;
            // one last try, so a later cleanup finds the survivors.
            if let Err(e) = journal.compact() {
                tracing::warn!(path = ?journal.path(), error = %e, "cannot write the orphan journal; survivors may be missed by a later cleanup");
            }
        }
    }
}

/// Creates `dir` and its parents; `dir` itself gets mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use journal::{
        Entry, encode,
        tests::{live, record, replay_file},
    };

    /// A registry on a state directory in a fresh temp dir.
    fn registry(temp: &tempfile::TempDir) -> OrphanRegistry {
        let state = PrivateDir::open_or_create(temp.path().join("state")).unwrap();
        OrphanRegistry::open(&state).unwrap()
    }

    #[test]
    fn a_registry_dropped_with_its_journal_behind_writes_it_out_whole() {
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        let (a, b) = (record("a", 1), record("b", 2));
        registry.write(&a).unwrap();
        let path = {
            let mut journal = registry.journal();
            // A disk that fills up under the open journal.
            journal.file = Some(
                fs::OpenOptions::new()
                    .append(true)
                    .open("/dev/full")
                    .unwrap(),
            );
            journal.path()
        };
        assert!(registry.write(&b).is_err());
        assert_eq!(replay_file(&path).live, live(&[&a]), "the file lags behind");
        drop(registry);
        assert_eq!(replay_file(&path).live, live(&[&a, &b]));
    }

    #[test]
    fn concurrent_writers_leave_whole_lines_that_replay_to_the_live_records() {
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        let path = registry.journal().path();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let registry = &registry;
                scope.spawn(move || {
                    for i in 0..200 {
                        let name = format!("t{thread}-{}", i % 7);
                        registry.write(&record(&name, i)).unwrap();
                        if i % 3 != 0 {
                            registry.remove(&name);
                        }
                    }
                });
            }
        });
        let on_disk = replay_file(&path);
        assert!(!on_disk.torn);
        assert_eq!(on_disk.live, registry.journal().live);
        assert!(!registry.journal().live.is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn dropped_registry_deletes_its_journal_only_when_it_records_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let empty = registry(&temp);
        let kept = registry(&temp);
        let (empty_path, kept_path) = (empty.journal().path(), kept.journal().path());
        assert_ne!(empty_path, kept_path, "two registries share a journal");
        empty.write(&record("a", 1)).unwrap();
        empty.remove("a");
        kept.write(&record("a", 1)).unwrap();
        drop((empty, kept));
        assert!(!empty_path.exists());
        assert_eq!(replay_file(&kept_path).live, live(&[&record("a", 1)]));
    }

    #[test]
    fn journal_names_give_their_owner() {
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        let name = registry.journal().name().to_owned();
        assert_eq!(journal::journal_owner(&name), Some(registry.owner));
    }

    #[test]
    fn registry_refuses_an_orphans_directory_that_is_a_link() {
        let temp = tempfile::tempdir().unwrap();
        let state = PrivateDir::open_or_create(temp.path().join("state")).unwrap();
        let elsewhere = temp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.path().join("orphans")).unwrap();
        let err = OrphanRegistry::open(&state)
            .err()
            .expect("a link was followed");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    /// A dead manager's journal holding `record` as its only line.
    fn plant(dir: &Path, owner: (u32, u64), record: &OrphanRecord) -> PathBuf {
        let path = dir.join(journal::journal_name(owner, 0));
        fs::write(&path, encode(&Entry::Add(record)).unwrap()).unwrap();
        path
    }

    #[tokio::test]
    async fn records_naming_init_or_every_process_are_dropped_without_a_signal() {
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        // A dead manager: PID 0 never runs a process of ours.
        let owner = (0, 1);
        let mut init = record("init", 1);
        init.owner_pid = owner.0;
        init.owner_start_time = owner.1;
        // Start time 0 matches nothing; but pid 1 must never get that far.
        let path = plant(registry.dir.path(), owner, &init);
        let report = registry.cleanup(None).await;
        assert_eq!(report.stale, ["init"], "{report:?}");
        assert!(report.killed.is_empty() && report.suspects.is_empty());
        assert!(!path.exists(), "the refused record was kept");
    }

    #[tokio::test]
    async fn record_whose_manager_is_not_its_journals_is_dropped_without_a_signal() {
        use std::os::unix::process::CommandExt;
        /// Kills and reaps the child on drop, also when the test fails.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        let mut child = Reaped(
            std::process::Command::new("sleep")
                .arg("1000")
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        let stat = procfs::stat(pid).unwrap().unwrap();
        // An exact record of a live daemon group, but naming manager 1.2
        // in the journal of (dead) manager 0.1.
        let mut forged = record("forged", pid);
        forged.start_time = stat.start_time;
        forged.sid = stat.sid;
        let path = plant(registry.dir.path(), (0, 1), &forged);
        let report = registry.cleanup(None).await;
        assert_eq!(report.stale, ["forged"], "{report:?}");
        assert!(report.killed.is_empty());
        assert!(
            matches!(child.0.try_wait(), Ok(None)),
            "the process was signalled"
        );
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn journal_that_is_a_symlink_is_not_read_and_is_left_in_place() {
        let temp = tempfile::tempdir().unwrap();
        let registry = registry(&temp);
        let target = temp.path().join("planted.journal");
        let mut bait = record("bait", 999_999);
        bait.owner_pid = 0;
        bait.owner_start_time = 1;
        fs::write(&target, encode(&Entry::Add(&bait)).unwrap()).unwrap();
        let link = registry.dir.path().join(journal::journal_name((0, 1), 0));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for only in [None, Some("bait")] {
            let report = registry.cleanup(only).await;
            assert_eq!(report, CleanupReport::default(), "{only:?}");
        }
        assert!(link.symlink_metadata().is_ok() && target.exists());
        assert_eq!(registry.refused.lock().unwrap().len(), 1);
    }
}
