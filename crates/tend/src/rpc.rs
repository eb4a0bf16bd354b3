//! [`Client`]: a JSON-RPC 2.0 client for a daemon's Unix socket.
//!
//! Daemons speak newline-delimited JSON-RPC 2.0 (see the daemon contract in
//! the crate doc): one JSON message per line, one reply line per request
//! that carries an `id`.
//!
//! ```no_run
//! use serde_json::json;
//! use tend::rpc::Client;
//!
//! # async fn demo() -> Result<(), tend::rpc::RpcError> {
//! let client = Client::new("/run/user/1000/my-plugin.sock");
//! assert_eq!(client.call("ping", json!(null)).await?, json!("pong"));
//! let echoed = client.call("echo", json!({"hello": "tend"})).await?;
//! client.notify("log", json!(["fire and forget"])).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Theory of operation
//! - **One connection, many calls.** A client opens one connection on its
//!   first use and multiplexes every call over it. Each request gets a
//!   fresh numeric `id`; the caller parks a oneshot sender under that id in
//!   the *pending map* and waits. Cloning a [`Client`] shares the connection.
//! - **A writer task and a reader task.** Callers hand complete request
//!   lines to the writer task through a channel, so a call that is dropped
//!   half-way never leaves half a line on the wire. The reader task reads
//!   reply lines with a bounded line reader (never more than the configured
//!   limit is buffered) and routes each reply to the pending entry with its
//!   `id`, in whatever order replies arrive. A reply nobody waits for (its
//!   call timed out or was dropped) is logged and ignored. Messages from the
//!   daemon without an `id` are notifications, handed to the subscribers of
//!   [`Client::notifications`].
//! - **Breaks fail everything pending, then reconnect.** When the connection
//!   ends (EOF, an I/O error, a reply line over the size limit, a line that
//!   is not JSON), the pending map is closed and drained under one lock:
//!   every waiting call fails at once, and no call can register on the dead
//!   connection afterwards. The next call opens a new connection, so a
//!   restarted daemon is picked up without any action from the caller.
//!   Calls are never retried: a request that was written may have been
//!   executed.
//! - **Deadlines.** Every call has a timeout covering connect, write and
//!   wait; when it passes the call's pending entry is removed and a late
//!   reply is ignored.

use std::{
    collections::HashMap,
    fmt, io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{broadcast, mpsc, oneshot, watch},
    task::AbortHandle,
};

/// Default limit on the length of one reply line: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// Default timeout of [`Client::call`] and [`Client::notify`]: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many daemon notifications a slow subscriber may fall behind before
/// it is told it missed some.
const NOTIFICATION_CAPACITY: usize = 1024;

/// Request lines queued for the writer task before callers wait.
const OUTGOING_CAPACITY: usize = 1024;

/// The writer task gathers queued lines into one write up to this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Buffer of the bounded line reader.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How much of an unparseable line an error message quotes.
const PREVIEW_BYTES: usize = 120;

/// JSON-RPC's "method not found", sent back for requests from the daemon.
const METHOD_NOT_FOUND: i64 = -32601;

/// Why a call to a daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// Nothing exists at the socket path.
    #[error("socket {} not found — is the daemon running?", path.display())]
    SocketNotFound {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket file exists but nothing listens on it (typically left
    /// behind by a daemon that crashed).
    #[error(
        "connection to socket {} refused — nothing is listening there (left behind by a daemon that exited?)",
        path.display()
    )]
    ConnectionRefused {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason (permissions, not a socket…).
    #[error("cannot connect to socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What `connect` said.
        #[source]
        source: io::Error,
    },
    /// No reply arrived within the timeout; the call was abandoned and a
    /// late reply will be ignored.
    #[error("call to {method:?} got no reply within {}", crate::human::duration(*timeout))]
    Timeout {
        /// The method called.
        method: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The daemon sent something that is not JSON-RPC 2.0. A line that is
    /// not JSON at all also drops the connection, since it cannot be told
    /// which call it answered.
    #[error("malformed reply from the daemon: {detail}")]
    MalformedReply {
        /// What was wrong with it.
        detail: String,
    },
    /// The daemon answered with a JSON-RPC error object.
    #[error("RPC error {code}: {message}")]
    Rpc {
        /// The error code (`-32601` is "method not found").
        code: i64,
        /// The daemon's message.
        message: String,
        /// The error object's `data` member, if it had one.
        data: Option<Value>,
    },
    /// The connection ended (EOF or an I/O error) before the reply came.
    /// The next call connects again.
    #[error("the connection to the daemon closed before it answered")]
    ConnectionClosed,
    /// A reply line was longer than the client's limit; the connection was
    /// dropped and every call waiting on it failed with this error.
    #[error(
        "a reply from the daemon exceeded the limit of {limit} bytes; the connection was dropped"
    )]
    ResponseTooLarge {
        /// The configured limit
        /// ([`ClientBuilder::max_response_bytes`]).
        limit: usize,
    },
    /// Writing a notification to the connection failed.
    #[error("I/O error on the connection to the daemon: {source}")]
    Io {
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A notification the daemon sent: a message with a `method` and no `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification's method.
    pub method: String,
    /// Its `params`, if any.
    pub params: Option<Value>,
}

/// The notifications a daemon sends, from [`Client::notifications`]: a
/// [`futures_core::Stream`] of [`Notification`]s, or
/// [`recv`](Self::recv) them one by one. It ends once the client is
/// dropped.
pub struct Notifications {
    inner: crate::lagging::SkipLagged<Notification>,
}

impl Notifications {
    /// The next notification; `None` once the client is gone.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Notification> {
        use futures_core::Stream as _;
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.inner).poll_next(cx)).await
    }

    /// The next notification if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Notification> {
        self.inner.try_next()
    }

    /// How many notifications were skipped, because this subscriber fell
    /// behind, since the last call.
    pub fn take_missed(&mut self) -> u64 {
        self.inner.take_missed()
    }
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications").finish_non_exhaustive()
    }
}

impl futures_core::Stream for Notifications {
    type Item = Notification;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Notification>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Builds a [`Client`] with non-default settings.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    path: PathBuf,
    max_response_bytes: usize,
    default_timeout: Duration,
}

impl ClientBuilder {
    /// Longest reply line accepted, in bytes, not counting the newline
    /// (default [`DEFAULT_MAX_RESPONSE_BYTES`]). A longer one fails every
    /// pending call with [`RpcError::ResponseTooLarge`] and drops the
    /// connection; no more than this is ever buffered.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Timeout of [`Client::call`] and [`Client::notify`] (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Creates the client. It connects on its first call.
    pub fn build(self) -> Client {
        let (notifications, _) = broadcast::channel(NOTIFICATION_CAPACITY);
        Client {
            inner: Arc::new(Inner {
                path: self.path,
                max_response_bytes: self.max_response_bytes,
                default_timeout: self.default_timeout,
                next_id: AtomicU64::new(1),
                connection: tokio::sync::Mutex::new(None),
                notifications,
            }),
        }
    }
}

/// A JSON-RPC 2.0 client for one daemon socket, with one persistent,
/// multiplexed connection that is reopened after it breaks.
///
/// Cloning gives another handle to the same connection. The connection is
/// closed when the last handle is dropped and no call is in flight. Calls
/// must be made from within a tokio runtime.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    max_response_bytes: usize,
    default_timeout: Duration,
    next_id: AtomicU64,
    /// The current connection; an async mutex so that concurrent first
    /// calls open one connection, not one each.
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Outlives connections, so a subscriber keeps receiving across
    /// reconnects.
    notifications: broadcast::Sender<Notification>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.path)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .field("default_timeout", &self.inner.default_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the socket at `socket_path`, with default settings.
    /// Nothing is connected until the first call.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self::builder(socket_path).build()
    }

    /// Starts building a client for the socket at `socket_path`.
    pub fn builder(socket_path: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            path: socket_path.into(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            default_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    /// Subscribes to the notifications the daemon sends (messages with a
    /// `method` and no `id`), on this and every later connection. Without a
    /// subscriber they are dropped. A subscriber that falls more than 1024
    /// notifications behind skips the oldest it missed
    /// ([`Notifications::take_missed`] says how many).
    pub fn notifications(&self) -> Notifications {
        Notifications {
            inner: crate::lagging::SkipLagged::new(self.inner.notifications.subscribe()),
        }
    }

    /// Calls `method` with `params` and returns the reply's `result`, with
    /// the client's default timeout. `Value::Null` sends no `params` member
    /// (JSON-RPC allows only an array or an object there).
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call: its pending entry is removed
    /// and a reply that still comes is ignored. If the request was already
    /// handed to the writer it is still sent, and the daemon may execute it.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.call_with_timeout(method, params, self.inner.default_timeout)
            .await
    }

    /// Like [`Self::call`], with `timeout` covering connecting, sending and
    /// waiting for the reply. When it passes the call fails with
    /// [`RpcError::Timeout`]; the connection stays open for other calls.
    ///
    /// # Cancel safety
    /// As for [`Self::call`]: dropping the future removes its pending entry.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        match tokio::time::timeout(timeout, self.call_inner(method, params)).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                method: method.to_owned(),
                timeout,
            }),
        }
    }

    /// Sends a notification: a request without `id`, which gets no reply.
    /// Returns once it was written to the socket (not when the daemon has
    /// read it), or [`RpcError::Timeout`] after the default timeout if the
    /// daemon does not read and the socket buffer stays full.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes may or may not send the
    /// notification; it is never sent partially.
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), RpcError> {
        let timeout = self.inner.default_timeout;
        match tokio::time::timeout(timeout, self.notify_inner(method, params)).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                method: method.to_owned(),
                timeout,
            }),
        }
    }

    /// Closes the current connection, if any: calls waiting on it fail with
    /// [`RpcError::ConnectionClosed`]. The next call connects again.
    ///
    /// # Cancel safety
    /// Only waits for a connect in progress on another call; dropping the
    /// future before then closes nothing.
    pub async fn disconnect(&self) {
        if let Some(connection) = self.inner.connection.lock().await.take() {
            connection.shared.close(CloseReason::Closed);
        }
    }

    async fn call_inner(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let line = encode_request(Some(id), method, params);
        let (connection, reply) = self.register(id).await?;
        // Removes the pending entry if this future is dropped or fails
        // before the reader has taken it.
        let _pending = PendingGuard {
            shared: &connection.shared,
            id,
        };
        connection
            .outgoing
            .send(Outgoing { line, ack: None })
            .await
            .map_err(|_| RpcError::ConnectionClosed)?;
        reply.await.unwrap_or(Err(RpcError::ConnectionClosed))
    }

    async fn notify_inner(&self, method: &str, params: Value) -> Result<(), RpcError> {
        let line = encode_request(None, method, params);
        let connection = self.connection().await?;
        let (ack, written) = oneshot::channel();
        connection
            .outgoing
            .send(Outgoing {
                line,
                ack: Some(ack),
            })
            .await
            .map_err(|_| RpcError::ConnectionClosed)?;
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(RpcError::Io { source }),
            Err(_) => Err(RpcError::ConnectionClosed),
        }
    }

    /// Registers a pending entry for `id` on a live connection.
    async fn register(&self, id: u64) -> Result<(Arc<Connection>, ReplyReceiver), RpcError> {
        // The connection can close between `connection()` and the
        // registration; then the next round opens a new one. Bounded, so a
        // daemon that accepts and hangs up at once cannot keep us looping.
        for _ in 0..3 {
            let connection = self.connection().await?;
            if let Some(reply) = connection.shared.register(id) {
                return Ok((connection, reply));
            }
        }
        Err(RpcError::ConnectionClosed)
    }

    /// The live connection, opened now if there is none.
    async fn connection(&self) -> Result<Arc<Connection>, RpcError> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            if !connection.shared.is_closed() {
                return Ok(Arc::clone(connection));
            }
        }
        *slot = None;
        let connection = Arc::new(Connection::open(&self.inner).await?);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

type Reply = Result<Value, RpcError>;
type ReplyReceiver = oneshot::Receiver<Reply>;

/// One line for the writer task. `ack`, if set, learns the write's result.
struct Outgoing {
    line: Vec<u8>,
    ack: Option<oneshot::Sender<io::Result<()>>>,
}

/// An open connection: the channel to its writer task and the state shared
/// with its reader task. Dropping it stops both tasks and closes the socket.
struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    tasks: [AbortHandle; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close(CloseReason::Closed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    async fn open(inner: &Inner) -> Result<Self, RpcError> {
        let path = &inner.path;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| connect_error(path, source))?;
        tracing::debug!(socket = %path.display(), "connected");
        let (read, write) = stream.into_split();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(PendingState::default()),
            shutdown,
        });
        let (outgoing, queue) = mpsc::channel(OUTGOING_CAPACITY);
        let writer = tokio::spawn(write_loop(write, queue, Arc::clone(&shared)));
        let reader = Reader {
            shared: Arc::clone(&shared),
            path: path.clone(),
            limit: inner.max_response_bytes,
            notifications: inner.notifications.clone(),
            outgoing: outgoing.downgrade(),
        };
        let reader = tokio::spawn(reader.run(read));
        Ok(Connection {
            shared,
            outgoing,
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }
}

fn connect_error(path: &Path, source: io::Error) -> RpcError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound => RpcError::SocketNotFound { path },
        io::ErrorKind::ConnectionRefused => RpcError::ConnectionRefused { path },
        _ => RpcError::Connect { path, source },
    }
}

/// State of one connection shared by its callers and its two tasks.
struct Shared {
    state: Mutex<PendingState>,
    /// Set to `true` once, when the connection closes; stops both tasks.
    shutdown: watch::Sender<bool>,
}

#[derive(Default)]
struct PendingState {
    calls: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

/// Why a connection was closed; becomes the error of every pending call.
#[derive(Debug, Clone, PartialEq)]
enum CloseReason {
    Closed,
    TooLarge(usize),
    Malformed(String),
}

impl CloseReason {
    fn error(&self) -> RpcError {
        match self {
            CloseReason::Closed => RpcError::ConnectionClosed,
            CloseReason::TooLarge(limit) => RpcError::ResponseTooLarge { limit: *limit },
            CloseReason::Malformed(detail) => RpcError::MalformedReply {
                detail: detail.clone(),
            },
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Parks a waiter for `id`; `None` if the connection already closed.
    fn register(&self, id: u64) -> Option<ReplyReceiver> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        state.calls.insert(id, tx);
        Some(rx)
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.lock().calls.remove(&id)
    }

    /// Marks the connection closed and fails every pending call with
    /// `reason`. Closing and draining happen under one lock, so a call
    /// either registered before (and is failed here) or sees `closed` and
    /// goes to a new connection; none can wait on a dead one.
    fn close(&self, reason: CloseReason) {
        let drained = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            std::mem::take(&mut state.calls)
        };
        if !drained.is_empty() {
            tracing::debug!(pending = drained.len(), ?reason, "connection closed");
        }
        for (_, waiter) in drained {
            let _ = waiter.send(Err(reason.error()));
        }
        self.shutdown.send_replace(true);
    }
}

/// Removes a call's pending entry when the call ends in any way.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.take(self.id);
    }
}

/// Encodes one request line (with its newline). `id: None` makes it a
/// notification; `Value::Null` params are left out.
fn encode_request(id: Option<u64>, method: &str, params: Value) -> Vec<u8> {
    let mut message = Map::new();
    message.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        message.insert("id".into(), Value::from(id));
    }
    message.insert("method".into(), Value::from(method));
    if !params.is_null() {
        message.insert("params".into(), params);
    }
    // Compact JSON escapes control characters, so the line holds no newline.
    let mut line = Value::Object(message).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Writes queued lines, several per syscall when they pile up, until the
/// connection closes or every sender is gone.
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut batch = Vec::new();
    let mut acks = Vec::new();
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(first) => first,
                None => break,
            },
            _ = shutdown.wait_for(|closed| *closed) => break,
        };
        batch.clear();
        let mut next = Some(first);
        while let Some(Outgoing { line, ack }) = next.take() {
            batch.extend_from_slice(&line);
            acks.extend(ack);
            if batch.len() < WRITE_BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        let written = tokio::select! {
            written = write.write_all(&batch) => written,
            _ = shutdown.wait_for(|closed| *closed) => break,
        };
        match written {
            Ok(()) => {
                for ack in acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::debug!(%error, "write to the daemon failed");
                for ack in acks.drain(..) {
                    let _ = ack.send(Err(io::Error::new(error.kind(), error.to_string())));
                }
                shared.close(CloseReason::Closed);
                break;
            }
        }
    }
}

/// The reader task's state.
struct Reader {
    shared: Arc<Shared>,
    path: PathBuf,
    limit: usize,
    notifications: broadcast::Sender<Notification>,
    /// Weak, so that the reader alone does not keep the writer running.
    outgoing: mpsc::WeakSender<Outgoing>,
}

impl Reader {
    async fn run(self, read: OwnedReadHalf) {
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
        let mut line = Vec::new();
        let reason = loop {
            let frame = tokio::select! {
                frame = read_frame(&mut reader, &mut line, self.limit) => frame,
                _ = shutdown.wait_for(|closed| *closed) => return,
            };
            match frame {
                Ok(true) => {
                    if let Err(reason) = self.handle_line(&line) {
                        tracing::warn!(socket = %self.path.display(), ?reason, "dropping the connection");
                        break reason;
                    }
                }
                Ok(false) => {
                    tracing::debug!(socket = %self.path.display(), "the daemon closed the connection");
                    break CloseReason::Closed;
                }
                Err(FrameError::TooLarge) => {
                    tracing::warn!(
                        socket = %self.path.display(),
                        limit = self.limit,
                        "reply line over the size limit; dropping the connection"
                    );
                    break CloseReason::TooLarge(self.limit);
                }
                Err(FrameError::Io(error)) => {
                    tracing::debug!(socket = %self.path.display(), %error, "read from the daemon failed");
                    break CloseReason::Closed;
                }
            }
        };
        self.shared.close(reason);
    }

    /// Routes one line. An error means the stream cannot be trusted any
    /// more and the connection must be dropped.
    fn handle_line(&self, line: &[u8]) -> Result<(), CloseReason> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let message: Value = serde_json::from_slice(line).map_err(|error| {
            CloseReason::Malformed(format!("not JSON ({error}): {}", preview(line)))
        })?;
        match message {
            // We never send batches, but routing each element is harmless.
            Value::Array(messages) => messages
                .into_iter()
                .for_each(|message| self.handle_message(message)),
            message => self.handle_message(message),
        }
        Ok(())
    }

    fn handle_message(&self, message: Value) {
        let Value::Object(mut message) = message else {
            tracing::warn!(socket = %self.path.display(), %message, "ignoring a message that is not a JSON object");
            return;
        };
        if message.contains_key("method") {
            self.handle_incoming_request(message);
            return;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            // Typically `"id": null`: the daemon could not read one of our
            // requests, and cannot say which.
            let message = Value::Object(message);
            tracing::warn!(
                socket = %self.path.display(),
                %message,
                "ignoring a reply without a usable id"
            );
            return;
        };
        let Some(waiter) = self.shared.take(id) else {
            tracing::debug!(
                socket = %self.path.display(),
                id,
                "ignoring a reply to an unknown or abandoned request"
            );
            return;
        };
        let _ = waiter.send(parse_response(id, &mut message));
    }

    /// A message with a `method`: a notification if it has no `id`, else a
    /// request, which we answer "method not found".
    fn handle_incoming_request(&self, mut message: Map<String, Value>) {
        let method = match message.remove("method") {
            Some(Value::String(method)) => method,
            other => {
                tracing::warn!(socket = %self.path.display(), method = ?other, "ignoring a message whose method is not a string");
                return;
            }
        };
        let Some(id) = message.remove("id") else {
            let _ = self.notifications.send(Notification {
                method,
                params: message.remove("params"),
            });
            return;
        };
        tracing::debug!(socket = %self.path.display(), method, "the daemon sent a request; answering method not found");
        let reply = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": METHOD_NOT_FOUND, "message": format!("Method not found: {method}")},
        });
        let mut line = reply.to_string().into_bytes();
        line.push(b'\n');
        if let Some(outgoing) = self.outgoing.upgrade() {
            // Never block the reader on the writer's queue.
            let _ = outgoing.try_send(Outgoing { line, ack: None });
        }
    }
}

/// Turns a response object into the call's result.
fn parse_response(id: u64, message: &mut Map<String, Value>) -> Reply {
    let malformed = |what: &str| RpcError::MalformedReply {
        detail: format!("reply to request {id} {what}"),
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(malformed("lacks \"jsonrpc\": \"2.0\""));
    }
    match (message.remove("result"), message.remove("error")) {
        (Some(result), None) => Ok(result),
        (None, Some(error)) => Err(parse_error_object(error).ok_or_else(|| {
            malformed("has an error member that is not {\"code\": integer, \"message\": string}")
        })?),
        (Some(_), Some(_)) => Err(malformed("has both result and error")),
        (None, None) => Err(malformed("has neither result nor error")),
    }
}

fn parse_error_object(error: Value) -> Option<RpcError> {
    let Value::Object(mut error) = error else {
        return None;
    };
    let code = error.get("code").and_then(Value::as_i64)?;
    let Some(Value::String(message)) = error.remove("message") else {
        return None;
    };
    Some(RpcError::Rpc {
        code,
        message,
        data: error.remove("data"),
    })
}

fn preview(line: &[u8]) -> String {
    let end = line.len().min(PREVIEW_BYTES);
    let mut text = String::from_utf8_lossy(&line[..end]).into_owned();
    if end < line.len() {
        text.push('…');
    }
    format!("{text:?}")
}

#[derive(Debug)]
enum FrameError {
    TooLarge,
    Io(io::Error),
}

/// Reads one line into `line` (without its `\n` or `\r\n`). Returns
/// `Ok(false)` at EOF; a last line without a newline still counts. Fails
/// with [`FrameError::TooLarge`] as soon as the line is known to exceed
/// `limit` bytes, so at most `limit` bytes (plus the reader's buffer) are
/// ever held.
///
/// Not cancel safe: a partly read line is lost if the future is dropped.
async fn read_frame<R>(reader: &mut R, line: &mut Vec<u8>, limit: usize) -> Result<bool, FrameError>
where
    R: AsyncBufRead + Unpin,
{
    line.clear();
    loop {
        let available = reader.fill_buf().await.map_err(FrameError::Io)?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let newline = available.iter().position(|&byte| byte == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if line.len() + chunk.len() > limit {
            return Err(FrameError::TooLarge);
        }
        line.extend_from_slice(chunk);
        match newline {
            Some(at) => {
                reader.consume(at + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(true);
            }
            None => {
                let consumed = available.len();
                reader.consume(consumed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn decode(line: &[u8]) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        assert!(!body.contains(&b'\n'), "a request line holds a newline");
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_request_has_the_jsonrpc_members_and_one_line() {
        let line = encode_request(Some(7), "echo", json!({"text": "a\nb"}));
        assert_eq!(
            decode(&line),
            json!({"jsonrpc": "2.0", "id": 7, "method": "echo", "params": {"text": "a\nb"}})
        );
    }

    #[test]
    fn null_params_are_left_out_and_a_notification_has_no_id() {
        let line = encode_request(None, "ping", Value::Null);
        assert_eq!(decode(&line), json!({"jsonrpc": "2.0", "method": "ping"}));
    }

    /// Frames `input` with a reader buffer of `capacity` bytes.
    fn frames(input: &[u8], capacity: usize, limit: usize) -> Vec<Result<Vec<u8>, String>> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut reader = BufReader::with_capacity(capacity, input);
                let mut line = Vec::new();
                let mut out = Vec::new();
                loop {
                    match read_frame(&mut reader, &mut line, limit).await {
                        Ok(true) => out.push(Ok(line.clone())),
                        Ok(false) => return out,
                        Err(error) => {
                            out.push(Err(format!("{error:?}")));
                            return out;
                        }
                    }
                }
            })
    }

    #[test]
    fn frames_split_on_newlines_and_drop_carriage_returns() {
        assert_eq!(
            frames(b"one\r\ntwo\n\nlast", 3, 100),
            vec![
                Ok(b"one".to_vec()),
                Ok(b"two".to_vec()),
                Ok(Vec::new()),
                Ok(b"last".to_vec())
            ]
        );
        assert_eq!(frames(b"", 3, 100), vec![]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_and_one_more_byte_fails() {
        assert_eq!(frames(b"12345\n", 2, 5), vec![Ok(b"12345".to_vec())]);
        assert_eq!(
            frames(b"123456\nnext\n", 2, 5),
            vec![Err("TooLarge".into())]
        );
        // Without a newline in sight: fails once the limit is passed, not
        // at EOF.
        assert_eq!(frames(b"123456", 64, 5), vec![Err("TooLarge".into())]);
    }

    proptest! {
        #[test]
        fn framing_returns_every_line_whatever_the_buffer_size(
            lines in proptest::collection::vec("[a-z{}\":, ]{0,40}", 0..20),
            capacity in 1usize..50,
        ) {
            let mut input = Vec::new();
            for line in &lines {
                input.extend_from_slice(line.as_bytes());
                input.push(b'\n');
            }
            let expected: Vec<_> = lines.iter().map(|l| Ok(l.as_bytes().to_vec())).collect();
            prop_assert_eq!(frames(&input, capacity, 40), expected);
        }
    }

    fn parse(reply: Value) -> Reply {
        let Value::Object(mut message) = reply else {
            panic!("not an object")
        };
        parse_response(1, &mut message)
    }

    #[test]
    fn responses_parse_into_results_and_errors() {
        assert_eq!(
            parse(json!({"jsonrpc": "2.0", "id": 1, "result": null})).unwrap(),
            Value::Null
        );
        match parse(
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no", "data": [1]}}),
        ) {
            Err(RpcError::Rpc {
                code: -32601,
                message,
                data: Some(data),
            }) => {
                assert_eq!(message, "no");
                assert_eq!(data, json!([1]));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            json!({"id": 1, "result": 1}),
            json!({"jsonrpc": "1.0", "id": 1, "result": 1}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": "boom"}),
        ] {
            assert!(
                matches!(parse(bad.clone()), Err(RpcError::MalformedReply { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn error_messages_say_what_happened() {
        let not_found = connect_error(
            Path::new("/tmp/x.sock"),
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert_eq!(
            not_found.to_string(),
            "socket /tmp/x.sock not found — is the daemon running?"
        );
        let rpc = RpcError::Rpc {
            code: -32601,
            message: "Method not found".into(),
            data: None,
        };
        assert_eq!(rpc.to_string(), "RPC error -32601: Method not found");
        assert!(matches!(
            connect_error(
                Path::new("/x"),
                io::Error::from(io::ErrorKind::ConnectionRefused)
            ),
            RpcError::ConnectionRefused { .. }
        ));
    }

    #[test]
    fn closing_fails_pending_calls_and_refuses_new_ones() {
        let (shutdown, _) = watch::channel(false);
        let shared = Shared {
            state: Mutex::new(PendingState::default()),
            shutdown,
        };
        let mut waiting = shared.register(1).unwrap();
        shared.close(CloseReason::TooLarge(10));
        assert!(matches!(
            waiting.try_recv(),
            Ok(Err(RpcError::ResponseTooLarge { limit: 10 }))
        ));
        assert!(shared.register(2).is_none());
        assert!(*shared.shutdown.borrow());
    }

    #[test]
    fn a_dropped_call_leaves_no_pending_entry() {
        let (shutdown, _) = watch::channel(false);
        let shared = Shared {
            state: Mutex::new(PendingState::default()),
            shutdown,
        };
        let _reply = shared.register(5).unwrap();
        drop(PendingGuard {
            shared: &shared,
            id: 5,
        });
        assert!(shared.lock().calls.is_empty());
    }
}
