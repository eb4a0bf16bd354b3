//! Process states, the transition table, and the snapshots tend publishes.
//!
//! The table is pure data: [`next_state`] maps a state and an
//! [`Occurrence`] to the next state, or `None` when the occurrence does not
//! apply. The supervisor never assigns a state directly; it feeds
//! occurrences through this table, so every legal move is listed here and
//! tested row by row.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Serialize, Serializer};

use crate::cgroup::{Containment, ResourceUsage};

/// Where a supervised process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Being spawned, waiting for readiness, or waiting to be restarted.
    Starting,
    /// Its socket accepted a connection (or it has no socket and was spawned).
    Running,
    /// A stop was requested; its process group is being terminated.
    Stopping,
    /// Stopped on request, or completed: it exited with code 0 and its
    /// restart policy let it rest (see [`ProcessInfo::completed`]). No
    /// member of its process group is alive.
    Stopped,
    /// It failed and tend gave up; `last_error` says why.
    Error,
}

impl ProcessState {
    /// All five states, in lifecycle order.
    pub const ALL: [ProcessState; 5] = [
        ProcessState::Starting,
        ProcessState::Running,
        ProcessState::Stopping,
        ProcessState::Stopped,
        ProcessState::Error,
    ];

    /// The lowercase name used in events, JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Stopping => "stopping",
            ProcessState::Stopped => "stopped",
            ProcessState::Error => "error",
        }
    }

    /// Whether the state machine can move from this state straight to
    /// `next` (docs/STATES.md): every [`ProcessEvent`] has `from` and `to`
    /// for which this holds, so a consumer can check the stream it sees.
    pub fn can_change_to(self, next: ProcessState) -> bool {
        is_legal_transition(self, next)
    }

    /// Whether a supervisor is still at work on the process: it may have a
    /// live process group, and a new start of the same name is refused.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ProcessState::Starting | ProcessState::Running | ProcessState::Stopping
        )
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment, for tables.
        f.pad(self.as_str())
    }
}

/// Something that happened to a supervised process; the input of the
/// transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Occurrence {
    /// `start_process` (or a restart request) was accepted.
    Start,
    /// The socket accepted a connection, or a socket-less daemon was spawned.
    Ready,
    /// The incarnation failed: exited, timed out, failed to spawn, or failed
    /// its health checks. `will_restart` tells whether the restart budget
    /// allows another attempt.
    Failed {
        /// Another attempt will be made after the restart delay.
        will_restart: bool,
    },
    /// The incarnation exited with code 0 after readiness and the restart
    /// policy does not restart it: a one-shot task finished.
    Completed,
    /// The first health check of the incarnation passed. The state stays
    /// `Running`; the event tells dependents waiting for a healthy daemon.
    Healthy,
    /// `stop_process` was called.
    StopRequested,
    /// No member of the process group is alive any more.
    GroupGone,
}

/// The transition table: the state after `occurrence` in state `from`, or
/// `None` when the occurrence has no effect in that state.
pub(crate) fn next_state(from: ProcessState, occurrence: Occurrence) -> Option<ProcessState> {
    use Occurrence as O;
    use ProcessState as S;
    match (from, occurrence) {
        (S::Stopped | S::Error, O::Start) => Some(S::Starting),
        (S::Starting, O::Ready) => Some(S::Running),
        (S::Starting | S::Running, O::Failed { will_restart: true }) => Some(S::Starting),
        (
            S::Starting | S::Running,
            O::Failed {
                will_restart: false,
            },
        ) => Some(S::Error),
        (S::Running, O::Completed) => Some(S::Stopped),
        (S::Running, O::Healthy) => Some(S::Running),
        (S::Starting | S::Running, O::StopRequested) => Some(S::Stopping),
        (S::Stopping, O::GroupGone) => Some(S::Stopped),
        // The group survived SIGKILL: tend cannot honestly say `Stopped`.
        (
            S::Stopping,
            O::Failed {
                will_restart: false,
            },
        ) => Some(S::Error),
        _ => None,
    }
}

/// Whether `from → to` is a move some occurrence can cause.
fn is_legal_transition(from: ProcessState, to: ProcessState) -> bool {
    const ALL_OCCURRENCES: [Occurrence; 8] = [
        Occurrence::Start,
        Occurrence::Ready,
        Occurrence::Completed,
        Occurrence::Healthy,
        Occurrence::Failed { will_restart: true },
        Occurrence::Failed {
            will_restart: false,
        },
        Occurrence::StopRequested,
        Occurrence::GroupGone,
    ];
    ALL_OCCURRENCES
        .iter()
        .any(|&o| next_state(from, o) == Some(to))
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "was killed by signal {signal} ({name})"),
                None => write!(f, "was killed by signal {signal}"),
            },
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// A snapshot of one supervised process, as `process_info` returns it.
/// Fields may be added in any release.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The process name.
    pub name: String,
    /// Its state.
    pub state: ProcessState,
    /// PID of the current incarnation, while one is alive.
    pub pid: Option<u32>,
    /// Consecutive failed health checks of the current incarnation.
    pub failed_health_checks: u32,
    /// Whether a health check of the current incarnation has passed
    /// (false until the first one did, and for a daemon without checks).
    pub passed_health_check: bool,
    /// Restarts in a row since the process last ran stably.
    pub restart_attempts: u32,
    /// Whether the last incarnation ran to its end on its own, exited
    /// with code 0 after readiness, and was left `Stopped` by its
    /// [`RestartPolicy`](crate::RestartPolicy): a finished one-shot task.
    /// Cleared by the next start.
    pub completed: bool,
    /// Why the process last failed, if it did.
    pub last_error: Option<String>,
    /// When the current incarnation became `Running`.
    #[serde(serialize_with = "serialize_unix_ms")]
    pub started_at: Option<SystemTime>,
    /// How long the current incarnation has been `Running`.
    #[serde(serialize_with = "serialize_ms", rename = "uptime_ms")]
    pub uptime: Option<Duration>,
    /// How the previous incarnation ended.
    pub last_exit: Option<ExitStatus>,
    /// How the daemon is contained (set once it was started).
    pub containment: Option<Containment>,
    /// CPU time and memory of the live incarnation, while one is alive:
    /// of its whole cgroup with cgroup containment, of its leader alone
    /// with process-group containment (see [`ResourceUsage`]).
    pub usage: Option<ResourceUsage>,
    /// Whether tend checked that the daemon is ready before calling it
    /// `Running`: false with [`Readiness::None`](crate::Readiness::None)
    /// (or no socket and the default readiness), where `Running` only means
    /// spawned ("running, readiness not checked").
    pub readiness_checked: bool,
    /// The daemon's last `STATUS=` text over the notify socket.
    pub status_text: Option<String>,
    /// The daemon's last `ERRNO=` over the notify socket.
    pub status_errno: Option<i32>,
    /// The main process the daemon named with `MAINPID=` over the notify
    /// socket (accepted only for a member of its cgroup or process group).
    pub main_pid: Option<u32>,
}

impl ProcessInfo {
    /// Whether a health check of the current incarnation has completed,
    /// passed or failed: until then its health is unknown, not good.
    pub fn health_checked(&self) -> bool {
        self.passed_health_check || self.failed_health_checks > 0
    }

    pub(crate) fn new(name: &str) -> Self {
        ProcessInfo {
            name: name.to_owned(),
            state: ProcessState::Stopped,
            pid: None,
            failed_health_checks: 0,
            passed_health_check: false,
            restart_attempts: 0,
            completed: false,
            last_error: None,
            started_at: None,
            uptime: None,
            last_exit: None,
            containment: None,
            usage: None,
            readiness_checked: true,
            status_text: None,
            status_errno: None,
            main_pid: None,
        }
    }
}

/// A state change, as [`crate::BackgroundProcessManager::subscribe`] delivers it.
/// Fields may be added in any release.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProcessEvent {
    /// The process name.
    pub name: String,
    /// The state before.
    pub from: ProcessState,
    /// The state after.
    pub to: ProcessState,
    /// When the change happened.
    #[serde(serialize_with = "serialize_time_ms")]
    pub time: SystemTime,
    /// Why, in words ("ready", "exited with code 1", "stop requested").
    pub reason: String,
    /// PID of the incarnation concerned, if any.
    pub pid: Option<u32>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn serialize_time_ms<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(unix_ms(*time))
}

fn serialize_unix_ms<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.serialize_some(&unix_ms(*t)),
        None => s.serialize_none(),
    }
}

fn serialize_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

pub(crate) fn serialize_duration_us<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Occurrence as O;
    use ProcessState as S;

    /// Every (state, occurrence) pair and what the table must say.
    #[test]
    fn transition_table() {
        let restart = O::Failed { will_restart: true };
        let give_up = O::Failed {
            will_restart: false,
        };
        let rows: &[(S, O, Option<S>)] = &[
            (S::Stopped, O::Start, Some(S::Starting)),
            (S::Error, O::Start, Some(S::Starting)),
            (S::Starting, O::Start, None),
            (S::Running, O::Start, None),
            (S::Stopping, O::Start, None),
            (S::Starting, O::Ready, Some(S::Running)),
            (S::Running, O::Ready, None),
            (S::Stopping, O::Ready, None),
            (S::Stopped, O::Ready, None),
            (S::Error, O::Ready, None),
            (S::Starting, restart, Some(S::Starting)),
            (S::Running, restart, Some(S::Starting)),
            (S::Stopping, restart, None),
            (S::Stopped, restart, None),
            (S::Error, restart, None),
            (S::Starting, give_up, Some(S::Error)),
            (S::Running, give_up, Some(S::Error)),
            (S::Stopping, give_up, Some(S::Error)),
            (S::Stopped, give_up, None),
            (S::Error, give_up, None),
            (S::Running, O::Completed, Some(S::Stopped)),
            (S::Starting, O::Completed, None),
            (S::Stopping, O::Completed, None),
            (S::Stopped, O::Completed, None),
            (S::Error, O::Completed, None),
            (S::Running, O::Healthy, Some(S::Running)),
            (S::Starting, O::Healthy, None),
            (S::Stopping, O::Healthy, None),
            (S::Stopped, O::Healthy, None),
            (S::Error, O::Healthy, None),
            (S::Starting, O::StopRequested, Some(S::Stopping)),
            (S::Running, O::StopRequested, Some(S::Stopping)),
            (S::Stopping, O::StopRequested, None),
            (S::Stopped, O::StopRequested, None),
            (S::Error, O::StopRequested, None),
            (S::Stopping, O::GroupGone, Some(S::Stopped)),
            (S::Starting, O::GroupGone, None),
            (S::Running, O::GroupGone, None),
            (S::Stopped, O::GroupGone, None),
            (S::Error, O::GroupGone, None),
        ];
        for &(from, occurrence, expected) in rows {
            assert_eq!(
                next_state(from, occurrence),
                expected,
                "{from} + {occurrence:?}"
            );
        }
    }

    #[test]
    fn stopped_is_only_reached_through_stopping_or_by_completing() {
        for from in S::ALL {
            assert_eq!(
                is_legal_transition(from, S::Stopped),
                matches!(from, S::Stopping | S::Running),
                "{from} -> stopped"
            );
        }
        assert_eq!(next_state(S::Running, O::Completed), Some(S::Stopped));
    }

    #[test]
    fn states_serialise_lowercase() {
        for state in S::ALL {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
    }

    #[test]
    fn exit_status_reads_like_a_sentence() {
        assert_eq!(ExitStatus::Code(1).to_string(), "exited with code 1");
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
