//! `tend::envs::PluginEnvironmentManager` building real environments,
//! without network: Python packages are wheels the tests build with the
//! standard library and install with `--no-index`; Node packages are local
//! `file:` dependencies. Each test prints why it skips when `python3 -m
//! venv` or `npm` is unavailable.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tempfile::TempDir;
use tend::envs::{EnsureOutcome, EnvError, EnvKind, PluginEnvironmentManager, Progress};

#[path = "../../testd/fixtures/wheel.rs"]
mod wheel;
use wheel::{build_wheel, python_venv_available};

/// Venv creation takes seconds (ensurepip); this only catches hangs.
const WATCHDOG: Duration = Duration::from_secs(300);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WATCHDOG, future)
        .await
        .expect("the test did not finish within its watchdog")
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}

fn npm_available() -> bool {
    let ok = runs("npm", &["--version"]) && runs("node", &["--version"]);
    if !ok {
        eprintln!("skipped: npm or node is not installed");
    }
    ok
}

/// The requirements file `Fixture::require` writes, relative to the plugin.
const REQUIREMENTS: &str = "requirements.txt";

/// A temporary envs root and plugin directory with wheels 0.1 and 0.2 of
/// `tendtestpkg` in `<plugin>/wheels`.
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
    plugin: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tend-envs-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("envs");
        let plugin = dir.path().join("plugin");
        std::fs::create_dir_all(plugin.join("wheels")).unwrap();
        Fixture {
            _dir: dir,
            root,
            plugin,
        }
    }

    fn with_wheels(self) -> Self {
        for version in ["0.1", "0.2"] {
            build_wheel(&self.plugin.join("wheels"), "tendtestpkg", version);
        }
        self
    }

    /// Writes `requirements.txt` naming `wheel` relative to the plugin.
    fn require(&self, wheel: &str) {
        std::fs::write(
            self.plugin.join(REQUIREMENTS),
            format!("--no-index\n./wheels/{wheel}\n"),
        )
        .unwrap();
    }

    fn hash_file(&self, name: &str) -> PathBuf {
        self.root.join(name).join("python.hash")
    }

    /// `envs.ensure_python` for `name` with this plugin's `requirements.txt`.
    async fn ensure_python(
        &self,
        envs: &PluginEnvironmentManager,
        name: &str,
    ) -> Result<EnsureOutcome, EnvError> {
        envs.ensure_python(name, &self.plugin, Some(Path::new(REQUIREMENTS)))
            .await
    }

    /// `envs.ensure_node` for `name` with this plugin's `package.json`.
    async fn ensure_node(
        &self,
        envs: &PluginEnvironmentManager,
        name: &str,
    ) -> Result<EnsureOutcome, EnvError> {
        envs.ensure_node(name, &self.plugin, Path::new("package.json"))
            .await
    }
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// What the venv's interpreter imports as `tendtestpkg.VERSION`.
fn installed_version(python: &Path) -> String {
    let output = Command::new(python)
        .args(["-c", "import tendtestpkg; print(tendtestpkg.VERSION)"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

type Log = Arc<Mutex<Vec<String>>>;

fn recording(root: &Path) -> (PluginEnvironmentManager, Log) {
    let log = Log::default();
    let sink = Arc::clone(&log);
    let envs = PluginEnvironmentManager::new(root).on_progress(move |progress| {
        let step = match progress {
            Progress::WaitingForLock { .. } => "waiting",
            Progress::CreatingVenv { .. } => "creating venv",
            Progress::Installing {
                kind: EnvKind::Python,
                ..
            } => "pip",
            Progress::Installing {
                kind: EnvKind::Node,
                ..
            } => "npm",
            _ => "other",
        };
        sink.lock().unwrap().push(step.to_owned());
    });
    (envs, log)
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// Asserts that `error` is a failed command whose line contains `command`
/// and whose output tail contains `output`.
#[track_caller]
fn assert_command_failed(error: &EnvError, command: &str, output: &str) {
    match error {
        EnvError::CommandFailed {
            command: ran,
            output_tail,
            ..
        } => {
            assert!(ran.contains(command), "{ran}");
            assert!(output_tail.contains(output), "{output_tail}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_venv_is_built_once_reused_and_rebuilt_when_requirements_change() {
    if !python_venv_available() {
        return;
    }
    within(async {
        let fixture = Fixture::new().with_wheels();
        let (envs, log) = recording(&fixture.root);
        let python = fixture.root.join("weather/venv/bin/python");
        assert_eq!(envs.python_path("weather"), Path::new("python3"));

        fixture.require("tendtestpkg-0.1-py3-none-any.whl");
        let outcome = fixture.ensure_python(&envs, "weather").await.unwrap();
        assert_eq!(
            outcome,
            EnsureOutcome {
                path: python.clone(),
                created: true,
                installed: true
            }
        );
        assert_eq!(take(&log), ["creating venv", "pip"]);
        assert_eq!(envs.python_path("weather"), python);
        assert_eq!(installed_version(&python), "0.1");
        let hash = std::fs::read_to_string(fixture.hash_file("weather")).unwrap();
        let written = mtime(&fixture.hash_file("weather"));

        // Unchanged: reused, pip does not run, the fingerprint is untouched.
        let outcome = fixture.ensure_python(&envs, "weather").await.unwrap();
        assert!(!outcome.created && !outcome.installed, "{outcome:?}");
        assert!(take(&log).is_empty());
        assert_eq!(mtime(&fixture.hash_file("weather")), written);
        assert_eq!(
            std::fs::read_to_string(fixture.hash_file("weather")).unwrap(),
            hash
        );

        // Changed requirements: reinstalled into the same venv.
        fixture.require("tendtestpkg-0.2-py3-none-any.whl");
        let outcome = fixture.ensure_python(&envs, "weather").await.unwrap();
        assert!(!outcome.created && outcome.installed, "{outcome:?}");
        assert_eq!(take(&log), ["pip"]);
        assert_eq!(installed_version(&python), "0.2");
        assert_ne!(
            std::fs::read_to_string(fixture.hash_file("weather")).unwrap(),
            hash
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_install_leaves_no_fingerprint_and_is_retried() {
    if !python_venv_available() {
        return;
    }
    within(async {
        let fixture = Fixture::new().with_wheels();
        let envs = PluginEnvironmentManager::new(&fixture.root);

        // Without requirements: just the venv.
        let outcome = envs
            .ensure_python("clock", &fixture.plugin, None)
            .await
            .unwrap();
        assert!(outcome.created && !outcome.installed, "{outcome:?}");
        assert!(!fixture.hash_file("clock").exists());

        fixture.require("tendtestpkg-0.1-py3-none-any.whl");
        let outcome = fixture.ensure_python(&envs, "clock").await.unwrap();
        assert!(outcome.installed, "{outcome:?}");

        // A requirement naming a wheel that does not exist fails, says why,
        // and removes the old fingerprint.
        fixture.require("missing-0.1-py3-none-any.whl");
        let error = fixture.ensure_python(&envs, "clock").await.unwrap_err();
        assert_command_failed(&error, "pip install", "missing-0.1");
        assert!(error.to_string().contains("missing-0.1"), "{error}");
        assert!(!fixture.hash_file("clock").exists());

        // Back to the requirements that worked: since the failed attempt
        // may have changed the venv, they are installed again, not reused.
        fixture.require("tendtestpkg-0.1-py3-none-any.whl");
        let outcome = fixture.ensure_python(&envs, "clock").await.unwrap();
        assert!(!outcome.created && outcome.installed, "{outcome:?}");
        assert!(fixture.hash_file("clock").exists());
        assert_eq!(installed_version(&outcome.path), "0.1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_build_the_environment_once() {
    if !python_venv_available() {
        return;
    }
    within(async {
        let fixture = Fixture::new().with_wheels();
        fixture.require("tendtestpkg-0.1-py3-none-any.whl");
        // Two managers, as two processes would have: only the flock on
        // the environment's lock file keeps them apart.
        let (first, first_log) = recording(&fixture.root);
        let (second, second_log) = recording(&fixture.root);
        let requirements = Some(Path::new(REQUIREMENTS));
        let plugin = fixture.plugin.clone();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let plugin = plugin.clone();
                async move { first.ensure_python("shared", &plugin, requirements).await }
            }),
            tokio::spawn(
                async move { second.ensure_python("shared", &plugin, requirements).await }
            ),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert_eq!(
            [a.created, b.created].iter().filter(|c| **c).count(),
            1,
            "{a:?} {b:?}"
        );
        assert_eq!(
            [a.installed, b.installed].iter().filter(|i| **i).count(),
            1,
            "{a:?} {b:?}"
        );
        let mut steps = take(&first_log);
        steps.extend(take(&second_log));
        steps.sort();
        // One of them waited for the other, unless the first was done
        // before the second started.
        steps.retain(|step| step != "waiting");
        assert_eq!(steps, ["creating venv", "pip"]);
        assert_eq!(installed_version(&a.path), "0.1");
    })
    .await;
}

/// A plugin directory with `package.json` depending on `./localdep`.
fn node_plugin(fixture: &Fixture, dependencies: &str) {
    let localdep = fixture.plugin.join("localdep");
    std::fs::create_dir_all(&localdep).unwrap();
    std::fs::write(
        localdep.join("package.json"),
        r#"{"name": "localdep", "version": "1.0.0", "main": "index.js"}"#,
    )
    .unwrap();
    std::fs::write(localdep.join("index.js"), "module.exports = 42;\n").unwrap();
    std::fs::write(
        fixture.plugin.join("package.json"),
        format!(
            r#"{{"name": "plug", "version": "1.0.0", "private": true,
                "scripts": {{"postinstall": "exit 1"}},
                "dependencies": {dependencies}}}"#
        ),
    )
    .unwrap();
}

/// What `require(module)` gives with `NODE_PATH` set to `node_modules`.
fn node_require(node_modules: &Path, module: &str) -> String {
    let output = Command::new("node")
        .args(["-e", &format!("console.log(require({module:?}))")])
        .env("NODE_PATH", node_modules)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn node_packages_are_installed_once_and_reinstalled_when_package_json_changes() {
    if !npm_available() {
        return;
    }
    within(async {
        let fixture = Fixture::new();
        let (envs, log) = recording(&fixture.root);
        let node_modules = envs.node_modules_path("web").unwrap();
        node_plugin(&fixture, r#"{"localdep": "file:./localdep"}"#);

        let outcome = fixture.ensure_node(&envs, "web").await.unwrap();
        assert_eq!(
            outcome,
            EnsureOutcome {
                path: node_modules.clone(),
                created: true,
                installed: true
            }
        );
        assert_eq!(take(&log), ["npm"]);
        assert_eq!(node_require(&node_modules, "localdep"), "42");
        let hash_file = fixture.root.join("web/node.hash");
        let written = mtime(&hash_file);

        let outcome = fixture.ensure_node(&envs, "web").await.unwrap();
        assert!(!outcome.created && !outcome.installed, "{outcome:?}");
        assert!(take(&log).is_empty());
        assert_eq!(mtime(&hash_file), written);

        // A new dependency, under another name.
        node_plugin(
            &fixture,
            r#"{"localdep": "file:./localdep", "again": "./localdep"}"#,
        );
        let outcome = fixture.ensure_node(&envs, "web").await.unwrap();
        assert!(!outcome.created && outcome.installed, "{outcome:?}");
        assert_eq!(node_require(&node_modules, "again"), "42");

        // A lock file appearing beside package.json counts as a change.
        assert!(runs(
            "npm",
            &[
                "install",
                "--package-lock-only",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--prefix",
                fixture.plugin.to_str().unwrap(),
            ]
        ));
        let outcome = fixture.ensure_node(&envs, "web").await.unwrap();
        assert!(outcome.installed, "{outcome:?}");
        assert_eq!(node_require(&node_modules, "localdep"), "42");
    })
    .await;
}

#[tokio::test]
async fn a_failed_npm_install_is_retried() {
    if !npm_available() {
        return;
    }
    within(async {
        let fixture = Fixture::new();
        let envs = PluginEnvironmentManager::new(&fixture.root);
        // A missing local directory only makes a dangling link; a missing
        // tarball fails.
        node_plugin(&fixture, r#"{"gone": "file:./missing-1.0.0.tgz"}"#);
        let error = fixture.ensure_node(&envs, "web").await.unwrap_err();
        assert_command_failed(&error, "npm install", "missing-1.0.0.tgz");
        assert!(!fixture.root.join("web/node.hash").exists());

        node_plugin(&fixture, r#"{"localdep": "file:./localdep"}"#);
        let outcome = fixture.ensure_node(&envs, "web").await.unwrap();
        assert!(outcome.installed, "{outcome:?}");
        assert_eq!(node_require(&outcome.path, "localdep"), "42");
    })
    .await;
}
