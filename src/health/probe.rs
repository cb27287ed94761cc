//! One active check over the backend's own transport, step by step as the data plane dials
//! (`upstream::tcp`, the PROXY header, `upstream::secure` with the backend's CA, SNI and client
//! certificate), then for `http` checks one GET over HTTP/1.1, or over HTTP/2 when the backend
//! has `protocol = "h2"` (ALPN `h2` over TLS, prior knowledge without, as `http::dial` does).
//! The result is HAProxy's check status code (`L4OK`, `L4CON`, `L6RSP`, `L7STS`, ...) with a
//! reason in short words, and how long the check took. The whole check runs within the check's
//! `timeout`, and connecting (TCP, PROXY header, TLS) also within the backend's
//! `connect_timeout`, as on the data plane (HAProxy bounds a check's connect by `timeout
//! connect` too); the step it runs out in names the timeout (`L4TOUT`, `L6TOUT`, `L7TOUT`).

use std::error::Error as _;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::config::{Backend, CheckType, Protocol, ProxyVersion};
use crate::proxy_protocol;
use crate::upstream::{self, UpstreamIo};

/// HAProxy's check status codes (its `show stat` `check_status`), the ones our checks produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// TCP connect (and PROXY header) done: a `tcp` check on a plain backend passed.
    L4Ok,
    /// Connect refused or failed.
    L4Con,
    /// No connection within the timeout.
    L4Tout,
    /// TLS handshake done: a `tcp` check on a `[backend.tls]` backend passed.
    L6Ok,
    /// The TLS handshake failed (unknown CA, wrong name, an alert from the server...).
    L6Rsp,
    /// No TLS handshake within the timeout.
    L6Tout,
    /// The HTTP answer's status is healthy.
    L7Ok,
    /// The HTTP answer's status is not healthy.
    L7Sts,
    /// No HTTP answer, or not one that parses.
    L7Rsp,
    /// No HTTP answer within the timeout.
    L7Tout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::L4Ok => "L4OK",
            Status::L4Con => "L4CON",
            Status::L4Tout => "L4TOUT",
            Status::L6Ok => "L6OK",
            Status::L6Rsp => "L6RSP",
            Status::L6Tout => "L6TOUT",
            Status::L7Ok => "L7OK",
            Status::L7Sts => "L7STS",
            Status::L7Rsp => "L7RSP",
            Status::L7Tout => "L7TOUT",
        }
    }

    /// Whether the check passed.
    pub fn ok(self) -> bool {
        matches!(self, Status::L4Ok | Status::L6Ok | Status::L7Ok)
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub reason: String,
    pub duration: Duration,
}

impl Outcome {
    pub fn new(status: Status, reason: impl Into<String>, duration: Duration) -> Outcome {
        Outcome {
            status,
            reason: reason.into(),
            duration,
        }
    }
}

/// Checks the server at `addr` as `backend` says.
pub async fn check(backend: &Backend, addr: &str) -> Outcome {
    let start = Instant::now();
    let deadline = start + backend.check.timeout;
    let connected_by = deadline.min(start + backend.connect_timeout);
    let (status, reason) = steps(backend, addr, connected_by, deadline).await;
    Outcome::new(status, reason, start.elapsed())
}

/// The check's steps: connected (TCP, PROXY header, TLS) by `connected_by`, answered by
/// `deadline`.
async fn steps(
    backend: &Backend,
    addr: &str,
    connected_by: Instant,
    deadline: Instant,
) -> (Status, String) {
    let mut tcp = match timeout_at(connected_by, upstream::tcp(addr)).await {
        Err(_) => return (Status::L4Tout, "L4 timeout".into()),
        Ok(Err(e)) => return (Status::L4Con, l4_reason(&e)),
        Ok(Ok(s)) => s,
    };
    if let Some(header) = proxy_header(backend.send_proxy, &tcp) {
        match timeout_at(connected_by, tcp.write_all(&header)).await {
            Err(_) => return (Status::L4Tout, "L4 timeout".into()),
            Ok(Err(e)) => return (Status::L4Con, l4_reason(&e)),
            Ok(Ok(())) => {}
        }
    }
    // The ALPN the data plane offers for the same traffic; a `tcp` check offers none, as the
    // L4 data plane does.
    let alpn: &[&[u8]] = match (backend.check.kind, backend.protocol) {
        (CheckType::Http, Protocol::H2) => &[b"h2"],
        (CheckType::Http, Protocol::Http1) => &[b"http/1.1"],
        _ => &[],
    };
    let io = match timeout_at(connected_by, upstream::secure(backend, addr, tcp, alpn)).await {
        Err(_) => return (Status::L6Tout, "TLS timeout".into()),
        Ok(Err(e)) => return (Status::L6Rsp, tls_reason(&e)),
        Ok(Ok(io)) => io,
    };
    if backend.check.kind != CheckType::Http {
        // NOTE: as HAProxy's `check` on an `ssl` server (`check-ssl` implied), a `tcp` check
        // on a TLS backend completes the handshake. With TLS 1.3 a server that rejects our
        // client certificate says so only after the handshake, so only `http` checks see it.
        return match io {
            tokio_util::either::Either::Left(_) => (Status::L4Ok, "L4 check passed".into()),
            tokio_util::either::Either::Right(_) => {
                (Status::L6Ok, "L6 check passed (TLS handshake)".into())
            }
        };
    }
    match timeout_at(deadline, http(backend, addr, io)).await {
        Err(_) => (Status::L7Tout, "L7 timeout".into()),
        Ok(r) => r,
    }
}

/// The PROXY header a check sends first, as HAProxy 2.6 does for checks of a `send-proxy`
/// server: v1 describes the check's own connection (`PROXY TCP4 <our address> <server>`), v2
/// is a `LOCAL` header (HAProxy sends LOCAL on a connection that no client stream owns, unless
/// `pp2-never-send-local` is set).
fn proxy_header(version: ProxyVersion, tcp: &TcpStream) -> Option<Vec<u8>> {
    match version {
        ProxyVersion::None => None,
        ProxyVersion::V1 => match (tcp.local_addr(), tcp.peer_addr()) {
            (Ok(local), Ok(peer)) => Some(proxy_protocol::encode_v1(local, peer)),
            _ => Some(b"PROXY UNKNOWN\r\n".to_vec()),
        },
        ProxyVersion::V2 => Some(proxy_protocol::encode_v2_local()),
    }
}

/// One GET of the check's `path`, judged by its status.
async fn http(backend: &Backend, addr: &str, io: UpstreamIo) -> (Status, String) {
    let check = &backend.check;
    let host = check.host.as_deref().unwrap_or(addr);
    let result = match backend.protocol {
        Protocol::Http1 => {
            let req = http::Request::get(check.path.as_str())
                .header(http::header::HOST, host)
                .header(http::header::USER_AGENT, USER_AGENT)
                .body(Empty::<Bytes>::new());
            let Ok(req) = req else {
                return (Status::L7Rsp, "L7 invalid request (path or host)".into());
            };
            match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
                Ok((mut sender, conn)) => {
                    tokio::spawn(conn);
                    sender.send_request(req).await
                }
                Err(e) => Err(e),
            }
        }
        Protocol::H2 => {
            // HTTP/2 carries the host in `:authority`, taken from an absolute URI.
            let scheme = if backend.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let req = http::Request::get(format!("{scheme}://{host}{}", check.path))
                .header(http::header::USER_AGENT, USER_AGENT)
                .body(Empty::<Bytes>::new());
            let Ok(req) = req else {
                return (Status::L7Rsp, "L7 invalid request (path or host)".into());
            };
            let builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            match builder.handshake(TokioIo::new(io)).await {
                Ok((mut sender, conn)) => {
                    tokio::spawn(conn);
                    sender.send_request(req).await
                }
                Err(e) => Err(e),
            }
        }
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => return http_error(&e),
    };
    let status = resp.status();
    let healthy = if check.expect_status.is_empty() {
        status.is_success() || status.is_redirection()
    } else {
        check.expect_status.contains(&status.as_u16())
    };
    let reason = format!("L7 status {}", status.as_u16());
    if healthy {
        (Status::L7Ok, reason)
    } else {
        (Status::L7Sts, reason)
    }
}

const USER_AGENT: &str = "switchyard-check";

/// A failed exchange: a TLS alert that arrives after the handshake (TLS 1.3 refuses a client
/// certificate that way) is the TLS layer's; anything else is an invalid answer.
fn http_error(e: &hyper::Error) -> (Status, String) {
    // NOTE: `io::Error::source` skips the error it wraps, so rustls's error is looked for
    // inside each `io::Error` as well as in the chain itself.
    let mut source = e.source();
    while let Some(s) = source {
        let inner = s
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(s), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return (Status::L6Rsp, rustls_reason(tls));
            }
        }
        source = s.source();
    }
    if e.is_parse() {
        (Status::L7Rsp, "L7 invalid response".into())
    } else if e.is_incomplete_message() || e.is_closed() {
        (
            Status::L7Rsp,
            "L7 invalid response: connection closed".into(),
        )
    } else {
        (Status::L7Rsp, format!("L7 invalid response: {e}"))
    }
}

fn l4_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "L4 connect refused".into(),
        _ => format!("L4 connect: {e}"),
    }
}

fn tls_reason(e: &io::Error) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return rustls_reason(tls);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            "TLS: connection closed during the handshake".into()
        }
        _ => format!("TLS: {e}"),
    }
}

/// rustls's error in short words.
fn rustls_reason(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "TLS: unknown CA".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "TLS: certificate not valid for the server name".into()
            }
            C::Expired | C::ExpiredContext { .. } => "TLS: certificate expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: certificate not yet valid".into()
            }
            C::Revoked => "TLS: certificate revoked".into(),
            other => format!("TLS: invalid certificate ({other:?})"),
        },
        rustls::Error::AlertReceived(alert) => format!("TLS: server sent alert {alert:?}"),
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_short_words() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(l4_reason(&refused), "L4 connect refused");
        let unknown_ca = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(tls_reason(&unknown_ca), "TLS: unknown CA");
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert_eq!(
            rustls_reason(&alert),
            "TLS: server sent alert CertificateRequired"
        );
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            tls_reason(&eof),
            "TLS: connection closed during the handshake"
        );
        assert!(Status::L6Ok.ok() && !Status::L7Sts.ok() && Status::L7Tout.as_str() == "L7TOUT");
    }

    #[test]
    fn v2_checks_send_local_and_v1_checks_their_own_addresses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = listener.local_addr().unwrap();
            let tcp = TcpStream::connect(server).await.unwrap();
            let local = tcp.local_addr().unwrap();
            assert_eq!(
                proxy_header(ProxyVersion::V1, &tcp).unwrap(),
                format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                    local.port(),
                    server.port()
                )
                .into_bytes()
            );
            assert_eq!(
                proxy_header(ProxyVersion::V2, &tcp).unwrap(),
                proxy_protocol::encode_v2_local()
            );
            assert!(proxy_header(ProxyVersion::None, &tcp).is_none());
        });
    }
}
