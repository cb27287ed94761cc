//! HTTP/1.x responses to clients: how a response is framed (a length, chunked, up to the
//! close for an HTTP/1.0 client), its head with our framing fields and a `Date`, its body
//! gathered into as few writes as possible with trailers for clients that take them, and our
//! own short answers to refused heads.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Body as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

use super::{self as h1};
use crate::http::Stream;

use super::request::Refused;

/// Output gathered before it is written: the head and the body frames that are ready.
pub(crate) const WRITE_CHUNK: usize = 64 * 1024;
/// How a response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Up to the close (HTTP/1.0 client, unknown length).
    Close,
}

/// How `resp` goes to the client: the chunked coding is HTTP/1.1's, so a body of unknown
/// length to an HTTP/1.0 client runs to the close.
pub(crate) fn response_framing<B: hyper::body::Body>(
    resp: &Response<B>,
    head_method: bool,
    http10: bool,
) -> Out {
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

pub(crate) fn encode_status(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the header fields; with `framing_own`, the framing and connection fields are left
/// out (written by the caller). Whether there was a `Date` among them.
pub(crate) fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap, framing_own: bool) -> bool {
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
pub(crate) fn encode_head<B: hyper::body::Body>(
    out: &mut Vec<u8>,
    resp: &Response<B>,
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
pub(crate) struct Cut;

/// Writes `out` (the head) and the body after it. What the body has ready is gathered into
/// one write (up to `WRITE_CHUNK`); when it has nothing more ready, what was gathered is
/// written and flushed. `trailers` is the response's `Trailer` field when the client takes
/// trailers: only the fields it announces are sent. A body that fails or does not match its
/// length is cut (no last chunk), after what did arrive is written.
pub(crate) async fn write_body<W, B>(
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
pub(crate) fn finish(
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

pub(crate) fn encode_hex(out: &mut Vec<u8>, mut n: usize) {
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
pub(crate) async fn refuse(w: &mut WriteHalf<Stream>, out: &mut Vec<u8>, r: &Refused) {
    let &Refused(status, why) = r;
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
    use crate::http as l7;
    use hyper::body::Frame;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::AsyncWrite;

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
