//! The library's error type: each variant says what to fix or what
//! happened, and names the process it concerns where there is one.

use std::{fmt, io, path::PathBuf, time::Duration};

use crate::state::{ExitStatus, ProcessState};

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found while validating a [`crate::BackgroundProcessConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The setting at fault, as its builder method is named (`socket_path`).
    pub field: &'static str,
    /// What is wrong with it and what would be accepted.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem of one config, reported together so a user fixes them in
/// one pass; at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblems(pub(crate) Vec<ConfigProblem>);

impl ConfigProblems {
    /// The problems, in the order of the config's fields.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigProblem> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an error holds at least one problem. For clippy's
    /// sake, and for symmetry with [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigProblems {
    type Item = &'a ConfigProblem;
    type IntoIter = std::slice::Iter<'a, ConfigProblem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Why an operation of the [`crate::BackgroundProcessManager`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config was rejected before anything was spawned.
    #[error("invalid config for {name:?}: {problems}")]
    InvalidConfig {
        /// The process name as given (it may itself be the problem).
        name: String,
        /// Everything that is wrong with it.
        problems: ConfigProblems,
    },
    /// No process of that name was ever started on this manager. Every
    /// method of [`crate::BackgroundProcessManager`] that takes a name
    /// fails with this for such a name (only `is_running` answers
    /// `false`); a name stays known once started, whatever its state.
    #[error("no process named {0:?}")]
    UnknownProcess(String),
    /// A start was asked for a process that is already up or on its way.
    #[error("process {name:?} is already {state}")]
    AlreadyActive {
        /// The process name.
        name: String,
        /// Its state when the start was refused.
        state: ProcessState,
    },
    /// `stop_all_processes` was called; the manager starts nothing more.
    #[error("the manager is shutting down; {0:?} was not started")]
    ShuttingDown(String),
    /// The command could not be executed at all.
    #[error("cannot run {command:?} for {name:?}: {source}")]
    Spawn {
        /// The process name.
        name: String,
        /// The command as configured.
        command: PathBuf,
        /// What `exec` said.
        #[source]
        source: io::Error,
    },
    /// A resource limit of the config cannot be enforced here: the
    /// manager contains its daemons by process group, or the cgroup
    /// controller the limit needs is not delegated to it. Nothing was
    /// spawned; the daemon is left in `Error` with this as its
    /// `last_error`.
    #[error("cannot start {name:?}: {limit} {reason}")]
    LimitUnavailable {
        /// The process name.
        name: String,
        /// The config field of the limit (`memory_max`).
        limit: &'static str,
        /// Why, and what to do about it.
        reason: String,
    },
    /// The daemon exited before its socket accepted a connection.
    #[error("{name:?} {status} before it was ready{}", tail_suffix(stderr_tail))]
    ExitedBeforeReady {
        /// The process name.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last lines of stderr, newest last.
        stderr_tail: String,
    },
    /// Nothing accepted on the socket within the startup timeout.
    #[error(
        "{name:?} did not accept connections on {socket:?} within {}; its process group was killed{}",
        crate::human::duration(*timeout),
        tail_suffix(stderr_tail)
    )]
    StartupTimeout {
        /// The process name.
        name: String,
        /// The socket that never accepted.
        socket: PathBuf,
        /// The configured startup timeout.
        timeout: Duration,
        /// Its last lines of stderr, newest last.
        stderr_tail: String,
    },
    /// The daemon was not ready within the startup timeout by a readiness
    /// kind other than its socket ([`crate::Readiness`]).
    #[error(
        "{name:?} was not ready within {timeout:?} ({waited_for}); its process group was killed{}",
        tail_suffix(stderr_tail)
    )]
    NotReady {
        /// The process name.
        name: String,
        /// What tend waited for, and the last reason it was not there
        /// ("no READY=1 over the notify socket").
        waited_for: String,
        /// The configured startup timeout.
        timeout: Duration,
        /// Its last lines of stderr, newest last.
        stderr_tail: String,
    },
    /// Something else is already listening on the configured socket.
    #[error("socket {path:?} for {name:?} is already in use by another process; refusing to start")]
    SocketInUse {
        /// The process name.
        name: String,
        /// The socket path.
        path: PathBuf,
    },
    /// A socket is at the configured path that tend cannot prove stale (a
    /// live datagram or seqpacket socket, one tend may not connect to, or
    /// another user's), so it refuses to delete it and does not start.
    #[error("socket path {path:?} for {name:?} is taken: {reason}; refusing to start")]
    SocketNotStale {
        /// The process name.
        name: String,
        /// The socket path.
        path: PathBuf,
        /// What is there and why tend will not remove it.
        reason: String,
    },
    /// A stop request cancelled the start before the daemon was ready.
    #[error("{0:?} was stopped before it became ready")]
    Stopped(String),
    /// The daemon came up at least once, then failed and tend gave up.
    #[error("{name:?} failed: {reason}")]
    Failed {
        /// The process name.
        name: String,
        /// The same text as `ProcessInfo::last_error`.
        reason: String,
    },
    /// The process group survived SIGKILL (a member stuck in the kernel).
    #[error("could not stop {name:?}: {reason}")]
    StopFailed {
        /// The process name.
        name: String,
        /// What is still alive.
        reason: String,
    },
    /// The operation needs the daemon's socket, and it has none.
    #[error("{0:?} has no socket_path; it cannot be called or sent events")]
    NoSocket(String),
    /// An event is larger than the manager accepts.
    #[error("event {event:?} is {size} bytes as JSON; at most {limit} allowed")]
    EventTooLarge {
        /// The event name.
        event: String,
        /// Its serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The manager was dropped while the operation was pending.
    #[error("the manager was dropped while {0:?} was being handled")]
    ManagerGone(String),
    /// The daemon's log file cannot be used: a symlink, a file of another
    /// user, one with several links, or one others may write. Refused at
    /// start, before anything is spawned, so no output goes astray.
    #[error(
        "cannot use the log file {} of {name:?}: {source}; remove it, or set another log_file",
        path.display()
    )]
    LogFile {
        /// The process.
        name: String,
        /// The log file.
        path: std::path::PathBuf,
        /// What was wrong.
        #[source]
        source: io::Error,
    },
    /// A file-system or OS operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What tend was doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The stderr tail under the message: a colon, then its lines, one per
/// line (a front end indents them).
fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
