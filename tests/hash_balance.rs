//! `balance = "hash"` end to end against real upstreams: the same URI always reaches the same
//! server; a header key pins its value and a request without the header is balanced
//! round-robin; a stopped server's keys move to the others (and only those keys) and come back
//! once it is up again; the PROXY header's source is the `source` key; a cookie key reaches
//! the same server over HTTP/2 (cookies split over several fields) as over HTTP/1.1; and tcp
//! mode hashes the client's address.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use support::stream::read_line;
use support::{Cfg, Lb, Upstream, get, http_client, wait_until};

/// Bound on every single network wait in this file.
const WAIT: Duration = Duration::from_secs(5);

async fn three() -> Vec<Upstream> {
    vec![
        Upstream::start("A").await,
        Upstream::start("B").await,
        Upstream::start("C").await,
    ]
}

fn addrs(ups: &[Upstream]) -> Vec<String> {
    ups.iter().map(|u| u.addr().to_string()).collect()
}

/// An http frontend `web` before backend `cache` hashing `key`, with these check lines.
fn config(ups: &[Upstream], key: &str, check: &str, frontend: &str) -> String {
    Cfg::http("web")
        .frontend_lines(frontend)
        .backend("cache")
        .servers(&addrs(ups))
        .backend_lines(&format!("balance = \"hash\"\nhash_key = \"{key}\""))
        .check(check)
        .toml()
}

/// Which server answers each of `paths`.
async fn owners(lb: &Lb, paths: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let (status, body) = get(lb.http_addr("web"), p).await;
        assert_eq!(status, 200, "{p}: {body}");
        out.push(body);
    }
    out
}

fn paths(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/item/{i}?v={}", i * 7)).collect()
}

#[tokio::test]
async fn the_same_uri_always_reaches_the_same_server() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "uri", "type = \"none\"", "")).await;
    let ps = paths(60);
    let first = owners(&lb, &ps).await;
    for _ in 0..3 {
        assert_eq!(owners(&lb, &ps).await, first);
    }
    // Spread: each server owns a share of 60 URIs.
    for name in ["A", "B", "C"] {
        let n = first.iter().filter(|o| *o == name).count();
        assert!((5..=40).contains(&n), "{name} owns {n} of 60: {first:?}");
    }
    // The query is part of the key: the same path with other queries spreads too.
    let queries: Vec<String> = (0..30).map(|i| format!("/item/0?v={i}")).collect();
    let by_query: HashSet<String> = owners(&lb, &queries).await.into_iter().collect();
    assert!(by_query.len() >= 2, "{by_query:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_header_key_pins_its_value_and_without_it_is_round_robin() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "header:X-User", "type = \"none\"", "")).await;
    let client = http_client();
    let url = format!("http://{}/", lb.http_addr("web"));
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..3 {
        for u in 0..30 {
            let user = format!("user-{u}");
            let resp = client
                .get(&url)
                .header("X-User", &user)
                // The path varies: only the header decides.
                .query(&[("round", round)])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            seen.entry(user)
                .or_default()
                .insert(resp.text().await.unwrap());
        }
    }
    assert!(seen.values().all(|s| s.len() == 1), "{seen:?}");
    let used: HashSet<&String> = seen.values().flatten().collect();
    assert_eq!(used.len(), 3, "30 users over 3 servers: {seen:?}");

    // Without the header: the plain rotation, 10 each.
    for u in &ups {
        u.reset_hits();
    }
    for _ in 0..30 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let hits: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    assert_eq!(hits, [10, 10, 10]);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_stopped_servers_keys_move_and_come_back_when_it_recovers() {
    let ups = three().await;
    let b_addr = ups[1].addr();
    let check = "type = \"tcp\"\ninter = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1";
    let lb = Lb::start_ready(&config(&ups, "uri", check, "")).await;
    let ps = paths(60);
    let before = owners(&lb, &ps).await;
    assert!(before.iter().any(|o| o == "B"), "{before:?}");

    ups[1].stop().await;
    let lb_ref = &lb;
    wait_until("B marked down", WAIT, || async move {
        lb_ref.server(&b_addr.to_string()).await["state"] == "down"
    })
    .await;
    let during = owners(&lb, &ps).await;
    let mut moved_to = HashSet::new();
    for (i, (b, d)) in before.iter().zip(&during).enumerate() {
        if b == "B" {
            assert_ne!(d, "B");
            moved_to.insert(d.clone());
        } else {
            assert_eq!(b, d, "{}: moved though its server is up", ps[i]);
        }
    }
    // B's keys go to both of the others, not all onto one neighbour (B owns ~20 of 60).
    assert_eq!(moved_to.len(), 2, "{moved_to:?}");
    // And stay there while B is down.
    assert_eq!(owners(&lb, &ps).await, during);

    let _b2 = Upstream::start_at("B", b_addr, |_req| async {
        Response::new(Full::new(Bytes::from("B")))
    })
    .await;
    wait_until("B marked up", WAIT, || async move {
        lb_ref.server(&b_addr.to_string()).await["state"] == "up"
    })
    .await;
    assert_eq!(owners(&lb, &ps).await, before, "every key is back");
    lb.shutdown().await;
}

/// One HTTP/1.1 request behind a PROXY v1 header claiming `source`; the response body.
async fn get_as(addr: SocketAddr, source: IpAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PROXY TCP4 {source} 127.0.0.1 40000 80\r\nGET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("response within 5 s")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.rsplit("\r\n\r\n").next().unwrap().to_string()
}

#[tokio::test]
async fn source_is_the_proxy_headers_address_without_the_port() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(
        &ups,
        "source",
        "type = \"none\"",
        "accept_proxy = true",
    ))
    .await;
    let fe = lb.http_addr("web");
    let mut by_source: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for round in 0..3 {
        for i in 1..=30u8 {
            let ip: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            // Each round another path: only the source decides.
            let body = get_as(fe, ip, &format!("/r{round}")).await;
            by_source.entry(ip).or_default().insert(body);
        }
    }
    assert!(by_source.values().all(|s| s.len() == 1), "{by_source:?}");
    let used: HashSet<&String> = by_source.values().flatten().collect();
    assert_eq!(used.len(), 3, "{by_source:?}");
    lb.shutdown().await;
}

/// A TCP server that writes `name\n` to every connection and closes it.
async fn banner(name: &'static str, stop: CancellationToken) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Connects to `to` from `from` (a loopback address) and reads the server's banner.
async fn banner_from(from: IpAddr, to: SocketAddr) -> String {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = tokio::time::timeout(WAIT, sock.connect(to))
        .await
        .expect("connect within 5 s")
        .unwrap();
    read_line(&mut s).await
}

#[tokio::test]
async fn tcp_mode_hashes_the_clients_address() {
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    for name in ["A", "B", "C"] {
        servers.push(banner(name, stop.clone()).await.to_string());
    }
    let lb = Lb::start_ready(
        &Cfg::tcp("raw")
            .backend("raw-be")
            .servers(&servers)
            .backend_lines("balance = \"hash\"\nhash_key = \"source\"")
            .check_none()
            .toml(),
    )
    .await;
    let fe = lb.http_addr("raw");
    let mut by_source: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for _ in 0..3 {
        for i in 2..=31u8 {
            let ip: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            by_source
                .entry(ip)
                .or_default()
                .insert(banner_from(ip, fe).await);
        }
    }
    assert!(by_source.values().all(|s| s.len() == 1), "{by_source:?}");
    let used: HashSet<&String> = by_source.values().flatten().collect();
    assert_eq!(used.len(), 3, "{by_source:?}");
    lb.shutdown().await;
    stop.cancel();
}

/// The body of a GET over an HTTP/2 connection, with these header fields.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    uri: &str,
    headers: &[(&str, String)],
) -> String {
    use http_body_util::BodyExt;
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(req.body(http_body_util::Empty::new()).unwrap()),
    )
    .await
    .expect("answer within 5 s")
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn a_cookie_key_over_http2_matches_http1() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "cookie:sid", "type = \"none\"", "")).await;
    let fe = lb.http_addr("web");
    let mut h2 = support::h2c(fe).await;
    let client = http_client();
    let mut used = HashSet::new();
    for u in 0..30 {
        let sid = format!("user-{u}");
        // HTTP/2 may split the cookies over several fields (RFC 9113 8.2.3).
        let over_h2 = h2_get(
            &mut h2,
            &format!("http://cache.example/p{u}"),
            &[
                ("cookie", "theme=dark".into()),
                ("cookie", format!("sid={sid}")),
            ],
        )
        .await;
        let again = h2_get(
            &mut h2,
            "http://cache.example/other",
            &[("cookie", format!("sid={sid}; theme=light"))],
        )
        .await;
        let over_h1 = client
            .get(format!("http://{fe}/x"))
            .header("Cookie", format!("theme=dark; sid={sid}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!((&over_h2, &again), (&over_h1, &over_h1), "sid {sid}");
        used.insert(over_h1);
    }
    assert_eq!(used.len(), 3, "{used:?}");
    lb.shutdown().await;
}
