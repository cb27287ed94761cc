//! `allow` / `deny` end to end (README, "Access control"), with real upstreams: a loopback
//! client is served where `127.0.0.0/8` is allowed and gets a plain-text `403` where
//! `127.0.0.1/32` is denied or only IPv6 is allowed, over HTTP/1.1 and HTTP/2 (h2c) alike, and
//! the upstream sees none of the refused requests; behind `accept_proxy`, the PROXY v1 header's
//! source is what is checked (an IPv4-mapped IPv6 source against IPv4 CIDRs too); each refusal
//! is counted in `switchyard_requests_refused_total{reason="denied"}`, on the stats API and in
//! the access log (`termination = "denied"`); a service tree's routes (etcd) carry the
//! frontend's lists (clients on 127.0.0.2 and 127.0.0.1, both loopback); `switchyard check`
//! names a bad entry.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::config::{self, Api, Cfg};
use support::{Etcd, Lb, Upstream, metric};

/// One HTTP/1.1 request behind PROXY v1 header `proxy` (`TCP4 ...`); the status code.
async fn status_behind_proxy(addr: SocketAddr, proxy: &str) -> u16 {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("PROXY {proxy}\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("answered within 5 s");
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn loopback_is_allowed_by_its_network_and_denied_by_its_address() {
    let up = Upstream::start("acl-up").await;
    let dir = std::env::temp_dir().join(format!(
        "switchyard-acl-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let toml = Cfg::new()
        .table(&format!(
            "[log]\naccess = \"json\"\naccess_file = {}",
            config::path(&log)
        ))
        .frontend("acl")
        .no_fallback()
        .frontend_lines("allow = [\"127.0.0.0/8\", \"::1/128\"]")
        .route("host = \"open.example.com\"\nbackend = \"acl-up\"")
        .route("host = \"closed.example.com\"\nbackend = \"acl-up\"\ndeny = [\"10.0.0.0/8\", \"127.0.0.1/32\"]")
        .route("host = \"v6.example.com\"\nbackend = \"acl-up\"\nallow = [\"2001:db8::/32\"]")
        .backend("acl-up")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("acl");
    for h2 in [false, true] {
        let (code, _, body) = support::send(addr, h2, "open.example.com", "/", &[]).await;
        assert_eq!(
            code,
            StatusCode::OK,
            "allowed by 127.0.0.0/8 (h2={h2}): {body}"
        );
        // The route's deny applies beside the frontend's allow (deny wins).
        let (code, h, body) = support::send(addr, h2, "closed.example.com", "/", &[]).await;
        assert_eq!(
            code,
            StatusCode::FORBIDDEN,
            "denied by 127.0.0.1/32 (h2={h2})"
        );
        assert!(body.starts_with("403 Forbidden"), "{body}");
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
        // The route's own allow replaces the frontend's.
        let (code, _, _) = support::send(addr, h2, "v6.example.com", "/", &[]).await;
        assert_eq!(
            code,
            StatusCode::FORBIDDEN,
            "not in 2001:db8::/32 (h2={h2})"
        );
    }
    assert_eq!(up.hits(), 2, "the upstream saw only the allowed requests");
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"acl\",reason=\"denied\"}"
        ),
        4.0,
        "{m}"
    );
    let (status, body) = support::get(lb.admin_addr(), "/api/v1/frontends").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fe = j["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "acl")
        .unwrap_or_else(|| panic!("no frontend acl in {j}"));
    assert_eq!(fe["requests_refused"]["denied"], 4, "{fe}");
    assert_eq!(fe["requests_refused"]["rate_limited"], 0, "{fe}");
    let lines = support::log_lines(&log, "acl", 6).await;
    let denied: Vec<_> = lines
        .iter()
        .filter(|l| l["termination"] == "denied")
        .collect();
    assert_eq!(denied.len(), 4, "{lines:?}");
    assert!(denied.iter().all(|l| l["status"] == 403), "{denied:?}");
    lb.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_proxy_headers_source_is_what_is_checked() {
    let up = Upstream::start("aclp-up").await;
    let toml = Cfg::http("aclp")
        .frontend_lines("accept_proxy = true\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.66.0.0/16\"]")
        .backend("aclp-up")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("aclp");
    // The peer (127.0.0.1) is outside the allow list; the PROXY source decides.
    assert_eq!(
        status_behind_proxy(addr, "TCP4 10.1.2.3 127.0.0.1 40000 80").await,
        200
    );
    assert_eq!(
        status_behind_proxy(addr, "TCP4 203.0.113.7 127.0.0.1 40000 80").await,
        403
    );
    assert_eq!(
        status_behind_proxy(addr, "TCP4 10.66.1.1 127.0.0.1 40000 80").await,
        403
    );
    // An IPv4-mapped IPv6 source matches the IPv4 networks.
    assert_eq!(
        status_behind_proxy(addr, "TCP6 ::ffff:10.9.8.7 ::1 40000 80").await,
        200
    );
    assert_eq!(
        status_behind_proxy(addr, "TCP6 2001:db8::1 ::1 40000 80").await,
        403
    );
    assert_eq!(up.hits(), 2);
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"aclp\",reason=\"denied\"}"
        ),
        3.0,
        "{m}"
    );
    lb.shutdown().await;
}

/// One HTTP/1.1 request from local address `from` (any 127.x is loopback on Linux); the status.
async fn status_from(from: &str, addr: SocketAddr, host: &str) -> u16 {
    let fut = async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(addr).await.expect("connect");
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("answered within 5 s");
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn tree_routes_carry_the_frontends_lists() {
    let etcd = Etcd::start().await;
    let up = Upstream::start("T").await;
    let toml = Cfg::http("web")
        .no_fallback()
        .etcd(&etcd.url())
        .api(Api::V3)
        .etcd_lines("backoff_max = \"300ms\"")
        .frontend_lines("allow = [\"127.0.0.2/32\"]")
        .backend("svc-defaults")
        .check_none()
        .service_tree(
            "frontends = [\"web\"]\ntemplate = \"svc-defaults\"\n\
             etcd_prefix = \"/services\"\nhost = \"{service}.example.com\"",
        )
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("web");
    etcd.put_v3("/services/cart/backend/1", &up.addr().to_string())
        .await;
    support::wait_until("the tree's route", Duration::from_secs(10), || async move {
        status_from("127.0.0.2", addr, "cart.example.com").await == 200
    })
    .await;
    let hits = up.hits();
    assert_eq!(
        status_from("127.0.0.1", addr, "cart.example.com").await,
        403
    );
    assert_eq!(
        status_from("127.0.0.2", addr, "cart.example.com").await,
        200
    );
    assert_eq!(
        up.hits(),
        hits + 1,
        "the denied request reached no upstream"
    );
    lb.shutdown().await;
}

/// `switchyard check` refuses a bad entry naming it, and a bad rate naming its key.
#[test]
fn check_names_a_bad_entry() {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-acl-check-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("switchyard.toml");
    let text = "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
                rate_limit = { rate = \"5/d\" }\n\
                [[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\n\
                allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n\
                [[backend]]\nname = \"api\"\nservers = [\"127.0.0.1:1\"]\n";
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("frontend \"web\".route[0].allow[1]: \"10.0.0.0/33\" is not a CIDR"),
        "{err}"
    );
    assert!(
        err.contains("frontend \"web\".rate_limit.rate: \"5/d\" is not a rate"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
