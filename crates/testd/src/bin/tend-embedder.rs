//! `tend-embedder`: the smallest app that embeds tend, for tests of what
//! becomes of its daemons when the app itself dies (for instance by
//! SIGKILL, when no destructor runs).
//!
//! ```text
//! tend-embedder STATE_DIR SOCKET_DIR TESTD SPEC...
//! ```
//!
//! Each SPEC is a daemon name followed by `testd` flags, separated by
//! spaces: `"b --ignore-sigterm"`. The name may end in `@SIGNAL`, the
//! daemon's stop signal (`"nginx@SIGQUIT"`; SIGTERM without). The
//! daemons run TESTD, listen on
//! `SOCKET_DIR/<name>.sock`, and get a 500 ms shutdown grace period; the
//! manager keeps its orphan records in STATE_DIR. They are started one
//! after the other; for each, one line `started <name> <pid>` is printed,
//! then `ready`, and the program waits forever. A failed start prints
//! `failed <name>: <error>` to stderr and exits 1; a usage error exits 100.
//!
//! `TEND_EMBEDDER_RESTART=NAME` restarts daemon NAME (`restart_process`:
//! a stop, then a start with the same config) right after its first start,
//! before its `started` line, which gives the new PID.
//!
//! `TEND_EMBEDDER_GRACE_MS` sets another grace period;
//! `TEND_EMBEDDER_USER` a user (name or uid) every daemon runs as. With
//! `TEND_EMBEDDER_SETSID=1` it first leaves its parent's session and
//! process group (as a shell's job would). With
//! `TEND_EMBEDDER_DENY_UNSHARE=1` in its environment, it first
//! installs a seccomp filter that fails `close_range` and `unshare` with
//! EPERM, as container profiles do, so tests can check that spawning
//! copes.

use std::{path::PathBuf, time::Duration};

use tend::{BackgroundProcessConfig, BackgroundProcessManager, StopSignal};

const USAGE: &str = "usage: tend-embedder STATE_DIR SOCKET_DIR TESTD SPEC...";

fn main() {
    if std::env::var_os("TEND_EMBEDDER_SETSID").is_some_and(|v| v == "1") {
        rustix::process::setsid().expect("setsid");
    }
    if std::env::var_os("TEND_EMBEDDER_DENY_UNSHARE").is_some_and(|v| v == "1") {
        deny_close_range_and_unshare();
    }
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(run());
}

/// Installs a seccomp filter failing `close_range` and `unshare` with
/// EPERM: an older container profile that does not know `close_range`, and
/// Docker's default, which allows `unshare` only with `CAP_SYS_ADMIN`.
fn deny_close_range_and_unshare() {
    let statement = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load_number = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let equals = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let program = [
        // `nr` is the first field of struct seccomp_data.
        statement(load_number, 0, 0, 0),
        statement(equals, 2, 0, libc::SYS_close_range as u32),
        statement(equals, 1, 0, libc::SYS_unshare as u32),
        statement(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
        statement(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let filter = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: both prctl calls take plain integers and a pointer to the
    // filter, which lives until the second returns (the kernel copies it).
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &filter as *const libc::sock_fprog,
            ) == 0
    };
    if !installed {
        eprintln!(
            "cannot install the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(100);
    }
}

async fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state_dir, socket_dir, testd, specs @ ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(100);
    };
    if specs.is_empty() {
        eprintln!("{USAGE}");
        std::process::exit(100);
    }
    let grace = std::env::var("TEND_EMBEDDER_GRACE_MS")
        .ok()
        .map_or(Duration::from_millis(500), |ms| {
            Duration::from_millis(ms.parse().expect("TEND_EMBEDDER_GRACE_MS in ms"))
        });
    let manager = BackgroundProcessManager::builder()
        .state_dir(state_dir)
        .build();
    for spec in specs {
        let mut words = spec.split_whitespace();
        let Some(name) = words.next() else {
            eprintln!("empty SPEC\n{USAGE}");
            std::process::exit(100);
        };
        let (name, stop_signal) = match name.split_once('@') {
            Some((name, signal)) => match StopSignal::from_name(signal) {
                Some(signal) => (name, signal),
                None => {
                    eprintln!("{signal} is not a stop signal\n{USAGE}");
                    std::process::exit(100);
                }
            },
            None => (name, StopSignal::Term),
        };
        let mut config = BackgroundProcessConfig::new(name, testd)
            .args(words)
            .socket_path(PathBuf::from(socket_dir).join(format!("{name}.sock")))
            .startup_timeout(Duration::from_secs(10))
            .shutdown_grace_period(grace)
            .stop_signal(stop_signal);
        if let Ok(user) = std::env::var("TEND_EMBEDDER_USER") {
            config = config.user(user);
        }
        if let Err(e) = manager.start_process(config).await {
            eprintln!("failed {name}: {e}");
            std::process::exit(1);
        }
        if std::env::var("TEND_EMBEDDER_RESTART").is_ok_and(|restart| restart == name) {
            manager.restart_process(name).await.unwrap_or_else(|e| {
                eprintln!("failed {name} (restart): {e}");
                std::process::exit(1)
            });
        }
        let pid = manager.pid(name).ok().flatten().unwrap_or_default();
        println!("started {name} {pid}");
    }
    println!("ready");
    std::future::pending::<()>().await;
}
