//! systemd's notify protocol (`sd_notify(3)`), spoken by `tend up` when
//! `NOTIFY_SOCKET` is set: `READY=1` once the daemons it started are
//! running, `STATUS=...` as their states change, `STOPPING=1` when it
//! shuts down. Each message is one datagram of `KEY=VALUE` lines to the
//! Unix socket the variable names: a path, or an abstract address written
//! with a leading `@`.
//!
//! Hand-written on rustix rather than taken from a crate: the protocol is
//! one `sendto`, and this way status updates are sent without blocking
//! (`MSG_DONTWAIT`: a full queue drops a status line, never stalls the
//! supervisor) while `READY=1` and `STOPPING=1` are retried until sent.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    time::Duration,
};

use anyhow::{Context, bail};
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use tend::ProcessState;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// How long `READY=1` and `STOPPING=1` are retried while the receiver's
/// queue is full.
const IMPORTANT_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket to notify the service manager on.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    address: SocketAddrUnix,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`'s value, or why it cannot be used.
    pub fn new(value: &OsStr) -> anyhow::Result<Self> {
        let bytes = value.as_bytes();
        let address = match bytes.first() {
            Some(b'/') => SocketAddrUnix::new(value),
            Some(b'@') => SocketAddrUnix::new_abstract_name(&bytes[1..]),
            _ => bail!(
                "{NOTIFY_SOCKET_ENV}={} is neither a socket path nor an @abstract address",
                value.to_string_lossy()
            ),
        }
        .with_context(|| {
            format!(
                "{NOTIFY_SOCKET_ENV}={} is not a usable socket address",
                value.to_string_lossy()
            )
        })?;
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("cannot create the notify socket")?;
        Ok(Notifier { socket, address })
    }

    /// Sends `message` if the receiver can take it now; a status line
    /// that does not fit is dropped (the next one replaces it anyway).
    pub fn send_now(&self, message: &str) {
        if let Err(e) = rustix::net::sendto(
            &self.socket,
            message.as_bytes(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            &self.address,
        ) {
            tracing::debug!(error = %e, message, "notify message not sent");
        }
    }

    /// Sends `message`, retrying while the receiver's queue is full, for
    /// at most [`IMPORTANT_SEND_TIMEOUT`].
    pub async fn send(&self, message: &str) {
        let deadline = tokio::time::Instant::now() + IMPORTANT_SEND_TIMEOUT;
        loop {
            match rustix::net::sendto(
                &self.socket,
                message.as_bytes(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                &self.address,
            ) {
                Ok(_) => return,
                Err(rustix::io::Errno::AGAIN) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, message, "cannot notify the service manager");
                    return;
                }
            }
        }
    }
}

/// `NOTIFY_SOCKET`'s value, taken out of the environment so the daemons
/// do not inherit it (a daemon must not tell systemd that tend is ready).
/// Call it before any other thread runs.
pub fn take_notify_socket() -> Option<OsString> {
    let value = std::env::var_os(NOTIFY_SOCKET_ENV)?;
    // SAFETY: called first thing in `main`, before the runtime or anything
    // else starts a thread, so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(NOTIFY_SOCKET_ENV) };
    Some(value)
}

/// The daemons' states as events tell them, for the `STATUS=` line.
#[derive(Debug, Default)]
pub struct StateCounts {
    states: HashMap<String, ProcessState>,
}

impl StateCounts {
    /// Every daemon of `names`, starting.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        StateCounts {
            states: names
                .into_iter()
                .map(|name| (name.to_owned(), ProcessState::Starting))
                .collect(),
        }
    }

    /// Takes in `event`.
    pub fn apply(&mut self, name: &str, to: ProcessState) {
        self.states.insert(name.to_owned(), to);
    }

    /// "3 daemons: 2 running, 1 error", states in lifecycle order.
    pub fn summary(&self) -> String {
        let total = self.states.len();
        let parts: Vec<String> = ProcessState::ALL
            .iter()
            .filter_map(|&state| {
                let count = self.states.values().filter(|&&s| s == state).count();
                (count > 0).then(|| format!("{count} {state}"))
            })
            .collect();
        format!(
            "{total} daemon{}: {}",
            if total == 1 { "" } else { "s" },
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract() {
        assert!(Notifier::new(OsStr::new("/run/systemd/notify")).is_ok());
        assert!(Notifier::new(OsStr::new("@tend/notify")).is_ok());
        let error = Notifier::new(OsStr::new("vsock:2:1234"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither a socket path"), "{error}");
        assert!(Notifier::new(OsStr::new(&"/x".repeat(100))).is_err());
    }

    #[test]
    fn the_status_counts_states_from_events() {
        let mut counts = StateCounts::new(["a", "b", "c"]);
        assert_eq!(counts.summary(), "3 daemons: 3 starting");
        counts.apply("a", ProcessState::Running);
        counts.apply("b", ProcessState::Error);
        assert_eq!(
            counts.summary(),
            "3 daemons: 1 starting, 1 running, 1 error"
        );
    }
}
