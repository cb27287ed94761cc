//! Discovery against a real 3-member etcd cluster, with Switchyard connected to member 0 first:
//! the member it watches is SIGKILLed while changes are written through the other two (every
//! change is seen, no request fails), and quorum is lost (2 of 3 killed: the last set keeps
//! serving, and changes are seen again once the members are back). The same for the v3 API.
//! At the bottom, self-tests of the cluster harness and of the v3 gateway helpers.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::config::Api;
use support::{
    Cfg, Etcd, EtcdCluster, Lb, Upstream, cached_http_client, http_client, try_get_cached,
    wait_until,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PREFIX: &str = "/testservice/backend";
/// A change must reach `/api/v1/backends` within this (an election takes ~2 s, a restarted
/// member rejoins in < 3 s; Switchyard's reconnect backoff is capped at 500 ms here).
const SEE_CHANGE: Duration = Duration::from_secs(15);

/// Register `key = value` through member `i` (v2 keys API or v3 gateway: separate keyspaces).
async fn put(api: Api, cluster: &EtcdCluster, i: usize, key: &str, value: &str) {
    match api {
        Api::V2 => {
            cluster.put(i, key, value).await;
        }
        Api::V3 => {
            cluster.put_v3(i, key, value).await;
        }
    }
}

async fn delete(api: Api, cluster: &EtcdCluster, i: usize, key: &str) {
    match api {
        Api::V2 => {
            cluster.delete(i, key).await;
        }
        Api::V3 => {
            cluster.delete_v3(i, key).await;
        }
    }
}

fn key(n: u32) -> String {
    format!("{PREFIX}/{n}")
}

/// One backend name per test: the metrics recorder is process-wide and tests run in parallel.
fn config(cluster: &EtcdCluster, api: Api, backend: &str) -> String {
    Cfg::http("web")
        .etcd_endpoints(&cluster.urls())
        .api(api)
        .etcd_lines("backoff_max = \"500ms\"")
        .backend(backend)
        .prefix(PREFIX)
        .check_none()
        .toml()
}

/// `GET /api/v1/backends` with the cached client (`Lb::backends` builds a client per call; no
/// build at all keeps the timings printed here close to the truth).
async fn backends(lb: &Lb) -> serde_json::Value {
    let (status, body) = try_get_cached(lb.admin_addr(), "/api/v1/backends")
        .await
        .unwrap_or_else(|e| panic!("GET /api/v1/backends: {e}"));
    assert_eq!(status, 200, "/api/v1/backends: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/v1/backends: {e}: {body}"))
}

/// Server addresses the admin API lists for the (only) backend, sorted.
async fn listed(lb: &Lb) -> Vec<String> {
    let j = backends(lb).await;
    let mut v: Vec<String> = j["backends"][0]["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no servers array in {j}"))
        .iter()
        .map(|s| s["addr"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(addrs: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

/// Poll `/api/v1/backends` until it lists exactly `want`; returns how long that took.
async fn wait_listed(lb: &Lb, what: &str, want: &[SocketAddr], deadline: Duration) -> Duration {
    let want = sorted(want);
    let start = Instant::now();
    let mut last = vec![];
    while start.elapsed() < deadline {
        last = listed(lb).await;
        if last == want {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: after {deadline:?} listed {last:?}, wanted {want:?}");
}

async fn wait_connected(lb: &Lb, what: &str) {
    wait_until(what, SEE_CHANGE, || async move {
        backends(lb).await["discovery"]["connected"] == true
    })
    .await;
}

/// A request loop through the frontend (a new connection per request) until `finish`.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let client = http_client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                match client.get(format!("http://{addr}/")).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.bytes().await;
                        ok += 1;
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        failed.push(format!("{status} after {:?}: {body}", t.elapsed()));
                    }
                    Err(e) => failed.push(format!("transport error after {:?}: {e}", t.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failed)
        });
        Traffic { stop, handle }
    }

    /// Stop the loop; (requests that succeeded, descriptions of those that failed).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("traffic task panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// scenarios, shared by v2 and v3

/// Kill member 0 (the one Switchyard watches first); while it is down, add a server via member 1
/// and delete one via member 2: both changes are seen, traffic never fails, discovery reconnects.
async fn watched_member_killed(api: Api, backend: &str) {
    let cluster = EtcdCluster::start(3).await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let c = Upstream::start("C").await;
    put(api, &cluster, 0, &key(1), &a.addr().to_string()).await;
    put(api, &cluster, 0, &key(2), &b.addr().to_string()).await;

    let lb = Lb::start_ready(&config(&cluster, api, backend)).await;
    wait_listed(&lb, "initial listing", &[a.addr(), b.addr()], SEE_CHANGE).await;
    let leader = cluster.leader().await;
    let traffic = Traffic::start(lb.http_addr("web"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    cluster.kill(0);
    let t = Instant::now();
    put(api, &cluster, 1, &key(3), &c.addr().to_string()).await;
    let wrote_add = t.elapsed();
    let seen_add = wait_listed(
        &lb,
        "add via member 1 while member 0 is down",
        &[a.addr(), b.addr(), c.addr()],
        SEE_CHANGE,
    )
    .await;
    let t = Instant::now();
    delete(api, &cluster, 2, &key(1)).await;
    let wrote_delete = t.elapsed();
    let seen_delete = wait_listed(
        &lb,
        "delete via member 2 while member 0 is down",
        &[b.addr(), c.addr()],
        SEE_CHANGE,
    )
    .await;
    wait_connected(&lb, "discovery connected again (to member 1 or 2)").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failed) = traffic.finish().await;
    eprintln!(
        "{api:?}: member 0 killed (leader was {leader}): add written in {wrote_add:?}, listed \
         {seen_add:?} later; delete written in {wrote_delete:?}, listed {seen_delete:?} later; \
         {ok} requests ok, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while member 0 was down: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok >= 20, "the request loop made only {ok} requests");
    lb.shutdown().await;
}

/// Kill members 0 and 1 (quorum lost; Switchyard's member among them): the last set keeps
/// serving and is listed unchanged; once both are back, a new change is seen.
async fn quorum_lost_and_regained(api: Api, backend: &str) {
    let cluster = EtcdCluster::start(3).await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let c = Upstream::start("C").await;
    put(api, &cluster, 0, &key(1), &a.addr().to_string()).await;
    put(api, &cluster, 0, &key(2), &b.addr().to_string()).await;

    let lb = Lb::start_ready(&config(&cluster, api, backend)).await;
    let before = [a.addr(), b.addr()];
    wait_listed(&lb, "initial listing", &before, SEE_CHANGE).await;
    let traffic = Traffic::start(lb.http_addr("web"));

    cluster.kill(0);
    cluster.kill(1);
    // ~3 s without quorum: the listing never changes, traffic keeps flowing.
    let end = Instant::now() + Duration::from_secs(3);
    let (mut checks, mut connected) = (0, BTreeSet::new());
    while Instant::now() < end {
        let j = backends(&lb).await;
        connected.insert(j["discovery"]["connected"].to_string());
        assert_eq!(
            listed(&lb).await,
            sorted(&before),
            "the listed set changed while etcd had no quorum"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, failed) = traffic.finish().await;
    eprintln!(
        "{api:?}: 3 s without quorum: {checks} listings unchanged, discovery.connected seen as \
         {connected:?}, {ok} requests ok, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed without quorum: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok >= 20, "the request loop made only {ok} requests");
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both servers kept taking traffic"
    );

    let t = Instant::now();
    cluster.restart_many(&[0, 1]).await;
    let rejoined = t.elapsed();
    let t = Instant::now();
    put(api, &cluster, 0, &key(3), &c.addr().to_string()).await;
    let wrote = t.elapsed();
    let seen = wait_listed(
        &lb,
        "add after quorum is back",
        &[a.addr(), b.addr(), c.addr()],
        SEE_CHANGE,
    )
    .await;
    wait_connected(&lb, "discovery connected after quorum is back").await;
    eprintln!(
        "{api:?}: members back and healthy in {rejoined:?}; add written in {wrote:?}, listed {seen:?} later"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn v2_watched_member_killed_changes_via_others_are_seen_without_failed_requests() {
    watched_member_killed(Api::V2, "cluster_v2_kill").await;
}

#[tokio::test]
async fn v2_quorum_loss_keeps_the_last_set_then_sees_changes() {
    quorum_lost_and_regained(Api::V2, "cluster_v2_quorum").await;
}

#[tokio::test]
async fn v3_watched_member_killed_changes_via_others_are_seen_without_failed_requests() {
    watched_member_killed(Api::V3, "cluster_v3_kill").await;
}

#[tokio::test]
async fn v3_quorum_loss_keeps_the_last_set_then_sees_changes() {
    quorum_lost_and_regained(Api::V3, "cluster_v3_quorum").await;
}

// ---------------------------------------------------------------------------------------------
// harness self-tests: `EtcdCluster`, and the v3 gateway helpers on `Etcd`

/// v2 `GET` of `key` on member `i` (a local read): the value, or `None` on 404.
async fn v2_value(cluster: &EtcdCluster, i: usize, key: &str) -> Option<String> {
    let resp = cached_http_client()
        .get(format!("{}/v2/keys{key}", cluster.url(i)))
        .send()
        .await
        .expect("GET /v2/keys");
    if resp.status() == 404 {
        return None;
    }
    let v: serde_json::Value = resp.json().await.expect("JSON");
    v["node"]["value"].as_str().map(String::from)
}

/// v3 range of one key via member `i`'s gateway: the decoded value, or `None`.
async fn v3_value(base: &str, key: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let v: serde_json::Value = cached_http_client()
        .post(format!("{base}/v3/kv/range"))
        .json(&serde_json::json!({"key": b64.encode(key)}))
        .send()
        .await
        .expect("POST /v3/kv/range")
        .json()
        .await
        .expect("JSON");
    let value = v["kvs"].get(0)?["value"].as_str().unwrap_or_default();
    Some(String::from_utf8(b64.decode(value).expect("base64")).expect("utf-8"))
}

#[tokio::test]
async fn harness_cluster_replicates_survives_leader_kill_and_restarts() {
    let t = Instant::now();
    let cluster = EtcdCluster::start(3).await;
    eprintln!("3-member cluster healthy in {:?}", t.elapsed());
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(urls[1], cluster.url(1));
    assert!(urls[0] != urls[1] && urls[1] != urls[2] && urls[0] != urls[2]);

    // A write through any member is readable on every member, in both keyspaces.
    let idx = cluster.put(0, "/selftest/cluster/1", "one").await;
    assert!(idx > 0);
    let rev = cluster.put_v3(1, "/selftest/cluster/1", "uno").await;
    for i in 0..3 {
        let cluster = &cluster;
        wait_until(
            "replicated to every member",
            Duration::from_secs(5),
            || async move {
                v2_value(cluster, i, "/selftest/cluster/1").await.as_deref() == Some("one")
                    && v3_value(&cluster.url(i), "/selftest/cluster/1")
                        .await
                        .as_deref()
                        == Some("uno")
            },
        )
        .await;
        assert!(cluster.revision_v3(i).await >= rev);
    }

    // Kill the leader: a write via a survivor retries through the election and succeeds.
    let leader = cluster.leader().await;
    let pid = cluster.pid(leader).expect("leader runs");
    cluster.kill(leader);
    assert_eq!(cluster.pid(leader), None);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let other = (leader + 1) % 3;
    let t = Instant::now();
    cluster.put(other, "/selftest/cluster/2", "two").await;
    eprintln!("write after leader kill took {:?}", t.elapsed());
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader, "a killed member cannot be leader");

    // Delete via the other survivor; absent after, on both.
    let third = (leader + 2) % 3;
    cluster.delete(third, "/selftest/cluster/2").await;
    assert_eq!(v2_value(&cluster, third, "/selftest/cluster/2").await, None);
    cluster.delete_v3(third, "/selftest/cluster/1").await;
    assert_eq!(
        v3_value(&cluster.url(third), "/selftest/cluster/1").await,
        None
    );

    // Same command line and data dir: the member rejoins and has the writes made without it.
    let t = Instant::now();
    cluster.restart(leader).await;
    eprintln!("killed leader rejoined in {:?}", t.elapsed());
    let cluster = &cluster;
    wait_until(
        "restarted member caught up",
        Duration::from_secs(5),
        || async move {
            v2_value(cluster, leader, "/selftest/cluster/2")
                .await
                .is_none()
                && v2_value(cluster, leader, "/selftest/cluster/1")
                    .await
                    .as_deref()
                    == Some("one")
        },
    )
    .await;

    // Quorum loss and both back at once.
    cluster.kill(0);
    cluster.kill(1);
    let t = Instant::now();
    cluster.restart_many(&[0, 1]).await;
    eprintln!("two killed members rejoined in {:?}", t.elapsed());
    cluster.put(2, "/selftest/cluster/3", "three").await;
}

#[tokio::test]
async fn harness_v3_helpers_on_single_node() {
    let etcd = Etcd::start().await;
    let base = etcd.revision_v3().await;
    assert_eq!(base, 1, "a fresh v3 store is at revision 1");

    let r1 = etcd.put_v3("/selftest/v3/1", "127.0.0.1:18081").await;
    assert_eq!(r1, base + 1);
    let r2 = etcd.put_v3("/selftest/v3/2", "127.0.0.1:18082").await;
    assert_eq!(r2, r1 + 1);
    let (lease, r3) = etcd
        .put_v3_lease("/selftest/v3/3", "127.0.0.1:18083", 30)
        .await;
    assert_eq!(r3, r2 + 1);
    assert!(
        lease.parse::<i64>().is_ok_and(|id| id != 0),
        "lease {lease:?}"
    );
    etcd.put_v3("/selftest/v30", "outside the prefix").await;
    assert_eq!(etcd.revision_v3().await, r3 + 1);
    assert_eq!(
        v3_value(&etcd.url(), "/selftest/v3/1").await.as_deref(),
        Some("127.0.0.1:18081")
    );

    // The leased key really carries the lease.
    let ttl: serde_json::Value = http_client()
        .post(format!("{}/v3/lease/timetolive", etcd.url()))
        .json(&serde_json::json!({"ID": lease, "keys": true}))
        .send()
        .await
        .expect("timetolive")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ttl["keys"].as_array().map(Vec::len), Some(1), "{ttl}");

    let d = etcd.delete_v3("/selftest/v3/1").await;
    assert_eq!(d, r3 + 2);
    assert_eq!(v3_value(&etcd.url(), "/selftest/v3/1").await, None);
    // Deleting an absent key changes nothing.
    assert_eq!(etcd.delete_v3("/selftest/v3/1").await, d);
    let dp = etcd.delete_prefix_v3("/selftest/v3/").await;
    assert_eq!(dp, d + 1, "one deleterange of 2 keys is one revision");
    assert_eq!(v3_value(&etcd.url(), "/selftest/v3/2").await, None);
    assert_eq!(v3_value(&etcd.url(), "/selftest/v3/3").await, None);
    assert_eq!(
        v3_value(&etcd.url(), "/selftest/v30").await.as_deref(),
        Some("outside the prefix"),
        "range_end must stop at the prefix"
    );
    assert_eq!(etcd.revision_v3().await, dp);

    // Compaction: a range at an older revision is then refused.
    etcd.compact_v3(dp).await;
    let resp = http_client()
        .post(format!("{}/v3/kv/range", etcd.url()))
        .json(&serde_json::json!({"key": "L3NlbGZ0ZXN0", "revision": r1.to_string()}))
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("compacted"));

    // Failures panic with etcd's answer (the panic is in a task holding a clone of the Arc, so
    // etcd itself is dropped here, not while panicking).
    let etcd = Arc::new(etcd);
    let e = etcd.clone();
    let failed = tokio::spawn(async move { e.compact_v3(1_000).await })
        .await
        .expect_err("compacting a future revision must panic");
    let msg = failed
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        msg.contains("v3 compact 1000") && msg.contains("future revision"),
        "panic message: {msg}"
    );
}
