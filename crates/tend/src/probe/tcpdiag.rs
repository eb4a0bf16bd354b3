//! The TCP side of the batched health checks: one `NETLINK_SOCK_DIAG`
//! dump (`inet_diag`) per tick lists every listening TCP socket of the
//! network namespace with its accept queue, so the health board checks all
//! `HealthProbe::Tcp` daemons without a connect each, as it does for Unix
//! sockets (see [`crate::sockdiag`]).
//!
//! A connect per check costs a socket, a three-way handshake, a close and
//! its FIN exchange on both sides, and wakes the daemon: about 30 µs of CPU
//! per daemon per check. The dump walks only the kernel's table of
//! listening sockets. A check passes when a listener is bound to the
//! daemon's port on its address (or on the wildcard address of its
//! family, or `[::]` for an IPv4 address) with room in its accept queue,
//! which is what a connect would prove. A listener the dump does not show
//! (a dump is not atomic, like the Unix one) is confirmed by a connect,
//! never failed on the dump's word alone.
//!
//! Built by hand like the Unix dump: one fixed request and one fixed
//! message layout (`struct inet_diag_msg`, linux/inet_diag.h).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::OwnedFd,
};

use rustix::net::{RecvFlags, SendFlags};

use crate::sockdiag::{
    BUF_LEN, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN, Progress, SOCK_DIAG_BY_FAMILY, TCP_LISTEN,
    invalid, open_socket, parse_dump_datagram, retry_eintr, u32_at,
};

/// `AF_INET`, `AF_INET6`.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u8 = 6;
/// Length of `struct inet_diag_req_v2`.
const INET_DIAG_REQ_LEN: usize = 56;
/// Length of `struct inet_diag_msg`; attributes (none asked for) follow.
const INET_DIAG_MSG_LEN: usize = 72;

/// A listening TCP socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpListener {
    /// Connections waiting to be accepted.
    pub queued: u32,
    /// The listen backlog.
    pub backlog: u32,
}

impl TcpListener {
    /// Whether a new connection would be refused (dropped) now.
    pub fn is_full(&self) -> bool {
        self.queued > self.backlog
    }
}

/// The listening TCP sockets of one dump, by bound address.
#[derive(Debug, Default)]
pub(crate) struct TcpListeners {
    by_address: HashMap<SocketAddr, TcpListener>,
}

impl TcpListeners {
    /// The listener a connect to `address` would reach: bound to it, or to
    /// the wildcard address of its family, or to `[::]` (dual-stack) for
    /// an IPv4 address.
    pub fn reaching(&self, address: SocketAddr) -> Option<&TcpListener> {
        let port = address.port();
        let wildcard = match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        self.by_address
            .get(&address)
            .or_else(|| self.by_address.get(&SocketAddr::new(wildcard, port)))
            .or_else(|| {
                address.is_ipv4().then(|| {
                    self.by_address
                        .get(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port))
                })?
            })
    }
}

/// A `NETLINK_SOCK_DIAG` socket for TCP dumps.
pub(crate) struct TcpDiag {
    /// `None` after a failed dump (see `SockDiag`).
    socket: Option<OwnedFd>,
    buf: Vec<u8>,
    seq: u32,
}

impl TcpDiag {
    /// A dumper; nothing is opened until the first dump.
    pub fn new() -> Self {
        TcpDiag {
            socket: None,
            buf: vec![0; BUF_LEN],
            seq: 0,
        }
    }

    /// Dumps the listening TCP sockets, IPv4 and IPv6, into `out`. On error
    /// `out` is left empty: that tick has no verdict from the dump.
    pub fn dump_into(&mut self, out: &mut TcpListeners) -> io::Result<()> {
        out.by_address.clear();
        let result = [AF_INET, AF_INET6]
            .into_iter()
            .try_for_each(|family| self.dump_family(family, &mut out.by_address));
        if result.is_err() {
            out.by_address.clear();
            self.socket = None;
        }
        result
    }

    fn dump_family(
        &mut self,
        family: u8,
        out: &mut HashMap<SocketAddr, TcpListener>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let socket = match &mut self.socket {
            Some(socket) => socket,
            none => none.insert(open_socket()?),
        };
        let request = request(family, seq);
        let sent = retry_eintr(|| rustix::net::send(&*socket, &request, SendFlags::empty()))?;
        if sent != request.len() {
            return Err(invalid("netlink request sent in part"));
        }
        loop {
            let (_, len) =
                retry_eintr(|| rustix::net::recv(&*socket, &mut self.buf[..], RecvFlags::TRUNC))?;
            if len > self.buf.len() {
                return Err(invalid("netlink datagram larger than the receive buffer"));
            }
            if len == 0 {
                return Err(invalid("empty netlink datagram"));
            }
            if parse_datagram(&self.buf[..len], seq, out)? {
                return Ok(());
            }
        }
    }
}

/// `struct nlmsghdr` and `struct inet_diag_req_v2` asking for every
/// listening TCP socket of `family`.
fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + INET_DIAG_REQ_LEN] {
    let mut req = [0u8; NLMSG_HDRLEN + INET_DIAG_REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + INET_DIAG_REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext (none), pad, states, then a
    // zeroed inet_diag_sockid (no filter) whose cookie is "none".
    req[16] = family;
    req[17] = IPPROTO_TCP;
    req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req[16 + 8 + 40..16 + 8 + 48].fill(0xff);
    req
}

/// Parses one reply datagram; true once `NLMSG_DONE` was seen (the
/// netlink framing is the Unix-socket dump's, in `sockdiag`).
fn parse_datagram(
    buf: &[u8],
    seq: u32,
    out: &mut HashMap<SocketAddr, TcpListener>,
) -> io::Result<bool> {
    Ok(parse_dump_datagram(buf, seq, out, parse_listener)? == Progress::Done)
}

/// One `inet_diag_msg`: the bound address and accept queue of a listener.
fn parse_listener(msg: &[u8]) -> io::Result<Option<(SocketAddr, TcpListener)>> {
    if msg.len() < INET_DIAG_MSG_LEN {
        return Err(invalid("truncated inet_diag_msg"));
    }
    let (family, state) = (msg[0], msg[1]);
    if state != TCP_LISTEN {
        return Ok(None);
    }
    // inet_diag_sockid: source port (big-endian) at 4, source address at 8.
    let port = u16::from_be_bytes([msg[4], msg[5]]);
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(msg[8], msg[9], msg[10], msg[11])),
        AF_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&msg[8..24]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Ok(None),
    };
    let queued = u32_at(msg, 56).ok_or_else(|| invalid("truncated inet_diag_msg"))?;
    let backlog = u32_at(msg, 60).ok_or_else(|| invalid("truncated inet_diag_msg"))?;
    Ok(Some((
        SocketAddr::new(ip, port),
        TcpListener { queued, backlog },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_finds_listeners_and_their_queues() {
        let mut diag = TcpDiag::new();
        let mut listeners = TcpListeners::default();
        if diag.dump_into(&mut listeners).is_err() {
            return; // no inet_diag here: the board connects instead
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let _waiting = std::net::TcpStream::connect(address).unwrap();
        let wildcard = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = wildcard.local_addr().unwrap().port();
        diag.dump_into(&mut listeners).unwrap();
        let found = listeners.reaching(address).expect("the listener is listed");
        assert_eq!(found.queued, 1, "one connection waits to be accepted");
        assert!(!found.is_full());
        let through_wildcard = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(listeners.reaching(through_wildcard).is_some());
        drop(listener);
        diag.dump_into(&mut listeners).unwrap();
        assert!(listeners.reaching(address).is_none());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut out = HashMap::new();
        for bad in [
            &[1u8, 2, 3][..],
            &[200, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0][..],
            &[20, 0, 0, 0, 20, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..],
        ] {
            assert!(parse_datagram(bad, 1, &mut out).is_err());
        }
        assert!(parse_listener(&[0u8; 10]).is_err());
    }
}
