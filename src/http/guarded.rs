//! What a client gets back (`Body`): an upstream's response body on its way through
//! (`Guarded`), or one of our own. `Guarded` keeps its server's in-flight count until the body
//! ends (a removed server drains until its last byte is sent), fills in the request's access log
//! record, takes forbidden trailer fields out, and blames the server when it cuts the body short
//! (`health::observe_failure`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};

use crate::access_log::{Pending, Termination};
use crate::balancer::BackendRuntime;
use crate::metrics::{self as m};
use crate::snapshot::{ActiveGuard, Server, Snapshot};
use crate::stats::Failure;

use super::*;

/// What clients get: an upstream's body (counted as in flight until it ends), or our own.
pub type Body = Either<Guarded, Full<Bytes>>;

/// An upstream response body that keeps its server's in-flight count until it is done, so a
/// removed server drains until its last byte is sent, not just its response head. Trailers
/// frames pass through like data frames. With the access log on, it carries the request's
/// record, counts the body bytes into it, and writes it when the body ends or is dropped.
pub struct Guarded {
    pub(crate) inner: RespBody,
    pub(crate) _active: ActiveGuard,
    pub(crate) log: Option<Pending>,
    /// The backend's counters, until the body ends: its bytes are counted there, and a body
    /// dropped before its end (the client left) counts as a `client_abort`.
    pub(crate) stats: Option<Arc<BackendRuntime>>,
    /// Where the body comes from, to blame the server if it cuts the body short.
    pub(crate) origin: Option<Origin>,
}

/// The server a response body comes from, and where to find its backend if it fails. Not the
/// snapshot the request was routed in: that would keep every backend of it alive as long as a
/// streaming body runs.
pub(crate) struct Origin {
    pub(crate) shared: Arc<ArcSwap<Snapshot>>,
    pub(crate) server: Arc<Server>,
}

impl Origin {
    /// The server cut the body short (a reset or close mid-body): the client gets a truncated
    /// answer, so it counts as a live failure towards ejection (the head, and its status, were
    /// already sent and counted). A server whose drain timed out is cut by us, not counted.
    fn aborted(self) {
        if self.server.is_draining() {
            return;
        }
        // The server's backend as published now: a server still in service is in it.
        let snap = self.shared.load();
        let Some(set) = snap
            .backends
            .iter()
            .find(|b| b.servers.iter().any(|s| Arc::ptr_eq(s, &self.server)))
        else {
            return;
        };
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
        if let Some(rt) = &this.stats {
            match &frame {
                Some(Ok(f)) => {
                    rt.stats.sent(f.data_ref().map_or(0, |d| d.len() as u64));
                    if this.inner.is_end_stream() {
                        this.stats = None;
                    }
                }
                Some(Err(_)) => {
                    rt.stats.failed(Failure::ServerAbort);
                    this.stats = None;
                }
                None => this.stats = None,
            }
        }
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
        let mut frame = frame;
        drop_forbidden_trailers(&mut frame);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(rt) = self.stats.take() {
            rt.stats.failed(Failure::ClientAbort);
        }
    }
}
