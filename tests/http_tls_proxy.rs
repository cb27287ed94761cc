//! TLS and the PROXY protocol on the L7 path: HTTPS to the frontend (HTTP/1.1 with
//! X-Forwarded-Proto https, HTTP/2 by ALPN, the 408 header timeout over TLS, garbage failing
//! fast while the next handshake works), TLS to servers (`[backend.tls]` with a private CA,
//! ALPN `http/1.1` or `h2`, a wrong CA refused), `send_proxy` v1/v2 headers carrying the
//! client's address, and `accept_proxy` feeding X-Forwarded-For. Certificates come from a CA
//! made while the test runs (`support::pki`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use switchyard::proxy_protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::pki::{Leaf, Pki};
use support::{Cfg, Lb, Upstream};

/// The name the frontend certificate is for; clients resolve it to the frontend's address.
const SITE: &str = "switchyard.test";

fn config(servers: &[String], frontend: &str, backend: &str, backend_tls: &str) -> String {
    Cfg::http("web")
        .frontend_lines(frontend)
        .backend("b")
        .servers(servers)
        .backend_lines(backend)
        .backend_lines(backend_tls)
        .check_none()
        .toml()
}

/// TLS on the frontend with `leaf`, a 400 ms header timeout and a 2 s handshake timeout.
fn frontend_tls(leaf: &Leaf) -> String {
    format!(
        "header_timeout = \"400ms\"\n{}\nhandshake_timeout = \"2s\"",
        leaf.frontend_tls()
    )
}

/// A new CA named `tag`, and Switchyard serving its certificate for `SITE` (`frontend_tls`,
/// after the `frontend` lines) in front of `up`.
async fn https_lb(tag: &str, up: &Upstream, frontend: &str) -> (Pki, Lb) {
    let pki = Pki::new(tag);
    let site = pki.leaf("site", &[SITE]);
    let frontend = format!("{frontend}\n{}", frontend_tls(&site));
    let lb = Lb::start_ready(&config(&[up.addr().to_string()], &frontend, "", "")).await;
    (pki, lb)
}

/// A reqwest client trusting only the test CA, with `SITE` resolved to `addr`.
fn https_client(pki: &Pki, addr: SocketAddr) -> reqwest::Client {
    switchyard::tls::install_provider();
    let ca = reqwest::Certificate::from_der(&pki.ca_der()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([ca])
        .resolve(SITE, addr)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// TLS to `addr` with SNI `SITE`, offering `alpn`.
async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(pki.client(alpn))
        .connect(ServerName::try_from(SITE).unwrap(), tcp)
        .await
        .expect("TLS handshake with the frontend")
}

async fn read_all<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The frontend speaks TLS.

#[tokio::test]
async fn https_round_trip_sets_forwarded_proto() {
    let up = Upstream::start("behind-tls").await;
    let (pki, lb) = https_lb("rt", &up, "").await;
    let addr = lb.http_addr("web");
    let client = https_client(&pki, addr);
    for i in 0..3 {
        let resp = client
            .get(format!("https://{SITE}:{}/path?i={i}", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), "behind-tls");
    }
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        h["x-forwarded-host"],
        format!("{SITE}:{}", addr.port()).as_str()
    );
    assert_eq!(up.hits(), 3);

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain.get(format!("http://{addr}/")).send().await.is_err());
    lb.shutdown().await;
}

#[tokio::test]
async fn alpn_h2_end_to_end() {
    let up = Upstream::start("via-h2").await;
    let (pki, lb) = https_lb("alpn", &up, "").await;
    let tls = tls_connect(&pki, lb.http_addr("web"), &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..3 {
        let req = Request::get(format!("https://{SITE}/over-h2"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "via-h2");
    }
    let seen = up.last_request().unwrap();
    assert_eq!(seen.uri.path(), "/over-h2");
    assert_eq!(seen.headers["host"], SITE);
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    lb.shutdown().await;
}

#[tokio::test]
async fn garbage_fails_the_handshake_fast_and_the_next_one_works() {
    let up = Upstream::start("ok").await;
    let (pki, lb) = https_lb("garbage", &up, "").await;
    let addr = lb.http_addr("web");
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"\x16\x03\x01\x00\x05hello-not-tls"[..],
    ] {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let _ = read_all(&mut s, Duration::from_secs(5)).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a failed handshake took {:?} to close",
            start.elapsed()
        );
    }
    let resp = https_client(&pki, addr)
        .get(format!("https://{SITE}:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(up.hits(), 1, "garbage never reached the server");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_slow_header_over_tls_gets_408() {
    let up = Upstream::start("ok").await;
    let (pki, lb) = https_lb("slow", &up, "").await;
    let mut tls = tls_connect(&pki, lb.http_addr("web"), &[b"http/1.1"]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let out = read_all(&mut tls, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(up.hits(), 0);
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// TLS to servers.

/// What a TLS upstream saw: the ALPN protocol of each connection and the HTTP version of each
/// request.
#[derive(Default)]
struct TlsSeen {
    alpn: Vec<Option<Vec<u8>>>,
    versions: Vec<http::Version>,
}

/// A TLS server on `127.0.0.1:0` speaking HTTP/1.1 or HTTP/2 by ALPN, answering
/// `tls upstream` with a trailer `x-upstream: done`.
async fn tls_upstream(leaf: &Leaf) -> (SocketAddr, Arc<Mutex<TlsSeen>>) {
    switchyard::tls::install_provider();
    let mut sc = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.key_der())
        .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(TlsSeen::default()));
    let s2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&s2));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                seen.lock().unwrap().alpn.push(alpn);
                let svc = service_fn(move |req: Request<Incoming>| {
                    seen.lock().unwrap().versions.push(req.version());
                    async move {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("x-upstream", "done".parse().unwrap());
                        let body = Full::new(Bytes::from("tls upstream"))
                            .with_trailers(async move { Some(Ok(trailers)) });
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn servers_are_reached_over_tls_with_a_private_ca() {
    let pki = Pki::new("uptls");
    let leaf = pki.leaf("upstream", &["127.0.0.1"]);
    let (up, seen) = tls_upstream(&leaf).await;
    let backend_tls = pki.backend_tls();
    for (protocol, alpn, version) in [
        ("http1", &b"http/1.1"[..], http::Version::HTTP_11),
        ("h2", &b"h2"[..], http::Version::HTTP_2),
    ] {
        let lb = Lb::start_ready(&config(
            &[up.to_string()],
            "",
            &format!("protocol = \"{protocol}\""),
            &backend_tls,
        ))
        .await;
        let (status, body) = support::get(lb.http_addr("web"), "/secure").await;
        assert_eq!((status, body.as_str()), (200, "tls upstream"), "{protocol}");
        {
            let s = seen.lock().unwrap();
            assert_eq!(s.alpn.last().unwrap().as_deref(), Some(alpn), "{protocol}");
            assert_eq!(*s.versions.last().unwrap(), version, "{protocol}");
        }
        lb.shutdown().await;
    }

    // A server whose certificate the configured CA did not sign is not talked to; the second
    // server, tried after the first, neither.
    let (up2, _) = tls_upstream(&leaf).await;
    let other = Pki::new("uptls-other");
    let lb = Lb::start_ready(&config(
        &[up.to_string(), up2.to_string()],
        "",
        "",
        &other.backend_tls(),
    ))
    .await;
    let requests_before = seen.lock().unwrap().versions.len();
    let (status, body) = support::get(lb.http_addr("web"), "/secure").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(seen.lock().unwrap().versions.len(), requests_before);
    // The retry on the second server is counted as one after a TLS failure.
    let text = lb.metrics().await;
    let series = "switchyard_retries_by_cause_total{backend=\"b\",cause=\"tls_error\"}";
    assert!(support::metric(&text, series) >= 1.0, "{series} in {text}");
    lb.shutdown().await;
}

#[tokio::test]
async fn h2_over_tls_passes_trailers_to_an_h2_client() {
    let pki = Pki::new("h2trailers");
    let leaf = pki.leaf("upstream", &["127.0.0.1"]);
    let (up, _seen) = tls_upstream(&leaf).await;
    let lb = Lb::start_ready(&config(
        &[up.to_string()],
        "",
        "protocol = \"h2\"",
        &pki.backend_tls(),
    ))
    .await;
    let tcp = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("http://api.test/t")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-upstream"], "done");
    assert_eq!(collected.to_bytes(), "tls upstream");
    lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol.

/// A server that reads a PROXY header, records its addresses, then speaks HTTP/1.1 and
/// answers `proxied`.
async fn proxy_upstream() -> (SocketAddr, Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = Arc::clone(&s2);
            tokio::spawn(async move {
                match proxy_protocol::read_header(&mut tcp, Duration::from_secs(2)).await {
                    Ok(Some(addrs)) => seen.lock().unwrap().push(addrs),
                    _ => return,
                }
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("proxied"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One `GET /` (then close) on `s`: everything the server answered.
async fn raw_get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_all(s, Duration::from_secs(5)).await
}

#[tokio::test]
async fn send_proxy_tells_the_server_who_the_client_is() {
    for version in ["v1", "v2"] {
        let (up, seen) = proxy_upstream().await;
        let lb = Lb::start_ready(&config(
            &[up.to_string()],
            "",
            &format!("send_proxy = \"{version}\""),
            "",
        ))
        .await;
        let front = lb.http_addr("web");
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(front).await.unwrap();
            let me = s.local_addr().unwrap();
            let out = raw_get(&mut s).await;
            assert!(out.starts_with("HTTP/1.1 200"), "{version}: {out}");
            assert!(out.ends_with("proxied"), "{version}: {out}");
            clients.push(me);
        }
        let seen = seen.lock().unwrap().clone();
        // One upstream connection per client connection: a PROXY header speaks for one client.
        assert_eq!(seen.len(), 2, "{version}: {seen:?}");
        for (i, (src, dst)) in seen.iter().enumerate() {
            assert_eq!(*src, clients[i], "{version}: source is the client");
            assert_eq!(*dst, front, "{version}: destination is the frontend");
        }
        lb.shutdown().await;
    }
}

#[tokio::test]
async fn accept_proxy_feeds_x_forwarded_for() {
    let up = Upstream::start("ok").await;
    let lb = Lb::start_ready(&config(
        &[up.addr().to_string()],
        "accept_proxy = true\nheader_timeout = \"500ms\"",
        "",
        "",
    ))
    .await;
    let front = lb.http_addr("web");

    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n")
        .await
        .unwrap();
    let out = raw_get(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last_headers().unwrap()["x-forwarded-for"], "203.0.113.7");

    // v2, IPv6.
    let src: SocketAddr = "[2001:db8::5]:5555".parse().unwrap();
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(&proxy_protocol::encode_v2(src, front))
        .await
        .unwrap();
    let out = raw_get(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last_headers().unwrap()["x-forwarded-for"], "2001:db8::5");

    // No header, a malformed one, or a slow one: closed without an answer or a request sent.
    let hits = up.hits();
    for (bytes, wait) in [
        (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], false),
        (&b"PROXY TCP4 not-an-address\r\n"[..], false),
        (&b"PROXY TCP4 203.0.113.7"[..], true),
    ] {
        let start = Instant::now();
        let mut s = TcpStream::connect(front).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let out = read_all(&mut s, Duration::from_secs(5)).await;
        assert_eq!(out, "", "refused without an answer");
        let limit = if wait { 3 } else { 1 };
        assert!(
            start.elapsed() < Duration::from_secs(limit),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(up.hits(), hits);
    lb.shutdown().await;
}

#[tokio::test]
async fn accept_proxy_then_tls() {
    let up = Upstream::start("ok").await;
    let (pki, lb) = https_lb("proxytls", &up, "accept_proxy = true").await;
    let mut tcp = TcpStream::connect(lb.http_addr("web")).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.9 127.0.0.1 1234 443\r\n")
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client(&[b"http/1.1"]))
        .connect(ServerName::try_from(SITE).unwrap(), tcp)
        .await
        .expect("TLS after the PROXY header");
    let out = raw_get(&mut tls).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-forwarded-for"], "198.51.100.9");
    assert_eq!(h["x-forwarded-proto"], "https");
    lb.shutdown().await;
}
