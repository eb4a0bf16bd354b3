//! The control protocol between `tend up` and its clients: one JSON object
//! per line each way, over the Unix socket in the state directory.
//! `docs/PROTOCOL.md` describes it for clients in other languages; these
//! types are the reference.

use std::{path::PathBuf, time::SystemTime};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tend::{Containment, LogLine, ProcessEvent, ProcessInfo, ProcessState, ResourceUsage, Stream};

/// Longest request line the supervisor reads; a longer one is answered
/// with an error and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Longest response line a client reads (a status of many daemons or a
/// long log tail is far below this).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Lines a `logs` request returns when it names no count.
pub const DEFAULT_LOG_LINES: usize = 100;

/// A request, tagged by its `cmd` field. Unknown fields are ignored, so
/// newer clients can send optional fields to older supervisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Who is serving this socket.
    Info,
    /// Snapshots of every daemon, or only of `name`.
    Status {
        /// One daemon, or all when absent or null.
        #[serde(default)]
        name: Option<String>,
    },
    /// Start a daemon of the config; answered once it is running.
    Start {
        /// The daemon.
        name: String,
    },
    /// Stop a daemon; answered once its process group is gone.
    Stop {
        /// The daemon.
        name: String,
    },
    /// Stop (if active) and start a daemon; answered once it is running.
    Restart {
        /// The daemon.
        name: String,
    },
    /// The daemon's recent output, then (with `follow`) new lines as they
    /// come until the client disconnects. Without a name, the output of
    /// every daemon, interleaved in time order, each line naming its
    /// daemon.
    Logs {
        /// The daemon; every daemon when absent or null.
        #[serde(default)]
        name: Option<String>,
        /// How many recent lines to send first.
        #[serde(default = "default_log_lines")]
        lines: usize,
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
    },
    /// Reread the config file and apply it: start new daemons, stop
    /// removed ones, restart those whose settings changed, leave the rest
    /// running. A file with problems is refused whole (the error lists
    /// them) and nothing changes. Answered once every change is made.
    Reload,
    /// Stop every daemon and the supervisor. Answered at once; the
    /// connection then stays open until the supervisor has finished, so its
    /// end tells the client that everything is down.
    Down,
    /// Call a JSON-RPC method of a daemon over its persistent connection;
    /// answered with the result, or the daemon's error, once it replies or
    /// the timeout passes.
    Call {
        /// The daemon.
        name: String,
        /// The JSON-RPC method.
        method: String,
        /// Its params: an object or an array; absent or null sends none.
        #[serde(default)]
        params: Value,
        /// How long to wait for the reply, in milliseconds (connecting and
        /// sending included); [`DEFAULT_CALL_TIMEOUT_MS`] when absent.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// A live view: a snapshot of every daemon, then each state change as
    /// it happens and usage figures every `usage_interval_ms`, until the
    /// client disconnects.
    Watch {
        /// How often to send CPU, memory and last log lines, in
        /// milliseconds; [`DEFAULT_USAGE_INTERVAL_MS`] when absent, at
        /// least [`MIN_USAGE_INTERVAL_MS`].
        #[serde(default)]
        usage_interval_ms: Option<u64>,
    },
    /// Publish an event to every daemon subscribed to it.
    Publish {
        /// The event name.
        event: String,
        /// Any JSON; null when absent.
        #[serde(default)]
        data: Value,
    },
}

/// Usage interval of a `watch` request that names none: 1 s.
pub const DEFAULT_USAGE_INTERVAL_MS: u64 = 1_000;
/// Shortest usage interval a `watch` may ask for: reading every daemon's
/// usage is not free.
pub const MIN_USAGE_INTERVAL_MS: u64 = 200;

/// Timeout of a `call` request that names none: 30 s.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = tend::rpc::DEFAULT_TIMEOUT.as_millis() as u64;

fn default_log_lines() -> usize {
    DEFAULT_LOG_LINES
}

/// A response. `ok` says whether the request succeeded; `error` says why
/// not. The other fields are present only for the requests that fill them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure, where a client acts on it (an unknown daemon
    /// is a usage error, exit code 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// `status`: the daemons, sorted by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessStatus>>,
    /// `start`, `stop`, `restart`: the daemon after the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessStatus>,
    /// `logs`: the recent lines, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogEntry>>,
    /// `logs` with `follow`: one new line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<LogEntry>,
    /// `logs` with `follow`: this many lines were dropped because the
    /// client read too slowly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// `info` and `down`: the supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<SupervisorInfo>,
    /// `call`: the method's result. Present (possibly `null`) exactly when
    /// the call succeeded.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub result: Option<Value>,
    /// `call`: the daemon's JSON-RPC error object, when it answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_error: Option<RpcErrorObject>,
    /// `publish`: how many daemons the event was queued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    /// `reload`: what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadSummary>,
    /// Things the user should know besides the outcome, one sentence
    /// each: dependents stopped along with a daemon, a config file
    /// changed since it was loaded, daemons that failed to start on a
    /// reload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// `watch`: a state change (with `process`, the daemon after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventEntry>,
    /// `watch`: CPU, memory and the last log line of every daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Sample>>,
}

/// What a `reload` changed, by daemon name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSummary {
    /// New in the file, and started.
    pub started: Vec<String>,
    /// New in the file, not started (`autostart = false`).
    pub added: Vec<String>,
    /// Gone from the file, and stopped.
    pub removed: Vec<String>,
    /// Settings changed, and restarted with the new ones.
    pub restarted: Vec<String>,
    /// Settings changed, not running: the new settings apply at the next
    /// start.
    pub updated: Vec<String>,
    /// Unchanged, left alone.
    pub unchanged: Vec<String>,
    /// Not started before because a dependency had failed; started again
    /// now (the reload may have fixed the dependency).
    #[serde(default)]
    pub retried: Vec<String>,
}

/// A failure a client tells apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request names a daemon the config does not have.
    UnknownDaemon,
}

/// A state change of a daemon, as `watch` sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEntry {
    /// The daemon.
    pub name: String,
    /// Its state before.
    pub from: State,
    /// Its state after.
    pub to: State,
    /// When it changed (Unix milliseconds).
    pub time: u64,
    /// Why, in words ("ready", "exited with code 1", "stop requested").
    pub reason: String,
    /// PID of the incarnation concerned, if any.
    pub pid: Option<u32>,
}

impl From<ProcessEvent> for EventEntry {
    fn from(event: ProcessEvent) -> Self {
        EventEntry {
            name: event.name,
            from: event.from.into(),
            to: event.to.into(),
            time: unix_ms(event.time),
            reason: event.reason,
            pid: event.pid,
        }
    }
}

/// What `watch` refreshes on its timer for one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The daemon.
    pub name: String,
    /// CPU time and memory of its live incarnation; null while none is.
    pub usage: Option<Usage>,
    /// The last line of its output, if it wrote any.
    pub last_line: Option<LogEntry>,
}

/// Reads a field that is there as `Some`, also when it is `null` (which
/// serde would otherwise read as `None`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A JSON-RPC error object a daemon answered a call with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcErrorObject {
    /// The error code (`-32601` is "method not found").
    pub code: i64,
    /// The daemon's message.
    pub message: String,
    /// The error's `data` member, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Response {
    /// A success with no payload.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    /// A failure with its reason.
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }

    /// The line to send: compact JSON and a newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            // Only a non-string map key could fail; none of these types has one.
            format!(r#"{{"ok":false,"error":"cannot encode response: {e}"}}"#).into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// A daemon's state, as the protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being spawned, waiting for readiness, or waiting to be restarted.
    Starting,
    /// Up and serving.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Failed; tend gave up (see `last_error`).
    Error,
}

impl State {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Error => "error",
        }
    }
}

impl From<ProcessState> for State {
    fn from(state: ProcessState) -> Self {
        match state {
            ProcessState::Starting => State::Starting,
            ProcessState::Running => State::Running,
            ProcessState::Stopping => State::Stopping,
            ProcessState::Stopped => State::Stopped,
            ProcessState::Error => State::Error,
        }
    }
}

/// One daemon, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// The daemon's name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// PID of its current incarnation, while one is alive.
    pub pid: Option<u32>,
    /// Restarts in a row since it last ran stably.
    pub restart_attempts: u32,
    /// Consecutive failed health checks of the current incarnation.
    pub failed_health_checks: u32,
    /// Failed checks that trigger a restart; null without a health check.
    pub health_check_retries: Option<u32>,
    /// Whether a health check of the current incarnation has completed.
    #[serde(default)]
    pub health_checked: bool,
    /// Why it last failed, if it did; for a daemon not started yet
    /// because of its dependencies, what it waits for ("waiting for db")
    /// or why it will not start ("waiting for db, which failed: ...").
    pub last_error: Option<String>,
    /// It ran to its end, exited 0 and is not restarted (a finished
    /// one-shot task, `restart = "never"` or `"on-failure"`).
    #[serde(default)]
    pub completed: bool,
    /// A health check of its current incarnation passed.
    #[serde(default)]
    pub passed_health_check: bool,
    /// When the current incarnation became running (Unix milliseconds).
    pub started_at: Option<u64>,
    /// How long it has been running, in milliseconds.
    pub uptime_ms: Option<u64>,
    /// How the previous incarnation ended, in words.
    pub last_exit: Option<String>,
    /// How the daemon is contained: `cgroup` or `process-group`; null
    /// until it was started.
    #[serde(default)]
    pub containment: Option<Containment>,
    /// CPU time and memory of its live incarnation; null while none is
    /// alive.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Whether tend checked readiness before calling it running; false
    /// with `ready = { none = true }` (running, readiness not checked).
    #[serde(default = "checked")]
    pub readiness_checked: bool,
    /// The daemon's last `STATUS=` text over the notify socket.
    #[serde(default)]
    pub status_text: Option<String>,
    /// The main PID the daemon named with `MAINPID=` over the notify
    /// socket.
    #[serde(default)]
    pub main_pid: Option<u32>,
}

fn checked() -> bool {
    true
}

/// CPU time and memory of one daemon (see [`tend::ResourceUsage`] for
/// what each covers under each containment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, user and system, in microseconds.
    pub cpu_us: u64,
    /// Memory in use, in bytes; null when it could not be read.
    pub memory_bytes: Option<u64>,
}

impl From<ResourceUsage> for Usage {
    fn from(usage: ResourceUsage) -> Self {
        Usage {
            cpu_us: usage.cpu.as_micros().min(u128::from(u64::MAX)) as u64,
            memory_bytes: usage.memory_bytes,
        }
    }
}

impl ProcessStatus {
    /// The status of a daemon the manager has not started: `starting`
    /// while its environment is prepared, `error` with the reason once
    /// that failed.
    pub fn not_started(
        name: &str,
        state: State,
        error: Option<String>,
        health_check_retries: Option<u32>,
    ) -> Self {
        ProcessStatus {
            name: name.to_owned(),
            state,
            pid: None,
            restart_attempts: 0,
            failed_health_checks: 0,
            health_check_retries,
            health_checked: false,
            last_error: error,
            completed: false,
            passed_health_check: false,
            started_at: None,
            uptime_ms: None,
            last_exit: None,
            containment: None,
            usage: None,
            readiness_checked: true,
            status_text: None,
            main_pid: None,
        }
    }

    /// The status of `info`, with the health-check retries of its config.
    pub fn new(info: ProcessInfo, health_check_retries: Option<u32>) -> Self {
        let health_checked = info.health_checked();
        ProcessStatus {
            name: info.name,
            state: info.state.into(),
            pid: info.pid,
            restart_attempts: info.restart_attempts,
            failed_health_checks: info.failed_health_checks,
            health_check_retries,
            health_checked,
            last_error: info.last_error,
            completed: info.completed,
            passed_health_check: info.passed_health_check,
            started_at: info.started_at.map(unix_ms),
            uptime_ms: info.uptime.map(|d| d.as_millis() as u64),
            last_exit: info.last_exit.map(|exit| exit.to_string()),
            containment: info.containment,
            usage: info.usage.map(Usage::from),
            readiness_checked: info.readiness_checked,
            status_text: info.status_text,
            main_pid: info.main_pid,
        }
    }
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Written by tend: where an incarnation begins.
    Tend,
}

/// One line of a daemon's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The daemon, in the output of every daemon (a `logs` request
    /// without a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The stream it was written to.
    pub stream: StreamName,
    /// When tend read it (Unix milliseconds).
    pub time: u64,
    /// The text, without its newline.
    pub text: String,
}

impl From<LogLine> for LogEntry {
    fn from(line: LogLine) -> Self {
        LogEntry {
            stream: match line.stream {
                Stream::Stdout => StreamName::Stdout,
                Stream::Stderr => StreamName::Stderr,
                Stream::Tend => StreamName::Tend,
            },
            name: None,
            time: unix_ms(line.time),
            text: line.text,
        }
    }
}

/// The supervisor answering on a control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    /// Its PID.
    pub pid: u32,
    /// The config file it runs.
    pub config_file: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The tend version.
    pub version: String,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Request, serde_json::Error> {
        serde_json::from_str(line)
    }

    #[test]
    fn requests_as_documented() {
        assert_eq!(
            parse(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status { name: None }
        );
        assert_eq!(
            parse(r#"{"cmd":"status","name":null}"#).unwrap(),
            Request::Status { name: None }
        );
        assert_eq!(
            parse(r#"{"cmd":"stop","name":"echo"}"#).unwrap(),
            Request::Stop {
                name: "echo".into()
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"logs","name":"echo"}"#).unwrap(),
            Request::Logs {
                name: Some("echo".into()),
                lines: DEFAULT_LOG_LINES,
                follow: false
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"logs","lines":5,"follow":true}"#).unwrap(),
            Request::Logs {
                name: None,
                lines: 5,
                follow: true
            }
        );
        assert_eq!(parse(r#"{"cmd":"down","extra":1}"#).unwrap(), Request::Down);
        assert_eq!(
            parse(r#"{"cmd":"call","name":"echo","method":"ping"}"#).unwrap(),
            Request::Call {
                name: "echo".into(),
                method: "ping".into(),
                params: Value::Null,
                timeout_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"call","name":"e","method":"m","params":[1],"timeout_ms":50}"#)
                .unwrap(),
            Request::Call {
                name: "e".into(),
                method: "m".into(),
                params: serde_json::json!([1]),
                timeout_ms: Some(50)
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"watch"}"#).unwrap(),
            Request::Watch {
                usage_interval_ms: None
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"watch","usage_interval_ms":2000}"#).unwrap(),
            Request::Watch {
                usage_interval_ms: Some(2000)
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"publish","event":"tick"}"#).unwrap(),
            Request::Publish {
                event: "tick".into(),
                data: Value::Null
            }
        );
    }

    #[test]
    fn a_null_result_is_told_apart_from_no_result() {
        let null = Response {
            result: Some(Value::Null),
            ..Response::ok()
        };
        let line = String::from_utf8(null.to_line()).unwrap();
        assert_eq!(line, "{\"ok\":true,\"result\":null}\n");
        let read: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(read.result, Some(Value::Null));
        let read: Response = serde_json::from_str(r#"{"ok":true}"#).unwrap();
        assert_eq!(read.result, None);
    }

    #[test]
    fn bad_requests_are_errors() {
        for bad in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"start"}"#,
            r#"{"cmd":"start","name":7}"#,
            r#"{"cmd":"call","name":"echo"}"#,
            r#"{"cmd":"call","name":"echo","method":"m","timeout_ms":-1}"#,
            r#"{"cmd":"publish"}"#,
            r#"{"name":"x"}"#,
            r#"[1,2]"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_omit_empty_fields() {
        assert_eq!(
            String::from_utf8(Response::ok().to_line()).unwrap(),
            "{\"ok\":true}\n"
        );
        assert_eq!(
            String::from_utf8(Response::error("no").to_line()).unwrap(),
            "{\"ok\":false,\"error\":\"no\"}\n"
        );
    }

    #[test]
    fn states_are_lowercase() {
        for state in ProcessState::ALL {
            let ours = State::from(state);
            assert_eq!(ours.as_str(), state.as_str());
            assert_eq!(
                serde_json::to_string(&ours).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
    }
}
