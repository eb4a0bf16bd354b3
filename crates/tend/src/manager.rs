//! [`BackgroundProcessManager`]: the registry of supervised processes.
//!
//! The manager holds no process logic. It validates requests, keeps one
//! slot per name (the supervisor task's control channel and published
//! snapshot), and forwards start and stop requests to the task, which
//! serialises them. Queries read the snapshot under a short lock and never
//! wait for a daemon.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_core::Stream as _;
use tokio::sync::{broadcast, oneshot};

#[cfg(feature = "rpc")]
use crate::{
    delivery::{EventDelivery, PublishedEvent},
    rpc,
};

use crate::{
    cgroup::{Containment, ContainmentChoice, ManagerCgroup},
    children::ChildTable,
    config::BackgroundProcessConfig,
    defaults,
    error::{Error, Result},
    guard::Guard,
    health::HealthBoard,
    lagging::SkipLagged,
    logs::{self, LogBuffer, LogFollower, LogLine},
    mailbox,
    orphans::{CleanupReport, OrphanRegistry},
    shared::Shared,
    spawn::Spawner,
    state::{Occurrence, ProcessEvent, ProcessInfo, ProcessState},
    supervisor::{Context, Control, Supervisor},
    watch::SocketWatcher,
};

/// The environment variable that turns the guard process off when `0`
/// (see [`ManagerBuilder::guard`]).
pub const GUARD_ENV: &str = "TEND_GUARD";

/// Capacity of the event channel; a subscriber that falls further behind
/// is told how many events it missed.
const EVENT_CAPACITY: usize = 4096;

/// Supervises long-running daemons: starts them, waits for their socket,
/// health-checks and restarts them, and stops them with their whole
/// process group.
///
/// Cloning gives another handle to the same manager. When the last handle
/// is dropped, every daemon still running is killed (SIGKILL to its group)
/// and its socket removed; call [`Self::stop_all_processes`] first for a
/// graceful shutdown.
#[derive(Clone)]
pub struct BackgroundProcessManager {
    inner: Arc<Inner>,
}

struct Slot {
    shared: Arc<Shared>,
    control: mailbox::Sender<Control>,
    /// Shared with the supervisor: one copy a daemon, not two.
    config: Arc<BackgroundProcessConfig>,
}

struct Inner {
    state_dir: PathBuf,
    log_ring_lines: usize,
    containment: ContainmentChoice,
    guard: bool,
    children: ChildTable,
    slots: Mutex<HashMap<String, Slot>>,
    events: broadcast::Sender<ProcessEvent>,
    shutting_down: AtomicBool,
    /// Created at the first start, inside the caller's runtime.
    context: Mutex<Option<Context>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values() {
            slot.shared.kill_now();
        }
    }
}

/// Builds a [`BackgroundProcessManager`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ManagerBuilder {
    state_dir: Option<PathBuf>,
    log_ring_lines: usize,
    containment: ContainmentChoice,
    guard: bool,
    children: Option<ChildTable>,
}

impl ManagerBuilder {
    /// Directory for orphan records (created 0700 at the first start).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Lines of output kept in memory per daemon.
    pub fn log_ring_lines(mut self, lines: usize) -> Self {
        self.log_ring_lines = lines.max(1);
        self
    }

    /// How daemons are contained: each in a cgroup of its own, or each
    /// leading a process group (see [`ContainmentChoice`]). The default,
    /// `Auto`, uses cgroups where a writable cgroup v2 hierarchy is found.
    pub fn containment(mut self, choice: ContainmentChoice) -> Self {
        self.containment = choice;
        self
    }

    /// Whether a guard process stops the daemons when this process dies
    /// without stopping them (default: on; `TEND_GUARD=0` in the
    /// environment also turns it off). Turn it off only where something
    /// else does — a service manager that kills the whole cgroup — or to
    /// test the cleanup a later start does.
    pub fn guard(mut self, on: bool) -> Self {
        self.guard = on;
        self
    }

    /// The table of this process's children to register daemons in. A
    /// process that is a child subreaper ([`crate::subreaper::enable`])
    /// must give every manager and environment manager the table it gave
    /// the subreaper, so the subreaper never reaps their children; by
    /// default each manager has a table of its own.
    pub fn children(mut self, table: ChildTable) -> Self {
        self.children = Some(table);
        self
    }

    /// Creates the manager. Nothing touches the disk or the runtime until
    /// the first start.
    pub fn build(self) -> BackgroundProcessManager {
        BackgroundProcessManager {
            inner: Arc::new(Inner {
                state_dir: self.state_dir.unwrap_or_else(default_state_dir),
                log_ring_lines: self.log_ring_lines,
                containment: self.containment,
                guard: self.guard,
                children: self.children.unwrap_or_default(),
                slots: Mutex::new(HashMap::new()),
                events: broadcast::channel(EVENT_CAPACITY).0,
                shutting_down: AtomicBool::new(false),
                context: Mutex::new(None),
            }),
        }
    }
}

/// `$XDG_RUNTIME_DIR/tend`; else `/dev/shm/tend-<uid>` where `/dev/shm` is
/// a directory (memory-backed, so the line the orphan journal gets at
/// every spawn and every stop costs no disk I/O); else
/// `<temp dir>/tend-<uid>`.
pub fn default_state_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("tend"),
        _ if Path::new("/dev/shm").is_dir() => PathBuf::from(format!("/dev/shm/tend-{uid}")),
        _ => std::env::temp_dir().join(format!("tend-{uid}")),
    }
}

impl std::fmt::Debug for BackgroundProcessManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let processes = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        f.debug_struct("BackgroundProcessManager")
            .field("state_dir", &self.inner.state_dir)
            .field("containment", &self.containment())
            .field("processes", &processes)
            .finish_non_exhaustive()
    }
}

impl Default for BackgroundProcessManager {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundProcessManager {
    /// A manager with the default state directory.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a manager with its own settings.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder {
            state_dir: None,
            log_ring_lines: defaults::LOG_RING_LINES,
            containment: ContainmentChoice::Auto,
            guard: true,
            children: None,
        }
    }

    /// The directory holding orphan records.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    fn context(&self) -> Result<Context> {
        let mut context = self.inner.context.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(context) = context.as_ref() {
            return Ok(context.clone());
        }
        // Several descriptors per daemon: lift the usual 1,024 soft limit
        // (daemons get it back at spawn).
        crate::rlimit::raise_nofile();
        let dir = &self.inner.state_dir;
        let state = crate::private_dir::PrivateDir::open_or_create(dir)
            .map_err(|e| Error::io("cannot use the state directory", e))?;
        let registry = OrphanRegistry::open(&state)
            .map_err(|e| Error::io(format!("cannot open orphan registry in {dir:?}"), e))?;
        let spawner = Spawner::start(self.inner.children.clone())
            .map_err(|e| Error::io("cannot start the spawning thread", e))?;
        let cgroup = self.manager_cgroup(&registry.manager_id())?;
        let containment = match cgroup {
            Some(_) => Containment::Cgroup,
            None => Containment::ProcessGroup,
        };
        let guard_off = std::env::var_os(GUARD_ENV).is_some_and(|v| v == "0");
        let guard = if self.inner.guard && !guard_off {
            // Each supervisor raises the grace to its daemon's.
            let guard = Guard::start(
                &self.inner.children,
                cgroup.as_ref().map(|c| c.path()),
                Duration::ZERO,
            )
            .map_err(|e| Error::io("cannot start the guard process", e))?;
            Some(Arc::new(guard))
        } else {
            None
        };
        tracing::info!(
            %containment,
            cgroup = ?cgroup.as_ref().map(|c| c.path()),
            guard = ?guard.as_ref().map(|g| g.pid()),
            "daemons contained"
        );
        let watcher = match SocketWatcher::new() {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable; readiness falls back to polling");
                None
            }
        };
        let health = match HealthBoard::start() {
            Ok(board) => Some(board),
            Err(e) => {
                tracing::info!(error = %e, "socket diagnostics unavailable; health checks connect to each daemon");
                None
            }
        };
        let created = Context {
            state_dir: Arc::new(state),
            spawner: Arc::new(spawner),
            watcher,
            orphans: Arc::new(registry),
            health,
            children: self.inner.children.clone(),
            containment,
            cgroup: cgroup.map(Arc::new),
            guard,
        };
        *context = Some(created.clone());
        Ok(created)
    }

    /// The manager's cgroup, as the containment choice says: `None` for
    /// process groups.
    fn manager_cgroup(&self, manager_id: &str) -> Result<Option<ManagerCgroup>> {
        // Several managers may live in one process.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!("{manager_id}.{}", NEXT.fetch_add(1, Ordering::Relaxed));
        match self.inner.containment.resolved() {
            ContainmentChoice::ProcessGroup => Ok(None),
            ContainmentChoice::Auto => match ManagerCgroup::create(&id) {
                Ok(cgroup) => Ok(Some(cgroup)),
                Err(e) => {
                    tracing::info!(error = %e, "no writable cgroup v2 here; containing daemons by process group");
                    Ok(None)
                }
            },
            ContainmentChoice::Cgroup => ManagerCgroup::create(&id).map(Some).map_err(|e| {
                Error::io(
                    "cgroup containment was asked for but is not available (choose \"auto\" or \"process-group\")",
                    e,
                )
            }),
        }
    }

    /// How this manager contains its daemons; `None` until the first start
    /// decided it.
    pub fn containment(&self) -> Option<Containment> {
        let context = self.inner.context.lock().unwrap_or_else(|e| e.into_inner());
        context.as_ref().map(|c| c.containment)
    }

    /// The cgroup this manager's daemons' cgroups are made in, with cgroup
    /// containment; `None` otherwise, or until the first start (or
    /// [`cleanup_orphans`](Self::cleanup_orphans)) decided it.
    pub fn cgroup_path(&self) -> Option<PathBuf> {
        let context = self.inner.context.lock().unwrap_or_else(|e| e.into_inner());
        context
            .as_ref()
            .and_then(|c| c.cgroup.as_ref())
            .map(|cgroup| cgroup.path().to_owned())
    }

    /// Starts a daemon and resolves once it is `Running` (its socket
    /// accepted a connection), or fails with the reason: invalid config,
    /// spawn failure, exit before readiness (with its stderr tail), startup
    /// timeout, a stop request, or a socket already in use.
    ///
    /// A name that is `Starting`, `Running` or `Stopping` is refused; a
    /// `Stopped` or `Error` one is started afresh with the new config.
    ///
    /// Cancel safety: dropping the future does not cancel the start; the
    /// daemon is still supervised and can be stopped by name.
    ///
    /// The config is taken by value or shared: an embedder that keeps its
    /// configs (to restart or compare them) passes an `Arc`, and the
    /// manager keeps that one instead of a copy.
    pub async fn start_process(
        &self,
        config: impl Into<Arc<BackgroundProcessConfig>>,
    ) -> Result<()> {
        self.start(config.into(), false).await
    }

    /// [`start_process`](Self::start_process), with `restarted` telling
    /// the log marker of the first incarnation ("restarted" or "started").
    async fn start(&self, config: Arc<BackgroundProcessConfig>, restarted: bool) -> Result<()> {
        config.validate()?;
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown(config.name.clone()));
        }
        let context = self.context()?;
        // Opened (and checked) at every start, so a log file that cannot be
        // trusted fails the start instead of losing the output later.
        let log_file = match &config.log_file {
            Some(path) => Some(logs::OpenedLog {
                path: path.clone(),
                file: logs::open_log_file(path).map_err(|source| Error::LogFile {
                    name: config.name.clone(),
                    path: path.clone(),
                    source,
                })?,
                max_bytes: config.log_file_max_bytes,
                keep: config.log_file_keep,
            }),
            None => None,
        };
        // A refused limit leaves the daemon in `Error`, with the reason, so
        // a status shows why it is not running.
        let refusal = check_limits(&config, &context).err();
        let (waiter, started) = oneshot::channel();
        let config = {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            // Again under the lock: `stop_all_processes` sets the flag and
            // then lists the names under this lock, so a start that got
            // past the first check registers a name it would never stop.
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown(config.name.clone()));
            }
            let shared = match slots.get(&config.name) {
                Some(slot) => {
                    let state = slot.shared.state();
                    if state.is_active() {
                        return Err(Error::AlreadyActive {
                            name: config.name.clone(),
                            state,
                        });
                    }
                    slot.shared.logs.set_file(log_file);
                    Arc::clone(&slot.shared)
                }
                None => Arc::new(Shared::new(
                    &config.name,
                    LogBuffer::new(self.inner.log_ring_lines, log_file),
                    self.inner.events.clone(),
                )),
            };
            // Applied under the registry lock, so a concurrent start of the
            // same name sees `Starting` and is refused.
            shared.begin_start();
            shared.apply(Occurrence::Start, "start requested");
            let (control, requests) = mailbox::mailbox();
            if let Some(refusal) = refusal {
                let reason = refusal.to_string();
                shared.update(|info| {
                    info.containment = Some(context.containment);
                    info.last_error = Some(reason.clone());
                });
                shared.apply(
                    Occurrence::Failed {
                        will_restart: false,
                    },
                    &reason,
                );
                // No supervisor reads `requests`: a stop finds nothing to do.
                drop(requests);
                slots.insert(
                    config.name.clone(),
                    Slot {
                        shared,
                        control,
                        config,
                    },
                );
                return Err(refusal);
            }
            let supervisor = Supervisor::new(
                Arc::clone(&config),
                Arc::clone(&shared),
                context,
                requests,
                waiter,
                restarted,
            );
            // Boxed: by value, the task's state machine would hold the
            // supervisor twice (as its argument and as a local).
            tokio::spawn(Box::new(supervisor).run());
            #[cfg(feature = "rpc")]
            if let Some(socket) = &config.socket_path {
                if !config.events.is_empty() {
                    subscribe_shared(&shared, socket, config.events.iter().cloned());
                }
            }
            let name = config.name.clone();
            slots.insert(
                name,
                Slot {
                    shared,
                    control,
                    config: Arc::clone(&config),
                },
            );
            config
        };
        started
            .await
            .unwrap_or_else(|_| Err(Error::ManagerGone(config.name.clone())))
    }

    /// Stops a daemon: its stop signal (`stop_signal`, SIGTERM by default)
    /// to its process group (or cgroup), SIGKILL after the
    /// grace period, and returns as soon as no member is alive. Stopping a
    /// process that is `Starting` cancels its start. Stopping a `Stopped`
    /// or `Error` process does nothing. A name never started is
    /// [`Error::UnknownProcess`].
    pub async fn stop_process(&self, name: &str) -> Result<()> {
        let control = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownProcess(name.to_owned()))?;
            slot.control.clone()
        };
        let (reply, done) = oneshot::channel();
        if control.send(Control::Stop(reply)).is_err() {
            // The supervisor already finished: Stopped or Error.
            return Ok(());
        }
        // A dropped reply means the supervisor ended (gave up) before it
        // read the request: nothing is left to stop.
        done.await.unwrap_or(Ok(()))
    }

    /// Stops a daemon if it is active, then starts it again with its last
    /// config, resolving once it is `Running`. The log marks the new
    /// incarnation "restarted, pid N".
    pub async fn restart_process(&self, name: &str) -> Result<()> {
        let config = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .get(name)
                .map(|slot| Arc::clone(&slot.config))
                .ok_or_else(|| Error::UnknownProcess(name.to_owned()))?
        };
        self.restart_process_with(config).await
    }

    /// Restarts a daemon with a new config (its name is the config's):
    /// stops it if it is active, then starts it as
    /// [`start_process`](Self::start_process) does, the log marking the
    /// new incarnation "restarted, pid N". A name never started is simply
    /// started (still marked "restarted": the caller asked for a restart).
    ///
    /// For an embedder that stops a daemon, does its own work (waits for
    /// other daemons, rewrites a file) and then starts it: the daemon is
    /// already stopped, so only the start and the marker remain.
    pub async fn restart_process_with(
        &self,
        config: impl Into<Arc<BackgroundProcessConfig>>,
    ) -> Result<()> {
        let config: Arc<BackgroundProcessConfig> = config.into();
        // Before the stop: a config that cannot start leaves the running
        // daemon alone.
        config.validate()?;
        match self.stop_process(&config.name).await {
            Ok(()) | Err(Error::UnknownProcess(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(config, true).await
    }

    /// Stops every daemon in parallel and refuses later starts. Each stop
    /// is graceful (stop signal, grace, SIGKILL); the call returns when all
    /// groups are gone.
    pub async fn stop_all_processes(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        // Every supervisor gets its request at once, so all groups are
        // signalled as fast as the supervisors run, not one per spawned
        // task.
        let pending: Vec<(String, oneshot::Receiver<Result<()>>)> = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter_map(|(name, slot)| {
                    let (reply, done) = oneshot::channel();
                    // A closed channel: the supervisor already finished.
                    slot.control.send(Control::Stop(reply)).ok()?;
                    Some((name.clone(), done))
                })
                .collect()
        };
        for (name, done) in pending {
            // A dropped reply: the supervisor ended before it read the
            // request, and nothing is left to stop.
            if let Ok(Err(e)) = done.await {
                tracing::warn!(%name, error = %e, "stop failed");
            }
        }
    }

    /// Whether the process is `Running`; `false` for a name never started
    /// (the one query that does not fail with [`Error::UnknownProcess`]).
    pub fn is_running(&self, name: &str) -> bool {
        matches!(self.state(name), Ok(ProcessState::Running))
    }

    /// The process's state; [`Error::UnknownProcess`] for a name never
    /// started.
    pub fn state(&self, name: &str) -> Result<ProcessState> {
        self.with_shared(name, |s| s.state())
    }

    /// PID of the process's current incarnation, `None` while none is
    /// alive; [`Error::UnknownProcess`] for a name never started.
    pub fn pid(&self, name: &str) -> Result<Option<u32>> {
        self.with_shared(name, |s| s.pid())
    }

    /// A snapshot of everything known about the process;
    /// [`Error::UnknownProcess`] for a name never started.
    pub fn process_info(&self, name: &str) -> Result<ProcessInfo> {
        self.with_shared(name, |s| s.snapshot())
    }

    /// Snapshots of every process, sorted by name.
    pub fn list(&self) -> Vec<ProcessInfo> {
        // Snapshots read cgroup files: taken outside the registry lock,
        // which starts and stops need.
        let shared: Vec<Arc<Shared>> = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.values().map(|s| Arc::clone(&s.shared)).collect()
        };
        let mut infos: Vec<ProcessInfo> = shared.iter().map(|s| s.snapshot()).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// The newest `n` lines the process wrote to stdout and stderr;
    /// [`Error::UnknownProcess`] for a name never started.
    pub fn logs(&self, name: &str, n: usize) -> Result<Vec<LogLine>> {
        self.with_shared(name, |s| s.logs.tail(n))
    }

    /// Lines the process writes from now on, across restarts (for
    /// following its output); [`Error::UnknownProcess`] for a name never
    /// started.
    pub fn follow_logs(&self, name: &str) -> Result<LogFollower> {
        self.with_shared(name, |s| LogFollower::new(s.logs.follow()))
    }

    /// State changes of every process from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            events: SkipLagged::new(self.inner.events.subscribe()),
        }
    }

    #[cfg(feature = "rpc")]
    /// The persistent JSON-RPC client of a daemon: one connection,
    /// multiplexed, reconnecting after restarts. Clones share it.
    pub fn rpc_client(&self, name: &str) -> Result<rpc::Client> {
        self.with_socket(name, |shared, socket| shared.rpc_client(socket))
    }

    #[cfg(feature = "rpc")]
    /// Subscribes a daemon to named events: each [`Self::publish`]ed event
    /// of those names reaches it as an `on_event` notification with params
    /// `{"event": name, "data": data}`, in publish order, over its RPC
    /// connection. Subscriptions survive restarts.
    pub fn subscribe_daemon<I, S>(&self, name: &str, events: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_socket(name, |shared, socket| {
            subscribe_shared(shared, socket, events.into_iter().map(Into::into))
        })
    }

    #[cfg(feature = "rpc")]
    /// Publishes an event to every daemon subscribed to it; returns how
    /// many daemons it was queued for. A daemon that is not `Running`
    /// receives it once it is ready again. Fails for an event larger than
    /// [`defaults::MAX_EVENT_BYTES`] as JSON.
    pub fn publish(&self, event: &str, data: serde_json::Value) -> Result<usize> {
        let size = serde_json::to_vec(&data).map_or(0, |v| v.len()) + event.len();
        if size > defaults::MAX_EVENT_BYTES {
            return Err(Error::EventTooLarge {
                event: event.to_owned(),
                size,
                limit: defaults::MAX_EVENT_BYTES,
            });
        }
        let published = Arc::new(PublishedEvent {
            name: event.to_owned(),
            data,
        });
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut queued = 0;
        for slot in slots.values() {
            let delivered = slot.shared.existing_delivery(|d| {
                d.wants(event) && {
                    let ok = d.enqueue(Arc::clone(&published));
                    if !ok {
                        tracing::warn!(name = %slot.shared.name, %event, "event queue full; event dropped");
                    }
                    ok
                }
            });
            if delivered == Some(true) {
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Stops daemons recorded in the state directory by managers that are
    /// no longer alive. A record whose PID now belongs to another process,
    /// or whose manager still runs, is left alone.
    pub async fn cleanup_orphans(&self) -> Result<CleanupReport> {
        let context = self.context()?;
        Ok(context.orphans.cleanup(None).await)
    }

    /// Runs `f` on a known daemon that has a socket.
    #[cfg(feature = "rpc")]
    fn with_socket<T>(&self, name: &str, f: impl FnOnce(&Shared, &Path) -> T) -> Result<T> {
        let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots
            .get(name)
            .ok_or_else(|| Error::UnknownProcess(name.to_owned()))?;
        let socket = slot
            .config
            .socket_path
            .as_deref()
            .ok_or_else(|| Error::NoSocket(name.to_owned()))?;
        Ok(f(&slot.shared, socket))
    }

    /// Runs `f` on a known daemon: the one lookup of every query, so an
    /// unknown name is [`Error::UnknownProcess`] everywhere.
    fn with_shared<T>(&self, name: &str, f: impl FnOnce(&Shared) -> T) -> Result<T> {
        // `f` runs outside the registry lock (a snapshot reads files).
        let shared = {
            let slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots
                .get(name)
                .ok_or_else(|| Error::UnknownProcess(name.to_owned()))?;
            Arc::clone(&slot.shared)
        };
        Ok(f(&shared))
    }
}

#[cfg(feature = "rpc")]
fn subscribe_shared(shared: &Shared, socket: &Path, events: impl Iterator<Item = String>) {
    shared.delivery(
        || {
            EventDelivery::start(
                shared.rpc_client(socket),
                shared.readiness(),
                defaults::EVENT_QUEUE_CAPACITY,
            )
        },
        |delivery| delivery.subscribe(events),
    );
}

/// What [`Subscription::recv_or_missed`] gave.
#[derive(Debug, Clone)]
pub enum Received {
    /// The next event.
    Event(ProcessEvent),
    /// This many events were skipped: the subscriber fell too far behind.
    Missed(u64),
}

/// The state changes of every process of a manager, from
/// [`BackgroundProcessManager::subscribe`]: a [`futures_core::Stream`] of
/// [`ProcessEvent`]s, or [`recv`](Self::recv) them one by one. It ends
/// once the manager is gone. A subscriber that falls more than 4,096
/// events behind skips the oldest it missed (a warning is logged).
pub struct Subscription {
    events: SkipLagged<ProcessEvent>,
}

impl Subscription {
    /// The next event; `None` once the manager is gone. Cancel-safe: a
    /// `recv` dropped in a `select!` loses no event.
    pub async fn recv(&mut self) -> Option<ProcessEvent> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Like [`Self::recv`], but says how many events were skipped when
    /// this subscriber fell behind, so it can catch up from a snapshot
    /// ([`BackgroundProcessManager::list`]) instead of missing them.
    ///
    /// When events were skipped, the event received after them is dropped
    /// too: a snapshot taken after `Missed` shows its effect.
    pub async fn recv_or_missed(&mut self) -> Option<Received> {
        use futures_core::Stream as _;
        let event =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.events).poll_next(cx)).await?;
        match self.events.take_missed() {
            0 => Some(Received::Event(event)),
            missed => Some(Received::Missed(missed)),
        }
    }

    /// The next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<ProcessEvent> {
        let event = self.events.try_next();
        self.warn_missed();
        event
    }

    fn warn_missed(&mut self) {
        let missed = self.events.take_missed();
        if missed > 0 {
            tracing::warn!(missed, "event subscriber fell behind");
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl futures_core::Stream for Subscription {
    type Item = ProcessEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ProcessEvent>> {
        let polled = std::pin::Pin::new(&mut self.events).poll_next(cx);
        self.warn_missed();
        polled
    }
}

/// Refuses a config whose resource limits this manager cannot enforce:
/// under process-group containment, or where a controller is not
/// delegated. Enables the controllers needed on the way.
fn check_limits(config: &BackgroundProcessConfig, context: &Context) -> Result<()> {
    if !config.has_limits() {
        return Ok(());
    }
    for limit in crate::cgroup::limits_of(config) {
        if limit.value.is_none() {
            continue;
        }
        let refused = |reason: String| Error::LimitUnavailable {
            name: config.name.clone(),
            limit: limit.field,
            reason,
        };
        let Some(cgroup) = &context.cgroup else {
            return Err(refused(format!(
                "needs cgroup containment, but this manager contains its daemons by process group (no writable cgroup v2 here, or process-group was chosen); remove {} or run with cgroup containment",
                limit.field
            )));
        };
        cgroup.enable_controller(limit.controller).map_err(|why| {
            refused(format!(
                "needs the {} controller, {why}; remove {} or run where the controller is delegated",
                limit.controller, limit.field
            ))
        })?;
    }
    Ok(())
}
