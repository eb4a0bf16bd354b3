//! `tend start NAME`: start a daemon; returns once it is running.

use super::operate;
use crate::{SupervisorArgs, failure::CommandResult, protocol::Request};

/// Runs the command.
pub async fn run(target: &SupervisorArgs, name: &str) -> CommandResult {
    let request = Request::Start { name: name.into() };
    operate(target, request, name).await
}
