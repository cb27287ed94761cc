//! Fuzz target: the HTTP/1.1 response reader of our upstream client (`h1_client`: the head
//! parser and the Content-Length, chunked and close-delimited body decoders), through
//! `decode_response`, its in-memory form.
//! Oracle: no panic on any input, and what was decoded never claims more bytes than there
//! were; and round trips: the input's bytes as a body, sent chunked (chunk sizes, hex case,
//! extensions and a trailer taken from the input) or with a Content-Length, and followed by
//! more bytes, decode to exactly that body, complete, with the following bytes left over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::http::h1::client::decode_response;

mod chunked;

fuzz_target!(|data: &[u8]| {
    let head_method = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(Some(d)) = decode_response(data, head_method) {
        assert!(d.rest + d.body.len() <= data.len());
        if head_method {
            assert!(d.body.is_empty());
        }
    }

    // Round trips. Byte 0 shapes the framing; the rest is the body.
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let tail = b"HTTP/1.1 200 OK\r\n";

    let (chunked, trailer) = chunked::message(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        shape,
        body,
        tail,
    );
    let d = decode_response(&chunked, false)
        .expect("valid chunked response")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.trailers, usize::from(trailer));
    assert_eq!(d.rest, tail.len());

    let mut sized =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    sized.extend_from_slice(body);
    sized.extend_from_slice(tail);
    let d = decode_response(&sized, false)
        .expect("valid sized response")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.rest, tail.len());
});
