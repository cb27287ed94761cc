//! Weighted splits end to end (README, "Weighted splits (canaries)"), with real upstreams
//! counting what reaches them: 10,000 requests at 90/10 over HTTP/1.1 and HTTP/2 land within 2%
//! of each share; the chosen backend is what the metrics name; a weight of 0 takes nothing;
//! retries stay inside the chosen backend; `/api/v1/routes` shows the split; and new weights
//! take effect on SIGHUP with no request lost while clients keep sending.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};

use support::config::Cfg;
use support::{
    Lb, Upstream, dead_port, free_port, get, h2c, http_client, metric, try_get, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// `n` requests to `http://addr/shop/x` over one keep-alive HTTP/1.1 client, from `tasks` tasks
/// at once; every answer must be `200`.
async fn h1_requests(addr: SocketAddr, n: usize, tasks: usize) {
    let client = http_client();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let client = client.clone();
        let mine = n / tasks + usize::from(t < n % tasks);
        set.spawn(async move {
            for _ in 0..mine {
                let r = client
                    .get(format!("http://{addr}/shop/x"))
                    .send()
                    .await
                    .expect("h1 request");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("h1 body");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("h1 task");
    }
}

/// `n` requests over one HTTP/2 connection (h2c), `tasks` streams at a time; all `200`.
async fn h2_requests(addr: SocketAddr, n: usize, tasks: usize) {
    let sender = h2c::<Empty<Bytes>>(addr).await;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let mut s = sender.clone();
        let mine = n / tasks + usize::from(t < n % tasks);
        set.spawn(async move {
            for _ in 0..mine {
                let req = Request::get(format!("http://{addr}/shop/x"))
                    .version(http::Version::HTTP_2)
                    .body(Empty::new())
                    .unwrap();
                let resp = s.send_request(req).await.expect("h2 request");
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.expect("h2 body");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("h2 task");
    }
}

fn share(part: usize, total: usize) -> f64 {
    part as f64 / total as f64
}

#[tokio::test]
async fn a_90_10_split_lands_within_2_percent_over_h1_and_h2() {
    let (v1, v2, other) = (
        Upstream::start("v1").await,
        Upstream::start("v2").await,
        Upstream::start("other").await,
    );
    let toml = Cfg::http("web")
        .to("other")
        .route(
            "path_prefix = \"/shop/\"\n\
             backends = [{ name = \"shop-v1\", weight = 90 }, { name = \"shop-v2\", weight = 10 }]",
        )
        .backend("shop-v1")
        .servers(&[v1.addr()])
        .check_none()
        .backend("shop-v2")
        .servers(&[v2.addr()])
        .check_none()
        .backend("other")
        .servers(&[other.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("web");
    tokio::time::timeout(Duration::from_secs(60), async {
        h1_requests(addr, 5_000, 4).await;
        h2_requests(addr, 5_000, 4).await;
    })
    .await
    .expect("10,000 requests within 60 s");
    let (a, b) = (v1.hits(), v2.hits());
    eprintln!("90/10 over 10,000 requests: shop-v1 {a}, shop-v2 {b}");
    assert_eq!(a + b, 10_000, "every request reached one of the split");
    assert!((share(a, 10_000) - 0.90).abs() <= 0.02, "v1 {a}, v2 {b}");
    assert!((share(b, 10_000) - 0.10).abs() <= 0.02, "v1 {a}, v2 {b}");
    // The fallback still serves what the route does not take.
    assert_eq!(get(addr, "/elsewhere").await, (200, "other".to_string()));
    assert_eq!(other.hits(), 1);

    // The metrics name the backend each request went to.
    let m = lb.metrics().await;
    let count = |backend: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("switchyard_requests_total{")
                    && l.contains(&format!("backend=\"{backend}\""))
                    && l.contains("code=\"200\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert_eq!(count("shop-v1"), a as f64, "{m}");
    assert_eq!(count("shop-v2"), b as f64, "{m}");

    // The admin listing: `backend` is the heaviest, `backends` the split in file order.
    let (status, body) = get(lb.admin_addr(), "/api/v1/routes").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let route = &j["frontends"][0]["routes"][0];
    assert_eq!(route["backend"], "shop-v1", "{body}");
    assert_eq!(
        route["backends"],
        serde_json::json!([{"name": "shop-v1", "weight": 90}, {"name": "shop-v2", "weight": 10}]),
        "{body}"
    );
    assert_eq!(j["frontends"][0]["fallback"], "other");
    lb.shutdown().await;
}

#[tokio::test]
async fn weight_zero_takes_nothing_and_retries_stay_in_the_chosen_backend() {
    let dir = std::env::temp_dir().join(format!("switchyard-split-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let _ = std::fs::remove_file(&file);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let off = Upstream::start("off").await;
    // A port with nothing listening: connecting to it fails at once, and is retried.
    let dead: SocketAddr = format!("127.0.0.1:{}", dead_port()).parse().unwrap();
    let toml = Cfg::new()
        .table(&format!(
            "[log]\naccess = \"json\"\naccess_file = {}",
            support::config::path(&file)
        ))
        .frontend("canary")
        .no_fallback()
        .route(
            "path_prefix = \"/shop/\"\n\
             backends = [{ name = \"a\", weight = 1 }, { name = \"b\", weight = 1 }, { name = \"off\", weight = 0 }]",
        )
        .backend("a")
        .servers(&[dead, a.addr()])
        .check_none()
        .backend("b")
        .servers(&[b.addr()])
        .check_none()
        .backend("off")
        .servers(&[off.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("canary");
    tokio::time::timeout(Duration::from_secs(30), async {
        h1_requests(addr, 100, 2).await;
        h2_requests(addr, 100, 2).await;
    })
    .await
    .expect("200 requests within 30 s");
    assert_eq!(off.hits(), 0, "a weight of 0 takes nothing");
    // Half go to `a`: those that hit its dead server were retried on its live one, never on `b`.
    assert_eq!((a.hits(), b.hits()), (100, 100));
    let m = lb.metrics().await;
    assert!(
        metric(&m, "switchyard_retries_total{backend=\"a\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "switchyard_retries_total{backend=\"b\"}"), 0.0);
    // The access log and the stats name the chosen backend too.
    let lines = support::log_lines(&file, "canary", 200).await;
    let logged = |name: &str| lines.iter().filter(|v| v["backend"] == name).count();
    assert_eq!((logged("a"), logged("b"), logged("off")), (100, 100, 0));
    let backends = lb.backends().await;
    let stat = |name: &str| {
        backends["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| b["stats"]["requests"].as_u64().unwrap())
    };
    assert_eq!(
        (stat("a"), stat("b"), stat("off")),
        (Some(100), Some(100), Some(0))
    );
    lb.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The phases of the reload test.
const BEFORE: u8 = 0;
const SENT: u8 = 1;
const LISTED: u8 = 2;

fn write(path: &Path, text: &str) {
    // Written whole to a temporary name, then renamed: the reload never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sighup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn run_config(admin: u16, web: u16, v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[[frontend]]
name = "web"
bind = "127.0.0.1:{web}"
[[frontend.route]]
path_prefix = "/shop/"
backends = [{{ name = "shop-v1", weight = {w1} }}, {{ name = "shop-v2", weight = {w2} }}]
[[backend]]
name = "shop-v1"
servers = ["{v1}"]
[backend.check]
type = "none"
[[backend]]
name = "shop-v2"
servers = ["{v2}"]
[backend.check]
type = "none"
"#
    )
}

#[tokio::test]
async fn new_weights_take_effect_on_sighup_with_no_request_lost() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let (admin_port, web_port) = (free_port(), free_port());
    let dir: PathBuf =
        std::env::temp_dir().join(format!("switchyard-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sy.toml");
    write(
        &file,
        &run_config(admin_port, web_port, v1.addr(), v2.addr(), 90, 10),
    );
    let child = Running(
        Command::new(BIN)
            .args(["run", "-c"])
            .arg(&file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    wait_until("readyz", Duration::from_secs(10), || async move {
        matches!(try_get(admin, "/readyz").await, Ok((200, _)))
    })
    .await;

    // Clients send steadily, each answer tagged with the phase its request started in: 0
    // before the SIGHUP, 1 after it, 2 once `/api/v1/routes` lists the new weights.
    let stop = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU8::new(BEFORE));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (stop, after) = (Arc::clone(&stop), Arc::clone(&after));
        clients.spawn(async move {
            // Half the clients over HTTP/1.1 keep-alive, half over HTTP/2.
            let h1 = http_client();
            let mut h2 = h2c::<Empty<Bytes>>(web).await;
            let mut seen: Vec<(u8, u16, String)> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let phase = after.load(Ordering::SeqCst);
                let (status, body) = if i % 2 == 0 {
                    let r = h1
                        .get(format!("http://{web}/shop/x"))
                        .send()
                        .await
                        .expect("h1 request");
                    let s = r.status().as_u16();
                    (s, r.text().await.expect("h1 body"))
                } else {
                    let req = Request::get(format!("http://{web}/shop/x"))
                        .body(Empty::new())
                        .unwrap();
                    let r = h2.send_request(req).await.expect("h2 request");
                    let s = r.status().as_u16();
                    let b = r.into_body().collect().await.expect("h2 body").to_bytes();
                    (s, String::from_utf8_lossy(&b).into_owned())
                };
                seen.push((phase, status, body));
            }
            seen
        });
    }
    // Some traffic under the old weights, then the file rewritten and SIGHUP'ed.
    wait_until("traffic before the reload", Duration::from_secs(10), || {
        let n = v1.hits() + v2.hits();
        async move { n >= 500 }
    })
    .await;
    write(
        &file,
        &run_config(admin_port, web_port, v1.addr(), v2.addr(), 20, 80),
    );
    after.store(SENT, Ordering::SeqCst);
    sighup(&child.0);
    wait_until(
        "the new weights listed",
        Duration::from_secs(10),
        || async move {
            let body = get(admin, "/api/v1/routes").await.1;
            body.contains("\"weight\":80")
        },
    )
    .await;
    after.store(LISTED, Ordering::SeqCst);
    let base = v1.hits() + v2.hits();
    wait_until("traffic after the reload", Duration::from_secs(20), || {
        let n = v1.hits() + v2.hits();
        async move { n >= base + 3_000 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), clients.join_next())
        .await
        .expect("clients stop")
    {
        all.extend(r.expect("client task"));
    }
    let bad: Vec<_> = all.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} not 200: {:?}",
        bad.len(),
        all.len(),
        &bad[..bad.len().min(5)]
    );
    assert_eq!(
        all.len(),
        v1.hits() + v2.hits(),
        "every request reached an upstream once"
    );
    let count = |phase: u8, name: &str| {
        all.iter()
            .filter(|(p, _, b)| *p == phase && b == name)
            .count()
    };
    let before = count(BEFORE, "v1") + count(BEFORE, "v2");
    let later = count(LISTED, "v1") + count(LISTED, "v2");
    assert!(
        before >= 500 && later >= 2_000,
        "{before} before, {later} after"
    );
    let new_v2 = share(count(LISTED, "v2"), later);
    assert!(
        (new_v2 - 0.80).abs() <= 0.02,
        "after the reload: v2 took {new_v2}"
    );
    let old_v2 = share(count(BEFORE, "v2"), before);
    assert!(
        (old_v2 - 0.10).abs() <= 0.02,
        "before the reload: v2 took {old_v2}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_frontends_fallback_may_be_a_split_with_or_without_routes() {
    let (a, b, r) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("routed").await,
    );
    let split = "backends = [{ name = \"fa\", weight = 3 }, { name = \"fb\", weight = 1 }]";
    let toml = Cfg::http("plain")
        .no_fallback()
        .frontend_lines(split)
        .frontend("mixed")
        .no_fallback()
        .frontend_lines(split)
        .route("path_prefix = \"/r/\"\nbackend = \"routed\"")
        .backend("fa")
        .servers(&[a.addr()])
        .check_none()
        .backend("fb")
        .servers(&[b.addr()])
        .check_none()
        .backend("routed")
        .servers(&[r.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        // A frontend without routes: every request is the fallback's.
        h1_requests(lb.http_addr("plain"), 200, 2).await;
        h2_requests(lb.http_addr("plain"), 200, 2).await;
        // With routes: what no route takes (here `/shop/x`) is the fallback's.
        h1_requests(lb.http_addr("mixed"), 400, 2).await;
    })
    .await
    .expect("800 requests within 30 s");
    assert_eq!((a.hits(), b.hits()), (600, 200));
    assert_eq!(
        get(lb.http_addr("mixed"), "/r/x").await,
        (200, "routed".into())
    );
    let (_, body) = get(lb.admin_addr(), "/api/v1/routes").await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    for f in j["frontends"].as_array().unwrap() {
        assert_eq!(f["fallback"], "fa", "{body}");
        assert_eq!(
            f["fallback_backends"],
            serde_json::json!([{"name": "fa", "weight": 3}, {"name": "fb", "weight": 1}]),
            "{body}"
        );
    }
    // The duration histogram names the backend each request went to.
    let m = lb.metrics().await;
    assert!(
        m.contains(
            "switchyard_request_duration_seconds_count{frontend=\"plain\",backend=\"fb\"} 100"
        ),
        "{m}"
    );
    lb.shutdown().await;
}
