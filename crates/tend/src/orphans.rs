//! The orphan registry: what a manager spawned, kept in the state
//! directory so daemons that outlive a killed manager are found and
//! stopped later.
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
//! cache outlives the process.
//!
//! The manager keeps its live records in memory too. Once the journal has
//! more than twice as many lines as there are live records (plus some
//! slack), it is rewritten with only those (temporary file, then rename),
//! so restarts do not grow it without bound. A manager dropped with no
//! live record deletes its journal.
//!
//! Records name the daemon by PID *and* start time, and the manager
//! likewise. Cleanup only acts on the journals of dead managers, and on
//! the single-record `<name>@<pid>.json` files older versions wrote. It
//! replays a journal (records minus tombstones; a torn last line is one a
//! killed manager was writing and never counted) and kills a group only
//! when it can prove the processes are the ones recorded:
//! - the leader is alive with the recorded start time, or
//! - the leader is gone but members of its group remain that share its
//!   session, started after it, and carry its manager's `TEND_MANAGER_ID`
//!   (an unrelated process may have reused the PID and formed a group).
//!
//! A PID that now belongs to another process is left alone. What cleanup
//! could not clean stays in the journal, which is rewritten (or deleted
//! when nothing is left). Managers sharing a state directory may clean
//! the same dead journal at once, so each holds an exclusive `flock` on it
//! while it replays, cleans and rewrites it, and makes sure after locking
//! that the file it locked is still the one at that path.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::{kill, procfs, spawn};

/// Lines a journal may have beyond twice its live records before it is
/// compacted. Without slack, a manager running a single daemon would
/// rewrite its journal at every restart of it.
const COMPACTION_SLACK: usize = 64;

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
    pub socket_path: Option<PathBuf>,
    pub grace_ms: u64,
}

/// What a cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Names of daemons from dead managers that were found alive and killed.
    pub killed: Vec<String>,
    /// Records dropped because their processes were already gone or their
    /// PID now belongs to another process.
    pub stale: Vec<String>,
    /// Records left alone because their manager is still alive.
    pub owned_by_live_manager: Vec<String>,
    /// PIDs of descendants of dead managers' daemons that had escaped
    /// their process group (found by their `TEND_MANAGER_ID`) and were
    /// killed.
    pub escaped: Vec<u32>,
}

/// One line of a journal. `R` is the record: borrowed when writing, so
/// appending does not copy it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry<R = OrphanRecord> {
    /// A daemon was spawned.
    Add(R),
    /// A daemon's group is gone, or was cleaned.
    Remove(Tombstone),
}

/// The end of a record. Replay goes by name alone (the lines of a journal
/// are in the order things happened); the PID is for whoever reads it.
#[derive(Debug, Serialize, Deserialize)]
struct Tombstone {
    /// The daemon whose record ends.
    name: String,
    /// The PID that record named.
    pid: i32,
}

/// One journal line: the entry as JSON, then a newline.
fn encode(entry: &Entry<&OrphanRecord>) -> io::Result<Vec<u8>> {
    // Fails for a socket path that is not UTF-8, as JSON cannot hold it.
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// What the lines of a journal add up to.
#[derive(Debug, Default)]
struct Replay {
    /// Records added and not removed since, by daemon name.
    live: BTreeMap<String, OrphanRecord>,
    /// Lines in the journal, unreadable and torn ones included.
    lines: usize,
    /// Whether the journal ends without a newline, so that an append
    /// would run on from its last line.
    torn: bool,
}

/// Replays a journal's `bytes` (read from `path`, for the logs). A last
/// line without its newline is one a killed manager was writing, or one
/// its live manager is writing now: it never counted and is ignored.
/// Other unreadable lines are skipped with a warning, so damage to one
/// line does not hide the records around it.
fn replay(bytes: &[u8], path: &Path) -> Replay {
    let mut replay = Replay::default();
    for (index, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        replay.lines += 1;
        let complete = line.ends_with(b"\n");
        replay.torn = !complete;
        match serde_json::from_slice::<Entry>(line) {
            Ok(Entry::Add(record)) => {
                replay.live.insert(record.name.clone(), record);
            }
            Ok(Entry::Remove(tombstone)) => {
                replay.live.remove(&tombstone.name);
            }
            Err(_) if !complete => {}
            Err(e) => {
                tracing::warn!(?path, line = index + 1, error = %e, "skipping an unreadable orphan journal line");
            }
        }
    }
    replay
}

/// Whether a journal of `lines` lines, `live` of them records still in
/// force, is long enough to be rewritten with just those. Rewriting at
/// twice the live records keeps the cost of compaction proportional to
/// the appends that made it necessary.
fn needs_compaction(lines: usize, live: usize) -> bool {
    lines > 2 * live + COMPACTION_SLACK
}

/// Whether a journal may hold lines about daemon `name`. tend writes a
/// name as a JSON string the same way every time, so a journal without
/// that string cannot concern it: each start cleans its own name, and
/// this spares it replaying every other manager's journal.
fn mentions(bytes: &[u8], name: &str) -> bool {
    let Ok(needle) = serde_json::to_vec(name) else {
        return true;
    };
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The owner (PID and start time) a journal's file name gives, if it is
/// named like one: `<pid>.<start time>.<n>.journal`.
fn journal_owner(path: &Path) -> Option<(u32, u64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".journal")?;
    let mut parts = stem.split('.');
    let pid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some((pid, start_time))
}

/// The temporary file a journal is rewritten through.
fn temp_path(journal: &Path) -> PathBuf {
    let mut path = journal.as_os_str().to_owned();
    path.push(".tmp");
    PathBuf::from(path)
}

/// Opens (creating with mode 0600) a journal for appending.
fn open_append(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Replaces the journal at `path` by one holding just `records`, through
/// a temporary file and a rename, so that neither a reader nor a cleanup
/// after a kill ever sees half of it.
fn rewrite<'a>(path: &Path, records: impl Iterator<Item = &'a OrphanRecord>) -> io::Result<()> {
    let mut text = Vec::new();
    for record in records {
        text.extend(encode(&Entry::Add(record))?);
    }
    let tmp = temp_path(path);
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A manager's own journal and, in memory, the records in force in it.
#[derive(Debug)]
struct Journal {
    /// `<dir>/<pid>.<start time>.<n>.journal`.
    path: PathBuf,
    /// The records in force, by daemon name: what the file replays to.
    live: BTreeMap<String, OrphanRecord>,
    /// Opened with `O_APPEND` at the first write and kept open, so a
    /// change costs one `write(2)` and no directory operation.
    file: Option<File>,
    /// Lines in the file.
    lines: usize,
    /// Whether the file may not hold what `live` does: a write failed, or
    /// wrote part of a line. The next change then rewrites the file whole
    /// rather than append after a partial line.
    out_of_sync: bool,
}

impl Journal {
    /// A journal at `path`, empty; the file is created by the first write.
    fn new(path: PathBuf) -> Self {
        Journal {
            path,
            live: BTreeMap::new(),
            file: None,
            lines: 0,
            out_of_sync: false,
        }
    }

    /// Records `record`, replacing the record of its name if any.
    fn add(&mut self, record: &OrphanRecord) -> io::Result<()> {
        // Encoded first: a record that cannot be written is not kept, or
        // every later compaction would fail on it.
        let line = encode(&Entry::Add(record))?;
        self.live.insert(record.name.clone(), record.clone());
        self.append(&line)
    }

    /// Ends the record of `name`, if there is one.
    fn remove(&mut self, name: &str) -> io::Result<()> {
        let Some(record) = self.live.remove(name) else {
            return Ok(());
        };
        let tombstone = Tombstone {
            name: record.name,
            pid: record.pid,
        };
        self.append(&encode(&Entry::Remove(tombstone))?)
    }

    /// Appends `line`, already applied to `live`, with one `write(2)`; a
    /// file out of sync is rewritten instead, which includes the change.
    /// Lines of a few hundred bytes to an `O_APPEND` file are written
    /// whole, and the caller's lock keeps writers from interleaving.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.out_of_sync {
            return self.compact();
        }
        let file = match &mut self.file {
            Some(file) => file,
            slot @ None => slot.insert(open_append(&self.path).inspect_err(|_| {
                self.out_of_sync = true;
            })?),
        };
        match file.write(line) {
            Ok(n) if n == line.len() => {}
            Ok(_) => {
                self.out_of_sync = true;
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short write to the orphan journal",
                ));
            }
            Err(e) => {
                self.out_of_sync = true;
                return Err(e);
            }
        }
        self.lines += 1;
        if needs_compaction(self.lines, self.live.len()) {
            // The line is written; a failed compaction only leaves the
            // journal longer than it needs to be.
            if let Err(e) = self.compact() {
                tracing::warn!(path = ?self.path, error = %e, "cannot compact the orphan journal");
            }
        }
        Ok(())
    }

    /// Rewrites the file with just the live records.
    fn compact(&mut self) -> io::Result<()> {
        rewrite(&self.path, self.live.values())?;
        self.lines = self.live.len();
        self.out_of_sync = false;
        // The old descriptor writes to the replaced file. Should reopening
        // fail, the next append tries again.
        self.file = open_append(&self.path).ok();
        Ok(())
    }
}

/// The orphan records of one manager, and the cleanup of dead managers'.
pub(crate) struct OrphanRegistry {
    /// `<state_dir>/orphans`, shared with any other manager of the state
    /// directory.
    dir: PathBuf,
    /// This process's PID and start time.
    owner: (u32, u64),
    /// This manager's journal. Supervisors on any thread write to it; the
    /// lock keeps their lines whole and the file in step with memory.
    journal: Mutex<Journal>,
    /// Makes this manager's cleanups of dead journals take turns here,
    /// where waiting costs nothing, rather than each block a thread in
    /// `flock`.
    cleaning: tokio::sync::Mutex<()>,
}

impl OrphanRegistry {
    /// Opens (creating with mode 0700) `<state_dir>/orphans`. The journal
    /// itself is created by the first write.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("orphans");
        create_private_dir(&dir)?;
        let owner = procfs::own_identity();
        let serial = NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed);
        let journal = dir.join(format!("{}.{}.{serial}.journal", owner.0, owner.1));
        Ok(OrphanRegistry {
            dir,
            owner,
            journal: Mutex::new(Journal::new(journal)),
            cleaning: tokio::sync::Mutex::new(()),
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

    /// Builds the record for a freshly spawned leader.
    pub fn record_for(
        &self,
        name: &str,
        pid: u32,
        stat: &procfs::ProcStat,
        socket_path: Option<&Path>,
        grace: Duration,
    ) -> OrphanRecord {
        OrphanRecord {
            name: name.to_owned(),
            pid: pid as i32,
            pgid: stat.pgid,
            sid: stat.sid,
            start_time: stat.start_time,
            owner_pid: self.owner.0,
            owner_start_time: self.owner.1,
            socket_path: socket_path.map(Path::to_path_buf),
            grace_ms: grace.as_millis() as u64,
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

    /// Cleans the records of dead managers, for one name or all. A full
    /// cleanup also stops escaped descendants of those managers' daemons.
    pub async fn cleanup(&self, only: Option<&str>) -> CleanupReport {
        let mut report = CleanupReport::default();
        let dead_owners = self.clean_records(only, &mut report).await;
        if !dead_owners.is_empty() {
            report.escaped = clean_escaped(dead_owners).await;
        }
        report
    }

    /// Cleans the records; returns the dead managers they named.
    async fn clean_records(
        &self,
        only: Option<&str>,
        report: &mut CleanupReport,
    ) -> BTreeSet<(u32, u64)> {
        let selected = |name: &str| only.is_none_or(|n| n == name);
        // This manager's records are in memory; its file may lag behind
        // by a line being written.
        let own_journal = {
            let journal = self.journal();
            report
                .owned_by_live_manager
                .extend(journal.live.keys().filter(|n| selected(n)).cloned());
            journal.path.clone()
        };
        let mut dead_owners = BTreeSet::new();
        let Ok(entries) = list_dir(&self.dir) else {
            return dead_owners;
        };
        let mut journals = Vec::new();
        for path in entries {
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    self.clean_legacy_record(&path, only, report, &mut dead_owners)
                        .await;
                }
                Some("journal") if path != own_journal => journals.push(path),
                _ => {}
            }
        }
        for path in journals {
            self.clean_journal(&path, only, report, &mut dead_owners)
                .await;
        }
        dead_owners
    }

    /// Cleans a single-record file as older versions wrote them, one per
    /// daemon: `<name>@<manager pid>.json`.
    async fn clean_legacy_record(
        &self,
        path: &Path,
        only: Option<&str>,
        report: &mut CleanupReport,
        dead_owners: &mut BTreeSet<(u32, u64)>,
    ) {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            return;
        };
        let name = stem.split('@').next().unwrap_or_default();
        if only.is_some_and(|n| n != name) {
            return;
        }
        let record: OrphanRecord = match fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(r) => r,
            None => {
                tracing::warn!(?path, "removing unreadable orphan record");
                let _ = fs::remove_file(path);
                return;
            }
        };
        if self.owner_alive((record.owner_pid, record.owner_start_time)) {
            report.owned_by_live_manager.push(record.name);
            return;
        }
        dead_owners.insert((record.owner_pid, record.owner_start_time));
        match clean_record(&record).await {
            Ok(true) => report.killed.push(record.name.clone()),
            Ok(false) => report.stale.push(record.name.clone()),
            Err(e) => {
                tracing::warn!(name = %record.name, error = %e, "could not clean orphan; keeping its record");
                return;
            }
        }
        let _ = fs::remove_file(path);
    }

    /// Reports the records of another live manager's journal, or cleans a
    /// dead manager's.
    async fn clean_journal(
        &self,
        path: &Path,
        only: Option<&str>,
        report: &mut CleanupReport,
        dead_owners: &mut BTreeSet<(u32, u64)>,
    ) {
        let Some(owner) = journal_owner(path) else {
            return;
        };
        let selected = |name: &String| only.is_none_or(|n| n == name);
        // Read without a lock: a live manager only ever appends whole
        // lines or renames a complete file into place.
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            // Its manager was dropped, or another cleanup finished it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(?path, error = %e, "cannot read an orphan journal");
                return;
            }
        };
        if only.is_some_and(|name| !mentions(&bytes, name)) {
            return;
        }
        if self.owner_alive(owner) {
            let live = replay(&bytes, path).live;
            report
                .owned_by_live_manager
                .extend(live.into_keys().filter(selected));
            return;
        }

        let _turn = self.cleaning.lock().await;
        let (_lock, bytes) = match lock_journal(path).await {
            Ok(Some(locked)) => locked,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(?path, error = %e, "cannot lock an orphan journal");
                return;
            }
        };
        let mut replay = replay(&bytes, path);
        let names: Vec<String> = replay
            .live
            .keys()
            .filter(|n| selected(n))
            .cloned()
            .collect();
        let mut tombstones = Vec::new();
        for name in names {
            let record = &replay.live[&name];
            dead_owners.insert((record.owner_pid, record.owner_start_time));
            match clean_record(record).await {
                Ok(true) => report.killed.push(name.clone()),
                Ok(false) => report.stale.push(name.clone()),
                Err(e) => {
                    tracing::warn!(%name, error = %e, "could not clean orphan; keeping its record");
                    continue;
                }
            }
            let tombstone = Tombstone {
                pid: record.pid,
                name: name.clone(),
            };
            match encode(&Entry::Remove(tombstone)) {
                Ok(line) => tombstones.push(line),
                // Cannot happen for a name read from JSON; should it, the
                // record is kept and found stale next time.
                Err(_) => continue,
            }
            replay.live.remove(&name);
        }
        if let Err(e) = settle(path, &replay, &tombstones) {
            tracing::warn!(?path, error = %e, "cannot update a dead manager's orphan journal");
        }
        // Dropping `_lock` closes the journal, which releases the flock.
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
            journal.file = None;
            let _ = fs::remove_file(&journal.path);
        } else if journal.out_of_sync {
            // A failed write left the file behind the records in memory;
            // one last try, so a later cleanup finds the survivors.
            if let Err(e) = journal.compact() {
                tracing::warn!(path = ?journal.path, error = %e, "cannot write the orphan journal; survivors may be missed by a later cleanup");
            }
        }
    }
}

/// Opens and exclusively locks the dead journal at `path`, returning it
/// (the lock lasts while it is open) and its bytes, or `None` once it is
/// gone. Another cleanup may have held the lock first and deleted the
/// journal, or replaced it by a rewrite; then the file locked here is no
/// longer the one at `path`, and that one is locked instead.
async fn lock_journal(path: &Path) -> io::Result<Option<(File, Vec<u8>)>> {
    loop {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // The holder may be killing daemons for their grace periods: wait
        // for it off the runtime's threads.
        let mut file = tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&file, FlockOperation::LockExclusive).map(|()| file)
        })
        .await
        .map_err(io::Error::other)??;
        let locked = file.metadata()?;
        match fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (locked.dev(), locked.ino()) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                return Ok(Some((file, bytes)));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Brings the dead journal at `path`, locked by the caller, in line with
/// what is left of it after a cleanup that ended the records whose
/// `tombstones` are given: it is deleted when nothing is left; otherwise
/// the tombstones are appended, or the journal is rewritten when that
/// makes it too long or its last line is torn. Appending rather than
/// always rewriting keeps each start of one of the dead manager's many
/// daemons from copying the whole journal.
fn settle(path: &Path, replay: &Replay, tombstones: &[Vec<u8>]) -> io::Result<()> {
    if replay.live.is_empty() {
        // So does a temporary file its manager was killed compacting to.
        let _ = fs::remove_file(temp_path(path));
        return fs::remove_file(path);
    }
    if tombstones.is_empty() {
        return Ok(());
    }
    if replay.torn || needs_compaction(replay.lines + tombstones.len(), replay.live.len()) {
        return rewrite(path, replay.live.values());
    }
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(&tombstones.concat())
}

/// Kills processes whose environment names one of `dead_managers`. Such a
/// process descends from one of their daemons (it inherited the marker)
/// but left the daemon's process group, typically by double-forking. Only
/// managers whose records were found dead are considered, and only
/// processes that started after them.
async fn clean_escaped(dead_managers: BTreeSet<(u32, u64)>) -> Vec<u32> {
    let mut killed = Vec::new();
    for (owner_pid, owner_start) in dead_managers {
        let marker = format!("{}={owner_pid}.{owner_start}", spawn::MANAGER_ID_ENV);
        for pid in procfs::all_pids() {
            let Ok(Some(stat)) = procfs::stat(pid) else {
                continue;
            };
            // Started after its manager, alive, and carrying its marker.
            if !stat.is_alive() || stat.start_time < owner_start {
                continue;
            }
            if procfs::environ_contains(pid, marker.as_bytes()) {
                killed.push(pid);
            }
        }
    }
    if !killed.is_empty() {
        tracing::info!(pids = ?killed, "stopping escaped descendants of a dead manager's daemons");
        kill::terminate_pids(&killed, crate::defaults::SHUTDOWN_GRACE_PERIOD).await;
    }
    killed.into_iter().map(|p| p as u32).collect()
}

/// Kills what is left of a dead manager's daemon; true if anything was.
async fn clean_record(record: &OrphanRecord) -> Result<bool, String> {
    let ours = match procfs::stat(record.pid).map_err(|e| e.to_string())? {
        Some(leader) if leader.is_alive() => {
            leader.start_time == record.start_time && leader.pgid == record.pgid
        }
        // The leader is gone. Members left in its group prove to be the
        // daemon's only if they share its session, started after it, and
        // carry its manager's marker: an unrelated process can reuse the
        // PID, lead a group of that id and fork.
        _ => {
            let marker = format!(
                "{}={}.{}",
                spawn::MANAGER_ID_ENV,
                record.owner_pid,
                record.owner_start_time
            );
            procfs::live_group_members(record.pgid)
                .into_iter()
                .any(|pid| {
                    matches!(
                        procfs::stat(pid),
                        Ok(Some(s)) if s.sid == record.sid && s.start_time >= record.start_time
                    ) && procfs::environ_contains(pid, marker.as_bytes())
                })
        }
    };
    if !ours {
        return Ok(false);
    }
    tracing::info!(name = %record.name, pid = record.pid, "stopping orphaned daemon of a dead manager");
    kill::terminate_group(
        record.pgid,
        None,
        None,
        Duration::from_millis(record.grace_ms),
    )
    .await?;
    if let Some(socket) = &record.socket_path {
        let _ = fs::remove_file(socket);
    }
    Ok(true)
}

/// The entries of `dir`, as paths. Every start lists the orphans
/// directory, so this reads it into a buffer on the stack: `fs::read_dir`
/// allocates 32 KiB per listing, and in a manager whose threads' heaps
/// shrink between starts that cost page faults, several times the
/// listing itself.
fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    use std::{mem::MaybeUninit, os::unix::ffi::OsStrExt};
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut paths = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            paths.push(dir.join(std::ffi::OsStr::from_bytes(name)));
        }
    }
    Ok(paths)
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
    use super::*;

    /// A record of daemon `name` running as `pid`.
    fn record(name: &str, pid: i32) -> OrphanRecord {
        OrphanRecord {
            name: name.to_owned(),
            pid,
            pgid: pid,
            sid: pid,
            start_time: 7,
            owner_pid: 1,
            owner_start_time: 2,
            socket_path: Some(PathBuf::from(format!("/run/{name}.sock"))),
            grace_ms: 100,
        }
    }

    /// The line adding `record`.
    fn add(record: &OrphanRecord) -> Vec<u8> {
        encode(&Entry::Add(record)).unwrap()
    }

    /// The tombstone line of `name` running as `pid`.
    fn remove(name: &str, pid: i32) -> Vec<u8> {
        let tombstone = Tombstone {
            name: name.to_owned(),
            pid,
        };
        encode(&Entry::Remove(tombstone)).unwrap()
    }

    /// Replays the journal at `path`.
    fn replay_file(path: &Path) -> Replay {
        replay(&fs::read(path).unwrap(), path)
    }

    /// `records` by name, as a replay gives them.
    fn live(records: &[&OrphanRecord]) -> BTreeMap<String, OrphanRecord> {
        records
            .iter()
            .map(|r| (r.name.clone(), (*r).clone()))
            .collect()
    }

    #[test]
    fn lines_are_one_json_object_each() {
        let line = remove("a", 5);
        assert_eq!(line, b"{\"remove\":{\"name\":\"a\",\"pid\":5}}\n");
        let line = add(&record("a", 5));
        assert!(line.starts_with(b"{\"add\":{\"name\":\"a\",\"pid\":5,"));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn replay_applies_adds_and_tombstones_in_order() {
        let (a1, b, a2, c) = (
            record("a", 1),
            record("b", 2),
            record("a", 3),
            record("c", 4),
        );
        let bytes = [
            add(&a1),
            add(&b),
            remove("a", 1),
            add(&a2),
            add(&c),
            remove("c", 4),
        ]
        .concat();
        let replay = replay(&bytes, Path::new("j"));
        assert_eq!(replay.live, live(&[&a2, &b]));
        assert_eq!(replay.lines, 6);
        assert!(!replay.torn);
    }

    #[test]
    fn replay_replaces_a_record_added_again_under_its_name() {
        let (old, new) = (record("a", 1), record("a", 2));
        let replay = replay(&[add(&old), add(&new)].concat(), Path::new("j"));
        assert_eq!(replay.live, live(&[&new]));
    }

    #[test]
    fn replay_ignores_a_torn_last_line() {
        let (a, b) = (record("a", 1), record("b", 2));
        let whole = add(&b);
        for cut in [1, whole.len() / 2, whole.len() - 2] {
            let bytes = [add(&a), whole[..cut].to_vec()].concat();
            let replay = replay(&bytes, Path::new("j"));
            assert_eq!(replay.live, live(&[&a]), "cut at {cut}");
            assert_eq!(replay.lines, 2);
            assert!(replay.torn);
        }
        // Complete but for its newline: it counts, yet an append would
        // still run on from it.
        let bytes = [add(&a), whole[..whole.len() - 1].to_vec()].concat();
        let replay = replay(&bytes, Path::new("j"));
        assert_eq!(replay.live, live(&[&a, &b]));
        assert!(replay.torn);
    }

    #[test]
    fn replay_skips_unreadable_lines_and_keeps_the_rest() {
        let (a, b) = (record("a", 1), record("b", 2));
        let bytes = [
            add(&a),
            b"{not json\n".to_vec(),
            b"\n".to_vec(),
            b"{\"add\":{\"name\":\"c\"}}\n".to_vec(),
            add(&b),
        ]
        .concat();
        let replay = replay(&bytes, Path::new("j"));
        assert_eq!(replay.live, live(&[&a, &b]));
        assert_eq!(replay.lines, 5);
        assert!(!replay.torn);
    }

    #[test]
    fn replay_of_nothing_is_empty() {
        let replay = replay(b"", Path::new("j"));
        assert!(replay.live.is_empty() && replay.lines == 0 && !replay.torn);
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.2.0.journal");
        let mut journal = Journal::new(path.clone());
        let mut appended = 0;
        let mut compacted = false;
        for round in 0..20 {
            for i in 0..10 {
                journal
                    .add(&record(&format!("d{i}"), round * 100 + i))
                    .unwrap();
                appended += 1;
            }
            for i in 0..9 {
                journal.remove(&format!("d{i}")).unwrap();
                appended += 1;
            }
            let on_disk = replay_file(&path);
            assert_eq!(on_disk.live, journal.live, "round {round}");
            assert_eq!(on_disk.lines, journal.lines);
            assert!(!needs_compaction(journal.lines, journal.live.len()));
            compacted |= journal.lines < appended;
        }
        assert!(compacted, "never compacted in {appended} appends");
        assert_eq!(journal.live.keys().collect::<Vec<_>>(), ["d9"]);

        // Compacting now leaves one line per live record, and the appends
        // after it go to the new file.
        journal.compact().unwrap();
        assert_eq!(fs::read(&path).unwrap(), add(&journal.live["d9"]));
        journal.add(&record("e", 1)).unwrap();
        assert_eq!(replay_file(&path).live, journal.live);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn a_registry_dropped_with_its_journal_behind_writes_it_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let registry = OrphanRegistry::open(dir.path()).unwrap();
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
            journal.path.clone()
        };
        assert!(registry.write(&b).is_err());
        assert_eq!(replay_file(&path).live, live(&[&a]), "the file lags behind");
        drop(registry);
        assert_eq!(replay_file(&path).live, live(&[&a, &b]));
    }

    #[test]
    fn removing_an_unknown_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.2.0.journal");
        let mut journal = Journal::new(path.clone());
        journal.remove("never").unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn journal_out_of_sync_after_a_failed_write_is_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.2.0.journal");
        let mut journal = Journal::new(path.clone());
        let (a, b) = (record("a", 1), record("b", 2));
        journal.add(&a).unwrap();
        // A disk that fills up under the open journal.
        journal.file = Some(
            fs::OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .unwrap(),
        );
        assert!(journal.add(&b).is_err());
        assert!(journal.out_of_sync);
        assert_eq!(replay_file(&path).live, live(&[&a]), "the file lags behind");
        journal.remove("a").unwrap();
        assert!(!journal.out_of_sync);
        assert_eq!(fs::read(&path).unwrap(), add(&b));
    }

    #[test]
    fn record_that_cannot_be_written_is_not_kept() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(dir.path().join("1.2.0.journal"));
        let mut bad = record("a", 1);
        bad.socket_path = Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/\xff.sock")));
        assert!(journal.add(&bad).is_err());
        assert!(journal.live.is_empty());
    }

    #[test]
    fn concurrent_writers_leave_whole_lines_that_replay_to_the_live_records() {
        let dir = tempfile::tempdir().unwrap();
        let registry = OrphanRegistry::open(dir.path()).unwrap();
        let path = registry.journal().path.clone();
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
        let dir = tempfile::tempdir().unwrap();
        let empty = OrphanRegistry::open(dir.path()).unwrap();
        let kept = OrphanRegistry::open(dir.path()).unwrap();
        let (empty_path, kept_path) = (empty.journal().path.clone(), kept.journal().path.clone());
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
        let dir = tempfile::tempdir().unwrap();
        let registry = OrphanRegistry::open(dir.path()).unwrap();
        let path = registry.journal().path.clone();
        assert_eq!(journal_owner(&path), Some(registry.owner));
        for other in [
            "a@1.json",
            "1.2.journal",
            "x.2.3.journal",
            "1.2.3.4.journal",
            "1.2.3.journal.tmp",
        ] {
            assert_eq!(journal_owner(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn mentions_matches_whole_names_only() {
        let bytes = [add(&record("ab", 1)), remove("c\"d", 2)].concat();
        assert!(mentions(&bytes, "ab"));
        assert!(mentions(&bytes, "c\"d"));
        assert!(!mentions(&bytes, "a"));
        assert!(!mentions(&bytes, "b"));
    }

    #[test]
    fn settling_a_dead_journal_appends_rewrites_or_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.2.0.journal");
        let (a, b) = (record("a", 1), record("b", 2));
        let tombstone = remove("a", 1);

        // Short and whole: the tombstone is appended.
        fs::write(&path, [add(&a), add(&b)].concat()).unwrap();
        let mut left = replay_file(&path);
        left.live.remove("a");
        settle(&path, &left, std::slice::from_ref(&tombstone)).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            [add(&a), add(&b), tombstone.clone()].concat()
        );

        // A torn last line: rewritten, not appended to.
        fs::write(&path, [add(&a), add(&b), b"{\"add\":".to_vec()].concat()).unwrap();
        let mut left = replay_file(&path);
        left.live.remove("a");
        settle(&path, &left, std::slice::from_ref(&tombstone)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), add(&b));

        // Nothing left: deleted.
        let mut left = replay_file(&path);
        left.live.remove("b");
        settle(&path, &left, &[remove("b", 2)]).unwrap();
        assert!(!path.exists());
    }
}
