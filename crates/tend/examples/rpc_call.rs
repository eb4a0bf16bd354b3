//! Talking to a daemon once tend has started it: connect to its socket
//! with tokio's `UnixStream` and send a JSON-RPC 2.0 `ping`.
//!
//! `echo_daemon.py` speaks newline-delimited JSON-RPC: one request per
//! line, one response line per request with an `id`. (`tend::rpc::Client`
//! does the same with one shared connection, timeouts and reconnects; this
//! example shows the wire format.) Run with:
//!
//! ```text
//! cargo run -p tend --example rpc_call
//! ```

use std::time::Duration;

use serde_json::{Value, json};
use tend::{BackgroundProcessConfig, BackgroundProcessManager};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

const ECHO_DAEMON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/daemons/echo_daemon.py"
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = tempfile::Builder::new().prefix("tend-ex-").tempdir()?;
    let socket_path = sockets.path().join("echo.sock");
    let manager = BackgroundProcessManager::new();
    let result = async {
        manager
            .start_process(
                BackgroundProcessConfig::new("echo", "python3")
                    .args([ECHO_DAEMON])
                    .socket_path(&socket_path),
            )
            .await?;
        // `start_process` returned, so the socket accepts connections.
        let stream = UnixStream::connect(&socket_path).await?;
        let mut client = Client::new(stream);
        let pong = client
            .call(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .await?;
        println!("ping -> {pong}");
        let echoed = client
            .call(json!({"jsonrpc": "2.0", "id": 2, "method": "echo", "params": {"hello": "tend"}}))
            .await?;
        println!("echo -> {echoed}");
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    manager.stop_all_processes().await;
    result
}

/// A minimal newline-delimited JSON-RPC client.
struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request and reads its response line, within 5 s.
    async fn call(&mut self, request: Value) -> Result<Value, Box<dyn std::error::Error>> {
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        self.reader.get_mut().write_all(&line).await?;
        let mut reply = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut reply));
        if read.await?? == 0 {
            return Err("the daemon closed the connection".into());
        }
        Ok(serde_json::from_str(&reply)?)
    }
}
