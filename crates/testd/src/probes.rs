//! The readiness and health probe modes of `testd`: the systemd notify
//! protocol (`--notify`, `--watchdog-pings`, `--notify-garbage`), a TCP
//! listener (`--tcp`), HTTP answers (`--http`), and a log-line announcer
//! (`--announce`).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU16, Ordering},
    time::Duration,
};

/// Whether connections are answered as HTTP rather than JSON-RPC.
pub static HTTP: AtomicBool = AtomicBool::new(false);
/// The status HTTP answers carry.
pub static HTTP_STATUS: AtomicU16 = AtomicU16::new(200);
/// Answer HTTP requests with bytes that are not HTTP.
pub static HTTP_GARBAGE: AtomicBool = AtomicBool::new(false);

/// What to say over `NOTIFY_SOCKET`, and when.
#[derive(Default)]
pub struct NotifyPlan {
    /// Send `READY=1`.
    pub ready: bool,
    /// `STATUS=` text sent with `READY=1`.
    pub status: Option<String>,
    /// Wait until this file exists before sending anything.
    pub wait_file: Option<PathBuf>,
    /// A datagram sent first (after `wait_file`), `\n` written as is.
    pub first: Option<String>,
    /// Wait until this file exists before sending `READY=1`.
    pub ready_file: Option<PathBuf>,
    /// Send malformed and oversized datagrams first.
    pub garbage: bool,
    /// `WATCHDOG=1` pings after ready, every quarter of `WATCHDOG_USEC`:
    /// this many, or forever when negative.
    pub watchdog_pings: Option<i64>,
    /// Append `<CLOCK_REALTIME ns>` right before `READY=1` is sent.
    pub ready_stamp: Option<PathBuf>,
}

impl NotifyPlan {
    /// Whether any notify action is asked for.
    pub fn active(&self) -> bool {
        self.ready || self.garbage || self.watchdog_pings.is_some()
    }
}

/// Carries out `plan` on a thread of its own, so serving goes on.
pub fn notify(plan: NotifyPlan) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        crate::say_err("testd: NOTIFY_SOCKET is not set");
        return;
    };
    let path = PathBuf::from(path);
    std::thread::spawn(move || {
        let socket = match UnixDatagram::unbound() {
            Ok(socket) => socket,
            Err(e) => return crate::say_err(&format!("testd: datagram socket: {e}")),
        };
        if let Some(file) = &plan.wait_file {
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(first) = &plan.first {
            send(&socket, &path, first.as_bytes());
        }
        if let Some(file) = &plan.ready_file {
            while !file.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if plan.garbage {
            let mut oversized = b"STATUS=".to_vec();
            oversized.extend(std::iter::repeat_n(b'x', 60_000));
            let datagrams: [&[u8]; 6] = [
                b"",
                b"READY",
                &[0xff, 0xfe, 0x00, b'\n', b'='],
                b"MAINPID=1\nMAINPID=-5\nWATCHDOG_USEC=zz\nERRNO=x",
                &oversized,
                b"STATUS=\xff\xfe garbage",
            ];
            for datagram in datagrams {
                if let Err(e) = socket.send_to(datagram, &path) {
                    crate::say_err(&format!("testd: garbage datagram not sent: {e}"));
                }
            }
        }
        if plan.ready {
            let status = plan.status.as_deref().unwrap_or("ready");
            let message = format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id());
            // The stamp is taken right before the send and written after
            // it, so the file write is not measured.
            let before_send = crate::now_ns();
            send(&socket, &path, message.as_bytes());
            if let Some(stamp) = &plan.ready_stamp {
                crate::append_line(stamp, &format!("{before_send}\n"));
            }
        }
        if let Some(pings) = plan.watchdog_pings {
            let usec: u64 = std::env::var("WATCHDOG_USEC")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000);
            let every = Duration::from_micros(usec / 4);
            let mut sent = 0i64;
            while pings < 0 || sent < pings {
                send(&socket, &path, b"WATCHDOG=1");
                sent += 1;
                std::thread::sleep(every);
            }
            crate::say("watchdog pings stopped");
        }
    });
}

fn send(socket: &UnixDatagram, path: &Path, message: &[u8]) {
    if let Err(e) = socket.send_to(message, path) {
        crate::say_err(&format!("testd: notify send failed: {e}"));
    }
}

/// Binds `address` (after `bind_delay`), listens after `listen_delay`.
pub fn tcp_listen(address: &str, listen_delay: u64) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let address: std::net::SocketAddr = address
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let family = if address.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &address)?;
    if listen_delay > 0 {
        crate::sleep_ms(listen_delay);
    }
    rustix::net::listen(&fd, 128)?;
    Ok(TcpListener::from(fd))
}

/// Serves `listener` on a thread: HTTP answers with `--http`, else accepts
/// and closes; with `wedge`, accepts and never answers; with `stop_after`,
/// stops listening after that many milliseconds.
pub fn serve_tcp(listener: TcpListener, wedge: bool, stop_after: Option<u64>) {
    if let (Some(ms), Ok(clone)) = (stop_after, listener.try_clone()) {
        std::thread::spawn(move || {
            crate::sleep_ms(ms);
            // Stops the listening: the blocked accept fails, and connects
            // are refused from now on.
            let _ = rustix::net::shutdown(&clone, rustix::net::Shutdown::Read);
        });
    }
    std::thread::spawn(move || {
        let mut wedged: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(stream) if wedge => wedged.push(stream),
                Ok(stream) if HTTP.load(Ordering::Relaxed) => {
                    std::thread::spawn(move || answer_http(stream));
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(_) => crate::sleep_ms(10),
            }
        }
    });
}

/// Reads a request head and answers with the configured status (or
/// garbage); the connection is closed after.
pub fn answer_http<S: Read + Write>(mut stream: S) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    if HTTP_GARBAGE.load(Ordering::Relaxed) {
        let _ = stream.write_all(b"\x00\xffSPDY/9 what\r\n\x01\x02\r\n\r\n");
        return;
    }
    let status = HTTP_STATUS.load(Ordering::Relaxed);
    let reply =
        format!("HTTP/1.1 {status} Testd\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    let _ = stream.write_all(reply.as_bytes());
}
