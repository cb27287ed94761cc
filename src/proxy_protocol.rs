//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): encoding the header
//! Switchyard sends to servers (`send_proxy`), and reading the one a peer such as an L4 balancer
//! sends us (`accept_proxy`), so the real client address survives a hop.
//!
//! [`read_header`] consumes exactly the header and nothing after it, so the caller can hand the
//! same stream on (to TLS or the relay) without a buffer. Only TCP over IPv4/IPv6 carries an
//! address; `UNKNOWN` (v1), `LOCAL` and the unspecified or unix families (v2) mean "use the
//! connection's own address". v2 TLVs are skipped. This module does no socket I/O of its own
//! and keeps no metrics beyond the name below; the listeners count and log.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header the spec allows, CRLF included.
const V1_MAX: usize = 107;

/// The shortest valid v1 header, `PROXY UNKNOWN\r\n`; reading this many never over-reads.
const V1_MIN: usize = 15;

/// Cap on the v2 variable part (addresses and TLVs). The spec allows 65535; real senders send
/// addresses plus a few small TLVs, and a cap keeps a hostile peer from pinning memory.
const V2_MAX_LEN: usize = 2048;

/// Bytes read before deciding which version this is: less than the shortest v1 header, and
/// enough to tell "PROXY " from the v2 signature.
const PROBE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("PROXY v2 address family/protocol {0:#04x} not supported")]
    Family(u8),
    #[error("PROXY v2 header length {0} over the {V2_MAX_LEN}-byte limit")]
    V2TooLong(usize),
    #[error("connection closed inside the PROXY header")]
    Truncated,
    #[error("PROXY header not received within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(std::io::Error),
}

impl ProxyHeaderError {
    /// `timeout`, `truncated` or `malformed`, for the metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Timeout(_) => "timeout",
            ProxyHeaderError::Io(_) | ProxyHeaderError::Truncated => "truncated",
            _ => "malformed",
        }
    }
}

impl From<std::io::Error> for ProxyHeaderError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProxyHeaderError::Truncated
        } else {
            ProxyHeaderError::Io(e)
        }
    }
}

/// Both addresses in one family: IPv4 when both are (or map to) IPv4, else both as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
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

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`; mixed families are sent as IPv6).
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The binary v2 header: signature, `0x21` (v2, PROXY), `0x11` TCP4 or `0x21` TCP6, the
/// big-endian length, then addresses and ports in network order. No TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A v2 `LOCAL` header: a connection the proxy opened on its own behalf (a health check), with
/// no client address; the receiver uses the connection's own addresses.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    // Version 2, command LOCAL; family and protocol unspecified; no address bytes.
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// Reads one PROXY header (v1 or v2, told apart by its first bytes) within `timeout`, and not
/// one byte past it. `Some((src, dst))` for TCP over IPv4/IPv6; `None` when the sender says
/// the connection's own addresses apply (v1 `UNKNOWN`, v2 `LOCAL` or an unspecified/unix family).
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    match tokio::time::timeout(timeout, read_any(r)).await {
        Ok(res) => res,
        Err(_) => Err(ProxyHeaderError::Timeout(timeout)),
    }
}

/// [`read_header`] over bytes already in memory, without the timeout (for the fuzz targets):
/// the result and how many bytes of `buf` the header took. Missing bytes are `Truncated`.
#[doc(hidden)]
pub fn decode_header(
    buf: &[u8],
) -> (
    Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError>,
    usize,
) {
    let mut rest = buf;
    let res = {
        let fut = std::pin::pin!(read_any(&mut rest));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(r) => r,
            // Reading from a slice never waits.
            std::task::Poll::Pending => Err(ProxyHeaderError::Truncated),
        }
    };
    (res, buf.len() - rest.len())
}

async fn read_any<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    let mut probe = [0u8; PROBE];
    r.read_exact(&mut probe).await?;
    if probe[..] == V2_SIGNATURE[..PROBE] {
        read_v2(r, &probe).await
    } else if probe.starts_with(b"PROXY ") {
        read_v1(r, &probe).await
    } else {
        Err(ProxyHeaderError::NotProxy)
    }
}

/// v1: the line up to CRLF. Reads the shortest possible header in one go, then two bytes at a
/// time (one after a CR), which can never pass the CRLF.
async fn read_v1<R: AsyncRead + Unpin>(
    r: &mut R,
    probe: &[u8; PROBE],
) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    let mut line = [0u8; V1_MAX];
    line[..PROBE].copy_from_slice(probe);
    let mut n = V1_MIN;
    r.read_exact(&mut line[PROBE..n]).await?;
    loop {
        // A CR must be followed by LF; anything before the last byte is already checked.
        if let Some(i) = line[..n].iter().position(|&b| b == b'\r')
            && i + 1 < n
        {
            if line[i + 1] != b'\n' || i + 2 != n {
                return Err(ProxyHeaderError::V1("CR not followed by LF at the end"));
            }
            return parse_v1(&line[..i]);
        }
        if line[..n].contains(&b'\n') {
            return Err(ProxyHeaderError::V1("LF without CR"));
        }
        let want = if line[n - 1] == b'\r' { 1 } else { 2 };
        if n + want > V1_MAX {
            return Err(ProxyHeaderError::TooLong);
        }
        r.read_exact(&mut line[n..n + want]).await?;
        n += want;
    }
}

/// Parses `PROXY <proto> ...` without the CRLF.
fn parse_v1(line: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyHeaderError::NotProxy);
    }
    let proto = parts.next().ok_or(ProxyHeaderError::V1("no protocol"))?;
    if proto == "UNKNOWN" {
        // The spec: anything after UNKNOWN up to the CRLF is ignored.
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyHeaderError::V1("want 4 fields after the protocol"));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| bad_v1_addr())?),
            IpAddr::V4(dst.parse::<Ipv4Addr>().map_err(|_| bad_v1_addr())?),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| bad_v1_addr())?),
            IpAddr::V6(dst.parse::<Ipv6Addr>().map_err(|_| bad_v1_addr())?),
        ),
        _ => {
            return Err(ProxyHeaderError::V1(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(Some((
        SocketAddr::new(src, port(sport)?),
        SocketAddr::new(dst, port(dport)?),
    )))
}

fn bad_v1_addr() -> ProxyHeaderError {
    ProxyHeaderError::V1("address does not match the protocol")
}

/// A decimal port: digits only (Rust's parser would take a `+`), at most 5 of them.
fn port(s: &str) -> Result<u16, ProxyHeaderError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyHeaderError::V1("bad port"));
    }
    s.parse().map_err(|_| ProxyHeaderError::V1("bad port"))
}

/// v2: the rest of the 16-byte fixed part, then exactly `len` more bytes.
async fn read_v2<R: AsyncRead + Unpin>(
    r: &mut R,
    probe: &[u8; PROBE],
) -> Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError> {
    let mut fixed = [0u8; 16];
    fixed[..PROBE].copy_from_slice(probe);
    r.read_exact(&mut fixed[PROBE..]).await?;
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::NotProxy);
    }
    let (ver_cmd, fam) = (fixed[12], fixed[13]);
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyHeaderError::V2("command is neither LOCAL nor PROXY")),
    };
    if len > V2_MAX_LEN {
        return Err(ProxyHeaderError::V2TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if local {
        // LOCAL: health checks and the like from the peer itself; addresses are ignored.
        return Ok(None);
    }
    let need = match fam {
        0x11 => 12,
        0x21 => 36,
        // UNSPEC, or unix stream/datagram: nothing we can use as a socket address.
        0x00 | 0x31 | 0x32 => return Ok(None),
        other => return Err(ProxyHeaderError::Family(other)),
    };
    if len < need {
        return Err(ProxyHeaderError::V2(
            "length too short for the address family",
        ));
    }
    let ports = |b: &[u8]| {
        (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        )
    };
    let (src, dst) = if fam == 0x11 {
        let s: [u8; 4] = body[0..4].try_into().expect("4 bytes");
        let d: [u8; 4] = body[4..8].try_into().expect("4 bytes");
        let (sp, dp) = ports(&body[8..12]);
        (
            SocketAddr::new(IpAddr::V4(s.into()), sp),
            SocketAddr::new(IpAddr::V4(d.into()), dp),
        )
    } else {
        let s: [u8; 16] = body[0..16].try_into().expect("16 bytes");
        let d: [u8; 16] = body[16..32].try_into().expect("16 bytes");
        let (sp, dp) = ports(&body[32..36]);
        (
            SocketAddr::new(IpAddr::V6(s.into()), sp),
            SocketAddr::new(IpAddr::V6(d.into()), dp),
        )
    };
    Ok(Some((src, dst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Reads a header from `bytes` followed by `rest`; returns the result and what is left.
    async fn read(
        bytes: &[u8],
        rest: &[u8],
    ) -> (
        Result<Option<(SocketAddr, SocketAddr)>, ProxyHeaderError>,
        Vec<u8>,
    ) {
        let mut all = bytes.to_vec();
        all.extend_from_slice(rest);
        let mut cur = std::io::Cursor::new(all);
        let res = read_header(&mut cur, T).await;
        let mut left = Vec::new();
        cur.read_to_end(&mut left).await.unwrap();
        (res, left)
    }

    #[test]
    fn decode_header_reports_the_bytes_it_took() {
        let (src, dst) = (a("1.2.3.4:5"), a("[::1]:10"));
        for h in [encode_v1(src, dst), encode_v2(src, dst)] {
            let mut wire = h.clone();
            wire.extend_from_slice(b"GET /");
            let (res, used) = decode_header(&wire);
            let (s, d) = same_family(src, dst);
            assert_eq!(res.unwrap(), Some((s, d)));
            assert_eq!(used, h.len());
            let (res, _) = decode_header(&h[..h.len() - 1]);
            assert!(matches!(res, Err(ProxyHeaderError::Truncated)), "{res:?}");
        }
    }

    #[test]
    fn v1_encoding_is_the_spec_line() {
        assert_eq!(
            encode_v1(a("192.168.0.1:56324"), a("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            encode_v1(a("[2001:db8::1]:1"), a("[::1]:2")),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
        );
        // Mixed families go out as IPv6; a v4-mapped pair as IPv4.
        assert_eq!(
            encode_v1(a("10.0.0.1:1"), a("[::1]:2")),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"
        );
        assert_eq!(
            encode_v1(a("[::ffff:10.0.0.1]:1"), a("[::ffff:10.0.0.2]:2")),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
        );
    }

    #[test]
    fn v2_encoding_is_the_spec_layout() {
        let h = encode_v2(a("1.2.3.4:258"), a("5.6.7.8:772"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4]);
        assert_eq!(h, want);
        let h = encode_v2(a("[::1]:1"), a("[::2]:2"));
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
    }

    #[tokio::test]
    async fn round_trips_v1_and_v2_for_v4_and_v6() {
        let pairs = [
            (a("192.168.0.1:56324"), a("192.168.0.11:443")),
            (a("[2001:db8::1]:65535"), a("[2001:db8::2]:0")),
            (a("0.0.0.0:0"), a("255.255.255.255:65535")),
        ];
        for (src, dst) in pairs {
            for h in [encode_v1(src, dst), encode_v2(src, dst)] {
                let (res, left) = read(&h, b"").await;
                assert_eq!(res.unwrap(), Some((src, dst)), "{h:?}");
                assert!(left.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn unknown_and_local_mean_no_address() {
        let (res, _) = read(b"PROXY UNKNOWN\r\n", b"").await;
        assert_eq!(res.unwrap(), None);
        let (res, left) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", b"x").await;
        assert_eq!(res.unwrap(), None);
        assert_eq!(left, b"x");
        // LOCAL, with (ignored) address bytes and a TLV following.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0, 15]);
        local.extend_from_slice(&[0; 12]);
        local.extend_from_slice(&[0x04, 0, 0]); // PP2_TYPE_NOOP, empty
        let (res, left) = read(&local, b"rest").await;
        assert_eq!(res.unwrap(), None);
        assert_eq!(left, b"rest");
        // Our own LOCAL header (health checks) reads back the same way.
        let (res, left) = read(&encode_v2_local(), b"GET").await;
        assert_eq!(res.unwrap(), None);
        assert_eq!(left, b"GET");
        // PROXY with AF_UNSPEC.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(read(&unspec, b"").await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_tlvs_are_skipped() {
        let mut h = encode_v2(a("1.2.3.4:5"), a("6.7.8.9:10"));
        let tlv = [0x01, 0, 2, b'h', b'2']; // PP2_TYPE_ALPN "h2"
        h[15] += tlv.len() as u8;
        h.extend_from_slice(&tlv);
        let (res, left) = read(&h, b"GET /").await;
        assert_eq!(res.unwrap(), Some((a("1.2.3.4:5"), a("6.7.8.9:10"))));
        assert_eq!(left, b"GET /");
    }

    #[tokio::test]
    async fn malformed_headers_are_errors() {
        let mut bad_family = V2_SIGNATURE.to_vec();
        bad_family.extend_from_slice(&[0x21, 0x12, 0, 12]); // UDP4
        bad_family.extend_from_slice(&[0; 12]);
        let mut bad_version = encode_v2(a("1.2.3.4:5"), a("6.7.8.9:10"));
        bad_version[12] = 0x11;
        let mut bad_command = encode_v2(a("1.2.3.4:5"), a("6.7.8.9:10"));
        bad_command[12] = 0x22;
        let mut short_len = encode_v2(a("1.2.3.4:5"), a("6.7.8.9:10"));
        short_len[15] = 4;
        let mut huge_len = V2_SIGNATURE.to_vec();
        huge_len.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let truncated_v2 = encode_v2(a("1.2.3.4:5"), a("6.7.8.9:10"))[..20].to_vec();
        let long_v1 = format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 2{}\r\n", " ".repeat(100));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("empty", b"".to_vec()),
            ("missing CRLF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2".to_vec()),
            ("LF only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()),
            (
                "CR without LF",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n".to_vec(),
            ),
            ("too long", long_v1.into_bytes()),
            ("no CRLF within 107", vec![b'P'; 200]),
            ("v4 in TCP6", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()),
            ("v6 in TCP4", b"PROXY TCP4 ::1 ::2 1 2\r\n".to_vec()),
            ("bad proto", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()),
            (
                "port too big",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_vec(),
            ),
            (
                "signed port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
            ),
            (
                "missing field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(),
            ),
            (
                "extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
            ),
            (
                "double space",
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            ),
            ("bad family", bad_family),
            ("bad version", bad_version),
            ("bad command", bad_command),
            ("length short for family", short_len),
            ("length over the cap", huge_len),
            ("truncated v2", truncated_v2),
            ("truncated v2 signature", V2_SIGNATURE[..10].to_vec()),
        ];
        for (what, bytes) in cases {
            let (res, _) = read(&bytes, b"").await;
            assert!(res.is_err(), "{what}: accepted as {res:?}");
        }
        let (res, _) = read(b"", b"").await;
        assert!(matches!(res, Err(ProxyHeaderError::Truncated)), "{res:?}");
        let (res, _) = read(b"HELLO WORLD\r\n", b"").await;
        assert!(matches!(res, Err(ProxyHeaderError::NotProxy)), "{res:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_header_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2.3.4")
            .await
            .unwrap();
        let res = read_header(&mut server, Duration::from_secs(5)).await;
        assert!(matches!(res, Err(ProxyHeaderError::Timeout(_))), "{res:?}");
        assert_eq!(res.unwrap_err().reason(), "timeout");
    }

    /// A small deterministic generator, so the property test needs no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// Property: whatever follows a valid header (including bytes that look like another
    /// header, CRs and LFs), read_header consumes the header exactly and leaves the rest. Fed
    /// through a reader that hands out tiny chunks, so split reads are covered too.
    #[tokio::test]
    async fn following_bytes_are_left_unread() {
        let mut rng = Lcg(42);
        for i in 0..500 {
            let src = if i % 2 == 0 {
                SocketAddr::new(IpAddr::V4((rng.next() as u32).into()), rng.next() as u16)
            } else {
                let hi = (rng.next() as u128) << 64 | rng.next() as u128;
                SocketAddr::new(IpAddr::V6(hi.into()), rng.next() as u16)
            };
            let dst = SocketAddr::new(
                match src {
                    SocketAddr::V4(_) => IpAddr::V4((rng.next() as u32).into()),
                    SocketAddr::V6(_) => IpAddr::V6((rng.next() as u128).into()),
                },
                rng.next() as u16,
            );
            let header = match i % 3 {
                0 => encode_v1(src, dst),
                1 => encode_v2(src, dst),
                _ => b"PROXY UNKNOWN\r\n".to_vec(),
            };
            let rest_len = (rng.next() % 64) as usize;
            let mut rest: Vec<u8> = (0..rest_len)
                .map(|_| b"\r\nPROXY \0QUIT"[(rng.next() % 13) as usize])
                .collect();
            if i % 7 == 0 {
                rest.extend_from_slice(&encode_v1(dst, src));
            }
            let mut all = header.clone();
            all.extend_from_slice(&rest);
            let chunk = 1 + (rng.next() % 5) as usize;
            let mut builder = tokio_test_reader(&all, chunk);
            let got = read_header(&mut builder, T).await.unwrap();
            if i % 3 == 2 {
                assert_eq!(got, None);
            } else {
                let (s, d) = same_family(src, dst);
                assert_eq!(got, Some((s, d)), "case {i}");
            }
            let mut left = Vec::new();
            builder.read_to_end(&mut left).await.unwrap();
            assert_eq!(left, rest, "case {i}: bytes after the header were consumed");
        }
    }

    /// A reader that returns at most `chunk` bytes per read.
    fn tokio_test_reader(bytes: &[u8], chunk: usize) -> Chunked {
        Chunked {
            data: bytes.to_vec(),
            pos: 0,
            chunk,
        }
    }

    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .chunk
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }
}
