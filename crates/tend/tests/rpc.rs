//! `tend::rpc::Client` against fake daemons: in-test Unix listeners whose
//! behaviour each test scripts (answer out of order, never answer, send
//! garbage or an oversized line, hang up), and once against the reference
//! `echo_daemon.py` started by tend.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tempfile::TempDir;
use tend::rpc::{Client, Notification, RpcError};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
};

/// Every test body runs under this watchdog, so a hang fails instead of
/// blocking the suite.
const WATCHDOG: Duration = Duration::from_secs(30);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WATCHDOG, future)
        .await
        .expect("the test did not finish within its watchdog")
}

/// A short socket path in a fresh directory under /tmp.
fn socket_dir() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("tend-rpc-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("d.sock");
    (dir, path)
}

/// One side of an accepted connection, read line by line.
struct Conn {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        let (read, write) = stream.into_split();
        Conn {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    /// The next request, or `None` once the client hung up.
    async fn request(&mut self) -> Option<Value> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => return Some(serde_json::from_str(&line).unwrap()),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.write.write_all(bytes).await;
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// Reads until the client closes the connection.
    async fn until_closed(&mut self) {
        while self.request().await.is_some() {}
    }
}

/// The reply the reference daemon would give.
fn answer(request: &Value) -> Value {
    let id = request["id"].clone();
    match request["method"].as_str() {
        Some("ping") => json!({"jsonrpc": "2.0", "id": id, "result": "pong"}),
        Some("echo") => json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": request.get("params").cloned().unwrap_or(Value::Null),
        }),
        _ => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
        }
    }
}

/// Serves like the reference daemon until the client hangs up.
async fn echo(mut conn: Conn) {
    while let Some(request) = conn.request().await {
        if request.get("id").is_some() {
            conn.send(answer(&request)).await;
        }
    }
}

/// A listener on `path` running `handler(connection, index)` for each
/// accepted connection. Stopping (or dropping) it aborts the handlers, which
/// closes their connections.
struct FakeDaemon {
    path: PathBuf,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeDaemon {
    fn start<F, Fut>(path: &Path, handler: F) -> Self
    where
        F: Fn(Conn, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = UnixListener::bind(path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            let mut handlers = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let index = counter.fetch_add(1, Ordering::SeqCst);
                handlers.spawn(handler(Conn::new(stream), index));
            }
        });
        FakeDaemon {
            path: path.to_path_buf(),
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Like a daemon going away: removes the socket file, then closes the
    /// listener and every connection.
    fn stop(self) {
        std::fs::remove_file(&self.path).unwrap();
        self.task.abort();
    }
}

/// Fake daemons the tests share.
impl FakeDaemon {
    /// Serves every connection like the reference daemon.
    fn echo(path: &Path) -> Self {
        Self::start(path, |conn, _| echo(conn))
    }

    /// Answers each request with the messages `reply` makes of it, in order.
    fn replying<F>(path: &Path, reply: F) -> Self
    where
        F: Fn(&Value) -> Vec<Value> + Send + Sync + 'static,
    {
        let reply = Arc::new(reply);
        Self::start(path, move |mut conn, _| {
            let reply = Arc::clone(&reply);
            async move {
                while let Some(request) = conn.request().await {
                    for message in reply(&request) {
                        conn.send(message).await;
                    }
                }
            }
        })
    }

    /// Like `start`, but each handler also gets a sender whose messages
    /// reach the returned receiver.
    fn reporting<T, F, Fut>(path: &Path, handler: F) -> (Self, mpsc::UnboundedReceiver<T>)
    where
        T: Send + 'static,
        F: Fn(Conn, mpsc::UnboundedSender<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::unbounded_channel();
        let daemon = Self::start(path, move |conn, _| handler(conn, sender.clone()));
        (daemon, receiver)
    }

    /// Runs `script` on the first connection and serves every later one
    /// like the reference daemon.
    fn first_then_echo<F, Fut>(path: &Path, script: F) -> Self
    where
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let script = std::sync::Mutex::new(Some(script));
        Self::start(path, move |conn, index| {
            let script = if index == 0 {
                script.lock().unwrap().take()
            } else {
                None
            };
            async move {
                match script {
                    Some(script) => script(conn).await,
                    None => echo(conn).await,
                }
            }
        })
    }

    /// Serves only the first connection (later ones are closed at once): its
    /// first request is held, signalled on the returned receiver, and
    /// answered with "late" only once the second request has come; then it
    /// is served like the reference daemon.
    fn answering_late(path: &Path) -> (Self, oneshot::Receiver<()>) {
        let (held_tx, held) = oneshot::channel();
        let held_tx = std::sync::Mutex::new(Some(held_tx));
        let daemon = Self::start(path, move |mut conn, _| {
            let held_tx = held_tx.lock().unwrap().take();
            async move {
                let Some(held_tx) = held_tx else { return };
                let first = conn.request().await.unwrap();
                let _ = held_tx.send(());
                let second = conn.request().await.unwrap();
                conn.send(json!({"jsonrpc": "2.0", "id": first["id"], "result": "late"}))
                    .await;
                conn.send(answer(&second)).await;
                echo(conn).await;
            }
        });
        (daemon, held)
    }

    /// On the first connection: reads `requests` requests, writes `raw`, and
    /// signals on the returned receiver once the client has hung up. Later
    /// connections are served like the reference daemon.
    fn garbling_first(path: &Path, requests: usize, raw: Vec<u8>) -> (Self, oneshot::Receiver<()>) {
        let (closed_tx, closed) = oneshot::channel();
        let daemon = Self::first_then_echo(path, move |mut conn| async move {
            for _ in 0..requests {
                conn.request().await.unwrap();
            }
            conn.send_raw(&raw).await;
            conn.until_closed().await;
            let _ = closed_tx.send(());
        });
        (daemon, closed)
    }
}

/// Three concurrent `echo` calls, one for each of `params`.
async fn echo_three(client: &Client, params: [Value; 3]) -> [Result<Value, RpcError>; 3] {
    let [a, b, c] = params;
    let (a, b, c) = tokio::join!(
        client.call("echo", a),
        client.call("echo", b),
        client.call("echo", c),
    );
    [a, b, c]
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client still gets answers, over the one connection it opened.
async fn assert_still_served_on_one_connection(client: &Client, daemon: &FakeDaemon) {
    assert_eq!(
        client.call("echo", json!({"n": 2})).await.unwrap(),
        json!({"n": 2})
    );
    assert_eq!(daemon.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_echo_round_trip() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::echo(&path);
        let client = Client::new(&path);
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        let params = json!({"hello": "tend", "nested": [1, 2, {"line": "a\nb"}]});
        assert_eq!(client.call("echo", params.clone()).await.unwrap(), params);
        // Null params are left out, so the echo of "no params" is null.
        assert_eq!(client.call("echo", Value::Null).await.unwrap(), Value::Null);
        assert_eq!(daemon.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_connects_before_the_first_call() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::echo(&path);
        let client = Client::new(&path);
        // A call through another client proves the daemon accepts; the
        // idle client has not connected.
        Client::new(&path).call("ping", Value::Null).await.unwrap();
        assert_eq!(daemon.connections(), 1);
        client.call("ping", Value::Null).await.unwrap();
        assert_eq!(daemon.connections(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_out_of_order_reach_their_own_calls() {
    within(async {
        let (_dir, path) = socket_dir();
        let _daemon = FakeDaemon::start(&path, |mut conn, _| async move {
            let mut requests = Vec::new();
            while requests.len() < 3 {
                requests.push(conn.request().await.unwrap());
            }
            for request in requests.iter().rev() {
                conn.send(answer(request)).await;
            }
            echo(conn).await;
        });
        let client = Client::new(&path);
        let [a, b, c] = echo_three(&client, [json!(["a"]), json!(["b"]), json!(["c"])]).await;
        assert_eq!(a.unwrap(), json!(["a"]));
        assert_eq!(b.unwrap(), json!(["b"]));
        assert_eq!(c.unwrap(), json!(["c"]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_ignored_and_notifications_reach_subscribers() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::replying(&path, |request| {
            vec![
                json!({"jsonrpc": "2.0", "id": 424242, "result": "stray"}),
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}),
                json!({"jsonrpc": "2.0", "method": "progress", "params": {"pct": 50}}),
                answer(request),
            ]
        });
        let client = Client::new(&path);
        let mut notifications = client.notifications();
        assert_eq!(
            client.call("echo", json!({"n": 1})).await.unwrap(),
            json!({"n": 1})
        );
        assert_eq!(
            notifications.recv().await.unwrap(),
            Notification {
                method: "progress".into(),
                params: Some(json!({"pct": 50})),
            }
        );
        // Still the same connection: stray replies do not break it.
        assert_still_served_on_one_connection(&client, &daemon).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_from_the_daemon_are_answered_method_not_found() {
    within(async {
        let (_dir, path) = socket_dir();
        let (_daemon, mut seen) = FakeDaemon::reporting(&path, |mut conn, seen_tx| async move {
            let request = conn.request().await.unwrap();
            conn.send(json!({"jsonrpc": "2.0", "id": "srv-1", "method": "whoami"}))
                .await;
            conn.send(answer(&request)).await;
            while let Some(message) = conn.request().await {
                let _ = seen_tx.send(message);
            }
        });
        let client = Client::new(&path);
        client.call("ping", Value::Null).await.unwrap();
        let reply = seen.recv().await.unwrap();
        assert_eq!(reply["id"], "srv-1");
        assert_eq!(reply["error"]["code"], -32601);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_times_out_and_its_late_reply_is_ignored() {
    within(async {
        let (_dir, path) = socket_dir();
        // The first request is answered only when the second comes, which
        // is after the first call gave up.
        let (daemon, _held) = FakeDaemon::answering_late(&path);
        let client = Client::new(&path);
        let timeout = Duration::from_millis(100);
        match client.call_with_timeout("slow", json!([]), timeout).await {
            Err(RpcError::Timeout {
                method,
                timeout: waited,
            }) => {
                assert_eq!(method, "slow");
                assert_eq!(waited, timeout);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_still_served_on_one_connection(&client, &daemon).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_does_not_disturb_the_next() {
    within(async {
        let (_dir, path) = socket_dir();
        let (_daemon, got_first) = FakeDaemon::answering_late(&path);
        let client = Client::new(&path);
        tokio::select! {
            _ = client.call("slow", json!([])) => panic!("the slow call was answered"),
            _ = got_first => {}
        }
        assert_eq!(client.call("echo", json!([2])).await.unwrap(), json!([2]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_is_not_json_fails_the_call_and_drops_the_connection() {
    within(async {
        let (_dir, path) = socket_dir();
        let (daemon, closed) = FakeDaemon::garbling_first(&path, 1, b"this is not json\n".to_vec());
        let client = Client::new(&path);
        match client.call("ping", Value::Null).await {
            Err(error @ RpcError::MalformedReply { .. }) => {
                assert!(error.to_string().contains("not JSON"), "{error}");
            }
            other => panic!("expected a malformed reply, got {other:?}"),
        }
        closed.await.unwrap();
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        assert_eq!(daemon.connections(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_is_not_jsonrpc_fails_only_its_call() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::start(&path, |mut conn, _| async move {
            let request = conn.request().await.unwrap();
            conn.send(json!({"id": request["id"], "result": 1})).await;
            let request = conn.request().await.unwrap();
            conn.send(json!({"jsonrpc": "2.0", "id": request["id"]}))
                .await;
            echo(conn).await;
        });
        let client = Client::new(&path);
        for _ in 0..2 {
            assert!(matches!(
                client.call("ping", Value::Null).await,
                Err(RpcError::MalformedReply { .. })
            ));
        }
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        assert_eq!(daemon.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_object_becomes_an_rpc_error() {
    within(async {
        let (_dir, path) = socket_dir();
        let _daemon = FakeDaemon::replying(&path, |request| {
            vec![json!({
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": -32000, "message": "boom", "data": {"why": "testing"}},
            })]
        });
        let client = Client::new(&path);
        match client.call("explode", Value::Null).await {
            Err(error @ RpcError::Rpc { .. }) => {
                assert_eq!(error.to_string(), "RPC error -32000: boom");
                let RpcError::Rpc { code, data, .. } = error else {
                    unreachable!()
                };
                assert_eq!(code, -32000);
                assert_eq!(data, Some(json!({"why": "testing"})));
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_fails_every_pending_call_and_drops_the_connection() {
    within(async {
        let (_dir, path) = socket_dir();
        let mut line = vec![b'x'; 64 * 1024];
        line.push(b'\n');
        let (daemon, closed) = FakeDaemon::garbling_first(&path, 3, line);
        let client = Client::builder(&path).max_response_bytes(1024).build();
        for result in echo_three(&client, [json!([1]), json!([2]), json!([3])]).await {
            assert!(
                matches!(result, Err(RpcError::ResponseTooLarge { limit: 1024 })),
                "{result:?}"
            );
        }
        closed.await.unwrap();
        // Replies within the limit still work, on a new connection.
        assert_eq!(client.call("echo", json!([4])).await.unwrap(), json!([4]));
        assert_eq!(daemon.connections(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_without_end_is_cut_off_at_the_limit() {
    within(async {
        let (_dir, path) = socket_dir();
        let _daemon = FakeDaemon::start(&path, |mut conn, _| async move {
            conn.request().await.unwrap();
            // One byte over the limit, no newline, and the connection stays
            // open: only the limit can end this read.
            conn.send_raw(&[b' '; 1025]).await;
            conn.until_closed().await;
        });
        let client = Client::builder(&path)
            .max_response_bytes(1024)
            .default_timeout(WATCHDOG * 2)
            .build();
        assert!(matches!(
            client.call("ping", Value::Null).await,
            Err(RpcError::ResponseTooLarge { limit: 1024 })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_fails_every_pending_call_and_the_next_call_reconnects() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::first_then_echo(&path, |mut conn| async move {
            for _ in 0..3 {
                conn.request().await.unwrap();
            }
            // Dropping the connection hangs up.
        });
        let client = Client::new(&path);
        for result in echo_three(&client, [json!([1]), json!([2]), json!([3])]).await {
            assert!(
                matches!(result, Err(RpcError::ConnectionClosed)),
                "{result:?}"
            );
        }
        assert_eq!(client.call("echo", json!([4])).await.unwrap(), json!([4]));
        assert_eq!(daemon.connections(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_daemon_restarts() {
    within(async {
        let (_dir, path) = socket_dir();
        let (first, mut holding) =
            FakeDaemon::reporting(&path, |mut conn, holding_tx| async move {
                while let Some(request) = conn.request().await {
                    if request["method"] == "hold" {
                        let _ = holding_tx.send(());
                    } else {
                        conn.send(answer(&request)).await;
                    }
                }
            });
        let client = Client::new(&path);
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");

        let held = tokio::spawn({
            let client = client.clone();
            async move { client.call("hold", Value::Null).await }
        });
        holding.recv().await.unwrap();
        assert_eq!(first.connections(), 1);
        first.stop();
        assert!(matches!(
            held.await.unwrap(),
            Err(RpcError::ConnectionClosed)
        ));

        match client.call("ping", Value::Null).await {
            Err(error @ RpcError::SocketNotFound { .. }) => assert_eq!(
                error.to_string(),
                format!(
                    "socket {} not found — is the daemon running?",
                    path.display()
                )
            ),
            other => panic!("expected SocketNotFound, got {other:?}"),
        }

        let second = FakeDaemon::echo(&path);
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        assert_eq!(client.call("echo", json!([5])).await.unwrap(), json!([5]));
        assert_eq!(second.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sequential_calls_share_one_connection() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::echo(&path);
        let client = Client::new(&path);
        for i in 0..1000 {
            assert_eq!(
                client.call("echo", json!({"i": i})).await.unwrap(),
                json!({"i": i})
            );
        }
        assert_eq!(daemon.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_share_one_connection() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::echo(&path);
        let client = Client::new(&path);
        let mut calls = JoinSet::new();
        for i in 0..1000 {
            let client = client.clone();
            calls.spawn(async move { (i, client.call("echo", json!({"i": i})).await) });
        }
        let mut answered = 0;
        while let Some(joined) = calls.join_next().await {
            let (i, result) = joined.unwrap();
            assert_eq!(result.unwrap(), json!({"i": i}));
            answered += 1;
        }
        assert_eq!(answered, 1000);
        assert_eq!(daemon.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_has_no_id_and_gets_no_reply() {
    within(async {
        let (_dir, path) = socket_dir();
        let (_daemon, mut seen) = FakeDaemon::reporting(&path, |mut conn, seen_tx| async move {
            while let Some(request) = conn.request().await {
                if request.get("id").is_some() {
                    conn.send(answer(&request)).await;
                }
                let _ = seen_tx.send(request);
            }
        });
        let client = Client::new(&path);
        client
            .notify("log", json!({"level": "info"}))
            .await
            .unwrap();
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        assert_eq!(
            seen.recv().await.unwrap(),
            json!({"jsonrpc": "2.0", "method": "log", "params": {"level": "info"}})
        );
        assert_eq!(seen.recv().await.unwrap()["method"], "ping");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_say_whether_the_socket_is_missing_or_stale() {
    within(async {
        let (_dir, path) = socket_dir();
        let client = Client::new(&path);
        assert!(matches!(
            client.call("ping", Value::Null).await,
            Err(RpcError::SocketNotFound { path: p }) if p == path
        ));
        assert!(matches!(
            client.notify("ping", Value::Null).await,
            Err(RpcError::SocketNotFound { .. })
        ));
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            client.call("ping", Value::Null).await,
            Err(RpcError::ConnectionRefused { path: p }) if p == path
        ));
        // A path that is not a socket.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        let error = client.call("ping", Value::Null).await.unwrap_err();
        assert!(
            matches!(
                error,
                RpcError::ConnectionRefused { .. } | RpcError::Connect { .. }
            ),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_the_connection_and_the_next_call_reopens_it() {
    within(async {
        let (_dir, path) = socket_dir();
        let daemon = FakeDaemon::echo(&path);
        let client = Client::new(&path);
        client.call("ping", Value::Null).await.unwrap();
        client.disconnect().await;
        client.call("ping", Value::Null).await.unwrap();
        assert_eq!(daemon.connections(), 2);
    })
    .await;
}

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_to_the_reference_daemon_across_a_restart() {
    within(async {
        let (dir, path) = socket_dir();
        let manager = tend::BackgroundProcessManager::builder()
            .state_dir(dir.path().join("state"))
            .build();
        let config = tend::BackgroundProcessConfig::new("echo", "python3")
            .args([ECHO_DAEMON])
            .socket_path(&path);
        manager.start_process(config.clone()).await.unwrap();
        let client = Client::new(&path);
        assert_eq!(client.call("ping", Value::Null).await.unwrap(), "pong");
        assert_eq!(
            client.call("echo", json!({"a": [1, 2]})).await.unwrap(),
            json!({"a": [1, 2]})
        );
        assert!(matches!(
            client.call("nope", Value::Null).await,
            Err(RpcError::Rpc { code: -32601, .. })
        ));

        manager.stop_process("echo").await.unwrap();
        manager.start_process(config).await.unwrap();
        // The old connection broke; if the client had not yet read its EOF
        // when this call was made, the call fails as pending on it, and the
        // next one connects to the new daemon.
        let pong = match client.call("ping", Value::Null).await {
            Err(RpcError::ConnectionClosed) => client.call("ping", Value::Null).await,
            other => other,
        };
        assert_eq!(pong.unwrap(), "pong");
        manager.stop_all_processes().await;
    })
    .await;
}
