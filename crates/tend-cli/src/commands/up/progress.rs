//! Printing the daemons' state changes while `tend up` runs, one line per
//! event: `[    0.153s] echo  starting -> running, pid 4242 (ready)`.
//!
//! Events are printed on the task of `tend up` itself, while it waits for
//! something else ([`Progress::print_while`]), and the ones already queued
//! are printed before that wait returns. So the line saying a daemon is
//! running always comes before the status table that shows it running.

use std::{future::Future, sync::Arc, time::SystemTime};

use tend::{BackgroundProcessManager, ProcessEvent, Subscription};

use crate::{
    config::TendConfig,
    notify::{Notifier, StateCounts},
    sanitize::{Layout, escape_controls},
};

/// The event stream and how to print it.
pub struct Progress {
    events: Subscription,
    since: SystemTime,
    name_width: usize,
    /// The service manager to send a `STATUS=` line per event to.
    notify: Option<(Arc<Notifier>, StateCounts)>,
}

impl Progress {
    /// Subscribes to `manager`'s events; times are counted from now.
    /// With a `notifier`, each event also updates the service manager's
    /// status line.
    pub fn subscribe(
        manager: &BackgroundProcessManager,
        config: &TendConfig,
        notifier: Option<Arc<Notifier>>,
    ) -> Self {
        Progress {
            notify: notifier.map(|notifier| {
                let names = config.processes.iter().map(|p| p.name.as_str());
                (notifier, StateCounts::new(names))
            }),
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

    fn print(&mut self, event: &ProcessEvent) {
        say!("{}", format_event(event, self.since, self.name_width));
        if let Some((notifier, counts)) = &mut self.notify {
            counts.apply(event);
            notifier.send_now(&format!("STATUS={}", counts.summary()));
        }
    }

    /// The daemons' states in a few words, when notifying.
    pub fn summary(&self) -> Option<String> {
        self.notify.as_ref().map(|(_, counts)| counts.summary())
    }
}

/// One line for `event`, timed from `since`, the name padded to `name_width`.
/// The reason may hold the daemon's stderr tail, so control characters are
/// escaped, a newline included: the event stays on its line.
fn format_event(event: &ProcessEvent, since: SystemTime, name_width: usize) -> String {
    let elapsed = event.time.duration_since(since).unwrap_or_default();
    let pid = event
        .pid
        .map(|pid| format!(", pid {pid}"))
        .unwrap_or_default();
    let reason = if event.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape_controls(&event.reason, Layout::Line))
    };
    format!(
        "[{:>9.3}s] {:<name_width$}  {} -> {}{pid}{reason}",
        elapsed.as_secs_f64(),
        event.name,
        event.from,
        event.to,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tend::ProcessState;

    use super::*;

    #[test]
    fn an_event_is_one_readable_line() {
        let since = SystemTime::UNIX_EPOCH;
        let event = ProcessEvent {
            name: "echo".into(),
            from: ProcessState::Starting,
            to: ProcessState::Running,
            time: since + Duration::from_millis(1_530),
            reason: "ready".into(),
            pid: Some(42),
        };
        assert_eq!(
            format_event(&event, since, 6),
            "[    1.530s] echo    starting -> running, pid 42 (ready)"
        );
    }

    #[test]
    fn a_stderr_tail_in_the_reason_is_escaped() {
        let since = SystemTime::UNIX_EPOCH;
        let event = ProcessEvent {
            name: "echo".into(),
            from: ProcessState::Starting,
            to: ProcessState::Error,
            time: since,
            reason: "exited with code 1: \x1b]0;pwned\x07\x1b[2J | bye\r".into(),
            pid: None,
        };
        assert_eq!(
            format_event(&event, since, 4),
            r"[    0.000s] echo  starting -> error (exited with code 1: \x1b]0;pwned\x07\x1b[2J | bye\r)"
        );
    }
}
