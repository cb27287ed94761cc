//! `maxconn` on a frontend: at the limit the listener stops accepting, so a further client
//! waits (in the kernel's accept queue) instead of being refused, the clients already connected
//! go on being served, and the waiting one is served as soon as a connection closes.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::stream::get_a;
use support::{Cfg, Lb, Upstream, metric};

async fn connected(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), get_a(&mut s))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s
}

#[tokio::test]
async fn clients_beyond_maxconn_wait_and_are_served_when_one_leaves() {
    let up = Upstream::start("A").await;
    let toml = Cfg::http("web")
        .frontend_lines("maxconn = 2")
        .backend("maxconn")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    let mut first = connected(web).await;
    let mut second = connected(web).await;

    // The third connects (the kernel queues it) but is not served while two are open.
    let mut third = TcpStream::connect(web).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served beyond maxconn = 2"
    );
    // The established clients are unaffected.
    for s in [&mut first, &mut second] {
        let a = tokio::time::timeout(Duration::from_secs(5), get_a(s))
            .await
            .expect("an established client is still served")
            .unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_connections_limited_total{frontend=\"web\"}"
        ) >= 1.0,
        "{text}"
    );

    // One leaves: the waiting client is accepted and its request answered.
    drop(first);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !answer.ends_with(b"\r\n\r\nA") {
            let n = third.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed instead of served");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the waiting client is served once a connection closes");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    lb.shutdown().await;
}
