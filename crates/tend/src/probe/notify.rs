//! The systemd notify protocol (`sd_notify(3)`): a datagram socket per
//! daemon, named in its `NOTIFY_SOCKET`, on which it reports `READY=1`,
//! `STATUS=...`, `WATCHDOG=1` and the rest.
//!
//! The socket lives in `<state dir>/notify`, a directory only this user can
//! enter (0700, opened once and checked, see [`crate::private_dir`]), so no
//! other local user can reach it. Processes of this user can, and so can
//! another daemon of the same manager: every datagram carries its sender's
//! credentials (`SO_PASSCRED`, `SCM_CREDENTIALS`, filled in by the kernel,
//! never by the sender), and only one from a member of the daemon's cgroup
//! (with cgroup containment) or of its process group counts. Anything else
//! — a stranger's datagram, one without credentials, one longer than
//! [`MAX_DATAGRAM`] (truncated), descriptors passed along (closed at once)
//! — is dropped with a debug log line, never a panic or a hang. Like
//! systemd, tend trusts a PID for the instant it checks it: a sender that
//! exits and whose PID is reused by a member between the send and the check
//! would count, a race the kernel gives no way to close for datagrams.

use std::{
    ffi::OsString,
    io,
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SocketFlags,
    SocketType,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{cgroup::DaemonCgroup, private_dir::PrivateDir};

/// The longest datagram read whole; systemd reads at most this much too
/// (`PIPE_BUF`). A longer one is truncated by the kernel and dropped.
pub(crate) const MAX_DATAGRAM: usize = 4096;

/// The longest `STATUS=` text kept, in characters.
const MAX_STATUS_CHARS: usize = 512;

/// What one datagram said. Unknown assignments are ignored, as systemd
/// does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    /// `READY=1`.
    pub ready: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `STATUS=...`, control characters replaced.
    pub status: Option<String>,
    /// `ERRNO=n`.
    pub errno: Option<i32>,
    /// `MAINPID=n` (still to be checked for membership).
    pub main_pid: Option<u32>,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the daemon asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `WATCHDOG_USEC=n`: a new watchdog interval.
    pub watchdog_usec: Option<u64>,
}

/// Parses one datagram: newline-separated `KEY=VALUE` assignments.
pub(crate) fn parse(datagram: &[u8]) -> Notification {
    let mut n = Notification::default();
    for line in datagram.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let number = || std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok();
        match key {
            b"READY" => n.ready |= value == b"1",
            b"STOPPING" => n.stopping |= value == b"1",
            b"STATUS" => {
                let text = String::from_utf8_lossy(value);
                n.status = Some(
                    text.chars()
                        .take(MAX_STATUS_CHARS)
                        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                        .collect(),
                );
            }
            b"ERRNO" => n.errno = number().and_then(|e| i32::try_from(e).ok()),
            b"MAINPID" => {
                n.main_pid = number()
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|&p| p > 1)
            }
            b"WATCHDOG" if value == b"1" => n.watchdog = true,
            b"WATCHDOG" if value == b"trigger" => n.watchdog_trigger = true,
            b"WATCHDOG_USEC" => n.watchdog_usec = number().filter(|&u| u > 0),
            _ => {}
        }
    }
    n
}

/// Who may speak for the daemon: the members of its current incarnation.
pub(crate) struct Members<C> {
    /// The incarnation's leader, unreaped while it is supervised, so its
    /// PID cannot name another process.
    pub leader: i32,
    /// The process group the incarnation leads.
    pub pgid: i32,
    /// Its cgroup, with cgroup containment.
    pub cgroup: Option<C>,
}

impl Members<Arc<DaemonCgroup>> {
    /// The same members, borrowed.
    pub fn borrowed(&self) -> Members<&DaemonCgroup> {
        Members {
            leader: self.leader,
            pgid: self.pgid,
            cgroup: self.cgroup.as_deref(),
        }
    }
}

impl Members<&DaemonCgroup> {
    /// Whether `pid` is in the daemon's cgroup, or (without one) in its
    /// process group.
    pub fn contain(&self, pid: i32) -> bool {
        if pid <= 1 {
            return false;
        }
        // The common case, proven without a system call.
        if pid == self.leader {
            return true;
        }
        match self.cgroup {
            Some(cgroup) => cgroup.members().contains(&pid),
            None => rustix::process::Pid::from_raw(pid)
                .and_then(|p| rustix::process::getpgid(Some(p)).ok())
                .is_some_and(|pgid| pgid.as_raw_nonzero().get() == self.pgid),
        }
    }
}

/// Distinguishes the sockets of one process's managers.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

/// One daemon's notify socket; its file is removed when dropped.
pub(crate) struct NotifySocket {
    socket: AsyncFd<OwnedFd>,
    dir: Arc<PrivateDir>,
    name: OsString,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a new socket in `dir` (the manager's private `notify`
    /// directory), under a name no other socket of this process has: the
    /// process's PID and a counter, so the path stays short.
    pub fn bind(dir: Arc<PrivateDir>) -> io::Result<Self> {
        let name = OsString::from(format!(
            "{}.{}",
            std::process::id(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        ));
        let path = dir.path().join(&name);
        if path.as_os_str().len() > crate::defaults::MAX_SOCKET_PATH_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the notify socket path {path:?} is longer than Unix sockets allow; \
                     choose a shorter state directory"
                ),
            ));
        }
        sweep_dead(&dir);
        // A file of that name is a leftover of a dead process with this
        // PID: the directory is this user's alone.
        match dir.remove_file(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::sockopt::set_socket_passcred(&fd, true)?;
        let address = rustix::net::SocketAddrUnix::new(&path)?;
        rustix::net::bind(&fd, &address)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
        // until it is dropped; nothing else can close or replace it.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(NotifySocket {
            socket,
            dir,
            name,
            path,
        })
    }

    /// The path the daemon gets in `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram from a member of the daemon; everything else is
    /// dropped. Cancel-safe: a datagram is taken and parsed within one
    /// poll.
    pub async fn next(&self, members: &Members<&DaemonCgroup>) -> Notification {
        loop {
            let Ok(mut guard) = self.socket.readable().await else {
                return std::future::pending().await;
            };
            match guard.try_io(|fd| receive(fd.get_ref().as_fd())) {
                Ok(Ok(Some((pid, datagram)))) => {
                    if members.contain(pid) {
                        return parse(&datagram);
                    }
                    tracing::debug!(
                        path = ?self.path,
                        pid,
                        "notify datagram from a process outside the daemon ignored"
                    );
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(path = ?self.path, error = %e, "notify socket read failed");
                }
                // Not readable after all: wait again.
                Err(_) => {}
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.name);
    }
}

/// Removes the sockets of managers that are gone (named `<pid>.<n>`, the
/// PID no longer alive), left behind when one was killed. Only names of
/// that form are touched, in a directory only this user can write; a PID
/// reused by another process keeps its files, which is harmless.
fn sweep_dead(dir: &PrivateDir) {
    let me = std::process::id();
    let Ok(entries) = dir.entries() else {
        return;
    };
    for name in entries {
        let Some((pid, n)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        let gone = pid != me
            && rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| {
                rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
            });
        if gone {
            let _ = dir.remove_file(&name);
        }
    }
}

/// Reads one datagram: `Some((sender pid, bytes))`, or `None` for one that
/// is dropped (truncated, or without credentials).
fn receive(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<(i32, Vec<u8>)>> {
    let mut buffer = [0u8; MAX_DATAGRAM];
    // Room for the credentials and a few descriptors, which are closed.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        fd,
        &mut [io::IoSliceMut::new(&mut buffer)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut sender = None;
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmCredentials(credentials) => {
                sender = Some(credentials.pid.as_raw_nonzero().get());
            }
            // Descriptors (the fd store) are not kept: dropping closes them.
            RecvAncillaryMessage::ScmRights(fds) => fds.for_each(drop),
            _ => {}
        }
    }
    if received.flags.contains(ReturnFlags::TRUNC) || received.bytes > MAX_DATAGRAM {
        tracing::debug!(bytes = received.bytes, "oversized notify datagram dropped");
        return Ok(None);
    }
    Ok(sender.map(|pid| (pid, buffer[..received.bytes].to_vec())))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn private_dir() -> (tempfile::TempDir, Arc<PrivateDir>) {
        let temp = tempfile::Builder::new()
            .prefix("nt")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = PrivateDir::open_or_create(temp.path().join("n")).unwrap();
        (temp, Arc::new(dir))
    }

    #[tokio::test]
    async fn only_members_are_heard_and_the_file_goes_with_the_socket() {
        let (_temp, dir) = private_dir();
        let socket = NotifySocket::bind(Arc::clone(&dir)).unwrap();
        let path = socket.path().to_path_buf();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let me = std::process::id() as i32;
        // Not the leader, not in the group: this process is a stranger.
        let strangers = Members::<&DaemonCgroup> {
            leader: i32::MAX,
            pgid: i32::MAX,
            cgroup: None,
        };
        let members = Members::<&DaemonCgroup> {
            leader: me,
            pgid: i32::MAX,
            cgroup: None,
        };
        sender.send_to(b"READY=1\nSTATUS=first", &path).unwrap();
        let heard = tokio::time::timeout(Duration::from_millis(200), socket.next(&strangers)).await;
        assert!(heard.is_err(), "a stranger's datagram was taken: {heard:?}");
        sender.send_to(&[b'x'; MAX_DATAGRAM + 1], &path).unwrap();
        sender.send_to(b"READY=1\nSTATUS=second", &path).unwrap();
        let heard = socket.next(&members).await;
        assert!(heard.ready);
        assert_eq!(
            heard.status.as_deref(),
            Some("second"),
            "the oversized one is dropped"
        );
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn sockets_of_dead_managers_are_swept() {
        let (_temp, dir) = private_dir();
        let me = std::process::id();
        for name in [
            "999999999.0".to_owned(),
            format!("{me}.7"),
            "notes.txt".to_owned(),
        ] {
            dir.create_new(&name).unwrap();
        }
        sweep_dead(&dir);
        let mut left = dir.entries().unwrap();
        left.sort();
        assert_eq!(
            left,
            [
                OsString::from(format!("{me}.7")),
                OsString::from("notes.txt")
            ]
        );
    }

    #[test]
    fn assignments_are_read_and_the_rest_ignored() {
        let n = parse(b"READY=1\nSTATUS=Accepting connections\nMAINPID=4242\nX=1\n\ngarbage");
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("Accepting connections"));
        assert_eq!(n.main_pid, Some(4242));
        assert!(!n.watchdog && !n.stopping);
        let n = parse(b"WATCHDOG=1\nWATCHDOG_USEC=500000\nERRNO=2\nSTOPPING=1");
        assert!(n.watchdog && n.stopping && !n.ready);
        assert_eq!((n.watchdog_usec, n.errno), (Some(500_000), Some(2)));
        assert!(parse(b"WATCHDOG=trigger").watchdog_trigger);
        assert_eq!(parse(b"READY=0"), Notification::default());
        assert_eq!(parse(b"MAINPID=1").main_pid, None);
        assert_eq!(parse(b"MAINPID=x").main_pid, None);
        assert_eq!(parse(b"ERRNO=99999999999").errno, None);
        assert_eq!(parse(b"WATCHDOG_USEC=0").watchdog_usec, None);
        assert_eq!(parse(&[0xff; 100]), Notification::default());
        let n = parse(b"STATUS=a\x1b[31mb\xffc");
        assert_eq!(n.status.as_deref(), Some("a\u{fffd}[31mb\u{fffd}c"));
        let long = [b"STATUS=".as_slice(), &[b'x'; 4000]].concat();
        assert_eq!(parse(&long).status.unwrap().len(), MAX_STATUS_CHARS);
    }
}
