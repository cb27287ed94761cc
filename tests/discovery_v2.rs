//! Discovery over the etcd v2 keys API against a real etcd: initial listing, add, delete, TTL
//! expiry, refresh without an event, garbage values, nested keys and recursive directory
//! deletes, index-cleared (401) recovery, etcd killed and restarted while serving, and keys
//! written the classic way with `etcdctl`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::config::Api;
use support::{Cfg, Etcd, Lb, Upstream, get, http_client, metric, try_get, wait_until};

const PREFIX: &str = "/testservice/backend";

/// One backend name per test: the metrics recorder is process-wide and tests run in parallel.
fn config(etcd: &Etcd, backend: &str, extra_etcd: &str) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .api(Api::V2)
        .etcd_lines(extra_etcd)
        .backend(backend)
        .prefix(PREFIX)
        .check_none()
        .toml()
}

/// Body -> count over `n` requests.
async fn spread(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(addr, "/").await;
        assert_eq!(status, 200, "request failed: {body}");
        *m.entry(body).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn listing_add_delete_and_round_robin() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let c = Upstream::start("C").await;
    etcd.put(&format!("{PREFIX}/1"), &a.addr().to_string())
        .await;
    etcd.put(&format!("{PREFIX}/2"), &b.addr().to_string())
        .await;

    let lb = Lb::start_ready(&config(&etcd, "rr", "")).await;
    let web = lb.http_addr("web");
    lb.wait_listed("initial listing", &[a.addr(), b.addr()])
        .await;
    let m = spread(web, 20).await;
    assert_eq!(m.get("A"), Some(&10), "{m:?}");
    assert_eq!(m.get("B"), Some(&10), "{m:?}");

    // Add: the new server takes traffic.
    etcd.put(&format!("{PREFIX}/3"), &c.addr().to_string())
        .await;
    lb.wait_listed("after add", &[a.addr(), b.addr(), c.addr()])
        .await;
    let m = spread(web, 30).await;
    assert_eq!((m["A"], m["B"], m["C"]), (10, 10, 10), "{m:?}");

    // Delete: no more traffic to it.
    etcd.delete(&format!("{PREFIX}/1")).await;
    lb.wait_listed("after delete", &[b.addr(), c.addr()]).await;
    a.reset_hits();
    let m = spread(web, 10).await;
    assert_eq!(a.hits(), 0);
    assert_eq!((m["B"], m["C"]), (5, 5), "{m:?}");

    // Update in place (set with a new value): the key now points at A again.
    etcd.put(&format!("{PREFIX}/3"), &a.addr().to_string())
        .await;
    lb.wait_listed("after update", &[a.addr(), b.addr()]).await;

    let api = lb.backends().await;
    assert_eq!(api["discovery"]["api"], "v2");
    assert_eq!(api["discovery"]["connected"], true);
    assert!(api["discovery"]["index"].as_u64().unwrap() >= etcd.index().await - 1);
    let server = &api["backends"][0]["servers"][0];
    assert_eq!(server["source"], "etcd");
    assert_eq!(server["state"], "up");

    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"rr\",action=\"set\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"rr\",action=\"delete\"}"
        ) >= 1.0
    );
    assert!(metric(&text, "switchyard_discovery_last_sync_timestamp_seconds") > 1.0e9);
    lb.shutdown().await;
}

#[tokio::test]
async fn ttl_expiry_removes_and_refresh_keeps_without_an_event() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    etcd.put(&format!("{PREFIX}/keep"), &a.addr().to_string())
        .await;
    let lb = Lb::start_ready(&config(&etcd, "ttl", "")).await;

    // A key with a 2 s TTL that is refreshed the right way (refresh=true&prevExist=true) stays,
    // and the refreshes wake no watcher: no event is counted for them.
    etcd.put_ttl(&format!("{PREFIX}/hb"), &b.addr().to_string(), 2)
        .await;
    lb.wait_listed("after put_ttl", &[a.addr(), b.addr()]).await;
    let events_before = metric(
        &lb.metrics().await,
        "switchyard_discovery_events_total{backend=\"ttl\",action=\"set\"}",
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        etcd.refresh(&format!("{PREFIX}/hb"), 2).await;
    }
    assert_eq!(lb.listed().await.len(), 2, "refreshed key still listed");
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"ttl\",action=\"set\"}"
        ),
        events_before
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"ttl\",action=\"update\"}"
        ),
        0.0
    );

    // Stop refreshing: the key expires and the server leaves the pool.
    lb.wait_listed("after TTL expiry", &[a.addr()]).await;
    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_discovery_events_total{backend=\"ttl\",action=\"expire\"}"
        ) >= 1.0,
        "{text}"
    );
    b.reset_hits();
    spread(lb.http_addr("web"), 4).await;
    assert_eq!(b.hits(), 0);
    lb.shutdown().await;
}

#[tokio::test]
async fn garbage_values_are_skipped_and_counted() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    etcd.put(&format!("{PREFIX}/1"), &a.addr().to_string())
        .await;
    etcd.put(&format!("{PREFIX}/bad0"), "garbage").await;
    let lb = Lb::start_ready(&config(&etcd, "garbage", "")).await;
    lb.wait_listed("garbage in the listing is skipped", &[a.addr()])
        .await;

    for (k, v) in [
        ("bad1", ""),
        ("bad2", "10.0.0.1:0"),
        ("bad3", "10.0.0.1:70000"),
        ("bad4", "{\"addr\":"),
    ] {
        etcd.put(&format!("{PREFIX}/{k}"), v).await;
    }
    // The old-style heartbeat (ttl + prevExist, no refresh) blanks the value of a live key:
    // the server must not vanish.
    let resp = http_client()
        .put(format!("{}/v2/keys{PREFIX}/1", etcd.url()))
        .form(&[("ttl", "30"), ("prevExist", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        etcd.value(&format!("{PREFIX}/1")).await.as_deref(),
        Some("")
    );

    lb.wait_metric(
        "switchyard_discovery_invalid_values_total{backend=\"garbage\"}",
        6.0,
    )
    .await;
    assert_eq!(lb.listed().await, [a.addr().to_string()]);
    assert_eq!(spread(lb.http_addr("web"), 3).await["A"], 3);

    // JSON values with weight and drain are understood.
    let b = Upstream::start("B").await;
    etcd.put(
        &format!("{PREFIX}/json"),
        &format!("{{\"addr\":\"{}\",\"weight\":3,\"drain\":true}}", b.addr()),
    )
    .await;
    lb.wait_listed("json value", &[a.addr(), b.addr()]).await;
    let j = lb.backends().await;
    let srv = j["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "json")
        .unwrap()
        .clone();
    assert_eq!(srv["weight"], 3);
    assert_eq!(srv["state"], "draining");
    spread(lb.http_addr("web"), 4).await;
    assert_eq!(b.hits(), 0, "a draining server takes no new requests");
    lb.shutdown().await;
}

#[tokio::test]
async fn nested_keys_and_recursive_directory_delete() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let c = Upstream::start("C").await;
    // The prefix does not exist yet: an authoritative empty listing, and ready.
    let lb = Lb::start_ready(&config(&etcd, "nested", "")).await;
    let (status, body) = get(lb.http_addr("web"), "/").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("nested"),
        "503 body names the backend: {body}"
    );

    etcd.put(&format!("{PREFIX}/1"), &a.addr().to_string())
        .await;
    etcd.put(&format!("{PREFIX}/zone-a/2"), &b.addr().to_string())
        .await;
    etcd.put(&format!("{PREFIX}/zone-a/3"), &c.addr().to_string())
        .await;
    lb.wait_listed("nested keys", &[a.addr(), b.addr(), c.addr()])
        .await;
    let names: Vec<String> = lb.backends().await["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"2".to_string()),
        "name is the last path segment: {names:?}"
    );

    // One delete event for the whole directory drops every server below it.
    etcd.delete_dir(&format!("{PREFIX}/zone-a")).await;
    lb.wait_listed("after recursive delete", &[a.addr()]).await;

    // Deleting the prefix directory itself empties the pool: 503, not a stale server.
    etcd.delete_dir(PREFIX).await;
    lb.wait_listed("after deleting the prefix", &[]).await;
    assert_eq!(get(lb.http_addr("web"), "/").await.0, 503);
    lb.shutdown().await;
}

#[tokio::test]
async fn index_cleared_resyncs_and_keeps_watching() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    etcd.put(&format!("{PREFIX}/1"), &a.addr().to_string())
        .await;
    // A short poll deadline re-arms the long-poll often, always with the same cursor: once more
    // than 1000 unrelated writes have happened, etcd answers errorCode 401 on the re-arm.
    let lb = Lb::start_ready(&config(&etcd, "cleared", "poll_timeout = \"300ms\"")).await;
    lb.wait_listed("initial", &[a.addr()]).await;

    etcd.overflow_v2_event_window().await;
    lb.wait_metric(
        "switchyard_discovery_resyncs_total{reason=\"index_cleared\"}",
        1.0,
    )
    .await;
    // Nothing was lost and the watch goes on from the new index.
    assert_eq!(lb.listed().await, [a.addr().to_string()]);
    etcd.put(&format!("{PREFIX}/2"), &b.addr().to_string())
        .await;
    lb.wait_listed("add after resync", &[a.addr(), b.addr()])
        .await;
    assert!(
        lb.backends().await["discovery"]["resyncs"]
            .as_u64()
            .unwrap()
            >= 1
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn etcd_outage_keeps_the_last_set_then_resyncs() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let c = Upstream::start("C").await;
    etcd.put(&format!("{PREFIX}/1"), &a.addr().to_string())
        .await;
    etcd.put(&format!("{PREFIX}/2"), &b.addr().to_string())
        .await;
    let lb = Lb::start_ready(&config(&etcd, "outage", "backoff_max = \"500ms\"")).await;
    let web = lb.http_addr("web");
    lb.wait_listed("initial", &[a.addr(), b.addr()]).await;

    etcd.kill();
    let lb_ref = &lb;
    wait_until(
        "discovery reports disconnected",
        Duration::from_secs(10),
        || async move { lb_ref.backends().await["discovery"]["connected"] == false },
    )
    .await;
    // Unreachable is not empty: both servers still take traffic.
    let m = spread(web, 10).await;
    assert_eq!((m["A"], m["B"]), (5, 5), "{m:?}");
    assert_eq!(lb.listed().await.len(), 2);

    etcd.restart().await;
    wait_until(
        "discovery reconnects",
        Duration::from_secs(15),
        || async move { lb_ref.backends().await["discovery"]["connected"] == true },
    )
    .await;
    etcd.put(&format!("{PREFIX}/3"), &c.addr().to_string())
        .await;
    etcd.delete(&format!("{PREFIX}/1")).await;
    lb.wait_listed("changes after the restart", &[b.addr(), c.addr()])
        .await;
    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_discovery_resyncs_total{reason=\"reconnect\"}"
        ) >= 1.0,
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn classic_etcdctl_registration_is_seen() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let lb = Lb::start_ready(&config(&etcd, "etcdctl", "")).await;
    // Exactly what the backends' side runs today.
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .args([
            "--endpoints",
            &etcd.url(),
            "set",
            &format!("{PREFIX}/1"),
            &a.addr().to_string(),
            "--ttl",
            "30",
        ])
        .output()
        .expect("etcdctl (Debian package etcd-client) must be installed");
    assert!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lb.wait_listed("etcdctl set", &[a.addr()]).await;
    let (status, body) = try_get(lb.http_addr("web"), "/").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "A"));
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .args(["--endpoints", &etcd.url(), "rm", &format!("{PREFIX}/1")])
        .output()
        .unwrap();
    assert!(out.status.success());
    lb.wait_listed("etcdctl rm", &[]).await;
    lb.shutdown().await;
}
