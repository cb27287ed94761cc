//! Upstream connections over their life: pooled keep-alive connections are closed once idle for
//! the backend's `pool_idle_timeout` (on the next request, or by the periodic upkeep when no
//! request comes), and a server that cuts a response body short counts as a live failure: it is
//! ejected and counted in `switchyard_upstream_aborts_total`.
//!
//! Then the edge cases of our HTTP/1.1 client (`h1_client`), against scripted upstreams that
//! answer with exact bytes (`support::raw::Script`, one behaviour per accepted connection,
//! counting accepts):
//! chunked responses in pieces and with trailers, close-delimited bodies, HTTP/1.0 and
//! `Connection: close` answers, bodiless responses (HEAD, 204, 304), interim `1xx` responses,
//! early answers to uploads, idle and racing server closes, malformed heads, broken chunked
//! bodies, unsolicited bytes, and request bodies sent on chunked. Connection reuse is judged
//! by the upstream's accept count: checks are off, so only the proxy connects.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use support::raw::{self, Drive, Recorded, Script};
use support::{Cfg, Lb, Upstream, get, http_client, metric, wait_until};

/// A raw HTTP/1.1 upstream that answers every request `ok` (or, if `cut` is set, announces
/// 100 bytes and closes after sending 5 of them), and the count of its connections the proxy
/// closed.
async fn raw_upstream(cut: bool) -> (Script, Arc<AtomicUsize>) {
    let closed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&closed);
    let up = Script::start(move |mut p| {
        let closed = Arc::clone(&c);
        async move {
            while p.request().await.is_some() {
                if cut {
                    p.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                        .await;
                    return;
                }
                p.send(&ok("ok")).await;
            }
            if p.closed() {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    (up, closed)
}

#[tokio::test]
async fn idle_pooled_connections_close_after_pool_idle_timeout() {
    let (up, closed) = raw_upstream(false).await;
    let toml = Cfg::http("web")
        .backend("idlepool")
        .servers(&[up.addr()])
        .backend_lines("pool_idle_timeout = \"400ms\"")
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    // Back to back: the second request reuses the pooled connection.
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(up.accepts(), 1);
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    // No request comes: the upkeep closes it (within the timeout plus one upkeep tick).
    let c = &closed;
    wait_until(
        "idle connection closed",
        Duration::from_secs(4),
        || async move { c.load(Ordering::SeqCst) == 1 },
    )
    .await;
    // The next request opens a new one, which then idles past the timeout and is not reused.
    assert_eq!(get(web, "/").await, (200, "ok".to_string()));
    assert_eq!(up.accepts(), 2);
    lb.shutdown().await;
}

/// TCP checks every minute: they pass for anything that accepts, and too late to matter here.
const CHECKS_SLOW: &str =
    "type = \"tcp\"\ninter = \"60s\"\nfastinter = \"60s\"\ndowninter = \"60s\"";

#[tokio::test]
async fn a_server_cutting_bodies_short_is_ejected_and_counted() {
    let good = Upstream::start("A").await;
    let (bad, _) = raw_upstream(true).await;
    let bad = bad.addr();
    let backend = "cutter";
    // Checks pass for both (both accept), and slowly: only the live failure can eject `bad`.
    let toml = Cfg::http("web")
        .backend(backend)
        .servers(&[good.addr(), bad])
        .check(CHECKS_SLOW)
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    // Round robin over two: within a few requests one lands on `bad` and its body breaks.
    let mut cut = 0;
    for _ in 0..4 {
        let resp = http_client()
            .get(format!("http://{web}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        if resp.bytes().await.is_err() {
            cut += 1;
        }
    }
    assert_eq!(cut, 1, "one body cut short, then the server was out");
    assert_eq!(lb.server(&bad.to_string()).await["state"], "down");
    for _ in 0..6 {
        assert_eq!(get(web, "/").await, (200, "A".to_string()));
    }
    let text = lb.metrics().await;
    let aborts = metric(
        &text,
        &format!("switchyard_upstream_aborts_total{{backend=\"{backend}\",server=\"{bad}\"}}"),
    );
    assert_eq!(aborts, 1.0, "{text}");
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The HTTP/1.1 client's edge cases, against scripted upstreams that answer with exact bytes.

/// Bound on any wait of a raw client.
const WAIT: Duration = Duration::from_secs(5);

/// Switchyard with one frontend and one backend `name` holding just `up` (no checks, so only
/// the proxy connects), with `backend` keys added.
async fn start_lb(up: &Script, name: &str, backend: &str) -> Lb {
    let toml = Cfg::http("web")
        .backend(name)
        .servers(&[up.addr()])
        .backend_lines(backend)
        .check_none()
        .toml();
    Lb::start_ready(&toml).await
}

/// A `Content-Length` response with `body`.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `method path` through the proxy on a new client connection: the status, and the body or
/// the error that reading it ended with.
async fn fetch(
    web: SocketAddr,
    method: reqwest::Method,
    path: &str,
) -> (u16, Result<Vec<u8>, String>) {
    let resp = http_client()
        .request(method.clone(), format!("http://{web}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
    let status = resp.status().as_u16();
    (
        status,
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("{e:?}")),
    )
}

/// `GET path`: status and body as text; panics if the body fails.
async fn get_ok(web: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = fetch(web, reqwest::Method::GET, path).await;
    let body = body.unwrap_or_else(|e| panic!("GET {path}: body failed: {e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn raw_drive(responses: usize) -> Drive {
    Drive::responses(responses, WAIT)
}

/// A chunked response written in pieces (the head split too, a chunk-size line split from its
/// extension, a chunk's CRLF split, chunk extensions with a quoted `;`, upper-case hex, data
/// that looks like a last chunk, a last chunk with leading zeros) reaches the client byte for
/// byte, and the connection is reused for the next request: the decoder counts bytes rather
/// than scanning for delimiters, and gives the connection back exactly at the body's end.
#[tokio::test]
async fn chunked_response_in_pieces_arrives_whole_and_the_connection_is_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            let head = format!(
                "oding: chunked\r\nX-Target: {}\r\n\r\n5;name=val",
                req.target
            );
            p.send_pieces(&[
                b"HTTP/1.1 200 OK\r\nTransfer-Enc",
                head.as_bytes(),
                b"ue\r\nhel",
                b"lo\r",
                b"\n7;q=\"a;b\" ; x\r\n0\r\n\r\nab\r\n",
                b"A\r\n0123456789\r\n00",
                b"0\r\n",
                b"\r\n",
            ])
            .await;
        }
    })
    .await;
    let lb = start_lb(&up, "chunky", "").await;
    let web = lb.http_addr("web");
    let want = "hello0\r\n\r\nab0123456789".to_string();
    assert_eq!(get_ok(web, "/one").await, (200, want.clone()));
    assert_eq!(get_ok(web, "/two").await, (200, want));
    assert_eq!(up.accepts(), 1, "{:?}", up.log());
    assert_eq!(up.seen().len(), 2);
    lb.shutdown().await;
}

/// A chunked response with trailers (sent in pieces, the trailer section split mid-field):
/// the trailer section is consumed to its final CRLF, so the connection is reused and the
/// next response on it is read from its first byte.
#[tokio::test]
async fn chunked_trailers_are_consumed_and_the_connection_is_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            if req.target == "/trailers" {
                p.send_pieces(&[
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n",
                    b"4\r\ndata\r\n0\r\nx-sum: ab",
                    b"cd\r\nx-other: 1\r\n",
                    b"\r\n",
                ])
                .await;
            } else {
                p.send(&ok("after")).await;
            }
        }
    })
    .await;
    let lb = start_lb(&up, "trailers", "").await;
    let web = lb.http_addr("web");
    assert_eq!(get_ok(web, "/trailers").await, (200, "data".to_string()));
    assert_eq!(get_ok(web, "/next").await, (200, "after".to_string()));
    assert_eq!(get_ok(web, "/trailers").await, (200, "data".to_string()));
    assert_eq!(up.accepts(), 1, "{:?}", up.log());
    lb.shutdown().await;
}

/// A response with neither Content-Length nor chunked coding runs to the close: the client
/// gets all of it (several writes, 200 KiB), and the next request opens a new connection.
#[tokio::test]
async fn close_delimited_body_arrives_whole_and_is_not_reused() {
    let tail = "z".repeat(200 * 1024);
    let up = Script::start(move |mut p| {
        let tail = tail.clone();
        async move {
            while let Some(req) = p.request().await {
                match req.target.as_str() {
                    "/eof11" => {
                        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
                        p.send_pieces(&[head, b"first,", b"second,", tail.as_bytes()])
                            .await;
                        return;
                    }
                    "/eof10" => {
                        p.send_pieces(&[b"HTTP/1.0 200 OK\r\n\r\n", b"old ", b"style"])
                            .await;
                        return;
                    }
                    _ => p.send(&ok("fresh")).await,
                }
            }
        }
    })
    .await;
    let lb = start_lb(&up, "eof", "").await;
    let web = lb.http_addr("web");
    let (status, body) = get_ok(web, "/eof11").await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("first,second,{}", "z".repeat(200 * 1024)));
    assert_eq!(get_ok(web, "/").await, (200, "fresh".to_string()));
    assert_eq!(up.accepts(), 2, "{:?}", up.log());
    // The pooled connection from `/` takes the next one; it then ends at the close too.
    assert_eq!(get_ok(web, "/eof10").await, (200, "old style".to_string()));
    assert_eq!(get_ok(web, "/").await, (200, "fresh".to_string()));
    assert_eq!(up.accepts(), 3, "{:?}", up.log());
    lb.shutdown().await;
}

/// Connections the response says not to reuse are not reused even though the server keeps
/// them open: an HTTP/1.0 response (without keep-alive) and `Connection: close`. An HTTP/1.0
/// response with `Connection: keep-alive` may be reused.
#[tokio::test]
async fn http10_and_connection_close_answers_are_not_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            let answer: &[u8] = match req.target.as_str() {
                "/http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabcd",
                "/close" => {
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nefgh"
                }
                "/http10-ka" => {
                    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nijkl"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            // Keeps the connection open whatever it said: only the proxy decides.
            p.send(answer).await;
        }
    })
    .await;
    let lb = start_lb(&up, "noreuse", "").await;
    let web = lb.http_addr("web");
    let steps = [
        ("/", "ok", 1),
        ("/http10", "abcd", 1),
        ("/", "ok", 2),
        ("/close", "efgh", 2),
        ("/", "ok", 3),
        ("/http10-ka", "ijkl", 3),
        ("/", "ok", 3),
    ];
    for (path, body, accepts) in steps {
        assert_eq!(get_ok(web, path).await, (200, body.to_string()), "{path}");
        assert_eq!(up.accepts(), accepts, "after {path}: {:?}", up.log());
    }
    lb.shutdown().await;
}

/// Responses that have no body whatever their headers say (to HEAD, with Content-Length 5 or
/// chunked; a 204; a 304 with Content-Length 5) end at their head: the same connection then
/// carries a GET whose body is read correctly.
#[tokio::test]
async fn bodiless_responses_end_at_their_head_and_the_connection_is_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            let answer: &[u8] = match (req.method.as_str(), req.target.as_str()) {
                ("HEAD", "/cl") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                ("HEAD", "/chunked") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                (_, "/204") => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
                (_, "/304") => {
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\n"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            };
            p.send(answer).await;
        }
    })
    .await;
    let lb = start_lb(&up, "bodiless", "").await;
    let web = lb.http_addr("web");
    let steps = [
        (reqwest::Method::HEAD, "/cl", 200),
        (reqwest::Method::HEAD, "/chunked", 200),
        (reqwest::Method::GET, "/204", 204),
        (reqwest::Method::GET, "/304", 304),
    ];
    for (method, path, status) in steps {
        let (got, body) = fetch(web, method.clone(), path).await;
        assert_eq!((got, body), (status, Ok(Vec::new())), "{method} {path}");
        assert_eq!(
            get_ok(web, "/").await,
            (200, "hello".to_string()),
            "after {path}"
        );
    }
    assert_eq!(up.accepts(), 1, "{:?}", up.log());
    lb.shutdown().await;
}

/// Interim responses are skipped: a `100 Continue` sent between a request's head and its body,
/// and a `100` plus a `103 Early Hints` (each in its own write) before the final response.
/// The connection stays in step (reused for both).
#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = Script::start(|mut p| async move {
        while let Some(mut req) = p.head().await {
            if req.method == "POST" {
                p.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                let whole = p.body(&mut req).await;
                p.record(&req);
                if !whole {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\ngot {}",
                    format!("got {}", req.body.len()).len(),
                    req.body.len()
                );
                p.send(answer.as_bytes()).await;
            } else {
                p.record(&req);
                p.send_pieces(&[
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
                ])
                .await;
            }
        }
    })
    .await;
    let lb = start_lb(&up, "interim", "").await;
    let web = lb.http_addr("web");
    let resp = http_client()
        .post(format!("http://{web}/upload"))
        .body(vec![b'u'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.text().await.unwrap(), "got 1000");
    assert_eq!(get_ok(web, "/").await, (200, "final".to_string()));
    assert_eq!(get_ok(web, "/").await, (200, "final".to_string()));
    assert_eq!(up.accepts(), 1, "{:?}", up.log());
    lb.shutdown().await;
}

/// An early answer: the client uploads 8 MiB; the server reads only the head, answers `413`
/// with `Connection: close` and closes (a reset, as it leaves the body unread). The client
/// gets that 413 (not a 502 or 504), promptly.
#[tokio::test]
async fn an_early_413_and_close_reaches_the_client() {
    let up = Script::start(|mut p| async move {
        let Some(req) = p.head().await else { return };
        p.record(&req);
        let body = "upstream says too big";
        let answer = format!(
            "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        p.send(answer.as_bytes()).await;
    })
    .await;
    let lb = start_lb(&up, "early", "").await;
    let len = 8 << 20;
    let mut bytes =
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    bytes.resize(bytes.len() + len, b'b');
    let ex = raw::exchange(lb.http_addr("web"), &bytes, &raw_drive(1)).await;
    assert_eq!(ex.statuses(), [413], "{}", ex.describe());
    assert_eq!(ex.responses[0].body, b"upstream says too big");
    assert!(ex.elapsed < Duration::from_secs(3), "{}", ex.describe());
    assert_eq!(up.accepts(), 1);
    assert_eq!(up.log(), [(0, "POST".to_string(), "/upload".to_string())]);
    lb.shutdown().await;
}

/// An early answer on a connection the server keeps open (it answers before the body is in,
/// and says nothing about closing): the rest of the request body was never sent, so the
/// connection is out of step and must not be reused.
#[tokio::test]
async fn a_connection_answered_before_its_body_was_sent_is_not_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.head().await {
            p.record(&req);
            if req.method == "POST" {
                p.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                    .await;
                // Swallows whatever comes next as the rest of the body.
                p.drain().await;
                return;
            }
            p.send(&ok("fresh")).await;
        }
    })
    .await;
    let lb = start_lb(&up, "early_ka", "response_timeout = \"2s\"").await;
    let web = lb.http_addr("web");
    // The client sends the head and a little of the body, then waits.
    let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nsome";
    let ex = raw::exchange(web, head, &raw_drive(1)).await;
    assert_eq!(ex.statuses(), [403], "{}", ex.describe());
    assert_eq!(get_ok(web, "/").await, (200, "fresh".to_string()));
    assert_eq!(up.accepts(), 2, "{:?}", up.log());
    lb.shutdown().await;
}

/// A pooled connection the server closes while it is idle (with a FIN, then with a reset) is
/// not used for the next request: that one goes out on a new connection and gets its 200.
/// The requests after the closes are POSTs with bodies, which are never resent: they succeed
/// only if the closed connection was recognised before anything was written to it.
#[tokio::test]
async fn idle_connections_the_server_closed_are_not_reused() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            p.send(&ok(&format!("fine {}", req.body.len()))).await;
            if !p.more_within(Duration::from_millis(100)).await {
                if req.target == "/rst" {
                    p.reset();
                }
                return;
            }
        }
    })
    .await;
    let lb = start_lb(&up, "idleclose", "").await;
    let web = lb.http_addr("web");
    assert_eq!(get_ok(web, "/fin").await, (200, "fine 0".to_string()));
    for (i, path) in ["/rst", "/"].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = http_client()
            .post(format!("http://{web}{path}"))
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "POST {path}");
        assert_eq!(resp.text().await.unwrap(), "fine 5");
        assert_eq!(up.accepts(), i + 2, "{:?}", up.log());
    }
    assert_eq!(up.seen().len(), 3, "{:?}", up.log());
    lb.shutdown().await;
}

/// The race `is_reusable` cannot see: the server closes a pooled connection just as the next
/// request goes out on it (here: it reads the request, then closes without a byte, once with
/// a FIN and once with a reset). A GET is then sent again on a new connection and succeeds.
#[tokio::test]
async fn a_get_caught_by_a_closing_pooled_connection_is_resent() {
    let up = Script::start(|mut p| async move {
        let Some(_) = p.request().await else { return };
        p.send(&ok("fine")).await;
        let Some(_) = p.request().await else { return };
        // The second request on a connection is never answered.
        if p.index == 1 {
            p.reset();
        }
    })
    .await;
    let lb = start_lb(&up, "stale", "").await;
    let web = lb.http_addr("web");
    for i in 0..3 {
        assert_eq!(
            get_ok(web, &format!("/{i}")).await,
            (200, "fine".to_string())
        );
    }
    assert_eq!(up.accepts(), 3, "{:?}", up.log());
    let conns: Vec<(usize, String)> = up.log().into_iter().map(|(c, _, t)| (c, t)).collect();
    let want = [(0, "/0"), (0, "/1"), (1, "/1"), (1, "/2"), (2, "/2")];
    let want: Vec<(usize, String)> = want.iter().map(|(c, t)| (*c, t.to_string())).collect();
    assert_eq!(conns, want);
    lb.shutdown().await;
}

/// The same race with a POST that has a body: it reached the server, so it is not sent a
/// second time (the client gets a 502), and the next request is served on a new connection.
#[tokio::test]
async fn a_post_caught_by_a_closing_pooled_connection_is_not_resent() {
    let up = Script::start(|mut p| async move {
        let Some(_) = p.request().await else { return };
        p.send(&ok("fine")).await;
        if p.index == 0 {
            // Reads the POST, then closes without answering.
            let _ = p.request().await;
            return;
        }
        while p.request().await.is_some() {
            p.send(&ok("fine")).await;
        }
    })
    .await;
    let lb = start_lb(&up, "stalepost", "").await;
    let web = lb.http_addr("web");
    assert_eq!(get_ok(web, "/").await, (200, "fine".to_string()));
    let resp = http_client()
        .post(format!("http://{web}/order"))
        .body("one order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    assert_eq!(get_ok(web, "/").await, (200, "fine".to_string()));
    let posts: Vec<Recorded> = up
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{:?}", up.log());
    assert_eq!(posts[0].body, b"one order");
    assert_eq!(up.accepts(), 2, "{:?}", up.log());
    lb.shutdown().await;
}

/// Response heads that are not valid HTTP/1.1 (or are over the 64 KiB limit, or end with the
/// connection) get the client a 502; the connection, even if the server keeps it open, is
/// never used again.
#[tokio::test]
async fn malformed_response_heads_are_502_and_the_connection_is_dropped() {
    let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "bad length",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n".to_vec(),
            false,
        ),
        (
            "signed length",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok".to_vec(),
            false,
        ),
        (
            "two lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
            false,
        ),
        (
            "bad status",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        ),
        (
            "no colon",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n".to_vec(),
            false,
        ),
        ("not http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), false),
        ("too large", huge.into_bytes(), false),
        (
            "cut mid-head",
            b"HTTP/1.1 200 OK\r\nContent-Le".to_vec(),
            true,
        ),
        ("closed at once", Vec::new(), true),
    ];
    let answers: Arc<Vec<(Vec<u8>, bool)>> =
        Arc::new(cases.iter().map(|(_, b, c)| (b.clone(), *c)).collect());
    let up = Script::start(move |mut p| {
        let answers = Arc::clone(&answers);
        async move {
            while let Some(req) = p.request().await {
                let i: usize = req.target[1..].parse().unwrap();
                let (bytes, close) = &answers[i];
                p.send(bytes).await;
                if *close {
                    return;
                }
            }
        }
    })
    .await;
    let lb = start_lb(&up, "malformed", "").await;
    let web = lb.http_addr("web");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let (status, body) = fetch(web, reqwest::Method::GET, &format!("/{i}")).await;
        assert_eq!(status, 502, "{name}: {body:?}");
        assert_eq!(up.accepts(), i + 1, "{name}: {:?}", up.log());
    }
    lb.shutdown().await;
}

/// A chunked body that breaks after the head went out (cut inside a chunk, before a chunk's
/// CRLF, between chunks, in a chunk-size line, in the trailers, or malformed while the
/// server keeps the connection open) is an error for the client, never a clean short body;
/// the connection is not reused.
#[tokio::test]
async fn broken_chunked_bodies_are_errors_for_the_client() {
    let cases: Vec<(&str, &[u8], bool)> = vec![
        ("mid-chunk", b"5\r\nhel", true),
        ("before crlf", b"5\r\nhello", true),
        ("between chunks", b"5\r\nhello\r\n", true),
        ("mid size line", b"5\r\nhello\r\n1", true),
        ("in trailers", b"5\r\nhello\r\n0\r\nx-t: 1\r\n", true),
        ("after last chunk", b"5\r\nhello\r\n0\r\n", true),
        ("bad crlf", b"5\r\nhelloXY0\r\n\r\n", false),
        ("bad size", b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n", false),
        (
            "size overflow",
            b"5\r\nhello\r\nfffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            false,
        ),
    ];
    let answers: Arc<Vec<(&'static [u8], bool)>> =
        Arc::new(cases.iter().map(|(_, b, c)| (*b, *c)).collect());
    let up = Script::start(move |mut p| {
        let answers = Arc::clone(&answers);
        async move {
            while let Some(req) = p.request().await {
                let i: usize = req.target[1..].parse().unwrap();
                let (bytes, close) = answers[i];
                p.send_pieces(&[
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    bytes,
                ])
                .await;
                if close {
                    return;
                }
            }
        }
    })
    .await;
    let lb = start_lb(&up, "brokenchunks", "").await;
    let web = lb.http_addr("web");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let (status, body) = fetch(web, reqwest::Method::GET, &format!("/{i}")).await;
        assert_eq!(status, 200, "{name}");
        assert!(body.is_err(), "{name}: a clean body {body:?}");
        assert_eq!(up.accepts(), i + 1, "{name}: {:?}", up.log());
    }
    lb.shutdown().await;
}

/// A request body of unknown length (a streamed upload, sent chunked by the client) reaches
/// the server chunked and complete, byte for byte, with no Content-Length; the server echoes
/// its length.
#[tokio::test]
async fn a_streamed_request_body_goes_upstream_chunked_and_whole() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            p.send(&ok(&format!("got {}", req.body.len()))).await;
        }
    })
    .await;
    let lb = start_lb(&up, "upload", "").await;
    let web = lb.http_addr("web");
    let pieces: Vec<Vec<u8>> = (0..6u8)
        .map(|i| vec![b'a' + i; 1000 * (1 + i as usize * 7)])
        .collect();
    let want: Vec<u8> = pieces.concat();
    let stream = futures_util::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::io::Error>(p)
    });
    let resp = http_client()
        .put(format!("http://{web}/stream"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), format!("got {}", want.len()));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[0].header("content-length"), None);
    assert!(
        seen[0].body == want,
        "body differs ({} bytes)",
        seen[0].body.len()
    );
    lb.shutdown().await;
}

/// A chunked request from a raw client (chunk extensions, then a trailer section) is sent on
/// as one well-formed chunked message: the server reads it, and the next request the client
/// sends on the same connection reaches the server intact. Nothing else is written to the
/// server's connection (a second last-chunk after the trailers would be read as a request).
#[tokio::test]
async fn a_chunked_request_with_trailers_is_sent_as_one_message() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            p.send(&ok(&format!("got {}", req.body.len()))).await;
        }
        // Something that is no request: answer as a server would, and close.
        p.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
    })
    .await;
    let lb = start_lb(&up, "reqtrailers", "").await;
    let web = lb.http_addr("web");
    let bytes = b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n\
        GET /after HTTP/1.1\r\nHost: x\r\n\r\n";
    let ex = raw::exchange(web, bytes, &raw_drive(2)).await;
    assert_eq!(ex.statuses(), [200, 200], "{}", ex.describe());
    assert_eq!(ex.responses[0].body, b"got 11");
    let first = up.seen()[0].clone();
    assert_eq!(first.body, b"hello world");
    assert_eq!(first.trailers, [("x-sum".to_string(), "11".to_string())]);
    // Give a stray write time to be read and recorded.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = up.log();
    let requests: Vec<(String, String)> =
        log.iter().map(|(_, m, t)| (m.clone(), t.clone())).collect();
    let want = [("POST", "/t"), ("GET", "/after")].map(|(m, t)| (m.to_string(), t.to_string()));
    assert_eq!(requests, want, "{log:?}");
    lb.shutdown().await;
}

/// Bytes a server sends after a response's end (in the same write, or a moment later) mean the
/// connection is out of step: it is not reused, so no later request reads them as its answer.
#[tokio::test]
async fn unsolicited_bytes_after_a_response_keep_the_connection_out_of_the_pool() {
    let up = Script::start(|mut p| async move {
        while p.request().await.is_some() {
            let stale = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale";
            match p.index {
                0 => p.send(&[ok("fresh"), stale.to_vec()].concat()).await,
                1 => p.send_pieces(&[&ok("fresh"), stale]).await,
                _ => p.send(&ok("fresh")).await,
            }
        }
    })
    .await;
    let lb = start_lb(&up, "unsolicited", "").await;
    let web = lb.http_addr("web");
    for i in 0..3 {
        assert_eq!(
            get_ok(web, "/").await,
            (200, "fresh".to_string()),
            "request {i}"
        );
        assert_eq!(up.accepts(), i + 1, "{:?}", up.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lb.shutdown().await;
}

/// A response with both Transfer-Encoding: chunked and Content-Length is chunked (RFC 9112
/// 6.3): the client gets the whole decoded body (so the stale Content-Length must not be
/// passed on), and the connection is not reused.
#[tokio::test]
async fn chunked_beats_content_length_and_the_length_is_not_forwarded() {
    let up = Script::start(|mut p| async move {
        while let Some(req) = p.request().await {
            if req.target == "/both" {
                p.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n")
                    .await;
            } else {
                p.send(&ok("fresh")).await;
            }
        }
    })
    .await;
    let lb = start_lb(&up, "tecl", "").await;
    let web = lb.http_addr("web");
    let resp = http_client()
        .get(format!("http://{web}/both"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let length = resp.headers().get("content-length").cloned();
    let body = resp
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("{e:?}"));
    assert_eq!(
        body,
        Ok(b"hello world".to_vec()),
        "content-length {length:?}"
    );
    assert_eq!(get_ok(web, "/").await, (200, "fresh".to_string()));
    assert_eq!(up.accepts(), 2, "{:?}", up.log());
    lb.shutdown().await;
}
