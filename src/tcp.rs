//! The L4 data plane: one `mode = "tcp"` frontend's client connections, each relayed byte for
//! byte to one server picked from the published snapshot per connection.
//!
//! Per connection, in order: the PROXY header and TLS termination (`listener::handshake`),
//! then a server: `upstream::connect` (TCP, the PROXY header when the backend has
//! `send_proxy`, TLS when it has `[backend.tls]`, all within `connect_timeout`); on failure
//! `health` hears of it and a different server is tried, up to `retries` times. The relay then
//! runs both ways until both sides are done, no byte moves for `idle_timeout`, or the server's
//! drain times out (its kill token). The connection is counted in flight on its server for its
//! whole life, which is how a drain waits for it. Shutdown stops the accept loop; established
//! relays run on, and the caller bounds them by the grace period. This module does not accept
//! (`listener`), pick servers (`balancer`), judge health (`health`) or dial (`upstream`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::access_log::{AccessLog, Pending, Termination};
use crate::balancer::BackendRuntime;
use crate::balancer::queue::NoSlot;
use crate::config::{Backend, Frontend, ProxyVersion};
use crate::metrics as m;
use crate::metrics::{BYTES_RECEIVED, BYTES_SENT, TCP_CONNECTIONS, TCP_REJECTED};
use crate::proxy_protocol;
use crate::signal::Signal;
use crate::snapshot::{ActiveGuard, Server, Snapshot};
use crate::tls::{TlsAcceptor, TlsError};

/// Everything one TCP frontend's connections need.
#[derive(Clone)]
pub struct TcpFrontend {
    pub frontend: Arc<Frontend>,
    pub shared: Arc<ArcSwap<Snapshot>>,
    pub tls: Option<Arc<TlsAcceptor>>,
    /// Present: one access log line per connection.
    pub log: Option<AccessLog>,
    name: Arc<str>,
    /// Its counters for the admin API, kept across reloads (`stats::Registry`).
    stats: Arc<crate::stats::FrontendStats>,
}

impl TcpFrontend {
    /// Builds the TLS acceptor from `frontend.tls`, if any.
    pub fn new(
        frontend: Arc<Frontend>,
        shared: Arc<ArcSwap<Snapshot>>,
        log: Option<AccessLog>,
        stats: Arc<crate::stats::FrontendStats>,
    ) -> Result<TcpFrontend, TlsError> {
        let tls = TlsAcceptor::for_frontend(&frontend)?;
        Ok(TcpFrontend {
            name: Arc::from(frontend.name.as_str()),
            stats,
            frontend,
            shared,
            tls,
            log,
        })
    }
}

use crate::listener::{Accepted, ClientIo, Refusal, linger_close};
use crate::upstream::UpstreamIo;

/// Accepts connections until `stop_accept` fires; each connection runs on `tracker`. A
/// connection still setting up (PROXY header, TLS handshake, connecting) is dropped when
/// `shutdown` fires, unless as a handoff; an established relay runs until it ends on its own.
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    fe: TcpFrontend,
    limit: Arc<crate::listener::ConnLimit>,
    thread: usize,
    stop_accept: CancellationToken,
    shutdown: Signal,
    tracker: TaskTracker,
) {
    let frontend = Arc::clone(&fe.frontend);
    info!(frontend = %frontend.name, bind = %frontend.bind, tls = fe.tls.is_some(), "listening (tcp)");
    crate::listener::accept_loop(
        &listener,
        &frontend,
        &limit,
        thread,
        &stop_accept,
        &tracker,
        |stream, peer, permit| {
            let fe = fe.clone();
            let shutdown = shutdown.clone();
            Box::pin(async move {
                let _permit = permit;
                let _open = OpenConnection::new(&fe.frontend.name);
                fe.stats.request();
                let mut log = fe.log.as_ref().map(|l| {
                    let mut p = Pending::new(l, peer, Arc::clone(&fe.name));
                    p.record().connections = Some(fe.stats.connections());
                    p
                });
                let ready = {
                    let mut stop = shutdown.watch();
                    let setting_up = setup(&fe, stream, peer, &mut log);
                    tokio::pin!(setting_up);
                    tokio::select! {
                        r = &mut setting_up => Some(r),
                        // After a handoff the relay still starts: the client connected
                        // before the other process took over.
                        _ = &mut stop => if shutdown.is_handoff() {
                            Some(setting_up.await)
                        } else {
                            None
                        },
                    }
                };
                let Some(ready) = ready else {
                    debug!(client = %peer, "shutdown before the relay started; closing");
                    if let Some(p) = log {
                        p.discard();
                    }
                    return;
                };
                if let Some((client, client_addr, upstream)) = ready {
                    relay(&fe, client, client_addr, upstream, log).await;
                }
            })
        },
    )
    .await;
}

/// `switchyard_connections_active{frontend}`, up while the value lives.
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn new(frontend: &str) -> OpenConnection {
        let g = metrics::gauge!(m::CONNECTIONS_ACTIVE, "frontend" => frontend.to_string());
        g.increment(1.0);
        OpenConnection(g)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn reject(frontend: &Frontend, reason: &'static str) {
    metrics::counter!(TCP_REJECTED, "frontend" => frontend.name.clone(), "reason" => reason)
        .increment(1);
}

/// Everything before the relay: PROXY header, TLS, server. `None` when the client was refused
/// Everything before the relay: PROXY header and TLS (`listener::handshake`), then a server.
/// `None` when the client was refused (already closed, logged and counted).
async fn setup(
    fe: &TcpFrontend,
    stream: TcpStream,
    peer: SocketAddr,
    log: &mut Option<Pending>,
) -> Option<(ClientIo, SocketAddr, Upstream)> {
    let f = &*fe.frontend;
    let accepted = crate::listener::handshake(f, fe.tls.as_deref(), stream, peer, true).await;
    let Accepted {
        io: client,
        client: client_addr,
        local: dst,
    } = match accepted {
        Ok(a) => a,
        Err(refusal) => {
            reject(
                f,
                match refusal {
                    Refusal::ProxyHeader => "proxy_header",
                    Refusal::Tls => "tls_handshake",
                },
            );
            if let Some(p) = log.take() {
                p.discard();
            }
            return None;
        }
    };
    if let Some(p) = log {
        let r = p.record();
        r.client = client_addr;
        if let ClientIo::Right(tls) = &client {
            r.tls = Some(crate::access_log::TlsInfo::of(tls.get_ref().1));
        }
    }
    let mut client = client;
    // TLS passthrough: with SNI routes, the ClientHello picks the backend, and its bytes go to
    // the server first.
    let has_sni = fe
        .shared
        .load()
        .table(&f.name)
        .is_some_and(|t| t.has_sni_routes());
    let hello = if has_sni {
        match crate::sni::peek_sni(&mut client, f, client_addr).await {
            Ok(hello) => Some(hello),
            Err(_) => {
                // Counted in `switchyard_sni_errors_total` by `peek_sni`.
                reject(f, "client_hello");
                if let Some(p) = log.take() {
                    p.discard();
                }
                // A FIN, as for every refused client: whatever it sent past the bytes read
                // would otherwise make the close a reset.
                linger_close(client).await;
                return None;
            }
        }
    } else {
        None
    };
    let start = Instant::now();
    let by_sni = hello.as_ref().map(|h| h.sni.as_deref());
    match connect_upstream(fe, client_addr, dst, by_sni).await {
        Ok(mut up) => {
            if let Some(hello) = &hello {
                if let Err(e) = up.io.write_all(&hello.bytes).await {
                    debug!(frontend = %f.name, client = %client_addr, error = %e,
                        "could not pass the ClientHello on; closing");
                    return None;
                }
                up.first_bytes = hello.bytes.len() as u64;
            }
            up.connect = start.elapsed();
            if let Some(p) = log {
                let r = p.record();
                r.connect = Some(up.connect);
                r.backend = Some(Arc::clone(&up.config));
                r.server = Some(Arc::clone(&up.server));
                r.retries = up.retries;
            }
            Some((client, client_addr, up))
        }
        Err(Refused {
            reason,
            config,
            runtime,
            retries,
        }) => {
            debug!(frontend = %f.name, client = %client_addr, reason, "no server for the connection; closing");
            reject(f, reason);
            // A ClientHello read for its SNI was read from the client all the same.
            let read = hello.as_ref().map_or(0, |h| h.bytes.len() as u64);
            if read > 0 {
                metrics::counter!(BYTES_RECEIVED, "frontend" => f.name.clone()).increment(read);
                fe.stats.received(read);
            }
            let termination = match reason {
                "no_server" => Termination::NoServer,
                "queue_timeout" => Termination::QueueTimeout,
                "no_route" => Termination::NoRoute,
                _ => Termination::ConnectError,
            };
            if let Some(rt) = &runtime {
                rt.stats.finish(termination.failure(), None);
                rt.stats.received(read);
            }
            if let Some(mut p) = log.take() {
                let r = p.record();
                r.backend = config;
                r.retries = retries;
                r.bytes_in = Some(read);
                r.termination = termination;
            }
            // The close is sent at once; lingering only drains what the client already sent.
            linger_close(client).await;
            None
        }
    }
}

/// An established upstream connection and the in-flight mark on its server.
struct Upstream {
    io: UpstreamIo,
    server: Arc<Server>,
    config: Arc<Backend>,
    /// The backend's counters.
    runtime: Arc<BackendRuntime>,
    /// How long getting the connection took (the retries included).
    connect: Duration,
    /// Servers tried before this one.
    retries: u32,
    /// Bytes of the client's already sent to the server (a ClientHello read for its SNI).
    first_bytes: u64,
    _active: ActiveGuard,
}

/// Why no upstream connection was made: the rejection reason (a metric label), the backend
/// if the frontend had one, and the servers tried after the first.
struct Refused {
    reason: &'static str,
    config: Option<Arc<Backend>>,
    runtime: Option<Arc<BackendRuntime>>,
    retries: u32,
}

/// Picks a server and connects, moving on to a different server after a failure, up to
/// `retries` times.
/// `by_sni`: the connection is routed by its ClientHello's SNI (`None` inside: it had none),
/// else it goes to the frontend's backend.
async fn connect_upstream(
    fe: &TcpFrontend,
    client: SocketAddr,
    dst: SocketAddr,
    by_sni: Option<Option<&str>>,
) -> Result<Upstream, Refused> {
    // Held for the connect attempts only, never for the relay: an old snapshot must not live
    // as long as a long-lived connection.
    let snap = fe.shared.load_full();
    let picked = match by_sni {
        Some(sni) => snap
            .table(&fe.frontend.name)
            .and_then(|t| t.pick_sni(sni))
            .ok_or("no_route"),
        None => snap.route_index(&fe.frontend.name).ok_or("no_server"),
    };
    let set = match picked {
        Ok(i) => &snap.backends[i],
        Err(reason) => {
            return Err(Refused {
                reason,
                config: None,
                runtime: None,
                retries: 0,
            });
        }
    };
    let cfg = &set.config;
    let refused = |reason, tried: &Vec<Arc<Server>>| Refused {
        reason,
        config: Some(Arc::clone(cfg)),
        runtime: Some(Arc::clone(&set.runtime)),
        retries: tried.len().saturating_sub(1) as u32,
    };
    let mut tried: Vec<Arc<Server>> = Vec::new();
    // The cause of a retry decided on, counted once another server is picked for it.
    let mut retry = None;
    // `check` allows tcp mode only `hash_key = "source"`: the client's address (PROXY's source).
    let key = (cfg.balance == crate::config::Balance::Hash)
        .then(|| crate::balancer::maglev::key_hash(client.ip()));
    loop {
        // A slot on a server, waiting in the backend's queue at `max_conns_per_server`.
        let (server, active) = match set.acquire(key, &tried, &fe.shared).await {
            Ok(slot) => slot,
            Err(NoSlot::Timeout(_)) => return Err(refused("queue_timeout", &tried)),
            Err(NoSlot::NoServer) if tried.is_empty() => return Err(refused("no_server", &tried)),
            Err(NoSlot::NoServer) => return Err(refused("unreachable", &tried)),
        };
        if let Some(cause) = retry.take() {
            metrics::counter!(m::RETRIES, "backend" => cfg.name.clone()).increment(1);
            metrics::counter!(m::RETRIES_BY_CAUSE,
                "backend" => cfg.name.clone(), "cause" => cause)
            .increment(1);
            set.runtime.stats.retry();
        }
        match establish(cfg, &server, client, dst).await {
            Ok(io) => {
                return Ok(Upstream {
                    io,
                    config: Arc::clone(cfg),
                    runtime: Arc::clone(&set.runtime),
                    connect: Duration::ZERO,
                    retries: tried.len() as u32,
                    first_bytes: 0,
                    server,
                    _active: active,
                });
            }
            Err(e) => {
                crate::upstream::warn_connect_failed(cfg, &server.addr, &e);
                metrics::counter!(m::UPSTREAM_CONNECT_ERRORS,
                    "backend" => cfg.name.clone(), "server" => server.addr.clone())
                .increment(1);
                crate::health::observe_failure(set, &server, &format!("connect: {e}"));
                tried.push(server);
                if tried.len() > cfg.retries as usize {
                    return Err(refused("unreachable", &tried));
                }
                retry = Some(crate::upstream::connect_cause(&e));
            }
        }
    }
}

/// One connection to one server (`upstream::connect`), with the PROXY header if the backend
/// sends one.
async fn establish(
    cfg: &Backend,
    server: &Server,
    client: SocketAddr,
    dst: SocketAddr,
) -> io::Result<UpstreamIo> {
    let header = match cfg.send_proxy {
        ProxyVersion::None => None,
        ProxyVersion::V1 => Some(proxy_protocol::encode_v1(client, dst)),
        ProxyVersion::V2 => Some(proxy_protocol::encode_v2(client, dst)),
    };
    crate::upstream::connect(cfg, &server.addr, header.as_deref(), &[]).await
}

/// Relays both ways until both directions are done, the idle timeout passes with no byte
/// either way, or the server's drain times out.
async fn relay(
    fe: &TcpFrontend,
    client: ClientIo,
    client_addr: SocketAddr,
    up: Upstream,
    log: Option<Pending>,
) {
    let f = &*fe.frontend;
    let Upstream {
        io: mut upstream,
        server,
        config,
        runtime,
        connect,
        first_bytes,
        _active,
        ..
    } = up;
    metrics::counter!(TCP_CONNECTIONS,
        "frontend" => f.name.clone(), "backend" => config.name.clone(), "server" => server.addr.clone())
    .increment(1);
    debug!(frontend = %f.name, client = %client_addr, server = %server.addr, "relay started");
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let mut client = Metered {
        inner: client,
        received: metrics::counter!(BYTES_RECEIVED, "frontend" => f.name.clone()),
        sent: metrics::counter!(BYTES_SENT, "frontend" => f.name.clone()),
        totals: (first_bytes, 0),
        activity: &activity,
    };
    client.received.increment(first_bytes);
    let mut kill = server.kill_token().watch();
    let mut idle = IdleClock::new(f.idle_timeout);
    let outcome = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        // NOTE: a hand-written poll rather than `select!`, which would poll (and re-register)
        // the idle timer and draw a random number on every wake-up of the relay.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = copy.as_mut().poll(cx) {
                return Poll::Ready(match r {
                    Ok(_) => Termination::Ok,
                    Err(e) => {
                        debug!(client = %client_addr, server = %server.addr, error = %e, "relay ended with an error");
                        Termination::IoError
                    }
                });
            }
            if kill.poll_fired(cx) {
                return Poll::Ready(Termination::DrainTimeout);
            }
            if idle.poll_expired(cx, activity.load(Ordering::Relaxed)) {
                return Poll::Ready(Termination::IdleTimeout);
            }
            Poll::Pending
        })
        .await
    };
    debug!(frontend = %f.name, client = %client_addr, server = %server.addr,
        received = client.totals.0, sent = client.totals.1,
        secs = start.elapsed().as_secs_f64(), outcome = outcome.as_str(), "relay ended");
    let (received, sent) = client.totals;
    fe.stats.received(received);
    fe.stats.sent(sent);
    runtime.stats.received(received);
    runtime.stats.sent(sent);
    runtime.stats.finish(outcome.failure(), Some(connect));
    if let Some(mut p) = log {
        let r = p.record();
        r.bytes_in = Some(client.totals.0);
        r.bytes_out = client.totals.1;
        r.termination = outcome;
    }
}

/// A relay's idle timeout, cheap on the data path: the relay only bumps a counter per read or
/// write, and a timer looks at the counter every `limit / 8`. The connection is idle once the
/// counter has not moved for `limit`, measured from the check that last saw it move, so the
/// timeout fires between `limit` and `limit * 9 / 8` after the last byte.
struct IdleClock {
    limit: Duration,
    check: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The timer holds our waker and is polled again only once it has fired.
    armed: bool,
    seen: u64,
    last_moved: Instant,
}

impl IdleClock {
    fn new(limit: Duration) -> IdleClock {
        let check = (limit / 8).max(Duration::from_millis(1));
        IdleClock {
            limit,
            check,
            sleep: Box::pin(tokio::time::sleep(check)),
            armed: false,
            seen: 0,
            last_moved: Instant::now(),
        }
    }

    /// Whether `limit` has passed with `moves` unchanged; else the task is woken at the next
    /// check.
    fn poll_expired(&mut self, cx: &mut Context<'_>, moves: u64) -> bool {
        if self.armed && !self.sleep.is_elapsed() {
            return false;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if moves != self.seen {
                self.seen = moves;
                self.last_moved = now;
            }
            let deadline = self.last_moved + self.limit;
            if now >= deadline {
                return true;
            }
            self.sleep.as_mut().reset(deadline.min(now + self.check));
        }
        self.armed = true;
        false
    }
}

/// The client side of a relay: counts bytes both ways into the metrics and marks activity for
/// the idle timeout. Every byte to or from the upstream passes through here too, so watching
/// the client side is enough.
struct Metered<'a, S> {
    inner: S,
    received: Counter,
    sent: Counter,
    /// (received, sent) for the log line.
    totals: (u64, u64),
    /// Bumped on every read or write that moved bytes (for the idle timeout).
    activity: &'a AtomicU64,
}

impl<S> Metered<'_, S> {
    fn touch(&self) {
        // One writer (this relay's task): a plain load and store, no locked instruction.
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.received.increment(n);
            self.totals.0 += n;
            self.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            self.sent.increment(n as u64);
            self.totals.1 += n as u64;
            self.touch();
        }
        Poll::Ready(Ok(n))
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
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_activity() {
        let start = Instant::now();
        let activity = AtomicU64::new(0);
        let mut clock = IdleClock::new(Duration::from_secs(8));
        fn idle<'a>(
            clock: &'a mut IdleClock,
            activity: &'a AtomicU64,
        ) -> impl std::future::Future<Output = ()> + 'a {
            std::future::poll_fn(move |cx| {
                if clock.poll_expired(cx, activity.load(Ordering::Relaxed)) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(5500), idle(&mut clock, &activity))
                .await
                .is_err(),
            "not idle at 5.5 s"
        );
        activity.store(1, Ordering::Relaxed);
        // The check at 6 s sees the move, so idle lasts until 14 s (not 8 s).
        assert!(
            tokio::time::timeout(Duration::from_secs(8), idle(&mut clock, &activity))
                .await
                .is_err(),
            "not idle at 13.5 s"
        );
        tokio::time::timeout(Duration::from_secs(2), idle(&mut clock, &activity))
            .await
            .expect("idle by 15.5 s");
        let at = start.elapsed();
        assert!(
            at >= Duration::from_secs(14) && at <= Duration::from_secs(15),
            "{at:?}"
        );
    }

    #[tokio::test]
    async fn metered_counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(1024);
        let activity = AtomicU64::new(0);
        let mut m = Metered {
            inner: a,
            received: Counter::noop(),
            sent: Counter::noop(),
            totals: (0, 0),
            activity: &activity,
        };
        m.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        m.read_exact(&mut buf).await.unwrap();
        assert_eq!(m.totals, (3, 5));
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
