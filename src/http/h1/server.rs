//! Our HTTP/1.x server side of the L7 data plane: on one client connection, reads request
//! heads (`httparse`), hands each request to `l7::handle` with its body read straight
//! off the socket (Content-Length or chunked, with trailers), and writes the response head and
//! body back, gathering what the body has ready into one write. Requests on a connection are
//! served one after another (pipelined ones from the bytes already read), all in the
//! connection's task.
//!
//! It owns HTTP/1.x message framing towards clients: which requests have a body and how long
//! it is (and refusing ambiguous framing: `400`, `431`, `505`), `Expect: 100-continue`,
//! keep-alive and `Connection: close`, response framing (a length, chunked, or up to the close
//! for an HTTP/1.0 client), the `Date` header, trailers for clients that accept them, handing
//! the socket to a tunnel after a `101`, and noticing a client that leaves while its request is
//! being served. Header, idle and stalled-write timeouts are `l7::HeadTimeout`'s,
//! which wraps the socket; what a request means is `http::forward`'s.
//!
//! NOTE: hand-written rather than hyper's server connection: that parses into hyper's own
//! buffers and state machine, then runs the service future, the request body and the response
//! body through its dispatcher; per keep-alive request that was about a third of our
//! instructions (callgrind). HTTP/2 clients still go to hyper's server.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use super::{self as h1, Framing, Spot, State, Step};
use crate::http::{self as l7, Conn, Phase, ReqBody, Stream};
use crate::signal::Watch;

/// Most header fields in one request head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read (hyper starts with 8 KiB too).
const READ_SIZE: usize = 8 * 1024;
/// Output gathered before it is written: the head and the body frames that are ready.
const WRITE_CHUNK: usize = 64 * 1024;
/// A write buffer grown past this by a large response is not kept for the next one.
const KEEP_OUT: usize = 16 * 1024;

/// Room the output buffer starts with: a typical response head and a small body, without the
/// buffer growing four times on each new connection's first response.
const OUT_START: usize = 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// After an answer sent before the request body was all read: how long, and how many bytes,
/// the rest of the body is read and dropped before the close (nginx's `lingering_time` is
/// 30 s; a client that saw the answer and its `Connection: close` stops well before this).
const EARLY_ANSWER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
const EARLY_ANSWER_DRAIN_BYTES: usize = 32 * 1024 * 1024;

/// The client side of a connection once a `101` was written: the socket, with the bytes the
/// client sent after its request already put back in front. Handed to the tunnel through the
/// request's extensions (which must be `Clone`, hence the shared slot).
#[derive(Clone)]
pub(crate) struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Stream>>>>);

impl ClientUpgrade {
    /// The socket, once the `101` is written.
    pub(crate) async fn io(self) -> io::Result<Stream> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => rx
                .await
                .map_err(|_| io::Error::other("client connection closed")),
            None => Err(io::Error::other("client connection already taken")),
        }
    }
}

/// The connection's read side and what was read from it and not used yet.
pub(crate) struct Reader {
    half: ReadHalf<Stream>,
    buf: BytesMut,
}

impl Reader {
    /// Reads what is available into `buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.half), cx, &mut self.buf)
    }
}

/// What a request body shares with its connection's server loop.
#[derive(Default)]
struct Home {
    /// The connection's read side, left here once the body was read to its end.
    reader: Mutex<Option<Reader>>,
    /// The read side of a body dropped before its end (the server answered without reading
    /// all of it): what is left of the body is drained from it before the close.
    cut: Mutex<Option<Reader>>,
    /// The body was asked for while the client waits for `100 Continue`.
    wants_continue: AtomicBool,
    /// The server loop, woken when `wants_continue` is set: the body may be read in another
    /// task (hyper's, for an HTTP/2 server).
    waker: AtomicWaker,
}

/// A client's request body, read straight off its connection. Read to its end, it puts the
/// reader back for the next request; dropped before that, it leaves the reader in `Home::cut`
/// (the rest of the body is drained before the close); failed, it drops it. Either way the
/// connection closes after the response.
pub(crate) struct Body {
    reader: Option<Reader>,
    state: State,
    home: Option<Arc<Home>>,
    /// The client waits for `100 Continue` before it sends the body: asked for at the first
    /// read, so a request answered without its body (an error, a redirect) costs no upload.
    expect_continue: bool,
}

impl Body {
    /// A request without a body.
    fn empty() -> Body {
        Body {
            reader: None,
            state: State::new(Framing::None),
            home: None,
            expect_continue: false,
        }
    }

    fn finish(&mut self) {
        self.state = State::new(Framing::None);
        if let (Some(reader), Some(home)) = (self.reader.take(), &self.home) {
            *home.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        }
    }

    fn fail(&mut self, e: impl Into<l7::BoxError>) -> Poll<Option<FrameResult>> {
        self.reader = None;
        self.state = State::new(Framing::None);
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let (Some(reader), Some(home)) = (self.reader.take(), &self.home) {
            *home.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(reader);
        }
    }
}

type FrameResult = Result<Frame<Bytes>, l7::BoxError>;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = l7::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        let this = &mut *self;
        if this.expect_continue {
            this.expect_continue = false;
            if let Some(home) = &this.home {
                home.wants_continue.store(true, Ordering::Release);
                home.waker.wake();
            }
        }
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state.step(&mut reader.buf) {
                Ok(Step::Frame(f)) => {
                    if this.state.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(reader.poll_fill(cx)) {
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection mid-body",
                    ));
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
    }
}

/// A request head read off the connection, and what it says about the connection.
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    /// The connection may carry another request after this one.
    keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    expect_continue: bool,
    /// `TE: trailers`: the client takes trailer fields.
    te_trailers: bool,
}

/// A request head we refuse to serve: answered, then the connection closes.
#[derive(Debug, PartialEq)]
struct Refused(StatusCode, &'static str);

/// Parses a complete request head off the front of `buf`; `None` until all of it is there.
/// Framing follows RFC 9112 6: Transfer-Encoding must end in `chunked` (and is refused on
/// HTTP/1.0), Content-Length must be digits and the same on every line, and with both, the
/// length is dropped and the connection is not reused.
fn parse_head(buf: &mut BytesMut, limit: usize) -> Result<Option<Head>, Refused> {
    let too_large = Refused(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "the request head is too large",
    );
    skip_empty_lines(buf);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut spots = [Spot::default(); MAX_HEADERS];
    let (len, method, target, minor, count) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len > limit => return Err(too_large),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= limit => return Err(too_large),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(too_large),
            Err(httparse::Error::Version) => {
                return Err(Refused(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "only HTTP/1.0 and HTTP/1.1 are served here",
                ));
            }
            Err(_) => {
                return Err(Refused(StatusCode::BAD_REQUEST, "malformed request head"));
            }
        };
        Spot::record(buf, req.headers, &mut spots);
        let base = buf.as_ptr() as usize;
        let at = |s: &str| (s.as_ptr() as usize - base) as u32;
        let method = req.method.unwrap_or("");
        let path = req.path.unwrap_or("");
        (
            len,
            (at(method), method.len()),
            (at(path), path.len()),
            req.version.unwrap_or(1),
            req.headers.len(),
        )
    };
    let raw = buf.split_to(len).freeze();
    let bad = |why| Refused(StatusCode::BAD_REQUEST, why);
    let method_bytes = &raw[method.0 as usize..method.0 as usize + method.1];
    let method = Method::from_bytes(method_bytes).map_err(|_| bad("invalid method"))?;
    let uri = Uri::from_maybe_shared(raw.slice(target.0 as usize..target.0 as usize + target.1))
        .map_err(|_| bad("invalid request-target"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the X-Forwarded-* fields `headers::rewrite_request` adds: a map that grows is copied.
    let mut headers = HeaderMap::with_capacity(count + 3);
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut keep_alive = version == Version::HTTP_11;
    let mut expect_continue = false;
    let mut te_trailers = false;
    for spot in &spots[..count] {
        let (name, value) = spot.field(&raw).ok_or(bad("invalid header field"))?;
        if aliases_framing(&name) {
            // Dropped, as nginx does with underscores by default: a server behind us that maps
            // `_` to `-` (CGI, many frameworks) would read a second length or coding into it.
            tracing::debug!(
                field = name.as_str(),
                "header field with an underscore dropped"
            );
            continue;
        }
        if name == header::CONTENT_LENGTH {
            match std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(h1::parse_decimal)
            {
                // Repeated with the same value: passed on once.
                Some(n) if length == Some(n) => continue,
                Some(n) if length.is_none() => length = Some(n),
                _ => return Err(bad("invalid Content-Length")),
            }
        } else if name == header::TRANSFER_ENCODING {
            // `,chunked` or `chunked,,`: HAProxy (422) and nginx (501) refuse empty list
            // elements here, and a parser that skips them frames the body differently from
            // one that does not.
            if value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().is_empty())
            {
                return Err(bad("empty element in Transfer-Encoding"));
            }
            // Only the last line counts; `answers::refuse` refuses the other codings of a list that
            // ends in `chunked` (501).
            chunked = Some(h1::chunked_last(&value));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    keep_alive = true;
                }
            }
        } else if name == header::EXPECT {
            // RFC 9110 10.1.1: never a `100` to an HTTP/1.0 client.
            expect_continue = minor == 1 && value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            te_trailers |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        headers.append(name, value);
    }
    if chunked.is_some() && version == Version::HTTP_10 {
        return Err(bad("Transfer-Encoding on an HTTP/1.0 request"));
    }
    let framing = match (chunked, length) {
        (Some(false), _) => return Err(bad("the last transfer coding is not chunked")),
        (Some(true), Some(_)) => {
            // RFC 9112 6.3: the chunked coding frames the body, the length must not be
            // passed on, and the connection is not trusted for another request.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
            Framing::Chunked
        }
        (Some(true), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        expect_continue: expect_continue && framing != Framing::None,
        framing,
        keep_alive,
        te_trailers,
    }))
}

/// Fields whose names are a framing field's with `_` for `-` (`content_length`,
/// `Transfer_Encoding`). Names with an underscore are rare, so the usual field costs one scan
/// of its name.
pub(crate) fn aliases_framing(name: &header::HeaderName) -> bool {
    const ALIASED: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];
    let n = name.as_str().as_bytes();
    memchr::memchr(b'_', n).is_some()
        && ALIASED.iter().any(|a| {
            a.len() == n.len()
                && a.iter()
                    .zip(n)
                    .all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
        })
}

/// Drops the empty lines (CRLF or LF) at the front of `buf`: RFC 9112 2.2 lets a server skip
/// them before a request-line, and httparse does. Dropped here, they neither count towards the
/// head size limit nor make an idle connection look busy when a graceful stop comes; the header
/// clock they started (`l7::HeadTimeout`) keeps running. A lone CR before anything but
/// LF stays, for the parser to refuse.
fn skip_empty_lines(buf: &mut BytesMut) {
    let mut n = 0;
    loop {
        match buf.get(n..n + 2) {
            Some(b"\r\n") => n += 2,
            _ if buf.get(n) == Some(&b'\n') => n += 1,
            _ => break,
        }
    }
    buf.advance(n);
}

/// A whole request decoded from memory by the same head parser and body decoder as the data
/// plane: the in-memory form of `serve`'s reading side, for the fuzz target.
#[derive(Debug)]
pub struct Decoded {
    /// The fields passed on, lower-cased names, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub keep_alive: bool,
    /// The body's data, in order.
    pub body: Vec<u8>,
    /// Trailer fields.
    pub trailers: usize,
    /// The body ended by its own framing.
    pub complete: bool,
    /// Bytes of `input` after the request (the next pipelined one).
    pub rest: usize,
}

/// Decodes the request at the start of `input`, with `limit` as the head size limit;
/// `Ok(None)` while its head is incomplete, `Err(status)` for a head we refuse (and an
/// error in the body as `Err(400)`).
pub fn decode_request(input: &[u8], limit: usize) -> Result<Option<Decoded>, u16> {
    let mut buf = BytesMut::from(input);
    let head = match parse_head(&mut buf, limit) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(Refused(status, _)) => return Err(status.as_u16()),
    };
    let mut state = State::new(head.framing);
    let mut decoded = Decoded {
        headers: head
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        keep_alive: head.keep_alive,
        body: Vec::new(),
        trailers: 0,
        complete: false,
        rest: 0,
    };
    (decoded.body, decoded.trailers, decoded.complete) =
        state.drain(&mut buf).map_err(|_| 400u16)?;
    decoded.rest = buf.len();
    Ok(Some(decoded))
}

/// Serves HTTP/1.x requests on one client connection until either side closes it, or
/// `stop` fires (the request in flight is answered first, with `Connection: close`).
/// `first` holds bytes already read from it.
pub(crate) async fn serve(io: Stream, first: BytesMut, conn: &Conn, stop: &mut Watch) {
    let limit = conn.head_limit();
    let phase = io.phase();
    let tls = io.is_tls();
    let (half, mut w) = tokio::io::split(io);
    let mut reader = Reader { half, buf: first };
    let mut out: Vec<u8> = Vec::with_capacity(OUT_START);
    let mut closing = false;
    // Each request's future runs in this one slot on the heap. Inline, its several KiB would
    // make the connection's future that much larger, and that is copied whole when spawned.
    let mut slot = Box::pin(None);
    loop {
        // The next request head; while none of it has come, `stop` closes the connection.
        let head = loop {
            if !reader.buf.is_empty() {
                match parse_head(&mut reader.buf, limit) {
                    Ok(Some(h)) => break h,
                    // Part of a head, or empty lines, read with the request before: the header
                    // timer must run for it though no new byte may come.
                    Ok(None) => phase.set(Phase::HEAD_BEGUN),
                    Err(r) => return refuse(&mut w, &mut out, r).await,
                }
            }
            let idle = reader.buf.is_empty();
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = reader.poll_fill(cx) {
                    return Poll::Ready(Some(r));
                }
                if idle && stop.poll_fired(cx) {
                    return Poll::Ready(None);
                }
                Poll::Pending
            });
            match read.await {
                Some(Ok(0) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        };
        let Head {
            parts,
            framing,
            keep_alive,
            expect_continue,
            te_trailers,
        } = head;
        // Until the response is written: what is read meanwhile is read ahead, not waited for.
        phase.set(Phase::SERVING);
        closing |= !keep_alive;
        let head_method = parts.method == Method::HEAD;
        let method = parts.method.clone();
        let http10 = parts.version == Version::HTTP_10;
        // A request with a body takes the reader with it; it comes back through `home` once
        // the body was read to its end.
        let (body, mut held, home) = if framing == Framing::None {
            (Body::empty(), Some(reader), None)
        } else {
            let home = Arc::new(Home::default());
            let body = Body {
                reader: Some(reader),
                state: State::new(framing),
                home: Some(Arc::clone(&home)),
                expect_continue,
            };
            (body, None, Some(home))
        };
        let mut req = Request::from_parts(parts, ReqBody::H1(body));
        let upgrade = l7::wants_tunnel(&req).then(|| {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut()
                .insert(ClientUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });
        let expecting = home.as_deref().filter(|_| expect_continue);
        let watch = Watching {
            held: &mut held,
            limit,
            expecting,
            w: &mut w,
        };
        slot.set(Some(l7::handle(conn, req)));
        let resp = respond(slot.as_mut(), watch, stop, &mut closing).await;
        slot.set(None);
        let Some(mut resp) = resp else {
            // The client left: dropping the request cancels it (`client_abort` in the log).
            return;
        };
        if l7::opens_tunnel(&method, resp.status())
            && let Some(tx) = upgrade
        {
            // The tunnel takes the whole socket, with what the client sent after its request.
            let Some(reader) = held.or_else(|| home.and_then(|h| take(&h))) else {
                return;
            };
            phase.set(Phase::TUNNEL);
            out.clear();
            encode_status(&mut out, resp.status());
            encode_fields(&mut out, resp.headers(), false);
            out.extend_from_slice(b"\r\n");
            if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
                return;
            }
            let mut io = reader.half.unsplit(w);
            io.unread(reader.buf.freeze());
            let _ = tx.send(io);
            return;
        }
        closing |= l7::connection_has(resp.headers(), "close");
        // Answered before the request body was all read (an early `413`, a redirect): the
        // connection cannot carry another request, and the client is told so before it sends
        // more (RFC 9112 9.6).
        let cut_short = held.is_none()
            && home
                .as_ref()
                .is_some_and(|h| h.reader.lock().unwrap_or_else(|e| e.into_inner()).is_none());
        closing |= cut_short;
        let framing = response_framing(&resp, head_method, http10);
        // Unknown length to an HTTP/1.0 client: the close ends the body.
        closing |= framing == Out::Close;
        out.clear();
        encode_head(&mut out, &resp, framing, head_method, closing, http10);
        let trailers = (te_trailers && framing == Out::Chunked)
            .then(|| resp.headers().get(header::TRAILER).cloned())
            .flatten();
        let sent = write_body(&mut w, &mut out, resp.body_mut(), framing, trailers).await;
        drop(resp);
        if out.capacity() > KEEP_OUT {
            out = Vec::with_capacity(OUT_START);
        }
        phase.set(Phase::WAITING);
        if sent.is_err() {
            return;
        }
        if cut_short && let Some(reader) = home.as_deref().and_then(take_cut) {
            // The client may still be sending the body: closing with its bytes unread would
            // reset the connection, and the reset can destroy the answer before the client
            // reads it. Shut our side, then read and drop what comes, for a bounded time.
            let io = reader.half.unsplit(w);
            crate::listener::drain_then_close(io, EARLY_ANSWER_DRAIN, EARLY_ANSWER_DRAIN_BYTES)
                .await;
            return;
        }
        if closing {
            // Over plain TCP the close below sends the FIN: a `shutdown` first would be one
            // more system call per connection for the same packets. TLS sends its close_notify.
            if tls {
                let _ = w.shutdown().await;
            }
            return;
        }
        reader = match held.or_else(|| home.and_then(|h| take(&h))) {
            Some(r) => r,
            // The body was not read to its end: what follows it on the wire is unknown.
            None => {
                let _ = w.shutdown().await;
                return;
            }
        };
    }
}

fn take(home: &Home) -> Option<Reader> {
    home.reader.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn take_cut(home: &Home) -> Option<Reader> {
    home.cut.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// What the server loop looks after while a request is being served.
struct Watching<'a> {
    /// The reader, when the request has no body: the client closing the connection cancels the
    /// request, and pipelined bytes are read ahead up to `limit`.
    held: &'a mut Option<Reader>,
    limit: usize,
    /// A request body whose client waits for `100 Continue`: written when the body is first
    /// read.
    expecting: Option<&'a Home>,
    w: &'a mut WriteHalf<Stream>,
}

/// Runs the request to its response while watching the connection (see `Watching`): the
/// client closing it or failing cancels the request (`None`), as hyper's server did. If
/// `stop` has fired by the time the response is ready, it closes the connection.
async fn respond<F>(
    mut handling: Pin<&mut Option<F>>,
    watch: Watching<'_>,
    stop: &Watch,
    closing: &mut bool,
) -> Option<Response<l7::Body>>
where
    F: Future<Output = Response<l7::Body>>,
{
    let Watching {
        held,
        limit,
        mut expecting,
        w,
    } = watch;
    let mut reading = true;
    let mut sent = 0;
    poll_fn(|cx| {
        let Some(handle) = handling.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(resp) = handle.poll(cx) {
            *closing |= stop.is_fired();
            return Poll::Ready(Some(resp));
        }
        if let Some(reader) = held.as_mut() {
            while reading {
                match reader.poll_fill(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => reading = reader.buf.len() < limit,
                    Poll::Pending => break,
                }
            }
        }
        if let Some(home) = expecting {
            home.waker.register(cx.waker());
            if home.wants_continue.load(Ordering::Acquire) {
                while sent < CONTINUE.len() {
                    match Pin::new(&mut *w).poll_write(cx, &CONTINUE[sent..]) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(n)) => sent += n,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                match Pin::new(&mut *w).poll_flush(cx) {
                    Poll::Ready(Ok(())) => expecting = None,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// How a response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Up to the close (HTTP/1.0 client, unknown length).
    Close,
}

/// How `resp` goes to the client: the chunked coding is HTTP/1.1's, so a body of unknown
/// length to an HTTP/1.0 client runs to the close.
fn response_framing(resp: &Response<l7::Body>, head_method: bool, http10: bool) -> Out {
    let status = resp.status();
    if head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Out::None;
    }
    if let Some(n) = resp.body().size_hint().exact() {
        return Out::Length(n);
    }
    if let Some(n) = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(h1::parse_decimal)
    {
        return Out::Length(n);
    }
    if http10 { Out::Close } else { Out::Chunked }
}

fn encode_status(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the header fields; with `framing_own`, the framing and connection fields are left
/// out (written by the caller). Whether there was a `Date` among them.
fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap, framing_own: bool) -> bool {
    let mut date = false;
    for (name, value) in headers {
        date |= name == header::DATE;
        if framing_own
            && (name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    date
}

/// The response head: status line, the response's fields, then ours (framing, `Connection`,
/// `Date` unless it has one).
fn encode_head(
    out: &mut Vec<u8>,
    resp: &Response<l7::Body>,
    framing: Out,
    head_method: bool,
    closing: bool,
    http10: bool,
) {
    let headers = resp.headers();
    encode_status(out, resp.status());
    let has_date = encode_fields(out, headers, true);
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::Close => {}
        Out::None => {
            // The length a GET would have had (HEAD), as the server or our body says it.
            if let Some(v) = headers.get(header::CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else if head_method && let Some(n) = resp.body().size_hint().exact() {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The body could not be sent whole: the connection must close.
struct Cut;

/// Writes `out` (the head) and the body after it. What the body has ready is gathered into
/// one write (up to `WRITE_CHUNK`); when it has nothing more ready, what was gathered is
/// written and flushed. `trailers` is the response's `Trailer` field when the client takes
/// trailers: only the fields it announces are sent. A body that fails or does not match its
/// length is cut (no last chunk), after what did arrive is written.
async fn write_body<W, B>(
    w: &mut W,
    out: &mut Vec<u8>,
    body: &mut B,
    framing: Out,
    trailers: Option<HeaderValue>,
) -> Result<(), Cut>
where
    W: AsyncWrite + Unpin,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut left = match framing {
        Out::Length(n) => n,
        _ => 0,
    };
    let mut ended = framing == Out::None || body.is_end_stream();
    let mut failed = false;
    if ended && framing != Out::None {
        failed |= !finish(out, framing, left, None, trailers.as_ref());
    }
    let mut pos = 0;
    poll_fn(|cx| {
        loop {
            // Gather what the body has ready behind what is already there (the head, first),
            // unless a write of it is under way.
            let mut waiting = false;
            while pos == 0 && !ended && out.len() < WRITE_CHUNK {
                let frame = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => {
                        waiting = true;
                        break;
                    }
                    Poll::Ready(None) => None,
                    Poll::Ready(Some(Ok(f))) => Some(f),
                    Poll::Ready(Some(Err(_))) => {
                        failed = true;
                        ended = true;
                        break;
                    }
                };
                let Some(frame) = frame else {
                    ended = true;
                    failed |= !finish(out, framing, left, None, trailers.as_ref());
                    break;
                };
                match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match framing {
                        Out::Length(_) if data.len() as u64 > left => {
                            // Longer than announced: the rest would be read as a response.
                            failed = true;
                            ended = true;
                        }
                        Out::Length(_) => {
                            left -= data.len() as u64;
                            out.extend_from_slice(&data);
                        }
                        Out::Chunked => {
                            encode_hex(out, data.len());
                            out.extend_from_slice(b"\r\n");
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                        }
                        Out::Close => out.extend_from_slice(&data),
                        Out::None => {}
                    },
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            ended = true;
                            failed |= !finish(out, framing, left, Some(&t), trailers.as_ref());
                        }
                    }
                }
            }
            // Write it: head and body together when the body was ready.
            while pos < out.len() {
                match ready!(Pin::new(&mut *w).poll_write(cx, &out[pos..])) {
                    Ok(0) | Err(_) => return Poll::Ready(Err(Cut)),
                    Ok(n) => pos += n,
                }
            }
            out.clear();
            pos = 0;
            if ended || waiting {
                // Done, or the body has nothing more yet: what was written goes out now.
                ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(|_| Cut)?;
                if ended {
                    return Poll::Ready(if failed { Err(Cut) } else { Ok(()) });
                }
                return Poll::Pending;
            }
        }
    })
    .await
}

/// Ends a body: the last chunk and the trailers it may carry. `false` when a sized body came
/// out short.
fn finish(
    out: &mut Vec<u8>,
    framing: Out,
    left: u64,
    fields: Option<&HeaderMap>,
    announced: Option<&HeaderValue>,
) -> bool {
    match framing {
        Out::Length(_) => left == 0,
        Out::Chunked => {
            out.extend_from_slice(b"0\r\n");
            if let (Some(fields), Some(announced)) = (fields, announced) {
                let announced = announced.to_str().unwrap_or("");
                for (name, value) in fields {
                    let listed = announced
                        .split(',')
                        .any(|a| a.trim().eq_ignore_ascii_case(name.as_str()));
                    if listed {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
            true
        }
        Out::None | Out::Close => true,
    }
}

fn encode_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Answers a request head we refuse, then closes.
async fn refuse(w: &mut WriteHalf<Stream>, out: &mut Vec<u8>, r: Refused) {
    let Refused(status, why) = r;
    let body = format!(
        "{} {}: {why}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    out.clear();
    encode_status(out, status);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\ndate: ");
    date::with(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    if w.write_all(out).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// The `Date` header value, formatted once a second per thread (`http::h2` uses it too).
pub(crate) mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Cached {
        second: u64,
        text: [u8; 29],
    }

    thread_local! {
        static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: 0, text: [0; 29] }) };
    }

    /// Calls `f` with the current date, `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub(crate) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.second != second {
                let s = httpdate::fmt_http_date(now);
                if s.len() == c.text.len() {
                    c.text.copy_from_slice(s.as_bytes());
                }
                c.second = second;
            }
            f(&c.text);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Head>, Refused> {
        parse_head(&mut BytesMut::from(raw), 8192)
    }

    fn status(raw: &str) -> StatusCode {
        match parse(raw) {
            Err(Refused(s, _)) => s,
            Ok(h) => panic!("accepted {raw:?}: {:?}", h.map(|h| h.framing)),
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = parse("POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        assert_eq!(h.parts.uri, "/a?b");
        assert_eq!(h.parts.method, Method::POST);
        // Repeated with the same value: one field passed on.
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            1
        );
        // Chunked beats a length, which is dropped, and the connection is not reused.
        let h = parse("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(!h.parts.headers.contains_key(header::CONTENT_LENGTH));
        let h = parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::None);

        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nX A: b\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert_eq!(
            status("GET / HTTP/2.0\r\n\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
    }

    #[test]
    fn pipelined_requests_decode_one_at_a_time() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                      3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let d = decode_request(input, 8192).unwrap().unwrap();
        assert_eq!(d.body, b"abc");
        assert!(d.complete && d.keep_alive);
        assert_eq!(d.trailers, 1);
        assert_eq!(d.rest, b"GET /b HTTP/1.1\r\n\r\n".len());
        // A body cut short is incomplete; a broken chunk is the client's 400.
        let d = decode_request(b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 8192)
            .unwrap()
            .unwrap();
        assert!(!d.complete);
        let bad = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(decode_request(bad, 8192).err(), Some(400));
    }

    #[test]
    fn connection_and_expect_are_read() {
        let h = parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.expect_continue);
        // Not for a request without a body, and never to HTTP/1.0.
        let h = parse("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue);
        let h = parse("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.expect_continue);
        let h = parse("GET / HTTP/1.1\r\nTE: deflate, trailers\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.te_trailers);
    }

    #[test]
    fn heads_are_taken_whole_and_within_limits() {
        let mut buf = BytesMut::from("GET /a HTTP/1.1\r\nHost: x\r\n");
        assert!(parse_head(&mut buf, 8192).unwrap().is_none());
        buf.extend_from_slice(b"\r\nGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(parse_head(&mut buf, 8192).unwrap().unwrap().parts.uri, "/a");
        assert_eq!(parse_head(&mut buf, 8192).unwrap().unwrap().parts.uri, "/b");
        assert!(buf.is_empty());

        let mut big = BytesMut::from("GET / HTTP/1.1\r\nX: ");
        big.extend_from_slice(&[b'a'; 9000]);
        let e = parse_head(&mut big, 8192).err().unwrap();
        assert_eq!(e.0, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(status(&many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    fn head_of(resp: Response<l7::Body>, head_method: bool, http10: bool) -> String {
        let framing = response_framing(&resp, head_method, http10);
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &resp,
            framing,
            head_method,
            framing == Out::Close,
            http10,
        );
        String::from_utf8(out).unwrap()
    }

    fn full(body: &'static str) -> Response<l7::Body> {
        Response::new(http_body_util::Either::Right(http_body_util::Full::new(
            Bytes::from_static(body.as_bytes()),
        )))
    }

    #[test]
    fn response_heads_carry_our_framing_and_a_date() {
        let mut resp = full("hello");
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let h = head_of(resp, false, false);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(h.contains("content-length: 5\r\n"), "{h}");
        assert!(!h.contains("99") && !h.contains("connection"), "{h}");
        assert!(
            h.contains("\r\ndate: ") && h.ends_with(" GMT\r\n\r\n"),
            "{h}"
        );

        // HEAD: the length the body would have had, and no body.
        let h = head_of(full("hello"), true, false);
        assert!(h.contains("content-length: 5\r\n"), "{h}");
        // A server's own Date is kept, not doubled.
        let mut resp = full("");
        resp.headers_mut().insert(
            header::DATE,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        let h = head_of(resp, false, true);
        assert_eq!(h.matches("date:").count(), 1, "{h}");
        // HTTP/1.0 keep-alive is said out loud.
        assert!(h.contains("connection: keep-alive\r\n"), "{h}");
    }

    type Frames = http_body_util::StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, io::Error>>>,
    >;

    fn frames(f: Vec<Result<Frame<Bytes>, io::Error>>) -> Frames {
        http_body_util::StreamBody::new(futures_util::stream::iter(f))
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, io::Error> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    async fn written(
        body: Vec<Result<Frame<Bytes>, io::Error>>,
        framing: Out,
        announced: Option<&'static str>,
    ) -> (bool, String) {
        let mut w: Vec<u8> = Vec::new();
        let mut out = b"HEAD\r\n".to_vec();
        let announced = announced.map(HeaderValue::from_static);
        let ok = write_body(&mut w, &mut out, &mut frames(body), framing, announced)
            .await
            .is_ok();
        (ok, String::from_utf8(w).unwrap())
    }

    #[tokio::test]
    async fn bodies_are_framed_and_cut_when_they_break() {
        let (ok, w) = written(vec![data("ab"), data(""), data("cde")], Out::Chunked, None).await;
        assert!(ok);
        assert_eq!(w, "HEAD\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");

        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let body = vec![data("x"), Ok(Frame::trailers(t))];
        let (ok, w) = written(body, Out::Chunked, Some("grpc-status")).await;
        assert!(ok);
        assert!(w.ends_with("1\r\nx\r\n0\r\ngrpc-status: 0\r\n\r\n"), "{w}");

        let (ok, w) = written(vec![data("abc")], Out::Length(3), None).await;
        assert!(ok);
        assert_eq!(w, "HEAD\r\nabc");
        // Shorter or longer than its length, or failing: cut, with no last chunk.
        assert!(!written(vec![data("ab")], Out::Length(3), None).await.0);
        let (ok, w) = written(vec![data("abcd")], Out::Length(3), None).await;
        assert!(!ok);
        assert_eq!(w, "HEAD\r\n");
        let body = vec![data("ab"), Err(io::Error::other("server reset"))];
        let (ok, w) = written(body, Out::Chunked, None).await;
        assert!(!ok);
        assert_eq!(w, "HEAD\r\n2\r\nab\r\n");
        // Up to the close: the bytes as they are.
        let (ok, w) = written(vec![data("ab"), data("c")], Out::Close, None).await;
        assert!(ok);
        assert_eq!(w, "HEAD\r\nabc");
    }

    /// Records each write it takes.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_ready_body_goes_out_with_its_head_in_one_write() {
        let mut w = Writes::default();
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec();
        let mut body = frames(vec![data("he"), data("llo")]);
        assert!(
            write_body(&mut w, &mut out, &mut body, Out::Length(5), None)
                .await
                .is_ok()
        );
        assert_eq!(w.0.len(), 1, "one write of head and body");
        assert!(w.0[0].ends_with(b"\r\n\r\nhello"));
    }

    #[test]
    fn hex_chunk_sizes() {
        for (n, want) in [(0, "0"), (10, "a"), (255, "ff"), (65536, "10000")] {
            let mut out = Vec::new();
            encode_hex(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn trailers_only_announced_fields() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("x-secret", HeaderValue::from_static("1"));
        let announced = HeaderValue::from_static("grpc-status, grpc-message");
        let mut out = Vec::new();
        assert!(finish(
            &mut out,
            Out::Chunked,
            0,
            Some(&t),
            Some(&announced)
        ));
        assert_eq!(out, b"0\r\ngrpc-status: 0\r\n\r\n");
        // A sized body that came out short is cut.
        assert!(!finish(&mut Vec::new(), Out::Length(3), 2, None, None));
    }
}
