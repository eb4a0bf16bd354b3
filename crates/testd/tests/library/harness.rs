//! Shared helpers: a short temp dir per test, a manager rooted in it, the
//! test daemon's path, waiting on conditions with deadlines, and guards
//! that kill every process a test learns about, even when it panics.

use std::{
    future::Future,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use rustix::process::{Pid, PidfdFlags, Signal};
use tend::{BackgroundProcessConfig, BackgroundProcessManager, Stream};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    time::Instant,
};

/// Deadline for things that should happen at once, generous enough for a
/// loaded 2-core machine running the suite in parallel.
pub const SOON: Duration = Duration::from_secs(20);

/// Path of the `testd` binary built with these tests.
pub fn testd() -> &'static str {
    env!("CARGO_BIN_EXE_testd")
}

/// Path of the `tend-embedder` binary built with these tests.
pub fn embedder() -> &'static str {
    env!("CARGO_BIN_EXE_tend-embedder")
}

/// Runs `tend-embedder` with its state in `state_dir`, sockets in
/// `socket_dir`, the daemon `specs` (`"name testd-flags…"`) and the extra
/// environment `env`; waits until it reports every daemon started.
/// Returns the app, killed on drop, and its daemons' names and PIDs in
/// start order.
pub async fn run_embedder(
    state_dir: &Path,
    socket_dir: &Path,
    specs: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, Vec<(String, u32)>) {
    let mut child = tokio::process::Command::new(embedder())
        .arg(state_dir)
        .arg(socket_dir)
        .arg(testd())
        .args(specs)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tend-embedder");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut daemons = Vec::new();
    loop {
        let line = within("tend-embedder to start its daemons", SOON, out.next_line())
            .await
            .unwrap()
            .expect("tend-embedder exited before it was ready (see stderr)");
        if line == "ready" {
            break;
        }
        let mut words = line.strip_prefix("started ").unwrap().split(' ');
        let name = words.next().unwrap().to_owned();
        let pid = words.next().unwrap().parse().unwrap();
        daemons.push((name, pid));
    }
    (child, daemons)
}

/// A per-test directory under /tmp with a short path (socket paths must
/// stay under 108 bytes), and a manager whose state lives in it. Dropping
/// it kills every daemon the manager still runs, then removes the
/// directory (fields drop in declaration order).
pub struct Sandbox {
    pub manager: BackgroundProcessManager,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("td")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let manager = BackgroundProcessManager::builder()
            .state_dir(dir.path().join("state"))
            .build();
        Sandbox { manager, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// The manager's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The orphan records directory of the manager.
    pub fn orphans_dir(&self) -> PathBuf {
        self.state_dir().join("orphans")
    }

    /// A config running `testd` with `args`, a socket in the sandbox, and
    /// fast timings suitable for tests.
    pub fn daemon(&self, name: &str, args: &[&str]) -> BackgroundProcessConfig {
        self.worker(name, args).socket_path(self.socket(name))
    }

    /// Like [`Self::daemon`], without a socket.
    pub fn worker(&self, name: &str, args: &[&str]) -> BackgroundProcessConfig {
        BackgroundProcessConfig::new(name, testd())
            .args(args.iter().copied())
            .startup_timeout(Duration::from_secs(10))
            .shutdown_grace_period(Duration::from_secs(5))
            .restart_delay(Duration::from_millis(10))
    }

    /// Starts `config`, asserts it is running, and tracks its PID.
    pub async fn start(&self, config: BackgroundProcessConfig) -> Tracked {
        let name = config.name.clone();
        self.manager
            .start_process(config)
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let pid = self
            .manager
            .pid(&name)
            .ok()
            .flatten()
            .expect("a running daemon has a pid");
        Tracked::new(pid)
    }

    /// Texts of `name`'s captured lines from `stream`, oldest first.
    pub fn log_texts(&self, name: &str, stream: Stream) -> Vec<String> {
        self.manager
            .logs(name, usize::MAX)
            .expect("known process")
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text)
            .collect()
    }

    /// Waits until `name` has logged a stdout line equal to `line`.
    pub async fn wait_for_stdout(&self, name: &str, line: &str) {
        wait_for(&format!("{name} to print {line:?}"), SOON, || {
            self.log_texts(name, Stream::Stdout)
                .iter()
                .any(|l| l == line)
        })
        .await;
    }

    /// Waits until `name` has printed `count` lines `<prefix> <pid>` and
    /// returns those processes, tracked.
    pub async fn wait_for_pids(&self, name: &str, prefix: &str, count: usize) -> Vec<Tracked> {
        let mut pids = Vec::new();
        wait_for(
            &format!("{count} {prefix:?} lines from {name}"),
            SOON,
            || {
                pids = pids_in(&self.log_texts(name, Stream::Stdout), prefix);
                pids.len() >= count
            },
        )
        .await;
        pids.into_iter().map(Tracked::new).collect()
    }
}

/// How a manager started here contains its daemons (cgroups where this
/// machine allows them, unless `TEND_CONTAINMENT` says otherwise): found
/// by starting a worker in a throwaway sandbox.
pub async fn containment_here() -> tend::Containment {
    let sb = Sandbox::new();
    let _probe = sb.start(sb.worker("probe", &["--never-bind"])).await;
    sb.manager
        .containment()
        .expect("decided at the first start")
}

/// PIDs from lines `<prefix> <pid>`.
pub fn pids_in(lines: &[String], prefix: &str) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

/// Waits until `condition` holds, checking it with a short backoff, or
/// panics with `what` at the deadline.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut condition: F) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `future` with a deadline, panicking with `what` if it passes.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Whether `pid` is a live (non-zombie) process. Prefer [`Tracked`], which
/// cannot be fooled by a reused PID; this is for PIDs of processes that
/// may already be gone when the test learns them.
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The fields of `/proc/<pid>/stat` the tests use.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub state: char,
    pub pgid: i32,
    pub sid: i32,
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`, counting fields after the last `)` (the
/// command name may contain spaces and parentheses).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    // Bytes: the name may be cut in the middle of a UTF-8 character.
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after_comm =
        std::str::from_utf8(&text[text.iter().rposition(|&b| b == b')')? + 1..]).ok()?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // proc(5) numbers fields from 1 (pid); `fields[0]` is field 3.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// Live (non-zombie) members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid)
                .is_some_and(|s| s.pgid == pgid as i32 && s.state != 'Z' && s.state != 'X')
        })
        .collect()
}

/// Lines of a file, or none if it does not exist.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A process pinned by a pidfd: checking and signalling it can never reach
/// a process that reused its PID. Dropping it SIGKILLs the process, so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct Tracked {
    pub pid: u32,
    fd: OwnedFd,
}

impl Tracked {
    /// Pins `pid`, which must be alive now.
    pub fn new(pid: u32) -> Self {
        let fd = Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
            .unwrap_or_else(|| panic!("process {pid} is gone before the test could track it"));
        Tracked { pid, fd }
    }

    /// Whether the process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd for the duration of the call; a
        // pidfd becomes readable once its process has exited.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// Sends `signal`; a process that already exited is not an error.
    pub fn signal(&self, signal: Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.fd, signal);
    }

    /// Waits until the process has exited, or panics at the deadline.
    pub async fn wait_dead(&self, what: &str) {
        wait_for(&format!("{what} (pid {}) to die", self.pid), SOON, || {
            !self.alive()
        })
        .await;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// A process the test spawned itself, leading its own process group.
/// Dropping it SIGKILLs the group and reaps the leader; while the leader is
/// unreaped its PID (and so its group id) cannot be reused.
pub struct Spawned {
    pub child: Child,
}

impl Spawned {
    /// Spawns `testd` with `args` (no socket) in a new process group.
    pub fn testd(args: &[&str]) -> Self {
        let child = Command::new(testd())
            .args(args)
            .env_remove("SOCKET_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn testd");
        Spawned { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.exited() {
            if let Some(pgid) = Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// The PID of a process that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    child.wait().expect("wait true");
    child.id()
}

/// Sends one JSON-RPC `ping` over `socket` and returns the reply line.
pub async fn ping(socket: &Path) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n")
        .await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    Ok(reply)
}
