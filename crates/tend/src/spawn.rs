//! Spawning daemons: command line, environment, process group and
//! parent-death signal, from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process. tokio runs `spawn` on whatever worker or blocking-pool
//! thread the caller is on, and blocking-pool threads retire after 10 s
//! idle, which would SIGTERM healthy daemons. So every spawn goes through
//! [`Spawner`], a dedicated thread that lives as long as anything that may
//! spawn holds it.

use std::{
    collections::BTreeMap,
    io,
    path::Path,
    process::Stdio,
    sync::{Mutex, MutexGuard, mpsc},
    thread,
};

use tokio::{process::Child, process::Command, runtime::Handle, sync::oneshot};

use crate::config::BackgroundProcessConfig;

/// PIDs (with start times) of the leaders tend spawned and has not yet
/// seen exit. The subreaper reaps only zombies that are *not* in here.
static OWN_CHILDREN: Mutex<BTreeMap<i32, Option<u64>>> = Mutex::new(BTreeMap::new());

/// Locks the registry of tend's own children.
pub(crate) fn own_children() -> MutexGuard<'static, BTreeMap<i32, Option<u64>>> {
    OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `command` and registers the child as tend's own, under the lock
/// the subreaper takes, so it is never mistaken for an adopted orphan and
/// reaped behind tokio's back. Every child this process starts while it
/// may be a subreaper must be spawned this way and forgotten with
/// [`forget_child`] once reaped.
pub(crate) fn spawn_registered(command: &mut Command) -> io::Result<Child> {
    let mut children = own_children();
    let child = command.spawn()?;
    if let Some(pid) = child.id() {
        let start = crate::procfs::stat(pid as i32)
            .ok()
            .flatten()
            .map(|s| s.start_time);
        children.insert(pid as i32, start);
    }
    Ok(child)
}

/// Forgets a leader once it has been reaped.
pub(crate) fn forget_child(pid: u32) {
    own_children().remove(&(pid as i32));
}

/// The environment variable that tells a daemon where to listen.
pub const SOCKET_PATH_ENV: &str = "SOCKET_PATH";

/// The environment variable that marks every daemon, and every descendant
/// that inherits its environment, with the identity of its manager
/// (`<pid>.<start time>`). A descendant that escaped its process group is
/// found through it after the manager died.
pub const MANAGER_ID_ENV: &str = "TEND_MANAGER_ID";

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawning thread; the thread exits when the last handle is
/// dropped.
pub(crate) struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the spawning thread, registered with `runtime` so the children
    /// it spawns are reaped by that runtime.
    pub fn start(runtime: Handle) -> io::Result<Self> {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("tend-spawner".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for request in incoming {
                    let mut command = request.command;
                    let spawned = spawn_registered(&mut command);
                    let _ = request.reply.send(spawned);
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Spawns `command` on the spawning thread.
    pub async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the spawning thread has exited"))?;
        response
            .await
            .map_err(|_| io::Error::other("the spawning thread has exited"))?
    }
}

/// Builds the command for one incarnation of `config`: no shell, its own
/// process group, stdin from /dev/null, stdout and stderr piped to tend,
/// `SOCKET_PATH` set, and the parent-death signal armed.
pub(crate) fn build_command(
    config: &BackgroundProcessConfig,
    socket: Option<&Path>,
    manager_id: &str,
) -> Command {
    let mut command = Command::new(&config.command);
    command
        .args(&config.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &config.plugin_path {
        command.current_dir(dir);
    }
    for (key, value) in &config.env {
        command.env(key, value);
    }
    match socket {
        Some(socket) => command.env(SOCKET_PATH_ENV, socket),
        // A worker without a socket must not inherit the app's own.
        None => command.env_remove(SOCKET_PATH_ENV),
    };
    command.env(MANAGER_ID_ENV, manager_id);
    arm_parent_death_signal(&mut command);
    command
}

#[cfg(target_os = "linux")]
fn arm_parent_death_signal(command: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes two raw syscalls
    // (prctl, getppid) through rustix, which allocates nothing and takes no
    // lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died between fork and prctl; then the
            // signal will never come, so give up on this child now.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("tend exited while spawning"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn arm_parent_death_signal(_command: &mut Command) {}
