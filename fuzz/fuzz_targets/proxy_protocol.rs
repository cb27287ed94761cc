//! Fuzz target: the PROXY protocol v1/v2 header reader (`proxy_protocol::decode_header`, the
//! in-memory form of `read_header`) and the encoders `encode_v1`/`encode_v2`.
//! Oracle: no panic; an accepted header used exactly its own bytes (v1: up to and including the
//! CRLF, at most 107 bytes; v2: 16 + the length field) and never one byte past it; and round
//! trips: addresses taken from the input, encoded as v1 and as v2 and followed by more input,
//! decode to the same addresses (in one family, as the encoders send them) using exactly the
//! header's bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use switchyard::proxy_protocol::{V2_SIGNATURE, decode_header, encode_v1, encode_v2};

fn ip(v4: bool, b: &[u8]) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let o: [u8; 16] = b[..16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// What the encoders put on the wire: IPv4 when both are (or map to) IPv4, else both as IPv6.
fn one_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (
            SocketAddr::new(s, src.port()),
            SocketAddr::new(d, dst.port()),
        ),
        _ => (
            SocketAddr::new(IpAddr::V6(v6(s)), src.port()),
            SocketAddr::new(IpAddr::V6(v6(d)), dst.port()),
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let (res, used) = decode_header(data);
    assert!(used <= data.len());
    if res.is_ok() {
        if data.starts_with(b"PROXY ") {
            assert!(data[..used].ends_with(b"\r\n"), "{data:?} used {used}");
            assert!(used <= 107);
            assert_eq!(
                data[..used].iter().filter(|&&b| b == b'\n').count(),
                1,
                "{data:?}"
            );
        } else {
            assert!(data.starts_with(&V2_SIGNATURE), "{data:?}");
            let len = u16::from_be_bytes([data[14], data[15]]) as usize;
            assert_eq!(used, 16 + len);
        }
    }

    // Round trip: byte 0 picks the families, then 16 + 16 address bytes and 4 port bytes.
    if data.len() < 37 {
        return;
    }
    let src = SocketAddr::new(
        ip(data[0] & 1 != 0, &data[1..17]),
        u16::from_be_bytes([data[33], data[34]]),
    );
    let dst = SocketAddr::new(
        ip(data[0] & 2 != 0, &data[17..33]),
        u16::from_be_bytes([data[35], data[36]]),
    );
    let want = one_family(src, dst);
    for header in [encode_v1(src, dst), encode_v2(src, dst)] {
        let mut wire = header.clone();
        wire.extend_from_slice(&data[37..]);
        let (res, used) = decode_header(&wire);
        assert_eq!(res.ok(), Some(Some(want)), "{header:?}");
        assert_eq!(used, header.len());
    }
});
