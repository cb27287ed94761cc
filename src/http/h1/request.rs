//! HTTP/1.x request heads from clients: where request validation lives. The head parser
//! (`parse_head`, on httparse) takes a complete head off the read buffer and refuses, before
//! anything is forwarded, what must not be: ambiguous framing (RFC 9112 6), a Content-Length
//! that is not one number of at most 2^63-1, empty Transfer-Encoding elements, malformed heads
//! (`400`), heads over the limit (`431`), other versions (`505`). It skips empty lines before a
//! request and drops header names that alias a framing field with `_`. `decode_request` is its
//! in-memory form, for the fuzz target.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Uri, Version};

use super::{self as h1, Framing, Spot, State};

/// Most header fields in one request head (hyper's limit too).
pub(crate) const MAX_HEADERS: usize = 100;
/// A request head read off the connection, and what it says about the connection.
pub(crate) struct Head {
    pub(crate) parts: http::request::Parts,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub(crate) expect_continue: bool,
    /// `TE: trailers`: the client takes trailer fields.
    pub(crate) te_trailers: bool,
}

/// A request head we refuse to serve: answered, then the connection closes.
#[derive(Debug, PartialEq)]
pub(crate) struct Refused(pub(crate) StatusCode, pub(crate) &'static str);

/// Parses a complete request head off the front of `buf`; `None` until all of it is there.
/// Framing follows RFC 9112 6: Transfer-Encoding must end in `chunked` (and is refused on
/// HTTP/1.0), Content-Length must be digits and the same on every line, and with both, the
/// length is dropped and the connection is not reused.
pub(crate) fn parse_head(buf: &mut BytesMut, limit: usize) -> Result<Option<Head>, Refused> {
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
    // Room for the X-Forwarded-* fields `headers::rewrite_request` adds, and one a route's
    // header rules add: a map that grows is copied.
    let mut headers = HeaderMap::with_capacity(count + 4);
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
/// clock they started (`h1::server`) keeps running. A lone CR before anything but
/// LF stays, for the parser to refuse.
pub(crate) fn skip_empty_lines(buf: &mut BytesMut) {
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
}
