//! Shared helpers: a short temp dir per test, the `tend` and `testd`
//! binaries, running `tend` with a deadline, a `tend up` child, and
//! waiting on conditions with deadlines.
//!
//! Every process a test starts carries the environment variable
//! [`SANDBOX_ENV`] naming its sandbox (daemons inherit it from `tend up`,
//! and their children from them), so dropping the [`Sandbox`] — also when
//! the test panics — finds and kills every one of them, escaped
//! grandchildren included.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal};
use serde_json::Value;

/// Deadline for anything that should happen promptly, generous enough for
/// debug builds on a loaded two-core machine.
pub const SOON: Duration = Duration::from_secs(30);

/// Marks processes started by a test with their sandbox's path.
pub const SANDBOX_ENV: &str = "TEND_CLI_TEST_SANDBOX";

/// The `tend` binary under test.
pub fn tend_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tend"))
}

/// The `testd` daemon, built next to `tend` by `cargo test --workspace`.
pub fn testd() -> PathBuf {
    let path = tend_bin()
        .parent()
        .expect("the tend binary has a folder")
        .join("testd");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p testd` first) so the test daemon is built",
        path.display()
    );
    path
}

/// The repository's example daemons folder.
pub fn example_daemons() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/daemons")
}

/// A process identified by PID and start time, so a reused PID is not
/// taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub pid: u32,
    start_time: Option<u64>,
}

impl Tracked {
    pub fn new(pid: u32) -> Self {
        Tracked {
            pid,
            start_time: proc_stat(pid).map(|(_, start)| start),
        }
    }

    /// Whether the process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => state != 'Z' && state != 'X' && Some(start) == self.start_time,
            None => false,
        }
    }
}

/// `(state, start time)` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    // Bytes: the name may be cut in the middle of a UTF-8 character.
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after_comm =
        std::str::from_utf8(&text[text.iter().rposition(|&b| b == b')')? + 1..]).ok()?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// A per-test folder under /tmp with a short path (socket paths must stay
/// under 108 bytes). Dropping it kills every process the test started.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("tc")
                .tempdir_in("/tmp")
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state directory the generated configs use.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("st")
    }

    /// Writes `tend.toml` with the sandbox's state directory and `body`.
    pub fn config(&self, body: &str) -> PathBuf {
        self.config_named(
            "tend.toml",
            &format!("[settings]\nstate_dir = \"st\"\n\n{body}"),
        )
    }

    /// Writes `text` as file `name` in the sandbox.
    pub fn config_named(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::write(&path, text).expect("write config");
        path
    }

    /// A `tend` command marked with this sandbox.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tend_bin());
        command
            .args(args)
            .current_dir(self.path())
            .env(SANDBOX_ENV, self.path())
            // The per-user default state directory, in the sandbox: a
            // config without `state_dir` gets a folder of its own there.
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env_remove("TEND_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        command
    }

    /// Runs `tend ARGS` to its end (killing it at the deadline).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_in(self.path(), args)
    }

    /// Runs `tend ARGS` in the current directory `dir` to its end.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Run {
        self.run_in_within(dir, args, SOON)
    }

    /// [`Self::run`] for a command that may take up to `limit` (one that
    /// builds an environment).
    pub fn run_until(&self, args: &[&str], limit: Duration) -> Run {
        self.run_in_within(self.path(), args, limit)
    }

    fn run_in_within(&self, dir: &Path, args: &[&str], limit: Duration) -> Run {
        let child = self
            .command(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tend");
        let pid = child.id();
        let (done, result) = mpsc::channel();
        thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        match result.recv_timeout(limit) {
            Ok(output) => Run::new(args, output.expect("wait for tend")),
            Err(_) => {
                kill(pid, Signal::KILL);
                panic!("`tend {}` did not finish within {limit:?}", args.join(" "));
            }
        }
    }

    /// Starts `tend up -c CONFIG` with its output going to files.
    pub fn up(&self, config: &Path) -> Up {
        self.up_with_env(config, &[])
    }

    /// [`Self::up`] with extra environment variables.
    pub fn up_with_env(&self, config: &Path, env: &[(&str, &str)]) -> Up {
        self.up_with(config, &[], env)
    }

    /// `tend up -c CONFIG NAMES...` with extra environment variables.
    pub fn up_with(&self, config: &Path, names: &[&str], env: &[(&str, &str)]) -> Up {
        let index = fs::read_dir(self.path()).map(|d| d.count()).unwrap_or(0);
        let stdout = self.path().join(format!("up{index}.out"));
        let stderr = self.path().join(format!("up{index}.err"));
        let mut args = vec!["up", "-c", config.to_str().expect("utf-8 path")];
        args.extend_from_slice(names);
        let child = self
            .command(&args)
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn tend up");
        Up {
            child,
            stdout,
            stderr,
        }
    }

    /// Processes carrying this sandbox's marker.
    pub fn marked_processes(&self) -> Vec<u32> {
        let marker = format!("{SANDBOX_ENV}={}", self.path().display());
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
            })
            .filter(|&pid| Tracked::new(pid).alive())
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Twice, in case a process forked while the first pass ran.
        for _ in 0..2 {
            for pid in self.marked_processes() {
                kill(pid, Signal::KILL);
            }
        }
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn kill(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The outcome of one `tend` run.
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn new(args: &[&str], output: Output) -> Self {
        Run {
            command: format!("tend {}", args.join(" ")),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "`{}` exited with {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        self.expect_code(0)
    }

    /// Panics unless stderr contains `needle`.
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "`{}`: no {needle:?} in stderr:\n{}",
            self.command,
            self.stderr
        );
        self
    }
}

/// A running `tend up`.
pub struct Up {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `tend down` through `config`, then waits for this `tend up` to exit.
    #[track_caller]
    pub fn down(&mut self, sandbox: &Sandbox, config: &Path) -> ExitStatus {
        let config = config.to_str().expect("UTF-8 config path");
        sandbox.run(&["down", "-c", config]).expect_success();
        self.wait()
    }

    /// Waits for it to exit.
    #[track_caller]
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + SOON;
        wait_until("tend up to exit", deadline, || {
            self.child.try_wait().expect("try_wait").is_some()
        });
        self.child.wait().expect("wait")
    }

    /// Sends a signal to it.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal);
    }
}

/// Waits until `condition` holds, checking it with a short backoff, or
/// panics with `what` at `deadline`.
#[track_caller]
pub fn wait_until(what: &str, deadline: Instant, condition: impl FnMut() -> bool) {
    assert!(
        holds_before(deadline, condition),
        "timed out waiting for {what}"
    );
}

/// Whether `condition` holds before `deadline`, checking it with a short
/// backoff.
pub fn holds_before(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(2);
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    true
}

/// `tend status --json` of the supervisor of `config`, or `None` while
/// none answers.
pub fn status(sandbox: &Sandbox, config: &Path) -> Option<Vec<Value>> {
    let run = sandbox.run(&["status", "--json", "-c", config.to_str()?]);
    if !run.status.success() {
        return None;
    }
    serde_json::from_str::<Vec<Value>>(&run.stdout).ok()
}

/// The status object of `name`.
pub fn process<'a>(processes: &'a [Value], name: &str) -> &'a Value {
    processes
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {processes:?}"))
}

/// Waits until every daemon in `names` is in `state` and returns the
/// status then.
#[track_caller]
pub fn wait_for_states(sandbox: &Sandbox, config: &Path, names: &[(&str, &str)]) -> Vec<Value> {
    wait_for_states_until(sandbox, config, names, Instant::now() + SOON)
}

/// [`wait_for_states`] with its own deadline, for starts that take long
/// (building a virtualenv).
#[track_caller]
pub fn wait_for_states_until(
    sandbox: &Sandbox,
    config: &Path,
    names: &[(&str, &str)],
    deadline: Instant,
) -> Vec<Value> {
    let mut last = Vec::new();
    let reached = holds_before(deadline, || {
        let Some(processes) = status(sandbox, config) else {
            return false;
        };
        last = processes;
        names.iter().all(|(name, state)| {
            last.iter()
                .any(|p| p["name"] == *name && p["state"] == *state)
        })
    });
    assert!(
        reached,
        "timed out waiting for states {names:?}; the last status was {last:#?}"
    );
    last
}

/// The PID in a status object.
pub fn pid_of(process: &Value) -> u32 {
    process["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {process}")) as u32
}

/// Reads lines from `reader` on a thread, handing them over a channel.
pub fn line_channel(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

/// PIDs from lines `<prefix> <pid>` in `text`.
pub fn pids_in(text: &str, prefix: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// Whether process `pid` runs in a cgroup tend made (cgroup containment),
/// from its `/proc/<pid>/cgroup`.
pub fn in_tend_cgroup(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines()
            .any(|line| line.starts_with("0::") && line.contains("/tend-"))
    })
}

/// A config in `sandbox` with a daemon `good` that runs and a daemon `bad`
/// that writes `stderr` (a TOML basic-string body, escapes allowed) and
/// exits before it is ready.
pub fn good_and_bad_config(sandbox: &Sandbox, stderr: &str) -> PathBuf {
    sandbox.config(&format!(
        r#"
[process.good]
command = "{testd}"
socket = "good.sock"

[process.bad]
command = "{testd}"
args = ["--stderr", "{stderr}", "--exit-immediately"]
socket = "bad.sock"
"#,
        testd = testd().display(),
    ))
}
