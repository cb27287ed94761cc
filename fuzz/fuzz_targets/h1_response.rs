//! Fuzz target: the HTTP/1.1 response reader of our upstream client (`h1_client`: the head
//! parser and the Content-Length, chunked and close-delimited body decoders), through
//! `decode_response`, its in-memory form.
//! Oracle: no panic on any input, and what was decoded never claims more bytes than there
//! were; and round trips: the input's bytes as a body, sent chunked (chunk sizes, hex case,
//! extensions and a trailer taken from the input) or with a Content-Length, and followed by
//! more bytes, decode to exactly that body, complete, with the following bytes left over.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::h1_client::decode_response;

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

    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut rest = body;
    let mut i = 0usize;
    while !rest.is_empty() {
        let len = (1 + usize::from(rest[0]) % 37).min(rest.len());
        let size = if (shape >> (i % 8)) & 1 == 1 {
            format!("{len:X}")
        } else {
            format!("{len:x}")
        };
        chunked.extend_from_slice(size.as_bytes());
        if shape & 2 == 2 {
            chunked.extend_from_slice(b";ext=\"a;b\"");
        }
        chunked.extend_from_slice(b"\r\n");
        chunked.extend_from_slice(&rest[..len]);
        chunked.extend_from_slice(b"\r\n");
        rest = &rest[len..];
        i += 1;
    }
    chunked.extend_from_slice(b"0\r\n");
    let trailer = shape & 4 == 4;
    if trailer {
        chunked.extend_from_slice(b"x-sum: 1\r\n");
    }
    chunked.extend_from_slice(b"\r\n");
    chunked.extend_from_slice(tail);
    let d = decode_response(&chunked, false)
        .expect("valid chunked response")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.trailers, usize::from(trailer));
    assert_eq!(d.rest, tail.len());

    let mut sized = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    sized.extend_from_slice(body);
    sized.extend_from_slice(tail);
    let d = decode_response(&sized, false)
        .expect("valid sized response")
        .expect("complete head");
    assert_eq!(d.body, body);
    assert!(d.complete && d.keep_alive);
    assert_eq!(d.rest, tail.len());
});
