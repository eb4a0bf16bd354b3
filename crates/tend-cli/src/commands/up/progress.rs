//! Printing the daemons' state changes while `tend up` runs, one line per
//! event: `[    0.153s] echo  starting -> running, pid 4242 (ready)`.
//!
//! Events are printed on the task of `tend up` itself, while it waits for
//! something else ([`Progress::print_while`]), and the ones already queued
//! are printed before that wait returns. So the line saying a daemon is
//! running always comes before the status table that shows it running.

use std::{future::Future, time::SystemTime};

use tend::{BackgroundProcessManager, ProcessEvent, ProcessState, Subscription};

use crate::{
    config::TendConfig,
    sanitize::{Layout, escape_controls},
};

/// The event stream and how to print it.
pub struct Progress {
    events: Subscription,
    since: SystemTime,
    name_width: usize,
}

impl Progress {
    /// Subscribes to `manager`'s events; times are counted from now.
    pub fn subscribe(manager: &BackgroundProcessManager, config: &TendConfig) -> Self {
        Progress {
            events: manager.subscribe(),
            since: SystemTime::now(),
            name_width: config
                .processes
                .iter()
                .map(|p| p.name.len())
                .max()
                .unwrap_or(0),
        }
    }

    /// Runs `work` to completion, printing events as they come, then the
    /// events already queued, and returns what `work` returned.
    pub async fn print_while<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let output = loop {
            tokio::select! {
                output = &mut work => break output,
                Some(event) = self.events.recv() => self.print(&event),
            }
        };
        while let Some(event) = self.events.try_recv() {
            self.print(&event);
        }
        output
    }

    fn print(&self, event: &ProcessEvent) {
        let line = EventLine {
            name: &event.name,
            from: event.from,
            to: event.to,
            time: event.time,
            reason: &event.reason,
            pid: event.pid,
        };
        say!("{}", line.format(self.since, self.name_width));
    }
}

/// What a printed event line shows of a [`ProcessEvent`] (which only the
/// library builds).
struct EventLine<'a> {
    name: &'a str,
    from: ProcessState,
    to: ProcessState,
    time: SystemTime,
    reason: &'a str,
    pid: Option<u32>,
}

impl EventLine<'_> {
    /// The line, timed from `since`, the name padded to `name_width`.
    /// The reason may hold the daemon's stderr tail, so control characters
    /// are escaped, a newline included: the event stays on its line.
    fn format(&self, since: SystemTime, name_width: usize) -> String {
        let elapsed = self.time.duration_since(since).unwrap_or_default();
        let pid = self
            .pid
            .map(|pid| format!(", pid {pid}"))
            .unwrap_or_default();
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape_controls(self.reason, Layout::Line))
        };
        format!(
            "[{:>9.3}s] {:<name_width$}  {} -> {}{pid}{reason}",
            elapsed.as_secs_f64(),
            self.name,
            self.from,
            self.to,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_event_is_one_readable_line() {
        let since = SystemTime::UNIX_EPOCH;
        let event = EventLine {
            name: "echo",
            from: ProcessState::Starting,
            to: ProcessState::Running,
            time: since + Duration::from_millis(1_530),
            reason: "ready",
            pid: Some(42),
        };
        assert_eq!(
            event.format(since, 6),
            "[    1.530s] echo    starting -> running, pid 42 (ready)"
        );
    }

    #[test]
    fn a_stderr_tail_in_the_reason_is_escaped() {
        let since = SystemTime::UNIX_EPOCH;
        let event = EventLine {
            name: "echo",
            from: ProcessState::Starting,
            to: ProcessState::Error,
            time: since,
            reason: "exited with code 1: \x1b]0;pwned\x07\x1b[2J | bye\r",
            pid: None,
        };
        assert_eq!(
            event.format(since, 4),
            r"[    0.000s] echo  starting -> error (exited with code 1: \x1b]0;pwned\x07\x1b[2J | bye\r)"
        );
    }
}
