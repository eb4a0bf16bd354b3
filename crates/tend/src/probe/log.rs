//! Readiness by a log line: ready when a line of stdout or stderr matches
//! a regular expression. Event-driven: the wait follows the lines as the
//! log pipeline pushes them.

use regex::Regex;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::logs::{LogBuffer, LogLine};

/// Resolves once a line matching `pattern` arrives on `lines` (subscribed
/// before the daemon was spawned), or — should the wait fall behind — is
/// found among the lines written since `mark`.
pub(crate) async fn wait_for_line(
    logs: &LogBuffer,
    mut lines: broadcast::Receiver<LogLine>,
    pattern: &Regex,
    mark: u64,
) {
    if logs.any_since(mark, |text| pattern.is_match(text)) {
        return;
    }
    loop {
        match lines.recv().await {
            Ok(line) if pattern.is_match(&line.text) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {
                if logs.any_since(mark, |text| pattern.is_match(text)) {
                    return;
                }
            }
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}
