//! The children this process started, in one table shared explicitly by
//! whatever starts or reaps them: the daemon spawner, the environment
//! installers, the guard, the reaper of dropped leaders, and the child
//! subreaper of `tend up`.
//!
//! Why a table at all: a child subreaper is woken by SIGCHLD for every
//! child, and must reap the orphans it adopted, never tend's own children
//! (their supervisors reap them through pidfds, tokio its installers), or
//! it would steal their exit status. So every child tend starts is
//! registered here under the same lock the subreaper holds while it looks
//! for zombies, from before the clone until it is reaped.
//!
//! The table is passed, not global: a process may run several managers,
//! and those that share a subreaper must share its table
//! ([`crate::ManagerBuilder::children`],
//! `envs::PluginEnvironmentManager::children`,
//! [`crate::subreaper::enable`]). Each manager otherwise gets a table of
//! its own.

use std::{
    collections::BTreeMap,
    fmt,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    thread,
};

use rustix::{
    pipe::PipeFlags,
    process::{WaitId, WaitIdOptions},
};
use tokio::process::{Child, Command};

/// The children a process started and has not reaped yet. Clones share
/// one table.
#[derive(Clone, Default)]
pub struct ChildTable {
    inner: Arc<Inner>,
}

impl fmt::Debug for ChildTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildTable")
            .field("children", &self.lock().len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// PIDs (with start times, where read) of the children not yet reaped.
    own: Mutex<BTreeMap<i32, Option<u64>>>,
    /// Leaders whose supervisors were dropped before reaping them.
    unreaped: Mutex<Unreaped>,
    /// Wakes the reaper thread when a leader is handed over: it blocks in
    /// `poll` on the pidfds it already has.
    wake: OnceLock<Option<(OwnedFd, OwnedFd)>>,
}

#[derive(Default)]
struct Unreaped {
    leaders: Vec<(i32, Arc<OwnedFd>)>,
    /// Whether the reaper thread runs.
    reaper: bool,
}

/// The locked table: children are added while it is held, so the
/// subreaper never sees a fresh child unregistered.
pub(crate) type Registered<'a> = MutexGuard<'a, BTreeMap<i32, Option<u64>>>;

impl ChildTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the table.
    pub(crate) fn lock(&self) -> Registered<'_> {
        self.inner.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a child once it has been reaped.
    pub(crate) fn forget(&self, pid: u32) {
        self.lock().remove(&(pid as i32));
    }

    /// Spawns `command` (a helper such as an installer, not a daemon) and
    /// registers the child, under the lock the subreaper takes. Forget it
    /// with [`Self::forget`] once reaped.
    pub(crate) fn spawn_registered(&self, command: &mut Command) -> std::io::Result<Child> {
        let mut children = self.lock();
        let child = command.spawn()?;
        if let Some(pid) = child.id() {
            let start = crate::procfs::stat(pid as i32)
                .ok()
                .flatten()
                .map(|s| s.start_time);
            children.insert(pid as i32, start);
        }
        Ok(child)
    }

    /// Hands child `pid` to the reaper thread, which reaps it through
    /// `pidfd` once it exits (a supervisor dropped before it reaped its
    /// leader, a guard whose manager is gone).
    pub(crate) fn reap_later(&self, pid: i32, pidfd: Arc<OwnedFd>) {
        let wake = self
            .inner
            .wake
            .get_or_init(|| rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok());
        let mut unreaped = self.unreaped();
        unreaped.leaders.push((pid, pidfd));
        if let Some((_, writer)) = wake {
            let _ = rustix::io::write(writer, &[0]);
        }
        if !unreaped.reaper {
            let table = self.clone();
            let started = thread::Builder::new()
                .name("tend-reaper".into())
                .spawn(move || table.reap_handed_over());
            match started {
                Ok(_) => unreaped.reaper = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the reaper thread; a zombie remains")
                }
            }
        }
    }

    fn unreaped(&self) -> MutexGuard<'_, Unreaped> {
        self.inner
            .unreaped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The reaper thread: reaps every handed-over child as it exits, and
    /// ends when none is left.
    fn reap_handed_over(&self) {
        let wake = self
            .inner
            .wake
            .get()
            .and_then(Option::as_ref)
            .map(|(reader, _)| reader);
        loop {
            let leaders = {
                let mut unreaped = self.unreaped();
                unreaped.leaders.retain(|(pid, pidfd)| {
                    let reaped = rustix::process::waitid(
                        WaitId::PidFd(pidfd.as_fd()),
                        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                    );
                    match reaped {
                        Ok(None) => true,
                        // Reaped now, or not reapable at all (ECHILD).
                        _ => {
                            self.forget(*pid as u32);
                            false
                        }
                    }
                });
                if unreaped.leaders.is_empty() {
                    unreaped.reaper = false;
                    return;
                }
                unreaped.leaders.clone()
            };
            let mut fds: Vec<rustix::event::PollFd<'_>> = leaders
                .iter()
                .map(|(_, pidfd)| {
                    rustix::event::PollFd::new(&**pidfd, rustix::event::PollFlags::IN)
                })
                .chain(wake.map(|w| rustix::event::PollFd::new(w, rustix::event::PollFlags::IN)))
                .collect();
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the reaper cannot wait; zombies may remain");
                    self.unreaped().reaper = false;
                    return;
                }
            }
            if let Some(wake) = wake {
                let mut drained = [0u8; 64];
                while matches!(rustix::io::read(wake, &mut drained), Ok(n) if n > 0) {}
            }
        }
    }
}
