//! Readiness and health probes over the daemon's Unix socket.
//!
//! Readiness waits on the socket file's creation (see [`crate::watch`]) and
//! then connects. `bind` creates the file a moment before `listen` makes it
//! accept; in that gap `connect` is refused, so tend retries after short
//! sleeps on a microsecond timer (20 µs, doubling to 200 µs). A slow
//! safety-net retry covers file systems that deliver no inotify events.
//!
//! Connects are made without the reactor: a non-blocking connect to a Unix
//! stream socket never waits, so there is nothing to register.

use std::{io, os::fd::OwnedFd, path::Path, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UnixStream,
    time::Instant,
};

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

/// Connects to `path` without waiting. A non-blocking connect to a Unix
/// stream socket completes at once, is refused, or reports a full backlog
/// (`EAGAIN`); unlike a connect through tokio, it costs no registration
/// with the reactor, which matters at one check per daemon per second.
pub(crate) fn connect_now(path: &Path) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&socket, &SocketAddrUnix::new(path)?)?;
    Ok(socket)
}

/// Tries one connection to `path`.
pub(crate) fn probe_once(path: &Path) -> SocketStatus {
    match connect_now(path) {
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
/// First pause after a refused connect (bound, not yet listening).
const LISTEN_GAP_FIRST_PAUSE: Duration = Duration::from_micros(20);
/// Longest pause of the fine-grained bind→listen backoff; beyond it the
/// millisecond timer of the runtime is precise enough.
const LISTEN_GAP_MAX_FINE_PAUSE: Duration = Duration::from_micros(200);
/// How long the fine-grained backoff goes on before it gives way to the
/// runtime's timer (a daemon doing real work between bind and listen).
const LISTEN_GAP_FINE_WINDOW: Duration = Duration::from_millis(20);

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
    let mut refused_since: Option<Instant> = None;
    let mut fine_pause = LISTEN_GAP_FIRST_PAUSE;
    let mut pause = Duration::from_millis(1);
    loop {
        match probe_once(path) {
            SocketStatus::Accepting => return,
            SocketStatus::Refused => {
                // Bound, not yet listening: listen() normally follows within
                // microseconds. Sleep for real — spinning would keep the
                // daemon off a busy CPU — with a timer finer than the
                // runtime's millisecond wheel, for a while.
                let since = *refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() < LISTEN_GAP_FINE_WINDOW {
                    fine_sleep(fine_pause).await;
                    fine_pause = (fine_pause * 2).min(LISTEN_GAP_MAX_FINE_PAUSE);
                } else {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SAFETY_NET_INTERVAL);
                }
            }
            SocketStatus::Missing => {
                refused_since = None;
                fine_pause = LISTEN_GAP_FIRST_PAUSE;
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

/// Sleeps for `duration` with microsecond precision, on a timerfd the
/// reactor watches (tokio's own timer has millisecond ticks). Falls back
/// to the runtime's timer if no timerfd can be made.
async fn fine_sleep(duration: Duration) {
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    let armed = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )
    .and_then(|fd| {
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: duration.as_secs() as _,
                tv_nsec: duration.subsec_nanos().max(1) as _,
            },
        };
        timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
        Ok(fd)
    });
    // SAFETY: the timerfd is moved into the AsyncFd, which owns it until
    // it is dropped at the end of this function.
    match armed.map(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) {
        Ok(Ok(timer)) => {
            let _ = timer.readable().await;
        }
        _ => tokio::time::sleep(duration).await,
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
        let stream = connect_for_check(path)?;
        match probe {
            // Without the health board, an accept check is a connect.
            HealthProbe::Connect | HealthProbe::Accept => Ok(()),
            HealthProbe::Ping => {
                let stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(stream))
                    .map_err(|e| format!("cannot use the connection to {path:?}: {e}"))?;
                ping(stream).await
            }
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} {path:?} timed out after {:?}",
            match probe {
                HealthProbe::Connect | HealthProbe::Accept => "connect to",
                HealthProbe::Ping => "ping over",
            },
            started.elapsed()
        )),
    }
}

/// A connect for a health check, with the failure described.
fn connect_for_check(path: &Path) -> Result<OwnedFd, String> {
    match connect_now(path) {
        Ok(stream) => Ok(stream),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(format!(
            "socket {path:?} backlog is full (the daemon is not accepting)"
        )),
        Err(e) => Err(format!("connect to {path:?} failed: {e}")),
    }
}

/// A connect health check: connect, then close at once.
pub(crate) fn connect_check(path: &Path) -> Result<(), String> {
    connect_for_check(path).map(drop)
}

/// Connects to `path` and shuts the connection's write side, so the
/// daemon reads end of file as soon as it accepts. Returns the client
/// socket, which the caller keeps open while the connection waits to be
/// accepted, and its inode, by which socket diagnostics list it in the
/// listener's accept queue.
pub(crate) fn plant_connection(path: &Path) -> Result<(OwnedFd, u32), String> {
    let client = connect_for_check(path)?;
    let _ = rustix::net::shutdown(&client, rustix::net::Shutdown::Write);
    let ino = rustix::fs::fstat(&client)
        .map_err(|e| format!("cannot examine the connection to {path:?}: {e}"))?
        .st_ino;
    // Truncated like the kernel's report of it.
    Ok((client, ino as u32))
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
    match probe_once(path) {
        SocketStatus::Accepting => Err(SocketBlocked::InUse),
        SocketStatus::Missing => Ok(()),
        SocketStatus::Refused => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SocketBlocked::Io(e)),
        },
    }
}
