//! Helpers beyond the library harness: an app embedding tend that the test
//! can kill with SIGKILL, finding processes by the `TEND_MANAGER_ID` marker
//! in `/proc`, and small file systems that fill up or turn read-only.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::process::Child;

use crate::harness::*;

/// `TEND_MANAGER_ID=<pid>.<start time>`: the entry every daemon (and every
/// descendant that keeps its environment) of the manager in process `pid`
/// carries.
pub fn manager_marker(pid: u32) -> String {
    let start = proc_stat(pid).expect("the manager is alive").start_time;
    format!("{}={pid}.{start}", tend::MANAGER_ID_ENV)
}

/// Live (non-zombie) processes whose environment holds `entry` exactly.
/// This is how the suite counts survivors: by walking `/proc`.
pub fn marked(entry: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| environ_holds(pid, entry) && alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn environ_holds(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
}

/// SIGKILLs every live process marked with `entry`, each through a pidfd
/// opened before the marker is checked again, so a reused PID is never hit.
pub fn kill_marked(entry: &str) {
    // Twice, in case one forked while the first pass ran.
    for _ in 0..2 {
        for pid in marked(entry) {
            let Some(fd) = Pid::from_raw(pid as i32)
                .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
            else {
                continue;
            };
            if environ_holds(pid, entry) {
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
            }
        }
    }
}

/// An app embedding tend (`tend-embedder`). Dropping it SIGKILLs the app
/// and every process carrying its manager's marker.
pub struct Embedder {
    child: Child,
    pub pid: u32,
    /// `TEND_MANAGER_ID=…` of its manager.
    pub marker: String,
    /// Its daemons by name, as it reported them.
    pub daemons: Vec<(String, u32)>,
}

impl Embedder {
    /// Runs the embedder with state in `state_dir` and sockets in
    /// `socket_dir`, starting the daemon `specs` (`"name testd-flags…"`),
    /// and waits until it reports them all started.
    pub async fn start(state_dir: &Path, socket_dir: &Path, specs: &[&str]) -> Self {
        Self::start_with_env(state_dir, socket_dir, specs, &[]).await
    }

    /// Like [`Self::start`], with the extra environment `env`.
    ///
    /// The app runs without a guard process (`TEND_GUARD=0`): these tests
    /// are about what a killed app leaves for the next cleanup, which the
    /// guard would otherwise have stopped already (the guard has tests of
    /// its own in `library::lifetime`).
    pub async fn start_with_env(
        state_dir: &Path,
        socket_dir: &Path,
        specs: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let env: Vec<(&str, &str)> = std::iter::once((tend::GUARD_ENV, "0"))
            .chain(env.iter().copied())
            .collect();
        let (child, daemons) = run_embedder(state_dir, socket_dir, specs, &env).await;
        let pid = child.id().expect("the embedder has a pid");
        Embedder {
            child,
            pid,
            marker: manager_marker(pid),
            daemons,
        }
    }

    /// The PID of daemon `name`.
    pub fn daemon(&self, name: &str) -> u32 {
        self.daemons.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// SIGKILLs the app (no destructor of it runs) and reaps it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill tend-embedder");
    }

    /// The app's peak resident memory, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the embedder is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        kill_marked(&self.marker);
    }
}

/// A small tmpfs mounted on a folder of the sandbox; unmounted (lazily)
/// on drop. Only root can mount, so tests that need one are skipped, with
/// a printed reason, elsewhere.
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size_kib` KiB on `path` (created), or `None` with
    /// the reason printed when this process may not mount.
    pub fn tmpfs(path: &Path, size_kib: u64) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let target = cstring(path);
        let options = CString::new(format!("size={size_kib}k,mode=0700")).unwrap();
        // SAFETY: every pointer is a valid NUL-terminated string that lives
        // for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "skipped: cannot mount a tmpfs ({}); this test needs root",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Mount {
            path: path.to_owned(),
        })
    }

    /// Remounts it read-only.
    pub fn make_read_only(&self) {
        let target = cstring(&self.path);
        // SAFETY: as in `tmpfs`; a remount takes no source or data.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "remount read-only: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Fills it up: writes a file until the disk is full.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("filler")).expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = cstring(&self.path);
        // SAFETY: `target` is a valid NUL-terminated path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temp path")
}
