//! Proves the test harness in `tests/support/` itself: a real etcd keeps a TTL'd key across a
//! SIGKILL and restart, writes move the v2 index, upstreams count hits, record headers and refuse
//! connections after `stop()`, and `Lb` runs Switchyard in-process on port-0 listeners.
//! Switchyard's own behaviours are tested in the other `tests/*.rs` files.

mod support;

use std::time::Duration;

use support::{Cfg, Etcd, Lb, Upstream, get, http_client, try_get, wait_until};

#[tokio::test]
async fn etcd_ttl_key_survives_kill_and_restart() {
    let etcd = Etcd::start().await;
    let first = etcd.index().await;
    assert!(
        first >= 3,
        "a fresh v2 store starts at index 3, got {first}"
    );

    let idx = etcd
        .put_ttl("/selftest/backend/1", "127.0.0.1:18081", 60)
        .await;
    assert!(idx > first, "put must consume an index ({idx} > {first})");
    assert_eq!(etcd.index().await, idx);

    // Read it back through the raw v2 API: value and TTL are there.
    let resp = http_client()
        .get(format!("{}/v2/keys/selftest/backend/1", etcd.url()))
        .send()
        .await
        .expect("GET /v2/keys");
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(v["node"]["value"], "127.0.0.1:18081");
    let ttl = v["node"]["ttl"].as_u64().expect("a TTL'd key has ttl");
    assert!((1..=60).contains(&ttl), "ttl {ttl}");

    // SIGKILL: the client port refuses connections.
    let pid = etcd.pid().expect("running");
    etcd.kill();
    assert_eq!(etcd.pid(), None);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd pid {pid} must be gone after kill()"
    );
    let down = http_client()
        .get(format!("{}/health", etcd.url()))
        .send()
        .await;
    assert!(down.is_err(), "etcd must be unreachable after kill()");

    // Same command line, same data dir: the key and its TTL survive.
    etcd.restart().await;
    assert_eq!(
        etcd.value("/selftest/backend/1").await.as_deref(),
        Some("127.0.0.1:18081")
    );
    assert!(
        etcd.index().await > idx,
        "a member restart bumps the index by one (internal write)"
    );

    // Heartbeat keeps the value; delete and recursive delete work.
    etcd.refresh("/selftest/backend/1", 30).await;
    assert_eq!(
        etcd.value("/selftest/backend/1").await.as_deref(),
        Some("127.0.0.1:18081")
    );
    etcd.put("/selftest/backend/sub/2", "127.0.0.1:18082").await;
    etcd.delete("/selftest/backend/1").await;
    assert_eq!(etcd.value("/selftest/backend/1").await, None);
    etcd.delete_dir("/selftest/backend").await;
    assert_eq!(etcd.value("/selftest/backend/sub/2").await, None);
}

#[tokio::test]
async fn etcd_ttl_expires() {
    let etcd = Etcd::start().await;
    etcd.put_ttl("/selftest/ttl/1", "127.0.0.1:18081", 1).await;
    assert!(etcd.value("/selftest/ttl/1").await.is_some());
    wait_until(
        "a 1 s TTL key to expire",
        Duration::from_secs(5),
        || async { etcd.value("/selftest/ttl/1").await.is_none() },
    )
    .await;
}

#[tokio::test]
async fn upstream_counts_hits_records_headers_and_stops() {
    let up = Upstream::start("alpha").await;
    assert_eq!(up.hits(), 0);
    assert!(up.last_request().is_none());

    for _ in 0..3 {
        assert_eq!(get(up.addr(), "/").await, (200, "alpha".to_string()));
    }
    assert_eq!(up.hits(), 3);

    let resp = http_client()
        .get(format!("http://{}/some/path?q=1", up.addr()))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .expect("GET with header");
    assert_eq!(resp.text().await.unwrap(), "alpha");
    assert_eq!(up.hits(), 4);
    let seen = up.last_request().expect("a request was recorded");
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.uri.path(), "/some/path");
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.2.3");

    up.stop().await;
    let err = try_get(up.addr(), "/").await;
    assert!(err.is_err(), "a stopped upstream must refuse connections");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn upstream_stop_closes_kept_alive_connections() {
    let up = Upstream::start("beta").await;
    // One pooled client: the second request reuses the first connection.
    switchyard::tls::install_provider();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/", up.addr());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    up.stop().await;
    assert!(
        client.get(&url).send().await.is_err(),
        "after stop() neither the pooled connection nor a new one may be served"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn lb_runs_in_process_with_static_servers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let toml = Cfg::http("web")
        .backend("static")
        .servers(&[a.addr(), b.addr()])
        .backend_lines("balance = \"roundrobin\"")
        .check_none()
        .toml();
    let lb = Lb::start(&toml).await;
    let (status, body) = get(lb.admin_addr(), "/healthz").await;
    assert_eq!(status, 200, "/healthz: {body}");
    lb.wait_ready().await;

    for _ in 0..4 {
        let (status, body) = get(lb.http_addr("web"), "/").await;
        assert_eq!(status, 200);
        assert!(body == "a" || body == "b", "unexpected body {body:?}");
    }
    assert_eq!(a.hits() + b.hits(), 4);
    assert_eq!((a.hits(), b.hits()), (2, 2), "round-robin over two servers");

    let backends = lb.backends().await;
    assert_eq!(backends["backends"][0]["name"], "static");
    lb.shutdown().await;
}
