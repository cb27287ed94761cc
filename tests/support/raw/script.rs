//! `Script`: a raw upstream whose every accepted connection runs a behaviour the test writes
//! (`Peer`: read a request, answer with exact bytes, in pieces, close, reset), counting accepts
//! and keeping every request its connections recorded. With checks off only the proxy
//! connects, so the accept count is the number of upstream connections it opened.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Recorded, Wire, read_body};

/// Pause between the separate writes of `Peer::send_pieces`.
pub const PIECE_GAP: Duration = Duration::from_millis(15);
/// Bound on any single read of a `Peer`: silence this long ends its request loop.
pub const PEER_WAIT: Duration = Duration::from_secs(5);

/// One accepted connection of a `Script`.
pub struct Peer {
    wire: Wire,
    /// Which accepted connection this is (0 is the first).
    pub index: usize,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Peer {
    /// The next request head (not recorded); `None` if the connection ends first.
    pub async fn head(&mut self) -> Option<Recorded> {
        let head = self.wire.head().await?;
        Some(Recorded::from_head(head, self.index))
    }

    /// Reads `req`'s body (Content-Length or chunked, trailers kept); false if it is cut
    /// short or cannot be delimited.
    pub async fn body(&mut self, req: &mut Recorded) -> bool {
        read_body(&mut self.wire, req).await.is_ok()
    }

    pub fn record(&self, req: &Recorded) {
        self.seen.lock().unwrap().push(req.clone());
    }

    /// The next whole request, recorded. One that cannot be read whole (or is not HTTP at
    /// all) is recorded too, and then `None`: the caller closes.
    pub async fn request(&mut self) -> Option<Recorded> {
        let mut req = self.head().await?;
        let ok = req.target.starts_with('/') && self.body(&mut req).await;
        self.record(&req);
        ok.then_some(req)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.wire.send(bytes).await;
    }

    /// Writes each piece on its own, `PIECE_GAP` apart.
    pub async fn send_pieces(&mut self, pieces: &[&[u8]]) {
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(PIECE_GAP).await;
            }
            self.send(p).await;
        }
    }

    /// Whether bytes are waiting or come within `d` (false: silence, or the peer closed).
    pub async fn more_within(&mut self, d: Duration) -> bool {
        self.wire.more_within(d).await
    }

    /// Reads and drops whatever comes until the peer closes or is silent for `PEER_WAIT`.
    pub async fn drain(&mut self) {
        while self.wire.more_within(PEER_WAIT).await {
            self.wire.buf.clear();
        }
    }

    /// The peer has closed (a read saw EOF or an error).
    pub fn closed(&self) -> bool {
        self.wire.closed()
    }

    /// Closes with a reset (SO_LINGER 0) rather than a FIN.
    pub fn reset(mut self) {
        let _ = self.wire.stream().set_zero_linger();
    }
}

/// A raw upstream whose every accepted connection runs `behaviour`; stopped on drop.
pub struct Script {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Script {
    pub async fn start<F, Fut>(behaviour: F) -> Script
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (Arc::clone(&accepts), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                tokio::spawn(behaviour(Peer {
                    wire: Wire::new(stream, Some(PEER_WAIT)),
                    index: a.fetch_add(1, Ordering::SeqCst),
                    seen: Arc::clone(&s),
                }));
            }
        });
        Script {
            addr,
            accepts,
            seen,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Every request recorded so far, in order.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// `(connection, method, target)` of every request seen, in order.
    pub fn log(&self) -> Vec<(usize, String, String)> {
        self.seen()
            .into_iter()
            .map(|r| (r.conn, r.method, r.target))
            .collect()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.task.abort();
    }
}
