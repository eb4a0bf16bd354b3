//! `tend logs [NAME] [-n N] [-f] [-t] [--raw]`: recent output of one
//! daemon, or of every daemon interleaved in time order with each line
//! prefixed by its daemon's name (coloured on a terminal); with `-f`, new
//! output as it comes, until the supervisor stops or the user hits Ctrl-C.
//!
//! A stderr line is marked `[stderr]`; where one incarnation ends and the
//! next begins, tend's marker line says so (`--- restarted, pid 4242 ---`).
//! When no supervisor runs, the lines come from the daemons' log files.
//!
//! The daemon wrote these lines, so their control characters are shown
//! escaped (see `sanitize`) unless `--raw` asks for them as written.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use anyhow::anyhow;

use super::{Target, control_socket, verify};
use crate::{
    SupervisorArgs,
    client::{ControlClient, NotRunning},
    config,
    failure::{CommandResult, Failure},
    protocol::{LogEntry, Request, StreamName},
    sanitize::{Layout, escape_controls},
    style::{self, Painter},
};

/// What to show and how.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How many recent lines.
    pub lines: usize,
    /// Keep printing new lines.
    pub follow: bool,
    /// Print control characters as written.
    pub raw: bool,
    /// Prefix each line with its time.
    pub timestamps: bool,
}

/// Runs the command.
pub async fn run(target: &SupervisorArgs, name: Option<&str>, options: Options) -> CommandResult {
    let resolved = control_socket(target)?;
    let client = match ControlClient::connect(&resolved.socket).await {
        Err(e) if e.downcast_ref::<NotRunning>().is_some() && resolved.config.is_some() => {
            return from_files(&resolved, name, options, &e);
        }
        Err(e) => return Err(e.into()),
        Ok(client) => client,
    };
    let mut client = verify(client, &resolved).await?;
    // The names, for the prefix width and the colours.
    let names = match name {
        Some(name) => vec![name.to_owned()],
        None => {
            let status = client.call(&Request::Status { name: None }).await?;
            status
                .processes
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.name)
                .collect()
        }
    };
    let printer = Printer::new(name.is_none(), &names, options);
    let request = Request::Logs {
        name: name.map(str::to_owned),
        lines: options.lines,
        follow: options.follow,
    };
    let first = client.call(&request).await?;
    if !first.ok {
        return Err(super::refused(first, None));
    }
    let mut out = std::io::stdout().lock();
    for line in first.lines.unwrap_or_default() {
        printer.print(&mut out, &line)?;
    }
    out.flush()?;
    drop(out);
    if !options.follow {
        return Ok(());
    }
    while let Some(response) = client.receive().await? {
        let mut out = std::io::stdout().lock();
        if let Some(line) = response.line {
            printer.print(&mut out, &line)?;
        }
        if let Some(missed) = response.missed {
            eprintln!("tend: {missed} lines skipped (output came faster than it was read)");
        }
        if let Some(error) = response.error {
            return Err(anyhow!(error).into());
        }
        out.flush()?;
    }
    Ok(())
}

/// No supervisor runs: the newest lines of the daemons' log files, merged
/// in time order like the supervisor's answer.
fn from_files(
    target: &Target,
    name: Option<&str>,
    options: Options,
    not_running: &anyhow::Error,
) -> CommandResult {
    if options.follow {
        return Err(anyhow!("{not_running:#}; -f follows a running supervisor only").into());
    }
    let file = target.config.as_deref().unwrap_or(std::path::Path::new(""));
    let config = config::load(file).map_err(Failure::usage)?;
    let daemons: Vec<_> = match name {
        Some(name) => {
            let Some(daemon) = config.processes.iter().find(|p| p.name == name) else {
                let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
                return Err(Failure::usage(anyhow!(
                    "no daemon named {name:?} in {} (its daemons: {})",
                    config.file.display(),
                    names.join(", ")
                )));
            };
            vec![daemon]
        }
        None => config.processes.iter().collect(),
    };
    let mut entries = Vec::new();
    for daemon in &daemons {
        let Some(path) = &daemon.log_file else {
            continue;
        };
        let lines =
            tend::read_log_file(path, daemon.log_file_keep, options.lines).map_err(|e| {
                anyhow!(
                    "cannot read the log file {} of {}: {e}",
                    path.display(),
                    daemon.name
                )
            })?;
        entries.extend(lines.into_iter().map(|line| LogEntry {
            name: name.is_none().then(|| daemon.name.clone()),
            ..LogEntry::from(line)
        }));
    }
    entries.sort_by_key(|entry| entry.time);
    let skip = entries.len().saturating_sub(options.lines);
    eprintln!("tend: no supervisor is running; these lines are from the log files");
    let names: Vec<String> = daemons.iter().map(|d| d.name.clone()).collect();
    let printer = Printer::new(name.is_none(), &names, options);
    let mut out = std::io::stdout().lock();
    for entry in &entries[skip..] {
        printer.print(&mut out, entry)?;
    }
    out.flush()?;
    Ok(())
}

/// How lines are printed.
struct Printer<'n> {
    /// Prefix lines with their daemon's name (every daemon's output).
    prefixed: bool,
    names: &'n [String],
    width: usize,
    options: Options,
    painter: Painter,
}

impl<'n> Printer<'n> {
    fn new(prefixed: bool, names: &'n [String], options: Options) -> Self {
        Printer {
            prefixed,
            names,
            width: names.iter().map(|n| n.chars().count()).max().unwrap_or(0),
            options,
            painter: style::stdout(),
        }
    }

    fn print(&self, out: &mut impl Write, line: &LogEntry) -> std::io::Result<()> {
        writeln!(out, "{}", self.format(line))
    }

    /// `[TIME ][NAME | ][[stderr] ]TEXT`, or tend's marker line.
    fn format(&self, line: &LogEntry) -> String {
        let mut text = String::new();
        if self.options.timestamps {
            text.push_str(&self.painter.dim(&timestamp(line.time)));
            text.push(' ');
        }
        if self.prefixed {
            let name = line.name.as_deref().unwrap_or_default();
            let index = self.names.iter().position(|n| n == name).unwrap_or(0);
            let padded = format!(
                "{:<width$}",
                escape_controls(name, Layout::Line),
                width = self.width
            );
            text.push_str(&self.painter.name(&padded, index));
            text.push_str(" | ");
        }
        let body = if self.options.raw {
            line.text.clone()
        } else {
            escape_controls(&line.text, Layout::Line).into_owned()
        };
        match line.stream {
            StreamName::Stdout => text.push_str(&body),
            StreamName::Stderr => {
                text.push_str(&self.painter.stderr("[stderr]"));
                text.push(' ');
                text.push_str(&body);
            }
            StreamName::Tend => text.push_str(&self.painter.dim(&format!("--- {body} ---"))),
        }
        text
    }
}

/// `2026-12-02T16:05:10.153+01:00` in the local time zone; `-` for a line
/// of an old log file, which has no time.
fn timestamp(unix_ms: u64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    match jiff::Timestamp::try_from(time) {
        Ok(time) if unix_ms > 0 => time
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string(),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: Option<&str>, stream: StreamName, text: &str) -> LogEntry {
        LogEntry {
            name: name.map(str::to_owned),
            stream,
            time: 0,
            text: text.into(),
        }
    }

    fn options() -> Options {
        Options {
            lines: 10,
            follow: false,
            raw: false,
            timestamps: false,
        }
    }

    #[test]
    fn every_daemons_lines_are_prefixed_and_streams_told_apart() {
        let names = ["web".to_owned(), "db".to_owned()];
        let printer = Printer {
            painter: Painter::new(false),
            ..Printer::new(true, &names, options())
        };
        let line = |name, stream, text| printer.format(&entry(Some(name), stream, text));
        assert_eq!(line("db", StreamName::Stdout, "ready"), "db  | ready");
        assert_eq!(
            line("web", StreamName::Stderr, "oops\x1b[2J"),
            r"web | [stderr] oops\x1b[2J"
        );
        assert_eq!(
            line("web", StreamName::Tend, "restarted, pid 42"),
            "web | --- restarted, pid 42 ---"
        );
        let one = Printer {
            painter: Painter::new(false),
            ..Printer::new(false, &names[..1], options())
        };
        assert_eq!(one.format(&entry(None, StreamName::Stdout, "hi")), "hi");
    }

    #[test]
    fn timestamps_are_local_with_milliseconds() {
        let stamp = timestamp(1_764_691_510_153);
        assert!(stamp.contains(".153"), "{stamp}");
        assert_eq!(
            stamp.len(),
            "2025-12-02T16:05:10.153+00:00".len(),
            "{stamp}"
        );
        assert_eq!(timestamp(0), "-");
    }
}
