//! What to run and how to supervise it: [`BackgroundProcessConfig`] and
//! [`HealthCheck`], with validation that reports every problem at once.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    credentials::{self, IdOrName},
    defaults,
    error::{ConfigProblem, ConfigProblems, Error},
    rlimit::{Rlimit, RlimitValue},
};

mod probes;

pub(crate) use probes::HttpTarget;
pub use probes::{ExecProbe, HttpProbe, Readiness, TcpProbe};

/// Periodic liveness check over the daemon's socket; what a check does is
/// chosen by [`HealthProbe`].
///
/// Build it with [`HealthCheck::new`] or from [`HealthCheck::default`];
/// the fields can be read and changed, and more may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// Time between the end of one check and the start of the next; checks
    /// never overlap. A check falls due on a tick shared with other checks,
    /// so it may start up to a quarter of the interval (at most 250 ms)
    /// late, never early.
    pub interval: Duration,
    /// With [`HealthProbe::Accept`], the longest the check's connection may
    /// wait in the daemon's accept queue. With [`HealthProbe::Ping`], how
    /// long one check (connect, request, reply) may take. A
    /// [`HealthProbe::Connect`] check never waits.
    pub timeout: Duration,
    /// Consecutive failures that make tend restart the daemon.
    pub retries: u32,
}

impl HealthCheck {
    /// A check every `interval`, each allowed `timeout`, `retries` failures
    /// in a row making tend restart the daemon.
    pub fn new(interval: Duration, timeout: Duration, retries: u32) -> Self {
        HealthCheck {
            interval,
            timeout,
            retries,
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::new(
            defaults::HEALTH_CHECK_INTERVAL,
            defaults::HEALTH_CHECK_TIMEOUT,
            defaults::MAX_HEALTH_CHECK_FAILURES,
        )
    }
}

/// What a health check does: over the daemon's Unix socket (`Connect`,
/// `Accept`, `Ping`), or against another target (`Tcp`, `Http`, `Exec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthProbe {
    /// Proves what a connect proves: a listener is bound to the socket and
    /// its accept queue is not full.
    ///
    /// One task per manager checks all such daemons from one
    /// socket-diagnostics dump (`NETLINK_SOCK_DIAG`) per tick, without
    /// connecting, so a check wakes no daemon. A check fails when the
    /// socket file is gone, no listener is bound to it, or its accept queue
    /// is full. Where the dump is unavailable (a kernel without
    /// `CONFIG_UNIX_DIAG`, some sandboxes), or does not find a daemon that
    /// a connect reaches, a check is a connect, closed at once.
    #[default]
    Connect,
    /// [`Connect`](Self::Connect), and the daemon must accept a connection
    /// within [`HealthCheck::timeout`].
    ///
    /// Each check plants a connection: a connect that sends nothing and
    /// shuts its write side (the daemon reads end of file), kept open until
    /// the daemon accepts it. A check fails when the connection planted by
    /// the previous one still waits to be accepted after the timeout, so a
    /// daemon frozen by SIGSTOP, or stuck outside its accept loop, is
    /// replaced long before its backlog fills. A daemon that serves one
    /// request at a time fails it while busy with a long one. Without the
    /// socket-diagnostics dump (see `Connect`) a check is a connect.
    Accept,
    /// Connect, send a JSON-RPC `ping` request and wait for any JSON-RPC
    /// reply: also proves the daemon's event loop answers, so a daemon
    /// whose socket accepts but which never replies is restarted.
    Ping,
    /// A TCP connect to the address, closed at once; fails when it is
    /// refused or does not complete within [`HealthCheck::timeout`]. Run
    /// by the manager's one health task with every other batched check.
    Tcp(TcpProbe),
    /// An HTTP `GET` answered with the expected status within
    /// [`HealthCheck::timeout`] (the whole exchange).
    Http(HttpProbe),
    /// A command that exits 0 within [`HealthCheck::timeout`]; killed with
    /// its process group when it overruns.
    Exec(ExecProbe),
}

impl HealthProbe {
    /// Whether the probe goes over the daemon's Unix socket.
    pub fn needs_socket(&self) -> bool {
        match self {
            HealthProbe::Connect | HealthProbe::Accept | HealthProbe::Ping => true,
            HealthProbe::Http(http) => http.over_unix_socket(),
            HealthProbe::Tcp(_) | HealthProbe::Exec(_) => false,
        }
    }
}

/// When a daemon that ended without being asked to is started again.
///
/// A failure is an exit with a non-zero code or by a signal, a startup
/// timeout, or failed health checks; a clean exit is an exit with code 0
/// after the daemon became ready. Restarts are always limited by
/// [`BackgroundProcessConfig::max_restart_attempts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Restart after any end, a clean exit included (tend's behaviour
    /// before the policy existed, and the default).
    #[default]
    Always,
    /// Restart after a failure; a clean exit leaves the daemon `Stopped`
    /// and marked [completed](crate::ProcessInfo::completed).
    OnFailure,
    /// Never restart: a clean exit leaves the daemon `Stopped` and
    /// marked completed (a one-shot task: a migration, a setup step); a
    /// failure leaves it in `Error`.
    Never,
}

impl RestartPolicy {
    /// The name used in config files: `always`, `on-failure`, `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }

    /// Whether an end of the daemon is followed by a restart (budget
    /// permitting): `clean` is an exit with code 0 after readiness.
    pub fn restarts(self, clean: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Never => false,
        }
    }
}

/// The signal that asks a daemon to stop; SIGKILL follows after the
/// grace period whichever is chosen. It is also the daemon's parent-death
/// signal, and what the guard and a later manager's cleanup send first
/// when the daemon's manager was killed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StopSignal {
    /// `SIGTERM`, the default.
    #[default]
    Term,
    /// `SIGINT`, what Ctrl-C sends (Python programs raise
    /// `KeyboardInterrupt`).
    Int,
    /// `SIGQUIT` (nginx: graceful shutdown).
    Quit,
    /// `SIGHUP`.
    Hup,
    /// `SIGUSR1`.
    Usr1,
    /// `SIGUSR2`.
    Usr2,
    /// `SIGWINCH` (Apache httpd: graceful stop).
    Winch,
}

impl StopSignal {
    /// Every stop signal, in the order of [`Self::NAMES`].
    pub const ALL: [StopSignal; 7] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Usr1,
        StopSignal::Usr2,
        StopSignal::Winch,
    ];

    /// The names accepted by [`Self::from_name`], as written in messages.
    pub const NAMES: &'static str =
        "SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2 or SIGWINCH";

    /// The signal's name: `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Winch => "SIGWINCH",
        }
    }

    /// The signal named `name`: `SIGINT`, `INT` or `sigint`. SIGKILL and
    /// SIGSTOP are refused: neither lets a daemon stop gracefully.
    pub fn from_name(name: &str) -> Option<StopSignal> {
        let upper = name.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        StopSignal::ALL
            .into_iter()
            .find(|signal| &signal.name()[3..] == bare)
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        self.to_signal().as_raw()
    }

    pub(crate) fn to_signal(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            StopSignal::Term => Signal::TERM,
            StopSignal::Int => Signal::INT,
            StopSignal::Quit => Signal::QUIT,
            StopSignal::Hup => Signal::HUP,
            StopSignal::Usr1 => Signal::USR1,
            StopSignal::Usr2 => Signal::USR2,
            StopSignal::Winch => Signal::WINCH,
        }
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// How to run and supervise one daemon. Build it with [`Self::new`] and the
/// chained setters; every setting not given takes its value from
/// [`crate::defaults`].
///
/// The fields are public to read and to change, but the struct may gain
/// fields in any release: build it with `new`, never with a struct
/// literal.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackgroundProcessConfig {
    /// Unique name: `[A-Za-z0-9._-]`, not `.` or `..`, at most 64 bytes.
    pub name: String,
    /// Program to execute. Without a `/`, it is looked up in the daemon's
    /// `PATH`: the one set with [`env`](Self::env()), else tend's own.
    /// Never run through a shell.
    pub command: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// Working directory; the caller's when `None`.
    pub plugin_path: Option<PathBuf>,
    /// Absolute path of the Unix socket the daemon listens on, exported to it
    /// as `SOCKET_PATH`. `None` for a worker that serves no socket.
    pub socket_path: Option<PathBuf>,
    /// Extra environment variables, added to the caller's environment in
    /// order (a later entry wins).
    pub env: Vec<(OsString, OsString)>,
    /// Time allowed from spawn until the daemon is ready.
    pub startup_timeout: Duration,
    /// How tend knows the daemon is ready (its socket accepts, by default).
    pub readiness: Readiness,
    /// With [`Readiness::Notify`]: the daemon gets `WATCHDOG_USEC` and must
    /// send `WATCHDOG=1` at least this often once ready; a missed one is a
    /// health failure that replaces the daemon (systemd's `WatchdogSec=`).
    pub watchdog: Option<Duration>,
    /// Time allowed between the stop signal and SIGKILL.
    pub shutdown_grace_period: Duration,
    /// The signal that asks the daemon to stop (SIGTERM by default).
    pub stop_signal: StopSignal,
    /// When the daemon is restarted after it ended on its own.
    pub restart: RestartPolicy,
    /// Whether a first start that fails (an exit before readiness, a
    /// startup timeout, a spawn error) is retried like a later failure,
    /// within [`max_restart_attempts`](Self::max_restart_attempts) and
    /// after the restart delay. Off by default: a first start that fails
    /// fails at once, and `start_process` returns its error. With it,
    /// `start_process` resolves at the first readiness, or with the last
    /// error once the attempts are used up. Never retried with
    /// [`RestartPolicy::Never`].
    pub retry_first_start: bool,
    /// Periodic health check, if any (needs a socket).
    pub healthcheck: Option<HealthCheck>,
    /// What each health check does.
    pub health_probe: HealthProbe,
    /// Restarts in a row before giving up.
    pub max_restart_attempts: u32,
    /// Delay before the first restart; each further one doubles it, up to
    /// [`defaults::MAX_RESTART_DELAY`], plus a little jitter.
    pub restart_delay: Duration,
    /// Time `Running` after which the restart counter resets.
    pub stable_period: Duration,
    /// File the daemon's stdout and stderr are appended to, rotated by size.
    pub log_file: Option<PathBuf>,
    /// Size at which the log file is rotated to `<file>.1`.
    pub log_file_max_bytes: u64,
    /// Rotated log files kept besides the live one (`<file>.1` …).
    pub log_file_keep: u32,
    /// Events the daemon is subscribed to when it starts (see
    /// `BackgroundProcessManager::publish`, with the `rpc` feature).
    pub events: Vec<String>,
    /// Most memory the daemon's cgroup may use, in bytes (`memory.max`):
    /// beyond it the kernel reclaims, then kills a member (OOM).
    ///
    /// Resource limits need cgroup containment and the controller
    /// delegated to the manager's cgroup: tend enables it in the manager
    /// cgroup's `cgroup.subtree_control` where its parent offers it.
    /// Where it cannot (or the manager contains its daemons by process
    /// group), the start fails with [`Error::LimitUnavailable`]: nothing
    /// is spawned, and the daemon is left in `Error` with the reason as
    /// its `last_error`.
    pub memory_max: Option<u64>,
    /// Most processes and threads the daemon's cgroup may hold at once
    /// (`pids.max`): a fork beyond it fails with `EAGAIN`. Needs the
    /// `pids` controller (see [`memory_max`](Self::memory_max)).
    pub pids_max: Option<u64>,
    /// CPU time the daemon's cgroup may use, in CPUs: `0.5` is half of one
    /// CPU, `2.0` two full CPUs (`cpu.max` of `50000 100000` and
    /// `200000 100000`: a quota per 100 ms period). At least `0.01`. Needs
    /// the `cpu` controller (see [`memory_max`](Self::memory_max)).
    pub cpu_max: Option<f64>,
    /// The user the daemon runs as (`setresuid` before `exec`); the
    /// manager's when `None`. Changing it needs root (`CAP_SETUID`).
    /// With a user, [`group`](Self::group) defaults to its primary group
    /// and the supplementary groups are its memberships in the group
    /// database, plus [`supplementary_groups`](Self::supplementary_groups).
    /// Names are looked up when the config is validated and at each
    /// spawn; an unknown name is refused naming it.
    ///
    /// The parent-death signal is armed after the change (the kernel
    /// clears it when the uid changes), and the working directory is
    /// entered and the command executed as the user: a daemon cannot read
    /// what its user could not.
    pub user: Option<IdOrName>,
    /// The daemon's group (`setresgid`); `user`'s primary group, else the
    /// manager's, when `None`. Needs root (`CAP_SETGID`) to change.
    pub group: Option<IdOrName>,
    /// Supplementary groups (`setgroups`), added to `user`'s memberships.
    /// When any of `user`, `group` or this is set, the daemon never keeps
    /// the manager's own supplementary groups.
    pub supplementary_groups: Vec<IdOrName>,
    /// File mode creation mask of the daemon (`0o027` keeps new files
    /// from others); the manager's when `None`.
    pub umask: Option<u32>,
    /// Resource limits set on the daemon before `exec` (`setrlimit`),
    /// before the change of user, so a hard limit may be raised by a root
    /// manager. Limits not listed are inherited from the manager (the open
    /// file limit as the manager had it before raising its own).
    pub rlimits: BTreeMap<Rlimit, RlimitValue>,
}

impl BackgroundProcessConfig {
    /// A config for `name` running `command`, with every default.
    pub fn new(name: impl Into<String>, command: impl Into<PathBuf>) -> Self {
        BackgroundProcessConfig {
            name: name.into(),
            command: command.into(),
            args: Vec::new(),
            plugin_path: None,
            socket_path: None,
            env: Vec::new(),
            startup_timeout: defaults::STARTUP_TIMEOUT,
            readiness: Readiness::Socket,
            watchdog: None,
            shutdown_grace_period: defaults::SHUTDOWN_GRACE_PERIOD,
            stop_signal: StopSignal::Term,
            restart: RestartPolicy::Always,
            retry_first_start: false,
            healthcheck: None,
            health_probe: HealthProbe::Connect,
            max_restart_attempts: defaults::MAX_RESTART_ATTEMPTS,
            restart_delay: defaults::RESTART_DELAY,
            stable_period: defaults::STABLE_PERIOD,
            log_file: None,
            log_file_max_bytes: defaults::LOG_FILE_MAX_BYTES,
            log_file_keep: defaults::LOG_FILE_KEEP,
            events: Vec::new(),
            memory_max: None,
            pids_max: None,
            cpu_max: None,
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            umask: None,
            rlimits: BTreeMap::new(),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets the working directory (the plugin's folder).
    pub fn plugin_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.plugin_path = Some(path.into());
        self
    }

    /// Sets the socket the daemon must listen on.
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket_path = Some(path.into());
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the startup timeout.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Chooses how tend knows the daemon is ready (see [`Readiness`]).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Sets the notify watchdog (see [`watchdog`](Self::watchdog)).
    pub fn watchdog(mut self, every: Duration) -> Self {
        self.watchdog = Some(every);
        self
    }

    /// Sets the time between the stop signal and SIGKILL.
    pub fn shutdown_grace_period(mut self, grace: Duration) -> Self {
        self.shutdown_grace_period = grace;
        self
    }

    /// Sets the signal that asks the daemon to stop.
    pub fn stop_signal(mut self, signal: StopSignal) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Sets when the daemon is restarted after it ended on its own.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Retries a first start that fails (see
    /// [`retry_first_start`](Self::retry_first_start)).
    pub fn retry_first_start(mut self, retry: bool) -> Self {
        self.retry_first_start = retry;
        self
    }

    /// Enables periodic health checks.
    pub fn healthcheck(mut self, check: HealthCheck) -> Self {
        self.healthcheck = Some(check);
        self
    }

    /// Chooses what a health check does (a plain connect by default).
    pub fn health_probe(mut self, probe: HealthProbe) -> Self {
        self.health_probe = probe;
        self
    }

    /// Sets how many restarts in a row are allowed.
    pub fn max_restart_attempts(mut self, attempts: u32) -> Self {
        self.max_restart_attempts = attempts;
        self
    }

    /// Sets the delay before the first restart.
    pub fn restart_delay(mut self, delay: Duration) -> Self {
        self.restart_delay = delay;
        self
    }

    /// Sets how long the daemon must run before its restart counter resets.
    pub fn stable_period(mut self, period: Duration) -> Self {
        self.stable_period = period;
        self
    }

    /// Appends the daemon's output to this file (rotated by size).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Subscribes the daemon to these events when it starts.
    pub fn events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events.extend(events.into_iter().map(Into::into));
        self
    }

    /// Limits the daemon's memory to `bytes` (see
    /// [`memory_max`](Self::memory_max)).
    pub fn memory_max(mut self, bytes: u64) -> Self {
        self.memory_max = Some(bytes);
        self
    }

    /// Limits the daemon to `count` processes and threads (see
    /// [`pids_max`](Self::pids_max)).
    pub fn pids_max(mut self, count: u64) -> Self {
        self.pids_max = Some(count);
        self
    }

    /// Limits the daemon's CPU time to `cpus` CPUs, `0.5` being half of
    /// one (see [`cpu_max`](Self::cpu_max)).
    pub fn cpu_max(mut self, cpus: f64) -> Self {
        self.cpu_max = Some(cpus);
        self
    }

    /// Runs the daemon as `user`, a name or a numeric uid (see
    /// [`user`](Self::user)).
    pub fn user(mut self, user: impl Into<IdOrName>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Runs the daemon with `group` as its group, a name or a numeric gid.
    pub fn group(mut self, group: impl Into<IdOrName>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Adds supplementary groups, names or numeric gids.
    pub fn supplementary_groups<I, G>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<IdOrName>,
    {
        self.supplementary_groups
            .extend(groups.into_iter().map(Into::into));
        self
    }

    /// Sets the daemon's file mode creation mask (`0o027`).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Sets a resource limit of the daemon: `soft` and `hard`, `None`
    /// being unlimited (see [`rlimits`](Self::rlimits)).
    pub fn rlimit(mut self, resource: Rlimit, soft: Option<u64>, hard: Option<u64>) -> Self {
        self.rlimits.insert(resource, RlimitValue { soft, hard });
        self
    }

    /// Whether any cgroup resource limit (`memory_max`, `pids_max`,
    /// `cpu_max`) is set.
    pub(crate) fn has_limits(&self) -> bool {
        self.memory_max.is_some() || self.pids_max.is_some() || self.cpu_max.is_some()
    }

    /// Checks the config and returns every problem found.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(ConfigProblem { field, message });
        };

        if let Err(message) = validate_name(&self.name) {
            problem("name", message);
        }
        if self.command.as_os_str().is_empty() {
            problem("command", "must not be empty".into());
        } else if has_nul(self.command.as_os_str()) {
            problem("command", "must not contain a NUL byte".into());
        }
        if self.args.iter().any(|a| has_nul(a)) {
            problem("args", "must not contain a NUL byte".into());
        }
        if let Some(dir) = &self.plugin_path {
            if !dir.is_dir() {
                problem(
                    "plugin_path",
                    format!("working directory {dir:?} does not exist or is not a directory"),
                );
            }
        }
        if let Some(socket) = &self.socket_path {
            if let Err(message) = validate_socket_path(socket) {
                problem("socket_path", message);
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.as_bytes().contains(&b'=') || has_nul(key) {
                problem(
                    "env",
                    format!("variable name {key:?} must be non-empty, without '=' or NUL"),
                );
            }
            if has_nul(value) {
                problem("env", format!("value of {key:?} must not contain NUL"));
            }
        }
        if self.startup_timeout.is_zero() {
            problem("startup_timeout", "must be greater than zero".into());
        }
        // Deadlines are computed as `now + duration`; absurd values would
        // overflow the clock.
        let mut durations = vec![
            ("startup_timeout", self.startup_timeout),
            ("shutdown_grace_period", self.shutdown_grace_period),
            ("restart_delay", self.restart_delay),
            ("stable_period", self.stable_period),
        ];
        if let Some(check) = &self.healthcheck {
            durations.push(("healthcheck.interval", check.interval));
            durations.push(("healthcheck.timeout", check.timeout));
        }
        if let Some(every) = self.watchdog {
            durations.push(("watchdog", every));
        }
        for (field, duration) in durations {
            if duration > defaults::MAX_DURATION {
                problem(field, "must be at most a year".into());
            }
        }
        self.validate_probes(&mut problem);
        if let Some(check) = &self.healthcheck {
            if self.socket_path.is_none() && self.health_probe.needs_socket() {
                problem(
                    "healthcheck",
                    "a health check needs a socket_path to connect to \
                     (or a tcp, http or exec probe)"
                        .into(),
                );
            }
            if check.interval.is_zero() {
                problem("healthcheck.interval", "must be greater than zero".into());
            }
            if check.timeout.is_zero() {
                problem("healthcheck.timeout", "must be greater than zero".into());
            }
            if check.retries == 0 {
                problem("healthcheck.retries", "must be at least 1".into());
            }
        }
        if self.stable_period.is_zero() {
            problem("stable_period", "must be greater than zero".into());
        }
        if let Some(log) = &self.log_file {
            if log.as_os_str().is_empty() || log.file_name().is_none() {
                problem("log_file", format!("{log:?} does not name a file"));
            }
        }
        if self.log_file_max_bytes == 0 {
            problem("log_file_max_bytes", "must be greater than zero".into());
        }
        if self.log_file_keep == 0 {
            problem(
                "log_file_keep",
                "must be at least 1 (the file rotated last)".into(),
            );
        }

        if !self.events.is_empty() && !cfg!(feature = "rpc") {
            problem(
                "events",
                "events are delivered by the JSON-RPC client, which this build of tend leaves out; enable the crate's rpc feature".into(),
            );
        }
        if !self.events.is_empty() && self.socket_path.is_none() {
            problem(
                "events",
                "events are delivered over the socket; set socket_path".into(),
            );
        }
        if self.events.iter().any(|e| e.is_empty()) {
            problem("events", "event names must not be empty".into());
        }

        if self.memory_max == Some(0) {
            problem("memory_max", "must be greater than zero".into());
        }
        if self.pids_max == Some(0) {
            problem(
                "pids_max",
                "must be at least 1 (the daemon itself is a process)".into(),
            );
        }
        if let Some(cpus) = self.cpu_max {
            if !(MIN_CPU_MAX..=MAX_CPU_MAX).contains(&cpus) {
                problem(
                    "cpu_max",
                    format!(
                        "must be a number of CPUs from {MIN_CPU_MAX} to {MAX_CPU_MAX} (0.5 is half of one CPU), found {cpus}"
                    ),
                );
            }
        }

        if let Some(mask) = self.umask {
            if mask > 0o777 {
                problem(
                    "umask",
                    format!("{mask:#o} is not a file mode mask; give one from 0o000 to 0o777"),
                );
            }
        }
        for (resource, value) in &self.rlimits {
            if !value.is_ordered() {
                problem(
                    "rlimits",
                    format!(
                        "{resource}: the soft limit must not be above the hard one (found soft {}, hard {})",
                        limit_text(value.soft),
                        limit_text(value.hard)
                    ),
                );
            }
        }
        if let Err(e) = credentials::resolve(self) {
            problem(e.field, e.message);
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                name: self.name.clone(),
                problems: ConfigProblems(problems),
            })
        }
    }
}

impl BackgroundProcessConfig {
    /// The problems of the readiness and health probe settings.
    fn validate_probes(&self, problem: &mut impl FnMut(&'static str, String)) {
        match &self.readiness {
            Readiness::Tcp(tcp) => {
                if let Err(message) = tcp.check() {
                    problem("readiness.tcp", message);
                }
            }
            Readiness::Http(http) => {
                if let Err(message) = http.target() {
                    problem("readiness.http", message);
                }
                if http.over_unix_socket() && self.socket_path.is_none() {
                    problem(
                        "readiness.http",
                        "a URL that is only a path is asked over the daemon's Unix socket; \
                         set socket_path or give http://host:port/path"
                            .into(),
                    );
                }
            }
            Readiness::Exec(exec) => {
                if let Err(message) = exec.check() {
                    problem("readiness.exec", message);
                }
            }
            Readiness::Log(pattern) => {
                if let Err(e) = regex::Regex::new(pattern) {
                    problem(
                        "readiness.log",
                        format!("{pattern:?} is not a regular expression: {e}"),
                    );
                }
            }
            Readiness::Socket | Readiness::None | Readiness::Notify => {}
        }
        if let Some(every) = self.watchdog {
            if self.readiness != Readiness::Notify {
                problem(
                    "watchdog",
                    "the watchdog is fed over the notify socket; set readiness to notify".into(),
                );
            }
            if every < std::time::Duration::from_millis(1) {
                problem("watchdog", "must be at least 1ms".into());
            }
        }
        match &self.health_probe {
            HealthProbe::Tcp(tcp) => {
                if let Err(message) = tcp.check() {
                    problem("healthcheck.address", message);
                }
            }
            HealthProbe::Http(http) => {
                if let Err(message) = http.target() {
                    problem("healthcheck.url", message);
                }
            }
            HealthProbe::Exec(exec) => {
                if let Err(message) = exec.check() {
                    problem("healthcheck.command", message);
                }
            }
            HealthProbe::Connect | HealthProbe::Accept | HealthProbe::Ping => {}
        }
    }
}

/// The smallest `cpu_max`: 1 ms of CPU per 100 ms period, the kernel's
/// smallest quota.
pub(crate) const MIN_CPU_MAX: f64 = 0.01;
/// The largest `cpu_max`, far beyond any machine, so the quota stays well
/// inside the kernel's range.
pub(crate) const MAX_CPU_MAX: f64 = 1_000_000.0;

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or("unlimited".into(), |n| n.to_string())
}

fn has_nul(s: &OsStr) -> bool {
    s.as_bytes().contains(&0)
}

/// Checks a process name: it becomes a file name in the state directory,
/// so it must not be able to name another path.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > defaults::MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long; at most {} allowed",
            name.len(),
            defaults::MAX_NAME_BYTES
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a usable name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks a socket path: absolute, NUL-free and short enough for
/// `sockaddr_un`.
pub fn validate_socket_path(path: &Path) -> Result<(), String> {
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if bytes.contains(&0) {
        return Err("must not contain a NUL byte".into());
    }
    if bytes.len() > defaults::MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "{path:?} is {} bytes long; Unix sockets allow at most {}",
            bytes.len(),
            defaults::MAX_SOCKET_PATH_BYTES
        ));
    }
    if path.file_name().is_none() {
        return Err(format!("{path:?} does not name a file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &BackgroundProcessConfig) -> Vec<&'static str> {
        match config.validate() {
            Ok(()) => vec![],
            Err(Error::InvalidConfig { problems, .. }) => {
                problems.0.iter().map(|p| p.field).collect()
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn defaults_match_the_documented_constants() {
        let c = BackgroundProcessConfig::new("p", "/bin/true");
        assert_eq!(c.startup_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(5));
        assert_eq!(c.max_restart_attempts, 3);
        assert_eq!(c.restart_delay, Duration::from_secs(5));
        let h = HealthCheck::default();
        assert_eq!(h.interval, Duration::from_secs(30));
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert_eq!(h.retries, 3);
    }

    #[test]
    fn names() {
        for good in ["a", "my-plugin", "x.y_z-1", "..a", &"n".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "sp ace",
            "é",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn socket_paths() {
        let exactly_107 = format!("/{}", "s".repeat(106));
        let exactly_108 = format!("/{}", "s".repeat(107));
        assert!(validate_socket_path(Path::new(&exactly_107)).is_ok());
        assert!(validate_socket_path(Path::new(&exactly_108)).is_err());
        assert!(validate_socket_path(Path::new("relative.sock")).is_err());
        assert!(validate_socket_path(Path::new("/")).is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = BackgroundProcessConfig::new("bad/name", "")
            .socket_path("rel.sock")
            .startup_timeout(Duration::ZERO)
            .plugin_path("/definitely/not/here")
            .env("A=B", "v")
            .healthcheck(HealthCheck::new(Duration::ZERO, Duration::ZERO, 0));
        assert_eq!(
            problems(&config),
            [
                "name",
                "command",
                "plugin_path",
                "socket_path",
                "env",
                "startup_timeout",
                "healthcheck.interval",
                "healthcheck.timeout",
                "healthcheck.retries"
            ]
        );
    }

    #[test]
    fn healthcheck_needs_a_socket() {
        let config =
            BackgroundProcessConfig::new("p", "/bin/true").healthcheck(HealthCheck::default());
        assert_eq!(problems(&config), ["healthcheck"]);
    }

    #[test]
    fn limits_are_checked() {
        let good = BackgroundProcessConfig::new("p", "/bin/true")
            .memory_max(1 << 20)
            .pids_max(1)
            .cpu_max(0.01);
        assert!(good.validate().is_ok());
        assert!(good.has_limits());
        assert!(!BackgroundProcessConfig::new("p", "/bin/true").has_limits());
        let bad = BackgroundProcessConfig::new("p", "/bin/true")
            .memory_max(0)
            .pids_max(0)
            .cpu_max(0.0);
        assert_eq!(problems(&bad), ["memory_max", "pids_max", "cpu_max"]);
        for cpus in [-1.0, f64::NAN, f64::INFINITY, 0.001, 2e6] {
            let config = BackgroundProcessConfig::new("p", "/bin/true").cpu_max(cpus);
            assert_eq!(problems(&config), ["cpu_max"], "{cpus}");
        }
    }

    #[test]
    fn stop_signals_by_name() {
        for signal in StopSignal::ALL {
            assert_eq!(StopSignal::from_name(signal.name()), Some(signal));
            assert_eq!(StopSignal::from_name(&signal.name()[3..]), Some(signal));
            assert_eq!(
                StopSignal::from_name(&signal.name().to_lowercase()),
                Some(signal)
            );
        }
        assert_eq!(StopSignal::Int.number(), 2);
        for bad in ["SIGKILL", "KILL", "SIGSTOP", "9", "", "SIG", "TERMX"] {
            assert_eq!(StopSignal::from_name(bad), None, "{bad}");
        }
    }

    /// Restart or not, per policy and kind of end.
    #[test]
    fn restart_policy_table() {
        let rows = [
            (RestartPolicy::Always, false, true),
            (RestartPolicy::Always, true, true),
            (RestartPolicy::OnFailure, false, true),
            (RestartPolicy::OnFailure, true, false),
            (RestartPolicy::Never, false, false),
            (RestartPolicy::Never, true, false),
        ];
        for (policy, clean, restarts) in rows {
            assert_eq!(policy.restarts(clean), restarts, "{policy:?} clean={clean}");
        }
        assert_eq!(RestartPolicy::default(), RestartPolicy::Always);
    }

    #[test]
    fn identity_and_limits_are_checked() {
        let good = BackgroundProcessConfig::new("p", "/bin/true")
            .user("root")
            .group(0)
            .supplementary_groups(["root"])
            .umask(0o027)
            .rlimit(Rlimit::Nofile, Some(512), Some(1024))
            .rlimit(Rlimit::Core, Some(0), None);
        assert_eq!(problems(&good), Vec::<&str>::new());
        let bad = BackgroundProcessConfig::new("p", "/bin/true")
            .user("no-such-user-tend")
            .umask(0o1000)
            .rlimit(Rlimit::Nofile, Some(2048), Some(1024))
            .rlimit(Rlimit::Core, None, Some(0));
        assert_eq!(problems(&bad), ["umask", "rlimits", "rlimits", "user"]);
    }

    #[test]
    fn env_values_may_hold_newlines() {
        let config = BackgroundProcessConfig::new("p", "/bin/true").env("K", "a\nb");
        assert!(config.validate().is_ok());
    }
}
