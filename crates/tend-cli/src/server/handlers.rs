//! One handler per control request.

use std::{io, sync::Arc, time::Duration};

use serde_json::Value;
use tend::{LogLine, ProcessState, Received, rpc::RpcError};

use super::{After, Connection, ServerContext};
use crate::protocol::{
    DEFAULT_CALL_TIMEOUT_MS, DEFAULT_USAGE_INTERVAL_MS, ErrorKind, LogEntry, MIN_USAGE_INTERVAL_MS,
    ProcessStatus, Request, Response, RpcErrorObject, Sample, SupervisorInfo,
};

type Context = Arc<ServerContext>;

/// The daemon a request names, if it names one.
fn named(request: &Request) -> Option<&str> {
    match request {
        Request::Status { name: Some(name) }
        | Request::Start { name }
        | Request::Stop { name }
        | Request::Restart { name }
        | Request::Call { name, .. }
        | Request::Logs {
            name: Some(name), ..
        } => Some(name),
        _ => None,
    }
}

/// Answers `request` on `connection`.
///
/// Each connection is served by its own task, so a handler that waits (a
/// start, a stop, a call to a daemon) holds up only the requests that
/// come after it on the same connection.
pub async fn handle(
    context: &Context,
    request: Request,
    connection: &mut Connection<'_>,
) -> io::Result<After> {
    // One answer, in one wording, for a daemon the config does not have.
    let unknown = named(&request).filter(|name| context.config_of(name).is_err());
    if let Some(name) = unknown {
        let response = Response {
            error_kind: Some(ErrorKind::UnknownDaemon),
            ..Response::error(context.no_such_daemon(name))
        };
        connection.send(&response).await?;
        return Ok(After::Continue);
    }
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
        } => return logs(context, name.as_deref(), lines, follow, connection).await,
        Request::Call {
            name,
            method,
            params,
            timeout_ms,
        } => call(context, &name, &method, params, timeout_ms).await,
        Request::Publish { event, data } => publish(context, &event, data),
        Request::Reload => reload(context).await,
        Request::Watch { usage_interval_ms } => {
            return watch(context, usage_interval_ms, connection).await;
        }
        Request::Down => {
            connection.send(&down(context)).await?;
            return Ok(After::HoldUntilExit);
        }
    };
    connection.send(&response).await?;
    Ok(After::Continue)
}

fn supervisor_info(context: &Context) -> SupervisorInfo {
    let config = context.config();
    SupervisorInfo {
        pid: std::process::id(),
        config_file: config.file.clone(),
        state_dir: config.state_dir.path().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn info(context: &Context) -> Response {
    Response {
        supervisor: Some(supervisor_info(context)),
        ..Response::ok()
    }
}

fn status(context: &Context, name: Option<&str>) -> Response {
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
fn outcome(context: &Context, name: &str, result: Result<(), String>) -> Response {
    let response = match result {
        Ok(()) => Response::ok(),
        Err(e) => Response::error(e),
    };
    Response {
        process: context.process_status(name),
        ..response
    }
}

/// Starts the daemon after its dependencies (see
/// [`ServerContext::start`]).
async fn start(context: &Context, name: &str) -> Response {
    let state = context.manager.state(name).ok();
    // The state asked for holds already.
    if state == Some(ProcessState::Running) {
        return outcome(context, name, Ok(()));
    }
    // Another start is under way (`tend up`, a dependent's, a restart
    // backing off): its end is this start's answer, as `systemctl start`
    // answers for a unit that is activating.
    if state == Some(ProcessState::Starting) || context.is_waiting(name) {
        let result = context.wait_while_starting(name).await;
        return outcome(context, name, result);
    }
    let result = context.start(name).await;
    outcome(context, name, result)
}

/// Stops the daemon, and first every running daemon that depends on it.
async fn stop(context: &Context, name: &str) -> Response {
    if let Err(message) = context.config_of(name) {
        return Response::error(message);
    }
    match context.stop_with_dependents(name).await {
        Ok(dependents) => {
            let mut response = outcome(context, name, Ok(()));
            if !dependents.is_empty() {
                response.notes.push(format!(
                    "also stopped, first, what depends on {name}: {}",
                    dependents.join(", ")
                ));
            }
            response
        }
        Err(e) => outcome(context, name, Err(e)),
    }
}

/// Stops the daemon if it is active and starts it again, after its
/// dependencies, with the config it starts with (see
/// [`ServerContext::startable_config`]); one that cannot start (its
/// environment failed) is left alone. Says so when the file has other
/// settings for it now.
async fn restart(context: &Context, name: &str) -> Response {
    // Prepared before the stop, so a daemon whose environment cannot be
    // made is left as it is.
    context.ensure_prepared(name).await;
    if let Err(message) = context.startable_config(name) {
        let status = context.process_status(name);
        return Response {
            process: status,
            ..Response::error(message)
        };
    }
    let stopped = match context.manager.stop_process(name).await {
        Ok(()) | Err(tend::Error::UnknownProcess(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let result = match stopped {
        Ok(()) => context.start_again(name).await,
        Err(e) => Err(e),
    };
    let mut response = outcome(context, name, result);
    response.notes.extend(context.file_changed_note(name));
    response
}

/// Rereads the config file and applies it; a file with problems changes
/// nothing and its problems are the error.
async fn reload(context: &Context) -> Response {
    match context.reload().await {
        Ok(reloaded) => Response {
            reload: Some(reloaded.summary),
            notes: reloaded.notes,
            ..Response::ok()
        },
        Err(reason) => Response::error(reason),
    }
}

/// Calls `method` over the daemon's persistent JSON-RPC connection (shared
/// with every other call and with event delivery), waiting at most the
/// timeout. The call is not cancelled when the client hangs up: a client
/// may close its sending side and still wait for the answer.
async fn call(
    context: &Context,
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
            context.config().file.display()
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

fn publish(context: &Context, event: &str, data: Value) -> Response {
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

/// `logs`: the recent lines of one daemon, or of every daemon interleaved
/// in time order (each line naming its daemon); then, with `follow`, new
/// lines as they come, until the client hangs up or the supervisor stops.
async fn logs(
    context: &Context,
    name: Option<&str>,
    lines: usize,
    follow: bool,
    connection: &mut Connection<'_>,
) -> io::Result<After> {
    let config = context.config();
    let names: Vec<&str> = match name {
        Some(name) => vec![name],
        None => config.processes.iter().map(|p| p.name.as_str()).collect(),
    };
    // With `follow`, subscribe before taking the tails, so no line falls
    // between the two; lines that are in both are skipped below. (Without
    // it, no subscription: each costs the daemon a channel of 1,024 slots
    // until its next line.) A daemon never started has no output yet.
    let mut sources = Vec::new();
    for &daemon in &names {
        let live = if follow {
            context.manager.follow_logs(daemon).map(Some)
        } else {
            Ok(None)
        };
        match (live, context.manager.logs(daemon, lines)) {
            (Ok(live), Ok(recent)) => sources.push((daemon, live, recent)),
            _ if name.is_some() && follow => {
                let message =
                    format!("{daemon:?} has not been started; there is no output to follow");
                connection.send(&Response::error(message)).await?;
                return Ok(After::Continue);
            }
            _ => {}
        }
    }
    let tag = |daemon: &str, line: LogLine| LogEntry {
        name: name.is_none().then(|| daemon.to_owned()),
        ..LogEntry::from(line)
    };
    let mut recent: Vec<LogEntry> = sources
        .iter()
        .flat_map(|(daemon, _, recent)| recent.iter().map(|line| tag(daemon, line.clone())))
        .collect();
    // Stable: the lines of one daemon keep their order at equal times.
    recent.sort_by_key(|entry| entry.time);
    let skip = recent.len().saturating_sub(lines);
    connection
        .send(&Response {
            lines: Some(recent.split_off(skip)),
            ..Response::ok()
        })
        .await?;
    if !follow {
        return Ok(After::Continue);
    }
    // One forwarding task per daemon into one queue; the tasks end with
    // this handler (the set aborts them when dropped).
    let (queue, mut received) = tokio::sync::mpsc::channel(1024);
    let mut forwarders = tokio::task::JoinSet::new();
    for (daemon, live, recent) in sources {
        let Some(mut live) = live else { continue };
        let queue = queue.clone();
        let daemon = daemon.to_owned();
        forwarders.spawn(async move {
            let sent_up_to = recent.last().map(|line| line.time);
            let already_sent = |line: &LogLine| {
                sent_up_to.is_some_and(|time| line.time <= time) && recent.contains(line)
            };
            while let Some(line) = live.recv().await {
                let missed = live.take_missed();
                if missed > 0 && queue.send((daemon.clone(), Err(missed))).await.is_err() {
                    return;
                }
                if already_sent(&line) {
                    continue;
                }
                if queue.send((daemon.clone(), Ok(line))).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(queue);
    loop {
        let response = tokio::select! {
            received = received.recv() => match received {
                Some((daemon, Ok(line))) => Response { line: Some(tag(&daemon, line)), ..Response::ok() },
                Some((_, Err(missed))) => Response { missed: Some(missed), ..Response::ok() },
                None => return Ok(After::Close),
            },
            () = connection.closed() => return Ok(After::Close),
        };
        connection.send(&response).await?;
    }
}

/// A live view: every daemon's status and sample, then each state change
/// as the manager reports it (the daemon's status with it), and the
/// samples again every `usage_interval_ms`, until the client hangs up.
///
/// States are pushed, never polled: the timer only refreshes usage and
/// last lines, which have no events. A client too slow for the events is
/// told how many it missed and sent every status again.
async fn watch(
    context: &ServerContext,
    usage_interval_ms: Option<u64>,
    connection: &mut Connection<'_>,
) -> io::Result<After> {
    let interval_ms = usage_interval_ms
        .unwrap_or(DEFAULT_USAGE_INTERVAL_MS)
        .max(MIN_USAGE_INTERVAL_MS);
    // Subscribe before the snapshot, so no change falls between the two.
    let mut events = context.manager.subscribe();
    let processes = context.statuses();
    connection
        .send(&Response {
            samples: Some(samples(context, &processes)),
            processes: Some(processes),
            ..Response::ok()
        })
        .await?;
    let period = Duration::from_millis(interval_ms);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let response = tokio::select! {
            received = events.recv_or_missed() => match received {
                Some(Received::Event(event)) => Response {
                    process: context.process_status(&event.name),
                    event: Some(event.into()),
                    ..Response::ok()
                },
                Some(Received::Missed(missed)) => Response {
                    missed: Some(missed),
                    processes: Some(context.statuses()),
                    ..Response::ok()
                },
                None => return Ok(After::Close),
            },
            _ = ticks.tick() => Response {
                samples: Some(samples(context, &context.statuses())),
                ..Response::ok()
            },
            () = connection.closed() => return Ok(After::Close),
        };
        connection.send(&response).await?;
    }
}

/// Usage and the last output line of each of `processes`.
fn samples(context: &ServerContext, processes: &[ProcessStatus]) -> Vec<Sample> {
    processes
        .iter()
        .map(|process| Sample {
            name: process.name.clone(),
            usage: process.usage,
            last_line: context
                .manager
                .logs(&process.name, 1)
                .ok()
                .and_then(|mut lines| lines.pop())
                .map(LogEntry::from),
        })
        .collect()
}

fn down(context: &Context) -> Response {
    tracing::info!("shutdown requested by a control client");
    context.request_shutdown();
    Response {
        supervisor: Some(supervisor_info(context)),
        ..Response::ok()
    }
}
