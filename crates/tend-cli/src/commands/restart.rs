//! `tend restart NAME`: stop a daemon if it is active and start it again;
//! returns once it is running.

use super::operate;
use crate::{SupervisorArgs, failure::CommandResult, protocol::Request};

/// Runs the command.
pub async fn run(target: &SupervisorArgs, name: &str) -> CommandResult {
    let request = Request::Restart { name: name.into() };
    operate(target, request, name).await
}
