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
use support::pki::Pki;
use support::raw::Script;
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
    // Its only server failed: no other server to retry on, so no retry is counted.
    let text = lb.metrics().await;
    assert_eq!(v["retries"], 0, "{v}");
    let series = "switchyard_retries_total{backend=\"aljson_dead\"}";
    assert_eq!(metric(&text, series), 0.0, "{series} in {text}");

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
    // The request had reached a server: the line says which.
    assert_eq!(v["backend"], "aljson_slow", "{v}");
    assert_eq!(v["server"], slow.addr().to_string(), "{v}");
    // The backend's stats count it too (the log line is written as the request is dropped).
    let backends = lb.backends().await;
    let stats = &backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "aljson_slow")
        .unwrap()["stats"];
    assert_eq!(stats["requests"], 1, "{stats}");
    assert_eq!(stats["errors"]["client_abort"], 1, "{stats}");
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
    assert_eq!(v["frontend_connections"], 1, "{v}");
    // The same connection in the backend's stats (counted when it closed, before its line).
    let backends = lb.backends().await;
    let raw = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "aljson_raw")
        .unwrap()["stats"]
        .clone();
    assert_eq!(raw["requests"], 1, "{raw}");
    assert_eq!(raw["bytes_in"], request.len(), "{raw}");
    assert_eq!(raw["bytes_out"], answer.len(), "{raw}");
    assert!(raw["latency_ms"]["p50"].as_f64().is_some(), "{raw}");

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

/// The JSON lines of `frontend` once there are `n`.
async fn json_lines(file: &Path, frontend: &str, n: usize) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    wait_until(
        &format!("{n} access log lines for frontend {frontend}"),
        Duration::from_secs(5),
        || {
            found = lines(file)
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["frontend"] == frontend)
                .collect();
            let done = found.len() >= n;
            async move { done }
        },
    )
    .await;
    found
}

/// A frontend and a backend both named `name`, the backend with `servers`, the JSON log in
/// `file`. (Distinct names keep the metrics of parallel tests apart.)
fn one_frontend(file: &Path, name: &str, servers: &[String], frontend_lines: &str) -> String {
    let log = format!(
        "[log]\naccess = \"json\"\naccess_file = {}",
        config::path(file)
    );
    Cfg::new()
        .table(&log)
        .frontend(name)
        .frontend_lines(frontend_lines)
        .backend(name)
        .servers(servers)
        .check_none()
        .toml()
}

/// The request's version, Host, User-Agent, body bytes both ways, the frontend's open
/// connections, and a request id: made up and sent upstream as `X-Request-Id`, or the
/// client's own passed on and logged. HTTP/2 (prior knowledge) shows its version and
/// `:authority`.
#[tokio::test]
async fn request_fields_and_request_ids() {
    const NAME: &str = "alfields";
    let dir = tempfile_dir("fields");
    let file = dir.join("access.log");
    let up = Upstream::start("delta").await;
    let lb = Lb::start_ready(&one_frontend(&file, NAME, &[up.addr().to_string()], "")).await;
    let addr = lb.http_addr(NAME);
    let resp = http_client()
        .post(format!("http://{addr}/upload"))
        .header("host", "example.test")
        .header("user-agent", "probe/1.0 (test)")
        .body("hello world")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent_id = up
        .last_headers()
        .and_then(|h| h.get("x-request-id").cloned())
        .expect("the upstream got an X-Request-Id");
    let sent_id = sent_id.to_str().unwrap().to_string();
    let v = &json_lines(&file, NAME, 1).await[0];
    assert_eq!(v["http_version"], "HTTP/1.1", "{v}");
    assert_eq!(v["host"], "example.test", "{v}");
    assert_eq!(v["user_agent"], "probe/1.0 (test)", "{v}");
    assert_eq!(v["bytes_in"], 11, "{v}");
    assert_eq!(v["bytes_out"], 5, "{v}");
    assert_eq!(v["request_id"], sent_id.as_str(), "{v}");
    assert_eq!(sent_id.len(), 33, "{sent_id}");
    assert!(v["frontend_connections"].as_u64().unwrap() >= 1, "{v}");
    assert!(v.get("tls_version").is_none(), "plain HTTP: {v}");

    // A client's own id goes upstream unchanged, once, and is the one logged.
    let resp = http_client()
        .get(format!("http://{addr}/own"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last_headers().unwrap();
    let ids: Vec<_> = seen.get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["client-id-42"]);
    let v = &json_lines(&file, NAME, 2).await[1];
    assert_eq!(v["request_id"], "client-id-42", "{v}");
    assert_eq!(v["bytes_in"], 0, "{v}");

    // Ids differ from request to request.
    let (status, _) = get(addr, "/again").await;
    assert_eq!(status, 200);
    let again = up.last_headers().unwrap()["x-request-id"].clone();
    assert_ne!(again.to_str().unwrap(), sent_id);

    // HTTP/2 by prior knowledge: its version, and `:authority` as the host.
    let mut sender = support::h2c(addr).await;
    let req = http::Request::get("http://h2.example/h2")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v = &json_lines(&file, NAME, 4).await[3];
    assert_eq!(v["http_version"], "HTTP/2.0", "{v}");
    assert_eq!(v["host"], "h2.example", "{v}");
    assert_eq!(v["path"], "/h2", "{v}");
    lb.shutdown().await;
}

/// Upstreams that reset the connection after the request, or answer garbage, end the request
/// as `server_error` (not `connect_error`: they were reached), after the replay on the second
/// server failed the same way; the one retry is counted by its cause.
#[tokio::test]
async fn a_server_failing_after_the_connect_is_a_server_error() {
    let dir = tempfile_dir("srverr");
    let file = dir.join("access.log");
    let reset = || {
        Script::start(|mut p| async move {
            if p.head().await.is_some() {
                p.reset();
            }
        })
    };
    let garbage = || {
        Script::start(|mut p| async move {
            if p.head().await.is_some() {
                p.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
            }
        })
    };
    let resets = [reset().await, reset().await];
    let garbages = [garbage().await, garbage().await];
    for (tag, ups, cause) in [
        ("alreset", &resets, "server_reset"),
        ("algarbage", &garbages, "server_invalid"),
    ] {
        let servers: Vec<String> = ups.iter().map(|u| u.addr().to_string()).collect();
        let lb = Lb::start_ready(&one_frontend(&file, tag, &servers, "")).await;
        let (status, _) = get(lb.http_addr(tag), "/x").await;
        assert_eq!(status, 502, "{tag}");
        let v = json_lines(&file, tag, 1)
            .await
            .into_iter()
            .find(|v| v["backend"] == tag)
            .unwrap_or_default();
        assert_eq!(v["termination"], "server_error", "{tag}: {v}");
        assert!(
            servers.contains(&v["server"].as_str().unwrap().to_string()),
            "{tag}: {v}"
        );
        assert_eq!(v["status"], 502, "{tag}: {v}");
        assert_eq!(v["retries"], 1, "{tag}: {v}");
        let text = lb.metrics().await;
        let series =
            format!("switchyard_retries_by_cause_total{{backend=\"{tag}\",cause=\"{cause}\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{series} in {text}");
        assert_eq!(
            metric(
                &text,
                &format!("switchyard_retries_total{{backend=\"{tag}\"}}")
            ),
            1.0
        );
        lb.shutdown().await;
        std::fs::remove_file(&file).unwrap();
    }
}

/// TLS on the frontend: the line has the protocol version, the cipher suite and the SNI.
#[tokio::test]
async fn https_lines_have_tls_version_cipher_and_sni() {
    const SITE: &str = "logged.test";
    const NAME: &str = "altls";
    let dir = tempfile_dir("tls");
    let file = dir.join("access.log");
    let up = Upstream::start("eps").await;
    let pki = Pki::new("altls");
    let site = pki.leaf("site", &[SITE]);
    let lb = Lb::start_ready(&one_frontend(
        &file,
        NAME,
        &[up.addr().to_string()],
        &site.frontend_tls(),
    ))
    .await;
    switchyard::tls::install_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([reqwest::Certificate::from_der(&pki.ca_der()).unwrap()])
        .resolve(SITE, lb.http_addr(NAME))
        .build()
        .unwrap();
    let port = lb.http_addr(NAME).port();
    let resp = client
        .get(format!("https://{SITE}:{port}/secure"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = &json_lines(&file, NAME, 1).await[0];
    assert!(
        v["tls_version"] == "TLSv1.3" || v["tls_version"] == "TLSv1.2",
        "{v}"
    );
    assert!(v["tls_cipher"].as_str().unwrap().starts_with("TLS"), "{v}");
    assert_eq!(v["tls_sni"], SITE, "{v}");
    lb.shutdown().await;
}

/// Every malformed request gets its answer, a line, and a count in
/// `switchyard_http_request_errors_total` by reason.
#[tokio::test]
async fn malformed_requests_get_a_line_and_a_metric() {
    const NAME: &str = "almalformed";
    let dir = tempfile_dir("malformed");
    let file = dir.join("access.log");
    let up = Upstream::start("zeta").await;
    let lb = Lb::start_ready(&one_frontend(
        &file,
        NAME,
        &[up.addr().to_string()],
        "header_timeout = \"300ms\"\nmax_header_size = 4096",
    ))
    .await;
    let addr = lb.http_addr(NAME);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(2000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(5000)
    );
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "bad_request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
            408,
            "header_timeout",
            "client_timeout",
        ),
        (long_target.into_bytes(), 414, "uri_too_long", "bad_request"),
        (
            big_head.into_bytes(),
            431,
            "headers_too_large",
            "bad_request",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            501,
            "not_implemented",
            "bad_request",
        ),
        (
            b"GET / HTTP/3.0\r\nHost: a\r\n\r\n".to_vec(),
            505,
            "version",
            "bad_request",
        ),
    ];
    for (bytes, status, _, _) in &cases {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer}"
        );
    }
    // HTTP/2: a Host that contradicts `:authority` is refused by our HTTP/2 rules (400).
    let mut sender = support::h2c(addr).await;
    let req = http::Request::get("http://a.example/h2")
        .header("host", "b.example")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    let found = json_lines(&file, NAME, cases.len() + 1).await;
    let h2 = found
        .iter()
        .find(|v| v["http_version"] == "HTTP/2.0")
        .unwrap_or_else(|| panic!("an HTTP/2 line in {found:?}"));
    assert_eq!(h2["status"], 400, "{h2}");
    assert_eq!(h2["termination"], "bad_request", "{h2}");
    assert_eq!(h2["path"], "/h2", "{h2}");
    let text = lb.metrics().await;
    for (_, status, reason, termination) in &cases {
        let v = found
            .iter()
            .find(|v| v["status"] == *status && v["http_version"] != "HTTP/2.0")
            .unwrap_or_else(|| panic!("a {status} line in {found:?}"));
        assert_eq!(v["termination"], *termination, "{v}");
        let series = format!(
            "switchyard_http_request_errors_total{{frontend=\"almalformed\",reason=\"{reason}\"}}"
        );
        // The HTTP/2 refusal is a `bad_request` too.
        let want = if *reason == "bad_request" { 2.0 } else { 1.0 };
        assert_eq!(metric(&text, &series), want, "{series} in {text}");
    }
    lb.shutdown().await;
}

/// An HTTP/2 client that resets its stream before the (2 s) answer: a `client_abort` line
/// with the backend and server it had reached, and a `client_abort` in the backend's stats.
#[tokio::test]
async fn an_http2_stream_reset_is_a_client_abort_with_its_server() {
    const NAME: &str = "alh2abort";
    let dir = tempfile_dir("h2abort");
    let file = dir.join("access.log");
    let slow = slow_upstream().await;
    let lb = Lb::start_ready(&one_frontend(&file, NAME, &[slow.addr().to_string()], "")).await;
    let mut sender = support::h2c(lb.http_addr(NAME)).await;
    let req = http::Request::get("http://h2.example/wait")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // Dropping the response future resets the stream; the connection stays open.
    let waited = tokio::time::timeout(Duration::from_millis(300), sender.send_request(req)).await;
    assert!(waited.is_err(), "no answer within 300 ms");
    let v = &json_lines(&file, NAME, 1).await[0];
    assert_eq!(v["termination"], "client_abort", "{v}");
    assert_eq!(v["http_version"], "HTTP/2.0", "{v}");
    assert_eq!(v["backend"], NAME, "{v}");
    assert_eq!(v["server"], slow.addr().to_string(), "{v}");
    assert!(v["status"].is_null(), "{v}");
    let backends = lb.backends().await;
    let stats = &backends["backends"][0]["stats"];
    assert_eq!(stats["errors"]["client_abort"], 1, "{stats}");
    drop(sender);
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

/// Without the access log, nothing would tie an id to a line: requests go upstream as they came.
#[tokio::test]
async fn without_the_log_no_request_id_is_added() {
    let up = Upstream::start("noid").await;
    let toml = support::Cfg::http("alnoid")
        .backend("alnoid")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    assert_eq!(support::get(lb.http_addr("alnoid"), "/").await.0, 200);
    let headers = up.last_headers().unwrap();
    assert!(headers.get("x-request-id").is_none(), "{headers:?}");
    lb.shutdown().await;
}
