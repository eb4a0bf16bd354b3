//! The config file (`tend.toml`): reading it into the library's
//! [`BackgroundProcessConfig`]s and the supervisor's settings.
//!
//! Every problem is collected — syntax aside, a bad file is read to its end
//! — and reported with the file, the line and the dotted key, so a user
//! fixes everything in one pass. Relative paths are resolved here: `cwd`
//! and `state_dir` against the config file's folder, `socket` and
//! `log_file` against the state directory, and a relative `command` that
//! contains a `/`, `python.requirements` and `node.package` against `cwd`;
//! `env_file` against the config file's folder.
//!
//! `${VAR}` and `${VAR:-default}` are replaced from the environment of the
//! reading process (`tend up`) in `command`, `args`, `cwd`, `socket`,
//! `log_file`, `env` values, `env_file`, `python.requirements` and
//! `node.package` (see [`interpolate`]).

pub mod duration;
mod interpolate;
mod probes;
mod size;
mod values;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt, fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tend::{
    BackgroundProcessConfig, ContainmentChoice, HealthCheck, HealthProbe, RestartPolicy, Rlimit,
    RlimitValue, StopSignal, defaults,
};
use toml_edit::ImDocument;

use crate::{
    deps::{self, Condition, Dependency},
    state_dir::StateDir,
};
use values::{Entry, Lookup, Problems, Span, entries, line_of, process_env};

/// The config file used when no `-c` is given.
pub const DEFAULT_CONFIG_FILE: &str = "tend.toml";

const TOP_LEVEL_KEYS: &[&str] = &["settings", "process"];
const SETTINGS_KEYS: &[&str] = &["state_dir", "containment"];
const PROCESS_KEYS: &[&str] = &[
    "command",
    "args",
    "cwd",
    "socket",
    "env",
    "startup_timeout",
    "shutdown_grace_period",
    "max_restart_attempts",
    "restart_delay",
    "stable_period",
    "log_file",
    "log_file_max_size",
    "log_file_keep",
    "healthcheck",
    "ready",
    "watchdog",
    "events",
    "memory_max",
    "pids_max",
    "cpu_max",
    "user",
    "group",
    "supplementary_groups",
    "umask",
    "rlimits",
    "python",
    "node",
    "restart",
    "retry_first_start",
    "stop_signal",
    "autostart",
    "depends_on",
    "env_file",
];
const HEALTHCHECK_KEYS: &[&str] = &[
    "interval", "timeout", "retries", "probe", "url", "address", "command", "remote", "status",
];
const PYTHON_KEYS: &[&str] = &["requirements"];
const NODE_KEYS: &[&str] = &["package"];

/// The command of a daemon with a `[python]` table and no `command`.
const DEFAULT_PYTHON_COMMAND: &str = "python3";
/// The command of a daemon with a `[node]` table (and no `[python]` one)
/// and no `command`.
const DEFAULT_NODE_COMMAND: &str = "node";
/// The `package` of a `[node]` table that names none.
const DEFAULT_PACKAGE_JSON: &str = "package.json";

/// A valid config file, with every path resolved.
#[derive(Debug, Clone)]
pub struct TendConfig {
    /// The config file (absolute).
    pub file: PathBuf,
    /// Where the supervisor keeps its state.
    pub state_dir: StateDir,
    /// How the daemons are to be contained (`[settings] containment`).
    pub containment: ContainmentChoice,
    /// The daemons, in file order. Shared with the manager, which keeps
    /// the config it runs a daemon with: one copy, not two (about 700
    /// bytes a daemon).
    pub processes: Vec<Arc<BackgroundProcessConfig>>,
    /// The environments to prepare before starting a daemon, by daemon
    /// name; daemons without a `python` or `node` table have none.
    pub environments: HashMap<String, PluginEnvironment>,
    /// When each daemon starts (`autostart`, `depends_on`), by name; every
    /// daemon has an entry.
    pub startup: HashMap<String, Startup>,
}

impl TendConfig {
    /// The config of daemon `name`, if the file defines it.
    pub fn process(&self, name: &str) -> Option<&BackgroundProcessConfig> {
        self.processes
            .iter()
            .map(|process| &**process)
            .find(|process| process.name == name)
    }

    /// The `depends_on` of every daemon.
    pub fn graph(&self) -> deps::Graph {
        self.startup
            .iter()
            .map(|(name, startup)| (name.clone(), startup.depends_on.clone()))
            .collect()
    }

    /// The dependencies of `name` (none for an unknown name).
    pub fn dependencies(&self, name: &str) -> &[Dependency] {
        self.startup
            .get(name)
            .map_or(&[], |startup| startup.depends_on.as_slice())
    }

    /// Whether `name` is started by a `tend up` that names no daemon.
    pub fn autostart(&self, name: &str) -> bool {
        self.startup
            .get(name)
            .is_none_or(|startup| startup.autostart)
    }

    /// Whether daemon `name` is configured the same in `self` and `other`:
    /// its settings, environment and startup.
    pub fn same_daemon(&self, other: &TendConfig, name: &str) -> bool {
        self.process(name) == other.process(name)
            && self.environments.get(name) == other.environments.get(name)
            && self.startup.get(name) == other.startup.get(name)
    }
}

/// When a daemon starts: `[process.NAME] autostart` and `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Started by `tend up` without names (default true); a daemon with
    /// `autostart = false` starts when named (`tend up NAME`, `tend start
    /// NAME`) or when a daemon that starts depends on it.
    pub autostart: bool,
    /// The daemons it waits for, and for what, in file order.
    pub depends_on: Vec<Dependency>,
}

impl Default for Startup {
    fn default() -> Self {
        Startup {
            autostart: true,
            depends_on: Vec::new(),
        }
    }
}

/// What to prepare before a daemon starts (`[process.NAME.python]`,
/// `[process.NAME.node]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginEnvironment {
    /// A virtualenv, with these requirements installed.
    pub python: Option<PythonEnvironment>,
    /// Node packages installed from this `package.json`.
    pub node: Option<NodeEnvironment>,
}

/// `[process.NAME.python]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonEnvironment {
    /// The requirements file (absolute), if any; without one the venv is
    /// created empty.
    pub requirements: Option<PathBuf>,
}

/// `[process.NAME.node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnvironment {
    /// The `package.json` (absolute).
    pub package: PathBuf,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// The dotted key at fault (`process.echo.startup_timeout`); empty for
    /// a syntax error.
    pub key: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

/// Why a config file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Unreadable {
        /// The file.
        file: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file was read and has problems.
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found, by line.
        problems: Vec<ConfigProblem>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { file, source } => {
                write!(f, "cannot read config file {}: {source}", file.display())
            }
            ConfigError::Invalid { file, problems } => {
                let count = problems.len();
                let plural = if count == 1 { "" } else { "s" };
                write!(f, "{count} problem{plural} in {}:", file.display())?;
                for problem in problems {
                    write!(f, "\n  {}", file.display())?;
                    if let Some(line) = problem.line {
                        write!(f, ":{line}")?;
                    }
                    if problem.key.is_empty() {
                        write!(f, ": {}", problem.message)?;
                    } else {
                        write!(f, ": {}: {}", problem.key, problem.message)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the config file at `file`.
pub fn load(file: &Path) -> Result<TendConfig, ConfigError> {
    let (file, text) = read(file)?;
    parse(&file, &text)
}

/// Reads only the state directory of the config at `file` (returned with
/// the file's canonical path), so a client can
/// find a running supervisor even when the rest of the file was edited
/// into something invalid since.
///
/// Only the `[settings]` table (and whatever precedes the first table) is
/// parsed: the rest of a config of 1,000 daemons takes longer to parse than
/// the request itself takes to answer. Should the cut-down text not parse,
/// the whole file decides.
pub fn load_state_dir(file: &Path) -> Result<(PathBuf, StateDir), ConfigError> {
    let (file, text) = read(file)?;
    let state_dir =
        state_dir_in(&file, &settings_only(&text)).or_else(|_| state_dir_in(&file, &text))?;
    Ok((file, state_dir))
}

fn state_dir_in(file: &Path, text: &str) -> Result<StateDir, ConfigError> {
    let document = parse_document(file, text)?;
    let mut problems = Problems::new(text, process_env);
    let settings = document
        .as_table()
        .get_key_value("settings")
        .map(|(key, item)| Entry {
            key: "settings".into(),
            item,
            key_span: key.span(),
            value_span: item.span(),
        });
    let (state_dir, _) = read_settings(settings.as_ref(), file, &mut problems);
    if problems.is_empty() {
        Ok(state_dir)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            problems: problems.into_sorted(),
        })
    }
}

/// `text` with every line blanked except those before the first table
/// header and those of the `[settings]` table; line numbers stay as they
/// were, so errors still point into the real file.
fn settings_only(text: &str) -> String {
    let mut keep = true;
    let mut kept = String::with_capacity(text.len().min(4096));
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            keep = trimmed
                .strip_prefix('[')
                .and_then(|rest| rest.split(']').next())
                .is_some_and(|name| name.trim() == "settings");
        }
        if keep {
            kept.push_str(line);
        } else if line.ends_with('\n') {
            kept.push('\n');
        }
    }
    kept
}

fn read(file: &Path) -> Result<(PathBuf, String), ConfigError> {
    // Canonical: the default state directory is keyed by this path, and a
    // client compares it with the one its supervisor runs.
    let file = fs::canonicalize(file)
        .or_else(|_| std::path::absolute(file))
        .unwrap_or_else(|_| file.to_owned());
    match read_trusted(&file) {
        Ok(text) => Ok((file, text)),
        Err(source) => Err(ConfigError::Unreadable { file, source }),
    }
}

/// Reads the config file, refusing one that another user could have
/// written: it names the programs `tend up` runs as this user, and the
/// state directory clients send requests into. The file must belong to
/// this user or root and must not be writable by others; it is checked on
/// the descriptor it is read from. This holds for `-c FILE` as much as for
/// `./tend.toml`: naming a file explicitly does not make a file someone
/// else can rewrite any safer to run.
fn read_trusted(file: &Path) -> io::Result<String> {
    use std::{io::Read, os::unix::fs::MetadataExt};
    let mut opened = fs::File::open(file)?;
    let metadata = opened.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    let problem = if metadata.uid() != me && metadata.uid() != 0 {
        Some(format!(
            "it belongs to uid {}, not to this user (uid {me}) or root",
            metadata.uid()
        ))
    } else if metadata.mode() & 0o002 != 0 {
        Some(format!(
            "any user may write it (mode {:o})",
            metadata.mode() & 0o7777
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{problem}; tend runs what a config names, so it uses only a file that no \
                 other user can have written (`chmod o-w` it, or copy it to a file of your own)"
            ),
        ));
    }
    let mut text = String::new();
    opened.read_to_string(&mut text)?;
    Ok(text)
}

fn base_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("/"))
}

fn parse_document<'text>(
    file: &Path,
    text: &'text str,
) -> Result<ImDocument<&'text str>, ConfigError> {
    ImDocument::parse(text).map_err(|error| ConfigError::Invalid {
        file: file.to_owned(),
        problems: vec![ConfigProblem {
            line: error.span().map(|span| line_of(text, span.start)),
            key: String::new(),
            message: format!("invalid TOML: {}", error.message().trim_end()),
        }],
    })
}

/// Validates the config `text` of the file at `file` (an absolute path;
/// its folder is the base of relative paths), with `${VAR}` taken from
/// this process's environment.
pub fn parse(file: &Path, text: &str) -> Result<TendConfig, ConfigError> {
    parse_with_env(file, text, process_env)
}

/// [`parse`], with `${VAR}` taken from `env`.
pub fn parse_with_env(file: &Path, text: &str, env: Lookup) -> Result<TendConfig, ConfigError> {
    let document = parse_document(file, text)?;
    let base = base_dir(file);
    let mut problems = Problems::new(text, env);

    let mut settings = None;
    let mut process_tables = None;
    for entry in entries(document.as_table(), "", &None) {
        match entry.key.as_str() {
            "settings" => settings = Some(entry),
            "process" => process_tables = Some(entry),
            _ => problems.unknown_key(&entry, TOP_LEVEL_KEYS),
        }
    }
    let (state_dir, containment) = read_settings(settings.as_ref(), file, &mut problems);

    let mut processes = Vec::new();
    match process_tables {
        Some(entry) => {
            if let Some(table) = problems.table(&entry) {
                let mut defined = Vec::new();
                for process in entries(table, "process", &entry.span()) {
                    defined.push(process.key["process.".len()..].to_owned());
                    if let Some(read) = read_process(&process, base, &state_dir, &mut problems) {
                        processes.push(read);
                    }
                }
                report_shared_paths(&processes, &state_dir, &mut problems);
                report_dependency_problems(&processes, &defined, &mut problems);
                if table.is_empty() {
                    problems.add(entry.span(), "process", "defines no daemon");
                }
            }
        }
        None => problems.add(
            None,
            "process",
            "no daemon defined; add a [process.NAME] table with a command",
        ),
    }

    if problems.is_empty() {
        let environments = processes
            .iter()
            .filter(|read| read.environment != PluginEnvironment::default())
            .map(|read| (read.config.name.clone(), read.environment.clone()))
            .collect();
        let startup = processes
            .iter()
            .map(|read| (read.config.name.clone(), read.startup.clone()))
            .collect();
        Ok(TendConfig {
            file: file.to_owned(),
            state_dir,
            containment,
            // Not `collect()`: collecting in place would keep the read
            // daemons' buffer (720 bytes each) for the 8-byte `Arc`s.
            processes: {
                let mut configs = Vec::with_capacity(processes.len());
                configs.extend(processes.into_iter().map(|read| Arc::new(read.config)));
                configs
            },
            environments,
            startup,
        })
    } else {
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            problems: problems.into_sorted(),
        })
    }
}

fn read_settings(
    settings: Option<&Entry<'_>>,
    file: &Path,
    problems: &mut Problems<'_>,
) -> (StateDir, ContainmentChoice) {
    let mut containment = ContainmentChoice::Auto;
    let mut state_dir = None;
    let mut state_dir_span = None;
    if let Some(table) = settings.and_then(|entry| problems.table(entry)) {
        let fallback = settings.and_then(Entry::span);
        for entry in entries(table, "settings", &fallback) {
            match entry.key.as_str() {
                "settings.state_dir" => {
                    state_dir = problems
                        .non_empty_string(&entry)
                        .map(|dir| base_dir(file).join(dir));
                    state_dir_span = entry.span();
                }
                "settings.containment" => match problems.string(&entry).as_deref() {
                    Some("auto") => containment = ContainmentChoice::Auto,
                    Some("cgroup") => containment = ContainmentChoice::Cgroup,
                    Some("process-group") => containment = ContainmentChoice::ProcessGroup,
                    Some(other) => problems.add(
                        entry.span(),
                        &entry.key,
                        format!(
                            "must be \"auto\", \"cgroup\" or \"process-group\", found {other:?}"
                        ),
                    ),
                    None => {}
                },
                _ => problems.unknown_key(&entry, SETTINGS_KEYS),
            }
        }
    }
    let state_dir = match state_dir {
        Some(dir) => StateDir::new(dir),
        None => StateDir::of_project(file),
    };
    let control_socket = state_dir.control_socket();
    let length = control_socket.as_os_str().as_bytes().len();
    if length > defaults::MAX_SOCKET_PATH_BYTES {
        problems.add(
            state_dir_span,
            "settings.state_dir",
            format!(
                "the control socket {} would be {length} bytes long; Unix sockets allow at most {}, so choose a shorter state directory",
                control_socket.display(),
                defaults::MAX_SOCKET_PATH_BYTES
            ),
        );
    }
    (state_dir, containment)
}

/// Where each key of one process was written, for problems found later.
type KeySpans = HashMap<&'static str, Span>;

/// One valid `[process.NAME]` table.
struct ReadProcess {
    config: BackgroundProcessConfig,
    environment: PluginEnvironment,
    startup: Startup,
    spans: KeySpans,
    /// Where each entry of `depends_on` is written, in its order.
    dependency_spans: Vec<Span>,
}

/// The dependency files of the `python` and `node` tables, as written
/// (the outer `Option` says whether the table is there), until `cwd` is
/// known.
#[derive(Default)]
struct EnvironmentKeys {
    python: Option<Option<String>>,
    node: Option<Option<String>>,
}

fn read_process(
    process: &Entry<'_>,
    base: &Path,
    state_dir: &StateDir,
    problems: &mut Problems<'_>,
) -> Option<ReadProcess> {
    let name = &process.key["process.".len()..];
    let before = problems.len();
    if let Err(message) = tend::validate_name(name) {
        problems.add(
            process.key_span.clone(),
            &process.key,
            format!("invalid daemon name: {message}"),
        );
    }
    let table = problems.table(process)?;
    let mut config = BackgroundProcessConfig::new(name, "");
    let mut spans = KeySpans::new();
    let mut command = None;
    let mut cwd = base.to_owned();
    let mut reported: BTreeSet<&'static str> = BTreeSet::new();
    let mut environment_keys = EnvironmentKeys::default();
    let mut startup = Startup::default();
    let mut dependency_spans = Vec::new();
    let mut env_files = Vec::new();

    for entry in entries(table, &process.key, &process.span()) {
        let short = &entry.key[process.key.len() + 1..];
        let Some(&key) = PROCESS_KEYS.iter().find(|&&k| k == short) else {
            problems.unknown_key(&entry, PROCESS_KEYS);
            continue;
        };
        spans.insert(key, entry.span());
        let before_key = problems.len();
        match key {
            "command" => command = problems.expanded_string(&entry),
            "args" => {
                if let Some(args) = problems.expanded_list(&entry) {
                    config = config.args(args);
                }
            }
            "cwd" => {
                if let Some(dir) = problems.expanded_string(&entry) {
                    cwd = base.join(dir);
                }
            }
            "socket" => {
                if let Some(socket) = problems.expanded_string(&entry) {
                    config = config.socket_path(state_dir.path().join(socket));
                }
            }
            "env" => {
                if let Some(vars) = problems.expanded_map(&entry) {
                    config = config.envs(vars);
                }
            }
            "env_file" => {
                if let Some(vars) = read_env_files(&entry, base, problems) {
                    env_files = vars;
                }
            }
            "restart" => match problems.string(&entry).as_deref() {
                Some("always") => config.restart = RestartPolicy::Always,
                Some("on-failure") => config.restart = RestartPolicy::OnFailure,
                Some("never") => config.restart = RestartPolicy::Never,
                Some(other) => problems.add(
                    entry.span(),
                    &entry.key,
                    format!("must be \"always\", \"on-failure\" or \"never\", found {other:?}"),
                ),
                None => {}
            },
            "retry_first_start" => {
                if let Some(retry) = problems.boolean(&entry) {
                    config.retry_first_start = retry;
                }
            }
            "stop_signal" => {
                if let Some(name) = problems.string(&entry) {
                    match StopSignal::from_name(&name) {
                        Some(signal) => config.stop_signal = signal,
                        None => problems.add(
                            entry.span(),
                            &entry.key,
                            format!("must be {}, found {name:?}", StopSignal::NAMES),
                        ),
                    }
                }
            }
            "autostart" => {
                if let Some(autostart) = problems.boolean(&entry) {
                    startup.autostart = autostart;
                }
            }
            "depends_on" => {
                if let Some((dependencies, spans)) = read_depends_on(&entry, problems) {
                    startup.depends_on = dependencies;
                    dependency_spans = spans;
                }
            }
            "startup_timeout" => {
                if let Some(timeout) = problems.duration(&entry) {
                    config.startup_timeout = timeout;
                }
            }
            "shutdown_grace_period" => {
                if let Some(grace) = problems.duration(&entry) {
                    config.shutdown_grace_period = grace;
                }
            }
            "restart_delay" => {
                if let Some(delay) = problems.duration(&entry) {
                    config.restart_delay = delay;
                }
            }
            "stable_period" => {
                if let Some(period) = problems.duration(&entry) {
                    config.stable_period = period;
                }
            }
            "max_restart_attempts" => {
                if let Some(attempts) = problems.count(&entry) {
                    config.max_restart_attempts = attempts;
                }
            }
            "log_file" => {
                if let Some(file) = problems.expanded_string(&entry) {
                    config = config.log_file(state_dir.path().join(file));
                }
            }
            "log_file_max_size" => {
                if let Some(size) = problems.size(&entry) {
                    config.log_file_max_bytes = size;
                }
            }
            "log_file_keep" => {
                if let Some(keep) = problems.count(&entry) {
                    config.log_file_keep = keep;
                }
            }
            "healthcheck" => {
                if let Some((check, probe)) = read_healthcheck(&entry, &mut spans, problems) {
                    config = config.healthcheck(check).health_probe(probe);
                }
            }
            "ready" => {
                if let Some(readiness) = probes::read_ready(&entry, problems) {
                    config = config.readiness(readiness);
                }
            }
            "watchdog" => {
                if let Some(every) = problems.duration(&entry) {
                    config = config.watchdog(every);
                }
            }
            "events" => {
                if let Some(events) = read_events(&entry, problems) {
                    config = config.events(events);
                }
            }
            "memory_max" => config.memory_max = problems.size(&entry),
            "pids_max" => config.pids_max = problems.large_count(&entry),
            "cpu_max" => config.cpu_max = problems.number(&entry),
            "user" => config.user = problems.id_or_name(&entry),
            "group" => config.group = problems.id_or_name(&entry),
            "supplementary_groups" => {
                if let Some(groups) = problems.id_or_name_list(&entry) {
                    config = config.supplementary_groups(groups);
                }
            }
            "umask" => config.umask = problems.umask(&entry),
            "rlimits" => {
                if let Some(rlimits) = read_rlimits(&entry, problems) {
                    config.rlimits = rlimits;
                }
            }
            // Recorded even when invalid, so that the default command
            // applies and no second problem is reported for it.
            "python" => {
                environment_keys.python = Some(
                    read_file_table(
                        &entry,
                        "python.requirements",
                        PYTHON_KEYS,
                        &mut spans,
                        problems,
                    )
                    .flatten(),
                );
            }
            "node" => {
                environment_keys.node = Some(
                    read_file_table(&entry, "node.package", NODE_KEYS, &mut spans, problems)
                        .flatten(),
                );
            }
            _ => unreachable!("every key of PROCESS_KEYS is handled"),
        }
        if problems.len() > before_key {
            reported.insert(key);
        }
    }

    // A daemon with an environment table may leave out its interpreter.
    let command = command.or_else(|| {
        if reported.contains("command") {
            None
        } else if environment_keys.python.is_some() {
            Some(DEFAULT_PYTHON_COMMAND.to_owned())
        } else if environment_keys.node.is_some() {
            Some(DEFAULT_NODE_COMMAND.to_owned())
        } else {
            None
        }
    });
    match command {
        Some(command) => {
            let command = PathBuf::from(command);
            // A relative path with a slash names a file below `cwd`; a bare
            // name is looked up in PATH.
            config.command = if command.is_relative() && command.components().count() > 1 {
                cwd.join(command)
            } else {
                command
            };
        }
        None if !reported.contains("command") => {
            problems.add(
                process.span(),
                format!("{}.command", process.key),
                "is required: the program to run",
            );
            reported.insert("command");
        }
        None => {}
    }
    // Dependency files are looked for only in a usable cwd (the library's
    // validation reports one that is not) and in tables without problems.
    let check_files = |table: &str| cwd.is_dir() && !reported.contains(table);
    let environment = PluginEnvironment {
        python: environment_keys
            .python
            .map(|requirements| PythonEnvironment {
                requirements: requirements
                    .filter(|_| check_files("python"))
                    .and_then(|file| {
                        dependency_file(
                            &cwd,
                            &file,
                            process,
                            "python.requirements",
                            &spans,
                            problems,
                        )
                    }),
            }),
        node: environment_keys
            .node
            .filter(|_| check_files("node"))
            .and_then(|package| {
                let package = package.as_deref().unwrap_or(DEFAULT_PACKAGE_JSON);
                dependency_file(&cwd, package, process, "node.package", &spans, problems)
                    .map(|package| NodeEnvironment { package })
            }),
    };
    config.plugin_path = Some(cwd);
    // The file's variables first: `env` overrides them.
    if !env_files.is_empty() {
        let own = std::mem::take(&mut config.env);
        config = config.envs(env_files).envs(own);
    }
    if config.log_file.is_none() {
        config.log_file = Some(state_dir.default_log_file(name));
    }
    if config.readiness == tend::Readiness::Socket
        && config.socket_path.is_none()
        && spans.contains_key("ready")
    {
        problems.add(
            spans.get("ready").cloned().flatten().or(process.span()),
            format!("{}.ready", process.key),
            "ready = { socket = true } waits for the daemon's socket; set `socket` too, or choose another readiness kind",
        );
    }
    if config.healthcheck.is_some()
        && config.socket_path.is_none()
        && config.health_probe.needs_socket()
    {
        problems.add(
            spans.get("healthcheck").cloned().flatten().or(process.span()),
            format!("{}.healthcheck", process.key),
            "this health check connects to the daemon's socket; set `socket` too, choose probe = \"tcp\", \"http\" or \"exec\", or remove the health check",
        );
        reported.insert("healthcheck");
    }
    if !config.events.is_empty() && config.socket_path.is_none() && !reported.contains("events") {
        problems.add(
            spans.get("events").cloned().flatten().or(process.span()),
            format!("{}.events", process.key),
            "events are delivered over the daemon's socket; set `socket` too or remove `events`",
        );
        reported.insert("events");
    }
    report_library_problems(&config, process, &spans, &reported, problems);
    (problems.len() == before).then_some(ReadProcess {
        config,
        environment,
        startup,
        spans,
        dependency_spans,
    })
}

/// `env_file`: one file or a list, read in order (a later file wins),
/// relative to the config file's folder.
fn read_env_files(
    entry: &Entry<'_>,
    base: &Path,
    problems: &mut Problems<'_>,
) -> Option<Vec<(String, String)>> {
    let files = if entry.item.is_str() {
        vec![problems.expanded_string(entry)?]
    } else {
        problems.expanded_list(entry)?
    };
    let before = problems.len();
    let mut vars = Vec::new();
    for file in files {
        let path = base.join(&file);
        match read_env_file(&path) {
            Ok(read) => vars.extend(read),
            Err(message) => problems.add(entry.span(), &entry.key, message),
        }
    }
    (problems.len() == before).then_some(vars)
}

/// The variables of one dotenv file (`KEY=value` lines, `#` comments,
/// quotes, `export` prefixes and `${VAR}` as the `dotenvy` crate reads
/// them). Held to the config file's own standard: a file another user can
/// write could set `LD_PRELOAD` for the daemon.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = read_trusted(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut vars = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => vars.push(pair),
            Err(dotenvy::Error::LineParse(line, index)) => {
                let number = line_of(&text, text.find(&line).unwrap_or(0));
                return Err(format!(
                    "{}:{number}: cannot parse {line:?} (at character {index}); write KEY=value",
                    path.display()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(vars)
}

/// `depends_on`: a list of names (each waited for until healthy), or a
/// table of names to conditions. Returns the dependencies and where each
/// is written.
fn read_depends_on(
    entry: &Entry<'_>,
    problems: &mut Problems<'_>,
) -> Option<(Vec<Dependency>, Vec<Span>)> {
    let before = problems.len();
    let mut dependencies = Vec::new();
    let mut spans = Vec::new();
    if let Some(array) = entry.item.as_array() {
        let names = problems.string_list(entry)?;
        for (index, name) in names.into_iter().enumerate() {
            let span = array
                .get(index)
                .and_then(|value| value.span())
                .or_else(|| entry.span());
            dependencies.push(Dependency {
                name,
                condition: Condition::Healthy,
            });
            spans.push(span);
        }
    } else if entry.item.is_table_like() {
        let table = problems.table(entry)?;
        for inner in entries(table, &entry.key, &entry.span()) {
            let name = inner.key[entry.key.len() + 1..].to_owned();
            let Some(condition) = problems.string(&inner) else {
                continue;
            };
            match Condition::from_name(&condition) {
                Some(condition) => {
                    dependencies.push(Dependency { name, condition });
                    spans.push(inner.span());
                }
                None => problems.add(
                    inner.span(),
                    &inner.key,
                    format!("must be {}, found {condition:?}", Condition::NAMES),
                ),
            }
        }
    } else {
        problems.add(
            entry.span(),
            &entry.key,
            format!(
                "must be a list of daemon names or a table of names to conditions ({}), found {}",
                Condition::NAMES,
                entry.item.type_name()
            ),
        );
    }
    (problems.len() == before).then_some((dependencies, spans))
}

/// Reports dependencies on unknown daemons or on themselves, `completed`
/// on a daemon that is not a one-shot task, and cycles. `defined` names
/// every daemon table, those with problems included: depending on one of
/// those is not a problem of its own.
fn report_dependency_problems(
    processes: &[ReadProcess],
    defined: &[String],
    problems: &mut Problems<'_>,
) {
    let by_name: HashMap<&str, &ReadProcess> = processes
        .iter()
        .map(|read| (read.config.name.as_str(), read))
        .collect();
    for read in processes {
        let name = &read.config.name;
        for (dependency, span) in read.startup.depends_on.iter().zip(&read.dependency_spans) {
            let key = format!("process.{name}.depends_on");
            let Some(target) = by_name.get(dependency.name.as_str()) else {
                if defined.contains(&dependency.name) {
                    continue;
                }
                problems.add(
                    span.clone(),
                    key,
                    format!(
                        "no daemon named {:?} in this file (daemons: {})",
                        dependency.name,
                        defined.join(", ")
                    ),
                );
                continue;
            };
            if dependency.name == *name {
                problems.add(
                    span.clone(),
                    key,
                    format!("{name:?} cannot depend on itself"),
                );
                continue;
            }
            if dependency.condition == Condition::Completed
                && target.config.restart != RestartPolicy::Never
            {
                problems.add(
                    span.clone(),
                    key,
                    format!(
                        "\"completed\" waits for a one-shot task to exit 0, but {:?} is restarted (restart = {:?}); set `restart = \"never\"` on it, or wait for \"ready\"",
                        dependency.name,
                        target.config.restart.as_str()
                    ),
                );
            }
        }
    }
    let graph: deps::Graph = processes
        .iter()
        .map(|read| (read.config.name.clone(), read.startup.depends_on.clone()))
        .collect();
    let order: Vec<String> = processes.iter().map(|r| r.config.name.clone()).collect();
    for cycle in deps::cycles(&graph, &order) {
        // A daemon depending on itself was reported above.
        if cycle.len() <= 2 {
            continue;
        }
        let first = &cycle[0];
        let span = by_name
            .get(first.as_str())
            .and_then(|read| read.spans.get("depends_on").cloned().flatten());
        problems.add(
            span,
            format!("process.{first}.depends_on"),
            format!(
                "dependency cycle: {}; no daemon of it could ever start",
                cycle.join(" -> ")
            ),
        );
    }
}

/// `[process.NAME.rlimits]`: each key a resource (`nofile`), each value
/// one limit for soft and hard alike (an integer or `"unlimited"`), or a
/// table `{ soft = …, hard = … }`.
fn read_rlimits(
    entry: &Entry<'_>,
    problems: &mut Problems<'_>,
) -> Option<BTreeMap<Rlimit, RlimitValue>> {
    let table = problems.table(entry)?;
    let before = problems.len();
    let mut rlimits = BTreeMap::new();
    for inner in entries(table, &entry.key, &entry.span()) {
        let short = &inner.key[entry.key.len() + 1..];
        let resource = match short.parse::<Rlimit>() {
            Ok(resource) => resource,
            Err(message) => {
                problems.add(
                    inner.key_span.clone().or_else(|| inner.span()),
                    &inner.key,
                    message,
                );
                continue;
            }
        };
        let value = if inner.item.is_table_like() {
            read_soft_and_hard(&inner, problems)
        } else {
            problems.limit(&inner).map(RlimitValue::both)
        };
        if let Some(value) = value {
            rlimits.insert(resource, value);
        }
    }
    (problems.len() == before).then_some(rlimits)
}

/// `{ soft = …, hard = … }` of one resource limit; both are required.
fn read_soft_and_hard(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<RlimitValue> {
    let table = problems.table(entry)?;
    let before = problems.len();
    let (mut soft, mut hard) = (None, None);
    for inner in entries(table, &entry.key, &entry.span()) {
        match &inner.key[entry.key.len() + 1..] {
            "soft" => soft = problems.limit(&inner),
            "hard" => hard = problems.limit(&inner),
            _ => problems.unknown_key(&inner, &["soft", "hard"]),
        }
    }
    match (soft, hard) {
        (Some(soft), Some(hard)) => Some(RlimitValue { soft, hard }),
        _ if problems.len() > before => None,
        _ => {
            problems.add(
                entry.span(),
                &entry.key,
                "needs both soft and hard (or one value for both, such as `nofile = 4096`)",
            );
            None
        }
    }
}

/// `events`: a list of non-empty event names.
fn read_events(entry: &Entry<'_>, problems: &mut Problems<'_>) -> Option<Vec<String>> {
    let events = problems.string_list(entry)?;
    let before = problems.len();
    for (index, event) in events.iter().enumerate() {
        if event.is_empty() {
            let span = entry
                .item
                .as_array()
                .and_then(|array| array.get(index))
                .and_then(|value| value.span())
                .or_else(|| entry.span());
            problems.add(
                span,
                format!("{}[{index}]", entry.key),
                "event names must not be empty",
            );
        }
    }
    (problems.len() == before).then_some(events)
}

/// A `python` or `node` table and its one key, `file_key`
/// (`python.requirements`): the file it names, if any, or `None` if the
/// table has problems.
fn read_file_table(
    entry: &Entry<'_>,
    file_key: &'static str,
    known: &[&str],
    spans: &mut KeySpans,
    problems: &mut Problems<'_>,
) -> Option<Option<String>> {
    let table = problems.table(entry)?;
    let before = problems.len();
    let mut file = None;
    let short_key = file_key.split_once('.').map_or(file_key, |(_, key)| key);
    for inner in entries(table, &entry.key, &entry.span()) {
        let short = &inner.key[entry.key.len() + 1..];
        if short == short_key {
            spans.insert(file_key, inner.span());
            file = problems.expanded_string(&inner);
        } else {
            problems.unknown_key(&inner, known);
        }
    }
    (problems.len() == before).then_some(file)
}

/// A dependency file named by `key` (`python.requirements`,
/// `node.package`), resolved against `cwd`; it must exist.
fn dependency_file(
    cwd: &Path,
    file: &str,
    process: &Entry<'_>,
    key: &'static str,
    spans: &KeySpans,
    problems: &mut Problems<'_>,
) -> Option<PathBuf> {
    let path = cwd.join(file);
    if path.is_file() {
        return Some(path);
    }
    // The file's key, else its table (`node = {}`), else the process.
    let table = key.split('.').next().unwrap_or(key);
    let span = [key, table]
        .iter()
        .find_map(|key| spans.get(key).cloned().flatten())
        .or_else(|| process.span());
    problems.add(
        span,
        format!("{}.{key}", process.key),
        format!(
            "{} does not exist or is not a file (relative paths are inside the daemon's cwd)",
            path.display()
        ),
    );
    None
}

fn read_healthcheck(
    entry: &Entry<'_>,
    spans: &mut KeySpans,
    problems: &mut Problems<'_>,
) -> Option<(HealthCheck, HealthProbe)> {
    let table = problems.table(entry)?;
    let mut check = HealthCheck::default();
    let mut probe_keys = probes::ProbeKeys::default();
    for inner in entries(table, &entry.key, &entry.span()) {
        let short = &inner.key[entry.key.len() + 1..];
        match short {
            "interval" => {
                spans.insert("healthcheck.interval", inner.span());
                if let Some(interval) = problems.duration(&inner) {
                    check.interval = interval;
                }
            }
            "timeout" => {
                spans.insert("healthcheck.timeout", inner.span());
                if let Some(timeout) = problems.duration(&inner) {
                    check.timeout = timeout;
                }
            }
            "retries" => {
                spans.insert("healthcheck.retries", inner.span());
                if let Some(retries) = problems.count(&inner) {
                    check.retries = retries;
                }
            }
            "probe" | "url" | "address" | "command" | "remote" | "status" => {
                let key = match short {
                    "probe" => "healthcheck.probe",
                    "url" => "healthcheck.url",
                    "address" => "healthcheck.address",
                    "command" => "healthcheck.command",
                    "remote" => "healthcheck.remote",
                    _ => "healthcheck.status",
                };
                spans.insert(key, inner.span());
                let short = short.to_owned();
                probe_keys.read(&short, inner, problems);
            }
            _ => problems.unknown_key(&inner, HEALTHCHECK_KEYS),
        }
    }
    let probe = probe_keys.probe(entry, problems)?;
    Some((check, probe))
}

/// The config-file key for a field name of the library's validation.
fn file_key(field: &'static str) -> Option<&'static str> {
    Some(match field {
        "name" => return None, // checked with the table key
        "plugin_path" => "cwd",
        "socket_path" => "socket",
        field if field.starts_with("readiness") => "ready",
        "log_file_max_bytes" => "log_file_max_size",
        other => other,
    })
}

/// Runs the library's own validation (values in range, paths usable) and
/// reports what it finds under the file's key names, skipping keys that
/// already have a problem.
fn report_library_problems(
    config: &BackgroundProcessConfig,
    process: &Entry<'_>,
    spans: &KeySpans,
    reported: &BTreeSet<&'static str>,
    problems: &mut Problems<'_>,
) {
    let Err(tend::Error::InvalidConfig {
        problems: found, ..
    }) = config.validate()
    else {
        return;
    };
    for problem in &found {
        let Some(key) = file_key(problem.field) else {
            continue;
        };
        let top = key.split('.').next().unwrap_or(key);
        if reported.contains(key) || reported.contains(top) {
            continue;
        }
        let span = spans.get(key).cloned().flatten().or_else(|| process.span());
        problems.add(
            span,
            format!("{}.{key}", process.key),
            problem.message.clone(),
        );
    }
}

/// Reports sockets and log files that two daemons share, or that collide
/// with the control socket.
fn report_shared_paths(
    processes: &[ReadProcess],
    state_dir: &StateDir,
    problems: &mut Problems<'_>,
) {
    let control = state_dir.control_socket();
    let mut owners: HashMap<&Path, &str> = HashMap::new();
    for ReadProcess { config, spans, .. } in processes {
        let paths = [
            ("socket", &config.socket_path),
            ("log_file", &config.log_file),
        ];
        for (key, path) in paths {
            let Some(path) = path else { continue };
            let span = spans.get(key).cloned().flatten();
            let dotted = format!("process.{}.{key}", config.name);
            if *path == control {
                problems.add(
                    span,
                    dotted,
                    format!("{} is tend's control socket", path.display()),
                );
            } else if let Some(owner) = owners.insert(path, &config.name) {
                problems.add(
                    span,
                    dotted,
                    format!("{} is already used by daemon {owner:?}", path.display()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
