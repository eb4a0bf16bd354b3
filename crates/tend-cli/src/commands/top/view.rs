//! What the live view shows, as plain data: the daemons' statuses kept up
//! to date from the `watch` responses, and the text of each cell. Drawing
//! it is `top`'s business; this part is tested without a terminal.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    protocol::{LogEntry, ProcessStatus, Response, Sample, State},
    sanitize::{Layout, escape_controls},
    table::{format_bytes, format_uptime},
};

/// The column headers, in order.
pub const HEADERS: [&str; 9] = [
    "NAME",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "HEALTH",
    "CPU",
    "MEM",
    "LAST LINE",
];

/// One daemon as the view knows it.
#[derive(Debug, Clone)]
struct Daemon {
    status: ProcessStatus,
    last_line: Option<LogEntry>,
    /// CPU time at the previous sample and when it arrived, for the
    /// CPU percentage.
    previous_cpu: Option<(u64, Instant)>,
    /// Share of one core over the last sample interval.
    cpu_percent: Option<f64>,
}

/// The daemons, by name, and the last change seen.
#[derive(Debug, Default)]
pub struct View {
    daemons: BTreeMap<String, Daemon>,
    /// Only this daemon, when the user named one.
    only: Option<String>,
    /// The last state change, in words.
    pub last_event: Option<String>,
}

/// The text of one row, cell by cell, and the daemon's state for its
/// colour.
#[derive(Debug, Clone, PartialEq)]
pub struct RowText {
    /// The cells, in [`HEADERS`] order.
    pub cells: [String; 9],
    /// The daemon's state.
    pub state: State,
}

impl View {
    /// An empty view; `only` restricts it to one daemon.
    pub fn new(only: Option<String>) -> Self {
        View {
            only,
            ..View::default()
        }
    }

    /// Whether the view knows daemon `name`.
    pub fn has(&self, name: &str) -> bool {
        self.daemons.contains_key(name)
    }

    /// Applies one `watch` response, received at `now`.
    pub fn apply(&mut self, response: Response, now: Instant) {
        if let Some(processes) = response.processes {
            // A full snapshot: the first response, or after missed events.
            let mut daemons = BTreeMap::new();
            for status in processes {
                let mut daemon = self.daemons.remove(&status.name).unwrap_or(Daemon {
                    status: status.clone(),
                    last_line: None,
                    previous_cpu: None,
                    cpu_percent: None,
                });
                daemon.status = status;
                daemons.insert(daemon.status.name.clone(), daemon);
            }
            self.daemons = daemons;
        }
        if let Some(process) = response.process {
            match self.daemons.get_mut(&process.name) {
                Some(daemon) => daemon.status = process,
                None => {
                    self.daemons.insert(
                        process.name.clone(),
                        Daemon {
                            status: process,
                            last_line: None,
                            previous_cpu: None,
                            cpu_percent: None,
                        },
                    );
                }
            }
        }
        if let Some(event) = response.event {
            let pid = event
                .pid
                .map(|pid| format!(", pid {pid}"))
                .unwrap_or_default();
            let reason = if event.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", event.reason)
            };
            self.last_event = Some(
                escape_controls(
                    &format!(
                        "{} {}: {} -> {}{pid}{reason}",
                        clock_time(event.time),
                        event.name,
                        event.from.as_str(),
                        event.to.as_str()
                    ),
                    Layout::Line,
                )
                .into_owned(),
            );
        }
        for sample in response.samples.unwrap_or_default() {
            self.apply_sample(sample, now);
        }
    }

    fn apply_sample(&mut self, sample: Sample, now: Instant) {
        let Some(daemon) = self.daemons.get_mut(&sample.name) else {
            return;
        };
        daemon.status.usage = sample.usage;
        daemon.last_line = sample.last_line.or(daemon.last_line.take());
        let cpu_us = sample.usage.map(|usage| usage.cpu_us);
        daemon.cpu_percent = match (cpu_us, daemon.previous_cpu) {
            (Some(cpu), Some((before, then))) if cpu >= before && now > then => {
                let wall = now.duration_since(then).as_secs_f64();
                Some((cpu - before) as f64 / 1e6 / wall * 100.0)
            }
            _ => None,
        };
        daemon.previous_cpu = cpu_us.map(|cpu| (cpu, now));
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        match &self.only {
            Some(only) => usize::from(self.daemons.contains_key(only)),
            None => self.daemons.len(),
        }
    }

    /// At most `count` rows from the `skip`th on, sorted by name, their
    /// times counted to `now`.
    pub fn rows(&self, now: SystemTime, skip: usize, count: usize) -> Vec<RowText> {
        self.daemons
            .values()
            .filter(|daemon| {
                self.only
                    .as_ref()
                    .is_none_or(|only| *only == daemon.status.name)
            })
            .skip(skip)
            .take(count)
            .map(|daemon| row(daemon, now))
            .collect()
    }

    /// "3 daemons: 2 running, 1 error".
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for daemon in self.daemons.values() {
            *counts.entry(daemon.status.state.as_str()).or_default() += 1;
        }
        let total = self.daemons.len();
        let parts: Vec<String> = counts
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        format!(
            "{total} daemon{}: {}",
            if total == 1 { "" } else { "s" },
            if parts.is_empty() {
                "none".to_owned()
            } else {
                parts.join(", ")
            }
        )
    }
}

fn row(daemon: &Daemon, now: SystemTime) -> RowText {
    let status = &daemon.status;
    // Counted here rather than taken from `uptime_ms`, which is as old as
    // the last event of the daemon.
    let uptime = match (status.state, status.started_at) {
        (State::Running, Some(started)) => {
            let started = SystemTime::UNIX_EPOCH + Duration::from_millis(started);
            format_uptime(now.duration_since(started).unwrap_or_default())
        }
        _ => "-".into(),
    };
    let health = match (status.health_check_retries, status.state) {
        (Some(retries), State::Running) if status.failed_health_checks > 0 => {
            format!("{}/{retries} failed", status.failed_health_checks)
        }
        (Some(_), State::Running) => "ok".into(),
        _ => "-".into(),
    };
    let live = status.pid.is_some();
    RowText {
        cells: [
            escape_controls(&status.name, Layout::Line).into_owned(),
            status.state.as_str().to_owned(),
            status.pid.map_or("-".into(), |pid| pid.to_string()),
            uptime,
            status.restart_attempts.to_string(),
            health,
            daemon
                .cpu_percent
                .filter(|_| live)
                .map_or("-".into(), |percent| format!("{percent:.1}%")),
            status
                .usage
                .and_then(|usage| usage.memory_bytes)
                .filter(|_| live)
                .map_or("-".into(), format_bytes),
            daemon.last_line.as_ref().map_or(String::new(), |line| {
                escape_controls(&line.text, Layout::Line).into_owned()
            }),
        ],
        state: status.state,
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn clock_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventEntry, StreamName, Usage};

    fn status(name: &str, state: State, pid: Option<u32>) -> ProcessStatus {
        ProcessStatus {
            pid,
            started_at: pid.map(|_| 1_000),
            ..ProcessStatus::not_started(name, state, None, Some(3))
        }
    }

    fn snapshot(processes: Vec<ProcessStatus>) -> Response {
        Response {
            processes: Some(processes),
            ..Response::ok()
        }
    }

    #[test]
    fn an_event_updates_its_daemon_only() {
        let now = Instant::now();
        let mut view = View::new(None);
        view.apply(
            snapshot(vec![
                status("a", State::Starting, None),
                status("b", State::Running, Some(7)),
            ]),
            now,
        );
        view.apply(
            Response {
                event: Some(EventEntry {
                    name: "a".into(),
                    from: State::Starting,
                    to: State::Running,
                    time: 3_723_000,
                    reason: "ready".into(),
                    pid: Some(5),
                }),
                process: Some(status("a", State::Running, Some(5))),
                ..Response::ok()
            },
            now,
        );
        let rows = view.rows(SystemTime::UNIX_EPOCH + Duration::from_secs(43), 0, 10);
        assert_eq!(
            rows[0].cells[..6],
            ["a", "running", "5", "42s", "0", "ok"].map(String::from)
        );
        assert_eq!(rows[1].cells[1], "running");
        assert_eq!(
            view.last_event.as_deref(),
            Some("01:02:03 a: starting -> running, pid 5 (ready)")
        );
        assert_eq!(view.summary(), "2 daemons: 2 running");
    }

    #[test]
    fn cpu_is_a_share_of_one_core_between_two_samples() {
        let then = Instant::now();
        let mut view = View::new(None);
        view.apply(snapshot(vec![status("a", State::Running, Some(5))]), then);
        let sample = |cpu_us| Response {
            samples: Some(vec![Sample {
                name: "a".into(),
                usage: Some(Usage {
                    cpu_us,
                    memory_bytes: Some(3 * 1024 * 1024),
                }),
                last_line: Some(LogEntry {
                    name: None,
                    stream: StreamName::Stdout,
                    time: 0,
                    text: "hi\x1b[2J".into(),
                }),
            }]),
            ..Response::ok()
        };
        view.apply(sample(1_000_000), then);
        let first = view.rows(SystemTime::now(), 0, 10);
        assert_eq!(first[0].cells[6], "-", "one sample gives no rate");
        view.apply(sample(1_500_000), then + Duration::from_secs(2));
        let cells = &view.rows(SystemTime::now(), 0, 10)[0].cells;
        assert_eq!(cells[6], "25.0%");
        assert_eq!(cells[7], "3.0 MiB");
        assert_eq!(cells[8], r"hi\x1b[2J", "daemon text is escaped");
    }

    #[test]
    fn only_the_rows_asked_for_are_built() {
        let mut view = View::new(None);
        let names = ["a", "b", "c", "d"];
        view.apply(
            snapshot(
                names
                    .map(|name| status(name, State::Stopped, None))
                    .to_vec(),
            ),
            Instant::now(),
        );
        assert_eq!(view.len(), 4);
        let rows = view.rows(SystemTime::now(), 1, 2);
        assert_eq!(
            rows.iter()
                .map(|row| row.cells[0].as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn one_daemon_when_named() {
        let mut view = View::new(Some("b".into()));
        view.apply(
            snapshot(vec![
                status("a", State::Stopped, None),
                status("b", State::Error, None),
            ]),
            Instant::now(),
        );
        let rows = view.rows(SystemTime::now(), 0, 10);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cells[..3], ["b", "error", "-"].map(String::from));
        assert!(view.has("a"));
    }
}
