//! Our HTTP/1.x server side of the L7 data plane: on one client connection, reads request
//! heads (`httparse`), hands each request to its handler (a `hyper::service::Service`, as
//! hyper's HTTP/2 server takes) with its body read straight off the socket (Content-Length or
//! chunked, with trailers), and writes the response head and body back, gathering what the
//! body has ready into one write. Requests on a connection are served one after another
//! (pipelined ones from the bytes already read), all in the connection's task.
//!
//! It owns HTTP/1.x message framing towards clients: which requests have a body and how long
//! it is (and refusing ambiguous framing: `400`, `431`, `505`), `Expect: 100-continue`,
//! keep-alive and `Connection: close`, response framing (a length, chunked, or up to the close
//! for an HTTP/1.0 client), the `Date` header, trailers for clients that accept them, handing
//! the socket to a tunnel after a `101`, and noticing a client that leaves while its request is
//! being served. It also owns the two waits that only it can see the ends of: the header
//! timeout (`408` when a head, empty lines before it included, is not complete within
//! `header_timeout` of its first byte) and the wait for the next request (`idle_timeout` after
//! a response, then a close). The first-byte wait of a new connection and stalled writes are
//! `l7::ClientStream`'s, which wraps the socket; what a request means is the handler's.
//!
//! NOTE: hand-written rather than hyper's server connection: that parses into hyper's own
//! buffers and state machine, then runs the service future, the request body and the response
//! body through its dispatcher; per keep-alive request that was about a third of our
//! instructions (callgrind). HTTP/2 clients still go to hyper's server.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use super::request::*;
use super::response::*;
use super::{Framing, State, Step};
use crate::http::{self as l7, Stream};
use crate::signal::Watch;

/// Room made in the read buffer before each read (hyper starts with 8 KiB too).
const READ_SIZE: usize = 8 * 1024;
/// A write buffer grown past this by a large response is not kept for the next one.
const KEEP_OUT: usize = 16 * 1024;

/// Room the output buffer starts with: a typical response head and a small body, without the
/// buffer growing four times on each new connection's first response.
const OUT_START: usize = 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// After a handoff (`Signal::fire_handoff`): how long a connection that waits for a request
/// keeps waiting for one more, to answer it with `Connection: close`. A client that has just
/// read a response may be sending its next request on the connection; closing under it would
/// fail that request, where another process now serves the reconnect. (HAProxy's
/// `idle-close-on-response` does the same.) A client idle for longer is closed.
const LAST_REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// After an answer sent before the request body was all read: how long, and how many bytes,
/// the rest of the body is read and dropped before the close (nginx's `lingering_time` is
/// 30 s; a client that saw the answer and its `Connection: close` stops well before this).
const EARLY_ANSWER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
const EARLY_ANSWER_DRAIN_BYTES: usize = 32 * 1024 * 1024;

/// Buffers of connections that went idle, kept per thread for the next connection that gets
/// bytes, as HAProxy recycles its buffers: releasing them at every wait for a request (see
/// `Reader::poll_fill_or_release`) would otherwise cost every keep-alive request a trip through
/// the allocator's slow path for both. At most `SPARE_BUFFERS` of each are kept per thread.
///
/// NOTE: hand-written: a stack in a thread-local is all it takes, and the pool crates add
/// locking or object wrappers that cost more than the allocator does.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::{OUT_START, READ_SIZE};

    /// Buffers of each kind kept per thread: 512 KiB of read buffers at most.
    const SPARE_BUFFERS: usize = 64;

    thread_local! {
        static READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static OUT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty read buffer with room for `READ_SIZE`.
    pub(super) fn read_buf() -> BytesMut {
        let mut b = READ
            .with(|r| r.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE));
        // A buffer still shared with bytes handed out earlier gets a new allocation here.
        b.reserve(READ_SIZE);
        b
    }

    /// Keeps an emptied read buffer for `read_buf`, if there is room.
    pub(super) fn put_read_buf(mut b: BytesMut) {
        b.clear();
        if b.capacity() >= READ_SIZE / 2 {
            READ.with(|r| {
                let mut r = r.borrow_mut();
                if r.len() < SPARE_BUFFERS {
                    r.push(b);
                }
            });
        }
    }

    /// An empty output buffer with room for `OUT_START`.
    pub(super) fn out() -> Vec<u8> {
        OUT.with(|o| o.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(OUT_START))
    }

    /// Keeps an emptied output buffer for `out`, if there is room.
    pub(super) fn put_out(mut b: Vec<u8>) {
        b.clear();
        if b.capacity() >= OUT_START {
            OUT.with(|o| {
                let mut o = o.borrow_mut();
                if o.len() < SPARE_BUFFERS {
                    o.push(b);
                }
            });
        }
    }
}

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
    /// Reads what is available into `buf`; `Ok(0)` is the end of the stream. A buffer without
    /// room (released while idle, see `poll_fill_or_release`) gets one only once bytes arrive:
    /// they are read onto the stack, then copied into a new buffer (a request head is a few
    /// hundred bytes; the copy is cheaper than keeping 8 KiB per waiting connection).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut self.half).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n > 0 {
                self.buf = spare::read_buf();
                self.buf.extend_from_slice(read.filled());
            }
            return Poll::Ready(Ok(n));
        }
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.half), cx, &mut self.buf)
    }

    /// `poll_fill`, and if nothing is there to read and nothing is held, the buffer goes back
    /// to the allocator while the connection waits (HAProxy releases an idle connection's
    /// buffers the same way): an idle keep-alive connection then holds no buffer at all.
    fn poll_fill_or_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let r = self.poll_fill(cx);
        if r.is_pending() && self.buf.is_empty() && self.buf.capacity() != 0 {
            spare::put_read_buf(std::mem::take(&mut self.buf));
        }
        r
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

/// What a connection's requests may take: the frontend's head size limit and timeouts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest request head taken (`max_header_size`).
    pub(crate) head: usize,
    /// From a head's first byte (or the first empty line before it) to its end.
    pub(crate) header_timeout: std::time::Duration,
    /// From the end of a response to the next request's first byte.
    pub(crate) idle_timeout: std::time::Duration,
}

/// Serves HTTP/1.x requests on one client connection with `svc` until either side closes it,
/// or `stop` fires (the request in flight is answered first, with `Connection: close`).
/// `first` holds bytes already read from it. Returns the refusal that ended the connection
/// (`400`, `408`, `414`, `431`, `505`; already answered and closed), if one did, for the
/// caller's log.
///
/// Not an `async fn`: one keeps its arguments for its whole life, and `io` is moved into the
/// split halves before the first wait (the future is every connection's, idle or not).
pub(crate) fn serve<S, B>(
    mut io: Stream,
    first: BytesMut,
    limits: Limits,
    stop: &mut Watch,
    svc: &S,
) -> impl Future<Output = Option<Refused>>
where
    S: hyper::service::Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let tls = io.is_tls();
    // The connection's one timer: the header timeout while a head is coming, the idle timeout
    // between requests. Read bytes already in hand (`first`) begin a head now.
    let mut clock = io.take_clock();
    let (half, mut w) = tokio::io::split(io);
    let mut reader = Reader { half, buf: first };
    async move {
        let limit = limits.head;
        // Allocated for each response and released while the connection waits (see `idle`).
        let mut out: Vec<u8> = Vec::new();
        // Waiting for one last request after a handoff (`LAST_REQUEST_WAIT`).
        let mut last_call = false;
        loop {
            // The next request head. Until its first byte (empty lines count) the idle clock runs,
            // and `stop` closes the connection; from then, the header clock. The clock is moved
            // only when a read must wait: a head that is already here costs no timer work.
            let mut begun = !reader.buf.is_empty();
            let mut timing_head = false;
            let head = loop {
                if !reader.buf.is_empty() {
                    match parse_head(&mut reader.buf, limit) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                        Err(r) => {
                            // Boxed: a rare path, kept out of every connection's future.
                            Box::pin(refuse(&mut w, &mut out, &r)).await;
                            return Some(r);
                        }
                    }
                }
                if begun && !timing_head {
                    timing_head = true;
                    clock.set(limits.header_timeout);
                }
                let idle = reader.buf.is_empty();
                let read = poll_fn(|cx| {
                    if !idle {
                        if let Poll::Ready(r) = reader.poll_fill(cx) {
                            return Poll::Ready(Wait::Read(r));
                        }
                    } else if let Poll::Ready(r) = reader.poll_fill_or_release(cx) {
                        return Poll::Ready(Wait::Read(r));
                    } else if out.capacity() != 0 {
                        // Waiting for the next request: nothing to write either.
                        spare::put_out(std::mem::take(&mut out));
                    }
                    if idle && !last_call && stop.poll_fired(cx) {
                        return Poll::Ready(Wait::Stop);
                    }
                    if clock.poll_expired(cx) {
                        return Poll::Ready(Wait::Expired);
                    }
                    Poll::Pending
                });
                match read.await {
                    Wait::Read(Ok(0) | Err(_)) => return None,
                    Wait::Stop if stop.is_handoff() => {
                        last_call = true;
                        clock.set(LAST_REQUEST_WAIT);
                    }
                    Wait::Stop => return None,
                    Wait::Read(Ok(_)) => begun = true,
                    Wait::Expired if begun => {
                        let r = Refused(StatusCode::REQUEST_TIMEOUT, "headers too slow");
                        Box::pin(refuse(&mut w, &mut out, &r)).await;
                        return Some(r);
                    }
                    Wait::Expired => {
                        tracing::debug!("no request within the idle timeout; closing");
                        return None;
                    }
                }
            };
            // Everything from the head to the end of its response runs in a future of its own,
            // on the heap for this request only: its several KiB (the handler's future, the body
            // writer) would otherwise be part of the connection's future, which every connection
            // keeps, idle or not, and which is copied whole when spawned.
            let next = Box::pin(exchange(
                head, reader, w, &mut out, tls, limit, last_call, stop, svc,
            ))
            .await;
            (reader, w) = match next {
                Next::KeepAlive(reader, w) => (reader, w),
                Next::Close => return None,
            };
            // The wait for the next request runs from the end of this response.
            clock.set(limits.idle_timeout);
        }
    }
}

/// What the connection does after an exchange: wait for the next request, or close.
enum Next {
    KeepAlive(Reader, WriteHalf<Stream>),
    Close,
}

/// One request, from its parsed head to the end of its response: runs it through `svc` while
/// watching the connection, writes the answer, and hands the tunnel its socket after a `101`.
/// `last_call`: the connection waited for this request after a handoff, and closes after it.
#[allow(clippy::too_many_arguments)]
async fn exchange<S, B>(
    head: Head,
    reader: Reader,
    mut w: WriteHalf<Stream>,
    out: &mut Vec<u8>,
    tls: bool,
    limit: usize,
    last_call: bool,
    stop: &Watch,
    svc: &S,
) -> Next
where
    S: hyper::service::Service<Request<Body>, Response = Response<B>, Error = Infallible>,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        te_trailers,
    } = head;
    // After a handoff the one last request is answered with `Connection: close`.
    let mut closing = !keep_alive || last_call;
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
    let mut req = Request::from_parts(parts, body);
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
    let handling = std::pin::pin!(svc.call(req));
    let Some(mut resp) = respond(handling, watch, stop, &mut closing).await else {
        // The client left: dropping the request cancels it (`client_abort` in the log).
        return Next::Close;
    };
    if l7::opens_tunnel(&method, resp.status())
        && let Some(tx) = upgrade
    {
        // The tunnel takes the whole socket, with what the client sent after its request.
        let Some(reader) = held.or_else(|| home.and_then(|h| take(&h))) else {
            return Next::Close;
        };
        out.clear();
        encode_status(out, resp.status());
        encode_fields(out, resp.headers(), false);
        out.extend_from_slice(b"\r\n");
        if w.write_all(out).await.is_err() || w.flush().await.is_err() {
            return Next::Close;
        }
        let mut io = reader.half.unsplit(w);
        io.set_tunnel();
        io.unread(reader.buf.freeze());
        let _ = tx.send(io);
        return Next::Close;
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
    if out.capacity() == 0 {
        *out = spare::out();
    }
    encode_head(out, &resp, framing, head_method, closing, http10);
    let trailers = (te_trailers && framing == Out::Chunked)
        .then(|| resp.headers().get(header::TRAILER).cloned())
        .flatten();
    let sent = write_body(&mut w, out, resp.body_mut(), framing, trailers).await;
    drop(resp);
    if out.capacity() > KEEP_OUT {
        *out = Vec::new();
    }
    if sent.is_err() {
        return Next::Close;
    }
    if cut_short && let Some(reader) = home.as_deref().and_then(take_cut) {
        // The client may still be sending the body: closing with its bytes unread would
        // reset the connection, and the reset can destroy the answer before the client
        // reads it. Shut our side, then read and drop what comes, for a bounded time.
        let io = reader.half.unsplit(w);
        crate::listener::drain_then_close(io, EARLY_ANSWER_DRAIN, EARLY_ANSWER_DRAIN_BYTES).await;
        return Next::Close;
    }
    if closing {
        // Over plain TCP the close below sends the FIN: a `shutdown` first would be one
        // more system call per connection for the same packets. TLS sends its close_notify.
        if tls {
            let _ = w.shutdown().await;
        }
        return Next::Close;
    }
    match held.or_else(|| home.and_then(|h| take(&h))) {
        Some(reader) => Next::KeepAlive(reader, w),
        // The body was not read to its end: what follows it on the wire is unknown.
        None => {
            let _ = w.shutdown().await;
            Next::Close
        }
    }
}

/// What ended a wait for request bytes.
enum Wait {
    Read(io::Result<usize>),
    /// A graceful stop, while no request was coming.
    Stop,
    /// The header or idle timeout.
    Expired,
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
async fn respond<F, B>(
    mut handling: Pin<&mut F>,
    watch: Watching<'_>,
    stop: &Watch,
    closing: &mut bool,
) -> Option<Response<B>>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
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
        if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
            *closing |= stop.is_fired();
            let Ok(resp) = resp;
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
