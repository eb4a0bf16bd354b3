//! Readiness and health probes over the daemon's Unix socket, and (in
//! the submodules) the other kinds: [`notify`], [`tcp`], [`http`],
//! [`exec`] and [`log`] lines.
//!
//! Readiness waits on the socket file's creation (see [`crate::watch`]) and
//! then connects. `bind` creates the file a moment before `listen` makes it
//! accept; in that gap `connect` is refused, so tend retries after short
//! sleeps on a microsecond timer (20 µs, doubling to 200 µs), and past
//! 20 ms every 2 ms for as long as the gap lasts. A slow
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

use crate::{
    children::ChildTable,
    config::{BackgroundProcessConfig, HealthProbe},
    watch::SocketWatcher,
};

pub(crate) mod exec;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod notify;
pub(crate) mod tcp;
pub(crate) mod tcpdiag;

/// One health check run by the supervisor (the board runs the batched
/// ones): over the daemon's socket, or against its other target.
pub(crate) async fn supervisor_check(
    probe: &HealthProbe,
    config: &BackgroundProcessConfig,
    children: &ChildTable,
    timeout: Duration,
) -> Result<(), String> {
    match probe {
        HealthProbe::Connect | HealthProbe::Accept | HealthProbe::Ping => {
            match &config.socket_path {
                Some(path) => health_check(path, probe, timeout).await,
                None => Err("no socket to check".into()),
            }
        }
        HealthProbe::Tcp(tcp) => {
            let address = tcp.address;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect to {address} failed: {e}")),
                Err(_) => Err(format!("connect to {address} timed out after {timeout:?}")),
            }
        }
        HealthProbe::Http(probe) => {
            let target = probe.target()?;
            http::check(
                &target,
                config.socket_path.as_deref(),
                probe.expect_status,
                timeout,
            )
            .await
        }
        HealthProbe::Exec(probe) => exec::check(probe, config, children, timeout).await,
    }
}

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
/// Longest pause between connects while the socket is bound but does not
/// listen yet, past the fine window. A pre-fork server (uvicorn with
/// workers) binds in its parent and listens in its workers hundreds of
/// milliseconds later; backing off to the safety-net interval there made
/// `Running` come up to 250 ms after the daemon served. A refused connect
/// costs a few microseconds, so one every 2 ms for the length of the gap
/// is cheap, and the listen is noticed within about that.
const LISTEN_GAP_MAX_PAUSE: Duration = Duration::from_millis(2);

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
                    tokio::time::sleep(pause.min(LISTEN_GAP_MAX_PAUSE)).await;
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
pub(crate) async fn fine_sleep(duration: Duration) {
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
    probe: &HealthProbe,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let check = async {
        let stream = connect_for_check(path)?;
        match probe {
            // Without the health board, an accept check is a connect.
            HealthProbe::Ping => {
                let stream = UnixStream::from_std(std::os::unix::net::UnixStream::from(stream))
                    .map_err(|e| format!("cannot use the connection to {path:?}: {e}"))?;
                ping(stream).await
            }
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} {path:?} timed out after {}",
            match probe {
                HealthProbe::Ping => "ping over",
                _ => "connect to",
            },
            crate::human::duration(started.elapsed())
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
    /// A socket is there that tend cannot prove stale, so it is left
    /// alone; the text says what is there and why.
    NotStale(String),
    /// A file that is not a socket is in the way, or the directory or the
    /// stale socket could not be handled.
    Io(io::Error),
}

/// What a stream connect to an existing socket file proves about it.
#[derive(Debug)]
enum Takeover {
    /// A listener accepted (or its backlog is full).
    Accepting,
    /// `ECONNREFUSED`: no live socket is bound to the file (or a stream
    /// socket is bound without listening): the file may be removed.
    Stale,
    /// The file went away meanwhile.
    Missing,
    /// Anything else proves nothing; the text says what is there.
    Unproven(String),
}

/// Classifies a stream connect's failure for [`prepare_socket`]. Only
/// `ECONNREFUSED` proves staleness: `EPROTOTYPE` means a live datagram or
/// seqpacket socket is bound there, `EACCES`/`EPERM` that tend may not
/// reach it, and any other error is not understood.
fn classify_takeover(e: &io::Error) -> Takeover {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Takeover::Stale,
        Some(libc::ENOENT) => Takeover::Missing,
        // A full backlog still means a listener is there.
        Some(libc::EAGAIN) => Takeover::Accepting,
        Some(libc::EPROTOTYPE) => Takeover::Unproven(
            "is bound by a live socket of another type (datagram or seqpacket) — \
             another program uses it"
                .into(),
        ),
        Some(libc::EACCES | libc::EPERM) => Takeover::Unproven(format!(
            "cannot be probed ({e}), so tend cannot prove it is stale"
        )),
        _ => Takeover::Unproven(format!(
            "cannot be probed (connect failed: {e}), so tend cannot prove it is stale"
        )),
    }
}

/// Makes `path` ready for a new daemon to bind: creates its directory
/// (0700) if missing, removes a stale socket left by a dead daemon, and
/// refuses a socket something is listening on or a file that is not a
/// socket. `daemon_owner` is the uid and gid the daemon runs as, when the
/// config sets a user or group.
///
/// A socket file is removed only when all of this holds: a stream connect
/// to it is refused (`ECONNREFUSED`, no live socket bound there), it
/// belongs to this user or to the daemon's, and it is still the very file
/// probed (same device and inode) just before the unlink.
pub(crate) async fn prepare_socket(
    path: &Path,
    daemon_owner: Option<(u32, u32)>,
) -> Result<(), SocketBlocked> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            crate::orphans::create_private_dir(dir).map_err(SocketBlocked::Io)?;
            // A daemon of another user must be able to bind in it.
            if let Some((uid, gid)) = daemon_owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(SocketBlocked::Io)?;
            }
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
    let owner = || describe_owner(meta.uid());
    let takeover = match connect_now(path) {
        Ok(_) => Takeover::Accepting,
        Err(e) => classify_takeover(&e),
    };
    match takeover {
        Takeover::Accepting => Err(SocketBlocked::InUse),
        Takeover::Missing => Ok(()),
        Takeover::Unproven(what) => Err(SocketBlocked::NotStale(format!(
            "the socket there (owned by {}) {what}; tend leaves it alone",
            owner()
        ))),
        Takeover::Stale => {
            let me = rustix::process::geteuid().as_raw();
            let daemons = daemon_owner.map(|(uid, _)| uid);
            if meta.uid() != me && Some(meta.uid()) != daemons {
                return Err(SocketBlocked::NotStale(format!(
                    "the stale socket there is owned by {}, not by this user \
                     (uid {me}) nor the daemon's; tend removes only its own",
                    owner()
                )));
            }
            // Unlink only the file probed: another program may have
            // replaced it since (a narrow window remains between this
            // check and the unlink, which no system call closes).
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
                Ok(_) => {
                    return Err(SocketBlocked::NotStale(
                        "the stale socket there was replaced by another file while tend \
                         probed it; tend leaves the new one alone"
                            .into(),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(SocketBlocked::Io(e)),
            }
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(SocketBlocked::Io(e)),
            }
        }
    }
}

/// `uid N`, with the user's name when `/etc/passwd` has it cheaply.
fn describe_owner(uid: u32) -> String {
    let name = std::fs::read("/etc/passwd").ok().and_then(|passwd| {
        passwd.split(|&b| b == b'\n').find_map(|line| {
            let mut fields = line.split(|&b| b == b':');
            let name = fields.next()?;
            let id = fields.nth(1)?;
            (std::str::from_utf8(id).ok()?.parse::<u32>().ok()? == uid)
                .then(|| String::from_utf8_lossy(name).into_owned())
        })
    });
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn only_a_refused_stream_connect_proves_a_socket_stale() {
        assert!(matches!(
            classify_takeover(&os(libc::ECONNREFUSED)),
            Takeover::Stale
        ));
        assert!(matches!(
            classify_takeover(&os(libc::ENOENT)),
            Takeover::Missing
        ));
        assert!(matches!(
            classify_takeover(&os(libc::EAGAIN)),
            Takeover::Accepting
        ));
        for errno in [
            libc::EPROTOTYPE,
            libc::EACCES,
            libc::EPERM,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EIO,
        ] {
            assert!(
                matches!(classify_takeover(&os(errno)), Takeover::Unproven(_)),
                "errno {errno}"
            );
        }
        let Takeover::Unproven(what) = classify_takeover(&os(libc::EPROTOTYPE)) else {
            unreachable!()
        };
        assert!(what.contains("datagram or seqpacket"), "{what}");
        let Takeover::Unproven(what) = classify_takeover(&os(libc::EACCES)) else {
            unreachable!()
        };
        assert!(what.contains("cannot prove it is stale"), "{what}");
    }

    /// Readiness keeps its meaning: anything but "missing" and "accepting"
    /// is waited on as the bind→listen gap.
    #[test]
    fn readiness_classification_is_unchanged() {
        assert_eq!(classify(&os(libc::ECONNREFUSED)), SocketStatus::Refused);
        assert_eq!(classify(&os(libc::EPROTOTYPE)), SocketStatus::Refused);
        assert_eq!(classify(&os(libc::EACCES)), SocketStatus::Refused);
        assert_eq!(classify(&os(libc::ENOENT)), SocketStatus::Missing);
        assert_eq!(classify(&os(libc::EAGAIN)), SocketStatus::Accepting);
    }
}
