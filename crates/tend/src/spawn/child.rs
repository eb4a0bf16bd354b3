//! The raw spawn: `clone(CLONE_VM | CLONE_VFORK | CLONE_FILES |
//! CLONE_PIDFD)` and the few system calls the child makes before `execve`.
//!
//! Why not `fork`: the standard library forks whenever a `pre_exec` hook is
//! set, and tend needs one for the parent-death signal. Forking copies the
//! manager's page tables, and the child's `exec` tears the copy down again;
//! with a thousand daemons that was a quarter of all the CPU of a start.
//! Why not `posix_spawn`: it has no way to arm the parent-death signal.
//! So tend does what `posix_spawn` does inside glibc — a child that shares
//! the parent's memory while the parent thread is suspended until the
//! child has exec'd or exited — and adds the two calls it needs.
//!
//! Why `CLONE_FILES`: without it the kernel copies the whole descriptor
//! table into the child, and `exec` then closes every close-on-exec entry
//! of the copy one by one — O(descriptors) per spawn, and the manager has
//! several per daemon. With it, the child shares the table until it calls
//! `close_range(first, ~0, CLOSE_RANGE_UNSHARE)`, which copies only the
//! descriptors below `first`. The spawner keeps the child's stdin, stdout
//! and stderr in three reserved low descriptors ([`super::StdioSlots`]),
//! so `first` is small and the copy is a handful of entries whatever the
//! manager holds. Kernels before 5.9 lack `close_range`; there the child
//! copies the table with `unshare(CLONE_FILES)`. Where a seccomp policy
//! denies both (Docker's default profile allows `unshare` only with
//! `CAP_SYS_ADMIN`, and older ones deny `close_range`), the spawner clones
//! without `CLONE_FILES` from then on, as `posix_spawn` does.
//!
//! Rules for the child, which runs on the parent's memory and thread-local
//! storage: no allocation, no locks, no panics, nothing but system calls on
//! data prepared before the clone. Every raw pointer it reads points into
//! [`ChildSetup`], which the parent keeps alive and untouched until the
//! clone returns (`CLONE_VFORK` suspends it until then).

use std::{
    ffi::{c_char, c_int, c_void},
    io,
    os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd},
    ptr,
    sync::atomic::{AtomicI32, Ordering},
};

/// Size of the child's stack; the child's frames are small and it makes
/// no calls that need much (glibc's `posix_spawn` uses 32 KiB and up).
const STACK_BYTES: usize = 64 * 1024;

/// Highest signal number to reset (Linux real-time signals end at 64).
const LAST_SIGNAL: c_int = 64;

/// The step the child failed at, reported to the parent with its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `setpgid(0, 0)`.
    ProcessGroup = 1,
    /// `prctl(PR_SET_PDEATHSIG)`, or the parent died before it.
    ParentDeathSignal = 2,
    /// Making its own descriptor table.
    Descriptors = 3,
    /// `dup2` onto stdin, stdout or stderr.
    Stdio = 4,
    /// `chdir` to the working directory.
    WorkingDirectory = 5,
    /// `execve` of every candidate path.
    Exec = 6,
    /// Joining the daemon's cgroup.
    Cgroup = 7,
    /// `prlimit` of a configured resource limit.
    ResourceLimits = 8,
    /// `setgroups`, `setresgid` and `setresuid`.
    Credentials = 9,
}

impl Step {
    fn from_code(code: i32) -> Option<Step> {
        Some(match code {
            1 => Step::ProcessGroup,
            2 => Step::ParentDeathSignal,
            3 => Step::Descriptors,
            4 => Step::Stdio,
            5 => Step::WorkingDirectory,
            6 => Step::Exec,
            7 => Step::Cgroup,
            8 => Step::ResourceLimits,
            9 => Step::Credentials,
            _ => return None,
        })
    }

    /// What the step was, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::ProcessGroup => "cannot create the daemon's process group",
            Step::ParentDeathSignal => "cannot arm the parent-death signal",
            Step::Descriptors => "cannot set up the daemon's descriptors",
            Step::Stdio => "cannot connect the daemon's stdin, stdout and stderr",
            Step::WorkingDirectory => "cannot enter the working directory",
            Step::Exec => "cannot execute the command",
            Step::Cgroup => "cannot move the daemon into its cgroup",
            Step::ResourceLimits => {
                "cannot set the daemon's resource limits (raising a hard limit needs root)"
            }
            Step::Credentials => {
                "cannot switch to the daemon's user and group (that needs root: CAP_SETUID and CAP_SETGID)"
            }
        }
    }
}

/// The identity the child switches to before `execve`.
pub(super) struct ChildCredentials {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups, `group_count` of them.
    pub groups: *const rustix::process::Gid,
    pub group_count: usize,
}

/// Everything the child reads, prepared by the parent before the clone.
pub(super) struct ChildSetup {
    /// Null-terminated array of program paths to try in turn (the `PATH`
    /// search is done by the parent; the child only calls `execve`).
    pub candidates: *const *const c_char,
    /// Null-terminated `argv`.
    pub argv: *const *const c_char,
    /// Null-terminated `envp`.
    pub envp: *const *const c_char,
    /// Working directory, or null to keep the parent's.
    pub cwd: *const c_char,
    /// The reserved descriptors holding the child's stdin, stdout, stderr.
    pub stdio: [RawFd; 3],
    /// The parent's PID, to detect that it died before the death signal
    /// was armed.
    pub parent: i32,
    /// Clone with `CLONE_FILES` and unshare the low descriptors only (see
    /// the module doc); without it the child starts with a full copy.
    pub share_files: bool,
    /// `cgroup.procs` of the daemon's cgroup, open for writing, or -1: the
    /// child joins the cgroup before anything of the daemon runs.
    pub cgroup_procs: RawFd,
    /// The soft `RLIMIT_NOFILE` to restore before `execve`, when the
    /// manager raised its own (see [`crate::rlimit`]).
    nofile_soft: Option<u64>,
    /// The user and groups to switch to, if the config sets them.
    pub credentials: Option<ChildCredentials>,
    /// The file mode creation mask to set, if the config sets one.
    pub umask: Option<u32>,
    /// The parent-death signal: the daemon's stop signal, which it is
    /// known to stop on (the guard or a later cleanup follows with
    /// SIGKILL once the grace period is over).
    pub death_signal: rustix::process::Signal,
    /// The configured resource limits: a pointer to that many pairs.
    pub rlimits: (*const (c_int, libc::rlimit64), usize),
    /// Written by the child when it fails: the [`Step`] and the errno.
    failed_step: AtomicI32,
    errno: AtomicI32,
}

impl ChildSetup {
    /// A setup with no failure recorded yet.
    pub fn new(
        candidates: *const *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
        cwd: *const c_char,
        stdio: [RawFd; 3],
        share_files: bool,
        cgroup_procs: RawFd,
    ) -> Self {
        ChildSetup {
            cgroup_procs,
            candidates,
            argv,
            envp,
            cwd,
            stdio,
            parent: rustix::process::getpid().as_raw_nonzero().get(),
            share_files,
            nofile_soft: crate::rlimit::daemon_nofile_soft(),
            credentials: None,
            umask: None,
            death_signal: rustix::process::Signal::TERM,
            rlimits: (ptr::null(), 0),
            failed_step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
        }
    }

    /// The step the child failed at and its errno, once the clone returned.
    pub fn failure(&self) -> Option<(Step, io::Error)> {
        let step = Step::from_code(self.failed_step.load(Ordering::Acquire))?;
        let errno = self.errno.load(Ordering::Acquire);
        Some((step, io::Error::from_raw_os_error(errno)))
    }

    fn fail(&self, step: Step, errno: i32) -> c_int {
        self.errno.store(errno, Ordering::Release);
        self.failed_step.store(step as i32, Ordering::Release);
        127
    }
}

/// The child's stack: an anonymous mapping with a guard page below it, so
/// an overflow faults instead of writing over the parent's memory.
pub(crate) struct ChildStack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone and used only by the
// thread that owns it (the spawner), so moving it between threads is sound.
unsafe impl Send for ChildStack {}

impl ChildStack {
    /// Maps the stack.
    pub fn new() -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = STACK_BYTES + page;
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks touches no existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page lies inside the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The mapping's lowest address and its length, as `clone3` takes a
    /// stack.
    pub(crate) fn range(&mut self) -> (*mut c_void, usize) {
        (self.base, self.len)
    }

    /// The highest address, where a downward-growing stack starts (the
    /// mapping is page-aligned, so this is 16-byte aligned).
    pub(crate) fn top(&mut self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, as `clone` expects.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no child can be
        // running on it, since `clone` returns only after exec or exit.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Clones a child that runs [`child_main`] on `stack` and exec's the
/// program described by `setup`. Returns the child's PID and a pidfd for
/// it; whether the child got as far as `execve` is in
/// [`ChildSetup::failure`] (a child that failed has exited and must be
/// reaped by the caller).
///
/// With `into_cgroup` (a cgroup directory), the child is created inside
/// that cgroup by `clone3(CLONE_INTO_CGROUP)`; an error then may mean the
/// kernel or a seccomp policy does not allow it (`ENOSYS`, `EPERM`,
/// `E2BIG`, `EINVAL`), and the caller falls back to a plain clone and the
/// child's write to `cgroup.procs`.
pub(super) fn clone_and_exec(
    setup: &mut ChildSetup,
    stack: &mut ChildStack,
    into_cgroup: Option<RawFd>,
) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: c_int = -1;
    // Block every signal while the child shares our memory: a handler the
    // application installed must not run in the child on our data before
    // the child has reset it. The child unblocks after resetting.
    // SAFETY: sigset_t is plain data; the calls only read and write the
    // two local sets and this thread's signal mask.
    let previous = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        previous
    };
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    if setup.share_files {
        flags |= libc::CLONE_FILES;
    }
    let (pid, clone_error) = match into_cgroup {
        Some(cgroup) => {
            let (base, len) = stack.range();
            let mut args = CloneArgs {
                // The exit signal has a field of its own in clone3.
                flags: (flags & !libc::CSIGNAL) as u64 | CLONE_INTO_CGROUP,
                pidfd: ptr::from_mut(&mut pidfd) as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: base as u64,
                stack_size: len as u64,
                cgroup: cgroup as u64,
                ..CloneArgs::default()
            };
            // SAFETY: as for `clone` below; `args` lives across the call,
            // and the stack range is the mapping `stack` owns.
            match unsafe { clone3(&mut args, child_main, ptr::from_mut(setup).cast()) } {
                pid if pid < 0 => (-1, io::Error::from_raw_os_error(-pid as i32)),
                pid => (pid as i32, io::Error::from_raw_os_error(0)),
            }
        }
        None => {
            // SAFETY: `child_main` only makes system calls on `setup`, which
            // lives until `clone` returns; `CLONE_VFORK` suspends this
            // thread until the child has exec'd or exited, so the child
            // never runs concurrently with code that could change `setup`
            // or reuse `stack`. With `CLONE_PIDFD` the kernel stores the
            // pidfd through the parent-tid pointer.
            let pid = unsafe {
                libc::clone(
                    child_main,
                    stack.top(),
                    flags,
                    ptr::from_mut(setup).cast::<c_void>(),
                    &mut pidfd as *mut c_int,
                )
            };
            (pid, io::Error::last_os_error())
        }
    };
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, ptr::null_mut());
    }
    if pid < 0 {
        return Err(clone_error);
    }
    if pidfd < 0 {
        // A kernel before 5.2 ignores CLONE_PIDFD. The spawner checks for
        // pidfd support when it starts, so this is a last defence: end the
        // child while its unreaped PID is certainly ours.
        // SAFETY: plain system calls on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, ptr::null_mut(), 0);
        }
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel did not return a pidfd (Linux 5.4 or later is needed)",
        ));
    }
    // SAFETY: with CLONE_PIDFD and a successful clone, the kernel stored a
    // fresh pidfd (close-on-exec) that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid, pidfd))
}

/// `CLONE_INTO_CGROUP` (Linux 5.7): the child starts in the cgroup whose
/// directory descriptor is `clone_args.cgroup`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), up to `cgroup` (its second version).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Whether this build can spawn straight into a cgroup with [`clone3`].
pub(super) const CAN_CLONE_INTO_CGROUP: bool = cfg!(target_arch = "x86_64");

/// `clone3(args)` whose child calls `child(arg)` on the stack `args` names
/// and exits with its result; returns the child's PID, or `-errno`.
///
/// Written by hand because neither libc nor the kernel offers a `clone3`
/// wrapper that takes a function: after the system call the child runs
/// on a new stack while sharing this memory (`CLONE_VM`), so it must not
/// return into this function's frame, which lives on the parent's stack.
/// The branch for the child only calls `child` and exits, as glibc's
/// `clone` wrapper does.
///
/// Why: joining a cgroup by a write to `cgroup.procs` takes the kernel's
/// cgroup-migration lock for writing, which waits for an RCU grace period
/// whenever no migration happened just before (8 ms measured per single
/// start) and stalls every fork on the machine meanwhile; a child created
/// inside its cgroup takes that lock only for reading.
///
/// # Safety
/// `args` must describe a valid clone (with `CLONE_VM`, a stack that no
/// one else uses until the child exits or execs, and `CLONE_VFORK` so the
/// parent waits for that), and `child` must only make system calls on
/// data that outlives the child's use of it.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3(
    args: &mut CloneArgs,
    child: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract. In the child (rax 0) the kernel set
    // rsp to the top of the new stack, 16-byte aligned, so `call` gives
    // `child` the stack alignment the ABI wants; r12 and r13 survive the
    // system call (only rax, rcx and r11 are changed). The child never
    // comes back: it leaves through SYS_exit.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") ptr::from_mut(args),
            in("rsi") size_of::<CloneArgs>(),
            in("r12") child,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Elsewhere no child is spawned straight into a cgroup: the caller falls
/// back to `clone` and the child's write to `cgroup.procs`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3(
    _args: &mut CloneArgs,
    _child: extern "C" fn(*mut c_void) -> c_int,
    _arg: *mut c_void,
) -> isize {
    -(libc::ENOSYS as isize)
}

/// The child, between `clone` and `execve`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildSetup` the parent passed to `clone`; it
    // stays alive and unchanged while the parent is suspended.
    let setup = unsafe { &*arg.cast::<ChildSetup>() };
    reset_signal_handlers();

    if let Err(e) = rustix::process::setpgid(None, None) {
        return setup.fail(Step::ProcessGroup, e.raw_os_error());
    }
    if setup.cgroup_procs >= 0 {
        // Writing 0 moves the writer. With CLONE_FILES the descriptor is
        // the parent's, still open: the parent is suspended.
        // SAFETY: writes one byte from a static string to a descriptor.
        if unsafe { libc::write(setup.cgroup_procs, b"0".as_ptr().cast(), 1) } != 1 {
            return setup.fail(Step::Cgroup, last_errno());
        }
    }
    // Limits before the change of user: raising a hard limit needs the
    // manager's privilege. The open-file soft limit goes back to what the
    // manager had before raising its own, unless the config sets one.
    if let Some(soft) = setup.nofile_soft {
        restore_nofile_soft(soft);
    }
    if setup.rlimits.1 > 0 {
        // SAFETY: the parent's vector of that length, alive and unchanged
        // while the parent is suspended.
        let rlimits = unsafe { std::slice::from_raw_parts(setup.rlimits.0, setup.rlimits.1) };
        for (resource, value) in rlimits {
            // SAFETY: raw prlimit64 on this process, reading one plain
            // struct; it changes only the child's own limits.
            let set = unsafe {
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    *resource,
                    ptr::from_ref(value),
                    ptr::null_mut::<libc::rlimit64>(),
                )
            };
            if set != 0 {
                return setup.fail(Step::ResourceLimits, last_errno());
            }
        }
    }
    if let Some(mask) = setup.umask {
        rustix::process::umask(rustix::fs::Mode::from_bits_truncate(mask));
    }
    if let Some(credentials) = &setup.credentials {
        if let Err(e) = switch_credentials(credentials) {
            return setup.fail(Step::Credentials, e.raw_os_error());
        }
    }
    // The daemon gets its stop signal when the spawning thread dies.
    // Armed after the change of user, which clears it.
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(setup.death_signal)) {
        return setup.fail(Step::ParentDeathSignal, e.raw_os_error());
    }
    // The parent may have died before the signal was armed; then it would
    // never come.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(setup.parent) {
        return setup.fail(Step::ParentDeathSignal, libc::ESRCH);
    }

    if setup.share_files {
        // Leave the shared table, taking only the descriptors below the
        // highest reserved one (see the module doc).
        let first_unshared = setup.stdio.iter().max().copied().unwrap_or(2) + 1;
        // SAFETY: a raw system call on integers; it changes only this
        // child's descriptor table.
        let unshared = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first_unshared as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            )
        } == 0;
        // Without close_range, copy the whole table instead.
        // SAFETY: as above.
        if !unshared && unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
            return setup.fail(Step::Descriptors, last_errno());
        }
    }
    // SAFETY (all three): the reserved descriptors are open in the
    // parent, and so in this child's copy of its table.
    let [stdin, stdout, stderr] = setup.stdio.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
    let connected = rustix::stdio::dup2_stdin(stdin)
        .and_then(|()| rustix::stdio::dup2_stdout(stdout))
        .and_then(|()| rustix::stdio::dup2_stderr(stderr));
    if let Err(e) = connected {
        return setup.fail(Step::Stdio, e.raw_os_error());
    }
    // Nothing but stdio is passed on, not even a descriptor the application
    // leaked without close-on-exec. Where close_range is missing or denied,
    // exec still closes every close-on-exec descriptor.
    // SAFETY: closes descriptors of this child's own table only.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
    }
    if !setup.cwd.is_null() {
        // SAFETY: `cwd` is a NUL-terminated string the parent owns.
        if unsafe { libc::chdir(setup.cwd) } != 0 {
            return setup.fail(Step::WorkingDirectory, last_errno());
        }
    }
    unblock_signals();
    exec_candidates(setup)
}

/// Sets the supplementary groups, then the gid, then the uid (after which
/// the first two would be refused), real, effective and saved alike, so
/// the daemon cannot switch back.
///
/// These are rustix's raw per-thread system calls, not the C library's
/// `setuid` family: glibc makes every thread of the process change its
/// ids by signalling them, and this child shares the manager's memory,
/// where glibc's thread list names the manager's threads.
fn switch_credentials(credentials: &ChildCredentials) -> rustix::io::Result<()> {
    use rustix::{
        process::{Gid, Uid},
        thread,
    };
    // SAFETY: the parent's vector of that length, alive and unchanged
    // while the parent is suspended.
    let groups = unsafe { std::slice::from_raw_parts(credentials.groups, credentials.group_count) };
    thread::set_thread_groups(groups)?;
    let gid = Gid::from_raw(credentials.gid);
    thread::set_thread_res_gid(gid, gid, gid)?;
    let uid = Uid::from_raw(credentials.uid);
    thread::set_thread_res_uid(uid, uid, uid)
}

/// Tries each candidate path like `execvp` does: a missing file or a
/// non-directory component moves on to the next, a permission error is
/// remembered and also moves on; anything else stops the search.
fn exec_candidates(setup: &ChildSetup) -> c_int {
    let mut denied = false;
    let mut errno = libc::ENOENT;
    let mut at = setup.candidates;
    loop {
        // SAFETY: `candidates` is a null-terminated array of pointers to
        // NUL-terminated strings owned by the parent.
        let path = unsafe { *at };
        if path.is_null() {
            break;
        }
        // SAFETY: all three arrays are null-terminated and owned by the
        // parent, which is suspended; execve returns only on failure.
        unsafe {
            libc::execve(path, setup.argv, setup.envp);
        }
        errno = last_errno();
        match errno {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            // Unlike execvp, no retry through /bin/sh for a file that is
            // not an executable: tend never runs a command through a shell
            // it was not given.
            _ => return setup.fail(Step::Exec, errno),
        }
        // SAFETY: not past the terminating null, checked above.
        at = unsafe { at.add(1) };
    }
    setup.fail(Step::Exec, if denied { libc::EACCES } else { errno })
}

/// Resets every signal the application catches to its default action, and
/// SIGPIPE too (Rust programs ignore it, and an ignored signal stays
/// ignored across exec). Other ignored signals stay ignored, as with the
/// standard library's spawn.
pub(crate) fn reset_signal_handlers() {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction reads and writes plain structs on this stack;
        // without CLONE_SIGHAND the child has its own handler table.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, ptr::null(), &mut current) != 0 {
                continue;
            }
            let handler = current.sa_sigaction;
            let caught = handler != libc::SIG_DFL && handler != libc::SIG_IGN;
            if caught || (signal == libc::SIGPIPE && handler == libc::SIG_IGN) {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, ptr::null_mut());
            }
        }
    }
}

/// Lowers the soft `RLIMIT_NOFILE` to `soft` (the limit the manager had
/// before raising it), keeping the hard limit. Best effort: a daemon that
/// keeps the higher limit still runs.
fn restore_nofile_soft(soft: u64) {
    // SAFETY: raw prlimit64 on this process with plain structs on this
    // stack; it changes only the child's own limits.
    unsafe {
        let mut current: libc::rlimit64 = std::mem::zeroed();
        if libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_NOFILE,
            ptr::null::<libc::rlimit64>(),
            &mut current as *mut libc::rlimit64,
        ) != 0
        {
            return;
        }
        let restored = libc::rlimit64 {
            rlim_cur: soft.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_NOFILE,
            &restored as *const libc::rlimit64,
            ptr::null_mut::<libc::rlimit64>(),
        );
    }
}

/// The daemon starts with no signal blocked.
fn unblock_signals() {
    // SAFETY: plain data; changes only this child's signal mask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
    }
}

/// errno of the last failed libc call. The child shares the spawning
/// thread's thread-local storage, so this is that thread's errno slot; the
/// thread is suspended and reads no errno across the clone.
fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
