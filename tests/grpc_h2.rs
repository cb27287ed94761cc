//! HTTP/2 upstreams (`protocol = "h2"`, h2c by prior knowledge): a fake gRPC server built on
//! hyper's HTTP/2 server answers unary and server-streaming calls from an HTTP/2 client
//! through Switchyard, with messages streamed as sent and the `grpc-status` / `grpc-message`
//! trailers intact; calls share one upstream connection, which is re-created after the server
//! closes it; a trailers-only error reaches an HTTP/2 client with the server's fields only;
//! and HTTP/1.1 clients reach the same upstream (trailers included when they send
//! `TE: trailers`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::{Cfg, Lb, http_client, wait_until};

/// Gap between the messages of a server-streaming call.
const STREAM_GAP: Duration = Duration::from_millis(150);

/// What the fake server saw in its last request.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    uri: http::Uri,
    headers: HeaderMap,
}

/// A fake gRPC server: hyper's HTTP/2 server (prior knowledge) on `127.0.0.1:0`.
/// - `/test.Greeter/SayHello`: unary; answers `hello <name>`.
/// - `/test.Greeter/Count`: server streaming; the request holds n, the answer is n messages
///   `tick <i>`, `STREAM_GAP` apart.
/// - `/test.Greeter/Fail`: a trailers-only error (one HEADERS frame: `content-type` and
///   `grpc-status: 5`, no message).
///
/// Like grpc-go, it sends no `Date`.
/// - anything else: `200 text/plain` "plain h2".
///
/// gRPC answers end with trailers `grpc-status: 0`, `grpc-message: ok`.
struct GrpcServer {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Seen>>>,
    /// Cancelling it drops every open connection (the listener stays).
    conns: Arc<Mutex<CancellationToken>>,
    cancel: CancellationToken,
}

type ResBody = BoxBody<Bytes, Infallible>;

/// One gRPC message: compressed flag 0, big-endian length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(0);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Splits length-prefixed gRPC messages (panics on a partial one).
fn grpc_messages(mut data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        assert!(data.len() >= 5, "partial gRPC prefix: {data:?}");
        assert_eq!(data[0], 0, "compressed flag");
        let len = (&data[1..5]).get_u32() as usize;
        assert!(data.len() >= 5 + len, "partial gRPC message");
        out.push(String::from_utf8(data[5..5 + len].to_vec()).unwrap());
        data = &data[5 + len..];
    }
    out
}

fn grpc_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("grpc-message", "ok".parse().unwrap());
    t
}

/// A gRPC response whose frames come from a task: each message after `gap`, then trailers.
fn grpc_response(messages: Vec<String>, gap: Duration) -> Response<ResBody> {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    tokio::spawn(async move {
        for (i, m) in messages.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx
                .send(Frame::data(grpc_frame(m.as_bytes())))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Frame::trailers(grpc_trailers())).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

async fn answer(req: Request<Incoming>) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    match path.as_str() {
        "/test.Greeter/SayHello" => {
            let name = grpc_messages(&body).pop().unwrap_or_default();
            grpc_response(vec![format!("hello {name}")], Duration::ZERO)
        }
        "/test.Greeter/Fail" => Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .body(BodyExt::boxed(Empty::new()))
            .unwrap(),
        "/test.Greeter/Count" => {
            let n: usize = grpc_messages(&body)
                .pop()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            grpc_response((0..n).map(|i| format!("tick {i}")).collect(), STREAM_GAP)
        }
        _ => Response::builder()
            .header("content-type", "text/plain")
            .body(BodyExt::boxed(Full::new(Bytes::from("plain h2"))))
            .unwrap(),
    }
}

impl GrpcServer {
    async fn start() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = GrpcServer {
            addr,
            accepted: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
            last: Arc::new(Mutex::new(None)),
            conns: Arc::new(Mutex::new(CancellationToken::new())),
            cancel: CancellationToken::new(),
        };
        let (accepted, open, last, conns, cancel) = (
            Arc::clone(&server.accepted),
            Arc::clone(&server.open),
            Arc::clone(&server.last),
            Arc::clone(&server.conns),
            server.cancel.clone(),
        );
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let drop_conn = conns.lock().unwrap().clone();
                let (open, last) = (Arc::clone(&open), Arc::clone(&last));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        *last.lock().unwrap() = Some(Seen {
                            version: req.version(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                        });
                        async move { Ok::<_, Infallible>(answer(req).await) }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .auto_date_header(false)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = drop_conn.cancelled() => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    fn last(&self) -> Seen {
        self.last.lock().unwrap().clone().expect("a request")
    }

    /// Closes every open connection (as a restarting server would); keeps listening.
    fn drop_connections(&self) {
        let mut c = self.conns.lock().unwrap();
        c.cancel();
        *c = CancellationToken::new();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.conns.lock().unwrap().cancel();
    }
}

fn config(server: SocketAddr) -> String {
    Cfg::http("grpc")
        .backend("grpc")
        .servers(&[server])
        .backend_lines("protocol = \"h2\"")
        .check_none()
        .toml()
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    support::h2c(addr).await
}

fn grpc_request(lb: SocketAddr, method: &str, payload: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{lb}/test.Greeter/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(payload.as_bytes())))
        .unwrap()
}

/// A finished gRPC call: its messages with arrival times, and its trailers.
struct Call {
    status: u16,
    content_type: String,
    messages: Vec<(String, Instant)>,
    trailers: Option<HeaderMap>,
}

/// Reads a response frame by frame, timing each gRPC message (10 s deadline).
async fn read_call(resp: Response<Incoming>) -> Call {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut body = resp.into_body();
    if status != 200 {
        let text = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        panic!("status {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut messages = Vec::new();
    let mut trailers = None;
    let mut pending = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("response body error");
            match frame.into_data() {
                Ok(data) => {
                    pending.extend_from_slice(&data);
                    // Whole messages only; a message split across frames waits for its rest.
                    loop {
                        if pending.len() < 5 {
                            break;
                        }
                        let len = (&pending[1..5]).get_u32() as usize;
                        if pending.len() < 5 + len {
                            break;
                        }
                        let msg = pending.split_to(5 + len);
                        let text = grpc_messages(&msg).pop().unwrap();
                        messages.push((text, Instant::now()));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("call finished within 10 s");
    assert!(pending.is_empty(), "bytes left after the last message");
    Call {
        status,
        content_type,
        messages,
        trailers,
    }
}

fn assert_ok_trailers(call: &Call) {
    let t = call.trailers.as_ref().expect("response trailers");
    assert_eq!(t["grpc-status"], "0", "{t:?}");
    assert_eq!(t["grpc-message"], "ok", "{t:?}");
}

#[tokio::test]
async fn grpc_unary_call_through_an_h2c_upstream() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");
    let mut client = h2_client(lb_addr).await;
    let resp = client
        .send_request(grpc_request(lb_addr, "SayHello", "world"))
        .await
        .unwrap();
    let call = read_call(resp).await;
    assert_eq!(call.status, 200);
    assert_eq!(call.content_type, "application/grpc");
    let texts: Vec<&str> = call.messages.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(texts, ["hello world"]);
    assert_ok_trailers(&call);

    let seen = server.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.path(), "/test.Greeter/SayHello");
    assert_eq!(
        seen.uri.authority().map(|a| a.as_str().to_string()),
        Some(lb_addr.to_string())
    );
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(seen.headers["content-type"], "application/grpc");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    lb.shutdown().await;
}

#[tokio::test]
async fn grpc_server_streaming_arrives_as_it_is_sent() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");
    let mut client = h2_client(lb_addr).await;
    let resp = client
        .send_request(grpc_request(lb_addr, "Count", "5"))
        .await
        .unwrap();
    let call = read_call(resp).await;
    assert_eq!(call.status, 200);
    let texts: Vec<&str> = call.messages.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(texts, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);
    assert_ok_trailers(&call);
    // Streamed, not buffered: the messages arrive spread over the server's 4 gaps.
    let spread = call.messages[4].1 - call.messages[0].1;
    assert!(
        spread >= STREAM_GAP * 3,
        "messages arrived together ({spread:?}): the stream was buffered"
    );
    lb.shutdown().await;
}

/// A trailers-only gRPC error (no message) reaches an HTTP/2 client as the server sent it: its
/// fields are the call's trailing metadata, so nothing may be added.
///
/// Regression (found here, fixed): the client also got `trailer` (the announcement meant for
/// HTTP/1.1 clients) and `date` (hyper's).
#[tokio::test]
async fn a_trailers_only_error_reaches_h2_clients_unchanged() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");
    let mut client = h2_client(lb_addr).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.send_request(grpc_request(lb_addr, "Fail", "x")),
    )
    .await
    .expect("answer within 5 s")
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["content-type", "grpc-status"],
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.headers()["grpc-status"], "5");
    let body = resp.into_body().collect().await.unwrap();
    assert!(
        body.trailers().is_none(),
        "trailers-only: no trailers frame"
    );
    assert!(body.to_bytes().is_empty());
    lb.shutdown().await;
}

#[tokio::test]
async fn concurrent_calls_share_one_upstream_connection() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            // Separate client connections: sharing happens on the upstream side.
            let mut client = h2_client(lb_addr).await;
            let name = format!("caller {i}");
            let resp = client
                .send_request(grpc_request(lb_addr, "SayHello", &name))
                .await
                .unwrap();
            let call = read_call(resp).await;
            assert_eq!(call.messages[0].0, format!("hello {name}"));
            assert_ok_trailers(&call);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "20 concurrent calls should share one HTTP/2 connection"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_closed_shared_connection_is_re_created() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");
    let mut client = h2_client(lb_addr).await;
    let call = read_call(
        client
            .send_request(grpc_request(lb_addr, "SayHello", "one"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(call.messages[0].0, "hello one");

    server.drop_connections();
    wait_until(
        "server closed its connection",
        Duration::from_secs(5),
        || async { server.open.load(Ordering::SeqCst) == 0 },
    )
    .await;
    // NOTE: no signal tells when Switchyard has read the EOF; it follows the server's close
    // within a scheduler tick, so a short pause is enough.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let call = read_call(
        client
            .send_request(grpc_request(lb_addr, "SayHello", "two"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(call.status, 200);
    assert_eq!(call.messages[0].0, "hello two");
    assert_ok_trailers(&call);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    lb.shutdown().await;
}

#[tokio::test]
async fn http1_clients_reach_an_h2_upstream() {
    let server = GrpcServer::start().await;
    let lb = Lb::start_ready(&config(server.addr)).await;
    let lb_addr = lb.http_addr("grpc");

    // A plain HTTP/1.1 request.
    let resp = http_client()
        .get(format!("http://{lb_addr}/hello?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.text().await.unwrap(), "plain h2");
    let seen = server.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/hello?x=1");
    assert!(
        seen.headers.get("te").is_none(),
        "no TE from the client, none upstream"
    );

    // gRPC over HTTP/1.1 with `TE: trailers`: the trailers come as chunked trailer fields.
    let body = grpc_frame(b"h1");
    let mut s = TcpStream::connect(lb_addr).await.unwrap();
    let head = format!(
        "POST /test.Greeter/SayHello HTTP/1.1\r\nHost: grpc.test\r\nContent-Type: application/grpc\r\n\
         TE: trailers\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("hello h1"), "{text}");
    let (_, tail) = text.split_once("\r\n0\r\n").expect("last chunk");
    assert!(
        tail.contains("grpc-status: 0"),
        "trailers missing: {tail:?}"
    );
    assert!(
        tail.contains("grpc-message: ok"),
        "trailers missing: {tail:?}"
    );
    assert_eq!(
        server.last().uri.authority().unwrap().as_str(),
        "grpc.test",
        "the Host header becomes :authority"
    );
    lb.shutdown().await;
}
