//! HTTP Upgrade through the L7 proxy: a WebSocket client talks to a WebSocket echo server
//! through Switchyard (text, binary and large frames), the upgrade headers reach the server,
//! the tunnel counts as in flight on its server (and holds a `max_conns_per_server` slot while
//! open), a server that declines the upgrade answers
//! normally, and a tunnel to a removed server is cut when its drain times out. CONNECT
//! tunnels to a forward proxy behind a frontend with `allow_connect` (and `405` without).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_util::sync::CancellationToken;

use support::{Cfg, Lb, Upstream, wait_until};

/// A WebSocket echo server on `127.0.0.1:0`: echoes text and binary messages, and remembers
/// the headers of the last handshake it accepted.
struct EchoServer {
    addr: SocketAddr,
    headers: Arc<Mutex<Option<http::HeaderMap>>>,
    cancel: CancellationToken,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = Arc::new(Mutex::new(None));
        let cancel = CancellationToken::new();
        let (h, c) = (Arc::clone(&headers), cancel.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (h, c) = (Arc::clone(&h), c.clone());
                tokio::spawn(async move {
                    // The error type is tungstenite's; its size is not ours to choose.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, resp: Response| {
                        *h.lock().unwrap() = Some(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    loop {
                        let msg = tokio::select! {
                            _ = c.cancelled() => return,
                            m = ws.next() => m,
                        };
                        match msg {
                            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                                if ws.send(m).await.is_err() {
                                    return;
                                }
                            }
                            Some(Ok(_)) => {}
                            None | Some(Err(_)) => return,
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            headers,
            cancel,
        }
    }

    fn last_headers(&self) -> http::HeaderMap {
        self.headers
            .lock()
            .unwrap()
            .clone()
            .expect("the echo server saw a handshake")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn config(servers: &[String], drain: &str) -> String {
    Cfg::http("web")
        .backend("ws")
        .servers(servers)
        .backend_lines(&format!("drain_timeout = \"{drain}\""))
        .check_none()
        .toml()
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(lb: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(lb).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{lb}{path}"), stream)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake through {lb}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Sends `msg` and returns the next data message (5 s deadline).
async fn echo(ws: &mut Client, msg: Message) -> Message {
    ws.send(msg).await.expect("send");
    let deadline = Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout(deadline, ws.next())
            .await
            .expect("no echo within 5 s")
            .expect("stream ended before the echo")
            .expect("WebSocket error before the echo");
        if matches!(next, Message::Text(_) | Message::Binary(_)) {
            return next;
        }
    }
}

/// The `active` count of server `addr` of the first backend (-1 once it is gone), from the admin API.
async fn active(lb: &Lb, addr: &str) -> i64 {
    lb.server(addr).await["active"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn websocket_frames_are_echoed_through_the_proxy() {
    let server = EchoServer::start().await;
    let lb = Lb::start_ready(&config(&[server.addr.to_string()], "30s")).await;
    let mut ws = connect(lb.http_addr("web"), "/chat?room=1").await;

    let got = echo(&mut ws, Message::text("hello through switchyard")).await;
    assert_eq!(got, Message::text("hello through switchyard"));
    let bytes: Vec<u8> = vec![0, 1, 2, 254, 255];
    let got = echo(&mut ws, Message::binary(bytes.clone())).await;
    assert_eq!(got, Message::binary(bytes));
    // Larger than any single read or TCP segment: the tunnel copies, it does not frame.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let got = echo(&mut ws, Message::binary(big.clone())).await;
    assert_eq!(got.into_data().as_ref(), &big[..]);
    for i in 0..20 {
        let m = format!("message {i}");
        assert_eq!(
            echo(&mut ws, Message::text(m.clone())).await,
            Message::text(m)
        );
    }

    let h = server.last_headers();
    assert_eq!(h["upgrade"].to_str().unwrap().to_lowercase(), "websocket");
    assert!(
        h["connection"]
            .to_str()
            .unwrap()
            .to_lowercase()
            .contains("upgrade"),
        "{h:?}"
    );
    assert!(h.contains_key("sec-websocket-key"), "{h:?}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    // The tunnel is in flight on its server until it closes.
    let addr = server.addr.to_string();
    assert_eq!(active(&lb, &addr).await, 1);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    // The server closed its side after the close handshake; the client closes its own.
    drop(ws);
    wait_until("tunnel released its server", Duration::from_secs(5), || {
        let (lb, addr) = (&lb, addr.clone());
        async move { active(lb, &addr).await == 0 }
    })
    .await;

    let text = lb.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_requests_total") && l.contains("code=\"101\"")),
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn an_open_tunnel_holds_its_server_slot_and_the_next_upgrade_waits_for_it() {
    let server = EchoServer::start().await;
    let toml = Cfg::http("web")
        .backend("wsq")
        .servers(&[server.addr])
        .backend_lines("max_conns_per_server = 1\nqueue_timeout = \"20s\"")
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let addr = lb.http_addr("web");
    let mut first = connect(addr, "/first").await;
    assert_eq!(
        echo(&mut first, Message::text("one")).await,
        Message::text("one")
    );
    // The second upgrade queues while the first tunnel is open (max_conns_per_server = 1).
    let second = tokio::spawn(async move {
        let mut ws = connect(addr, "/second").await;
        let got = echo(&mut ws, Message::text("two")).await;
        ws.close(None).await.unwrap();
        got
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second tunnel opened beyond the limit"
    );
    let text = lb.metrics().await;
    assert!(
        text.contains("switchyard_queue_depth{backend=\"wsq\"} 1"),
        "{text}"
    );
    first.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), first.next()).await {}
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second tunnel opened once the first closed")
        .unwrap();
    assert_eq!(got, Message::text("two"));
    lb.shutdown().await;
}

#[tokio::test]
async fn several_tunnels_at_once_stay_apart() {
    let server = EchoServer::start().await;
    let lb = Lb::start_ready(&config(&[server.addr.to_string()], "30s")).await;
    let addr = lb.http_addr("web");
    let mut tasks = Vec::new();
    for c in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(addr, "/").await;
            for i in 0..10 {
                let m = format!("client {c} message {i}");
                assert_eq!(
                    echo(&mut ws, Message::text(m.clone())).await,
                    Message::text(m)
                );
            }
            ws.close(None).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_declined_upgrade_is_an_ordinary_response() {
    // A plain HTTP server ignores the Upgrade header and answers 200: the client gets that 200
    // on a connection that stays HTTP (a second request on it works).
    let plain = Upstream::start("plain").await;
    let lb = Lb::start_ready(&config(&[plain.addr().to_string()], "30s")).await;
    let mut s = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    s.write_all(
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n\
          GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("response within 5 s")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert_eq!(plain.hits(), 2);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_is_cut_when_its_server_drain_times_out() {
    let server = EchoServer::start().await;
    let other = Upstream::start("other").await;
    let addr = server.addr.to_string();
    let lb = Lb::start_ready(&config(std::slice::from_ref(&addr), "1s")).await;
    let mut ws = connect(lb.http_addr("web"), "/").await;
    assert_eq!(
        echo(&mut ws, Message::text("before")).await,
        Message::text("before")
    );

    // Remove the server: it drains; the open tunnel keeps working until the drain timeout.
    lb.reload_toml(&config(&[other.addr().to_string()], "1s"))
        .await;
    wait_until("server draining", Duration::from_secs(5), || {
        let (lb, addr) = (&lb, addr.clone());
        async move { lb.server(&addr).await["state"] == "draining" }
    })
    .await;
    let removed = Instant::now();
    assert_eq!(
        echo(&mut ws, Message::text("during")).await,
        Message::text("during")
    );

    // Then the tunnel is cut: the client's stream ends (EOF or an error), within a bound.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "tunnel still open {:?} after its server was removed (drain timeout 1 s)",
        removed.elapsed()
    );
    // The tunnel no longer counts on its server (which may be gone from the list by now).
    wait_until("tunnel released its server", Duration::from_secs(5), || {
        let (lb, addr) = (&lb, addr.clone());
        async move { active(lb, &addr).await <= 0 }
    })
    .await;
    lb.shutdown().await;
}

/// A forward proxy on `127.0.0.1:0`, as a frontend with `allow_connect` would front: each
/// connection's first request must be a CONNECT; it is answered `200` (with a stray
/// `Content-Length: 0`, which must not make the connection look reusable) and then every byte
/// is echoed back, prefixed with `tunnel:` once. Any other request gets `400`. The request
/// heads it saw are kept.
async fn forward_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                seen.lock().unwrap().push(head.clone());
                if !head.starts_with("CONNECT ") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let ok = b"HTTP/1.1 200 Connection Established\r\ncontent-length: 0\r\n\r\ntunnel:";
                if s.write_all(ok).await.is_err() {
                    return;
                }
                if s.write_all(&buf[end..]).await.is_err() {
                    return;
                }
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// With `allow_connect`, an HTTP/1.1 CONNECT goes to the backend with its authority-form
/// target, and its `200` makes the client's connection a tunnel to that server connection:
/// bytes flow both ways, past the frontend's idle timeout. The server connection is never
/// pooled: a plain request afterwards goes on a new one (the forward proxy would echo it
/// into the tunnel otherwise). Without `allow_connect` (the default), CONNECT gets `405`.
#[tokio::test]
async fn connect_is_tunnelled_only_where_the_frontend_allows_it() {
    let (proxy, heads) = forward_proxy().await;
    let config = |frontend: &str| {
        Cfg::http("web")
            .frontend_lines(frontend)
            .backend("fwd")
            .servers(&[proxy])
            .check_none()
            .toml()
    };
    let lb = Lb::start_ready(&config("allow_connect = true\nidle_timeout = \"1s\"")).await;
    let mut c = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    c.write_all(b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Duration::from_secs(5);
    while !got.ends_with(b"tunnel:") {
        let n = tokio::time::timeout(deadline, c.read(&mut chunk))
            .await
            .expect("no tunnel answer")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length"),
        "{text:?}"
    );
    assert!(
        heads.lock().unwrap()[0].starts_with("CONNECT internal.example:443 HTTP/1.1\r\n"),
        "{:?}",
        heads.lock().unwrap()
    );
    // Quiet for longer than idle_timeout, then bytes both ways.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(deadline, c.read_exact(&mut echo))
        .await
        .expect("no echo through the tunnel")
        .unwrap();
    assert_eq!(&echo, b"ping");
    // A plain request now goes on its own connection, not into the tunnel.
    let (status, _) = support::get(lb.http_addr("web"), "/after").await;
    assert_eq!(status, 400, "the forward proxy answers plain requests 400");
    assert_eq!(heads.lock().unwrap().len(), 2);
    assert!(heads.lock().unwrap()[1].starts_with("GET /after HTTP/1.1\r\n"));
    drop(c);
    lb.shutdown().await;

    let lb = Lb::start_ready(&config("")).await;
    let mut c = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    c.write_all(b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(deadline, c.read_to_end(&mut answer))
        .await
        .expect("no close after 405")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 405"), "{text:?}");
    assert_eq!(
        heads.lock().unwrap().len(),
        2,
        "nothing more reached the server"
    );
    lb.shutdown().await;
}
