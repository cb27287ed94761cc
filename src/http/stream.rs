//! The client connection as the HTTP servers read it (`HeadTimeout`): the request-header
//! timeout answered with `408`, the wait for a new connection's first byte and between requests
//! (`idle_timeout`), a response write the client does not take, byte counts, and telling
//! HTTP/2 (its preface) from HTTP/1.x on a connection without ALPN.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::*;

pub(crate) const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nconnection: close\r\n\r\n408 Request Timeout: headers too slow\n";
/// The HTTP/2 connection preface (RFC 9113 3.4), all of it: its first line alone is also an
/// HTTP/1.x request line (`PRI * HTTP/2.0`), which gets an HTTP/1.x answer.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
pub(crate) enum HeadState {
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
    pub(crate) fn new(
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
pub(crate) fn ends_head(tail: &[u8; 3], bytes: &[u8]) -> bool {
    let k = bytes.len().min(3);
    let mut seam = [0u8; 6];
    seam[..3].copy_from_slice(tail);
    seam[3..3 + k].copy_from_slice(&bytes[..k]);
    has_blank_line(&seam[..3 + k]) || has_blank_line(bytes)
}

/// Whether `w` holds LF LF or LF CR LF (which CRLFCRLF contains). `memchr` jumps from line
/// end to line end (a byte-by-byte scan cost about 500 instructions a request).
pub(crate) fn has_blank_line(w: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', w).any(|i| match w.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => w.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// The last 3 bytes of `tail` followed by `bytes`.
pub(crate) fn last3(tail: &[u8; 3], bytes: &[u8]) -> [u8; 3] {
    let mut out = *tail;
    for &b in bytes.iter().rev().take(3).rev() {
        out = [out[1], out[2], b];
    }
    out
}

/// Room for the first read of a connection: a whole request head, for nearly every client.
pub(crate) const SNIFF_BUF: usize = 4096;

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
    pub(crate) async fn sniff_h2(&mut self) -> io::Result<bool> {
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
    use tokio::io::AsyncWriteExt;

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
}
