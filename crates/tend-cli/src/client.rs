//! The client side of the control socket, used by every command but `up`
//! and `check`.
//!
//! The server checks its clients; a client checks its server too, before
//! it sends anything (call parameters and event data may be secrets):
//! another user could otherwise pre-create the state directory and listen
//! there. The socket's directory must be a directory (not a symlink) of
//! this user or root that nobody else may write, the socket a socket, and
//! the peer — by `SO_PEERCRED`, which the kernel fills in and the peer
//! cannot forge — must run as this user or as root.

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

/// Nobody listens on the control socket: no supervisor runs there.
#[derive(Debug)]
pub struct NotRunning {
    /// The control socket.
    pub socket: PathBuf,
}

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no tend supervisor is running here (nothing listens on {}); start one with `tend up`",
            self.socket.display()
        )
    }
}

impl std::error::Error for NotRunning {}

/// A connection to a running `tend up`.
pub struct ControlClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    socket: PathBuf,
}

impl ControlClient {
    /// Connects to the supervisor listening on `socket`. When nobody
    /// listens there, the error says that no supervisor is running.
    /// The server is checked first (see the module doc); nothing is sent
    /// to one that fails the check.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        check_socket_dir(socket)?;
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow!(NotRunning {
                    socket: socket.to_owned(),
                }),
                _ => anyhow!(e).context(format!("cannot connect to {}", socket.display())),
            })?;
        let peer = stream
            .peer_cred()
            .with_context(|| format!("cannot tell who listens on {}", socket.display()))?;
        check_peer(
            socket,
            peer.uid(),
            peer.pid(),
            rustix::process::geteuid().as_raw(),
        )?;
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

/// Refuses a control socket whose folder another user could have made or
/// could write into (so could have put the socket there): the folder must
/// be a directory reached without following a final symlink, owned by this
/// user or root, writable by nobody else; the socket must be a socket
/// (not a symlink). A socket that is not there yet passes: connecting then
/// says that no supervisor runs.
fn check_socket_dir(socket: &Path) -> anyhow::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let me = rustix::process::geteuid().as_raw();
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let refuse = |what: String| {
        anyhow!(
            "refusing to talk to {}: {what}; another user may have put it there, so nothing \
             was sent (check that directory, or remove it and run `tend up` again)",
            socket.display()
        )
    };
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            return Err(refuse(format!(
                "its directory {} is a symbolic link",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(
                anyhow!(io::Error::from(e)).context(format!("cannot open {}", dir.display()))
            );
        }
    };
    let stat = rustix::fs::fstat(&fd)?;
    if stat.st_uid != me && stat.st_uid != 0 {
        return Err(refuse(format!(
            "its directory {} belongs to uid {}, not to this user (uid {me}) or root",
            dir.display(),
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(refuse(format!(
            "its directory {} may be written by others (mode {:o})",
            dir.display(),
            stat.st_mode & 0o7777
        )));
    }
    let Some(name) = socket.file_name() else {
        return Ok(());
    };
    match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::Socket => Err(refuse(
            "it is not a socket (a symbolic link, or a file)".into(),
        )),
        _ => Ok(()),
    }
}

/// Refuses a server that runs as neither this user nor root.
fn check_peer(socket: &Path, uid: u32, pid: Option<i32>, me: u32) -> anyhow::Result<()> {
    if uid == me || uid == 0 {
        return Ok(());
    }
    let pid = pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string());
    bail!(
        "refusing to talk to {}: the process listening there runs as uid {uid} (pid {pid}), \
         not as this user (uid {me}) or root; it is not your tend supervisor, and nothing was \
         sent to it",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_user_or_root_is_trusted_as_server() {
        let socket = Path::new("/s/tend.sock");
        assert!(check_peer(socket, 1000, Some(5), 1000).is_ok());
        assert!(check_peer(socket, 0, Some(5), 1000).is_ok());
        let refusal = check_peer(socket, 65534, Some(42), 1000)
            .unwrap_err()
            .to_string();
        for part in ["/s/tend.sock", "uid 65534", "pid 42", "nothing was sent"] {
            assert!(refusal.contains(part), "{part}: {refusal}");
        }
    }
}
