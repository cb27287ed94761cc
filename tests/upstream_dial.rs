//! Dialing servers, the same way for both data planes: TCP, the PROXY header and TLS all
//! happen within one `connect_timeout`. A server that accepts and then never reads nor answers
//! (so the TLS handshake never ends) costs an HTTP request its `502` and a TCP-mode client its
//! close once `connect_timeout` has passed, not later, and the server is told apart from one
//! that is merely slow to connect.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{Cfg, Lb};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A server that accepts connections and keeps them open without reading a byte.
async fn black_hole() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// An HTTP frontend `web` and a TCP one `l4` in front of `server`, with the PROXY header and
/// TLS (unverified) to it, 500 ms to connect and no retries.
fn config(server: SocketAddr) -> String {
    Cfg::http("web")
        .tcp_frontend("l4")
        .backend("hole")
        .servers(&[server])
        .backend_lines("connect_timeout = \"500ms\"\nretries = 0\nsend_proxy = \"v2\"")
        .backend_lines("[backend.tls]\nverify = false")
        .check_none()
        .toml()
}

#[tokio::test]
async fn proxy_header_and_tls_to_a_silent_server_end_within_connect_timeout() {
    let lb = Lb::start_ready(&config(black_hole().await)).await;

    let t = Instant::now();
    let (status, body) = support::get(lb.http_addr("web"), "/").await;
    let took = t.elapsed();
    assert_eq!(status, 502, "{body}");
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(50) && took < CONNECT_TIMEOUT * 3,
        "http: 502 after {took:?}"
    );

    let t = Instant::now();
    let mut c = tokio::net::TcpStream::connect(lb.http_addr("l4"))
        .await
        .unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("tcp: the client was not closed within 5 s")
        .unwrap_or(0);
    let took = t.elapsed();
    assert_eq!(n, 0, "tcp: got bytes instead of a close");
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(50) && took < CONNECT_TIMEOUT * 3,
        "tcp: closed after {took:?}"
    );
    lb.shutdown().await;
}
