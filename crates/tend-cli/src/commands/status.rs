//! `tend status [NAME] [--json]`: the daemons' states, as a table or JSON.

use std::io::Write;

use anyhow::anyhow;

use super::connect;
use crate::{SupervisorArgs, failure::CommandResult, protocol::Request, table};

/// Runs the command.
pub async fn run(target: &SupervisorArgs, name: Option<String>, json: bool) -> CommandResult {
    let mut client = connect(target).await?;
    let response = client.call(&Request::Status { name }).await?;
    if !response.ok {
        let reason = response.error.unwrap_or_else(|| "no reason given".into());
        return Err(anyhow!(reason).into());
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
        text
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
