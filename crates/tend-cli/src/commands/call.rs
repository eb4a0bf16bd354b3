//! `tend call NAME METHOD [PARAMS_JSON] [--timeout 30s]`: call a JSON-RPC
//! method of a daemon through the supervisor and print the result as
//! pretty JSON.

use std::{io::Write, time::Duration};

use anyhow::anyhow;
use serde_json::Value;

use super::connect;
use crate::{
    SupervisorArgs,
    failure::{CommandResult, Failure},
    protocol::Request,
    sanitize::{Layout, escape_controls},
};

/// Runs the command.
pub async fn run(
    target: &SupervisorArgs,
    name: &str,
    method: &str,
    params: Option<&str>,
    timeout: Duration,
) -> CommandResult {
    let params = parse_params(params).map_err(|e| Failure::usage(anyhow!(e)))?;
    let mut client = connect(target).await?;
    let request = Request::Call {
        name: name.into(),
        method: method.into(),
        params,
        timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
    };
    let response = client.call(&request).await?;
    if let Some(error) = response.rpc_error {
        // The daemon wrote the message: one line, so a newline in it is
        // escaped too and cannot start a line that looks like tend's. (All
        // of the error is escaped again when printed, `data` included.)
        // (The method is the operator's, but it is echoed on the same line.)
        let mut text = format!(
            "{name}: {} failed: RPC error {}: {}",
            escape_controls(method, Layout::Line),
            error.code,
            escape_controls(&error.message, Layout::Line)
        );
        if let Some(data) = error.data {
            text.push_str(&format!("\n  data: {data}"));
        }
        return Err(anyhow!(text).into());
    }
    if !response.ok {
        return Err(super::refused(
            response,
            Some(&format!("{name}: {method} failed")),
        ));
    }
    let Some(result) = response.result else {
        return Err(anyhow!("the supervisor's answer has no result").into());
    };
    let text = serde_json::to_string_pretty(&result)? + "\n";
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// The JSON-RPC params from the command line: an object or an array, or
/// none.
fn parse_params(text: Option<&str>) -> Result<Value, String> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    let params: Value = serde_json::from_str(text)
        .map_err(|e| format!("PARAMS_JSON is not valid JSON ({e}): {text}"))?;
    if params.is_object() || params.is_array() {
        Ok(params)
    } else {
        Err(format!(
            "PARAMS_JSON must be a JSON object or array (JSON-RPC params by name or by position), not {text}; e.g. '{{\"key\": 1}}' or '[1, 2]'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn params_are_an_object_an_array_or_nothing() {
        assert_eq!(parse_params(None).unwrap(), Value::Null);
        assert_eq!(parse_params(Some(r#"{"a":1}"#)).unwrap(), json!({"a": 1}));
        assert_eq!(parse_params(Some("[1, \"x\"]")).unwrap(), json!([1, "x"]));
        for bad in ["{a:1}", "", "[1,", "5", "\"text\"", "null", "true"] {
            let error = parse_params(Some(bad)).unwrap_err();
            assert!(error.contains("PARAMS_JSON"), "{bad:?}: {error}");
        }
    }
}
