//! Dialing upstream servers, for both data planes: TCP, the PROXY header when the backend
//! sends one, and TLS when it has `[backend.tls]`, all three inside one `connect_timeout`
//! (`connect`, whose steps `tcp` and `secure` the health checks take one by one); the WARN
//! line for a failed one, at most one per server per [`CONNECT_WARN_INTERVAL`]
//! (`warn_connect_failed`); and `Killable`, the socket that a server's drain timeout cuts.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::Backend;
use crate::signal::Watch;

/// A connection to a server: plain TCP, or TLS over it.
pub(crate) type UpstreamIo = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens one connection to `addr` for `backend`: TCP, then `proxy_header` if given, then TLS
/// (offering `alpn`) if the backend has `[backend.tls]`. The one rule for both data planes:
/// all of it happens within the backend's `connect_timeout`, or it fails with `TimedOut`, so a
/// server that accepts and then never reads nor answers cannot hold a request or connection
/// longer than that. Nothing of the client's has been sent when this fails, so another server
/// may be tried.
pub(crate) async fn connect(
    backend: &Backend,
    addr: &str,
    proxy_header: Option<&[u8]>,
    alpn: &[&[u8]],
) -> io::Result<UpstreamIo> {
    let dial = async {
        let mut stream = tcp(addr).await?;
        if let Some(h) = proxy_header {
            stream.write_all(h).await?;
        }
        secure(backend, addr, stream, alpn).await
    };
    // Boxed: a TLS handshake's future is several KiB, which the caller's would carry.
    tokio::time::timeout(backend.connect_timeout, Box::pin(dial))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The TCP step of [`connect`]: a connection to `addr`, with Nagle off. Health checks take
/// the steps one by one, with no timeout of their own, to tell which one failed.
pub(crate) async fn tcp(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The TLS step of [`connect`]: the handshake (offering `alpn`) when the backend has
/// `[backend.tls]`, else the stream as it is.
pub(crate) async fn secure(
    backend: &Backend,
    addr: &str,
    stream: TcpStream,
    alpn: &[&[u8]],
) -> io::Result<UpstreamIo> {
    match &backend.tls {
        None => Ok(Either::Left(stream)),
        Some(tls) => Ok(Either::Right(
            crate::tls::connect(tls, addr, stream, alpn).await?,
        )),
    }
}

/// What a failed `connect` ran into, as a `switchyard_retries_by_cause_total` cause:
/// `connect_refused`, `connect_timeout`, `tls_error` (the handshake, or the TLS setup), or
/// `connect_failed` (anything else: unreachable, reset during the connect, a bad address).
pub(crate) fn connect_cause(e: &io::Error) -> &'static str {
    let tls = e
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>() || inner.is::<crate::tls::TlsError>());
    match e.kind() {
        _ if tls => "tls_error",
        io::ErrorKind::ConnectionRefused => "connect_refused",
        io::ErrorKind::TimedOut => "connect_timeout",
        _ => "connect_failed",
    }
}

/// A server's connect and TLS failures are logged at WARN at most once per this interval; the
/// next line says how many were held back. (Each one is also counted in
/// `switchyard_upstream_connect_errors_total`.)
pub const CONNECT_WARN_INTERVAL: Duration = Duration::from_secs(10);

static CONNECT_WARNINGS: LazyLock<crate::log_limit::LogLimit> =
    LazyLock::new(|| crate::log_limit::LogLimit::new(CONNECT_WARN_INTERVAL));

/// Logs a failed [`connect`] to `addr` for `backend` (TCP, PROXY header or TLS) at WARN,
/// rate-limited per server; the lines held back go to DEBUG.
pub(crate) fn warn_connect_failed(backend: &Backend, addr: &str, e: &io::Error) {
    let name = backend.name.as_str();
    let tls = backend.tls.is_some();
    match CONNECT_WARNINGS.admit(&format!("{name} {addr}"), Instant::now()) {
        Some(0) => {
            tracing::warn!(backend = %name, server = %addr, tls, error = %e, "upstream connect failed")
        }
        Some(suppressed) => tracing::warn!(
            backend = %name, server = %addr, tls, error = %e, suppressed,
            "upstream connect failed ({suppressed} more since the last line)"
        ),
        None => {
            tracing::debug!(backend = %name, server = %addr, tls, error = %e, "upstream connect failed")
        }
    }
}

/// Any upstream transport: plain TCP or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The TCP socket under the stream, for its socket options.
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Io for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref().0)
    }
}

/// Unit tests drive the client over in-memory pipes.
#[cfg(test)]
impl Io for tokio::io::DuplexStream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

pub(crate) type UpIo = Killable<Box<dyn Io>>;

/// An upstream socket that fails every read and write once its server's kill token fires, so
/// the connection ends even when hyper runs it in a task of its own (HTTP/2) or hands it to an
/// upgrade.
pub(crate) struct Killable<S> {
    inner: S,
    kill: Watch,
    dead: bool,
}

impl<S> Killable<S> {
    pub(crate) fn new(inner: S, kill: Watch) -> Killable<S> {
        Killable {
            inner,
            kill,
            dead: false,
        }
    }

    /// Whether the kill token fired (one atomic load).
    fn killed(&mut self) -> bool {
        self.dead |= self.kill.is_fired();
        self.dead
    }

    /// After the socket said `Pending`: registers the task to be woken if the kill token
    /// fires meanwhile, and turns the wait into the kill error if it already has.
    /// NOTE: only then, not on every poll: a pooled connection serves a different task at
    /// almost every request, so each registration replaces a waker (about 250 instructions),
    /// and a read or write that is ready needs none.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.kill.poll_fired(cx) {
            self.dead = true;
            return Poll::Ready(Err(killed_error()));
        }
        Poll::Pending
    }
}

impl Killable<Box<dyn Io>> {
    /// Acknowledges what was received at once instead of after the kernel's delayed-ACK timer
    /// (`TCP_QUICKACK`; Linux clears it again by itself, so it is set at each wait). A server
    /// that writes a response in two small sends with Nagle on holds the second one until the
    /// first is acknowledged: without this, about 40 ms per response on a reused connection.
    /// Best effort: a failure only means the old delay.
    pub(crate) fn ack_now(&self) {
        if let Some(tcp) = self.inner.tcp() {
            let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        }
    }
}

pub(crate) fn killed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "server drain timed out")
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(killed_error()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_named_by_cause() {
        let kind = |k| connect_cause(&io::Error::from(k));
        assert_eq!(kind(io::ErrorKind::ConnectionRefused), "connect_refused");
        assert_eq!(kind(io::ErrorKind::TimedOut), "connect_timeout");
        assert_eq!(kind(io::ErrorKind::HostUnreachable), "connect_failed");
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(connect_cause(&tls), "tls_error");
    }
}
