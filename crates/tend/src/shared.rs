//! The published side of one supervised process: its state snapshot,
//! output, live leader, RPC client and event subscriptions. The supervisor
//! task writes it; the manager reads it without waiting for any daemon.

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    sync::Arc,
    sync::{Mutex, MutexGuard},
    time::SystemTime,
};

use rustix::process::Signal;
use tokio::{sync::broadcast, time::Instant};

use crate::{
    cgroup::{DaemonCgroup, ResourceUsage},
    kill,
    logs::LogBuffer,
    procfs,
    state::{Occurrence, ProcessEvent, ProcessInfo, ProcessState, next_state},
};
#[cfg(feature = "rpc")]
use crate::{delivery::EventDelivery, rpc};
#[cfg(feature = "rpc")]
use tokio::sync::watch;

/// Whether the process of `pidfd` has exited (a pidfd polls readable
/// then); an error counts as exited.
fn has_exited(pidfd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).map_or(true, |ready| ready > 0)
}

/// What the supervisor publishes and the manager reads.
pub(crate) struct Shared {
    pub name: String,
    status: Mutex<Status>,
    pub logs: LogBuffer,
    /// The live leader, for the manager's synchronous kill on drop.
    live: Mutex<Option<LiveLeader>>,
    events: broadcast::Sender<ProcessEvent>,
    /// The state and the number of times the process became ready, for
    /// tasks that wait for a (new) incarnation to be `Running`: made on
    /// the first [`Shared::readiness`] call, under the status lock. Most
    /// daemons never have such a task, and a watch channel holds about
    /// 360 bytes of heap, more than a third of a kilobyte per daemon.
    #[cfg(feature = "rpc")]
    readiness: std::sync::OnceLock<watch::Sender<Readiness>>,
    /// The persistent RPC connection to the daemon, made on first use.
    #[cfg(feature = "rpc")]
    rpc: Mutex<Option<rpc::Client>>,
    /// Events this daemon subscribed to, and their delivery task.
    #[cfg(feature = "rpc")]
    delivery: Mutex<Option<EventDelivery>>,
}

/// The state, and how many incarnations have become ready so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub state: ProcessState,
    pub incarnation: u64,
}

struct Status {
    info: ProcessInfo,
    running_since: Option<Instant>,
    /// What `readiness` publishes, kept here so a channel made late starts
    /// from the current value.
    readiness: Readiness,
}

/// The leader of the current incarnation, pinned by a pidfd so a signal can
/// never reach a recycled PID.
pub(crate) struct LiveLeader {
    pidfd: Arc<OwnedFd>,
    pub pgid: i32,
    pub socket: Option<PathBuf>,
    /// The daemon's cgroup, with cgroup containment.
    pub cgroup: Option<Arc<DaemonCgroup>>,
}

impl LiveLeader {
    pub fn new(
        pidfd: Arc<OwnedFd>,
        pgid: i32,
        socket: Option<PathBuf>,
        cgroup: Option<Arc<DaemonCgroup>>,
    ) -> Self {
        LiveLeader {
            pidfd,
            pgid,
            socket,
            cgroup,
        }
    }
}

impl Shared {
    pub fn new(name: &str, logs: LogBuffer, events: broadcast::Sender<ProcessEvent>) -> Self {
        Shared {
            name: name.to_owned(),
            status: Mutex::new(Status {
                info: ProcessInfo::new(name),
                running_since: None,
                readiness: Readiness {
                    state: ProcessState::Stopped,
                    incarnation: 0,
                },
            }),
            logs,
            live: Mutex::new(None),
            events,
            #[cfg(feature = "rpc")]
            readiness: std::sync::OnceLock::new(),
            #[cfg(feature = "rpc")]
            rpc: Mutex::new(None),
            #[cfg(feature = "rpc")]
            delivery: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A consistent snapshot, with the uptime computed now.
    pub fn snapshot(&self) -> ProcessInfo {
        let mut info = {
            let status = self.lock();
            let mut info = status.info.clone();
            info.uptime = status.running_since.map(|since| since.elapsed());
            info
        };
        // Read outside the status lock: a few small reads of cgroupfs or
        // /proc.
        let live = self
            .live()
            .as_ref()
            .map(|live| (live.cgroup.clone(), live.pgid, Arc::clone(&live.pidfd)));
        info.usage = live.and_then(|(cgroup, leader, pidfd)| match cgroup {
            Some(cgroup) => Some(cgroup.usage()),
            // The leader alone: see `ResourceUsage`.
            None => {
                let read = procfs::cpu_and_resident(leader);
                // Still running after the read, so the PID read was the
                // leader's and not a reused one (it may be reaped before
                // `live` is cleared).
                if has_exited(&pidfd) {
                    return None;
                }
                Some(ResourceUsage {
                    cpu: read.map(|(cpu, _)| cpu).unwrap_or_default(),
                    memory_bytes: read.map(|(_, rss)| rss),
                })
            }
        });
        info
    }

    fn live(&self) -> MutexGuard<'_, Option<LiveLeader>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prepares the snapshot for a start requested by the user: the
    /// counters and the last error belong to the previous run.
    pub fn begin_start(&self) {
        let mut status = self.lock();
        status.info.restart_attempts = 0;
        status.info.failed_health_checks = 0;
        status.info.passed_health_check = false;
        status.info.completed = false;
        status.info.last_error = None;
    }

    pub fn state(&self) -> ProcessState {
        self.lock().info.state
    }

    pub fn pid(&self) -> Option<u32> {
        self.lock().info.pid
    }

    /// Feeds `occurrence` through the transition table and publishes the
    /// change, if any. Returns the new state.
    pub fn apply(&self, occurrence: Occurrence, reason: &str) -> ProcessState {
        let mut status = self.lock();
        let from = status.info.state;
        let Some(to) = next_state(from, occurrence) else {
            return from;
        };
        // The event names the incarnation concerned, even when the change
        // ends it.
        let pid = status.info.pid;
        status.info.state = to;
        match to {
            // `Running → Running` (the first health check passed) keeps
            // the incarnation's start time.
            ProcessState::Running if from == ProcessState::Running => {}
            ProcessState::Running => {
                status.info.started_at = Some(SystemTime::now());
                status.running_since = Some(Instant::now());
            }
            _ => {
                status.info.started_at = None;
                status.running_since = None;
            }
        }
        if matches!(occurrence, Occurrence::Failed { .. })
            || matches!(to, ProcessState::Stopped | ProcessState::Error)
        {
            status.info.pid = None;
        }
        status.readiness.state = to;
        if to == ProcessState::Running && from != ProcessState::Running {
            status.readiness.incarnation += 1;
        }
        #[cfg(feature = "rpc")]
        if let Some(readiness) = self.readiness.get() {
            readiness.send_replace(status.readiness);
        }
        // Sent under the lock so events are ordered like the states. A
        // failed restart attempt is a `starting → starting` event.
        let _ = self.events.send(ProcessEvent {
            name: self.name.clone(),
            from,
            to,
            time: SystemTime::now(),
            reason: reason.to_owned(),
            pid,
        });
        to
    }

    /// Records that a health check of the running incarnation passed;
    /// the first one publishes a `running → running` "healthy" event.
    pub fn health_passed(&self) {
        let first = {
            let mut status = self.lock();
            let first = !status.info.passed_health_check;
            status.info.passed_health_check = true;
            first
        };
        if first {
            self.apply(Occurrence::Healthy, "healthy: first health check passed");
        }
    }

    pub fn update(&self, change: impl FnOnce(&mut ProcessInfo)) {
        change(&mut self.lock().info);
    }

    /// SIGKILLs the live group, if any, without waiting (used on drop).
    pub fn kill_now(&self) {
        let live = self.live().take();
        if let Some(leader) = live {
            // Everything in the cgroup at once, whatever its process group.
            if let Some(cgroup) = &leader.cgroup {
                cgroup.kill();
            }
            // A signal through the pidfd reaches exactly the leader and fails
            // once it is reaped; while it succeeds, the group id cannot have
            // been reused, so signalling the group is safe.
            if rustix::process::pidfd_send_signal(&leader.pidfd, Signal::KILL).is_ok() {
                let _ = kill::signal_group(leader.pgid, Signal::KILL);
            }
            if let Some(socket) = leader.socket {
                let _ = std::fs::remove_file(socket);
            }
        }
    }

    pub fn set_live(&self, live: Option<LiveLeader>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
    }

    /// A receiver of state and incarnation changes.
    #[cfg(feature = "rpc")]
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        // Under the status lock, which `apply` holds while it publishes:
        // no change falls between the value read here and the channel.
        let status = self.lock();
        self.readiness
            .get_or_init(|| watch::channel(status.readiness).0)
            .subscribe()
    }

    #[cfg(feature = "rpc")]
    /// The persistent RPC client for `socket`, created on first use (and
    /// again if the socket path changed with a new config).
    pub fn rpc_client(&self, socket: &std::path::Path) -> rpc::Client {
        let mut rpc = self.rpc.lock().unwrap_or_else(|e| e.into_inner());
        match rpc.as_ref() {
            Some(client) if client.socket_path() == socket => client.clone(),
            _ => {
                let client = rpc::Client::new(socket);
                *rpc = Some(client.clone());
                client
            }
        }
    }

    #[cfg(feature = "rpc")]
    /// The event delivery of this daemon, started by `start` on first use.
    pub fn delivery<T>(
        &self,
        start: impl FnOnce() -> EventDelivery,
        with: impl FnOnce(&EventDelivery) -> T,
    ) -> T {
        let mut delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        with(delivery.get_or_insert_with(start))
    }

    #[cfg(feature = "rpc")]
    /// Runs `with` on the event delivery, if this daemon has one.
    pub fn existing_delivery<T>(&self, with: impl FnOnce(&EventDelivery) -> T) -> Option<T> {
        let delivery = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        delivery.as_ref().map(with)
    }
}
