//! Host and path routes (`[[frontend.route]]`) end to end, with a real upstream per backend
//! that answers with its name and the request-target it received: the precedence between
//! exact, wildcard and host-less routes and the contract's fall-through, the longest prefix,
//! `strip_prefix`, the fallback backend and the `404 no route` (its metric and access log
//! line), Host with a port and in upper case, HTTP/2's `:authority` (h2c and TLS with ALPN),
//! absolute-form targets, the normalized path (dot segments, encoded unreserved characters,
//! the query kept) and the `%2F` that is refused (`400`, no upstream reached) or forwarded as
//! it came, `GET /api/v1/routes`, and the config errors `switchyard check` names.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;

use support::config::{self, Cfg};
use support::pki::Pki;
use support::raw::{Client, RawResponse};
use support::{Lb, Upstream, get, metric};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Every backend of the fixture; each has its own upstream, answering `NAME TARGET`.
const BACKENDS: [&str; 9] = [
    "api", "users", "wild", "deep", "admin", "public", "static", "stripped", "default",
];

/// The routes of the `web-*` frontends, in a file order unlike their precedence. (Two routes
/// equal in host and path are refused by `switchyard check`: see
/// `config_errors_name_the_route_key`.)
const WEB_ROUTES: [&str; 9] = [
    "path_prefix = \"/admin\"\nbackend = \"admin\"",
    "host = \"*.example.com\"\nbackend = \"wild\"",
    "host = \"tie.example.com\"\nbackend = \"api\"",
    "host = \"api.example.com\"\npath_prefix = \"/v1/\"\nbackend = \"api\"",
    "host = \"*.b.example.com\"\nbackend = \"deep\"",
    "path_prefix = \"/public/\"\nbackend = \"public\"",
    "host = \"api.example.com\"\npath_prefix = \"/v1/users/\"\nbackend = \"users\"",
    "path_prefix = \"/static/\"\nstrip_prefix = true\nbackend = \"static\"",
    "host = \"strip.example.com\"\npath_prefix = \"/v1/\"\nstrip_prefix = true\nbackend = \"stripped\"",
];

/// An upstream whose every answer is `NAME TARGET` (the request-target as it arrived, query
/// included).
async fn echo(name: &str) -> Upstream {
    let n = name.to_string();
    Upstream::start_with(name, move |req| {
        let body = format!("{n} {}", req.uri());
        async move { Response::new(Full::new(Bytes::from(body))) }
    })
    .await
}

/// Switchyard with two frontends, `web-TAG` (the `WEB_ROUTES` and the fallback `default`) and
/// `bare-TAG` (one route, `api.example.com` + `/v1/` to `api`, and no fallback), an upstream
/// per backend and a JSON access log. The frontends carry the test's tag because metrics are
/// one registry for the whole test binary.
struct Fixture {
    lb: Lb,
    ups: HashMap<&'static str, Upstream>,
    web: String,
    bare: String,
    log: PathBuf,
}

impl Fixture {
    async fn start(tag: &str) -> Fixture {
        Fixture::start_with(tag, "").await
    }

    /// `web_lines`: more keys and sections for the `web-TAG` frontend (`[frontend.tls]`).
    async fn start_with(tag: &str, web_lines: &str) -> Fixture {
        let mut ups = HashMap::new();
        for b in BACKENDS {
            ups.insert(b, echo(b).await);
        }
        let dir = temp_dir(tag);
        let log = dir.join("access.log");
        let (web, bare) = (format!("web-{tag}"), format!("bare-{tag}"));
        let mut cfg = Cfg::new()
            .table(&format!(
                "[log]\naccess = \"json\"\naccess_file = {}",
                config::path(&log)
            ))
            .frontend(&web)
            .to("default")
            .frontend_lines(web_lines);
        for r in WEB_ROUTES {
            cfg = cfg.route(r);
        }
        cfg = cfg
            .frontend(&bare)
            .no_fallback()
            .route("host = \"api.example.com\"\npath_prefix = \"/v1/\"\nbackend = \"api\"");
        for b in BACKENDS {
            cfg = cfg.backend(b).servers(&[ups[b].addr()]).check_none();
        }
        let lb = Lb::start_ready(&cfg.toml()).await;
        Fixture {
            lb,
            ups,
            web,
            bare,
            log,
        }
    }

    fn web_addr(&self) -> SocketAddr {
        self.lb.http_addr(&self.web)
    }

    fn bare_addr(&self) -> SocketAddr {
        self.lb.http_addr(&self.bare)
    }

    /// Requests that reached any upstream.
    fn hits(&self) -> usize {
        self.ups.values().map(Upstream::hits).sum()
    }

    async fn metrics(&self) -> String {
        self.lb.metrics().await
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-routes-{tag}-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `GET target HTTP/1.1` with `Host: host` on `c`.
async fn send(c: &mut Client, host: &str, target: &str) -> RawResponse {
    c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
        .await;
    c.response(false).await
}

/// Asserts the answer came from `backend`'s upstream, which received `target`.
fn served(r: &RawResponse, backend: &str, target: &str, what: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 200, "{what}: {}\n{body}", r.head);
    assert_eq!(body, format!("{backend} {target}"), "{what}");
}

/// Each (Host, target) pair on one kept-alive connection, and the backend and upstream
/// target each must reach.
async fn check_table(addr: SocketAddr, cases: &[(&str, &str, &str, &str)]) {
    let mut c = Client::connect(addr).await;
    for &(host, target, backend, upstream_target) in cases {
        let r = send(&mut c, host, target).await;
        served(&r, backend, upstream_target, &format!("{host} {target}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Precedence

#[tokio::test]
async fn exact_host_beats_wildcards_which_beat_any_host_and_a_miss_falls_through() {
    let f = Fixture::start("prec").await;
    check_table(
        f.web_addr(),
        &[
            // The contract's example: api.example.com + /v1/ serves /v1/x ...
            ("api.example.com", "/v1/x", "api", "/v1/x"),
            // ... while another path on that host falls through to *.example.com,
            ("api.example.com", "/other", "wild", "/other"),
            ("api.example.com", "/v1", "wild", "/v1"),
            // which beats a host-less route even when its prefix is longer.
            ("api.example.com", "/admin", "wild", "/admin"),
            ("www.example.com", "/v1/x", "wild", "/v1/x"),
            // The longer wildcard suffix wins; it takes one label or more, never its domain.
            ("x.b.example.com", "/", "deep", "/"),
            ("x.y.b.example.com", "/q", "deep", "/q"),
            ("b.example.com", "/", "wild", "/"),
            ("x.c.example.com", "/", "wild", "/"),
            // No wildcard matches: the host-less routes, then the fallback.
            ("example.com", "/admin", "admin", "/admin"),
            ("other.org", "/admin/x", "admin", "/admin/x"),
            // path_prefix is a string prefix: "/admin" takes "/administrator".
            ("other.org", "/administrator", "admin", "/administrator"),
            ("other.org", "/public/a", "public", "/public/a"),
            ("example.com", "/", "default", "/"),
            ("other.org", "/nothing", "default", "/nothing"),
            // Equal routes: the first in the file.
            ("tie.example.com", "/t", "api", "/t"),
        ],
    )
    .await;
    assert_eq!(f.ups["api"].hits(), 2);
    assert_eq!(f.ups["users"].hits(), 0);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn the_longest_path_prefix_of_the_host_wins() {
    let f = Fixture::start("longest").await;
    check_table(
        f.web_addr(),
        &[
            ("api.example.com", "/v1/users/7", "users", "/v1/users/7"),
            ("api.example.com", "/v1/users/", "users", "/v1/users/"),
            ("api.example.com", "/v1/users", "api", "/v1/users"),
            ("api.example.com", "/v1/usersx", "api", "/v1/usersx"),
            ("api.example.com", "/v1/", "api", "/v1/"),
        ],
    )
    .await;
    f.lb.shutdown().await;
}

#[tokio::test]
async fn host_is_matched_without_its_port_case_or_trailing_dot() {
    let f = Fixture::start("hostform").await;
    check_table(
        f.web_addr(),
        &[
            ("api.example.com:8080", "/v1/x", "api", "/v1/x"),
            ("API.Example.COM", "/v1/x", "api", "/v1/x"),
            ("Api.EXAMPLE.com:443", "/v1/users/1", "users", "/v1/users/1"),
            ("api.example.com.", "/v1/x", "api", "/v1/x"),
            ("X.B.Example.Com:81", "/", "deep", "/"),
            ("127.0.0.1:80", "/", "default", "/"),
        ],
    )
    .await;
    // The upstream gets the Host as the client sent it.
    let seen = f.ups["deep"].last_request().unwrap();
    assert_eq!(seen.headers["host"], "X.B.Example.Com:81");
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// strip_prefix, the fallback, 404

#[tokio::test]
async fn strip_prefix_sends_the_path_without_the_prefix() {
    let f = Fixture::start("strip").await;
    check_table(
        f.web_addr(),
        &[
            ("strip.example.com", "/v1/users", "stripped", "/users"),
            ("strip.example.com", "/v1/", "stripped", "/"),
            ("strip.example.com", "/v1/a/b?x=1", "stripped", "/a/b?x=1"),
            // "/v1" is not under "/v1/": the wildcard takes it, whole.
            ("strip.example.com", "/v1", "wild", "/v1"),
            ("any.org", "/static/app.js", "static", "/app.js"),
            ("any.org", "/static/", "static", "/"),
            // A route that does not strip sends the path whole.
            ("any.org", "/public/app.js", "public", "/public/app.js"),
        ],
    )
    .await;
    f.lb.shutdown().await;
}

#[tokio::test]
async fn the_fallback_backend_takes_what_no_route_matches() {
    let f = Fixture::start("fallback").await;
    check_table(
        f.web_addr(),
        &[
            ("other.org", "/nothing?q=1", "default", "/nothing?q=1"),
            ("example.com", "/v1/x", "default", "/v1/x"),
        ],
    )
    .await;
    // HTTP/1.0 without Host: only host-less routes can match, then the fallback.
    let mut c = Client::connect(f.web_addr()).await;
    c.send("GET /admin HTTP/1.0\r\n\r\n").await;
    served(
        &c.response(false).await,
        "admin",
        "/admin",
        "HTTP/1.0 /admin",
    );
    let mut c = Client::connect(f.web_addr()).await;
    c.send("GET /v1/x HTTP/1.0\r\n\r\n").await;
    served(
        &c.response(false).await,
        "default",
        "/v1/x",
        "HTTP/1.0 /v1/x",
    );
    let text = f.metrics().await;
    let series = format!("switchyard_no_route_total{{frontend=\"{}\"}}", f.web);
    assert_eq!(metric(&text, &series), 0.0, "{text}");
    f.lb.shutdown().await;
}

#[tokio::test]
async fn no_route_and_no_fallback_is_404_counted_and_logged() {
    let f = Fixture::start("noroute").await;
    let mut c = Client::connect(f.bare_addr()).await;
    let r = send(&mut c, "nothing.org:8080", "/nope?x=1").await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "no route for nothing.org:8080 /nope\n"
    );
    // The connection stays usable, and the route still serves.
    let r = send(&mut c, "api.example.com", "/v1/x").await;
    served(&r, "api", "/v1/x", "after a 404");
    let r = send(&mut c, "api.example.com", "/v2/x").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "no route for api.example.com /v2/x\n"
    );
    assert_eq!(f.hits(), 1);

    let series = format!("switchyard_no_route_total{{frontend=\"{}\"}}", f.bare);
    f.lb.wait_metric(&series, 2.0).await;
    let text = f.metrics().await;
    assert_eq!(metric(&text, &series), 2.0, "{text}");

    let lines = support::log_lines(&f.log, &f.bare, 3).await;
    let miss = lines
        .iter()
        .find(|v| v["path"] == "/nope?x=1")
        .unwrap_or_else(|| panic!("no line for /nope: {lines:?}"));
    assert_eq!(miss["status"], 404, "{miss}");
    assert_eq!(miss["termination"], "no_route", "{miss}");
    assert_eq!(miss["backend"], serde_json::Value::Null, "{miss}");
    assert_eq!(miss["server"], serde_json::Value::Null, "{miss}");
    let hit = lines.iter().find(|v| v["path"] == "/v1/x").unwrap();
    assert_eq!(hit["termination"], "ok", "{hit}");
    assert_eq!(hit["backend"], "api", "{hit}");
    f.lb.shutdown().await;
}

#[tokio::test]
async fn only_the_404_counts_as_no_route() {
    let f = Fixture::start("refusedcount").await;
    let refused = [
        // A path whose route a second reading would change: 400.
        "GET /v1/..%2Fx HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        // Refused before any route is looked at: 501, 400.
        "POST /x HTTP/1.1\r\nHost: none.org\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.org\r\nHost: b.org\r\n\r\n",
    ];
    for (raw, status) in refused.iter().zip([400, 501, 400]) {
        let mut c = Client::connect(f.bare_addr()).await;
        c.send(raw).await;
        let r = c.response(false).await;
        assert_eq!(r.status, status, "{raw:?}: {}", r.head);
    }
    let mut c = Client::connect(f.bare_addr()).await;
    assert_eq!(send(&mut c, "none.org", "/x").await.status, 404);
    let series = format!("switchyard_no_route_total{{frontend=\"{}\"}}", f.bare);
    f.lb.wait_metric(&series, 1.0).await;
    let text = f.metrics().await;
    assert_eq!(metric(&text, &series), 1.0, "{text}");
    assert_eq!(f.hits(), 0);
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Where the host comes from: HTTP/2's :authority, an absolute-form target

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_handshake<S>(io: S) -> H2Sender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake with the frontend");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// `GET uri` on an HTTP/2 connection: status and body (5 s bound).
async fn h2_get(sender: &mut H2Sender, uri: &str) -> (u16, String) {
    let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
    let fut = async {
        let resp = sender.send_request(req).await.expect("HTTP/2 request");
        assert_eq!(resp.version(), Version::HTTP_2);
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("no HTTP/2 answer to {uri} within 5 s"))
}

#[tokio::test]
async fn h2c_requests_are_routed_by_their_authority() {
    let f = Fixture::start("h2c").await;
    let tcp = TcpStream::connect(f.web_addr()).await.unwrap();
    let mut h2 = h2_handshake(tcp).await;
    // One connection, requests for several hosts: each goes by its own :authority.
    let cases = [
        ("http://api.example.com/v1/x", "api /v1/x"),
        ("http://api.example.com/v1/users/3", "users /v1/users/3"),
        ("http://www.example.com/v1/x", "wild /v1/x"),
        ("http://API.example.com:8080/v1/y", "api /v1/y"),
        ("http://other.org/static/s.css?v=2", "static /s.css?v=2"),
        ("http://other.org/v1/x", "default /v1/x"),
    ];
    for (uri, want) in cases {
        assert_eq!(h2_get(&mut h2, uri).await, (200, want.to_string()), "{uri}");
    }
    let seen = f.ups["api"].last_request().unwrap();
    assert_eq!(seen.headers["host"], "API.example.com:8080");
    f.lb.shutdown().await;
}

#[tokio::test]
async fn h2_over_tls_is_routed_by_authority_not_by_sni() {
    let pki = Pki::new("routes-h2");
    let leaf = pki.leaf("site", &["api.example.com", "*.example.com"]);
    let f = Fixture::start_with("h2tls", &leaf.frontend_tls()).await;
    let tcp = TcpStream::connect(f.web_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client(&[b"h2", b"http/1.1"]))
        .connect(ServerName::try_from("api.example.com").unwrap(), tcp)
        .await
        .expect("TLS handshake with the frontend");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_handshake(tls).await;
    // The SNI said api.example.com; a request for another name of the certificate goes by
    // its :authority.
    let cases = [
        ("https://api.example.com/v1/x", "api /v1/x"),
        ("https://www.example.com/v1/x", "wild /v1/x"),
        ("https://x.b.example.com/v1/x", "deep /v1/x"),
        ("https://api.example.com/v1/users/1", "users /v1/users/1"),
    ];
    for (uri, want) in cases {
        assert_eq!(h2_get(&mut h2, uri).await, (200, want.to_string()), "{uri}");
    }
    let seen = f.ups["wild"].last_request().unwrap();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    f.lb.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority() {
    let f = Fixture::start("absolute").await;
    let mut c = Client::connect(f.web_addr()).await;
    let r = send(&mut c, "api.example.com", "http://api.example.com/v1/x").await;
    // The upstream gets the origin form.
    served(&r, "api", "/v1/x", "absolute-form, HTTP/1.1");
    let r = send(&mut c, "www.example.com", "http://www.example.com/v1/x?q").await;
    served(&r, "wild", "/v1/x?q", "absolute-form, wildcard");
    // HTTP/1.0 without Host: the authority is the only host, and it routes.
    let mut c = Client::connect(f.web_addr()).await;
    c.send("GET http://api.example.com/v1/users/2 HTTP/1.0\r\n\r\n")
        .await;
    served(
        &c.response(false).await,
        "users",
        "/v1/users/2",
        "absolute-form, HTTP/1.0",
    );
    assert_eq!(
        f.ups["users"].last_request().unwrap().headers["host"],
        "api.example.com"
    );
    f.lb.shutdown().await;
}

#[tokio::test]
async fn userinfo_in_an_absolute_form_target_is_not_part_of_the_host() {
    let f = Fixture::start("userinfo").await;
    let mut c = Client::connect(f.web_addr()).await;
    // The Host field agrees with the target's host: both route, and reach, api.example.com.
    let r = send(&mut c, "api.example.com", "http://u@api.example.com/v1/x").await;
    served(&r, "api", "/v1/x", "user@host");
    let r = send(
        &mut c,
        "api.example.com",
        "http://u:p@api.example.com:80/v1/users/1",
    )
    .await;
    served(&r, "users", "/v1/users/1", "user:password@host:port");
    let mut c = Client::connect(f.bare_addr()).await;
    let r = send(&mut c, "other.org", "http://u:p@other.org/x").await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "no route for other.org /x\n"
    );
    assert_eq!(f.ups["wild"].hits(), 0);
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The path: routed and forwarded in one normal form

#[tokio::test]
async fn dot_segments_and_encoded_letters_are_routed_and_forwarded_normalized() {
    let f = Fixture::start("normal").await;
    check_table(
        f.web_addr(),
        &[
            ("h.org", "/v1/../admin", "admin", "/admin"),
            ("h.org", "/public/../admin/x", "admin", "/admin/x"),
            ("h.org", "/%61dmin", "admin", "/admin"),
            ("h.org", "/%61%64min/%7Euser", "admin", "/admin/~user"),
            ("h.org", "//admin//a/./b", "admin", "/admin/a/b"),
            ("h.org", "/public/%2e%2e/admin", "admin", "/admin"),
            ("h.org", "/../../admin", "admin", "/admin"),
            // Dot segments out of a host's route into another of the same host.
            (
                "api.example.com",
                "/v1/x/../users/5",
                "users",
                "/v1/users/5",
            ),
            ("api.example.com", "/v1/users/../../v2", "wild", "/v2"),
            // Normalized into a stripping route: stripped after normalizing.
            ("h.org", "/public/../static/./app.js", "static", "/app.js"),
            // Other escapes are kept (hex upper-cased).
            ("h.org", "/public/caf%c3%a9", "public", "/public/caf%C3%A9"),
        ],
    )
    .await;
    f.lb.shutdown().await;
}

#[tokio::test]
async fn the_query_is_kept_through_normalization_and_strip() {
    let f = Fixture::start("query").await;
    check_table(
        f.web_addr(),
        &[
            (
                "h.org",
                "/v1/../admin?a=1&b=%2F..%2F",
                "admin",
                "/admin?a=1&b=%2F..%2F",
            ),
            ("h.org", "/%61dmin?x=/../y", "admin", "/admin?x=/../y"),
            ("h.org", "/static/./app.js?v=3", "static", "/app.js?v=3"),
            ("h.org", "/static/?", "static", "/?"),
            (
                "strip.example.com",
                "/v1/users?page=2",
                "stripped",
                "/users?page=2",
            ),
            ("api.example.com", "/v1/x?", "api", "/v1/x?"),
        ],
    )
    .await;
    f.lb.shutdown().await;
}

#[tokio::test]
async fn an_encoded_slash_that_would_change_the_route_is_refused() {
    let f = Fixture::start("ambiguous").await;
    let mut c = Client::connect(f.web_addr()).await;
    for target in [
        // An upstream decoding %2F would read /admin/x; as data it is under /public/.
        "/public/..%2Fadmin/x",
        "/public/..%2fadmin",
        "/public/%2E%2E%2Fadmin",
        "/public/..%5Cadmin",
        "/public/..;/admin",
    ] {
        let mut c = Client::connect(f.web_addr()).await;
        let r = send(&mut c, "h.org", target).await;
        assert_eq!(r.status, 400, "{target}: {}", r.head);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("changes the route"), "{target}: {body}");
    }
    // Also on a host whose exact route it would escape.
    let r = send(&mut c, "api.example.com", "/v1/users/..%2F..%2Fadmin").await;
    assert_eq!(r.status, 400, "{}", r.head);
    // A path that has no normal form at all.
    let mut c = Client::connect(f.web_addr()).await;
    let r = send(&mut c, "h.org", "/public/a%zz").await;
    assert_eq!(r.status, 400, "{}", r.head);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("two hex digits"), "{body}");
    assert_eq!(f.hits(), 0, "a refused path reached an upstream");
    f.lb.shutdown().await;
}

#[tokio::test]
async fn an_encoded_slash_that_keeps_the_route_is_forwarded_as_it_came() {
    let f = Fixture::start("keepslash").await;
    check_table(
        f.web_addr(),
        &[
            (
                "h.org",
                "/public/group%2Fname",
                "public",
                "/public/group%2Fname",
            ),
            (
                "h.org",
                "/public/a%2fb?x=%2F",
                "public",
                "/public/a%2Fb?x=%2F",
            ),
            (
                "h.org",
                "/public/a%2F..%2Fb",
                "public",
                "/public/a%2F..%2Fb",
            ),
            (
                "h.org",
                "/public/items;color=red",
                "public",
                "/public/items;color=red",
            ),
            // Both readings find no route but the fallback: forwarded, not refused.
            ("h.org", "/x/..%2Fy", "default", "/x/..%2Fy"),
            (
                "api.example.com",
                "/v1/users/a%2Fb",
                "users",
                "/v1/users/a%2Fb",
            ),
        ],
    )
    .await;
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The admin listing

fn route_json(host: Option<&str>, prefix: &str, backend: &str, strip: bool) -> serde_json::Value {
    json!({
        "host": host,
        "path_prefix": prefix,
        "sni": null,
        "backend": backend,
        "strip_prefix": strip,
        "source": "config",
    })
}

#[tokio::test]
async fn the_admin_api_lists_each_frontends_routes_in_precedence_order() {
    let f = Fixture::start("admin").await;
    let (status, body) = get(f.lb.admin_addr(), "/api/v1/routes").await;
    assert_eq!(status, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    let want = json!({"frontends": [
        {
            "name": f.web,
            "routes": [
                route_json(Some("api.example.com"), "/v1/users/", "users", false),
                route_json(Some("api.example.com"), "/v1/", "api", false),
                route_json(Some("strip.example.com"), "/v1/", "stripped", true),
                route_json(Some("tie.example.com"), "/", "api", false),
                route_json(Some("*.b.example.com"), "/", "deep", false),
                route_json(Some("*.example.com"), "/", "wild", false),
                route_json(None, "/public/", "public", false),
                route_json(None, "/static/", "static", true),
                route_json(None, "/admin", "admin", false),
            ],
            "fallback": "default",
        },
        {
            "name": f.bare,
            "routes": [route_json(Some("api.example.com"), "/v1/", "api", false)],
            "fallback": null,
        },
    ]});
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Config errors, as `switchyard check` reports them

/// A config with backend `b`, then `rest`.
fn config_with(rest: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:1\"\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n{rest}"
    )
}

const WEB: &str = "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:3\"\n";
const TCP: &str = "[[frontend]]\nname = \"t\"\nbind = \"127.0.0.1:4\"\nmode = \"tcp\"\n";

/// `switchyard check -c FILE` on `text`: the exit code and stderr.
fn check(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_route_key() {
    let dir = temp_dir("check");
    let cases: [(&str, String, &[&str]); 12] = [
        (
            "duplicate.toml",
            format!(
                "{WEB}backend = \"b\"\n[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n\
                 [[frontend.route]]\nhost = \"A.example.com\"\npath_prefix = \"/\"\nbackend = \"b\"\n"
            ),
            &[
                "frontend \"web\".route[1]",
                "repeats route[0]'s host and path_prefix",
            ],
        ),
        (
            "backend.toml",
            format!(
                "{WEB}backend = \"b\"\n[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"nope\"\n"
            ),
            &[
                "frontend \"web\".route[0].backend",
                "names no backend: \"nope\"",
            ],
        ),
        (
            "sni-in-http.toml",
            format!("{WEB}[[frontend.route]]\nsni = \"a.example.com\"\nbackend = \"b\"\n"),
            &["frontend \"web\".route[0].sni", "tcp-mode"],
        ),
        (
            "host-in-tcp.toml",
            format!(
                "{TCP}backend = \"b\"\n[[frontend.route]]\nsni = \"a.example.com\"\nbackend = \"b\"\n[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n"
            ),
            &["frontend \"t\".route[1].host", "mode = \"http\""],
        ),
        (
            "path-in-tcp.toml",
            format!(
                "{TCP}[[frontend.route]]\nsni = \"a.example.com\"\npath_prefix = \"/a/\"\nbackend = \"b\"\n"
            ),
            &["frontend \"t\".route[0].path_prefix"],
        ),
        (
            "no-sni-in-tcp.toml",
            format!("{TCP}[[frontend.route]]\nbackend = \"b\"\n"),
            &["frontend \"t\".route[0].sni", "is required"],
        ),
        (
            "wild.toml",
            format!(
                "{WEB}[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n[[frontend.route]]\nhost = \"a.*.example.com\"\nbackend = \"b\"\n"
            ),
            &["frontend \"web\".route[1].host", "whole first label"],
        ),
        (
            "port.toml",
            format!("{WEB}[[frontend.route]]\nhost = \"a.example.com:8080\"\nbackend = \"b\"\n"),
            &["frontend \"web\".route[0].host", "a port"],
        ),
        (
            "normal.toml",
            format!("{WEB}[[frontend.route]]\npath_prefix = \"/v1//x/../\"\nbackend = \"b\"\n"),
            &["frontend \"web\".route[0].path_prefix", "write \"/v1/\""],
        ),
        (
            "relative.toml",
            format!("{WEB}[[frontend.route]]\npath_prefix = \"v1/\"\nbackend = \"b\"\n"),
            &[
                "frontend \"web\".route[0].path_prefix",
                "must start with '/'",
            ],
        ),
        (
            "slash.toml",
            format!("{WEB}[[frontend.route]]\npath_prefix = \"/a%2Fb/\"\nbackend = \"b\"\n"),
            &["frontend \"web\".route[0].path_prefix", "separators"],
        ),
        (
            "nothing.toml",
            WEB.to_string(),
            &["frontend \"web\": needs a backend, routes"],
        ),
    ];
    for (name, rest, needles) in cases {
        let (code, err) = check(&dir, name, &config_with(&rest));
        assert_eq!(code, Some(1), "{name}: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: wanted {n:?} in {err}");
        }
    }
    // Routes without a fallback, and a tcp frontend with SNI routes, are valid.
    let ok = format!(
        "{WEB}[[frontend.route]]\nhost = \"*.example.com\"\npath_prefix = \"/v1/\"\nstrip_prefix = true\nbackend = \"b\"\n{TCP}[[frontend.route]]\nsni = \"*.example.com\"\nbackend = \"b\"\n"
    );
    let (code, err) = check(&dir, "ok.toml", &config_with(&ok));
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_refuses_a_route_or_fallback_to_a_service_tree_template() {
    let dir = temp_dir("check-template");
    let tree = "[[service_tree]]\netcd_prefix = \"/services\"\nfrontends = [\"web\"]\nhost = \"{service}.example.com\"\ntemplate = \"tpl\"\n";
    let with_tree = |frontend: &str| {
        config_with(&format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[[backend]]\nname = \"tpl\"\n{frontend}{tree}"
        ))
    };
    // A template is no backend of its own: it is not published, so a route to it would
    // silently match nothing, and a fallback naming it would answer 404.
    let cases = [
        (
            "route.toml",
            format!(
                "{WEB}backend = \"b\"\n[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n[[frontend.route]]\nhost = \"x.example.com\"\nbackend = \"tpl\"\n"
            ),
            "frontend \"web\".route[1].backend",
        ),
        (
            "fallback.toml",
            format!("{WEB}backend = \"tpl\"\n"),
            "frontend \"web\".backend",
        ),
    ];
    for (name, frontend, key) in cases {
        let (code, err) = check(&dir, name, &with_tree(&frontend));
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(key), "{name}: wanted {key:?} in {err}");
        assert!(err.contains("template"), "{name}: {err}");
    }
    let ok = format!(
        "{WEB}backend = \"b\"\n[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n"
    );
    let (code, err) = check(&dir, "ok.toml", &with_tree(&ok));
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_refuses_tls_to_the_servers_behind_sni_routes() {
    let dir = temp_dir("check-double-tls");
    // Backend `s` originates TLS to its servers; `b` does not.
    let secure =
        "[[backend]]\nname = \"s\"\nservers = [\"127.0.0.1:5\"]\n[backend.tls]\nverify = false\n";
    let sni = |backend: &str| {
        format!("[[frontend.route]]\nsni = \"a.example.com\"\nbackend = \"{backend}\"\n")
    };
    // SNI routes pass the client's TLS through: TLS of our own around it would reach the
    // server as TLS in TLS.
    let cases = [
        (
            "route.toml",
            format!("{TCP}{}{}", sni("b"), sni("s")),
            "frontend \"t\".route[1].backend",
        ),
        (
            "fallback.toml",
            format!("{TCP}backend = \"s\"\n{}", sni("b")),
            "frontend \"t\".backend",
        ),
    ];
    for (name, frontend, key) in cases {
        let (code, err) = check(&dir, name, &config_with(&format!("{secure}{frontend}")));
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(key), "{name}: wanted {key:?} in {err}");
        assert!(err.contains("[backend.tls]"), "{name}: {err}");
    }
    // Without SNI routes a tcp frontend may originate TLS, and HTTP routes may use it.
    let ok = format!(
        "{secure}{TCP}backend = \"s\"\n{WEB}[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"s\"\n"
    );
    let (code, err) = check(&dir, "ok.toml", &config_with(&ok));
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
