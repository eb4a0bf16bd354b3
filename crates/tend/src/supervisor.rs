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

use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

use crate::{
    cgroup::{Containment, DaemonCgroup, ManagerCgroup},
    children::ChildTable,
    config::{BackgroundProcessConfig, HealthCheck, Readiness},
    defaults,
    error::{Error, Result},
    guard::Guard,
    health::{self, HealthBoard},
    kill,
    logs::{self, Stream},
    mailbox,
    orphans::OrphanRegistry,
    probe::{
        self,
        notify::{Members, Notification, NotifySocket},
    },
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
    /// The manager's state directory (notify sockets go in `notify/`).
    pub state_dir: Arc<crate::private_dir::PrivateDir>,
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

/// One spawned leader and the task reading its output.
struct Incarnation {
    leader: Leader,
    pid: u32,
    pgid: i32,
    /// The daemon's cgroup, with cgroup containment.
    cgroup: Option<Arc<DaemonCgroup>>,
    /// The task that reads its stdout and stderr.
    reader: JoinHandle<()>,
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
    /// The leader exited with code 0 after readiness: an end the restart
    /// policy may accept as the task being done.
    clean: bool,
    /// Whether the daemon's stderr may explain this failure (it exited
    /// on its own, or never became ready), so its tail is shown with it.
    /// Not for a kill by a signal or failed health checks, where the
    /// last lines of output say nothing about the cause.
    output_explains: bool,
}

impl Failure {
    fn new(summary: String, error: Error) -> Self {
        Failure {
            summary,
            error,
            tail: String::new(),
            fatal: false,
            clean: false,
            output_explains: false,
        }
    }

    /// The failure of an incarnation that ended on its own, or never
    /// became ready: its stderr tail is shown with it.
    fn explained_by_output(mut self) -> Self {
        self.output_explains = true;
        self
    }

    /// The failure from an error that says it all.
    fn from_error(error: Error) -> Self {
        Failure::new(error.to_string(), error)
    }

    /// `summary`, then `note` after a semicolon, then a colon and the
    /// stderr tail on the lines below.
    fn describe(&self, note: Option<String>) -> String {
        let mut text = self.summary.clone();
        if let Some(note) = note {
            text.push_str(&format!("; {note}"));
        }
        if !self.tail.is_empty() {
            text.push_str(":\n");
            text.push_str(&self.tail);
        }
        text
    }
}

/// `message` with `; note` after its first line, so the stderr tail that
/// may follow the first line (after a colon) stays last:
/// `exited with code 3; restarting in 1.0 s, attempt 1 of 3:\n  tail`.
fn with_note(message: &str, note: &str) -> String {
    match message.split_once('\n') {
        Some((summary, tail)) => format!("{}; {note}:\n{tail}", summary.trim_end_matches(':')),
        None => format!("{message}; {note}"),
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
    /// Shared with the manager's registry.
    config: Arc<BackgroundProcessConfig>,
    shared: Arc<Shared>,
    ctx: Context,
    control: mailbox::Receiver<Control>,
    /// The pending `start_process`, answered at the first readiness.
    start_waiter: Option<oneshot::Sender<Result<()>>>,
    /// The daemon's cgroup, made at the first spawn and kept across
    /// restarts (with cgroup containment).
    cgroup: Option<Arc<DaemonCgroup>>,
    /// The daemon's notify socket, with [`Readiness::Notify`]: made at the
    /// first spawn and kept across restarts.
    notify: Option<NotifySocket>,
    /// Set when the last termination ran out of grace period and sent
    /// SIGKILL, for the message that ends the stop.
    killed_after_grace: bool,
    /// Whether the next incarnation follows an earlier one: this
    /// supervisor spawned one already, or it was made for a restart. Its
    /// log marker then says "restarted".
    spawned_before: bool,
}

impl Supervisor {
    pub fn new(
        config: Arc<BackgroundProcessConfig>,
        shared: Arc<Shared>,
        ctx: Context,
        control: mailbox::Receiver<Control>,
        start_waiter: oneshot::Sender<Result<()>>,
        restarted: bool,
    ) -> Self {
        Supervisor {
            config,
            shared,
            ctx,
            control,
            start_waiter: Some(start_waiter),
            cgroup: None,
            notify: None,
            killed_after_grace: false,
            spawned_before: restarted,
        }
    }

    /// Runs until the process is `Stopped` or in `Error`. The caller has
    /// already applied [`Occurrence::Start`].
    pub async fn run(mut self: Box<Self>) {
        if let Some(guard) = &self.ctx.guard {
            guard.grace_at_least(self.config.shutdown_grace_period);
        }
        self.shared
            .update(|info| info.containment = Some(self.ctx.containment));
        // The futures of starting, stopping and restarting are boxed: they
        // live only while that happens, and inline they would size every
        // daemon's task for the largest of them while it only supervises
        // (about 1 KiB a daemon; see PERFORMANCE.md, "Memory of `tend up`").
        Box::pin(self.ctx.orphans.cleanup(Some(&self.config.name))).await;
        loop {
            let interrupt = match Box::pin(self.bring_up()).await {
                Ok(mut incarnation) => {
                    let interrupt = self.supervise(&mut incarnation).await;
                    Box::pin(self.wind_down(incarnation, interrupt)).await
                }
                Err(interrupt) => interrupt,
            };
            match interrupt {
                Interrupt::Failed(failure) => {
                    if !Box::pin(self.schedule_restart(failure)).await {
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
        if self.config.readiness == Readiness::Notify && self.notify.is_none() {
            let socket = self
                .ctx
                .state_dir
                .subdir("notify")
                .and_then(|dir| NotifySocket::bind(Arc::new(dir)))
                .map_err(|e| {
                    Interrupt::Failed(Failure::from_error(Error::io(
                        format!("cannot make the notify socket of {:?}", self.config.name),
                        e,
                    )))
                })?;
            self.notify = Some(socket);
        }
        // Followed before the spawn, so no line of the daemon is missed.
        let lines =
            matches!(self.config.readiness, Readiness::Log(_)).then(|| self.shared.logs.follow());
        let mut incarnation = self.spawn_incarnation().await?;
        let checked = !matches!(
            (&self.config.readiness, &socket),
            (Readiness::None, _) | (Readiness::Socket, None)
        );
        let ready = match (&self.config.readiness, &socket) {
            (Readiness::None, _) | (Readiness::Socket, None) => Ok(()),
            (Readiness::Socket, Some(path)) => self.await_ready(&mut incarnation, path).await,
            // Boxed, like the failure path below: this future is freed
            // once the daemon is ready, and the smaller it is the smaller
            // the hole it leaves among what stays allocated.
            _ => Box::pin(self.await_other_ready(&mut incarnation, lines)).await,
        };
        match ready {
            Ok(()) => {
                self.shared.update(|info| {
                    info.failed_health_checks = 0;
                    info.readiness_checked = checked;
                    info.passed_health_check = false;
                });
                self.shared.apply(Occurrence::Ready, "ready");
                if let Some(waiter) = self.start_waiter.take() {
                    let _ = waiter.send(Ok(()));
                }
                Ok(incarnation)
            }
            Err(interrupt) => Err(Box::pin(self.wind_down(incarnation, interrupt)).await),
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
        let with_notify;
        let config = match &self.notify {
            Some(notify) => {
                let mut config = BackgroundProcessConfig::clone(&self.config);
                config
                    .env
                    .push(("NOTIFY_SOCKET".into(), notify.path().into()));
                if let Some(every) = self.config.watchdog {
                    config
                        .env
                        .push(("WATCHDOG_USEC".into(), every.as_micros().to_string().into()));
                }
                with_notify = config;
                &with_notify
            }
            None => &*self.config,
        };
        let mut plan = SpawnPlan::for_daemon(
            config,
            self.config.socket_path.as_deref(),
            &self.ctx.orphans.manager_id(),
        )
        .map_err(spawn_error)?;
        let cgroup = cgroup.map_err(spawn_error)?;
        // Told before anything runs in the cgroup, so a manager killed at
        // any point after leaves the guard knowing the stop signal.
        if let (Some(guard), Some(cgroup)) = (&self.ctx.guard, &cgroup) {
            match cgroup.inode() {
                Ok(inode) => guard.add_cgroup(inode, self.config.stop_signal),
                Err(e) => {
                    tracing::debug!(name = %self.config.name, error = %e, "cannot tell the guard the daemon's cgroup; the guard would send it SIGTERM");
                }
            }
        }
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
        // Where one incarnation ends and the next begins, before any line
        // of the new one (its output is read from here on).
        let marker = if self.spawned_before {
            "restarted"
        } else {
            "started"
        };
        self.spawned_before = true;
        self.shared
            .logs
            .push(Stream::Tend, format!("{marker}, pid {pid}"));
        let log_mark = self.shared.logs.mark();
        // Recorded before readiness: a manager killed while its daemon
        // starts must still leave a trace of it.
        if let Some(stat) = &spawned.stat {
            let record = self.ctx.orphans.record_for(
                &self.config,
                pid,
                stat,
                cgroup.as_ref().map(|c| c.path()),
            );
            if let Err(e) = self.ctx.orphans.write(&record) {
                tracing::warn!(name = %self.config.name, error = %e, "cannot write orphan record");
            }
        }
        if let (Some(guard), Some(stat)) = (&self.ctx.guard, &spawned.stat) {
            if cgroup.is_none() {
                guard.add_group(pgid, stat.start_time, self.config.stop_signal);
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
        let reader = {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move { logs::capture(pipes.into(), &shared.logs).await })
        };
        self.shared.update(|info| {
            info.pid = Some(pid);
            // What the previous incarnation said over the notify socket
            // is not this one's.
            info.status_text = None;
            info.status_errno = None;
            info.main_pid = None;
        });
        tracing::debug!(name = %self.config.name, pid, cgroup = ?cgroup.as_ref().map(|c| c.path()), "spawned");
        Ok(Incarnation {
            leader,
            pid,
            pgid,
            cgroup,
            reader,
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
                ).explained_by_output()))
            }
            () = probe::wait_ready(watcher, socket) => Ok(()),
            () = tokio::time::sleep_until(deadline) => {
                let timeout = self.config.startup_timeout;
                Err(Interrupt::Failed(Failure::new(
                    format!(
                        "did not accept connections within {}",
                        crate::human::duration(timeout)
                    ),
                    Error::StartupTimeout {
                        name: self.config.name.clone(),
                        socket: socket.to_path_buf(),
                        timeout,
                        stderr_tail: String::new(),
                    },
                ).explained_by_output()))
            }
        }
    }

    /// Waits for readiness by a kind other than the socket: notify, tcp,
    /// http, exec or a log line, bounded by the startup timeout.
    async fn await_other_ready(
        &mut self,
        incarnation: &mut Incarnation,
        lines: Option<tokio::sync::broadcast::Receiver<crate::logs::LogLine>>,
    ) -> Result<(), Interrupt> {
        let deadline = Instant::now() + self.config.startup_timeout;
        let config = self.config.clone();
        let shared = Arc::clone(&self.shared);
        let children = self.ctx.children.clone();
        let notify = self.notify.take();
        let pgid = incarnation.pgid;
        let pid = incarnation.pid as i32;
        let cgroup = incarnation.cgroup.clone();
        let mark = incarnation.log_mark;
        // The last reason the daemon was not ready, for the timeout error.
        let last = std::sync::Mutex::new(match &config.readiness {
            Readiness::Notify => "no READY=1 over the notify socket".to_owned(),
            Readiness::Tcp(tcp) => format!("nothing accepted on {}", tcp.address),
            Readiness::Log(pattern) => format!("no line of output matched {pattern:?}"),
            Readiness::Http(http) => format!("no answer from {}", http.url),
            Readiness::Exec(_) => "the readiness command never exited 0".to_owned(),
            Readiness::Socket | Readiness::None => String::new(),
        });
        // An http or exec attempt under way: when it started, and what it is.
        let in_flight: std::sync::Mutex<Option<(Instant, String)>> = std::sync::Mutex::new(None);
        let wait = async {
            match &config.readiness {
                Readiness::Tcp(tcp) => probe::tcp::wait_ready(tcp.address).await,
                Readiness::Log(pattern) => {
                    let (Some(lines), Ok(pattern)) = (lines, regex::Regex::new(pattern)) else {
                        return std::future::pending().await;
                    };
                    probe::log::wait_for_line(&shared.logs, lines, &pattern, mark).await
                }
                Readiness::Notify => {
                    let Some(notify) = &notify else {
                        return std::future::pending().await;
                    };
                    let members = Members {
                        leader: pid,
                        pgid,
                        cgroup: cgroup.as_deref(),
                    };
                    loop {
                        let message = notify.next(&members).await;
                        apply_notification(&shared, &message, &members);
                        if message.ready {
                            return;
                        }
                    }
                }
                Readiness::Http(http) => {
                    let Ok(target) = http.target() else {
                        return std::future::pending().await;
                    };
                    let mut pause = Duration::from_millis(1);
                    let started = Instant::now();
                    loop {
                        *in_flight.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((Instant::now(), format!("GET {}", http.url)));
                        match probe::http::check(
                            &target,
                            config.socket_path.as_deref(),
                            http.expect_status,
                            defaults::HEALTH_CHECK_TIMEOUT,
                        )
                        .await
                        {
                            Ok(()) => return,
                            Err(reason) => {
                                *last.lock().unwrap_or_else(|e| e.into_inner()) = reason;
                                *in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
                            }
                        }
                        tokio::time::sleep(pause).await;
                        let cap = retry_cap(started.elapsed());
                        pause = (pause * 2).min(cap);
                    }
                }
                Readiness::Exec(exec) => {
                    let started = Instant::now();
                    let mut pause = Duration::from_millis(10);
                    loop {
                        let timeout = config
                            .healthcheck
                            .map_or(defaults::HEALTH_CHECK_TIMEOUT, |h| h.timeout);
                        *in_flight.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some((Instant::now(), "the readiness command".to_owned()));
                        match probe::exec::check(exec, &config, &children, timeout).await {
                            Ok(()) => return,
                            Err(reason) => {
                                *last.lock().unwrap_or_else(|e| e.into_inner()) = reason;
                                *in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
                            }
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(retry_cap(started.elapsed()).max(EXEC_RETRY_MIN));
                    }
                }
                Readiness::Socket | Readiness::None => {}
            }
        };
        let outcome = tokio::select! {
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
            () = wait => Ok(()),
            () = tokio::time::sleep_until(deadline) => {
                let timeout = self.config.startup_timeout;
                let mut waited_for = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                // An attempt that has been waiting a while says more than
                // the one that failed before it.
                if let Some((since, what)) = &*in_flight.lock().unwrap_or_else(|e| e.into_inner()) {
                    let waited = since.elapsed();
                    if waited >= STUCK_ATTEMPT {
                        waited_for = format!("{what}: no answer within {waited:.1?}");
                    }
                }
                Err(Interrupt::Failed(Failure::new(
                    format!("was not ready within {timeout:?} ({waited_for})"),
                    Error::NotReady {
                        name: self.config.name.clone(),
                        waited_for,
                        timeout,
                        stderr_tail: String::new(),
                    },
                )))
            }
        };
        self.notify = notify;
        outcome
    }

    /// Watches a running incarnation: its exit, health checks, the stable
    /// period, and control messages.
    async fn supervise(&mut self, incarnation: &mut Incarnation) -> Interrupt {
        let stable_at = Instant::now() + self.config.stable_period;
        let mut counter_reset = self.shared.snapshot().restart_attempts == 0;
        let health = self.config.healthcheck;
        let config = self.config.clone();
        let children = self.ctx.children.clone();
        let health_probe = &config.health_probe;
        // Connect, accept and tcp probes are run by the board when there is
        // one; this loop runs the others.
        let mut board = match (&self.ctx.health, health) {
            (Some(board), Some(h)) if HealthBoard::runs(health_probe) => {
                let path = config.socket_path.clone().unwrap_or_default();
                Some(board.register(&path, h, health_probe, Arc::clone(&self.shared)))
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
        let notify = self.notify.as_ref();
        let members = Members {
            leader: incarnation.pid as i32,
            pgid: incarnation.pgid,
            cgroup: incarnation.cgroup.clone(),
        };
        let mut watchdog_every = config.watchdog.filter(|_| notify.is_some());
        let mut watchdog_at = watchdog_every.map(|every| Instant::now() + every);
        let mut passed = false;
        loop {
            // The health check this loop runs, the watchdog and the notify
            // socket, in one future made only for a daemon that has one of
            // them, and boxed: inline, their 540 bytes would size every
            // daemon's task for as long as it runs. Made again on each
            // wake, which is one allocation a check or message.
            let wakes =
                (next_check.is_some() || watchdog_at.is_some() || notify.is_some()).then(|| {
                    let (check_at, watchdog_deadline) = (next_check, watchdog_at);
                    let (config, children, members) = (&config, &children, &members);
                    Box::pin(async move {
                        let check = async {
                            match (check_at, health) {
                                (Some(at), Some(h)) => {
                                    tokio::time::sleep_until(at).await;
                                    // Boxed: the probes' futures are large.
                                    Box::pin(probe::supervisor_check(
                                        health_probe,
                                        config,
                                        children,
                                        h.timeout,
                                    ))
                                    .await
                                }
                                _ => std::future::pending().await,
                            }
                        };
                        let watchdog = async {
                            match watchdog_deadline {
                                Some(at) => tokio::time::sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        };
                        let message = async {
                            match notify {
                                Some(notify) => notify.next(&members.borrowed()).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            biased;
                            message = message => Wake::Message(message),
                            () = watchdog => Wake::Watchdog,
                            result = check => Wake::Check(result),
                        }
                    })
                });
            tokio::select! {
                biased;
                control = self.control.recv() => return control_interrupt(control),
                status = incarnation.leader.wait() => {
                    let exit = status.ok();
                    let summary = exit.map_or_else(|| "exited".to_owned(), |e| e.to_string());
                    let mut failure = self.failure(summary);
                    failure.clean = exit == Some(ExitStatus::Code(0));
                    // A daemon that exits with a code says why on stderr;
                    // one killed by a signal (the OOM killer, kill -9)
                    // does not.
                    return Interrupt::Failed(match exit {
                        Some(ExitStatus::Code(_)) | None => failure.explained_by_output(),
                        Some(ExitStatus::Signal(_)) => failure,
                    });
                }
                reason = async {
                    match &mut board {
                        Some(board) => board.unhealthy().await,
                        None => std::future::pending().await,
                    }
                } => return Interrupt::Failed(self.failure(reason)),
                wake = async {
                    match wakes {
                        Some(wakes) => wakes.await,
                        None => std::future::pending().await,
                    }
                } => match wake {
                    Wake::Message(message) => {
                        apply_notification(&self.shared, &message, &members.borrowed());
                        if message.watchdog_trigger {
                            return Interrupt::Failed(self.failure(
                                "asked to be replaced (WATCHDOG=trigger)".into(),
                            ));
                        }
                        if let (Some(usec), Some(_)) = (message.watchdog_usec, watchdog_every) {
                            watchdog_every = Some(Duration::from_micros(usec));
                        }
                        if message.watchdog || message.watchdog_usec.is_some() {
                            watchdog_at = watchdog_every.map(|every| Instant::now() + every);
                        }
                    }
                    Wake::Watchdog => {
                        let every = watchdog_every.unwrap_or_default();
                        self.shared.update(|info| info.failed_health_checks = 1);
                        return Interrupt::Failed(self.failure(format!(
                            "missed its watchdog: no WATCHDOG=1 within {every:?}"
                        )));
                    }
                    Wake::Check(result) => {
                        next_check = health.map(next);
                        match result {
                            Ok(()) => {
                                failures = 0;
                                if !passed {
                                    passed = true;
                                    self.shared.health_passed();
                                }
                            }
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
                },
                () = tokio::time::sleep_until(stable_at), if !counter_reset => {
                    counter_reset = true;
                    self.shared.update(|info| info.restart_attempts = 0);
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
            self.config.stop_signal,
            grace,
        )
        .await;
        self.shared.set_live(None);
        if let Some(path) = &self.config.socket_path {
            let _ = std::fs::remove_file(path);
        }
        drain(&mut incarnation.reader).await;
        self.killed_after_grace = terminated.as_ref().is_ok_and(|t| t.killed);
        let exit = match &terminated {
            Ok(t) => {
                // Gone for good: nothing left for a later cleanup to find.
                self.ctx.orphans.remove(&self.config.name);
                // Told before the stop is answered, so a start of the same
                // name that follows at once is told after this.
                if let Some(guard) = &self.ctx.guard {
                    match &incarnation.cgroup {
                        None => guard.remove_group(incarnation.pgid),
                        Some(cgroup) => {
                            if let Ok(inode) = cgroup.inode() {
                                guard.remove_cgroup(inode);
                            }
                        }
                    }
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
            (Interrupt::Failed(mut failure), Ok(_)) => {
                if self.killed_after_grace {
                    failure.summary.push_str(&format!(
                        "; the grace period of {} ran out, so SIGKILL was sent",
                        crate::human::duration(grace)
                    ));
                }
                Interrupt::Failed(complete_failure(failure, exit, tail))
            }
            (other, _) => other,
        }
    }

    /// After an incarnation ended on its own: completes (`Stopped`), gives
    /// up (`Error`) or waits out the restart delay, as the restart policy
    /// and budget say. Returns whether to bring the process up again.
    async fn schedule_restart(&mut self, failure: Failure) -> bool {
        let policy = self.config.restart;
        if failure.clean && !failure.fatal && !policy.restarts(true) {
            self.complete();
            return false;
        }
        let attempts = self.shared.snapshot().restart_attempts;
        let within_budget = attempts < self.config.max_restart_attempts;
        if let Some(waiter) = self.start_waiter.take() {
            let retry = self.config.retry_first_start
                && policy.restarts(false)
                && within_budget
                && !failure.fatal;
            if !retry {
                // The first start never became ready: fail fast, no restart.
                let message = match attempts {
                    0 => failure.error.to_string(),
                    1 => with_note(&failure.error.to_string(), "after 1 retry"),
                    n => with_note(&failure.error.to_string(), &format!("after {n} retries")),
                };
                self.give_up(&message);
                let _ = waiter.send(Err(failure.error));
                return false;
            }
            // Answered at the first readiness, or when tend gives up.
            self.start_waiter = Some(waiter);
        } else if failure.fatal || !within_budget || !policy.restarts(false) {
            let note = if policy.restarts(false) || failure.fatal {
                format!(
                    "gave up after {}",
                    crate::human::count(attempts as usize, "restart")
                )
            } else {
                format!("restart = {}", policy.as_str())
            };
            self.give_up(&failure.describe(Some(note)));
            return false;
        }
        let attempt = attempts + 1;
        let message = failure.describe(None);
        self.shared.update(|info| {
            info.restart_attempts = attempt;
            info.last_error = Some(message.clone());
        });
        let delay = restart_backoff(self.config.restart_delay, attempt, fastrand::f64());
        // The event says what happens next.
        let reason = with_note(
            &message,
            &format!(
                "restarting in {}, attempt {attempt} of {}",
                crate::human::duration(delay),
                self.config.max_restart_attempts
            ),
        );
        self.shared
            .apply(Occurrence::Failed { will_restart: true }, &reason);
        tracing::info!(name = %self.config.name, attempt, ?delay, %message, "restarting");
        // `None`: the delay passed; `Some(None)`: the manager is gone.
        let control = if delay.is_zero() {
            // The timer wheel ticks in milliseconds; do not wait for a tick.
            match self.control.try_recv() {
                Ok(control) => Some(Some(control)),
                Err(mailbox::TryRecvError::Disconnected) => Some(None),
                Err(mailbox::TryRecvError::Empty) => None,
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

    /// Enters `Stopped` as completed: the incarnation exited with code 0
    /// and the restart policy lets it rest.
    fn complete(&self) {
        self.shared.update(|info| {
            info.completed = true;
            info.last_error = None;
        });
        self.shared
            .apply(Occurrence::Completed, "completed: exited with code 0");
        tracing::debug!(name = %self.config.name, "completed");
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
        let reason = if std::mem::take(&mut self.killed_after_grace) {
            format!(
                "stopped; the grace period of {} ran out, so SIGKILL was sent",
                crate::human::duration(self.config.shutdown_grace_period)
            )
        } else {
            "stopped".to_owned()
        };
        self.shared.apply(Occurrence::GroupGone, &reason);
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
        Error::StartupTimeout { stderr_tail, .. } | Error::NotReady { stderr_tail, .. } => {
            *stderr_tail = tail.clone()
        }
        _ => {}
    }
    if failure.output_explains {
        failure.tail = tail;
    }
    let described = failure.describe(None);
    if let Error::Failed { reason, .. } = &mut failure.error {
        *reason = described;
    }
    failure
}

/// How long a readiness attempt (http, exec) must have been waiting at the
/// startup deadline to be the reason given, rather than the failure of the
/// attempt before it.
const STUCK_ATTEMPT: Duration = Duration::from_millis(100);

/// The shortest pause between two runs of an exec readiness command.
const EXEC_RETRY_MIN: Duration = Duration::from_millis(10);

/// The longest pause between two readiness attempts that are not
/// event-driven (http, exec), `elapsed` after the spawn: short while a
/// daemon normally starts, longer for one that takes seconds.
fn retry_cap(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(2) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(100)
    }
}

/// Publishes what a notify datagram from a member said.
fn apply_notification(
    shared: &Shared,
    message: &Notification,
    members: &Members<&crate::cgroup::DaemonCgroup>,
) {
    let main_pid = message
        .main_pid
        .filter(|&pid| i32::try_from(pid).is_ok_and(|pid| members.contain(pid)));
    if message.main_pid.is_some() && main_pid.is_none() {
        tracing::debug!(name = %shared.name, pid = ?message.main_pid, "MAINPID outside the daemon ignored");
    }
    if message.stopping {
        tracing::info!(name = %shared.name, "the daemon reports it is stopping");
    }
    if message.status.is_none() && message.errno.is_none() && main_pid.is_none() {
        return;
    }
    shared.update(|info| {
        if let Some(status) = &message.status {
            info.status_text = Some(status.clone());
        }
        if let Some(errno) = message.errno {
            info.status_errno = Some(errno);
        }
        if let Some(pid) = main_pid {
            info.main_pid = Some(pid);
        }
    });
}

/// What woke `supervise` other than an exit, a stop, the health board or
/// the stable period.
enum Wake {
    /// A datagram on the notify socket.
    Message(Notification),
    /// The watchdog's deadline passed without a `WATCHDOG=1`.
    Watchdog,
    /// The health check this loop runs finished.
    Check(std::result::Result<(), String>),
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
async fn drain(reader: &mut JoinHandle<()>) {
    if tokio::time::timeout(defaults::OUTPUT_DRAIN_TIMEOUT, &mut *reader)
        .await
        .is_err()
    {
        reader.abort();
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
    fn a_note_goes_after_the_first_line_and_the_tail_stays_last() {
        for (message, expected) in [
            ("exited with code 3", "exited with code 3; after 2 retries"),
            (
                "exited with code 3:\n  no database\n  bye",
                "exited with code 3; after 2 retries:\n  no database\n  bye",
            ),
            ("", "; after 2 retries"),
        ] {
            assert_eq!(with_note(message, "after 2 retries"), expected);
        }
    }

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
