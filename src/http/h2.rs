//! What one HTTP/2 client connection needs besides hyper's server (`crate::http::serve_conn`
//! runs it): the frontend's timeouts, and our own `Date` header.
//!
//! - Timeouts: hyper's HTTP/2 server has neither an idle timer nor a header timer, and its
//!   keep-alive pings keep any client that answers them connected for good. So the connection's
//!   streams are counted here (from their request head until their response body is done or
//!   dropped), and [`Activity::expired`] resolves when the first request has not come within
//!   `header_timeout` of the connection's start (the preface, or the TLS handshake), or no
//!   stream has been open for `idle_timeout`; `serve_conn` then sends GOAWAY and closes,
//!   without waiting long for a client that does not answer the GOAWAY's PING
//!   ([`after_goaway`], on shutdown too).
//! - `Date`: hyper adds one to every response without it, gRPC trailers-only answers
//!   included, where a gRPC client reads it as trailing metadata the server never sent. So
//!   hyper's is off and [`add_date`] adds one to any response that is not gRPC.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use tokio::time::Instant;

/// How long a connection told to go away (GOAWAY) may take to close when no stream is open:
/// hyper's graceful shutdown waits for the client to answer a PING first, which a client that
/// only sent the preface may never do.
pub(crate) const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// The streams of one HTTP/2 connection, as far as its timeouts care.
pub(crate) struct Activity {
    start: Instant,
    /// Streams with a request head in and a response not yet done.
    open: AtomicU32,
    /// A request head has come.
    seen: AtomicBool,
    /// When the last stream ended, in nanoseconds after `start`.
    last_end: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            open: AtomicU32::new(0),
            seen: AtomicBool::new(false),
            last_end: AtomicU64::new(0),
        })
    }

    /// A stream's request head came: it is open until the guard is dropped.
    pub(crate) fn open(self: &Arc<Activity>) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.seen.store(true, Ordering::SeqCst);
        Open(Arc::clone(self))
    }

    /// Whether no stream is open.
    pub(crate) fn is_idle(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// When the connection times out if nothing happens meanwhile; `None` while a stream is open.
    fn deadline(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if !self.seen.load(Ordering::SeqCst) {
            return Some(self.start + first);
        }
        let last_end = Duration::from_nanos(self.last_end.load(Ordering::SeqCst));
        Some(self.start + last_end + idle)
    }

    /// Resolves once no request came within `first` of the start, or no stream has been
    /// open for `idle`. One timer, re-armed when it fires: at the deadline if no stream is
    /// open, else `idle` later (a stream ending after this look has its deadline no earlier
    /// than that).
    pub(crate) async fn expired(&self, first: Duration, idle: Duration) {
        loop {
            match self.deadline(first, idle) {
                Some(d) if d <= Instant::now() => return,
                // Before the first request, `d` is `first` after the start; a stream that
                // opens and ends meanwhile sets a deadline `idle` after its end, so this
                // looks again within `idle`.
                Some(d) => tokio::time::sleep_until(d.min(Instant::now() + idle)).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    }
}

/// Drives a connection told to go away (GOAWAY) to its end, or drops it (`None`) once no
/// stream is open and it has not ended within `GOAWAY_GRACE`: hyper closes only after the
/// client answered the PING it sent with the GOAWAY, and a client that never answers would
/// hold the connection (and a graceful shutdown) open. Streams still open finish.
pub(crate) async fn after_goaway<F: Future + Unpin>(
    conn: &mut F,
    activity: &Activity,
) -> Option<F::Output> {
    loop {
        match tokio::time::timeout(GOAWAY_GRACE, &mut *conn).await {
            Ok(r) => return Some(r),
            Err(_) if activity.is_idle() => return None,
            Err(_) => {}
        }
    }
}

/// An open stream; dropping it ends the stream for `Activity`.
pub(crate) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let a = &self.0;
        let since = a.start.elapsed().as_nanos();
        // Stored before the count drops, so a watcher that sees no stream open sees this end.
        a.last_end
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::SeqCst);
        a.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its stream open (for `Activity`) until it is done or dropped.
pub(crate) struct Tracked<B> {
    inner: B,
    _open: Open,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, open: Open) -> Tracked<B> {
        Tracked { inner, _open: open }
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a message is gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Adds `Date` to a response to an HTTP/2 client unless it has one or is gRPC (see the
/// module documentation).
pub(crate) fn add_date(headers: &mut HeaderMap) {
    if headers.contains_key(header::DATE) || is_grpc(headers) {
        return;
    }
    crate::http::h1::response::date::with(|d| {
        if let Ok(v) = HeaderValue::from_bytes(d) {
            headers.insert(header::DATE, v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_request_must_come_within_first() {
        let a = Activity::new();
        let t0 = Instant::now();
        a.expired(Duration::from_secs(2), Duration::from_secs(10))
            .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_stream_end() {
        let a = Activity::new();
        let t0 = Instant::now();
        let open = a.open();
        let body = Tracked::new(http_body_util::Empty::<Bytes>::new(), a.open());
        let watcher = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                a.expired(Duration::from_secs(1), Duration::from_secs(5))
                    .await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(7)).await;
        drop(open);
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The second stream (a response body) ends at 10 s: idle until 15 s.
        drop(body);
        let done = watcher.await.unwrap();
        assert_eq!(done - t0, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_timeout_shorter_than_first_applies_after_the_first_stream() {
        let a = Activity::new();
        let t0 = Instant::now();
        let watcher = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                a.expired(Duration::from_secs(10), Duration::from_secs(1))
                    .await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open = a.open();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(open);
        let done = watcher.await.unwrap();
        assert_eq!(done - t0, Duration::from_secs(3));
    }

    #[test]
    fn grpc_responses_get_no_date() {
        let mut h = HeaderMap::new();
        add_date(&mut h);
        let d = h[header::DATE].to_str().unwrap();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
        let mut h = HeaderMap::new();
        h.insert(header::DATE, HeaderValue::from_static("upstream's"));
        add_date(&mut h);
        assert_eq!(h[header::DATE], "upstream's");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        add_date(&mut h);
        assert!(h.get(header::DATE).is_none());
    }
}
