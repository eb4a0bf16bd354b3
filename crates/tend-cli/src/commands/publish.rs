//! `tend publish EVENT [DATA_JSON]`: publish an event to the daemons
//! subscribed to it (`events` in their config), and say how many that is.

use anyhow::anyhow;
use serde_json::Value;

use super::connect;
use crate::{
    SupervisorArgs,
    failure::{CommandResult, Failure},
    protocol::Request,
};

/// Runs the command.
pub async fn run(target: &SupervisorArgs, event: &str, data: Option<&str>) -> CommandResult {
    let data = match data {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Failure::usage(anyhow!("DATA_JSON is not valid JSON ({e}): {text}")))?,
    };
    if event.is_empty() {
        return Err(Failure::usage(anyhow!("the event name must not be empty")));
    }
    let mut client = connect(target).await?;
    let request = Request::Publish {
        event: event.into(),
        data,
    };
    let response = client.call(&request).await?;
    if !response.ok {
        let reason = response.error.unwrap_or_else(|| "no reason given".into());
        return Err(anyhow!("{event}: {reason}").into());
    }
    let queued = response.queued.unwrap_or(0);
    let plural = if queued == 1 { "" } else { "s" };
    println!("{event}: queued for {queued} daemon{plural}");
    Ok(())
}
