//! Our HTTP/1.1 client side of the L7 data plane: on one upstream connection, writes a request
//! head and streams its body while watching for the response, parses the response head
//! (`httparse`), and streams the response body (Content-Length, chunked with trailers, or up
//! to the close) straight off the socket, handing the connection back to its server's pool the
//! moment the last body byte is read. Everything runs in the task of the client's request.
//!
//! It owns HTTP/1.1 message framing towards servers: which requests and responses have a body
//! and how long it is, chunked coding both ways, skipping interim (`1xx`) responses, and
//! whether a connection may be reused. It does not own header rewriting, pooling policy,
//! retries or timeouts (`http::forward`).
//!
//! NOTE: hand-written rather than hyper's client connection, which runs every upstream
//! connection in a task of its own and hands each request, response and body chunk across
//! channels: per keep-alive request that was two extra task wake-ups, three channels and a
//! third of all instructions (callgrind). HTTP/2 upstreams and HTTP/1.1 upgrades (WebSocket),
//! which need a connection driven on its own, still go through hyper.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::*;
use crate::http::{HOP_BY_HOP, UpIo};

/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

/// Where a connection goes back once its response was read to its end: its server's pool.
pub(crate) trait Checkin: Send + Sync {
    fn checkin(&self, conn: Conn);
}

/// One HTTP/1.1 connection to a server, with what has been read from it and not used yet.
pub(crate) struct Conn {
    io: UpIo,
    buf: BytesMut,
    /// The response timer, made at the first request and then moved lazily (see
    /// `timed_out`).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Part of the current response was read since the last wait (see `poll_response`).
    unacked: bool,
    /// The thread that made it (`thread_tag`): its socket and timer belong to that thread's
    /// runtime, so with one runtime per thread the pool hands it back to that thread first.
    pub(crate) home: usize,
}

/// A small number naming the calling thread, for `Conn::home`.
pub(crate) fn thread_tag() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static TAG: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|t| *t)
}

impl Conn {
    pub(crate) fn new(io: UpIo) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            timer: None,
            home: thread_tag(),
            unacked: false,
        }
    }

    /// Whether `deadline` has passed; if not, the timer is set to wake the task by then.
    /// NOTE: the timer is re-armed only when the deadline is earlier than where it is armed,
    /// or when it fires early: each request's deadline is later than the one before, so on a
    /// busy connection the timer is registered about once per timeout instead of once per
    /// request (registering and removing a timer was about 800 instructions a request).
    fn timed_out(&mut self, deadline: tokio::time::Instant, cx: &mut Context<'_>) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }

    /// Whether an idle connection can take a request: the server has not closed it or sent
    /// anything unasked. Looks without waiting (a closed socket is readable at once), so a
    /// connection the server timed out is not picked and the request is not lost on it.
    pub(crate) fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match self.poll_fill(&mut cx) {
            Poll::Pending => self.buf.is_empty(),
            Poll::Ready(_) => false,
        }
    }

    /// `poll_fill` for a response being read. When it must wait for more after having read
    /// part of the response, what was read is acknowledged at once (`UpIo::ack_now`): a
    /// server with Nagle on that wrote the head and the body in two sends holds the body until
    /// the head is acknowledged, and Linux delays that ACK by about 40 ms on an interactive
    /// connection (HAProxy 2.6 and nginx 1.22 stall so; tests/nagle_upstream.rs). A response
    /// read whole in one go costs no extra system call.
    fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let r = self.poll_fill(cx);
        match r {
            Poll::Ready(Ok(n)) if n > 0 => self.unacked = true,
            Poll::Pending if self.unacked => {
                self.unacked = false;
                self.io.ack_now();
            }
            _ => {}
        }
        r
    }

    /// Reads what is available into `buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A request head ready to be written, and how its body is framed.
pub(crate) struct RequestHead {
    bytes: Vec<u8>,
    framing: Framing,
    /// A `HEAD` request: the response has no body whatever its headers say.
    head_method: bool,
    /// A `CONNECT` request: a `2xx` to it makes the connection a tunnel (RFC 9112 6.3).
    connect: bool,
}

impl RequestHead {
    /// Encodes `parts` as an HTTP/1.1 request head (origin-form target, lower-case names).
    /// The body is framed by its `Content-Length` if it has one, else by its known size, else
    /// chunked; a request whose body is empty from the start is sent as it is.
    /// Transfer-Encoding must have been stripped already (it is hop-by-hop here).
    pub(crate) fn encode(
        parts: &http::request::Parts,
        body_empty: bool,
        exact: Option<u64>,
    ) -> Self {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut bytes = Vec::with_capacity(256 + parts.headers.len() * 32);
        bytes.extend_from_slice(parts.method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        let mut length = None;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                length = value.to_str().ok().and_then(parse_decimal);
            }
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let framing = match (body_empty, length, exact) {
            (true, _, _) => Framing::None,
            (false, Some(n), _) => Framing::Length(n),
            (false, None, Some(n)) => {
                bytes.extend_from_slice(b"content-length: ");
                bytes.extend_from_slice(n.to_string().as_bytes());
                bytes.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            (false, None, None) => {
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        };
        bytes.extend_from_slice(b"\r\n");
        RequestHead {
            bytes,
            framing,
            head_method: parts.method == Method::HEAD,
            connect: parts.method == Method::CONNECT,
        }
    }
}

/// A response head, and what the exchange learnt about its body and the connection.
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The end-to-end fields: hop-by-hop ones (RFC 9110 7.6.1), Transfer-Encoding and those
    /// the `Connection` header names are left out, as `crate::http::strip_hop_by_hop` does.
    pub(crate) headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Sends one request on `conn` and reads the response head. The body (if any) is streamed
/// while the socket is watched for the response: a server that answers early (a `413`, a
/// redirect) is heard without waiting for a body it will not read; the connection is then
/// not reused. Interim `1xx` responses other than `101` are skipped. Without a response head
/// by `deadline`, it fails with `TimedOut`.
pub(crate) async fn exchange<B>(
    conn: &mut Conn,
    req: &RequestHead,
    mut body: Option<Pin<&mut B>>,
    deadline: tokio::time::Instant,
) -> Result<ResponseHead, Error>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut out = Outgoing {
        head: &req.bytes,
        parts: VecDeque::new(),
        ended: false,
    };
    let mut sent_all = false;
    let mut write_error: Option<io::Error> = None;
    let mut got_bytes = !conn.buf.is_empty();
    // Nothing of this response is read yet: its first wait needs no ACK.
    conn.unacked = false;
    poll_fn(|cx| {
        // Write side: as much of the head and body as the socket takes now.
        while !sent_all && write_error.is_none() {
            if !out.is_empty() {
                match out.poll_write(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => write_error = Some(e),
                    Poll::Pending => break,
                }
                continue;
            }
            let Some(b) = body.as_mut() else {
                match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => sent_all = true,
                    Poll::Ready(Err(e)) => write_error = Some(e),
                    Poll::Pending => break,
                }
                continue;
            };
            match b.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    // Waiting on the client: push out what was written so far.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut conn.io).poll_flush(cx) {
                        write_error = Some(e);
                    }
                    break;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::ClientBody(e.into()))),
                Poll::Ready(Some(Ok(frame))) => out.frame(frame, req.framing),
                Poll::Ready(None) => {
                    if req.framing == Framing::Chunked && !out.ended {
                        out.push(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    body = None;
                }
            }
        }
        // Read side: the response head, once it is all here.
        loop {
            let parsed = match conn.buf.is_empty() {
                true => None,
                false => parse_head(&mut conn.buf, req.head_method)?,
            };
            if let Some(mut head) = parsed {
                if req.connect && head.status.is_success() {
                    // What follows is the tunnel's, not a message: never pooled, no body read.
                    // (`answers::refuse` refuses CONNECT before it gets here; this keeps the pool
                    // safe whatever sends one.)
                    head.framing = Framing::None;
                    head.keep_alive = false;
                }
                if !sent_all {
                    // The rest of the request body is not sent: the connection is done.
                    head.keep_alive = false;
                }
                return Poll::Ready(Ok(head));
            }
            let filled = match conn.poll_response(cx) {
                Poll::Pending if conn.timed_out(deadline, cx) => {
                    return Poll::Ready(Err(Error::TimedOut));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            match filled {
                Ok(0) if got_bytes => {
                    return Poll::Ready(Err(Error::Invalid("connection closed mid-head")));
                }
                Ok(0) => return Poll::Ready(Err(Error::Closed(write_error.take()))),
                Ok(_) => got_bytes = true,
                Err(e) if got_bytes => return Poll::Ready(Err(Error::Io(e))),
                Err(e) => return Poll::Ready(Err(Error::Closed(Some(e)))),
            }
        }
    })
    .await
}

/// Bytes queued for the socket: what is left of the request head, then body data with its
/// chunk framing. (The head is borrowed, and a bodiless request allocates nothing here.)
struct Outgoing<'a> {
    head: &'a [u8],
    parts: VecDeque<Bytes>,
    /// The last chunk went out (with the trailers): nothing more may follow.
    ended: bool,
}

impl Outgoing<'_> {
    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.parts.is_empty()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.parts.push_back(b);
        }
    }

    /// Queues one frame of the request body as `framing` wants it. Trailers go out only in
    /// chunked coding (there is nowhere to put them otherwise, as in hyper).
    fn frame(&mut self, frame: Frame<Bytes>, framing: Framing) {
        match frame.into_data() {
            Ok(data) if framing == Framing::Chunked => {
                if !data.is_empty() {
                    self.push(Bytes::from(format!("{:x}\r\n", data.len())));
                    self.push(data);
                    self.push(Bytes::from_static(b"\r\n"));
                }
            }
            Ok(data) => self.push(data),
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    let mut t = b"0\r\n".to_vec();
                    for (name, value) in &trailers {
                        t.extend_from_slice(name.as_str().as_bytes());
                        t.extend_from_slice(b": ");
                        t.extend_from_slice(value.as_bytes());
                        t.extend_from_slice(b"\r\n");
                    }
                    t.extend_from_slice(b"\r\n");
                    self.push(Bytes::from(t));
                    self.ended = true;
                }
            }
        }
    }

    /// Writes until everything queued is out (`Ready(Ok)`) or the socket is full.
    fn poll_write(&mut self, io: &mut UpIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            if self.parts.is_empty() {
                // Only the head (a bodiless request): a plain write is a `send(2)`, which the
                // kernel takes a little more directly than a one-slice `writev(2)`.
                let n = ready!(Pin::new(&mut *io).poll_write(cx, self.head))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.head = &self.head[n..];
                continue;
            }
            let n = {
                let mut slices = [io::IoSlice::new(&[]); 4];
                let mut k = 0;
                if !self.head.is_empty() {
                    slices[0] = io::IoSlice::new(self.head);
                    k = 1;
                }
                for p in self.parts.iter().take(slices.len() - k) {
                    slices[k] = io::IoSlice::new(p);
                    k += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(self.head.len());
            self.head = &self.head[from_head..];
            let mut n = n - from_head;
            while n > 0 {
                let front = self.parts.front_mut().expect("written bytes were queued");
                if n >= front.len() {
                    n -= front.len();
                    self.parts.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Parses a complete response head off the front of `buf`, skipping interim responses;
/// `None` until all of it is there.
fn parse_head(buf: &mut BytesMut, head_method: bool) -> Result<Option<ResponseHead>, Error> {
    loop {
        let mut spots = [Spot::default(); MAX_HEADERS];
        let (len, code, minor, count) = {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(Error::Invalid("response head too large"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(Error::Invalid("too many header fields"));
                }
                Err(_) => return Err(Error::Invalid("malformed response head")),
            };
            Spot::record(buf, resp.headers, &mut spots);
            (
                len,
                resp.code.unwrap_or(0),
                resp.version.unwrap_or(1),
                resp.headers.len(),
            )
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code out of range"))?;
        let raw = buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Room for what the proxy may add to a response (a route's header rules, a sticky
        // cookie): a map that grows is copied.
        let mut headers = HeaderMap::with_capacity(count + 2);
        let mut length: Option<u64> = None;
        let mut bad_length = false;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        // Headers the `Connection` header names (rare): removed once all are in.
        let mut named: Vec<HeaderName> = Vec::new();
        for spot in &spots[..count] {
            let (name, value) = spot
                .field(&raw)
                .ok_or(Error::Invalid("malformed header field"))?;
            if name == header::CONTENT_LENGTH {
                for v in value.as_bytes().split(|&b| b == b',') {
                    match std::str::from_utf8(v).ok().and_then(parse_decimal) {
                        Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                        _ => bad_length = true,
                    }
                }
            } else if name == header::TRANSFER_ENCODING {
                // `gzip, chunked` is chunked, `chunked, gzip` is delimited by the close.
                chunked = Some(chunked_last(&value));
            } else if name == header::CONNECTION {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        close &= minor != 0;
                    } else if let Ok(h) = HeaderName::from_bytes(token)
                        && h != header::HOST
                    {
                        named.push(h);
                    }
                }
            }
            // Hop-by-hop fields stay on this hop; the client's side frames the body itself.
            if name != header::TRANSFER_ENCODING && !HOP_BY_HOP.contains(&name) {
                headers.append(name, value);
            }
        }
        for h in &named {
            headers.remove(h);
        }
        if chunked.is_some() && (length.is_some() || bad_length) {
            // RFC 9112 6.3: the length is wrong and must not be passed on (the client's side
            // would frame the body by it and cut it short without an error).
            headers.remove(header::CONTENT_LENGTH);
        }
        let bodiless = head_method
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // RFC 9112 6.3: Transfer-Encoding beats Content-Length (and then the connection is not
        // trusted for another message); a bad Content-Length is an unrecoverable error.
        let framing = match (bodiless, chunked, length) {
            (true, _, _) => Framing::None,
            (false, Some(true), _) => Framing::Chunked,
            (false, Some(false), _) => Framing::Close,
            (false, None, _) if bad_length => return Err(Error::Invalid("bad content-length")),
            (false, None, Some(n)) => Framing::Length(n),
            (false, None, None) => Framing::Close,
        };
        let keep_alive = !close
            && framing != Framing::Close
            && !(chunked.is_some() && length.is_some())
            && status != StatusCode::SWITCHING_PROTOCOLS;
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// A response body read straight off its connection. When it is read to its end on a
/// connection that may be reused, the connection goes back to `server`'s pool; dropped before
/// that, it closes the connection.
pub(crate) struct Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    /// The pool to return the connection to (`None`: close it when done).
    server: Option<Arc<dyn Checkin>>,
    /// A failure held back for one poll (see `poll_frame`).
    failed: Option<Error>,
}

impl Body {
    /// The body that follows `head` on `conn`; returned to `server`'s pool once done (if
    /// given, and the connection may be reused).
    pub(crate) fn new(conn: Conn, head: &ResponseHead, server: Option<Arc<dyn Checkin>>) -> Body {
        let state = State::new(head.framing);
        let mut body = Body {
            conn: Some(conn),
            state,
            keep_alive: head.keep_alive,
            server,
            failed: None,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it is clean.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive
            && conn.buf.is_empty()
            && let Some(server) = self.server.take()
        {
            server.checkin(conn);
        }
    }

    /// The body broke: the connection is closed and the error reported at the next poll.
    /// NOTE: held back one poll on purpose. A server side that gathers the response head and
    /// the data frames it can get into one write may drop that unwritten output when the body
    /// fails (hyper's HTTP/1 server did); the `Pending` lets it flush, so the client gets the
    /// head and the data that did arrive (a visibly truncated answer, as from HAProxy) rather
    /// than a bare close. Our HTTP/1.x server writes what it gathered before it looks at the
    /// error anyway; for hyper's HTTP/2 server the hold-back still applies.
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.state = State::Done;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a body not done has its connection")
    }

    /// Reads more; the end of the stream is an error unless the body runs to the close.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        match ready!(self.conn().poll_response(cx)) {
            Ok(0) if matches!(self.state, State::Close) => Poll::Ready(Ok(false)),
            Ok(0) => Poll::Ready(Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection mid-body",
            )))),
            Ok(_) => Poll::Ready(Ok(true)),
            Err(e) => Poll::Ready(Err(Error::Io(e))),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.state.step(&mut conn.buf) {
                Ok(Step::Frame(f)) => {
                    if matches!(this.state, State::Done) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e, cx),
            }
            match ready!(this.poll_more(cx)) {
                Ok(true) => {}
                Ok(false) => {
                    // The close ends a body delimited by it.
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Err(e) => return this.fail(e, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.size_hint()
    }
}

/// A whole response decoded from memory by the same parser and body decoder as the data
/// plane: the in-memory form of `exchange` plus `Body`, for the fuzz target.
#[derive(Debug)]
pub struct Decoded {
    pub status: u16,
    pub keep_alive: bool,
    /// The body's data, in order.
    pub body: Vec<u8>,
    /// Trailer fields.
    pub trailers: usize,
    /// The body ended by its own framing (or, delimited by the close, at the end of `input`).
    pub complete: bool,
    /// Bytes of `input` after the message.
    pub rest: usize,
}

/// Decodes the response at the start of `input` (the answer to a `HEAD` if `head_method`);
/// `Ok(None)` while its head is incomplete.
pub fn decode_response(input: &[u8], head_method: bool) -> Result<Option<Decoded>, Error> {
    let mut buf = BytesMut::from(input);
    let Some(head) = parse_head(&mut buf, head_method)? else {
        return Ok(None);
    };
    let mut state = State::new(head.framing);
    let mut d = Decoded {
        status: head.status.as_u16(),
        keep_alive: head.keep_alive,
        body: Vec::new(),
        trailers: 0,
        complete: false,
        rest: 0,
    };
    let ended;
    (d.body, d.trailers, ended) = state.drain(&mut buf)?;
    d.complete = ended || matches!(state, State::Close);
    d.rest = buf.len();
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_method: bool) -> Result<Option<ResponseHead>, Error> {
        parse_head(&mut BytesMut::from(bytes), head_method)
    }

    #[test]
    fn chunk_size_lines_are_parsed_strictly() {
        let ok = |line: &[u8]| parse_chunk_size(line).map_err(|e| format!("{e:?}"));
        assert_eq!(ok(b"3\r\nabc").unwrap(), Some((3, 3)));
        assert_eq!(ok(b"0\r\n").unwrap(), Some((3, 0)));
        assert_eq!(ok(b"00000000000000000000a\r\n").unwrap(), Some((23, 10)));
        assert_eq!(ok(b"A \t;name=\"v a\"\t;x\r\n").unwrap(), Some((19, 10)));
        assert_eq!(
            ok(b"fffffffffffff\r\n").unwrap(),
            Some((15, MAX_CHUNK_SIZE))
        );
        // Partial lines wait for more.
        for partial in [&b""[..], b"3", b"3 ", b"3;ext", b"3\r", b"3;a=b\r"] {
            assert_eq!(ok(partial).unwrap(), None, "{partial:?}");
        }
        // No hex digit, stray characters, bare LF or CR, control characters, too large.
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b"  \r\n",
            b" 3\r\n",
            b"3x\r\n",
            b"-3\r\n",
            b"0x3\r\n",
            b"3\n",
            b"3;a\nX\r\n",
            b"3;a\rX\r\n",
            b"3;a\x01b\r\n",
            b"3;a\x7fb\r\n",
            b"3\rX",
            b"10000000000000\r\n",
            b"fffffffffffffffffff",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn content_length_is_at_most_i64_max() {
        assert_eq!(parse_decimal("9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(parse_decimal("9223372036854775808"), None);
        assert_eq!(parse_decimal("18446744073709551615"), None);
    }

    #[test]
    fn framing_follows_rfc9112() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::None, true));
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::None);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 2\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn hop_by_hop_fields_are_left_out() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
              X-Secret: 1\r\nTransfer-Encoding: chunked\r\nHost: h\r\nX-Up: a\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-up"]);
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let h = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTZ/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                head(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(head(huge.as_bytes(), false).is_err());
        let same = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false);
        assert_eq!(same.unwrap().unwrap().framing, Framing::Length(5));
    }

    #[test]
    fn bodies_decode_by_their_framing() {
        let d = decode_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;x=y\r\nhello\r\nA\r\n and more!\r\n0\r\nx-sum: 1\r\n\r\nNEXT",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.body, b"hello and more!");
        assert_eq!((d.trailers, d.complete, d.rest), (1, true, 4));
        let d = decode_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", false)
            .unwrap()
            .unwrap();
        assert_eq!((d.body.as_slice(), d.complete), (&b"ab"[..], false));
        let d = decode_response(b"HTTP/1.0 200 OK\r\n\r\nto the end", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.body.as_slice(), d.complete, d.keep_alive),
            (&b"to the end"[..], true, false)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
        ] {
            assert!(
                decode_response(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_heads_frame_their_bodies() {
        let req = |cl: Option<&str>| {
            let mut r = http::Request::post("/a?b=1");
            if let Some(cl) = cl {
                r = r.header("content-length", cl);
            }
            r.header("host", "x").body(()).unwrap().into_parts().0
        };
        let h = RequestHead::encode(&req(None), true, Some(0));
        assert_eq!(h.bytes, b"POST /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(h.framing, Framing::None);
        let h = RequestHead::encode(&req(Some("3")), false, Some(3));
        assert_eq!(h.framing, Framing::Length(3));
        let h = RequestHead::encode(&req(None), false, Some(4));
        assert!(h.bytes.ends_with(b"content-length: 4\r\n\r\n"));
        let h = RequestHead::encode(&req(None), false, None);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.bytes.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    /// The lazily moved response timer times each request out at its own deadline: not late
    /// for the first, and not early for a later one while it is still armed at the first one's.
    #[tokio::test(start_paused = true)]
    async fn each_request_times_out_at_its_own_deadline() {
        use tokio::io::AsyncWriteExt;
        use tokio::time::{Duration, Instant};

        let (ours, mut theirs) = tokio::io::duplex(4096);
        let kill = crate::signal::Signal::new();
        let io: Box<dyn crate::http::Io> = Box::new(ours);
        let mut conn = Conn::new(crate::http::Killable::new(io, kill.watch()));
        let parts = http::Request::get("/").body(()).unwrap().into_parts().0;
        let head = RequestHead::encode(&parts, true, None);
        let no_body: Option<Pin<&mut http_body_util::Empty<Bytes>>> = None;

        let t0 = Instant::now();
        let r = exchange(&mut conn, &head, no_body, t0 + Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Error::TimedOut)), "{:?}", r.err());
        assert_eq!(t0.elapsed(), Duration::from_secs(5));

        // Answered after 7 s, within this request's 10 s (the timer was first armed at the
        // first request's deadline, which passes meanwhile).
        let t1 = Instant::now();
        let answer = async {
            tokio::time::sleep(Duration::from_secs(7)).await;
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        };
        let no_body: Option<Pin<&mut http_body_util::Empty<Bytes>>> = None;
        let (r, ()) = tokio::join!(
            exchange(&mut conn, &head, no_body, t1 + Duration::from_secs(10)),
            answer
        );
        assert_eq!(r.unwrap().status, StatusCode::OK);
        assert_eq!(t1.elapsed(), Duration::from_secs(7));
    }
}
