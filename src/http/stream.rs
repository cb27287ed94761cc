//! The client connection as the HTTP servers read it (`ClientStream`): the wait for a new
//! connection's first byte (`idle_timeout`), a response write the client does not take, byte
//! counts, and telling HTTP/2 (its preface) from HTTP/1.x on a connection without ALPN. Also
//! the connection's one timer ([`Clock`]), which the HTTP/1.x server takes over for its header
//! and idle timeouts once the first bytes are in.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::*;

/// The HTTP/2 connection preface (RFC 9113 3.4), all of it: its first line alone is also an
/// HTTP/1.x request line (`PRI * HTTP/2.0`), which gets an HTTP/1.x answer.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for the first read of a connection: a whole request head, for nearly every client.
pub(crate) const SNIFF_BUF: usize = 4096;

/// One timer, moved lazily: a new deadline re-arms it only when it is earlier than the armed
/// one, and a timer that fires before the deadline is re-armed then. On a busy keep-alive
/// connection it fires about once per timeout instead of being re-registered with the
/// runtime's timer wheel for every request.
pub(crate) struct Clock {
    /// When the current wait times out.
    deadline: tokio::time::Instant,
    /// Armed at `deadline` or earlier.
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Clock {
    /// A clock whose wait times out `after` from now.
    pub(crate) fn new(after: Duration) -> Clock {
        let deadline = tokio::time::Instant::now() + after;
        Clock {
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// The current wait times out `after` from now.
    pub(crate) fn set(&mut self, after: Duration) {
        self.deadline = tokio::time::Instant::now() + after;
        if self.deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    /// Whether the current wait has timed out; if not, the timer is armed and registered to
    /// wake the task (re-armed at the deadline if it fired early).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
        false
    }
}

/// Wraps a client connection (TCP or TLS) to bound two waits nothing else bounds: a new
/// connection's first byte must come within `idle` (else a close, no `408`: browsers open
/// spare connections), and a response write the client does not take for `idle` (it stopped
/// reading) fails, which closes the connection and lets go of the upstream one, like HAProxy's
/// `timeout client`. A tunnel is exempt from the second (`set_tunnel`).
///
/// What a request is, and so the header timeout (`408`) and the wait between requests, is
/// the HTTP/1.x server's (`h1::server`), which takes the first-byte clock over with
/// `take_clock`; HTTP/2 connections have hyper's limits and `h2`'s timers.
pub(crate) struct ClientStream<S> {
    inner: S,
    /// Every byte read from and written to the client (`switchyard_bytes_*_total`).
    received: metrics::Counter,
    sent: metrics::Counter,
    /// The same bytes in the frontend's stats (`stats`).
    stats: std::sync::Arc<crate::stats::FrontendStats>,
    idle: Duration,
    /// Until the first byte: the wait for it (`None` once a byte came or the clock was taken).
    fresh: Option<Clock>,
    /// Armed while a write is blocked on the client; made on the first blocked write only
    /// (most connections never have one).
    write_sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    write_blocked: bool,
    /// The connection is a tunnel: no write timer.
    tunnel: bool,
    /// Bytes `sniff_h2` read, served before any new read.
    pending: Bytes,
}

impl<S> ClientStream<S> {
    pub(crate) fn new(
        inner: S,
        idle: Duration,
        received: metrics::Counter,
        sent: metrics::Counter,
        stats: std::sync::Arc<crate::stats::FrontendStats>,
    ) -> ClientStream<S> {
        ClientStream {
            inner,
            received,
            sent,
            stats,
            idle,
            fresh: Some(Clock::new(idle)),
            write_sleep: None,
            write_blocked: false,
            tunnel: false,
            pending: Bytes::new(),
        }
    }

    /// The connection's timer, for the HTTP/1.x server's header and idle timeouts: the
    /// first-byte wait ends here (the server's own waits take over).
    pub(crate) fn take_clock(&mut self) -> Clock {
        self.fresh.take().unwrap_or_else(|| Clock::new(self.idle))
    }

    /// The connection now carries another protocol (after a `101` or a `2xx` to CONNECT):
    /// no write-stall timer.
    pub(crate) fn set_tunnel(&mut self) {
        self.tunnel = true;
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
        if self.tunnel {
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

impl ClientStream<ClientIo> {
    /// Whether the client connection is TLS (else plain TCP).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.inner, ClientIo::Right(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// The bytes `sniff_h2` read, to be parsed without reading them again.
    pub(crate) fn take_sniffed(&mut self) -> BytesMut {
        std::mem::take(&mut self.pending)
            .try_into_mut()
            .unwrap_or_else(|b| BytesMut::from(&b[..]))
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            // Already counted when `sniff_h2` read them.
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
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.received.increment(n as u64);
                    self.stats.received(n as u64);
                    self.fresh = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(clock) = &mut self.fresh
                    && clock.poll_expired(cx)
                {
                    self.fresh = None;
                    debug!("no request within the idle timeout; closing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        let n = ready!(self.write_outcome(cx, res))?;
        self.sent.increment(n as u64);
        self.stats.sent(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let n = ready!(self.write_outcome(cx, res))?;
        self.sent.increment(n as u64);
        self.stats.sent(n as u64);
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

    fn guarded<S>(io: S) -> ClientStream<S> {
        ClientStream::new(
            io,
            Duration::from_secs(5),
            metrics::Counter::noop(),
            metrics::Counter::noop(),
            Default::default(),
        )
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
            let mut h = guarded(server);
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

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_speak_within_idle() {
        use tokio::io::AsyncReadExt;
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut h = guarded(ours);
        let started = tokio::time::Instant::now();
        let err = h.read(&mut [0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_byte_reads_wait_as_long_as_they_must() {
        use tokio::io::AsyncReadExt;
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut h = guarded(ours);
        theirs.write_all(b"G").await.unwrap();
        let mut one = [0; 1];
        h.read_exact(&mut one).await.unwrap();
        let late = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            theirs.write_all(b"E").await.unwrap();
            theirs
        };
        let (r, _theirs) = tokio::join!(h.read_exact(&mut one), late);
        r.unwrap();
        assert_eq!(&one, b"E");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_idle() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut h = guarded(ours);
        let started = tokio::time::Instant::now();
        let err = h.write_all(&[b'z'; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_not_cut_for_a_slow_reader() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut h = guarded(ours);
        h.set_tunnel();
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

    #[tokio::test(start_paused = true)]
    async fn a_clock_fires_at_its_latest_deadline() {
        let mut clock = Clock::new(Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        clock.set(Duration::from_secs(5));
        std::future::poll_fn(|cx| {
            if clock.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        clock.set(Duration::from_secs(1));
        let again = tokio::time::Instant::now();
        std::future::poll_fn(|cx| {
            if clock.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert_eq!(again.elapsed(), Duration::from_secs(1));
    }
}
