//! `testd`: a small, scriptable plugin daemon for tend's integration tests and
//! benchmarks.
//!
//! By default it binds a Unix stream socket at `$SOCKET_PATH` (or the path
//! given with `--socket PATH`), listens, and serves newline-delimited
//! JSON-RPC 2.0 on every accepted connection, one thread per connection:
//! `ping` answers `"pong"`, `echo` answers with its `params` verbatim, and
//! any other method gets error `-32601`. Requests without an `id` are
//! notifications and get no reply. On SIGTERM (or SIGINT) it removes the
//! socket file it created and exits 0. Without a socket path it serves
//! nothing and just waits for a signal.
//!
//! "Ready" below means: right after `listen()` returned (and the
//! `--timestamps` line was written). With `--never-bind`, or without a socket
//! path, the post-ready actions run at the point where the daemon would have
//! bound. Durations are in milliseconds. Every line written to stdout is
//! flushed immediately. Flags may also be written as `--flag=VALUE`.
//!
//! Start-up:
//! - `--socket PATH`: socket path (overrides `$SOCKET_PATH`).
//! - `--record-start PATH`: append own pid to PATH first thing (counts spawns).
//! - `--fail-starts N`: with `--record-start`, the first N processes started
//!   with that PATH behave as with `--exit-immediately`; later ones run
//!   normally (a daemon whose first starts fail).
//! - `--stdout TEXT` / `--stderr TEXT`: write TEXT and a newline to stdout /
//!   stderr at start (repeatable; written in command-line order).
//! - `--print-env NAME`: print `env NAME=<value>` or `env NAME unset`
//!   (repeatable).
//! - `--print-cwd`: print `cwd <path>`.
//! - `--no-parent-death-signal`: first thing, disarm the parent-death
//!   signal tend armed (as the kernel does for a daemon that changes its
//!   uid), so that only the guard or a cleanup can stop it when its
//!   manager dies.
//! - `--exit-immediately`: after the start-up output, exit with the exit code
//!   before binding.
//! - `--exit-code N`: exit code for `--exit-immediately` and `--exit-after`
//!   (default 1).
//!
//! Binding and listening:
//! - `--bind-delay MS`: wait MS before binding.
//! - `--listen-delay MS`: bind, then wait MS before `listen()`.
//! - `--never-bind`: never create the socket; just wait for signals.
//! - `--backlog N`: listen backlog (default 128, or 1 with `--never-accept`).
//! - `--timestamps PATH`: append `<start_ns> <listen_ns>` (CLOCK_REALTIME
//!   nanoseconds at process start and right after `listen()`).
//!
//! After ready (in this order):
//! - `--pid-file PATH`: write own pid to PATH.
//! - `--drop-to-uid UID`: set the group and user ids to UID (as
//!   `memcached -u nobody` does after binding; the kernel then clears the
//!   parent-death signal).
//! - `--rewrite-environ`: overwrite the environment block in place, as a
//!   program that sets its process title does (nginx, redis, PostgreSQL),
//!   so `/proc/<pid>/environ` no longer shows it; children forked after it
//!   inherit the rewritten block.
//! - `--fork-children N`: fork N children in the same process group that
//!   sleep in `pause()`; the parent prints `child <pid>` for each. With
//!   `--children-ignore-sigterm` the children ignore SIGTERM (otherwise the
//!   default disposition kills them). SIGCHLD is then ignored, so children
//!   that die while the parent lives are reaped at once (no zombies).
//! - `--detach-child`: fork a child that leaves the process group and the
//!   session (`setsid`) but stays this process's child, sleeping forever;
//!   prints `detached <pid>`.
//! - `--double-fork`: create a grandchild in its own session (fork, setsid,
//!   fork, intermediate exits) that sleeps forever; prints `escaped <pid>`.
//! - `--flood BYTES`: write BYTES bytes to stdout as fast as possible, as
//!   100-byte lines of `x` (`--flood-no-newline`: one line, no newline;
//!   `--flood-invalid-utf8`: bytes 0xff 0xfe instead of `x`), then serve.
//! - `--close-stdio`: close the stdout and stderr pipes (fds 1 and 2 are
//!   pointed at /dev/null so they cannot be reused by sockets).
//! - `--exit-after MS`: exit with the exit code after MS (a crash; the socket
//!   file is left behind).
//! - `--abort-after MS`: call `abort()` (SIGABRT, no core dump) after MS.
//! - `--stop-accepting-after MS`: close the listener after MS, keeping the
//!   socket file, so connects are refused.
//! - `--faults-once PATH`: only the first process started with this PATH
//!   misbehaves: it creates PATH (exclusively) and keeps `--exit-after`,
//!   `--abort-after`, `--stop-accepting-after`, `--never-accept` and
//!   `--wedge`; a process that finds PATH already there ignores those five
//!   flags, so a restarted daemon stays healthy.
//! - `--healthy-once PATH`: the reverse: only the first process started with
//!   this PATH (the one that creates it) drops `--exit-immediately` and the
//!   five faults above and is healthy; every later one keeps them, so a
//!   daemon that came up once crash-loops on every restart.
//!
//! Serving:
//! - `--never-accept`: listen but never accept; connections queue up until
//!   the backlog is full.
//! - `--wedge`: accept connections but never read or answer them, keeping
//!   them open.
//! - `--log-accepts`: print `accepted` for every connection accepted.
//!
//! Readiness and health probe modes (see `probes.rs`):
//! - `--tcp ADDR`: also bind a TCP listener at ADDR (`127.0.0.1:PORT`),
//!   after `--bind-delay`, listening after `--listen-delay`; it accepts and
//!   closes (`--wedge`: accepts and never answers; `--http`: answers HTTP;
//!   `--stop-accepting-after MS`: stops listening after MS).
//! - `--http`: answer every connection (Unix or TCP) with an HTTP response
//!   instead of JSON-RPC; `--http-status N` sets its status (default 200);
//!   `--http-garbage` answers bytes that are not HTTP.
//! - `--announce TEXT`: print TEXT to stdout when ready.
//! - `--notify`: send `READY=1`, `STATUS=<--notify-status or "ready">` and
//!   `MAINPID=<own pid>` to `$NOTIFY_SOCKET` when ready (from a thread, so
//!   serving goes on); `--notify-wait-file PATH` first waits until PATH
//!   exists; `--notify-first TEXT` then sends TEXT as a datagram of its
//!   own; `--notify-ready-file PATH` then waits until PATH exists before
//!   `READY=1`; `--notify-garbage` first sends empty, malformed, non-UTF-8 and
//!   oversized (60 kB) datagrams; `--notify-stamp PATH` appends
//!   `<CLOCK_REALTIME ns>` right before `READY=1` is sent.
//! - `--watchdog-pings N`: after that, send `WATCHDOG=1` every quarter of
//!   `$WATCHDOG_USEC`, N times (forever when N is negative), then print
//!   `watchdog pings stopped`.
//!
//! Signals:
//! - `--ignore-sigterm`: set SIGTERM to SIG_IGN (SIGINT still stops it).
//! - `--term-delay MS`: on SIGTERM, keep serving for MS before cleaning up
//!   and exiting.
//! - `--record-signal PATH`: also stop on SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2
//!   and SIGWINCH, and append the name of the signal that stopped it
//!   (`SIGINT`) and a newline to PATH before exiting.
//!
//! Unknown flags or bad values print the usage to stderr and exit 100.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

mod probes;

const USAGE: &str = "\
usage: testd [--socket PATH] [--bind-delay MS] [--listen-delay MS] [--never-bind]
             [--exit-code N] [--exit-immediately] [--exit-after MS] [--abort-after MS]
             [--stderr TEXT]... [--stdout TEXT]... [--ignore-sigterm] [--term-delay MS]
             [--fork-children N] [--children-ignore-sigterm] [--double-fork] [--detach-child]
             [--stop-accepting-after MS] [--never-accept] [--backlog N] [--wedge] [--log-accepts]
             [--pid-file PATH] [--timestamps PATH] [--record-start PATH] [--fail-starts N]
             [--faults-once PATH] [--healthy-once PATH]
             [--flood BYTES] [--flood-no-newline] [--flood-invalid-utf8]
             [--close-stdio] [--print-env NAME]... [--print-cwd]
             [--tcp ADDR] [--http] [--http-status N] [--http-garbage] [--announce TEXT]
             [--notify] [--notify-status TEXT] [--notify-wait-file PATH] [--notify-garbage]
             [--notify-first TEXT] [--notify-ready-file PATH]
             [--notify-stamp PATH] [--watchdog-pings N]
             [--drop-to-uid UID] [--rewrite-environ] [--record-signal PATH]
             [--no-parent-death-signal]
The socket path defaults to $SOCKET_PATH; durations are in milliseconds.";

/// Exit code for command-line errors.
const USAGE_EXIT: i32 = 100;

/// The socket file this process created, removed again on SIGTERM/SIGINT.
/// Binding happens with this lock held, so a signal never races a bind.
static BOUND_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Something to print at start, kept in command-line order.
enum StartOutput {
    Stdout(String),
    Stderr(String),
    Env(String),
    Cwd,
}

/// Parsed command line.
struct Opts {
    socket: Option<PathBuf>,
    bind_delay: u64,
    listen_delay: u64,
    never_bind: bool,
    exit_code: i32,
    exit_immediately: bool,
    exit_after: Option<u64>,
    abort_after: Option<u64>,
    start_output: Vec<StartOutput>,
    ignore_sigterm: bool,
    term_delay: u64,
    fork_children: u32,
    children_ignore_sigterm: bool,
    double_fork: bool,
    detach_child: bool,
    stop_accepting_after: Option<u64>,
    never_accept: bool,
    backlog: Option<i32>,
    wedge: bool,
    log_accepts: bool,
    pid_file: Option<PathBuf>,
    timestamps: Option<PathBuf>,
    record_start: Option<PathBuf>,
    no_parent_death_signal: bool,
    faults_once: Option<PathBuf>,
    healthy_once: Option<PathBuf>,
    flood: Option<u64>,
    flood_no_newline: bool,
    flood_invalid_utf8: bool,
    close_stdio: bool,
    drop_to_uid: Option<u32>,
    rewrite_environ: bool,
    tcp: Option<String>,
    announce: Option<String>,
    notify: probes::NotifyPlan,
    record_signal: Option<PathBuf>,
    fail_starts: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            socket: None,
            bind_delay: 0,
            listen_delay: 0,
            never_bind: false,
            exit_code: 1,
            exit_immediately: false,
            exit_after: None,
            abort_after: None,
            start_output: Vec::new(),
            ignore_sigterm: false,
            term_delay: 0,
            fork_children: 0,
            children_ignore_sigterm: false,
            double_fork: false,
            detach_child: false,
            stop_accepting_after: None,
            never_accept: false,
            backlog: None,
            wedge: false,
            log_accepts: false,
            pid_file: None,
            timestamps: None,
            record_start: None,
            no_parent_death_signal: false,
            faults_once: None,
            healthy_once: None,
            flood: None,
            flood_no_newline: false,
            flood_invalid_utf8: false,
            close_stdio: false,
            drop_to_uid: None,
            rewrite_environ: false,
            tcp: None,
            announce: None,
            notify: probes::NotifyPlan::default(),
            record_signal: None,
            fail_starts: 0,
        }
    }
}

fn usage_exit(msg: &str) -> ! {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "testd: {msg}\n{USAGE}");
    let _ = err.flush();
    std::process::exit(USAGE_EXIT);
}

fn parse_num<T: std::str::FromStr>(flag: &str, value: OsString) -> T {
    match value.to_str().and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None => usage_exit(&format!("bad value for {flag}: {value:?}")),
    }
}

fn parse_args(args: impl Iterator<Item = OsString>) -> Opts {
    let mut o = Opts::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else {
            usage_exit(&format!("unknown argument {arg:?}"));
        };
        // Accept both `--flag VALUE` and `--flag=VALUE`.
        let (flag, mut inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(OsString::from(v))),
            _ => (arg.to_owned(), None),
        };
        let mut value = || -> OsString {
            inline
                .take()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage_exit(&format!("{flag} needs a value")))
        };
        let text = |v: OsString| v.to_string_lossy().into_owned();
        match flag.as_str() {
            "--socket" => o.socket = Some(value().into()),
            "--bind-delay" => o.bind_delay = parse_num(&flag, value()),
            "--listen-delay" => o.listen_delay = parse_num(&flag, value()),
            "--never-bind" => o.never_bind = true,
            "--exit-code" => o.exit_code = parse_num(&flag, value()),
            "--exit-immediately" => o.exit_immediately = true,
            "--exit-after" => o.exit_after = Some(parse_num(&flag, value())),
            "--abort-after" => o.abort_after = Some(parse_num(&flag, value())),
            "--stderr" => o.start_output.push(StartOutput::Stderr(text(value()))),
            "--stdout" => o.start_output.push(StartOutput::Stdout(text(value()))),
            "--print-env" => o.start_output.push(StartOutput::Env(text(value()))),
            "--print-cwd" => o.start_output.push(StartOutput::Cwd),
            "--ignore-sigterm" => o.ignore_sigterm = true,
            "--term-delay" => o.term_delay = parse_num(&flag, value()),
            "--fork-children" => o.fork_children = parse_num(&flag, value()),
            "--children-ignore-sigterm" => o.children_ignore_sigterm = true,
            "--double-fork" => o.double_fork = true,
            "--detach-child" => o.detach_child = true,
            "--stop-accepting-after" => o.stop_accepting_after = Some(parse_num(&flag, value())),
            "--never-accept" => o.never_accept = true,
            "--backlog" => o.backlog = Some(parse_num(&flag, value())),
            "--wedge" => o.wedge = true,
            "--log-accepts" => o.log_accepts = true,
            "--pid-file" => o.pid_file = Some(value().into()),
            "--timestamps" => o.timestamps = Some(value().into()),
            "--record-start" => o.record_start = Some(value().into()),
            "--no-parent-death-signal" => o.no_parent_death_signal = true,
            "--faults-once" => o.faults_once = Some(value().into()),
            "--healthy-once" => o.healthy_once = Some(value().into()),
            "--flood" => o.flood = Some(parse_num(&flag, value())),
            "--flood-no-newline" => o.flood_no_newline = true,
            "--flood-invalid-utf8" => o.flood_invalid_utf8 = true,
            "--close-stdio" => o.close_stdio = true,
            "--drop-to-uid" => o.drop_to_uid = Some(parse_num(&flag, value())),
            "--rewrite-environ" => o.rewrite_environ = true,
            "--tcp" => o.tcp = Some(text(value())),
            "--http" => probes::HTTP.store(true, std::sync::atomic::Ordering::Relaxed),
            "--http-status" => probes::HTTP_STATUS.store(
                parse_num(&flag, value()),
                std::sync::atomic::Ordering::Relaxed,
            ),
            "--http-garbage" => {
                probes::HTTP.store(true, std::sync::atomic::Ordering::Relaxed);
                probes::HTTP_GARBAGE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            "--announce" => o.announce = Some(text(value())),
            "--notify" => o.notify.ready = true,
            "--notify-status" => o.notify.status = Some(text(value())),
            "--notify-wait-file" => o.notify.wait_file = Some(value().into()),
            "--notify-first" => o.notify.first = Some(text(value())),
            "--notify-ready-file" => o.notify.ready_file = Some(value().into()),
            "--notify-garbage" => o.notify.garbage = true,
            "--notify-stamp" => o.notify.ready_stamp = Some(value().into()),
            "--watchdog-pings" => o.notify.watchdog_pings = Some(parse_num(&flag, value())),
            "--record-signal" => o.record_signal = Some(value().into()),
            "--fail-starts" => o.fail_starts = parse_num(&flag, value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => usage_exit(&format!("unknown argument {arg:?}")),
        }
        if inline.is_some() {
            usage_exit(&format!("{flag} takes no value"));
        }
    }
    o
}

/// Whether this process is the first to create `path` (exclusively).
fn first_to_create(path: &PathBuf) -> bool {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .is_ok()
}

/// Drops every fault `--faults-once` and `--healthy-once` control.
fn drop_faults(o: &mut Opts) {
    o.exit_after = None;
    o.abort_after = None;
    o.stop_accepting_after = None;
    o.never_accept = false;
    o.wedge = false;
}

/// Applies `--faults-once` (the first process to create the file keeps its
/// faults; every later one drops them) and `--healthy-once` (the first one
/// drops them, and `--exit-immediately` too; every later one keeps them).
fn apply_faults_once(o: &mut Opts) {
    if o.faults_once.as_ref().is_some_and(|p| !first_to_create(p)) {
        drop_faults(o);
    }
    if o.healthy_once.as_ref().is_some_and(first_to_create) {
        drop_faults(o);
        o.exit_immediately = false;
    }
}

/// Writes one line to stdout and flushes it; errors (closed pipe) are ignored.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Writes one line to stderr; errors are ignored.
fn say_err(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Appends `line` (which must end in a newline) to `path` with one write.
fn append_line(path: &PathBuf, line: &str) {
    let res = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        say_err(&format!("testd: cannot append to {}: {e}", path.display()));
    }
}

/// Blocks forever without using CPU. Signals are handled by the signal thread.
fn wait_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Builds a signal set from a list of signals.
fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is a plain C struct for which all-zeroes is a valid
    // value; sigemptyset/sigaddset then initialise it properly.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t and the signals are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Sets the disposition of `sig` to `handler` (SIG_IGN or SIG_DFL).
/// Async-signal-safe, so it may be used in a forked child.
fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: sigaction is plain old data; zeroed is a valid starting value
    // (empty mask, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    // SAFETY: `act` is a fully initialised sigaction and the handler is
    // SIG_IGN or SIG_DFL, not a Rust function.
    unsafe {
        libc::sigaction(sig, &act, std::ptr::null_mut());
    }
}

/// Blocks SIGTERM/SIGINT in this (the only) thread so that every thread
/// spawned later inherits the mask, and starts a thread that waits for them
/// with `sigwait`, removes the socket file and exits 0.
fn setup_signals(ignore_sigterm: bool, term_delay: u64, record: Option<PathBuf>) {
    let mut signals = vec![libc::SIGINT];
    if ignore_sigterm {
        set_disposition(libc::SIGTERM, libc::SIG_IGN);
    } else {
        signals.push(libc::SIGTERM);
    }
    if record.is_some() {
        signals.extend(RECORDED_SIGNALS.iter().map(|&(signal, _)| signal));
    }
    let set = sigset(&signals);
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is
    // allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        say_err("testd: pthread_sigmask failed");
        std::process::exit(USAGE_EXIT);
    }
    std::thread::spawn(move || {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset_t that stays alive for the
            // call and `sig` is a valid out-pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc == 0 {
                if let Some(path) = &record {
                    let name = RECORDED_SIGNALS
                        .iter()
                        .chain(&[(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")])
                        .find(|&&(signal, _)| signal == sig)
                        .map_or("unknown", |&(_, name)| name);
                    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
                        let _ = writeln!(file, "{name}");
                    }
                }
                break;
            }
        }
        if term_delay > 0 {
            sleep_ms(term_delay);
        }
        let guard = BOUND_PATH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = guard.as_ref() {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    });
}

/// The signals `--record-signal` also stops on, with their names.
const RECORDED_SIGNALS: &[(libc::c_int, &str)] = &[
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGWINCH, "SIGWINCH"),
];

/// Prepares a freshly forked child: SIGTERM disposition, SIGINT default, an
/// empty signal mask and no inherited fds above stderr (so the child does
/// not keep the listener or other sockets alive). Only async-signal-safe
/// calls, as the parent is multi-threaded.
fn child_setup(ignore_sigterm: bool) {
    let term = if ignore_sigterm {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    set_disposition(libc::SIGTERM, term);
    set_disposition(libc::SIGINT, libc::SIG_DFL);
    let empty = sigset(&[]);
    // SAFETY: `empty` is an initialised sigset_t; close_range/close only act
    // on this process's fd table. Both are async-signal-safe.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let first: libc::c_uint = 3;
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) != 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
    }
}

/// Sleeps forever in pause(); only a signal ends the process.
fn child_sleep_forever() -> ! {
    loop {
        // SAFETY: pause() has no preconditions.
        unsafe {
            libc::pause();
        }
    }
}

/// Forks one child that sleeps forever in the same process group.
fn fork_child(ignore_sigterm: bool) -> Option<libc::pid_t> {
    // SAFETY: the child only calls async-signal-safe functions (sigaction,
    // sigprocmask, close_range, pause) before it dies by a signal.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => None,
        0 => {
            child_setup(ignore_sigterm);
            child_sleep_forever()
        }
        pid => Some(pid),
    }
}

/// Forks one child that leaves the process group and session (`setsid`)
/// but stays this process's child; returns its pid.
fn detach_child() -> Option<libc::pid_t> {
    // SAFETY: the child only calls async-signal-safe functions (setsid,
    // sigaction, sigprocmask, close_range, pause) before it dies by a
    // signal.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => None,
        0 => {
            // SAFETY: setsid has no preconditions; a forked child is never
            // a group leader, so it succeeds.
            unsafe {
                libc::setsid();
            }
            child_setup(false);
            child_sleep_forever()
        }
        pid => Some(pid),
    }
}

/// Creates a grandchild in a new session (escaping the process group) and
/// returns its pid.
fn double_fork() -> Option<libc::pid_t> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child and grandchild only call async-signal-safe functions
    // (setsid, fork, write, _exit, sigaction, sigprocmask, close, pause).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls only; `wr` is the open write end of
        // the pipe and `gpid` lives for the duration of write().
        unsafe {
            libc::setsid();
            let gpid = libc::fork();
            if gpid == 0 {
                child_setup(false);
                child_sleep_forever();
            }
            let bytes = gpid.to_ne_bytes();
            libc::write(wr, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    // SAFETY: `wr` is our open write end; closing it lets read() see EOF.
    unsafe {
        libc::close(wr);
    }
    let mut result = None;
    if pid > 0 {
        let mut buf = [0u8; std::mem::size_of::<libc::pid_t>()];
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        let mut status = 0;
        // SAFETY: `pid` is our own child; `status` is a valid out-pointer.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
        }
        let gpid = libc::pid_t::from_ne_bytes(buf);
        if n == buf.len() as isize && gpid > 0 {
            result = Some(gpid);
        }
    }
    // SAFETY: `rd` is our open read end, not used afterwards.
    unsafe {
        libc::close(rd);
    }
    result
}

/// Writes `bytes` bytes of filler to stdout as fast as possible.
fn flood(bytes: u64, no_newline: bool, invalid_utf8: bool) {
    const LINE: usize = 100;
    const CHUNK: usize = LINE * 655;
    let mut buf = vec![0u8; CHUNK];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = match (invalid_utf8, i % 2) {
            (false, _) => b'x',
            (true, 0) => 0xff,
            (true, _) => 0xfe,
        };
        if !no_newline && i % LINE == LINE - 1 {
            *b = b'\n';
        }
    }
    let mut out = std::io::stdout().lock();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let piece = &mut buf[..n];
        let last = piece[n - 1];
        if !no_newline && n < CHUNK {
            // Final partial chunk: end it with a newline.
            piece[n - 1] = b'\n';
        }
        if out.write_all(piece).is_err() {
            break;
        }
        piece[n - 1] = last;
        left -= n as u64;
    }
    let _ = out.flush();
}

/// Points fds 1 and 2 at /dev/null, closing the original stdout/stderr
/// pipes without leaving the fd numbers free for reuse by sockets.
fn close_stdio() {
    let _ = std::io::stdout().flush();
    let devnull = match OpenOptions::new().write(true).open("/dev/null") {
        Ok(f) => f,
        Err(_) => return,
    };
    // SAFETY: dup2 onto fds 1 and 2 atomically replaces them; `devnull` is an
    // open fd owned by this function and closed when it is dropped.
    unsafe {
        libc::dup2(devnull.as_raw_fd(), 1);
        libc::dup2(devnull.as_raw_fd(), 2);
    }
}

/// Creates, binds and (after `listen_delay`) listens on the Unix socket.
fn bind_and_listen(path: &PathBuf, listen_delay: u64, backlog: i32) -> std::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path.as_path())?;
    {
        let mut bound = BOUND_PATH.lock().unwrap_or_else(|e| e.into_inner());
        // Remove a stale socket file left by a previous (crashed) instance.
        let _ = std::fs::remove_file(path);
        rustix::net::bind(&fd, &addr)?;
        *bound = Some(path.clone());
    }
    if listen_delay > 0 {
        sleep_ms(listen_delay);
    }
    rustix::net::listen(&fd, backlog)?;
    Ok(fd)
}

/// Waits until `listener` is readable or `stop` (a pipe read end) becomes
/// readable. Returns false when stop fired.
fn wait_readable(listener: RawFd, stop: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of
        // the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            continue; // EINTR
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

/// Accept loop. Returns when the listener was closed by
/// `--stop-accepting-after`.
fn serve(listener: UnixListener, stop_after: Option<u64>, wedge: bool, log_accepts: bool) {
    let stop_rd = stop_after.map(|ms| {
        let (rd, wr) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap_or_else(|e| {
                say_err(&format!("testd: pipe: {e}"));
                std::process::exit(USAGE_EXIT);
            });
        std::thread::spawn(move || {
            sleep_ms(ms);
            drop(wr); // the read end sees EOF
        });
        rd
    });
    let mut wedged: Vec<UnixStream> = Vec::new();
    loop {
        let stop_fd = stop_rd.as_ref().map(|rd| rd.as_raw_fd());
        if stop_fd.is_some_and(|fd| !wait_readable(listener.as_raw_fd(), fd)) {
            drop(listener);
            return;
        }
        let accepted = listener.accept();
        if log_accepts && accepted.is_ok() {
            say("accepted");
        }
        match accepted {
            Ok((stream, _)) if wedge => wedged.push(stream),
            Ok((stream, _)) => {
                std::thread::spawn(move || handle_connection(stream));
            }
            Err(e) => {
                // E.g. EMFILE: back off briefly rather than spin.
                say_err(&format!("testd: accept: {e}"));
                sleep_ms(10);
            }
        }
    }
}

fn handle_connection(stream: UnixStream) {
    if probes::HTTP.load(std::sync::atomic::Ordering::Relaxed) {
        return probes::answer_http(stream);
    }
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(mut reply) = respond(&line) {
            reply.push(b'\n');
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// Computes the reply to one request line, or None for notifications and
/// blank lines.
fn respond(line: &[u8]) -> Option<Vec<u8>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let req = match parse_request(line) {
        Ok(req) => req,
        Err(JsonError::Parse) => return Some(error_reply(b"null", -32700, "Parse error")),
        Err(JsonError::NotObject) => {
            return Some(error_reply(b"null", -32600, "Invalid request"));
        }
    };
    let id_ok = req
        .id
        .is_none_or(|id| matches!(id[0], b'"' | b'-' | b'0'..=b'9' | b'n'));
    let method = match req.method {
        Some(m) if m[0] == b'"' && id_ok => &m[1..m.len() - 1],
        _ => {
            return Some(error_reply(
                req.id.filter(|_| id_ok).unwrap_or(b"null"),
                -32600,
                "Invalid request",
            ));
        }
    };
    let id = req.id?; // notification: no reply
    let result: &[u8] = match method {
        b"ping" => b"\"pong\"",
        b"echo" => req.params.unwrap_or(b"null"),
        _ => return Some(error_reply(id, -32601, "Method not found")),
    };
    let mut out = Vec::with_capacity(result.len() + id.len() + 32);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    Some(out)
}

fn error_reply(id: &[u8], code: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(
        format!(",\"error\":{{\"code\":{code},\"message\":\"{message}\"}}}}").as_bytes(),
    );
    out
}

/// Raw JSON texts of the interesting top-level members of a request.
struct Request<'a> {
    id: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    params: Option<&'a [u8]>,
}

#[derive(Debug)]
enum JsonError {
    /// Not valid JSON.
    Parse,
    /// Valid JSON, but not an object.
    NotObject,
}

/// Maximum nesting depth accepted in a request.
const MAX_DEPTH: usize = 256;

/// A minimal validating JSON scanner that returns raw value slices.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(JsonError::Parse)
        }
    }

    /// Scans a string starting at the opening quote; returns its raw text
    /// including the quotes.
    fn string(&mut self) -> Result<&'a [u8], JsonError> {
        let start = self.i;
        self.expect(b'"')?;
        loop {
            match self.peek().ok_or(JsonError::Parse)? {
                b'"' => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i]);
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek().ok_or(JsonError::Parse)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(JsonError::Parse)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(JsonError::Parse);
                            }
                            self.i += 5;
                        }
                        _ => return Err(JsonError::Parse),
                    }
                }
                c if c < 0x20 => return Err(JsonError::Parse),
                _ => self.i += 1,
            }
        }
    }

    /// Scans any JSON value; returns its raw text.
    fn value(&mut self, depth: usize) -> Result<&'a [u8], JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::Parse);
        }
        let start = self.i;
        match self.peek().ok_or(JsonError::Parse)? {
            b'"' => {
                self.string()?;
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        self.string()?;
                        self.ws();
                        self.expect(b':')?;
                        self.ws();
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(JsonError::Parse),
                        }
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        self.value(depth + 1)?;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(JsonError::Parse),
                        }
                    }
                }
            }
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.i..];
                let lit: &[u8] = [&b"true"[..], b"false", b"null"]
                    .into_iter()
                    .find(|l| rest.starts_with(l))
                    .ok_or(JsonError::Parse)?;
                self.i += lit.len();
            }
            b'-' | b'0'..=b'9' => {
                while self
                    .peek()
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    self.i += 1;
                }
                let num =
                    std::str::from_utf8(&self.b[start..self.i]).map_err(|_| JsonError::Parse)?;
                if num.parse::<f64>().is_err() || num.starts_with('+') {
                    return Err(JsonError::Parse);
                }
            }
            _ => return Err(JsonError::Parse),
        }
        Ok(&self.b[start..self.i])
    }
}

/// Extracts `id`, `method` and `params` from a request object.
fn parse_request(line: &[u8]) -> Result<Request<'_>, JsonError> {
    let mut s = Scanner { b: line, i: 0 };
    s.ws();
    let is_object = s.peek() == Some(b'{');
    let mut req = Request {
        id: None,
        method: None,
        params: None,
    };
    if is_object {
        s.i += 1;
        s.ws();
        if s.peek() == Some(b'}') {
            s.i += 1;
        } else {
            loop {
                s.ws();
                let key = s.string()?;
                s.ws();
                s.expect(b':')?;
                s.ws();
                let value = s.value(1)?;
                match &key[1..key.len() - 1] {
                    b"id" => req.id = Some(value),
                    b"method" => req.method = Some(value),
                    b"params" => req.params = Some(value),
                    _ => {}
                }
                s.ws();
                match s.peek() {
                    Some(b',') => s.i += 1,
                    Some(b'}') => {
                        s.i += 1;
                        break;
                    }
                    _ => return Err(JsonError::Parse),
                }
            }
        }
    } else {
        s.value(0)?;
    }
    s.ws();
    if s.i != s.b.len() {
        return Err(JsonError::Parse);
    }
    if is_object {
        Ok(req)
    } else {
        Err(JsonError::NotObject)
    }
}

/// Sets the group and user ids to `uid`, or exits.
fn drop_to_uid(uid: u32) {
    // SAFETY: plain system calls on integers.
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(uid) != 0
            || libc::setuid(uid) != 0
    };
    if failed {
        say_err(&format!(
            "testd: cannot drop to uid {uid}: {}",
            std::io::Error::last_os_error()
        ));
        std::process::exit(1);
    }
}

/// Zeroes the environment block (`env_start..env_end` of
/// `/proc/self/stat`, fields 50 and 51) in place.
fn rewrite_environ() {
    let stat = std::fs::read("/proc/self/stat").expect("read /proc/self/stat");
    let after = &stat[stat
        .iter()
        .rposition(|&b| b == b')')
        .expect("stat has a name")
        + 2..];
    let fields: Vec<u64> = after
        .split(|&b| b == b' ')
        .map(|f| {
            std::str::from_utf8(f)
                .ok()
                .and_then(|f| f.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect();
    // Field n of proc(5) is at index n - 3 here (the state is field 3).
    let (start, end) = (fields[50 - 3] as usize, fields[51 - 3] as usize);
    // SAFETY: the kernel says the environment block is this range of our
    // own (writable) memory; the strings in it become empty, which
    // `environ` readers skip.
    unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
}

fn main() {
    let start_ns = now_ns();
    let mut opts = parse_args(std::env::args_os().skip(1));
    apply_faults_once(&mut opts);
    if opts.no_parent_death_signal {
        // SAFETY: prctl with integer arguments changes only this process's
        // parent-death signal.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) } != 0 {
            say_err("testd: cannot disarm the parent-death signal");
            std::process::exit(1);
        }
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if let Some(path) = &opts.record_start {
        append_line(path, &format!("{pid}\n"));
        let starts = std::fs::read_to_string(path).map_or(0, |text| text.lines().count());
        if starts <= opts.fail_starts {
            opts.exit_immediately = true;
        }
    }
    setup_signals(
        opts.ignore_sigterm,
        opts.term_delay,
        opts.record_signal.clone(),
    );

    for item in &opts.start_output {
        match item {
            StartOutput::Stdout(text) => say(text),
            StartOutput::Stderr(text) => say_err(text),
            StartOutput::Env(name) => match std::env::var_os(name) {
                Some(v) => say(&format!("env {name}={}", v.to_string_lossy())),
                None => say(&format!("env {name} unset")),
            },
            StartOutput::Cwd => match std::env::current_dir() {
                Ok(dir) => say(&format!("cwd {}", dir.display())),
                Err(e) => say(&format!("cwd error {e}")),
            },
        }
    }
    if opts.exit_immediately {
        std::process::exit(opts.exit_code);
    }

    let socket = opts.socket.clone().or_else(|| {
        std::env::var_os("SOCKET_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    if opts.bind_delay > 0 {
        sleep_ms(opts.bind_delay);
    }
    let listener = match socket.filter(|_| !opts.never_bind) {
        Some(path) => {
            let backlog = opts
                .backlog
                .unwrap_or(if opts.never_accept { 1 } else { 128 });
            match bind_and_listen(&path, opts.listen_delay, backlog) {
                Ok(fd) => Some(UnixListener::from(fd)),
                Err(e) => {
                    say_err(&format!("testd: cannot listen on {}: {e}", path.display()));
                    std::process::exit(opts.exit_code);
                }
            }
        }
        None => None,
    };
    let tcp = opts.tcp.as_deref().map(|address| {
        // The bind delay, if any, has passed above.
        probes::tcp_listen(address, opts.listen_delay).unwrap_or_else(|e| {
            say_err(&format!("testd: cannot listen on {address}: {e}"));
            std::process::exit(opts.exit_code);
        })
    });
    let listen_ns = now_ns();
    if let Some(path) = &opts.timestamps {
        append_line(path, &format!("{start_ns} {listen_ns}\n"));
    }

    // Ready.
    if let Some(text) = &opts.announce {
        say(text);
    }
    if let Some(tcp) = tcp {
        probes::serve_tcp(tcp, opts.wedge, opts.stop_accepting_after);
    }
    if opts.notify.active() {
        probes::notify(std::mem::take(&mut opts.notify));
    }
    if let Some(path) = &opts.pid_file {
        let res = std::fs::write(path, format!("{pid}\n"));
        res.unwrap_or_else(|e| say_err(&format!("testd: cannot write {}: {e}", path.display())));
    }
    if let Some(uid) = opts.drop_to_uid {
        drop_to_uid(uid);
    }
    if opts.rewrite_environ {
        rewrite_environ();
    }
    if opts.fork_children > 0 || opts.double_fork || opts.detach_child {
        // Reap children automatically, so one killed while this process lives
        // does not linger as a zombie.
        set_disposition(libc::SIGCHLD, libc::SIG_IGN);
    }
    let children: Vec<_> = (0..opts.fork_children)
        .filter_map(|_| fork_child(opts.children_ignore_sigterm))
        .collect();
    for child in children {
        say(&format!("child {child}"));
    }
    if opts.detach_child {
        match detach_child() {
            Some(pid) => say(&format!("detached {pid}")),
            None => say_err("testd: fork failed"),
        }
    }
    if opts.double_fork {
        match double_fork() {
            Some(gpid) => say(&format!("escaped {gpid}")),
            None => say_err("testd: double fork failed"),
        }
    }
    if let Some(bytes) = opts.flood {
        flood(bytes, opts.flood_no_newline, opts.flood_invalid_utf8);
    }
    if opts.close_stdio {
        close_stdio();
    }
    if let Some(ms) = opts.exit_after {
        let code = opts.exit_code;
        std::thread::spawn(move || {
            sleep_ms(ms);
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        });
    }
    if let Some(ms) = opts.abort_after {
        std::thread::spawn(move || {
            sleep_ms(ms);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `no_core` is a valid rlimit; lowering RLIMIT_CORE only
            // prevents a core dump.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            }
            std::process::abort();
        });
    }

    match listener {
        Some(listener) if !opts.never_accept => {
            serve(
                listener,
                opts.stop_accepting_after,
                opts.wedge,
                opts.log_accepts,
            );
        }
        Some(listener) => {
            // Never accept; keep the listener open until exit.
            let _keep = listener;
            wait_forever();
        }
        None => {}
    }
    wait_forever();
}

#[cfg(test)]
mod tests {
    use super::respond;

    fn reply(line: &str) -> Option<String> {
        respond(line.as_bytes()).map(|r| String::from_utf8(r).unwrap())
    }

    #[test]
    fn ping_and_echo() {
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"result":"pong"}"#
        );
        assert_eq!(
            reply(r#" { "params" : {"a":[1,"}\"",{}],"b":null} , "method":"echo","id":"x"}"#)
                .unwrap(),
            r#"{"jsonrpc":"2.0","id":"x","result":{"a":[1,"}\"",{}],"b":null}}"#
        );
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":2,"method":"echo","params":-1.5e3}"#).unwrap(),
            r#"{"jsonrpc":"2.0","id":2,"result":-1.5e3}"#
        );
    }

    #[test]
    fn errors_and_notifications() {
        assert!(reply(r#"{"jsonrpc":"2.0","method":"ping"}"#).is_none());
        assert!(reply("   \r\n").is_none());
        assert!(
            reply(r#"{"id":3,"method":"nope"}"#)
                .unwrap()
                .contains("-32601")
        );
        assert!(
            reply(r#"{"id":3,"method":"ping""#)
                .unwrap()
                .contains("-32700")
        );
        assert!(reply("[1]").unwrap().contains("-32600"));
        assert!(reply(r#"{"id":4,"method":5}"#).unwrap().contains("-32600"));
    }
}
