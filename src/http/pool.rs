//! The per-server upstream connection pool: idle HTTP/1.1 connections (checked out, checked in,
//! closed when idle too long or when the server closed them) and one shared HTTP/2 connection.
//!
//! NOTE: our own rather than hyper-util's legacy `Client`: connecting ourselves means a connect
//! failure happens before the request body is handed over, so the same request can be retried on
//! another server; an idle connection the server closed is seen at checkout and skipped. The pool
//! dies with its server object, so a removed server's idle connections close on their own.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::http::h1::client as h1_client;

use super::*;

/// Idle upstream connections kept per server; beyond this, a returned connection is closed.
pub(crate) const POOL_MAX_IDLE: usize = 128;

/// How many of the most recently returned connections `checkout` looks through for one made on
/// the calling thread.
const HOME_SCAN: usize = 4;

/// HTTP/2 keep-alive ping to servers: finds a dead shared connection before a request does.
pub(crate) const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 connect in progress, awaited by every request that needs the connection meanwhile.
pub(crate) type H2Connect = Shared<BoxFuture<'static, Result<H2Sender, Arc<io::Error>>>>;

/// A server's shared HTTP/2 connection.
#[derive(Default)]
pub(crate) enum H2Slot {
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
    ///
    /// Among the last `HOME_SCAN` returned, one this thread made is taken first: with one
    /// runtime per thread (`work_stealing = false`), a connection made on another thread would
    /// be woken by that thread's reactor, a cross-thread wake-up per read.
    pub(crate) fn checkout(&self, now: Instant, max_idle: Duration) -> Option<h1_client::Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let here = h1_client::thread_tag();
        let len = idle.len();
        if let Some(i) = (len.saturating_sub(HOME_SCAN)..len)
            .rev()
            .find(|&i| idle[i].0.home == here)
            && i + 1 != len
        {
            let last = len - 1;
            idle.swap(i, last);
        }
        while let Some((mut conn, since)) = idle.pop() {
            if now.saturating_duration_since(since) < max_idle && conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Takes back a connection whose last response was read to its end (unless its server is
    /// `draining`: then it closes).
    pub(crate) fn checkin(&self, draining: bool, conn: h1_client::Conn) {
        if draining {
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
    pub(crate) async fn h2_sender(&self, dial: impl FnOnce() -> Dial) -> io::Result<H2Sender> {
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
    pub(crate) fn h2_forget_closed(&self) {
        let mut slot = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*slot, H2Slot::Ready(s) if s.is_closed()) {
            *slot = H2Slot::Empty;
        }
    }

    /// Closes every idle connection and lets go of the shared one (the server is draining or
    /// gone); requests in flight on it finish.
    pub(crate) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = H2Slot::Empty;
    }
}
