//! Upstreams that write a response's head and body in two sends with Nagle's algorithm on
//! (Python's `http.server`, many small frameworks): on a reused connection the body waits in the
//! server's kernel until the head is acknowledged, and a receiver that delays its ACK (Linux
//! does, about 40 ms, once a connection is interactive) stalls every request by that much.
//! HAProxy 2.6 and nginx 1.22 stall so on reused server connections. Our HTTP/1.1 client asks
//! the kernel for an immediate ACK (`TCP_QUICKACK`) whenever it waits for the rest of a
//! response it has begun to read (src/http/h1/client.rs), so such a server answers a
//! keep-alive client at loopback speed: the median here is checked against 5 ms, an eighth of
//! the stall.

mod support;

use std::time::{Duration, Instant};

use support::{Cfg, Lb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head (no body) off `s`; `false` at the end of the stream.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..at + 4);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream in the manner of `http.server`: Nagle left on, and for each request the head
/// and the body written by two separate sends.
async fn two_send_upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut s, &mut buf).await {
                    let body = b"hello from a two-send server\n";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(head.as_bytes()).await.is_err()
                        || s.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One GET on the keep-alive connection `c`, read to the end of its 29-byte body.
async fn get(c: &mut TcpStream) {
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"two-send server\n") {
        let n = c.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test]
async fn a_server_writing_head_and_body_apart_does_not_stall_keepalive_requests() {
    let up = two_send_upstream().await;
    let toml = Cfg::http("web")
        .backend("py")
        .servers(&[up])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let mut c = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    c.set_nodelay(true).unwrap();
    // The first requests open and warm the pooled connection.
    for _ in 0..3 {
        get(&mut c).await;
    }
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..25 {
        let t = Instant::now();
        get(&mut c).await;
        took.push(t.elapsed());
    }
    took.sort();
    let p50 = took[took.len() / 2];
    assert!(
        p50 < Duration::from_millis(5),
        "median {p50:?} over {} keep-alive requests (a delayed-ACK stall is ~40 ms): {took:?}",
        took.len()
    );
    lb.shutdown().await;
}
