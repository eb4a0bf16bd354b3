//! Proof and kill policy: what cleanup may do to the processes a dead
//! manager's records name, and to the processes that carry its marker.
//!
//! A record is acted on only once it is shown to be tend's own (it comes
//! from a journal of this user, see [`super::journal`]) and well formed
//! ([`refusal`]): a daemon PID and group above 1, a daemon leading its own
//! group, a manager that is the one the journal's name gives. Its group is
//! killed only when [`prove`] shows the processes are the ones recorded,
//! and never when the group holds the process running the cleanup or one
//! of its ancestors.
//!
//! The `TEND_MANAGER_ID` marker in a process's environment is inherited,
//! and anything can set it, so on its own it only makes a process a
//! *suspect*, reported and left alone. A marked process is killed only if
//! [`verdict`] finds it proven besides: started after the dead manager and
//! descending from one of its daemons that this cleanup proved, or (once
//! cgroup containment provides it) in the dead manager's cgroup. The
//! cleanup's own process and its ancestors are never killed.
//!
//! Everything found is signalled at once, and the waits for the grace
//! periods run side by side: a cleanup takes one grace period, not one
//! per daemon. A daemon's group, its cgroup and its proven escaped
//! descendants get the stop signal its record names (SIGTERM where the
//! record names none, as records written before the field existed do, or
//! one tend does not know), and SIGKILL once its grace period is over.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ffi::OsStr,
    fs,
    future::Future,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    pin::Pin,
    task::Poll,
    time::Duration,
};

use super::{
    CleanupReport, OrphanRecord,
    journal::{DeadJournal, Entry, Tombstone, encode},
};
use crate::{cgroup, config::StopSignal, kill, procfs, spawn};

/// How many parents up a marked process's ancestry is followed; deeper
/// chains are left unproven.
const MAX_ANCESTRY: usize = 1024;

/// Why `record`, read from the journal of manager `owner`, is not one tend
/// wrote and must not be acted on; `None` when it is well formed.
pub(super) fn refusal(record: &OrphanRecord, owner: (u32, u64)) -> Option<String> {
    if record.pid <= 1 || record.pgid <= 1 {
        return Some(format!(
            "it names pid {} and group {}, which would signal the init process or every process",
            record.pid, record.pgid
        ));
    }
    if record.pgid != record.pid {
        return Some(format!(
            "its daemon (pid {}) does not lead its group {}, as every daemon tend spawns does",
            record.pid, record.pgid
        ));
    }
    if (record.owner_pid, record.owner_start_time) != owner {
        return Some(format!(
            "it names manager {}.{}, not the journal's {}.{}",
            record.owner_pid, record.owner_start_time, owner.0, owner.1
        ));
    }
    None
}

/// What a record's processes turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Proof {
    /// Nothing of the daemon is left, or its PID is another process's now.
    Gone,
    /// These live processes are provably the daemon's group.
    Ours(Vec<i32>),
}

/// Shows whether the processes `record` names are still the daemon's:
/// - the leader is alive with the recorded start time and group (the
///   group's members are then the daemon's too: a group id is not reused
///   while its leader lives), or
/// - the leader is gone but members of its group remain that share its
///   session, started after it, and carry its manager's marker (an
///   unrelated process may have reused the PID and formed a group).
pub(super) fn prove(record: &OrphanRecord, groups: &mut LiveGroups) -> Result<Proof, String> {
    match procfs::stat(record.pid).map_err(|e| e.to_string())? {
        Some(leader) if leader.is_alive() => {
            if leader.start_time != record.start_time || leader.pgid != record.pgid {
                return Ok(Proof::Gone);
            }
            let mut pids = groups.members(record.pgid).to_vec();
            if !pids.contains(&record.pid) {
                pids.push(record.pid);
            }
            Ok(Proof::Ours(pids))
        }
        // Usually the guard stopped the whole group already: nothing
        // carries its id, and `/proc` need not be read.
        _ if kill::no_process_in_group(record.pgid) => Ok(Proof::Gone),
        _ => {
            let marker = format!(
                "{}={}.{}",
                spawn::MANAGER_ID_ENV,
                record.owner_pid,
                record.owner_start_time
            );
            let pids: Vec<i32> = groups
                .members(record.pgid)
                .iter()
                .copied()
                .filter(|&pid| {
                    matches!(
                        procfs::stat(pid),
                        Ok(Some(s)) if s.sid == record.sid && s.start_time >= record.start_time
                    ) && procfs::environ_contains(pid, marker.as_bytes())
                })
                .collect();
            Ok(if pids.is_empty() {
                Proof::Gone
            } else {
                Proof::Ours(pids)
            })
        }
    }
}

/// The live processes of each process group, read from `/proc` once, when
/// a proof first needs them: a scan for each record made a `tend up` after
/// a crash take seconds at 1,000 records (more where zombies wait for a
/// slow init, so that their groups are not empty at once).
#[derive(Debug, Default)]
pub(super) struct LiveGroups(Option<HashMap<i32, Vec<i32>>>);

impl LiveGroups {
    /// The live members of group `pgid` when first asked.
    fn members(&mut self, pgid: i32) -> &[i32] {
        self.0
            .get_or_insert_with(procfs::live_groups)
            .get(&pgid)
            .map_or(&[], Vec::as_slice)
    }
}

/// The process running the cleanup and its ancestors, with their process
/// groups: never signalled.
#[derive(Debug, Default)]
pub(crate) struct Protected {
    /// PID and process group of each.
    processes: Vec<(i32, i32)>,
}

impl Protected {
    /// This process and its parents, up to the first process.
    pub fn of_self() -> Self {
        let mut processes = Vec::new();
        let mut pid = std::process::id() as i32;
        while pid > 0 && processes.len() < MAX_ANCESTRY {
            let Ok(Some(stat)) = procfs::stat(pid) else {
                break;
            };
            processes.push((pid, stat.pgid));
            pid = stat.ppid;
        }
        Protected { processes }
    }

    /// Whether `pid` is the cleanup's process or one of its ancestors.
    pub fn contains(&self, pid: i32) -> bool {
        self.processes.iter().any(|&(p, _)| p == pid)
    }

    /// The protected process in group `pgid`, if one is.
    pub fn in_group(&self, pgid: i32) -> Option<i32> {
        self.processes
            .iter()
            .find(|&&(_, g)| g == pgid)
            .map(|&(p, _)| p)
    }
}

/// How a process carrying a dead manager's marker relates to that
/// manager's daemons, as its chain of parents shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ancestry {
    /// It descends from a process this cleanup proved to be one of the
    /// dead manager's daemons (a live recorded leader with its recorded
    /// start time, or a proven member of a recorded group) and cleans now.
    CleanedDaemon,
    /// It descends from a live recorded leader of a record this cleanup
    /// does not clean (a start cleans only its own name): that record's
    /// cleanup decides.
    OtherDaemon,
    /// Nothing shows it descends from one of the daemons: it was
    /// reparented (double fork), or merely carries the marker.
    Unproven,
}

/// What cleanup knows about a live process carrying a dead manager's
/// `TEND_MANAGER_ID`: the facts [`verdict`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkedProcess {
    /// Its PID.
    pub pid: i32,
    /// Whether it is the process running the cleanup, or an ancestor.
    pub is_cleanup_or_ancestor: bool,
    /// Whether it started after the dead manager did.
    pub started_after_manager: bool,
    /// What its parents show.
    pub ancestry: Ancestry,
    /// Whether it is in the dead manager's cgroup; `None` where that is
    /// not known. This is the hook for cgroup containment: a process
    /// shown to be in the dead manager's cgroup is proven its own.
    pub in_manager_cgroup: Option<bool>,
}

/// What cleanup does with a marked process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Proven the dead manager's: stopped.
    Kill,
    /// Left alone without a report: the cleanup itself or an ancestor, a
    /// process older than the manager (so not its descendant), or one
    /// another record's cleanup decides on.
    Leave,
    /// Carries the marker, nothing more is proven: reported, left alone.
    Suspect,
}

/// The kill decision for a marked process. The marker alone only makes a
/// suspect; a kill needs a proof besides, and the cleanup's own process
/// and its ancestors are never killed.
pub(crate) fn verdict(process: &MarkedProcess) -> Verdict {
    if process.is_cleanup_or_ancestor || !process.started_after_manager {
        return Verdict::Leave;
    }
    match (process.ancestry, process.in_manager_cgroup) {
        (Ancestry::CleanedDaemon, _) | (_, Some(true)) => Verdict::Kill,
        (Ancestry::OtherDaemon, _) => Verdict::Leave,
        (Ancestry::Unproven, _) => Verdict::Suspect,
    }
}

/// A record proven to name a dead manager's live daemon group, to kill.
struct Target {
    /// Index of its journal.
    journal: usize,
    /// The record.
    record: OrphanRecord,
}

/// Cleans the records of the locked dead `journals` (those of daemon
/// `only`, or all), and the processes marked by their managers. Records
/// that are gone, refused or cleaned are removed from each journal's
/// replay; returns, per journal, the tombstone lines to settle it with.
pub(super) async fn clean(
    journals: &mut [DeadJournal],
    only: Option<&str>,
    report: &mut CleanupReport,
) -> Vec<Vec<Vec<u8>>> {
    let selected = |name: &str| only.is_none_or(|n| n == name);
    let protected = Protected::of_self();
    let mut targets = Vec::new();
    let mut ended: Vec<(usize, String)> = Vec::new();
    // Processes proven to be daemons this cleanup cleans, with the grace
    // period and stop signal of their record; the live leaders of records
    // it does not clean, with their start time.
    let mut proven: HashMap<i32, (u64, StopSignal)> = HashMap::new();
    let mut others: HashMap<i32, u64> = HashMap::new();
    let mut dead_owners = BTreeSet::new();
    let mut live_groups = LiveGroups::default();

    for (index, journal) in journals.iter().enumerate() {
        for record in journal.replay.live.values() {
            let chosen = selected(&record.name);
            if let Some(why) = refusal(record, journal.owner) {
                if chosen {
                    tracing::warn!(journal = ?journal.name, name = %record.name, "dropping an orphan record tend would not have written, without acting on it: {why}");
                    report.stale.push(record.name.clone());
                    ended.push((index, record.name.clone()));
                }
                continue;
            }
            if !chosen {
                others.insert(record.pid, record.start_time);
                continue;
            }
            dead_owners.insert(journal.owner);
            match prove(record, &mut live_groups) {
                Err(e) => {
                    tracing::warn!(name = %record.name, error = %e, "could not clean orphan; keeping its record");
                }
                Ok(Proof::Gone) => {
                    report.stale.push(record.name.clone());
                    ended.push((index, record.name.clone()));
                }
                Ok(Proof::Ours(pids)) => {
                    proven.extend(
                        pids.iter()
                            .map(|&pid| (pid, (record.grace_ms, record.stop_signal))),
                    );
                    if let Some(mine) = protected.in_group(record.pgid) {
                        let others: Vec<u32> = pids
                            .iter()
                            .filter(|&&p| !protected.contains(p))
                            .map(|&p| p as u32)
                            .collect();
                        tracing::warn!(
                            name = %record.name,
                            pgid = record.pgid,
                            cleanup_or_parent = mine,
                            "not stopping the orphaned daemon of a dead manager: its group holds this process or one of its parents; stop it from outside (kill -TERM -{})",
                            record.pgid
                        );
                        report.suspects.extend(others);
                        continue;
                    }
                    targets.push(Target {
                        journal: index,
                        record: record.clone(),
                    });
                }
            }
        }
    }

    let doomed: HashSet<i32> = targets.iter().map(|t| t.record.pgid).collect();
    // Escaped descendants by the stop signal of the daemon they descend
    // from (as its group's members get it), with the longest grace.
    let mut escapees: HashMap<StopSignal, (Vec<i32>, u64)> = HashMap::new();
    if !dead_owners.is_empty() {
        for (process, (grace, stop)) in
            marked_processes(&dead_owners, &doomed, &protected, &proven, &others)
        {
            match verdict(&process) {
                Verdict::Kill => {
                    let (pids, longest) = escapees.entry(stop).or_default();
                    pids.push(process.pid);
                    *longest = (*longest).max(grace);
                }
                Verdict::Suspect => {
                    tracing::warn!(
                        pid = process.pid,
                        "process {} carries the TEND_MANAGER_ID of a dead manager but nothing proves it is one of its daemons' descendants (it may have been reparented by a double fork); left alone: check it and kill it yourself if it is a leftover",
                        process.pid
                    );
                    report.suspects.push(process.pid as u32);
                }
                Verdict::Leave => {}
            }
        }
    }

    // Signal everything at once; the grace periods run side by side.
    let kill_escapees = join_all(escapees.iter().map(|(&stop, (pids, grace))| {
        tracing::info!(?pids, %stop, "stopping escaped descendants of a dead manager's daemons");
        kill::terminate_pids(pids, stop, Duration::from_millis(*grace))
    }));
    let (results, _) = tokio::join!(
        join_all(targets.iter().map(|t| kill_group(&t.record))),
        kill_escapees
    );
    for (target, result) in targets.iter().zip(results) {
        match result {
            Ok(()) => {
                report.killed.push(target.record.name.clone());
                ended.push((target.journal, target.record.name.clone()));
            }
            Err(e) => {
                tracing::warn!(name = %target.record.name, error = %e, "could not clean orphan; keeping its record");
            }
        }
    }
    report.escaped = escapees
        .into_values()
        .flat_map(|(pids, _)| pids)
        .map(|p| p as u32)
        .collect();
    report.escaped.sort_unstable();

    let mut tombstones = vec![Vec::new(); journals.len()];
    for (index, name) in ended {
        let live = &mut journals[index].replay.live;
        let Some(record) = live.get(&name) else {
            continue;
        };
        let tombstone = Tombstone {
            pid: record.pid,
            name: name.clone(),
        };
        // Cannot fail for a name read from JSON; should it, the record is
        // kept and found stale next time.
        if let Ok(line) = encode(&Entry::Remove(tombstone)) {
            tombstones[index].push(line);
            live.remove(&name);
        }
    }
    tombstones
}

/// What cleaning dead managers' cgroups stopped.
#[derive(Debug, Default)]
pub(super) struct CgroupsCleaned {
    /// Daemons whose cgroup still had processes.
    daemons: Vec<String>,
    /// Processes that were outside their daemon's recorded group: they
    /// escaped it, but not its cgroup.
    escaped: Vec<u32>,
}

impl CgroupsCleaned {
    /// Adds what was stopped to `report`: the daemons count as killed (the
    /// record cleanup that ran after found them gone), the processes
    /// outside their group as escaped.
    pub fn report_into(self, report: &mut CleanupReport) {
        for name in self.daemons {
            report.stale.retain(|stale| *stale != name);
            if !report.killed.contains(&name) {
                report.killed.push(name);
            }
        }
        report.escaped.extend(self.escaped);
    }
}

/// Stops what dead managers left in their cgroups: the cgroups the records
/// of the dead `journals` name (of daemon `only`, or all; `alive` says
/// which managers still run). A record's cgroup is used only if it is
/// `<manager cgroup>/d-<name>` with the manager cgroup named after the
/// journal's owner, on the cgroup v2 file system and created by this user
/// (see [`cgroup::DeadManagerCgroup`]); everything in it is then the
/// daemon's by construction, whatever its process group or environment.
pub(super) async fn clean_cgroups(
    journals: &[DeadJournal],
    only: Option<&str>,
    alive: impl Fn((u32, u64)) -> bool,
) -> CgroupsCleaned {
    let mut graces: HashMap<String, Duration> = HashMap::new();
    let mut stop_signals: HashMap<String, StopSignal> = HashMap::new();
    let mut groups: HashMap<String, i32> = HashMap::new();
    let mut sockets: HashMap<String, PathBuf> = HashMap::new();
    let mut managers: BTreeSet<PathBuf> = BTreeSet::new();
    for journal in journals {
        for record in journal.replay.live.values() {
            if only.is_some_and(|n| n != record.name) || refusal(record, journal.owner).is_some() {
                continue;
            }
            let Some(path) = &record.cgroup else {
                continue;
            };
            let leaf = format!("{}{}", cgroup::DAEMON_PREFIX, record.name);
            let manager = path.parent().filter(|parent| {
                path.file_name() == Some(OsStr::new(&leaf))
                    && parent.file_name().and_then(cgroup::manager_of) == Some(journal.owner)
            });
            let Some(manager) = manager else {
                tracing::warn!(name = %record.name, ?path, "ignoring a recorded cgroup that is not where its manager puts its daemons");
                continue;
            };
            let grace = graces.entry(record.name.clone()).or_default();
            *grace = (*grace).max(Duration::from_millis(record.grace_ms));
            // `d-<name>` under a manager's cgroup is that manager's daemon of
            // that name, and its latest record carries the latest config.
            stop_signals.insert(record.name.clone(), record.stop_signal);
            groups.insert(record.name.clone(), record.pgid);
            if let Some(socket) = &record.socket_path {
                sockets.insert(record.name.clone(), socket.clone());
            }
            managers.insert(manager.to_owned());
        }
    }
    if only.is_none() {
        // Housekeeping: dead managers' cgroups beside ours that are empty
        // (their guard or a cleanup stopped everything but could not
        // remove them). Populated ones are only stopped through a journal
        // of this state directory, so that a cleanup never reaches the
        // daemons of another app's killed manager.
        for found in cgroup::DeadManagerCgroup::beside_ours(&alive) {
            found.remove_if_empty();
        }
    }
    let dead: Vec<cgroup::DeadManagerCgroup> = managers
        .iter()
        .filter_map(|path| cgroup::DeadManagerCgroup::open(path, &alive))
        .collect();
    if dead.is_empty() {
        return CgroupsCleaned::default();
    }
    let grace_of = |name: &str| {
        graces
            .get(name)
            .copied()
            .unwrap_or(crate::defaults::SHUTDOWN_GRACE_PERIOD)
    };
    // A cgroup without a record (its manager could not write it) gets
    // SIGTERM, as any daemon does by default.
    let stop_of = |name: &str| stop_signals.get(name).copied().unwrap_or_default();
    let mut cleaned = CgroupsCleaned::default();
    for (name, members) in cgroup::clean_dead_managers(&dead, only, grace_of, stop_of).await {
        // Without a record the daemon's group is unknown: none is called
        // an escapee.
        if let Some(&pgid) = groups.get(&name) {
            cleaned.escaped.extend(
                members
                    .iter()
                    .filter(|&&(_, group)| group != pgid)
                    .map(|&(pid, _)| pid),
            );
        }
        if let Some(socket) = sockets.get(&name) {
            remove_socket(socket);
        }
        cleaned.daemons.push(name);
    }
    cleaned
}

/// Stops a proven daemon group and removes its socket.
async fn kill_group(record: &OrphanRecord) -> Result<(), String> {
    tracing::info!(name = %record.name, pid = record.pid, stop = %record.stop_signal, "stopping orphaned daemon of a dead manager");
    // The daemon's own stop signal (SIGTERM for a record without one),
    // then SIGKILL once its grace period is over.
    kill::terminate_group(
        record.pgid,
        None,
        None,
        record.stop_signal,
        Duration::from_millis(record.grace_ms),
    )
    .await?;
    if let Some(socket) = &record.socket_path {
        remove_socket(socket);
    }
    Ok(())
}

/// Removes the file at `path` only if it is a socket, never following a
/// symlink: a record's socket path may since have become another file.
pub(super) fn remove_socket(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = fs::remove_file(path);
        }
        Ok(_) => {
            tracing::debug!(
                ?path,
                "the recorded socket path is no longer a socket; left alone"
            );
        }
        Err(_) => {}
    }
}

/// The live processes (other than those of `doomed` groups, which die
/// with their group) whose environment names one of `owners` as their
/// manager, with what is known about them and the grace period and stop
/// signal of the daemon they descend from (SIGTERM where none is proven).
fn marked_processes(
    owners: &BTreeSet<(u32, u64)>,
    doomed: &HashSet<i32>,
    protected: &Protected,
    proven: &HashMap<i32, (u64, StopSignal)>,
    others: &HashMap<i32, u64>,
) -> Vec<(MarkedProcess, (u64, StopSignal))> {
    let Some(oldest) = owners.iter().map(|o| o.1).min() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in procfs::all_pids() {
        if pid <= 1 {
            continue;
        }
        let Ok(Some(stat)) = procfs::stat(pid) else {
            continue;
        };
        // A process older than every dead manager descends from none.
        if !stat.is_alive() || doomed.contains(&stat.pgid) || stat.start_time < oldest {
            continue;
        }
        let Some(owner) = manager_of(pid).filter(|o| owners.contains(o)) else {
            continue;
        };
        let (ancestry, stop) = ancestry(stat.ppid, proven, others);
        let process = MarkedProcess {
            pid,
            is_cleanup_or_ancestor: protected.contains(pid),
            started_after_manager: stat.start_time >= owner.1,
            ancestry,
            in_manager_cgroup: None,
        };
        found.push((process, stop));
    }
    found
}

/// The manager (PID and start time) the `TEND_MANAGER_ID` in the
/// environment of `pid` names, if it has one.
fn manager_of(pid: i32) -> Option<(u32, u64)> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{}=", spawn::MANAGER_ID_ENV);
    let value = environ
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))?;
    let (pid, start) = std::str::from_utf8(value).ok()?.split_once('.')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Follows the parents from `parent` up: what they show, and the grace
/// period and stop signal of the cleaned daemon reached, if one is.
fn ancestry(
    mut parent: i32,
    proven: &HashMap<i32, (u64, StopSignal)>,
    others: &HashMap<i32, u64>,
) -> (Ancestry, (u64, StopSignal)) {
    let none = (0, StopSignal::Term);
    for _ in 0..MAX_ANCESTRY {
        if parent <= 1 {
            break;
        }
        if let Some(&stop) = proven.get(&parent) {
            return (Ancestry::CleanedDaemon, stop);
        }
        let Ok(Some(stat)) = procfs::stat(parent) else {
            break;
        };
        if others.get(&parent) == Some(&stat.start_time) {
            return (Ancestry::OtherDaemon, none);
        }
        parent = stat.ppid;
    }
    (Ancestry::Unproven, none)
}

/// Runs `futures` side by side; their outputs, in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32, pgid: i32, owner: (u32, u64)) -> OrphanRecord {
        OrphanRecord {
            name: "a".into(),
            pid,
            pgid,
            sid: pid,
            start_time: 7,
            owner_pid: owner.0,
            owner_start_time: owner.1,
            socket_path: None,
            grace_ms: 100,
            cgroup: None,
            stop_signal: crate::config::StopSignal::Term,
        }
    }

    #[test]
    fn records_naming_init_every_process_or_another_manager_are_refused() {
        let owner = (40, 50);
        assert_eq!(refusal(&record(1234, 1234, owner), owner), None);
        for (pid, pgid) in [(1, 1), (0, 0), (-1, -1), (1234, 1), (1234, 0), (1, 1234)] {
            assert!(
                refusal(&record(pid, pgid, owner), owner).is_some(),
                "pid {pid} pgid {pgid}"
            );
        }
        // A daemon that does not lead its group: tend never records one.
        assert!(refusal(&record(1234, 1000, owner), owner).is_some());
        // A manager other than the journal's.
        for other in [(41, 50), (40, 51)] {
            assert!(refusal(&record(1234, 1234, other), owner).is_some());
        }
    }

    #[test]
    fn marker_alone_makes_a_suspect_and_the_cleanup_is_never_killed() {
        let base = MarkedProcess {
            pid: 100,
            is_cleanup_or_ancestor: false,
            started_after_manager: true,
            ancestry: Ancestry::Unproven,
            in_manager_cgroup: None,
        };
        assert_eq!(verdict(&base), Verdict::Suspect);
        let descendant = MarkedProcess {
            ancestry: Ancestry::CleanedDaemon,
            ..base
        };
        assert_eq!(verdict(&descendant), Verdict::Kill);
        let in_cgroup = MarkedProcess {
            in_manager_cgroup: Some(true),
            ..base
        };
        assert_eq!(verdict(&in_cgroup), Verdict::Kill);
        let others = MarkedProcess {
            ancestry: Ancestry::OtherDaemon,
            ..base
        };
        assert_eq!(verdict(&others), Verdict::Leave);
        for proven in [descendant, in_cgroup] {
            let me = MarkedProcess {
                is_cleanup_or_ancestor: true,
                ..proven
            };
            assert_eq!(verdict(&me), Verdict::Leave);
            let older = MarkedProcess {
                started_after_manager: false,
                ..proven
            };
            assert_eq!(verdict(&older), Verdict::Leave);
        }
    }

    #[test]
    fn the_cleanup_protects_itself_and_its_parents() {
        let protected = Protected::of_self();
        let me = std::process::id() as i32;
        assert!(protected.contains(me));
        let parent = procfs::stat(me).unwrap().unwrap().ppid;
        if parent > 0 {
            assert!(protected.contains(parent));
        }
        let own_group = procfs::stat(me).unwrap().unwrap().pgid;
        assert!(protected.in_group(own_group).is_some());
    }

    #[test]
    fn a_socket_path_that_is_no_longer_a_socket_is_kept() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("file");
        fs::write(&file, "keep").unwrap();
        remove_socket(&file);
        assert!(file.exists());
        let socket = temp.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let link = temp.path().join("link.sock");
        std::os::unix::fs::symlink(&socket, &link).unwrap();
        remove_socket(&link);
        assert!(socket.exists(), "a link to a socket was followed");
        assert!(link.symlink_metadata().is_ok(), "a link was removed");
        remove_socket(&socket);
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn join_all_runs_futures_side_by_side_and_keeps_their_order() {
        // Each future waits for the next one to finish: awaited one after
        // the other, the first would wait forever.
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..5)
            .map(|_| tokio::sync::oneshot::channel::<()>())
            .unzip();
        let mut senders: Vec<Option<_>> = senders.into_iter().map(Some).collect();
        let last = senders[4].take().unwrap();
        let futures: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let before = i.checked_sub(1).and_then(|b| senders[b].take());
                async move {
                    rx.await.unwrap();
                    if let Some(tx) = before {
                        tx.send(()).unwrap();
                    }
                    i
                }
            })
            .collect();
        last.send(()).unwrap();
        let outputs = tokio::time::timeout(Duration::from_secs(20), join_all(futures))
            .await
            .expect("join_all awaited its futures one after the other");
        assert_eq!(outputs, [0, 1, 2, 3, 4]);
    }
}
