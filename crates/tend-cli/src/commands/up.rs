//! `tend up [-c FILE] [NAME...]`: run the daemons of a config in the
//! foreground.
//!
//! In order: validate the config, take the state directory's lock (one
//! `tend up` per directory), stop daemons left by an earlier run that was
//! killed, open the control socket, prepare the daemons' Python and Node
//! environments, become a child subreaper, start the daemons (those
//! named, or every one with `autostart`, and what they depend on) in
//! parallel, each after its dependencies, while printing their state
//! changes, print the status table, and supervise until SIGINT, SIGTERM or
//! `tend down`; a SIGHUP reloads the config file meanwhile. Then stop
//! every daemon gracefully, dependents first (a second signal kills them
//! at once), kill descendants that escaped their daemon's process group,
//! close the socket and release the lock.
//!
//! With `--exit-on-failure`, the first daemon that cannot start or ends in
//! `error` stops everything the same way, and `tend up` exits with 1.

mod progress;
mod signals;

use std::{collections::BTreeSet, ffi::OsString, fmt, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, anyhow};
use tend::{BackgroundProcessManager, CleanupReport, subreaper::Subreaper};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    commands::reload::describe_reload,
    config::{self, TendConfig},
    deps,
    failure::{CommandResult, Failure},
    memory,
    notify::{NOTIFY_SOCKET_ENV, Notifier},
    sanitize::{Layout, escape_controls},
    server::{ControlServer, ServerContext},
    table,
};
use progress::Progress;
use signals::ShutdownSignals;

/// The daemons `tend up NAME...` starts: those named, or without names
/// every one with `autostart`; and what they depend on.
fn selection(config: &TendConfig, names: &[String]) -> Result<BTreeSet<String>, Failure> {
    let known: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
    if let Some(unknown) = names.iter().find(|name| !known.contains(&name.as_str())) {
        return Err(Failure::usage(anyhow!(
            "no daemon named {unknown:?} in {} (daemons: {})",
            config.file.display(),
            known.join(", ")
        )));
    }
    let roots: Vec<&str> = if names.is_empty() {
        known
            .into_iter()
            .filter(|name| config.autostart(name))
            .collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    Ok(deps::with_dependencies(&config.graph(), roots))
}

/// Runs the command: the daemons `names` (and their dependencies), or
/// every one with `autostart`; with `exit_on_failure`, stops everything
/// and fails as soon as a daemon cannot start or ends in `error`.
/// `notify_socket` is `NOTIFY_SOCKET`'s value, if set.
pub async fn run(
    file: &Path,
    names: &[String],
    exit_on_failure: bool,
    notify_socket: Option<OsString>,
) -> CommandResult {
    // Validated in full before anything else happens (an unknown NAME
    // too). Then dropped, and read again once the manager has cloned its
    // guard process: the guard keeps a private copy of every page of this
    // process's heap that is written after the clone, and with the parsed
    // config of 1,000 daemons in the heap that was about 1 MiB (see
    // memory.rs).
    let validated = config::load(file).map_err(Failure::usage)?;
    selection(&validated, names)?;
    let (state_dir, containment) = (validated.state_dir.clone(), validated.containment);
    let config_file = validated.file.clone();
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
    let lock = opened.lock(&config_file)?;
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
    let selected = selection(&config, names)?;

    // The one copy of the config from here on (a thousand daemons' worth
    // is worth not keeping twice).
    let context = Arc::new(ServerContext::new(manager.clone(), config, children));
    let config = context.config();
    let state_dir = &config.state_dir;
    let server = ControlServer::bind(&state_dir.control_socket(), Arc::clone(&context))
        .with_context(|| format!("cannot listen on {}", state_dir.control_socket().display()))?;
    let count = config.processes.len();
    let starting = if selected.len() == count {
        String::new()
    } else {
        format!(" (starting {} of them)", selected.len())
    };
    say!(
        "tend {} (pid {}): {count} daemon{}{starting} from {}; state in {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        if count == 1 { "" } else { "s" },
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
    // The first failure, for `--exit-on-failure`.
    let failures = Arc::new(watch::channel(None::<String>).0);
    let failed = exit_on_failure.then(|| failures.subscribe());
    let mut progress = Progress::subscribe(&manager, &config, notifier.clone(), {
        let failures = Arc::clone(&failures);
        move |event| report_failure(&failures, &event.name)
    });

    // Shown as `starting` from now on, not `stopped`.
    context.queue_starts(&selected);
    // Environments first: a daemon starts with the interpreter its
    // environment provides.
    let prepared = tokio::select! {
        () = prepare_environments(&context, &selected) => true,
        cause = shutdown_cause(&mut signals, &context, None) => {
            say!("tend: {cause} while preparing environments; stopping");
            false
        }
    };
    let subreaper = if prepared {
        enable_subreaper(&context.children)
    } else {
        None
    };
    let mut failed_with = None;
    let started = prepared
        && progress
            .print_while(async {
                tokio::select! {
                    () = start_selected(&context, &selected, &failures) => true,
                    cause = shutdown_cause(&mut signals, &context, failed.clone()) => {
                        say!("tend: {}; stopping everything", cause.while_starting());
                        failed_with = cause.failure();
                        false
                    }
                }
            })
            .await;
    // A start that failed before the select saw it.
    let failed_at_start = failed
        .as_ref()
        .and_then(|failed| failed.borrow().clone())
        .filter(|_| failed_with.is_none() && started);
    if let Some(name) = failed_at_start {
        let cause = Cause::Failed(name);
        say!("tend: {}; stopping everything", cause.while_starting());
        failed_with = cause.failure();
    } else if started {
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
        say!(
            "tend: supervising; stop with Ctrl-C or `tend down`, reload the file with `tend reload` or SIGHUP"
        );
        let cause = progress
            .print_while(supervise(&mut signals, &context, failed.clone()))
            .await;
        say!("tend: {cause}; stopping every daemon");
        failed_with = cause.failure();
    }
    if let Some(notifier) = &notifier {
        notifier
            .send("STOPPING=1\nSTATUS=stopping every daemon")
            .await;
    }

    let graceful = progress
        .print_while(async {
            tokio::select! {
                () = context.stop_everything() => true,
                cause = signals.next() => {
                    say!("tend: {cause} again; killing every daemon now");
                    false
                }
            }
        })
        .await;
    if let Some(subreaper) = &subreaper {
        let grace = if graceful {
            longest_grace_period(&context.config())
        } else {
            Duration::ZERO
        };
        let killed = subreaper.kill_adopted(grace).await;
        if killed > 0 {
            say!(
                "tend: stopped {} that escaped their daemon's process group",
                tend::human::count(killed, "process")
            );
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
    match failed_with {
        Some(name) => Err(anyhow::anyhow!(
            "{name} failed, so every daemon was stopped (--exit-on-failure)"
        )
        .into()),
        None => Ok(()),
    }
}

/// Records that daemon `name` failed (the first one only).
fn report_failure(failures: &watch::Sender<Option<String>>, name: &str) {
    failures.send_if_modified(|first| {
        if first.is_none() {
            *first = Some(name.to_owned());
            true
        } else {
            false
        }
    });
}

/// Prepares the Python and Node environments of the `selected` daemons
/// that have one, in parallel, and records how each ended for the starts.
/// The others are prepared at their first start (`tend start`, or as a
/// dependency), so `tend up web` installs nothing for daemons it leaves
/// stopped.
///
/// A prepared environment is kept: `tend start` and `tend restart` reuse
/// it, so an edited requirements file takes effect at the next `tend up`
/// (or a `tend reload` of a changed daemon). (The installers are
/// registered as tend's own children, so the subreaper never takes their
/// exit status.)
///
/// Cancel safety: dropping the future kills the running installers.
async fn prepare_environments(context: &Arc<ServerContext>, selected: &BTreeSet<String>) {
    let config = context.config();
    let mut preparations = JoinSet::new();
    for name in selected
        .iter()
        .filter(|name| config.environments.contains_key(*name))
    {
        let context = Arc::clone(context);
        let name = name.clone();
        preparations.spawn(async move { context.ensure_prepared(&name).await });
    }
    while let Some(joined) = preparations.join_next().await {
        if let Err(e) = joined {
            say_err!("tend: an environment task failed: {e}");
        }
    }
}

/// Starts `selected` in parallel, each once its dependencies meet their
/// conditions; a daemon that fails (to start, earlier to get its
/// environment, or because a dependency failed) is reported and left in
/// `error` while the others run. A failed start of the manager was
/// reported by its event already; only a daemon the manager never saw
/// (its environment failed) gets a message here, so each failure is said
/// once.
async fn start_selected(
    context: &Arc<ServerContext>,
    selected: &BTreeSet<String>,
    failures: &watch::Sender<Option<String>>,
) {
    context.queue_starts(selected);
    let mut starts = JoinSet::new();
    for name in selected {
        let context = Arc::clone(context);
        let name = name.clone();
        starts.spawn(async move {
            let result = context.start(&name).await;
            (name, result)
        });
    }
    while let Some(joined) = starts.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(_))) if context.manager.process_info(&name).is_ok() => {
                report_failure(failures, &name);
            }
            // The reason may end with an installer's output of several
            // lines.
            Ok((name, Err(e))) => {
                report_failure(failures, &name);
                say_err!(
                    "tend: {}",
                    escape_controls(&format!("{name} did not start: {e}"), Layout::Lines)
                );
            }
            Err(e) => say_err!("tend: a start task failed: {e}"),
        }
    }
}

/// Supervises until a shutdown signal, a `tend down` or (when `failed`
/// watches failures) the first daemon that failed, reloading the config
/// file at each SIGHUP; returns what ended it.
async fn supervise(
    signals: &mut ShutdownSignals,
    context: &Arc<ServerContext>,
    mut failed: Option<watch::Receiver<Option<String>>>,
) -> Cause {
    loop {
        let signal = tokio::select! {
            signal = signals.next_or_hangup() => signal,
            () = context.shutdown_requested() => return Cause::Down,
            name = first_failure(&mut failed) => return Cause::Failed(name),
        };
        if let Some(signal) = signal {
            return Cause::Signal(signal);
        }
        say!(
            "tend: SIGHUP received; reloading {}",
            context.config().file.display()
        );
        // A shutdown signal during a long reload (a start that waits for
        // its dependencies) is not kept waiting.
        let reloaded = tokio::select! {
            reloaded = context.reload() => reloaded,
            signal = signals.next() => return Cause::Signal(signal),
        };
        match reloaded {
            Ok(reloaded) => {
                for line in describe_reload(&reloaded.summary, &reloaded.notes) {
                    say!("tend: {}", escape_controls(&line, Layout::Lines));
                }
            }
            Err(reason) => say_err!(
                "tend: reload refused: {}",
                escape_controls(&reason, Layout::Lines)
            ),
        }
    }
}

/// The name of the first daemon that failed, once one has; never when
/// failures are not watched.
async fn first_failure(failed: &mut Option<watch::Receiver<Option<String>>>) -> String {
    match failed {
        Some(failed) => match failed.wait_for(Option::is_some).await {
            Ok(name) => name.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// What ended supervision.
enum Cause {
    /// A signal, by name.
    Signal(&'static str),
    /// A `tend down`.
    Down,
    /// This daemon failed, with `--exit-on-failure`.
    Failed(String),
}

impl Cause {
    /// The cause, said of the time the daemons were starting.
    fn while_starting(&self) -> String {
        match self {
            Cause::Failed(_) => self.to_string(),
            _ => format!("{self} while starting"),
        }
    }

    /// The daemon whose failure ended supervision.
    fn failure(&self) -> Option<String> {
        match self {
            Cause::Failed(name) => Some(name.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Signal(signal) => write!(f, "{signal} received"),
            Cause::Down => write!(f, "`tend down` received"),
            Cause::Failed(name) => write!(
                f,
                "{} failed and --exit-on-failure is set",
                escape_controls(name, Layout::Line)
            ),
        }
    }
}

/// What ends the start: a signal, a `tend down`, or (when `failed`
/// watches failures) the first daemon that failed.
async fn shutdown_cause(
    signals: &mut ShutdownSignals,
    context: &ServerContext,
    mut failed: Option<watch::Receiver<Option<String>>>,
) -> Cause {
    tokio::select! {
        signal = signals.next() => Cause::Signal(signal),
        () = context.shutdown_requested() => Cause::Down,
        name = first_failure(&mut failed) => Cause::Failed(name),
    }
}

fn report_cleanup(report: &CleanupReport) {
    use tend::human::{count, list};
    if !report.killed.is_empty() {
        say!(
            "tend: stopped {} left running by an earlier tend: {}",
            count(report.killed.len(), "daemon"),
            escape_controls(&report.killed.join(", "), Layout::Line)
        );
    }
    if !report.escaped.is_empty() {
        say!(
            "tend: stopped {} that had escaped the daemons of an earlier tend: {} {}",
            count(report.escaped.len(), "process"),
            if report.escaped.len() == 1 {
                "pid"
            } else {
                "pids"
            },
            list(&report.escaped)
        );
    }
    if !report.suspects.is_empty() {
        say!(
            "tend: left alone {} that carry the marker of an earlier tend but are not proven its daemons' (check them, and kill them if they are leftovers): {} {}",
            count(report.suspects.len(), "process"),
            if report.suspects.len() == 1 {
                "pid"
            } else {
                "pids"
            },
            list(&report.suspects)
        );
    }
    if !report.owned_by_live_manager.is_empty() {
        say!(
            "tend: left alone {} of another live tend: {}",
            count(report.owned_by_live_manager.len(), "daemon record"),
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
