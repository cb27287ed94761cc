//! The accepting side both data planes share (`http` and `tcp`): one accept loop per frontend,
//! with `maxconn` (connections beyond it wait in the kernel's accept queue), a back-off after
//! a failed accept (EMFILE and friends) instead of a spin; per connection, the PROXY header
//! when `accept_proxy` is on and the TLS handshake when the frontend has `[frontend.tls]`
//! (`handshake`); and closing a refused client with a FIN rather than a reset
//! (`linger_close`, `drain_then_close`). What a connection carries is the caller's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Frontend;
use crate::metrics as m;
use crate::proxy_protocol;
use crate::stats::FrontendStats;
use crate::tls::TlsAcceptor;

/// Back-off after a failed accept, instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// After refusing a client: how long to read and drop what it already sent, so the close is a
/// FIN rather than a reset (unread data at close makes the kernel send RST).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// A client connection after its PROXY header and TLS handshake. (The TLS stream is boxed:
/// unboxed, its ~1 KiB would be copied with every move of a plain connection's future too.)
pub(crate) type ClientIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// A connection's place under its frontend's `maxconn`, held for the connection's life; it
/// also counts the connection as open in the frontend's stats.
pub(crate) struct Permit {
    _slot: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<FrontendStats>,
    /// The accepting thread's count of open connections (`work_stealing = false`).
    load: Option<Arc<Loads>>,
    thread: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.close();
        if let Some(l) = &self.load {
            l.0[self.thread].0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// With `work_stealing = false`: how long a thread that holds more of a frontend's connections
/// than the least loaded one (by more than `BALANCE_SLACK`) leaves the next connection to the
/// others, before it accepts again itself.
const ACCEPT_DEFER: Duration = Duration::from_millis(1);
const BALANCE_SLACK: usize = 4;

/// One counter of open connections per accepting thread, each on its own cache line (only its
/// thread writes it; the others read it before accepting).
#[derive(Debug)]
pub(crate) struct Loads(Box<[Padded]>);

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(std::sync::atomic::AtomicUsize);

impl Loads {
    /// Whether `thread` holds more connections than the least loaded thread by more than a
    /// quarter of its own (and `BALANCE_SLACK`): a lasting imbalance, such as a burst of
    /// keep-alive clients taken by one thread, not the ups and downs of short connections
    /// (deferring on those made one-request connections wait for a busy thread).
    fn ahead(&self, thread: usize) -> bool {
        let mine = self.0[thread].0.load(Ordering::Relaxed);
        let least = self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).min();
        least.is_some_and(|l| mine > l + BALANCE_SLACK.max(mine / 4))
    }
}

/// Accepts connections on `listener` until `stop` fires, at most `frontend.maxconn` open at
/// once (`limit`, shared by the frontend's accept loops; this one is number `thread` of them),
/// and spawns the future `serve(stream, peer, permit)` makes for each on `tracker`.
/// `serve` boxes it where it is made: the future is a few KiB (a TLS handshake, a server's
/// state), and each move on its way into the task copies all of it, where a box moves as a
/// pointer (wrapped here instead, it was copied three times: 9k instructions a connection).
pub(crate) async fn accept_loop<F, Fut>(
    listener: &TcpListener,
    frontend: &Frontend,
    limit: &ConnLimit,
    thread: usize,
    stop: &CancellationToken,
    tracker: &TaskTracker,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Permit) -> Pin<Box<Fut>>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = frontend.name.as_str();
    let mut failing = false;
    loop {
        let Some(permit) = limit.admit(stop, name).await else {
            break;
        };
        // All threads accept from one socket and the first awake takes the connection, so a
        // burst would land on one: a thread ahead of the others lets them take the next one.
        // (Not SO_REUSEPORT sockets per thread: closing one resets the connections queued on
        // it, which a reload or an upgrade must not do.)
        if let Some(loads) = &limit.loads
            && loads.ahead(thread)
        {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(ACCEPT_DEFER) => {}
            }
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
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
                // One warning per run of failures, not one per retry.
                if failing {
                    debug!(frontend = %name, error = %e, "accept failed");
                } else {
                    warn!(frontend = %name, error = %e, "accept failed; retrying every 50 ms");
                    failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let stats = &limit.stats;
        stats.open();
        if let Some(l) = &limit.loads {
            l.0[thread].0.fetch_add(1, Ordering::Relaxed);
        }
        let permit = Permit {
            _slot: permit,
            stats: Arc::clone(stats),
            load: limit.loads.clone(),
            thread,
        };
        tracker.spawn(serve(stream, peer, permit));
    }
    debug!(frontend = %name, "stopped accepting");
}

/// A client connection ready for its protocol.
pub(crate) struct Accepted {
    pub(crate) io: ClientIo,
    /// The client: the PROXY header's source, else the peer.
    pub(crate) client: SocketAddr,
    /// The address the client connected to: the PROXY header's destination, else ours (or the
    /// bind address, when `want_local` was false).
    pub(crate) local: SocketAddr,
}

/// Why a client was closed before its protocol started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A bad or missing PROXY header (counted in `switchyard_proxy_header_errors_total`).
    ProxyHeader,
    /// The TLS handshake failed or timed out.
    Tls,
}

/// The PROXY header if `accept_proxy`, then TLS if `tls`. The address the client connected
/// to costs a `getsockname`, so it is asked for only `want_local` (for a PROXY header we
/// send); else it is the bind address. A refused client is closed (and the PROXY header
/// error counted) before this returns.
pub(crate) async fn handshake(
    f: &Frontend,
    tls: Option<&TlsAcceptor>,
    mut stream: TcpStream,
    peer: SocketAddr,
    want_local: bool,
) -> Result<Accepted, Refusal> {
    let local = if want_local {
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
                metrics::counter!(m::PROXY_HEADER_ERRORS,
                    "frontend" => f.name.clone(), "reason" => e.reason())
                .increment(1);
                linger_close(stream).await;
                return Err(Refusal::ProxyHeader);
            }
        }
    } else {
        (peer, local)
    };
    let io = match tls {
        None => Either::Left(stream),
        // Boxed: the handshake's state is over a KiB, which every connection's future would
        // otherwise carry (and copy when spawned), TLS or not.
        Some(acceptor) => match Box::pin(acceptor.accept(stream)).await {
            Ok(s) => Either::Right(Box::new(s)),
            Err(e) => {
                debug!(frontend = %f.name, client = %client, error = %e, "TLS handshake failed");
                return Err(Refusal::Tls);
            }
        },
    };
    Ok(Accepted { io, client, local })
}

/// A copy of `listener` (the same kernel socket, a second descriptor) registered with the
/// runtime of `handle`, for an accept loop there: with `work_stealing = false` every worker
/// thread accepts from each listening socket itself, as HAProxy's threads do, and serves what it
/// accepted on its own thread.
pub(crate) fn listener_for(
    listener: &TcpListener,
    handle: &tokio::runtime::Handle,
) -> std::io::Result<TcpListener> {
    let dup: std::net::TcpListener = socket2::SockRef::from(listener).try_clone()?.into();
    dup.set_nonblocking(true)?;
    let _in_runtime = handle.enter();
    TcpListener::from_std(dup)
}

/// A frontend's `maxconn`: the permits its open connections hold, shared by its accept loops
/// (one per worker thread with `work_stealing = false`).
#[derive(Debug)]
pub(crate) struct ConnLimit {
    permits: Arc<tokio::sync::Semaphore>,
    limited: Counter,
    stats: Arc<FrontendStats>,
    /// The listener is waiting at the limit (to log once per episode, not per connection).
    saturated: AtomicBool,
    /// Open connections by accepting thread, when more than one thread accepts.
    loads: Option<Arc<Loads>>,
}

impl ConnLimit {
    /// The limit of frontend `f`, whose connections `threads` accept loops take.
    pub(crate) fn new(f: &Frontend, stats: Arc<FrontendStats>, threads: usize) -> ConnLimit {
        ConnLimit {
            loads: (threads > 1).then(|| {
                Arc::new(Loads(
                    std::iter::repeat_with(Padded::default)
                        .take(threads)
                        .collect(),
                ))
            }),
            permits: Arc::new(tokio::sync::Semaphore::new(f.maxconn)),
            limited: metrics::counter!(m::CONNECTIONS_LIMITED, "frontend" => f.name.clone()),
            stats,
            saturated: Default::default(),
        }
    }

    /// A permit for one more connection, waiting while `maxconn` are open (the listener stops
    /// accepting meanwhile, so new clients queue in the kernel's backlog, as with HAProxy).
    /// `None` when `stop` fires first.
    pub(crate) async fn admit(
        &self,
        stop: &CancellationToken,
        frontend: &str,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            if self.saturated.swap(false, Ordering::Relaxed) {
                info!(frontend, "below maxconn again; accepting");
            }
            return Some(p);
        }
        self.limited.increment(1);
        self.stats.refused();
        if !self.saturated.swap(true, Ordering::Relaxed) {
            warn!(
                frontend,
                "maxconn reached: new connections wait in the accept queue"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => None,
            p = Arc::clone(&self.permits).acquire_owned() => p.ok(),
        }
    }
}

/// Closes a refused client with a FIN rather than a reset: shut our side down, then read and
/// drop what the peer sent (bounded in time and bytes), so the close finds no unread data.
pub(crate) async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    drain_then_close(stream, LINGER, LINGER_MAX_BYTES).await;
}

/// Shuts our side of `stream` down, then reads and drops what the peer sends until it closes,
/// for at most `within` and `max_bytes`, then closes.
pub(crate) async fn drain_then_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    within: Duration,
    max_bytes: usize,
) {
    let _ = stream.shutdown().await;
    let drain = async {
        // On the heap: inline, these 4 KiB would be part of every connection's future (and
        // copied with it), for a path few connections take.
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        while total < max_bytes {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(counts: &[usize]) -> Loads {
        Loads(
            counts
                .iter()
                .map(|&n| Padded(std::sync::atomic::AtomicUsize::new(n)))
                .collect(),
        )
    }

    #[test]
    fn a_thread_defers_only_on_a_lasting_imbalance() {
        // A burst taken by one thread: it leaves the next connections to the other.
        assert!(loads(&[32, 0]).ahead(0));
        assert!(!loads(&[32, 0]).ahead(1));
        // Within the slack, or within a quarter of its own: no deferring.
        assert!(!loads(&[5, 1]).ahead(0));
        assert!(!loads(&[36, 28]).ahead(0));
        assert!(loads(&[40, 28]).ahead(0));
        assert!(!loads(&[0, 0, 0]).ahead(2));
    }
}
