//! `max_body_size` end to end (README, "Request body limits"), with real upstreams that read
//! each body whole and record its size: over HTTP/1.1 and HTTP/2, a `Content-Length` over the
//! limit is answered `413` at once and the upstream sees nothing; a chunked body (or an HTTP/2
//! one without a length) that crosses the limit is answered `413` and the HTTP/1.1 connection
//! closed, with no whole body reaching the upstream; a body within the limit reaches it whole;
//! a route's value beats its frontend's; each refusal is counted in
//! `switchyard_requests_refused_total` and logged as `body_too_large`; the limit holds in front
//! of an HTTP/2 upstream (`protocol = "h2"`) too.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::config::{self, Cfg};
use support::{Lb, Upstream, h2c, log_lines, metric};

/// An upstream that reads each request body whole and answers `got N` (N bytes); the sizes of
/// the bodies it read whole are in the list.
async fn reader(name: &str) -> (Upstream, Arc<Mutex<Vec<usize>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let up = Upstream::start_with(name, move |req: Request<hyper::body::Incoming>| {
        let s = Arc::clone(&s);
        async move {
            match req.into_body().collect().await {
                Ok(b) => {
                    let n = b.to_bytes().len();
                    s.lock().unwrap().push(n);
                    Response::new(Full::new(Bytes::from(format!("got {n}"))))
                }
                Err(_) => Response::new(Full::new(Bytes::from("cut"))),
            }
        }
    })
    .await;
    (up, seen)
}

/// A body of `n` chunks of `size` bytes each, with no length known ahead (HTTP/2 sends it
/// without `content-length`), a short pause between chunks.
struct Chunks {
    left: usize,
    size: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn chunks(n: usize, size: usize) -> Chunks {
    Chunks {
        left: n,
        size,
        pause: None,
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if let Some(p) = &mut self.pause {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        self.left -= 1;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(5))));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

use std::future::Future;

/// A POST over HTTP/2 (h2c) to `path` with `body`; the status and the answer's body (an empty
/// one if the stream was reset after the head).
async fn h2_post<B>(addr: SocketAddr, path: &str, body: B, length: Option<usize>) -> (u16, String)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async {
        let mut s = h2c::<B>(addr).await;
        let mut b = Request::post(format!("http://shop.example.com{path}"));
        if let Some(n) = length {
            b = b.header("content-length", n);
        }
        let resp = s
            .send_request(b.body(body).unwrap())
            .await
            .expect("h2 answer");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("h2 answered within 5 s")
}

/// Writes `head` then `body` (each chunk written with a short pause) on a new HTTP/1.1
/// connection, then reads until the proxy closes it (5 s at most: a connection left open
/// fails the test). Returns what was read.
async fn h1_exchange(addr: SocketAddr, head: &str, body: &[Vec<u8>]) -> String {
    let fut = async {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(head.as_bytes()).await.expect("write head");
        for part in body {
            // The proxy may have answered and closed already: later writes may fail.
            if c.write_all(part).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("the proxy answered and closed the connection within 5 s")
}

/// The chunks of a chunked body: `n` chunks of `size` bytes, then the last chunk.
fn chunked(n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut c = format!("{size:x}\r\n").into_bytes();
            c.extend(vec![b'x'; size]);
            c.extend_from_slice(b"\r\n");
            c
        })
        .collect();
    out.push(b"0\r\n\r\n".to_vec());
    out
}

fn post_head(path: &str, framing: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: shop.example.com\r\n{framing}\r\n")
}

/// Frontend `frontend` (each test has its own: the metrics are the process's). The limit is 1KiB on `/up/` (the route's own), 100 bytes elsewhere (the frontend's, for a
/// route without its own and for the fallback), and 10KiB on `/big/`.
fn limits_config(frontend: &str, up: SocketAddr, log: Option<&std::path::Path>) -> String {
    let mut cfg = Cfg::new();
    if let Some(file) = log {
        cfg = cfg.table(&format!(
            "[log]\naccess = \"json\"\naccess_file = {}",
            config::path(file)
        ));
    }
    cfg.frontend(frontend)
        .frontend_lines("max_body_size = 100")
        .route("path_prefix = \"/up/\"\nbackend = \"shop\"\nmax_body_size = \"1KiB\"")
        .route("path_prefix = \"/big/\"\nbackend = \"shop\"\nmax_body_size = \"10KiB\"")
        .route("path_prefix = \"/small/\"\nbackend = \"shop\"")
        .backend("shop")
        .servers(&[up])
        .check_none()
        .toml()
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_413_at_once_and_reaches_no_upstream() {
    let (up, seen) = reader("shop").await;
    let lb = Lb::start_ready(&limits_config("cl", up.addr(), None)).await;
    let addr = lb.http_addr("cl");

    // HTTP/1.1: the answer, then the close (the rest of the body is never forwarded).
    let answer = h1_exchange(
        addr,
        &post_head("/up/x", "Content-Length: 2000\r\n"),
        &[vec![b'x'; 2000]],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.contains("limit of 1024 bytes (max_body_size)"),
        "{answer}"
    );

    // HTTP/2: the 413 on the stream.
    let (status, body) = h2_post(
        addr,
        "/up/x",
        Full::new(Bytes::from(vec![b'x'; 2000])),
        Some(2000),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit of 1024 bytes"), "{body}");

    assert_eq!(up.hits(), 0, "no upstream was contacted");
    assert!(seen.lock().unwrap().is_empty());
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"cl\",reason=\"body_too_large\"}"
        ),
        2.0,
        "{m}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_streamed_body_crossing_the_limit_is_413_and_the_connection_closes() {
    let (up, seen) = reader("shop").await;
    let lb = Lb::start_ready(&limits_config("chunked", up.addr(), None)).await;
    let addr = lb.http_addr("chunked");

    // HTTP/1.1 chunked: 4 x 512 bytes against 1KiB.
    let answer = h1_exchange(
        addr,
        &post_head("/up/x", "Transfer-Encoding: chunked\r\n"),
        &chunked(4, 512),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // read_to_end returned: the proxy closed the connection.

    // HTTP/2 without a length: the same.
    let (status, body) = h2_post(addr, "/up/x", chunks(4, 512), None).await;
    assert_eq!(status, 413, "{body}");

    // The upstream may have seen the start of each, never a whole body.
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"chunked\",reason=\"body_too_large\"}"
        ),
        2.0,
        "{m}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn bodies_within_the_limit_reach_the_upstream_whole() {
    let (up, seen) = reader("shop").await;
    let lb = Lb::start_ready(&limits_config("within", up.addr(), None)).await;
    let addr = lb.http_addr("within");

    // Exactly the limit by Content-Length, and just under it chunked.
    let answer = h1_exchange(
        addr,
        &post_head("/up/x", "Content-Length: 1024\r\nConnection: close\r\n"),
        &[vec![b'x'; 1024]],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("got 1024"), "{answer}");
    let answer = h1_exchange(
        addr,
        &post_head(
            "/up/x",
            "Transfer-Encoding: chunked\r\nConnection: close\r\n",
        ),
        &chunked(2, 500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("got 1000"), "{answer}");
    assert_eq!(
        h2_post(addr, "/up/x", chunks(2, 512), None).await,
        (200, "got 1024".into())
    );
    assert_eq!(
        h2_post(
            addr,
            "/up/x",
            Full::new(Bytes::from(vec![b'x'; 1000])),
            Some(1000)
        )
        .await,
        (200, "got 1000".into())
    );
    assert_eq!(*seen.lock().unwrap(), vec![1024, 1000, 1024, 1000]);
    let m = lb.metrics().await;
    // The series is there at 0 before any refusal (a frontend whose policy can refuse so).
    assert!(
        m.lines().any(|l| l
            == "switchyard_requests_refused_total{frontend=\"within\",reason=\"body_too_large\"} 0"),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"within\",reason=\"body_too_large\"}"
        ),
        0.0
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_routes_value_beats_its_frontends_and_refusals_are_logged() {
    let dir = std::env::temp_dir().join(format!("switchyard-body-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let _ = std::fs::remove_file(&file);
    let (up, seen) = reader("shop").await;
    let lb = Lb::start_ready(&limits_config("route", up.addr(), Some(&file))).await;
    let addr = lb.http_addr("route");
    let body = || Full::new(Bytes::from(vec![b'x'; 5000]));
    for h2 in [false, true] {
        // `/big/` sets 10KiB: 5000 bytes go through.
        let (status, _) = if h2 {
            h2_post(addr, "/big/x", body(), Some(5000)).await
        } else {
            let a = h1_exchange(
                addr,
                &post_head("/big/x", "Content-Length: 5000\r\nConnection: close\r\n"),
                &[vec![b'x'; 5000]],
            )
            .await;
            (a[9..12].parse().unwrap(), a)
        };
        assert_eq!(status, 200, "h2={h2}");
        // `/small/` sets none, and the fallback is the frontend's own: 100 bytes.
        for path in ["/small/x", "/elsewhere"] {
            let (status, body) = if h2 {
                h2_post(addr, path, chunks(2, 80), None).await
            } else {
                let a = h1_exchange(
                    addr,
                    &post_head(path, "Transfer-Encoding: chunked\r\n"),
                    &chunked(2, 80),
                )
                .await;
                (a[9..12].parse().unwrap(), a)
            };
            assert_eq!(status, 413, "h2={h2} {path}: {body}");
            assert!(body.contains("limit of 100 bytes"), "{body}");
        }
    }
    assert_eq!(*seen.lock().unwrap(), vec![5000, 5000]);
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"route\",reason=\"body_too_large\"}"
        ),
        4.0,
        "{m}"
    );
    let lines = log_lines(&file, "route", 6).await;
    let refused: Vec<_> = lines
        .iter()
        .filter(|v| v["termination"] == "body_too_large")
        .collect();
    assert_eq!(refused.len(), 4, "{lines:?}");
    for v in refused {
        assert_eq!(v["status"], 413, "{v}");
    }
    assert_eq!(
        lines.iter().filter(|v| v["termination"] == "ok").count(),
        2,
        "{lines:?}"
    );
    lb.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// An HTTP/2 (h2c) upstream that reads each body whole and answers `got N`; the sizes of the
/// bodies it read whole are in the list. It runs until the test's runtime ends.
async fn h2_reader() -> (SocketAddr, Arc<Mutex<Vec<usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = Arc::clone(&s);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let s = Arc::clone(&s);
                async move {
                    let body = match req.into_body().collect().await {
                        Ok(b) => {
                            let n = b.to_bytes().len();
                            s.lock().unwrap().push(n);
                            format!("got {n}")
                        }
                        Err(_) => "cut".to_string(),
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn the_limit_holds_in_front_of_an_http2_upstream() {
    let (up, seen) = h2_reader().await;
    let toml = Cfg::http("h2up")
        .route("path_prefix = \"/up/\"\nbackend = \"shop\"\nmax_body_size = \"1KiB\"")
        .backend("shop")
        .servers(&[up])
        .backend_lines("protocol = \"h2\"")
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("h2up");
    // Crossing the limit mid-stream: the upstream stream is reset, the client gets the 413.
    let answer = h1_exchange(
        addr,
        &post_head("/up/x", "Transfer-Encoding: chunked\r\n"),
        &chunked(4, 512),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let (status, body) = h2_post(addr, "/up/x", chunks(4, 512), None).await;
    assert_eq!(status, 413, "{body}");
    // Within it: the whole body arrives.
    assert_eq!(
        h2_post(addr, "/up/x", chunks(2, 512), None).await,
        (200, "got 1024".into())
    );
    assert_eq!(*seen.lock().unwrap(), vec![1024]);
    let m = lb.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_requests_refused_total{frontend=\"h2up\",reason=\"body_too_large\"}"
        ),
        2.0,
        "{m}"
    );
    lb.shutdown().await;
}
