//! CLOCK_REALTIME in nanoseconds, and the stamp files `testd --timestamps`
//! writes.

use std::{
    io,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};

/// Now, in nanoseconds since the epoch (CLOCK_REALTIME, like testd's).
pub fn now_ns() -> i64 {
    ns_of(SystemTime::now())
}

/// `time` in nanoseconds since the epoch.
pub fn ns_of(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// One line of a stamp file: when a daemon started and when it listened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// First thing in testd's `main`.
    pub start_ns: i64,
    /// Right after `listen()` returned.
    pub listen_ns: i64,
}

/// Every complete line of `path`; an absent file has none.
pub fn read_stamps(path: &Path) -> io::Result<Vec<Stamp>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // A line still being written has no newline yet; skip it.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete
        .lines()
        .filter_map(|line| {
            let (start, listen) = line.split_once(' ')?;
            Some(Stamp {
                start_ns: start.trim().parse().ok()?,
                listen_ns: listen.trim().parse().ok()?,
            })
        })
        .collect())
}

/// Waits until `path` holds at least `count` stamps, checking every
/// `every`; fails after `timeout`.
pub fn wait_stamps(
    path: &Path,
    count: usize,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<Stamp>> {
    let deadline = Instant::now() + timeout;
    loop {
        let stamps = read_stamps(path).with_context(|| format!("reading {path:?}"))?;
        if stamps.len() >= count {
            return Ok(stamps);
        }
        if Instant::now() >= deadline {
            bail!(
                "{path:?} holds {} stamps after {timeout:?}; expected {count}",
                stamps.len()
            );
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ts");
        std::fs::write(&path, "10 20\n30 40\n50 6").unwrap();
        let stamps = read_stamps(&path).unwrap();
        assert_eq!(
            stamps,
            [
                Stamp {
                    start_ns: 10,
                    listen_ns: 20
                },
                Stamp {
                    start_ns: 30,
                    listen_ns: 40
                }
            ]
        );
        assert!(read_stamps(&dir.path().join("absent")).unwrap().is_empty());
    }
}
