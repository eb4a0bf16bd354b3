//! The orphan registry: a record per live daemon in the state directory,
//! so daemons that outlive a killed manager are found and stopped later.
//!
//! A record is written right after spawn (before readiness) and removed
//! once the daemon's group is gone. It names the daemon by PID *and* start
//! time, and the manager likewise. Cleanup only acts on a record whose
//! owner is dead; it kills the group only when it can prove the processes
//! are the ones recorded:
//! - the leader is alive with the recorded start time, or
//! - the leader is gone but members of its group remain that share its
//!   session, started after it, and carry its manager's `TEND_MANAGER_ID`
//!   (an unrelated process may have reused the PID and formed a group).
//!
//! A PID that now belongs to another process is left alone.

use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{kill, procfs, spawn};

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

pub(crate) struct OrphanRegistry {
    dir: PathBuf,
    owner: (u32, u64),
}

impl OrphanRegistry {
    /// Opens (creating with mode 0700) `<state_dir>/orphans`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("orphans");
        create_private_dir(&dir)?;
        Ok(OrphanRegistry {
            dir,
            owner: procfs::own_identity(),
        })
    }

    /// This manager's identity as daemons see it in `TEND_MANAGER_ID`.
    pub fn manager_id(&self) -> String {
        format!("{}.{}", self.owner.0, self.owner.1)
    }

    fn path_for(&self, name: &str, owner_pid: u32) -> PathBuf {
        self.dir.join(format!("{name}@{owner_pid}.json"))
    }

    /// Builds the record for a freshly spawned leader.
    pub fn record_for(
        &self,
        name: &str,
        pid: u32,
        socket_path: Option<&Path>,
        grace: Duration,
    ) -> Option<OrphanRecord> {
        let stat = procfs::stat(pid as i32).ok()??;
        Some(OrphanRecord {
            name: name.to_owned(),
            pid: pid as i32,
            pgid: stat.pgid,
            sid: stat.sid,
            start_time: stat.start_time,
            owner_pid: self.owner.0,
            owner_start_time: self.owner.1,
            socket_path: socket_path.map(Path::to_path_buf),
            grace_ms: grace.as_millis() as u64,
        })
    }

    /// Writes `record` atomically (temp file + rename).
    pub fn write(&self, record: &OrphanRecord) -> io::Result<()> {
        let path = self.path_for(&record.name, record.owner_pid);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(record).map_err(io::Error::other)?;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| io::Write::write_all(&mut f, &text))?;
        fs::rename(&tmp, &path)
    }

    /// Removes this manager's record for `name`.
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.path_for(name, self.owner.0));
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
        let mut dead_owners = BTreeSet::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return dead_owners;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let name = stem.split('@').next().unwrap_or_default();
            if only.is_some_and(|n| n != name) {
                continue;
            }
            let record: OrphanRecord = match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!(?path, "removing unreadable orphan record");
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            if self.owner_alive(&record) {
                report.owned_by_live_manager.push(record.name);
                continue;
            }
            dead_owners.insert((record.owner_pid, record.owner_start_time));
            match clean_record(&record).await {
                Ok(true) => report.killed.push(record.name.clone()),
                Ok(false) => report.stale.push(record.name.clone()),
                Err(e) => {
                    tracing::warn!(name = %record.name, error = %e, "could not clean orphan; keeping its record");
                    continue;
                }
            }
            let _ = fs::remove_file(&path);
        }
        dead_owners
    }

    fn owner_alive(&self, record: &OrphanRecord) -> bool {
        if (record.owner_pid, record.owner_start_time) == self.owner {
            return true;
        }
        matches!(
            procfs::stat(record.owner_pid as i32),
            Ok(Some(s)) if s.start_time == record.owner_start_time && s.is_alive()
        )
    }
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
    kill::terminate_group(record.pgid, None, Duration::from_millis(record.grace_ms)).await?;
    if let Some(socket) = &record.socket_path {
        let _ = fs::remove_file(socket);
    }
    Ok(true)
}

/// Creates `dir` and its parents; `dir` itself gets mode 0700.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
