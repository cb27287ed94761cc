//! The client-facing HTTP/1.x connection, as HAProxy, nginx and Envoy users expect it: the
//! behaviour any replacement of the frontend's HTTP/1.1 server must keep. Every case writes
//! exact bytes on a raw `TcpStream` and reads the answers off the wire by the framing rules a
//! client uses (RFC 9112 section 6.3; `support::raw::Client`), so framing, interim responses
//! and closes are visible.
//!
//! - Keep-alive: sequential requests on one connection; `Connection: close` and HTTP/1.0
//!   without keep-alive end it after the answer; HTTP/1.0 with `Connection: keep-alive` keeps it.
//! - Pipelining: requests with bodies (Content-Length and chunked) and GETs in one write are
//!   answered in order and reach the upstream whole.
//! - Response framing: a length is kept; a chunked answer stays delimited for an HTTP/1.1
//!   client, and an HTTP/1.0 client never gets chunked; a close-delimited answer arrives whole;
//!   HEAD, 204 and 304 have no body and the next answer on the connection is read right.
//! - `date` on every answer; our own error answers (502, 503, 504) have a length and a type.
//! - Request heads: `max_header_size` and the 100-field limit (431 and a close), malformed
//!   request lines (400 and a close), an `HTTP/2.0` request line (an error answer, no crash).
//! - `Expect: 100-continue`: the interim `100` before the body, then the final answer, the
//!   body byte for byte upstream; no `100` when the answer is an error that needs no body.
//! - Connection ends: a client FIN on an idle connection, `idle_timeout` between requests,
//!   and shutdown (idle connections closed at once, one in flight answered with a close).
//! - Bodies: 1 MiB request bodies (chunked, and with a length) reach the upstream byte for
//!   byte; a 4 MiB answer arrives whole and the connection is used again after it.
//!
//! Covered elsewhere and not repeated here: hostile framing and smuggling, bare-LF line
//! endings, 50 pipelined GETs stopping at a bad one, slowloris and header timeouts
//! (`tests/raw_http.rs`); the slow upload after `100 Continue` and in-flight requests on
//! shutdown (`tests/http_proxy.rs`); upstream-side framing (`tests/upstream_conns.rs`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::raw::{self, Client, Framing, RawResponse, Recorder, STEP, Script, get};
use support::{Cfg, Lb, Upstream};

/// Switchyard with frontend `web` (plus `frontend` lines) in front of `servers`, checks off.
async fn lb(servers: &[String], frontend: &str) -> Lb {
    Lb::start_ready(&config(servers, frontend).toml()).await
}

fn config(servers: &[String], frontend: &str) -> Cfg {
    Cfg::http("web")
        .frontend_lines(frontend)
        .backend("cc")
        .servers(servers)
        .check_none()
}

/// `len` bytes of a pattern that does not repeat within 251 bytes, with every byte value
/// (CR, LF and `0\r\n\r\n` sequences included), so a shifted or cut body shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An upstream with fixed answers, for response framing.

/// A raw upstream that reads bodiless request heads and answers by path with exact bytes:
/// `/len` 12 bytes with a length, `/chunk` "hello world" chunked (in two writes), `/eof` an
/// HTTP/1.0 answer with no length that ends at the close, `/204`, `/304` (with a
/// Content-Length of the representation, as RFC 9110 allows); any HEAD gets the `/len` head.
async fn origin() -> Script {
    Script::start(|mut p| async move {
        while let Some(req) = p.head().await {
            let pieces: Vec<&[u8]> = match (req.method.as_str(), req.target.as_str()) {
                ("HEAD", _) => vec![LEN_HEAD],
                (_, "/len") => vec![LEN_HEAD, b"twelve bytes"],
                (_, "/chunk") => vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    b"6\r\n world\r\n0\r\n\r\n",
                ],
                (_, "/eof") => vec![
                    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nclose-delimited ",
                    b"body",
                ],
                (_, "/204") => vec![b"HTTP/1.1 204 No Content\r\nx-kind: 204\r\n\r\n"],
                (_, "/304") => {
                    vec![b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 12\r\n\r\n"]
                }
                _ => vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"],
            };
            p.send_pieces(&pieces).await;
            if req.target == "/eof" {
                return;
            }
        }
    })
    .await
}

const LEN_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// Keep-alive and connection ends.

/// Five requests one after another on one connection, each answered in turn; the connection
/// is still open afterwards.
#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    for i in 0..5 {
        let path = format!("/seq{i}");
        let r = c.get(&path).await;
        r.assert_ok(&path, raw::FIXED_BODY);
        assert_eq!(r.version, "HTTP/1.1", "{}", r.head);
        assert!(!r.lists("connection", "close"), "{}", r.head);
    }
    c.assert_quiet().await;
    let targets: Vec<String> = up.take().requests.into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/seq0", "/seq1", "/seq2", "/seq3", "/seq4"]);
    lb.shutdown().await;
}

/// HTTP/1.1 `Connection: close`: the answer says `connection: close` and the proxy closes
/// after it; a request pipelined behind it is not answered.
#[tokio::test]
async fn connection_close_is_answered_then_closed() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    c.send("GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = c.response(false).await;
    r.assert_ok("/last", raw::FIXED_BODY);
    assert!(r.lists("connection", "close"), "{}", r.head);
    c.assert_closed().await;
    let targets: Vec<String> = up.take().requests.into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/last"]);
    lb.shutdown().await;
}

/// HTTP/1.0 without keep-alive: answered (never chunked) and closed. HTTP/1.0 with
/// `Connection: keep-alive`: the answer says keep-alive, has a length, and the connection
/// carries a second request.
#[tokio::test]
async fn http10_closes_unless_keep_alive_is_asked_for() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let web = lb.http_addr("web");

    let mut c = Client::connect(web).await;
    c.send("GET /ten HTTP/1.0\r\n\r\n").await;
    let r = c.response(false).await;
    r.assert_ok("/ten", raw::FIXED_BODY);
    assert!(r.version.starts_with("HTTP/1."), "{}", r.head);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    c.assert_closed().await;

    let mut c = Client::connect(web).await;
    for path in ["/ka1", "/ka2"] {
        c.send(format!(
            "GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let r = c.response(false).await;
        r.assert_ok(path, raw::FIXED_BODY);
        assert!(r.lists("connection", "keep-alive"), "{}", r.head);
        assert_eq!(r.framing, Framing::Length, "{}", r.head);
    }
    c.assert_quiet().await;
    lb.shutdown().await;
}

/// A client that sends FIN on an idle keep-alive connection (after its answer) is closed at
/// once, not left until `idle_timeout`.
#[tokio::test]
async fn client_fin_on_an_idle_connection_closes_it() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "idle_timeout = \"30s\"").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    c.get("/one").await.assert_ok("/one", raw::FIXED_BODY);
    c.shutdown_write().await;
    let took = c
        .closed_within(Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("after our FIN: {e}"));
    assert!(took < Duration::from_secs(2), "{took:?}");
    lb.shutdown().await;
}

/// `idle_timeout` bounds the wait between requests: a connection used every 1.2 s outlives a
/// 2 s timeout (the clock restarts with each request), and once idle it is closed after about
/// 2 s, with no answer sent.
#[tokio::test]
async fn idle_keep_alive_connection_closes_after_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(2);
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "idle_timeout = \"2s\"").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let path = format!("/busy{i}");
        c.get(&path).await.assert_ok(&path, raw::FIXED_BODY);
    }
    let took = c
        .closed_within(IDLE + Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("idle connection: {e}"));
    assert!(took >= IDLE / 2, "closed after only {took:?}");
    lb.shutdown().await;
}

/// What a client may send before going silent that is not yet a request: empty lines only
/// (which RFC 9112 2.2 lets a server skip), or empty lines and part of a head.
fn blank_starts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("CRLF CRLF", b"\r\n\r\n".to_vec()),
        ("LF LF", b"\n\n".to_vec()),
        ("1,000 CRLFs", b"\r\n".repeat(1000)),
        (
            "CRLFs then a partial head",
            b"\r\n\r\nGET /partial HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
    ]
}

/// Empty lines start the header clock like any other byte of a head: each start above, then
/// silence, gets `408` and a close at `header_timeout`, on a new connection and on a
/// keep-alive connection after its first answer. (They once read as a finished head to the
/// timer and as nothing to the parser, which held the connection open for good.)
#[tokio::test]
async fn empty_lines_then_silence_get_408_at_the_header_timeout() {
    const HEADER: Duration = Duration::from_secs(1);
    let up = Recorder::start().await;
    let lb = lb(
        &[up.addr().to_string()],
        "header_timeout = \"1s\"\nidle_timeout = \"30s\"",
    )
    .await;
    let web = lb.http_addr("web");
    for (what, bytes) in blank_starts() {
        // New connection; after an answer; and in the same write as a request (the server
        // has the bytes in its buffer before the answer, and no new byte comes after it).
        for keep_alive in [false, true] {
            let mut c = Client::connect(web).await;
            if keep_alive {
                c.get("/first").await.assert_ok("/first", raw::FIXED_BODY);
            }
            let t = Instant::now();
            c.send(&bytes).await;
            let r = c.response(false).await;
            let took = t.elapsed();
            assert_eq!(
                r.status, 408,
                "{what} (keep-alive {keep_alive}): {}",
                r.head
            );
            assert!(
                took >= HEADER - Duration::from_millis(100) && took < HEADER * 3,
                "{what} (keep-alive {keep_alive}): 408 after {took:?}"
            );
            if let Err(e) = c.closed_within(STEP).await {
                panic!("{what} (keep-alive {keep_alive}): wanted a close after 408: {e}");
            }
        }
        let mut c = Client::connect(web).await;
        let t = Instant::now();
        c.send([get("/first").as_bytes(), &bytes].concat()).await;
        c.response(false).await.assert_ok("/first", raw::FIXED_BODY);
        let r = c.response(false).await;
        let took = t.elapsed();
        assert_eq!(r.status, 408, "{what} (with a request): {}", r.head);
        assert!(
            took >= HEADER - Duration::from_millis(100) && took < HEADER * 3,
            "{what} (with a request): 408 after {took:?}"
        );
        if let Err(e) = c.closed_within(STEP).await {
            panic!("{what} (with a request): wanted a close after 408: {e}");
        }
    }
    // Nothing of those bytes reached the upstream as a request.
    let taken = up.take();
    assert!(
        taken.requests.iter().all(|r| r.target == "/first"),
        "{}",
        taken.describe()
    );
    lb.shutdown().await;
}

/// A connection that sent only empty lines holds no request: a graceful stop closes it at
/// once (it once counted as busy and held the stop for the whole grace period).
#[tokio::test]
async fn empty_lines_do_not_hold_a_graceful_stop() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "header_timeout = \"30s\"").await;
    let web = lb.http_addr("web");
    let mut fresh = Client::connect(web).await;
    fresh.send(b"\r\n\r\n").await;
    let mut reused = Client::connect(web).await;
    reused
        .get("/first")
        .await
        .assert_ok("/first", raw::FIXED_BODY);
    reused.send(b"\r\n".repeat(1000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    lb.cancel_token().cancel();
    for (what, c) in [("new connection", &mut fresh), ("keep-alive", &mut reused)] {
        let took = c
            .closed_within(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{what} on shutdown: {e}"));
        assert!(
            took < Duration::from_secs(1),
            "{what} closed after {took:?}"
        );
    }
    lb.shutdown_within(Duration::from_secs(5)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// On shutdown an idle keep-alive connection is closed at once, and one with a request in
/// flight gets its whole answer, marked `connection: close`, then the close; `run()` returns
/// as soon as that answer is out (not at the 30 s shutdown grace).
#[tokio::test]
async fn shutdown_closes_idle_connections_and_ends_busy_ones_after_their_answer() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let web = lb.http_addr("web");
    let mut idle = Client::connect(web).await;
    idle.get("/before")
        .await
        .assert_ok("/before", raw::FIXED_BODY);
    let mut busy = Client::connect(web).await;
    busy.get("/warm").await.assert_ok("/warm", raw::FIXED_BODY);
    let slow = format!("{}-inflight", raw::SLOW_PATH);
    busy.send(get(&slow)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    lb.cancel_token().cancel();
    let took = idle
        .closed_within(Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("idle connection on shutdown: {e}"));
    assert!(took < Duration::from_secs(1), "idle closed after {took:?}");

    let r = busy.response(false).await;
    r.assert_ok(&slow, raw::FIXED_BODY);
    assert!(r.lists("connection", "close"), "{}", r.head);
    busy.assert_closed().await;
    lb.shutdown_within(Duration::from_secs(5)).await;
    assert!(t.elapsed() < raw::SLOW_ANSWER + Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Pipelining and request bodies.

/// A pipelined request that is served for longer than `idle_timeout` (its head was read with
/// the one before it, so the connection is never idle while it is served) is answered, and so
/// is one that follows it.
#[tokio::test]
async fn a_slow_pipelined_request_is_not_cut_by_the_idle_timeout() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "idle_timeout = \"1s\"").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    let slow = format!("{}-piped", raw::SLOW_PATH);
    c.send(format!("{}{}{}", get("/first"), get(&slow), get("/third")))
        .await;
    c.response(false).await.assert_ok("/first", raw::FIXED_BODY);
    c.response(false).await.assert_ok(&slow, raw::FIXED_BODY);
    c.response(false).await.assert_ok("/third", raw::FIXED_BODY);
    lb.shutdown().await;
}

/// POST with a length, GET, POST chunked, GET, all in one write: answered in order, and the
/// upstream gets each request whole, in order.
#[tokio::test]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    c.send(concat!(
        "POST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /p2 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        "GET /p4 HTTP/1.1\r\nHost: x\r\n\r\n",
    ))
    .await;
    for path in ["/p1", "/p2", "/p3", "/p4"] {
        c.response(false).await.assert_ok(path, raw::FIXED_BODY);
    }
    c.assert_quiet().await;
    let seen: Vec<(String, String, Vec<u8>, bool)> = up
        .take()
        .requests
        .into_iter()
        .map(|r| (r.method, r.target, r.body, r.complete))
        .collect();
    let want = [
        ("POST", "/p1", &b"hello"[..]),
        ("GET", "/p2", b""),
        ("POST", "/p3", b"abcdefg"),
        ("GET", "/p4", b""),
    ];
    assert_eq!(seen.len(), want.len(), "{seen:?}");
    for ((m, t, body, complete), (wm, wt, wb)) in seen.iter().zip(want) {
        assert!(
            *complete && m == wm && t == wt && body == wb,
            "wanted {wm} {wt} {wb:?}, upstream saw {m} {t} {body:?} complete={complete}"
        );
    }
    lb.shutdown().await;
}

/// 1 MiB request bodies reach the upstream byte for byte: one chunked in uneven chunks (one
/// with an extension), one with a Content-Length, on one connection, then a GET on it.
#[tokio::test]
async fn large_request_bodies_reach_the_upstream_byte_for_byte() {
    const MIB: usize = 1 << 20;
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    let body = pattern(MIB);

    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut at = 0;
    for (i, size) in [1usize, 4095, 65536, 100_000, 7].iter().cycle().enumerate() {
        let n = (*size).min(MIB - at);
        let ext = if i == 2 { ";name=value" } else { "" };
        chunked.extend(format!("{n:x}{ext}\r\n").as_bytes());
        chunked.extend(&body[at..at + n]);
        chunked.extend(b"\r\n");
        at += n;
        if at == MIB {
            break;
        }
    }
    chunked.extend(b"0\r\n\r\n");
    c.send(&chunked).await;
    c.response(false)
        .await
        .assert_ok("/chunked", raw::FIXED_BODY);

    c.send(format!(
        "PUT /length HTTP/1.1\r\nHost: x\r\nContent-Length: {MIB}\r\n\r\n"
    ))
    .await;
    c.send(&body).await;
    c.response(false)
        .await
        .assert_ok("/length", raw::FIXED_BODY);
    c.get("/after").await.assert_ok("/after", raw::FIXED_BODY);

    let seen = up.take();
    let bodies: Vec<(&str, bool, usize)> = seen
        .requests
        .iter()
        .map(|r| (r.target.as_str(), r.complete, r.body.len()))
        .collect();
    assert_eq!(
        bodies,
        [
            ("/chunked", true, MIB),
            ("/length", true, MIB),
            ("/after", true, 0)
        ]
    );
    assert!(
        seen.requests[0].body == body,
        "the chunked body changed on the way"
    );
    assert!(
        seen.requests[1].body == body,
        "the Content-Length body changed on the way"
    );
    lb.shutdown().await;
}

/// A 4 MiB answer arrives whole, with its length, and the connection carries the next request.
#[tokio::test]
async fn large_response_then_another_request_on_the_same_connection() {
    const LEN: usize = 4 << 20;
    let up = Upstream::start_with("big", |req| async move {
        let body = match req.uri().path() {
            "/big" => pattern(LEN),
            _ => b"small".to_vec(),
        };
        Response::new(Full::new(Bytes::from(body)))
    })
    .await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    let r = c.get("/big").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.content_length(), Some(LEN), "{}", r.head);
    assert!(r.body == pattern(LEN), "the 4 MiB body changed on the way");
    r.assert_date();
    let r = c.get("/small").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"small"[..]), "{}", r.head);
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Response framing.

/// An upstream length is passed on as is; a chunked upstream answer reaches an HTTP/1.1
/// client delimited (chunked or with a length) and the connection stays usable; HEAD gets the
/// head with the upstream's length and no body, and the next answer is read from its first
/// byte; so are 204 and 304 (the 304's Content-Length describes the representation, not a body).
#[tokio::test]
async fn responses_keep_their_framing_on_a_keep_alive_connection() {
    let up = origin().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;

    let r = c.get("/len").await;
    assert_eq!((r.status, r.framing), (200, Framing::Length), "{}", r.head);
    assert_eq!(
        (r.content_length(), &r.body[..]),
        (Some(12), &b"twelve bytes"[..])
    );
    r.assert_date();

    let r = c.get("/chunk").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        matches!(r.framing, Framing::Chunked | Framing::Length),
        "{:?}: {}",
        r.framing,
        r.head
    );
    assert_eq!(r.body, b"hello world");
    r.assert_date();

    c.send("HEAD /len HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(
        (r.status, r.content_length()),
        (200, Some(12)),
        "{}",
        r.head
    );
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    r.assert_date();

    for (path, status) in [("/204", 204), ("/304", 304)] {
        let r = c.get(path).await;
        assert_eq!(r.status, status, "{}", r.head);
        assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
        r.assert_date();
    }
    // Had any of those carried body bytes, they would be read here as the next head.
    let r = c.get("/len").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"twelve bytes"[..]),
        "{}",
        r.head
    );
    c.assert_quiet().await;
    lb.shutdown().await;
}

/// An HTTP/1.0 client never gets chunked coding: a chunked upstream answer and a
/// close-delimited one reach it whole, with a length or ending at the close.
#[tokio::test]
async fn http10_clients_never_get_chunked() {
    let up = origin().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let web = lb.http_addr("web");
    for (path, keep_alive, body) in [
        ("/chunk", false, &b"hello world"[..]),
        ("/chunk", true, b"hello world"),
        ("/eof", false, b"close-delimited body"),
        ("/eof", true, b"close-delimited body"),
    ] {
        let mut c = Client::connect(web).await;
        let ka = if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            ""
        };
        c.send(format!("GET {path} HTTP/1.0\r\n{ka}\r\n")).await;
        let r = c.response(false).await;
        let case = format!("{path} keep-alive={keep_alive}: {}", r.head);
        assert_eq!(r.status, 200, "{case}");
        assert!(r.header("transfer-encoding").is_none(), "{case}");
        assert!(
            matches!(r.framing, Framing::Length | Framing::UntilClose),
            "{case}"
        );
        assert_eq!(r.body, body, "{case}");
        r.assert_date();
        if !keep_alive {
            c.assert_closed().await;
        }
    }
    lb.shutdown().await;
}

/// An upstream answer delimited by its close reaches an HTTP/1.1 client whole, in a framing
/// the client can delimit: chunked or a length (the connection may stay), or up to a close.
#[tokio::test]
async fn close_delimited_upstream_answer_reaches_an_http11_client_whole() {
    let up = origin().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    let r = c.get("/eof").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"close-delimited body", "{}", r.head);
    r.assert_date();
    match r.framing {
        // Ended by the close, which is all a client can go by here.
        Framing::UntilClose => {}
        Framing::Chunked | Framing::Length => {
            let r = c.get("/len").await;
            assert_eq!(r.body, b"twelve bytes", "{}", r.head);
        }
        Framing::Bodiless => panic!("no body: {}", r.head),
    }
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Our own answers.

/// 502 (the server refuses), 503 (its only server in maintenance) and 504 (too slow) come
/// with a content type, a length that matches the body, and a date.
#[tokio::test]
async fn own_error_answers_are_framed_and_dated() {
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let lb502 = lb(&[dead], "").await;
    let mut c = Client::connect(lb502.http_addr("web")).await;
    assert_error(&c.get("/").await, 502);

    let up = Upstream::start("up").await;
    let lb503 = lb(&[up.addr().to_string()], "").await;
    let status = lb503
        .set_server_state("cc", &up.addr().to_string(), "maint")
        .await;
    assert_eq!(status, 200);
    let mut c = Client::connect(lb503.http_addr("web")).await;
    assert_error(&c.get("/").await, 503);

    let slow = Upstream::start_with("slow", |_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(Full::new(Bytes::from("late")))
    })
    .await;
    let toml = config(&[slow.addr().to_string()], "")
        .backend_lines("response_timeout = \"300ms\"")
        .toml();
    let lb504 = Lb::start_ready(&toml).await;
    let mut c = Client::connect(lb504.http_addr("web")).await;
    assert_error(&c.get("/").await, 504);

    lb502.shutdown().await;
    lb503.shutdown().await;
    lb504.shutdown().await;
}

fn assert_error(r: &RawResponse, status: u16) {
    assert_eq!(r.status, status, "{}", r.head);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/")),
        "{}",
        r.head
    );
    assert_eq!(r.content_length(), Some(r.body.len()), "{}", r.head);
    assert!(!r.body.is_empty(), "{}", r.head);
    r.assert_date();
}

// ---------------------------------------------------------------------------------------------
// Request heads.

/// Sends `bytes` on a new connection and expects one answer in `statuses`, with a length and
/// a date, then a close.
async fn refused(addr: SocketAddr, bytes: &[u8], statuses: &[u16], what: &str) {
    let mut c = Client::connect(addr).await;
    c.send(bytes).await;
    let r = c.response(false).await;
    assert!(statuses.contains(&r.status), "{what}: {}", r.head);
    assert!(r.content_length().is_some(), "{what}: {}", r.head);
    r.assert_date();
    if let Err(e) = c.closed_within(STEP).await {
        panic!("{what}: wanted a close after {}: {e}", r.status);
    }
}

/// A GET whose header section is `size` bytes long, give or take a few.
fn head_of_size(path: &str, size: usize) -> Vec<u8> {
    let mut h = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Fill: ").into_bytes();
    let fill = size.saturating_sub(h.len() + 4);
    h.extend(std::iter::repeat_n(b'a', fill));
    h.extend(b"\r\n\r\n");
    h
}

/// With `max_header_size = 16384`: a 15 KiB header section is forwarded; one over 16 KiB is
/// answered 431 and closed, and nothing pipelined behind it is read.
#[tokio::test]
async fn header_section_over_max_header_size_is_431_and_closed() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "max_header_size = 16384").await;
    let web = lb.http_addr("web");
    let mut c = Client::connect(web).await;
    c.send(head_of_size("/fits", 15 * 1024)).await;
    c.response(false).await.assert_ok("/fits", raw::FIXED_BODY);

    let mut big = head_of_size("/too-big", 17 * 1024);
    big.extend(get("/behind").as_bytes());
    refused(web, &big, &[431], "17 KiB head").await;
    let targets: Vec<String> = up.take().requests.into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/fits"]);
    lb.shutdown().await;
}

/// 100 header fields are forwarded; 101 are refused (431, or 400) and the connection closed.
#[tokio::test]
async fn more_than_100_header_fields_are_refused() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let web = lb.http_addr("web");
    let with_fields = |path: &str, n: usize| {
        let mut h = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for i in 1..n {
            h.push_str(&format!("X-Field-{i}: v\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    let mut c = Client::connect(web).await;
    c.send(with_fields("/hundred", 100)).await;
    c.response(false)
        .await
        .assert_ok("/hundred", raw::FIXED_BODY);
    refused(
        web,
        with_fields("/too-many", 101).as_bytes(),
        &[431, 400],
        "101 fields",
    )
    .await;
    let seen = up.take();
    let targets: Vec<&str> = seen.requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/hundred"]);
    assert_eq!(seen.requests[0].all("x-field-99"), ["v"]);
    lb.shutdown().await;
}

/// Malformed request lines get 400 and a close; a bad version (`http/1.1` in lower case, or an
/// `HTTP/2.0` or `HTTP/3.0` request line that is not the h2 preface) gets 400, 426 or 505 and
/// a close. Nothing reaches the upstream,
/// and the frontend serves the next client.
#[tokio::test]
async fn malformed_request_lines_are_refused() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let web = lb.http_addr("web");
    const VERSION: &[u16] = &[400, 426, 505];
    let cases: &[(&str, &[u16])] = &[
        ("GET\r\nHost: x\r\n\r\n", &[400]),
        ("GET /\r\nHost: x\r\n\r\n", &[400]),
        ("GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", &[400]),
        ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        ("GET / HTTP/1.1\r\n: no-name\r\n\r\n", &[400]),
        ("GET / http/1.1\r\nHost: x\r\n\r\n", VERSION),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", VERSION),
        ("GET / HTTP/3.0\r\nHost: x\r\n\r\n", VERSION),
    ];
    for (bytes, statuses) in cases {
        refused(web, bytes.as_bytes(), statuses, &format!("{bytes:?}")).await;
    }
    assert!(
        up.take().is_empty(),
        "a malformed request reached the upstream"
    );
    let mut c = Client::connect(web).await;
    c.get("/still-up")
        .await
        .assert_ok("/still-up", raw::FIXED_BODY);
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Expect: 100-continue.

/// A client that waits for `100 Continue` gets it (and no final answer) before it sends its
/// body, then the final answer; the upstream gets the body byte for byte, with a length or
/// chunked, and the connection carries the next request.
#[tokio::test]
async fn expect_100_continue_then_the_body_byte_for_byte() {
    let up = Recorder::start().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    let body = pattern(300);

    c.send("POST /expect-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.response(false).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    assert_eq!(interim.version, "HTTP/1.1", "{}", interim.head);
    c.assert_quiet().await;
    c.send(&body).await;
    c.response(false)
        .await
        .assert_ok("/expect-cl", raw::FIXED_BODY);

    c.send("POST /expect-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.response(false).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    c.assert_quiet().await;
    c.send(b"64\r\n").await;
    c.send(&body[..100]).await;
    c.send(b"\r\nc8\r\n").await;
    c.send(&body[100..]).await;
    c.send(b"\r\n0\r\n\r\n").await;
    c.response(false)
        .await
        .assert_ok("/expect-chunked", raw::FIXED_BODY);

    c.get("/after").await.assert_ok("/after", raw::FIXED_BODY);
    let seen = up.take();
    assert_eq!(seen.requests.len(), 3, "{}", seen.describe());
    for r in &seen.requests[..2] {
        assert!(
            r.complete && r.body == body,
            "{} body changed: {}",
            r.target,
            seen.describe()
        );
    }
    lb.shutdown().await;
}

/// When the answer needs no body (no server can be reached: 502), the client gets that final
/// answer with no `100 Continue` before it, and never has to send the body.
#[tokio::test]
async fn expect_100_continue_is_not_sent_before_an_error_answer() {
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let lb = lb(&[dead], "").await;
    let mut c = Client::connect(lb.http_addr("web")).await;
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_error(&r, 502);
    lb.shutdown().await;
}

/// A server that answers `413` as soon as it has a request head, without reading the body,
/// then reads and drops whatever comes until the client closes (as servers with a body limit
/// do).
async fn early_413_origin() -> Script {
    Script::start(|mut p| async move {
        if p.head().await.is_none() {
            return;
        }
        p.send(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large")
            .await;
        p.drain().await;
    })
    .await
}

/// An upload answered before its body arrived (a `413` to a 10 MiB POST): the client gets the
/// answer with `connection: close`, its whole upload is taken (read and dropped) rather than
/// reset, and then the connection closes cleanly. Before, Switchyard closed with the body's
/// bytes unread, which reset the client's send (`curl --data-binary` exited 55).
#[tokio::test]
async fn an_early_answer_to_an_upload_is_sent_with_a_close_and_the_body_drained() {
    const BODY: usize = 10 * 1024 * 1024;
    let up = early_413_origin().await;
    let lb = lb(&[up.addr().to_string()], "").await;
    let stream = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let upload = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..BODY / piece.len() {
            wr.write_all(&piece).await?;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no close within 10 s");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text:?}"
    );
    assert!(text.ends_with("too large"), "{text:?}");
    ended.unwrap_or_else(|e| panic!("the connection ended with {e} after {text:?}"));
    let upload = tokio::time::timeout(STEP, upload)
        .await
        .expect("upload still running")
        .unwrap();
    assert!(upload.is_ok(), "the upload was cut: {:?}", upload.err());
    lb.shutdown().await;
}
