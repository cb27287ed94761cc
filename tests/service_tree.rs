//! `[[service_tree]]` against a real etcd, v2 and v3: a service is routed when its first server
//! key is written, by host or by path (with its `host` / `path_prefix` keys overriding the
//! templates), answers `503` naming it once its last server is gone and `404` after
//! `service_linger` (unless servers come back first), loses to a configured backend or route of
//! the same name, and stays routed through an etcd outage, a v2 index reset and a v3 compaction.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::config::Api;
use support::{Cfg, Etcd, Lb, Upstream, cached_http_client, metric, wait_until};
use tokio::time::Instant;

/// The test trees' `service_linger`.
const LINGER: Duration = Duration::from_secs(1);
/// How soon a service must be routed after its first key is written.
const PROPAGATION: Duration = Duration::from_secs(2);
/// Bound on anything else the tests wait for.
const PATIENCE: Duration = Duration::from_secs(10);

/// Writes and deletes through the API the test's Switchyard watches (etcd 3.4 keeps the v2 and
/// v3 stores apart).
async fn put(etcd: &Etcd, api: Api, key: &str, value: &str) {
    match api {
        Api::V2 => {
            etcd.put(key, value).await;
        }
        Api::V3 => {
            etcd.put_v3(key, value).await;
        }
    }
}

async fn delete(etcd: &Etcd, api: Api, key: &str) {
    match api {
        Api::V2 => {
            etcd.delete(key).await;
        }
        Api::V3 => {
            etcd.delete_v3(key).await;
        }
    }
}

/// `GET http://{addr}{path}` with `Host: {host}`: status and body, or `None` on a transport
/// error.
async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let resp = cached_http_client()
        .get(format!("http://{addr}{path}"))
        .header("host", host)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// Polls until `Host: host` on `path` answers `status` with a body containing `body`.
async fn wait_answer(lb: &Lb, host: &str, path: &str, status: u16, body: &str, within: Duration) {
    let addr = lb.http_addr("web");
    let mut last = None;
    let end = Instant::now() + within;
    while Instant::now() < end {
        last = get_host(addr, host, path).await;
        if last
            .as_ref()
            .is_some_and(|(s, b)| *s == status && b.contains(body))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{host}{path}: wanted {status} with {body:?} within {within:?}, last got {last:?}");
}

/// A Switchyard with frontend `web` (no fallback: unrouted requests get `404`), the template
/// backend `svc-defaults` (no health checks) and one tree with `tree_lines`.
fn config(etcd: &Etcd, api: Api, tree_lines: &str, more: impl FnOnce(Cfg) -> Cfg) -> String {
    let cfg = Cfg::http("web")
        .no_fallback()
        .etcd(&etcd.url())
        .api(api)
        .etcd_lines("backoff_max = \"300ms\"")
        .backend("svc-defaults")
        .check_none()
        .service_tree(&format!(
            "frontends = [\"web\"]\ntemplate = \"svc-defaults\"\nservice_linger = \"{}ms\"\n{tree_lines}",
            LINGER.as_millis()
        ));
    more(cfg).toml()
}

const BY_HOST: &str = "etcd_prefix = \"/services\"\nhost = \"{service}.example.com\"";

/// The routes of frontend `web` in `/api/v1/routes`.
async fn routes(lb: &Lb) -> Vec<serde_json::Value> {
    let (status, body) = support::get(lb.admin_addr(), "/api/v1/routes").await;
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    j["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "web")
        .unwrap_or_else(|| panic!("no frontend web in {j}"))["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The backend `name` in `/api/v1/backends` (`Null` when not listed).
async fn backend(lb: &Lb, name: &str) -> serde_json::Value {
    lb.backends().await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_default()
}

/// Asserts that `Host: host` is answered `200` with `body` on every request for `how_long`.
async fn stays_served(lb: &Lb, host: &str, body: &str, how_long: Duration) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let got = get_host(lb.http_addr("web"), host, "/").await;
        assert_eq!(
            got,
            Some((200, body.to_string())),
            "{host} stopped being served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service appears with its first key, a second one is routed apart, a `host` key moves a
/// route, and a service without servers answers `503` naming it, then `404` after its linger
/// (unless its servers come back first).
async fn services_appear_are_routed_and_linger(api: Api) {
    let etcd = Etcd::start().await;
    let (a, b, a2) = (
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("A2").await,
    );
    let lb = Lb::start_ready(&config(&etcd, api, BY_HOST, |c| c)).await;
    assert_eq!(
        get_host(lb.http_addr("web"), "foo.example.com", "/").await,
        Some((404, "no route for foo.example.com /\n".into())),
        "no service yet"
    );

    // A service appears with its first server key.
    put(&etcd, api, "/services/foo/backend/1", &a.addr().to_string()).await;
    wait_answer(&lb, "foo.example.com", "/", 200, "A", PROPAGATION).await;
    let listed = routes(&lb).await;
    let route = listed
        .iter()
        .find(|r| r["backend"] == "foo")
        .unwrap_or_else(|| panic!("no route to foo in {listed:?}"));
    assert_eq!(route["source"], "etcd", "{route}");
    assert_eq!(route["host"], "foo.example.com", "{route}");
    let b_foo = backend(&lb, "foo").await;
    assert_eq!(b_foo["etcd_prefix"], "/services/foo/backend", "{b_foo}");
    assert_eq!(b_foo["servers"][0]["addr"], a.addr().to_string(), "{b_foo}");

    // A second service, routed by its own host to its own upstream.
    put(&etcd, api, "/services/bar/backend/1", &b.addr().to_string()).await;
    wait_answer(&lb, "bar.example.com", "/", 200, "B", PROPAGATION).await;
    assert_eq!(
        get_host(lb.http_addr("web"), "foo.example.com", "/").await,
        Some((200, "A".into()))
    );

    // Its `host` key overrides the template.
    put(&etcd, api, "/services/bar/host", "api.example.com").await;
    wait_answer(&lb, "api.example.com", "/", 200, "B", PATIENCE).await;
    assert_eq!(
        get_host(lb.http_addr("web"), "bar.example.com", "/")
            .await
            .map(|r| r.0),
        Some(404),
        "the template's host is no longer bar's"
    );

    // The last server leaves: 503 naming the service; servers back before the linger ends:
    // served again, and still after the linger would have ended.
    delete(&etcd, api, "/services/foo/backend/1").await;
    wait_answer(&lb, "foo.example.com", "/", 503, "backend foo", PATIENCE).await;
    put(
        &etcd,
        api,
        "/services/foo/backend/2",
        &a2.addr().to_string(),
    )
    .await;
    wait_answer(&lb, "foo.example.com", "/", 200, "A2", PATIENCE).await;
    stays_served(&lb, "foo.example.com", "A2", LINGER * 2).await;

    // Gone for good: 503 for the linger, then 404, and out of the API.
    let gone = Instant::now();
    delete(&etcd, api, "/services/foo/backend/2").await;
    wait_answer(&lb, "foo.example.com", "/", 503, "backend foo", PATIENCE).await;
    wait_answer(&lb, "foo.example.com", "/", 404, "no route", PATIENCE).await;
    assert!(
        gone.elapsed() >= LINGER,
        "removed {:?} after its last server, before its linger",
        gone.elapsed()
    );
    assert!(backend(&lb, "foo").await.is_null());
    assert!(!routes(&lb).await.iter().any(|r| r["backend"] == "foo"));
    // The other service is untouched.
    assert_eq!(
        get_host(lb.http_addr("web"), "api.example.com", "/").await,
        Some((200, "B".into()))
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn v2_services_appear_are_routed_and_linger() {
    services_appear_are_routed_and_linger(Api::V2).await;
}

#[tokio::test]
async fn v3_services_appear_are_routed_and_linger() {
    services_appear_are_routed_and_linger(Api::V3).await;
}

/// A path-prefix tree with servers directly in each service's directory: the prefix is
/// stripped, a `path_prefix` key moves the route (and is no server), garbage is counted
/// against the service, and keys beside the servers are ignored.
async fn path_prefix_tree_strips_the_prefix(api: Api) {
    // Metrics are per process: each API's test has its own service name.
    let svc = format!("app{}", api.as_str());
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let tree = "etcd_prefix = \"/apps\"\nservers_dir = \"\"\npath_prefix = \"/{service}/\"\nstrip_prefix = true";
    let lb = Lb::start_ready(&config(&etcd, api, tree, |c| c)).await;
    put(&etcd, api, &format!("/apps/{svc}/1"), &a.addr().to_string()).await;
    let hello = format!("/{svc}/hello");
    wait_answer(&lb, "any.example.com", &hello, 200, "A", PROPAGATION).await;
    let seen = a.last_request().expect("A saw the request");
    assert_eq!(
        seen.uri.path(),
        "/hello",
        "the service's prefix is stripped"
    );

    put(&etcd, api, &format!("/apps/{svc}/path_prefix"), "/f/").await;
    wait_answer(&lb, "any.example.com", "/f/x", 200, "A", PATIENCE).await;
    assert_eq!(a.last_request().unwrap().uri.path(), "/x");
    assert_eq!(
        get_host(lb.http_addr("web"), "any.example.com", &hello)
            .await
            .map(|r| r.0),
        Some(404)
    );

    // Garbage beside a good server is skipped and counted against the service; a nested key is
    // no server of a tree whose servers are directly in the service's directory.
    put(&etcd, api, &format!("/apps/{svc}/2"), "not an address").await;
    put(&etcd, api, &format!("/apps/{svc}/config/x"), "127.0.0.1:1").await;
    let invalid = format!("switchyard_discovery_invalid_values_total{{backend=\"{svc}\"}}");
    lb.wait_metric(&invalid, 1.0).await;
    let servers = backend(&lb, &svc).await["servers"].clone();
    assert_eq!(
        servers.as_array().map(Vec::len),
        Some(1),
        "only the good server: {servers}"
    );
    // The path_prefix key never counted as a bad server value.
    let text = lb.metrics().await;
    assert_eq!(metric(&text, &invalid), 1.0, "{text}");
    lb.shutdown().await;
}

#[tokio::test]
async fn v2_path_prefix_tree_strips_the_prefix() {
    path_prefix_tree_strips_the_prefix(Api::V2).await;
}

#[tokio::test]
async fn v3_path_prefix_tree_strips_the_prefix() {
    path_prefix_tree_strips_the_prefix(Api::V3).await;
}

/// A configured backend named like a service, and a configured route with a service's host,
/// win over the tree; a directory that is no service name is skipped.
async fn configured_backend_and_route_win(api: Api) {
    let etcd = Etcd::start().await;
    let (a, b, c) = (
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
    );
    let cfg = config(&etcd, api, BY_HOST, |cfg| {
        cfg.frontend_lines(
            "[[frontend.route]]\nhost = \"foo.example.com\"\nbackend = \"foo\"\n\
             [[frontend.route]]\nhost = \"bar.example.com\"\nbackend = \"foo\"",
        )
        .backend("foo")
        .servers(&[c.addr()])
        .check_none()
    });
    let lb = Lb::start_ready(&cfg).await;
    put(&etcd, api, "/services/foo/backend/1", &a.addr().to_string()).await;
    put(&etcd, api, "/services/bar/backend/1", &b.addr().to_string()).await;
    put(
        &etcd,
        api,
        "/services/bad.name/backend/1",
        &b.addr().to_string(),
    )
    .await;
    put(&etcd, api, "/services/baz/backend/1", &b.addr().to_string()).await;
    // The watch applies events in order: once baz is routed, foo, bar and bad.name were seen.
    wait_answer(&lb, "baz.example.com", "/", 200, "B", PROPAGATION).await;
    let addr = lb.http_addr("web");
    assert_eq!(
        get_host(addr, "foo.example.com", "/").await,
        Some((200, "C".into())),
        "the configured backend foo"
    );
    assert_eq!(
        get_host(addr, "bar.example.com", "/").await,
        Some((200, "C".into())),
        "the configured route for bar's host"
    );
    let configured = backend(&lb, "foo").await;
    let servers = configured["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{configured}");
    assert_eq!(servers[0]["addr"], c.addr().to_string());
    assert!(configured["etcd_prefix"].is_null(), "{configured}");
    // bar is a service (its backend exists) but its route lost to the configured one.
    assert_eq!(
        backend(&lb, "bar").await["servers"][0]["addr"],
        b.addr().to_string()
    );
    let listed = routes(&lb).await;
    let to_bar: Vec<_> = listed.iter().filter(|r| r["backend"] == "bar").collect();
    assert!(to_bar.is_empty(), "{listed:?}");
    assert!(backend(&lb, "bad.name").await.is_null());
    assert_eq!(
        get_host(addr, "bad.name.example.com", "/")
            .await
            .map(|r| r.0),
        Some(404)
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn v2_configured_backend_and_route_win() {
    configured_backend_and_route_win(Api::V2).await;
}

#[tokio::test]
async fn v3_configured_backend_and_route_win() {
    configured_backend_and_route_win(Api::V3).await;
}

/// Service `foo` is routed, then `disrupt` does its worst to etcd: `foo` stays routed for
/// longer than a linger, and a service written after it is routed (the watch goes on).
async fn disruption_keeps_services(
    api: Api,
    etcd_lines: &str,
    disrupt: impl AsyncFnOnce(&Etcd, &Lb),
) {
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    put(&etcd, api, "/services/foo/backend/1", &a.addr().to_string()).await;
    let lb = Lb::start_ready(&config(&etcd, api, BY_HOST, |c| c.etcd_lines(etcd_lines))).await;
    wait_answer(&lb, "foo.example.com", "/", 200, "A", PATIENCE).await;
    disrupt(&etcd, &lb).await;
    stays_served(&lb, "foo.example.com", "A", LINGER * 2).await;
    put(&etcd, api, "/services/bar/backend/1", &b.addr().to_string()).await;
    wait_answer(&lb, "bar.example.com", "/", 200, "B", PATIENCE).await;
    lb.shutdown().await;
}

/// etcd goes away for longer than the linger and comes back.
async fn outage(etcd: &Etcd, lb: &Lb) {
    etcd.kill();
    wait_until("disconnected", PATIENCE, || async move {
        lb.backends().await["discovery"]["connected"] == false
    })
    .await;
    stays_served(lb, "foo.example.com", "A", LINGER * 2).await;
    etcd.restart().await;
    wait_until("reconnected", Duration::from_secs(15), || async move {
        lb.backends().await["discovery"]["connected"] == true
    })
    .await;
}

#[tokio::test]
async fn v2_outage_keeps_services() {
    disruption_keeps_services(Api::V2, "", outage).await;
}

#[tokio::test]
async fn v3_outage_keeps_services() {
    disruption_keeps_services(Api::V3, "", outage).await;
}

/// A short silence deadline re-arms the long-poll, or re-opens the watch, from its cursor, so
/// lost history is noticed at once.
const SHORT_POLL: &str = "poll_timeout = \"300ms\"";

/// v2: more than 1000 unrelated writes, so the re-armed long-poll gets errorCode 401 and the
/// tree is re-read.
#[tokio::test]
async fn v2_index_cleared_keeps_services() {
    disruption_keeps_services(Api::V2, SHORT_POLL, async |etcd: &Etcd, lb: &Lb| {
        etcd.overflow_v2_event_window().await;
        lb.wait_metric(
            "switchyard_discovery_resyncs_total{reason=\"index_cleared\"}",
            1.0,
        )
        .await;
    })
    .await;
}

/// v3: the history behind the watch's cursor is compacted, so the re-opened watch is cancelled
/// and the tree is re-read.
#[tokio::test]
async fn v3_compaction_keeps_services() {
    disruption_keeps_services(Api::V3, SHORT_POLL, async |etcd: &Etcd, lb: &Lb| {
        for i in 0..10 {
            etcd.put_v3(&format!("/unrelated/{i}"), "x").await;
        }
        etcd.compact_v3(etcd.revision_v3().await).await;
        lb.wait_metric(
            "switchyard_discovery_resyncs_total{reason=\"compacted\"}",
            1.0,
        )
        .await;
    })
    .await;
}

/// `[etcd] snapshot_file`: a service is saved like a configured backend, and a Switchyard that
/// starts while etcd is down routes it from the file.
#[tokio::test]
async fn services_are_restored_from_the_snapshot_file() {
    let dir = std::env::temp_dir().join(format!("switchyard-tree-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("last-known-good.json");
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    put(
        &etcd,
        Api::V2,
        "/services/foo/backend/1",
        &a.addr().to_string(),
    )
    .await;
    let snapshot = format!("snapshot_file = {}", support::config::path(&file));
    let cfg = config(&etcd, Api::V2, BY_HOST, |c| c.etcd_lines(&snapshot));
    let lb = Lb::start_ready(&cfg).await;
    wait_answer(&lb, "foo.example.com", "/", 200, "A", PATIENCE).await;
    let f = &file;
    wait_until("the snapshot file lists foo", PATIENCE, || async move {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .contains("/services/foo/backend")
    })
    .await;
    lb.shutdown().await;

    etcd.kill();
    let lb = Lb::start_ready(&cfg).await;
    let j = lb.backends().await;
    assert_eq!(j["discovery"]["from_snapshot_file"], true, "{j}");
    assert_eq!(
        get_host(lb.http_addr("web"), "foo.example.com", "/").await,
        Some((200, "A".into()))
    );
    lb.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A tree service is a backend like a configured one for the operator: the runtime API puts
/// its server in maintenance (the service answers `503` naming it) and back, and its requests
/// are counted under `backend="<service>"`.
#[tokio::test]
async fn the_runtime_api_and_metrics_see_tree_services() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let lb = Lb::start_ready(&config(&etcd, Api::V2, BY_HOST, |c| c)).await;
    put(
        &etcd,
        Api::V2,
        "/services/ops/backend/1",
        &a.addr().to_string(),
    )
    .await;
    wait_answer(&lb, "ops.example.com", "/", 200, "A", PROPAGATION).await;

    assert_eq!(lb.set_server_state("ops", "1", "maint").await, 200);
    wait_answer(&lb, "ops.example.com", "/", 503, "ops", PATIENCE).await;
    let listed = backend(&lb, "ops").await;
    assert_eq!(listed["servers"][0]["admin"], "maint", "{listed}");

    assert_eq!(lb.set_server_state("ops", "1", "ready").await, 200);
    wait_answer(&lb, "ops.example.com", "/", 200, "A", PATIENCE).await;
    let series = format!(
        "switchyard_requests_total{{frontend=\"web\",backend=\"ops\",server=\"{}\",code=\"200\"}}",
        a.addr()
    );
    assert!(metric(&lb.metrics().await, &series) >= 1.0, "{series}");
    lb.shutdown().await;
}
