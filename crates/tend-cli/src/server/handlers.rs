//! One handler per control request.

use std::io;

use tend::{BackgroundProcessConfig, LogLine};
use tokio::sync::broadcast::error::RecvError;

use super::{After, Connection, ServerContext};
use crate::protocol::{LogEntry, ProcessStatus, Request, Response, SupervisorInfo};

/// Answers `request` on `connection`.
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

fn config_of<'c>(
    context: &'c ServerContext,
    name: &str,
) -> Result<&'c BackgroundProcessConfig, String> {
    context
        .config
        .processes
        .iter()
        .find(|process| process.name == name)
        .ok_or_else(|| {
            format!(
                "no daemon named {name:?} in {}",
                context.config.file.display()
            )
        })
}

/// The status of `name`, if the manager knows it.
fn process_status(context: &ServerContext, name: &str) -> Option<ProcessStatus> {
    let info = context.manager.process_info(name)?;
    let retries = config_of(context, name)
        .ok()
        .and_then(|config| config.healthcheck)
        .map(|check| check.retries);
    Some(ProcessStatus::new(info, retries))
}

fn status(context: &ServerContext, name: Option<&str>) -> Response {
    let names: Vec<String> = match name {
        Some(name) => {
            if context.manager.process_info(name).is_none() {
                return Response::error(format!("no daemon named {name:?}"));
            }
            vec![name.to_owned()]
        }
        None => context
            .manager
            .list()
            .into_iter()
            .map(|info| info.name)
            .collect(),
    };
    Response {
        processes: Some(
            names
                .iter()
                .filter_map(|name| process_status(context, name))
                .collect(),
        ),
        ..Response::ok()
    }
}

/// The response to an operation on `name` that ended with `result`.
fn outcome(context: &ServerContext, name: &str, result: tend::Result<()>) -> Response {
    match result {
        Ok(()) => Response {
            process: process_status(context, name),
            ..Response::ok()
        },
        Err(e) => Response {
            process: process_status(context, name),
            ..Response::error(e.to_string())
        },
    }
}

async fn start(context: &ServerContext, name: &str) -> Response {
    let config = match config_of(context, name) {
        Ok(config) => config.clone(),
        Err(message) => return Response::error(message),
    };
    let result = context.manager.start_process(config).await;
    outcome(context, name, result)
}

async fn stop(context: &ServerContext, name: &str) -> Response {
    if let Err(message) = config_of(context, name) {
        return Response::error(message);
    }
    let result = match context.manager.stop_process(name).await {
        // Configured but never started: nothing to stop.
        Err(tend::Error::UnknownProcess(_)) => Ok(()),
        other => other,
    };
    outcome(context, name, result)
}

async fn restart(context: &ServerContext, name: &str) -> Response {
    let config = match config_of(context, name) {
        Ok(config) => config.clone(),
        Err(message) => return Response::error(message),
    };
    let result = match context.manager.restart_process(name).await {
        Err(tend::Error::UnknownProcess(_)) => context.manager.start_process(config).await,
        other => other,
    };
    outcome(context, name, result)
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
        let response = tokio::select! {
            received = live.recv() => match received {
                Ok(line) if already_sent(&line) => continue,
                Ok(line) => Response { line: Some(line.into()), ..Response::ok() },
                Err(RecvError::Lagged(missed)) => Response { missed: Some(missed), ..Response::ok() },
                Err(RecvError::Closed) => return Ok(After::Close),
            },
            () = connection.closed() => return Ok(After::Close),
        };
        connection.send(&response).await?;
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
