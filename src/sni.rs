//! Reading a TLS ClientHello's server name (SNI) without decrypting anything, for TLS
//! passthrough in `mode = "tcp"`: [`read_client_hello`] reads from a client until a whole
//! ClientHello has arrived (over as many TLS records and reads as it takes), parses it with
//! rustls, and hands back the name and every byte it read, which the caller writes to the
//! chosen server before relaying the rest untouched. [`peek_sni`] is the same for a frontend:
//! its `header_timeout`, [`DEFAULT_MAX_CLIENT_HELLO`], the `switchyard_sni_errors_total` count
//! and a debug line. This module routes nothing (the route table does, in `tcp.rs`), closes
//! nothing and writes nothing; it depends only on the leaves `config` and `metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use crate::config::Frontend;
use crate::metrics::SNI_ERRORS;

/// How many bytes [`peek_sni`] reads before giving up on a ClientHello: 16 KiB (HAProxy's
/// `tune.bufsize`, which bounds what its `req.ssl_sni` can see) plus room for the 5-byte
/// headers of the records carrying it. A browser's ClientHello is 0.5-2 KiB; one with a
/// post-quantum key share and a resumption ticket stays well under 16 KiB.
pub const DEFAULT_MAX_CLIENT_HELLO: usize = 16 * 1024 + 64;

/// The most one read asks for: a typical ClientHello arrives in one read.
const READ_CHUNK: usize = 4096;

/// The first byte of a TLS record that carries a handshake message (`ContentType::Handshake`).
const RECORD_HANDSHAKE: u8 = 0x16;

/// The first byte of every TLS record's `legacy_record_version` (SSL 3.0 and TLS 1.x are all
/// `0x03xx`).
const RECORD_VERSION_MAJOR: u8 = 0x03;

/// A client's first flight, read up to and including its whole ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name, lower-case; `None` when the client sent none
    /// (clients send none when connecting to an IP address) or sent an IP address in it.
    pub sni: Option<String>,
    /// Every byte read from the client, in order: the ClientHello's records and whatever else
    /// the client had sent by the last read (say TLS 1.3 early data). Nothing is left behind
    /// in a buffer here, so the caller writes all of it to the server first, then relays the
    /// connection as it is.
    pub bytes: Vec<u8>,
}

/// Why no ClientHello was read. The caller closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("no whole ClientHello within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not a TLS handshake record: an HTTP request, an SSLv2 hello, ...
    #[error("not a TLS handshake record")]
    NotTls,
    #[error("no whole ClientHello in the first {0} bytes")]
    TooLarge(usize),
    #[error("connection closed before a whole ClientHello")]
    Closed,
    /// TLS handshake records, but a first message rustls refuses: malformed, not a
    /// ClientHello, or one without what rustls asks of every client (the
    /// `signature_algorithms` extension, which clients of TLS 1.1 and older may leave out, and
    /// the null compression method).
    #[error("ClientHello refused: {0}")]
    BadHello(rustls::Error),
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

impl SniError {
    /// The metric's `reason` label: `timeout`, `not_tls`, `too_large`, `closed`, `bad_hello`
    /// or `io`.
    pub fn reason(&self) -> &'static str {
        match self {
            SniError::Timeout(_) => "timeout",
            SniError::NotTls => "not_tls",
            SniError::TooLarge(_) => "too_large",
            SniError::Closed => "closed",
            SniError::BadHello(_) => "bad_hello",
            SniError::Io(_) => "io",
        }
    }
}

/// Reads from `io` until a whole ClientHello has arrived, within `within` and `max` bytes, and
/// returns its SNI and every byte read (see [`ClientHello`]). Reads take at most `max` bytes
/// in all: whatever the client sent past them stays in the socket, for the relay.
/// `TooLarge` once `max` bytes hold no whole ClientHello.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    within: Duration,
    max: usize,
) -> Result<ClientHello, SniError> {
    match tokio::time::timeout(within, read(io, max)).await {
        Ok(res) => res,
        Err(_) => Err(SniError::Timeout(within)),
    }
}

/// [`read_client_hello`] for a frontend's client (after its PROXY header, if any): within the
/// frontend's `header_timeout`, at most [`DEFAULT_MAX_CLIENT_HELLO`] bytes. A failure is
/// counted in `switchyard_sni_errors_total{frontend, reason}` and logged at debug; the caller
/// closes the connection. The route table in `tcp.rs` calls this before picking a backend.
pub async fn peek_sni<S: AsyncRead + Unpin>(
    io: &mut S,
    f: &Frontend,
    client: SocketAddr,
) -> Result<ClientHello, SniError> {
    let res = read_client_hello(io, f.header_timeout, DEFAULT_MAX_CLIENT_HELLO).await;
    match &res {
        Ok(hello) => {
            debug!(frontend = %f.name, client = %client, sni = hello.sni.as_deref().unwrap_or("-"),
                bytes = hello.bytes.len(), "ClientHello read");
        }
        Err(e) => {
            debug!(frontend = %f.name, client = %client, error = %e, "no ClientHello; closing");
            metrics::counter!(SNI_ERRORS, "frontend" => f.name.clone(), "reason" => e.reason())
                .increment(1);
        }
    }
    res
}

// NOTE: the parser is rustls' own `server::Acceptor`, already a dependency and the code that
// parses every ClientHello a `[frontend.tls]` listener accepts, rather than `tls-parser`
// (not in the tree): the Acceptor joins a ClientHello cut over several records and several
// reads, which `tls-parser`'s documentation leaves to "additional code" of its caller, and
// hands back the SNI validated and lower-cased. Its cost: it refuses what rustls' server would (see `SniError::BadHello`).
// The Acceptor gets a copy of the bytes; the bytes themselves stay ours to replay.
async fn read<S: AsyncRead + Unpin>(io: &mut S, max: usize) -> Result<ClientHello, SniError> {
    let mut acceptor = Acceptor::default();
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let start = bytes.len();
        if start >= max {
            return Err(SniError::TooLarge(max));
        }
        bytes.resize(start + READ_CHUNK.min(max - start), 0);
        let n = io.read(&mut bytes[start..]).await?;
        bytes.truncate(start + n);
        if n == 0 {
            return Err(SniError::Closed);
        }
        check_record_start(&bytes, start)?;
        if let Some(sni) = feed(&mut acceptor, &bytes[start..], max)? {
            return Ok(ClientHello { sni, bytes });
        }
    }
}

/// `NotTls` unless the stream starts like a TLS handshake record: the content type and the
/// major version, the first two of the five header bytes, checked as soon as each arrives
/// (`bytes[from..]` is new). This is all the framing read here, and it is the only check
/// rustls does not make the way we want: rustls refuses these too, but by the time it has a
/// whole 5-byte header, and with errors (`InvalidContentType`, `UnknownProtocolVersion`,
/// `InappropriateMessage`) that do not tell a client speaking something else from a TLS
/// client rustls does not like. Checked here, an HTTP request is refused on its first byte.
fn check_record_start(bytes: &[u8], from: usize) -> Result<(), SniError> {
    let expected = [RECORD_HANDSHAKE, RECORD_VERSION_MAJOR];
    for (i, want) in expected.iter().enumerate().skip(from) {
        match bytes.get(i) {
            Some(b) if b != want => return Err(SniError::NotTls),
            Some(_) => {}
            None => break,
        }
    }
    Ok(())
}

/// Gives `new` bytes to the Acceptor and asks it for the ClientHello: `Some(sni)` once it is
/// whole, `None` while more bytes are needed.
fn feed(
    acceptor: &mut Acceptor,
    new: &[u8],
    max: usize,
) -> Result<Option<Option<String>>, SniError> {
    let mut rest = new;
    while !rest.is_empty() {
        // `read_tls` takes what fits in its buffer (so this may loop), and refuses only at
        // rustls' own cap on a buffered handshake message, 64 KiB: a `max` under that is
        // reached first. A non-empty slice always gives it something, so `Ok(0)` means no
        // room either.
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Err(SniError::TooLarge(max)),
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Some(sni));
            }
            Ok(None) => {}
            Err((e, _alert)) => return Err(SniError::BadHello(e)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;

    const WITHIN: Duration = Duration::from_secs(5);

    /// A client config that can only start a handshake (no roots): all these tests need of a
    /// client is its ClientHello.
    fn client_config(alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cc = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cc.alpn_protocols = alpn;
        Arc::new(cc)
    }

    /// The client's end of a duplex, keeping a copy of every byte the client writes.
    struct Recorder {
        inner: DuplexStream,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let res = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = res {
                self.written.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            res
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A `tokio_rustls` client connecting to `name` through a duplex of `buf` bytes, on a task
    /// (it waits for a ServerHello that never comes: abort it when done). Returns our end, and
    /// what the client has written so far.
    fn client(
        name: ServerName<'static>,
        alpn: Vec<Vec<u8>>,
        buf: usize,
    ) -> (DuplexStream, Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
        let (ours, theirs) = tokio::io::duplex(buf);
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Recorder {
            inner: theirs,
            written: Arc::clone(&written),
        };
        let connector = tokio_rustls::TlsConnector::from(client_config(alpn));
        let task = tokio::spawn(async move {
            let _ = connector.connect(name, io).await;
        });
        (ours, written, task)
    }

    fn dns(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_string()).unwrap()
    }

    /// A rustls client's first flight for `name`, made without I/O: its ClientHello record(s).
    fn hello_bytes(name: &str) -> Vec<u8> {
        let mut conn = rustls::ClientConnection::new(client_config(vec![]), dns(name)).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The records in `bytes`: (content type, payload). Test-side framing, for crafting.
    fn records(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
            out.push((bytes[0], &bytes[5..5 + len]));
            bytes = &bytes[5 + len..];
        }
        out
    }

    /// `handshake` (messages, no record headers) as handshake records, cut at `cuts`.
    fn frame(handshake: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&handshake.len())) {
            let part = &handshake[from..to];
            out.extend_from_slice(&[RECORD_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
            from = to;
        }
        out
    }

    /// The handshake bytes of all of `bytes`' records, joined.
    fn handshake_of(bytes: &[u8]) -> Vec<u8> {
        records(bytes)
            .into_iter()
            .inspect(|(typ, _)| assert_eq!(*typ, RECORD_HANDSHAKE))
            .flat_map(|(_, payload)| payload.to_vec())
            .collect()
    }

    async fn read_bytes(bytes: &[u8], max: usize) -> Result<ClientHello, SniError> {
        let mut cur = std::io::Cursor::new(bytes.to_vec());
        read_client_hello(&mut cur, WITHIN, max).await
    }

    /// Counts the reads and bytes taken from `inner`, and hands out at most `per_read` bytes
    /// each time.
    struct Counted<R> {
        inner: R,
        per_read: usize,
        reads: usize,
        bytes: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = &mut *self;
            let mut tmp = vec![0u8; buf.remaining().min(this.per_read)];
            let mut small = ReadBuf::new(&mut tmp);
            let res = Pin::new(&mut this.inner).poll_read(cx, &mut small);
            if let Poll::Ready(Ok(())) = res {
                let n = small.filled().len();
                buf.put_slice(small.filled());
                this.reads += 1;
                this.bytes += n;
            }
            res
        }
    }

    fn counted<R>(inner: R, per_read: usize) -> Counted<R> {
        Counted {
            inner,
            per_read,
            reads: 0,
            bytes: 0,
        }
    }

    #[tokio::test]
    async fn a_rustls_hello_gives_its_sni_and_every_byte_the_client_wrote() {
        let (mut ours, written, task) = client(dns("db.example.com"), vec![], 64 * 1024);
        let hello = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
        // The client now waits for a ServerHello: what it wrote is its whole first flight.
        assert_eq!(hello.bytes, *written.lock().unwrap());
        assert_eq!(handshake_of(&hello.bytes)[0], 1, "a ClientHello");
        task.abort();
    }

    #[tokio::test]
    async fn a_client_connecting_to_an_ip_address_sends_no_sni() {
        let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (mut ours, written, task) = client(ip, vec![], 64 * 1024);
        let hello = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap();
        assert_eq!(hello.sni, None);
        assert_eq!(hello.bytes, *written.lock().unwrap());
        task.abort();
    }

    #[tokio::test]
    async fn the_name_comes_back_lower_case() {
        let mut wire = hello_bytes("db.example.com");
        let at = wire
            .windows(14)
            .position(|w| w == b"db.example.com")
            .unwrap();
        wire[at..at + 14].copy_from_slice(b"DB.Example.COM");
        let hello = read_bytes(&wire, DEFAULT_MAX_CLIENT_HELLO).await.unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
        assert_eq!(hello.bytes, wire, "the bytes are replayed as sent");
    }

    #[tokio::test]
    async fn a_hello_arriving_one_byte_at_a_time_parses() {
        // A one-byte duplex: the client's writes and our reads go a byte at a time.
        let (ours, written, task) = client(dns("db.example.com"), vec![], 1);
        let mut ours = counted(ours, usize::MAX);
        let hello = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
        assert_eq!(hello.bytes, *written.lock().unwrap());
        assert_eq!(ours.reads, hello.bytes.len(), "one read per byte");
        task.abort();
    }

    #[tokio::test]
    async fn a_hello_cut_over_two_records_parses() {
        let hs = handshake_of(&hello_bytes("db.example.com"));
        // In the 4-byte handshake header, and in the middle of the body.
        for cut in [2, hs.len() / 2] {
            let wire = frame(&hs, &[cut]);
            assert_eq!(records(&wire).len(), 2);
            let hello = read_bytes(&wire, DEFAULT_MAX_CLIENT_HELLO).await.unwrap();
            assert_eq!(hello.sni.as_deref(), Some("db.example.com"), "cut at {cut}");
            assert_eq!(hello.bytes, wire);
        }
    }

    /// ALPN protocols enough to make a rustls client's ClientHello over 16 KiB, which it
    /// sends as two records.
    fn huge_alpn() -> Vec<Vec<u8>> {
        (0..70u8).map(|i| vec![b'a' + i % 26; 255]).collect()
    }

    #[tokio::test]
    async fn a_real_hello_over_16_kib_spans_two_records_and_parses_under_a_larger_max() {
        let (mut ours, written, task) = client(dns("db.example.com"), huge_alpn(), 64 * 1024);
        let hello = read_client_hello(&mut ours, WITHIN, 64 * 1024)
            .await
            .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
        assert_eq!(hello.bytes, *written.lock().unwrap());
        assert!(
            hello.bytes.len() > DEFAULT_MAX_CLIENT_HELLO,
            "{}",
            hello.bytes.len()
        );
        assert_eq!(records(&hello.bytes).len(), 2);
        task.abort();
    }

    #[tokio::test]
    async fn a_real_hello_over_16_kib_is_too_large_for_the_default_max() {
        let (ours, _written, task) = client(dns("db.example.com"), huge_alpn(), 64 * 1024);
        let mut ours = counted(ours, usize::MAX);
        let e = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap_err();
        assert!(
            matches!(e, SniError::TooLarge(DEFAULT_MAX_CLIENT_HELLO)),
            "{e:?}"
        );
        assert_eq!(ours.bytes, DEFAULT_MAX_CLIENT_HELLO, "never reads past max");
        task.abort();
    }

    #[tokio::test]
    async fn bytes_after_the_hello_in_the_same_read_are_kept() {
        let mut wire = hello_bytes("db.example.com");
        wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb]);
        let hello = read_bytes(&wire, DEFAULT_MAX_CLIENT_HELLO).await.unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
        assert_eq!(hello.bytes, wire);
    }

    #[tokio::test]
    async fn an_http_request_is_not_tls() {
        let e = read_bytes(b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n", 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, SniError::NotTls), "{e:?}");
        assert_eq!(e.reason(), "not_tls");
    }

    #[tokio::test(start_paused = true)]
    async fn not_tls_is_told_from_the_first_byte_without_waiting_for_more() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b"G").await.unwrap();
        let start = Instant::now();
        let e = read_client_hello(&mut ours, WITHIN, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, SniError::NotTls), "{e:?}");
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(theirs);
    }

    #[tokio::test]
    async fn sslv2_and_records_other_than_handshake_are_not_tls() {
        for wire in [
            // An SSLv2-compatible ClientHello: a 2-byte length with the high bit set.
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15][..],
            // Application data, and a handshake record of a version that is not 3.x.
            &[0x17, 0x03, 0x03, 0x00, 0x01, 0x00],
            &[0x16, 0x02, 0x00, 0x00, 0x01, 0x01],
        ] {
            let e = read_bytes(wire, 1024).await.unwrap_err();
            assert!(matches!(e, SniError::NotTls), "{wire:02x?}: {e:?}");
        }
    }

    #[tokio::test]
    async fn handshake_records_that_are_not_a_client_hello_are_a_bad_hello() {
        // A ServerHello header; and garbage announcing a 11 MB message.
        for wire in [
            &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00][..],
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0xaa, 0xaa, 0xaa, 0xaa],
        ] {
            let e = read_bytes(wire, 1024).await.unwrap_err();
            assert!(matches!(e, SniError::BadHello(_)), "{wire:02x?}: {e:?}");
            assert_eq!(e.reason(), "bad_hello");
        }
    }

    /// rustls refuses a ClientHello without `signature_algorithms`, which clients limited to
    /// TLS 1.1 or older may send: such clients get `BadHello`, not a route.
    #[tokio::test]
    async fn a_hello_without_signature_algorithms_is_refused_by_rustls() {
        let hs = handshake_of(&hello_bytes("db.example.com"));
        let body = &hs[4..];
        // legacy_version, random, session id, cipher suites, compression methods.
        let mut at = 2 + 32;
        at += 1 + body[at] as usize;
        at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        at += 1 + body[at] as usize;
        let (head, mut exts) = (&body[..at], &body[at + 2..]);
        let mut kept = Vec::new();
        let mut dropped = 0;
        while !exts.is_empty() {
            let len = 4 + u16::from_be_bytes([exts[2], exts[3]]) as usize;
            if exts[..2] == [0x00, 0x0d] {
                dropped += 1;
            } else {
                kept.extend_from_slice(&exts[..len]);
            }
            exts = &exts[len..];
        }
        assert_eq!(dropped, 1);
        let mut new_body = head.to_vec();
        new_body.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        new_body.extend_from_slice(&kept);
        let mut new_hs = vec![1];
        new_hs.extend_from_slice(&(new_body.len() as u32).to_be_bytes()[1..]);
        new_hs.extend_from_slice(&new_body);

        let e = read_bytes(&frame(&new_hs, &[]), DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SniError::BadHello(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired
                ))
            ),
            "{e:?}"
        );
        // The same surgery keeping the extension parses: the crafting is not what fails.
        let hello = read_bytes(&frame(&hs, &[]), DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out_at_within() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        let start = Instant::now();
        let e = read_client_hello(&mut ours, WITHIN, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, SniError::Timeout(WITHIN)), "{e:?}");
        assert_eq!(e.reason(), "timeout");
        assert_eq!(start.elapsed(), WITHIN);
        drop(theirs);
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_hello_then_silence_times_out() {
        let wire = hello_bytes("db.example.com");
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(&wire[..wire.len() / 2]).await.unwrap();
        let start = Instant::now();
        let e = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap_err();
        assert!(matches!(e, SniError::Timeout(_)), "{e:?}");
        assert_eq!(start.elapsed(), WITHIN);
        drop(theirs);
    }

    #[tokio::test]
    async fn eof_before_a_whole_hello_is_closed() {
        let wire = hello_bytes("db.example.com");
        for sent in [&[][..], &wire[..1], &wire[..wire.len() - 1]] {
            let e = read_bytes(sent, DEFAULT_MAX_CLIENT_HELLO)
                .await
                .unwrap_err();
            assert!(matches!(e, SniError::Closed), "{} bytes: {e:?}", sent.len());
            assert_eq!(e.reason(), "closed");
        }
    }

    #[tokio::test]
    async fn a_read_error_is_io() {
        struct Broken;
        impl AsyncRead for Broken {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
        }
        let e = read_client_hello(&mut Broken, WITHIN, 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, SniError::Io(_)), "{e:?}");
        assert_eq!(e.reason(), "io");
    }

    #[tokio::test]
    async fn endless_records_that_never_finish_a_hello_are_too_large() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        // A ClientHello header announcing 65520 bytes, then full records of filler forever:
        // valid framing the parser must wait out.
        let writer = tokio::spawn(async move {
            let mut first = vec![0x01, 0x00, 0xff, 0xf0];
            first.resize(0x4000, 0x42);
            let mut wire = frame(&first, &[]);
            loop {
                if theirs.write_all(&wire).await.is_err() {
                    return;
                }
                wire = frame(&[0x42; 0x4000], &[]);
            }
        });
        let mut ours = counted(ours, usize::MAX);
        let e = read_client_hello(&mut ours, WITHIN, DEFAULT_MAX_CLIENT_HELLO)
            .await
            .unwrap_err();
        assert!(
            matches!(e, SniError::TooLarge(DEFAULT_MAX_CLIENT_HELLO)),
            "{e:?}"
        );
        assert_eq!(e.reason(), "too_large");
        assert_eq!(ours.bytes, DEFAULT_MAX_CLIENT_HELLO, "never reads past max");
        drop(ours);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn peek_sni_uses_the_frontend_timeout_and_counts_failures() {
        let render = crate::metrics::handle();
        let cfg = crate::config::Config::from_toml(
            "[[frontend]]\nname='sni-unit'\nbind='127.0.0.1:0'\nmode='tcp'\nbackend='b'\n\
             header_timeout='3s'\n[[backend]]\nname='b'\nservers=['127.0.0.1:1']\n",
        )
        .unwrap();
        let f = &cfg.frontends[0];
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();

        let (mut ours, theirs) = tokio::io::duplex(64);
        let start = Instant::now();
        let e = peek_sni(&mut ours, f, client).await.unwrap_err();
        assert!(matches!(e, SniError::Timeout(_)), "{e:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        drop(theirs);

        let mut http = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(
            peek_sni(&mut http, f, client).await,
            Err(SniError::NotTls)
        ));
        let mut ok = &hello_bytes("db.example.com")[..];
        let hello = peek_sni(&mut ok, f, client).await.unwrap();
        assert_eq!(hello.sni.as_deref(), Some("db.example.com"));

        let text = render.render();
        for reason in ["timeout", "not_tls"] {
            let line = format!(
                "switchyard_sni_errors_total{{frontend=\"sni-unit\",reason=\"{reason}\"}} 1"
            );
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
        assert_eq!(
            text.matches("switchyard_sni_errors_total{").count(),
            2,
            "{text}"
        );
    }
}
