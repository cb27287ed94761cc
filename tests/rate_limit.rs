//! `rate_limit` end to end (README, "Rate limits"), with real upstreams: a burst of 5 at
//! `1/s` lets 5 requests through and answers the 6th `429` with `Retry-After` and a plain-text
//! body, over HTTP/1.1 and HTTP/2 (h2c) alike; `key = "header:NAME"` gives each value its own
//! bucket (and a request without the header is counted by its address); refusals show in
//! `switchyard_requests_refused_total{reason="rate_limited"}`, the stats API and the access log;
//! a reload keeps an unchanged limit's buckets and empties a changed one's; a service tree's
//! routes (etcd) carry the frontend's limit.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use support::config::{self, Api, Cfg};
use support::{Etcd, Lb, Upstream, metric};

/// The status codes of `n` requests in a row.
async fn codes(
    addr: SocketAddr,
    h2: bool,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(support::send(addr, h2, host, "/", headers).await.0.as_u16());
    }
    out
}

#[tokio::test]
async fn a_burst_passes_then_429_with_retry_after_per_key() {
    let up = Upstream::start("rl-up").await;
    let dir = std::env::temp_dir().join(format!(
        "switchyard-rl-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let toml = Cfg::new()
        .table(&format!(
            "[log]\naccess = \"json\"\naccess_file = {}",
            config::path(&log)
        ))
        .frontend("rl")
        .no_fallback()
        .route(
            "host = \"h1.example.com\"\nbackend = \"rl-up\"\n\
             rate_limit = { rate = \"1/s\", burst = 5 }",
        )
        .route(
            "host = \"h2.example.com\"\nbackend = \"rl-up\"\n\
             rate_limit = { rate = \"1/s\", burst = 5 }",
        )
        .route(
            "host = \"keyed.example.com\"\nbackend = \"rl-up\"\n\
             rate_limit = { rate = \"1/m\", burst = 2, key = \"header:X-Client\" }",
        )
        .backend("rl-up")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("rl");
    for (h2, host) in [(false, "h1.example.com"), (true, "h2.example.com")] {
        assert_eq!(
            codes(addr, h2, host, &[], 5).await,
            [200; 5],
            "the burst passes (h2={h2})"
        );
        let (code, h, body) = support::send(addr, h2, host, "/", &[]).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "the 6th (h2={h2})");
        assert_eq!(h["retry-after"], "1", "h2={h2}");
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
        assert!(body.starts_with("429 Too Many Requests"), "{body}");
    }
    assert_eq!(up.hits(), 10, "no refused request reached the upstream");

    // One bucket per header value, over either protocol; no header: the client's address.
    let a = [("x-client", "a")];
    assert_eq!(
        codes(addr, false, "keyed.example.com", &a, 2).await,
        [200, 200]
    );
    let (code, h, _) = support::send(addr, true, "keyed.example.com", "/", &a).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let b = [("x-client", "b")];
    assert_eq!(
        codes(addr, true, "keyed.example.com", &b, 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        codes(addr, false, "keyed.example.com", &[], 3).await,
        [200, 200, 429]
    );
    assert_eq!(up.hits(), 16);

    let m = lb.metrics().await;
    let refused = metric(
        &m,
        "switchyard_requests_refused_total{frontend=\"rl\",reason=\"rate_limited\"}",
    );
    assert_eq!(refused, 5.0, "{m}");
    let (status, body) = support::get(lb.admin_addr(), "/api/v1/frontends").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fe = j["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "rl")
        .unwrap_or_else(|| panic!("no frontend rl in {j}"));
    assert_eq!(fe["requests_refused"]["rate_limited"], 5, "{fe}");
    let lines = support::log_lines(&log, "rl", 21).await;
    let limited: Vec<_> = lines
        .iter()
        .filter(|l| l["termination"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 5, "{lines:?}");
    assert!(limited.iter().all(|l| l["status"] == 429), "{limited:?}");
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_limits_buckets() {
    let up = Upstream::start("rlr-up").await;
    let toml = |rate: &str| {
        Cfg::http("rlr")
            .frontend_lines(&format!("rate_limit = {{ rate = \"{rate}\", burst = 2 }}"))
            .backend("rlr-up")
            .servers(&[up.addr()])
            .check_none()
            .toml()
    };
    let lb = Lb::start_ready(&toml("1/m")).await;
    let addr = lb.http_addr("rlr");
    assert_eq!(codes(addr, false, "x", &[], 3).await, [200, 200, 429]);
    lb.reload_toml(&toml("1/m")).await;
    assert_eq!(
        codes(addr, false, "x", &[], 1).await,
        [429],
        "the same limit keeps its empty bucket"
    );
    lb.reload_toml(&toml("2/m")).await;
    assert_eq!(
        codes(addr, false, "x", &[], 3).await,
        [200, 200, 429],
        "a changed limit starts afresh"
    );
    lb.shutdown().await;
}

/// A service tree's routes carry the frontend's `rate_limit`.
#[tokio::test]
async fn tree_routes_carry_the_frontends_limit() {
    let etcd = Etcd::start().await;
    let up = Upstream::start("T").await;
    let toml = Cfg::http("web")
        .no_fallback()
        .etcd(&etcd.url())
        .api(Api::V3)
        .etcd_lines("backoff_max = \"300ms\"")
        .frontend_lines("rate_limit = { rate = \"1/h\", burst = 3, key = \"header:X-Client\" }")
        .backend("svc-defaults")
        .check_none()
        .service_tree(
            "frontends = [\"web\"]\ntemplate = \"svc-defaults\"\n\
             etcd_prefix = \"/services\"\nhost = \"{service}.example.com\"",
        )
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("web");
    etcd.put_v3("/services/cart/backend/1", &up.addr().to_string())
        .await;
    // Each poll under its own key, so waiting for the route spends no one's tokens.
    let mut n = 0;
    support::wait_until("the tree's route", Duration::from_secs(10), || {
        n += 1;
        let key = format!("poll-{n}");
        async move {
            support::send(addr, false, "cart.example.com", "/", &[("x-client", &key)])
                .await
                .0
                == StatusCode::OK
        }
    })
    .await;
    let hits = up.hits();
    let k = [("x-client", "k")];
    assert_eq!(
        codes(addr, false, "cart.example.com", &k, 4).await,
        [200, 200, 200, 429]
    );
    assert_eq!(codes(addr, true, "cart.example.com", &k, 1).await, [429]);
    assert_eq!(up.hits(), hits + 3);
    lb.shutdown().await;
}
