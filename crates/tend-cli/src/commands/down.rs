//! `tend down`: stop every daemon and the supervisor; returns once the
//! supervisor is gone.

use super::connect;
use crate::{SupervisorArgs, failure::CommandResult, protocol::Request};

/// Runs the command.
pub async fn run(target: &SupervisorArgs) -> CommandResult {
    let mut client = connect(target).await?;
    let response = client.call(&Request::Down).await?;
    if !response.ok {
        return Err(super::refused(response, None));
    }
    if let Some(supervisor) = &response.supervisor {
        println!("stopping tend (pid {}) and its daemons…", supervisor.pid);
    }
    // The supervisor keeps this connection open until it has stopped
    // everything and released its state directory.
    while client.receive().await?.is_some() {}
    println!("tend is down");
    Ok(())
}
