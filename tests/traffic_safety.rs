//! When a backend dies, hangs, flaps or is removed, no client request may fail because of it:
//! killing one of three upstreams under load, a flapping health endpoint, drain on removal
//! (and its timeout), all servers down, a registered-but-dead server, a POST that must not be
//! replayed, passive 5xx ejection and its guard, and weights from etcd JSON values.
//! Real etcd and real upstream servers throughout.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use support::raw::Script;
use support::{Cfg, Etcd, Lb, Upstream, get, http_client, try_get, wait_until};

/// Frontend `web` in front of `backend`, whose servers are under `/{backend}/backend` in etcd.
fn config(etcd: &Etcd, backend: &str, backend_extra: &str, check: &str) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .etcd_backend(backend)
        .backend_lines(backend_extra)
        .check(check)
        .toml()
}

async fn server_field(lb: &Lb, addr: &str, field: &str) -> serde_json::Value {
    lb.server(addr).await[field].clone()
}

/// `clients` keep-alive clients sending GETs until `stop` is set; returns (ok, failures).
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                switchyard::tls::install_provider();
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let (mut ok, mut failed) = (0usize, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(format!("http://{addr}/")).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok += 1;
                        }
                        Ok(r) => failed.push(format!(
                            "status {}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failed.push(format!("transport: {e}")),
                    }
                }
                (ok, failed)
            }));
        }
        let mut ok = 0;
        let mut failed = Vec::new();
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn killing_one_of_three_under_load_fails_no_request() {
    let etcd = Etcd::start().await;
    let ups = [
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
    ];
    for (i, u) in ups.iter().enumerate() {
        etcd.put(&format!("/kill/backend/{i}"), &u.addr().to_string())
            .await;
    }
    let lb = Lb::start_ready(&config(
        &etcd,
        "kill",
        "",
        "type = \"tcp\"\ninter = \"300ms\"\nfastinter = \"100ms\"\ndowninter = \"300ms\"\nrise = 2\nfall = 3",
    ))
    .await;
    let web = lb.http_addr("web");
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(web, 16, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dead = ups[1].addr();
    let killed_at = Instant::now();
    ups[1].stop().await; // listener closed, open connections dropped mid-flight
    let lb_ref = &lb;
    wait_until("B marked down", Duration::from_secs(5), || async move {
        server_field(lb_ref, &dead.to_string(), "state").await == "down"
    })
    .await;
    let detect = killed_at.elapsed();
    assert!(
        detect <= Duration::from_millis(900),
        "detected after {detect:?}, bound inter x fall = 900ms"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let back = Upstream::start_at("B", dead, |_req| async {
        Response::new(Full::new(Bytes::from("B")))
    })
    .await;
    wait_until("B back up", Duration::from_secs(5), || async move {
        server_field(lb_ref, &dead.to_string(), "state").await == "up"
    })
    .await;
    let back_hits = back.hits();
    wait_until("B takes traffic again", Duration::from_secs(5), || {
        let b = &back;
        async move { b.hits() > back_hits + 10 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    assert!(ok > 200, "load ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_flapping_upstream_does_not_make_routing_oscillate() {
    let etcd = Etcd::start().await;
    // Its health endpoint alternates pass/fail on every check: never `rise` (2) passes or
    // `fall` (3) failures in a row, so its state must not move.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    let flappy = Upstream::start_with("flappy", move |req| {
        let n = Arc::clone(&n2);
        async move {
            let mut r = Response::new(Full::new(Bytes::from("flappy")));
            if req.uri().path() == "/health" && n.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            r
        }
    })
    .await;
    etcd.put("/flap/backend/1", &flappy.addr().to_string())
        .await;
    let lb = Lb::start_ready(&config(
        &etcd,
        "flap",
        "",
        "type = \"http\"\npath = \"/health\"\ninter = \"50ms\"\nrise = 2\nfall = 3",
    ))
    .await;
    let addr = flappy.addr().to_string();
    let lb_ref = &lb;
    wait_until("20 checks", Duration::from_secs(10), || {
        let n = &n;
        async move { n.load(Ordering::SeqCst) >= 20 }
    })
    .await;
    assert_eq!(server_field(lb_ref, &addr, "state").await, "up");
    let age = server_field(lb_ref, &addr, "state_age_seconds")
        .await
        .as_f64()
        .unwrap();
    assert!(
        age >= 0.5,
        "state changed recently ({age} s ago): routing oscillated"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn in_flight_request_survives_removal_and_drain_timeout_cuts_stragglers() {
    let etcd = Etcd::start().await;
    let slow = Upstream::start_with("slow", |req| async move {
        let ms: u64 = req
            .uri()
            .path()
            .trim_start_matches('/')
            .parse()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(Full::new(Bytes::from("slow")))
    })
    .await;
    etcd.put("/drain/backend/1", &slow.addr().to_string()).await;
    let lb = Lb::start_ready(&config(
        &etcd,
        "drain",
        "drain_timeout = \"1500ms\"",
        "type = \"none\"",
    ))
    .await;
    let web = lb.http_addr("web");

    // A 700 ms request survives the removal of its server, which is listed as draining meanwhile.
    let inflight = tokio::spawn(async move { try_get(web, "/700").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    etcd.delete("/drain/backend/1").await;
    let lb_ref = &lb;
    let addr = slow.addr().to_string();
    let a = addr.clone();
    wait_until("listed as draining", Duration::from_secs(3), || {
        let a = a.clone();
        async move { server_field(lb_ref, &a, "state").await == "draining" }
    })
    .await;
    assert_eq!(
        get(web, "/").await.0,
        503,
        "no new request goes to a draining server"
    );
    assert_eq!(inflight.await.unwrap().unwrap(), (200, "slow".to_string()));
    let a = addr.clone();
    wait_until("gone once drained", Duration::from_secs(3), || {
        let a = a.clone();
        async move { server_field(lb_ref, &a, "state").await.is_null() }
    })
    .await;

    // A request longer than drain_timeout is cut off when the timeout passes.
    etcd.put("/drain/backend/1", &slow.addr().to_string()).await;
    wait_until("re-registered", Duration::from_secs(3), || async move {
        get(web, "/").await.0 == 200
    })
    .await;
    let t = Instant::now();
    let straggler = tokio::spawn(async move { try_get(web, "/10000").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    etcd.delete("/drain/backend/1").await;
    let r = straggler.await.unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "straggler held for {took:?}");
    assert!(
        took >= Duration::from_millis(1400),
        "cut before drain_timeout: {took:?}"
    );
    assert!(!matches!(r, Ok((200, _))), "{r:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn all_servers_down_is_a_quick_503() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    etcd.put("/alldown/backend/1", &a.addr().to_string()).await;
    etcd.put("/alldown/backend/2", &b.addr().to_string()).await;
    let lb = Lb::start_ready(&config(
        &etcd,
        "alldown",
        "",
        "type = \"tcp\"\ninter = \"100ms\"\nfall = 1\nrise = 1",
    ))
    .await;
    a.stop().await;
    b.stop().await;
    let lb_ref = &lb;
    wait_until("both down", Duration::from_secs(5), || async move {
        let servers = lb_ref.servers().await;
        servers.iter().all(|s| s["state"] == "down")
    })
    .await;
    for _ in 0..5 {
        let t = Instant::now();
        let (status, body) = get(lb.http_addr("web"), "/").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("alldown"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "503 took {:?}",
            t.elapsed()
        );
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn registered_but_not_listening_gets_no_traffic_after_the_first_failure() {
    let etcd = Etcd::start().await;
    let live = Upstream::start("live").await;
    let dead = format!("127.0.0.1:{}", support::dead_port());
    etcd.put("/ghost/backend/1", &dead).await;
    etcd.put("/ghost/backend/2", &live.addr().to_string()).await;
    // Slow active checks: only live traffic can find the dead server quickly.
    let lb = Lb::start_ready(&config(
        &etcd,
        "ghost",
        "",
        "type = \"tcp\"\ninter = \"1h\"\ndowninter = \"1h\"",
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(lb.http_addr("web"), "/").await,
            (200, "live".to_string())
        );
    }
    let text = lb.metrics().await;
    let errors: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "switchyard_upstream_connect_errors_total{{backend=\"ghost\",server=\"{dead}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0);
    assert!(errors <= 1.0, "the dead server was tried {errors} times");
    assert_eq!(server_field(&lb, &dead, "state").await, "down");
    lb.shutdown().await;
}

/// A raw upstream that reads a request (head and body), then closes the connection without
/// answering; the requests it read whole are in its `seen()`.
async fn resetting_upstream() -> Script {
    Script::start(|mut p| async move {
        let _ = p.request().await;
    })
    .await
}

/// Requests `up` read whole.
fn whole(up: &Script) -> usize {
    up.seen().iter().filter(|r| r.complete).count()
}

#[tokio::test]
async fn a_post_is_never_replayed_but_a_get_is() {
    let etcd = Etcd::start().await;
    let rst = resetting_upstream().await;
    etcd.put("/replay/backend/1", &rst.addr().to_string()).await;
    // Passive ejection off, so the resetting server stays in rotation for this test.
    let lb = Lb::start_ready(&config(
        &etcd,
        "replay",
        "[backend.passive]\nerror_limit = 0",
        "type = \"none\"",
    ))
    .await;
    let web = lb.http_addr("web");
    let resp = http_client()
        .post(format!("http://{web}/order"))
        .body("pay 10 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    assert_eq!(whole(&rst), 1, "the POST reached the upstream exactly once");

    // A bodiless GET that hits the resetting server is replayed on another one.
    let good = Upstream::start("good").await;
    etcd.put("/replay/backend/2", &good.addr().to_string())
        .await;
    wait_until("second server", Duration::from_secs(5), || async move {
        get(web, "/").await.0 == 200
    })
    .await;
    for _ in 0..6 {
        assert_eq!(get(web, "/").await, (200, "good".to_string()));
    }
    assert!(
        whole(&rst) >= 3,
        "GETs did reach the resetting server first"
    );
    let text = lb.metrics().await;
    assert!(
        text.contains("switchyard_retries_total{backend=\"replay\"}"),
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn consecutive_5xx_ejects_but_never_more_than_the_guard_allows() {
    let etcd = Etcd::start().await;
    let broken = Arc::new(AtomicBool::new(true));
    let b2 = Arc::clone(&broken);
    // Answers 500 to traffic while broken; its health endpoint always passes.
    let sick = Upstream::start_with("sick", move |req| {
        let broken = Arc::clone(&b2);
        async move {
            let mut r = Response::new(Full::new(Bytes::from("sick")));
            if req.uri().path() != "/health" && broken.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            r
        }
    })
    .await;
    let well = Upstream::start("well").await;
    etcd.put("/fivexx/backend/1", &sick.addr().to_string())
        .await;
    etcd.put("/fivexx/backend/2", &well.addr().to_string())
        .await;
    let lb = Lb::start_ready(&config(
        &etcd,
        "fivexx",
        "[backend.passive]\nconsecutive_5xx = 3\nmax_ejected_percent = 50",
        "type = \"http\"\npath = \"/health\"\ninter = \"1h\"\ndowninter = \"200ms\"\nfastinter = \"100ms\"\nrise = 2",
    ))
    .await;
    let web = lb.http_addr("web");
    let mut codes: HashMap<u16, usize> = HashMap::new();
    for _ in 0..20 {
        *codes.entry(get(web, "/").await.0).or_default() += 1;
    }
    assert_eq!(
        codes.get(&500),
        Some(&3),
        "ejected after 3 consecutive 500s: {codes:?}"
    );
    // It comes back through its active checks (which pass) and gets traffic again.
    broken.store(false, Ordering::SeqCst);
    let addr = sick.addr().to_string();
    let lb_ref = &lb;
    wait_until(
        "sick back up via active checks",
        Duration::from_secs(5),
        || {
            let a = addr.clone();
            async move { server_field(lb_ref, &a, "state").await == "up" }
        },
    )
    .await;

    // The guard: with max_ejected_percent = 50 and two servers both failing, only one is ejected.
    broken.store(true, Ordering::SeqCst);
    well.stop().await;
    for _ in 0..10 {
        let _ = try_get(web, "/").await;
    }
    let servers = lb.servers().await;
    let down = servers.iter().filter(|s| s["state"] == "down").count();
    assert_eq!(down, 1, "{servers:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn weights_from_etcd_json_values() {
    let etcd = Etcd::start().await;
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    etcd.put(
        "/weights/backend/1",
        &format!("{{\"addr\":\"{}\",\"weight\":3}}", heavy.addr()),
    )
    .await;
    etcd.put("/weights/backend/2", &light.addr().to_string())
        .await;
    let lb = Lb::start_ready(&config(&etcd, "weights", "", "type = \"none\"")).await;
    let web = lb.http_addr("web");
    wait_until("both listed", Duration::from_secs(5), || async move {
        lb_listed(web).await
    })
    .await;
    heavy.reset_hits();
    light.reset_hits();
    for _ in 0..400 {
        get(web, "/").await;
    }
    assert_eq!((heavy.hits(), light.hits()), (300, 100));
    lb.shutdown().await;
}

async fn lb_listed(web: SocketAddr) -> bool {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(get(web, "/").await.1);
    }
    seen.len() == 2
}
