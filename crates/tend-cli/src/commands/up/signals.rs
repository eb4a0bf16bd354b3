//! The signals that end supervision: SIGINT (Ctrl-C), SIGTERM and SIGHUP
//! (the terminal went away). They are caught from the start, so a signal
//! that arrives while daemons are starting still stops them gracefully.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listeners for the shutdown signals.
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

    /// The name of the next signal received. Cancel-safe.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}
