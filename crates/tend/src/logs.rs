//! Capturing a daemon's stdout and stderr: line by line into a bounded
//! in-memory ring and, optionally, a size-rotated file.
//!
//! Capture never blocks the daemon and never grows without bound: pipes are
//! drained continuously, lines longer than [`defaults::MAX_LOG_LINE_BYTES`]
//! are cut, invalid UTF-8 is replaced, and the ring keeps only the newest
//! lines. A log file that cannot be written (disk full, read-only) is
//! reported once and then skipped; supervision goes on.
//!
//! A log file is opened only if it is this user's own: never through a
//! symlink (`O_NOFOLLOW`), and only a regular file of the effective user
//! with a single link that neither group nor others may write
//! (`open_log_file`). A log file may sit where other users create names
//! too (`/tmp/app.log`): a file they planted would receive the daemon's
//! output, and a link they planted would send it into a file of ours.
//! The check runs at every start, so a refused file fails the start.
//!
//! A log file holds one line per line of output, with the time tend read
//! it (UTC, milliseconds) and its stream:
//! `2026-12-02T16:05:10.153Z out listening on /run/app.sock`, `err` for
//! stderr, `tend` for the markers tend writes where an incarnation begins
//! (`tend restarted, pid 4242`). [`read_log_file`] reads them back as
//! [`LogLine`]s, the same values [`crate::BackgroundProcessManager::logs`]
//! returns from memory.

use std::{
    cell::RefCell,
    collections::VecDeque,
    fs::{self, File},
    io::{self, Write},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Mutex,
    task::{Context, Poll},
    time::SystemTime,
};

use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::broadcast,
};

use crate::defaults;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Written by tend itself: the marker where an incarnation begins
    /// (`started, pid 4242`, `restarted, pid 4243`).
    Tend,
}

impl Stream {
    /// The tag of the stream in a log file: `out`, `err`, `tend`.
    pub fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
            Stream::Tend => "tend",
        }
    }
}

/// One line of daemon output. Fields may be added in any release.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LogLine {
    /// The pipe it came from.
    pub stream: Stream,
    /// When tend read it.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// The text, without the newline; cut at 8 KiB, invalid UTF-8 replaced.
    pub text: String,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}

/// A log file opened by [`open_log_file`], with its rotation limits.
pub(crate) struct OpenedLog {
    /// Where it is.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    /// Size at which it is rotated.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

/// The lines a process writes from now on, from
/// [`crate::BackgroundProcessManager::follow_logs`]: a
/// [`futures_core::Stream`] of [`LogLine`]s, or [`recv`](Self::recv) them
/// one by one. It follows the process across restarts and ends once the
/// manager is gone. A follower that falls more than the log ring's size
/// behind skips the oldest lines it missed; [`take_missed`](Self::take_missed)
/// says how many.
pub struct LogFollower {
    lines: crate::lagging::SkipLagged<LogLine>,
}

impl LogFollower {
    pub(crate) fn new(receiver: broadcast::Receiver<LogLine>) -> Self {
        LogFollower {
            lines: crate::lagging::SkipLagged::new(receiver),
        }
    }

    /// The next line; `None` once the manager is gone. Cancel-safe: a
    /// `recv` dropped in a `select!` loses no line.
    pub async fn recv(&mut self) -> Option<LogLine> {
        use futures_core::Stream as _;
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.lines).poll_next(cx)).await
    }

    /// The next line if one is already waiting.
    pub fn try_recv(&mut self) -> Option<LogLine> {
        self.lines.try_next()
    }

    /// How many lines were skipped, because this follower fell behind,
    /// since the last call.
    pub fn take_missed(&mut self) -> u64 {
        self.lines.take_missed()
    }
}

impl std::fmt::Debug for LogFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFollower").finish_non_exhaustive()
    }
}

impl futures_core::Stream for LogFollower {
    type Item = LogLine;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<LogLine>> {
        std::pin::Pin::new(&mut self.lines).poll_next(cx)
    }
}

/// The output of one process (across its incarnations).
pub(crate) struct LogBuffer {
    ring: Mutex<Ring>,
    capacity: usize,
    file: Mutex<Option<RotatingFile>>,
    /// Followers of new lines. Created on the first `follow`: tokio
    /// allocates every slot of a broadcast channel up front (about 72 KiB
    /// for 1,024 lines), which 1,000 daemons nobody follows should not pay.
    live: Mutex<Option<broadcast::Sender<LogLine>>>,
}

/// The newest lines, each with its sequence number.
struct Ring {
    lines: VecDeque<(u64, LogLine)>,
    /// Sequence number of the next line pushed.
    next: u64,
}

impl LogBuffer {
    /// A buffer of `capacity` lines, also written to `file`.
    pub fn new(capacity: usize, file: Option<OpenedLog>) -> Self {
        LogBuffer {
            ring: Mutex::new(Ring {
                // Grown as lines come: a daemon that writes little (most
                // write a few lines at start) does not pay for 64 slots,
                // 3.5 KiB, which was 3.5 MiB at 1,000 daemons.
                lines: VecDeque::new(),
                next: 0,
            }),
            capacity,
            file: Mutex::new(file.map(RotatingFile::opened)),
            live: Mutex::new(None),
        }
    }

    /// Sends further lines to `file`, or to no file.
    pub fn set_file(&self, file: Option<OpenedLog>) {
        let mut current = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *current = file.map(RotatingFile::opened);
    }

    /// Stores one line.
    pub fn push(&self, stream: Stream, text: String) {
        let line = LogLine {
            stream,
            time: SystemTime::now(),
            text,
        };
        if let Some(file) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            file.write_line(&line);
        }
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            // Sending fails once every follower is gone: then the channel's
            // slots are freed too (`tend logs -f` of 1,000 daemons must not
            // leave 72 MiB behind in the supervisor).
            if live
                .as_ref()
                .is_some_and(|live| live.send(line.clone()).is_err())
            {
                *live = None;
            }
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.lines.len() == self.capacity {
            ring.lines.pop_front();
        }
        let seq = ring.next;
        ring.next += 1;
        ring.lines.push_back((seq, line));
    }

    /// The sequence number the next line will get: a mark to ask later for
    /// the lines written since.
    pub fn mark(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines
            .iter()
            .skip(skip)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The newest `n` stderr lines written since `mark`, one per line, for
    /// an error message.
    pub fn stderr_tail_since(&self, mark: u64, n: usize) -> String {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<&str> = ring
            .lines
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq >= mark)
            .filter(|(_, l)| l.stream == Stream::Stderr)
            .take(n)
            .map(|(_, l)| l.text.as_str())
            .collect();
        lines.reverse();
        lines.join("\n")
    }

    /// Whether a line written since `mark` satisfies `matches`.
    pub fn any_since(&self, mark: u64, mut matches: impl FnMut(&str) -> bool) -> bool {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.lines
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq >= mark)
            .any(|(_, l)| matches(&l.text))
    }

    /// Lines pushed from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }
}

thread_local! {
    /// Read buffer shared by every capture running on this thread. Reads
    /// complete synchronously, so no capture holds it across an await, and
    /// an idle daemon costs no buffer at all (1,000 daemons with a 16 KiB
    /// buffer per pipe would cost 32 MiB).
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Bytes read from one pipe before the capture yields to other tasks, so
/// a daemon flooding its output cannot monopolise a worker thread.
const READ_BUDGET: usize = 1024 * 1024;

enum ReadOutcome {
    Eof,
    Drained,
    BudgetSpent,
}

/// Reads each pipe to its end, pushing complete lines into `buffer`
/// tagged with the pipe's stream.
///
/// One task reads all of a daemon's pipes, polled by hand: a task and its
/// `readable()` future per pipe cost about 400 bytes each for as long as
/// the daemon runs, where this holds one task for both.
pub(crate) async fn capture(pipes: Vec<(OwnedFd, Stream)>, buffer: &LogBuffer) {
    let mut readers: Vec<PipeReader> = pipes
        .into_iter()
        .filter_map(|(pipe, stream)| PipeReader::new(pipe, stream))
        .collect();
    while !readers.is_empty() {
        let spent = std::future::poll_fn(|cx| {
            let mut spent = false;
            readers.retain_mut(|reader| match reader.poll_read(cx, buffer) {
                Poll::Ready(ReadOutcome::Eof) => {
                    reader
                        .lines
                        .finish(|line| emit(buffer, reader.stream, line));
                    false
                }
                Poll::Ready(ReadOutcome::BudgetSpent) => {
                    spent = true;
                    true
                }
                Poll::Ready(ReadOutcome::Drained) | Poll::Pending => true,
            });
            if spent || readers.is_empty() {
                Poll::Ready(spent)
            } else {
                Poll::Pending
            }
        })
        .await;
        if spent {
            tokio::task::yield_now().await;
        }
    }
}

/// One output pipe of a daemon, in non-blocking mode.
struct PipeReader {
    pipe: AsyncFd<OwnedFd>,
    stream: Stream,
    lines: LineSplitter,
}

impl PipeReader {
    /// `None` when the pipe cannot be read asynchronously: its output is
    /// not captured, as before, rather than blocking a worker.
    fn new(pipe: OwnedFd, stream: Stream) -> Option<Self> {
        // tokio hands the pipe over in blocking mode.
        rustix::io::ioctl_fionbio(&pipe, true).ok()?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
        // until drop; nothing else can close or replace it.
        let pipe = unsafe { AsyncFd::register_with_interest(pipe, Interest::READABLE) }.ok()?;
        Some(PipeReader {
            pipe,
            stream,
            lines: LineSplitter::default(),
        })
    }

    /// Reads what the pipe holds: `Pending` once it is drained (the task
    /// is woken when more comes), `Eof` at its end, `BudgetSpent` after
    /// [`READ_BUDGET`] bytes (the pipe is still ready).
    fn poll_read(&mut self, cx: &mut Context<'_>, buffer: &LogBuffer) -> Poll<ReadOutcome> {
        loop {
            let Ok(mut guard) = std::task::ready!(self.pipe.poll_read_ready(cx)) else {
                return Poll::Ready(ReadOutcome::Eof);
            };
            let (lines, stream) = (&mut self.lines, self.stream);
            let outcome = READ_BUFFER.with_borrow_mut(|chunk| {
                let mut spent = 0;
                loop {
                    match rustix::io::read(guard.get_inner(), &mut chunk[..]) {
                        Ok(0) => return ReadOutcome::Eof,
                        Ok(n) => {
                            lines.feed(&chunk[..n], |line| emit(buffer, stream, line));
                            spent += n;
                            if spent >= READ_BUDGET {
                                return ReadOutcome::BudgetSpent;
                            }
                        }
                        Err(rustix::io::Errno::AGAIN) => return ReadOutcome::Drained,
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return ReadOutcome::Eof,
                    }
                }
            });
            match outcome {
                // Cleared, the next poll registers the waker again.
                ReadOutcome::Drained => guard.clear_ready(),
                outcome => return Poll::Ready(outcome),
            }
        }
    }
}

/// Splits a byte stream into lines of at most
/// [`defaults::MAX_LOG_LINE_BYTES`], skipping the rest of longer ones.
#[derive(Default)]
struct LineSplitter {
    line: Vec<u8>,
    /// Set while the rest of an over-long line is being skipped.
    skipping: bool,
}

impl LineSplitter {
    fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&mut Vec<u8>)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let segment = &bytes[..newline.unwrap_or(bytes.len())];
            if !self.skipping {
                let room = defaults::MAX_LOG_LINE_BYTES - self.line.len();
                if segment.len() > room {
                    self.line.extend_from_slice(&segment[..room]);
                    self.line.extend_from_slice(" …[line cut]".as_bytes());
                    self.flush(&mut emit);
                    self.skipping = true;
                } else {
                    self.line.extend_from_slice(segment);
                }
            }
            match newline {
                Some(end) => {
                    if !self.skipping {
                        self.flush(&mut emit);
                    }
                    self.skipping = false;
                    bytes = &bytes[end + 1..];
                }
                None => bytes = &[],
            }
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(&mut Vec<u8>)) {
        if !self.line.is_empty() {
            self.flush(&mut emit);
        }
    }

    fn flush(&mut self, emit: &mut impl FnMut(&mut Vec<u8>)) {
        emit(&mut self.line);
        self.line.clear();
        // Do not keep a long line's allocation for an idle daemon.
        if self.line.capacity() > 1024 {
            self.line = Vec::new();
        }
    }
}

fn emit(buffer: &LogBuffer, stream: Stream, line: &mut Vec<u8>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    buffer.push(stream, String::from_utf8_lossy(line).into_owned());
}

/// An append-only file rotated to `.1`, `.2`, … when it grows too large.
struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
    failed: bool,
}

impl RotatingFile {
    #[cfg(test)]
    fn new(path: PathBuf) -> Self {
        RotatingFile {
            path,
            file: None,
            size: 0,
            max_bytes: defaults::LOG_FILE_MAX_BYTES,
            keep: defaults::LOG_FILE_KEEP,
            failed: false,
        }
    }

    /// Continues the file `log` opened.
    fn opened(log: OpenedLog) -> Self {
        let size = log.file.metadata().map(|m| m.len()).unwrap_or(0);
        RotatingFile {
            path: log.path,
            file: Some(log.file),
            size,
            max_bytes: log.max_bytes,
            keep: log.keep,
            failed: false,
        }
    }

    fn write_line(&mut self, line: &LogLine) {
        let text = format!(
            "{} {} {}\n",
            format_time(line.time),
            line.stream.tag(),
            line.text
        );
        match self.try_write(text.as_bytes()) {
            Ok(()) => self.failed = false,
            Err(e) => {
                self.file = None;
                if !self.failed {
                    tracing::warn!(path = ?self.path, error = %e, "cannot write log file; lines are kept in memory only");
                    self.failed = true;
                }
            }
        }
    }

    fn try_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size + bytes.len() as u64 > self.max_bytes && self.size > 0 {
            self.file = None;
            rotate(&self.path, self.keep)?;
            self.size = 0;
        }
        if self.file.is_none() {
            let file = open_log_file(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if let Some(file) = &mut self.file {
            file.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }
}

/// Opens the log file at `path` for appending, creating it (mode 0600:
/// daemon output may hold secrets) and its missing folders (0700) if
/// needed. Never follows a symlink, and refuses a file that is not a
/// regular file of the effective user with one link, or that its group or
/// others may write: output must not go into a file someone else planted
/// or can read back through a descriptor they opened while it was open
/// to them.
pub(crate) fn open_log_file(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            crate::orphans::create_private_dir(dir)?;
        }
    }
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY
            // A FIFO planted there must not hang the open; refused below.
            | OFlags::NONBLOCK,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a symbolic link, which tend does not follow for a log file",
        ),
        e => e.into(),
    })?;
    crate::private_dir::check_own_file(&fd, path)?;
    let mode = rustix::fs::fstat(&fd)?.st_mode;
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "its mode {:o} lets others write it (chmod 600 it)",
                mode & 0o7777
            ),
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// `2026-12-02T16:05:10.153Z`: the time of a line in a log file.
fn format_time(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(time) => format!("{time:.3}"),
        Err(_) => "-".to_owned(),
    }
}

/// One line of a log file, as [`RotatingFile`] wrote it. A line without
/// the time and stream (written by an older tend, or by hand) is read as
/// stdout from the start of the epoch, with its text whole.
pub fn parse_log_line(line: &str) -> LogLine {
    let parsed = (|| {
        let (time, rest) = line.split_once(' ')?;
        let time: jiff::Timestamp = time.parse().ok()?;
        let time = SystemTime::try_from(time).ok()?;
        let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let stream = [Stream::Stdout, Stream::Stderr, Stream::Tend]
            .into_iter()
            .find(|stream| stream.tag() == tag)?;
        Some(LogLine {
            stream,
            time,
            text: text.to_owned(),
        })
    })();
    parsed.unwrap_or_else(|| {
        let (stream, text) = match line.split_once(' ') {
            Some(("err", text)) => (Stream::Stderr, text),
            Some(("out", text)) => (Stream::Stdout, text),
            _ => (Stream::Stdout, line),
        };
        LogLine {
            stream,
            time: SystemTime::UNIX_EPOCH,
            text: text.to_owned(),
        }
    })
}

/// The newest `n` lines of the log file at `path` and the files rotated
/// from it (`path.1`, … up to `keep`), oldest first: what a front end
/// shows when no manager runs. A file that is not there is skipped; one
/// that is not this user's own regular file (a symlink, another user's) is
/// refused, as tend refuses to write it. Invalid UTF-8 is
/// replaced.
pub fn read_log_file(path: &Path, keep: u32, n: usize) -> io::Result<Vec<LogLine>> {
    let mut newest_first: Vec<LogLine> = Vec::new();
    for index in 0..=keep {
        if newest_first.len() >= n {
            break;
        }
        let file = if index == 0 {
            path.to_owned()
        } else {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{index}"));
            PathBuf::from(name)
        };
        let Some(bytes) = read_own_file(&file)? else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        newest_first.extend(
            text.lines()
                .rev()
                .take(n - newest_first.len())
                .map(parse_log_line),
        );
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// The bytes of `path`, if it is there and this user's own regular file
/// (never through a symlink); `None` when it is not there.
fn read_own_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a symbolic link, which tend does not follow for a log file",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    crate::private_dir::check_own_file(&fd, path)?;
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// `log` → `log.1` → `log.2` …, dropping the oldest beyond `keep`.
fn rotate(path: &std::path::Path, keep: u32) -> io::Result<()> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            fs::rename(&from, numbered(n + 1))?;
        }
    }
    fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn captured(input: &[u8]) -> Vec<String> {
        let (read, write) = rustix::pipe::pipe().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(write);
            file.write_all(&input).unwrap();
        });
        let buffer = LogBuffer::new(100, None);
        capture(vec![(read, Stream::Stdout)], &buffer).await;
        writer.join().unwrap();
        buffer.tail(100).into_iter().map(|l| l.text).collect()
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_the_last_partial_one() {
        assert_eq!(captured(b"a\nb\r\nc").await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn cuts_long_lines_and_replaces_invalid_utf8() {
        let mut input = vec![b'x'; defaults::MAX_LOG_LINE_BYTES * 3];
        input.extend_from_slice(b"\n\xff\xfeok\n");
        let lines = captured(&input).await;
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("[line cut]"));
        assert!(lines[0].len() < defaults::MAX_LOG_LINE_BYTES + 32);
        assert_eq!(lines[1], "\u{fffd}\u{fffd}ok");
    }

    use proptest::strategy::Strategy;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l| out.push(l.clone()));
        }
        splitter.finish(|l| out.push(l.clone()));
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// However the pipe delivers the bytes, the same lines come out,
        /// and none is longer than the cap plus the cut marker.
        #[test]
        fn lines_do_not_depend_on_chunking(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000)
                .prop_map(|mut bytes| {
                    // Sparse newlines, so some lines exceed the cap.
                    for b in &mut bytes {
                        if *b > 253 {
                            *b = b'\n';
                        }
                    }
                    bytes
                }),
            cuts in proptest::collection::vec(0usize..20_000, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts {
                pieces.push(&input[start..cut]);
                start = cut;
            }
            pieces.push(&input[start..]);
            let whole = split(&[&input]);
            proptest::prop_assert_eq!(&split(&pieces), &whole);
            for line in &whole {
                proptest::prop_assert!(line.len() <= defaults::MAX_LOG_LINE_BYTES + 16);
            }
        }
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_kept_whole() {
        let line = vec![b'a'; defaults::MAX_LOG_LINE_BYTES];
        let mut input = line.clone();
        input.push(b'\n');
        let (head, tail) = input.split_at(100);
        assert_eq!(split(&[head, tail]), vec![line]);
    }

    #[test]
    fn the_follow_channel_is_freed_once_nobody_follows() {
        let buffer = LogBuffer::new(3, None);
        let mut follower = buffer.follow();
        buffer.push(Stream::Stdout, "seen".into());
        assert_eq!(follower.try_recv().unwrap().text, "seen");
        drop(follower);
        buffer.push(Stream::Stdout, "unseen".into());
        assert!(buffer.live.lock().unwrap().is_none());
        // A new follower gets a new channel.
        let mut again = buffer.follow();
        buffer.push(Stream::Stdout, "again".into());
        assert_eq!(again.try_recv().unwrap().text, "again");
    }

    #[test]
    fn ring_keeps_the_newest() {
        let buffer = LogBuffer::new(3, None);
        for i in 0..5 {
            buffer.push(Stream::Stderr, i.to_string());
        }
        let texts: Vec<_> = buffer.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["2", "3", "4"]);
        assert_eq!(buffer.stderr_tail_since(0, 2), "3\n4");
        assert_eq!(buffer.stderr_tail_since(4, 2), "4");
        assert_eq!(buffer.mark(), 5);
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn a_log_file_is_created_private_and_reused_when_ours() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/d.log");
        open_log_file(&path).unwrap().write_all(b"one\n").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        open_log_file(&path).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo\n");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let err = open_log_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_log_file_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, "keep").unwrap();
        let link = dir.path().join("app2.log");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let err = open_log_file(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Nor does the buffer write through it later (after a rotation).
        let mut file = RotatingFile::new(link);
        file.write_line(&LogLine {
            stream: Stream::Stdout,
            time: SystemTime::now(),
            text: "secret".into(),
        });
        assert_eq!(fs::read_to_string(&precious).unwrap(), "keep");
    }

    #[test]
    fn another_users_log_file_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to make a file of another user");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("app.log");
        fs::write(&planted, "").unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o666)).unwrap();
        let err = open_log_file(&planted).unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err}");
        assert_eq!(fs::metadata(&planted).unwrap().len(), 0);
    }

    #[test]
    fn a_log_file_reads_back_as_the_lines_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut file = RotatingFile::new(path.clone());
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_691_510_153);
        let lines: Vec<LogLine> = [
            (Stream::Tend, "started, pid 7"),
            (Stream::Stdout, "hello  world"),
            (Stream::Stderr, ""),
        ]
        .into_iter()
        .map(|(stream, text)| LogLine {
            stream,
            time: at,
            text: text.into(),
        })
        .collect();
        for line in &lines {
            file.write_line(line);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("2025-12-02T16:05:10.153Z tend started, pid 7\n"),
            "{text}"
        );
        assert_eq!(read_log_file(&path, 3, 10).unwrap(), lines);
        assert_eq!(read_log_file(&path, 3, 1).unwrap(), lines[2..]);
        // Lines of an older tend, without a time, are kept whole.
        let old = parse_log_line("err it broke");
        assert_eq!(
            (old.stream, old.text.as_str()),
            (Stream::Stderr, "it broke")
        );
        assert_eq!(parse_log_line("free text").text, "free text");
        // Nothing there: no lines.
        assert!(
            read_log_file(&dir.path().join("none"), 3, 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn retention_follows_the_configured_size_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut file = RotatingFile::new(path.clone());
        file.max_bytes = 100;
        file.keep = 1;
        for i in 0..20 {
            file.write_line(&LogLine {
                stream: Stream::Stdout,
                time: SystemTime::now(),
                text: format!("line {i}"),
            });
        }
        assert!(dir.path().join("d.log.1").exists());
        assert!(!dir.path().join("d.log.2").exists());
        assert!(fs::metadata(&path).unwrap().len() <= 100);
        // Read across the rotation, newest last.
        let tail = read_log_file(&path, 1, 3).unwrap();
        let texts: Vec<&str> = tail.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 17", "line 18", "line 19"]);
    }

    #[test]
    fn a_symlinked_log_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, "secret").unwrap();
        let link = dir.path().join("d.log");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        let err = read_log_file(&link, 3, 10).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut file = RotatingFile::new(path.clone());
        let line = LogLine {
            stream: Stream::Stdout,
            time: SystemTime::now(),
            text: "y".repeat(1024 * 1024),
        };
        for _ in 0..25 {
            file.write_line(&line);
        }
        assert!(path.exists());
        assert!(dir.path().join("d.log.1").exists());
        assert!(dir.path().join("d.log.2").exists());
        assert!(fs::metadata(&path).unwrap().len() <= defaults::LOG_FILE_MAX_BYTES);
    }
}
