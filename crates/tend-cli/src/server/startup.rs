//! Starting and stopping in dependency order (`depends_on`).
//!
//! A daemon starts once each of its dependencies meets its condition
//! ([`deps::evaluate`]); a dependency that is not running and not on its
//! way is started first, so `tend start app` (or `tend up app`) brings up
//! what `app` needs. Waits are driven by the manager's state-change events
//! and by changes of the pending table, never by polling. A dependency
//! that restarts within its budget is `starting` meanwhile and is waited
//! for; one that ends in `error` (or is stopped) leaves the dependent
//! unstarted, with the reason in its status. Stops go the other way:
//! dependents first.

use std::{collections::BTreeSet, future::Future, pin::Pin, sync::Arc};

use tokio::task::JoinSet;

use super::{Pending, Preparation, ServerContext};
use crate::{
    deps::{self, Dependency, Observed, Verdict},
    environments::Environments,
    protocol::{ProcessStatus, State},
};

/// The future of [`ServerContext::start`].
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Forgets a `Waiting` entry when a start is abandoned half-way (its
/// future dropped), so the status does not say "waiting" for ever.
struct WaitingGuard<'a> {
    context: &'a ServerContext,
    name: &'a str,
    armed: bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && matches!(
                self.context.pending_of(self.name),
                Some(Pending::Waiting(_))
            )
        {
            self.context.set_pending(self.name, None);
        }
    }
}

/// A preparation taken on by [`ServerContext::ensure_prepared`]: if its
/// future is dropped before the end, the record goes back to `Unprepared`
/// (the installer was killed with the future), so the next start begins it
/// again instead of waiting for ever.
struct PreparationClaim<'a> {
    context: &'a ServerContext,
    name: &'a str,
    ended: bool,
}

impl Drop for PreparationClaim<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.context
                .set_preparation(self.name, Preparation::Unprepared);
        }
    }
}

impl ServerContext {
    /// Prepares the Python or Node environment of `name` if nobody has
    /// begun to (a daemon `tend up` did not start), or waits for the
    /// preparation under way; how it ended is recorded for
    /// [`Self::startable_config`]. Returns at once for a daemon without an
    /// environment or one prepared (or failed) already.
    pub async fn ensure_prepared(&self, name: &str) {
        // Subscribed before the first look, so no change falls between.
        let mut changes = self.pending_changed.subscribe();
        loop {
            if self.claim_preparation(name) {
                // Boxed: inline, the installer's future would size every
                // start's (2.5 KiB, for each of 1,000 starts at once).
                return Box::pin(self.prepare_claimed(name)).await;
            }
            if !matches!(self.preparation(name), Some(Preparation::Pending)) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Marks `names` as waiting for their turn, before `tend up` starts
    /// them all at once: a dependent then waits for a dependency that
    /// `tend up` is about to start rather than starting it a second time.
    pub fn queue_starts<'a>(&self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            self.set_pending(name, Some(Pending::Waiting(String::new())));
        }
    }

    /// Starts daemon `name` once its dependencies meet their conditions
    /// (starting those that are neither running nor on their way);
    /// resolves once it is running, or with why it is not.
    ///
    /// Cancel safety: dropping the future abandons the waits and the
    /// dependency starts it made; a start the manager accepted goes on.
    ///
    /// Boxed: a start waits for its dependencies, which may start theirs.
    pub fn start<'a>(self: &'a Arc<Self>, name: &'a str) -> StartFuture<'a> {
        Box::pin(self.start_after_dependencies(name, false))
    }

    /// [`start`](Self::start) for the second half of a restart (`tend
    /// restart`, a reload of a changed daemon), whose caller stopped the
    /// daemon already: the log marks the new incarnation "restarted".
    pub fn start_again<'a>(self: &'a Arc<Self>, name: &'a str) -> StartFuture<'a> {
        Box::pin(self.start_after_dependencies(name, true))
    }

    async fn start_after_dependencies(
        self: &Arc<Self>,
        name: &str,
        restarted: bool,
    ) -> Result<(), String> {
        let config = self.config();
        if config.process(name).is_none() {
            return Err(format!(
                "no daemon named {name:?} in {}",
                config.file.display()
            ));
        }
        let dependencies = config.dependencies(name).to_vec();
        let mut guard = WaitingGuard {
            context: self,
            name,
            armed: true,
        };
        if !dependencies.is_empty() {
            let names: Vec<&str> = dependencies.iter().map(|d| d.name.as_str()).collect();
            self.set_pending(
                name,
                Some(Pending::Waiting(format!(
                    "waiting for {}",
                    names.join(", ")
                ))),
            );
            if let Err(reason) = self.satisfy_all(dependencies).await {
                self.set_pending(name, Some(Pending::Blocked(reason.clone())));
                guard.armed = false;
                return Err(reason);
            }
            // A stop while it waited (see `stop_in_order`) took the entry
            // away: the start is off.
            if !self.is_waiting(name) {
                guard.armed = false;
                return Err(format!(
                    "{name} was stopped while it waited for its dependencies"
                ));
            }
        }
        self.ensure_prepared(name).await;
        let result = match self.startable_config(name) {
            Ok(config) => {
                let started = if restarted {
                    self.manager.restart_process_with(config).await
                } else {
                    self.manager.start_process(config).await
                };
                started.map_err(|e| e.to_string())
            }
            Err(reason) => Err(reason),
        };
        // The manager's state speaks from here on.
        self.set_pending(name, None);
        guard.armed = false;
        result
    }

    /// Waits until every dependency meets its condition, in parallel;
    /// the first that cannot gives the reason.
    async fn satisfy_all(self: &Arc<Self>, dependencies: Vec<Dependency>) -> Result<(), String> {
        // Dropped with this future, which aborts the waits.
        let mut waits = JoinSet::new();
        for dependency in dependencies {
            let context = Arc::clone(self);
            waits.spawn(async move {
                let result = context.satisfy(&dependency).await;
                (dependency.name, result)
            });
        }
        while let Some(joined) = waits.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((dependency, Err(reason))) => {
                    return Err(format!("waiting for {dependency}, which failed: {reason}"));
                }
                Err(e) => return Err(format!("a dependency wait failed: {e}")),
            }
        }
        Ok(())
    }

    /// Waits for a daemon that is starting (or waiting for its
    /// dependencies) to run, or says why it will not.
    pub async fn wait_while_starting(self: &Arc<Self>, name: &str) -> Result<(), String> {
        self.satisfy(&Dependency {
            name: name.to_owned(),
            condition: deps::Condition::Ready,
        })
        .await
    }

    /// Prepares the environment of `name`, whose preparation the caller
    /// claimed, and records how that ended.
    async fn prepare_claimed(&self, name: &str) {
        let mut claim = PreparationClaim {
            context: self,
            name,
            ended: false,
        };
        let config = self.config();
        let preparation = match config.process(name) {
            Some(process) => {
                let environments = Environments::new(&config, self.children.clone());
                match environments.prepare(process).await {
                    Ok(prepared) => Preparation::Ready(Arc::new(prepared)),
                    Err(e) => Preparation::Failed(e.to_string()),
                }
            }
            // Gone from the config (a reload): nothing to prepare.
            None => Preparation::Unprepared,
        };
        claim.ended = true;
        self.set_preparation(name, preparation);
    }

    /// Starts `dependency` if it is neither running nor on its way, then
    /// waits for its condition.
    async fn satisfy(self: &Arc<Self>, dependency: &Dependency) -> Result<(), String> {
        // Subscribed before the first look, so no change falls between.
        let mut events = self.manager.subscribe();
        let mut pending_changes = self.pending_changed.subscribe();
        let name = dependency.name.as_str();
        let needs_start = self
            .process_status(name)
            .is_some_and(|status| status.state == State::Stopped && !status.completed);
        if needs_start {
            // Its failure shows in its status, read below.
            let _ = self.start(name).await;
        }
        loop {
            let Some(status) = self.process_status(name) else {
                return Err(format!("{name:?} is no longer in the config"));
            };
            match deps::evaluate(dependency.condition, &self.observed(&status)) {
                Verdict::Met => return Ok(()),
                Verdict::Failed(reason) => return Err(reason),
                Verdict::Wait => {}
            }
            tokio::select! {
                event = events.recv() => if event.is_none() {
                    return Err("the supervisor is shutting down".to_owned());
                },
                changed = pending_changes.changed() => if changed.is_err() {
                    return Err("the supervisor is shutting down".to_owned());
                },
            }
        }
    }

    fn observed<'s>(&self, status: &'s ProcessStatus) -> Observed<'s> {
        Observed {
            state: match status.state {
                State::Starting => tend::ProcessState::Starting,
                State::Running => tend::ProcessState::Running,
                State::Stopping => tend::ProcessState::Stopping,
                State::Stopped => tend::ProcessState::Stopped,
                State::Error => tend::ProcessState::Error,
            },
            completed: status.completed,
            has_healthcheck: status.health_check_retries.is_some(),
            passed_health_check: status.passed_health_check,
            last_error: status.last_error.as_deref(),
        }
    }

    /// Stops `names`, dependents before what they depend on (each group
    /// in parallel); returns the errors, one line each.
    pub async fn stop_in_order(self: &Arc<Self>, names: &BTreeSet<String>) -> Vec<String> {
        let graph = self.config().graph();
        let mut errors = Vec::new();
        for group in deps::stop_order(&graph, names) {
            let mut stops = JoinSet::new();
            for name in group {
                // A stopped daemon waits no more.
                if self.is_waiting(&name) {
                    self.set_pending(&name, None);
                }
                let context = Arc::clone(self);
                stops.spawn(async move {
                    let result = context.manager.stop_process(&name).await;
                    (name, result)
                });
            }
            while let Some(joined) = stops.join_next().await {
                match joined {
                    Ok((_, Ok(()) | Err(tend::Error::UnknownProcess(_)))) => {}
                    Ok((name, Err(e))) => errors.push(format!("{name}: {e}")),
                    Err(e) => errors.push(format!("a stop task failed: {e}")),
                }
            }
        }
        errors
    }

    /// Stops `name` and, first, every active daemon that depends on it.
    /// Returns the dependents stopped, or why the stop failed.
    pub async fn stop_with_dependents(self: &Arc<Self>, name: &str) -> Result<Vec<String>, String> {
        let graph = self.config().graph();
        let dependents: Vec<String> = deps::dependents(&graph, name)
            .into_iter()
            .filter(|dependent| {
                self.manager
                    .state(dependent)
                    .is_ok_and(|state| state.is_active())
                    || self.is_waiting(dependent)
            })
            .collect();
        let mut names: BTreeSet<String> = dependents.iter().cloned().collect();
        names.insert(name.to_owned());
        let errors = self.stop_in_order(&names).await;
        if errors.is_empty() {
            Ok(dependents)
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Stops every daemon, dependents first, and refuses later starts.
    pub async fn stop_everything(self: &Arc<Self>) {
        let mut names: BTreeSet<String> = self
            .config()
            .processes
            .iter()
            .map(|p| p.name.clone())
            .collect();
        // Daemons a reload removed from the config may still be listed.
        names.extend(self.manager.list().into_iter().map(|info| info.name));
        for error in self.stop_in_order(&names).await {
            tracing::warn!(%error, "stop failed");
        }
        self.manager.stop_all_processes().await;
    }
}
