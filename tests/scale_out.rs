//! Scale-out: two Switchyard instances watching one etcd converge on the same backend set within
//! milliseconds of every change (the "propagation" contract, per instance), and end up listing
//! exactly the same servers.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::config::Api;
use support::{Cfg, Etcd, Lb, try_get_cached};
use tokio::time::Instant;

const PREFIX: &str = "/scaleout/backend";
const CHANGES: usize = 20;
/// Propagation is "milliseconds, not a poll interval"; 100 ms leaves room for a shared machine.
const P99_LIMIT: Duration = Duration::from_millis(100);
/// A change not seen within this is a failure to converge, not a slow sample.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(5);

fn config(etcd: &Etcd, api: Api) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .api(api)
        .backend("scaleout")
        .prefix(PREFIX)
        .check_none()
        .toml()
}

/// (name, addr) of every server listed for the backend; `None` if the admin API did not answer.
async fn servers(admin: SocketAddr) -> Option<BTreeSet<(String, String)>> {
    let (status, body) = try_get_cached(admin, "/api/v1/backends").await.ok()?;
    assert_eq!(status, 200, "/api/v1/backends: {body}");
    let j: serde_json::Value = serde_json::from_str(&body).expect("/api/v1/backends JSON");
    Some(
        j["backends"][0]["servers"]
            .as_array()
            .unwrap_or_else(|| panic!("no servers array in {j}"))
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s["addr"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// Poll one instance every ~1 ms from `since` until it lists exactly `want`; the elapsed time.
async fn converge(
    which: &str,
    admin: SocketAddr,
    want: &BTreeSet<(String, String)>,
    since: Instant,
) -> Duration {
    let mut last = None;
    loop {
        let now = servers(admin).await;
        if now.as_ref() == Some(want) {
            return since.elapsed();
        }
        last = now.or(last);
        if since.elapsed() > CONVERGE_DEADLINE {
            panic!(
                "{which} did not converge within {CONVERGE_DEADLINE:?}: lists {last:?}, want {want:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Fake but valid server addresses: with `type = "none"` checks nothing dials them.
fn addr(n: usize) -> String {
    format!("127.0.0.1:{}", 41000 + n)
}

async fn write(etcd: &Etcd, api: Api, key: &str, value: Option<&str>) {
    match (api, value) {
        (Api::V2, Some(v)) => {
            etcd.put(key, v).await;
        }
        (Api::V2, None) => {
            etcd.delete(key).await;
        }
        (Api::V3, Some(v)) => {
            etcd.put_v3(key, v).await;
        }
        (Api::V3, None) => {
            etcd.delete_v3(key).await;
        }
    }
}

async fn two_instances_converge(api: Api) {
    let etcd = Etcd::start().await;
    let mut want = BTreeSet::new();
    for n in 0..3 {
        write(&etcd, api, &format!("{PREFIX}/{n}"), Some(&addr(n))).await;
        want.insert((n.to_string(), addr(n)));
    }
    let toml = config(&etcd, api);
    let (lb1, lb2) = tokio::join!(Lb::start_ready(&toml), Lb::start_ready(&toml));
    let (a1, a2) = (lb1.admin_addr(), lb2.admin_addr());
    let start = Instant::now();
    tokio::join!(
        converge("instance 1 (initial)", a1, &want, start),
        converge("instance 2 (initial)", a2, &want, start)
    );

    // Alternate: add a new server, delete the oldest one.
    let (mut next, mut oldest) = (3usize, 0usize);
    let (mut lat1, mut lat2) = (Vec::new(), Vec::new());
    for i in 0..CHANGES {
        let (key, value) = if i % 2 == 0 {
            let n = next;
            next += 1;
            want.insert((n.to_string(), addr(n)));
            (format!("{PREFIX}/{n}"), Some(addr(n)))
        } else {
            let n = oldest;
            oldest += 1;
            want.remove(&(n.to_string(), addr(n)));
            (format!("{PREFIX}/{n}"), None)
        };
        write(&etcd, api, &key, value.as_deref()).await;
        let written = Instant::now();
        let what = format!(
            "change {i} ({} {key})",
            if value.is_some() { "put" } else { "delete" }
        );
        let (w1, w2) = (
            format!("instance 1 after {what}"),
            format!("instance 2 after {what}"),
        );
        let (d1, d2) = tokio::join!(
            converge(&w1, a1, &want, written),
            converge(&w2, a2, &want, written)
        );
        lat1.push(d1);
        lat2.push(d2);
    }

    let mut all: Vec<Duration> = lat1.iter().chain(&lat2).copied().collect();
    all.sort();
    for (name, lat) in [("instance 1", &lat1), ("instance 2", &lat2)] {
        let mut s = lat.clone();
        s.sort();
        eprintln!(
            "{api:?} {name}: write -> listed over {} changes: p50 {:?}, p99 {:?}, max {:?}",
            s.len(),
            percentile(&s, 50.0),
            percentile(&s, 99.0),
            s[s.len() - 1]
        );
    }
    let (p50, p99) = (percentile(&all, 50.0), percentile(&all, 99.0));
    eprintln!("{api:?} both instances: p50 {p50:?}, p99 {p99:?}");
    assert!(
        p99 < P99_LIMIT,
        "propagation p99 {p99:?} >= {P99_LIMIT:?}; instance 1 {lat1:?}, instance 2 {lat2:?}"
    );

    // After all changes: exactly the same servers on both, and what etcd holds.
    let (s1, s2) = (servers(a1).await, servers(a2).await);
    assert_eq!(s1, s2, "the two instances list different servers");
    assert_eq!(s1.as_ref(), Some(&want));
    assert_eq!(want.len(), 3, "as many adds as deletes");
    lb1.shutdown().await;
    lb2.shutdown().await;
}

#[tokio::test]
async fn v2_two_instances_converge_within_milliseconds_of_each_change() {
    two_instances_converge(Api::V2).await;
}

#[tokio::test]
async fn v3_two_instances_converge_within_milliseconds_of_each_change() {
    two_instances_converge(Api::V3).await;
}
