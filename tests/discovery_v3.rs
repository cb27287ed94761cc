//! Discovery with `api = "v3"` (the JSON gateway watch) against a real etcd: listing, put,
//! delete, lease expiry, garbage values, compaction recovery, and etcd killed and restarted
//! while serving.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use support::config::Api;
use support::{Cfg, Etcd, Lb, Upstream, get, http_client, metric, wait_until};

fn config(etcd: &Etcd, backend: &str, extra_etcd: &str) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .api(Api::V3)
        .etcd_lines(extra_etcd)
        .etcd_backend(backend)
        .check_none()
        .toml()
}

async fn v3(etcd: &Etcd, path: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = http_client()
        .post(format!("{}/v3/{path}", etcd.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let j: serde_json::Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {j}");
    j
}

async fn put(etcd: &Etcd, key: &str, value: &str) {
    v3(
        etcd,
        "kv/put",
        serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)}),
    )
    .await;
}

async fn put_lease(etcd: &Etcd, key: &str, value: &str, ttl: u64) {
    let g = v3(etcd, "lease/grant", serde_json::json!({"TTL": ttl})).await;
    let id = g["ID"].as_str().unwrap().to_string();
    v3(
        etcd,
        "kv/put",
        serde_json::json!({"key": B64.encode(key), "value": B64.encode(value), "lease": id}),
    )
    .await;
}

async fn delete(etcd: &Etcd, key: &str) {
    v3(
        etcd,
        "kv/deleterange",
        serde_json::json!({"key": B64.encode(key)}),
    )
    .await;
}

async fn revision(etcd: &Etcd) -> i64 {
    let j = v3(
        etcd,
        "kv/range",
        serde_json::json!({"key": B64.encode("/")}),
    )
    .await;
    j["header"]["revision"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn v3_listing_put_delete_and_lease_expiry() {
    let etcd = Etcd::start().await;
    let (a, b, c) = (
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
    );
    put(&etcd, "/v3rr/backend/1", &a.addr().to_string()).await;
    // A sibling prefix must not leak in (range_end comes from the trailing slash).
    put(&etcd, "/v3rr/backend2/x", &c.addr().to_string()).await;
    let lb = Lb::start_ready(&config(&etcd, "v3rr", "")).await;
    lb.wait_listed("initial range", &[a.addr()]).await;
    assert_eq!(lb.backends().await["discovery"]["api"], "v3");

    put(&etcd, "/v3rr/backend/2", &b.addr().to_string()).await;
    lb.wait_listed("put", &[a.addr(), b.addr()]).await;
    let mut m: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        *m.entry(get(lb.http_addr("web"), "/").await.1).or_default() += 1;
    }
    assert_eq!((m["A"], m["B"]), (5, 5), "{m:?}");

    delete(&etcd, "/v3rr/backend/1").await;
    lb.wait_listed("delete", &[b.addr()]).await;

    // A key on a 2 s lease disappears when the lease expires (a plain DELETE event).
    put_lease(&etcd, "/v3rr/backend/leased", &c.addr().to_string(), 2).await;
    lb.wait_listed("leased put", &[b.addr(), c.addr()]).await;
    lb.wait_listed("lease expiry", &[b.addr()]).await;

    // Garbage is skipped and counted.
    put(&etcd, "/v3rr/backend/bad", "not an address").await;
    lb.wait_metric(
        "switchyard_discovery_invalid_values_total{backend=\"v3rr\"}",
        1.0,
    )
    .await;
    assert_eq!(lb.listed().await, [b.addr().to_string()]);
    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"v3rr\",action=\"put\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"v3rr\",action=\"delete\"}"
        ) >= 2.0
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn v3_compaction_resyncs() {
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    put(&etcd, "/v3cmp/backend/1", &a.addr().to_string()).await;
    // A short silence deadline re-opens the watch from the same cursor; once the history
    // before it is compacted, etcd cancels the watch with compact_revision.
    let lb = Lb::start_ready(&config(&etcd, "v3cmp", "poll_timeout = \"300ms\"")).await;
    lb.wait_listed("initial", &[a.addr()]).await;
    for i in 0..10 {
        put(&etcd, &format!("/unrelated/{i}"), "x").await;
    }
    let rev = revision(&etcd).await;
    v3(
        &etcd,
        "kv/compaction",
        serde_json::json!({"revision": rev.to_string(), "physical": true}),
    )
    .await;
    lb.wait_metric(
        "switchyard_discovery_resyncs_total{reason=\"compacted\"}",
        1.0,
    )
    .await;
    assert_eq!(lb.listed().await, [a.addr().to_string()]);
    put(&etcd, "/v3cmp/backend/2", &b.addr().to_string()).await;
    lb.wait_listed("watching again after the resync", &[a.addr(), b.addr()])
        .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn v3_outage_keeps_the_last_set_then_resyncs() {
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    put(&etcd, "/v3out/backend/1", &a.addr().to_string()).await;
    let lb = Lb::start_ready(&config(&etcd, "v3out", "backoff_max = \"500ms\"")).await;
    lb.wait_listed("initial", &[a.addr()]).await;
    etcd.kill();
    let lb_ref = &lb;
    wait_until("disconnected", Duration::from_secs(10), || async move {
        lb_ref.backends().await["discovery"]["connected"] == false
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(lb.http_addr("web"), "/").await, (200, "A".to_string()));
    }
    etcd.restart().await;
    wait_until("reconnected", Duration::from_secs(15), || async move {
        lb_ref.backends().await["discovery"]["connected"] == true
    })
    .await;
    put(&etcd, "/v3out/backend/2", &b.addr().to_string()).await;
    lb.wait_listed("after restart", &[a.addr(), b.addr()]).await;
    lb.shutdown().await;
}
