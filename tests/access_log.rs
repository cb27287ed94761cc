//! The access log (`[log] access = "json" | "logfmt"`, `access_file`): one line per HTTP
//! request and per tcp-mode connection, with the documented fields and termination reasons
//! (ok, no_server, connect_error, client_abort), and the HTTP-mode byte counters. Real
//! upstream servers; the lines are read back from the file the proxy appends to.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::config::{self, Cfg};
use support::{Lb, Upstream, free_port, get, http_client, metric, wait_until};

/// Five frontends, each in front of its own backend `{tag}_{frontend}` (no checks): `web` and
/// `raw` (tcp) reach `up`, `dead` a port nobody listens on, `empty` a server in maintenance (the
/// test puts it there), `slow` the `slow` server; the access log in `format` goes to `file`.
fn config(tag: &str, format: &str, file: &Path, up: &str, slow: &str) -> String {
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let log = format!(
        "[log]\naccess = {}\naccess_file = {}",
        config::quoted(format),
        config::path(file)
    );
    let mut cfg = Cfg::new().table(&log);
    for (frontend, server) in [
        ("web", up),
        ("raw", up),
        ("dead", &dead),
        ("empty", up),
        ("slow", slow),
    ] {
        cfg = if frontend == "raw" {
            cfg.tcp_frontend(frontend)
        } else {
            cfg.frontend(frontend)
        };
        cfg = cfg
            .backend(&format!("{tag}_{frontend}"))
            .servers(&[server])
            .check_none();
    }
    cfg.toml()
}

/// Every line of the log so far.
fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits for a JSON line whose `frontend` is `frontend`, and returns it parsed.
async fn json_line(file: &Path, frontend: &str) -> serde_json::Value {
    let mut found = None;
    wait_until(
        &format!("an access log line for frontend {frontend}"),
        Duration::from_secs(5),
        || {
            found = lines(file)
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["frontend"] == frontend);
            let done = found.is_some();
            async move { done }
        },
    )
    .await;
    found.unwrap()
}

async fn slow_upstream() -> Upstream {
    Upstream::start_with("slow", |_req| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Response::new(Full::new(Bytes::from_static(b"late")))
    })
    .await
}

#[tokio::test]
async fn json_lines_for_requests_connections_and_failures() {
    let dir = tempfile_dir("json");
    let file = dir.join("access.log");
    let up = Upstream::start("alpha").await;
    let slow = slow_upstream().await;
    let lb = Lb::start_ready(&config(
        "aljson",
        "json",
        &file,
        &up.addr().to_string(),
        &slow.addr().to_string(),
    ))
    .await;

    // A proxied request.
    let (status, body) = get(lb.http_addr("web"), "/hello?x=1").await;
    assert_eq!((status, body.as_str()), (200, "alpha"));
    let v = json_line(&file, "web").await;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/hello?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["backend"], "aljson_web");
    assert_eq!(v["server"], up.addr().to_string());
    assert_eq!(v["bytes_out"], 5);
    assert_eq!(v["retries"], 0);
    assert_eq!(v["termination"], "ok");
    assert!(
        v["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
    let (connect, response, total) = (
        v["connect_ms"].as_f64().unwrap(),
        v["response_ms"].as_f64().unwrap(),
        v["total_ms"].as_f64().unwrap(),
    );
    assert!(
        connect >= 0.0 && response > 0.0 && total >= connect + response,
        "{v}"
    );

    // A server that refuses connections: 502 after trying it.
    let (status, _) = get(lb.http_addr("dead"), "/").await;
    assert_eq!(status, 502);
    let v = json_line(&file, "dead").await;
    assert_eq!(v["status"], 502);
    assert_eq!(v["termination"], "connect_error");

    // A backend whose only server is in maintenance: 503.
    let status = lb
        .set_server_state("aljson_empty", &up.addr().to_string(), "maint")
        .await;
    assert_eq!(status, 200);
    let (status, _) = get(lb.http_addr("empty"), "/").await;
    assert_eq!(status, 503);
    let v = json_line(&file, "empty").await;
    assert_eq!(v["status"], 503);
    assert_eq!(v["termination"], "no_server");
    assert!(v["server"].is_null(), "{v}");

    // A client that leaves before the (2 s) answer.
    let mut s = TcpStream::connect(lb.http_addr("slow")).await.unwrap();
    s.write_all(b"GET /wait HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let v = json_line(&file, "slow").await;
    assert_eq!(v["termination"], "client_abort");
    assert!(v["status"].is_null(), "no status was sent: {v}");
    assert!(v["total_ms"].as_f64().unwrap() < 1500.0, "{v}");

    // One line per tcp-mode connection, with the bytes both ways.
    let request = b"GET /tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut s = TcpStream::connect(lb.http_addr("raw")).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("the upstream closes")
        .unwrap();
    drop(s);
    let v = json_line(&file, "raw").await;
    assert_eq!(v["bytes_in"], request.len());
    assert_eq!(v["bytes_out"], answer.len());
    assert_eq!(v["backend"], "aljson_raw");
    assert_eq!(v["server"], up.addr().to_string());
    assert_eq!(v["termination"], "ok");
    assert!(
        v.get("method").is_none() && v.get("status").is_none(),
        "{v}"
    );

    // HTTP mode counts the bytes of its client connections too.
    let text = lb.metrics().await;
    assert!(
        metric(&text, "switchyard_bytes_received_total{frontend=\"web\"}") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "switchyard_bytes_sent_total{frontend=\"web\"}") > 0.0);
    lb.shutdown().await;
}

#[tokio::test]
async fn logfmt_lines_and_head_requests() {
    let dir = tempfile_dir("logfmt");
    let file = dir.join("access.log");
    let up = Upstream::start("beta").await;
    let lb = Lb::start_ready(&config(
        "allogfmt",
        "logfmt",
        &file,
        &up.addr().to_string(),
        &up.addr().to_string(),
    ))
    .await;
    let resp = http_client()
        .head(format!("http://{}/with%20space?q=a b", lb.http_addr("web")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut line = String::new();
    wait_until("a logfmt line", Duration::from_secs(5), || {
        line = lines(&file).into_iter().next().unwrap_or_default();
        let done = !line.is_empty();
        async move { done }
    })
    .await;
    assert!(line.starts_with("time="), "{line}");
    for want in [
        "frontend=web",
        "backend=allogfmt_web",
        "method=HEAD",
        "status=200",
        // An answer with no body is complete as soon as its head is sent.
        "termination=ok",
        "bytes_out=0",
        "retries=0",
    ] {
        assert!(line.split(' ').any(|kv| kv == want), "{want} in {line}");
    }
    assert!(line.contains(&format!("server={}", up.addr())), "{line}");
    lb.shutdown().await;
}

/// A request head refused before it is a request (malformed: 400; too slow: 408) gets its
/// answer and a line: status, `bad_request` or `client_timeout`, no method or path.
#[tokio::test]
async fn refused_heads_get_a_line() {
    let dir = tempfile_dir("refused");
    let file = dir.join("access.log");
    let up = Upstream::start("gamma").await;
    let log = format!(
        "[log]\naccess = \"json\"\naccess_file = {}",
        config::path(&file)
    );
    let cfg = Cfg::new()
        .table(&log)
        .frontend("web")
        .frontend_lines("header_timeout = \"300ms\"")
        .backend("alrefused")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&cfg).await;
    let addr = lb.http_addr("web");
    for (bytes, status) in [
        (
            &b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"[..],
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", "408"),
    ] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer))
            .await
            .expect("an answer, then a close")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
    }
    let mut found = Vec::new();
    wait_until("two lines", Duration::from_secs(5), || {
        found = lines(&file)
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
        let done = found.len() >= 2;
        async move { done }
    })
    .await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0]["status"], 400, "{}", found[0]);
    assert_eq!(found[0]["termination"], "bad_request", "{}", found[0]);
    assert_eq!(found[1]["status"], 408, "{}", found[1]);
    assert_eq!(found[1]["termination"], "client_timeout", "{}", found[1]);
    for line in &found {
        assert_eq!(line["frontend"], "web", "{line}");
        assert!(
            line.get("method").is_none() && line.get("path").is_none(),
            "{line}"
        );
    }
    lb.shutdown().await;
}

/// A fresh directory under the system temp dir for this test's log file.
fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-access-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
