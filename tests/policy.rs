//! Traffic policy end to end (README, "Traffic policy"), with real upstreams: `redirect =
//! "https"` (308, `Location` on the same host without its port, the query kept, no upstream
//! reached), a redirect with `{host}` and `{path}` placeholders and its own code, and header
//! rules (`set`, `add`, `remove`) on the request the upstream sees and on the response the
//! client sees, over HTTP/1.1 and HTTP/2 (h2c) alike: set on the frontend, inherited by a route
//! that sets none and replaced, key by key, by a route that sets its own; a service tree's
//! routes and the fallback carry the frontend's policy.

mod support;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use support::config::Cfg;
use support::{Lb, Upstream};

/// An upstream answering `200 NAME` with a `Server` field and an `X-Up` field of its own.
async fn upstream(name: &str) -> Upstream {
    let n = name.to_string();
    Upstream::start_with(name, move |_req| {
        let body = Bytes::from(n.clone());
        async move {
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert("server", "upstream/1.0".parse().unwrap());
            r.headers_mut().insert("x-up", "1".parse().unwrap());
            r
        }
    })
    .await
}

#[tokio::test]
async fn redirects_answer_without_reaching_the_upstream() {
    let up = upstream("shop").await;
    let toml = Cfg::http("redir")
        .no_fallback()
        .route("host = \"shop.example.com\"\nbackend = \"shop\"\nredirect = \"https\"")
        .route(
            "host = \"old.example.com\"\nbackend = \"shop\"\n\
             redirect = { location = \"https://new.example.com/from/{host}{path}\", code = 301 }",
        )
        .route("host = \"plain.example.com\"\nbackend = \"shop\"")
        .backend("shop")
        .servers(&[up.addr()])
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("redir");
    for h2 in [false, true] {
        let (code, h, body) =
            support::send(addr, h2, "shop.example.com:8080", "/a/b?x=1&y=2", &[]).await;
        assert_eq!(code, StatusCode::PERMANENT_REDIRECT, "h2={h2}");
        assert_eq!(
            h["location"], "https://shop.example.com/a/b?x=1&y=2",
            "h2={h2}"
        );
        assert!(
            body.contains("https://shop.example.com/a/b?x=1&y=2"),
            "{body}"
        );
        assert!(h.get("cache-control").is_none());

        let (code, h, _) = support::send(addr, h2, "old.example.com", "/p?q=1", &[]).await;
        assert_eq!(code, StatusCode::MOVED_PERMANENTLY, "h2={h2}");
        assert_eq!(
            h["location"], "https://new.example.com/from/old.example.com/p?q=1",
            "h2={h2}"
        );
    }
    assert_eq!(up.hits(), 0, "no redirect reached the upstream");
    // Counted under the frontend alone: no backend took them.
    let m = lb.metrics().await;
    let redirects = |code: &str| {
        support::metric(
            &m,
            &format!(
                "switchyard_requests_total{{frontend=\"redir\",backend=\"\",server=\"\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!((redirects("308"), redirects("301")), (2.0, 2.0), "{m}");
    assert!(!m.contains("backend=\"shop\",server=\"\",code=\"30"), "{m}");
    // A route without a redirect is forwarded.
    let (code, _, body) = support::send(addr, false, "plain.example.com", "/", &[]).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "shop"));
    assert_eq!(up.hits(), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn header_rules_reach_upstream_and_client_over_h1_and_h2() {
    let up = upstream("app").await;
    let toml = Cfg::http("hdrs")
        .no_fallback()
        .frontend_lines(
            "request_headers = { set = { \"X-Env\" = \"prod\" }, add = { \"X-Tag\" = \"fe\" }, remove = [\"X-Debug\"] }\n\
             response_headers = { set = { \"Strict-Transport-Security\" = \"max-age=31536000\" }, remove = [\"Server\"] }",
        )
        .route("host = \"inherit.example.com\"\nbackend = \"app\"")
        .route(
            "host = \"own.example.com\"\nbackend = \"app\"\n\
             request_headers = { set = { \"X-Env\" = \"canary\" } }",
        )
        .route("host = \"dead.example.com\"\nbackend = \"gone\"")
        .route(
            "host = \"rehost.example.com\"\nbackend = \"app\"\n\
             request_headers = { set = { \"Host\" = \"internal.svc\" } }",
        )
        .backend("app")
        .servers(&[up.addr()])
        .backend("gone")
        .servers(&[format!("127.0.0.1:{}", support::dead_port())])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("hdrs");
    let sent = [("x-env", "dev"), ("x-debug", "1"), ("x-tag", "client")];
    for h2 in [false, true] {
        // The frontend's rules, inherited by a route that sets none.
        let (code, h, body) = support::send(addr, h2, "inherit.example.com", "/", &sent).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "app"), "h2={h2}");
        let seen = up.last_headers().expect("the upstream saw the request");
        let all = |n: &str| -> Vec<String> {
            seen.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("x-env"), ["prod"], "set replaces (h2={h2})");
        assert_eq!(all("x-tag"), ["client", "fe"], "add appends (h2={h2})");
        assert!(all("x-debug").is_empty(), "remove (h2={h2})");
        assert!(
            h.get("server").is_none(),
            "response remove (h2={h2}): {h:?}"
        );
        assert_eq!(
            h["strict-transport-security"], "max-age=31536000",
            "h2={h2}"
        );
        assert_eq!(h["x-up"], "1", "other fields pass (h2={h2})");

        // A route's own request_headers replace the frontend's whole; its response_headers,
        // which it does not set, are still the frontend's.
        let (code, h, _) = support::send(addr, h2, "own.example.com", "/", &sent).await;
        assert_eq!(code, StatusCode::OK);
        let seen = up.last_headers().unwrap();
        assert_eq!(seen["x-env"], "canary", "h2={h2}");
        assert_eq!(
            seen["x-debug"], "1",
            "the frontend's remove is not merged in (h2={h2})"
        );
        assert_eq!(seen.get_all("x-tag").iter().count(), 1, "h2={h2}");
        assert!(h.get("server").is_none(), "h2={h2}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000");

        // Setting Host rewrites the host the upstream sees.
        let (code, _, _) = support::send(addr, h2, "rehost.example.com", "/", &[]).await;
        assert_eq!(code, StatusCode::OK);
        let seen = up.last_headers().unwrap();
        assert_eq!(
            seen.get_all("host").iter().collect::<Vec<_>>(),
            ["internal.svc"],
            "h2={h2}"
        );

        // Our own answer (no server reachable) is not the upstream's: no response rules.
        let (code, h, _) = support::send(addr, h2, "dead.example.com", "/", &[]).await;
        assert_eq!(code, StatusCode::BAD_GATEWAY, "h2={h2}");
        assert!(h.get("strict-transport-security").is_none(), "h2={h2}");
    }
    lb.shutdown().await;
}

/// A `[[service_tree]]`'s routes, published as services appear, carry their frontend's policy,
/// as do requests no route takes; a configured route keeps its own.
#[test]
fn tree_routes_and_the_fallback_carry_the_frontends_policy() {
    let toml = "\
[etcd]
endpoints = [\"http://127.0.0.1:2379\"]
[[frontend]]
name = \"web\"
bind = \"127.0.0.1:0\"
backend = \"fixed\"
response_headers = { set = { \"X-Frame-Options\" = \"DENY\" } }
[[frontend.route]]
host = \"own.example.com\"
backend = \"fixed\"
redirect = \"https\"
[[service_tree]]
etcd_prefix = \"/services\"
frontends = [\"web\"]
host = \"{service}.example.com\"
[[backend]]
name = \"fixed\"
servers = [\"127.0.0.1:1\"]
";
    let cfg = switchyard::config::Config::from_toml(toml).unwrap();
    let p = switchyard::snapshot::Publisher::new(&cfg);
    let spec = switchyard::snapshot::ServerSpec {
        name: "1".into(),
        addr: "127.0.0.1:2".into(),
        weight: 1,
        drain: false,
        source: switchyard::snapshot::Source::Etcd,
    };
    assert!(p.publish_service(0, "cart", [&spec], &Default::default()));
    let snap = p.load();
    let table = snap.table("web").unwrap();
    let frontend = &cfg.frontends[0].policy;
    let routed = table.route(Some("cart.example.com"), "/").unwrap();
    assert_eq!(routed.backend_name.map(|n| &**n), Some("cart"));
    assert_eq!(
        **routed.policy, *frontend,
        "a tree's route: the frontend's policy"
    );
    let fallback = table.route(Some("elsewhere.test"), "/").unwrap();
    assert!(fallback.route.is_none());
    assert_eq!(
        **fallback.policy, *frontend,
        "the fallback: the frontend's policy"
    );
    let own = table.route(Some("own.example.com"), "/").unwrap();
    assert_eq!(own.policy.redirect.as_ref().map(|r| r.code), Some(308));
    assert_eq!(own.policy.response_headers, frontend.response_headers);
}
