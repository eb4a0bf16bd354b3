//! `tend stop NAME`: stop a daemon; returns once its processes are gone.

use super::operate;
use crate::{SupervisorArgs, failure::CommandResult, protocol::Request};

/// Runs the command.
pub async fn run(target: &SupervisorArgs, name: &str) -> CommandResult {
    let request = Request::Stop { name: name.into() };
    operate(target, request, name).await
}
