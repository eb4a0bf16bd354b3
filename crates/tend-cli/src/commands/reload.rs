//! `tend reload`: make the running supervisor reread its config file and
//! apply it; prints what changed. A file with problems changes nothing:
//! the problems are printed and the command fails with exit code 2.

use anyhow::anyhow;

use super::connect;
use crate::{
    SupervisorArgs,
    failure::{CommandResult, Failure},
    protocol::{ReloadSummary, Request},
    sanitize::{Layout, escape_controls},
};

/// Runs the command.
pub async fn run(target: &SupervisorArgs) -> CommandResult {
    let mut client = connect(target).await?;
    let response = client.call(&Request::Reload).await?;
    if !response.ok {
        let reason = response.error.unwrap_or_else(|| "no reason given".into());
        return Err(Failure::usage(anyhow!("reload refused: {reason}")));
    }
    let summary = response.reload.unwrap_or_default();
    for line in describe_reload(&summary, &response.notes) {
        println!("{}", escape_controls(&line, Layout::Lines));
    }
    if response.notes.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("reloaded, but not every daemon started (see above)").into())
    }
}

/// The lines that tell what a reload did: one per kind of change, then
/// the notes.
pub fn describe_reload(summary: &ReloadSummary, notes: &[String]) -> Vec<String> {
    let kinds = [
        ("started (new)", &summary.started),
        ("added, not started (autostart = false)", &summary.added),
        ("stopped (removed from the file)", &summary.removed),
        ("restarted (settings changed)", &summary.restarted),
        (
            "updated, not running (settings apply at the next start)",
            &summary.updated,
        ),
        ("started again (a dependency had failed)", &summary.retried),
    ];
    let mut lines: Vec<String> = kinds
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("reload: {what}: {}", names.join(", ")))
        .collect();
    let unchanged = summary.unchanged.len();
    lines.push(match (lines.is_empty(), unchanged) {
        (true, _) => "reload: nothing changed".to_owned(),
        (false, 1) => "reload: 1 daemon unchanged".to_owned(),
        (false, n) => format!("reload: {n} daemons unchanged"),
    });
    lines.extend(notes.iter().map(|note| format!("reload: {note}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_reads_as_one_line_per_change() {
        let summary = ReloadSummary {
            started: vec!["new".into()],
            restarted: vec!["a".into(), "b".into()],
            unchanged: vec!["c".into()],
            ..ReloadSummary::default()
        };
        assert_eq!(
            describe_reload(&summary, &["new did not start: boom".into()]),
            [
                "reload: started (new): new",
                "reload: restarted (settings changed): a, b",
                "reload: 1 daemon unchanged",
                "reload: new did not start: boom",
            ]
        );
        let nothing = ReloadSummary {
            unchanged: vec!["c".into(), "d".into()],
            ..ReloadSummary::default()
        };
        assert_eq!(describe_reload(&nothing, &[]), ["reload: nothing changed"]);
    }
}
