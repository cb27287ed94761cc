//! `[backend.sticky]` end to end against real upstreams: the first answer pins the client with
//! `Set-Cookie`, later requests carrying it reach the same server (where round-robin would
//! spread them) and get no new cookie; a drained, stopped or health-checked-down server is
//! left for another one and the cookie rewritten; a garbage or unknown value is a normal pick
//! with a cookie; the cookie wins over `balance = "hash"` while its server is up; HTTP/2 (with
//! cookie crumbs) sticks as HTTP/1.1 does; a service-tree backend sticks through its template;
//! an upgrade (WebSocket) is pinned and sticks as well; and the value shows neither the
//! server's address nor its port.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::{Cfg, Etcd, Lb, Upstream, http_client, wait_until};
use switchyard::balancer::sticky::{render, server_id};

/// Bound on every single network wait in this file.
const WAIT: Duration = Duration::from_secs(5);
const COOKIE: &str = "SY_SERVER";
const STICKY: &str = "[backend.sticky]\ncookie = \"SY_SERVER\"";

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

/// Frontend `web` before backend `cache` over `ups`, sticky, with these backend and check lines.
fn config(ups: &[Upstream], backend: &str, check: &str) -> String {
    Cfg::http("web")
        .backend("cache")
        .servers(&addrs(ups))
        .backend_lines(backend)
        .backend_lines(STICKY)
        .check(check)
        .toml()
}

/// One answer: status, body (the upstream's name), and the `Set-Cookie` fields.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    set_cookies: Vec<String>,
}

impl Answer {
    /// The value our cookie is set to, if it is set (exactly once).
    fn pinned(&self) -> Option<String> {
        let ours: Vec<&String> = self
            .set_cookies
            .iter()
            .filter(|c| c.starts_with(&format!("{COOKIE}=")))
            .collect();
        assert!(ours.len() <= 1, "{self:?}");
        let c = ours.first()?;
        assert!(c.ends_with("; Path=/; HttpOnly"), "{c}");
        let v = c[COOKIE.len() + 1..].split(';').next().unwrap();
        Some(v.to_string())
    }
}

async fn get(fe: SocketAddr, cookie: Option<&str>) -> Answer {
    let mut req = http_client().get(format!("http://{fe}/"));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answer within 5 s")
        .unwrap();
    let set_cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    Answer {
        status: resp.status().as_u16(),
        set_cookies,
        body: resp.text().await.unwrap(),
    }
}

/// The cookie value naming upstream `name` of backend `backend`.
fn id_of(backend: &str, ups: &[Upstream], name: &str) -> String {
    let u = ups.iter().find(|u| u.name() == name).unwrap();
    render(server_id(backend, &u.addr().to_string()))
}

#[tokio::test]
async fn the_first_answer_pins_and_later_requests_stick() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "", "type = \"none\"")).await;
    let fe = lb.http_addr("web");

    // Without a cookie: round-robin over all three, each answer with its server's cookie.
    let mut by_server: HashMap<String, String> = HashMap::new();
    for _ in 0..6 {
        let a = get(fe, None).await;
        assert_eq!(a.status, 200, "{a:?}");
        let v = a.pinned().unwrap_or_else(|| panic!("no cookie: {a:?}"));
        assert_eq!(
            v,
            id_of("cache", &ups, &a.body),
            "derived from backend and address"
        );
        if let Some(old) = by_server.insert(a.body.clone(), v.clone()) {
            assert_eq!(old, v, "one value per server");
        }
    }
    assert_eq!(by_server.len(), 3, "{by_server:?}");
    let values: HashSet<&String> = by_server.values().collect();
    assert_eq!(values.len(), 3, "a value per server: {by_server:?}");
    // The value shows neither the address nor the port: 16 hex digits (no `.` or `:`), none
    // of them the address's bytes in hex (IPv4 then port, as a sockaddr holds them).
    for (name, v) in &by_server {
        let u = ups.iter().find(|u| u.name() == name).unwrap();
        let port = u.addr().port();
        assert_eq!(v.len(), 16, "{v}");
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
        for shown in [
            format!("7f000001{port:04x}"),
            format!("{port:04x}7f000001"),
            "7f000001".into(),
        ] {
            assert!(!v.contains(&shown), "{v} shows {shown} of {}", u.addr());
        }
    }

    // 50 requests with B's cookie (among others): all to B, none re-pinned.
    for u in &ups {
        u.reset_hits();
    }
    let cookie = format!("theme=dark; {COOKIE}={}; lang=en", by_server["B"]);
    for _ in 0..50 {
        let a = get(fe, Some(&cookie)).await;
        assert_eq!((a.status, a.body.as_str()), (200, "B"), "{a:?}");
        assert_eq!(a.pinned(), None, "already pinned to B: {a:?}");
    }
    assert_eq!(ups[1].hits(), 50);
    // The cookie goes up as it came, nothing stripped.
    let seen = ups[1].last_headers().unwrap();
    assert_eq!(seen.get("cookie").unwrap(), cookie.as_str());

    // The admin API shows the setting.
    let (status, body) = support::get(lb.admin_addr(), "/api/v1/config").await;
    assert_eq!(status, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b = &j["backends"][0];
    assert_eq!(b["sticky"]["cookie"], COOKIE, "{b}");
    assert_eq!(b["sticky"]["http_only"], true, "{b}");
    lb.shutdown().await;
}

#[tokio::test]
async fn garbage_and_unknown_values_get_a_normal_pick_and_a_cookie() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "", "type = \"none\"")).await;
    let fe = lb.http_addr("web");
    let unknown = render(server_id("cache", "127.0.0.1:1"));
    let other_backend = render(server_id("elsewhere", &ups[0].addr().to_string()));
    let cookies = [
        format!("{COOKIE}=garbage"),
        format!("{COOKIE}={unknown}"),
        format!("{COOKIE}={other_backend}"),
        format!("{COOKIE}="),
        format!("{COOKIE}={}x", id_of("cache", &ups, "A")),
        format!("sy_server={}", id_of("cache", &ups, "A")),
    ];
    let mut served = HashSet::new();
    for round in 0..3 {
        for c in &cookies {
            let a = get(fe, Some(c)).await;
            assert_eq!(a.status, 200, "{c}: {a:?}");
            let v = a
                .pinned()
                .unwrap_or_else(|| panic!("{c}: no cookie: {a:?}"));
            assert_eq!(v, id_of("cache", &ups, &a.body), "{c} round {round}");
            served.insert(a.body);
        }
    }
    // Round-robin, not pinned anywhere: all three took some.
    assert_eq!(served.len(), 3, "{served:?}");
    // A garbage value before a valid one: the valid one counts.
    let c = format!("{COOKIE}=garbage; {COOKIE}={}", id_of("cache", &ups, "C"));
    for _ in 0..5 {
        let a = get(fe, Some(&c)).await;
        assert_eq!(a.body, "C", "{a:?}");
        assert_eq!(a.pinned(), None);
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_drained_or_stopped_server_is_left_and_the_cookie_rewritten() {
    let ups = three().await;
    let check = "type = \"tcp\"\ninter = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1";
    let lb = Lb::start_ready(&config(&ups, "", check)).await;
    let fe = lb.http_addr("web");
    let (a_addr, b_addr) = (ups[0].addr().to_string(), ups[1].addr().to_string());
    let to_a = format!("{COOKIE}={}", id_of("cache", &ups, "A"));
    assert_eq!(get(fe, Some(&to_a)).await.body, "A");

    // A drained: its clients move, each re-pinned, and stick to the new server.
    assert_eq!(lb.set_server_state("cache", &a_addr, "drain").await, 200);
    let a = get(fe, Some(&to_a)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_ne!(a.body, "A", "{a:?}");
    let moved = a.pinned().expect("rewritten");
    assert_eq!(moved, id_of("cache", &ups, &a.body));
    let now = format!("{COOKIE}={moved}");
    for _ in 0..10 {
        let b = get(fe, Some(&now)).await;
        assert_eq!(b.body, a.body);
        assert_eq!(b.pinned(), None);
    }
    // Ready again: the old cookie reaches A again (a cookie names a server, not a turn).
    assert_eq!(lb.set_server_state("cache", &a_addr, "ready").await, 200);
    let back = get(fe, Some(&to_a)).await;
    assert_eq!((back.body.as_str(), back.pinned()), ("A", None));

    // B stopped and checked down: its clients go elsewhere, re-pinned.
    let to_b = format!("{COOKIE}={}", id_of("cache", &ups, "B"));
    ups[1].stop().await;
    let lb_ref = &lb;
    let b_ref = &b_addr;
    wait_until("B marked down", WAIT, || async move {
        lb_ref.server(b_ref).await["state"] == "down"
    })
    .await;
    for _ in 0..5 {
        let a = get(fe, Some(&to_b)).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body == "A" || a.body == "C", "{a:?}");
        assert_eq!(a.pinned(), Some(id_of("cache", &ups, &a.body)), "{a:?}");
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_pinned_server_that_refuses_is_retried_elsewhere_and_re_pinned() {
    // No health checks: only the request finds out that B is gone, and retries on another.
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "retries = 2", "type = \"none\"")).await;
    let fe = lb.http_addr("web");
    let to_b = format!("{COOKIE}={}", id_of("cache", &ups, "B"));
    ups[1].stop().await;
    let a = get(fe, Some(&to_b)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_ne!(a.body, "B");
    assert_eq!(a.pinned(), Some(id_of("cache", &ups, &a.body)), "{a:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn the_cookie_wins_over_hashing_while_its_server_is_up() {
    let ups = three().await;
    let hash = "balance = \"hash\"\nhash_key = \"header:X-User\"";
    let lb = Lb::start_ready(&config(&ups, hash, "type = \"none\"")).await;
    let fe = lb.http_addr("web");
    let client = http_client();
    let ask = |cookie: Option<String>| {
        let client = client.clone();
        async move {
            let mut r = client
                .get(format!("http://{fe}/"))
                .header("X-User", "alice");
            if let Some(c) = cookie {
                r = r.header("Cookie", c);
            }
            let resp = r.send().await.unwrap();
            let set = resp.headers().get("set-cookie").is_some();
            (resp.text().await.unwrap(), set)
        }
    };
    let (owner, set) = ask(None).await;
    assert!(set);
    let other = ["A", "B", "C"].into_iter().find(|n| *n != owner).unwrap();
    let to_other = format!("{COOKIE}={}", id_of("cache", &ups, other));
    for _ in 0..10 {
        assert_eq!(
            ask(Some(to_other.clone())).await,
            (other.to_string(), false)
        );
    }
    // Its server drained: the hash's pick for the key again, with a cookie naming it.
    let addr = ups.iter().find(|u| u.name() == other).unwrap().addr();
    assert_eq!(
        lb.set_server_state("cache", &addr.to_string(), "drain")
            .await,
        200
    );
    assert_eq!(ask(Some(to_other.clone())).await, (owner.clone(), true));
    lb.shutdown().await;
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    cookies: &[String],
) -> Answer {
    let mut req = http::Request::get("http://cache.example/");
    for c in cookies {
        req = req.header("cookie", c);
    }
    let resp = tokio::time::timeout(WAIT, sender.send_request(req.body(Empty::new()).unwrap()))
        .await
        .expect("answer within 5 s")
        .unwrap();
    let status = resp.status().as_u16();
    let set_cookies = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        set_cookies,
    }
}

#[tokio::test]
async fn http2_sticks_with_cookie_crumbs() {
    let ups = three().await;
    let lb = Lb::start_ready(&config(&ups, "", "type = \"none\"")).await;
    let mut h2 = support::h2c(lb.http_addr("web")).await;
    let first = h2_get(&mut h2, &[]).await;
    assert_eq!(first.status, 200, "{first:?}");
    let v = first.pinned().expect("pinned over HTTP/2");
    assert_eq!(v, id_of("cache", &ups, &first.body));
    // The cookie as its own crumb among others (RFC 9113 8.2.3).
    let crumbs = [
        "theme=dark".to_string(),
        format!("{COOKIE}={v}"),
        "x=1".into(),
    ];
    for _ in 0..30 {
        let a = h2_get(&mut h2, &crumbs).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, first.body.as_str()),
            "{a:?}"
        );
        assert_eq!(a.pinned(), None, "{a:?}");
    }
    // Garbage over HTTP/2: a normal pick, pinned.
    let a = h2_get(&mut h2, &[format!("{COOKIE}=nope")]).await;
    assert_eq!(a.pinned(), Some(id_of("cache", &ups, &a.body)));
    lb.shutdown().await;
}

#[tokio::test]
async fn a_service_tree_backend_sticks_through_its_template() {
    let etcd = Etcd::start().await;
    let ups = three().await;
    let cfg = Cfg::http("web")
        .no_fallback()
        .etcd(&etcd.url())
        .backend("svc-defaults")
        .backend_lines(STICKY)
        .check_none()
        .service_tree(
            "frontends = [\"web\"]\ntemplate = \"svc-defaults\"\netcd_prefix = \"/services\"\nhost = \"{service}.example.com\"",
        )
        .toml();
    let lb = Lb::start_ready(&cfg).await;
    for (i, u) in ups.iter().enumerate() {
        etcd.put(&format!("/services/foo/backend/{i}"), &u.addr().to_string())
            .await;
    }
    let fe = lb.http_addr("web");
    let client = http_client();
    let ask = |cookie: Option<String>| {
        let client = client.clone();
        async move {
            let mut r = client
                .get(format!("http://{fe}/"))
                .header("host", "foo.example.com");
            if let Some(c) = cookie {
                r = r.header("Cookie", c);
            }
            let resp = r.send().await.ok()?;
            let set = resp
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            Some((resp.status().as_u16(), set, resp.text().await.ok()?))
        }
    };
    // Until all three servers are published, round-robin spreads over all of them.
    let ask_ref = &ask;
    wait_until("foo served by all three", WAIT, || async move {
        let mut seen = HashSet::new();
        for _ in 0..6 {
            if let Some((200, _, body)) = ask_ref(None).await {
                seen.insert(body);
            }
        }
        seen.len() == 3
    })
    .await;
    let (status, set, body) = ask(None).await.unwrap();
    assert_eq!(status, 200);
    // The service's backend is named after it: the id is foo's, not the template's.
    let want = id_of("foo", &ups, &body);
    assert_eq!(
        set.as_deref(),
        Some(format!("{COOKIE}={want}; Path=/; HttpOnly").as_str())
    );
    for _ in 0..20 {
        let (status, set, again) = ask(Some(format!("{COOKIE}={want}"))).await.unwrap();
        assert_eq!((status, set, again.as_str()), (200, None, body.as_str()));
    }
    lb.shutdown().await;
}

/// A server that answers every upgrade request with `101` and `X-Server: name`, then holds the
/// connection until the client closes it.
async fn upgrader(name: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Server: {name}\r\n\r\n"
                );
                if s.write_all(answer.as_bytes()).await.is_ok() {
                    let _ = s.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

/// An upgrade request through `fe` with these cookies: the response head.
async fn upgrade(fe: SocketAddr, cookie: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(fe).await.unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{cookie}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a head within 5 s")
            .unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn an_upgrade_is_pinned_and_sticks() {
    let servers = [upgrader("A").await, upgrader("B").await];
    let lb = Lb::start_ready(
        &Cfg::http("web")
            .backend("ws")
            .servers(&servers)
            .backend_lines(STICKY)
            .check_none()
            .toml(),
    )
    .await;
    let fe = lb.http_addr("web");
    let head = upgrade(fe, None).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let server = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-server: ")
                .or(l.strip_prefix("X-Server: "))
        })
        .unwrap_or_else(|| panic!("{head}"))
        .to_string();
    let addr = servers[if server == "A" { 0 } else { 1 }];
    let v = render(server_id("ws", &addr.to_string()));
    let set = format!("{COOKIE}={v}; Path=/; HttpOnly");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("set-cookie: {}", set.to_ascii_lowercase())),
        "{head}"
    );
    // Where round-robin would alternate, the cookie keeps every upgrade on the same server.
    for _ in 0..6 {
        let again = upgrade(fe, Some(&format!("{COOKIE}={v}"))).await;
        assert!(again.starts_with("HTTP/1.1 101"), "{again}");
        assert!(again.contains(&format!(": {server}\r\n")), "{again}");
        assert!(
            !again.to_ascii_lowercase().contains("set-cookie"),
            "{again}"
        );
    }
    lb.shutdown().await;
}
