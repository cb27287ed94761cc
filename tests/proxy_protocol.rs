//! The PROXY protocol end to end: `read_header` over real sockets (a header dribbled a byte at
//! a time, with the payload glued to its last byte), `send_proxy = "v1"/"v2"` (the upstream
//! parses the header and sees the real client address), and `accept_proxy = true` on a TCP
//! frontend (the address from the client's header is passed on; UNKNOWN/LOCAL fall back to the
//! peer; a malformed header is closed cleanly and fast, a slow one at the header timeout, and
//! the next connection works).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::proxy_protocol::{ProxyHeaderError, encode_v1, encode_v2, read_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::stream::{echo, read_line, until_closed};
use support::{Cfg, Lb, metric};

const WAIT: Duration = Duration::from_secs(5);

type Seen = Arc<Mutex<Vec<Option<(SocketAddr, SocketAddr)>>>>;

/// An upstream that expects a PROXY header on every connection, records what it said, then
/// answers `name\n` and echoes. A connection whose header does not parse is closed.
struct ProxyUpstream {
    addr: SocketAddr,
    seen: Seen,
    cancel: CancellationToken,
}

impl ProxyUpstream {
    async fn start(name: &str) -> ProxyUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let cancel = CancellationToken::new();
        let (c, s2, name) = (cancel.clone(), Arc::clone(&seen), name.to_string());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = c.cancelled() => return,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (c, seen, name) = (c.clone(), Arc::clone(&s2), name.clone());
                tokio::spawn(async move {
                    let Ok(addrs) = read_header(&mut s, WAIT).await else {
                        return;
                    };
                    seen.lock().unwrap().push(addrs);
                    tokio::select! {
                        _ = c.cancelled() => {}
                        _ = async {
                            if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                                return;
                            }
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        } => {}
                    }
                });
            }
        });
        ProxyUpstream { addr, seen, cancel }
    }

    fn last(&self) -> Option<(SocketAddr, SocketAddr)> {
        *self
            .seen
            .lock()
            .unwrap()
            .last()
            .expect("the upstream saw a header")
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for ProxyUpstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn config(fe: &str, upstream: SocketAddr, extra_frontend: &str, send_proxy: &str) -> String {
    Cfg::tcp(fe)
        .frontend_lines(extra_frontend)
        .backend(&format!("{fe}-be"))
        .servers(&[upstream])
        .backend_lines(&format!("send_proxy = \"{send_proxy}\""))
        .check_none()
        .toml()
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// read_header over real sockets

#[tokio::test]
async fn a_dribbled_header_is_read_exactly_over_tcp() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cases = [
        encode_v1(a("198.51.100.7:40000"), a("203.0.113.1:443")),
        encode_v2(a("198.51.100.7:40000"), a("203.0.113.1:443")),
        encode_v2(a("[2001:db8::7]:40000"), a("[2001:db8::1]:443")),
    ];
    for header in cases {
        let h = header.clone();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            // One byte per write with pauses, then the payload glued to the last header byte.
            for b in &h[..h.len() - 1] {
                s.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut last = vec![h[h.len() - 1]];
            last.extend_from_slice(b"\x16\x03\x01payload after the header");
            s.write_all(&last).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let (mut s, _) = l.accept().await.unwrap();
        let got = read_header(&mut s, WAIT).await.unwrap().unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01payload after the header");
        if header.starts_with(b"PROXY") || header[13] == 0x11 {
            assert_eq!(got, (a("198.51.100.7:40000"), a("203.0.113.1:443")));
        } else {
            assert_eq!(got, (a("[2001:db8::7]:40000"), a("[2001:db8::1]:443")));
        }
        client.await.unwrap();
    }
}

#[tokio::test]
async fn a_peer_that_closes_mid_header_is_truncated_not_hung() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PROXY TCP4 1.2.3.4 ").await.unwrap();
    });
    let (mut s, _) = l.accept().await.unwrap();
    client.await.unwrap();
    let t = Instant::now();
    let r = read_header(&mut s, WAIT).await;
    assert!(matches!(r, Err(ProxyHeaderError::Truncated)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// send_proxy

#[tokio::test]
async fn send_proxy_v1_and_v2_carry_the_real_client_address() {
    for version in ["v1", "v2"] {
        let up = ProxyUpstream::start("P").await;
        let fe = format!("send-{version}");
        let lb = Lb::start_ready(&config(&fe, up.addr, "", version)).await;
        let front = lb.http_addr(&fe);
        for _ in 0..3 {
            let mut s = TcpStream::connect(front).await.unwrap();
            let me = s.local_addr().unwrap();
            assert_eq!(read_line(&mut s).await, "P");
            assert_eq!(up.last(), Some((me, front)), "{version}");
            echo(&mut s, "data after the header\n").await;
            // Closed here: established relays outlive shutdown (up to the grace period).
        }
        assert_eq!(up.count(), 3);
        lb.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// accept_proxy

#[tokio::test]
async fn accept_proxy_passes_the_address_from_the_clients_header() {
    let up = ProxyUpstream::start("P").await;
    let lb = Lb::start_ready(&config("accept", up.addr, "accept_proxy = true", "v1")).await;
    let front = lb.http_addr("accept");

    // v1 from the client, with the first payload bytes in the same write.
    let mut s = TcpStream::connect(front).await.unwrap();
    let mut first = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n".to_vec();
    first.extend_from_slice(b"hello ");
    s.write_all(&first).await.unwrap();
    assert_eq!(read_line(&mut s).await, "P");
    assert_eq!(
        up.last(),
        Some((a("203.0.113.7:40000"), a("198.51.100.1:443")))
    );
    let mut got = [0u8; 6];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello ", "bytes after the header are relayed");
    echo(&mut s, "world\n").await;
    drop(s);

    // v2 from the client, IPv6.
    let mut s = TcpStream::connect(front).await.unwrap();
    let src = a("[2001:db8::7]:5555");
    let dst = a("[2001:db8::1]:8443");
    s.write_all(&encode_v2(src, dst)).await.unwrap();
    assert_eq!(read_line(&mut s).await, "P");
    assert_eq!(up.last(), Some((src, dst)));
    echo(&mut s, "v6\n").await;
    drop(s);

    // UNKNOWN: the connection's own addresses are passed on.
    let mut s = TcpStream::connect(front).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    assert_eq!(read_line(&mut s).await, "P");
    assert_eq!(up.last(), Some((me, front)));
    // Established relays outlive shutdown (up to the grace period): close ours first.
    drop(s);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_malformed_header_is_closed_cleanly_and_fast() {
    let up = ProxyUpstream::start("P").await;
    // A long header timeout: a fast close proves the header was judged, not timed out.
    let lb = Lb::start_ready(&config(
        "malformed",
        up.addr,
        "accept_proxy = true\nheader_timeout = \"5s\"",
        "v1",
    ))
    .await;
    let front = lb.http_addr("malformed");
    let bad: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\nmore",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
    ];
    for bytes in bad {
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let (r, took) = until_closed(&mut s).await;
        let got = r.unwrap_or_else(|e| panic!("a clean close (FIN), not {e}"));
        assert!(got.is_empty(), "nothing is relayed: {got:?}");
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }
    assert_eq!(up.count(), 0, "the upstream never heard of them");
    // The next connection works.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"PROXY TCP4 10.1.2.3 10.0.0.1 1234 80\r\n")
        .await
        .unwrap();
    assert_eq!(read_line(&mut s).await, "P");
    assert_eq!(up.last(), Some((a("10.1.2.3:1234"), a("10.0.0.1:80"))));
    drop(s);
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_proxy_header_errors_total{frontend=\"malformed\",reason=\"malformed\"}"
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_tcp_rejected_total{frontend=\"malformed\",reason=\"proxy_header\"}"
        ),
        3.0,
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_slow_header_is_closed_at_the_header_timeout() {
    let up = ProxyUpstream::start("P").await;
    let lb = Lb::start_ready(&config(
        "slow",
        up.addr,
        "accept_proxy = true\nheader_timeout = \"300ms\"",
        "v2",
    ))
    .await;
    let front = lb.http_addr("slow");
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"PROXY TCP4 1.2.").await.unwrap();
    let (r, took) = until_closed(&mut s).await;
    assert!(r.unwrap_or_default().is_empty());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_eq!(up.count(), 0);
    // The next connection works, and v2 goes upstream.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(&encode_v1(a("192.0.2.1:1000"), a("192.0.2.2:2000")))
        .await
        .unwrap();
    assert_eq!(read_line(&mut s).await, "P");
    assert_eq!(up.last(), Some((a("192.0.2.1:1000"), a("192.0.2.2:2000"))));
    drop(s);
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_proxy_header_errors_total{frontend=\"slow\",reason=\"timeout\"}"
        ),
        1.0,
        "{text}"
    );
    lb.shutdown().await;
}
