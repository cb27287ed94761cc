//! HTTP/1.x: our own server side (`server`, towards clients) and client side (`client`,
//! towards servers), on httparse, and the message codec they share: framing (`Framing`), the
//! body decoder (`State`: lengths, chunked with trailers, up to the close), strict chunk-size and
//! Content-Length parsing, the last-coding rule, and where parsed fields sit in a head (`Spot`).

pub mod client;
pub mod request;
pub mod response;
pub mod server;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Frame, SizeHint};
use std::fmt;
use std::io;

/// Largest response head (status line and headers) taken from a server (HAProxy's default
/// `tune.bufsize` is 16 KiB, nginx's `proxy_buffer_size` 4–8 KiB; hyper allows about 400 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one response head or trailer section (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Why an exchange with a server failed.
#[derive(Debug)]
pub enum Error {
    /// The server closed (or reset) the connection before any byte of a response.
    Closed(Option<io::Error>),
    /// Reading or writing the connection failed after the response began.
    Io(io::Error),
    /// No response head by the deadline.
    TimedOut,
    /// The server's response is not valid HTTP/1.1 (or is over our limits).
    Invalid(&'static str),
    /// The client's request body failed (cut short or malformed).
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed(None) => f.write_str("connection closed before a response"),
            Error::Closed(Some(e)) => write!(f, "connection failed before a response: {e}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::TimedOut => f.write_str("no response within the response timeout"),
            Error::Invalid(what) => write!(f, "invalid response: {what}"),
            Error::ClientBody(e) => write!(f, "client request body: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Up to the end of the connection (responses only).
    Close,
}

/// Where a parsed header field's name and value sit in the buffer it was parsed from, kept past
/// the parse (which borrows the buffer) so that the values can share the head's bytes instead
/// of being copied one by one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spot {
    name: (u32, u32),
    value: (u32, u32),
}

impl Spot {
    /// The spots of `fields`, which httparse parsed out of `buf`.
    pub(crate) fn record(buf: &[u8], fields: &[httparse::Header<'_>], spots: &mut [Spot]) {
        let base = buf.as_ptr() as usize;
        let at = |p: *const u8, len: usize| {
            let start = (p as usize - base) as u32;
            (start, start + len as u32)
        };
        for (spot, f) in spots.iter_mut().zip(fields) {
            *spot = Spot {
                name: at(f.name.as_ptr(), f.name.len()),
                value: at(f.value.as_ptr(), f.value.len()),
            };
        }
    }

    /// The field, out of the head `raw` (the parsed bytes, frozen): `None` if its name or value
    /// is not valid. The value shares `raw`'s bytes.
    pub(crate) fn field(self, raw: &Bytes) -> Option<(HeaderName, HeaderValue)> {
        let name = HeaderName::from_bytes(&raw[self.name.0 as usize..self.name.1 as usize]).ok()?;
        let value =
            HeaderValue::from_maybe_shared(raw.slice(self.value.0 as usize..self.value.1 as usize))
                .ok()?;
        Some((name, value))
    }
}

/// Whether the last transfer coding on a Transfer-Encoding line is `chunked` (only the last one
/// frames the message).
pub(crate) fn chunked_last(value: &HeaderValue) -> bool {
    let last = value
        .as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(b"");
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside), at most
/// `i64::MAX`: a larger length, passed on, is misread by servers that parse it signed (HAProxy
/// and nginx refuse it too).
pub(crate) fn parse_decimal(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|&n| n <= i64::MAX as u64)
}

/// Largest chunk size taken: 2^52 - 1, thirteen hex digits, as HAProxy caps it (a size past a
/// double's exact integers is misread by servers written in languages that parse it into one).
const MAX_CHUNK_SIZE: u64 = (1 << 52) - 1;

/// Parses a chunk-size line off the front of `buf` (RFC 9112 7.1): at least one hex digit, then
/// optional spaces or tabs, optional extensions after `;`, and CRLF. `None` until the CRLF is
/// there; otherwise how many bytes the line took and the size.
///
/// NOTE: hand-written instead of `httparse::parse_chunk_size`, which takes a line with no digit
/// (`\r\n`, `;x\r\n`) as size 0, i.e. the last chunk, lets bare LF and other control
/// characters through inside extensions (so a proxy in front that ends lines at LF reads
/// another message than we do), and has no cap on the size. Here any of those is an error.
pub(crate) fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == buf.len() {
        // Digits may still be arriving; a run that is too long already is refused below.
        if digits > 0 && parse_hex(&buf[..digits]).is_none() {
            return Err(Error::Invalid("chunk size too large"));
        }
        return Ok(None);
    }
    if digits == 0 {
        return Err(Error::Invalid("chunk size has no hex digit"));
    }
    let size = parse_hex(&buf[..digits]).ok_or(Error::Invalid("chunk size too large"))?;
    let mut i = digits;
    while let Some(b' ' | b'\t') = buf.get(i) {
        i += 1;
    }
    match buf.get(i) {
        None => return Ok(None),
        Some(b';') => {
            // Extensions: ignored, but only visible characters, spaces and tabs may appear.
            while let Some(&b) = buf.get(i) {
                if b == b'\r' {
                    break;
                }
                if b != b'\t' && (b < 0x20 || b == 0x7f) {
                    return Err(Error::Invalid("control character in a chunk extension"));
                }
                i += 1;
            }
        }
        Some(b'\r') => {}
        Some(_) => return Err(Error::Invalid("malformed chunk size")),
    }
    match buf.get(i..i + 2) {
        Some(b"\r\n") => Ok(Some((i + 2, size))),
        Some(_) => Err(Error::Invalid("chunk-size line not ended by CRLF")),
        None => Ok(None),
    }
}

/// Hex digits as a number, `None` above `MAX_CHUNK_SIZE` (leading zeros are fine).
fn parse_hex(digits: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16)? as u64;
        n = n.checked_mul(16)?.checked_add(v)?;
        if n > MAX_CHUNK_SIZE {
            return None;
        }
    }
    Some(n)
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailers, then the final CRLF.
    Trailers,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// What one decoding step came to.
pub(crate) enum Step {
    Frame(Frame<Bytes>),
    /// Needs more bytes.
    More,
    /// The body (trailers included) is complete.
    End,
}

impl State {
    pub(crate) fn new(framing: Framing) -> State {
        match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::Close => State::Close,
        }
    }

    /// Decodes what of the body is in `buf`, for the in-memory decoders of the fuzz targets:
    /// its data, how many trailer fields it had, and whether it ended.
    pub(crate) fn drain(&mut self, buf: &mut BytesMut) -> Result<(Vec<u8>, usize, bool), Error> {
        let (mut body, mut trailers) = (Vec::new(), 0);
        loop {
            match self.step(buf)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(data) => body.extend_from_slice(&data),
                    Err(f) => trailers += f.trailers_ref().map_or(0, HeaderMap::len),
                },
                Step::More => return Ok((body, trailers, false)),
                Step::End => return Ok((body, trailers, true)),
            }
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, State::Done)
    }

    /// What is known of the body's remaining length.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match *self {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// Takes the next frame of the body off the front of `buf`, if it is there.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        loop {
            let c = match *self {
                State::Done => return Ok(Step::End),
                State::Length(_) | State::Close if buf.is_empty() => return Ok(Step::More),
                State::Length(left) => {
                    let n = (buf.len() as u64).min(left) as usize;
                    *self = match left - n as u64 {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                    return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                }
                State::Close => return Ok(Step::Frame(Frame::data(buf.split().freeze()))),
                State::Chunked(c) => c,
            };
            let next = match c {
                Chunked::Size => match parse_chunk_size(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        }
                    }
                    None if buf.len() > MAX_CHUNK_LINE => {
                        return Err(Error::Invalid("chunk-size line too long"));
                    }
                    None => return Ok(Step::More),
                },
                Chunked::Data(_) if buf.is_empty() => return Ok(Step::More),
                Chunked::Data(left) => {
                    let n = (buf.len() as u64).min(left) as usize;
                    *self = State::Chunked(match left - n as u64 {
                        0 => Chunked::DataEnd,
                        rest => Chunked::Data(rest),
                    });
                    return Ok(Step::Frame(Frame::data(buf.split_to(n).freeze())));
                }
                Chunked::DataEnd if buf.len() < 2 => return Ok(Step::More),
                Chunked::DataEnd if &buf[..2] != b"\r\n" => {
                    return Err(Error::Invalid("chunk data not followed by CRLF"));
                }
                Chunked::DataEnd => {
                    buf.advance(2);
                    Chunked::Size
                }
                Chunked::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| Error::Invalid("malformed trailer name"))?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| Error::Invalid("malformed trailer value"))?;
                                map.append(name, value);
                            }
                            (used, map)
                        }
                        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                            return Err(Error::Invalid("trailers too large"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::More),
                        Err(_) => return Err(Error::Invalid("malformed trailers")),
                    };
                    buf.advance(used);
                    *self = State::Done;
                    if trailers.is_empty() {
                        return Ok(Step::End);
                    }
                    return Ok(Step::Frame(Frame::trailers(trailers)));
                }
            };
            *self = State::Chunked(next);
        }
    }
}
