//! The L7 data plane: accepts client connections for one `mode = "http"` frontend (HTTP/1.1,
//! and HTTP/2 with prior knowledge), picks a server from the published snapshot per request and
//! forwards the request over a pooled keep-alive HTTP/1.1 connection, streaming bodies both ways.
//!
//! Owns: hop-by-hop stripping and the X-Forwarded-* headers, the connect/response timeouts and
//! their status codes (502, 503, 504), connect-failure retries on a different server, the
//! per-server connection pool, and the client-side header timeout (408) and size limit (431).
//! It does not own server selection (`balancer`) or health (`health`).
//!
//! NOTE: the upstream pool is our own (one `Vec` of idle HTTP/1.1 senders per server, living on
//! the server object) rather than hyper-util's legacy `Client`: connecting ourselves means a
//! connect failure happens before the request body is handed over, so the same request can be
//! retried on another server, and a stale pooled connection hands the request back
//! (`try_send_request`). The pool dies with its server object, so a removed server's idle
//! connections close on their own.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Frontend;
use crate::metrics as m;
use crate::snapshot::{ActiveGuard, BackendSet, Server, Snapshot};

/// What clients get: an upstream's body (counted as in flight until it ends), or our own.
pub type Body = Either<Guarded, Full<Bytes>>;

/// What upstreams get: the client's body, or an empty one when a bodiless request is replayed.
type UpBody = Either<Incoming, Empty<Bytes>>;

/// An upstream response body that keeps its server's in-flight count until it is done, so a
/// removed server drains until its last byte is sent, not just its response head.
pub struct Guarded {
    inner: Incoming,
    _active: ActiveGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Idle upstream connections kept per server; beyond this, a returned connection is closed.
const POOL_MAX_IDLE: usize = 128;

/// Idle keep-alive HTTP/1.1 connections to one server.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<SendRequest<UpBody>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// A connection that is ready to take a request now. Closed ones are dropped; busy ones
    /// (still streaming a response body) stay for later.
    fn checkout(&self) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|s| !s.is_closed());
        let pos = idle.iter().rposition(|s| s.is_ready())?;
        Some(idle.swap_remove(pos))
    }

    fn checkin(&self, server: &Server, sender: SendRequest<UpBody>) {
        if sender.is_closed() || server.is_draining() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_MAX_IDLE {
            idle.push(sender);
        }
    }

    /// Closes every idle connection (the server is draining or gone).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Everything one frontend's connections need.
#[derive(Clone)]
pub struct HttpFrontend {
    pub frontend: Arc<Frontend>,
    pub shared: Arc<ArcSwap<Snapshot>>,
}

/// Accepts connections until `stop_accept` fires; each connection runs on `tracker` and is
/// shut down gracefully (finish the in-flight request, then close) when `shutdown` fires.
pub async fn serve(
    listener: Arc<TcpListener>,
    fe: HttpFrontend,
    stop_accept: CancellationToken,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own header timer also bounds the idle wait between keep-alive requests.
        .header_read_timeout(fe.frontend.idle_timeout)
        .max_buf_size(fe.frontend.max_header_size.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let name = fe.frontend.name.clone();
    info!(frontend = %name, bind = %fe.frontend.bind, "listening (http)");
    loop {
        let accepted = tokio::select! {
            _ = stop_accept.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(frontend = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fe = fe.clone();
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let gauge =
                metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => fe.frontend.name.clone());
            gauge.increment(1.0);
            let io = HeadTimeout::new(stream, fe.frontend.header_timeout);
            let svc = service_fn(move |req| {
                let fe = fe.clone();
                async move { Ok::<_, Infallible>(handle(&fe, peer, req).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                debug!(client = %peer, error = %e, "client connection ended with an error");
            }
            gauge.decrement(1.0);
        });
    }
    debug!(frontend = %name, "stopped accepting");
}

/// Serves one request: pick, forward, map failures to status codes, record metrics.
async fn handle(fe: &HttpFrontend, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let snap = fe.shared.load_full();
    let Some(backend) = snap.route(&fe.frontend.name) else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no route\n");
    };
    let (resp, server) = forward(fe, backend, peer, req).await;
    let code = resp.status().as_u16();
    metrics::counter!(m::REQUESTS,
        "frontend" => fe.frontend.name.clone(),
        "backend" => backend.config.name.clone(),
        "server" => server.map(|s| s.addr.clone()).unwrap_or_default(),
        "code" => code.to_string())
    .increment(1);
    metrics::histogram!(m::REQUEST_DURATION,
        "frontend" => fe.frontend.name.clone(),
        "backend" => backend.config.name.clone())
    .record(start.elapsed().as_secs_f64());
    resp
}

/// Why a forward attempt failed. (Large, but moved once per attempt: boxing the request back
/// would add an allocation on the retry path for nothing.)
#[allow(clippy::large_enum_variant)]
enum Failure {
    /// Nothing was sent: the request comes back and may go to another server.
    Connect(io::Error, Request<UpBody>),
    /// The request reached the server (at least partly) and no usable response came back.
    Sent(hyper::Error),
    Timeout,
}

/// The head of a request that may be replayed on another server after it reached one: an
/// idempotent method and no body, so everything needed to send it again is here.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<UpBody>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        (idempotent && bodiless).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<UpBody> {
        let mut r = Request::new(Either::Right(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

async fn forward(
    fe: &HttpFrontend,
    backend: &BackendSet,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> (Response<Body>, Option<Arc<Server>>) {
    let cfg = &backend.config;
    let mut req = rewrite_request(req, peer, &fe.frontend);
    let replay = Replay::of(&req);
    let mut in_flight = backend.runtime.request();
    let mut tried: Vec<Arc<Server>> = Vec::new();
    loop {
        let Some(server) = backend.pick_excluding(&tried).cloned() else {
            if tried.is_empty() {
                let body = format!(
                    "503 Service Unavailable: no server available for backend {}\n",
                    cfg.name
                );
                return (plain(StatusCode::SERVICE_UNAVAILABLE, body), None);
            }
            return (unreachable_backend(&cfg.name), tried.pop());
        };
        let active = server.track();
        match send(&server, req, cfg.connect_timeout, cfg.response_timeout).await {
            Ok(resp) => {
                crate::health::observe_response(backend, &server, resp.status().as_u16());
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Guarded {
                    inner: body,
                    _active: active,
                };
                return (
                    Response::from_parts(parts, Either::Left(body)),
                    Some(server),
                );
            }
            Err(Failure::Connect(e, back)) => {
                metrics::counter!(m::UPSTREAM_CONNECT_ERRORS,
                    "backend" => cfg.name.clone(), "server" => server.addr.clone())
                .increment(1);
                crate::health::observe_failure(backend, &server, &format!("connect: {e}"));
                tried.push(server);
                // Nothing was sent, so any method may go to another server; no budget needed,
                // since the failed attempt loaded nobody.
                if tried.len() > cfg.retries as usize {
                    return (unreachable_backend(&cfg.name), tried.pop());
                }
                metrics::counter!(m::RETRIES, "backend" => cfg.name.clone()).increment(1);
                req = back;
            }
            Err(Failure::Sent(e)) => {
                debug!(server = %server.addr, error = %e, "upstream failed before a response");
                crate::health::observe_failure(backend, &server, &format!("upstream: {e}"));
                let body = format!(
                    "502 Bad Gateway: server {} of backend {} failed before answering\n",
                    server.addr, cfg.name
                );
                tried.push(Arc::clone(&server));
                // Replayed only if idempotent and bodiless, within `retries` and the budget.
                match &replay {
                    Some(r)
                        if tried.len() <= cfg.retries as usize
                            && in_flight
                                .try_retry(cfg.retry_budget_percent, cfg.retry_budget_min) =>
                    {
                        metrics::counter!(m::RETRIES, "backend" => cfg.name.clone()).increment(1);
                        req = r.request();
                    }
                    _ => return (plain(StatusCode::BAD_GATEWAY, body), Some(server)),
                }
            }
            Err(Failure::Timeout) => {
                crate::health::observe_failure(backend, &server, "response timeout");
                let body = format!(
                    "504 Gateway Timeout: server {} of backend {} did not answer within {:?}\n",
                    server.addr, cfg.name, cfg.response_timeout
                );
                return (plain(StatusCode::GATEWAY_TIMEOUT, body), Some(server));
            }
        }
    }
}

fn unreachable_backend(backend: &str) -> Response<Body> {
    let body = format!("502 Bad Gateway: no server of backend {backend} could be reached\n");
    plain(StatusCode::BAD_GATEWAY, body)
}

/// Sends one request to one server: a pooled connection if one is ready, else a new one.
async fn send(
    server: &Arc<Server>,
    mut req: Request<UpBody>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Response<Incoming>, Failure> {
    // A pooled connection the server closed meanwhile hands the request back untouched; then
    // fall through to a fresh connection. Bounded: each round removes one pooled sender.
    while let Some(mut sender) = server.pool().checkout() {
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(resp)) => {
                server.pool().checkin(server, sender);
                return Ok(resp);
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(Failure::Sent(e.into_error())),
            },
        }
    }
    let mut sender = match connect(server, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err(Failure::Connect(e, req)),
    };
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(resp)) => {
            server.pool().checkin(server, sender);
            Ok(resp)
        }
        Ok(Err(mut e)) => match e.take_message() {
            // Refused before a byte was written: as good as a connect failure.
            Some(back) => Err(Failure::Connect(io::Error::other(e.into_error()), back)),
            None => Err(Failure::Sent(e.into_error())),
        },
    }
}

/// A new HTTP/1.1 connection to `server`. It closes when the server's drain times out.
async fn connect(server: &Server, timeout: Duration) -> io::Result<SendRequest<UpBody>> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(server.addr.as_str()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let kill = server.kill_token();
    tokio::spawn(async move {
        tokio::select! {
            r = conn => if let Err(e) = r {
                debug!(error = %e, "upstream connection closed with an error");
            },
            _ = kill.cancelled() => debug!("upstream connection closed: drain timeout"),
        }
    });
    Ok(sender)
}

/// Hop-by-hop headers (RFC 9110 7.6.1), plus the non-standard ones proxies must not forward.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names (a client
/// sending `Connection: X-Forwarded-For` must not strip ours). Transfer-Encoding is left to
/// hyper, which frames each hop itself.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(h);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Turns the client's request into the upstream one: origin-form URI, HTTP/1.1, hop-by-hop
/// headers removed (before ours are added), X-Forwarded-For appended, X-Forwarded-Proto and
/// X-Forwarded-Host set, and a Host header for HTTP/2 clients (which send :authority).
fn rewrite_request(req: Request<Incoming>, peer: SocketAddr, _fe: &Frontend) -> Request<UpBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => authority.and_then(|a| HeaderValue::from_str(&a).ok()),
    };
    if let Some(h) = &host {
        parts.headers.insert(header::HOST, h.clone());
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), h.clone());
    }
    let ip = peer.ip().to_canonical().to_string();
    let xff = HeaderName::from_static("x-forwarded-for");
    // NOTE: like HAProxy's `option forwardfor`, the client's own X-Forwarded-For is kept and our
    // peer address appended; only the last entry is trustworthy.
    let prior: Vec<&str> = parts
        .headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if prior.is_empty() {
        ip
    } else {
        format!("{}, {ip}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        parts.headers.insert(xff, v);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, Either::Left(body))
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// Header timeout with a 408.

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 37\r\nconnection: close\r\n\r\n408 Request Timeout: headers too slow\n";
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Wraps a client socket to enforce the request-header timeout itself, so a client that does
/// not finish its header section in time gets `408` and a close (hyper's own header timer only
/// closes). The clock starts at the first byte of a request and stops at the blank line that
/// ends its header section; a response write means the next byte read starts a new request.
/// HTTP/2 connections (prior-knowledge preface) are left to hyper's HTTP/2 limits.
///
/// NOTE: written by hand because neither hyper nor hyper-util can answer a header timeout
/// with a status; it only scans for CRLFCRLF and never parses.
struct HeadTimeout {
    inner: TcpStream,
    limit: Duration,
    state: HeadState,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The last 3 bytes read, to find a CRLFCRLF split across reads.
    tail: [u8; 3],
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HeadState {
    /// Between requests: no byte of the next one yet.
    Idle,
    /// Reading a header section; `sleep` is armed.
    Head,
    /// Header section done; body bytes or the response follow.
    Body,
    /// HTTP/2, or the timeout fired: no more checks.
    Off,
}

impl HeadTimeout {
    fn new(inner: TcpStream, limit: Duration) -> HeadTimeout {
        HeadTimeout {
            inner,
            limit,
            state: HeadState::Idle,
            sleep: Box::pin(tokio::time::sleep(limit)),
            tail: [0; 3],
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.state == HeadState::Idle {
            if bytes.starts_with(H2_PREFACE_START) {
                self.state = HeadState::Off;
                return;
            }
            self.state = HeadState::Head;
            self.tail = [0; 3];
            let deadline = tokio::time::Instant::now() + self.limit;
            self.sleep.as_mut().reset(deadline);
        }
        if self.state == HeadState::Head {
            if ends_head(&self.tail, bytes) {
                self.state = HeadState::Body;
            } else {
                self.tail = last3(&self.tail, bytes);
            }
        }
    }

    /// A write of a final response means the next byte read starts a new request; an interim
    /// `1xx` (e.g. `100 Continue` before a slow upload) does not.
    fn wrote(&mut self, first: &[u8]) {
        if self.state != HeadState::Off && !first.starts_with(b"HTTP/1.1 1") {
            self.state = HeadState::Idle;
        }
    }
}

/// Whether `tail` (the previous 3 bytes) followed by `bytes` contains CRLFCRLF.
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    let k = bytes.len().min(3);
    let mut seam = [0u8; 6];
    seam[..3].copy_from_slice(tail);
    seam[3..3 + k].copy_from_slice(&bytes[..k]);
    seam[..3 + k].windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// The last 3 bytes of `tail` followed by `bytes`.
fn last3(tail: &[u8; 3], bytes: &[u8]) -> [u8; 3] {
    let mut out = *tail;
    for &b in bytes.iter().rev().take(3).rev() {
        out = [out[1], out[2], b];
    }
    out
}

impl AsyncRead for HeadTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.state == HeadState::Head && self.sleep.as_mut().poll(cx).is_ready() {
                    self.state = HeadState::Off;
                    // Best effort: the socket buffer is empty at this point, so 130 bytes fit.
                    let _ = self.inner.try_write(REQUEST_TIMEOUT);
                    debug!("request header timeout: 408 sent, closing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for HeadTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.wrote(buf);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map(|b| &b[..])
                .unwrap_or(&[]);
            self.wrote(first);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_reads() {
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n"));
        let t = last3(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(&t, b"x\r\n");
        assert!(ends_head(&t, b"\r\n"));
        let t = last3(&t, b"\r");
        assert_eq!(&t, b"\r\n\r");
        assert!(ends_head(&t, b"\n"));
        assert!(!ends_head(&[0; 3], b""));
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, x-secret"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
