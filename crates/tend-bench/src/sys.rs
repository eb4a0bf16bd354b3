//! What the benchmark reads from the system: a process's memory and CPU
//! time, the machine, its load, and the moment a process exits.

use std::{
    path::Path,
    sync::{Arc, Barrier},
    thread::JoinHandle,
};

use anyhow::Context;
use rustix::{
    event::{PollFd, PollFlags, Timespec},
    process::{Pid, PidfdFlags, Resource, Rlimit},
};
use serde::Serialize;

use crate::clock::now_ns;

/// Raises the soft limit on open files to the hard limit (a manager of
/// 1,000 daemons holds a few descriptors per daemon); returns it.
pub fn raise_nofile() -> u64 {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match rustix::process::setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum.unwrap_or(u64::MAX),
        Err(_) => limit.current.unwrap_or(u64::MAX),
    }
}

/// A line of `/proc/<pid>/status` such as `VmRSS:  1234 kB`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Resident memory of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Proportional set size of `pid` now, in KiB (`/proc/<pid>/smaps_rollup`):
/// its resident pages, each shared one divided among the processes that
/// share it, so the PSS of processes adds up to what they hold together.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Peak resident memory of `pid`, in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// User plus system CPU time of `pid` (all its threads, live and exited),
/// in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / ticks)
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(f64::NAN));
    [(); 3].map(|()| fields.next().unwrap_or(f64::NAN))
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, MiB.
    pub mem_mib: u64,
}

impl Machine {
    /// Reads the machine's description from `/proc`.
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, model)| model.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            mem_mib: mem_kib / 1024,
        }
    }
}

/// Notes the moment a process exits, from a thread blocked on its pidfd.
pub struct ExitWatch {
    thread: JoinHandle<Option<i64>>,
}

impl ExitWatch {
    /// Starts watching `pid`; returns once the watching thread is about to
    /// block, so an exit right after this call is not noticed late.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        let pid = Pid::from_raw(pid as i32).context("pid 0")?;
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .with_context(|| format!("pidfd_open({pid:?})"))?;
        let armed = Arc::new(Barrier::new(2));
        let thread = {
            let armed = Arc::clone(&armed);
            std::thread::spawn(move || {
                let timeout = Timespec {
                    tv_sec: 60,
                    tv_nsec: 0,
                };
                armed.wait();
                let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
                loop {
                    match rustix::event::poll(&mut fds, Some(&timeout)) {
                        Ok(0) => return None,
                        Ok(_) => return Some(now_ns()),
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return None,
                    }
                }
            })
        };
        armed.wait();
        Ok(ExitWatch { thread })
    }

    /// When the process exited (ns since the epoch), waiting up to a
    /// minute for it.
    pub fn exited_ns(self) -> anyhow::Result<i64> {
        self.thread
            .join()
            .ok()
            .flatten()
            .context("the watched process did not exit within 60 s")
    }
}

/// Machine-wide CPU time from the `cpu` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    busy: u64,
    total: u64,
}

/// Reads the machine-wide CPU counters.
pub fn system_cpu() -> SystemCpu {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    SystemCpu {
        busy: total.saturating_sub(idle),
        total,
    }
}

impl SystemCpu {
    /// Average number of busy CPUs since `earlier` (this benchmark's own
    /// work included).
    pub fn busy_since(&self, earlier: &SystemCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total) as f64;
        if total == 0.0 {
            return 0.0;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.busy.saturating_sub(earlier.busy) as f64 / total * cpus
    }
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
