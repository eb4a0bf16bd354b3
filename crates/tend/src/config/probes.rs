//! The probe kinds beyond the daemon's Unix socket: how tend knows a
//! daemon is ready ([`Readiness`]) and the targets of the TCP, HTTP and
//! exec health checks ([`TcpProbe`], [`HttpProbe`], [`ExecProbe`]).
//!
//! # Which addresses a probe may reach
//! A daemon supervised on this machine listens on this machine, so a TCP or
//! HTTP probe targets a loopback address (`127.0.0.0/8`, `::1`, or the
//! name `localhost`, which means `127.0.0.1`) unless its `remote` flag is
//! set. Anything else would probe another machine, which may answer
//! "ready" for a daemon that is not running at all; with `remote` set, the
//! address is probed as given. Host names other than `localhost` are never
//! resolved: the address is configured, never guessed.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

/// How tend knows a daemon is ready: the moment it becomes `Running` and
/// [`crate::BackgroundProcessManager::start_process`] returns. Each kind is
/// bounded by [`BackgroundProcessConfig::startup_timeout`](crate::BackgroundProcessConfig::startup_timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Readiness {
    /// Ready when the daemon's Unix socket
    /// ([`socket_path`](crate::BackgroundProcessConfig::socket_path))
    /// accepts a connection; without a socket, when spawned.
    #[default]
    Socket,
    /// Ready when spawned: nothing is checked, and
    /// [`ProcessInfo::readiness_checked`](crate::ProcessInfo::readiness_checked)
    /// says so.
    None,
    /// Ready when a TCP connect to the address succeeds.
    Tcp(TcpProbe),
    /// Ready when a `GET` answers with the expected status.
    Http(HttpProbe),
    /// Ready when the daemon sends `READY=1` over the systemd notify
    /// protocol: tend gives it a datagram socket in `NOTIFY_SOCKET` and
    /// listens only to processes of the daemon's cgroup (or process group).
    Notify,
    /// Ready when the command exits 0 (retried until the startup timeout).
    Exec(ExecProbe),
    /// Ready when a line of stdout or stderr matches this regular
    /// expression (the `regex` crate's syntax).
    Log(String),
}

impl Readiness {
    /// A short name of the kind, for messages: `socket`, `none`, `tcp`,
    /// `http`, `notify`, `exec`, `log`.
    pub fn kind(&self) -> &'static str {
        match self {
            Readiness::Socket => "socket",
            Readiness::None => "none",
            Readiness::Tcp(_) => "tcp",
            Readiness::Http(_) => "http",
            Readiness::Notify => "notify",
            Readiness::Exec(_) => "exec",
            Readiness::Log(_) => "log",
        }
    }
}

/// A TCP address to connect to.
///
/// A daemon supervised on this machine listens on this machine, so a TCP or
/// HTTP probe targets a loopback address (`127.0.0.0/8`, `::1`, or the name
/// `localhost`, which means `127.0.0.1`) unless its `remote` flag is set:
/// anything else would probe another machine, which may answer "ready" for
/// a daemon that is not running at all. With `remote` set, the address is
/// probed as given. Host names other than `localhost` are never resolved:
/// the address is configured, never guessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProbe {
    /// The address the daemon listens on.
    pub address: SocketAddr,
    /// Allow an address that is not loopback: without it, only `127.0.0.0/8`,
    /// `::1` and `localhost` are probed, so a probe never reaches another
    /// machine that may answer "ready" for a daemon that is not running.
    pub remote: bool,
}

impl TcpProbe {
    /// A probe of a loopback `address`.
    pub fn new(address: SocketAddr) -> Self {
        TcpProbe {
            address,
            remote: false,
        }
    }

    /// Parses `host:port`, where host is an IP address (IPv6 in brackets)
    /// or `localhost`; no other name is resolved.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_address(text).map(Self::new)
    }

    /// Allows an address that is not loopback.
    pub fn remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        check_reach(self.address.ip(), self.remote)
    }
}

/// Parses `host:port` with an IP literal or `localhost` as host.
fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    Err(format!(
        "{text:?} is not host:port with an IP address or localhost as host \
         (like \"127.0.0.1:8080\" or \"[::1]:8080\"); names are not resolved"
    ))
}

fn check_reach(ip: IpAddr, remote: bool) -> Result<(), String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is not an address to connect to; use 127.0.0.1 (or ::1)"
        ));
    }
    if !ip.is_loopback() && !remote {
        return Err(format!(
            "{ip} is not a loopback address: probing it would ask another machine \
             whether this daemon is up; set remote = true if that is what you want"
        ));
    }
    Ok(())
}

/// An HTTP `GET` whose answer proves the daemon ready or healthy.
///
/// Over TCP (`http://host:port/path`) or over the daemon's own Unix socket
/// (a URL that is only a path, `/healthz`). HTTP/1.1 only, no TLS, no
/// redirects followed: a redirect is a failure unless its status is the
/// expected one. The timeout covers the whole exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://host:port/path?query`, or `/path?query` for the daemon's
    /// Unix socket.
    pub url: String,
    /// The status that passes; any 2xx when `None`.
    pub expect_status: Option<u16>,
    /// Allow a host that is not loopback (see [`TcpProbe::remote`]).
    pub remote: bool,
}

/// Where an [`HttpProbe`] connects, and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpTarget {
    /// `None`: the daemon's Unix socket.
    pub address: Option<SocketAddr>,
    /// The `Host` header.
    pub host: String,
    /// The request target.
    pub path: String,
}

impl HttpProbe {
    /// A probe of `url` that passes on any 2xx.
    pub fn new(url: impl Into<String>) -> Self {
        HttpProbe {
            url: url.into(),
            expect_status: None,
            remote: false,
        }
    }

    /// Passes only on `status`.
    pub fn expect_status(mut self, status: u16) -> Self {
        self.expect_status = Some(status);
        self
    }

    /// Allows a host that is not loopback.
    pub fn remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }

    /// Whether the request goes over the daemon's Unix socket.
    pub fn over_unix_socket(&self) -> bool {
        self.url.starts_with('/')
    }

    /// Where to connect and what to ask, or why the URL cannot be used.
    pub(crate) fn target(&self) -> Result<HttpTarget, String> {
        if let Some(status) = self.expect_status {
            if !(100..=599).contains(&status) {
                return Err(format!("expected status {status} is not an HTTP status"));
            }
        }
        if self.over_unix_socket() {
            let uri: hyper::Uri = self
                .url
                .parse()
                .map_err(|e| format!("{:?} is not a usable path: {e}", self.url))?;
            return Ok(HttpTarget {
                address: None,
                host: "localhost".into(),
                path: uri
                    .path_and_query()
                    .map_or_else(|| "/".into(), |p| p.to_string()),
            });
        }
        let uri: hyper::Uri = self
            .url
            .parse()
            .map_err(|e| format!("{:?} is not a URL: {e}", self.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{:?}: only http:// URLs (or a path, for the daemon's Unix socket) are probed; \
                 TLS is not supported",
                self.url
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{:?} names no host", self.url))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{:?}: credentials in the URL are not supported",
                self.url
            ));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = if bare == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bare.parse::<IpAddr>().map_err(|_| {
                format!(
                    "{:?}: the host must be an IP address or localhost; names are not resolved",
                    self.url
                )
            })?
        };
        check_reach(ip, self.remote)?;
        Ok(HttpTarget {
            address: Some(SocketAddr::new(ip, port)),
            host: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".into(), |p| p.to_string()),
        })
    }
}

/// A command whose exit status proves the daemon ready or healthy: run
/// without a shell, in the daemon's environment and working directory, in
/// a process group of its own that is killed when it overruns the timeout.
/// Never more than one runs at a time for a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecProbe {
    /// The program and its arguments; the program is looked up in the
    /// daemon's `PATH` when it has no `/`.
    pub command: Vec<OsString>,
}

impl ExecProbe {
    /// A probe running `command` (program first).
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        ExecProbe {
            command: command.into_iter().map(Into::into).collect(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        use std::os::unix::ffi::OsStrExt;
        match self.command.first() {
            None => Err("the command must name a program".into()),
            Some(program) if program.is_empty() => Err("the program must not be empty".into()),
            _ if self.command.iter().any(|a| a.as_bytes().contains(&0)) => {
                Err("the command must not contain a NUL byte".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_loopback_unless_remote() {
        let local = TcpProbe::parse("127.0.0.1:8080").unwrap();
        assert!(local.check().is_ok());
        assert_eq!(
            TcpProbe::parse("localhost:80").unwrap().address,
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(TcpProbe::parse("[::1]:9").unwrap().check().is_ok());
        let far = TcpProbe::parse("10.1.2.3:80").unwrap();
        assert!(far.check().unwrap_err().contains("remote = true"));
        assert!(far.remote(true).check().is_ok());
        assert!(TcpProbe::parse("0.0.0.0:80").unwrap().check().is_err());
        assert!(
            TcpProbe::parse("example.com:80")
                .unwrap_err()
                .contains("not resolved")
        );
        assert!(TcpProbe::parse("127.0.0.1").is_err());
    }

    #[test]
    fn http_urls_are_parsed_without_guessing() {
        let t = HttpProbe::new("http://127.0.0.1:8080/healthz?x=1")
            .target()
            .unwrap();
        assert_eq!(t.address, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(t.path, "/healthz?x=1");
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = HttpProbe::new("http://localhost/").target().unwrap();
        assert_eq!(t.address, Some("127.0.0.1:80".parse().unwrap()));
        let t = HttpProbe::new("/status").target().unwrap();
        assert_eq!((t.address, t.path.as_str()), (None, "/status"));
        let t = HttpProbe::new("http://[::1]:81/").target().unwrap();
        assert_eq!(t.address, Some("[::1]:81".parse().unwrap()));
        assert!(
            HttpProbe::new("https://127.0.0.1/")
                .target()
                .unwrap_err()
                .contains("TLS")
        );
        assert!(
            HttpProbe::new("http://example.com/")
                .target()
                .unwrap_err()
                .contains("not resolved")
        );
        assert!(
            HttpProbe::new("http://192.168.1.1/")
                .target()
                .unwrap_err()
                .contains("remote")
        );
        assert!(
            HttpProbe::new("http://192.168.1.1/")
                .remote(true)
                .target()
                .is_ok()
        );
        assert!(
            HttpProbe::new("http://127.0.0.1/")
                .expect_status(42)
                .target()
                .is_err()
        );
        assert!(HttpProbe::new("not a url").target().is_err());
        assert!(
            HttpProbe::new("/ok").expect_status(1000).target().is_err(),
            "the status is checked for the Unix socket too"
        );
    }

    #[test]
    fn exec_commands_need_a_program() {
        assert!(ExecProbe::new(["pg_isready", "-q"]).check().is_ok());
        assert!(ExecProbe::new(Vec::<String>::new()).check().is_err());
        assert!(ExecProbe::new([""]).check().is_err());
        assert!(ExecProbe::new(["a\0b"]).check().is_err());
    }
}
