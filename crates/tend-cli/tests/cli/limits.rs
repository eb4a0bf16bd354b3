//! The open-file limit: `tend up` holds several descriptors per daemon, so
//! it raises its soft `RLIMIT_NOFILE` to the hard limit; its daemons get
//! the original soft limit back (a `select()` program breaks above 1,024).

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt,
    process::Stdio,
    time::{Duration, Instant},
};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::harness::*;

/// Daemons in the scale test: with two output pipes and a pidfd each, far
/// more descriptors than a soft limit of 1,024 allows.
const DAEMONS: usize = 2000;

/// The soft limit `tend up` is started with, the usual default.
const SOFT: u64 = 1024;

/// Deadline for bringing up and stopping [`DAEMONS`] daemons in a debug
/// build on a loaded two-core machine.
const SCALE_DEADLINE: Duration = Duration::from_secs(120);

/// `(soft, hard)` open-file limit of `pid`, from `/proc/<pid>/limits`.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut words = line["Max open files".len()..].split_whitespace();
    (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    )
}

#[test]
fn up_runs_2000_daemons_under_a_soft_nofile_limit_of_1024_and_they_keep_1024() {
    let hard = getrlimit(Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < 4 * DAEMONS as u64) {
        eprintln!("skipped: the hard RLIMIT_NOFILE {hard:?} is too low for {DAEMONS} daemons");
        return;
    }
    let sandbox = Sandbox::new();
    let testd = testd();
    let mut body = String::new();
    for i in 0..DAEMONS {
        write!(
            body,
            "[process.d{i}]\ncommand = \"{}\"\nsocket = \"{i}\"\nstartup_timeout = \"100s\"\n\n",
            testd.display()
        )
        .unwrap();
    }
    let config = sandbox.config(&body);
    let c = config.to_str().unwrap();

    let began = Instant::now();
    let mut up = sandbox.command(&["up", "-c", c]);
    up.stdout(Stdio::null())
        .stderr(fs::File::create(sandbox.path().join("up.err")).unwrap());
    // SAFETY: setrlimit is a plain system call, safe between fork and exec.
    unsafe {
        up.pre_exec(move || {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(SOFT),
                    maximum: hard,
                },
            )
            .map_err(Into::into)
        });
    }
    let mut up = up.spawn().expect("spawn tend up");

    let deadline = began + SCALE_DEADLINE;
    let mut last = Vec::new();
    let all_running = holds_before(deadline, || {
        if up.try_wait().expect("try_wait").is_some() {
            return true;
        }
        let Some(processes) = status(&sandbox, &config) else {
            return false;
        };
        last = processes;
        // A daemon in error will not come up: stop waiting.
        last.iter().any(|p| p["state"] == "error")
            || (last.len() == DAEMONS && last.iter().all(|p| p["state"] == "running"))
    });
    let stderr = || fs::read_to_string(sandbox.path().join("up.err")).unwrap_or_default();
    assert!(
        up.try_wait().unwrap().is_none(),
        "tend up exited: {}",
        stderr()
    );
    let not_running: Vec<_> = last
        .iter()
        .filter(|p| p["state"] != "running")
        .take(5)
        .collect();
    assert!(
        all_running && not_running.is_empty() && last.len() == DAEMONS,
        "{} of {DAEMONS} listed, not running: {not_running:#?}",
        last.len()
    );
    let up_took = began.elapsed();

    // The supervisor raised its own soft limit; its daemons got 1,024.
    let (up_soft, _) = nofile_of(up.id());
    assert_ne!(up_soft, SOFT.to_string(), "tend up kept the soft limit");
    for process in [&last[0], &last[DAEMONS / 2], &last[DAEMONS - 1]] {
        let pid = pid_of(process);
        assert_eq!(nofile_of(pid).0, SOFT.to_string(), "daemon {pid}");
    }

    let stopping = Instant::now();
    let mut down = sandbox.command(&["down", "-c", c]);
    let down = down
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tend down");
    let output = down.wait_with_output().expect("tend down");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until("tend up to exit", stopping + SCALE_DEADLINE, || {
        up.try_wait().expect("try_wait").is_some()
    });
    wait_until("every daemon to be gone", stopping + SCALE_DEADLINE, || {
        sandbox.marked_processes().is_empty()
    });
    eprintln!(
        "{DAEMONS} daemons under a soft limit of {SOFT}: all running after {up_took:?}, \
         all stopped {:?} later",
        stopping.elapsed()
    );
}
