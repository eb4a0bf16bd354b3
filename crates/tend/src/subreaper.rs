//! Child-subreaper support for a supervisor process (`tend up`).
//!
//! A daemon that double-forks (`fork`, `setsid`, `fork`) leaves a
//! descendant outside its process group, where stopping the group cannot
//! reach it. As a child subreaper, the supervisor adopts such descendants
//! when their parent exits, so it can find them (their parent is now the
//! supervisor) and kill them on shutdown.
//!
//! Adopted children must be reaped, or they stay zombies. The reaper must
//! not reap tend's own children, though: the supervisors reap their daemons
//! through pidfds (and tokio its installers), and stealing an exit status
//! would break supervision. So on every SIGCHLD the reaper looks for zombie
//! children in `/proc` and reaps only those that are not in the spawner's
//! registry of own children; the registry is locked while it looks, and
//! the spawner holds the same lock while it clones and registers a child,
//! so a fresh child cannot be taken for an adopted one.

use std::{collections::HashMap, io, time::Duration};

use rustix::process::{Pid, WaitOptions};
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};

use crate::{children::ChildTable, kill, procfs};

/// Marks the calling process as a child subreaper and reaps adopted
/// zombies until dropped.
#[derive(Debug)]
pub struct Subreaper {
    reaper: JoinHandle<()>,
    children: ChildTable,
}

/// Makes this process a child subreaper and starts reaping adopted
/// children: every zombie child not in `children`. Every manager and
/// environment manager of the process must register its children in that
/// same table ([`crate::ManagerBuilder::children`],
/// `envs::PluginEnvironmentManager::children`), or the subreaper
/// would take their exit status. Must be called inside a tokio runtime.
pub fn enable(children: ChildTable) -> io::Result<Subreaper> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let mut sigchld = signal(SignalKind::child())?;
    let table = children.clone();
    let reaper = tokio::spawn(async move {
        reap_adopted(&table);
        while sigchld.recv().await.is_some() {
            reap_adopted(&table);
        }
    });
    Ok(Subreaper { reaper, children })
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl Subreaper {
    /// Terminates every adopted descendant still alive (and their own
    /// descendants): SIGTERM, up to `grace`, then SIGKILL. Returns how many
    /// processes were signalled. Call it after the manager stopped its
    /// daemons, when every remaining child is an adopted one.
    pub async fn kill_adopted(&self, grace: Duration) -> usize {
        let targets = adopted_descendants(&self.children);
        if targets.is_empty() {
            return 0;
        }
        tracing::info!(
            count = targets.len(),
            "stopping descendants that escaped their daemon's process group"
        );
        // An adopted process no longer says which daemon it came from,
        // so it cannot get that daemon's stop signal: SIGTERM.
        kill::terminate_pids(&targets, crate::config::StopSignal::Term, grace).await;
        reap_adopted(&self.children);
        targets.len()
    }
}

/// Reaps zombie children that tend did not spawn itself.
fn reap_adopted(children: &ChildTable) {
    let own = children.lock();
    let me = std::process::id() as i32;
    // Runs at every SIGCHLD: with many daemons, reading each process's
    // stat would cost more than the rest of the exit's handling. Own
    // children need no look: a registered PID is unreaped, so not reused.
    if let Some(children) = procfs::children_of_self() {
        for pid in children.into_iter().filter(|pid| !own.contains_key(pid)) {
            if matches!(procfs::stat(pid), Ok(Some(s)) if s.ppid == me && !s.is_alive()) {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
                }
            }
        }
        return;
    }
    for (pid, stat) in children_of(me) {
        if stat.is_alive() {
            continue;
        }
        if own
            .get(&pid)
            .is_some_and(|start| start.is_none_or(|s| s == stat.start_time))
        {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
        }
    }
}

/// Live children of this process that tend did not spawn, and all their
/// descendants.
fn adopted_descendants(children: &ChildTable) -> Vec<i32> {
    let me = std::process::id() as i32;
    let table = process_table();
    let own = children.lock();
    let mut frontier: Vec<i32> = table
        .iter()
        .filter(|(_, stat)| stat.ppid == me && stat.is_alive())
        .map(|(&pid, _)| pid)
        .filter(|pid| !own.contains_key(pid))
        .collect();
    drop(own);
    let mut found = Vec::new();
    while let Some(pid) = frontier.pop() {
        found.push(pid);
        frontier.extend(
            table
                .iter()
                .filter(|(_, stat)| stat.ppid == pid && stat.is_alive())
                .map(|(&child, _)| child),
        );
    }
    found
}

fn children_of(parent: i32) -> Vec<(i32, procfs::ProcStat)> {
    process_table()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == parent)
        .collect()
}

/// Every process's stat, read from `/proc`.
fn process_table() -> HashMap<i32, procfs::ProcStat> {
    procfs::all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, procfs::stat(pid).ok()??)))
        .collect()
}
