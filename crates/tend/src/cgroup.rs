//! Containment by cgroup v2: each daemon runs in a cgroup of its own,
//! under one cgroup per manager, so what a daemon started is known by
//! construction rather than guessed from `/proc`.
//!
//! A cgroup gives what process groups and environment markers cannot:
//! membership that no `setsid`, double fork, cleared environment or uid
//! change escapes; `cgroup.kill`, which SIGKILLs every member at once with
//! no PID involved (so no PID-reuse race); and `populated 0` in
//! `cgroup.events`, the event "everything is gone", which inotify reports.
//!
//! Layout: `<v2 mount><this process's cgroup>/tend-<manager id>/d-<name>`.
//! The manager's cgroup is a child of the cgroup the manager runs in, which
//! is where a delegated subtree lets a user create cgroups (systemd's
//! `Delegate=`, a user session's `user@.service`); the `d-` prefix keeps a
//! daemon's name clear of the control files (`cgroup.procs`,
//! `memory.max`). The v2 mount is found in `/proc/self/mountinfo`, never
//! assumed: on a hybrid system it is `/sys/fs/cgroup/unified`.
//!
//! A daemon joins its cgroup in the spawned child, before `execve` (it
//! writes `0` to `cgroup.procs`): no daemon code runs outside. `clone3`
//! with `CLONE_INTO_CGROUP` would save the migration (measured at 23 µs
//! against 7 µs per spawn on this kernel, in C), but needs a hand-written
//! assembly trampoline for a shared-memory clone and is refused by common
//! seccomp policies; the migration works everywhere cgroups do.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::Notify,
    task::JoinHandle,
    time::Instant,
};

/// How a manager contains its daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Containment {
    /// Each daemon in a cgroup of its own: nothing it starts escapes.
    Cgroup,
    /// Each daemon leads a process group; descendants that leave the group
    /// are found through the subreaper and the environment marker.
    ProcessGroup,
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Containment::Cgroup => "cgroup",
            Containment::ProcessGroup => "process-group",
        })
    }
}

/// Which containment a manager should use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ContainmentChoice {
    /// As the `TEND_CONTAINMENT` environment variable says where it is set;
    /// otherwise cgroups where a writable cgroup v2 hierarchy is found,
    /// else process groups.
    #[default]
    Auto,
    /// Cgroups, or the manager refuses to start daemons.
    Cgroup,
    /// Process groups, even where cgroups are available.
    ProcessGroup,
}

/// The environment variable that decides an `Auto` containment:
/// `cgroup`, `process-group` or `auto`. It lets an operator (or a test
/// run) choose without changing the app.
pub const CONTAINMENT_ENV: &str = "TEND_CONTAINMENT";

impl ContainmentChoice {
    /// `Auto` as [`CONTAINMENT_ENV`] says, if it is set; other choices as
    /// they are.
    pub(crate) fn resolved(self) -> ContainmentChoice {
        if self != ContainmentChoice::Auto {
            return self;
        }
        match std::env::var(CONTAINMENT_ENV).as_deref() {
            Ok("cgroup") => ContainmentChoice::Cgroup,
            Ok("process-group") => ContainmentChoice::ProcessGroup,
            Ok("auto") | Ok("") | Err(_) => ContainmentChoice::Auto,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "{CONTAINMENT_ENV} must be cgroup, process-group or auto; using auto"
                );
                ContainmentChoice::Auto
            }
        }
    }
}

/// CPU time and memory of one daemon.
///
/// With cgroup containment the figures cover every process in the
/// daemon's cgroup. With process-group containment they are the group
/// leader's alone (from `/proc/<pid>/stat` and `statm`): finding the other
/// members of a process group takes a scan of all of `/proc` per daemon,
/// too dear for a `tend status` of 1,000 daemons, and what left the group
/// would be missed anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ResourceUsage {
    /// CPU time (user and system). Cgroup: every member, past and
    /// present (`usage_usec` of `cpu.stat`). Process group: the leader and
    /// the children it has reaped.
    #[serde(
        serialize_with = "crate::state::serialize_duration_us",
        rename = "cpu_us"
    )]
    pub cpu: Duration,
    /// Memory in use now, in bytes. Cgroup: `memory.current` where the
    /// memory controller is enabled for the cgroup (page cache and kernel
    /// memory included), otherwise the sum of the members' resident sets.
    /// Process group: the leader's resident set. `None` when it could not
    /// be read.
    pub memory_bytes: Option<u64>,
}

/// Where this process's cgroup v2 directory is, if there is a cgroup v2
/// hierarchy: the mount point from `/proc/self/mountinfo` joined with the
/// path from `/proc/self/cgroup`.
pub(crate) fn own_cgroup_dir() -> io::Result<PathBuf> {
    let mountinfo = std::fs::read("/proc/self/mountinfo")?;
    let mount = v2_mount_point(&mountinfo).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted")
    })?;
    let cgroups = std::fs::read("/proc/self/cgroup")?;
    let own = v2_membership(&cgroups).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)",
        )
    })?;
    let relative = own.strip_prefix(b"/").unwrap_or(own);
    let mut dir = mount;
    if !relative.is_empty() {
        dir.push(OsStr::from_bytes(relative));
    }
    Ok(dir)
}

/// The mount point of the cgroup v2 file system in `mountinfo` text: the
/// fifth field of the line whose file system type (after ` - `) is
/// `cgroup2`. Octal escapes (`\040` for a space) are decoded.
fn v2_mount_point(mountinfo: &[u8]) -> Option<PathBuf> {
    mountinfo.split(|&b| b == b'\n').find_map(|line| {
        let separator = line.windows(3).position(|w| w == b" - ")?;
        let fs_type = line[separator + 3..].split(|&b| b == b' ').next()?;
        if fs_type != b"cgroup2" {
            return None;
        }
        let mount_point = line[..separator].split(|&b| b == b' ').nth(4)?;
        Some(PathBuf::from(OsString::from_vec(unescape_octal(
            mount_point,
        ))))
    })
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits.filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c))) {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The cgroup v2 path in `/proc/self/cgroup` text (the `0::` line).
fn v2_membership(cgroups: &[u8]) -> Option<&[u8]> {
    cgroups
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
}

/// The cgroup of one manager: `tend-<manager id>` under the manager's own.
#[derive(Debug)]
pub(crate) struct ManagerCgroup {
    path: PathBuf,
    dir: OwnedFd,
    /// The watcher of the daemons' `cgroup.events`; `None` without
    /// inotify (waits then poll).
    events: Option<CgroupEvents>,
    /// The daemons whose cgroup was killed (`cgroup.kill`) and is still
    /// the one at its path (see [`DaemonCgroup::clone_into_ok`]).
    killed: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The name prefix of a manager's cgroup, followed by its id.
pub(crate) const MANAGER_PREFIX: &str = "tend-";
/// The name prefix of a daemon's cgroup, followed by its name.
pub(crate) const DAEMON_PREFIX: &str = "d-";

impl ManagerCgroup {
    /// Creates the cgroup of manager `id` under this process's own cgroup.
    /// Fails where there is no cgroup v2 or it is not writable here.
    pub fn create(id: &str) -> io::Result<Self> {
        let parent = own_cgroup_dir()?;
        let path = parent.join(format!("{MANAGER_PREFIX}{id}"));
        match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create cgroup {}: {e}", path.display()),
                ));
            }
        }
        let dir = open_dir(&path)?;
        let events = CgroupEvents::start()
            .inspect_err(|e| tracing::info!(error = %e, "no inotify for cgroup events; stops poll"))
            .ok();
        Ok(ManagerCgroup {
            path,
            dir,
            events,
            killed: Default::default(),
        })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes sure `controller` is enabled for the daemons' cgroups: in the
    /// manager cgroup's `cgroup.subtree_control` (which the "no internal
    /// processes" rule allows, as the manager cgroup holds no process).
    /// That works only where the manager cgroup's parent offers the
    /// controller; otherwise the error says why, in words that follow
    /// "needs the memory controller, ".
    pub fn enable_controller(&self, controller: &str) -> Result<(), String> {
        let listed = |file: &str| -> Vec<String> {
            read_control(&self.dir, file)
                .map(|text| {
                    String::from_utf8_lossy(&text)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        if listed("cgroup.subtree_control")
            .iter()
            .any(|c| c == controller)
        {
            return Ok(());
        }
        let offered = listed("cgroup.controllers");
        if !offered.iter().any(|c| c == controller) {
            let available = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            };
            return Err(format!(
                "which this cgroup v2 does not offer (available: {available})"
            ));
        }
        write_control(
            &self.dir,
            "cgroup.subtree_control",
            format!("+{controller}").as_bytes(),
        )
        .map_err(|e| {
            format!(
                "which could not be enabled in {}: {e}",
                self.path.join("cgroup.subtree_control").display()
            )
        })
    }

    /// The cgroup of daemon `name` (whose characters `config` validated),
    /// created if missing. A cgroup left by an earlier incarnation is
    /// reused: its group is gone by then.
    pub fn daemon(&self, name: &str) -> io::Result<DaemonCgroup> {
        let leaf = format!("{DAEMON_PREFIX}{name}");
        let path = self.path.join(&leaf);
        {
            // A cgroup once killed is replaced by a fresh one where it can
            // be (it is empty by now, but the kernel may still hold it busy
            // for a moment); otherwise it is reused and joined the slow way.
            let mut killed = self.killed.lock().unwrap_or_else(|e| e.into_inner());
            if killed.contains(name)
                && rustix::fs::unlinkat(&self.dir, leaf.as_str(), AtFlags::REMOVEDIR).is_ok()
            {
                killed.remove(name);
            }
        }
        match rustix::fs::mkdirat(&self.dir, leaf.as_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create cgroup {}: {e}", path.display()),
                ));
            }
        }
        let dir = open_dir(&path)?;
        let procs = rustix::fs::openat(
            &dir,
            "cgroup.procs",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let watch = match &self.events {
            Some(events) => Some(events.watch(&path.join("cgroup.events"))?),
            None => None,
        };
        Ok(DaemonCgroup {
            name: name.to_owned(),
            path,
            dir,
            procs,
            watch,
            killed: Arc::clone(&self.killed),
        })
    }
}

impl Drop for ManagerCgroup {
    /// Removes the daemons' cgroups and the manager's where they are
    /// empty; a cgroup still populated is left for the guard or a later
    /// cleanup.
    fn drop(&mut self) {
        remove_tree(&self.dir, &self.path);
    }
}

/// Removes the empty daemon cgroups under `dir` and then `dir` itself.
pub(crate) fn remove_tree(dir: &OwnedFd, path: &Path) {
    if let Ok(leaves) = child_cgroups(dir) {
        for leaf in leaves {
            let _ = rustix::fs::unlinkat(dir, leaf.as_os_str(), AtFlags::REMOVEDIR);
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// The names of the cgroups directly under `dir`.
fn child_cgroups(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    use std::mem::MaybeUninit;
    let listing = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = rustix::fs::RawDir::new(&listing, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if entry.file_type() == rustix::fs::FileType::Directory && name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// The cgroup of one daemon.
#[derive(Debug)]
pub(crate) struct DaemonCgroup {
    path: PathBuf,
    dir: OwnedFd,
    /// `cgroup.procs`, open for writing: the spawned child writes `0` to it
    /// to join.
    procs: OwnedFd,
    /// Its `cgroup.events` in the manager's shared inotify instance.
    watch: Option<EventsWatch>,
    /// The daemon's name.
    name: String,
    /// The manager's set of daemons whose cgroup was killed: see
    /// [`Self::clone_into_ok`].
    killed: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl DaemonCgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a child may be cloned straight into this cgroup
    /// (`clone3(CLONE_INTO_CGROUP)`): not once `cgroup.kill` was written
    /// to it. Linux (6.18 here) compares the target cgroup's kill count
    /// with the *parent's* cgroup's for such a clone, so every child
    /// cloned into a cgroup killed before is SIGKILLed at birth; a child
    /// that joins through `cgroup.procs` is not.
    pub fn clone_into_ok(&self) -> bool {
        !self
            .killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&self.name)
    }

    /// The cgroup's directory, to clone a child into.
    pub fn dir_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The inode number of the cgroup's directory: the cgroup's id, which
    /// the kernel does not hand out again while the system runs (a cgroup
    /// created anew under the same name gets another).
    pub fn inode(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.dir)?.st_ino)
    }

    /// The descriptor a spawned child joins the cgroup through.
    pub fn procs_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// The PIDs of the processes in the cgroup now.
    pub fn members(&self) -> Vec<i32> {
        read_control(&self.dir, "cgroup.procs")
            .map(|text| {
                text.split(|&b| b == b'\n')
                    .filter_map(|pid| std::str::from_utf8(pid).ok()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any live process is in the cgroup (`populated` in
    /// `cgroup.events`). A cgroup that cannot be read counts as populated,
    /// so tend never reports a group gone that it could not see go.
    pub fn populated(&self) -> bool {
        read_control(&self.dir, "cgroup.events").map_or(true, |text| events_say_populated(&text))
    }

    /// Sends `signals`, in order, to every member, each through a pidfd
    /// opened while it is listed in the cgroup (so a PID reused meanwhile
    /// is never hit). One listing serves all the signals.
    pub fn signal_members(&self, signals: &[rustix::process::Signal]) {
        for pidfd in self.member_pidfds() {
            for &signal in signals {
                let _ = rustix::process::pidfd_send_signal(&pidfd, signal);
            }
        }
    }

    /// Pidfds of the members: a pidfd is kept only if its PID is still a
    /// member after it was opened, which proves it is the member's.
    pub fn member_pidfds(&self) -> Vec<OwnedFd> {
        let listed = self.members();
        let opened: Vec<(i32, OwnedFd)> = listed
            .iter()
            .filter_map(|&pid| {
                let fd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pid)?,
                    rustix::process::PidfdFlags::NONBLOCK,
                )
                .ok()?;
                Some((pid, fd))
            })
            .collect();
        let still = self.members();
        opened
            .into_iter()
            .filter(|(pid, _)| still.contains(pid))
            .map(|(_, fd)| fd)
            .collect()
    }

    /// SIGKILLs every member at once (`cgroup.kill`, Linux 5.14); on older
    /// kernels, each member through its pidfd.
    pub fn kill(&self) {
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.name.clone());
        if write_control(&self.dir, "cgroup.kill", b"1").is_err() {
            self.signal_members(&[rustix::process::Signal::KILL]);
        }
    }

    /// Waits until no process is left in the cgroup or `deadline` passes;
    /// true when empty. Woken by inotify on `cgroup.events`, which the
    /// kernel marks modified when `populated` changes.
    pub async fn wait_empty(&self, deadline: Instant) -> bool {
        // Mostly empty already: the leader was the last and has been reaped.
        if !self.populated() {
            return true;
        }
        let own_watch;
        let changed: &dyn WaitChanged = match &self.watch {
            Some(shared) => shared,
            // A dead manager's cgroup, cleaned once: an instance of its own.
            None => match OwnEventsWatch::new(&self.path.join("cgroup.events")) {
                Ok(watch) => {
                    own_watch = watch;
                    &own_watch
                }
                Err(_) => &Polling,
            },
        };
        loop {
            if !self.populated() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return !self.populated();
            }
        }
    }

    /// CPU time and memory of the cgroup now.
    pub fn usage(&self) -> ResourceUsage {
        let cpu = read_control(&self.dir, "cpu.stat")
            .ok()
            .and_then(|text| keyed_value(&text, b"usage_usec"))
            .map(Duration::from_micros)
            .unwrap_or_default();
        let memory_bytes = match read_control(&self.dir, "memory.current") {
            Ok(text) => std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            // No memory controller here: the members' resident sets.
            Err(_) => Some(
                self.members()
                    .into_iter()
                    .filter_map(crate::procfs::resident_bytes)
                    .sum(),
            ),
        };
        ResourceUsage { cpu, memory_bytes }
    }

    /// Applies `limits` to the cgroup: each limit set is written to its
    /// control file, and each one unset is reset to `max` where the file
    /// exists (the cgroup may be left by an incarnation with other
    /// limits). The manager enabled the controllers beforehand.
    pub fn apply_limits(&self, limits: &[Limit]) -> io::Result<()> {
        for limit in limits {
            match &limit.value {
                Some(value) => {
                    write_control(&self.dir, limit.file, value.as_bytes()).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot write {value:?} to {}: {e}",
                                self.path.join(limit.file).display()
                            ),
                        )
                    })?
                }
                None => match write_control(&self.dir, limit.file, b"max") {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::debug!(file = limit.file, error = %e, "cannot reset limit"),
                },
            }
        }
        Ok(())
    }
}

/// One resource limit of a daemon, as its cgroup takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The config field that sets it (`memory_max`).
    pub field: &'static str,
    /// The cgroup v2 controller that enforces it (`memory`).
    pub controller: &'static str,
    /// The control file it is written to (`memory.max`).
    pub file: &'static str,
    /// What is written there; `None` when the config sets no limit.
    pub value: Option<String>,
}

/// The period `cpu.max` is written with: 100 ms, the kernel's default.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The limits of `config`, set or not, in a fixed order.
pub(crate) fn limits_of(config: &crate::BackgroundProcessConfig) -> [Limit; 3] {
    [
        Limit {
            field: "memory_max",
            controller: "memory",
            file: "memory.max",
            value: config.memory_max.map(|bytes| bytes.to_string()),
        },
        Limit {
            field: "pids_max",
            controller: "pids",
            file: "pids.max",
            value: config.pids_max.map(|pids| pids.to_string()),
        },
        Limit {
            field: "cpu_max",
            controller: "cpu",
            file: "cpu.max",
            value: config
                .cpu_max
                .map(|cpus| format!("{} {CPU_PERIOD_US}", cpu_quota_us(cpus))),
        },
    ]
}

/// The `cpu.max` quota, in microseconds per [`CPU_PERIOD_US`], for a
/// share of `cpus` CPUs (validated: at least 0.01, so at least the
/// kernel's minimum quota of 1 ms).
pub(crate) fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

/// The cgroup of a manager that is no longer alive, proven tend's: a
/// directory named `tend-<pid>.<start time>.<n>` in the cgroup v2 tree,
/// created by this user (cgroupfs gives a directory its creator's uid, and
/// only those a cgroup is delegated to can create one), whose manager —
/// that PID with that start time — is gone.
#[derive(Debug)]
pub(crate) struct DeadManagerCgroup {
    path: PathBuf,
    dir: OwnedFd,
}

/// What cleaning dead managers' cgroups did: per daemon (by name) whose
/// cgroup still had processes, each process's PID and process group.
pub(crate) type CgroupCleanup = Vec<(String, Vec<(u32, i32)>)>;

/// The manager (PID and start time) a cgroup name `tend-<pid>.<start>.<n>`
/// gives.
pub(crate) fn manager_of(name: &OsStr) -> Option<(u32, u64)> {
    let rest = name.to_str()?.strip_prefix(MANAGER_PREFIX)?;
    let mut parts = rest.split('.');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some((pid, start))
}

impl DeadManagerCgroup {
    /// Opens the manager cgroup at `path` if it is proven a dead manager's
    /// (see the type); `alive` says whether a manager still runs.
    pub fn open(path: &Path, alive: impl Fn((u32, u64)) -> bool) -> Option<Self> {
        let owner = manager_of(path.file_name()?)?;
        if alive(owner) {
            return None;
        }
        let mount = std::fs::read("/proc/self/mountinfo")
            .ok()
            .and_then(|m| v2_mount_point(&m))?;
        if !path.starts_with(&mount) {
            return None;
        }
        let dir = open_dir(path).ok()?;
        let stat = rustix::fs::fstat(&dir).ok()?;
        let fs = rustix::fs::fstatfs(&dir).ok()?;
        // CGROUP2_SUPER_MAGIC: a directory of the cgroup v2 file system.
        if stat.st_uid != rustix::process::geteuid().as_raw() || fs.f_type as u64 != 0x6367_7270 {
            return None;
        }
        Some(DeadManagerCgroup {
            path: path.to_owned(),
            dir,
        })
    }

    /// Dead managers' cgroups beside this process's own manager cgroups
    /// (under this process's cgroup), where a killed manager that ran in
    /// the same cgroup left them.
    pub fn beside_ours(alive: impl Fn((u32, u64)) -> bool) -> Vec<Self> {
        let Ok(parent) = own_cgroup_dir() else {
            return Vec::new();
        };
        let Ok(parent_dir) = open_dir(&parent) else {
            return Vec::new();
        };
        child_cgroups(&parent_dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|name| manager_of(name).is_some())
            .filter_map(|name| Self::open(&parent.join(name), &alive))
            .collect()
    }

    /// Removes the cgroup (and its daemons' cgroups) if no process is in
    /// it; a populated one is left as it is.
    pub fn remove_if_empty(&self) {
        if read_control(&self.dir, "cgroup.events").is_ok_and(|text| !events_say_populated(&text)) {
            remove_tree(&self.dir, &self.path);
        }
    }

    /// The daemons' cgroups inside, by daemon name.
    fn daemons(&self) -> Vec<(String, DaemonCgroup)> {
        child_cgroups(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|leaf| {
                let name = leaf.to_str()?.strip_prefix(DAEMON_PREFIX)?.to_owned();
                let path = self.path.join(&leaf);
                let dir = open_dir(&path).ok()?;
                let procs = rustix::fs::openat(
                    &dir,
                    "cgroup.procs",
                    OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok()?;
                Some((
                    name.clone(),
                    DaemonCgroup {
                        name,
                        path,
                        dir,
                        procs,
                        watch: None,
                        killed: Default::default(),
                    },
                ))
            })
            .collect()
    }
}

/// Stops everything in `dead` managers' cgroups at once — the daemon's
/// stop signal (`stop_of` its name; and SIGCONT) to every member, each
/// daemon's grace period (`grace_of` its name) for its cgroup to empty,
/// then `cgroup.kill` — and removes the cgroups left empty. Only the daemon `only` when given. The graces run
/// side by side: the whole cleanup takes the longest one, not their sum.
pub(crate) async fn clean_dead_managers(
    dead: &[DeadManagerCgroup],
    only: Option<&str>,
    grace_of: impl Fn(&str) -> Duration,
    stop_of: impl Fn(&str) -> crate::config::StopSignal,
) -> CgroupCleanup {
    use rustix::process::Signal;
    let mut cleaned = CgroupCleanup::new();
    let started = Instant::now();
    let mut pending = Vec::new();
    for manager in dead {
        for (name, daemon) in manager.daemons() {
            if only.is_some_and(|only| only != name) {
                continue;
            }
            let members = daemon.member_pidfds();
            if members.is_empty() {
                continue;
            }
            let stop = stop_of(&name);
            tracing::info!(name, cgroup = ?daemon.path(), %stop, "stopping what a dead manager left in its daemon's cgroup");
            let pids = daemon
                .members()
                .into_iter()
                .map(|pid| {
                    let pgid = crate::procfs::stat(pid)
                        .ok()
                        .flatten()
                        .map_or(0, |s| s.pgid);
                    (pid as u32, pgid)
                })
                .collect();
            for pidfd in &members {
                let _ = rustix::process::pidfd_send_signal(pidfd, stop.to_signal());
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::CONT);
            }
            pending.push((started + grace_of(&name), daemon));
            cleaned.push((name, pids));
        }
    }
    for (deadline, daemon) in &pending {
        if !daemon.wait_empty(*deadline).await {
            daemon.kill();
            daemon
                .wait_empty(Instant::now() + crate::defaults::KILL_TIMEOUT)
                .await;
        }
    }
    for manager in dead {
        remove_tree(&manager.dir, &manager.path);
    }
    cleaned
}

/// Whether `cgroup.events` text says `populated 1`.
fn events_say_populated(text: &[u8]) -> bool {
    keyed_value(text, b"populated").is_none_or(|v| v != 0)
}

/// The number after `key ` on a line of a flat keyed file.
fn keyed_value(text: &[u8], key: &[u8]) -> Option<u64> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(b" ")?;
        std::str::from_utf8(rest).ok()?.trim().parse().ok()
    })
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Reads a cgroup control file (all fit in a page or a few).
pub(crate) fn read_control(dir: impl AsFd, file: &str) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = rustix::io::read(&fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Writes `value` to a cgroup control file.
pub(crate) fn write_control(dir: impl AsFd, file: &str, value: &[u8]) -> io::Result<()> {
    let fd = rustix::fs::openat(dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, value)?;
    Ok(())
}

/// Something that resolves when a `cgroup.events` file may have changed.
trait WaitChanged: Sync {
    /// Resolves at the next change (or a spurious wake-up: callers look
    /// again).
    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// One inotify instance per manager for every daemon's `cgroup.events`,
/// read by one task that wakes the daemon a change concerns.
///
/// Why one instance, not one per wait: closing an inotify instance waits
/// for a kernel grace period (`fsnotify_destroy_group`, 8–16 ms measured),
/// and a stop that made and closed its own put that wait on a runtime
/// worker at every stop (1,000 stops then took 32 times a raw stop).
/// Adding and removing a watch does not wait.
pub(crate) struct CgroupEvents {
    shared: Arc<EventsShared>,
    reader: JoinHandle<()>,
}

struct EventsShared {
    fd: AsyncFd<OwnedFd>,
    /// Who waits on which watch descriptor.
    waiters: Mutex<HashMap<i32, Arc<Notify>>>,
}

impl EventsShared {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Notify>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CgroupEvents {
    /// Creates the instance and its reader task on the current runtime.
    fn start() -> io::Result<Self> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        // SAFETY: `fd` is a fresh inotify descriptor moved into the
        // AsyncFd, which owns it until drop.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        let shared = Arc::new(EventsShared {
            fd,
            waiters: Mutex::new(HashMap::new()),
        });
        let reader = tokio::spawn(read_cgroup_events(Arc::clone(&shared)));
        Ok(CgroupEvents { shared, reader })
    }

    /// Watches the `cgroup.events` file at `path` until the returned watch
    /// is dropped.
    fn watch(&self, path: &Path) -> io::Result<EventsWatch> {
        use rustix::fs::inotify;
        // Under the lock, so the reader cannot see an event of `wd` before
        // its waiter is there.
        let mut waiters = self.shared.waiters();
        let wd = inotify::add_watch(&self.shared.fd, path, inotify::WatchFlags::MODIFY)?;
        let notify = Arc::new(Notify::new());
        waiters.insert(wd, Arc::clone(&notify));
        Ok(EventsWatch {
            shared: Arc::clone(&self.shared),
            wd,
            notify,
        })
    }
}

impl std::fmt::Debug for CgroupEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupEvents").finish_non_exhaustive()
    }
}

impl Drop for CgroupEvents {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_cgroup_events(shared: Arc<EventsShared>) {
    use rustix::fs::inotify;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        let Ok(mut guard) = shared.fd.readable().await else {
            return;
        };
        let mut reader = inotify::Reader::new(guard.get_inner(), &mut buf);
        loop {
            match reader.next() {
                Ok(event) => {
                    if let Some(notify) = shared.waiters().get(&event.wd()) {
                        notify.notify_one();
                    }
                }
                Err(rustix::io::Errno::AGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading cgroup events failed; stops wait for their deadline");
                    return;
                }
            }
        }
    }
}

/// One daemon's `cgroup.events` in its manager's [`CgroupEvents`].
#[derive(Debug)]
struct EventsWatch {
    shared: Arc<EventsShared>,
    wd: i32,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for EventsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsShared").finish_non_exhaustive()
    }
}

impl WaitChanged for EventsWatch {
    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        // `notify_one` keeps a permit when nobody waits: a change between
        // two waits is not lost.
        Box::pin(self.notify.notified())
    }
}

impl Drop for EventsWatch {
    fn drop(&mut self) {
        self.shared.waiters().remove(&self.wd);
        // Fails harmlessly once the cgroup is removed (the kernel dropped
        // the watch with it).
        let _ = rustix::fs::inotify::remove_watch(&self.shared.fd, self.wd);
    }
}

/// An inotify instance of its own on one `cgroup.events` file, for the
/// rare waits on a cgroup of no live manager (cleaning a dead one's).
struct OwnEventsWatch {
    fd: AsyncFd<OwnedFd>,
}

impl OwnEventsWatch {
    fn new(path: &Path) -> io::Result<Self> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(&fd, path, inotify::WatchFlags::MODIFY)?;
        // SAFETY: `fd` is a fresh inotify descriptor moved into the
        // AsyncFd, which owns it until drop.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(OwnEventsWatch { fd })
    }
}

impl WaitChanged for OwnEventsWatch {
    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let Ok(mut ready) = self.fd.readable().await else {
                    return std::future::pending().await;
                };
                let mut buf = [0u8; 1024];
                match rustix::io::read(self.fd.get_ref(), &mut buf) {
                    Ok(_) => return,
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(_) => return std::future::pending().await,
                }
            }
        })
    }
}

/// Without inotify: look again every few milliseconds.
struct Polling;

impl WaitChanged for Polling {
    fn changed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(Duration::from_millis(5)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        let mountinfo = b"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount_point(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            b"29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            v2_mount_point(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = b"41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            v2_mount_point(spaced),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            v2_mount_point(b"35 31 0:32 / /x rw - cgroup cgroup rw,memory\n"),
            None
        );
    }

    #[test]
    fn reads_the_v2_membership_line() {
        let text = b"4:memory:/process_api/30f9\n1:cpu:/\n0::/user.slice/app.scope\n";
        assert_eq!(v2_membership(text), Some(&b"/user.slice/app.scope"[..]));
        assert_eq!(v2_membership(b"1:cpu:/\n"), None);
    }

    #[test]
    fn manager_cgroup_names_give_their_manager() {
        assert_eq!(manager_of(OsStr::new("tend-12.345.0")), Some((12, 345)));
        for other in [
            "tend-12.345",
            "tend-a.345.0",
            "tend-1.2.3.4",
            "d-x",
            "12.345.0",
        ] {
            assert_eq!(manager_of(OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn cpu_shares_become_quotas() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.01), 1_000);
        assert_eq!(cpu_quota_us(0.001), 1_000);
        let config = crate::BackgroundProcessConfig::new("p", "/bin/true")
            .memory_max(512 << 20)
            .cpu_max(0.25);
        let limits = limits_of(&config);
        assert_eq!(limits[0].value.as_deref(), Some("536870912"));
        assert_eq!(limits[1].value, None);
        assert_eq!(limits[2].value.as_deref(), Some("25000 100000"));
    }

    #[test]
    fn reads_flat_keyed_files() {
        assert!(events_say_populated(b"populated 1\nfrozen 0\n"));
        assert!(!events_say_populated(b"populated 0\nfrozen 0\n"));
        let stat = b"usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed_value(stat, b"usage_usec"), Some(1234));
        assert_eq!(keyed_value(stat, b"usage"), None);
    }
}
