//! The per-process supervisor: one tokio task per started process.
//!
//! The task owns the process's children and is the only code that changes
//! its state; everything else talks to it through `Control` messages or
//! reads the `Shared` snapshot it publishes. It waits on events — the
//! child's exit, the socket appearing, control messages, deadlines — and
//! never polls. Each incarnation (one spawned leader and its group) lives in
//! a local variable, so an exit of an older incarnation cannot reach a newer
//! one: by the time the next is spawned, the old group is gone.

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    cgroup::{Containment, DaemonCgroup, ManagerCgroup},
    children::ChildTable,
    config::{BackgroundProcessConfig, HealthCheck},
    defaults,
    error::{Error, Result},
    guard::Guard,
    health::{self, HealthBoard},
    kill,
    logs::{self, Stream},
    orphans::OrphanRegistry,
    probe,
    shared::{LiveLeader, Shared},
    spawn::{Leader, SpawnPlan, Spawner},
    state::{ExitStatus, Occurrence},
    watch::SocketWatcher,
};

/// A request to the supervisor task.
pub(crate) enum Control {
    /// Stop the process; the reply comes once its group is gone.
    Stop(oneshot::Sender<Result<()>>),
}

/// What every supervisor of one manager shares.
#[derive(Clone)]
pub(crate) struct Context {
    pub spawner: Arc<Spawner>,
    pub watcher: Option<Arc<SocketWatcher>>,
    pub orphans: Arc<OrphanRegistry>,
    /// The batched connect health checks, unless the kernel's socket
    /// diagnostics are unavailable (then each supervisor connects).
    pub health: Option<Arc<HealthBoard>>,
    /// The children of this process, shared with its subreaper.
    pub children: ChildTable,
    /// How daemons are contained.
    pub containment: Containment,
    /// The manager's cgroup, with cgroup containment.
    pub cgroup: Option<Arc<ManagerCgroup>>,
    /// The process that stops the daemons if the manager dies, unless
    /// turned off.
    pub guard: Option<Arc<Guard>>,
}

/// One spawned leader and its output readers.
struct Incarnation {
    leader: Leader,
    pid: u32,
    pgid: i32,
    /// The daemon's cgroup, with cgroup containment.
    cgroup: Option<Arc<DaemonCgroup>>,
    readers: Vec<JoinHandle<()>>,
    /// Position in the log ring where this incarnation's output starts.
    log_mark: u64,
}

/// Why an incarnation ended without being asked to.
struct Failure {
    /// For `last_error` and events: "exited with code 1".
    summary: String,
    /// The error handed to a pending `start_process`.
    error: Error,
    /// The incarnation's last lines of stderr, filled in by `wind_down`.
    tail: String,
    /// Set when members of the group survived SIGKILL: restarting would
    /// put two incarnations side by side, so tend gives up instead.
    fatal: bool,
}

impl Failure {
    fn new(summary: String, error: Error) -> Self {
        Failure {
            summary,
            error,
            tail: String::new(),
            fatal: false,
        }
    }

    /// The failure from an error that says it all.
    fn from_error(error: Error) -> Self {
        Failure::new(error.to_string(), error)
    }

    /// `summary`, then `note` in parentheses, then the stderr tail.
    fn describe(&self, note: Option<String>) -> String {
        let mut text = self.summary.clone();
        if let Some(note) = note {
            text.push_str(&format!(" ({note})"));
        }
        if !self.tail.is_empty() {
            text.push_str(": ");
            text.push_str(&self.tail);
        }
        text
    }
}

/// How a wait inside the supervisor ended.
enum Interrupt {
    Failed(Failure),
    Stop(oneshot::Sender<Result<()>>),
    /// Nothing more to do: the manager is gone, or the outcome was already
    /// published.
    Finished,
}

/// The supervisor task of one process.
pub(crate) struct Supervisor {
    config: BackgroundProcessConfig,
    shared: Arc<Shared>,
    ctx: Context,
    control: mpsc::UnboundedReceiver<Control>,
    /// The pending `start_process`, answered at the first readiness.
    start_waiter: Option<oneshot::Sender<Result<()>>>,
    /// The daemon's cgroup, made at the first spawn and kept across
    /// restarts (with cgroup containment).
    cgroup: Option<Arc<DaemonCgroup>>,
}

impl Supervisor {
    pub fn new(
        config: BackgroundProcessConfig,
        shared: Arc<Shared>,
        ctx: Context,
        control: mpsc::UnboundedReceiver<Control>,
        start_waiter: oneshot::Sender<Result<()>>,
    ) -> Self {
        Supervisor {
            config,
            shared,
            ctx,
            control,
            start_waiter: Some(start_waiter),
            cgroup: None,
        }
    }

    /// Runs until the process is `Stopped` or in `Error`. The caller has
    /// already applied [`Occurrence::Start`].
    pub async fn run(mut self) {
        if let Some(guard) = &self.ctx.guard {
            guard.grace_at_least(self.config.shutdown_grace_period);
        }
        self.shared
            .update(|info| info.containment = Some(self.ctx.containment));
        self.ctx.orphans.cleanup(Some(&self.config.name)).await;
        loop {
            let interrupt = match self.bring_up().await {
                Ok(mut incarnation) => {
                    let interrupt = self.supervise(&mut incarnation).await;
                    self.wind_down(incarnation, interrupt).await
                }
                Err(interrupt) => interrupt,
            };
            match interrupt {
                Interrupt::Failed(failure) => {
                    if !self.schedule_restart(failure).await {
                        return;
                    }
                }
                Interrupt::Stop(reply) => {
                    self.finish_stop(reply);
                    return;
                }
                Interrupt::Finished => return,
            }
        }
    }

    /// Spawns an incarnation and waits for readiness.
    async fn bring_up(&mut self) -> Result<Incarnation, Interrupt> {
        let socket = self.config.socket_path.clone();
        if let Some(path) = &socket {
            // The user the daemon runs as, whose stale socket tend may
            // remove; a name that no longer resolves fails the spawn below.
            let owner = crate::credentials::resolve(&self.config)
                .ok()
                .flatten()
                .map(|c| (c.uid, c.gid));
            if let Err(blocked) = probe::prepare_socket(path, owner).await {
                let error = match blocked {
                    probe::SocketBlocked::InUse => Error::SocketInUse {
                        name: self.config.name.clone(),
                        path: path.clone(),
                    },
                    probe::SocketBlocked::NotStale(reason) => Error::SocketNotStale {
                        name: self.config.name.clone(),
                        path: path.clone(),
                        reason,
                    },
                    probe::SocketBlocked::Io(source) => {
                        Error::io(format!("cannot prepare socket {path:?}"), source)
                    }
                };
                return Err(Interrupt::Failed(Failure::from_error(error)));
            }
        }
        let mut incarnation = self.spawn_incarnation().await?;
        let ready = match &socket {
            None => Ok(()),
            Some(path) => self.await_ready(&mut incarnation, path).await,
        };
        match ready {
            Ok(()) => {
                self.shared.update(|info| info.failed_health_checks = 0);
                self.shared.apply(Occurrence::Ready, "ready");
                if let Some(waiter) = self.start_waiter.take() {
                    let _ = waiter.send(Ok(()));
                }
                Ok(incarnation)
            }
            Err(interrupt) => Err(self.wind_down(incarnation, interrupt).await),
        }
    }

    async fn spawn_incarnation(&mut self) -> Result<Incarnation, Interrupt> {
        let cgroup = self.daemon_cgroup();
        let spawn_error = |source| {
            Interrupt::Failed(Failure::from_error(Error::Spawn {
                name: self.config.name.clone(),
                command: self.config.command.clone(),
                source,
            }))
        };
        let mut plan = SpawnPlan::for_daemon(
            &self.config,
            self.config.socket_path.as_deref(),
            &self.ctx.orphans.manager_id(),
        )
        .map_err(spawn_error)?;
        let cgroup = cgroup.map_err(spawn_error)?;
        if let Some(cgroup) = &cgroup {
            // `cgroup` stays alive across the spawn.
            plan = plan.join_cgroup(
                cgroup.clone_into_ok().then(|| cgroup.dir_fd()),
                cgroup.procs_fd(),
            );
        }
        let spawned = self.ctx.spawner.spawn(plan).await.map_err(spawn_error)?;
        let pid = spawned.pid as u32;
        let pgid = spawned.pid;
        let pidfd = Arc::new(spawned.pidfd);
        let leader = match Leader::new(spawned.pid, Arc::clone(&pidfd), self.ctx.children.clone()) {
            Ok(leader) => leader,
            Err(source) => {
                // Without its pidfd registered tend could not see it exit:
                // end it now, while the unreaped PID is still certainly ours.
                let _ = rustix::process::pidfd_send_signal(&*pidfd, rustix::process::Signal::KILL);
                let _ = rustix::process::waitid(
                    rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&*pidfd)),
                    rustix::process::WaitIdOptions::EXITED,
                );
                self.ctx.children.forget(pid);
                return Err(spawn_error(source));
            }
        };
        let log_mark = self.shared.logs.mark();
        // Recorded before readiness: a manager killed while its daemon
        // starts must still leave a trace of it.
        if let Some(stat) = &spawned.stat {
            let record = self.ctx.orphans.record_for(
                &self.config.name,
                pid,
                stat,
                self.config.socket_path.as_deref(),
                self.config.shutdown_grace_period,
                cgroup.as_ref().map(|c| c.path()),
            );
            if let Err(e) = self.ctx.orphans.write(&record) {
                tracing::warn!(name = %self.config.name, error = %e, "cannot write orphan record");
            }
        }
        if let (Some(guard), Some(stat)) = (&self.ctx.guard, &spawned.stat) {
            if cgroup.is_none() {
                guard.add_group(pgid, stat.start_time);
            }
        }
        self.shared.set_live(Some(LiveLeader::new(
            pidfd,
            pgid,
            self.config.socket_path.clone(),
            cgroup.clone(),
        )));
        let pipes = [
            (spawned.stdout, Stream::Stdout),
            (spawned.stderr, Stream::Stderr),
        ];
        let readers = pipes
            .into_iter()
            .map(|(pipe, stream)| {
                let shared = Arc::clone(&self.shared);
                tokio::spawn(async move { logs::capture(pipe, stream, &shared.logs).await })
            })
            .collect();
        self.shared.update(|info| info.pid = Some(pid));
        tracing::debug!(name = %self.config.name, pid, cgroup = ?cgroup.as_ref().map(|c| c.path()), "spawned");
        Ok(Incarnation {
            leader,
            pid,
            pgid,
            cgroup,
            readers,
            log_mark,
        })
    }

    /// The daemon's cgroup under the manager's, made at the first spawn
    /// (with cgroup containment; `None` otherwise).
    fn daemon_cgroup(&mut self) -> std::io::Result<Option<Arc<DaemonCgroup>>> {
        let Some(manager) = &self.ctx.cgroup else {
            return Ok(None);
        };
        if self.cgroup.is_none() {
            let cgroup = manager.daemon(&self.config.name)?;
            // The manager enabled the controllers in `start_process`.
            cgroup.apply_limits(&crate::cgroup::limits_of(&self.config))?;
            self.cgroup = Some(Arc::new(cgroup));
        }
        Ok(self.cgroup.clone())
    }

    async fn await_ready(
        &mut self,
        incarnation: &mut Incarnation,
        socket: &std::path::Path,
    ) -> Result<(), Interrupt> {
        let deadline = Instant::now() + self.config.startup_timeout;
        let watcher = self.ctx.watcher.as_deref();
        tokio::select! {
            biased;
            control = self.control.recv() => Err(control_interrupt(control)),
            status = incarnation.leader.wait() => {
                let exit = status.ok();
                Err(Interrupt::Failed(Failure::new(
                    exit.map_or_else(|| "exited".to_owned(), |e| e.to_string()),
                    Error::ExitedBeforeReady {
                        name: self.config.name.clone(),
                        status: exit.unwrap_or(ExitStatus::Code(-1)),
                        stderr_tail: String::new(),
                    },
                )))
            }
            () = probe::wait_ready(watcher, socket) => Ok(()),
            () = tokio::time::sleep_until(deadline) => {
                let timeout = self.config.startup_timeout;
                Err(Interrupt::Failed(Failure::new(
                    format!("did not accept connections within {timeout:?}"),
                    Error::StartupTimeout {
                        name: self.config.name.clone(),
                        socket: socket.to_path_buf(),
                        timeout,
                        stderr_tail: String::new(),
                    },
                )))
            }
        }
    }

    /// Watches a running incarnation: its exit, health checks, the stable
    /// period, and control messages.
    async fn supervise(&mut self, incarnation: &mut Incarnation) -> Interrupt {
        let stable_at = Instant::now() + self.config.stable_period;
        let mut counter_reset = self.shared.snapshot().restart_attempts == 0;
        let health = self.config.healthcheck;
        let health_probe = self.config.health_probe;
        let socket = self.config.socket_path.clone();
        // Connect probes are run by the board when there is one; this loop
        // runs the others.
        let mut board = match (&self.ctx.health, health, health_probe, &socket) {
            (Some(board), Some(h), probe, Some(path)) if HealthBoard::runs(probe) => {
                Some(board.register(path, h, probe, Arc::clone(&self.shared)))
            }
            _ => None,
        };
        let next = |h: HealthCheck| on_shared_tick(Instant::now() + h.interval, h.interval);
        let mut next_check = if board.is_some() {
            None
        } else {
            health.map(next)
        };
        let mut failures = 0u32;
        loop {
            let check = async {
                match (next_check, health, &socket) {
                    (Some(at), Some(h), Some(path)) => {
                        tokio::time::sleep_until(at).await;
                        probe::health_check(path, health_probe, h.timeout).await
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                control = self.control.recv() => return control_interrupt(control),
                status = incarnation.leader.wait() => {
                    let exit = status.ok();
                    let summary = exit.map_or_else(|| "exited".to_owned(), |e| e.to_string());
                    return Interrupt::Failed(self.failure(summary));
                }
                reason = async {
                    match &mut board {
                        Some(board) => board.unhealthy().await,
                        None => std::future::pending().await,
                    }
                } => return Interrupt::Failed(self.failure(reason)),
                () = tokio::time::sleep_until(stable_at), if !counter_reset => {
                    counter_reset = true;
                    self.shared.update(|info| info.restart_attempts = 0);
                }
                result = check => {
                    next_check = health.map(next);
                    match result {
                        Ok(()) => failures = 0,
                        Err(reason) => {
                            failures += 1;
                            tracing::debug!(name = %self.config.name, failures, %reason, "health check failed");
                            if health.is_some_and(|h| failures >= h.retries) {
                                let summary = format!("failed {failures} health checks in a row ({reason})");
                                self.shared.update(|info| info.failed_health_checks = failures);
                                return Interrupt::Failed(self.failure(summary));
                            }
                        }
                    }
                    self.shared.update(|info| info.failed_health_checks = failures);
                }
            }
        }
    }

    /// Ends an incarnation: terminates what is left of its group, removes
    /// its socket and record, collects its output, and fills in the exit
    /// status and stderr tail of a failure.
    async fn wind_down(&mut self, mut incarnation: Incarnation, interrupt: Interrupt) -> Interrupt {
        if matches!(interrupt, Interrupt::Stop(_)) {
            self.shared
                .apply(Occurrence::StopRequested, "stop requested");
        }
        let grace = self.config.shutdown_grace_period;
        let terminated = kill::terminate_group(
            incarnation.pgid,
            incarnation.cgroup.as_deref(),
            Some(&mut incarnation.leader),
            grace,
        )
        .await;
        self.shared.set_live(None);
        if let Some(path) = &self.config.socket_path {
            let _ = std::fs::remove_file(path);
        }
        drain(&mut incarnation.readers).await;
        let exit = match &terminated {
            Ok(t) => {
                // Gone for good: nothing left for a later cleanup to find.
                self.ctx.orphans.remove(&self.config.name);
                if let (Some(guard), None) = (&self.ctx.guard, &incarnation.cgroup) {
                    guard.remove_group(incarnation.pgid);
                }
                t.leader_status
            }
            // Survivors: the orphan record stays, so a later cleanup can
            // still find them.
            Err(_) => None,
        };
        if exit.is_some() {
            self.shared.update(|info| info.last_exit = exit);
        }
        tracing::debug!(name = %self.config.name, pid = incarnation.pid, ?exit, "incarnation ended");
        let tail = self
            .shared
            .logs
            .stderr_tail_since(incarnation.log_mark, defaults::STDERR_TAIL_LINES);
        match (interrupt, terminated) {
            (Interrupt::Stop(reply), Err(reason)) => {
                self.shared
                    .update(|info| info.last_error = Some(reason.clone()));
                self.shared.apply(
                    Occurrence::Failed {
                        will_restart: false,
                    },
                    &reason,
                );
                let _ = reply.send(Err(Error::StopFailed {
                    name: self.config.name.clone(),
                    reason,
                }));
                self.fail_start_waiter(Error::Stopped(self.config.name.clone()));
                Interrupt::Finished
            }
            (Interrupt::Failed(failure), Err(reason)) => {
                let mut failure = Failure::new(
                    format!("{}; {reason}", failure.summary),
                    Error::StopFailed {
                        name: self.config.name.clone(),
                        reason,
                    },
                );
                failure.fatal = true;
                failure.tail = tail;
                Interrupt::Failed(failure)
            }
            (Interrupt::Failed(failure), Ok(_)) => {
                Interrupt::Failed(complete_failure(failure, exit, tail))
            }
            (other, _) => other,
        }
    }

    /// After a failure: either gives up (`Error`) or waits out the restart
    /// delay. Returns whether to bring the process up again.
    async fn schedule_restart(&mut self, failure: Failure) -> bool {
        if let Some(waiter) = self.start_waiter.take() {
            // The first start never became ready: fail fast, no restart.
            let message = failure.error.to_string();
            self.give_up(&message);
            let _ = waiter.send(Err(failure.error));
            return false;
        }
        let attempts = self.shared.snapshot().restart_attempts;
        if failure.fatal || attempts >= self.config.max_restart_attempts {
            let restarts = match attempts {
                1 => "1 restart".to_owned(),
                n => format!("{n} restarts"),
            };
            self.give_up(&failure.describe(Some(restarts)));
            return false;
        }
        let attempt = attempts + 1;
        let message = failure.describe(None);
        self.shared.update(|info| {
            info.restart_attempts = attempt;
            info.last_error = Some(message.clone());
        });
        self.shared
            .apply(Occurrence::Failed { will_restart: true }, &message);
        let delay = restart_backoff(self.config.restart_delay, attempt, fastrand::f64());
        tracing::info!(name = %self.config.name, attempt, ?delay, %message, "restarting");
        // `None`: the delay passed; `Some(None)`: the manager is gone.
        let control = if delay.is_zero() {
            // The timer wheel ticks in milliseconds; do not wait for a tick.
            match self.control.try_recv() {
                Ok(control) => Some(Some(control)),
                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                Err(mpsc::error::TryRecvError::Empty) => None,
            }
        } else {
            tokio::select! {
                biased;
                control = self.control.recv() => Some(control),
                () = tokio::time::sleep(delay) => None,
            }
        };
        match control {
            None => true,
            Some(Some(Control::Stop(reply))) => {
                self.finish_stop(reply);
                false
            }
            Some(None) => false,
        }
    }

    /// A failure of a running incarnation, described by `summary`.
    fn failure(&self, summary: String) -> Failure {
        let error = Error::Failed {
            name: self.config.name.clone(),
            reason: summary.clone(),
        };
        Failure::new(summary, error)
    }

    /// Enters `Error` for good, with `message` as the last error.
    fn give_up(&self, message: &str) {
        self.shared
            .update(|info| info.last_error = Some(message.to_owned()));
        self.shared.apply(
            Occurrence::Failed {
                will_restart: false,
            },
            message,
        );
        tracing::warn!(name = %self.config.name, %message, "giving up");
    }

    /// Completes a stop once no member of the group is left.
    fn finish_stop(&mut self, reply: oneshot::Sender<Result<()>>) {
        // A no-op when already `Stopping` (the group was terminated first).
        self.shared
            .apply(Occurrence::StopRequested, "stop requested");
        self.shared.apply(Occurrence::GroupGone, "stopped");
        self.fail_start_waiter(Error::Stopped(self.config.name.clone()));
        let _ = reply.send(Ok(()));
    }

    fn fail_start_waiter(&mut self, error: Error) {
        if let Some(waiter) = self.start_waiter.take() {
            let _ = waiter.send(Err(error));
        }
    }
}

/// Adds what is known once the group is gone: the exit status and the
/// stderr tail, also into the error a pending `start_process` receives.
fn complete_failure(mut failure: Failure, exit: Option<ExitStatus>, tail: String) -> Failure {
    match &mut failure.error {
        Error::ExitedBeforeReady {
            status,
            stderr_tail,
            ..
        } => {
            if let Some(exit) = exit {
                *status = exit;
                failure.summary = exit.to_string();
            }
            *stderr_tail = tail.clone();
        }
        Error::StartupTimeout { stderr_tail, .. } => *stderr_tail = tail.clone(),
        _ => {}
    }
    failure.tail = tail;
    let described = failure.describe(None);
    if let Error::Failed { reason, .. } = &mut failure.error {
        *reason = described;
    }
    failure
}

fn control_interrupt(control: Option<Control>) -> Interrupt {
    match control {
        Some(Control::Stop(reply)) => Interrupt::Stop(reply),
        None => Interrupt::Finished,
    }
}

/// Waits briefly for the output readers to reach end of file, so the last
/// lines a daemon wrote before dying are in the ring. A descendant that
/// escaped the group may hold the pipes open; then tend stops waiting.
async fn drain(readers: &mut [JoinHandle<()>]) {
    let all = async {
        for reader in readers.iter_mut() {
            let _ = reader.await;
        }
    };
    if tokio::time::timeout(defaults::OUTPUT_DRAIN_TIMEOUT, all)
        .await
        .is_err()
    {
        for reader in readers.iter() {
            reader.abort();
        }
    }
}

/// Rounds `at` up to a tick shared by every supervisor of the process (a
/// twentieth of the interval, between 1 and 50 ms), so health checks that
/// fall due close together run on one wake-up of the runtime rather than
/// one each. The interval is never shortened.
fn on_shared_tick(at: Instant, interval: Duration) -> Instant {
    let tick = (interval / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    health::on_shared_tick(at, tick)
}

/// The delay before restart number `attempt` (1-based): `base` doubled per
/// attempt, capped at [`defaults::MAX_RESTART_DELAY`] (or `base` if that is
/// larger), plus up to [`defaults::RESTART_JITTER`] of itself; `jitter` is
/// a sample from `[0, 1)`.
pub(crate) fn restart_backoff(base: Duration, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let grown = base.saturating_mul(1 << doublings);
    let capped = grown.min(defaults::MAX_RESTART_DELAY.max(base));
    capped + capped.mul_f64(defaults::RESTART_JITTER * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_land_on_a_shared_tick_never_early() {
        let interval = Duration::from_secs(1);
        let now = Instant::now();
        for offset_ms in [0u64, 1, 7, 49, 50, 51, 999] {
            let at = now + Duration::from_millis(offset_ms);
            let aligned = on_shared_tick(at, interval);
            assert!(aligned >= at);
            assert!(aligned - at <= Duration::from_millis(50));
            // Two supervisors due within one tick share the wake-up.
            assert_eq!(on_shared_tick(aligned, interval), aligned);
        }
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let s = Duration::from_secs;
        assert_eq!(restart_backoff(s(5), 1, 0.0), s(5));
        assert_eq!(restart_backoff(s(5), 2, 0.0), s(10));
        assert_eq!(restart_backoff(s(5), 3, 0.0), s(20));
        assert_eq!(restart_backoff(s(5), 10, 0.0), s(60));
        assert_eq!(restart_backoff(s(120), 3, 0.0), s(120));
        assert_eq!(restart_backoff(s(5), 1, 0.999), s(5).mul_f64(1.0999));
        assert_eq!(restart_backoff(Duration::ZERO, 7, 0.5), Duration::ZERO);
        assert_eq!(restart_backoff(s(1), u32::MAX, 0.0), s(60));
    }
}
