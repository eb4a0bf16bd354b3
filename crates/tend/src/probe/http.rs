//! HTTP probes: one `GET` over TCP or the daemon's Unix socket, with
//! hyper's HTTP/1 client (no hand-written parser), the timeout applied to
//! the whole exchange, and no redirect followed.

use std::{path::Path, time::Duration};

use http_body_util::Empty;
use hyper::{Request, body::Bytes, header};
use hyper_util::rt::TokioIo;

use crate::config::HttpTarget;

/// One `GET` of `target` within `timeout`: `Ok` when the status is
/// `expect` (any 2xx when `None`). `socket` is the daemon's Unix socket,
/// for a target without an address.
pub(crate) async fn check(
    target: &HttpTarget,
    socket: Option<&Path>,
    expect: Option<u16>,
    timeout: Duration,
) -> Result<(), String> {
    let what = match (&target.address, socket) {
        (Some(address), _) => format!("GET http://{address}{}", target.path),
        (None, Some(socket)) => format!("GET {} over {socket:?}", target.path),
        (None, None) => return Err("no Unix socket to send the request over".into()),
    };
    let exchange = async {
        let status = match (&target.address, socket) {
            (Some(address), _) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("connect failed: {e}"))?;
                get(stream, target).await?
            }
            (None, Some(socket)) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| format!("connect failed: {e}"))?;
                get(stream, target).await?
            }
            (None, None) => unreachable!("handled above"),
        };
        let passes = match expect {
            Some(expected) => status == expected,
            None => (200..300).contains(&status),
        };
        if passes {
            Ok(())
        } else {
            Err(format!(
                "answered {status}, expected {}",
                expect.map_or_else(|| "2xx".to_owned(), |s| s.to_string())
            ))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(format!("{what}: {reason}")),
        Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
    }
}

/// Sends the request over `stream` and returns the answer's status; the
/// body is not read (the connection is closed with it).
async fn get<S>(stream: S, target: &HttpTarget) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let request = Request::get(target.path.as_str())
        .header(header::HOST, target.host.as_str())
        .header(header::USER_AGENT, "tend-probe")
        .header(header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let answer = sender.send_request(request);
    tokio::pin!(connection, answer);
    let response = tokio::select! {
        biased;
        response = &mut answer => response,
        ended = &mut connection => match ended {
            // The connection is done (`Connection: close`); the answer,
            // if one came, is waiting.
            Ok(()) => answer.await,
            Err(e) => return Err(format!("no valid answer: {e}")),
        },
    };
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("no valid answer: {e}"))
}
