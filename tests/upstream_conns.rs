//! Upstream connections over their life: pooled keep-alive connections are closed once idle for
//! the backend's `pool_idle_timeout` (on the next request, or by the periodic upkeep when no
//! request comes), and a server that cuts a response body short counts as a live failure: it is
//! ejected and counted in `switchyard_upstream_aborts_total`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Lb, Upstream, get, http_client, metric, static_config, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections a raw upstream accepted and saw closed by the peer.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
}

/// A raw HTTP/1.1 upstream: answers every bodiless request on a connection with `body` (or, if
/// `cut` is set, announces 100 bytes and closes after sending 5 of them).
async fn raw_upstream(cut: bool) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c2 = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c2.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&c2);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        counts.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if cut {
                            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort";
                            let _ = s.write_all(head.as_bytes()).await;
                            return;
                        }
                        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn idle_pooled_connections_close_after_pool_idle_timeout() {
    let (up, counts) = raw_upstream(false).await;
    let lb = Lb::start_ready(&static_config(
        "idlepool",
        &[up.to_string()],
        "",
        "pool_idle_timeout = \"400ms\"\n[backend.check]\ntype = \"none\"",
    ))
    .await;
    let web = lb.http_addr("web");
    // Back to back: the second request reuses the pooled connection.
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(counts.closed.load(Ordering::SeqCst), 0);
    // No request comes: the upkeep closes it (within the timeout plus one upkeep tick).
    let c = &counts;
    wait_until(
        "idle connection closed",
        Duration::from_secs(4),
        || async move { c.closed.load(Ordering::SeqCst) == 1 },
    )
    .await;
    // The next request opens a new one, which then idles past the timeout and is not reused.
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    lb.shutdown().await;
}

/// TCP checks every minute: they pass for anything that accepts, and too late to matter here.
const CHECKS_SLOW: &str =
    "[backend.check]\ntype = \"tcp\"\ninter = \"60s\"\nfastinter = \"60s\"\ndowninter = \"60s\"";

#[tokio::test]
async fn a_server_cutting_bodies_short_is_ejected_and_counted() {
    let good = Upstream::start("A").await;
    let (bad, _) = raw_upstream(true).await;
    let backend = "cutter";
    // Checks pass for both (both accept), and slowly: only the live failure can eject `bad`.
    let lb = Lb::start_ready(&static_config(
        backend,
        &[good.addr().to_string(), bad.to_string()],
        "",
        CHECKS_SLOW,
    ))
    .await;
    let web = lb.http_addr("web");
    // Round robin over two: within a few requests one lands on `bad` and its body breaks.
    let mut cut = 0;
    for _ in 0..4 {
        let resp = http_client()
            .get(format!("http://{web}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        if resp.bytes().await.is_err() {
            cut += 1;
        }
    }
    assert_eq!(cut, 1, "one body cut short, then the server was out");
    let lb_ref = &lb;
    let bad_addr = bad.to_string();
    let state = || async {
        let j = lb_ref.backends().await;
        j["backends"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["addr"] == bad_addr.as_str())
            .map(|s| s["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(state().await, "down");
    for _ in 0..6 {
        assert_eq!(get(web, "/").await, (200, "A".to_string()));
    }
    let text = lb.metrics().await;
    let aborts = metric(
        &text,
        &format!("switchyard_upstream_aborts_total{{backend=\"{backend}\",server=\"{bad}\"}}"),
    );
    assert_eq!(aborts, 1.0, "{text}");
    lb.shutdown().await;
}
