//! HTTP message bodies on their way through the proxy: a server's response body (`RespBody`,
//! from our HTTP/1.1 client or hyper), the client's request body (`ReqBody`, from our HTTP/1.x
//! server or hyper's HTTP/2 one) and the form it goes upstream in (`ClientBody`, which records
//! whether a failure was the client's, and takes forbidden trailer fields out:
//! `headers::drop_forbidden_trailers`). What the client gets back is `guarded.rs`'s.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use crate::http::h1::client as h1_client;
use crate::http::h1::server as h1_server;

use super::*;

/// What upstreams get: the client's body, or an empty one when a bodiless request is replayed.
pub(crate) type UpBody = Either<ClientBody, Empty<Bytes>>;

pub(crate) type H1Sender = hyper::client::conn::http1::SendRequest<UpBody>;
pub(crate) type H2Sender = hyper::client::conn::http2::SendRequest<UpBody>;

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
/// Its bytes so far, and the most it may carry (`max_body_size`; `u64::MAX`: no limit): past
/// it the body fails, and the state says why ([`BodyState::too_large`]).
#[derive(Debug)]
pub(crate) struct BodyState(AtomicU8, AtomicU64, u64);

impl BodyState {
    /// Not waiting on the client: not polled yet, or the last frame was taken (so the upstream
    /// side has not asked for more).
    const IDLE: u8 = 0;
    /// Polled and waiting for the client to send more.
    const WAITING_CLIENT: u8 = 1;
    const DONE: u8 = 2;
    /// The client's body failed (malformed framing, or the connection ended mid-body).
    const FAILED: u8 = 3;
    /// The client's body went past its limit (`max_body_size`); nothing more is read of it.
    const TOO_LARGE: u8 = 4;

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn failed(&self) -> bool {
        self.get() == Self::FAILED
    }

    pub(crate) fn too_large(&self) -> bool {
        self.get() == Self::TOO_LARGE
    }

    pub(crate) fn waiting_on_client(&self) -> bool {
        self.get() == Self::WAITING_CLIENT
    }

    /// The most bytes the body may carry (`u64::MAX`: no limit).
    pub(crate) fn limit(&self) -> u64 {
        self.2
    }

    /// The body's bytes taken from the client so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }
}

impl ClientBody {
    /// `limit`: `max_body_size`, if the route has one.
    pub(crate) fn new(inner: ReqBody, limit: Option<u64>) -> ClientBody {
        let state = (!hyper::body::Body::is_end_stream(&inner)).then(|| {
            Arc::new(BodyState(
                AtomicU8::new(BodyState::IDLE),
                AtomicU64::new(0),
                limit.unwrap_or(u64::MAX),
            ))
        });
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
        if self.state.as_ref().is_some_and(|s| s.too_large()) {
            return Poll::Ready(Some(Err(super::body_limit::TooLarge.into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(state) = &self.state {
            if let Poll::Ready(Some(Ok(f))) = &polled
                && let Some(d) = f.data_ref()
            {
                let had = state.1.fetch_add(d.len() as u64, Ordering::Relaxed);
                // Past the limit: the upstream request fails here, before this frame is sent.
                if had + d.len() as u64 > state.limit() {
                    state.set(BodyState::TOO_LARGE);
                    return Poll::Ready(Some(Err(super::body_limit::TooLarge.into())));
                }
            }
            state.set(match &polled {
                Poll::Pending => BodyState::WAITING_CLIENT,
                Poll::Ready(None) => BodyState::DONE,
                Poll::Ready(Some(Err(_))) => BodyState::FAILED,
                Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => BodyState::DONE,
                Poll::Ready(Some(Ok(_))) => BodyState::IDLE,
            });
        }
        polled.map(|mut frame| {
            drop_forbidden_trailers(&mut frame);
            frame
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
