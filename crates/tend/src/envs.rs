//! [`PluginEnvironmentManager`]: one environment directory per plugin,
//! holding its Python virtualenv or its Node packages.
//!
//! ```text
//! <envs root>/<plugin name>/
//!     .lock          flock'd while an environment is checked or built
//!     venv/          python3 -m venv; the plugin runs venv/bin/python
//!     python.hash    fingerprint of what venv/ was last built from
//!     node/          package.json (+ lock) copied from the plugin, node_modules/
//!     node.hash      fingerprint of what node/ was last built from
//! ```
//!
//! ```no_run
//! use std::path::Path;
//! use tend::envs::PluginEnvironmentManager;
//!
//! # async fn demo() -> Result<(), tend::envs::EnvError> {
//! let envs = PluginEnvironmentManager::new("/home/me/.local/share/app/envs");
//! let plugin = Path::new("/home/me/plugins/weather");
//! let outcome = envs
//!     .ensure_python("weather", plugin, Some(Path::new("requirements.txt")))
//!     .await?;
//! // Start the daemon with `outcome.path` as its command.
//! # Ok(())
//! # }
//! ```
//!
//! # When an environment is (re)built
//! Each build records a fingerprint: a SHA-256 over the dependency files'
//! contents, the interpreter's version and the plugin's directory (relative
//! paths in those files resolve against it). The fingerprint file is written
//! only after the installer succeeded, and removed before it starts, so:
//! an unchanged fingerprint reuses the environment without running the
//! installer; a changed file reinstalls; a failed or interrupted install
//! leaves no fingerprint and the next call tries again. A venv whose
//! interpreter no longer runs (say, the system Python was upgraded) is
//! recreated.
//!
//! The check and the build run under an exclusive `flock` on
//! `<dir>/.lock`, so two callers — tasks of this process or other
//! processes — never install into one environment at once: the second
//! waits, then finds the fingerprint the first one wrote.
//!
//! # Whose environment
//! An environment is code the plugin runs: one another user planted would
//! run as this user. So the envs root and each environment directory are
//! opened through [`PrivateDir`] (never through a symlink, refused unless
//! this user's own, restricted to 0700), the lock file inside must be this
//! user's too, and an existing `venv`, `venv/bin`, `node` or
//! `node/node_modules` is used only if it is a directory of this user that
//! nobody else may write. Anything else is refused, never adopted: the
//! error names the path to remove.
//!
//! Changes inside local packages that a dependency file points to (a
//! `./pkg` line, a `file:` dependency) are not noticed; touch the
//! dependency file to force a reinstall.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    fmt,
    fs::File,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{
    children::ChildTable,
    config::validate_name,
    private_dir::{FileMode, PrivateDir},
};

/// The name of the lock file in each environment directory.
pub const LOCK_FILE: &str = ".lock";

/// How many trailing lines of an installer's output an error quotes.
const TAIL_LINES: usize = 20;

/// How many trailing bytes of an installer's output are kept.
const TAIL_BYTES: usize = 16 * 1024;

/// Bumped when the fingerprint's inputs change, to force rebuilds.
const FINGERPRINT_VERSION: &[u8] = b"tend-env-fingerprint-1";

/// Why an environment could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The plugin name cannot be used as a directory name.
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A command could not be started at all (not installed?).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line, for display.
        command: String,
        /// What `exec` said.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}){}", tail_suffix(output_tail))]
    CommandFailed {
        /// The command line and its working directory, for display.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines of its combined stdout and stderr.
        output_tail: String,
    },
    /// A `package.json` that cannot be used.
    #[error("cannot use {}: {detail}", path.display())]
    InvalidPackageJson {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> EnvError {
    let context = context.into();
    move |source| EnvError::Io { context, source }
}

/// Which kind of environment a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvKind {
    /// A Python virtualenv.
    Python,
    /// A Node `node_modules`.
    Node,
}

/// A step worth telling a user about, reported to the callback set with
/// [`PluginEnvironmentManager::on_progress`] before the step starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// Another task or process is building this plugin's environment;
    /// waiting for it.
    WaitingForLock {
        /// The plugin.
        name: &'a str,
    },
    /// Creating the virtualenv (`python3 -m venv`).
    CreatingVenv {
        /// The plugin.
        name: &'a str,
        /// The venv directory.
        path: &'a Path,
    },
    /// Running pip or npm.
    Installing {
        /// The plugin.
        name: &'a str,
        /// Which installer.
        kind: EnvKind,
    },
}

/// What [`PluginEnvironmentManager::ensure_python`] or
/// [`PluginEnvironmentManager::ensure_node`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// For Python, the interpreter to run the plugin with
    /// (`<dir>/venv/bin/python`); for Node, the `node_modules` directory
    /// to put in `NODE_PATH`.
    pub path: PathBuf,
    /// Whether the venv or the node directory was created by this call.
    pub created: bool,
    /// Whether pip or npm ran (successfully) in this call; `false` means
    /// the environment was up to date and reused.
    pub installed: bool,
}

type ProgressCallback = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// Gives each plugin its own environment directory under an envs root and
/// builds a Python virtualenv or Node packages there on demand.
///
/// Share one manager (behind an `Arc`) between tasks; its methods take
/// `&self`. Concurrent calls for the same plugin are serialised, across
/// processes too (see the module doc).
pub struct PluginEnvironmentManager {
    root: PathBuf,
    python: OsString,
    npm: OsString,
    node: OsString,
    progress: Option<ProgressCallback>,
    /// Where the installers this manager runs are registered.
    children: ChildTable,
    /// One async mutex per environment directory, so that tasks of this
    /// process queue here instead of each parking a blocking thread in
    /// `flock`. The `flock` is what actually excludes other processes.
    local_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for PluginEnvironmentManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginEnvironmentManager")
            .field("root", &self.root)
            .field("python", &self.python)
            .field("npm", &self.npm)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PluginEnvironmentManager {
    /// A manager keeping environments under `envs_root` (created when
    /// first needed). Uses `python3`, `npm` and `node` from `PATH`.
    pub fn new(envs_root: impl Into<PathBuf>) -> Self {
        PluginEnvironmentManager {
            root: envs_root.into(),
            python: "python3".into(),
            npm: "npm".into(),
            node: "node".into(),
            progress: None,
            children: ChildTable::new(),
            local_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The table of this process's children to register installers in:
    /// in a child subreaper, the one given to [`crate::subreaper::enable`]
    /// (see [`ChildTable`]).
    pub fn children(mut self, table: ChildTable) -> Self {
        self.children = table;
        self
    }

    /// The Python that creates virtualenvs (default `python3`).
    pub fn python_command(mut self, python: impl Into<OsString>) -> Self {
        self.python = python.into();
        self
    }

    /// The `npm` to install Node packages with (default `npm`).
    pub fn npm_command(mut self, npm: impl Into<OsString>) -> Self {
        self.npm = npm.into();
        self
    }

    /// The `node` whose version goes into the Node fingerprint (default
    /// `node`).
    pub fn node_command(mut self, node: impl Into<OsString>) -> Self {
        self.node = node.into();
        self
    }

    /// Calls `report` before each slow step ("creating venv…",
    /// "installing…"), e.g. to print it. It runs on the calling task and
    /// should return quickly.
    pub fn on_progress(mut self, report: impl Fn(Progress<'_>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// The envs root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The plugin's environment directory, `<root>/<name>`, once `name`
    /// passed [`validate_name`] (so it cannot escape the root).
    pub fn env_dir(&self, name: &str) -> Result<PathBuf, EnvError> {
        validate_name(name).map_err(|reason| EnvError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        Ok(self.root.join(name))
    }

    /// The interpreter for the plugin: `<root>/<name>/venv/bin/python` if
    /// it exists, else the plain Python command (`python3`), also for an
    /// invalid name.
    pub fn python_path(&self, name: &str) -> PathBuf {
        match self.env_dir(name) {
            Ok(dir) => {
                let python = venv_python(&dir);
                if python.exists() {
                    python
                } else {
                    PathBuf::from(&self.python)
                }
            }
            Err(_) => PathBuf::from(&self.python),
        }
    }

    /// The plugin's `node_modules` directory, `<root>/<name>/node/node_modules`
    /// (whether or not it exists yet). Give it to the daemon as `NODE_PATH`;
    /// `require` finds packages there (ES-module `import` does not consult
    /// `NODE_PATH`).
    pub fn node_modules_path(&self, name: &str) -> Result<PathBuf, EnvError> {
        Ok(self.env_dir(name)?.join("node").join("node_modules"))
    }

    /// Makes sure the plugin has a virtualenv with its requirements
    /// installed, and returns its interpreter.
    ///
    /// Creates `<dir>/venv` with `python3 -m venv` if it is missing (or its
    /// interpreter no longer runs). With `requirements` (relative to
    /// `plugin_path` unless absolute), runs
    /// `<venv>/bin/python -m pip install --disable-pip-version-check --no-input -r <requirements>`
    /// in `plugin_path`, so relative paths inside the file work — unless
    /// the fingerprint of the last successful install matches (see the
    /// module doc). Never goes through a shell.
    ///
    /// # Cancel safety
    /// Dropping the future kills the running installer (the next call
    /// starts over, as no fingerprint was written) and releases the lock.
    pub async fn ensure_python(
        &self,
        name: &str,
        plugin_path: &Path,
        requirements: Option<&Path>,
    ) -> Result<EnsureOutcome, EnvError> {
        let dir = self.env_dir(name)?;
        let plugin_path = absolute(plugin_path)?;
        let _lock = self.lock(name, &dir).await?;
        let venv = dir.join("venv");
        let python = venv_python(&dir);
        let hash_file = dir.join("python.hash");

        let existing = if python.exists() {
            match interpreter_version(&self.children, python.as_os_str()).await {
                Ok(version) => Some(version),
                Err(error) => {
                    tracing::warn!(plugin = name, %error, "the venv's interpreter does not run; recreating the venv");
                    None
                }
            }
        } else {
            None
        };
        let created = existing.is_none();
        let version = match existing {
            Some(version) => version,
            None => {
                self.report(Progress::CreatingVenv { name, path: &venv });
                remove_file_if_exists(&hash_file).await?;
                remove_dir_if_exists(&venv).await?;
                let args = [OsStr::new("-m"), OsStr::new("venv"), venv.as_os_str()];
                run(&self.children, &self.python, &args, &dir).await?;
                interpreter_version(&self.children, python.as_os_str()).await?
            }
        };
        let outcome = |installed| EnsureOutcome {
            path: python.clone(),
            created,
            installed,
        };
        let Some(requirements) = requirements else {
            return Ok(outcome(false));
        };

        let requirements = plugin_path.join(requirements);
        let contents = tokio::fs::read(&requirements)
            .await
            .map_err(io_error(format!("cannot read {}", requirements.display())))?;
        let wanted = fingerprint(&[
            b"python",
            version.as_bytes(),
            plugin_path.as_os_str().as_bytes(),
            &contents,
        ]);
        if read_fingerprint(&hash_file).await?.as_deref() == Some(wanted.as_str()) {
            tracing::debug!(plugin = name, "python environment is up to date");
            return Ok(outcome(false));
        }

        remove_file_if_exists(&hash_file).await?;
        self.report(Progress::Installing {
            name,
            kind: EnvKind::Python,
        });
        let args = [
            OsStr::new("-m"),
            OsStr::new("pip"),
            OsStr::new("install"),
            OsStr::new("--disable-pip-version-check"),
            OsStr::new("--no-input"),
            OsStr::new("-r"),
            requirements.as_os_str(),
        ];
        run(&self.children, python.as_os_str(), &args, &plugin_path).await?;
        write_fingerprint(&hash_file, &wanted).await?;
        Ok(outcome(true))
    }

    /// Makes sure the plugin's Node packages are installed in its
    /// environment, and returns the `node_modules` directory.
    ///
    /// Copies `package_json` (relative to `plugin_path` unless absolute)
    /// and the `package-lock.json` beside it, if any, into `<dir>/node`,
    /// then runs `npm install --no-audit --no-fund` there — unless the
    /// fingerprint of the last successful install matches. In the copy,
    /// local dependencies (`file:../lib`, `./lib`) are rewritten to absolute
    /// paths so they still point into the plugin, and `scripts` are left
    /// out, since the plugin's own lifecycle scripts could not find their
    /// files from the copy. Never goes through a shell.
    ///
    /// # Cancel safety
    /// As for [`Self::ensure_python`].
    pub async fn ensure_node(
        &self,
        name: &str,
        plugin_path: &Path,
        package_json: &Path,
    ) -> Result<EnsureOutcome, EnvError> {
        let dir = self.env_dir(name)?;
        let package_json = absolute(plugin_path)?.join(package_json);
        let base = package_json
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let _lock = self.lock(name, &dir).await?;
        let node_dir = dir.join("node");
        let modules = node_dir.join("node_modules");
        let hash_file = dir.join("node.hash");

        let manifest = tokio::fs::read(&package_json)
            .await
            .map_err(io_error(format!("cannot read {}", package_json.display())))?;
        let lock_path = base.join("package-lock.json");
        let lockfile = match tokio::fs::read(&lock_path).await {
            Ok(contents) => Some(contents),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(io_error(format!("cannot read {}", lock_path.display()))(
                    error,
                ));
            }
        };
        let version = interpreter_version(&self.children, &self.node).await?;
        let wanted = fingerprint(&[
            b"node",
            version.as_bytes(),
            base.as_os_str().as_bytes(),
            &manifest,
            if lockfile.is_some() {
                b"lock".as_slice()
            } else {
                b"no lock".as_slice()
            },
            lockfile.as_deref().unwrap_or_default(),
        ]);
        let created = !node_dir.exists();
        if !created
            && modules.is_dir()
            && read_fingerprint(&hash_file).await?.as_deref() == Some(wanted.as_str())
        {
            tracing::debug!(plugin = name, "node environment is up to date");
            return Ok(EnsureOutcome {
                path: modules,
                created,
                installed: false,
            });
        }

        remove_file_if_exists(&hash_file).await?;
        let copy = rewrite_package_json(&manifest, &base).map_err(|detail| {
            EnvError::InvalidPackageJson {
                path: package_json.clone(),
                detail,
            }
        })?;
        tokio::fs::create_dir_all(&node_dir)
            .await
            .map_err(io_error(format!("cannot create {}", node_dir.display())))?;
        write_file(&node_dir.join("package.json"), &copy).await?;
        if let Some(lockfile) = &lockfile {
            write_file(&node_dir.join("package-lock.json"), lockfile).await?;
        }
        self.report(Progress::Installing {
            name,
            kind: EnvKind::Node,
        });
        let args = [
            OsStr::new("install"),
            OsStr::new("--no-audit"),
            OsStr::new("--no-fund"),
        ];
        run(&self.children, &self.npm, &args, &node_dir).await?;
        // npm creates no node_modules for a package without dependencies;
        // the daemon's NODE_PATH should point at a directory all the same.
        tokio::fs::create_dir_all(&modules)
            .await
            .map_err(io_error(format!("cannot create {}", modules.display())))?;
        write_fingerprint(&hash_file, &wanted).await?;
        Ok(EnsureOutcome {
            path: modules,
            created,
            installed: true,
        })
    }

    fn report(&self, progress: Progress<'_>) {
        tracing::info!(?progress, "plugin environment");
        if let Some(report) = &self.progress {
            report(progress);
        }
    }

    /// Takes this process's lock for `dir`, then the `flock` on
    /// `<dir>/.lock`. Both are released when the guard is dropped.
    async fn lock(&self, name: &str, dir: &Path) -> Result<EnvLock, EnvError> {
        let local = {
            let mut locks = self
                .local_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(dir.to_path_buf()).or_default())
        };
        let local = local.lock_owned().await;
        let untrusted = |source| EnvError::Io {
            context: format!("cannot use the environment directory {}", dir.display()),
            source,
        };
        let env_dir = PrivateDir::open_or_create(&self.root)
            .and_then(|root| root.subdir(name))
            .map_err(untrusted)?;
        let path = dir.join(LOCK_FILE);
        let lock_error = |source| EnvError::Io {
            context: format!("cannot lock {}", path.display()),
            source,
        };
        let file = env_dir
            .open_file(LOCK_FILE, FileMode::ReadWrite)
            .map_err(lock_error)?;
        let file = match flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => file,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.report(Progress::WaitingForLock { name });
                // If this future is dropped meanwhile, the thread still
                // gets the lock, and releases it at once as the file it
                // returns is dropped with the join handle's result.
                tokio::task::spawn_blocking(move || {
                    flock(&file, rustix::fs::FlockOperation::LockExclusive).map(|()| file)
                })
                .await
                .map_err(|error| lock_error(io::Error::other(error)))?
                .map_err(lock_error)?
            }
            Err(error) => return Err(lock_error(error)),
        };
        // Under the lock: another process of this user may be building.
        check_own_entries(&env_dir).map_err(untrusted)?;
        Ok(EnvLock {
            _file: file,
            _local: local,
        })
    }
}

/// Held while an environment is checked or built. Field order matters: the
/// `flock` is released before the next task of this process may try it.
struct EnvLock {
    _file: File,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

fn flock(file: &File, operation: rustix::fs::FlockOperation) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, operation) {
            Err(rustix::io::Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Refuses an existing `venv`, `venv/bin`, `node` or `node/node_modules`
/// in `env_dir` that is not a directory of this user closed to others'
/// writes (a symlink included): its contents would be run or loaded as
/// this user. Each is checked after its parent, so once `venv` passed,
/// nobody else can swap `venv/bin`.
fn check_own_entries(env_dir: &PrivateDir) -> io::Result<()> {
    use rustix::fs::{AtFlags, FileType};
    let me = rustix::process::geteuid().as_raw();
    for entry in ["venv", "venv/bin", "node", "node/node_modules"] {
        let stat = match rustix::fs::statat(env_dir.fd(), entry, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let path = env_dir.path().join(entry);
        let problem = if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            Some("is not a directory (a symbolic link, or a file)".to_owned())
        } else if stat.st_uid != me {
            Some(format!(
                "belongs to uid {}, not to this user (uid {me})",
                stat.st_uid
            ))
        } else if stat.st_mode & 0o022 != 0 {
            Some(format!(
                "may be written by others (mode {:o})",
                stat.st_mode & 0o7777
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} {problem}; tend will not use an environment it did not build: remove it",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn venv_python(dir: &Path) -> PathBuf {
    dir.join("venv").join("bin").join("python")
}

fn absolute(path: &Path) -> Result<PathBuf, EnvError> {
    std::path::absolute(path).map_err(io_error(format!("cannot make {} absolute", path.display())))
}

/// SHA-256 over length-prefixed parts, as lowercase hex; the prefixes keep
/// `["ab", "c"]` and `["a", "bc"]` apart.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_VERSION);
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn read_fingerprint(path: &Path) -> Result<Option<String>, EnvError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(format!("cannot read {}", path.display()))(error)),
    }
}

/// Writes the fingerprint through a temporary file and a rename, so a
/// crash never leaves a truncated one.
async fn write_fingerprint(path: &Path, fingerprint: &str) -> Result<(), EnvError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    write_file(&temporary, format!("{fingerprint}\n").as_bytes()).await?;
    tokio::fs::rename(&temporary, path)
        .await
        .map_err(io_error(format!("cannot write {}", path.display())))
}

async fn write_file(path: &Path, contents: &[u8]) -> Result<(), EnvError> {
    tokio::fs::write(path, contents)
        .await
        .map_err(io_error(format!("cannot write {}", path.display())))
}

async fn remove_file_if_exists(path: &Path) -> Result<(), EnvError> {
    match tokio::fs::remove_file(path).await {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error(format!("cannot remove {}", path.display()))(error))
        }
        _ => Ok(()),
    }
}

async fn remove_dir_if_exists(path: &Path) -> Result<(), EnvError> {
    match tokio::fs::remove_dir_all(path).await {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error(format!("cannot remove {}", path.display()))(error))
        }
        _ => Ok(()),
    }
}

/// `<program> --version`, trimmed (`Python 3.11.7`, `v22.1.0`).
async fn interpreter_version(children: &ChildTable, program: &OsStr) -> Result<String, EnvError> {
    let command = display_command(program, &[OsStr::new("--version")], None);
    let child = children
        .spawn_registered(
            tokio::process::Command::new(program)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true),
        )
        .map_err(|source| EnvError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id();
    let output = child.wait_with_output().await;
    if let Some(pid) = pid {
        children.forget(pid);
    }
    let output = output.map_err(|source| EnvError::Spawn {
        command: command.clone(),
        source,
    })?;
    // Old Pythons print their version to stderr.
    let mut text = output.stdout;
    text.extend_from_slice(&output.stderr);
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    if output.status.success() {
        Ok(text)
    } else {
        Err(EnvError::CommandFailed {
            command,
            status: output.status,
            output_tail: tail_lines(text.as_bytes()),
        })
    }
}

/// Runs `program args` in `cwd` with stdout and stderr on one pipe, so the
/// tail quoted on failure keeps their order. Killed if the future is
/// dropped.
async fn run(
    children: &ChildTable,
    program: &OsStr,
    args: &[&OsStr],
    cwd: &Path,
) -> Result<(), EnvError> {
    let command = display_command(program, args, Some(cwd));
    tracing::debug!(%command, "running");
    let pipe_error = io_error(format!("cannot create a pipe for `{command}`"));
    let (output, stdout) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|errno| pipe_error(io::Error::from(errno)))?;
    let stderr = stdout
        .try_clone()
        .map_err(io_error(format!("cannot create a pipe for `{command}`")))?;
    let mut child = {
        let mut builder = tokio::process::Command::new(program);
        builder
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // The builder holds our copies of the pipe's write end; it is
        // dropped at the end of this block, so EOF comes when the child
        // (and whatever it started) is done writing.
        children
            .spawn_registered(&mut builder)
            .map_err(|source| EnvError::Spawn {
                command: command.clone(),
                source,
            })?
    };
    let pid = child.id();
    let mut output = tokio::net::unix::pipe::Receiver::from_owned_fd(output)
        .map_err(io_error(format!("cannot read the output of `{command}`")))?;
    let mut tail = Vec::new();
    let mut chunk = vec![0; 8192];
    loop {
        match output.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%command, %error, "reading the output failed");
                break;
            }
        }
    }
    // Should reading have failed, the child gets EPIPE rather than block.
    drop(output);
    let status = child.wait().await;
    if let Some(pid) = pid {
        children.forget(pid);
    }
    let status = status.map_err(io_error(format!("cannot wait for `{command}`")))?;
    if status.success() {
        Ok(())
    } else {
        Err(EnvError::CommandFailed {
            command,
            status,
            output_tail: tail_lines(&tail),
        })
    }
}

fn display_command(program: &OsStr, args: &[&OsStr], cwd: Option<&Path>) -> String {
    let mut text = program.to_string_lossy().into_owned();
    for arg in args {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    if let Some(cwd) = cwd {
        text.push_str(&format!("` in `{}", cwd.display()));
    }
    text
}

/// The last [`TAIL_LINES`] non-empty lines of `output`.
fn tail_lines(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The dependency sections of a `package.json` whose local paths are
/// rewritten.
const DEPENDENCY_SECTIONS: [&str; 4] = [
    "dependencies",
    "devDependencies",
    "optionalDependencies",
    "peerDependencies",
];

/// The copy of a `package.json` installed from the environment directory:
/// relative local dependencies made absolute against `base` (the original
/// file's directory) and `scripts` removed.
fn rewrite_package_json(manifest: &[u8], base: &Path) -> Result<Vec<u8>, String> {
    let mut manifest: Value =
        serde_json::from_slice(manifest).map_err(|error| format!("not JSON: {error}"))?;
    let Value::Object(fields) = &mut manifest else {
        return Err("not a JSON object".into());
    };
    fields.remove("scripts");
    for section in DEPENDENCY_SECTIONS {
        let Some(Value::Object(dependencies)) = fields.get_mut(section) else {
            continue;
        };
        for spec in dependencies.values_mut() {
            if let Value::String(text) = spec {
                if let Some(path) = relative_local_path(text) {
                    *text = format!("file:{}", base.join(path).display());
                }
            }
        }
    }
    let mut copy = serde_json::to_vec_pretty(&manifest).map_err(|error| error.to_string())?;
    copy.push(b'\n');
    Ok(copy)
}

/// The path of a dependency spec that names a local directory or tarball
/// by a relative path (`file:../lib`, `file:lib`, `./lib`, `../lib.tgz`),
/// as npm reads specs; `None` for registry, git, URL, absolute and
/// home-relative specs.
fn relative_local_path(spec: &str) -> Option<&str> {
    let path = match spec.strip_prefix("file:") {
        Some(path) => path,
        None if spec.starts_with("./") || spec.starts_with("../") => spec,
        None => return None,
    };
    if path.is_empty() || path.starts_with('/') || path.starts_with('~') {
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fingerprints_are_stable_and_keep_part_boundaries() {
        let a = fingerprint(&[b"python", b"Python 3.11.7", b"requests==2"]);
        assert_eq!(
            a,
            fingerprint(&[b"python", b"Python 3.11.7", b"requests==2"])
        );
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            a,
            fingerprint(&[b"python", b"Python 3.11.8", b"requests==2"])
        );
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_ne!(fingerprint(&[b""]), fingerprint(&[]));
    }

    #[test]
    fn relative_local_specs_are_recognised() {
        assert_eq!(relative_local_path("file:./lib"), Some("./lib"));
        assert_eq!(relative_local_path("file:../lib.tgz"), Some("../lib.tgz"));
        assert_eq!(relative_local_path("file:lib"), Some("lib"));
        assert_eq!(relative_local_path("./lib"), Some("./lib"));
        for other in [
            "^1.2.3",
            "latest",
            "file:/abs/lib",
            "file:~/lib",
            "/abs/lib",
            "git+https://example.invalid/x.git",
            "npm:other@1",
        ] {
            assert_eq!(relative_local_path(other), None, "{other}");
        }
    }

    #[test]
    fn the_package_json_copy_points_local_dependencies_back_to_the_plugin() {
        let manifest = json!({
            "name": "plug",
            "scripts": {"postinstall": "node build.js"},
            "dependencies": {"local": "file:./localdep", "remote": "^1.0.0"},
            "devDependencies": {"tool": "../tool"},
        });
        let copy =
            rewrite_package_json(manifest.to_string().as_bytes(), Path::new("/plugins/p")).unwrap();
        let copy: Value = serde_json::from_slice(&copy).unwrap();
        assert_eq!(
            copy,
            json!({
                "name": "plug",
                "dependencies": {"local": "file:/plugins/p/./localdep", "remote": "^1.0.0"},
                "devDependencies": {"tool": "file:/plugins/p/../tool"},
            })
        );
        assert!(rewrite_package_json(b"[1]", Path::new("/")).is_err());
        assert!(rewrite_package_json(b"{", Path::new("/")).is_err());
    }

    #[test]
    fn the_tail_keeps_the_last_non_empty_lines() {
        let output: String = (1..=30).map(|i| format!("line {i}\n\n")).collect();
        let tail = tail_lines(output.as_bytes());
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.starts_with("line 11\n"));
        assert!(tail.ends_with("line 30"));
    }

    #[test]
    fn names_that_could_escape_the_root_are_refused() {
        let envs = PluginEnvironmentManager::new("/envs");
        assert_eq!(envs.env_dir("weather").unwrap(), Path::new("/envs/weather"));
        for bad in ["..", "a/b", "", "x y"] {
            assert!(
                matches!(envs.env_dir(bad), Err(EnvError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(envs.python_path(".."), Path::new("python3"));
        assert_eq!(envs.python_path("weather"), Path::new("python3"));
    }

    /// A venv whose interpreter would leave a marker if anything ran it.
    fn plant_venv(env_dir: &Path, marker: &Path) {
        let bin = env_dir.join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let python = bin.join("python");
        std::fs::write(
            &python,
            format!("#!/bin/sh\ntouch {}\necho Python 3.99\n", marker.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn an_environment_reached_through_a_symlink_is_refused() {
        let temp = tempfile::Builder::new()
            .prefix("ev")
            .tempdir_in("/tmp")
            .unwrap();
        let elsewhere = temp.path().join("elsewhere");
        let marker = temp.path().join("ran");
        plant_venv(&elsewhere, &marker);
        let root = temp.path().join("envs");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("py")).unwrap();
        let envs = PluginEnvironmentManager::new(&root);
        assert_refused(&envs, temp.path(), &marker, "symbolic link").await;

        // A symlinked venv inside an environment of ours, too.
        std::fs::remove_file(root.join("py")).unwrap();
        std::fs::create_dir(root.join("py")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("venv"), root.join("py/venv")).unwrap();
        assert_refused(&envs, temp.path(), &marker, "not a directory").await;
    }

    /// Preparing environment "py" fails with an error that says `why`,
    /// and the planted interpreter, which would create `marker`, never ran.
    async fn assert_refused(envs: &PluginEnvironmentManager, dir: &Path, marker: &Path, why: &str) {
        let err = envs.ensure_python("py", dir, None).await.unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(!marker.exists(), "the planted interpreter ran");
    }

    #[tokio::test]
    async fn another_users_environment_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to make files of another user");
            return;
        }
        let temp = tempfile::Builder::new()
            .prefix("ev")
            .tempdir_in("/tmp")
            .unwrap();
        let marker = temp.path().join("ran");
        let root = temp.path().join("envs");
        let env_dir = root.join("py");
        plant_venv(&env_dir, &marker);
        std::os::unix::fs::chown(&env_dir, Some(65534), Some(65534)).unwrap();
        let envs = PluginEnvironmentManager::new(&root);
        assert_refused(&envs, temp.path(), &marker, "uid 65534").await;

        // Our environment directory, their venv.
        std::os::unix::fs::chown(&env_dir, Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(env_dir.join("venv"), Some(65534), Some(65534)).unwrap();
        assert_refused(&envs, temp.path(), &marker, "uid 65534").await;
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_output_tail_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo to-stdout; echo to-stderr >&2; exit 3";
        let error = run(
            &ChildTable::new(),
            OsStr::new("sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            dir.path(),
        )
        .await
        .unwrap_err();
        match &error {
            EnvError::CommandFailed {
                status,
                output_tail,
                ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(output_tail, "to-stdout\nto-stderr");
            }
            other => panic!("{other:?}"),
        }
        assert!(error.to_string().contains("to-stderr"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = run(
            &ChildTable::new(),
            OsStr::new("/nonexistent/tend-test-program"),
            &[],
            dir.path(),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, EnvError::Spawn { .. }), "{error:?}");
    }
}
