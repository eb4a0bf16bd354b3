//! Reading process identity from `/proc`: the facts tend uses to prove a
//! PID is still the process it started (PIDs are reused within minutes).
//!
//! Everything here reads `/proc` as bytes. A process name (`comm`) is
//! whatever bytes the program or the kernel put there — the kernel cuts
//! it at 15 bytes, in the middle of a multi-byte character if need be,
//! and `prctl(PR_SET_NAME)` takes any bytes — so no `/proc` text is
//! assumed to be UTF-8.

use std::{collections::HashMap, fs, io};

/// Longest `/proc/<pid>/stat` prefix read: the fields tend uses end
/// within the first ~450 bytes (a 15-byte name and 20 numeric fields of
/// at most 20 digits each).
const STAT_BUFFER_BYTES: usize = 1024;

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
    /// Threads not yet released, the leader included (`num_threads`).
    pub threads: i64,
}

impl ProcStat {
    /// Whether the process can still run code. A zombie cannot, unless it
    /// is the leader of threads still exiting: when a multi-threaded
    /// process dies, its main thread turns zombie first and waits for the
    /// others, so a `Z` in `stat` with more than one thread left is a
    /// process still dying, and counted alive until it is done.
    pub fn is_alive(&self) -> bool {
        match self.state {
            'X' => false,
            'Z' => self.threads > 1,
            _ => true,
        }
    }
}

/// `/proc/<pid>/<file>` as a NUL-terminated path in `buf`, without
/// allocating (this runs per spawn and per process-group check).
fn proc_path<'a>(buf: &'a mut [u8; 48], pid: i32, file: &str) -> Option<&'a std::ffi::CStr> {
    use std::io::Write;
    let mut cursor = io::Cursor::new(&mut buf[..]);
    write!(cursor, "/proc/{pid}/{file}\0").ok()?;
    let len = cursor.position() as usize;
    std::ffi::CStr::from_bytes_with_nul(&buf[..len]).ok()
}

/// Reads `/proc/<pid>/<file>` into `buf` (what fits), without allocating
/// and without the `statx` that `fs::read` adds: this runs per spawn, per
/// process-group check and per daemon per status request. Its length;
/// `Ok(None)` when no such process exists.
fn read_proc(pid: i32, file: &str, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use rustix::{
        fs::{Mode, OFlags},
        io::Errno,
    };
    let mut path = [0; 48];
    let Some(path) = proc_path(&mut path, pid, file) else {
        return Ok(None);
    };
    let file = match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(file) => file,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut len = 0;
    // One read returns the whole file (the kernel renders it at once);
    // loop only for the unusual short read.
    loop {
        match rustix::io::read(&file, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    break;
                }
            }
            Err(Errno::INTR) => {}
            // ESRCH: the process vanished between open and read.
            Err(Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(len))
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when no such process exists.
/// An error means the file exists but could not be read or understood:
/// callers must not take it for a dead process.
pub(crate) fn stat(pid: i32) -> io::Result<Option<ProcStat>> {
    let mut buf = [0u8; STAT_BUFFER_BYTES];
    let Some(len) = read_proc(pid, "stat", &mut buf)? else {
        return Ok(None);
    };
    match parse_stat(&buf[..len]) {
        Some(stat) => Ok(Some(stat)),
        // An empty read: the process was reaped between open and read.
        None if len == 0 => Ok(None),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )),
    }
}

/// The first `N` fields after the name in `stat` text (field `n` of
/// proc(5) at index `n - 3`). The name may hold any bytes but NUL, spaces
/// and parentheses included, so fields are counted from the last `)`.
/// `None` unless `N` fields and one more are there: the one more proves
/// the last was not cut.
fn fields_after_name<const N: usize>(text: &[u8]) -> Option<[&[u8]; N]> {
    let after_comm = &text[text.iter().rposition(|&b| b == b')')? + 1..];
    let mut fields = [&[][..]; N];
    for (count, field) in after_comm
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .enumerate()
    {
        if count == N {
            return Some(fields);
        }
        fields[count] = field;
    }
    None
}

/// A decimal field of `/proc` text.
fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Parses `/proc/<pid>/stat` (all of it, or a prefix that holds field 23
/// or more).
pub(crate) fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    // Fields 3 (state) to 22 (start time), and 23 to prove 22 whole.
    let fields: [&[u8]; 20] = fields_after_name(text)?;
    let state = match fields[0] {
        [b] if b.is_ascii_alphabetic() => char::from(*b),
        _ => return None,
    };
    Some(ProcStat {
        state,
        ppid: number(fields[4 - 3])?,
        pgid: number(fields[5 - 3])?,
        sid: number(fields[6 - 3])?,
        threads: number(fields[20 - 3])?,
        start_time: number(fields[22 - 3])?,
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
    all_pids()
        .into_iter()
        .filter(|&pid| matches!(stat(pid), Ok(Some(s)) if s.pgid == pgid && s.is_alive()))
        .collect()
}

/// The resident set of `pid` in bytes (`/proc/<pid>/statm`, second field,
/// times the page size); `None` if it vanished or cannot be read.
pub(crate) fn resident_bytes(pid: i32) -> Option<u64> {
    let mut buf = [0u8; 256];
    let len = read_proc(pid, "statm", &mut buf).ok()??;
    let pages: u64 = number(buf[..len].split(|b| b.is_ascii_whitespace()).nth(1)?)?;
    Some(pages * rustix::param::page_size() as u64)
}

/// CPU time of `pid` (user and system, its own and that of the children
/// it reaped) and its resident set in bytes, from one read of
/// `/proc/<pid>/stat`; `None` if it cannot be read.
pub(crate) fn cpu_and_resident(pid: i32) -> Option<(std::time::Duration, u64)> {
    let mut buf = [0u8; STAT_BUFFER_BYTES];
    let len = read_proc(pid, "stat", &mut buf).ok()??;
    let (ticks, rss_pages) = parse_usage(&buf[..len])?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Some((
        std::time::Duration::from_micros(ticks.saturating_mul(1_000_000) / per_second),
        rss_pages.saturating_mul(rustix::param::page_size() as u64),
    ))
}

/// utime + stime + cutime + cstime (fields 14 to 17) and rss (field 24,
/// in pages) of `stat` text.
fn parse_usage(text: &[u8]) -> Option<(u64, u64)> {
    // Fields 3 to 24, and 25 to prove 24 whole.
    let fields: [&[u8]; 22] = fields_after_name(text)?;
    // Signed in the kernel; never negative in practice.
    let field = |n: usize| number::<i64>(fields[n - 3]).map(|v| v.max(0) as u64);
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

/// The live (not zombie) processes of each process group, from one scan
/// of `/proc`.
pub(crate) fn live_groups() -> HashMap<i32, Vec<i32>> {
    let mut groups: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in all_pids() {
        if let Ok(Some(stat)) = stat(pid) {
            if stat.is_alive() {
                groups.entry(stat.pgid).or_default().push(pid);
            }
        }
    }
    groups
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

    /// A stat line for `comm` with the given fields after it.
    fn stat_line(comm: &[u8]) -> Vec<u8> {
        let mut line = b"1234 (".to_vec();
        line.extend_from_slice(comm);
        line.extend_from_slice(
            b") S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 \
              18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        );
        line
    }

    fn assert_fields(stat: Option<ProcStat>) {
        let s = stat.expect("parsed");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgid, 1234);
        assert_eq!(s.sid, 1234);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn parses_names_with_spaces_and_parens() {
        assert_fields(parse_stat(&stat_line(b"a (weird) name")));
        assert_fields(parse_stat(&stat_line(b") S 9 9 9 ")));
        assert_fields(parse_stat(&stat_line(b"((")));
        assert_fields(parse_stat(&stat_line(b"")));
    }

    #[test]
    fn a_zombie_leader_of_threads_still_exiting_is_alive() {
        let stat = |state: char, threads: i64| ProcStat {
            state,
            ppid: 1,
            pgid: 2,
            sid: 2,
            start_time: 3,
            threads,
        };
        assert!(stat('S', 4).is_alive());
        assert!(stat('Z', 3).is_alive(), "its other threads still exit");
        assert!(!stat('Z', 1).is_alive());
        assert!(!stat('X', 1).is_alive());
    }

    #[test]
    fn parses_names_with_newlines_and_tabs() {
        assert_fields(parse_stat(&stat_line(b"two\nlines\t)")));
        assert_fields(parse_stat(&stat_line(b"\n")));
    }

    #[test]
    fn parses_names_that_are_not_utf8() {
        // "testd-демон-плагин" as the kernel keeps it: cut at 15 bytes, in
        // the middle of "н" (0xd0 0xbd), so the name ends in a lone 0xd0.
        let full = "testd-демон-плагин".as_bytes();
        let cut = &full[..15];
        assert_eq!(cut.last(), Some(&0xd0));
        assert!(std::str::from_utf8(cut).is_err());
        assert_fields(parse_stat(&stat_line(cut)));
        // Any bytes at all, as prctl(PR_SET_NAME) allows.
        assert_fields(parse_stat(&stat_line(&[
            0xff, 0xfe, b')', 0x80, b' ', 0xd0,
        ])));
    }

    #[test]
    fn refuses_a_line_cut_before_the_start_time_is_complete() {
        let line = stat_line(b"x");
        let at = line
            .windows(6)
            .position(|w| w == b"987654")
            .expect("start time in the line");
        // Cut inside field 22, and right after it: field 23 is missing.
        assert_eq!(parse_stat(&line[..at + 3]), None);
        assert_eq!(parse_stat(&line[..at + 6]), None);
        // With field 23 present, a prefix is enough.
        assert_fields(parse_stat(&line[..at + 8]));
        assert_eq!(parse_stat(b"1234 (no closing paren S 1 2 3"), None);
        assert_eq!(parse_stat(b""), None);
    }

    /// A real process whose name is not UTF-8: a child exec'd through a
    /// symlink whose name the kernel cuts mid-character.
    #[test]
    fn reads_a_process_whose_name_is_cut_mid_character() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new().prefix("tp").tempdir().unwrap();
        let link = dir.path().join("testd-демон-плагин");
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        // A multi-call binary dispatches on argv[0]; the kernel names the
        // process after the file exec'd, here the link.
        let mut child = std::process::Command::new(&link)
            .arg0("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The kernel names the process late in exec, after a vfork-style
        // parent has been let go: wait for the name.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let comm = loop {
            let comm = fs::read(format!("/proc/{pid}/comm")).unwrap();
            if comm.starts_with(b"testd-") || std::time::Instant::now() > deadline {
                break comm;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let parsed = stat(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(comm, b"testd-\xd0\xb4\xd0\xb5\xd0\xbc\xd0\xbe\xd0\n");
        let parsed = parsed.unwrap().expect("the process is alive");
        assert!(parsed.is_alive());
        assert_eq!(parsed.ppid, std::process::id() as i32);
        assert_eq!(
            parsed.pgid,
            stat(std::process::id() as i32).unwrap().unwrap().pgid
        );
    }

    #[test]
    fn cpu_ticks_are_summed() {
        let text = "1234 (a b) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    10 20 3 4 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_usage(text.as_bytes()), Some((37, 100)));
        // A name that is not UTF-8 changes nothing.
        let cut = b"1234 (testd-\xd0\xb4\xd0) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    10 20 3 4 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_usage(cut), Some((37, 100)));
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
