//! Printing the daemons' state changes while `tend up` runs, one line per
//! event, at the wall-clock time it happened:
//! `16:05:10.153  echo  starting -> running, pid 4242 (ready)`.
//! A failure the daemon's stderr explains carries that output as indented
//! lines under its line.
//!
//! Events are printed on the task of `tend up` itself, while it waits for
//! something else ([`Progress::print_while`]), and the ones already queued
//! are printed before that wait returns. So the line saying a daemon is
//! running always comes before the status table that shows it running.

use std::{future::Future, sync::Arc, time::SystemTime};

use tend::{BackgroundProcessManager, ProcessEvent, ProcessState, Subscription};

use crate::{
    config::TendConfig,
    notify::{Notifier, StateCounts},
    protocol::State,
    sanitize::{Layout, escape_controls},
    style::{self, Painter},
};

/// The event stream and how to print it.
pub struct Progress {
    events: Subscription,
    name_width: usize,
    painter: Painter,
    /// Called with each event that puts a daemon in `error`.
    on_error: Box<dyn FnMut(&ProcessEvent) + Send>,
    /// The service manager to send a `STATUS=` line per event to.
    notify: Option<(Arc<Notifier>, StateCounts)>,
}

impl Progress {
    /// Subscribes to `manager`'s events; `on_error` is told of each
    /// daemon that ends in `error`. With a `notifier`, each event also
    /// updates the service manager's status line.
    pub fn subscribe(
        manager: &BackgroundProcessManager,
        config: &TendConfig,
        notifier: Option<Arc<Notifier>>,
        on_error: impl FnMut(&ProcessEvent) + Send + 'static,
    ) -> Self {
        Progress {
            notify: notifier.map(|notifier| {
                let names = config.processes.iter().map(|p| p.name.as_str());
                (notifier, StateCounts::new(names))
            }),
            events: manager.subscribe(),
            name_width: config
                .processes
                .iter()
                .map(|p| p.name.len())
                .max()
                .unwrap_or(0),
            painter: style::stdout(),
            on_error: Box::new(on_error),
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
        let line = EventLine {
            name: &event.name,
            from: event.from,
            to: event.to,
            reason: &event.reason,
            pid: event.pid,
        };
        say!(
            "{}",
            line.format(self.name_width, local_time(event.time), self.painter)
        );
        if event.to == ProcessState::Error {
            (self.on_error)(event);
        }
        if let Some((notifier, counts)) = &mut self.notify {
            counts.apply(&event.name, event.to);
            notifier.send_now(&format!("STATUS={}", counts.summary()));
        }
    }

    /// The daemons' states in a few words, when notifying.
    pub fn summary(&self) -> Option<String> {
        self.notify.as_ref().map(|(_, counts)| counts.summary())
    }
}

/// `16:05:10.153` in the local time zone (UTC when it cannot be told).
pub fn local_time(time: SystemTime) -> String {
    let Ok(timestamp) = jiff::Timestamp::try_from(time) else {
        return "??:??:??.???".to_owned();
    };
    timestamp
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%H:%M:%S%.3f")
        .to_string()
}

/// What a printed event line shows of a [`ProcessEvent`] (which only the
/// library builds).
struct EventLine<'a> {
    name: &'a str,
    from: ProcessState,
    to: ProcessState,
    reason: &'a str,
    pid: Option<u32>,
}

impl EventLine<'_> {
    /// The line: the time `clock`, the name padded to `name_width`, the
    /// change, and the reason. The reason may hold the daemon's stderr
    /// tail (its lines after the first): each becomes an indented line
    /// under the event, with its control characters escaped, so none can
    /// pass for a line of tend's.
    fn format(&self, name_width: usize, clock: String, painter: Painter) -> String {
        let pid = self
            .pid
            .map(|pid| format!(", pid {pid}"))
            .unwrap_or_default();
        // The library names the daemon in its errors; the line does already.
        let quoted = format!("{:?} ", self.name);
        let reason = self.reason.strip_prefix(&quoted).unwrap_or(self.reason);
        let mut lines = reason.lines();
        // "exited with code 1:" introduces the tail, which the indent does.
        let summary = lines.next().unwrap_or_default().trim_end_matches(':');
        let name = escape_controls(self.name, Layout::Line);
        let mut text = format!(
            "{}  {name:<name_width$}  {} -> {}{pid}",
            painter.dim(&clock),
            self.from,
            painter.state(self.to.as_str(), State::from(self.to)),
        );
        if !summary.is_empty() {
            text.push_str(&format!(" ({})", escape_controls(summary, Layout::Line)));
        }
        for line in lines {
            text.push_str("\n    ");
            text.push_str(&escape_controls(line, Layout::Line));
        }
        text
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const CLOCK: &str = "16:05:10.153";

    #[test]
    fn an_event_is_one_readable_line() {
        let event = EventLine {
            name: "echo",
            from: ProcessState::Starting,
            to: ProcessState::Running,
            reason: "ready",
            pid: Some(42),
        };
        assert_eq!(
            event.format(6, CLOCK.into(), Painter::new(false)),
            "16:05:10.153  echo    starting -> running, pid 42 (ready)"
        );
    }

    #[test]
    fn a_stderr_tail_is_indented_under_the_event() {
        let event = EventLine {
            name: "db",
            from: ProcessState::Starting,
            to: ProcessState::Error,
            reason: "\"db\" exited with code 1 before it was ready:\nno config\nbye",
            pid: Some(7),
        };
        assert_eq!(
            event.format(2, CLOCK.into(), Painter::new(false)),
            "16:05:10.153  db  starting -> error, pid 7 (exited with code 1 before it was ready)\n    no config\n    bye"
        );
    }

    #[test]
    fn wall_clock_times_have_milliseconds() {
        let clock = local_time(SystemTime::now());
        assert_eq!(clock.len(), "16:05:10.153".len(), "{clock}");
        assert_eq!(&clock[2..3], ":");
    }

    #[test]
    fn a_stderr_tail_in_the_reason_is_escaped() {
        let event = EventLine {
            name: "echo",
            from: ProcessState::Starting,
            to: ProcessState::Error,
            reason: "exited with code 1:\n\x1b]0;pwned\x07\x1b[2J\rbye",
            pid: None,
        };
        assert_eq!(
            event.format(4, CLOCK.into(), Painter::new(false)),
            "16:05:10.153  echo  starting -> error (exited with code 1)\n    \\x1b]0;pwned\\x07\\x1b[2J\\rbye"
        );
    }
}
