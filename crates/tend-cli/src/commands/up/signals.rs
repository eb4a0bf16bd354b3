//! The signals `tend up` acts on: SIGINT (Ctrl-C) and SIGTERM end
//! supervision; SIGHUP reloads the config file, as it does for nginx and
//! most daemons (so it no longer stops `tend up` when its terminal goes
//! away: run it under `nohup`, `setsid` or a service manager, or stop it
//! with `tend down`). They are caught from the start, so a signal that
//! arrives while daemons are starting still stops them gracefully, and a
//! SIGHUP received then is acted on once supervision begins.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listeners for the shutdown and reload signals.
pub struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl ShutdownSignals {
    /// Starts catching the signals (their default action, dying at once,
    /// no longer applies).
    pub fn install() -> io::Result<Self> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next shutdown signal received. Cancel-safe.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    /// The next signal received while supervising: a shutdown signal's
    /// name, or `None` for SIGHUP. Cancel-safe.
    pub async fn next_or_hangup(&mut self) -> Option<&'static str> {
        tokio::select! {
            _ = self.interrupt.recv() => Some("SIGINT"),
            _ = self.terminate.recv() => Some("SIGTERM"),
            _ = self.hangup.recv() => None,
        }
    }
}
