//! HTTP message bodies on their way through the proxy: what clients get (`Body`: an upstream's
//! body that keeps its server's in-flight count until it ends, or our own), the client's request
//! body (`ReqBody`, from our HTTP/1.x server or hyper's HTTP/2 one) and the form it goes upstream
//! in (`ClientBody`, which records whether a failure was the client's). Forbidden trailer fields
//! are taken out of both (`headers::drop_forbidden_trailers`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

use crate::access_log::{Pending, Termination};
use crate::http::h1::client as h1_client;
use crate::http::h1::server as h1_server;
use crate::metrics::{self as m};
use crate::snapshot::{ActiveGuard, Server, Snapshot};

use super::*;

/// What clients get: an upstream's body (counted as in flight until it ends), or our own.
pub type Body = Either<Guarded, Full<Bytes>>;

/// What upstreams get: the client's body, or an empty one when a bodiless request is replayed.
pub(crate) type UpBody = Either<ClientBody, Empty<Bytes>>;

pub(crate) type H1Sender = hyper::client::conn::http1::SendRequest<UpBody>;
pub(crate) type H2Sender = hyper::client::conn::http2::SendRequest<UpBody>;

/// An upstream response body that keeps its server's in-flight count until it is done, so a
/// removed server drains until its last byte is sent, not just its response head. Trailers
/// frames pass through like data frames. With the access log on, it carries the request's
/// record, counts the body bytes into it, and writes it when the body ends or is dropped.
pub struct Guarded {
    pub(crate) inner: RespBody,
    pub(crate) _active: ActiveGuard,
    pub(crate) log: Option<Pending>,
    /// Where the body comes from, to blame the server if it cuts the body short.
    pub(crate) origin: Option<Origin>,
}

/// The server a response body comes from, and the snapshot holding its backend.
pub(crate) struct Origin {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) backend: usize,
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
pub(crate) enum RespBody {
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
pub(crate) struct ClientBody {
    pub(crate) inner: ReqBody,
    /// `None` for a body that is empty from the start: bodiless requests allocate nothing.
    /// (The state is shared with `forward`, which needs it after the body was handed to the
    /// upstream connection; an error type alone would not tell a stalled body from a slow
    /// server, and HTTP/2 upstreams drop the body's error.)
    pub(crate) state: Option<Arc<BodyState>>,
}

/// Where a `ClientBody` is; shared with `forward`, which keeps it after the body is handed over.
#[derive(Debug, Default)]
pub(crate) struct BodyState(AtomicU8);

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

    pub(crate) fn failed(&self) -> bool {
        self.get() == Self::FAILED
    }

    pub(crate) fn waiting_on_client(&self) -> bool {
        self.get() == Self::WAITING_CLIENT
    }
}

impl ClientBody {
    pub(crate) fn new(inner: ReqBody) -> ClientBody {
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
