//! Socket files tend must not take over: only a stream socket that refuses
//! connections (no live socket bound there) is stale. A live datagram or
//! seqpacket socket, or one tend may not connect to, is someone else's: the
//! start fails with a clear error and the socket keeps working.

use std::{
    os::{
        fd::OwnedFd,
        unix::{
            fs::PermissionsExt,
            net::{UnixDatagram, UnixListener, UnixStream},
        },
    },
    path::Path,
    process::{Command, Stdio},
};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
use tend::{Error, ProcessState};

use crate::harness::*;

/// Starts daemon `a` on `socket`; asserts it fails as taken, without
/// spawning anything, with an error naming the path and containing
/// `what`; returns the message.
async fn assert_start_refused(sb: &Sandbox, socket: &Path, what: &str) -> String {
    let starts = sb.path("starts");
    let error = sb
        .manager
        .start_process(
            sb.daemon("a", &["--record-start", starts.to_str().unwrap()])
                .socket_path(socket),
        )
        .await
        .unwrap_err();
    let message = error.to_string();
    eprintln!("refused as expected: {message}");
    assert!(matches!(error, Error::SocketNotStale { .. }), "{error:?}");
    assert!(message.contains(&format!("{socket:?}")), "{message}");
    assert!(message.contains(what), "{message}");
    assert_eq!(sb.manager.state("a").ok(), Some(ProcessState::Error));
    assert!(lines(&starts).is_empty(), "a daemon was spawned");
    assert!(socket.exists(), "the foreign socket file was removed");
    message
}

/// A socket of `kind` bound at `path`.
fn bound(kind: SocketType, path: &Path) -> OwnedFd {
    let fd = rustix::net::socket(AddressFamily::UNIX, kind, None).unwrap();
    rustix::net::bind(&fd, &SocketAddrUnix::new(path).unwrap()).unwrap();
    fd
}

#[tokio::test]
async fn live_datagram_socket_is_refused_and_left_alone() {
    let sb = Sandbox::new();
    let socket = sb.socket("a");
    let other = UnixDatagram::bind(&socket).unwrap();
    assert_start_refused(&sb, &socket, "datagram or seqpacket").await;
    // It still receives datagrams.
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"still here", &socket)
        .unwrap();
    other.set_nonblocking(true).unwrap();
    let mut buf = [0; 16];
    let n = other.recv(&mut buf).expect("the datagram arrived");
    assert_eq!(&buf[..n], b"still here");
}

#[tokio::test]
async fn live_seqpacket_listener_is_refused_and_left_alone() {
    let sb = Sandbox::new();
    let socket = sb.socket("a");
    let listener = bound(SocketType::SEQPACKET, &socket);
    rustix::net::listen(&listener, 8).unwrap();
    assert_start_refused(&sb, &socket, "datagram or seqpacket").await;
    // It still accepts seqpacket connections.
    let client = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    rustix::net::connect(&client, &SocketAddrUnix::new(&socket).unwrap()).unwrap();
    let accepted = rustix::net::accept(&listener).expect("the listener got the connection");
    rustix::net::send(&client, b"hi", rustix::net::SendFlags::empty()).unwrap();
    let mut buf = [0; 4];
    let (n, _) = rustix::net::recv(&accepted, &mut buf, rustix::net::RecvFlags::empty()).unwrap();
    assert_eq!(&buf[..n], b"hi");
}

#[tokio::test]
async fn stale_socket_of_another_user_is_not_removed() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root can make a socket owned by another user");
        return;
    }
    let sb = Sandbox::new();
    let socket = sb.socket("a");
    drop(UnixListener::bind(&socket).unwrap());
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    assert_start_refused(&sb, &socket, "not by this user").await;
}

/// A stream listener tend may not connect to (`EACCES`) is not stale. As
/// a non-root user: a listener of ours whose file has mode 0. As root
/// (which connects anywhere): the manager runs as uid 65534 in
/// `tend-embedder`, with its socket directory its own, and the socket a
/// root-owned 0600 listener there — which it could unlink, and must not.
#[tokio::test]
async fn stream_listener_that_cannot_be_reached_is_refused_and_left_alone() {
    let sb = Sandbox::new();
    if !rustix::process::geteuid().is_root() {
        let socket = sb.socket("a");
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert_start_refused(&sb, &socket, "Permission denied").await;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
        let _client = UnixStream::connect(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener.accept().expect("the listener got the connection");
        return;
    }
    let nobody = 65534;
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (state, sockets) = (sb.path("state"), sb.path("s"));
    for dir in [&state, &sockets] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(nobody), Some(nobody)).unwrap();
    }
    let socket = sockets.join("a.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut command = Command::new(embedder());
    std::os::unix::process::CommandExt::uid(&mut command, nobody);
    std::os::unix::process::CommandExt::gid(&mut command, nobody);
    let output = command
        .arg(&state)
        .arg(&sockets)
        .arg(testd())
        .arg("a")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run tend-embedder as uid 65534");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("tend-embedder as uid {nobody}: {stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failed a:"), "{stderr}");
    assert!(stderr.contains(&format!("{socket:?}")), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(stderr.contains("cannot prove it is stale"), "{stderr}");
    assert!(socket.exists(), "the root-owned socket was removed");
    let _client = UnixStream::connect(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    listener.accept().expect("the listener got the connection");
}
