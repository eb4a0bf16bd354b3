//! tend supervises long-running plugin daemons that serve a Unix socket.
//!
//! An app with plugins embeds a [`BackgroundProcessManager`], describes each
//! daemon with a [`BackgroundProcessConfig`], and calls
//! [`start_process`](BackgroundProcessManager::start_process). tend spawns
//! the daemon, waits until its socket accepts, health-checks it, restarts it
//! when it crashes or hangs (a bounded number of times in a row), stops it
//! gracefully with its whole process group, and makes sure it does not
//! outlive the app.
//!
//! ```no_run
//! use std::time::Duration;
//! use tend::{BackgroundProcessConfig, BackgroundProcessManager, HealthCheck};
//!
//! # async fn demo() -> Result<(), tend::Error> {
//! let manager = BackgroundProcessManager::new();
//! manager
//!     .start_process(
//!         BackgroundProcessConfig::new("my-plugin", "python3")
//!             .args(["daemon.py"])
//!             .plugin_path("/path/to/plugin")
//!             .socket_path("/run/user/1000/my-plugin.sock")
//!             .healthcheck(HealthCheck::default()),
//!     )
//!     .await?;
//! assert!(manager.is_running("my-plugin"));
//! manager.stop_all_processes().await;
//! # Ok(())
//! # }
//! ```
//!
//! # The daemon contract
//! A daemon reads `SOCKET_PATH` from its environment, binds and listens on a
//! Unix stream socket there, accepts connections (a check may itself
//! connect and send nothing, and the daemon then reads end of file; with
//! [`HealthProbe::Accept`] it must accept that within the check's timeout),
//! exits cleanly on SIGTERM (or the [`StopSignal`] its config names) and
//! removes its socket. It gets stdin from
//! `/dev/null`, stdout and stderr as pipes tend reads, and (on Linux 5.9
//! or later) no other descriptor of the app.
//! `examples/daemons/echo_daemon.py` is a complete one.
//!
//! ## Other kinds of daemons
//! A daemon that serves no Unix socket tells tend it is ready another way,
//! chosen with [`BackgroundProcessConfig::readiness`] ([`Readiness`]):
//! - **notify**: it sends `READY=1` over systemd's notify protocol to the
//!   datagram socket named in `NOTIFY_SOCKET` (a socket of its own, in a
//!   0700 directory of the manager's state directory). Only a process of
//!   the daemon's cgroup (or process group) is heard, as the kernel's
//!   `SCM_CREDENTIALS` prove; others, and malformed or oversized
//!   datagrams, are dropped. `STATUS=` becomes
//!   [`ProcessInfo::status_text`], `MAINPID=` of a member
//!   [`ProcessInfo::main_pid`], `ERRNO=` [`ProcessInfo::status_errno`].
//!   With [`BackgroundProcessConfig::watchdog`] it gets `WATCHDOG_USEC` and
//!   must send `WATCHDOG=1` at least that often once ready; a missed one
//!   replaces it. redis-server `--supervised systemd` and PostgreSQL speak
//!   it.
//! - **tcp**: it listens on the configured `host:port` (loopback, unless
//!   [`TcpProbe::remote`]).
//! - **http**: it answers a `GET` of the configured URL, over TCP or over its
//!   own Unix socket, with 2xx (or [`HttpProbe::expect_status`]).
//! - **exec**: a command run in its environment and working directory
//!   exits 0 (`pg_isready` for PostgreSQL, which accepts on its socket
//!   long before it can serve).
//! - **log**: it prints a line matching a regular expression.
//! - **none**: nothing; [`ProcessInfo::readiness_checked`] is false.
//!
//! Health checks choose their kind separately ([`HealthProbe`]): over the
//! socket (`Connect`, `Accept`, `Ping`) or `Tcp`, `Http`, `Exec`.
//!
//! # Theory of operation
//! - **One task per process.** Each started name gets a supervisor task
//!   (`supervisor.rs`) that owns its child processes and is the only writer
//!   of its state. The manager keeps a registry of those tasks and forwards
//!   start and stop requests to them, so requests on one name are handled
//!   in order and a stop overtakes a pending start. Queries read a snapshot
//!   the task publishes and never wait for a daemon.
//! - **States move through a table.** A transition table (`state.rs`) maps a state
//!   and an occurrence (ready, failed, stop requested, group gone) to the
//!   next state; the task only feeds occurrences into it. Every change is
//!   broadcast as a [`ProcessEvent`].
//! - **Events, not timers.** A child's exit is seen through its pidfd;
//!   readiness through an inotify event for the socket file followed by a
//!   connect; the end of a process group through pidfds of its members.
//!   Timers are only deadlines: startup timeout, grace period, health
//!   interval, restart delay.
//! - **One dump for all connect checks.** Connect health checks of every
//!   daemon of a manager run in one task, from one `NETLINK_SOCK_DIAG` dump
//!   of the listening Unix sockets per tick rather than a connect per
//!   check; a connection left waiting in a daemon's accept queue longer
//!   than the timeout fails its check. Where the dump is unavailable, each
//!   check is a connect. TCP checks run in the same task on the same tick:
//!   non-blocking connects, waited on together in one `poll`. `Ping`,
//!   `Http` and `Exec` checks run in the supervisor task, one at a time.
//! - **Readiness as it happens.** A notify datagram wakes the supervisor
//!   the moment it arrives, a log line as it is captured; a socket file's
//!   creation through inotify. Where the kernel says nothing (a TCP port
//!   starting to listen, a bound socket starting to listen), tend retries
//!   on a microsecond timer, at most 2 ms apart for the first seconds.
//! - **Containment you can prove.** Where a writable cgroup v2 hierarchy is
//!   found (or when asked for, [`ContainmentChoice`], `TEND_CONTAINMENT`),
//!   each daemon runs in a cgroup of its own,
//!   `<manager's cgroup>/tend-<manager id>/d-<name>`, created inside it by
//!   `clone3(CLONE_INTO_CGROUP)` (or joined before `exec`): whatever it
//!   starts stays in it, through `setsid`, double forks, a rewritten
//!   environment or a changed uid. Elsewhere each daemon leads a process
//!   group, and descendants that leave it are found through the
//!   subreaper of `tend up` and the `TEND_MANAGER_ID` marker. Which one is
//!   in force is in [`ProcessInfo::containment`] and a log line.
//! - **Whole groups.** Stopping a daemon signals its process group and
//!   every member of its cgroup (its stop signal, SIGTERM by default, and
//!   SIGCONT, then SIGKILL after the
//!   grace period: `cgroup.kill` with a cgroup) and returns the moment no
//!   live member is left (`populated 0` of the cgroup, seen through
//!   inotify); `Stopped` is never reported while one is. A daemon that
//!   crashes has its leftover children killed before it is restarted.
//! - **No orphans.** Daemons are spawned from one long-lived thread
//!   (`spawn.rs`), without `fork`, with a parent-death signal; dropping the
//!   manager SIGKILLs what it still runs. Because that signal reaches only
//!   the leader, and the kernel clears it when a daemon changes its uid,
//!   each manager also starts a *guard*: a small copy of itself, in a
//!   session of its own, that waits on the manager's pidfd and, the
//!   moment the manager dies however it dies, stops its daemons — each
//!   daemon's stop signal (the parent-death signal's too) to every member
//!   of its cgroup (or to each recorded group), SIGKILL when the grace
//!   period is over — and removes the cgroups
//!   ([`ManagerBuilder::guard`], `TEND_GUARD=0` to turn it off). The
//!   children the process started are registered in one [`ChildTable`],
//!   shared with the subreaper, so it never reaps them behind their
//!   supervisors. Each spawn is also recorded, with the PID's start time,
//!   in the manager's journal in the state directory, so the next start (or
//!   [`BackgroundProcessManager::cleanup_orphans`]) stops whatever survived
//!   — and only what it proves is its own (`orphans/`): journals of this
//!   user in a state directory of this user (never a file another user
//!   planted, nor a link), well-formed records (never PID or group 1), a
//!   group whose leader still has the recorded start time (never a process
//!   that merely reuses a recorded PID), and never the process running the
//!   cleanup or its ancestors. A dead manager's daemon cgroup that a record
//!   names (and that is proven tend's: its name, its owner, the cgroup
//!   file system) is stopped as a whole, escapees included. A process that
//!   only carries a dead manager's `TEND_MANAGER_ID` is reported in
//!   [`CleanupReport::suspects`], not killed, unless it descends from one
//!   of the daemons stopped.
//! - **Restarts are bounded, and chosen.** A daemon that ends after it was
//!   once ready is restarted as its [`RestartPolicy`] says (after any end by
//!   default; `OnFailure` and `Never` leave a clean exit `Stopped` and
//!   [`ProcessInfo::completed`], `Never` a failure in `Error`), after
//!   `restart_delay`, doubling per attempt up to a cap with a little
//!   jitter, at most `max_restart_attempts` times in a row; then its state
//!   is `Error` with the reason in `last_error`. The counter resets once
//!   the daemon stays `Running` for `stable_period`. A daemon whose *first*
//!   start fails is not restarted: `start_process` returns the reason at
//!   once — unless [`BackgroundProcessConfig::retry_first_start`] asks for
//!   the same retries.
//! - **Resources, where the kernel can tell.** With cgroup containment
//!   ([`ContainmentChoice`]) each daemon's cgroup gives its CPU time and
//!   memory in [`ProcessInfo::usage`] and takes its optional limits
//!   ([`BackgroundProcessConfig::memory_max`], `pids_max`, `cpu_max`); a
//!   limit the manager cannot enforce (process-group containment, or the
//!   controller not delegated) is refused with
//!   [`Error::LimitUnavailable`] before anything is spawned. With process
//!   groups, `usage` is the group leader's.
//! - **Another user, its own limits.** A manager running as root can run
//!   a daemon as another user and group
//!   ([`BackgroundProcessConfig::user`], `group`, `supplementary_groups`,
//!   names or ids, resolved when the config is validated), with its own
//!   resource limits ([`rlimits`](BackgroundProcessConfig::rlimits)) and
//!   `umask`. The child sets them between clone and `exec`, and arms the
//!   parent-death signal after the change of user, which clears it.
//!
//! # Queries, streams and the lookup rule
//! Every method of the manager that takes a name fails with
//! [`Error::UnknownProcess`] for a name never started; only
//! [`is_running`](BackgroundProcessManager::is_running) answers `false`.
//! [`subscribe`](BackgroundProcessManager::subscribe) and
//! [`follow_logs`](BackgroundProcessManager::follow_logs) return
//! [`futures_core::Stream`]s ([`Subscription`], [`LogFollower`]) that also
//! have `recv` and `try_recv`.
//!
//! # Cargo features
//! - `rpc` (default): the JSON-RPC client (`rpc` module,
//!   `BackgroundProcessManager::rpc_client`) and event delivery to daemons
//!   (`publish`, `subscribe_daemon`, the config's `events`).
//! - `envs` (default): the plugin environment manager (`envs` module).
//!
//! The crate asks tokio only for what it uses; the app chooses its runtime
//! flavour, and must call the manager inside a tokio runtime. It builds on
//! Linux only.

// tend is built on Linux interfaces with no portable equivalent: pidfds,
// cgroup v2, PR_SET_PDEATHSIG, inotify, NETLINK_SOCK_DIAG, clone with
// CLONE_PIDFD. A clear message here beats a thousand unresolved imports.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "tend supports Linux only (5.4 or later): it relies on pidfds, cgroup v2, PR_SET_PDEATHSIG, inotify and NETLINK_SOCK_DIAG"
);

mod cgroup;
mod children;
mod config;
mod credentials;
pub mod defaults;
#[cfg(feature = "rpc")]
mod delivery;
#[cfg(feature = "envs")]
pub mod envs;
mod error;
mod guard;
mod health;
pub mod human;
mod kill;
mod lagging;
mod logs;
mod mailbox;
mod manager;
mod orphans;
// Not part of the API: `tend up` keeps its socket and its own records in
// a directory checked the same way as the state directory, and shares the
// code. Hidden from the docs and the API snapshot; may change in any
// release.
#[doc(hidden)]
pub mod private_dir;
mod probe;
mod procfs;
mod rlimit;
#[cfg(feature = "rpc")]
pub mod rpc;
mod shared;
mod sockdiag;
mod spawn;
mod state;
pub mod subreaper;
mod supervisor;
mod watch;

pub use cgroup::{CONTAINMENT_ENV, Containment, ContainmentChoice, ResourceUsage};
pub use children::ChildTable;
pub use config::{
    BackgroundProcessConfig, ExecProbe, HealthCheck, HealthProbe, HttpProbe, Readiness, TcpProbe,
};
pub use config::{RestartPolicy, StopSignal};
pub use credentials::IdOrName;
pub use error::{ConfigProblem, ConfigProblems, Error, Result};
pub use logs::{LogFollower, LogLine, Stream, read_log_file};
pub use manager::{
    BackgroundProcessManager, GUARD_ENV, ManagerBuilder, Received, Subscription, default_state_dir,
};
pub use orphans::CleanupReport;
pub use rlimit::{Rlimit, RlimitValue};
pub use spawn::{MANAGER_ID_ENV, SOCKET_PATH_ENV};
pub use state::{ExitStatus, ProcessEvent, ProcessInfo, ProcessState};

// Not part of the API: `tend up` checks names while it reads its TOML file,
// so an error can name the file and line. Hidden; may change in any
// release.
#[doc(hidden)]
pub use config::validate_name;
