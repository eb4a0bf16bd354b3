//! Spawning daemons: command line, environment, process group and
//! parent-death signal, from one long-lived thread, without `fork`.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits,
//! not the process. tokio runs work on whatever worker or blocking-pool
//! thread is free, and blocking-pool threads retire after 10 s idle, which
//! would SIGTERM healthy daemons. So every daemon is spawned by
//! `Spawner`, a dedicated thread that lives as long as anything that may
//! spawn holds it.
//!
//! The spawn itself is a vfork-style clone (see `child`): the standard
//! library would fork to run the hook that arms the signal, and copying
//! the manager's page tables and descriptor table for every daemon was
//! the largest cost of starting many. The clone also hands over a pidfd,
//! through which the leader is waited for and reaped (`Leader`).

mod child;

pub(crate) use child::{ChildStack, reset_signal_handlers};

use std::{
    collections::BTreeMap,
    ffi::{CString, OsStr, OsString, c_char},
    io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::Path,
    ptr,
    sync::{Arc, mpsc},
    thread,
};

use rustix::{
    io::DupFlags,
    pipe::PipeFlags,
    process::{PidfdFlags, WaitId, WaitIdOptions},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::oneshot,
};

use crate::{children::ChildTable, config::BackgroundProcessConfig, state::ExitStatus};

/// The environment variable that tells a daemon where to listen.
pub const SOCKET_PATH_ENV: &str = "SOCKET_PATH";

/// The environment variable that marks every daemon, and every descendant
/// that inherits its environment, with the identity of its manager
/// (`<pid>.<start time>`). A descendant that escaped its process group is
/// found through it after the manager died.
pub const MANAGER_ID_ENV: &str = "TEND_MANAGER_ID";

/// The program, arguments, environment and working directory of one
/// incarnation, converted to C strings before the spawn: the child may not
/// allocate.
pub(crate) struct SpawnPlan {
    /// Paths to try in turn: the command itself if it names a path, else
    /// the command in each `PATH` directory (the `execvp` search, done in
    /// the parent).
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    /// The daemon's cgroup: its directory (to clone into, if that may be
    /// done) and its `cgroup.procs` (for the child to join through, where
    /// cloning into it is not possible). The caller keeps both open until
    /// the spawn returned.
    cgroup: Option<(Option<std::os::fd::RawFd>, std::os::fd::RawFd)>,
    /// The uid, gid and supplementary groups to switch to, resolved from
    /// the config's names.
    credentials: Option<(u32, u32, Vec<rustix::process::Gid>)>,
    /// The file mode creation mask to set.
    umask: Option<u32>,
    /// Resource limits to set: resource number, soft and hard value.
    rlimits: Vec<(libc::c_int, libc::rlimit64)>,
    /// The daemon's stop signal, armed as its parent-death signal.
    stop_signal: rustix::process::Signal,
}

/// `PATH` when the environment has none (glibc's `execvp` default).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

impl SpawnPlan {
    /// The plan for one incarnation of `config`: no shell, the manager's
    /// environment plus the configured variables, `SOCKET_PATH` set (or
    /// removed when there is no socket: a worker must not inherit the
    /// app's own), and `TEND_MANAGER_ID`.
    pub fn for_daemon(
        config: &BackgroundProcessConfig,
        socket: Option<&Path>,
        manager_id: &str,
    ) -> io::Result<Self> {
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        // tend's own notify socket (when a service manager runs it) is not
        // the daemon's: a daemon that inherited it would report readiness
        // for tend. A daemon ready by notify gets its own in `config.env`.
        for inherited in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            env.remove(OsStr::new(inherited));
        }
        for (key, value) in &config.env {
            env.insert(key.clone(), value.clone());
        }
        match socket {
            Some(socket) => env.insert(SOCKET_PATH_ENV.into(), socket.into()),
            None => env.remove(OsStr::new(SOCKET_PATH_ENV)),
        };
        env.insert(MANAGER_ID_ENV.into(), manager_id.into());

        let program = config.command.as_os_str().as_bytes();
        let candidates = if program.contains(&b'/') {
            vec![c_string(program, "the command")?]
        } else if program.is_empty() {
            Vec::new()
        } else {
            let path = env
                .get(OsStr::new("PATH"))
                .map_or(DEFAULT_PATH, |p| p.as_bytes());
            path.split(|&b| b == b':')
                .map(|dir| {
                    // An empty entry means the working directory.
                    let mut candidate = dir.to_vec();
                    if !candidate.is_empty() {
                        candidate.push(b'/');
                    }
                    candidate.extend_from_slice(program);
                    c_string(&candidate, "the command")
                })
                .collect::<io::Result<_>>()?
        };
        let argv = std::iter::once(config.command.as_os_str())
            .chain(config.args.iter().map(OsString::as_os_str))
            .map(|arg| c_string(arg.as_bytes(), "an argument"))
            .collect::<io::Result<_>>()?;
        let envp = env
            .into_iter()
            .map(|(key, value)| {
                let mut entry = key.into_vec();
                entry.push(b'=');
                entry.extend_from_slice(value.as_bytes());
                c_string(&entry, "an environment variable")
            })
            .collect::<io::Result<_>>()?;
        let cwd = config
            .plugin_path
            .as_ref()
            .map(|dir| c_string(dir.as_os_str().as_bytes(), "the working directory"))
            .transpose()?;
        // Looked up again at each spawn: a restart follows a changed
        // group membership, and a user deleted meanwhile fails the spawn
        // instead of running the daemon as a stale uid.
        let credentials = crate::credentials::resolve(config)
            .map_err(|problem| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: {}", problem.field, problem.message),
                )
            })?
            .map(|c| {
                let groups = c.groups.into_iter().map(rustix::process::Gid::from_raw);
                (c.uid, c.gid, groups.collect())
            });
        let rlimits = config
            .rlimits
            .iter()
            .map(|(resource, value)| (resource.resource(), value.raw()))
            .collect();
        Ok(SpawnPlan {
            candidates,
            argv,
            envp,
            cwd,
            cgroup: None,
            credentials,
            umask: config.umask,
            rlimits,
            stop_signal: config.stop_signal.to_signal(),
        })
    }
}

impl SpawnPlan {
    /// Has the daemon start in the cgroup whose directory is `dir` (or,
    /// without `dir` or where cloning into it is not possible, join it
    /// through `procs`, its `cgroup.procs`) before it executes.
    pub fn join_cgroup(
        mut self,
        dir: Option<std::os::fd::BorrowedFd<'_>>,
        procs: std::os::fd::BorrowedFd<'_>,
    ) -> Self {
        self.cgroup = Some((dir.map(|d| d.as_raw_fd()), procs.as_raw_fd()));
        self
    }
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// A null-terminated array of pointers into `strings`, for `execve`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// A freshly spawned leader: its PID, a pidfd for it, its `/proc` stat as
/// read right after the spawn (for its start time, if it could be read),
/// and the read ends of its stdout and stderr pipes.
pub(crate) struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stat: Option<crate::procfs::ProcStat>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Three descriptors, reserved for the spawner's lifetime, that hold the
/// next child's stdin, stdout and stderr while it is cloned. They are the
/// lowest free numbers above 2 when the spawner starts, so the child copies
/// only the descriptors below them (see [`child`]). Between spawns they
/// point to `/dev/null`, so no pipe is held open by them.
struct StdioSlots {
    null: OwnedFd,
    slots: [OwnedFd; 3],
}

impl StdioSlots {
    fn open() -> io::Result<Self> {
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let reserve = || rustix::io::fcntl_dupfd_cloexec(&null, 3);
        let slots = [reserve()?, reserve()?, reserve()?];
        Ok(StdioSlots { null, slots })
    }

    /// Points stdout and stderr at the write ends of the child's pipes
    /// (stdin stays on `/dev/null`).
    fn connect(&mut self, stdout: &OwnedFd, stderr: &OwnedFd) -> io::Result<()> {
        rustix::io::dup3(stdout, &mut self.slots[1], DupFlags::CLOEXEC)?;
        rustix::io::dup3(stderr, &mut self.slots[2], DupFlags::CLOEXEC)?;
        Ok(())
    }

    /// Points the slots back at `/dev/null`, so the pipes' write ends are
    /// held by the child alone and their readers see end of file when it
    /// and its descendants are gone.
    fn release(&mut self) {
        for slot in &mut self.slots[1..] {
            if rustix::io::dup3(&self.null, slot, DupFlags::CLOEXEC).is_err() {
                // Never keep a pipe open: give up the slot's number instead.
                match rustix::io::fcntl_dupfd_cloexec(&self.null, 3) {
                    Ok(fresh) => *slot = fresh,
                    Err(e) => tracing::error!(error = %e, "cannot release a spawn descriptor"),
                }
            }
        }
    }

    fn raw(&self) -> [i32; 3] {
        self.slots.each_ref().map(|fd| fd.as_raw_fd())
    }
}

/// What the spawning thread keeps from spawn to spawn.
struct SpawnerState {
    /// Where each child is registered, from before the clone on.
    children: ChildTable,
    slots: StdioSlots,
    stack: child::ChildStack,
    /// Whether children may share the descriptor table until they unshare
    /// its low part (see [`child`]); cleared for good when a policy denies
    /// the unsharing.
    share_files: bool,
    /// Whether daemons with a cgroup are cloned straight into it; cleared
    /// for good when the kernel or a seccomp policy refuses `clone3`.
    clone_into_cgroup: bool,
}

impl SpawnerState {
    /// Spawns the daemon described by `plan`; runs on the spawning thread.
    fn spawn(&mut self, plan: &SpawnPlan) -> io::Result<Spawned> {
        loop {
            match self.spawn_once(plan) {
                Err(Failed::Descriptors(error)) if self.share_files => {
                    tracing::info!(%error, "cannot unshare descriptors in spawned children; copying them instead");
                    self.share_files = false;
                }
                Err(Failed::CloneIntoCgroup(error)) => {
                    tracing::info!(%error, "cannot clone daemons into their cgroup (clone3); they join it before exec instead");
                    self.clone_into_cgroup = false;
                }
                other => return other.map_err(Failed::into_io),
            }
        }
    }

    fn spawn_once(&mut self, plan: &SpawnPlan) -> Result<Spawned, Failed> {
        let (stdout, stdout_writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (stderr, stderr_writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let connected = self.slots.connect(&stdout_writer, &stderr_writer);
        drop((stdout_writer, stderr_writer));
        if let Err(e) = connected {
            self.slots.release();
            return Err(e.into());
        }
        let candidates = pointers(&plan.candidates);
        let argv = pointers(&plan.argv);
        let envp = pointers(&plan.envp);
        let mut setup = child::ChildSetup::new(
            candidates.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            plan.cwd.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
            self.slots.raw(),
            self.share_files,
            match plan.cgroup {
                // Cloned into it: nothing to join.
                Some((Some(_), _)) if self.clone_into_cgroup => -1,
                Some((_, procs)) => procs,
                None => -1,
            },
        );
        if let Some((uid, gid, groups)) = &plan.credentials {
            setup.credentials = Some(child::ChildCredentials {
                uid: *uid,
                gid: *gid,
                groups: groups.as_ptr(),
                group_count: groups.len(),
            });
        }
        setup.umask = plan.umask;
        setup.death_signal = plan.stop_signal;
        setup.rlimits = (plan.rlimits.as_ptr(), plan.rlimits.len());
        let into_cgroup = plan
            .cgroup
            .and_then(|(dir, _)| dir)
            .filter(|_| self.clone_into_cgroup);
        let mut children = self.children.lock();
        let cloned = child::clone_and_exec(&mut setup, &mut self.stack, into_cgroup);
        self.slots.release();
        let (pid, pidfd) = match cloned {
            Err(error) if into_cgroup.is_some() && refuses_clone3(&error) => {
                return Err(Failed::CloneIntoCgroup(error));
            }
            other => other?,
        };
        if let Some((step, error)) = setup.failure() {
            // The child has exited; reap it, still under the registry lock,
            // so neither a zombie nor a confused subreaper is left.
            let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
            return Err(match step {
                child::Step::Descriptors => Failed::Descriptors(error),
                child::Step::Exec if error.raw_os_error() == Some(libc::ENOEXEC) => {
                    Failed::Io(io::Error::new(
                        error.kind(),
                        format!("{error}: not an executable, nor a script starting with #!"),
                    ))
                }
                child::Step::Exec => Failed::Io(error),
                _ => Failed::Io(io::Error::new(
                    error.kind(),
                    format!("{}: {error}", step.describe()),
                )),
            });
        }
        let stat = crate::procfs::stat(pid).ok().flatten();
        children.insert(pid, stat.map(|s| s.start_time));
        Ok(Spawned {
            pid,
            pidfd,
            stat,
            stdout,
            stderr,
        })
    }
}

/// Why a spawn failed: the descriptor step and `clone3` are told apart,
/// since the spawner can retry them another way.
enum Failed {
    Descriptors(io::Error),
    CloneIntoCgroup(io::Error),
    Io(io::Error),
}

/// Whether `error` from `clone3(CLONE_INTO_CGROUP)` says the call itself is
/// not available here: a kernel without clone3 (`ENOSYS`, before 5.3) or
/// without `CLONE_INTO_CGROUP` (`E2BIG`, `EINVAL`, before 5.7), or a seccomp
/// policy that refuses it (`EPERM`, `ENOSYS`).
fn refuses_clone3(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL)
    )
}

impl Failed {
    fn into_io(self) -> io::Error {
        match self {
            Failed::Descriptors(error) => io::Error::new(
                error.kind(),
                format!("{}: {error}", child::Step::Descriptors.describe()),
            ),
            Failed::CloneIntoCgroup(error) | Failed::Io(error) => error,
        }
    }
}

impl<E: Into<io::Error>> From<E> for Failed {
    fn from(error: E) -> Self {
        Failed::Io(error.into())
    }
}

struct SpawnRequest {
    plan: SpawnPlan,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// Handle to the spawning thread; the thread exits when the last handle is
/// dropped.
pub(crate) struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    /// Starts the spawning thread, with its reserved descriptors and the
    /// children's stack.
    pub fn start(children: ChildTable) -> io::Result<Self> {
        check_pidfd_support()?;
        let mut state = SpawnerState {
            children,
            slots: StdioSlots::open()?,
            stack: child::ChildStack::new()?,
            share_files: true,
            clone_into_cgroup: child::CAN_CLONE_INTO_CGROUP,
        };
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("tend-spawner".into())
            .spawn(move || {
                for request in incoming {
                    let spawned = state.spawn(&request.plan);
                    let _ = request.reply.send(spawned);
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Spawns the daemon described by `plan` on the spawning thread.
    pub async fn spawn(&self, plan: SpawnPlan) -> io::Result<Spawned> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(SpawnRequest { plan, reply })
            .map_err(|_| io::Error::other("the spawning thread has exited"))?;
        response
            .await
            .map_err(|_| io::Error::other("the spawning thread has exited"))?
    }
}

/// Fails unless the kernel can wait for a child through a pidfd
/// (`waitid(P_PIDFD)`, Linux 5.4), which is how tend waits for and reaps its
/// daemons.
fn check_pidfd_support() -> io::Result<()> {
    let unsupported = |what: &str| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{what}: tend needs Linux 5.4 or later"),
        )
    };
    let own = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty())
        .map_err(|_| unsupported("pidfd_open is not available"))?;
    // This process is not its own child: a kernel that knows P_PIDFD says
    // ECHILD, an older one EINVAL.
    match rustix::process::waitid(
        WaitId::PidFd(own.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Err(rustix::io::Errno::INVAL) => Err(unsupported("waitid cannot wait on a pidfd")),
        _ => Ok(()),
    }
}

/// A spawned leader, waited for through its pidfd and reaped with
/// `waitid(P_PIDFD)`: no PID is involved, so a recycled PID cannot be
/// confused with it.
pub(crate) struct Leader {
    pid: i32,
    pidfd: AsyncFd<Arc<OwnedFd>>,
    status: Option<ExitStatus>,
    /// The table the leader is registered in until it is reaped.
    children: ChildTable,
}

impl Leader {
    /// Takes over `pidfd` of leader `pid`, registered in `children`; must
    /// run inside the runtime.
    pub fn new(pid: i32, pidfd: Arc<OwnedFd>, children: ChildTable) -> io::Result<Self> {
        // A pidfd becomes readable when its process exits.
        // SAFETY: the AsyncFd holds one reference to the descriptor, so it
        // stays open for as long as it is registered; the other holders
        // only read it.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
        Ok(Leader {
            pid,
            pidfd,
            status: None,
            children,
        })
    }

    /// The leader's PID.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Reaps the leader if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let reaped = rustix::process::waitid(
            WaitId::PidFd(self.pidfd.get_ref().as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )?;
        let Some(status) = reaped else {
            return Ok(None);
        };
        let status = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        };
        self.status = Some(status);
        self.children.forget(self.id());
        Ok(self.status)
    }

    /// Waits for the leader to exit and reaps it. Cancel-safe; a leader
    /// dropped before it was reaped is reaped later (see [`Drop`]).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        // Polled by hand rather than with `readable().await`, whose future
        // (160 bytes) would sit in every daemon's task while it runs.
        std::future::poll_fn(|cx| {
            loop {
                if let Some(status) = self.try_wait()? {
                    return std::task::Poll::Ready(Ok(status));
                }
                std::task::ready!(self.pidfd.poll_read_ready(cx))?.clear_ready();
            }
        })
        .await
    }
}

impl Drop for Leader {
    /// A supervisor normally reaps its leader. When its task is dropped
    /// first — the runtime shut down — the leader would stay a zombie, and
    /// the subreaper leaves tend's own children alone; so it is handed to
    /// the reaper thread.
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            self.children
                .reap_later(self.pid, Arc::clone(self.pidfd.get_ref()));
        }
    }
}
