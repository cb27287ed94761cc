//! The runtime admin API: drain, maint and ready a server (the state survives snapshot updates
//! and a key that expires and comes back), the bearer token (401/403), the running config with
//! secrets redacted, and a reload asked over HTTP.

mod support;

use std::time::Duration;

use support::{Cfg, Etcd, Lb, Upstream, get, http_client, wait_until};
use switchyard::Listeners;
use switchyard::config::Config;

const TOKEN: &str = "s3cret-token-0123456789";

fn config(etcd: &Etcd, backend: &str, token: bool) -> String {
    let cfg = Cfg::http("web")
        .etcd(&etcd.url())
        .etcd_lines("username = \"nobody\"\npassword = \"hunter2-hunter2\"")
        .etcd_backend(backend)
        .check_none();
    match token {
        true => cfg.admin_lines(&format!("token = \"{TOKEN}\"")).toml(),
        false => cfg.toml(),
    }
}

async fn set_state(
    lb: &Lb,
    backend: &str,
    server: &str,
    state: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http_client()
        .post(format!(
            "http://{}/api/v1/backends/{backend}/servers/{server}/state",
            lb.admin_addr()
        ))
        .body(format!("{{\"state\":\"{state}\"}}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn hits(web: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(get(web, "/").await.1);
    }
    v
}

#[tokio::test]
async fn drain_maint_and_ready_survive_updates() {
    let etcd = Etcd::start().await;
    // etcd has no auth enabled: the v2 basic-auth header is simply ignored.
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    etcd.put("/adm/backend/a", &a.addr().to_string()).await;
    etcd.put("/adm/backend/b", &b.addr().to_string()).await;
    let lb = Lb::start_ready(&config(&etcd, "adm", false)).await;
    let web = lb.http_addr("web");
    wait_until("both serve", Duration::from_secs(5), || async move {
        let h = hits(web, 4).await;
        h.contains(&"A".to_string()) && h.contains(&"B".to_string())
    })
    .await;

    let (status, j) = set_state(&lb, "adm", "a", "drain", None).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["admin"], "drain");
    assert_eq!(j["state"], "draining");
    assert!(hits(web, 6).await.iter().all(|h| h == "B"));

    // Another key changes (a new snapshot), and the drained key expires and comes back:
    // the operator's drain stays.
    let c = Upstream::start("C").await;
    etcd.put("/adm/backend/c", &c.addr().to_string()).await;
    etcd.delete("/adm/backend/a").await;
    etcd.put("/adm/backend/a", &a.addr().to_string()).await;
    let lb_ref = &lb;
    wait_until("c listed", Duration::from_secs(5), || async move {
        lb_ref.servers().await.len() == 3
    })
    .await;
    let h = hits(web, 8).await;
    assert!(!h.contains(&"A".to_string()), "{h:?}");
    let j = lb.backends().await;
    let sa = j["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        (sa["state"].as_str(), sa["admin"].as_str()),
        (Some("draining"), Some("drain"))
    );

    // maint (by address this time): out of rotation, shown as down.
    let (status, j) = set_state(&lb, "adm", &b.addr().to_string(), "maint", None).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["state"], "down");
    assert!(hits(web, 4).await.iter().all(|h| h == "C"));

    // ready: both back.
    assert_eq!(set_state(&lb, "adm", "a", "ready", None).await.0, 200);
    assert_eq!(set_state(&lb, "adm", "b", "enable", None).await.0, 200);
    let h = hits(web, 9).await;
    for name in ["A", "B", "C"] {
        assert_eq!(h.iter().filter(|x| *x == name).count(), 3, "{h:?}");
    }

    // Bad requests get clear answers.
    assert_eq!(set_state(&lb, "adm", "nope", "drain", None).await.0, 404);
    assert_eq!(set_state(&lb, "nope", "a", "drain", None).await.0, 404);
    assert_eq!(set_state(&lb, "adm", "a", "sleep", None).await.0, 400);
    lb.shutdown().await;
}

#[tokio::test]
async fn token_and_redacted_config() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    etcd.put("/tok/backend/a", &a.addr().to_string()).await;
    let lb = Lb::start_ready(&config(&etcd, "tok", true)).await;
    assert_eq!(set_state(&lb, "tok", "a", "drain", None).await.0, 401);
    assert_eq!(
        set_state(&lb, "tok", "a", "drain", Some("wrong-token-0123456789"))
            .await
            .0,
        403
    );
    assert_eq!(
        set_state(&lb, "tok", "a", "ready", Some(TOKEN)).await.0,
        200
    );

    let url = format!("http://{}/api/v1/config", lb.admin_addr());
    assert_eq!(
        http_client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let r = http_client()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(!text.contains(TOKEN), "token leaked: {text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["etcd"]["password"], "<redacted>");
    assert_eq!(j["backends"][0]["name"], "tok");
    assert_eq!(j["frontends"][0]["header_timeout"], "10s");
    // Read-only endpoints stay open (Prometheus scrapes without a token).
    assert_eq!(get(lb.admin_addr(), "/metrics").await.0, 200);
    assert_eq!(get(lb.admin_addr(), "/api/v1/backends").await.0, 200);
    lb.shutdown().await;
}

#[tokio::test]
async fn reload_over_http() {
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let dir = std::env::temp_dir().join(format!("switchyard-admin-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sy.toml");
    let text = |server: String| {
        Cfg::http("web")
            .backend("r")
            .servers(&[server])
            .check_none()
            .toml()
    };
    std::fs::write(&path, text(a.addr().to_string())).unwrap();
    let cfg = Config::load(&path).unwrap();
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let (admin, web) = (
        listeners.admin_addr(),
        listeners.frontend_addr("web").unwrap(),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let run = tokio::spawn(switchyard::run(cfg, listeners, cancel.clone(), rx));
    wait_until("ready", Duration::from_secs(5), || async move {
        get(admin, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(get(web, "/").await.1, "A");

    let reload = || async {
        let r = http_client()
            .post(format!("http://{admin}/api/v1/reload"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // A bad file is refused with the key named; the running config stays.
    std::fs::write(&path, text("127.0.0.1:0".into())).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("servers[0]"), "{body}");
    assert_eq!(get(web, "/").await.1, "A");
    // A good one is applied.
    std::fs::write(&path, text(b.addr().to_string())).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(web, "/").await.1, "B");
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("switchyard_config_reloads_total{result=\"success\"}"),
        "{metrics}"
    );

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// `switchyard_backend_servers{backend,state}` counts each backend's servers by state at every
/// scrape, zeros included; `switchyard_server_up` and `switchyard_server_admin_state` follow each
/// server; the series of a server or backend that a reload removed are gone from the next scrape.
#[tokio::test]
async fn backend_servers_by_state_follow_health_maintenance_and_reloads() {
    let up = Upstream::start("live").await;
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let with_both = Cfg::http("web")
        .backend("bsstates")
        .servers(&[up.addr().to_string(), dead.clone()])
        .check("type = \"tcp\"\ninter = \"100ms\"\nrise = 1\nfall = 1\ntimeout = \"200ms\"")
        .toml();
    let lb = Lb::start_ready(&with_both).await;
    let series = |state: &str| {
        format!("switchyard_backend_servers{{backend=\"bsstates\",state=\"{state}\"}}")
    };
    let counts = |text: &str| -> Vec<Option<f64>> {
        ["up", "down", "draining", "maint"]
            .iter()
            .map(|s| {
                let name = series(s);
                text.lines()
                    .find(|l| l.starts_with(&name))
                    .and_then(|l| l.rsplit(' ').next())
                    .map(|v| v.parse().unwrap())
            })
            .collect()
    };
    let until = |want: [Option<f64>; 4], what: &'static str| {
        let lb = &lb;
        let counts = &counts;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = lb.metrics().await;
                if counts(&text) == want {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "{what}: {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    until(
        [Some(1.0), Some(1.0), Some(0.0), Some(0.0)],
        "the dead server counted down",
    )
    .await;

    assert_eq!(
        lb.set_server_state("bsstates", &up.addr().to_string(), "maint")
            .await,
        200
    );
    let text = lb.metrics().await;
    assert_eq!(
        counts(&text),
        [Some(0.0), Some(1.0), Some(0.0), Some(1.0)],
        "{text}"
    );
    let line = |text: &str, series: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].to_string())
    };
    let up_of =
        |addr: &str| format!("switchyard_server_up{{backend=\"bsstates\",server=\"{addr}\"}}");
    let admin_of = |addr: &str, state: &str| {
        format!(
            "switchyard_server_admin_state{{backend=\"bsstates\",server=\"{addr}\",state=\"{state}\"}}"
        )
    };
    let live = up.addr().to_string();
    assert_eq!(line(&text, &up_of(&dead)).as_deref(), Some("0"), "{text}");
    assert_eq!(
        line(&text, &admin_of(&live, "maint")).as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line(&text, &admin_of(&live, "ready")).as_deref(),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        line(&text, &admin_of(&dead, "ready")).as_deref(),
        Some("1"),
        "{text}"
    );

    // A reload removes the dead server: its series end, the live one's stay.
    let only_live = Cfg::http("web")
        .backend("bsstates")
        .servers(std::slice::from_ref(&live))
        .check("type = \"tcp\"\ninter = \"100ms\"\nrise = 1\nfall = 1\ntimeout = \"200ms\"")
        .toml();
    lb.reload_toml(&only_live).await;
    let text = lb.metrics().await;
    assert_eq!(line(&text, &up_of(&dead)), None, "removed server: {text}");
    assert_eq!(line(&text, &admin_of(&dead, "ready")), None, "{text}");
    assert!(line(&text, &up_of(&live)).is_some(), "{text}");

    let other = Cfg::http("web")
        .backend("bsother")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    lb.reload_toml(&other).await;
    until([None; 4], "the removed backend's series gone").await;
    let text = lb.metrics().await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("switchyard_server_") && l.contains("backend=\"bsstates\"")),
        "{text}"
    );
    lb.shutdown().await;
}

/// `GET /api/v1/frontends` and the `stats` of each backend in `/api/v1/backends`: requests,
/// bytes, malformed requests, failures by termination word, latency percentiles, connections
/// against `maxconn`; cumulative, and kept across a reload that restarts the frontend.
#[tokio::test]
async fn frontend_and_backend_stats_count_traffic_and_survive_a_reload() {
    let up = Upstream::start("stats-up").await;
    let cfg = |idle: &str| {
        Cfg::http("stfront")
            .frontend_lines(&format!("maxconn = 50\nidle_timeout = \"{idle}\""))
            .backend("stback")
            .servers(&[up.addr()])
            .check_none()
            .toml()
    };
    let lb = Lb::start_ready(&cfg("30s")).await;
    let web = lb.http_addr("stfront");
    let admin = lb.admin_addr();
    let frontend = || async move {
        let (status, body) = get(admin, "/api/v1/frontends").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "stfront")
            .cloned()
            .unwrap_or_else(|| panic!("stfront in {v}"))
    };
    let backend = || async {
        let v = lb.backends().await;
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "stback")
            .cloned()
            .unwrap_or_else(|| panic!("stback in {v}"))["stats"]
            .clone()
    };
    let f = frontend().await;
    assert_eq!(f["mode"], "http", "{f}");
    assert_eq!(f["bind"], "127.0.0.1:0", "{f}");
    assert_eq!(f["limit"], 50, "{f}");
    assert_eq!(f["requests"], 0, "{f}");
    let b = backend().await;
    assert_eq!(b["requests"], 0, "{b}");
    assert!(b["latency_ms"]["p50"].is_null(), "{b}");

    // Three proxied requests with a 10-byte body each; the upstream answers its name (8 bytes).
    for _ in 0..3 {
        let resp = http_client()
            .post(format!("http://{web}/up"))
            .body("0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "stats-up");
    }
    // One malformed request.
    let mut c = tokio::net::TcpStream::connect(web).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut answer),
    )
    .await;
    assert!(answer.starts_with(b"HTTP/1.1 400 "));
    // One request with no server to take it.
    assert_eq!(
        lb.set_server_state("stback", &up.addr().to_string(), "maint")
            .await,
        200
    );
    assert_eq!(get(web, "/none").await.0, 503);

    let b = backend().await;
    assert_eq!(b["requests"], 4, "{b}");
    assert_eq!(b["bytes_in"], 30, "{b}");
    assert!(b["bytes_out"].as_u64().unwrap() >= 3 * 8, "{b}");
    assert_eq!(b["retries"], 0, "{b}");
    assert_eq!(b["errors"]["no_server"], 1, "{b}");
    for word in [
        "connect_error",
        "server_error",
        "server_timeout",
        "server_abort",
        "client_abort",
    ] {
        assert_eq!(b["errors"][word], 0, "{word}: {b}");
    }
    let (p50, p99) = (
        b["latency_ms"]["p50"].as_f64().unwrap(),
        b["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50 && p99 < 5_000.0, "{b}");
    let f = frontend().await;
    assert_eq!(f["requests"], 5, "{f}");
    assert_eq!(f["errors"], 1, "{f}");
    assert_eq!(f["refused"], 0, "{f}");
    assert!(f["max_connections"].as_u64().unwrap() >= 1, "{f}");
    assert!(f["bytes_in"].as_u64().unwrap() > 30, "{f}");
    assert!(f["bytes_out"].as_u64().unwrap() > 3 * 8, "{f}");

    // A reload that changes the frontend restarts its accept loop; the counts go on.
    lb.reload_toml(&cfg("20s")).await;
    assert_eq!(
        lb.set_server_state("stback", &up.addr().to_string(), "ready")
            .await,
        200
    );
    let mut f = frontend().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if get(web, "/after").await.0 == 200 {
            f = frontend().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f["requests"].as_u64().unwrap() >= 6, "{f}");
    assert_eq!(f["errors"], 1, "{f}");
    let b = backend().await;
    assert!(b["requests"].as_u64().unwrap() >= 5, "{b}");
    assert_eq!(b["errors"]["no_server"], 1, "{b}");
    lb.shutdown().await;
}

/// A frontend at its `maxconn` counts the wait in `refused`, and its open connections.
#[tokio::test]
async fn frontend_stats_count_connections_at_maxconn() {
    let up = Upstream::start("mc-up").await;
    let lb = Lb::start_ready(
        &Cfg::http("mcfront")
            .frontend_lines("maxconn = 1")
            .backend("mcback")
            .servers(&[up.addr()])
            .check_none()
            .toml(),
    )
    .await;
    let held = tokio::net::TcpStream::connect(lb.http_addr("mcfront"))
        .await
        .unwrap();
    let admin = lb.admin_addr();
    let mut f = serde_json::Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let (_, body) = get(admin, "/api/v1/frontends").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        f = v["frontends"][0].clone();
        if f["connections"] == 1 && f["refused"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f["connections"], 1, "{f}");
    assert!(f["refused"].as_u64().unwrap() >= 1, "{f}");
    assert_eq!(f["limit"], 1, "{f}");
    assert_eq!(f["max_connections"], 1, "{f}");
    drop(held);
    lb.shutdown().await;
}
