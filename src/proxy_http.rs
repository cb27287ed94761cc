//! The L7 data plane: accepts client connections for one `mode = "http"` frontend (HTTP/1.1,
//! and HTTP/2 by prior knowledge or TLS ALPN), picks a server from the published snapshot per
//! request and forwards the request over HTTP/1.1 (a pooled keep-alive connection) or HTTP/2
//! (one shared multiplexed connection per server), streaming bodies and trailers both ways.
//!
//! Per client connection, in order: the PROXY header when `accept_proxy` is on (its source is
//! the client address for X-Forwarded-For), TLS termination when the frontend has
//! `[frontend.tls]`, then our HTTP/1.x server (`h1_server`) or hyper's HTTP/2 one. Per
//! upstream connection: TCP, the PROXY header when the backend has `send_proxy`, TLS (ALPN
//! `http/1.1` or `h2`) when it has `[backend.tls]`.
//! An HTTP/1.1 `Upgrade` (WebSocket and friends) the server accepts with `101` becomes a
//! byte tunnel that counts as in flight on its server until it ends or the drain times out.
//!
//! Owns: hop-by-hop stripping and the X-Forwarded-* headers, the connect/response timeouts and
//! their status codes (502, 503, 504), connect-failure retries on a different server, the
//! per-server connection pool, the client-side header timeout (408), refusing ambiguous
//! requests (400, 414, 501), blaming a broken or stalled request body on the client (400,
//! 408), and the idle and stalled-write bounds on client connections.
//! It does not own server selection (`balancer`), health (`health`), TLS configs (`tls`),
//! the PROXY header format (`proxy_protocol`), HTTP/1.x message framing (`h1_server` towards
//! clients, with the head size limit (431); `h1_client` towards servers), the rules HTTP/2
//! requests must meet and their translation to HTTP/1.1 fields (`h2_rules`), or the idle and
//! first-request timers of HTTP/2 connections and their `Date` header (`h2_conn`).
//!
//! HTTP/1.x from clients is read by our own server (`h1_server`) and HTTP/1.1 to servers goes
//! through our own client (`h1_client`), both in the client connection's task; HTTP/2 clients
//! are hyper's server's, and HTTP/2 and upgrade requests to servers go through hyper's client
//! connections.
//!
//! NOTE: the upstream pool is our own (one `Vec` of idle HTTP/1.1 connections and one HTTP/2
//! sender per server, living on the server object) rather than hyper-util's legacy `Client`:
//! connecting ourselves means a connect failure happens before the request body is handed
//! over, so the same request can be retried on another server; an idle connection the server
//! closed is seen at checkout (it reads as closed) and skipped, and a replayable request caught
//! by a close racing its reuse is sent again on a new connection. The pool dies with its
//! server object, so a removed server's idle connections close on their own.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::access_log::{AccessLog, HttpRequest, Pending, Termination};
use crate::config::{Backend, Frontend, Protocol, ProxyVersion};
use crate::h1_client;
use crate::h1_server;
use crate::h2_conn;
use crate::metrics::{self as m, HandleCache};
use crate::proxy_protocol::{self, PROXY_HEADER_ERRORS};
use crate::signal::{Signal, Watch};
use crate::snapshot::{ActiveGuard, Server, Snapshot};
use crate::tls::{TlsAcceptor, TlsError};

/// What clients get: an upstream's body (counted as in flight until it ends), or our own.
pub type Body = Either<Guarded, Full<Bytes>>;

/// What upstreams get: the client's body, or an empty one when a bodiless request is replayed.
type UpBody = Either<ClientBody, Empty<Bytes>>;

type H1Sender = hyper::client::conn::http1::SendRequest<UpBody>;
type H2Sender = hyper::client::conn::http2::SendRequest<UpBody>;

/// An upstream response body that keeps its server's in-flight count until it is done, so a
/// removed server drains until its last byte is sent, not just its response head. Trailers
/// frames pass through like data frames. With the access log on, it carries the request's
/// record, counts the body bytes into it, and writes it when the body ends or is dropped.
pub struct Guarded {
    inner: RespBody,
    _active: ActiveGuard,
    log: Option<Pending>,
    /// Where the body comes from, to blame the server if it cuts the body short.
    origin: Option<Origin>,
}

/// The server a response body comes from, and the snapshot holding its backend.
struct Origin {
    snap: Arc<Snapshot>,
    backend: usize,
    server: Arc<Server>,
}

impl Origin {
    /// The server cut the body short (a reset or close mid-body): the client gets a truncated
    /// answer, so it counts as a live failure towards ejection (the head, and its status, were
    /// already sent and counted). A server whose drain timed out is cut by us, not counted.
    fn aborted(self) {
        if self.server.is_draining() {
            return;
        }
        let set = &self.snap.backends[self.backend];
        metrics::counter!(m::UPSTREAM_ABORTS,
            "backend" => set.config.name.clone(), "server" => self.server.addr.clone())
        .increment(1);
        crate::health::observe_failure(set, &self.server, "response body cut short");
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(log) = &mut this.log {
            let r = log.record();
            match &frame {
                Some(Ok(f)) => {
                    r.bytes_out += f.data_ref().map_or(0, |d| d.len() as u64);
                    if this.inner.is_end_stream() {
                        r.termination = Termination::Ok;
                    }
                }
                Some(Err(_)) => r.termination = Termination::ServerAbort,
                None => r.termination = Termination::Ok,
            }
        }
        if let Some(Err(_)) = &frame
            && let Some(origin) = this.origin.take()
        {
            origin.aborted();
        }
        Poll::Ready(frame.map(|f| f.map(drop_forbidden_trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server's response body: read by our HTTP/1.1 client, or by hyper (HTTP/2 and upgrades).
enum RespBody {
    H1(h1_client::Body),
    Hyper(Incoming),
}

impl hyper::body::Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RespBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::H1(b) => b.is_end_stream(),
            RespBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            RespBody::H1(b) => b.size_hint(),
            RespBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// A client's request body: read by our HTTP/1.x server, or by hyper's (HTTP/2).
pub(crate) enum ReqBody {
    H1(h1_server::Body),
    Hyper(Incoming),
}

impl hyper::body::Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::H1(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::H1(b) => b.is_end_stream(),
            ReqBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ReqBody::H1(b) => b.size_hint(),
            ReqBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// The client's request body on its way upstream, recording who the transfer is waiting on,
/// so that a body that breaks (a bad chunk, a client that hangs up mid-body) or stalls until
/// the response timeout is blamed on the client (`400`, `408`) rather than on the server
/// (`502`, `504`, and a passive ejection).
struct ClientBody {
    inner: ReqBody,
    /// `None` for a body that is empty from the start: bodiless requests allocate nothing.
    /// (The state is shared with `forward`, which needs it after the body was handed to the
    /// upstream connection; an error type alone would not tell a stalled body from a slow
    /// server, and HTTP/2 upstreams drop the body's error.)
    state: Option<Arc<BodyState>>,
}

/// Where a `ClientBody` is; shared with `forward`, which keeps it after the body is handed over.
#[derive(Debug, Default)]
struct BodyState(AtomicU8);

impl BodyState {
    /// Not waiting on the client: not polled yet, or the last frame was taken (so the upstream
    /// side has not asked for more).
    const IDLE: u8 = 0;
    /// Polled and waiting for the client to send more.
    const WAITING_CLIENT: u8 = 1;
    const DONE: u8 = 2;
    /// The client's body failed (malformed framing, or the connection ended mid-body).
    const FAILED: u8 = 3;

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn failed(&self) -> bool {
        self.get() == Self::FAILED
    }

    fn waiting_on_client(&self) -> bool {
        self.get() == Self::WAITING_CLIENT
    }
}

impl ClientBody {
    fn new(inner: ReqBody) -> ClientBody {
        let state = (!hyper::body::Body::is_end_stream(&inner)).then(Arc::default);
        ClientBody { inner, state }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(state) = &self.state {
            state.set(match &polled {
                Poll::Pending => BodyState::WAITING_CLIENT,
                Poll::Ready(None) => BodyState::DONE,
                Poll::Ready(Some(Err(_))) => BodyState::FAILED,
                Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => BodyState::DONE,
                Poll::Ready(Some(Ok(_))) => BodyState::IDLE,
            });
        }
        polled.map(|f| f.map(|f| f.map(drop_forbidden_trailers)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream connection pool.

/// Idle upstream connections kept per server; beyond this, a returned connection is closed.
const POOL_MAX_IDLE: usize = 128;

/// HTTP/2 keep-alive ping to servers: finds a dead shared connection before a request does.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 connect in progress, awaited by every request that needs the connection meanwhile.
type H2Connect = Shared<BoxFuture<'static, Result<H2Sender, Arc<io::Error>>>>;

/// A server's shared HTTP/2 connection.
#[derive(Default)]
enum H2Slot {
    #[default]
    Empty,
    Connecting(H2Connect),
    Ready(H2Sender),
}

/// Connections to one server: idle keep-alive HTTP/1.1 ones (each with the time it was
/// returned), and the shared HTTP/2 one.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(h1_client::Conn, Instant)>>,
    h2: Mutex<H2Slot>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// The most recently returned connection that the server has not closed, unless it has
    /// been idle for `max_idle` (then it is dropped, which closes it). Only the connections
    /// taken are looked at: the upkeep's `close_idle` clears out closed and expired ones every
    /// second.
    fn checkout(&self, now: Instant, max_idle: Duration) -> Option<h1_client::Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            if now.saturating_duration_since(since) < max_idle && conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back a connection whose last response was read to its end.
    pub(crate) fn checkin(&self, server: &Server, conn: h1_client::Conn) {
        if server.is_draining() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes the connections idle for `max_idle` or longer (and those the server closed), for
    /// a server that gets no request to do it in `checkout`.
    pub fn close_idle(&self, now: Instant, max_idle: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|(conn, since)| {
            now.saturating_duration_since(*since) < max_idle && conn.is_reusable()
        });
    }

    /// The server's shared HTTP/2 connection, connecting if there is none (or it closed).
    /// Concurrent callers share one connect attempt and its outcome.
    async fn h2_sender(&self, dial: impl FnOnce() -> Dial) -> io::Result<H2Sender> {
        let connecting = {
            let mut slot = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                H2Slot::Ready(s) if !s.is_closed() => return Ok(s.clone()),
                H2Slot::Connecting(c) => c.clone(),
                _ => {
                    // NOTE: owns its inputs (no `Arc<Server>`), so a connect nobody awaits any
                    // more cannot keep its server alive through the pool.
                    let dial = dial();
                    let c = async move { connect_h2(&dial).await.map_err(Arc::new) }
                        .boxed()
                        .shared();
                    *slot = H2Slot::Connecting(c.clone());
                    c
                }
            }
        };
        let res = connecting.clone().await;
        let mut slot = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if let H2Slot::Connecting(c) = &*slot
            && c.ptr_eq(&connecting)
        {
            *slot = match &res {
                Ok(s) => H2Slot::Ready(s.clone()),
                Err(_) => H2Slot::Empty,
            };
        }
        res.map_err(|e| io::Error::new(e.kind(), e.to_string()))
    }

    /// Forgets the shared HTTP/2 connection if it has closed.
    fn h2_forget_closed(&self) {
        let mut slot = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*slot, H2Slot::Ready(s) if s.is_closed()) {
            *slot = H2Slot::Empty;
        }
    }

    /// Closes every idle connection and lets go of the shared one (the server is draining or
    /// gone); requests in flight on it finish.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = H2Slot::Empty;
    }
}

/// Closes, on every server of `snap`, the pooled connections idle for longer than their
/// backend's `pool_idle_timeout` (run periodically: a server that gets no requests never
/// reaches `checkout`, which does it otherwise).
pub fn close_idle_connections(snap: &Snapshot) {
    let now = Instant::now();
    for set in &snap.backends {
        for server in &set.servers {
            server.pool().close_idle(now, set.config.pool_idle_timeout);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting clients.

/// Everything one frontend's connections need.
#[derive(Clone)]
pub struct HttpFrontend {
    pub frontend: Arc<Frontend>,
    pub shared: Arc<ArcSwap<Snapshot>>,
    /// Present: the listener terminates TLS.
    pub tls: Option<Arc<TlsAcceptor>>,
    /// Present: one access log line per request.
    pub log: Option<AccessLog>,
    /// The frontend's name, shared by its access log records.
    name: Arc<str>,
    /// This frontend's metric handles, looked up once rather than per connection or request.
    connections: metrics::Gauge,
    received: metrics::Counter,
    sent: metrics::Counter,
    /// `switchyard_request_duration_seconds` of this frontend and its backend (which its
    /// config fixes: a reload that changes it starts a new `HttpFrontend`).
    duration: metrics::Histogram,
    /// `switchyard_requests_total` answered without a server, by code (server-labelled ones
    /// live on the server).
    no_server: Arc<HandleCache<u16, metrics::Counter>>,
}

impl HttpFrontend {
    /// Builds the TLS acceptor from `frontend.tls`, if any.
    pub fn new(
        frontend: Arc<Frontend>,
        shared: Arc<ArcSwap<Snapshot>>,
        log: Option<AccessLog>,
    ) -> Result<HttpFrontend, TlsError> {
        let tls = TlsAcceptor::for_frontend(&frontend)?;
        let label = || frontend.name.clone();
        Ok(HttpFrontend {
            connections: metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => label()),
            received: metrics::counter!(crate::proxy_tcp::BYTES_RECEIVED, "frontend" => label()),
            sent: metrics::counter!(crate::proxy_tcp::BYTES_SENT, "frontend" => label()),
            name: Arc::from(frontend.name.as_str()),
            duration: metrics::histogram!(m::REQUEST_DURATION,
                "frontend" => label(), "backend" => frontend.backend.clone()),
            no_server: Arc::default(),
            frontend,
            shared,
            tls,
            log,
        })
    }
}

/// One client connection: who is on the other end, and where its tunnels are tracked.
pub(crate) struct Conn {
    fe: HttpFrontend,
    /// The client: the peer, or the PROXY header's source.
    client: SocketAddr,
    /// Where the client connected: our socket, or the PROXY header's destination.
    local: SocketAddr,
    https: bool,
    tracker: TaskTracker,
    /// The client's IP as an X-Forwarded-For entry, formatted once per connection.
    xff: HeaderValue,
    /// HTTP/2 only: streams the client reset before their answer.
    resets: Option<Resets>,
}

impl Conn {
    /// The largest request head taken: the frontend's `max_header_size`.
    pub(crate) fn head_limit(&self) -> usize {
        self.fe.frontend.max_header_size
    }
}

/// Streams of one HTTP/2 connection, and how many of them the client reset before their
/// answer. Each such stream cost an upstream request, and h2's own rapid-reset defence only
/// counts streams reset before they were accepted. So, like Envoy's premature-reset check, a
/// connection where more than half of at least `RESETS_MIN` streams were reset early is closed.
struct Resets {
    streams: AtomicU32,
    early: AtomicU32,
    close: Signal,
}

/// Early resets a connection may have before its ratio is judged: browsers cancel streams too
/// (a navigation away, an aborted fetch), though rarely a hundred on one connection.
const RESETS_MIN: u32 = 100;

impl Resets {
    fn new() -> Resets {
        Resets {
            streams: AtomicU32::new(0),
            early: AtomicU32::new(0),
            close: Signal::new(),
        }
    }

    fn reset_early(&self) {
        let early = self.early.fetch_add(1, Ordering::Relaxed) + 1;
        let streams = self.streams.load(Ordering::Relaxed);
        if early >= RESETS_MIN
            && u64::from(early) * 2 > u64::from(streams)
            && !self.close.is_fired()
        {
            warn!(
                early,
                streams,
                "closing an HTTP/2 connection: most of its streams were reset by the client before their answer"
            );
            self.close.fire();
        }
    }
}

/// Counts a stream as reset early if it is dropped before `answered`.
struct StreamGuard<'a> {
    resets: Option<&'a Resets>,
    answered: bool,
}

impl<'a> StreamGuard<'a> {
    fn new(resets: Option<&'a Resets>) -> StreamGuard<'a> {
        if let Some(r) = resets {
            r.streams.fetch_add(1, Ordering::Relaxed);
        }
        StreamGuard {
            resets,
            answered: false,
        }
    }
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        if !self.answered
            && let Some(r) = self.resets
        {
            r.reset_early();
        }
    }
}

/// Accepts connections until `stop_accept` fires; each connection runs on `tracker` and is
/// shut down gracefully (finish the in-flight request, then close) when `shutdown` fires.
pub async fn serve(
    listener: Arc<TcpListener>,
    fe: HttpFrontend,
    stop_accept: CancellationToken,
    shutdown: Signal,
    tracker: TaskTracker,
) {
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        // The frontend's head limit, as SETTINGS_MAX_HEADER_LIST_SIZE: a larger header
        // block gets `431` and its stream refused (hyper's default is 16 KiB).
        .max_header_list_size(u32::try_from(fe.frontend.max_header_size).unwrap_or(u32::MAX))
        // `h2_conn::add_date` adds it instead, leaving gRPC answers alone.
        .auto_date_header(false);
    let builder = Arc::new(h2);
    let name = fe.frontend.name.clone();
    info!(frontend = %name, bind = %fe.frontend.bind, tls = fe.tls.is_some(), "listening (http)");
    let limit = crate::proxy_tcp::ConnLimit::new(&fe.frontend);
    let mut failing = false;
    loop {
        let Some(permit) = limit.admit(&stop_accept, &name).await else {
            break;
        };
        let accepted = tokio::select! {
            _ = stop_accept.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                if failing {
                    info!(frontend = %name, "accepting again");
                    failing = false;
                }
                a
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning; one warning per
                // run of failures, not one per retry.
                if failing {
                    debug!(frontend = %name, error = %e, "accept failed");
                } else {
                    warn!(frontend = %name, error = %e, "accept failed; retrying every 50 ms");
                    failing = true;
                }
                tokio::select! {
                    _ = stop_accept.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let fe = fe.clone();
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        let tunnels = tracker.clone();
        // Boxed: the connection's future is a few KiB (TLS handshake, hyper's state), and
        // spawning moves it several times on its way into the task; a box moves as a pointer.
        tracker.spawn(Box::pin(async move {
            let _permit = permit;
            let gauge = fe.connections.clone();
            gauge.increment(1.0);
            accept(fe, stream, peer, &builder, &shutdown, tunnels).await;
            gauge.decrement(1.0);
        }));
    }
    debug!(frontend = %name, "stopped accepting");
}

/// hyper's server for one frontend's HTTP/2 connections (HTTP/1.x is `h1_server`'s).
type H2Server = hyper::server::conn::http2::Builder<TokioExecutor>;

/// A client connection after its PROXY header and TLS handshake.
/// (The TLS stream is boxed: unboxed, its ~1 KiB would be copied with every move of a plain
/// connection's future too.)
pub(crate) type ClientIo =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// A client connection as the HTTP servers read it: with its timeouts and byte counts.
pub(crate) type Stream = HeadTimeout<ClientIo>;

/// One client connection: PROXY header and TLS (dropped if `shutdown` fires meanwhile), then
/// HTTP until the client ends it or `shutdown` closes it gracefully.
async fn accept(
    fe: HttpFrontend,
    stream: TcpStream,
    peer: SocketAddr,
    builder: &H2Server,
    shutdown: &Signal,
    tracker: TaskTracker,
) {
    // One watch for the connection's whole life: each new one allocates and registers.
    let mut stop = shutdown.watch();
    let ready = tokio::select! {
        r = setup(&fe, stream, peer) => r,
        _ = &mut stop => return,
    };
    let Some((io, client, local)) = ready else {
        return;
    };
    // ALPN settles the protocol of a TLS connection; without it, the first bytes do.
    let alpn_h2 = match &io {
        ClientIo::Left(_) => None,
        ClientIo::Right(tls) => tls.get_ref().1.alpn_protocol().map(|p| p == b"h2"),
    };
    let xff = forwarded_for(client.ip());
    let conn = Conn {
        xff,
        https: fe.tls.is_some(),
        fe,
        client,
        local,
        tracker,
        resets: None,
    };
    serve_conn(io, alpn_h2, conn, builder, &mut stop).await;
}

/// The client's address as an X-Forwarded-For value (an IPv4-mapped IPv6 address as IPv4).
/// IPv4 digits are written by hand: through `Display` they cost about 1,500 instructions, which
/// is 2% of a whole one-request connection.
fn forwarded_for(ip: std::net::IpAddr) -> HeaderValue {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n])
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        }
        v6 => HeaderValue::try_from(v6.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
    }
}

/// The PROXY header if `accept_proxy`, then TLS if the frontend has it. Returns the stream,
/// the client's address and the address it connected to; `None` when the client was refused
/// (already closed and logged).
async fn setup(
    fe: &HttpFrontend,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<(ClientIo, SocketAddr, SocketAddr)> {
    let f = &fe.frontend;
    // The address the client connected to only matters for a PROXY header we send, so the
    // `getsockname` is skipped (one syscall per connection) when the backend sends none.
    let sends_proxy = fe
        .shared
        .load()
        .route(&f.name)
        .is_some_and(|b| b.config.send_proxy != ProxyVersion::None);
    let local = if sends_proxy {
        stream.local_addr().unwrap_or(f.bind)
    } else {
        f.bind
    };
    let (client, local) = if f.accept_proxy {
        match proxy_protocol::read_header(&mut stream, f.header_timeout).await {
            Ok(Some(addrs)) => addrs,
            Ok(None) => (peer, local),
            Err(e) => {
                debug!(frontend = %f.name, client = %peer, error = %e, "PROXY header refused; closing");
                metrics::counter!(PROXY_HEADER_ERRORS,
                    "frontend" => f.name.clone(), "reason" => e.reason())
                .increment(1);
                crate::proxy_tcp::linger_close(stream).await;
                return None;
            }
        }
    } else {
        (peer, local)
    };
    let io = match &fe.tls {
        None => ClientIo::Left(stream),
        // Boxed: the handshake's state is over a KiB, which every connection's future would
        // otherwise carry (and copy when spawned), TLS or not.
        Some(acceptor) => match Box::pin(acceptor.accept(stream)).await {
            Ok(tls) => ClientIo::Right(Box::new(tls)),
            Err(e) => {
                debug!(frontend = %f.name, client = %client, error = %e, "TLS handshake failed");
                return None;
            }
        },
    };
    Some((io, client, local))
}

/// Serves one client connection: our HTTP/1.x server, or hyper's HTTP/2 one, as ALPN chose
/// (`alpn_h2`), else as its first bytes show.
async fn serve_conn(
    io: ClientIo,
    alpn_h2: Option<bool>,
    mut conn: Conn,
    builder: &H2Server,
    stop: &mut Watch,
) {
    let client = conn.client;
    let mut io = HeadTimeout::new(
        io,
        conn.fe.frontend.header_timeout,
        conn.fe.frontend.idle_timeout,
        conn.fe.received.clone(),
        conn.fe.sent.clone(),
    );
    let h2 = match alpn_h2 {
        Some(h2) => h2,
        None => tokio::select! {
            r = io.sniff_h2() => match r {
                Ok(h2) => h2,
                Err(e) => {
                    debug!(client = %client, error = %e, "client connection ended before a request");
                    return;
                }
            },
            _ = &mut *stop => return,
        },
    };
    if !h2 {
        let first = io.take_sniffed();
        h1_server::serve(io, first, &conn, stop).await;
        return;
    }
    let r = Resets::new();
    let mut close = r.close.watch();
    conn.resets = Some(r);
    let (first, idle) = (
        conn.fe.frontend.header_timeout,
        conn.fe.frontend.idle_timeout,
    );
    let conn = Arc::new(conn);
    let activity = h2_conn::Activity::new();
    let streams = Arc::clone(&activity);
    let svc = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        let open = streams.open();
        async move {
            let mut stream = StreamGuard::new(conn.resets.as_ref());
            let mut resp = handle(&conn, req.map(ReqBody::Hyper)).await;
            stream.answered = true;
            h2_conn::add_date(resp.headers_mut());
            Ok::<_, Infallible>(resp.map(|b| h2_conn::Tracked::new(b, open)))
        }
    });
    let io = TokioIo::new(io);
    // Boxed: hyper's connection state is large, and the task's future is moved on spawn.
    let mut http = Box::pin(builder.serve_connection(io, svc));
    let res = tokio::select! {
        r = http.as_mut() => r,
        _ = &mut *stop => {
            http.as_mut().graceful_shutdown();
            h2_conn::after_goaway(&mut http, &activity).await.unwrap_or(Ok(()))
        }
        // Dropped at once: its streams end, the socket closes.
        _ = &mut close => Ok(()),
        // No request within `header_timeout`, or no stream open for `idle_timeout`.
        _ = activity.expired(first, idle) => {
            debug!(client = %client, "HTTP/2 connection idle; closing");
            http.as_mut().graceful_shutdown();
            h2_conn::after_goaway(&mut http, &activity).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = res {
        debug!(client = %client, error = %e, "client connection ended with an error");
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding.

/// Serves one request: pick, forward, map failures to status codes, record metrics and the
/// access log line.
pub(crate) async fn handle(conn: &Conn, req: Request<ReqBody>) -> Response<Body> {
    let start = Instant::now();
    let fe = &conn.fe;
    // Dropped with this future if the client goes away first: then it logs `client_abort`.
    let log = fe.log.as_ref().map(|log| {
        let mut p = Pending::new(log, conn.client, Arc::clone(&fe.name));
        p.record().http = Some(HttpRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            status: 0,
        });
        p
    });
    let snap = fe.shared.load_full();
    let Some(index) = snap.route_index(&fe.frontend.name) else {
        let resp = plain(StatusCode::SERVICE_UNAVAILABLE, "no route\n");
        if let Some(mut p) = log {
            finish_log(&mut p, &resp, Termination::NoRoute);
        }
        return resp;
    };
    let backend = &snap.backends[index];
    let mut trace = Trace::default();
    // CONNECT is passed on only where the frontend allows it, over HTTP/1.1 to HTTP/1.1.
    let connect_ok = fe.frontend.allow_connect && backend.config.protocol == Protocol::Http1;
    let mut req = req;
    let refused = match refuse(&req, fe.frontend.max_header_size, connect_ok) {
        // HTTP/2's own rules: Host and :authority, Content-Length, Cookie crumbs.
        None if req.version() == Version::HTTP_2 => {
            let (mut parts, body) = req.into_parts();
            let checked = crate::h2_rules::h2_to_h1(&mut parts);
            req = Request::from_parts(parts, body);
            checked
                .err()
                .map(|m| plain(StatusCode::BAD_REQUEST, format!("400 Bad Request: {m}\n")))
        }
        r => r,
    };
    let (mut resp, server) = match refused {
        Some(resp) => {
            trace.termination = Termination::BadRequest;
            (resp, None)
        }
        None => forward(conn, &snap, index, req, &mut trace).await,
    };
    let code = resp.status().as_u16();
    if let Some(mut p) = log {
        let r = p.record();
        r.backend = Some(Arc::clone(&backend.config));
        r.server = server.clone();
        r.retries = trace.retries;
        r.connect = trace.connect;
        r.response = trace.response;
        if let Some(h) = &mut r.http {
            h.status = code;
        }
        match resp.body_mut() {
            // Written when the upstream body ends (or the client drops it).
            Either::Left(body) => {
                // hyper never polls a body that is already at its end (HEAD, 204, 304, empty).
                if hyper::body::Body::is_end_stream(&body.inner) {
                    p.record().termination = Termination::Ok;
                }
                body.log = Some(p);
            }
            Either::Right(_) => finish_log(&mut p, &resp, trace.termination),
        }
    }
    match &server {
        Some(s) => s.count_request(&fe.name, &fe.frontend.backend, code),
        None => fe.no_server.with(
            |c| *c == code,
            || {
                let c = metrics::counter!(m::REQUESTS,
                    "frontend" => fe.frontend.name.clone(), "backend" => fe.frontend.backend.clone(),
                    "server" => "", "code" => code.to_string());
                (code, c)
            },
            |c| c.increment(1),
        ),
    }
    fe.duration.record(start.elapsed().as_secs_f64());
    resp
}

/// Fills in the record of a request answered with one of our own (complete) bodies, or a
/// `101`; it is written when `p` is dropped.
fn finish_log(p: &mut Pending, resp: &Response<Body>, termination: Termination) {
    let r = p.record();
    if let Some(h) = &mut r.http {
        h.status = resp.status().as_u16();
    }
    r.bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    r.termination = termination;
}

/// How a request was forwarded, for the access log: the last attempt's timings.
#[derive(Debug, Default)]
struct Trace {
    /// Further servers tried after the first.
    retries: u32,
    /// Getting a connection to the server (about 0 for a pooled or shared one).
    connect: Option<Duration>,
    /// From the connection being ready to the response head.
    response: Option<Duration>,
    /// How it ended when our own answer (or a `101`) is the response.
    termination: Termination,
}

/// A request that must not be forwarded, answered here (with a close, so nothing the client
/// sent after it is read as another request): a transfer coding other than one `chunked`
/// (hyper accepts any list that ends in `chunked`, and the other codings would be dropped when
/// the body is re-framed), an HTTP/1.1 request without exactly one valid Host (RFC 9112 3.2),
/// an absolute-form target whose authority differs from Host (HAProxy answers 400 too), and a
/// request-target longer than a quarter of `max_header_size` (414). Host rules here apply to
/// HTTP/1.x only: HTTP/2 requests get theirs (`:authority`) from `h2_rules::h2_to_h1`.
///
/// NOTE: on the path of every request, so it allocates nothing unless it refuses, and looks
/// up at most two headers: Host (HTTP/1.x), and Transfer-Encoding only when there is a body
/// (hyper gives a request with that header a body, or refuses it itself).
fn refuse<B: hyper::body::Body>(
    req: &Request<B>,
    max_header_size: usize,
    connect_ok: bool,
) -> Option<Response<Body>> {
    let bad = |why: &str| {
        Some(refusal(
            StatusCode::BAD_REQUEST,
            format!("400 Bad Request: {why}\n"),
        ))
    };
    if req.method() == Method::CONNECT && !(connect_ok && req.version() == Version::HTTP_11) {
        // Unless the frontend fronts forward proxies (`allow_connect`), a load balancer is no
        // forward proxy, and a `2xx` to a CONNECT turns the connection it went on into a
        // tunnel (nginx answers 400, and HAProxy passes it on). Over HTTP/2 a CONNECT is a
        // stream, which is not tunnelled here.
        return Some(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT is not served here\n",
        ));
    }
    if !req.body().is_end_stream() {
        let mut chunked = 0usize;
        for v in req.headers().get_all(header::TRANSFER_ENCODING) {
            let Ok(v) = v.to_str() else {
                return bad("invalid Transfer-Encoding");
            };
            for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !t.eq_ignore_ascii_case("chunked") {
                    return Some(refusal(
                        StatusCode::NOT_IMPLEMENTED,
                        format!("501 Not Implemented: transfer coding {t:?} is not supported\n"),
                    ));
                }
                chunked += 1;
            }
        }
        if chunked > 1 {
            return bad("chunked applied more than once");
        }
    }
    if uri_len(req.uri()) > max_header_size / 4 {
        return Some(refusal(
            StatusCode::URI_TOO_LONG,
            format!(
                "414 URI Too Long: the request-target is over {} bytes\n",
                max_header_size / 4
            ),
        ));
    }
    if req.version() > Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    // `None`: no Host (HTTP/1.0); `Some(None)`: an empty one (allowed when the target has no
    // authority); `Some(Some((host, port)))`.
    let host = match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_11 => return bad("no Host header"),
        (None, _) => None,
        (Some(h), None) if h.is_empty() => Some(None),
        (Some(h), None) => match h.to_str().ok().and_then(split_host) {
            Some(hp) => Some(Some(hp)),
            None => return bad("invalid Host header"),
        },
        (Some(_), Some(_)) => return bad("more than one Host header"),
    };
    if let Some(target) = req.uri().authority() {
        let default = if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let same = match host {
            Some(Some((h, port))) => {
                target.host().eq_ignore_ascii_case(h)
                    && target.port_u16().unwrap_or(default) == port.unwrap_or(default)
            }
            Some(None) => false,
            // HTTP/1.0 without Host: the target's authority is the only one.
            None => true,
        };
        if !same {
            return bad("the Host header does not match the absolute request-target");
        }
    }
    None
}

/// What a registered name may hold besides letters and digits (RFC 3986 3.2.2: unreserved and
/// sub-delims), except `,`: a Host with a comma is a list of Hosts.
const REG_NAME_MARKS: &[u8] = b"-._~!$&'()*+;=";

/// The host and port of a Host header value, `host[:port]` (RFC 9110 7.2, RFC 3986 3.2.2): a
/// registered name or IPv4 address, or an IP literal in brackets; no userinfo, no list, no
/// percent-encoding outside an IP literal. Parsed in place (`http::uri::Authority` would copy
/// the value, and accepts userinfo).
pub(crate) fn split_host(v: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if v.starts_with('[') {
        let end = v.find(']')?;
        let literal = &v[1..end];
        let ok = literal.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'%' | b'-' | b'_' | b'~')
        });
        if literal.is_empty() || !ok {
            return None;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        let end = v.find(':').unwrap_or(v.len());
        let name = &v[..end];
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || REG_NAME_MARKS.contains(&b));
        if name.is_empty() || !ok {
            return None;
        }
        (name, &v[end..])
    };
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return None,
        // RFC 3986 allows an empty port: the scheme's default.
        Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// The length of the request-target as it was sent (scheme, authority, path and query).
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + pq
}

/// Our own error answer to a request, closing the connection after it.
fn refusal(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = plain(status, body);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Why a forward attempt failed. (Large, but moved once per attempt: boxing the request back
/// would add an allocation on the retry path for nothing.)
#[allow(clippy::large_enum_variant)]
enum Failure {
    /// Nothing was sent: the request comes back and may go to another server.
    Connect(io::Error, Request<UpBody>),
    /// The request reached the server (at least partly) and no usable response came back.
    /// Our HTTP/1.1 client hands back the head of a replayable request (idempotent and
    /// bodiless), so it needs no `Replay` copy.
    Sent(BoxError, Option<http::request::Parts>),
    Timeout,
}

/// The head of a request that may be replayed on another server after it reached one: an
/// idempotent method and no body, so everything needed to send it again is here.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// Methods that may be sent twice (RFC 9110 9.2.2).
    fn idempotent(method: &Method) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
    }

    fn of(req: &Request<UpBody>) -> Option<Replay> {
        let idempotent = Replay::idempotent(req.method());
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        (idempotent && bodiless).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<UpBody> {
        let mut r = Request::new(Either::Right(Empty::new()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// How the upstream request is framed.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// HTTP/2 to the server (else HTTP/1.1).
    h2: bool,
    /// TLS to the server (the HTTP/2 `:scheme`).
    tls: bool,
    /// A tunnel if the server agrees (an upgrade, or a CONNECT): sent through hyper, which
    /// hands the socket over, keeping `Connection: upgrade` and `Upgrade`.
    upgrade: bool,
}

async fn forward(
    conn: &Conn,
    snap: &Arc<Snapshot>,
    index: usize,
    mut req: Request<ReqBody>,
    trace: &mut Trace,
) -> (Response<Body>, Option<Arc<Server>>) {
    let backend = &snap.backends[index];
    let cfg = &backend.config;
    let target = Target {
        h2: cfg.protocol == Protocol::H2,
        tls: cfg.tls.is_some(),
        upgrade: cfg.protocol == Protocol::Http1 && wants_tunnel(&req),
    };
    // HTTP/2 clients get trailers unannounced (`announce_grpc_trailers` is for HTTP/1.1).
    let client_version = req.version();
    // Taken before the request is rewritten; it resolves once our 101 reaches the client.
    let mut client_upgrade = target
        .upgrade
        .then(|| req.extensions_mut().remove::<h1_server::ClientUpgrade>())
        .flatten();
    let method = req.method().clone();
    let mut req = rewrite_request(req, conn, &cfg.name, target);
    // Kept to tell, once the body is gone upstream, whether a failure was the client's.
    let body_state = match req.body() {
        Either::Left(b) => b.state.clone(),
        Either::Right(_) => None,
    };
    // hyper (HTTP/2, upgrades) consumes the request; our HTTP/1.1 client gives it back.
    let replay = (target.h2 || target.upgrade)
        .then(|| Replay::of(&req))
        .flatten();
    let mut in_flight = backend.runtime.request();
    let mut tried: Vec<Arc<Server>> = Vec::new();
    loop {
        let Some(server) = backend.pick_excluding(&tried).cloned() else {
            if tried.is_empty() {
                trace.termination = Termination::NoServer;
                let body = format!(
                    "503 Service Unavailable: no server available for backend {}\n",
                    cfg.name
                );
                return (plain(StatusCode::SERVICE_UNAVAILABLE, body), None);
            }
            trace.termination = Termination::ConnectError;
            return (unreachable_backend(&cfg.name), tried.pop());
        };
        let active = server.track();
        match send(&server, cfg, conn, req, target, trace).await {
            Ok(mut resp) => {
                crate::health::observe_response(backend, &server, resp.status().as_u16());
                if opens_tunnel(&method, resp.status()) {
                    let Some(client_side) = client_upgrade.take() else {
                        trace.termination = Termination::ServerError;
                        let body = format!(
                            "502 Bad Gateway: server {} of backend {} switched protocols unasked\n",
                            server.addr, cfg.name
                        );
                        return (plain(StatusCode::BAD_GATEWAY, body), Some(server));
                    };
                    let server_side = hyper::upgrade::on(&mut resp);
                    let (mut parts, _) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers, Keep::UPGRADE);
                    // A `2xx` to CONNECT has no content (RFC 9110 9.3.6): the tunnel follows.
                    parts.headers.remove(header::CONTENT_LENGTH);
                    tunnel(conn, &server, active, client_side, server_side);
                    trace.termination = Termination::Upgrade;
                    let empty = Either::Right(Full::new(Bytes::new()));
                    return (Response::from_parts(parts, empty), Some(server));
                }
                let (mut parts, body) = resp.into_parts();
                // Our HTTP/1.1 client leaves hop-by-hop fields out as it parses.
                if let RespBody::Hyper(_) = body {
                    strip_hop_by_hop(&mut parts.headers, Keep::NONE);
                }
                if client_version == Version::HTTP_11 {
                    announce_grpc_trailers(&mut parts.headers);
                }
                let origin = Some(Origin {
                    snap: Arc::clone(snap),
                    backend: index,
                    server: Arc::clone(&server),
                });
                let body = Guarded {
                    inner: body,
                    _active: active,
                    log: None,
                    origin,
                };
                return (
                    Response::from_parts(parts, Either::Left(body)),
                    Some(server),
                );
            }
            Err(Failure::Connect(e, back)) => {
                debug!(server = %server.addr, error = %e, "upstream connect failed");
                metrics::counter!(m::UPSTREAM_CONNECT_ERRORS,
                    "backend" => cfg.name.clone(), "server" => server.addr.clone())
                .increment(1);
                crate::health::observe_failure(backend, &server, &format!("connect: {e}"));
                tried.push(server);
                // Nothing was sent, so any method may go to another server; no budget needed,
                // since the failed attempt loaded nobody.
                if tried.len() > cfg.retries as usize {
                    trace.termination = Termination::ConnectError;
                    return (unreachable_backend(&cfg.name), tried.pop());
                }
                metrics::counter!(m::RETRIES, "backend" => cfg.name.clone()).increment(1);
                trace.retries += 1;
                req = back;
            }
            Err(Failure::Sent(e, _)) if body_state.as_ref().is_some_and(|b| b.failed()) => {
                // The client's body broke (bad chunk, hung up mid-body): not the server's fault.
                debug!(server = %server.addr, error = %e, "client request body failed");
                trace.termination = Termination::BadRequest;
                let body = "400 Bad Request: the request body was malformed or cut short\n";
                return (refusal(StatusCode::BAD_REQUEST, body), Some(server));
            }
            Err(Failure::Sent(e, back)) => {
                debug!(server = %server.addr, error = %e, "upstream failed before a response");
                crate::health::observe_failure(backend, &server, &format!("upstream: {e}"));
                let body = format!(
                    "502 Bad Gateway: server {} of backend {} failed before answering\n",
                    server.addr, cfg.name
                );
                tried.push(Arc::clone(&server));
                // Replayed only if idempotent and bodiless, within `retries` and the budget.
                // NOTE: a server this failure (or a concurrent one) ejected takes no new
                // requests, so replaying what was caught on it cannot snowball: it is bounded by
                // what was in flight there. The budget guards failures that eject nobody
                // (checks off, error_limit 0, or max_ejected_percent reached).
                let ejected = !server.is_up();
                let again = back
                    .map(|parts| Request::from_parts(parts, Either::Right(Empty::new())))
                    .or_else(|| replay.as_ref().map(Replay::request));
                match again {
                    Some(r)
                        if tried.len() <= cfg.retries as usize
                            && (ejected
                                || in_flight
                                    .try_retry(cfg.retry_budget_percent, cfg.retry_budget_min)) =>
                    {
                        metrics::counter!(m::RETRIES, "backend" => cfg.name.clone()).increment(1);
                        trace.retries += 1;
                        req = r;
                    }
                    _ => {
                        trace.termination = Termination::ServerError;
                        return (plain(StatusCode::BAD_GATEWAY, body), Some(server));
                    }
                }
            }
            Err(Failure::Timeout) if body_state.as_ref().is_some_and(|b| b.waiting_on_client()) => {
                // The server is waiting for the rest of the body, and so are we: the client is
                // too slow, not the server.
                trace.termination = Termination::ClientTimeout;
                let body = format!(
                    "408 Request Timeout: the request body did not arrive within {:?}\n",
                    cfg.response_timeout
                );
                return (refusal(StatusCode::REQUEST_TIMEOUT, body), Some(server));
            }
            Err(Failure::Timeout) => {
                trace.termination = Termination::ServerTimeout;
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

/// Relays the bytes of an upgraded connection (WebSocket, ...) both ways until either side
/// closes or the server's drain times out. It counts as in flight on the server, and as an
/// open connection of the frontend, for its whole life; it runs on the connection tracker,
/// so shutdown waits for it up to the grace period.
fn tunnel(
    conn: &Conn,
    server: &Arc<Server>,
    active: ActiveGuard,
    client_side: h1_server::ClientUpgrade,
    server_side: OnUpgrade,
) {
    let mut kill = server.kill_token().watch();
    let addr = server.addr.clone();
    let client = conn.client;
    let gauge = metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => conn.fe.frontend.name.clone());
    conn.tracker.spawn(async move {
        let _active = active;
        gauge.increment(1.0);
        let relay = async {
            let (mut c, s) = tokio::try_join!(
                client_side.io(),
                async { server_side.await.map_err(io::Error::other) },
            )?;
            let mut s = TokioIo::new(s);
            tokio::io::copy_bidirectional(&mut c, &mut s).await
        };
        tokio::select! {
            r = relay => match r {
                Ok((up, down)) => debug!(client = %client, server = %addr, up, down, "tunnel closed"),
                Err(e) => debug!(client = %client, server = %addr, error = %e, "tunnel ended with an error"),
            },
            _ = &mut kill => debug!(client = %client, server = %addr, "tunnel closed: drain timeout"),
        }
        gauge.decrement(1.0);
    });
}

/// Sends one request to one server over its backend's protocol.
async fn send(
    server: &Arc<Server>,
    cfg: &Arc<Backend>,
    conn: &Conn,
    req: Request<UpBody>,
    target: Target,
    trace: &mut Trace,
) -> Result<Response<RespBody>, Failure> {
    // Built only when a connection is opened: a pooled or shared one needs none of it.
    let dial = || Dial::new(server, cfg, conn);
    // NOTE: a connection that began with a PROXY header speaks for one client only, so with
    // `send_proxy` connections are neither pooled nor shared (HAProxy marks them private too).
    let private = cfg.send_proxy != ProxyVersion::None;
    // HTTP/2 and upgrades are boxed: hyper's futures (and a TLS handshake) are several KiB,
    // which every request's future would otherwise carry and copy.
    let resp = if target.h2 {
        Box::pin(send_h2(
            server,
            dial,
            req,
            private,
            cfg.response_timeout,
            trace,
        ))
        .await
    } else if target.upgrade {
        // An upgraded connection is the tunnel's: hyper hands its socket over after the `101`.
        Box::pin(send_upgrade(dial, req, cfg.response_timeout, trace)).await
    } else {
        return send_h1(server, cfg, dial, req, private, trace).await;
    };
    resp.map(|r| r.map(RespBody::Hyper))
}

/// HTTP/1.1 with our own client: a pooled connection the server has not closed, else a new
/// one; the response body hands it back to the pool when it is read to the end (unless the
/// connection is `private` to this client). A replayable request (idempotent, bodiless)
/// that finds its pooled connection closed under it is sent again on a new one: the server
/// closing an idle connection as we reuse it is a race, not a failure.
async fn send_h1(
    server: &Arc<Server>,
    cfg: &Backend,
    dial: impl Fn() -> Dial,
    req: Request<UpBody>,
    private: bool,
    trace: &mut Trace,
) -> Result<Response<RespBody>, Failure> {
    let start = Instant::now();
    let pooled = (!private)
        .then(|| server.pool().checkout(start, cfg.pool_idle_timeout))
        .flatten();
    let (mut conn, mut reused) = match pooled {
        Some(c) => (c, true),
        None => match connect_raw(&dial()).await {
            Ok(c) => (c, false),
            Err(e) => return Err(Failure::Connect(e, req)),
        },
    };
    let ready = Instant::now();
    trace.connect = Some(ready - start);
    let (parts, body) = req.into_parts();
    let body_empty = hyper::body::Body::is_end_stream(&body);
    let head = h1_client::RequestHead::encode(
        &parts,
        body_empty,
        hyper::body::Body::size_hint(&body).exact(),
    );
    let mut body = std::pin::pin!(body);
    let replayable = body_empty && Replay::idempotent(&parts.method);
    let response_timeout = cfg.response_timeout;
    let mut deadline = tokio::time::Instant::from_std(ready) + response_timeout;
    let resp_head = loop {
        let body = (!body_empty).then_some(body.as_mut());
        match h1_client::exchange(&mut conn, &head, body, deadline).await {
            Err(h1_client::Error::TimedOut) => return Err(Failure::Timeout),
            Ok(h) => break h,
            Err(h1_client::Error::Closed(_)) if reused && replayable => {
                debug!(server = %server.addr, "pooled connection closed under a request; resending");
                reused = false;
                conn = match connect_raw(&dial()).await {
                    Ok(c) => c,
                    Err(e) => {
                        let back = Request::from_parts(parts, Either::Right(Empty::new()));
                        return Err(Failure::Connect(e, back));
                    }
                };
                deadline = tokio::time::Instant::now() + response_timeout;
            }
            Err(e) => return Err(Failure::Sent(e.into(), replayable.then_some(parts))),
        }
    };
    trace.response = Some(ready.elapsed());
    let pool = (!private).then(|| Arc::clone(server));
    let body = h1_client::Body::new(conn, &resp_head, pool);
    let mut resp = Response::new(RespBody::H1(body));
    *resp.status_mut() = resp_head.status;
    *resp.version_mut() = resp_head.version;
    *resp.headers_mut() = resp_head.headers;
    Ok(resp)
}

/// An HTTP/1.1 request asking to upgrade, on a new connection through hyper, which hands the
/// socket to the tunnel after a `101` (the connection is never pooled).
async fn send_upgrade(
    dial: impl FnOnce() -> Dial,
    req: Request<UpBody>,
    response_timeout: Duration,
    trace: &mut Trace,
) -> Result<Response<Incoming>, Failure> {
    let start = Instant::now();
    let mut sender = match connect_h1(&dial()).await {
        Ok(s) => s,
        Err(e) => return Err(Failure::Connect(e, req)),
    };
    let ready = Instant::now();
    trace.connect = Some(ready - start);
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(resp)) => {
            trace.response = Some(ready.elapsed());
            Ok(resp)
        }
        Ok(Err(mut e)) => match e.take_message() {
            // Refused before a byte was written: as good as a connect failure.
            Some(back) => Err(Failure::Connect(io::Error::other(e.into_error()), back)),
            None => Err(Failure::Sent(e.into_error().into(), None)),
        },
    }
}

/// HTTP/2: the server's shared connection (or a private one), re-created once if it turns
/// out to have closed before taking the request.
async fn send_h2(
    server: &Arc<Server>,
    dial: impl Fn() -> Dial,
    mut req: Request<UpBody>,
    private: bool,
    response_timeout: Duration,
    trace: &mut Trace,
) -> Result<Response<Incoming>, Failure> {
    let start = Instant::now();
    let mut stale_ok = !private;
    loop {
        let sender = if private {
            connect_h2(&dial()).await
        } else {
            server.pool().h2_sender(&dial).await
        };
        let mut sender = match sender {
            Ok(s) => s,
            Err(e) => return Err(Failure::Connect(e, req)),
        };
        let ready = Instant::now();
        trace.connect = Some(ready - start);
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(resp)) => {
                trace.response = Some(ready.elapsed());
                return Ok(resp);
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if stale_ok => {
                    debug!(server = %server.addr, "shared HTTP/2 connection closed; reconnecting");
                    server.pool().h2_forget_closed();
                    stale_ok = false;
                    req = back;
                }
                Some(back) => {
                    return Err(Failure::Connect(io::Error::other(e.into_error()), back));
                }
                None => return Err(Failure::Sent(e.into_error().into(), None)),
            },
        }
    }
}

/// Where and how to open one upstream connection. It owns its inputs, so a shared HTTP/2
/// connect can outlive the request that started it.
struct Dial {
    addr: String,
    backend: Arc<Backend>,
    kill: Signal,
    /// The PROXY header to send first, if the backend sends one.
    proxy_header: Option<Bytes>,
}

impl Dial {
    fn new(server: &Server, backend: &Arc<Backend>, conn: &Conn) -> Dial {
        let proxy_header = match backend.send_proxy {
            ProxyVersion::None => None,
            ProxyVersion::V1 => Some(proxy_protocol::encode_v1(conn.client, conn.local).into()),
            ProxyVersion::V2 => Some(proxy_protocol::encode_v2(conn.client, conn.local).into()),
        };
        Dial {
            addr: server.addr.clone(),
            backend: Arc::clone(backend),
            kill: server.kill_token(),
            proxy_header,
        }
    }

    /// TCP, the PROXY header, then TLS (offering `alpn`) if the backend has `[backend.tls]`.
    async fn io(&self, alpn: &[&[u8]]) -> io::Result<UpIo> {
        let mut stream = TcpStream::connect(self.addr.as_str()).await?;
        stream.set_nodelay(true)?;
        if let Some(h) = &self.proxy_header {
            stream.write_all(h).await?;
        }
        let io: Box<dyn Io> = match &self.backend.tls {
            None => Box::new(stream),
            Some(tls) => Box::new(crate::tls::connect(tls, &self.addr, stream, alpn).await?),
        };
        Ok(Killable::new(io, self.kill.watch()))
    }

    /// Runs `f` (connect and handshake) within the backend's connect timeout.
    async fn timed<T>(&self, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        tokio::time::timeout(self.backend.connect_timeout, f)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// A new HTTP/1.1 connection for our own client. It closes when the server's drain times out.
/// (Boxed: a TLS handshake's future is several KiB, which every request's future would
/// otherwise carry and copy; the allocation is per new connection only.)
async fn connect_raw(dial: &Dial) -> io::Result<h1_client::Conn> {
    let io = Box::pin(dial.timed(dial.io(&[b"http/1.1"]))).await?;
    Ok(h1_client::Conn::new(io))
}

/// A new HTTP/1.1 connection driven by hyper, for an upgrade. It closes when the server's
/// drain times out; after a `101` its socket belongs to the upgrade.
async fn connect_h1(dial: &Dial) -> io::Result<H1Sender> {
    let (sender, conn) = dial
        .timed(async {
            let io = dial.io(&[b"http/1.1"]).await?;
            hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await
                .map_err(io::Error::other)
        })
        .await?;
    // The socket is `Killable`: a drain timeout fails its reads and writes, which ends this.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

/// A new HTTP/2 connection (h2c by prior knowledge, or h2 over TLS with ALPN). The drain
/// timeout closes its socket, which ends every stream on it.
async fn connect_h2(dial: &Dial) -> io::Result<H2Sender> {
    let (sender, conn) = dial
        .timed(async {
            let io = dial.io(&[b"h2"]).await?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(TokioIo::new(io))
                .await
                .map_err(io::Error::other)
        })
        .await?;
    let addr = dial.addr.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(server = %addr, error = %e, "upstream HTTP/2 connection closed with an error");
        }
    });
    Ok(sender)
}

/// Any upstream transport: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub(crate) type UpIo = Killable<Box<dyn Io>>;

/// An upstream socket that fails every read and write once its server's kill token fires, so
/// the connection ends even when hyper runs it in a task of its own (HTTP/2) or hands it to an
/// upgrade.
pub(crate) struct Killable<S> {
    inner: S,
    kill: Watch,
    dead: bool,
}

impl<S> Killable<S> {
    pub(crate) fn new(inner: S, kill: Watch) -> Killable<S> {
        Killable {
            inner,
            kill,
            dead: false,
        }
    }

    /// Whether the kill token fired (one atomic load).
    fn killed(&mut self) -> bool {
        self.dead |= self.kill.is_fired();
        self.dead
    }

    /// After the socket said `Pending`: registers the task to be woken if the kill token
    /// fires meanwhile, and turns the wait into the kill error if it already has.
    /// NOTE: only then, not on every poll: a pooled connection serves a different task at
    /// almost every request, so each registration replaces a waker (about 250 instructions),
    /// and a read or write that is ready needs none.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.kill.poll_fired(cx) {
            self.dead = true;
            return Poll::Ready(Err(killed_error()));
        }
        Poll::Pending
    }
}

fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server drain timed out")
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Headers.

/// Hop-by-hop headers (RFC 9110 7.6.1), plus the non-standard ones proxies must not forward.
/// (`Trailer` is end-to-end: it announces the trailer fields, which an HTTP/1.1 client only
/// receives when they are announced.)
pub(crate) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    // An h2c upgrade's settings: meant for this hop, and never passed on (see `wants_upgrade`).
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

// Built at compile time: `HeaderName::from_static` called at run time validates its input.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `Connection` tokens that name no header to remove beyond `HOP_BY_HOP` itself.
const CONNECTION_TOKENS: [&str; 4] = ["keep-alive", "close", "upgrade", "te"];

/// Hop-by-hop headers that survive stripping.
#[derive(Debug, Clone, Copy)]
struct Keep {
    /// `Connection: upgrade` and `Upgrade` (a protocol switch, asked or granted).
    upgrade: bool,
    /// `TE: trailers` (required by gRPC; the only TE value HTTP/2 allows).
    te_trailers: bool,
}

impl Keep {
    const NONE: Keep = Keep {
        upgrade: false,
        te_trailers: false,
    };
    const UPGRADE: Keep = Keep {
        upgrade: true,
        te_trailers: false,
    };
}

/// Whether the `Connection` header lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` and `Upgrade: X`) to
/// something other than `h2c`. An h2c upgrade is never passed on: after the server's `101`,
/// the tunnel would carry HTTP/2 requests that this proxy never sees (nor adds its
/// X-Forwarded-For to), so `Upgrade: h2c` and `HTTP2-Settings` are dropped like any other
/// hop-by-hop field and the request goes on as a plain one.
pub(crate) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && upgrade_tokens(req.headers()).next().is_some()
        && connection_has(req.headers(), "upgrade")
}

/// An HTTP/1.1 request that becomes a tunnel if the server agrees: an upgrade (`101`), or a
/// CONNECT (`2xx`; refused before it gets here unless the frontend has `allow_connect`).
pub(crate) fn wants_tunnel<B>(req: &Request<B>) -> bool {
    wants_upgrade(req) || (req.method() == Method::CONNECT && req.version() == Version::HTTP_11)
}

/// Whether `status`, answering `method`, makes the connection a tunnel.
pub(crate) fn opens_tunnel(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// The protocols the `Upgrade` fields ask for, `h2c` left out.
fn upgrade_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("h2c"))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names (a client
/// sending `Connection: X-Forwarded-For` must not strip ours; Host is never stripped this
/// way), except what `keep` asks for.
/// Transfer-Encoding is left to hyper, which frames each hop itself.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep: Keep) {
    // Most messages carry none of them, or only `Connection: keep-alive`: one pass over the
    // names (standard names compare by their tag) finds which are present, so only those are
    // removed, instead of a dozen hashed removals per message.
    let mut present = 0u8;
    let mut te = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        } else if k == header::TRANSFER_ENCODING {
            te = true;
        }
    }
    if present == 0 && !te {
        return;
    }
    let upgrade: Option<HeaderValue> = if keep.upgrade {
        let tokens: Vec<&str> = upgrade_tokens(headers).collect();
        HeaderValue::from_str(&tokens.join(", ")).ok()
    } else {
        None
    };
    let te_trailers = keep.te_trailers
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // Headers the `Connection` header names (beyond the usual tokens, which are no headers or
    // hop-by-hop anyway).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !CONNECTION_TOKENS.iter().any(|c| t.eq_ignore_ascii_case(c)))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        // Host is end-to-end whatever the client says: without it the server gets a request
        // that HTTP/1.1 forbids, aimed at no virtual host.
        .filter(|h| *h != header::HOST)
        .collect();
    for h in &named {
        headers.remove(h);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if te {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if let Some(v) = upgrade.filter(|v| !v.is_empty()) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, v);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Fields that must not be taken from a trailer section (RFC 9110 6.5.1): framing, routing,
/// request modifiers and authentication, response control data, and how to read the content
/// (with every other `content-*` field too). Applied to the trailers of every body passed on,
/// request or response, HTTP/1.1 or HTTP/2: a `content-length` or `host` that arrives after
/// the body would otherwise reach a server that may merge it into the header section.
static FORBIDDEN_TRAILERS: [HeaderName; 31] = [
    header::AGE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::COOKIE,
    header::DATE,
    header::EXPECT,
    header::EXPIRES,
    header::HOST,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_RANGE,
    header::IF_UNMODIFIED_SINCE,
    HeaderName::from_static("keep-alive"),
    header::LOCATION,
    header::MAX_FORWARDS,
    header::PRAGMA,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::RANGE,
    header::RETRY_AFTER,
    header::SET_COOKIE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::VARY,
    header::WWW_AUTHENTICATE,
];

/// Whether a field may not be taken from a trailer section (see `FORBIDDEN_TRAILERS`).
pub(crate) fn forbidden_trailer(name: &HeaderName) -> bool {
    name.as_str().starts_with("content-") || FORBIDDEN_TRAILERS.contains(name)
}

/// A body frame with the forbidden fields taken out of it if it is a trailer section.
fn drop_forbidden_trailers(mut frame: hyper::body::Frame<Bytes>) -> hyper::body::Frame<Bytes> {
    if let Some(map) = frame.trailers_mut()
        && map.keys().any(forbidden_trailer)
    {
        let names: Vec<HeaderName> = map
            .keys()
            .filter(|n| forbidden_trailer(n))
            .cloned()
            .collect();
        for n in &names {
            map.remove(n);
        }
    }
    frame
}

/// gRPC trailers the response does not announce (gRPC servers never do over HTTP/2).
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// Announces the gRPC trailers on a gRPC response that does not announce its own, so that an
/// HTTP/1.1 client that sent `TE: trailers` gets them (`h1_server` sends only announced
/// fields). For HTTP/1.1 clients only: to an HTTP/2 client the announcement would be one more
/// field, which a gRPC client reads as metadata (the trailing metadata of a trailers-only
/// answer).
fn announce_grpc_trailers(headers: &mut HeaderMap) {
    if h2_conn::is_grpc(headers) && !headers.contains_key(header::TRAILER) {
        headers.insert(header::TRAILER, HeaderValue::from_static(GRPC_TRAILERS));
    }
}

/// Turns the client's request into the upstream one: hop-by-hop headers removed (before ours
/// are added; upgrade and `TE: trailers` kept when `target` calls for them), X-Forwarded-For
/// appended, X-Forwarded-Proto and X-Forwarded-Host set, a Host header for an HTTP/1.0
/// absolute-form target (HTTP/2 requests have theirs from `h2_rules::h2_to_h1`), and the URI
/// and version of the upstream protocol: origin-form and HTTP/1.1, or absolute (for `:scheme`
/// and `:authority`) and HTTP/2.
fn rewrite_request(
    req: Request<ReqBody>,
    conn: &Conn,
    backend: &str,
    target: Target,
) -> Request<UpBody> {
    let (mut parts, body) = req.into_parts();
    if parts.version == Version::HTTP_2 {
        // What our HTTP/1.x server drops while parsing (see `h1_server::aliases_framing`).
        let aliases: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|n| h1_server::aliases_framing(n))
            .cloned()
            .collect();
        for n in &aliases {
            parts.headers.remove(n);
        }
    }
    strip_hop_by_hop(
        &mut parts.headers,
        Keep {
            upgrade: target.upgrade,
            te_trailers: target.h2,
        },
    );
    // Host survives the stripping above (`Connection` cannot name it), so it is set only when
    // the request has none: an HTTP/1.0 absolute-form target (`h2_rules::h2_to_h1` gave every
    // HTTP/2 request its `:authority` as Host).
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => {
            let h = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            match &h {
                Some(h) => {
                    parts.headers.insert(header::HOST, h.clone());
                }
                // An HTTP/1.0 request without any: it goes on as HTTP/1.1, which must have a
                // Host (RFC 9112 3.2), so it gets the backend's name, as nginx sends its
                // upstream's. No X-Forwarded-Host: the client named no host.
                None => {
                    let name = HeaderValue::from_str(backend)
                        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
                    parts.headers.insert(header::HOST, name);
                }
            }
            h
        }
    };
    if let Some(h) = &host {
        parts.headers.insert(X_FORWARDED_HOST, h.clone());
    }
    let xff = X_FORWARDED_FOR;
    // NOTE: like HAProxy's `option forwardfor`, the client's own X-Forwarded-For is kept and our
    // peer address appended; only the last entry is trustworthy.
    let value = if parts.headers.contains_key(&xff) {
        let prior: Vec<&str> = parts
            .headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = conn.xff.to_str().unwrap_or("unknown");
        HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
    } else {
        Some(conn.xff.clone())
    };
    if let Some(v) = value {
        parts.headers.insert(xff, v);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.https { "https" } else { "http" }),
    );
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if target.h2 {
        // The Host header stays too: RFC 9113 8.3.1 lets an intermediary keep it.
        let scheme = if target.tls { "https" } else { "http" };
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .unwrap_or(backend);
        parts.uri = Uri::try_from(format!("{scheme}://{authority}{pq}"))
            .or_else(|_| Uri::try_from(format!("{scheme}://localhost{pq}")))
            .unwrap_or_else(|_| Uri::from_static("/"));
        parts.version = Version::HTTP_2;
    } else {
        // Origin-form already (the usual HTTP/1.1 request) stays as it is; a CONNECT keeps its
        // authority-form target (RFC 9112 3.2.3).
        if parts.method != Method::CONNECT
            && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
        {
            parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        parts.version = Version::HTTP_11;
    }
    Request::from_parts(parts, Either::Left(ClientBody::new(body)))
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

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nconnection: close\r\n\r\n408 Request Timeout: headers too slow\n";
/// The HTTP/2 connection preface (RFC 9113 3.4), all of it: its first line alone is also an
/// HTTP/1.x request line (`PRI * HTTP/2.0`), which gets an HTTP/1.x answer.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wraps a client connection (TCP or TLS) to enforce the request-header timeout itself, so a
/// client that does not finish its header section in time gets `408` and a close (hyper's own
/// header timer only closes). The clock starts at the first byte of a request and stops at the
/// blank line that ends its header section; a response write means the next byte read starts
/// a new request. HTTP/2 connections (prior-knowledge preface) are left to hyper's HTTP/2
/// limits, and so is whatever follows a `101 Switching Protocols`.
///
/// It also bounds two waits nothing else does: a new connection's first byte (hyper's own
/// header timer starts only after it) must come within `idle` (else a close, no `408`:
/// browsers open spare connections), and a response write the client does not take for
/// `idle` (it stopped reading) fails, which closes the connection and lets go of the upstream
/// one, like HAProxy's `timeout client`. A tunnel after `101` is exempt.
///
/// The timer is moved lazily: a new deadline re-arms it only when it is earlier than the
/// armed one, and a timer that fires before the deadline is re-armed then. On a busy
/// keep-alive connection it fires about once per `limit` instead of being re-registered with
/// the runtime's timer wheel for every request.
///
/// NOTE: written by hand because neither hyper nor hyper-util can answer a header timeout
/// with a status; it only scans for the blank line and never parses.
pub(crate) struct HeadTimeout<S> {
    inner: S,
    /// Every byte read from and written to the client (`switchyard_bytes_*_total`).
    received: metrics::Counter,
    sent: metrics::Counter,
    limit: Duration,
    idle: Duration,
    state: HeadState,
    /// When the current wait (`Fresh`, `Head`) times out.
    deadline: tokio::time::Instant,
    /// Armed at `deadline` or earlier (see above).
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The last 3 bytes read, to find a blank line split across reads.
    tail: [u8; 3],
    /// While `Fresh`: how many bytes of the HTTP/2 preface start have arrived.
    preface: u8,
    /// In `Head`: only empty lines (CR and LF bytes) have arrived so far.
    blank: bool,
    /// Armed while a write is blocked on the client; made on the first blocked write only
    /// (most connections never have one).
    write_sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    write_blocked: bool,
    /// After a `101`: the connection is a tunnel, no write timer.
    upgraded: bool,
    /// Bytes `sniff_h2` read, served before any new read.
    pending: Bytes,
    /// Where the HTTP/1.x server is (see `Phase`).
    phase: Arc<Phase>,
}

/// What the HTTP/1.x server tells `HeadTimeout` of the bytes it has already read: only it
/// knows where a head that arrived with an earlier read starts and ends.
#[derive(Debug, Default)]
pub(crate) struct Phase(std::sync::atomic::AtomicU8);

impl Phase {
    /// Waiting for a request; whether one has begun shows in the bytes read from now on.
    pub(crate) const WAITING: u8 = 0;
    /// Serving a request: bytes read meanwhile (a pipelined request, read ahead) start no
    /// header timer, and neither the header nor the idle timeout applies.
    pub(crate) const SERVING: u8 = 1;
    /// Waiting for the rest of a head (or after empty lines) that was read along with the
    /// request before: the header timer runs from when the server went back to reading.
    pub(crate) const HEAD_BEGUN: u8 = 2;
    /// The answer about to be written opens a tunnel (a `2xx` to CONNECT; a `101` is seen in
    /// the bytes): no more header, idle or write-stall timers.
    pub(crate) const TUNNEL: u8 = 3;

    pub(crate) fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HeadState {
    /// A new connection, no byte yet; the deadline is `idle` after the accept.
    Fresh,
    /// Between requests: no byte of the next one yet; the deadline is `idle` after the last
    /// write of a response.
    Idle,
    /// Reading a header section; the deadline is `limit` after its first byte.
    Head,
    /// Header section done; body bytes or the response follow.
    Body,
    /// HTTP/2, an upgraded connection, or the timeout fired: no more checks.
    Off,
}

impl<S> HeadTimeout<S> {
    fn new(
        inner: S,
        limit: Duration,
        idle: Duration,
        received: metrics::Counter,
        sent: metrics::Counter,
    ) -> HeadTimeout<S> {
        let deadline = tokio::time::Instant::now() + idle;
        HeadTimeout {
            inner,
            received,
            sent,
            limit,
            idle,
            state: HeadState::Fresh,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            tail: [0; 3],
            preface: 0,
            blank: false,
            write_sleep: None,
            write_blocked: false,
            upgraded: false,
            pending: Bytes::new(),
            phase: Arc::default(),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.state == HeadState::Fresh {
            // The HTTP/2 preface may arrive split over several reads: stay `Fresh` while what
            // came so far is a prefix of it, and only a mismatch makes this an HTTP/1 head.
            let k = usize::from(self.preface);
            let want = &H2_PREFACE[k..];
            let n = want.len().min(bytes.len());
            if bytes[..n] == want[..n] {
                if k + n == H2_PREFACE.len() {
                    self.state = HeadState::Off;
                } else {
                    self.preface = (k + n) as u8;
                }
                return;
            }
        }
        let phase = self.phase.get();
        if matches!(self.state, HeadState::Idle | HeadState::Fresh) && phase != Phase::SERVING {
            // Empty lines start the header clock too: a client that sends only those and then
            // nothing gets its `408` at `limit`, like any other unfinished head.
            self.state = HeadState::Head;
            self.tail = [0; 3];
            self.blank = phase == Phase::WAITING;
            self.set_deadline(self.limit);
        }
        if self.state == HeadState::Head {
            let mut bytes = bytes;
            if self.blank {
                // RFC 9112 2.2: empty lines before the request-line are skipped (httparse does
                // so too); their CRLFs must not be taken for the blank line that ends a head.
                let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n');
                let Some(start) = start else {
                    return;
                };
                self.blank = false;
                bytes = &bytes[start..];
            }
            if ends_head(&self.tail, bytes) {
                self.state = HeadState::Body;
            } else {
                self.tail = last3(&self.tail, bytes);
            }
        }
    }

    /// A write of a final response means the next byte read starts a new request; an interim
    /// `1xx` (e.g. `100 Continue` before a slow upload) does not, and after a `101` the
    /// connection carries another protocol.
    fn wrote(&mut self, first: &[u8]) {
        if self.state == HeadState::Off {
            return;
        }
        if first.starts_with(b"HTTP/1.1 101") || self.phase.get() == Phase::TUNNEL {
            self.state = HeadState::Off;
            self.upgraded = true;
        } else if !first.starts_with(b"HTTP/1.1 1") {
            // Set on every write, so a long response does not use up the wait that follows it.
            self.state = HeadState::Idle;
            self.set_deadline(self.idle);
        }
    }

    /// The current wait times out `after` from now. The timer is re-armed only if that is
    /// earlier than where it is armed.
    fn set_deadline(&mut self, after: Duration) {
        self.deadline = tokio::time::Instant::now() + after;
        if self.deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    /// Whether the current wait has timed out; if not, the timer is armed and registered to
    /// wake the task (re-armed at the deadline if it fired early).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
        false
    }

    /// After a write attempt: `Pending` arms the stall timer (once per stall) and turns into
    /// an error when it fires; anything else disarms it.
    fn write_outcome<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.write_blocked = false;
            return res;
        }
        if self.upgraded {
            return res;
        }
        if !self.write_blocked {
            self.write_blocked = true;
            let deadline = tokio::time::Instant::now() + self.idle;
            match &mut self.write_sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.write_sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if let Some(sleep) = &mut self.write_sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            debug!("client stopped reading the response; closing");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            )));
        }
        Poll::Pending
    }
}

/// Whether `tail` (the previous 3 bytes) followed by `bytes` contains the blank line that
/// ends a header section: CRLFCRLF, or a bare LF where a CRLF could be (hyper, through
/// httparse, accepts a bare LF as a line ending).
fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    let k = bytes.len().min(3);
    let mut seam = [0u8; 6];
    seam[..3].copy_from_slice(tail);
    seam[3..3 + k].copy_from_slice(&bytes[..k]);
    has_blank_line(&seam[..3 + k]) || has_blank_line(bytes)
}

/// Whether `w` holds LF LF or LF CR LF (which CRLFCRLF contains). `memchr` jumps from line
/// end to line end (a byte-by-byte scan cost about 500 instructions a request).
fn has_blank_line(w: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', w).any(|i| match w.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => w.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// The last 3 bytes of `tail` followed by `bytes`.
fn last3(tail: &[u8; 3], bytes: &[u8]) -> [u8; 3] {
    let mut out = *tail;
    for &b in bytes.iter().rev().take(3).rev() {
        out = [out[1], out[2], b];
    }
    out
}

/// Room for the first read of a connection: a whole request head, for nearly every client.
const SNIFF_BUF: usize = 4096;

impl HeadTimeout<ClientIo> {
    /// Whether the client connection is TLS (else plain TCP).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.inner, ClientIo::Right(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> HeadTimeout<S> {
    /// The bytes `sniff_h2` read, to be parsed without reading them again.
    pub(crate) fn take_sniffed(&mut self) -> BytesMut {
        std::mem::take(&mut self.pending)
            .try_into_mut()
            .unwrap_or_else(|b| BytesMut::from(&b[..]))
    }

    /// Where the HTTP/1.x server tells this wrapper it is (see `Phase`).
    pub(crate) fn phase(&self) -> Arc<Phase> {
        Arc::clone(&self.phase)
    }

    /// Puts bytes back to be read before anything new (what a client sent after its upgrade
    /// request, for the tunnel).
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        self.pending = bytes;
    }

    /// Reads the connection's first bytes until they tell HTTP/2 (its preface) from HTTP/1
    /// (anything else, or the end of the stream), and keeps them to be read again. The first
    /// read nearly always holds the whole request head, so this costs no extra read.
    /// (Not hyper-util's `auto` server: it reads 24 bytes first, which costs every connection a
    /// second read and a reallocation of the buffer it hands on.)
    async fn sniff_h2(&mut self) -> io::Result<bool> {
        let mut buf = BytesMut::with_capacity(SNIFF_BUF);
        loop {
            let n = tokio::io::AsyncReadExt::read_buf(self, &mut buf).await?;
            let k = buf.len().min(H2_PREFACE.len());
            let h2 = buf[..k] == H2_PREFACE[..k];
            if n == 0 || !h2 || k == H2_PREFACE.len() {
                self.pending = buf.freeze();
                return Ok(h2 && n != 0);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            // Already seen and counted by `saw` when `sniff_h2` read them.
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            if n == self.pending.len() {
                self.pending = Bytes::new();
            } else {
                self.pending.advance(n);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let this = &mut *self;
                let read = &buf.filled()[before..];
                this.received.increment(read.len() as u64);
                this.saw(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let phase = self.phase.get();
                if phase == Phase::HEAD_BEGUN
                    && matches!(self.state, HeadState::Fresh | HeadState::Idle)
                {
                    // A head that came with the previous request's bytes: its clock starts now.
                    self.state = HeadState::Head;
                    self.tail = [0; 3];
                    self.blank = false;
                    let limit = self.limit;
                    self.set_deadline(limit);
                }
                if matches!(self.state, HeadState::Fresh | HeadState::Idle)
                    && phase != Phase::SERVING
                    && self.timed_out(cx)
                {
                    self.state = HeadState::Off;
                    debug!("no request within the idle timeout; closing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the idle timeout",
                    )));
                }
                // (A head whose end the scan missed, having begun in the server's buffer, is
                // never timed out while its request is served.)
                if self.state == HeadState::Head && phase != Phase::SERVING && self.timed_out(cx) {
                    self.state = HeadState::Off;
                    // Best effort, never waiting: the send buffer is empty at this point (the
                    // client is still sending its head), so the 130 bytes fit; over TLS they
                    // are sealed into one record and flushed.
                    let inner = Pin::new(&mut self.inner);
                    if let Poll::Ready(Ok(_)) = inner.poll_write(cx, REQUEST_TIMEOUT) {
                        let _ = Pin::new(&mut self.inner).poll_flush(cx);
                    }
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        let n = ready!(self.write_outcome(cx, res))?;
        if n > 0 {
            self.sent.increment(n as u64);
            self.wrote(buf);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let n = ready!(self.write_outcome(cx, res))?;
        if n > 0 {
            self.sent.increment(n as u64);
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
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.write_outcome(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `io` wrapped with a 1 s header timeout and a 5 s idle timeout.
    fn timed<S>(io: S) -> HeadTimeout<S> {
        HeadTimeout::new(
            io,
            Duration::from_secs(1),
            Duration::from_secs(5),
            metrics::Counter::noop(),
            metrics::Counter::noop(),
        )
    }

    #[test]
    fn the_408_is_framed_by_its_length() {
        let end = REQUEST_TIMEOUT
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        let head = std::str::from_utf8(&REQUEST_TIMEOUT[..end]).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, REQUEST_TIMEOUT.len() - end);
    }

    #[tokio::test]
    async fn blank_lines_before_a_request_do_not_end_its_head() {
        for first in [&b"\r\n\r\n"[..], b"\n\n", b"\r\n\r\nGET / HTTP/1.1\r\n"] {
            let (ours, _theirs) = tokio::io::duplex(64);
            let mut h = timed(ours);
            h.saw(first);
            assert_eq!(h.state, HeadState::Head, "{first:?}");
            h.saw(b"\r\n");
            let state = h.state;
            h.saw(b"Host: x\r\n\r\n");
            // After blank lines alone, a CRLF is one more blank line; after a request-line, it
            // is the end of a head without fields. Either way the head ends with the fields.
            assert!(state == HeadState::Head || first.len() > 4, "{first:?}");
            assert_eq!(h.state, HeadState::Body, "{first:?}");
        }
    }

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
        // Bare LF line endings, which hyper accepts, end a head too.
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\n\r\n"));
        let t = last3(&[0; 3], b"GET / HTTP/1.1\nHost: x\n");
        assert!(ends_head(&t, b"\n"));
        let t = last3(&[0; 3], b"GET / HTTP/1.1\nHost: x\n\r");
        assert!(ends_head(&t, b"\n"));
        assert!(!ends_head(&[0; 3], b"GET / HTTP/1.1\nHost: x\n"));
        assert!(!ends_head(&[0; 3], b"GET / HTTP/1.1\r\nHost: x\r\n\r"));
    }

    #[test]
    fn connection_cannot_strip_host() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, x-secret"),
        );
        h.insert(header::HOST, HeaderValue::from_static("x"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h, Keep::NONE);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host"]);
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
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h, Keep::NONE);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn upgrade_and_te_trailers_survive_when_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("sec-websocket-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(
            &mut h,
            Keep {
                upgrade: true,
                te_trailers: true,
            },
        );
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.get("x-secret").is_none());
        assert!(h.get("sec-websocket-key").is_some());
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let req = |conn: &str, up: Option<&str>, v: Version| {
            let mut b = Request::builder().version(v).header("connection", conn);
            if let Some(u) = up {
                b = b.header("upgrade", u);
            }
            b.body(()).unwrap()
        };
        assert!(wants_upgrade(&req(
            "keep-alive, Upgrade",
            Some("websocket"),
            Version::HTTP_11
        )));
        assert!(!wants_upgrade(&req(
            "keep-alive",
            Some("websocket"),
            Version::HTTP_11
        )));
        assert!(!wants_upgrade(&req("upgrade", None, Version::HTTP_11)));
        assert!(!wants_upgrade(&req(
            "upgrade",
            Some("websocket"),
            Version::HTTP_10
        )));
    }

    #[test]
    fn forwarded_for_matches_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "192.168.10.99",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(ip).to_str().unwrap(), ip.to_string());
        }
        let mapped: std::net::IpAddr = "::ffff:1.20.3.40".parse().unwrap();
        assert_eq!(forwarded_for(mapped).to_str().unwrap(), "1.20.3.40");
    }

    #[tokio::test]
    async fn sniffing_tells_h2_by_its_preface_and_keeps_every_byte() {
        let cases: [(&[&[u8]], bool); 4] = [
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], false),
            (&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"], true),
            (&[b"P", b"OST / HTTP/1.1\r\n"], false),
            (&[b"PRI"], false),
        ];
        for (chunks, want_h2) in cases {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut h = timed(server);
            let write = async {
                for c in chunks {
                    client.write_all(c).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client.shutdown().await.unwrap();
            };
            let (h2, ()) = tokio::join!(h.sniff_h2(), write);
            assert_eq!(h2.unwrap(), want_h2, "{chunks:?}");
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut h, &mut all)
                .await
                .unwrap();
            assert_eq!(all, chunks.concat(), "every byte is read again");
        }
    }

    #[tokio::test]
    async fn head_timeout_stands_down_after_101() {
        let mut h = timed(());
        h.saw(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.state, HeadState::Body);
        h.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(h.state, HeadState::Off);
        h.saw(b"\x81\x05hello");
        assert_eq!(h.state, HeadState::Off);
        assert!(h.upgraded);
    }

    #[test]
    fn ambiguous_or_hostless_requests_are_refused() {
        let req = |v: Version, target: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().version(v).uri(target);
            for (n, val) in headers {
                b = b.header(*n, *val);
            }
            b.body(Full::new(Bytes::from_static(b"abc"))).unwrap()
        };
        let status =
            |r: &Request<Full<Bytes>>| refuse(r, 65536, false).map(|resp| resp.status().as_u16());
        let v11 = Version::HTTP_11;
        assert_eq!(status(&req(v11, "/", &[("host", "x")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "x:8080")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "[::1]:8080")])), None);
        assert_eq!(status(&req(v11, "/", &[("host", "")])), None);
        assert_eq!(status(&req(v11, "/", &[])), Some(400));
        assert_eq!(status(&req(Version::HTTP_10, "/", &[])), None);
        assert_eq!(
            status(&req(v11, "/", &[("host", "a"), ("host", "b")])),
            Some(400)
        );
        for bad in [
            "a, b", "a,b", "u@a", "a b", "a:b", "a:1:2", "a:99999", ":80", "[::1", "a/b",
        ] {
            assert_eq!(status(&req(v11, "/", &[("host", bad)])), Some(400), "{bad}");
        }
        assert_eq!(status(&req(v11, "http://a/", &[("host", "b")])), Some(400));
        assert_eq!(status(&req(v11, "http://a/", &[("host", "")])), Some(400));
        assert_eq!(status(&req(v11, "http://a/", &[])), Some(400));
        assert_eq!(status(&req(v11, "http://A:80/", &[("host", "a")])), None);
        assert_eq!(status(&req(v11, "http://a/", &[("host", "a:")])), None);
        assert_eq!(status(&req(v11, "https://a/", &[("host", "a:443")])), None);
        assert_eq!(
            status(&req(v11, "http://[::1]:81/", &[("host", "[::1]:81")])),
            None
        );
        assert_eq!(
            status(&req(v11, "http://a:8080/", &[("host", "a")])),
            Some(400)
        );
        assert_eq!(status(&req(Version::HTTP_10, "http://a/", &[])), None);
        // HTTP/2's Host rules are `h2_rules::h2_to_h1`'s, not `refuse`'s.
        assert_eq!(status(&req(Version::HTTP_2, "http://a/", &[])), None);
        let te = |v: &str| status(&req(v11, "/", &[("host", "x"), ("transfer-encoding", v)]));
        assert_eq!(te("chunked"), None);
        assert_eq!(te("Chunked"), None);
        assert_eq!(te("gzip, chunked"), Some(501));
        assert_eq!(te("chunked, chunked"), Some(400));
        let long = format!("/{}", "u".repeat(16 * 1024));
        assert_eq!(status(&req(v11, &long, &[("host", "x")])), Some(414));
        assert_eq!(
            status(&req(v11, &long[..16 * 1024], &[("host", "x")])),
            None
        );
        // Every refusal closes the connection.
        let resp = refuse(&req(v11, "/", &[]), 65536, false).unwrap();
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_speak_within_idle() {
        use tokio::io::AsyncReadExt;
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut h = timed(ours);
        let started = tokio::time::Instant::now();
        let err = h.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_idle() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut h = timed(ours);
        h.saw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let started = tokio::time::Instant::now();
        let err = h.write_all(&[b'z'; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_not_cut_for_a_slow_reader() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut h = timed(ours);
        h.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        let write = h.write_all(&[b'z'; 1024]);
        let slow_reader = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let mut buf = vec![0; 1024];
            tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut buf).await
        };
        let (w, r) = tokio::join!(write, slow_reader);
        w.unwrap();
        r.unwrap();
    }

    #[test]
    fn grpc_responses_announce_their_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        announce_grpc_trailers(&mut h);
        assert_eq!(h[header::TRAILER], GRPC_TRAILERS);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        announce_grpc_trailers(&mut h);
        assert!(h.get(header::TRAILER).is_none());
    }
}
