//! Fuzz target: the HTTP/1.x request reader of our client-facing server (`h1_server`: the head
//! parser with its framing rules, and the Content-Length and chunked body decoders), through
//! `decode_request`, its in-memory form.
//! Oracle: no panic on any input; what is passed on is never ambiguous (never both
//! Content-Length and Transfer-Encoding, never two Content-Lengths), and what was decoded never
//! claims more bytes than there were; and round trips: the input's bytes as a POST body, sent
//! chunked (chunk sizes, hex case, extensions and a trailer taken from the input) or with a
//! Content-Length, followed by a pipelined request, decode to exactly that body, complete,
//! with the pipelined request left over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::http::h1::request::decode_request;

mod chunked;

const LIMIT: usize = 8192;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(d)) = decode_request(data, LIMIT) {
        assert!(d.rest + d.body.len() <= data.len());
        let count = |name: &str| d.headers.iter().filter(|(n, _)| n == name).count();
        assert!(count("content-length") <= 1, "{:?}", d.headers);
        assert!(
            count("content-length") == 0 || count("transfer-encoding") == 0,
            "{:?}",
            d.headers
        );
    }

    // Round trips. Byte 0 shapes the framing; the rest is the body.
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let next = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";

    let (chunked, trailer) = chunked::message(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        shape,
        body,
        next,
    );
    let d = decode_request(&chunked, LIMIT)
        .expect("valid chunked request")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.trailers, usize::from(trailer));
    assert_eq!(d.rest, next.len());

    let mut sized = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    sized.extend_from_slice(body);
    sized.extend_from_slice(next);
    let d = decode_request(&sized, LIMIT)
        .expect("valid sized request")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.rest, next.len());
});
