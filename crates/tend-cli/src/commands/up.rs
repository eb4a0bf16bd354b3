//! `tend up [-c FILE]`: run every daemon of a config in the foreground.
//!
//! In order: validate the config, take the state directory's lock (one
//! `tend up` per directory), become a child subreaper, stop daemons left by
//! an earlier run that was killed, open the control socket, start every
//! daemon in parallel while printing their state changes, print the status
//! table, and supervise until SIGINT, SIGTERM, SIGHUP or `tend down`. Then
//! stop every daemon gracefully (a second signal kills them at once), kill
//! descendants that escaped their daemon's process group, close the socket
//! and release the lock.

/// Prints a line to stdout, ignoring errors: a closed terminal or pipe
/// must not stop the supervisor, which still has daemons to stop.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Like `say!`, to stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod progress;
mod signals;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tend::{
    BackgroundProcessConfig, BackgroundProcessManager, CleanupReport, subreaper::Subreaper,
};
use tokio::task::JoinSet;

use crate::{
    config::{self, TendConfig},
    failure::{CommandResult, Failure},
    protocol::ProcessStatus,
    server::{ControlServer, ServerContext},
    table,
};
use progress::Progress;
use signals::ShutdownSignals;

/// Runs the command.
pub async fn run(file: &Path) -> CommandResult {
    let config = config::load(file).map_err(Failure::usage)?;
    let state_dir = &config.state_dir;
    state_dir
        .create_private()
        .with_context(|| format!("cannot use state directory {}", state_dir.path().display()))?;
    let lock = state_dir.lock()?;
    let mut signals = ShutdownSignals::install()?;
    let subreaper = enable_subreaper();

    let manager = BackgroundProcessManager::builder()
        .state_dir(state_dir.path())
        .build();
    let cleanup = manager
        .cleanup_orphans()
        .await
        .context("cannot clean up after an earlier run")?;
    report_cleanup(&cleanup);

    let context = Arc::new(ServerContext::new(manager.clone(), config.clone()));
    let server = ControlServer::bind(&state_dir.control_socket(), Arc::clone(&context))
        .with_context(|| format!("cannot listen on {}", state_dir.control_socket().display()))?;
    say!(
        "tend {} (pid {}): {} daemon{} from {}; state in {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.processes.len(),
        if config.processes.len() == 1 { "" } else { "s" },
        config.file.display(),
        state_dir.path().display()
    );
    let mut progress = Progress::subscribe(&manager, &config);

    let started = progress
        .print_while(async {
            tokio::select! {
                () = start_all(&manager, &config.processes) => true,
                cause = shutdown_cause(&mut signals, &context) => {
                    say!("tend: {cause} while starting; stopping everything");
                    false
                }
            }
        })
        .await;
    if started {
        say!("{}", table::render(&statuses(&context)).trim_end());
        say!("tend: supervising; stop with Ctrl-C or `tend down`");
        let cause = progress
            .print_while(shutdown_cause(&mut signals, &context))
            .await;
        say!("tend: {cause}; stopping every daemon");
    }

    let graceful = progress
        .print_while(async {
            tokio::select! {
                () = manager.stop_all_processes() => true,
                cause = signals.next() => {
                    say!("tend: {cause} again; killing every daemon now");
                    false
                }
            }
        })
        .await;
    if let Some(subreaper) = &subreaper {
        let grace = if graceful {
            longest_grace_period(&config)
        } else {
            Duration::ZERO
        };
        let killed = subreaper.kill_adopted(grace).await;
        if killed > 0 {
            say!("tend: stopped {killed} process(es) that escaped their daemon's process group");
        }
    }
    server.close();
    if !graceful {
        // The daemons still running are SIGKILLed when the last handle of
        // the manager goes, as the runtime shuts down; the lock is released
        // only when the process exits, after that.
        std::mem::forget(lock);
        return Err(anyhow::anyhow!("stopped by force; daemons were killed").into());
    }
    drop(lock);
    // Last: a `tend down` client returns when this connection closes.
    context.release_down_clients();
    say!("tend: all daemons stopped");
    Ok(())
}

/// Starts every daemon in parallel; a daemon that fails is reported and
/// left in `error` while the others run.
async fn start_all(manager: &BackgroundProcessManager, processes: &[BackgroundProcessConfig]) {
    let mut starts = JoinSet::new();
    for process in processes {
        let manager = manager.clone();
        let process = process.clone();
        starts.spawn(async move {
            let name = process.name.clone();
            (name, manager.start_process(process).await)
        });
    }
    while let Some(joined) = starts.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(e))) => say_err!("tend: {name} did not start: {e}"),
            Err(e) => say_err!("tend: a start task failed: {e}"),
        }
    }
}

/// What ended supervision: a signal or a `tend down`.
async fn shutdown_cause(signals: &mut ShutdownSignals, context: &ServerContext) -> String {
    tokio::select! {
        signal = signals.next() => format!("{signal} received"),
        () = context.shutdown_requested() => "`tend down` received".to_owned(),
    }
}

fn statuses(context: &ServerContext) -> Vec<ProcessStatus> {
    context
        .manager
        .list()
        .into_iter()
        .map(|info| {
            let retries = context
                .config
                .processes
                .iter()
                .find(|p| p.name == info.name)
                .and_then(|p| p.healthcheck)
                .map(|check| check.retries);
            ProcessStatus::new(info, retries)
        })
        .collect()
}

fn report_cleanup(report: &CleanupReport) {
    if !report.killed.is_empty() {
        say!(
            "tend: stopped {} daemon(s) left running by an earlier tend: {}",
            report.killed.len(),
            report.killed.join(", ")
        );
    }
    if !report.owned_by_live_manager.is_empty() {
        say!(
            "tend: left alone {} daemon record(s) of another live tend: {}",
            report.owned_by_live_manager.len(),
            report.owned_by_live_manager.join(", ")
        );
    }
}

/// Makes this process the reaper of its daemons' orphaned descendants, so
/// double-forked ones are found and killed at shutdown. Failing that,
/// supervision goes on without it.
fn enable_subreaper() -> Option<Subreaper> {
    match tend::subreaper::enable() {
        Ok(subreaper) => Some(subreaper),
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper; double-forked descendants may survive a stop");
            None
        }
    }
}

fn longest_grace_period(config: &TendConfig) -> Duration {
    config
        .processes
        .iter()
        .map(|p| p.shutdown_grace_period)
        .max()
        .unwrap_or(tend::defaults::SHUTDOWN_GRACE_PERIOD)
}
