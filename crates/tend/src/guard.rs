//! The guard: a small process that outlives a killed manager just long
//! enough to stop its daemons.
//!
//! The parent-death signal stops a daemon when its manager dies, but the
//! kernel clears it when the daemon changes its uid (`memcached -u nobody`,
//! PostgreSQL under `setpriv`), it reaches the leader only, and workers of
//! a leader that dies with the manager are left. The orphan journal lets
//! the *next* start clean up, which may never come. So each manager starts
//! a guard when it first starts a daemon: a copy of the manager process
//! (a `clone` without shared memory, running only system calls on data
//! prepared before) that sits in `poll` on two descriptors:
//!
//! - a pidfd of the manager: readable when the manager process is gone,
//!   however it died;
//! - the read end of a pipe whose write end only the manager holds: it
//!   carries the manager's messages (the groups it runs, in process-group
//!   containment, or the inodes of its daemons' cgroups, in cgroup
//!   containment, each with the daemon's stop signal; and the longest grace
//!   period), and reads end of file when the manager is dropped.
//!
//! Either way it then stops what is left: with cgroup containment, each
//! daemon's stop signal (and SIGCONT) to every member of its cgroup, up to
//! the longest grace period for `populated 0`, then `cgroup.kill` —
//! whatever a daemon did to its environment, uid or process group; with
//! process-group containment, the same to every recorded group whose
//! leader still has its recorded start time. A daemon cgroup is known by
//! its directory's inode, not its name, so a cgroup made anew under a
//! name is never taken for the one the manager described; a cgroup the
//! guard heard nothing about (a message lost) gets SIGTERM, the default.
//! Then it removes the empty cgroups and exits.
//!
//! The guard leads a session of its own (a terminal's Ctrl-C does not reach
//! it), ignores SIGTERM, SIGINT, SIGHUP and SIGQUIT (only its job ends it),
//! and keeps no descriptor of the manager's but its own three: it holds
//! neither the app's terminal nor a pipe someone reads to end of file.
//!
//! Rules for the guard, which runs on a copy of a multi-threaded process:
//! no allocation, no locks, nothing but system calls on the data in
//! [`GuardSetup`]; the table of groups has a fixed capacity, allocated
//! before the clone.

use std::{
    ffi::{CString, c_int, c_void},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    ptr,
    sync::Arc,
    time::Duration,
};

use crate::{children::ChildTable, config::StopSignal, spawn};

/// Groups (process-group containment) or daemon cgroups (cgroup
/// containment) the guard can track; more groups are left to the journal
/// cleanup, and more cgroups get SIGTERM.
const GROUP_CAPACITY: usize = 1 << 16;
/// How long the guard waits for `cgroup.kill` or SIGKILL to take effect.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// The pause between two looks at process groups (process-group
/// containment only: there is no event for "group empty").
const GROUP_POLL: Duration = Duration::from_millis(10);

/// One message from the manager: a kind and three numbers, 32 bytes. A
/// write of at most `PIPE_BUF` (4,096) bytes to a pipe is atomic, and 32
/// divides it, so the pipe only ever holds whole messages and a read of a
/// multiple of 32 bytes returns whole ones. The default pipe buffer (64
/// KiB) holds 2,048 messages; the guard drains it as they come, and a
/// message that does not fit is dropped (the manager never blocks), which
/// leaves that daemon to the journal cleanup, or to SIGTERM.
#[repr(C)]
#[derive(Clone, Copy)]
struct Message {
    kind: u64,
    a: u64,
    b: u64,
    c: u64,
}

const _: () = assert!(size_of::<Message>() == 32 && libc::PIPE_BUF % size_of::<Message>() == 0);

/// `a` the group id, `b` its leader's start time, `c` the stop signal.
const ADD_GROUP: u64 = 1;
/// `a` the group id.
const REMOVE_GROUP: u64 = 2;
/// `a` the grace period in milliseconds.
const GRACE: u64 = 3;
/// `a` the inode of a daemon's cgroup directory, `c` the stop signal.
const ADD_CGROUP: u64 = 4;
/// `a` the inode of a daemon's cgroup directory.
const REMOVE_CGROUP: u64 = 5;

/// A recorded process group: its id, its leader's start time and the
/// daemon's stop signal.
#[derive(Clone, Copy)]
struct Group {
    pgid: i32,
    stop_signal: c_int,
    start_time: u64,
    /// Scratch of [`prove_groups`]: the leader is gone.
    leader_gone: bool,
    /// Scratch of [`prove_groups`]: proven the recorded group.
    proven: bool,
}

/// A daemon's cgroup, by the inode of its directory, and the daemon's stop
/// signal.
#[derive(Clone, Copy)]
struct DaemonCgroupSignal {
    inode: u64,
    stop_signal: c_int,
}

/// Everything the guard reads, prepared before the clone.
struct GuardSetup {
    manager_pidfd: RawFd,
    messages: RawFd,
    devnull: RawFd,
    /// The manager's cgroup directory, or -1 in process-group containment.
    cgroup_dir: RawFd,
    /// `<manager cgroup>/cgroup.events`, for inotify.
    cgroup_events: Option<CString>,
    /// `<manager cgroup>`, removed at the end.
    cgroup_path: Option<CString>,
    /// Process-group containment: the groups to stop.
    groups: Vec<Group>,
    /// Cgroup containment: the stop signals of the daemons' cgroups.
    cgroups: Vec<DaemonCgroupSignal>,
    grace: Duration,
}

/// The manager's handle on its guard. Dropping it lets the guard finish
/// (it finds nothing left when the manager stopped everything) and hands
/// the guard to the reaper thread.
pub(crate) struct Guard {
    pid: i32,
    children: ChildTable,
    pidfd: Arc<OwnedFd>,
    messages: OwnedFd,
    grace: std::sync::Mutex<Duration>,
}

impl Guard {
    /// Starts the guard of this process. `cgroup` is the manager's cgroup
    /// directory in cgroup containment.
    pub fn start(
        children: &ChildTable,
        cgroup: Option<&Path>,
        grace: Duration,
    ) -> io::Result<Guard> {
        use rustix::{fs::OFlags, pipe::PipeFlags};
        let manager_pidfd = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )?;
        let (reader, writer) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        // The manager must never block on its guard: a message that does
        // not fit is dropped (the journal still has it).
        rustix::fs::fcntl_setfl(&writer, OFlags::NONBLOCK)?;
        let devnull = rustix::fs::open(
            "/dev/null",
            OFlags::RDWR | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let cgroup_dir = cgroup
            .map(|path| {
                rustix::fs::open(
                    path,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
            })
            .transpose()?;
        let c_path = |p: &Path| CString::new(p.as_os_str().as_bytes()).ok();
        let mut setup = GuardSetup {
            manager_pidfd: manager_pidfd.as_raw_fd(),
            messages: reader.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            cgroup_dir: cgroup_dir.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
            cgroup_events: cgroup.and_then(|p| c_path(&p.join("cgroup.events"))),
            cgroup_path: cgroup.and_then(c_path),
            groups: if cgroup.is_some() {
                Vec::new()
            } else {
                Vec::with_capacity(GROUP_CAPACITY)
            },
            cgroups: if cgroup.is_some() {
                Vec::with_capacity(GROUP_CAPACITY)
            } else {
                Vec::new()
            },
            grace,
        };
        let mut stack = spawn::ChildStack::new()?;
        let mut pidfd: c_int = -1;
        // Registered under the lock the subreaper takes, so it never
        // mistakes the guard for an adopted orphan.
        let mut registered = children.lock();
        // SAFETY: without CLONE_VM the child runs `guard_main` on its own
        // copy of this memory (`stack` included), so nothing it does can
        // reach the parent's data; `setup` is valid in that copy. With
        // CLONE_PIDFD the kernel stores a pidfd through the last pointer.
        let pid = unsafe {
            libc::clone(
                guard_main,
                stack.top(),
                libc::CLONE_PIDFD | libc::SIGCHLD,
                ptr::from_mut(&mut setup).cast::<c_void>(),
                &mut pidfd as *mut c_int,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a successful clone with CLONE_PIDFD stored a fresh pidfd
        // that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        registered.insert(pid, None);
        drop(registered);
        tracing::debug!(pid, "guard started");
        Ok(Guard {
            pid,
            children: children.clone(),
            pidfd: Arc::new(pidfd),
            messages: writer,
            grace: std::sync::Mutex::new(grace),
        })
    }

    fn send(&self, message: Message) {
        // SAFETY: `Message` is plain `repr(C)` data of four u64s.
        let bytes = unsafe {
            std::slice::from_raw_parts(ptr::from_ref(&message).cast::<u8>(), size_of::<Message>())
        };
        if let Err(e) = rustix::io::write(&self.messages, bytes) {
            tracing::debug!(error = %e, "cannot reach the guard; the journal still records the daemon");
        }
    }

    /// Tells the guard about a group to stop, with `stop`, should the
    /// manager die.
    pub fn add_group(&self, pgid: i32, start_time: u64, stop: StopSignal) {
        self.send(Message {
            kind: ADD_GROUP,
            a: pgid as u64,
            b: start_time,
            c: stop.number() as u64,
        });
    }

    /// Tells the guard a group is gone.
    pub fn remove_group(&self, pgid: i32) {
        self.send(Message {
            kind: REMOVE_GROUP,
            a: pgid as u64,
            b: 0,
            c: 0,
        });
    }

    /// Tells the guard the stop signal of the daemon whose cgroup
    /// directory has inode `inode`.
    pub fn add_cgroup(&self, inode: u64, stop: StopSignal) {
        self.send(Message {
            kind: ADD_CGROUP,
            a: inode,
            b: 0,
            c: stop.number() as u64,
        });
    }

    /// Tells the guard the cgroup with inode `inode` needs no stop signal
    /// any more.
    pub fn remove_cgroup(&self, inode: u64) {
        self.send(Message {
            kind: REMOVE_CGROUP,
            a: inode,
            b: 0,
            c: 0,
        });
    }

    /// Raises the grace period the guard gives daemons to `grace`, if it is
    /// longer than any so far.
    pub fn grace_at_least(&self, grace: Duration) {
        let mut current = self.grace.lock().unwrap_or_else(|e| e.into_inner());
        if grace > *current {
            *current = grace;
            self.send(Message {
                kind: GRACE,
                a: grace.as_millis().min(u64::MAX as u128) as u64,
                b: 0,
                c: 0,
            });
        }
    }

    /// The guard's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe (the field drops after this) tells the guard to
        // finish; it exits once it found nothing left.
        self.children.reap_later(self.pid, Arc::clone(&self.pidfd));
    }
}

// ---- the guard process --------------------------------------------------

extern "C" fn guard_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the `GuardSetup` in this process's own copy
    // of the parent's memory; nothing else runs in this process.
    let setup = unsafe { &mut *arg.cast::<GuardSetup>() };
    spawn::reset_signal_handlers();
    // SAFETY: plain system calls on integers and static strings.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"tend-guard".as_ptr());
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    }
    keep_only_own_descriptors(setup);
    clear_environment_block();
    watch_manager(setup);
    match setup.cgroup_dir {
        -1 => stop_groups(setup),
        dir => stop_cgroups(setup, dir),
    }
    // SAFETY: ends this process, which holds nothing that needs flushing.
    unsafe { libc::_exit(0) }
}

/// Points stdin, stdout and stderr at /dev/null and closes every other
/// descriptor but the guard's own.
fn keep_only_own_descriptors(setup: &GuardSetup) {
    let mut keep = [
        setup.manager_pidfd,
        setup.messages,
        setup.cgroup_dir,
        setup.devnull,
    ];
    keep.sort_unstable();
    // SAFETY: descriptor operations on this process's own table.
    unsafe {
        for fd in 0..3 {
            libc::dup2(setup.devnull, fd);
        }
        let mut first = 3;
        for fd in keep.into_iter().filter(|&fd| fd >= 3) {
            if fd > first {
                close_range(first, fd - 1);
            }
            first = first.max(fd + 1);
        }
        close_range(first, c_int::MAX);
    }
}

/// Zeroes this process's environment block (`env_start..env_end`, fields
/// 50 and 51 of `/proc/self/stat`), so that the guard — a copy of the
/// manager — is not mistaken for the manager or its caller by whoever
/// looks for processes by their environment.
fn clear_environment_block() {
    let mut buf = [0u8; 1024];
    let len = read_file_at(libc::AT_FDCWD, c"/proc/self/stat".as_ptr(), &mut buf);
    let text = &buf[..len];
    let Some(close) = text.iter().rposition(|&b| b == b')') else {
        return;
    };
    // After the name, field 3 (the state) comes first.
    let mut fields = text[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let start = fields.nth(50 - 3).and_then(parse_u64);
    let end = fields
        .next()
        .and_then(|f| parse_u64(f.strip_suffix(b"\n").unwrap_or(f)));
    if let (Some(start), Some(end)) = (start, end) {
        if start < end {
            // SAFETY: the kernel reports this range as this process's own
            // environment block, mapped and writable; nothing in the guard
            // reads the environment.
            unsafe { ptr::write_bytes(start as *mut u8, 0, (end - start) as usize) };
        }
    }
}

/// Closes `first..=last`, one by one where `close_range` is missing.
///
/// # Safety
/// Closes descriptors of this process; only for the guard's own table.
unsafe fn close_range(first: c_int, last: c_int) {
    // SAFETY: as the caller promises.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0,
        )
    } == 0;
    if !done {
        let last = last.min(65_535);
        for fd in first..=last {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Waits until the manager is gone or drops its end of the pipe, applying
/// its messages meanwhile.
fn watch_manager(setup: &mut GuardSetup) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: setup.manager_pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: setup.messages,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if last_errno() == libc::EINTR {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            // The manager is gone: apply what it managed to send, then act.
            read_messages(setup);
            return;
        }
        if fds[1].revents != 0 && !read_messages(setup) {
            return;
        }
    }
}

/// Applies the messages waiting on the pipe; false at end of file.
fn read_messages(setup: &mut GuardSetup) -> bool {
    let mut buf = [Message {
        kind: 0,
        a: 0,
        b: 0,
        c: 0,
    }; 64];
    loop {
        let mut ready = libc::pollfd {
            fd: setup.messages,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        if unsafe { libc::poll(&mut ready, 1, 0) } <= 0 {
            return true;
        }
        // SAFETY: reads into `buf`, whose size is passed.
        let n = unsafe { libc::read(setup.messages, buf.as_mut_ptr().cast(), size_of_val(&buf)) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            return last_errno() == libc::EINTR || last_errno() == libc::EAGAIN;
        }
        for message in &buf[..n as usize / size_of::<Message>()] {
            apply(setup, *message);
        }
    }
}

fn apply(setup: &mut GuardSetup, message: Message) {
    match message.kind {
        ADD_GROUP => {
            let group = Group {
                pgid: message.a as i32,
                stop_signal: stop_signal(message.c),
                start_time: message.b,
                leader_gone: false,
                proven: false,
            };
            if let Some(slot) = setup.groups.iter_mut().find(|g| g.pgid == group.pgid) {
                *slot = group;
            } else if setup.groups.len() < setup.groups.capacity() {
                setup.groups.push(group);
            }
        }
        REMOVE_GROUP => {
            if let Some(i) = setup.groups.iter().position(|g| g.pgid == message.a as i32) {
                setup.groups.swap_remove(i);
            }
        }
        GRACE => setup.grace = Duration::from_millis(message.a),
        ADD_CGROUP => {
            let cgroup = DaemonCgroupSignal {
                inode: message.a,
                stop_signal: stop_signal(message.c),
            };
            if let Some(slot) = setup.cgroups.iter_mut().find(|c| c.inode == cgroup.inode) {
                *slot = cgroup;
            } else if setup.cgroups.len() < setup.cgroups.capacity() {
                setup.cgroups.push(cgroup);
            }
        }
        REMOVE_CGROUP => {
            if let Some(i) = setup.cgroups.iter().position(|c| c.inode == message.a) {
                setup.cgroups.swap_remove(i);
            }
        }
        _ => {}
    }
}

/// The stop signal a message names: one of those a daemon may choose,
/// else SIGTERM (the manager sends only those; this keeps a damaged
/// message from sending anything else, SIGKILL or SIGSTOP included).
fn stop_signal(number: u64) -> c_int {
    const STOP_SIGNALS: [c_int; 7] = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ];
    STOP_SIGNALS
        .into_iter()
        .find(|&signal| signal as u64 == number)
        .unwrap_or(libc::SIGTERM)
}

/// The stop signal the manager gave for the daemon cgroup with inode
/// `inode`; SIGTERM for one it did not describe.
fn cgroup_stop_signal(cgroups: &[DaemonCgroupSignal], inode: u64) -> c_int {
    cgroups
        .iter()
        .find(|c| c.inode == inode)
        .map_or(libc::SIGTERM, |c| c.stop_signal)
}

/// Cgroup containment: each daemon's stop signal to every member of its
/// cgroup, wait for `populated 0` up to the grace period, `cgroup.kill`,
/// wait, remove the cgroups.
fn stop_cgroups(setup: &GuardSetup, dir: RawFd) {
    let signalled = for_each_member(dir, |inode, pidfd| {
        let stop = cgroup_stop_signal(&setup.cgroups, inode);
        for signal in [stop, libc::SIGCONT] {
            // SAFETY: signals through a pidfd proven a member's (see
            // `for_each_member`); a null info is allowed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    signal,
                    ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    });
    if signalled > 0 && !wait_cgroup_empty(setup, setup.grace) {
        write_file_at(dir, c"cgroup.kill", b"1");
        wait_cgroup_empty(setup, KILL_WAIT);
    }
    // Remove the daemons' cgroups, then the manager's.
    for_each_child_cgroup(dir, |name| {
        // SAFETY: `name` is a NUL-terminated entry name read from `dir`.
        unsafe { libc::unlinkat(dir, name, libc::AT_REMOVEDIR) };
    });
    if let Some(path) = &setup.cgroup_path {
        // SAFETY: a NUL-terminated path prepared before the clone.
        unsafe { libc::rmdir(path.as_ptr()) };
    }
}

/// Pidfds opened at once before their PIDs are checked again.
const PIDFD_BATCH: usize = 256;

/// Calls `f` with the inode of the cgroup's directory and a pidfd of every
/// process in the cgroups under `dir`; returns how many. A pidfd is opened
/// for each PID `cgroup.procs` lists, and used only if the PID is still
/// listed after it was opened: then the pidfd is the member's, and no PID
/// reused meanwhile is ever signalled. (`cgroup.kill`, which follows the
/// grace period, needs no PID at all.) The inode is read from the
/// descriptor `cgroup.procs` is read through, so it is that cgroup's.
fn for_each_member(dir: RawFd, mut f: impl FnMut(u64, RawFd)) -> usize {
    let mut count = 0;
    for_each_child_cgroup(dir, |name| {
        // SAFETY: `name` is NUL-terminated; the descriptor is closed below.
        let child = unsafe {
            libc::openat(
                dir,
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if child < 0 {
            return;
        }
        // SAFETY: `fstat` fills the zeroed struct for an open descriptor.
        let inode = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(child, &mut stat) == 0 {
                stat.st_ino
            } else {
                0
            }
        };
        let mut listed = [0u8; 8 * 1024];
        let len = read_file_at(child, c"cgroup.procs".as_ptr(), &mut listed);
        let mut opened = [(0i32, -1 as RawFd); PIDFD_BATCH];
        let mut held = 0;
        let mut pids = listed[..len].split(|&b| b == b'\n').filter_map(parse_u64);
        loop {
            let next = pids.next();
            if let Some(pid) = next {
                // SAFETY: opens a pidfd; closed below.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as i32, 0) } as RawFd;
                if fd >= 0 {
                    opened[held] = (pid as i32, fd);
                    held += 1;
                }
            }
            if held > 0 && (held == PIDFD_BATCH || next.is_none()) {
                let mut still = [0u8; 8 * 1024];
                let len = read_file_at(child, c"cgroup.procs".as_ptr(), &mut still);
                for &(pid, fd) in &opened[..held] {
                    let listed_now = still[..len]
                        .split(|&b| b == b'\n')
                        .any(|line| parse_u64(line) == Some(pid as u64));
                    if listed_now {
                        f(inode, fd);
                        count += 1;
                    }
                    // SAFETY: closes the pidfd opened above.
                    unsafe { libc::close(fd) };
                }
                held = 0;
            }
            if next.is_none() {
                break;
            }
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(child) };
    });
    count
}

/// Calls `f` with the NUL-terminated name of every directory in `dir`.
fn for_each_child_cgroup(dir: RawFd, mut f: impl FnMut(*const libc::c_char)) {
    for_each_entry(dir, c".", |name, kind| {
        let is_dot = name.starts_with(b".\0") || name.starts_with(b"..\0");
        if kind == libc::DT_DIR && !is_dot {
            f(name.as_ptr().cast());
        }
    });
}

/// Calls `f` with the NUL-terminated name and the type of every entry of
/// the directory `path` (relative to `dir`), read with `getdents64` into a
/// buffer on the stack.
fn for_each_entry(dir: RawFd, path: &std::ffi::CStr, mut f: impl FnMut(&[u8], u8)) {
    // A descriptor of its own, so the listing starts at the beginning.
    // SAFETY: opens a NUL-terminated path relative to `dir`; closed below.
    let listing = unsafe {
        libc::openat(
            dir,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if listing < 0 {
        return;
    }
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: getdents64 fills `buf` up to its length.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, listing, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            f(&buf[at + 19..at + reclen], buf[at + 18]);
            at += reclen;
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(listing) };
}

/// Waits up to `limit` for the manager's cgroup to have no member, woken by
/// inotify on its `cgroup.events`; true when empty.
fn wait_cgroup_empty(setup: &GuardSetup, limit: Duration) -> bool {
    let deadline = now() + limit;
    // SAFETY: plain system calls; the descriptor is closed below.
    let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if let (true, Some(events)) = (inotify >= 0, &setup.cgroup_events) {
        // SAFETY: a NUL-terminated path prepared before the clone.
        unsafe { libc::inotify_add_watch(inotify, events.as_ptr(), libc::IN_MODIFY) };
    }
    let empty = loop {
        if !cgroup_populated(setup.cgroup_dir) {
            break true;
        }
        let left = deadline.saturating_sub(now());
        if left.is_zero() {
            break false;
        }
        let mut ready = libc::pollfd {
            fd: inotify,
            events: libc::POLLIN,
            revents: 0,
        };
        // Without inotify, look again every few milliseconds.
        let timeout = if inotify >= 0 {
            left
        } else {
            left.min(GROUP_POLL)
        };
        // SAFETY: one valid pollfd (a negative fd is ignored by poll).
        if unsafe { libc::poll(&mut ready, 1, timeout.as_millis().max(1) as c_int) } > 0 {
            let mut drain = [0u8; 1024];
            // SAFETY: reads into `drain`, whose size is passed.
            unsafe { libc::read(inotify, drain.as_mut_ptr().cast(), drain.len()) };
        }
    };
    if inotify >= 0 {
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(inotify) };
    }
    empty
}

fn cgroup_populated(dir: RawFd) -> bool {
    let mut buf = [0u8; 512];
    let len = read_file_at(dir, c"cgroup.events".as_ptr(), &mut buf);
    // Unreadable counts as populated: never claim a cgroup empty unseen.
    len == 0 || buf[..len].windows(11).any(|w| w == b"populated 1")
}

/// Process-group containment: its daemon's stop signal to each recorded
/// group that is proven still the one recorded, wait up to the grace
/// period for the groups to empty, then SIGKILL what is left of them.
fn stop_groups(setup: &mut GuardSetup) {
    // The manager's death: nothing started after it can be its daemon's.
    let died = boot_ticks();
    let live = prove_groups(&mut setup.groups, died);
    setup.groups.truncate(live);
    for group in &setup.groups {
        // SAFETY: signals a group proven to be the recorded one.
        unsafe {
            libc::kill(-group.pgid, group.stop_signal);
            libc::kill(-group.pgid, libc::SIGCONT);
        }
    }
    if live == 0 {
        return;
    }
    let deadline = now() + setup.grace;
    while now() < deadline && any_group_alive(&setup.groups) {
        sleep(GROUP_POLL);
    }
    // Proven again: a group that emptied meanwhile may carry a new owner.
    let live = prove_groups(&mut setup.groups, died);
    for group in &setup.groups[..live] {
        // SAFETY: as above.
        unsafe { libc::kill(-group.pgid, libc::SIGKILL) };
    }
}

/// Moves to the front of `groups` those still proven to be the groups the
/// manager recorded, and returns how many.
///
/// A group is the recorded one if its leader lives with the recorded start
/// time, or (the leader died with the manager, by its parent-death signal)
/// a live member started between the leader and the manager's death. A
/// group id is not reused while any process carries it, so members that
/// were there before the manager died, in a group the manager had not
/// reported gone, are the daemon's.
///
/// Leaders are looked up one by one; the members of every group whose
/// leader is gone are found in one scan of `/proc`, with the groups sorted
/// by id for a binary search (a scan for each such group took seconds at
/// 1,000 daemons, and that is the usual case: the leaders die with the
/// manager). Nothing is allocated: the guard runs in a clone.
fn prove_groups(groups: &mut [Group], died: u64) -> usize {
    let mut leaders_gone = 0;
    for group in groups.iter_mut() {
        group.proven = false;
        group.leader_gone = false;
        if group.pgid <= 1 {
            continue;
        }
        match process_stat(group.pgid) {
            Some(leader) if leader.alive => group.proven = leader.start_time == group.start_time,
            _ => {
                group.leader_gone = true;
                leaders_gone += 1;
            }
        }
    }
    if leaders_gone > 0 {
        groups.sort_unstable_by_key(|group| group.pgid);
        for_each_pid(|pid| {
            let Some(member) = process_stat(pid) else {
                return;
            };
            if !member.alive || member.start_time > died {
                return;
            }
            if let Ok(i) = groups.binary_search_by_key(&member.pgid, |group| group.pgid) {
                let group = &mut groups[i];
                if group.leader_gone && member.start_time >= group.start_time {
                    group.proven = true;
                }
            }
        });
    }
    let mut proven = 0;
    for i in 0..groups.len() {
        if groups[i].proven {
            groups.swap(proven, i);
            proven += 1;
        }
    }
    proven
}

fn any_group_alive(groups: &[Group]) -> bool {
    groups.iter().any(|g| {
        // SAFETY: signal 0 only checks that the group has a member.
        unsafe { libc::kill(-g.pgid, 0) == 0 }
    })
}

/// What the guard reads of `/proc/<pid>/stat`.
struct GuardStat {
    alive: bool,
    pgid: i32,
    start_time: u64,
}

/// Reads `/proc/<pid>/stat` as bytes, counting fields from the last `)`
/// (the name may hold anything, invalid UTF-8 included).
fn process_stat(pid: i32) -> Option<GuardStat> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len() + write_decimal(&mut path[prefix.len()..], pid as u64);
    path[at..at + 5].copy_from_slice(b"/stat");
    at += 5;
    path[at] = 0;
    let mut buf = [0u8; 1024];
    let len = read_file_at(libc::AT_FDCWD, path.as_ptr().cast(), &mut buf);
    let text = &buf[..len];
    let after = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    let mut fields = after.split(|&b| b == b' ').filter(|f| !f.is_empty());
    // Fields of proc(5): 3 state, 4 ppid, 5 pgrp, ... 22 starttime.
    let state = fields.next()?;
    let pgid = parse_u64(fields.nth(1)?)? as i32;
    let start_time = parse_u64(fields.nth(22 - 6)?)?;
    Some(GuardStat {
        alive: state != b"Z" && state != b"X",
        pgid,
        start_time,
    })
}

/// The start time of live process `pid`, as [`process_stat`] reads it.
#[cfg(test)]
fn leader_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).filter(|s| s.alive).map(|s| s.start_time)
}

/// Calls `f` with every PID in `/proc`.
fn for_each_pid(mut f: impl FnMut(i32)) {
    for_each_entry(libc::AT_FDCWD, c"/proc", |name, _| {
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(pid) = parse_u64(name) {
            f(pid as i32);
        }
    });
}

/// Clock ticks since boot now, the unit of a process's start time.
fn boot_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the time into `ts`; sysconf has no preconditions.
    let hz = unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
        libc::sysconf(libc::_SC_CLK_TCK)
    };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    // A tick of slack: start times are rounded down to ticks.
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000 + 1
}

fn write_decimal(out: &mut [u8], mut value: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for i in 0..n {
        out[i] = digits[n - 1 - i];
    }
    n
}

fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Reads the file `name` (relative to `dir`) into `buf`; its length, 0 on
/// any error.
fn read_file_at(dir: RawFd, name: *const libc::c_char, buf: &mut [u8]) -> usize {
    // SAFETY: `name` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::openat(dir, name, libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return 0;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the unfilled part of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    len
}

fn write_file_at(dir: RawFd, name: &std::ffi::CStr, value: &[u8]) {
    // SAFETY: `name` is NUL-terminated; the descriptor is closed below.
    unsafe {
        let fd = libc::openat(dir, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, value.as_ptr().cast(), value.len());
            libc::close(fd);
        }
    }
}

fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the current monotonic time into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn sleep(duration: Duration) {
    let ts = libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    };
    // SAFETY: sleeps; an interrupted sleep just returns early.
    unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_decimals() {
        let mut out = [0u8; 20];
        let n = write_decimal(&mut out, 4_194_304);
        assert_eq!(&out[..n], b"4194304");
        assert_eq!(parse_u64(b"123"), Some(123));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
    }

    #[test]
    fn messages_name_only_stop_signals_and_cgroups_are_known_by_inode() {
        for signal in StopSignal::ALL {
            assert_eq!(stop_signal(signal.number() as u64), signal.number());
        }
        for other in [0, libc::SIGKILL as u64, libc::SIGSTOP as u64, 64, u64::MAX] {
            assert_eq!(stop_signal(other), libc::SIGTERM, "{other}");
        }
        let mut setup = GuardSetup {
            manager_pidfd: -1,
            messages: -1,
            devnull: -1,
            cgroup_dir: -1,
            cgroup_events: None,
            cgroup_path: None,
            groups: Vec::with_capacity(4),
            cgroups: Vec::with_capacity(4),
            grace: Duration::ZERO,
        };
        let message = |kind, a, c: c_int| Message {
            kind,
            a,
            b: 0,
            c: c as u64,
        };
        apply(&mut setup, message(ADD_CGROUP, 7, libc::SIGQUIT));
        apply(&mut setup, message(ADD_CGROUP, 8, libc::SIGINT));
        assert_eq!(cgroup_stop_signal(&setup.cgroups, 7), libc::SIGQUIT);
        assert_eq!(cgroup_stop_signal(&setup.cgroups, 9), libc::SIGTERM);
        // The same cgroup described again: its latest signal counts.
        apply(&mut setup, message(ADD_CGROUP, 7, libc::SIGHUP));
        assert_eq!(cgroup_stop_signal(&setup.cgroups, 7), libc::SIGHUP);
        assert_eq!(setup.cgroups.len(), 2);
        apply(&mut setup, message(REMOVE_CGROUP, 7, 0));
        assert_eq!(cgroup_stop_signal(&setup.cgroups, 7), libc::SIGTERM);
        assert_eq!(cgroup_stop_signal(&setup.cgroups, 8), libc::SIGINT);
        apply(&mut setup, message(ADD_GROUP, 1234, libc::SIGWINCH));
        assert_eq!(setup.groups[0].stop_signal, libc::SIGWINCH);
    }

    /// Process groups a test made, killed when it ends, even on panic.
    struct KillGroups(Vec<i32>);

    impl Drop for KillGroups {
        fn drop(&mut self) {
            for &pgid in &self.0 {
                // SAFETY: signals only the groups the test made.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }

    /// A process group whose leader is gone: `sh` starts a `sleep` in its
    /// group, says so and exits, and is reaped.
    fn group_without_its_leader() -> (i32, u64) {
        use std::{io::Read, os::unix::process::CommandExt, process::Stdio};
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo"])
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = leader.id() as i32;
        let start_time = leader_start_time(pgid).unwrap();
        let mut line = String::new();
        leader
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut line)
            .unwrap();
        leader.wait().unwrap();
        (pgid, start_time)
    }

    fn group(pgid: i32, start_time: u64) -> Group {
        Group {
            pgid,
            stop_signal: libc::SIGTERM,
            start_time,
            leader_gone: false,
            proven: false,
        }
    }

    #[test]
    fn groups_are_proven_by_their_leader_or_in_one_scan_by_their_members() {
        use std::{os::unix::process::CommandExt, process::Stdio};
        let mut leader = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let led = leader.id() as i32;
        let mut made = KillGroups(vec![led]);
        let led_start = leader_start_time(led).unwrap();
        let (orphaned, orphaned_start) = group_without_its_leader();
        made.0.push(orphaned);
        let (second, second_start) = group_without_its_leader();
        made.0.push(second);
        let died = boot_ticks();
        let mut groups = [
            group(1, 0),
            group(second, second_start),
            group(led, led_start + 1), // a reused leader PID
            group(orphaned, orphaned_start),
            group(led, led_start),
            group(i32::MAX, 0), // nothing there
        ];
        let proven = prove_groups(&mut groups, died);
        let mut ids: Vec<(i32, u64)> = groups[..proven]
            .iter()
            .map(|g| (g.pgid, g.start_time))
            .collect();
        ids.sort();
        let mut expected = vec![
            (led, led_start),
            (orphaned, orphaned_start),
            (second, second_start),
        ];
        expected.sort();
        assert_eq!(ids, expected);
        // A member started after the manager died proves nothing.
        let mut groups = [group(second, second_start)];
        assert_eq!(prove_groups(&mut groups, second_start.saturating_sub(1)), 0);
        drop(made);
        leader.wait().unwrap();
    }

    #[test]
    fn reads_its_own_start_time_like_procfs() {
        let me = std::process::id() as i32;
        let expected = crate::procfs::stat(me).unwrap().unwrap().start_time;
        assert_eq!(leader_start_time(me), Some(expected));
        assert_eq!(leader_start_time(i32::MAX), None);
    }
}
