//! The control socket of `tend up`: accepts local clients and answers their
//! requests (see [`crate::protocol`] and `docs/PROTOCOL.md`).
//!
//! Each connection is its own task, so a slow operation (a `start` waiting
//! for readiness, a `stop` waiting out a grace period) never delays another
//! client, and `status` is answered at once from the library's snapshots.
//! A connection is refused unless its peer runs as the supervisor's user
//! (`SO_PEERCRED`). A request line longer than
//! [`MAX_REQUEST_BYTES`](crate::protocol::MAX_REQUEST_BYTES) is answered
//! with an error and the connection closed; a malformed or unknown request
//! is answered with an error and the connection goes on. A client that
//! sends nothing for [`IDLE_TIMEOUT`] or does not read its responses for
//! [`WRITE_TIMEOUT`] is disconnected, and at most [`MAX_CONNECTIONS`] are
//! served at once, so no client can hold the supervisor's resources.

mod handlers;
mod reload;
mod startup;

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tend::{BackgroundProcessConfig, BackgroundProcessManager};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{ReadHalf, WriteHalf},
    },
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::{JoinHandle, JoinSet},
};

use crate::{
    config::TendConfig,
    protocol::{MAX_REQUEST_BYTES, ProcessStatus, Request, Response, State},
};

/// How long a connection may stay silent before a request line is complete.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one response may take before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A response at least this long is followed by giving free memory
/// back (see [`crate::memory`]): about a status of 200 daemons.
const LARGE_RESPONSE_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How far preparing a daemon's Python or Node environment got.
#[derive(Debug, Clone)]
pub enum Preparation {
    /// Not begun: its daemon has not been started (`tend up NAME` without
    /// it, `autostart = false`, a reload that changed it while stopped).
    /// Its first start prepares it.
    Unprepared,
    /// Under way.
    Pending,
    /// Done: the daemon starts with this config.
    Ready(Arc<BackgroundProcessConfig>),
    /// Failed for this reason; the daemon is not started.
    Failed(String),
}

/// Why a daemon the manager does not run (yet) is not running: it waits
/// for its dependencies, or one of them failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Its start is under way: it waits for what it depends on ("waiting
    /// for db"), or, with an empty reason, for its turn as `tend up`
    /// starts everything.
    Waiting(String),
    /// It was not started: "waiting for db, which failed: ...".
    Blocked(String),
}

/// What request handlers can reach: the running supervisor.
pub struct ServerContext {
    /// The library's manager of the daemons.
    pub manager: BackgroundProcessManager,
    /// The config `tend up` runs; replaced whole by a reload.
    config: RwLock<Arc<TendConfig>>,
    /// The children of this process: the manager's daemons, the
    /// environment installers, and what the subreaper must not reap.
    pub children: tend::ChildTable,
    /// How far the environment of each daemon that has one got, by name.
    preparations: Mutex<HashMap<String, Preparation>>,
    /// Set to `true` to make `tend up` stop everything and exit.
    shutdown: watch::Sender<bool>,
    /// Connections of `down` clients, kept open until the supervisor is
    /// finished: their closing tells the client that everything is down.
    down_clients: Mutex<Vec<UnixStream>>,
    /// Daemons whose start waits for their dependencies, or was given up
    /// because one failed, by name.
    pending: Mutex<HashMap<String, Pending>>,
    /// Bumped at each change of `pending`, so waiting dependents look again.
    pending_changed: watch::Sender<u64>,
    /// Held by a reload, so two never interleave.
    reloading: tokio::sync::Mutex<()>,
}

impl ServerContext {
    /// The context of a supervisor running `config` with `manager`.
    pub fn new(
        manager: BackgroundProcessManager,
        config: TendConfig,
        children: tend::ChildTable,
    ) -> Self {
        let preparations = config
            .environments
            .keys()
            .map(|name| (name.clone(), Preparation::Unprepared))
            .collect();
        ServerContext {
            manager,
            children,
            preparations: Mutex::new(preparations),
            shutdown: watch::channel(false).0,
            down_clients: Mutex::new(Vec::new()),
            config: RwLock::new(Arc::new(config)),
            pending: Mutex::new(HashMap::new()),
            pending_changed: watch::channel(0).0,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The config in force (the one last loaded or reloaded).
    pub fn config(&self) -> Arc<TendConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn replace_config(&self, config: TendConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// The config of daemon `name` as the file gives it, or why there is
    /// none (in the one wording every command uses).
    pub fn config_of(&self, name: &str) -> Result<Arc<BackgroundProcessConfig>, String> {
        let config = self.config();
        config
            .processes
            .iter()
            .find(|process| process.name == name)
            .cloned()
            .ok_or_else(|| self.no_such_daemon(name))
    }

    /// Records why `name` is not running yet, or forgets it (`None`).
    pub fn set_pending(&self, name: &str, pending: Option<Pending>) {
        {
            let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending {
                Some(pending) => {
                    map.insert(name.to_owned(), pending);
                }
                None => {
                    map.remove(name);
                    // Every daemon waits here at `tend up`; once all have
                    // started, the table (about 120 KiB at 1,000 daemons)
                    // is given back.
                    if map.is_empty() {
                        map.shrink_to_fit();
                    }
                }
            }
        }
        self.pending_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether `name` waits for its turn or its dependencies to start.
    fn is_waiting(&self, name: &str) -> bool {
        matches!(self.pending_of(name), Some(Pending::Waiting(_)))
    }

    fn pending_of(&self, name: &str) -> Option<Pending> {
        let map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }

    /// `no daemon named "x" in FILE (its daemons: a, b)`.
    pub fn no_such_daemon(&self, name: &str) -> String {
        let config = self.config();
        let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
        format!(
            "no daemon named {name:?} in {} (its daemons: {})",
            config.file.display(),
            names.join(", ")
        )
    }

    /// Records how far preparing the environment of `name` got. Starts
    /// waiting for a preparation under way look again (through
    /// `pending_changed`).
    pub fn set_preparation(&self, name: &str, preparation: Preparation) {
        self.preparations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), preparation);
        self.pending_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the preparation of `name` on if nobody has begun it: `true`
    /// when the caller now prepares it (the record says `Pending`).
    fn claim_preparation(&self, name: &str) -> bool {
        let mut preparations = self.preparations.lock().unwrap_or_else(|e| e.into_inner());
        match preparations.get_mut(name) {
            Some(preparation @ Preparation::Unprepared) => {
                *preparation = Preparation::Pending;
                true
            }
            _ => false,
        }
    }

    fn forget_preparation(&self, name: &str) {
        self.preparations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    fn preparation(&self, name: &str) -> Option<Preparation> {
        let preparations = self.preparations.lock().unwrap_or_else(|e| e.into_inner());
        preparations.get(name).cloned()
    }

    /// The config daemon `name` starts with: the file's, or for a daemon
    /// with an environment, the one prepared for it (when `tend up` began,
    /// or at its first start: see [`Self::ensure_prepared`]).
    pub fn startable_config(&self, name: &str) -> Result<Arc<BackgroundProcessConfig>, String> {
        let config = self.config_of(name)?;
        match self.preparation(name) {
            None => Ok(config),
            Some(Preparation::Ready(prepared)) => Ok(prepared),
            Some(Preparation::Unprepared) => Err(format!(
                "the environment of {name:?} is prepared at its first start"
            )),
            Some(Preparation::Pending) => Err(format!(
                "the environment of {name:?} is still being prepared"
            )),
            Some(Preparation::Failed(reason)) => Err(format!(
                "{reason}\n(a failed environment is prepared again by the next `tend up`, or by a `tend reload` that changes the daemon: fix the problem and run one of them)"
            )),
        }
    }

    /// The status of `name`: the manager's while it is active; else why
    /// it waits or was not started (see [`Pending`]); else the manager's
    /// last word; else, for a daemon it never started, what became of its
    /// environment (`starting` while it is prepared, `error` if that
    /// failed), or `stopped`. `None` for a name the config does not have
    /// and the manager never ran.
    pub fn process_status(&self, name: &str) -> Option<ProcessStatus> {
        let config = self.config();
        self.status_of(name, config.process(name))
    }

    /// [`Self::process_status`] of `name`, whose config is `config`.
    fn status_of(
        &self,
        name: &str,
        config: Option<&BackgroundProcessConfig>,
    ) -> Option<ProcessStatus> {
        let retries = config
            .and_then(|config| config.healthcheck)
            .map(|check| check.retries);
        let info = self.manager.process_info(name).ok();
        if let Some(info) = info.as_ref().filter(|info| info.state.is_active()) {
            return Some(ProcessStatus::new(info.clone(), retries));
        }
        match self.pending_of(name) {
            Some(Pending::Waiting(reason)) => {
                return Some(ProcessStatus::not_started(
                    name,
                    State::Starting,
                    Some(reason).filter(|reason| !reason.is_empty()),
                    retries,
                ));
            }
            Some(Pending::Blocked(reason)) => {
                return Some(ProcessStatus::not_started(
                    name,
                    State::Error,
                    Some(reason),
                    retries,
                ));
            }
            None => {}
        }
        if let Some(info) = info {
            return Some(ProcessStatus::new(info, retries));
        }
        config?;
        Some(match self.preparation(name) {
            Some(Preparation::Pending) => {
                ProcessStatus::not_started(name, State::Starting, None, retries)
            }
            Some(Preparation::Failed(reason)) => {
                ProcessStatus::not_started(name, State::Error, Some(reason), retries)
            }
            Some(Preparation::Ready(_) | Preparation::Unprepared) | None => {
                ProcessStatus::not_started(name, State::Stopped, None, retries)
            }
        })
    }

    /// The status of every daemon of the config, sorted by name.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        let config = self.config();
        let mut statuses: Vec<ProcessStatus> = config
            .processes
            .iter()
            .filter_map(|process| self.status_of(&process.name, Some(process)))
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// Asks `tend up` to stop everything and exit.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once a shutdown was requested.
    pub async fn shutdown_requested(&self) {
        let mut requested = self.shutdown.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = requested.wait_for(|&requested| requested).await;
    }

    /// Closes the connections of `down` clients: call it last, when the
    /// supervisor has finished.
    pub fn release_down_clients(&self) {
        self.down_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn hold_until_exit(&self, stream: UnixStream) {
        self.down_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stream);
    }
}

/// The listening control socket; closing it stops serving and removes the
/// socket file.
pub struct ControlServer {
    path: PathBuf,
    accept_loop: JoinHandle<()>,
}

impl ControlServer {
    /// Listens on `path` (replacing a stale socket file: the caller holds
    /// the state directory's lock, so no other supervisor serves it) with
    /// mode 0600, and serves clients in a background task.
    pub fn bind(path: &Path, context: Arc<ServerContext>) -> io::Result<Self> {
        match fs::remove_file(path) {
            Ok(()) => tracing::debug!(?path, "removed stale control socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        // The state directory is 0700 already; this also keeps the socket
        // private if the directory's mode is ever widened.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(ControlServer {
            path: path.to_owned(),
            accept_loop: tokio::spawn(accept_loop(listener, context)),
        })
    }

    /// Stops accepting, ends every connection and removes the socket file.
    pub fn close(self) {
        self.accept_loop.abort();
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = ?self.path, error = %e, "cannot remove the control socket");
        }
    }
}

async fn accept_loop(listener: UnixListener, context: Arc<ServerContext>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped with this task, which aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let slot = Arc::clone(&slots).try_acquire_owned().ok();
                    connections.spawn(serve_connection(stream, Arc::clone(&context), slot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a control connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Whether a peer running as `peer_uid` may talk to a supervisor running
/// as `own_uid`.
fn check_peer_uid(peer_uid: u32, own_uid: u32) -> Result<(), String> {
    if peer_uid == own_uid {
        Ok(())
    } else {
        Err(format!(
            "permission denied: this supervisor serves uid {own_uid} only, not uid {peer_uid}"
        ))
    }
}

async fn serve_connection(
    mut stream: UnixStream,
    context: Arc<ServerContext>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let refusal = match (&slot, stream.peer_cred()) {
        (None, _) => Some(format!(
            "too many connections (at most {MAX_CONNECTIONS}); try again"
        )),
        (_, Err(e)) => Some(format!("cannot check the peer's credentials: {e}")),
        (_, Ok(peer)) => check_peer_uid(peer.uid(), rustix::process::geteuid().as_raw()).err(),
    };
    if let Some(reason) = refusal {
        tracing::warn!(%reason, "refused a control connection");
        let _ = tokio::time::timeout(
            WRITE_TIMEOUT,
            stream.write_all(&Response::error(reason).to_line()),
        )
        .await;
        return;
    }
    let outcome = {
        let mut connection = Connection::new(&mut stream);
        connection.serve(&context).await
    };
    if let Ok(After::HoldUntilExit) = outcome {
        context.hold_until_exit(stream);
    }
    drop(slot);
}

/// What the connection does after a request was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    Continue,
    /// Close the connection.
    Close,
    /// Keep the connection open, unread, until the supervisor exits.
    HoldUntilExit,
}

/// One client connection: a line reader and a response writer.
pub struct Connection<'s> {
    reader: BufReader<ReadHalf<'s>>,
    writer: WriteHalf<'s>,
}

/// What reading one request line gave.
enum ReadLine {
    Line,
    TooLong,
    End,
}

impl<'s> Connection<'s> {
    fn new(stream: &'s mut UnixStream) -> Self {
        let (reader, writer) = stream.split();
        Connection {
            reader: BufReader::new(reader),
            writer,
        }
    }

    async fn serve(&mut self, context: &Arc<ServerContext>) -> io::Result<After> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = tokio::time::timeout(IDLE_TIMEOUT, self.read_line(&mut line)).await;
            match read {
                Err(_) | Ok(Ok(ReadLine::End)) => return Ok(After::Close),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(ReadLine::TooLong)) => {
                    self.send(&Response::error(format!(
                        "request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"
                    )))
                    .await?;
                    return Ok(After::Close);
                }
                Ok(Ok(ReadLine::Line)) => {}
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let after = match serde_json::from_slice::<Request>(&line) {
                Ok(request) => {
                    tracing::debug!(?request, "control request");
                    handlers::handle(context, request, self).await?
                }
                Err(e) => {
                    self.send(&Response::error(format!("invalid request: {e}")))
                        .await?;
                    After::Continue
                }
            };
            if after != After::Continue {
                return Ok(after);
            }
        }
    }

    /// Reads one line (without its newline) into `line`, at most
    /// `MAX_REQUEST_BYTES` long.
    async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<ReadLine> {
        let limit = MAX_REQUEST_BYTES as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', line)
            .await?;
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(ReadLine::Line);
        }
        if line.len() > MAX_REQUEST_BYTES {
            return Ok(ReadLine::TooLong);
        }
        if read == 0 {
            return Ok(ReadLine::End);
        }
        // The client closed after an unterminated line: serve it anyway.
        Ok(ReadLine::Line)
    }

    /// Writes one response line.
    pub async fn send(&mut self, response: &Response) -> io::Result<()> {
        let line = response.to_line();
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&line))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))?;
        if line.len() >= LARGE_RESPONSE_BYTES {
            // Building it (a status of many daemons) left small blocks
            // free all over the heap; give back the pages they free.
            drop(line);
            crate::memory::release_free_memory();
        }
        written
    }

    /// Resolves when the client closes its end (anything it sends
    /// meanwhile is discarded). Cancel-safe.
    pub async fn closed(&mut self) {
        let mut discard = [0u8; 512];
        loop {
            match self.reader.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_uid_is_served() {
        assert!(check_peer_uid(1000, 1000).is_ok());
        let refusal = check_peer_uid(1001, 1000).unwrap_err();
        assert!(refusal.contains("permission denied"), "{refusal}");
        assert!(
            check_peer_uid(0, 1000).is_err(),
            "root is not let in either"
        );
    }
}
