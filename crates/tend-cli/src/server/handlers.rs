//! One handler per control request.

use std::{io, time::Duration};

use serde_json::Value;
use tend::{LogLine, ProcessState, rpc::RpcError};

use super::{After, Connection, ServerContext};
use crate::protocol::{
    DEFAULT_CALL_TIMEOUT_MS, LogEntry, Request, Response, RpcErrorObject, SupervisorInfo,
};

/// Answers `request` on `connection`.
///
/// Each connection is served by its own task, so a handler that waits (a
/// start, a stop, a call to a daemon) holds up only the requests that
/// come after it on the same connection.
pub async fn handle(
    context: &ServerContext,
    request: Request,
    connection: &mut Connection<'_>,
) -> io::Result<After> {
    let response = match request {
        Request::Info => info(context),
        Request::Status { name } => status(context, name.as_deref()),
        Request::Start { name } => start(context, &name).await,
        Request::Stop { name } => stop(context, &name).await,
        Request::Restart { name } => restart(context, &name).await,
        Request::Logs {
            name,
            lines,
            follow,
        } => return logs(context, &name, lines, follow, connection).await,
        Request::Call {
            name,
            method,
            params,
            timeout_ms,
        } => call(context, &name, &method, params, timeout_ms).await,
        Request::Publish { event, data } => publish(context, &event, data),
        Request::Down => {
            connection.send(&down(context)).await?;
            return Ok(After::HoldUntilExit);
        }
    };
    connection.send(&response).await?;
    Ok(After::Continue)
}

fn supervisor_info(context: &ServerContext) -> SupervisorInfo {
    SupervisorInfo {
        pid: std::process::id(),
        config_file: context.config.file.clone(),
        state_dir: context.config.state_dir.path().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn info(context: &ServerContext) -> Response {
    Response {
        supervisor: Some(supervisor_info(context)),
        ..Response::ok()
    }
}

fn status(context: &ServerContext, name: Option<&str>) -> Response {
    let processes = match name {
        Some(name) => match context.process_status(name) {
            Some(status) => vec![status],
            None => return Response::error(format!("no daemon named {name:?}")),
        },
        None => context.statuses(),
    };
    Response {
        processes: Some(processes),
        ..Response::ok()
    }
}

/// The response to an operation on `name` that ended with `result`.
fn outcome(context: &ServerContext, name: &str, result: Result<(), String>) -> Response {
    let response = match result {
        Ok(()) => Response::ok(),
        Err(e) => Response::error(e),
    };
    Response {
        process: context.process_status(name),
        ..response
    }
}

async fn start(context: &ServerContext, name: &str) -> Response {
    if let Err(message) = context.config_of(name) {
        return Response::error(message);
    }
    let result = context.start(name).await;
    outcome(context, name, result)
}

async fn stop(context: &ServerContext, name: &str) -> Response {
    if let Err(message) = context.config_of(name) {
        return Response::error(message);
    }
    let result = match context.manager.stop_process(name).await {
        // Configured but never started: nothing to stop.
        Err(tend::Error::UnknownProcess(_)) => Ok(()),
        other => other.map_err(|e| e.to_string()),
    };
    outcome(context, name, result)
}

/// Stops the daemon if it is active and starts it again with the config
/// it starts with (see [`ServerContext::startable_config`]); one that
/// cannot start (its environment failed) is left alone.
async fn restart(context: &ServerContext, name: &str) -> Response {
    let config = match context.startable_config(name) {
        Ok(config) => config,
        Err(message) => {
            let status = context.process_status(name);
            return Response {
                process: status,
                ..Response::error(message)
            };
        }
    };
    let result = match context.manager.restart_process(name).await {
        Err(tend::Error::UnknownProcess(_)) => context.manager.start_process(config).await,
        other => other,
    };
    outcome(context, name, result.map_err(|e| e.to_string()))
}

/// Calls `method` over the daemon's persistent JSON-RPC connection (shared
/// with every other call and with event delivery), waiting at most the
/// timeout. The call is not cancelled when the client hangs up: a client
/// may close its sending side and still wait for the answer.
async fn call(
    context: &ServerContext,
    name: &str,
    method: &str,
    params: Value,
    timeout_ms: Option<u64>,
) -> Response {
    let config = match context.config_of(name) {
        Ok(config) => config,
        Err(message) => return Response::error(message),
    };
    if config.socket_path.is_none() {
        return Response::error(format!(
            "{name:?} has no socket in {}; it cannot be called",
            context.config.file.display()
        ));
    }
    if !(params.is_null() || params.is_object() || params.is_array()) {
        return Response::error("params must be an object or an array (or absent)");
    }
    let timeout = match timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS) {
        0 => return Response::error("timeout_ms must be greater than zero"),
        ms => Duration::from_millis(ms),
    };
    match context.manager.state(name) {
        Err(_) => {
            let reason = match context.startable_config(name) {
                Err(reason) => format!(": {reason}"),
                Ok(_) => String::new(),
            };
            return Response::error(format!("{name:?} has not been started{reason}"));
        }
        Ok(state @ (ProcessState::Stopped | ProcessState::Error)) => {
            return Response::error(format!(
                "{name:?} is {state}; start it with `tend start {name}`"
            ));
        }
        Ok(_) => {}
    }
    let client = match context.manager.rpc_client(name) {
        Ok(client) => client,
        Err(e) => return Response::error(e.to_string()),
    };
    match client.call_with_timeout(method, params, timeout).await {
        Ok(result) => Response {
            result: Some(result),
            ..Response::ok()
        },
        Err(RpcError::Rpc {
            code,
            message,
            data,
        }) => Response {
            rpc_error: Some(RpcErrorObject {
                code,
                message: message.clone(),
                data,
            }),
            ..Response::error(format!("RPC error {code}: {message}"))
        },
        Err(e) => Response::error(e.to_string()),
    }
}

fn publish(context: &ServerContext, event: &str, data: Value) -> Response {
    if event.is_empty() {
        return Response::error("the event name must not be empty");
    }
    match context.manager.publish(event, data) {
        Ok(queued) => Response {
            queued: Some(queued),
            ..Response::ok()
        },
        Err(e) => Response::error(e.to_string()),
    }
}

async fn logs(
    context: &ServerContext,
    name: &str,
    lines: usize,
    follow: bool,
    connection: &mut Connection<'_>,
) -> io::Result<After> {
    // Subscribe before taking the tail, so no line falls between the two;
    // lines that are in both are skipped below.
    let live = context.manager.follow_logs(name);
    let recent = context.manager.logs(name, lines);
    let (mut live, recent) = match (live, recent) {
        (Ok(live), Ok(recent)) => (live, recent),
        (Err(e), _) | (_, Err(e)) => {
            connection.send(&Response::error(e.to_string())).await?;
            return Ok(After::Continue);
        }
    };
    let sent_up_to = recent.last().map(|line| line.time);
    let already_sent =
        |line: &LogLine| sent_up_to.is_some_and(|time| line.time <= time) && recent.contains(line);
    connection
        .send(&Response {
            lines: Some(recent.iter().cloned().map(LogEntry::from).collect()),
            ..Response::ok()
        })
        .await?;
    if !follow {
        return Ok(After::Continue);
    }
    loop {
        let line = tokio::select! {
            received = live.recv() => match received {
                Some(line) if already_sent(&line) => continue,
                Some(line) => line,
                None => return Ok(After::Close),
            },
            () = connection.closed() => return Ok(After::Close),
        };
        let missed = live.take_missed();
        if missed > 0 {
            connection
                .send(&Response {
                    missed: Some(missed),
                    ..Response::ok()
                })
                .await?;
        }
        connection
            .send(&Response {
                line: Some(line.into()),
                ..Response::ok()
            })
            .await?;
    }
}

fn down(context: &ServerContext) -> Response {
    tracing::info!("shutdown requested by a control client");
    context.request_shutdown();
    Response {
        supervisor: Some(supervisor_info(context)),
        ..Response::ok()
    }
}
