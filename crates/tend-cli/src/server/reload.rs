//! `tend reload` and SIGHUP: apply an edited config file without touching
//! what did not change.
//!
//! The file is read and validated whole first; a file with problems is
//! refused and nothing changes. Then, in order: daemons gone from the file
//! and daemons whose settings changed are stopped (dependents first), the
//! new config takes effect, and new daemons (with `autostart`), the changed
//! ones that were running and those left unstarted because a dependency
//! had failed start, each after its dependencies and with its environment
//! prepared from the new settings (a new or changed daemon left stopped
//! gets its environment at its next start). A daemon whose
//! settings are the same keeps running under the same PID.

use std::{collections::BTreeSet, sync::Arc};

use tokio::task::JoinSet;

use super::{Pending, Preparation, ServerContext};
use crate::{
    config::{self, TendConfig},
    protocol::{ReloadSummary, State},
};

/// What a reload did, and what the user should know about it.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The changes.
    pub summary: ReloadSummary,
    /// Failures along the way (a daemon that did not start), one each.
    pub notes: Vec<String>,
}

/// How each daemon of two configs compares.
#[derive(Debug, Default, PartialEq, Eq)]
struct Diff {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    changed: BTreeSet<String>,
    unchanged: BTreeSet<String>,
}

fn diff(old: &TendConfig, new: &TendConfig) -> Diff {
    let mut diff = Diff::default();
    for process in &new.processes {
        let name = process.name.clone();
        if old.process(&name).is_none() {
            diff.added.insert(name);
        } else if old.same_daemon(new, &name) {
            diff.unchanged.insert(name);
        } else {
            diff.changed.insert(name);
        }
    }
    for process in &old.processes {
        if new.process(&process.name).is_none() {
            diff.removed.insert(process.name.clone());
        }
    }
    diff
}

/// Why `new` cannot replace `old` in a running supervisor, if it cannot.
fn refusal(old: &TendConfig, new: &TendConfig) -> Option<String> {
    let restart = "a running supervisor keeps it; apply it with `tend down` and `tend up` (nothing was changed)";
    if new.state_dir != old.state_dir {
        return Some(format!(
            "settings.state_dir changed from {} to {}: {restart}",
            old.state_dir.path().display(),
            new.state_dir.path().display()
        ));
    }
    if new.containment != old.containment {
        return Some(format!(
            "settings.containment changed from {:?} to {:?}: {restart}",
            old.containment, new.containment
        ));
    }
    None
}

impl ServerContext {
    /// Rereads the config file and applies it (see the module doc).
    /// Returns what changed, or why nothing did.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config();
        let new = config::load(&old.file).map_err(|e| {
            format!("{e}\nthe running daemons were left as they are; fix the file and reload again")
        })?;
        if let Some(reason) = refusal(&old, &new) {
            return Err(reason);
        }
        let diff = diff(&old, &new);
        // Changed daemons are restarted if they run, are on their way, or
        // failed (the new settings may be the fix); a daemon stopped on
        // purpose or completed stays so, and takes the new settings at its
        // next start.
        let (restart, updated): (BTreeSet<String>, BTreeSet<String>) =
            diff.changed.iter().cloned().partition(|name| {
                self.process_status(name).is_some_and(|status| {
                    matches!(
                        status.state,
                        State::Starting | State::Running | State::Stopping | State::Error
                    )
                })
            });
        let mut reloaded = Reloaded::default();
        let to_stop: BTreeSet<String> = diff.removed.union(&restart).cloned().collect();
        reloaded.notes.extend(self.stop_in_order(&to_stop).await);

        let new = Arc::new(new);
        self.replace_config((*new).clone());
        for name in &diff.removed {
            self.set_pending(name, None);
            self.forget_preparation(name);
        }
        // New and changed daemons get their environment from the new
        // settings at their next start (below for those that start now);
        // a changed daemon that stays stopped does not keep the old one.
        for name in diff.added.iter().chain(&diff.changed) {
            if new.environments.contains_key(name) {
                self.set_preparation(name, Preparation::Unprepared);
            } else {
                self.forget_preparation(name);
            }
        }
        let (started, added): (BTreeSet<String>, BTreeSet<String>) = diff
            .added
            .iter()
            .cloned()
            .partition(|name| new.autostart(name));
        // Daemons left unstarted because a dependency failed get another
        // chance: the reload may have fixed it.
        let retried: BTreeSet<String> = new
            .processes
            .iter()
            .map(|process| process.name.clone())
            .filter(|name| {
                !restart.contains(name)
                    && matches!(self.pending_of(name), Some(Pending::Blocked(_)))
            })
            .collect();
        let to_start: BTreeSet<String> = started.union(&restart).chain(&retried).cloned().collect();
        // Each start prepares its daemon's environment (see
        // `ensure_prepared`), in parallel with the others.
        self.queue_starts(&to_start);
        let mut starts = JoinSet::new();
        for name in to_start {
            let context = Arc::clone(self);
            let again = restart.contains(&name);
            starts.spawn(async move {
                let result = if again {
                    context.start_again(&name).await
                } else {
                    context.start(&name).await
                };
                (name, result)
            });
        }
        while let Some(joined) = starts.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(reason))) => {
                    reloaded
                        .notes
                        .push(format!("{name} did not start: {reason}"));
                }
                Err(e) => reloaded.notes.push(format!("a start task failed: {e}")),
            }
        }
        reloaded.summary = ReloadSummary {
            started: started.into_iter().collect(),
            added: added.into_iter().collect(),
            removed: diff.removed.into_iter().collect(),
            restarted: restart.into_iter().collect(),
            updated: updated.into_iter().collect(),
            unchanged: diff
                .unchanged
                .into_iter()
                .filter(|name| !retried.contains(name))
                .collect(),
            retried: retried.into_iter().collect(),
        };
        Ok(reloaded)
    }

    /// Whether the config file now says something else about `name` than
    /// the config in force: a note for `tend restart`, which restarts
    /// with the settings in force. `None` when the file says the same (or
    /// cannot be read, which `tend check` explains).
    pub fn file_changed_note(&self, name: &str) -> Option<String> {
        let current = self.config();
        let on_disk = match config::load(&current.file) {
            Ok(on_disk) => on_disk,
            Err(config::ConfigError::Invalid { problems, .. }) => {
                return Some(format!(
                    "{} changed since it was loaded and now has {} problem{} (see `tend check`); {name} was restarted with the settings loaded before",
                    current.file.display(),
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ));
            }
            Err(config::ConfigError::Unreadable { .. }) => return None,
        };
        if on_disk.same_daemon(&current, name) {
            return None;
        }
        Some(format!(
            "the settings of {name} in {} changed since they were loaded; it was restarted with the old ones: run `tend reload` to apply the file",
            current.file.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parsed(text: &str) -> TendConfig {
        config::parse(Path::new("/usr/tend.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn daemons_are_sorted_into_added_removed_changed_and_unchanged() {
        let old = parsed(
            r#"
[process.same]
command = "same"
[process.args]
command = "x"
args = ["1"]
[process.deps]
command = "d"
[process.gone]
command = "g"
"#,
        );
        let new = parsed(
            r#"
[process.same]
command = "same"
[process.args]
command = "x"
args = ["2"]
[process.deps]
command = "d"
depends_on = ["same"]
[process.new]
command = "n"
"#,
        );
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(
            diff(&old, &new),
            Diff {
                added: set(&["new"]),
                removed: set(&["gone"]),
                changed: set(&["args", "deps"]),
                unchanged: set(&["same"]),
            }
        );
        assert_eq!(refusal(&old, &new), None);
        let moved =
            parsed("[settings]\nstate_dir = \"/tmp/x\"\n[process.same]\ncommand = \"same\"\n");
        assert!(refusal(&old, &moved).unwrap().contains("state_dir changed"));
    }
}
