//! Storage: the journal format, replay and compaction, the manager's own
//! journal, and the locking of dead managers' journals.
//!
//! Every file is reached through the orphans directory's descriptor
//! ([`PrivateDir`]): opened, created, renamed and removed relative to it,
//! with `O_NOFOLLOW`, and read only when it is a regular file of this user
//! with a single link. A name is never resolved through a path again, so
//! nothing another user plants or swaps in is read as a journal or
//! written through.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs::File,
    io::{self, Read, Write},
    os::fd::AsFd,
    path::PathBuf,
    sync::Arc,
};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::OrphanRecord;
use crate::private_dir::{FileMode, PrivateDir};

/// Lines a journal may have beyond twice its live records before it is
/// compacted. Without slack, a manager running a single daemon would
/// rewrite its journal at every restart of it.
const COMPACTION_SLACK: usize = 64;

/// One line of a journal. `R` is the record: borrowed when writing, so
/// appending does not copy it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Entry<R = OrphanRecord> {
    /// A daemon was spawned.
    Add(R),
    /// A daemon's group is gone, or was cleaned.
    Remove(Tombstone),
}

/// The end of a record. Replay goes by name alone (the lines of a journal
/// are in the order things happened); the PID is for whoever reads it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Tombstone {
    /// The daemon whose record ends.
    pub name: String,
    /// The PID that record named.
    pub pid: i32,
}

/// One journal line: the entry as JSON, then a newline.
pub(super) fn encode(entry: &Entry<&OrphanRecord>) -> io::Result<Vec<u8>> {
    // Fails for a socket path that is not UTF-8, as JSON cannot hold it.
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// What the lines of a journal add up to.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Records added and not removed since, by daemon name.
    pub live: BTreeMap<String, OrphanRecord>,
    /// Lines in the journal, unreadable and torn ones included.
    pub lines: usize,
    /// Whether the journal ends without a newline, so that an append
    /// would run on from its last line.
    pub torn: bool,
}

/// Replays a journal's `bytes` (read from the file `name`, for the logs).
/// A last line without its newline is one a killed manager was writing,
/// or one its live manager is writing now: it never counted and is
/// ignored. Other unreadable lines are skipped with a warning, so damage
/// to one line does not hide the records around it.
pub(super) fn replay(bytes: &[u8], name: &OsStr) -> Replay {
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
                tracing::warn!(journal = ?name, line = index + 1, error = %e, "skipping an unreadable orphan journal line");
            }
        }
    }
    replay
}

/// Whether a journal of `lines` lines, `live` of them records still in
/// force, is long enough to be rewritten with just those. Rewriting at
/// twice the live records keeps the cost of compaction proportional to
/// the appends that made it necessary.
pub(super) fn needs_compaction(lines: usize, live: usize) -> bool {
    lines > 2 * live + COMPACTION_SLACK
}

/// Whether a journal may hold lines about daemon `name`. tend writes a
/// name as a JSON string the same way every time, so a journal without
/// that string cannot concern it: each start cleans its own name, and
/// this spares it replaying every other manager's journal.
pub(super) fn mentions(bytes: &[u8], name: &str) -> bool {
    let Ok(needle) = serde_json::to_vec(name) else {
        return true;
    };
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The file name of the journal of the manager `owner` (PID and start
/// time), registry number `serial` of that process.
pub(super) fn journal_name(owner: (u32, u64), serial: u64) -> OsString {
    format!("{}.{}.{serial}.journal", owner.0, owner.1).into()
}

/// The owner (PID and start time) a journal's file name gives, if it is
/// named like one: `<pid>.<start time>.<n>.journal`.
pub(super) fn journal_owner(name: &OsStr) -> Option<(u32, u64)> {
    let stem = name.to_str()?.strip_suffix(".journal")?;
    let mut parts = stem.split('.');
    let pid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some((pid, start_time))
}

/// The temporary file a journal is rewritten through.
fn temp_name(journal: &OsStr) -> OsString {
    let mut name = journal.to_owned();
    name.push(".tmp");
    name
}

/// Reads the journal `name` without a lock (a live manager only ever
/// appends whole lines or renames a complete file into place). `None` when
/// it is gone; an error of kind `PermissionDenied` when it is not a
/// regular file of this user with one link.
pub(super) fn read(dir: &PrivateDir, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let mut file = match dir.open_file(name, FileMode::Read) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Replaces the journal `name` by one holding just `records`, through a
/// temporary file and a rename, so that neither a reader nor a cleanup
/// after a kill ever sees half of it.
fn rewrite<'a>(
    dir: &PrivateDir,
    name: &OsStr,
    records: impl Iterator<Item = &'a OrphanRecord>,
) -> io::Result<()> {
    let mut text = Vec::new();
    for record in records {
        text.extend(encode(&Entry::Add(record))?);
    }
    let tmp = temp_name(name);
    let written = dir
        .open_file(&tmp, FileMode::Truncate)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| dir.rename(&tmp, name));
    if written.is_err() {
        let _ = dir.remove_file(&tmp);
    }
    written
}

/// A manager's own journal and, in memory, the records in force in it.
#[derive(Debug)]
pub(super) struct Journal {
    /// The orphans directory.
    dir: Arc<PrivateDir>,
    /// `<pid>.<start time>.<n>.journal`.
    name: OsString,
    /// The records in force, by daemon name: what the file replays to.
    pub live: BTreeMap<String, OrphanRecord>,
    /// Opened with `O_APPEND` at the first write and kept open, so a
    /// change costs one `write(2)` and no directory operation.
    pub file: Option<File>,
    /// Lines in the file.
    pub lines: usize,
    /// Whether the file may not hold what `live` does: a write failed, or
    /// wrote part of a line. The next change then rewrites the file whole
    /// rather than append after a partial line.
    pub out_of_sync: bool,
}

impl Journal {
    /// The journal `name` in `dir`, empty; the file is created by the
    /// first write.
    pub fn new(dir: Arc<PrivateDir>, name: OsString) -> Self {
        Journal {
            dir,
            name,
            live: BTreeMap::new(),
            file: None,
            lines: 0,
            out_of_sync: false,
        }
    }

    /// The journal's file name.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The journal's path, for messages and tests.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// Records `record`, replacing the record of its name if any.
    pub fn add(&mut self, record: &OrphanRecord) -> io::Result<()> {
        // Encoded first: a record that cannot be written is not kept, or
        // every later compaction would fail on it.
        let line = encode(&Entry::Add(record))?;
        self.live.insert(record.name.clone(), record.clone());
        self.append(&line)
    }

    /// Ends the record of `name`, if there is one.
    pub fn remove(&mut self, name: &str) -> io::Result<()> {
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
            slot @ None => slot.insert(
                self.dir
                    .open_file(&self.name, FileMode::Append)
                    .inspect_err(|_| {
                        self.out_of_sync = true;
                    })?,
            ),
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
                tracing::warn!(path = ?self.path(), error = %e, "cannot compact the orphan journal");
            }
        }
        Ok(())
    }

    /// Rewrites the file with just the live records.
    pub fn compact(&mut self) -> io::Result<()> {
        rewrite(&self.dir, &self.name, self.live.values())?;
        self.lines = self.live.len();
        self.out_of_sync = false;
        // The old descriptor writes to the replaced file. Should reopening
        // fail, the next append tries again.
        self.file = self.dir.open_file(&self.name, FileMode::Append).ok();
        Ok(())
    }

    /// Deletes the file (when nothing is recorded any more).
    pub fn delete(&mut self) {
        self.file = None;
        let _ = self.dir.remove_file(&self.name);
    }
}

/// A dead manager's journal, locked: the lock lasts while this lives.
#[derive(Debug)]
pub(super) struct DeadJournal {
    /// Its file name.
    pub name: OsString,
    /// The dead manager its name gives.
    pub owner: (u32, u64),
    /// What it replays to.
    pub replay: Replay,
    /// Holds the `flock`.
    _file: File,
}

/// Opens and exclusively locks the dead journal `name` of `owner`,
/// returning it with what it replays to, or `None` once it is gone.
/// Another cleanup may have held the lock first and deleted the journal,
/// or replaced it by a rewrite; then the file locked here is no longer
/// the one under that name, and that one is locked instead. Refused
/// (`PermissionDenied`) unless it is a regular file of this user with one
/// link.
pub(super) async fn lock(
    dir: &PrivateDir,
    name: OsString,
    owner: (u32, u64),
) -> io::Result<Option<DeadJournal>> {
    loop {
        let file = match dir.open_file(&name, FileMode::Read) {
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
        let locked = rustix::fs::fstat(file.as_fd())?;
        match dir.identity(&name)? {
            Some(now) if now == (locked.st_dev, locked.st_ino) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                let replay = replay(&bytes, &name);
                return Ok(Some(DeadJournal {
                    name,
                    owner,
                    replay,
                    _file: file,
                }));
            }
            Some(_) => continue,
            None => return Ok(None),
        }
    }
}

/// Brings the dead journal, locked by the caller, in line with what is
/// left of it after a cleanup that ended the records whose `tombstones`
/// are given: it is deleted when nothing is left; otherwise the
/// tombstones are appended, or the journal is rewritten when that makes
/// it too long or its last line is torn. Appending rather than always
/// rewriting keeps each start of one of the dead manager's many daemons
/// from copying the whole journal.
pub(super) fn settle(
    dir: &PrivateDir,
    journal: &DeadJournal,
    tombstones: &[Vec<u8>],
) -> io::Result<()> {
    let replay = &journal.replay;
    if replay.live.is_empty() {
        // So does a temporary file its manager was killed compacting to.
        let _ = dir.remove_file(temp_name(&journal.name));
        return dir.remove_file(&journal.name);
    }
    if tombstones.is_empty() {
        return Ok(());
    }
    if replay.torn || needs_compaction(replay.lines + tombstones.len(), replay.live.len()) {
        return rewrite(dir, &journal.name, replay.live.values());
    }
    dir.open_file(&journal.name, FileMode::Append)?
        .write_all(&tombstones.concat())
}

#[cfg(test)]
pub(super) mod tests {
    use std::{fs, os::unix::ffi::OsStrExt, path::Path};

    use super::*;

    /// A record of daemon `name` running as `pid`.
    pub(in crate::orphans) fn record(name: &str, pid: i32) -> OrphanRecord {
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
            cgroup: None,
            stop_signal: crate::config::StopSignal::Term,
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
    pub(in crate::orphans) fn replay_file(path: &Path) -> Replay {
        replay(&fs::read(path).unwrap(), path.as_os_str())
    }

    /// `records` by name, as a replay gives them.
    pub(in crate::orphans) fn live(records: &[&OrphanRecord]) -> BTreeMap<String, OrphanRecord> {
        records
            .iter()
            .map(|r| (r.name.clone(), (*r).clone()))
            .collect()
    }

    /// A private directory in a fresh temp dir, and the temp dir.
    fn private() -> (tempfile::TempDir, Arc<PrivateDir>) {
        let temp = tempfile::tempdir().unwrap();
        let dir = PrivateDir::open_or_create(temp.path().join("orphans")).unwrap();
        (temp, Arc::new(dir))
    }

    /// The journal `1.2.0.journal` in a fresh directory.
    fn journal() -> (tempfile::TempDir, Journal) {
        let (temp, dir) = private();
        (temp, Journal::new(dir, "1.2.0.journal".into()))
    }

    #[test]
    fn lines_are_one_json_object_each() {
        let line = remove("a", 5);
        assert_eq!(line, b"{\"remove\":{\"name\":\"a\",\"pid\":5}}\n");
        let line = add(&record("a", 5));
        assert!(line.starts_with(b"{\"add\":{\"name\":\"a\",\"pid\":5,"));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    /// The line adding `record`, with `"stop_signal": <json>` written in.
    fn add_with_stop_signal(record: &OrphanRecord, json: &str) -> Vec<u8> {
        let line = add(record);
        let object = line.strip_suffix(b"}}\n").unwrap();
        [object, b",\"stop_signal\":", json.as_bytes(), b"}}\n"].concat()
    }

    #[test]
    fn the_stop_signal_is_written_by_name_and_left_out_for_sigterm() {
        use crate::config::StopSignal;
        let term = record("a", 5);
        let line = add(&term);
        assert!(
            !line.windows(11).any(|w| w == b"stop_signal"),
            "SIGTERM was written: {}",
            String::from_utf8_lossy(&line)
        );
        for signal in StopSignal::ALL {
            let mut daemon = record("a", 5);
            daemon.stop_signal = signal;
            let line = add(&daemon);
            if signal != StopSignal::Term {
                let field = format!("\"stop_signal\":\"{}\"", signal.name());
                assert!(
                    line.windows(field.len()).any(|w| w == field.as_bytes()),
                    "{}",
                    String::from_utf8_lossy(&line)
                );
            }
            let replay = replay(&line, OsStr::new("j"));
            assert_eq!(replay.live, live(&[&daemon]), "{signal}");
        }
    }

    #[test]
    fn a_record_without_a_known_stop_signal_means_sigterm_and_is_still_acted_on() {
        use crate::config::StopSignal;
        let daemon = record("a", 5);
        // A line as a tend before the field wrote it.
        let old = add(&daemon);
        assert_eq!(replay(&old, OsStr::new("j")).live, live(&[&daemon]));
        for garbage in [
            "\"SIGKILL\"",
            "\"SIGSTOP\"",
            "\"SIGFOO\"",
            "\"\"",
            "3",
            "null",
            "true",
            "{}",
            "[\"SIGQUIT\"]",
        ] {
            let line = add_with_stop_signal(&daemon, garbage);
            let replay = replay(&line, OsStr::new("j"));
            assert_eq!(replay.live, live(&[&daemon]), "{garbage}");
            assert_eq!(replay.live["a"].stop_signal, StopSignal::Term);
        }
        let mut quit = record("a", 5);
        quit.stop_signal = StopSignal::Quit;
        let line = add_with_stop_signal(&daemon, "\"SIGQUIT\"");
        assert_eq!(replay(&line, OsStr::new("j")).live, live(&[&quit]));
        // The rest of the record is read as strictly as before: a bad
        // field elsewhere still makes the line unreadable.
        let bad_pid = String::from_utf8(add_with_stop_signal(&daemon, "\"SIGFOO\""))
            .unwrap()
            .replace("\"pid\":5", "\"pid\":\"5\"");
        assert!(replay(bad_pid.as_bytes(), OsStr::new("j")).live.is_empty());
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
        let replay = replay(&bytes, OsStr::new("j"));
        assert_eq!(replay.live, live(&[&a2, &b]));
        assert_eq!(replay.lines, 6);
        assert!(!replay.torn);
    }

    #[test]
    fn replay_replaces_a_record_added_again_under_its_name() {
        let (old, new) = (record("a", 1), record("a", 2));
        let replay = replay(&[add(&old), add(&new)].concat(), OsStr::new("j"));
        assert_eq!(replay.live, live(&[&new]));
    }

    #[test]
    fn replay_ignores_a_torn_last_line() {
        let (a, b) = (record("a", 1), record("b", 2));
        let whole = add(&b);
        for cut in [1, whole.len() / 2, whole.len() - 2] {
            let bytes = [add(&a), whole[..cut].to_vec()].concat();
            let replay = replay(&bytes, OsStr::new("j"));
            assert_eq!(replay.live, live(&[&a]), "cut at {cut}");
            assert_eq!(replay.lines, 2);
            assert!(replay.torn);
        }
        // Complete but for its newline: it counts, yet an append would
        // still run on from it.
        let bytes = [add(&a), whole[..whole.len() - 1].to_vec()].concat();
        let replay = replay(&bytes, OsStr::new("j"));
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
        let replay = replay(&bytes, OsStr::new("j"));
        assert_eq!(replay.live, live(&[&a, &b]));
        assert_eq!(replay.lines, 5);
        assert!(!replay.torn);
    }

    #[test]
    fn replay_of_nothing_is_empty() {
        let replay = replay(b"", OsStr::new("j"));
        assert!(replay.live.is_empty() && replay.lines == 0 && !replay.torn);
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records() {
        let (_temp, mut journal) = journal();
        let path = journal.path();
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
        let names = journal.dir.entries().unwrap();
        assert_eq!(names, [journal.name()], "a temporary file is left");
    }

    #[test]
    fn removing_an_unknown_name_writes_nothing() {
        let (_temp, mut journal) = journal();
        journal.remove("never").unwrap();
        assert!(!journal.path().exists());
    }

    #[test]
    fn journal_out_of_sync_after_a_failed_write_is_rewritten_whole() {
        let (_temp, mut journal) = journal();
        let path = journal.path();
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
        let (_temp, mut journal) = journal();
        let mut bad = record("a", 1);
        bad.socket_path = Some(PathBuf::from(OsStr::from_bytes(b"/\xff.sock")));
        assert!(journal.add(&bad).is_err());
        assert!(journal.live.is_empty());
    }

    #[test]
    fn journal_names_give_their_owner() {
        assert_eq!(journal_owner(&journal_name((12, 34), 5)), Some((12, 34)));
        for other in [
            "a@1.json",
            "1.2.journal",
            "x.2.3.journal",
            "1.2.3.4.journal",
            "1.2.3.journal.tmp",
        ] {
            assert_eq!(journal_owner(OsStr::new(other)), None, "{other}");
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

    #[tokio::test]
    async fn settling_a_dead_journal_appends_rewrites_or_deletes() {
        let (_temp, dir) = private();
        let name = OsString::from("1.2.0.journal");
        let path = dir.path().join(&name);
        let (a, b) = (record("a", 1), record("b", 2));
        let tombstone = remove("a", 1);
        let locked = |dir: Arc<PrivateDir>, name: OsString| async move {
            lock(&dir, name, (1, 2)).await.unwrap().unwrap()
        };

        // Short and whole: the tombstone is appended.
        fs::write(&path, [add(&a), add(&b)].concat()).unwrap();
        let mut journal = locked(dir.clone(), name.clone()).await;
        journal.replay.live.remove("a");
        settle(&dir, &journal, std::slice::from_ref(&tombstone)).unwrap();
        drop(journal);
        assert_eq!(
            fs::read(&path).unwrap(),
            [add(&a), add(&b), tombstone.clone()].concat()
        );

        // A torn last line: rewritten, not appended to.
        fs::write(&path, [add(&a), add(&b), b"{\"add\":".to_vec()].concat()).unwrap();
        let mut journal = locked(dir.clone(), name.clone()).await;
        journal.replay.live.remove("a");
        settle(&dir, &journal, std::slice::from_ref(&tombstone)).unwrap();
        drop(journal);
        assert_eq!(fs::read(&path).unwrap(), add(&b));

        // Nothing left: deleted.
        let mut journal = locked(dir.clone(), name.clone()).await;
        journal.replay.live.remove("b");
        settle(&dir, &journal, &[remove("b", 2)]).unwrap();
        assert!(!path.exists());
        assert!(lock(&dir, name, (1, 2)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn journals_that_are_links_are_refused() {
        let (temp, dir) = private();
        let elsewhere = temp.path().join("elsewhere.journal");
        fs::write(&elsewhere, add(&record("a", 5))).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("1.2.0.journal")).unwrap();
        fs::hard_link(&elsewhere, dir.path().join("3.4.0.journal")).unwrap();
        for (name, why) in [
            ("1.2.0.journal", "symbolic link"),
            ("3.4.0.journal", "hard links"),
        ] {
            let err = read(&dir, OsStr::new(name)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{name}");
            assert!(err.to_string().contains(why), "{name}: {err}");
            let err = lock(&dir, name.into(), (1, 2)).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{name}");
        }
    }
}
