//! The raw baseline: testd spawned directly, with no supervision — stdio to
//! `/dev/null`, its own process group (like tend's daemons), no pipes, no
//! pidfd, no parent-death signal. Without a `pre_exec` hook the standard
//! library spawns with `posix_spawn` (a vfork-style clone), the cheapest
//! spawn there is.

use std::{
    io,
    os::unix::{net::UnixStream, process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};

use crate::clock::now_ns;

/// A testd spawned directly.
pub struct RawDaemon {
    child: Child,
}

impl RawDaemon {
    /// Spawns `testd --timestamps <stamps> <extra>` serving `socket`.
    pub fn spawn(testd: &Path, socket: &Path, stamps: &Path, extra: &[&str]) -> io::Result<Self> {
        let child = command(testd, socket, stamps, extra).spawn()?;
        Ok(RawDaemon { child })
    }

    /// Like [`Self::spawn`], but through `fork` and `exec`, as tend spawned
    /// before it cloned like `posix_spawn` does (a `pre_exec` hook, here one
    /// that does nothing, rules out `posix_spawn`): the difference to
    /// [`Self::spawn`] is the price of forking this process.
    pub fn spawn_forked(testd: &Path, socket: &Path, stamps: &Path) -> io::Result<Self> {
        let mut command = command(testd, socket, stamps, &[]);
        // SAFETY: the hook does nothing, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| Ok(()));
        }
        Ok(RawDaemon {
            child: command.spawn()?,
        })
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = Pid::from_raw(self.pid() as i32).ok_or(io::ErrorKind::InvalidInput)?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Waits for the daemon to exit and reaps it; returns when (ns).
    pub fn reap(mut self) -> io::Result<i64> {
        self.child.wait()?;
        Ok(now_ns())
    }
}

fn command(testd: &Path, socket: &Path, stamps: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(testd);
    command
        .arg("--timestamps")
        .arg(stamps)
        .args(extra)
        .env(tend::SOCKET_PATH_ENV, socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    command
}

/// Connects to `socket` every 100 µs until a connection is accepted;
/// returns when (ns). A polling loop is fine for the baseline: the figures
/// compared come from the daemon's own stamps, not from this loop.
pub fn wait_accepting(socket: &Path, timeout: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(now_ns());
        }
        if Instant::now() >= deadline {
            bail!("{socket:?} did not accept within {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Checks once that every socket accepts a connection.
pub fn check_all_accepting(sockets: &[std::path::PathBuf]) -> anyhow::Result<()> {
    for socket in sockets {
        UnixStream::connect(socket).with_context(|| format!("connect to {socket:?}"))?;
    }
    Ok(())
}

/// CPU time of the calling thread, µs.
fn thread_cpu_us() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only
    // writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// CPU time (µs, this thread) of one plain health check — connect, then
/// close — averaged over `passes` passes over every socket: the floor of
/// what any supervisor pays per check.
pub fn connect_cpu_us(sockets: &[std::path::PathBuf], passes: usize) -> anyhow::Result<f64> {
    let before = thread_cpu_us();
    for _ in 0..passes {
        for socket in sockets {
            drop(UnixStream::connect(socket).with_context(|| format!("connect to {socket:?}"))?);
        }
    }
    Ok((thread_cpu_us() - before) / (passes * sockets.len()).max(1) as f64)
}
