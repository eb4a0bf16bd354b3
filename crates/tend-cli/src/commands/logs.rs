//! `tend logs NAME [-n N] [-f] [--raw]`: a daemon's recent output, and
//! with `-f` new output as it comes, until the supervisor stops or the user
//! hits Ctrl-C.
//!
//! The daemon wrote these lines, so their control characters are shown
//! escaped (see `sanitize`) unless `--raw` asks for them as written.

use std::io::Write;

use anyhow::anyhow;

use super::connect;
use crate::{
    SupervisorArgs,
    failure::CommandResult,
    protocol::{LogEntry, Request},
    sanitize::{Layout, escape_controls},
};

/// Runs the command.
pub async fn run(
    target: &SupervisorArgs,
    name: &str,
    lines: usize,
    follow: bool,
    raw: bool,
) -> CommandResult {
    let mut client = connect(target).await?;
    let request = Request::Logs {
        name: name.into(),
        lines,
        follow,
    };
    let first = client.call(&request).await?;
    if !first.ok {
        return Err(super::refused(first, None));
    }
    let mut out = std::io::stdout().lock();
    for line in first.lines.unwrap_or_default() {
        print_line(&mut out, &line, raw)?;
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    while let Some(response) = client.receive().await? {
        let mut out = std::io::stdout().lock();
        if let Some(line) = response.line {
            print_line(&mut out, &line, raw)?;
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

/// One line of output: as written with `raw`, else with its control
/// characters escaped (tabs kept).
fn print_line(out: &mut impl Write, line: &LogEntry, raw: bool) -> std::io::Result<()> {
    if raw {
        writeln!(out, "{}", line.text)
    } else {
        writeln!(out, "{}", escape_controls(&line.text, Layout::Line))
    }
}
