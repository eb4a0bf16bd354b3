//! `tend up [-c FILE]`: run every daemon of a config in the foreground.
//!
//! In order: validate the config, take the state directory's lock (one
//! `tend up` per directory), stop daemons left by an earlier run that was
//! killed, open the control socket, prepare the daemons' Python and Node
//! environments, become a child subreaper, start every daemon in parallel
//! while printing their state changes, print the status table, and
//! supervise until SIGINT, SIGTERM, SIGHUP or `tend down`. Then stop every
//! daemon gracefully (a second signal kills them at once), kill descendants
//! that escaped their daemon's process group, close the socket and release
//! the lock.

mod progress;
mod signals;

use std::{ffi::OsString, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tend::{BackgroundProcessManager, CleanupReport, subreaper::Subreaper};
use tokio::task::JoinSet;

use crate::{
    config::{self, TendConfig},
    environments::Environments,
    failure::{CommandResult, Failure},
    memory,
    notify::{NOTIFY_SOCKET_ENV, Notifier},
    sanitize::{Layout, escape_controls},
    server::{ControlServer, Preparation, ServerContext},
    table,
};
use progress::Progress;
use signals::ShutdownSignals;

/// Runs the command; `notify_socket` is `NOTIFY_SOCKET`'s value, if set.
pub async fn run(file: &Path, notify_socket: Option<OsString>) -> CommandResult {
    // Validated in full before anything else happens. Then dropped, and
    // read again once the manager has cloned its guard process: the guard
    // keeps a private copy of every page of this process's heap that is
    // written after the clone, and with the parsed config of 1,000
    // daemons in the heap that was about 1 MiB (see memory.rs).
    let validated = config::load(file).map_err(Failure::usage)?;
    let (state_dir, containment) = (validated.state_dir.clone(), validated.containment);
    drop(validated);
    let notifier = notify_socket.and_then(|value| match Notifier::new(&value) {
        Ok(notifier) => Some(Arc::new(notifier)),
        Err(e) => {
            say_err!("tend: {e:#}; not notifying the service manager (unset {NOTIFY_SOCKET_ENV} to silence this)");
            None
        }
    });
    let state_dir = &state_dir;
    let opened = state_dir.open_private().with_context(|| {
        format!(
            "cannot use state directory {} (choose another with settings.state_dir, \
             or XDG_RUNTIME_DIR for the default)",
            state_dir.path().display()
        )
    })?;
    let lock = opened.lock()?;
    let mut signals = ShutdownSignals::install()?;

    // One table of this process's children for the manager, the
    // environment installers and the subreaper.
    let children = tend::ChildTable::new();
    let manager = BackgroundProcessManager::builder()
        .state_dir(state_dir.path())
        .children(children.clone())
        .containment(containment)
        .build();
    // The manager clones its guard process now: give back what parsing
    // freed first, or the guard keeps a private copy of those pages once
    // this process reuses them.
    memory::release_free_memory();
    let cleanup = manager
        .cleanup_orphans()
        .await
        .context("cannot clean up after an earlier run")?;
    report_cleanup(&cleanup);
    let config = config::load(file).map_err(Failure::usage)?;
    if config.state_dir != *state_dir || config.containment != containment {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} changed its [settings] while tend up started; run tend up again",
            file.display()
        )));
    }

    // The one copy of the config from here on (a thousand daemons' worth
    // is worth not keeping twice).
    let context = Arc::new(ServerContext::new(manager.clone(), config, children));
    let config = &context.config;
    let state_dir = &config.state_dir;
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
    // Decided when the manager cleaned up, before any daemon starts.
    match (manager.containment(), manager.cgroup_path()) {
        (Some(containment), Some(cgroup)) => {
            say!(
                "tend: containment: {containment} (daemons in {})",
                cgroup.display()
            )
        }
        (Some(containment), None) => say!("tend: containment: {containment}"),
        (None, _) => {}
    }
    let mut progress = Progress::subscribe(&manager, config, notifier.clone());

    // Environments first: a daemon starts with the interpreter its
    // environment provides.
    let prepared = tokio::select! {
        () = prepare_environments(&context) => true,
        cause = shutdown_cause(&mut signals, &context) => {
            say!("tend: {cause} while preparing environments; stopping");
            false
        }
    };
    let subreaper = if prepared {
        enable_subreaper(&context.children)
    } else {
        None
    };
    let started = prepared
        && progress
            .print_while(async {
                tokio::select! {
                    () = start_all(&context) => true,
                    cause = shutdown_cause(&mut signals, &context) => {
                        say!("tend: {cause} while starting; stopping everything");
                        false
                    }
                }
            })
            .await;
    if started {
        say!("{}", table::render(&context.statuses()).trim_end());
        // Starting a thousand daemons leaves free memory behind (their
        // start futures, the events, the table) that supervising does not
        // need again.
        memory::release_free_memory();
        // Every daemon that could start is running: the others are in
        // error, and the status line says so.
        if let (Some(notifier), Some(summary)) = (&notifier, progress.summary()) {
            notifier.send(&format!("READY=1\nSTATUS={summary}")).await;
        }
        say!("tend: supervising; stop with Ctrl-C or `tend down`");
        let cause = progress
            .print_while(shutdown_cause(&mut signals, &context))
            .await;
        say!("tend: {cause}; stopping every daemon");
    }
    if let Some(notifier) = &notifier {
        notifier
            .send("STOPPING=1\nSTATUS=stopping every daemon")
            .await;
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
            longest_grace_period(config)
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

/// Prepares the Python and Node environments of the daemons that have
/// one, in parallel, and records how each ended for the starts.
///
/// Environments are prepared once, when `tend up` starts: `tend start` and
/// `tend restart` reuse what was prepared, so an edited requirements file
/// takes effect at the next `tend up`. (The installers are registered as
/// tend's own children, so the subreaper never takes their exit status.)
///
/// Cancel safety: dropping the future kills the running installers.
async fn prepare_environments(context: &Arc<ServerContext>) {
    let environments = Arc::new(Environments::new(&context.config, context.children.clone()));
    let mut preparations = JoinSet::new();
    for name in context.config.environments.keys() {
        let context = Arc::clone(context);
        let environments = Arc::clone(&environments);
        let name = name.clone();
        preparations.spawn(async move {
            let Ok(config) = context.config_of(&name) else {
                return;
            };
            let preparation = match environments.prepare(config).await {
                Ok(prepared) => Preparation::Ready(Box::new(prepared)),
                Err(e) => Preparation::Failed(e.to_string()),
            };
            context.set_preparation(&name, preparation);
        });
    }
    while let Some(joined) = preparations.join_next().await {
        if let Err(e) = joined {
            say_err!("tend: an environment task failed: {e}");
        }
    }
}

/// Starts every daemon in parallel; a daemon that fails (to start, or
/// earlier to get its environment) is reported and left in `error` while
/// the others run.
async fn start_all(context: &Arc<ServerContext>) {
    let mut starts = JoinSet::new();
    for process in &context.config.processes {
        let context = Arc::clone(context);
        let name = process.name.clone();
        starts.spawn(async move {
            let result = context.start(&name).await;
            (name, result)
        });
    }
    while let Some(joined) = starts.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            // The reason may end with the daemon's stderr tail, or with an
            // installer's output of several lines.
            Ok((name, Err(e))) => say_err!(
                "tend: {}",
                escape_controls(&format!("{name} did not start: {e}"), Layout::Lines)
            ),
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

fn report_cleanup(report: &CleanupReport) {
    if !report.killed.is_empty() {
        say!(
            "tend: stopped {} daemon(s) left running by an earlier tend: {}",
            report.killed.len(),
            escape_controls(&report.killed.join(", "), Layout::Line)
        );
    }
    if !report.escaped.is_empty() {
        say!(
            "tend: stopped {} process(es) that had escaped the daemons of an earlier tend: pid {:?}",
            report.escaped.len(),
            report.escaped
        );
    }
    if !report.suspects.is_empty() {
        say!(
            "tend: left alone {} process(es) that carry the marker of an earlier tend but are not proven its daemons' (check them, and kill them if they are leftovers): pid {:?}",
            report.suspects.len(),
            report.suspects
        );
    }
    if !report.owned_by_live_manager.is_empty() {
        say!(
            "tend: left alone {} daemon record(s) of another live tend: {}",
            report.owned_by_live_manager.len(),
            escape_controls(&report.owned_by_live_manager.join(", "), Layout::Line)
        );
    }
}

/// Makes this process the reaper of its daemons' orphaned descendants, so
/// double-forked ones are found and killed at shutdown. Failing that,
/// supervision goes on without it.
fn enable_subreaper(children: &tend::ChildTable) -> Option<Subreaper> {
    match tend::subreaper::enable(children.clone()) {
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
