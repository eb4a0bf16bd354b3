//! Preparing a daemon's Python virtualenv or Node packages before it starts
//! (`[process.NAME.python]`, `[process.NAME.node]`), with the library's
//! [`PluginEnvironmentManager`] keeping one environment per daemon in
//! `<state_dir>/envs/NAME`.
//!
//! `tend up` prepares every environment once, before it starts any daemon
//! (and before it becomes a child subreaper, see
//! `commands::up::prepare_environments`); the daemon then starts, and is
//! restarted, with the config [`Environments::prepare`] returned.
//! Preparing is cheap when nothing changed: the library compares a
//! fingerprint of the dependency files and runs no installer. Progress goes
//! to the supervisor's stdout, one line per step.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fmt,
    path::{Path, PathBuf},
};

use tend::{
    BackgroundProcessConfig,
    envs::{EnsureOutcome, EnvError, EnvKind, PluginEnvironmentManager, Progress},
};

use crate::config::{PluginEnvironment, TendConfig};

/// Folder (inside the state directory) of the daemons' environments.
const ENVS_DIR_NAME: &str = "envs";

/// The commands replaced by the venv's interpreter.
const PLAIN_PYTHON_COMMANDS: [&str; 2] = ["python3", "python"];

/// The environments of one config's daemons.
pub struct Environments {
    envs: PluginEnvironmentManager,
    specs: HashMap<String, PluginEnvironment>,
}

/// Why a daemon's environment could not be prepared.
#[derive(Debug)]
pub struct PrepareError {
    /// The daemon.
    pub name: String,
    /// Which environment.
    pub kind: EnvKind,
    /// What the library said (for a failed installer, with its output's
    /// last lines).
    pub source: EnvError,
}

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot prepare the {} environment of {:?}: {}",
            kind_name(self.kind),
            self.name,
            self.source
        )
    }
}

impl std::error::Error for PrepareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Environments {
    /// The environments `config` asks for, kept in `<state_dir>/envs`.
    /// Nothing is created until a daemon that has one is prepared.
    /// Installers are registered in `children`, the table the subreaper
    /// of `tend up` consults.
    pub fn new(config: &TendConfig, children: tend::ChildTable) -> Self {
        let envs = PluginEnvironmentManager::new(envs_root(config.state_dir.path()))
            .children(children)
            .on_progress(report_progress);
        Environments {
            envs,
            specs: config.environments.clone(),
        }
    }

    /// The config to start `config.name` with. Without an environment
    /// that is `config` unchanged. Otherwise its virtualenv is created and
    /// its requirements installed, and a `command` of `python3` or
    /// `python` is replaced by the venv's interpreter; its Node packages
    /// are installed, and `NODE_PATH` is set to their `node_modules`.
    ///
    /// Cancel safety: dropping the future kills a running installer; the
    /// next call starts over.
    pub async fn prepare(
        &self,
        config: &BackgroundProcessConfig,
    ) -> Result<BackgroundProcessConfig, PrepareError> {
        let mut prepared = config.clone();
        let Some(spec) = self.specs.get(&config.name) else {
            return Ok(prepared);
        };
        let name = config.name.as_str();
        let cwd = config.plugin_path.as_deref().unwrap_or(Path::new("."));
        let failed = |kind| {
            move |source| PrepareError {
                name: name.to_owned(),
                kind,
                source,
            }
        };
        if let Some(python) = &spec.python {
            say!("tend: preparing python environment for {name}…");
            let outcome = self
                .envs
                .ensure_python(name, cwd, python.requirements.as_deref())
                .await
                .map_err(failed(EnvKind::Python))?;
            say!(
                "tend: python environment for {name} {}",
                describe(&outcome, python.requirements.is_some())
            );
            if uses_plain_python(&prepared.command) {
                prepared.command = outcome.path;
            }
        }
        if let Some(node) = &spec.node {
            say!("tend: preparing node packages for {name}…");
            let outcome = self
                .envs
                .ensure_node(name, cwd, &node.package)
                .await
                .map_err(failed(EnvKind::Node))?;
            say!(
                "tend: node packages for {name} {}",
                describe(&outcome, true)
            );
            prepared = prepared.env("NODE_PATH", outcome.path);
        }
        Ok(prepared)
    }
}

/// `<state_dir>/envs`.
pub fn envs_root(state_dir: &Path) -> PathBuf {
    state_dir.join(ENVS_DIR_NAME)
}

/// Whether `command` is a bare `python3` or `python`, to be replaced by
/// the venv's interpreter.
fn uses_plain_python(command: &Path) -> bool {
    PLAIN_PYTHON_COMMANDS
        .iter()
        .any(|plain| command.as_os_str() == OsStr::new(plain))
}

/// "installed", "created", "is up to date".
fn describe(outcome: &EnsureOutcome, has_dependencies: bool) -> String {
    if outcome.installed {
        "installed".to_owned()
    } else if outcome.created && !has_dependencies {
        format!("created ({})", outcome.path.display())
    } else {
        "is up to date".to_owned()
    }
}

fn kind_name(kind: EnvKind) -> &'static str {
    match kind {
        EnvKind::Python => "python",
        EnvKind::Node => "node",
        // Non-exhaustive: a later kind is named generically.
        _ => "environment",
    }
}

/// Prints the library's slow steps.
fn report_progress(progress: Progress<'_>) {
    match progress {
        Progress::WaitingForLock { name } => {
            say!("tend: {name}: waiting for another process that prepares this environment…");
        }
        Progress::CreatingVenv { name, path } => {
            say!("tend: {name}: creating virtualenv {}…", path.display());
        }
        Progress::Installing { name, kind } => {
            let what = match kind {
                EnvKind::Python => "python requirements (pip)",
                EnvKind::Node => "node packages (npm)",
                _ => "dependencies",
            };
            say!("tend: {name}: installing {what}…");
        }
        // Progress is non-exhaustive: later steps are not printed.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_python_is_replaced() {
        assert!(uses_plain_python(Path::new("python3")));
        assert!(uses_plain_python(Path::new("python")));
        for other in ["/usr/bin/python3", "python3.11", "./python", "node", "sh"] {
            assert!(!uses_plain_python(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn outcomes_in_words() {
        let outcome = |created, installed| EnsureOutcome {
            path: PathBuf::from("/e/venv/bin/python"),
            created,
            installed,
        };
        assert_eq!(describe(&outcome(true, true), true), "installed");
        assert_eq!(describe(&outcome(false, false), true), "is up to date");
        assert_eq!(
            describe(&outcome(true, false), false),
            "created (/e/venv/bin/python)"
        );
        assert_eq!(describe(&outcome(false, false), false), "is up to date");
    }
}
