//! The L7 data plane with static servers (no etcd needed): round-robin, connect-failure retry,
//! 502/503/504 mapping, forwarded and hop-by-hop headers, streamed bodies, HTTP/2 with prior
//! knowledge, and hostile requests written as raw bytes (CL+TE, conflicting Content-Length,
//! oversized headers, a header section dribbled slowly).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Cfg, Lb, Upstream, get, http_client, metric};

/// Frontend `web` (with `extra_frontend` lines) in front of `backend` with static `servers`
/// (with `extra_backend` lines), checks off.
fn config(backend: &str, servers: &[String], extra_frontend: &str, extra_backend: &str) -> String {
    Cfg::http("web")
        .frontend_lines(extra_frontend)
        .backend(backend)
        .servers(servers)
        .backend_lines(extra_backend)
        .check_none()
        .toml()
}

/// Writes raw bytes and reads until the peer closes or `limit` passes.
async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn round_robin_over_static_servers() {
    let ups = [
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
    ];
    let servers: Vec<String> = ups.iter().map(|u| u.addr().to_string()).collect();
    let lb = Lb::start_ready(&config("rr", &servers, "", "")).await;
    let mut m: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (status, body) = get(lb.http_addr("web"), "/").await;
        assert_eq!(status, 200);
        *m.entry(body).or_default() += 1;
    }
    assert_eq!((m["A"], m["B"], m["C"]), (10, 10, 10), "{m:?}");
    let j = lb.backends().await;
    assert_eq!(j["backends"][0]["servers"][0]["source"], "static");
    for srv in j["backends"][0]["servers"].as_array().unwrap() {
        assert_eq!(srv["requests"], 10, "per-server request count: {srv}");
        assert_eq!(srv["errors"], 0);
    }
    assert!(j["discovery"].is_null(), "no etcd configured");
    let text = lb.metrics().await;
    assert!(
        metric(
            &text,
            "switchyard_requests_total{frontend=\"web\",backend=\"rr\""
        ) > 0.0
            || text.contains("backend=\"rr\""),
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_server() {
    let live = Upstream::start("live").await;
    let dead = format!("127.0.0.1:{}", support::dead_port()); // nothing listens there
    let lb = Lb::start_ready(&config(
        "retry",
        &[dead.clone(), live.addr().to_string()],
        "",
        "",
    ))
    .await;
    let client = http_client();
    for _ in 0..10 {
        // POST with a body: a connect failure sent nothing, so even a POST is safe to retry.
        let resp = client
            .post(format!("http://{}/submit", lb.http_addr("web")))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), "live");
    }
    assert_eq!(live.hits(), 10);
    let text = lb.metrics().await;
    assert!(
        metric(&text, "switchyard_retries_total{backend=\"retry\"}") >= 5.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            &format!(
                "switchyard_upstream_connect_errors_total{{backend=\"retry\",server=\"{dead}\"}}"
            )
        ) >= 5.0
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn no_server_503_all_unreachable_502_slow_504() {
    // Every server refuses connections: 502 after the retries.
    let dead: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", support::dead_port()))
        .collect();
    let lb = Lb::start_ready(&config("deadpool", &dead, "", "")).await;
    let (status, body) = get(lb.http_addr("web"), "/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("deadpool"));
    lb.shutdown().await;

    // An upstream slower than the response timeout: 504, quickly.
    let slow = Upstream::start_with("slow", |_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    let lb = Lb::start_ready(&config(
        "slow",
        &[slow.addr().to_string()],
        "",
        "response_timeout = \"300ms\"",
    ))
    .await;
    let t = Instant::now();
    let (status, body) = get(lb.http_addr("web"), "/").await;
    assert_eq!(status, 504, "{body}");
    assert!(t.elapsed() < Duration::from_secs(3));
    lb.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop() {
    let up = Upstream::start("A").await;
    let lb = Lb::start_ready(&config("hdr", &[up.addr().to_string()], "", "")).await;
    let resp = http_client()
        .get(format!("http://{}/path?q=1", lb.http_addr("web")))
        .header("Host", "shop.example")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("Connection", "x-drop-me")
        .header("X-Drop-Me", "secret")
        .header("Keep-Alive", "timeout=5")
        .header("X-Kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.uri, "/path?q=1");
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    assert_eq!(h["host"], "shop.example");
    assert_eq!(h["x-kept"], "yes");
    assert!(
        h.get("x-drop-me").is_none(),
        "header named by Connection must be stripped"
    );
    assert!(h.get("keep-alive").is_none());

    // A client naming X-Forwarded-For in Connection cannot strip ours.
    http_client()
        .get(format!("http://{}/", lb.http_addr("web")))
        .header("Connection", "X-Forwarded-For")
        .send()
        .await
        .unwrap();
    assert_eq!(up.last_headers().unwrap()["x-forwarded-for"], "127.0.0.1");
    lb.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    // The upstream echoes the size of what it received and answers with a 2 MiB body.
    let up = Upstream::start_with("echo", |req| async move {
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        let mut body = format!("got {n}\n").into_bytes();
        body.resize(2 * 1024 * 1024, b'x');
        Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    let lb = Lb::start_ready(&config("body", &[up.addr().to_string()], "", "")).await;
    let payload = vec![7u8; 3 * 1024 * 1024];
    let resp = http_client()
        .put(format!("http://{}/upload", lb.http_addr("web")))
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 2 * 1024 * 1024);
    assert!(body.starts_with(b"got 3145728\n"));
    lb.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_proxied_to_http1() {
    let up = Upstream::start("A").await;
    let lb = Lb::start_ready(&config("h2", &[up.addr().to_string()], "", "")).await;
    let mut sender = support::h2c(lb.http_addr("web")).await;
    let req = http::Request::get("http://h2.example/x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"A");
    let seen = up.last_request().unwrap();
    assert_eq!(seen.headers["host"], "h2.example");
    assert_eq!(seen.uri, "/x");
    lb.shutdown().await;
}

#[tokio::test]
async fn hostile_requests_get_4xx_and_never_reach_upstream_ambiguous() {
    let up = Upstream::start_with("echo", |req| async move {
        let cl = req
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        let te = req.headers().get("transfer-encoding").is_some();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(Full::new(Bytes::from(format!(
            "cl={cl:?} te={te} body={}",
            String::from_utf8_lossy(&body)
        ))))
    })
    .await;
    let lb = Lb::start_ready(&config(
        "hostile",
        &[up.addr().to_string()],
        "header_timeout = \"1s\"",
        "",
    ))
    .await;
    let web = lb.http_addr("web");
    let limit = Duration::from_secs(5);

    // Two different Content-Lengths: 400, nothing forwarded.
    let out = raw(
        web,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        limit,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(up.hits(), 0);

    // CL + TE on one request: Transfer-Encoding wins, Content-Length is dropped, the upstream
    // sees one unambiguous chunked request, and the smuggled tail is not a second request.
    let out = raw(
        web,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        limit,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("cl=None te=true body=abc"), "{out}");
    assert_eq!(
        up.hits(),
        1,
        "the smuggled request must not be forwarded: {out}"
    );
    assert!(!out.contains("/smuggled"));

    // An oversized header section: 431.
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend(b"\r\n\r\n");
    let out = raw(web, &big, limit).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // Garbage: 400.
    let out = raw(web, b"\x16\x03\x01garbage\r\n\r\n", limit).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // A header section dribbled slowly (slowloris): 408 and a close at the header timeout, even
    // though bytes keep arriving.
    let mut s = TcpStream::connect(web).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slowloris held for {:?}",
            t.elapsed()
        );
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                let _ = s.write_all(b"X-Slow: 1\r\n").await;
            }
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        t.elapsed()
    );
    assert_eq!(up.hits(), 1);

    // The frontend still serves normal requests.
    assert_eq!(get(web, "/").await.0, 200);
    lb.shutdown().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_shutdown() {
    let slow = Upstream::start_with("slow", |_req| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(Full::new(Bytes::from("done")))
    })
    .await;
    let lb = Lb::start_ready(&config("drain", &[slow.addr().to_string()], "", "")).await;
    let web = lb.http_addr("web");
    let inflight = tokio::spawn(async move { get(web, "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    lb.cancel_token().cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While the request in flight drains, a new client is refused at once (not left in a
    // backlog nobody accepts from).
    assert!(!inflight.is_finished());
    assert!(TcpStream::connect(web).await.is_err());
    lb.shutdown().await;
    assert_eq!(inflight.await.unwrap(), (200, "done".to_string()));
}

#[tokio::test]
async fn slow_upload_after_100_continue_is_not_a_header_timeout() {
    let up = Upstream::start_with("echo", |req| async move {
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        Response::new(Full::new(Bytes::from(format!("got {n}"))))
    })
    .await;
    let lb = Lb::start_ready(&config(
        "expect",
        &[up.addr().to_string()],
        "header_timeout = \"1s\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The body takes longer than the header timeout to arrive.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"aaaaa").await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            out.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&out).contains("got 30") {
                break;
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("got 30"),
        "{out}"
    );
    lb.shutdown().await;
}
