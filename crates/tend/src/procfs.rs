//! Reading process identity from `/proc`: the facts tend uses to prove a
//! PID is still the process it started (PIDs are reused within minutes).

use std::{fs, io};

/// The fields of `/proc/<pid>/stat` tend relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state; `Z` is a zombie (dead, not yet reaped).
    pub state: char,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// Start time in clock ticks since boot: with the PID, a unique identity.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process can still run code (zombies cannot).
    pub fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when no such process exists.
pub(crate) fn stat(pid: i32) -> io::Result<Option<ProcStat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // ESRCH: the process vanished between open and read.
        Err(e) if e.raw_os_error() == Some(3) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name may contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Field numbers in proc(5) start at 1 with pid; state is field 3.
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        sid: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// PIDs of this process's children, from `/proc/self/task/*/children`
/// (each thread's children), without reading every process's `stat`.
/// `None` where the kernel has no such files (`CONFIG_PROC_CHILDREN` off).
/// A child forked or reparented while the files are read may be missed.
pub(crate) fn children_of_self() -> Option<Vec<i32>> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    let mut children = Vec::new();
    for task in tasks.flatten() {
        match fs::read_to_string(task.path().join("children")) {
            Ok(text) => children.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            ),
            // The thread exited meanwhile; or, if it is still there, the
            // kernel does not have these files.
            Err(_) if task.path().exists() => return None,
            Err(_) => {}
        }
    }
    Some(children)
}

/// PIDs of the live (non-zombie) members of process group `pgid`.
pub(crate) fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(stat(pid), Ok(Some(s)) if s.pgid == pgid && s.is_alive()))
        .collect()
}

/// Reads a small `/proc` file (at most 1 KiB is kept) without the
/// `statx` that `fs::read` adds: this runs per daemon per status request.
fn read_small(path: &str, buf: &mut [u8; 1024]) -> Option<usize> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::read(&fd, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return None,
        }
    }
    Some(filled)
}

/// The resident set of `pid` in bytes (`/proc/<pid>/statm`, second field,
/// times the page size); `None` if it vanished or cannot be read.
pub(crate) fn resident_bytes(pid: i32) -> Option<u64> {
    let mut buf = [0u8; 1024];
    let len = read_small(&format!("/proc/{pid}/statm"), &mut buf)?;
    let text = std::str::from_utf8(&buf[..len]).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// CPU time of `pid` (user and system, its own and that of the children
/// it reaped) and its resident set in bytes, from one read of
/// `/proc/<pid>/stat`; `None` if it cannot be read.
pub(crate) fn cpu_and_resident(pid: i32) -> Option<(std::time::Duration, u64)> {
    let mut buf = [0u8; 1024];
    let len = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    let text = std::str::from_utf8(&buf[..len]).ok()?;
    let (ticks, rss_pages) = parse_usage(text)?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some((
        std::time::Duration::from_micros(ticks.saturating_mul(1_000_000) / per_second),
        rss_pages.saturating_mul(rustix::param::page_size() as u64),
    ))
}

/// utime + stime + cutime + cstime (fields 14 to 17) and rss (field 24,
/// in pages) of a `stat` text.
fn parse_usage(text: &str) -> Option<(u64, u64)> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Signed in the kernel; never negative in practice.
    let field = |n: usize| -> Option<u64> {
        let value: i64 = fields.get(n - 3)?.parse().ok()?;
        Some(value.max(0) as u64)
    };
    let ticks = (14..=17).try_fold(0u64, |sum, n| Some(sum + field(n)?))?;
    Some((ticks, field(24)?))
}

/// Whether the environment of `pid` holds exactly `entry` (`NAME=value`).
/// Unreadable environments (another user's process) never match.
pub(crate) fn environ_contains(pid: i32, entry: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|e| e == entry))
        .unwrap_or(false)
}

/// PIDs of every process, from `/proc`.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The identity of the calling process: its PID and start time.
pub(crate) fn own_identity() -> (u32, u64) {
    let pid = std::process::id();
    let start = stat(pid as i32)
        .ok()
        .flatten()
        .map(|s| s.start_time)
        .unwrap_or(0);
    (pid, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_self_lists_a_spawned_child_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let listed = children_of_self().expect("CONFIG_PROC_CHILDREN");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(listed.contains(&pid), "{listed:?} lacks {pid}");
        assert!(!children_of_self().unwrap().contains(&pid));
    }

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let text = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgid, 1234);
        assert_eq!(s.sid, 1234);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn cpu_ticks_are_summed() {
        let text = "1234 (a b) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    10 20 3 4 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_usage(text), Some((37, 100)));
        let me = std::process::id() as i32;
        let (_, rss) = cpu_and_resident(me).unwrap();
        assert!(rss > 0);
        assert!(resident_bytes(me).unwrap() > 0);
        assert_eq!(resident_bytes(i32::MAX), None);
        assert_eq!(cpu_and_resident(i32::MAX), None);
    }

    #[test]
    fn reads_itself() {
        let me = stat(std::process::id() as i32).unwrap().unwrap();
        assert!(me.is_alive());
        assert!(me.start_time > 0);
        assert_eq!(stat(i32::MAX).unwrap(), None);
    }
}
