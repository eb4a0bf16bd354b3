//! Batched health checks: one task per manager checks every daemon whose
//! probe is [`HealthProbe::Connect`] or [`HealthProbe::Accept`] from one
//! socket-diagnostics dump per tick (see [`crate::sockdiag`]), instead of
//! each supervisor connecting to its daemon.
//!
//! A connect probe proves that a listener is bound to the socket file and
//! that its accept queue is not full. The dump shows the same for all
//! daemons at once, without waking any of them. So a `Connect` check fails
//! when
//! - the socket file is gone or cannot be examined;
//! - no listener is bound to it (confirmed by a connect, since a dump may
//!   skip a listener — see [`crate::sockdiag`]);
//! - its accept queue is full.
//!
//! An `Accept` check also proves that the daemon calls `accept`: each check
//! plants a connection — a connect whose write side is shut at once, so the
//! daemon reads end of file — and fails when the connection planted before
//! is still waiting in the accept queue after the check's timeout. That
//! catches a daemon frozen by SIGSTOP or stuck outside its accept loop,
//! which a connect sees only once the backlog is full (with a backlog of
//! 128, after 128 checks). The board keeps the client open until the daemon
//! has accepted it, because the kernel reports a closed client's connection
//! without an inode to recognise it by. It is a separate probe because a
//! daemon that serves one request at a time and is busy with a long one
//! does not accept meanwhile; `Connect` keeps it, `Accept` replaces it.
//!
//! Checks fall due on a tick shared by the whole board, a quarter of the
//! interval (at most 250 ms), so daemons started at different moments
//! share dumps; a check is never early, and at most that much late.
//! A daemon the dump never finds although a connect reaches it (some file
//! systems report another device to `stat` than to the dump) is checked by
//! connects from then on, and an `Accept` check then becomes a connect.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use tokio::{
    sync::{Notify, oneshot},
    time::Instant,
};

use crate::{
    config::{HealthCheck, HealthProbe},
    probe::{
        self, tcp,
        tcpdiag::{TcpDiag, TcpListeners},
    },
    shared::Shared,
    sockdiag::{self, Snapshot, SockDiag},
};

/// After this many checks in a row in which the dump did not list a
/// listener a connect reached, the daemon is checked by connects only.
const UNMATCHED_LIMIT: u32 = 3;

/// The tick checks of `interval` are rounded up to.
fn board_tick(interval: Duration) -> Duration {
    (interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// Rounds `at` up to a multiple of `tick` since a base shared by the whole
/// process, so checks that fall due close together share a wake-up. The
/// time is never moved earlier.
pub(crate) fn on_shared_tick(at: Instant, tick: Duration) -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    let tick = tick.max(Duration::from_nanos(1));
    let ticks = at
        .saturating_duration_since(base)
        .as_nanos()
        .div_ceil(tick.as_nanos());
    base + Duration::from_nanos(u64::try_from(ticks * tick.as_nanos()).unwrap_or(u64::MAX))
}

/// One daemon's checks.
struct Entry {
    path: PathBuf,
    /// The address of a [`HealthProbe::Tcp`] check (then `path` is empty).
    tcp: Option<std::net::SocketAddr>,
    check: HealthCheck,
    /// Plant a connection at each check and require it to be accepted.
    require_accept: bool,
    shared: Arc<Shared>,
    next_due: Instant,
    failures: u32,
    /// The connection planted by the last `Accept` check: the client
    /// socket, kept open until the daemon accepts it, its inode and when it
    /// was planted.
    planted: Option<Planted>,
    /// Checks in a row in which a connect reached a listener the dump did
    /// not list.
    unmatched: u32,
    /// Checked by connects only (the dump does not find this daemon).
    connect_only: bool,
    /// Told the reason once the checks fail `retries` times in a row.
    unhealthy: Option<oneshot::Sender<String>>,
    /// A check passed and the daemon's snapshot says so.
    passed: bool,
}

/// A connection an `Accept` check planted.
struct Planted {
    _client: OwnedFd,
    ino: u32,
    at: Instant,
}

struct BoardState {
    diag: SockDiag,
    snapshot: Snapshot,
    /// The dumper of listening TCP sockets, for `Tcp` checks.
    tcp_diag: TcpDiag,
    /// Its last dump; empty when it failed (then `Tcp` checks connect).
    tcp_snapshot: TcpListeners,
    entries: HashMap<u64, Entry>,
    next_id: u64,
    /// When the task wakes next on its own (`None`: only when woken). A
    /// registration due later needs no wake-up, so starting many daemons
    /// does not make the task walk every entry once per daemon.
    wakes_at: Option<Instant>,
}

/// The batched checker of one manager.
pub(crate) struct HealthBoard {
    state: Mutex<BoardState>,
    /// Wakes the board's task: a registration may fall due before the
    /// task's next wake-up, and dropping the board ends it.
    wake: Arc<Notify>,
}

impl HealthBoard {
    /// Starts the board's task, or returns why the kernel's socket
    /// diagnostics cannot be used (then supervisors check by connecting).
    pub fn start() -> std::io::Result<Arc<Self>> {
        let diag = SockDiag::open()?;
        let wake = Arc::new(Notify::new());
        let board = Arc::new(HealthBoard {
            state: Mutex::new(BoardState {
                diag,
                snapshot: Snapshot::default(),
                tcp_diag: TcpDiag::new(),
                tcp_snapshot: TcpListeners::default(),
                entries: HashMap::new(),
                next_id: 0,
                wakes_at: None,
            }),
            wake: Arc::clone(&wake),
        });
        tokio::spawn(run(Arc::downgrade(&board), wake));
        Ok(board)
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the board runs checks of `probe` (the others stay with the
    /// supervisor).
    pub fn runs(probe: &HealthProbe) -> bool {
        matches!(
            probe,
            HealthProbe::Connect | HealthProbe::Accept | HealthProbe::Tcp(_)
        )
    }

    /// Starts checking the daemon listening on `path` (or, for
    /// [`HealthProbe::Tcp`], on its address) every `check.interval` with
    /// `probe` (one the board [`runs`](Self::runs));
    /// the registration reports when it is unhealthy and stops the checks
    /// when dropped. The daemon's failed-check count in `shared` is kept up
    /// to date.
    pub fn register(
        self: &Arc<Self>,
        path: &Path,
        check: HealthCheck,
        probe: &HealthProbe,
        shared: Arc<Shared>,
    ) -> Registration {
        let (unhealthy, verdict) = oneshot::channel();
        let next_due = on_shared_tick(Instant::now() + check.interval, board_tick(check.interval));
        let (id, wake) = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            let wake = state.wakes_at.is_none_or(|at| next_due < at);
            state.entries.insert(
                id,
                Entry {
                    path: path.to_path_buf(),
                    tcp: match probe {
                        HealthProbe::Tcp(tcp) => Some(tcp.address),
                        _ => None,
                    },
                    check,
                    require_accept: *probe == HealthProbe::Accept,
                    shared,
                    next_due,
                    failures: 0,
                    planted: None,
                    unmatched: 0,
                    connect_only: false,
                    unhealthy: Some(unhealthy),
                    passed: false,
                },
            );
            (id, wake)
        };
        if wake {
            self.wake.notify_one();
        }
        Registration {
            board: Arc::clone(self),
            id,
            verdict,
        }
    }

    /// Whether a check is due at `now`.
    fn anything_due(&self, now: Instant) -> bool {
        self.lock().entries.values().any(|e| e.next_due <= now)
    }

    /// When the next check falls due; the task sleeps until then.
    fn next_due(&self) -> Option<Instant> {
        let mut state = self.lock();
        state.wakes_at = state.entries.values().map(|e| e.next_due).min();
        state.wakes_at
    }

    /// Runs the checks that are due at `now`; returns when the next one
    /// falls due.
    fn run_due(&self, now: Instant) -> Option<Instant> {
        let mut connecting = Vec::new();
        {
            let mut state = self.lock();
            let state = &mut *state;
            let due = |e: &Entry| e.next_due <= now;
            if state
                .entries
                .values()
                .any(|e| due(e) && !e.connect_only && e.tcp.is_none())
            {
                if let Err(e) = state.diag.dump_into(&mut state.snapshot) {
                    // No verdict from the dump this tick: connect instead.
                    tracing::debug!(error = %e, "socket diagnostics dump failed");
                    state.snapshot = Snapshot::default();
                }
            }
            let mut tcp_dumped = false;
            if state.entries.values().any(|e| due(e) && e.tcp.is_some()) {
                match state.tcp_diag.dump_into(&mut state.tcp_snapshot) {
                    Ok(()) => tcp_dumped = true,
                    Err(e) => tracing::debug!(error = %e, "TCP socket diagnostics dump failed"),
                }
            }
            let mut failed = Vec::new();
            for (&id, entry) in state.entries.iter_mut().filter(|(_, e)| due(e)) {
                entry.next_due =
                    on_shared_tick(now + entry.check.interval, board_tick(entry.check.interval));
                let result = match entry.tcp {
                    Some(address) => {
                        let listed = tcp_dumped
                            .then(|| state.tcp_snapshot.reaching(address))
                            .flatten();
                        match listed {
                            Some(listener) if listener.is_full() => Err(format!(
                                "{address}: the accept queue is full ({} connections waiting; \
                                 the daemon is not accepting)",
                                listener.queued
                            )),
                            Some(_) => Ok(()),
                            // Not listed (or no dump): a connect decides.
                            None => match tcp::start_connect(address, entry.check.timeout) {
                                Ok(None) => Ok(()),
                                Ok(Some(under_way)) => {
                                    connecting.push((id, under_way));
                                    continue;
                                }
                                Err(reason) => Err(reason),
                            },
                        }
                    }
                    None => check(entry, &state.snapshot, now),
                };
                if record(entry, result) {
                    failed.push(id);
                }
            }
            for id in failed {
                state.entries.remove(&id);
            }
        }
        if !connecting.is_empty() {
            // Waited on without the lock, so registrations go on meanwhile.
            let (ids, under_way): (Vec<u64>, Vec<tcp::Connecting>) = connecting.into_iter().unzip();
            let results = tcp::finish_connects(&under_way);
            let mut state = self.lock();
            for (id, result) in ids.into_iter().zip(results) {
                if let Some(entry) = state.entries.get_mut(&id) {
                    if record(entry, result) {
                        state.entries.remove(&id);
                    }
                }
            }
        }
        let mut state = self.lock();
        state.wakes_at = state.entries.values().map(|e| e.next_due).min();
        state.wakes_at
    }
}

impl Drop for HealthBoard {
    fn drop(&mut self) {
        // The task holds only a weak reference: wake it so it sees the
        // board is gone and ends.
        self.wake.notify_one();
    }
}

/// The board's task: sleeps until the next check falls due or a
/// registration arrives, then runs what is due. Ends with the board.
///
/// The checks run on the blocking pool: a dump takes a millisecond or more
/// of system calls with a thousand daemons, and a socket path on a slow
/// file system could stall a `stat`; neither should hold up a runtime
/// worker.
async fn run(board: Weak<HealthBoard>, wake: Arc<Notify>) {
    loop {
        let Some(board) = board.upgrade() else {
            return;
        };
        let now = Instant::now();
        let next = if board.anything_due(now) {
            match tokio::task::spawn_blocking(move || board.run_due(now)).await {
                Ok(next) => next,
                // The runtime is shutting down.
                Err(_) => return,
            }
        } else {
            board.next_due()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Applies one check's result to `entry`; true when the daemon is to be
/// replaced.
fn record(entry: &mut Entry, result: Result<(), String>) -> bool {
    let before = entry.failures;
    match result {
        Ok(()) => {
            entry.failures = 0;
            if !entry.passed {
                entry.passed = true;
                entry.shared.health_passed();
            }
        }
        Err(reason) => {
            entry.failures += 1;
            tracing::debug!(path = ?entry.path, failures = entry.failures, %reason, "health check failed");
            if entry.failures >= entry.check.retries {
                let failures = entry.failures;
                entry
                    .shared
                    .update(|info| info.failed_health_checks = failures);
                if let Some(unhealthy) = entry.unhealthy.take() {
                    let _ = unhealthy.send(format!(
                        "failed {failures} health checks in a row ({reason})"
                    ));
                }
                return true;
            }
        }
    }
    if entry.failures != before {
        let failures = entry.failures;
        entry
            .shared
            .update(|info| info.failed_health_checks = failures);
    }
    false
}

/// One check of `entry` against `snapshot` (empty when the dump failed).
fn check(entry: &mut Entry, snapshot: &Snapshot, now: Instant) -> Result<(), String> {
    let path = entry.path.as_path();
    if entry.connect_only || snapshot.is_empty() {
        return probe::connect_check(path);
    }
    let id = match sockdiag::file_id(path) {
        Ok(id) => id,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("socket {path:?} is gone"));
        }
        Err(e) => return Err(format!("cannot examine socket {path:?}: {e}")),
    };
    let Some(listener) = snapshot.listener(id) else {
        // A dump may skip a listener, or never match this file system's
        // device numbers: a connect decides.
        probe::connect_check(path)?;
        entry.unmatched += 1;
        if entry.unmatched >= UNMATCHED_LIMIT {
            tracing::debug!(
                ?path,
                "socket diagnostics do not find this daemon; checking by connects"
            );
            entry.connect_only = true;
            entry.planted = None;
        }
        return Ok(());
    };
    entry.unmatched = 0;
    if listener.is_full() {
        return Err(format!(
            "socket {path:?} backlog is full ({} connections waiting; the daemon is not accepting)",
            listener.queued
        ));
    }
    if !entry.require_accept {
        return Ok(());
    }
    if let Some(planted) = &entry.planted {
        if listener.pending.contains(&planted.ino) {
            let waited = now.saturating_duration_since(planted.at);
            if waited >= entry.check.timeout {
                return Err(format!(
                    "a connection to {path:?} has waited {waited:?} to be accepted"
                ));
            }
            // Still within the timeout: the next check looks again.
            return Ok(());
        }
    }
    // Accepted (or none yet): plant the next one.
    let (client, ino) = probe::plant_connection(path)?;
    entry.planted = Some(Planted {
        _client: client,
        ino,
        at: now,
    });
    Ok(())
}

/// The board checks a daemon while this lives.
pub(crate) struct Registration {
    board: Arc<HealthBoard>,
    id: u64,
    verdict: oneshot::Receiver<String>,
}

impl Registration {
    /// Resolves with the reason once the daemon failed `retries` checks in
    /// a row. Cancel-safe.
    pub async fn unhealthy(&mut self) -> String {
        match (&mut self.verdict).await {
            Ok(reason) => reason,
            // The board is gone with its manager: no verdict will come.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.board.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::{logs::LogBuffer, sockdiag::tests::bound};

    fn entry(path: &Path) -> Entry {
        let (events, _) = tokio::sync::broadcast::channel(1);
        Entry {
            path: path.to_path_buf(),
            tcp: None,
            require_accept: false,
            check: HealthCheck::new(Duration::from_millis(100), Duration::from_millis(300), 3),
            shared: Arc::new(Shared::new("t", LogBuffer::new(1, None), events)),
            next_due: Instant::now(),
            failures: 0,
            planted: None,
            unmatched: 0,
            connect_only: false,
            unhealthy: None,
            passed: false,
        }
    }

    fn dump() -> Snapshot {
        let mut snapshot = Snapshot::default();
        SockDiag::open().unwrap().dump_into(&mut snapshot).unwrap();
        snapshot
    }

    fn accept_entry(path: &Path) -> Entry {
        Entry {
            require_accept: true,
            ..entry(path)
        }
    }

    #[test]
    fn a_connect_check_passes_a_listener_whose_connections_wait() {
        // A daemon busy with one request does not accept meanwhile: a
        // connect still succeeds, and so does the check, however long.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _listener = bound(&path, Some(8));
        let _client = UnixStream::connect(&path).unwrap();
        let mut entry = entry(&path);
        let start = Instant::now();
        assert_eq!(check(&mut entry, &dump(), start), Ok(()));
        let later = start + Duration::from_secs(600);
        assert_eq!(check(&mut entry, &dump(), later), Ok(()));
        assert!(entry.planted.is_none(), "connect checks plant nothing");
    }

    #[test]
    fn an_accept_check_fails_once_its_connection_waited_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _listener = bound(&path, Some(8));
        let mut entry = accept_entry(&path);
        let start = Instant::now();
        assert_eq!(check(&mut entry, &dump(), start), Ok(()));
        let planted = entry.planted.as_ref().expect("a connection planted").ino;
        let soon = start + Duration::from_millis(299);
        assert_eq!(check(&mut entry, &dump(), soon), Ok(()));
        assert_eq!(
            entry.planted.as_ref().unwrap().ino,
            planted,
            "one at a time"
        );
        let late = start + Duration::from_millis(300);
        let error = check(&mut entry, &dump(), late).unwrap_err();
        assert!(error.contains("waited 300ms"), "{error}");
    }

    #[test]
    fn an_accept_check_passes_once_its_connection_is_accepted_and_plants_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = std::os::unix::net::UnixListener::from(bound(&path, Some(8)));
        let mut entry = accept_entry(&path);
        let start = Instant::now();
        assert_eq!(check(&mut entry, &dump(), start), Ok(()));
        let first = entry.planted.as_ref().unwrap().ino;
        let (mut accepted, _) = listener.accept().unwrap();
        // The planted connection sends nothing and is shut for writing.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut accepted, &mut rest).unwrap();
        assert!(rest.is_empty());
        let later = start + Duration::from_secs(10);
        assert_eq!(check(&mut entry, &dump(), later), Ok(()));
        let second = entry.planted.as_ref().unwrap();
        assert_ne!(second.ino, first);
        assert_eq!(second.at, later);
    }

    #[test]
    fn a_full_accept_queue_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _listener = bound(&path, Some(1));
        let _clients: Vec<_> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let error = check(&mut entry(&path), &dump(), Instant::now()).unwrap_err();
        assert!(error.contains("backlog is full"), "{error}");
    }

    #[test]
    fn no_listener_or_no_file_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _other = bound(&dir.path().join("other.sock"), Some(1));
        let error = check(&mut entry(&path), &dump(), Instant::now()).unwrap_err();
        assert!(error.contains("is gone"), "{error}");
        // Bound, not listening: connects are refused.
        let _bound = bound(&path, None);
        let error = check(&mut entry(&path), &dump(), Instant::now()).unwrap_err();
        assert!(error.contains("connect to"), "{error}");
    }

    #[test]
    fn a_daemon_the_dump_does_not_list_is_checked_by_connects() {
        let dir = tempfile::tempdir().unwrap();
        let _other = bound(&dir.path().join("other.sock"), Some(1));
        // A dump that never finds the daemon (another device number, or a
        // skipped listener). Taken before the daemon listens, it could
        // still hold a listener that closed since and whose socket file's
        // inode number the daemon's now reuses: that one is forgotten.
        let mut stale = dump();
        let path = dir.path().join("d.sock");
        let _listener = bound(&path, Some(8));
        stale.forget(sockdiag::file_id(&path).unwrap());
        let mut entry = entry(&path);
        for _ in 0..UNMATCHED_LIMIT {
            assert!(!entry.connect_only);
            assert_eq!(check(&mut entry, &stale, Instant::now()), Ok(()));
        }
        assert!(entry.connect_only);
        // An empty snapshot (a failed dump) also falls back to a connect.
        assert_eq!(
            check(
                &mut self::entry(&path),
                &Snapshot::default(),
                Instant::now()
            ),
            Ok(())
        );
    }

    #[test]
    fn failures_are_counted_until_retries_then_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut entry = entry(&dir.path().join("d.sock"));
        let (unhealthy, mut verdict) = oneshot::channel();
        entry.unhealthy = Some(unhealthy);
        assert!(!record(&mut entry, Err("one".into())));
        assert!(!record(&mut entry, Ok(())));
        assert_eq!(entry.shared.snapshot().failed_health_checks, 0);
        assert!(!record(&mut entry, Err("one".into())));
        assert!(!record(&mut entry, Err("two".into())));
        assert_eq!(entry.shared.snapshot().failed_health_checks, 2);
        assert!(verdict.try_recv().is_err());
        assert!(record(&mut entry, Err("three".into())));
        assert_eq!(entry.shared.snapshot().failed_health_checks, 3);
        assert_eq!(
            verdict.try_recv().unwrap(),
            "failed 3 health checks in a row (three)"
        );
    }

    #[tokio::test]
    async fn tcp_checks_run_on_the_board_and_fail_when_nothing_listens() {
        let Ok(board) = HealthBoard::start() else {
            return; // no socket diagnostics here: the board does not run
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let check = HealthCheck {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            retries: 3,
        };
        let shared = |name: &str| {
            let (events, _) = tokio::sync::broadcast::channel(1);
            Arc::new(Shared::new(name, LogBuffer::new(1, None), events))
        };
        let (up, down) = (shared("up"), shared("down"));
        let probe = |address| HealthProbe::Tcp(crate::config::TcpProbe::new(address));
        let _up = board.register(Path::new(""), check, &probe(open), Arc::clone(&up));
        let mut down_checks = board.register(Path::new(""), check, &probe(closed), down);
        let reason = tokio::time::timeout(Duration::from_secs(20), down_checks.unhealthy())
            .await
            .expect("three refused connects fail the check");
        assert!(
            reason.contains("failed 3 health checks in a row"),
            "{reason}"
        );
        assert!(reason.contains("refused"), "{reason}");
        // The listening one was checked on the same ticks (from the dump
        // of listening TCP sockets, or by connects), and passed.
        assert_eq!(up.snapshot().failed_health_checks, 0);
        drop(listener);
    }

    #[test]
    fn checks_land_on_a_shared_tick_never_early() {
        let tick = board_tick(Duration::from_secs(1));
        assert_eq!(tick, Duration::from_millis(250));
        let now = Instant::now();
        for offset_ms in [0u64, 1, 7, 249, 250, 251, 999] {
            let at = now + Duration::from_millis(offset_ms);
            let aligned = on_shared_tick(at, tick);
            assert!(aligned >= at);
            assert!(aligned - at <= tick);
            assert_eq!(on_shared_tick(aligned, tick), aligned);
        }
        assert_eq!(
            board_tick(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
        assert_eq!(
            board_tick(Duration::from_millis(100)),
            Duration::from_millis(25)
        );
    }
}
