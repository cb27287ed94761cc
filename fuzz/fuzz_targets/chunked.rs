//! The chunked coding of a body, shaped by one input byte: the round trips of the HTTP/1 fuzz
//! targets (`h1_response`, `h1_request`) build their chunked messages with it.

/// `head` (ending in its blank line), then `body` in chunks (their sizes taken from the body's
/// own bytes, each size in upper- or lower-case hex as `shape`'s bits say, with a chunk
/// extension if bit 1 is set), the last chunk with a trailer field if bit 2 is set, then
/// `tail`. Returns the message and whether it has the trailer field.
pub fn message(head: &[u8], shape: u8, body: &[u8], tail: &[u8]) -> (Vec<u8>, bool) {
    let mut out = head.to_vec();
    let mut rest = body;
    let mut i = 0usize;
    while !rest.is_empty() {
        let len = (1 + usize::from(rest[0]) % 37).min(rest.len());
        let size = if (shape >> (i % 8)) & 1 == 1 {
            format!("{len:X}")
        } else {
            format!("{len:x}")
        };
        out.extend_from_slice(size.as_bytes());
        if shape & 2 == 2 {
            out.extend_from_slice(b";ext=\"a;b\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..len]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[len..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    let trailer = shape & 4 == 4;
    if trailer {
        out.extend_from_slice(b"x-sum: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(tail);
    (out, trailer)
}
