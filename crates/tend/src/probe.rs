//! Readiness and health probes over the daemon's Unix socket.
//!
//! Readiness waits on the socket file's creation (see [`crate::watch`]) and
//! then connects. `bind` creates the file a moment before `listen` makes it
//! accept; in that gap `connect` is refused, so tend retries with a short
//! backoff that starts with plain yields. A slow safety-net retry covers
//! file systems that deliver no inotify events.

use std::{io, path::Path, time::Duration};

use tokio::{net::UnixStream, time::Instant};

use crate::{config::HealthProbe, watch::SocketWatcher};

/// What a connect attempt says about a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketStatus {
    /// Something accepted (or queued) the connection.
    Accepting,
    /// The file exists but nothing listens (bound only, or a stale file).
    Refused,
    /// No file at that path.
    Missing,
}

/// Tries one connection to `path`.
pub(crate) async fn probe_once(path: &Path) -> SocketStatus {
    match UnixStream::connect(path).await {
        Ok(_) => SocketStatus::Accepting,
        Err(e) => classify(&e),
    }
}

fn classify(e: &io::Error) -> SocketStatus {
    match e.kind() {
        io::ErrorKind::NotFound => SocketStatus::Missing,
        // A full backlog still means a listener is there.
        io::ErrorKind::WouldBlock => SocketStatus::Accepting,
        _ => SocketStatus::Refused,
    }
}

/// Longest pause between two readiness attempts when no event comes.
const SAFETY_NET_INTERVAL: Duration = Duration::from_millis(250);
/// Yields before the bind→listen backoff starts sleeping.
const LISTEN_GAP_YIELDS: u32 = 32;

/// Resolves once `path` accepts a connection. Never returns otherwise: the
/// caller races it against the child's exit and the startup deadline.
pub(crate) async fn wait_ready(watcher: Option<&SocketWatcher>, path: &Path) {
    // Watch before the first attempt, so a bind between the attempt and
    // the wait is not missed.
    let watch = watcher.and_then(|w| match w.watch(path) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::debug!(?path, error = %e, "cannot watch socket directory; polling");
            None
        }
    });
    let mut refused_in_a_row = 0u32;
    let mut pause = Duration::from_millis(1);
    loop {
        match probe_once(path).await {
            SocketStatus::Accepting => return,
            SocketStatus::Refused => {
                // Bound, not yet listening: listen() normally follows within
                // microseconds, so yield a few times before sleeping.
                refused_in_a_row += 1;
                if refused_in_a_row <= LISTEN_GAP_YIELDS {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SAFETY_NET_INTERVAL);
                }
            }
            SocketStatus::Missing => {
                refused_in_a_row = 0;
                match &watch {
                    Some(watch) => {
                        let _ = tokio::time::timeout(SAFETY_NET_INTERVAL, watch.appeared()).await;
                    }
                    None => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(SAFETY_NET_INTERVAL);
                    }
                }
            }
        }
    }
}

/// One health check within `timeout`: a connect, and for
/// [`HealthProbe::Ping`] a `ping` request answered by a JSON-RPC reply.
pub(crate) async fn health_check(
    path: &Path,
    probe: HealthProbe,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let check = async {
        let stream = match UnixStream::connect(path).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(format!(
                    "socket {path:?} backlog is full (the daemon is not accepting)"
                ));
            }
            Err(e) => return Err(format!("connect to {path:?} failed: {e}")),
        };
        match probe {
            HealthProbe::Connect => Ok(()),
            HealthProbe::Ping => ping(stream).await,
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} {path:?} timed out after {:?}",
            match probe {
                HealthProbe::Connect => "connect to",
                HealthProbe::Ping => "ping over",
            },
            started.elapsed()
        )),
    }
}

/// Longest ping reply read; a daemon answering more is not healthy.
const MAX_PING_REPLY_BYTES: u64 = 64 * 1024;

async fn ping(stream: UnixStream) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"tend-health\",\"method\":\"ping\"}\n")
        .await
        .map_err(|e| format!("sending ping failed: {e}"))?;
    let mut line = String::new();
    BufReader::new(read.take(MAX_PING_REPLY_BYTES))
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading the ping reply failed: {e}"))?;
    if line.is_empty() {
        return Err("the daemon closed the connection without answering ping".into());
    }
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(reply) if reply.get("jsonrpc").and_then(|v| v.as_str()) == Some("2.0") => Ok(()),
        _ => Err(format!(
            "ping reply is not JSON-RPC 2.0: {:?}",
            line.trim_end()
        )),
    }
}

/// Why a socket path cannot be used for a new daemon.
#[derive(Debug)]
pub(crate) enum SocketBlocked {
    /// Something accepts connections there.
    InUse,
    /// A file that is not a socket (or a stale socket tend could not
    /// remove) is in the way.
    Io(io::Error),
}

/// Makes `path` ready for a new daemon to bind: creates its directory
/// (0700) if missing, removes a stale socket left by a dead daemon, and
/// refuses a socket something is listening on or a file that is not a
/// socket.
pub(crate) async fn prepare_socket(path: &Path) -> Result<(), SocketBlocked> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            crate::orphans::create_private_dir(dir).map_err(SocketBlocked::Io)?;
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SocketBlocked::Io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketBlocked::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way; tend will not delete it",
        )));
    }
    match probe_once(path).await {
        SocketStatus::Accepting => Err(SocketBlocked::InUse),
        SocketStatus::Missing => Ok(()),
        SocketStatus::Refused => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SocketBlocked::Io(e)),
        },
    }
}
