//! The L7 data plane: one `mode = "http"` frontend's client connections (HTTP/1.1, and HTTP/2
//! by prior knowledge or TLS ALPN), each request forwarded to a server picked from the
//! published snapshot over HTTP/1.1 (a pooled keep-alive connection) or HTTP/2 (one shared
//! multiplexed connection per server), bodies and trailers streamed both ways.
//!
//! This file owns the frontend and the connection: accepting, the PROXY header when
//! `accept_proxy` is on (its source is the client address for X-Forwarded-For), TLS termination
//! when the frontend has `[frontend.tls]`, then our HTTP/1.x server (`h1::server`) or hyper's
//! HTTP/2 one (with `h2`'s timers). The rest, by file:
//!
//! | file | owns |
//! |---|---|
//! | `stream.rs` | the client socket as the servers read it: first-byte and write-stall bounds, byte counts, HTTP/2 sniffing, the connection timer |
//! | `h1/` | HTTP/1.x: the codec both sides share (`mod.rs`), our server towards clients, our client towards servers |
//! | `h2.rs`, `h2_rules.rs` | HTTP/2 client connections' timers and `Date`; the rules an HTTP/2 request must meet and its translation to HTTP/1.1 fields |
//! | `hash_key.rs` | the value a request is hashed by under `balance = "hash"` (source, uri, header, cookie) |
//! | `answers.rs` | requests refused before forwarding (400, 405, 414, 501) and our own error bodies |
//! | `guard.rs` | requests refused by their route's policy: `allow`/`deny` (403) and `rate_limit` (429 with `Retry-After`), counted and logged |
//! | `forward.rs` | one request: pick, retry, map failures (502, 503, 504), metrics, stats and access log |
//! | `send.rs` | one attempt on one server: HTTP/1.1 (our client, pooled), HTTP/2 (shared connection), or an upgrade through hyper |
//! | `failure.rs` | why an attempt failed (its cause), the answer once every server failed, retries and refusals counted by cause and reason |
//! | `headers.rs` | hop-by-hop stripping, X-Forwarded-*, X-Request-Id, upgrades and tunnels, trailer rules, the upstream request's form |
//! | `body.rs` | request and response bodies as read from either side |
//! | `guarded.rs` | what the client gets back: a server's body with its in-flight count, access log record and failure blame, or our own |
//! | `pool.rs` | the per-server upstream connection pool |
//! | `tunnel.rs` | the byte tunnel after a `101` or a `2xx` to CONNECT |
//!
//! Dialing servers is `crate::upstream`'s; server selection `balancer`'s, health `health`'s,
//! TLS configs `tls`'s, the PROXY header format `proxy_protocol`'s.

pub mod answers;
pub mod body;
pub(crate) mod body_limit;
pub mod dial;
pub mod failure;
pub mod forward;
pub(crate) mod guard;
pub mod guarded;
pub mod h1;
pub mod h2;
pub mod h2_rules;
pub(crate) mod hash_key;
pub mod headers;
pub mod policy;
pub mod pool;
pub(crate) mod send;
pub(crate) mod sticky;
pub mod stream;
pub mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::access_log::AccessLog;
use crate::config::Frontend;
use crate::http::h1::server as h1_server;
use crate::http::h2 as h2_conn;
use crate::metrics::{self as m, HandleCache};
use crate::signal::{Signal, Watch};
use crate::snapshot::{ConnPool, Server, Snapshot};
use crate::tls::{TlsAcceptor, TlsError};

pub(crate) use crate::upstream::*;
pub(crate) use answers::*;
pub(crate) use body::*;
pub(crate) use dial::*;
pub(crate) use failure::*;
pub(crate) use forward::*;
pub(crate) use guarded::*;
pub(crate) use headers::*;
pub(crate) use pool::*;
pub(crate) use send::*;
pub(crate) use stream::*;
pub(crate) use tunnel::*;

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
    /// Its counters for the admin API, kept across reloads (`stats::Registry`).
    pub(crate) stats: Arc<crate::stats::FrontendStats>,
    /// This frontend's metric handles, looked up once rather than per connection or request.
    connections: metrics::Gauge,
    received: metrics::Counter,
    sent: metrics::Counter,
    /// `switchyard_request_duration_seconds` of this frontend and its backend (which its
    /// config fixes: a reload that changes it starts a new `HttpFrontend`).
    duration: metrics::Histogram,
    /// `switchyard_requests_total` answered without a server, by code (server-labelled ones
    /// live on the server).
    no_server: Arc<HandleCache<(String, u16), metrics::Counter>>,
    /// `switchyard_request_duration_seconds` of the other backends routes pick.
    durations: Arc<HandleCache<Arc<str>, metrics::Histogram>>,
    /// `switchyard_requests_refused_total` of this frontend, by reason.
    refused: Arc<HandleCache<crate::stats::Refusal, metrics::Counter>>,
}

impl HttpFrontend {
    /// Counts a request its policy refused: the stats page's count and
    /// `switchyard_requests_refused_total` (its handle looked up once per reason).
    pub(crate) fn count_refused(&self, why: crate::stats::Refusal) {
        self.stats.refused_by(why);
        self.refused.with(
            |r| *r == why,
            || {
                let c = metrics::counter!(m::REQUESTS_REFUSED,
                    "frontend" => self.frontend.name.clone(), "reason" => why.as_str());
                (why, c)
            },
            |c| c.increment(1),
        );
    }

    /// Builds the TLS acceptor from `frontend.tls`, if any.
    pub fn new(
        frontend: Arc<Frontend>,
        shared: Arc<ArcSwap<Snapshot>>,
        log: Option<AccessLog>,
        stats: Arc<crate::stats::FrontendStats>,
    ) -> Result<HttpFrontend, TlsError> {
        let tls = TlsAcceptor::for_frontend(&frontend)?;
        let label = || frontend.name.clone();
        Ok(HttpFrontend {
            connections: metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => label()),
            received: metrics::counter!(m::BYTES_RECEIVED, "frontend" => label()),
            sent: metrics::counter!(m::BYTES_SENT, "frontend" => label()),
            name: Arc::from(frontend.name.as_str()),
            stats,
            duration: metrics::histogram!(m::REQUEST_DURATION,
                "frontend" => label(), "backend" => frontend.backend.clone().unwrap_or_default()),
            no_server: Arc::default(),
            durations: Arc::default(),
            refused: Arc::default(),
            frontend,
            shared,
            tls,
            log,
        })
    }
}

/// One client connection: who is on the other end, and where its tunnels are tracked.
pub(crate) struct Conn {
    pub(crate) fe: HttpFrontend,
    /// The client: the peer, or the PROXY header's source.
    pub(crate) client: SocketAddr,
    /// Where the client connected: our socket, or the PROXY header's destination.
    pub(crate) local: SocketAddr,
    pub(crate) https: bool,
    pub(crate) tracker: TaskTracker,
    /// The client's IP as an X-Forwarded-For entry, formatted once per connection.
    pub(crate) xff: HeaderValue,
    /// HTTP/2 only: streams the client reset before their answer.
    pub(crate) resets: Option<Resets>,
    /// The TLS session, for the access log (`None`: plain TCP, or the log is off).
    pub(crate) tls: Option<crate::access_log::TlsInfo>,
}

/// Streams of one HTTP/2 connection, and how many of them the client reset before their
/// answer. Each such stream cost an upstream request, and h2's own rapid-reset defence only
/// counts streams reset before they were accepted. So, like Envoy's premature-reset check, a
/// connection where more than half of at least `RESETS_MIN` streams were reset early is closed.
pub(crate) struct Resets {
    streams: AtomicU32,
    early: AtomicU32,
    close: Signal,
}

/// Early resets a connection may have before its ratio is judged: browsers cancel streams too
/// (a navigation away, an aborted fetch), though rarely a hundred on one connection.
pub(crate) const RESETS_MIN: u32 = 100;

impl Resets {
    pub(crate) fn new() -> Resets {
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
pub(crate) struct StreamGuard<'a> {
    resets: Option<&'a Resets>,
    answered: bool,
}

impl<'a> StreamGuard<'a> {
    pub(crate) fn new(resets: Option<&'a Resets>) -> StreamGuard<'a> {
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
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    fe: HttpFrontend,
    limit: Arc<crate::listener::ConnLimit>,
    thread: usize,
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
    info!(frontend = %fe.frontend.name, bind = %fe.frontend.bind, tls = fe.tls.is_some(), "listening (http)");
    let frontend = Arc::clone(&fe.frontend);
    crate::listener::accept_loop(
        &listener,
        &frontend,
        &limit,
        thread,
        &stop_accept,
        &tracker.clone(),
        |stream, peer, permit| {
            let fe = fe.clone();
            let builder = Arc::clone(&builder);
            let shutdown = shutdown.clone();
            let tunnels = tracker.clone();
            Box::pin(async move {
                let _permit = permit;
                let gauge = fe.connections.clone();
                gauge.increment(1.0);
                accept(fe, stream, peer, &builder, &shutdown, tunnels).await;
                gauge.decrement(1.0);
            })
        },
    )
    .await;
}

/// hyper's server for one frontend's HTTP/2 connections (HTTP/1.x is `h1::server`'s).
pub(crate) type H2Server = hyper::server::conn::http2::Builder<TokioExecutor>;

pub(crate) use crate::listener::{Accepted, ClientIo};

/// A client connection as the HTTP servers read it: with its timeouts and byte counts.
pub(crate) type Stream = ClientStream<ClientIo>;

/// The access log line of a request head refused before it became a request (no method or
/// path to show): its status and `bad_request`, or `client_timeout` for a `408`. Its time is
/// the refusal's.
fn log_refusal(conn: &Conn, refused: &h1::request::Refused) {
    let h1::request::Refused(status, why) = *refused;
    debug!(client = %conn.client, status = status.as_u16(), why, "request head refused");
    let fe = &conn.fe;
    fe.stats.request();
    fe.stats.error();
    count_client_error(&fe.frontend.name, refusal_reason(status.as_u16(), true));
    let Some(log) = &fe.log else { return };
    let mut p = crate::access_log::Pending::new(log, conn.client, Arc::clone(&fe.name));
    let record = p.record();
    record.http = Some(crate::access_log::HttpRequest {
        status: status.as_u16(),
        ..Default::default()
    });
    record.tls = conn.tls.clone();
    record.connections = Some(fe.stats.connections());
    record.termination = if status == http::StatusCode::REQUEST_TIMEOUT {
        crate::access_log::Termination::ClientTimeout
    } else {
        crate::access_log::Termination::BadRequest
    };
}

/// One client connection: PROXY header and TLS (dropped if `shutdown` fires meanwhile), then
/// HTTP until the client ends it or `shutdown` closes it gracefully.
pub(crate) async fn accept(
    fe: HttpFrontend,
    stream: TcpStream,
    peer: SocketAddr,
    builder: &H2Server,
    shutdown: &Signal,
    tracker: TaskTracker,
) {
    // One watch for the connection's whole life: each new one allocates and registers.
    let mut stop = shutdown.watch();
    let ready = {
        let setting_up = setup(&fe, stream, peer);
        tokio::pin!(setting_up);
        tokio::select! {
            r = &mut setting_up => r,
            // After a handoff the client is still answered once (with a close): it connected
            // before the other process took over and may be sending its request.
            _ = &mut stop => if stop.is_handoff() { setting_up.await } else { return },
        }
    };
    let Some(Accepted { io, client, local }) = ready else {
        return;
    };
    // ALPN settles the protocol of a TLS connection; without it, the first bytes do.
    let alpn_h2 = match &io {
        ClientIo::Left(_) => None,
        ClientIo::Right(tls) => tls.get_ref().1.alpn_protocol().map(|p| p == b"h2"),
    };
    let xff = forwarded_for(client.ip());
    let tls = match (&io, &fe.log) {
        (ClientIo::Right(s), Some(_)) => Some(crate::access_log::TlsInfo::of(s.get_ref().1)),
        _ => None,
    };
    let conn = Conn {
        tls,
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
pub(crate) fn forwarded_for(ip: std::net::IpAddr) -> HeaderValue {
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

/// The PROXY header if `accept_proxy`, then TLS if the frontend has it (`listener::handshake`);
/// `None` when the client was refused (already closed and logged).
pub(crate) async fn setup(
    fe: &HttpFrontend,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Accepted> {
    let f = &fe.frontend;
    // The address the client connected to only matters for a PROXY header we send, so the
    // `getsockname` is skipped (one syscall per connection) when the backend sends none.
    let sends_proxy = fe.shared.load().sends_proxy(&f.name);
    crate::listener::handshake(f, fe.tls.as_deref(), stream, peer, sends_proxy)
        .await
        .ok()
}

/// Serves one client connection: our HTTP/1.x server, or hyper's HTTP/2 one, as ALPN chose
/// (`alpn_h2`), else as its first bytes show.
pub(crate) async fn serve_conn(
    io: ClientIo,
    alpn_h2: Option<bool>,
    mut conn: Conn,
    builder: &H2Server,
    stop: &mut Watch,
) {
    let client = conn.client;
    let f = &conn.fe.frontend;
    let mut io = ClientStream::new(
        io,
        f.idle_timeout,
        conn.fe.received.clone(),
        conn.fe.sent.clone(),
        Arc::clone(&conn.fe.stats),
    );
    let h2 = match alpn_h2 {
        Some(h2) => h2,
        None => {
            let sniffing = io.sniff_h2();
            tokio::pin!(sniffing);
            let sniffed = tokio::select! {
                r = &mut sniffing => r,
                // After a handoff, as in `accept`: the request is still read and answered.
                _ = &mut *stop => if stop.is_handoff() { sniffing.await } else { return },
            };
            match sniffed {
                Ok(h2) => h2,
                Err(e) => {
                    debug!(client = %client, error = %e, "client connection ended before a request");
                    return;
                }
            }
        }
    };
    if !h2 {
        let first = io.take_sniffed();
        let limits = h1_server::Limits {
            head: f.max_header_size,
            header_timeout: f.header_timeout,
            idle_timeout: f.idle_timeout,
        };
        let conn = &conn;
        let svc = service_fn(move |req: http::Request<h1_server::Body>| {
            handle(conn, req.map(ReqBody::H1))
        });
        if let Some(refused) = h1_server::serve(io, first, limits, stop, &svc).await {
            log_refusal(conn, &refused);
        }
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
            let Ok(mut resp) = handle(&conn, req.map(ReqBody::Hyper)).await;
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

// The pool lives on each server of the snapshot (`snapshot::ConnPool`); the glue is here, so
// that `pool.rs` and `h1/client.rs` do not depend on the snapshot.
impl ConnPool for Pool {
    fn clear(&self) {
        Pool::clear(self);
    }
}

/// Our HTTP/1.1 client returns a connection to the pool of the server it came from.
impl h1::client::Checkin for Server {
    fn checkin(&self, conn: h1::client::Conn) {
        self.pool::<Pool>().checkin(self.is_draining(), conn);
    }
}

/// Closes, on every server of `snap`, the pooled connections idle for longer than their
/// backend's `pool_idle_timeout` (run periodically: a server that gets no requests never
/// reaches `checkout`, which does it otherwise).
pub fn close_idle_connections(snap: &Snapshot) {
    let now = Instant::now();
    for set in &snap.backends {
        for server in &set.servers {
            server
                .pool::<Pool>()
                .close_idle(now, set.config.pool_idle_timeout);
        }
    }
}
