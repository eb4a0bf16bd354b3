//! Leaving nothing behind: the benchmark is a child subreaper, so every
//! process its children leave behind is re-parented to it, and it kills
//! all of its children (own and adopted) between phases and at exit —
//! also after an error, a panic, or SIGINT/SIGTERM/SIGHUP.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, WaitOptions};

/// The scratch directory, removed by the signal thread on interruption.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Kills every descendant and removes the scratch directory when dropped.
pub struct Guard {
    scratch: Option<tempfile::TempDir>,
}

impl Guard {
    /// Makes this process a child subreaper, starts the signal thread, and
    /// takes charge of `scratch`. Call before spawning anything.
    pub fn install(scratch: tempfile::TempDir) -> anyhow::Result<Self> {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
        *SCRATCH.lock().unwrap_or_else(|e| e.into_inner()) = Some(scratch.path().to_owned());
        start_signal_thread()?;
        Ok(Guard {
            scratch: Some(scratch),
        })
    }

    /// The scratch directory.
    pub fn dir(&self) -> &std::path::Path {
        self.scratch
            .as_ref()
            .map_or(std::path::Path::new("/"), |d| d.path())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let strays = kill_children();
        if strays > 0 {
            eprintln!("tend-bench: killed {strays} leftover processes at exit");
        }
        SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self.scratch.take());
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every
/// thread spawned after) and handles them on a thread of their own: kill
/// every descendant, remove the scratch directory, exit 130. Children get
/// an empty signal mask from `std::process::Command`.
fn start_signal_thread() -> anyhow::Result<()> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before
    // any other use; the pointers passed are valid for each call.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            anyhow::bail!("pthread_sigmask failed");
        }
        set
    };
    std::thread::Builder::new()
        .name("tend-bench-signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `set` is an initialised sigset_t owned by this closure
            // and `signal` a valid out-pointer.
            while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
            eprintln!("tend-bench: interrupted by signal {signal}; cleaning up");
            kill_children();
            if let Some(dir) = SCRATCH.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        })?;
    Ok(())
}

/// PIDs whose parent is this process (live or zombie).
fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|text| {
                    let ppid = text[text.rfind(')')? + 1..].split_whitespace().nth(1)?;
                    ppid.parse::<i32>().ok()
                })
                == Some(me)
        })
        .collect()
}

/// Reaps children that exit by themselves within `within` — tend's guard
/// processes, adopted here when their manager exits, finish their cleanup
/// and exit a little after it — so that only processes really left behind
/// are counted and killed afterwards. Returns how many were reaped. The
/// same caveat as for [`kill_children`] applies.
pub fn reap_exiting(within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut reaped = 0;
    loop {
        let kids = children();
        for &pid in &kids {
            if let Ok(Some(_)) = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::NOHANG) {
                reaped += 1;
            }
        }
        if kids.is_empty() || Instant::now() >= deadline {
            return reaped;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs every child of this process and its process group (a daemon
/// leads its own), reaps them, and repeats while killing them makes their
/// own children orphans that land here. Returns how many processes it
/// found. Only call when no child is still wanted: a `std::process::Child`
/// reaped here can no longer be waited for.
pub fn kill_children() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        let kids = children();
        if kids.is_empty() {
            break;
        }
        for &pid in &kids {
            seen.insert(pid);
            let Some(p) = Pid::from_raw(pid) else {
                continue;
            };
            let _ = rustix::process::kill_process(p, Signal::KILL);
            if rustix::process::getpgid(Some(p)).ok() == Some(p) {
                let _ = rustix::process::kill_process_group(p, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
        for &pid in &kids {
            let _ = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::NOHANG);
        }
    }
    seen.len()
}
