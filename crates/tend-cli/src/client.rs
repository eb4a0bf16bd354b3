//! The client side of the control socket, used by every command but `up`
//! and `check`.

use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::protocol::{MAX_RESPONSE_BYTES, Request, Response};

/// A connection to a running `tend up`.
pub struct ControlClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    socket: PathBuf,
}

impl ControlClient {
    /// Connects to the supervisor listening on `socket`. When nobody
    /// listens there, the error says that no supervisor is running.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow!(
                    "no tend supervisor is running here (nothing listens on {}); start one with `tend up`",
                    socket.display()
                ),
                _ => anyhow!(e).context(format!("cannot connect to {}", socket.display())),
            }
        })?;
        let (reader, writer) = stream.into_split();
        Ok(ControlClient {
            reader: BufReader::new(reader),
            writer,
            socket: socket.to_owned(),
        })
    }

    /// Sends one request.
    pub async fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(request).context("cannot encode the request")?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .with_context(|| format!("cannot send to {}", self.socket.display()))
    }

    /// The next response, or `None` once the supervisor closed the
    /// connection.
    pub async fn receive(&mut self) -> anyhow::Result<Option<Response>> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_RESPONSE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await
            .with_context(|| format!("cannot read from {}", self.socket.display()))?;
        if line.is_empty() {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            bail!("the supervisor's response was cut off");
        }
        let response = serde_json::from_slice(&line).with_context(|| {
            format!(
                "the supervisor sent an invalid response: {}",
                String::from_utf8_lossy(&line).trim_end()
            )
        })?;
        Ok(Some(response))
    }

    /// Sends `request` and returns its response.
    pub async fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        let sent = self.send(request).await;
        // A supervisor that refuses the connection (another user, too many
        // clients) answers and closes at once, possibly before the request
        // was written: its answer says more than the failed write.
        match (self.receive().await, sent) {
            (Ok(Some(response)), _) => Ok(response),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(None), Ok(())) => Err(anyhow!(
                "the supervisor closed the connection without answering"
            )),
        }
    }
}
