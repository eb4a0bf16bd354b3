//! `tend status [NAME] [--json] [--check]`: the daemons' states, as a
//! table or JSON; for one daemon, its whole last error under the table.
//! With `--check`, the exit code says whether every daemon is running
//! (0) or not (1), for scripts and container health probes.

use std::io::Write;

use anyhow::anyhow;

use super::connect;
use crate::{
    SupervisorArgs,
    failure::CommandResult,
    protocol::{ProcessStatus, Request, State},
    sanitize::{Layout, escape_controls},
    table,
};

/// Runs the command.
pub async fn run(
    target: &SupervisorArgs,
    name: Option<String>,
    json: bool,
    check: bool,
) -> CommandResult {
    let mut client = connect(target).await?;
    let one = name.is_some();
    let response = client.call(&Request::Status { name }).await?;
    if !response.ok {
        return Err(super::refused(response, None));
    }
    let processes = response.processes.unwrap_or_default();
    let text = if json {
        serde_json::to_string_pretty(&processes)? + "\n"
    } else {
        let mut text = table::render(&processes);
        if let Some(line) = table::containment_line(&processes) {
            text.push_str(&line);
            text.push('\n');
        }
        let error = processes.first().filter(|_| one);
        if let Some(error) = error.and_then(table::last_error_lines) {
            text.push_str(&error);
        }
        text
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    match not_running(&processes) {
        Some(problem) if check => Err(anyhow!(problem).into()),
        _ => Ok(()),
    }
}

/// For `--check`: which daemons are not running, or `None` when all are.
fn not_running(processes: &[ProcessStatus]) -> Option<String> {
    let down: Vec<String> = processes
        .iter()
        .filter(|p| p.state != State::Running)
        .map(|p| {
            format!(
                "{} is {}",
                escape_controls(&p.name, Layout::Line),
                p.state.as_str()
            )
        })
        .collect();
    (!down.is_empty()).then(|| format!("check failed: {}", down.join(", ")))
}
