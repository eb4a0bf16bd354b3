//! TCP probes: readiness by a connect that succeeds, and the batched
//! health connects of the manager's health board.
//!
//! Nothing tells tend when a TCP port starts listening (inotify sees socket
//! files, not ports), so the readiness wait connects, and while the connect
//! is refused retries after a pause on the microsecond timer the Unix-socket
//! wait uses: 20 µs, doubling to 200 µs for the first 20 ms (a daemon
//! usually listens within a few milliseconds of its start), then at most
//! [`MAX_PAUSE`] until [`FINE_WINDOW`]: a refused loopback connect costs a
//! few microseconds, so a listen is noticed within about that pause however
//! long the daemon takes, at a negligible cost. After the window (a daemon
//! that takes seconds to start) the pause grows to [`SLOW_PAUSE`].

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    time::{Duration, Instant},
};

use rustix::{
    event::{PollFd, PollFlags},
    net::{AddressFamily, SocketFlags, SocketType},
};

/// The first pause after a refused connect.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
/// The longest pause on the microsecond timer.
const MAX_FINE_PAUSE: Duration = Duration::from_micros(200);
/// How long the microsecond timer is used.
const FINE_SCHEDULE: Duration = Duration::from_millis(20);
/// The longest pause between refused connects during [`FINE_WINDOW`].
pub(crate) const MAX_PAUSE: Duration = Duration::from_millis(2);
/// How long refused connects are retried every [`MAX_PAUSE`] at most.
const FINE_WINDOW: Duration = Duration::from_secs(2);
/// The pause between refused connects after that.
const SLOW_PAUSE: Duration = Duration::from_millis(20);

/// Resolves once `address` accepts a connection. Never returns otherwise:
/// the caller races it against the child's exit and the startup deadline.
pub(crate) async fn wait_ready(address: SocketAddr) {
    let started = Instant::now();
    let mut fine_pause = FIRST_PAUSE;
    let mut pause = Duration::from_millis(1);
    loop {
        match tokio::net::TcpStream::connect(address).await {
            Ok(_) => return,
            Err(e) => {
                tracing::trace!(%address, error = %e, "not accepting yet");
                let waited = started.elapsed();
                if waited < FINE_SCHEDULE {
                    super::fine_sleep(fine_pause).await;
                    fine_pause = (fine_pause * 2).min(MAX_FINE_PAUSE);
                } else {
                    let cap = if waited < FINE_WINDOW {
                        MAX_PAUSE
                    } else {
                        SLOW_PAUSE
                    };
                    tokio::time::sleep(pause.min(cap)).await;
                    pause = (pause * 2).min(cap);
                }
            }
        }
    }
}

/// A health connect under way.
pub(crate) struct Connecting {
    socket: OwnedFd,
    address: SocketAddr,
    deadline: Instant,
}

/// Starts a non-blocking connect to `address`: `Ok(None)` when it
/// completed at once, `Ok(Some(_))` while it is under way.
pub(crate) fn start_connect(
    address: SocketAddr,
    timeout: Duration,
) -> Result<Option<Connecting>, String> {
    let family = match address {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| format!("cannot make a socket to probe {address}: {e}"))?;
    match rustix::net::connect(&socket, &address) {
        Ok(()) => Ok(None),
        Err(rustix::io::Errno::INPROGRESS) | Err(rustix::io::Errno::INTR) => Ok(Some(Connecting {
            socket,
            address,
            deadline: Instant::now() + timeout,
        })),
        Err(e) => Err(describe(address, e.into())),
    }
}

/// Waits for every connect under way, all at once, each until its own
/// deadline; returns their results in order.
pub(crate) fn finish_connects(connecting: &[Connecting]) -> Vec<Result<(), String>> {
    let mut results: Vec<Option<Result<(), String>>> = vec![None; connecting.len()];
    loop {
        let now = Instant::now();
        for (c, result) in connecting.iter().zip(results.iter_mut()) {
            if result.is_none() && now >= c.deadline {
                *result = Some(Err(format!(
                    "connect to {} did not complete within the timeout",
                    c.address
                )));
            }
        }
        let waiting: Vec<usize> = (0..connecting.len())
            .filter(|&i| results[i].is_none())
            .collect();
        let Some(first) = waiting.iter().map(|&i| connecting[i].deadline).min() else {
            break;
        };
        let mut fds: Vec<PollFd<'_>> = waiting
            .iter()
            .map(|&i| PollFd::new(&connecting[i].socket, PollFlags::OUT))
            .collect();
        let wait = first.saturating_duration_since(now);
        let timeout = rustix::time::Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                for &i in &waiting {
                    results[i] = Some(Err(format!("cannot wait for a connect: {e}")));
                }
                break;
            }
        }
        let ready: Vec<(usize, bool)> = waiting
            .iter()
            .zip(fds.iter())
            .map(|(&i, fd)| (i, !fd.revents().is_empty()))
            .collect();
        drop(fds);
        for (i, done) in ready {
            if done {
                let c = &connecting[i];
                results[i] = Some(match rustix::net::sockopt::socket_error(c.socket.as_fd()) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(describe(c.address, e.into())),
                    Err(e) => Err(describe(c.address, e.into())),
                });
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("connect not finished".into())))
        .collect()
}

fn describe(address: SocketAddr, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => format!("connect to {address} refused (nothing listens)"),
        _ => format!("connect to {address} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_to_a_listener_pass_and_refused_ones_fail() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let timeout = Duration::from_secs(5);
        let mut connecting = Vec::new();
        let mut immediate = Vec::new();
        for address in [open, closed, open] {
            match start_connect(address, timeout) {
                Ok(Some(c)) => connecting.push(c),
                other => immediate.push(other.map(|_| ())),
            }
        }
        let mut results = finish_connects(&connecting);
        results.extend(immediate);
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            2,
            "{results:?}"
        );
        let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(refused.contains("refused"), "{refused}");
    }
}
