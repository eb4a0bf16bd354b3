//! A batched liveness probe: one `NETLINK_SOCK_DIAG` dump lists every
//! listening Unix socket on the system.
//!
//! A health check by `connect` costs a socket, a connect that wakes the
//! daemon's listener, and a close — about 22 µs of CPU per daemon per check.
//! One dump per check tick instead asks the kernel for all listening
//! `AF_UNIX` sockets at once, with, for each one bound to a path:
//!
//! - the device and inode of its socket file, so a daemon is found by
//!   [`file_id`] of its `socket_path`;
//! - the length of its accept queue and its backlog;
//! - the inodes of the client sockets waiting in that queue.
//!
//! That proves what a successful connect proves — a listener is bound to
//! that very file and a new connection would be queued — without waking
//! any daemon. The pending inodes add what a connect cannot tell: the same
//! connection still waiting across checks means the daemon stopped calling
//! `accept`. What a dump cannot prove is that the daemon *answers*: one
//! that accepts and then never replies looks healthy here, as it does to a
//! plain connect; that is the `Ping` probe's job.
//!
//! The dump's cost grows with every Unix socket in the network namespace,
//! not only listeners: the kernel walks them all. On the 2-CPU test VM
//! (`dump_cost_with_1000_listeners`, ignored) a dump with 1,000 listeners
//! and 1,000 other sockets took 0.5–0.7 ms of CPU, each further 10,000
//! sockets 1–2.5 ms more; 1,000 connect probes took 11–16 ms.
//!
//! # When the dump cannot be used
//! [`SockDiag::open`] creates the netlink socket *and* runs one dump, so a
//! kernel without the facility fails there, once, and the caller falls
//! back to connect probes for good. Any error from `open` means that; the
//! ones to expect:
//! - from `socket`: `EAFNOSUPPORT` (no netlink at all), `EPROTONOSUPPORT`
//!   (no `sock_diag`: `CONFIG_SOCK_DIAG` off, or a sandbox such as gVisor
//!   that implements only some netlink protocols), `EACCES`/`EPERM` under
//!   a seccomp or LSM policy;
//! - from the first dump, as an `NLMSG_ERROR` reply: `ENOENT` when
//!   `sock_diag` has no `AF_UNIX` handler (`CONFIG_UNIX_DIAG` off, or
//!   `=m` and the module cannot be loaded; the kernel tries to load it).
//!
//! No privilege is needed. The dump covers the caller's network namespace
//! only: a daemon started in another one is never found.
//!
//! A later [`SockDiag::dump_into`] error (a receive timeout, `ENOBUFS`, a reply
//! that does not parse) says nothing about the daemons: that tick has no
//! verdict from the dump. The next dump starts on a fresh socket.
//!
//! # Matching daemons to listeners
//! The kernel reports the socket file's device as its internal `dev_t`
//! (`major << 20 | minor`), not as `stat` encodes it; [`user_dev`]
//! converts. It reports the inode truncated to 32 bits, so lookups compare
//! the low 32 bits of the inode. Where `stat` reports another device than
//! the file system's own (btrfs subvolumes, some overlayfs setups), a
//! daemon is never found: the health board (`crate::health`) confirms a
//! missing listener with a connect, and after three such checks in a row
//! checks that daemon by connects only.
//!
//! A dump is not atomic: the kernel walks its socket hash table a batch
//! (one reply datagram) at a time and resumes by position in a hash bucket,
//! so a socket closed in that bucket between two batches can make one
//! listener be skipped. A missing listener is therefore a reason to confirm
//! with a connect, not a verdict.
//!
//! The request and replies are built and parsed by hand: the netlink
//! crates are large, and this is one fixed request with three attributes
//! to read.

use std::{collections::HashMap, io, os::fd::OwnedFd, path::Path, time::Duration};

use rustix::{
    io::Errno,
    net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink},
};

// From linux/netlink.h.
/// Length of `struct nlmsghdr`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `NLM_F_REQUEST`: a request to the kernel.
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): all entries, not one.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// `NLMSG_NOOP`: nothing, skip it.
pub(crate) const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an errno for the request (negative) or an ack (zero).
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a dump, possibly with the dump's error.
pub(crate) const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data lost.
pub(crate) const NLMSG_OVERRUN: u16 = 4;
/// Bits of `nla_type` that are flags (`NLA_F_NESTED`,
/// `NLA_F_NET_BYTEORDER`), not the attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;

// From linux/sock_diag.h and linux/unix_diag.h.
/// `SOCK_DIAG_BY_FAMILY`: the message type of requests and replies.
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `AF_UNIX`, the `sdiag_family` asked for.
const AF_UNIX: u8 = 1;
/// `TCP_LISTEN`: Unix sockets reuse the TCP state numbers.
pub(crate) const TCP_LISTEN: u8 = 10;
/// `UDIAG_SHOW_VFS`: ask for the socket file's inode and device.
const UDIAG_SHOW_VFS: u32 = 0x2;
/// `UDIAG_SHOW_ICONS`: ask for the connections waiting to be accepted.
const UDIAG_SHOW_ICONS: u32 = 0x8;
/// `UDIAG_SHOW_RQLEN`: ask for the queue length and the backlog.
const UDIAG_SHOW_RQLEN: u32 = 0x10;
/// `UNIX_DIAG_VFS` attribute: `struct unix_diag_vfs`.
const UNIX_DIAG_VFS: u16 = 1;
/// `UNIX_DIAG_ICONS` attribute: an array of `u32` socket inodes.
const UNIX_DIAG_ICONS: u16 = 3;
/// `UNIX_DIAG_RQLEN` attribute: `struct unix_diag_rqlen`.
const UNIX_DIAG_RQLEN: u16 = 4;
/// Length of `struct unix_diag_req`.
const UNIX_DIAG_REQ_LEN: usize = 24;
/// Length of `struct unix_diag_msg`; the attributes follow it.
const UNIX_DIAG_MSG_LEN: usize = 16;
/// Length of `struct rtattr` (the same layout as `struct nlattr`).
const RTA_HDRLEN: usize = 4;

/// Receive buffer. The kernel sizes a dump's datagrams after the largest
/// receive so far but caps them at 32 KiB (`SKB_WITH_OVERHEAD(32768)` in
/// `netlink_recvmsg`; 32,436-byte datagrams with 64 and 256 KiB buffers
/// too), so a larger buffer gains nothing and a smaller one means more,
/// smaller datagrams. A listener takes 68 bytes: 1,000 fit in two.
pub(crate) const BUF_LEN: usize = 32 * 1024;
/// Guard against a receive that never returns. The kernel builds a dump's
/// datagrams inside `recv` itself and never waits on another process, so
/// this is never reached in practice; it only bounds the damage of a
/// kernel oddity to one check tick.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Identity of a socket file as `stat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    /// `st_dev`, in the encoding `stat` returns.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// The identity a snapshot is keyed by: the kernel reports only the low 32
/// bits of the inode. Two listening socket files on one device whose
/// inodes differ only above bit 31 would collide (one of them is kept);
/// only file systems with 64-bit inode numbers can produce them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// `st_dev` encoding (already converted from the kernel's).
    dev: u64,
    /// Low 32 bits of the inode.
    ino: u32,
}

impl From<FileId> for Key {
    fn from(id: FileId) -> Self {
        Key {
            dev: id.dev,
            // Truncation on purpose: `udiag_vfs_ino` is a `u32`.
            ino: id.ino as u32,
        }
    }
}

/// One listening Unix socket, as of the dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listener {
    /// Connections waiting in the accept queue.
    pub queued: u32,
    /// The backlog passed to `listen` (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// Inodes of the *client* sockets whose connections wait in the accept
    /// queue, oldest first. Read under the queue's lock, while `queued` is
    /// read without it, so the two may differ by a connection that came or
    /// went during the dump.
    pub pending: Vec<u32>,
}

impl Listener {
    /// Whether a new connection would be refused with `EAGAIN`. A Unix
    /// listener takes one connection more than its backlog (the kernel's
    /// `unix_recvq_full` compares with `>`).
    pub fn is_full(&self) -> bool {
        self.queued > self.backlog
    }
}

/// Every listening Unix socket bound to a path, as of one dump.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Listeners by socket file.
    listeners: HashMap<Key, Listener>,
}

impl Snapshot {
    /// The listener bound to the socket file `id`, if one was listening.
    pub fn listener(&self, id: FileId) -> Option<&Listener> {
        self.listeners.get(&Key::from(id))
    }

    #[cfg(test)]
    /// How many listeners bound to a path the dump saw.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    #[cfg(test)]
    /// Forgets the listener of socket file `id`, as a dump that missed it.
    pub fn forget(&mut self, id: FileId) {
        self.listeners.remove(&Key::from(id));
    }

    /// Whether the dump saw no listener bound to a path.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// A netlink socket for dumping listening Unix sockets, with its receive
/// buffer, both reused from dump to dump.
#[derive(Debug)]
pub(crate) struct SockDiag {
    /// `None` after a failed dump: its unread rest would confuse the next
    /// one, and the kernel refuses a new dump (`EBUSY`) on a socket whose
    /// dump is still running, so the next dump opens a fresh socket.
    socket: Option<OwnedFd>,
    /// Receive buffer, [`BUF_LEN`] bytes.
    buf: Vec<u8>,
    /// Sequence number of the last request; replies must carry it.
    seq: u32,
}

impl SockDiag {
    /// Opens the netlink socket and runs one dump, so that a kernel that
    /// cannot dump Unix sockets fails here (see the module documentation
    /// for the errors) and the caller can fall back to connect probes.
    pub fn open() -> io::Result<Self> {
        Self::with_buffer_len(BUF_LEN)
    }

    /// [`open`](Self::open) with another receive buffer length, to
    /// measure. The kernel fits a dump's datagrams to the receive length,
    /// except the first of a new socket, which is up to `NLMSG_GOODSIZE`
    /// (8 KiB at most): a buffer below that may make dumps fail with
    /// `InvalidData` (data is never silently lost).
    fn with_buffer_len(len: usize) -> io::Result<Self> {
        let mut diag = SockDiag {
            socket: Some(open_socket()?),
            buf: vec![0; len],
            seq: 0,
        };
        diag.dump_into(&mut Snapshot::default())?;
        Ok(diag)
    }

    #[cfg(test)]
    /// One dump of every listening `AF_UNIX` socket bound to a path.
    /// Abstract and unnamed listeners have no socket file and are left out.
    pub fn dump(&mut self) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        self.dump_into(&mut snapshot)?;
        Ok(snapshot)
    }

    /// [`dump`](Self::dump) into an existing snapshot, reusing its
    /// allocation. On error the snapshot is left empty.
    pub fn dump_into(&mut self, snapshot: &mut Snapshot) -> io::Result<()> {
        snapshot.listeners.clear();
        let result = self.dump_listeners(&mut snapshot.listeners);
        if result.is_err() {
            snapshot.listeners.clear();
            self.socket = None;
        }
        result
    }

    /// Sends the request and parses replies until `NLMSG_DONE`.
    fn dump_listeners(&mut self, out: &mut HashMap<Key, Listener>) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(open_socket()?),
        };
        let request = request(seq);
        let sent = retry_eintr(|| rustix::net::send(&*socket, &request, SendFlags::empty()))?;
        if sent != request.len() {
            return Err(invalid("netlink request sent in part"));
        }
        loop {
            // TRUNC makes recv return the datagram's full length, so a
            // datagram longer than the buffer is an error, not lost data.
            let (_, len) =
                retry_eintr(|| rustix::net::recv(&*socket, &mut self.buf[..], RecvFlags::TRUNC))?;
            if len > self.buf.len() {
                return Err(invalid("netlink datagram larger than the receive buffer"));
            }
            if len == 0 {
                return Err(invalid("empty netlink datagram"));
            }
            if parse_datagram(&self.buf[..len], seq, out)? == Progress::Done {
                return Ok(());
            }
        }
    }
}

/// Identity of the socket file at `path` (following symlinks, as a connect
/// does). Errors with `InvalidInput` if the file is not a socket.
pub(crate) fn file_id(path: &Path) -> io::Result<FileId> {
    let stat = rustix::fs::stat(path)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a socket", path.display()),
        ));
    }
    Ok(FileId {
        dev: stat.st_dev,
        ino: stat.st_ino,
    })
}

/// Converts the kernel's internal `dev_t` (`major << 20 | minor`, what
/// `udiag_vfs_dev` holds) to the `st_dev` encoding of `stat`. They agree
/// only for majors and minors below 256: ext4 on a virtio disk (major 254)
/// already differs.
pub(crate) fn user_dev(kernel_dev: u32) -> u64 {
    rustix::fs::makedev(kernel_dev >> 20, kernel_dev & 0xf_ffff)
}

/// A `NETLINK_SOCK_DIAG` socket with a receive timeout.
pub(crate) fn open_socket() -> io::Result<OwnedFd> {
    let socket = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(RECV_TIMEOUT),
    )?;
    Ok(socket)
}

/// The request: `struct nlmsghdr` followed by `struct unix_diag_req`, in
/// native byte order, as netlink wants.
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN];
    // nlmsghdr: len, type, flags, seq, pid (0: the kernel assigns ours).
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + UNIX_DIAG_REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // unix_diag_req: family, protocol (0), pad, states, ino (0: all),
    // show, cookie (unused by dumps; all ones is "no cookie").
    req[16] = AF_UNIX;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req[28..32]
        .copy_from_slice(&(UDIAG_SHOW_VFS | UDIAG_SHOW_RQLEN | UDIAG_SHOW_ICONS).to_ne_bytes());
    req[32..40].fill(0xff);
    req
}

/// Whether a dump's replies go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen.
    Done,
}

/// Parses one reply datagram to the request with sequence number `seq`,
/// adding the listeners it holds to `out`. Messages with another sequence
/// number (left over from an earlier request) are skipped. Never panics:
/// anything malformed is an `InvalidData` error.
fn parse_datagram(buf: &[u8], seq: u32, out: &mut HashMap<Key, Listener>) -> io::Result<Progress> {
    parse_dump_datagram(buf, seq, out, parse_listener)
}

/// Parses one reply datagram of a `SOCK_DIAG_BY_FAMILY` dump (Unix or
/// inet) to the request with sequence number `seq`, adding what `parse`
/// makes of each socket message to `out`. Messages with another sequence
/// number (left over from an earlier request) are skipped. Never panics:
/// anything malformed is an `InvalidData` error.
pub(crate) fn parse_dump_datagram<K: std::hash::Hash + Eq, V>(
    mut buf: &[u8],
    seq: u32,
    out: &mut HashMap<K, V>,
    parse: impl Fn(&[u8]) -> io::Result<Option<(K, V)>>,
) -> io::Result<Progress> {
    while !buf.is_empty() {
        let len = u32_at(buf, 0).ok_or_else(|| invalid("truncated netlink header"))? as usize;
        let kind = u16_at(buf, 4).ok_or_else(|| invalid("truncated netlink header"))?;
        let msg_seq = u32_at(buf, 8).ok_or_else(|| invalid("truncated netlink header"))?;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(invalid("netlink message length out of bounds"));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        // The last message of a datagram need not be padded.
        buf = buf.get(align4(len)..).unwrap_or_default();
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let code = i32_at(payload, 0).ok_or_else(|| invalid("truncated NLMSG_ERROR"))?;
                // Zero is an acknowledgement, which a dump does not ask
                // for; nothing to do with it.
                if code > 0 {
                    return Err(invalid("positive netlink error code"));
                }
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            NLMSG_DONE => {
                // A dump that failed midway says so in NLMSG_DONE.
                match i32_at(payload, 0) {
                    Some(code) if code < 0 => return Err(io::Error::from_raw_os_error(-code)),
                    _ => return Ok(Progress::Done),
                }
            }
            NLMSG_OVERRUN => return Err(invalid("netlink overrun")),
            SOCK_DIAG_BY_FAMILY => {
                if let Some((key, value)) = parse(payload)? {
                    out.insert(key, value);
                }
            }
            // Unknown message types are skipped, as netlink expects.
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// Parses one `unix_diag_msg` with its attributes. `None` for a socket that
/// is not a listener bound to a path.
fn parse_listener(msg: &[u8]) -> io::Result<Option<(Key, Listener)>> {
    let (family, state) = match msg {
        [family, _type, state, ..] if msg.len() >= UNIX_DIAG_MSG_LEN => (*family, *state),
        _ => return Err(invalid("truncated unix_diag_msg")),
    };
    // The kernel filters by the requested states; checked again so a
    // kernel that ignored the filter cannot make a connected socket pass
    // for a listener.
    if family != AF_UNIX || state != TCP_LISTEN {
        return Ok(None);
    }
    let mut attrs = &msg[UNIX_DIAG_MSG_LEN..];
    let mut vfs = None;
    let mut rqlen = None;
    let mut pending = Vec::new();
    while !attrs.is_empty() {
        let len = u16_at(attrs, 0).ok_or_else(|| invalid("truncated rtattr"))? as usize;
        let kind = u16_at(attrs, 2).ok_or_else(|| invalid("truncated rtattr"))? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > attrs.len() {
            return Err(invalid("rtattr length out of bounds"));
        }
        let data = &attrs[RTA_HDRLEN..len];
        attrs = attrs.get(align4(len)..).unwrap_or_default();
        match kind {
            UNIX_DIAG_VFS => {
                let ino = u32_at(data, 0).ok_or_else(|| invalid("short UNIX_DIAG_VFS"))?;
                let dev = u32_at(data, 4).ok_or_else(|| invalid("short UNIX_DIAG_VFS"))?;
                vfs = Some(Key {
                    dev: user_dev(dev),
                    ino,
                });
            }
            UNIX_DIAG_RQLEN => {
                let queued = u32_at(data, 0).ok_or_else(|| invalid("short UNIX_DIAG_RQLEN"))?;
                let backlog = u32_at(data, 4).ok_or_else(|| invalid("short UNIX_DIAG_RQLEN"))?;
                rqlen = Some((queued, backlog));
            }
            UNIX_DIAG_ICONS => {
                if data.len() % 4 != 0 {
                    return Err(invalid("UNIX_DIAG_ICONS not a whole number of inodes"));
                }
                pending.clear();
                pending.extend(
                    data.chunks_exact(4)
                        .filter_map(|inode| inode.try_into().ok().map(u32::from_ne_bytes)),
                );
            }
            _ => {}
        }
    }
    // Abstract and unnamed listeners have no socket file: nothing a daemon
    // could be found by.
    let Some(key) = vfs else {
        return Ok(None);
    };
    let (queued, backlog) = rqlen.ok_or_else(|| invalid("listener without UNIX_DIAG_RQLEN"))?;
    Ok(Some((
        key,
        Listener {
            queued,
            backlog,
            pending,
        },
    )))
}

/// `NLMSG_ALIGN` / `RTA_ALIGN`: lengths are padded to 4 bytes.
pub(crate) fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// The native-endian `u16` at `offset`, if `buf` holds it.
pub(crate) fn u16_at(buf: &[u8], offset: usize) -> Option<u16> {
    let bytes = buf.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

/// The native-endian `u32` at `offset`, if `buf` holds it.
pub(crate) fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// The native-endian `i32` at `offset`, if `buf` holds it.
pub(crate) fn i32_at(buf: &[u8], offset: usize) -> Option<i32> {
    u32_at(buf, offset).map(|v| v as i32)
}

/// An `InvalidData` error for a malformed reply.
pub(crate) fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Runs `f` again while it is interrupted by a signal.
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        io::ErrorKind,
        os::{
            fd::{AsFd, OwnedFd},
            unix::net::{UnixListener, UnixStream},
        },
        path::{Path, PathBuf},
        time::Instant,
    };

    use proptest::prelude::*;
    use rustix::net::{SocketAddrUnix, SocketFlags, SocketType};

    use super::*;
    use crate::probe::connect_now;

    /// A Unix stream socket bound to `path`, listening with `backlog` if
    /// given (rustix, so the backlog is known; std picks its own).
    pub(crate) fn bound(path: &Path, backlog: Option<i32>) -> OwnedFd {
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        rustix::net::bind(&socket, &SocketAddrUnix::new(path).unwrap()).unwrap();
        if let Some(backlog) = backlog {
            rustix::net::listen(&socket, backlog).unwrap();
        }
        socket
    }

    /// The socket inode of `fd`, as `UNIX_DIAG_ICONS` reports it.
    fn sock_ino(fd: impl AsFd) -> u32 {
        rustix::fs::fstat(fd).unwrap().st_ino as u32
    }

    fn dump() -> Snapshot {
        SockDiag::open().unwrap().dump().unwrap()
    }

    #[test]
    fn open_works_here() {
        // CONFIG_UNIX_DIAG=y on the machines tend is tested on; a kernel
        // without it fails here with ENOENT (see the module docs).
        let mut diag = SockDiag::open().unwrap();
        diag.dump().unwrap();
    }

    #[test]
    fn listener_found_with_queue_and_pending_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = UnixListener::from(bound(&path, Some(5)));
        listener.set_nonblocking(false).unwrap();
        let id = file_id(&path).unwrap();
        let mut diag = SockDiag::open().unwrap();

        let snapshot = diag.dump().unwrap();
        assert!(!snapshot.is_empty());
        let found = snapshot.listener(id).expect("listener in the dump");
        assert_eq!((found.queued, found.backlog), (0, 5));
        assert!(found.pending.is_empty());
        assert!(!found.is_full());

        let first = UnixStream::connect(&path).unwrap();
        let second = UnixStream::connect(&path).unwrap();
        let mut snapshot = Snapshot::default();
        diag.dump_into(&mut snapshot).unwrap();
        let found = snapshot.listener(id).unwrap();
        assert_eq!((found.queued, found.backlog), (2, 5));
        // The pending inodes are the clients' sockets, oldest first.
        assert_eq!(found.pending, [sock_ino(&first), sock_ino(&second)]);

        let (_accepted, _) = listener.accept().unwrap();
        diag.dump_into(&mut snapshot).unwrap();
        let found = snapshot.listener(id).unwrap();
        assert_eq!(found.queued, 1);
        assert_eq!(found.pending, [sock_ino(&second)]);
    }

    #[test]
    fn full_accept_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _listener = bound(&path, Some(2));
        let mut clients = Vec::new();
        let refused = loop {
            match connect_now(&path) {
                Ok(client) => clients.push(client),
                Err(e) => break e,
            }
            assert!(clients.len() < 10, "backlog not enforced");
        };
        assert_eq!(refused.kind(), ErrorKind::WouldBlock);
        // One more than the backlog fits, as is_full documents.
        assert_eq!(clients.len(), 3);
        let snapshot = dump();
        let found = snapshot.listener(file_id(&path).unwrap()).unwrap();
        assert_eq!((found.queued, found.backlog), (3, 2));
        assert!(found.is_full());
        assert_eq!(found.pending.len(), 3);
    }

    #[test]
    fn bound_but_not_listening_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let bound_only = dir.path().join("bound.sock");
        let listening = dir.path().join("listening.sock");
        let _a = bound(&bound_only, None);
        let _b = bound(&listening, Some(5));
        let snapshot = dump();
        // file_id accepts it (it is a socket file), the dump does not list it.
        assert!(snapshot.listener(file_id(&bound_only).unwrap()).is_none());
        assert!(snapshot.listener(file_id(&listening).unwrap()).is_some());
    }

    /// Listeners on ext4 (/tmp here, major 254: the kernel's and stat's
    /// device encodings differ) and on tmpfs (/dev/shm) are both found, each
    /// under its own identity.
    #[test]
    fn listeners_on_two_file_systems() {
        let mut dirs = vec![tempfile::tempdir_in("/tmp").unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("d.sock")).collect();
        let _listeners: Vec<OwnedFd> = (paths.iter().zip([3, 7]))
            .map(|(p, backlog)| bound(p, Some(backlog)))
            .collect();
        let snapshot = dump();
        for (path, backlog) in paths.iter().zip([3, 7]) {
            let id = file_id(path).unwrap();
            let found = snapshot.listener(id);
            assert_eq!(
                found.map(|l| l.backlog),
                Some(backlog),
                "{} (dev {}:{}) not found",
                path.display(),
                rustix::fs::major(id.dev),
                rustix::fs::minor(id.dev),
            );
        }
    }

    #[test]
    fn closed_listener_leaves_the_next_dump() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = bound(&path, Some(5));
        let id = file_id(&path).unwrap();
        let mut diag = SockDiag::open().unwrap();
        assert!(diag.dump().unwrap().listener(id).is_some());
        drop(listener);
        // The socket file stays; only the listener is gone.
        assert!(file_id(&path).is_ok());
        assert!(diag.dump().unwrap().listener(id).is_none());
    }

    #[test]
    fn file_id_needs_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(file_id(&file).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(
            file_id(dir.path()).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let missing = dir.path().join("missing");
        assert_eq!(file_id(&missing).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn kernel_dev_to_stat_dev() {
        // ext4 on /dev/vda: 254:0. The kernel says 254 << 20, stat 0xfe00.
        assert_eq!(user_dev(254 << 20), 0xfe00);
        assert_eq!(user_dev(254 << 20), rustix::fs::makedev(254, 0));
        // A tmpfs: 0:25 is the same in both encodings.
        assert_eq!(user_dev(25), 25);
        // Minors above 255 move: 0:300 is 0x12c in the kernel.
        let dev = user_dev(300);
        assert_eq!((rustix::fs::major(dev), rustix::fs::minor(dev)), (0, 300));
        let dev = user_dev((4095 << 20) | 0xf_ffff);
        assert_eq!(
            (rustix::fs::major(dev), rustix::fs::minor(dev)),
            (4095, 0xf_ffff)
        );
    }

    /// Builds reply datagrams by hand, for the parser tests.
    #[derive(Default)]
    struct Reply(Vec<u8>);

    impl Reply {
        fn message(mut self, kind: u16, seq: u32, payload: &[u8]) -> Self {
            let len = (NLMSG_HDRLEN + payload.len()) as u32;
            self.0.extend(len.to_ne_bytes());
            self.0.extend(kind.to_ne_bytes());
            self.0.extend(0x2u16.to_ne_bytes()); // NLM_F_MULTI
            self.0.extend(seq.to_ne_bytes());
            self.0.extend(4242u32.to_ne_bytes());
            self.0.extend(payload);
            self.0.resize(align4(self.0.len()), 0);
            self
        }

        fn listener(self, seq: u32, ino: u32, dev: u32, rq: [u32; 2], icons: &[u32]) -> Self {
            self.message(SOCK_DIAG_BY_FAMILY, seq, &listener_msg(ino, dev, rq, icons))
        }

        fn done(self, seq: u32) -> Self {
            self.message(NLMSG_DONE, seq, &0i32.to_ne_bytes())
        }
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ((RTA_HDRLEN + data.len()) as u16).to_ne_bytes().to_vec();
        out.extend(kind.to_ne_bytes());
        out.extend(data);
        out.resize(align4(out.len()), 0);
        out
    }

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn listener_msg(ino: u32, dev: u32, rq: [u32; 2], icons: &[u32]) -> Vec<u8> {
        let mut msg = vec![AF_UNIX, 1, TCP_LISTEN, 0];
        msg.extend(words(&[999, 0, 0])); // socket inode, cookie
        msg.extend(attr(UNIX_DIAG_VFS, &words(&[ino, dev])));
        msg.extend(attr(UNIX_DIAG_RQLEN, &words(&rq)));
        msg.extend(attr(UNIX_DIAG_ICONS, &words(icons)));
        msg
    }

    fn parse(buf: &[u8], seq: u32) -> io::Result<(Progress, HashMap<Key, Listener>)> {
        let mut out = HashMap::new();
        let progress = parse_datagram(buf, seq, &mut out)?;
        Ok((progress, out))
    }

    #[test]
    fn parses_a_hand_made_reply() {
        let reply = Reply::default()
            .listener(7, 12, 254 << 20, [1, 5], &[77])
            .listener(6, 13, 25, [0, 5], &[]) // stale: another request's
            .listener(7, 14, 25, [0, 128], &[])
            .done(7);
        let (progress, out) = parse(&reply.0, 7).unwrap();
        assert_eq!(progress, Progress::Done);
        assert_eq!(out.len(), 2);
        let key = Key {
            dev: 0xfe00,
            ino: 12,
        };
        assert_eq!(
            out[&key],
            Listener {
                queued: 1,
                backlog: 5,
                pending: vec![77]
            }
        );
        assert_eq!(out[&Key { dev: 25, ino: 14 }].backlog, 128);

        // Without DONE, more datagrams are expected.
        let (progress, _) = parse(&Reply::default().listener(7, 12, 1, [0, 1], &[]).0, 7).unwrap();
        assert_eq!(progress, Progress::More);
    }

    #[test]
    fn skips_what_it_cannot_match() {
        // A listener without UNIX_DIAG_VFS (abstract) and a connected
        // socket (state 1) are not listed.
        let mut abstract_msg = vec![AF_UNIX, 1, TCP_LISTEN, 0];
        abstract_msg.extend(words(&[1, 0, 0]));
        abstract_msg.extend(attr(UNIX_DIAG_RQLEN, &words(&[0, 5])));
        let mut connected = listener_msg(12, 25, [0, 0], &[]);
        connected[2] = 1;
        let reply = Reply::default()
            .message(SOCK_DIAG_BY_FAMILY, 1, &abstract_msg)
            .message(SOCK_DIAG_BY_FAMILY, 1, &connected)
            .message(NLMSG_NOOP, 1, &[])
            .message(99, 1, b"unknown type")
            .done(1);
        let (progress, out) = parse(&reply.0, 1).unwrap();
        assert_eq!((progress, out.len()), (Progress::Done, 0));
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        // What a kernel without unix_diag answers the request with.
        let mut payload = (-libc_enoent()).to_ne_bytes().to_vec();
        payload.extend(request(3)); // NLMSG_ERROR echoes the request
        let reply = Reply::default().message(NLMSG_ERROR, 3, &payload);
        let err = parse(&reply.0, 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_enoent()));
        // A dump that failed midway.
        let reply = Reply::default().message(NLMSG_DONE, 3, &(-105i32).to_ne_bytes());
        assert_eq!(parse(&reply.0, 3).unwrap_err().raw_os_error(), Some(105));
        // A stale error is not this request's.
        let reply = Reply::default().message(NLMSG_ERROR, 2, &payload).done(3);
        assert!(parse(&reply.0, 3).is_ok());
    }

    fn libc_enoent() -> i32 {
        Errno::NOENT.raw_os_error()
    }

    #[test]
    fn malformed_replies_are_invalid_data() {
        let good = Reply::default()
            .listener(7, 12, 25, [1, 5], &[77, 78])
            .listener(7, 13, 25, [0, 5], &[])
            .done(7)
            .0;
        // Every cut inside a message is an error; a cut between messages
        // is a shorter but valid datagram.
        let boundaries = message_boundaries(&good);
        for cut in 1..good.len() {
            let result = parse(&good[..cut], 7);
            if boundaries.contains(&cut) {
                assert!(result.is_ok(), "cut at boundary {cut}");
            } else {
                assert_eq!(
                    result.unwrap_err().kind(),
                    ErrorKind::InvalidData,
                    "cut at {cut}"
                );
            }
        }

        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut zero_len = good.clone();
        zero_len[0..4].copy_from_slice(&0u32.to_ne_bytes());
        cases.push(("nlmsg_len 0", zero_len));
        let mut huge_len = good.clone();
        huge_len[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        cases.push(("nlmsg_len past the end", huge_len));
        let short_msg = Reply::default().message(SOCK_DIAG_BY_FAMILY, 7, &[AF_UNIX, 1, 10]);
        cases.push(("short unix_diag_msg", short_msg.0));
        for (name, attr_bytes) in [
            ("rta_len 2", vec![2, 0, 1, 0]),
            (
                "rta_len past the end",
                attr(UNIX_DIAG_VFS, &[0; 8])[..8].to_vec(),
            ),
            ("short VFS", attr(UNIX_DIAG_VFS, &[0; 4])),
            ("short RQLEN", attr(UNIX_DIAG_RQLEN, &[0; 6])),
            ("ragged ICONS", attr(UNIX_DIAG_ICONS, &[0; 6])),
        ] {
            let mut msg = vec![AF_UNIX, 1, TCP_LISTEN, 0];
            msg.extend(words(&[1, 0, 0]));
            msg.extend(attr_bytes);
            cases.push((
                name,
                Reply::default().message(SOCK_DIAG_BY_FAMILY, 7, &msg).0,
            ));
        }
        let mut no_rqlen = vec![AF_UNIX, 1, TCP_LISTEN, 0];
        no_rqlen.extend(words(&[1, 0, 0]));
        no_rqlen.extend(attr(UNIX_DIAG_VFS, &words(&[12, 25])));
        cases.push((
            "listener without RQLEN",
            Reply::default()
                .message(SOCK_DIAG_BY_FAMILY, 7, &no_rqlen)
                .0,
        ));
        cases.push(("overrun", Reply::default().message(NLMSG_OVERRUN, 7, &[]).0));
        cases.push((
            "short error",
            Reply::default().message(NLMSG_ERROR, 7, &[1]).0,
        ));
        for (name, buf) in cases {
            let err = parse(&buf, 7).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{name}: {err}");
        }
    }

    /// Offsets where a message of `buf` ends.
    fn message_boundaries(buf: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(len) = u32_at(buf, at) {
            at += align4(len as usize);
            out.push(at);
        }
        out
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_random_bytes(
            buf in proptest::collection::vec(any::<u8>(), 0..512),
            seq in 0u32..3,
        ) {
            let _ = parse(&buf, seq);
        }

        #[test]
        fn parser_never_panics_on_damaged_replies(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = Reply::default()
                .listener(1, 12, 25, [2, 5], &[77, 78])
                .listener(1, 13, 254 << 20, [0, 5], &[])
                .done(1)
                .0;
            for (at, byte) in flips {
                let at = at.index(buf.len());
                buf[at] = byte;
            }
            let cut = cut.index(buf.len() + 1);
            let _ = parse(&buf[..cut], 1);
        }
    }

    /// Thread CPU time, the cost measure of the cost test.
    fn thread_cpu() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// Unix sockets on the system (network namespace), from /proc/net/unix.
    fn unix_sockets() -> usize {
        // Bytes: a socket path need not be UTF-8.
        std::fs::read("/proc/net/unix").map_or(0, |s| {
            s.iter().filter(|&&b| b == b'\n').count().saturating_sub(1)
        })
    }

    /// The reply datagrams of one dump (sequence number 1), as received.
    fn capture_dump() -> Vec<Vec<u8>> {
        let socket = open_socket().unwrap();
        rustix::net::send(&socket, &request(1), SendFlags::empty()).unwrap();
        let mut buf = vec![0; BUF_LEN];
        let mut datagrams = Vec::new();
        loop {
            let (len, _) = rustix::net::recv(&socket, &mut buf[..], RecvFlags::empty()).unwrap();
            datagrams.push(buf[..len].to_vec());
            if parse(&buf[..len], 1).unwrap().0 == Progress::Done {
                return datagrams;
            }
        }
    }

    /// Wall and CPU time of `rounds` dumps with a buffer of `buf_len`.
    fn time_dumps(buf_len: usize, rounds: u32, expect: &[FileId]) -> (Duration, Duration) {
        let mut diag = SockDiag::with_buffer_len(buf_len).unwrap();
        let mut snapshot = Snapshot::default();
        for _ in 0..10 {
            diag.dump_into(&mut snapshot).unwrap();
        }
        assert!(snapshot.len() >= expect.len());
        assert!(expect.iter().all(|id| snapshot.listener(*id).is_some()));
        let (wall, cpu) = (Instant::now(), thread_cpu());
        for _ in 0..rounds {
            diag.dump_into(&mut snapshot).unwrap();
        }
        (wall.elapsed() / rounds, (thread_cpu() - cpu) / rounds)
    }

    /// Prints the cost of one dump with 1,000 listeners against 1,000
    /// connect probes. Run with
    /// `cargo test --release -p tend --lib sockdiag -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, prints timings"]
    fn dump_cost_with_1000_listeners() {
        const LISTENERS: usize = 1000;
        const DUMPS: u32 = 200;
        const CONNECT_ROUNDS: u32 = 5;
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX) as usize;
        assert!(nofile > LISTENERS + 100, "RLIMIT_NOFILE {nofile} too low");
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..LISTENERS)
            .map(|i| dir.path().join(format!("l{i:04}.sock")))
            .collect();
        let listeners: Vec<OwnedFd> = paths.iter().map(|p| bound(p, Some(1024))).collect();
        let ids: Vec<FileId> = paths.iter().map(|p| file_id(p).unwrap()).collect();
        println!(
            "{LISTENERS} listeners in {}, {} unix sockets on the system",
            dir.path().display(),
            unix_sockets()
        );

        for buf_len in [8 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10] {
            let (wall, cpu) = time_dumps(buf_len, DUMPS, &ids);
            println!(
                "dump, buffer {:>3} KiB: {:>6.1} µs wall, {:>6.1} µs CPU per dump ({:.0} ns CPU per listener)",
                buf_len >> 10,
                wall.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e9 / LISTENERS as f64,
            );
        }

        // The user-space share: parsing the datagrams of one dump again.
        let datagrams = capture_dump();
        let mut out = HashMap::new();
        let cpu = thread_cpu();
        for _ in 0..DUMPS {
            out.clear();
            for datagram in &datagrams {
                parse_datagram(datagram, 1, &mut out).unwrap();
            }
        }
        println!(
            "parsing alone: {:.1} µs CPU per dump ({} datagrams, {} bytes)",
            ((thread_cpu() - cpu) / DUMPS).as_secs_f64() * 1e6,
            datagrams.len(),
            datagrams.iter().map(Vec::len).sum::<usize>(),
        );

        let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..CONNECT_ROUNDS {
            let (w, c) = (Instant::now(), thread_cpu());
            for path in &paths {
                drop(connect_now(path).unwrap());
            }
            wall += w.elapsed();
            cpu += thread_cpu() - c;
            // Drain the accept queues, untimed, so every round sees the
            // same empty queues a healthy daemon has.
            for listener in &listeners {
                while rustix::net::accept(listener).is_ok() {}
            }
        }
        let probes = CONNECT_ROUNDS * LISTENERS as u32;
        println!(
            "connect+close: {:.1} µs wall, {:.1} µs CPU per socket; {:.0} µs CPU for all {LISTENERS}",
            (wall / probes).as_secs_f64() * 1e6,
            (cpu / probes).as_secs_f64() * 1e6,
            (cpu / CONNECT_ROUNDS).as_secs_f64() * 1e6,
        );

        // The dump walks every Unix socket in the network namespace, not
        // only the listeners: add unconnected pairs and time again.
        let mut pairs = Vec::new();
        for extra in [2_000, 10_000] {
            let target = extra / 2;
            if nofile < LISTENERS + extra + 100 {
                println!("RLIMIT_NOFILE {nofile}: skipping {extra} other sockets");
                break;
            }
            while pairs.len() < target {
                pairs.push(
                    rustix::net::socketpair(
                        AddressFamily::UNIX,
                        SocketType::STREAM,
                        SocketFlags::CLOEXEC,
                        None,
                    )
                    .unwrap(),
                );
            }
            let (wall, cpu) = time_dumps(BUF_LEN, DUMPS, &ids);
            println!(
                "dump with {} unix sockets on the system: {:.1} µs wall, {:.1} µs CPU per dump",
                unix_sockets(),
                wall.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6,
            );
        }
    }
}
