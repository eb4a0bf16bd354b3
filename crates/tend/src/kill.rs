//! Terminating a whole process group: the stop signal, SIGTERM unless the
//! daemon chose another (and SIGCONT, so a stopped member can act on it),
//! then SIGKILL once the grace period is over.
//!
//! "Gone" means no live member is left, not merely that the leader exited:
//! children the daemon forked stay in its group and must die with it. tend
//! waits for that on events — the pidfd of the leader, which it also
//! reaps, and a pidfd of every other member — and returns the moment the group is empty, never after
//! waiting out the grace period needlessly.
//!
//! Signalling a group by id is only safe while the id cannot have been
//! reused: the kernel never hands out a PID that is still a live group's
//! id, so tend signals the group only while the leader is unreaped or while
//! it has just seen live members of the group in `/proc`.

use std::{io, os::fd::OwnedFd, time::Duration};

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use crate::{
    cgroup::DaemonCgroup, config::StopSignal, defaults, procfs, spawn::Leader, state::ExitStatus,
};

/// How a group termination ended.
#[derive(Debug)]
pub(crate) struct Terminated {
    /// The leader's exit status, if tend reaped it here.
    pub leader_status: Option<ExitStatus>,
    /// Whether the grace period ran out and SIGKILL was sent.
    pub killed: bool,
}

/// Sends `signal` to every member of group `pgid`. A group that is already
/// empty is not an error.
pub(crate) fn signal_group(pgid: i32, signal: Signal) -> io::Result<()> {
    let Some(pid) = Pid::from_raw(pgid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "pgid 0"));
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Terminates group `pgid` — and, with cgroup containment, everything in
/// the daemon's cgroup — with `stop` (SIGTERM for most daemons) and within
/// `grace` (then SIGKILL, by `cgroup.kill`
/// where there is a cgroup). `leader` is the group leader when it is
/// tend's unreaped child; it is reaped here. The group is gone when the
/// leader is reaped, no live process carries the group id, and the cgroup
/// reports `populated 0`.
pub(crate) async fn terminate_group(
    pgid: i32,
    cgroup: Option<&DaemonCgroup>,
    mut leader: Option<&mut Leader>,
    stop: StopSignal,
    grace: Duration,
) -> Result<Terminated, String> {
    let mut leader_status = None;
    let target = Target { pgid, cgroup };
    if target.is_gone(&mut leader, &mut leader_status) {
        return Ok(Terminated {
            leader_status,
            killed: false,
        });
    }
    // A stopped process keeps the signal pending until it is continued.
    target
        .signal(&[stop.to_signal(), Signal::CONT])
        .map_err(|e| format!("{stop} to group {pgid}: {e}"))?;
    let grace_deadline = Instant::now() + grace;
    if target
        .wait_gone(&mut leader, &mut leader_status, grace_deadline)
        .await
    {
        return Ok(Terminated {
            leader_status,
            killed: false,
        });
    }
    tracing::debug!(pgid, "grace period over; sending SIGKILL");
    if !target.is_gone(&mut leader, &mut leader_status) {
        target.kill();
    }
    let kill_deadline = Instant::now() + defaults::KILL_TIMEOUT;
    if target
        .wait_gone(&mut leader, &mut leader_status, kill_deadline)
        .await
    {
        return Ok(Terminated {
            leader_status,
            killed: true,
        });
    }
    let mut survivors = procfs::live_group_members(pgid);
    if let Some(cgroup) = cgroup {
        survivors.extend(cgroup.members());
        survivors.sort_unstable();
        survivors.dedup();
    }
    Err(format!(
        "process group {pgid} still has live members (pids {}) {} after SIGKILL",
        crate::human::list(&survivors),
        crate::human::duration(defaults::KILL_TIMEOUT)
    ))
}

/// What a termination addresses: a process group, and the daemon's cgroup
/// where there is one.
struct Target<'a> {
    pgid: i32,
    cgroup: Option<&'a DaemonCgroup>,
}

impl Target<'_> {
    /// Sends `signals`, in order, to the group and the cgroup's members.
    fn signal(&self, signals: &[Signal]) -> io::Result<()> {
        if let Some(cgroup) = self.cgroup {
            cgroup.signal_members(signals);
        }
        signals
            .iter()
            .try_for_each(|&signal| signal_group(self.pgid, signal))
    }

    fn kill(&self) {
        if let Some(cgroup) = self.cgroup {
            cgroup.kill();
        }
        let _ = signal_group(self.pgid, Signal::KILL);
    }

    /// Checks without waiting whether everything is gone. Reaps the leader
    /// if it has exited, so a zombie leader does not count as a member.
    fn is_gone(
        &self,
        leader: &mut Option<&mut Leader>,
        leader_status: &mut Option<ExitStatus>,
    ) -> bool {
        if leader_status.is_none() {
            if let Some(child) = leader.as_deref_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => *leader_status = Some(status),
                    Ok(None) => return false,
                    Err(_) => {}
                }
            }
        }
        self.cgroup.is_none_or(|c| !c.populated()) && procfs_group_empty(self.pgid)
    }

    /// Waits until everything is gone or `deadline` passes; true when gone.
    async fn wait_gone(
        &self,
        leader: &mut Option<&mut Leader>,
        leader_status: &mut Option<ExitStatus>,
        deadline: Instant,
    ) -> bool {
        if leader_status.is_none() {
            if let Some(child) = leader.as_deref_mut() {
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(Ok(status)) => *leader_status = Some(status),
                    Ok(Err(_)) => {}
                    Err(_) => return false,
                }
            }
        }
        if let Some(cgroup) = self.cgroup {
            if !cgroup.wait_empty(deadline).await {
                return false;
            }
        }
        wait_members_gone(self.pgid, deadline).await
    }
}

fn procfs_group_empty(pgid: i32) -> bool {
    // Members may be zombies waiting for their new parent to reap them;
    // those are dead and do not count.
    no_process_in_group(pgid) || procfs::live_group_members(pgid).is_empty()
}

/// Whether no process at all, zombies included, carries group id `pgid`
/// (a signal 0 to the group finds none): the answer without reading
/// `/proc`. `false` means "look closer", not "alive".
pub(crate) fn no_process_in_group(pgid: i32) -> bool {
    matches!(
        Pid::from_raw(pgid).map(rustix::process::test_kill_process_group),
        Some(Err(rustix::io::Errno::SRCH)) | None
    )
}

/// Waits for every live member of `pgid` to exit, on pidfds, until
/// `deadline`. Loops because a member may fork while tend waits.
pub(crate) async fn wait_members_gone(pgid: i32, deadline: Instant) -> bool {
    loop {
        if procfs_group_empty(pgid) {
            return true;
        }
        let pidfds = open_pidfds(&procfs::live_group_members(pgid));
        if pidfds.is_empty() {
            // Every member vanished between the scan and pidfd_open (or
            // cannot be opened); look again after a tick rather than spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if Instant::now() >= deadline {
                return procfs_group_empty(pgid);
            }
            continue;
        }
        if !wait_pidfds_exit(&pidfds, deadline).await {
            return procfs_group_empty(pgid);
        }
    }
}

/// Pidfds of `pids`, skipping those already gone.
fn open_pidfds(pids: &[i32]) -> Vec<OwnedFd> {
    pids.iter()
        .filter_map(|&pid| {
            rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::NONBLOCK).ok()
        })
        .collect()
}

/// Terminates individual processes (not groups): `stop` and SIGCONT, up
/// to `grace` for them to exit, then SIGKILL. Each is addressed through a
/// pidfd, so a PID that is reused meanwhile is never signalled.
pub(crate) async fn terminate_pids(pids: &[i32], stop: StopSignal, grace: Duration) {
    let pidfds = open_pidfds(pids);
    signal_pidfds(&pidfds, stop.to_signal());
    signal_pidfds(&pidfds, Signal::CONT);
    if !wait_pidfds_exit(&pidfds, Instant::now() + grace).await {
        signal_pidfds(&pidfds, Signal::KILL);
        wait_pidfds_exit(&pidfds, Instant::now() + defaults::KILL_TIMEOUT).await;
    }
}

fn signal_pidfds(pidfds: &[OwnedFd], signal: Signal) {
    for fd in pidfds {
        let _ = rustix::process::pidfd_send_signal(fd, signal);
    }
}

/// Waits until every process behind `pidfds` has exited; false at the
/// deadline.
async fn wait_pidfds_exit(pidfds: &[OwnedFd], deadline: Instant) -> bool {
    // Registered all at once, so every exit is seen as it happens.
    let registered: Vec<AsyncFd<OwnedFd>> = pidfds
        .iter()
        .filter_map(|fd| {
            let dup = fd.try_clone().ok()?;
            // SAFETY: `dup` is a fresh descriptor moved into the AsyncFd,
            // which owns it until drop; nothing else can close or replace it.
            unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }.ok()
        })
        .collect();
    let waits = async {
        for fd in &registered {
            // A pidfd becomes readable when its process exits.
            let _ = fd.readable().await;
        }
    };
    tokio::time::timeout_at(deadline, waits).await.is_ok()
}
