//! TLS passthrough routed by SNI (`mode = "tcp"` with `[[frontend.route]] sni`), end to end:
//! TLS upstreams with their own certificates (`a.example.com`, `b.example.com`,
//! `*.example.com`, and `127.0.0.1` for the fallback) behind one tcp frontend; a rustls client
//! gets the certificate of the upstream its SNI names and a whole HTTP exchange through (nothing
//! is decrypted on the way); no SNI goes to the fallback backend, or is closed without one;
//! plain HTTP and silence are closed and counted; the access log's `bytes_in` counts the
//! ClientHello; and `GET /api/v1/routes` lists SNI routes.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::config::{self, Cfg};
use support::pki::{Leaf, Pki};
use support::stream::until_closed;
use support::{Lb, get, metric};

/// Bound on every single network wait in this file.
const WAIT: Duration = Duration::from_secs(5);

/// The frontends' `header_timeout`: how long a ClientHello may take.
const HELLO_TIMEOUT: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// TLS upstreams and clients

/// An HTTPS server (HTTP/1.1 over rustls) with its own certificate, answering `NAME TARGET`.
struct TlsUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl TlsUpstream {
    async fn start(name: &str, leaf: &Leaf) -> TlsUpstream {
        let sc = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(leaf.chain(), leaf.key_der())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let (n, c, name) = (Arc::clone(&accepted), cancel.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    _ = c.cancelled() => return,
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (acceptor, c, name) = (acceptor.clone(), c.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(WAIT, acceptor.accept(s)).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = format!("{name} {}", req.uri());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
        });
        TlsUpstream {
            addr,
            accepted,
            cancel,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A client socket counting the bytes it writes and reads.
struct Counting {
    inner: TcpStream,
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One TLS connection through the proxy: the certificate the server presented and the
/// response to `GET target` (read to the close), or why the handshake failed; and the bytes
/// the client wrote and read on the wire, ClientHello and alerts included.
struct Exchange {
    result: Result<(CertificateDer<'static>, String), String>,
    written: u64,
    read: u64,
}

/// A rustls client trusting `pki`, with SNI `name` (an IP address: no SNI).
async fn https_get(pki: &Pki, addr: SocketAddr, name: &str, target: &str) -> Exchange {
    let (written, read) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let io = Counting {
        inner: TcpStream::connect(addr).await.unwrap(),
        written: Arc::clone(&written),
        read: Arc::clone(&read),
    };
    let server = ServerName::try_from(name.to_string()).unwrap();
    let connect = tokio_rustls::TlsConnector::from(pki.client(&[])).connect(server, io);
    let result = match tokio::time::timeout(WAIT, connect).await {
        Err(_) => Err("no TLS handshake within 5 s".to_string()),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Ok(Ok(mut tls)) => {
            let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            let req = format!("GET {target} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut out)).await;
            // Our close_notify and FIN: the relay ends once both sides are done.
            let _ = tokio::time::timeout(WAIT, tls.shutdown()).await;
            Ok((cert, String::from_utf8_lossy(&out).into_owned()))
        }
    };
    Exchange {
        result,
        written: written.load(Ordering::SeqCst),
        read: read.load(Ordering::SeqCst),
    }
}

/// `https_get` that must succeed, reach `upstream` (by its answer) and see `leaf`'s certificate.
async fn through(pki: &Pki, addr: SocketAddr, name: &str, upstream: &str, leaf: &Leaf) -> Exchange {
    let x = https_get(pki, addr, name, "/hello?x=1").await;
    let (cert, response) = x
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("SNI {name}: {e}"));
    assert!(
        *cert == leaf.der,
        "SNI {name}: not {upstream}'s certificate"
    );
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "SNI {name}: {response}"
    );
    assert!(
        response.ends_with(&format!("\r\n\r\n{upstream} /hello?x=1")),
        "SNI {name}: {response}"
    );
    x
}

/// `https_get` that must fail: the error.
async fn refused(pki: &Pki, addr: SocketAddr, name: &str) -> (String, Exchange) {
    let x = https_get(pki, addr, name, "/").await;
    match &x.result {
        Ok(_) => panic!("SNI {name}: a whole exchange where none was wanted"),
        Err(e) => (e.clone(), x),
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture

/// Four TLS upstreams and Switchyard: tcp frontend `pass-TAG` routes `a.example.com` to A,
/// `b.example.com` to B, `*.example.com` to W and the rest (no SNI) to the fallback FB;
/// `strict-TAG` routes only `a.example.com`, with no fallback. Both give a ClientHello
/// `HELLO_TIMEOUT`. A JSON access log.
struct Fixture {
    pki: Pki,
    leaves: [Leaf; 4],
    ups: [TlsUpstream; 4],
    lb: Lb,
    pass: String,
    strict: String,
    log: PathBuf,
}

const A: usize = 0;
const B: usize = 1;
const W: usize = 2;
const FB: usize = 3;

impl Fixture {
    async fn start(tag: &str) -> Fixture {
        let pki = Pki::new(&format!("sni-{tag}"));
        let leaves = [
            pki.leaf("a", &["a.example.com"]),
            pki.leaf("b", &["b.example.com"]),
            pki.leaf("w", &["*.example.com"]),
            pki.leaf("fb", &["127.0.0.1"]),
        ];
        let ups = [
            TlsUpstream::start("A", &leaves[A]).await,
            TlsUpstream::start("B", &leaves[B]).await,
            TlsUpstream::start("W", &leaves[W]).await,
            TlsUpstream::start("FB", &leaves[FB]).await,
        ];
        let log = pki.dir().join("access.log");
        let (pass, strict) = (format!("pass-{tag}"), format!("strict-{tag}"));
        let timeout = format!("header_timeout = \"{}ms\"", HELLO_TIMEOUT.as_millis());
        let mut cfg = Cfg::new()
            .table(&format!(
                "[log]\naccess = \"json\"\naccess_file = {}",
                config::path(&log)
            ))
            .tcp_frontend(&pass)
            .to("fb")
            .frontend_lines(&timeout)
            .route("sni = \"*.example.com\"\nbackend = \"w\"")
            .route("sni = \"a.example.com\"\nbackend = \"a\"")
            .route("sni = \"B.example.com\"\nbackend = \"b\"")
            .tcp_frontend(&strict)
            .no_fallback()
            .frontend_lines(&timeout)
            .route("sni = \"a.example.com\"\nbackend = \"a\"");
        for (name, up) in ["a", "b", "w", "fb"].iter().zip(&ups) {
            cfg = cfg.backend(name).servers(&[up.addr]).check_none();
        }
        let lb = Lb::start_ready(&cfg.toml()).await;
        Fixture {
            pki,
            leaves,
            ups,
            lb,
            pass,
            strict,
            log,
        }
    }

    fn pass_addr(&self) -> SocketAddr {
        self.lb.http_addr(&self.pass)
    }

    fn strict_addr(&self) -> SocketAddr {
        self.lb.http_addr(&self.strict)
    }

    fn accepted(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.ups[i].accepted())
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.lb.metrics().await, series)
    }
}

// ---------------------------------------------------------------------------------------------
// Routing by SNI

#[tokio::test]
async fn each_sni_reaches_its_upstream_and_its_certificate_end_to_end() {
    let f = Fixture::start("exact").await;
    let addr = f.pass_addr();
    through(&f.pki, addr, "a.example.com", "A", &f.leaves[A]).await;
    through(&f.pki, addr, "b.example.com", "B", &f.leaves[B]).await;
    through(&f.pki, addr, "a.example.com", "A", &f.leaves[A]).await;
    assert_eq!(f.accepted(), [2, 1, 0, 0]);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn a_wildcard_sni_route_takes_the_other_names_of_its_domain() {
    let f = Fixture::start("wild").await;
    let addr = f.pass_addr();
    through(&f.pki, addr, "c.example.com", "W", &f.leaves[W]).await;
    through(&f.pki, addr, "www.example.com", "W", &f.leaves[W]).await;
    // The exact name still beats the wildcard listed before it.
    through(&f.pki, addr, "a.example.com", "A", &f.leaves[A]).await;
    assert_eq!(f.accepted(), [1, 0, 2, 0]);
    // A name outside the domain goes to the fallback, whose certificate does not name it.
    let (e, _) = refused(&f.pki, addr, "example.org").await;
    assert!(
        e.contains("certificate") || e.contains("Certificate"),
        "{e}"
    );
    assert_eq!(f.accepted(), [1, 0, 2, 1]);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn no_sni_goes_to_the_fallback_and_without_one_is_closed() {
    let f = Fixture::start("nosni").await;
    // Connecting to an IP address, rustls sends no SNI.
    through(&f.pki, f.pass_addr(), "127.0.0.1", "FB", &f.leaves[FB]).await;
    assert_eq!(f.accepted(), [0, 0, 0, 1]);

    // No fallback: closed without reaching any upstream, counted as no_route.
    for name in ["127.0.0.1", "b.example.com"] {
        let (e, _) = refused(&f.pki, f.strict_addr(), name).await;
        assert!(!e.contains("5 s"), "{name}: not closed: {e}");
    }
    through(&f.pki, f.strict_addr(), "a.example.com", "A", &f.leaves[A]).await;
    assert_eq!(f.accepted(), [1, 0, 0, 1]);
    let series = format!(
        "switchyard_tcp_rejected_total{{frontend=\"{}\",reason=\"no_route\"}}",
        f.strict
    );
    f.lb.wait_metric(&series, 2.0).await;
    assert_eq!(f.metric(&series).await, 2.0);
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// What is not a ClientHello

#[tokio::test]
async fn plain_http_is_closed_and_counted() {
    let f = Fixture::start("plain").await;
    let mut s = TcpStream::connect(f.pass_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(
        got.unwrap_or_default().is_empty(),
        "an answer to plain HTTP"
    );
    assert!(took < HELLO_TIMEOUT, "closed after {took:?}, not at once");
    let sni = format!(
        "switchyard_sni_errors_total{{frontend=\"{}\",reason=\"not_tls\"}}",
        f.pass
    );
    let rejected = format!(
        "switchyard_tcp_rejected_total{{frontend=\"{}\",reason=\"client_hello\"}}",
        f.pass
    );
    f.lb.wait_metric(&sni, 1.0).await;
    assert_eq!(f.metric(&sni).await, 1.0);
    assert_eq!(f.metric(&rejected).await, 1.0);
    // Not even the fallback saw it.
    assert_eq!(f.accepted(), [0, 0, 0, 0]);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn a_client_refused_for_its_first_bytes_gets_a_fin_not_a_reset() {
    let f = Fixture::start("fin").await;
    // More than one read's worth: what the proxy did not read must not turn the close into a
    // reset (which can also destroy bytes still on their way to the client).
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let mut s = TcpStream::connect(f.pass_addr()).await.unwrap();
    s.write_all(big.as_bytes()).await.unwrap();
    let (got, took) = until_closed(&mut s).await;
    match got {
        Ok(bytes) => assert!(bytes.is_empty(), "an answer to plain HTTP"),
        Err(e) => panic!("closed with {e} after {took:?}, not a FIN"),
    }
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(f.accepted(), [0, 0, 0, 0]);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn silence_is_closed_at_header_timeout_and_counted() {
    let f = Fixture::start("silent").await;
    let start = Instant::now();
    let mut s = TcpStream::connect(f.pass_addr()).await.unwrap();
    let (got, _) = until_closed(&mut s).await;
    let took = start.elapsed();
    assert!(got.unwrap_or_default().is_empty());
    assert!(
        took >= HELLO_TIMEOUT - Duration::from_millis(50) && took < Duration::from_secs(3),
        "closed after {took:?}, header_timeout is {HELLO_TIMEOUT:?}"
    );
    // Half a ClientHello, then silence: the same.
    let mut s = TcpStream::connect(f.pass_addr()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let (got, took) = until_closed(&mut s).await;
    assert!(got.unwrap_or_default().is_empty());
    assert!(
        took >= HELLO_TIMEOUT - Duration::from_millis(50),
        "{took:?}"
    );
    let sni = format!(
        "switchyard_sni_errors_total{{frontend=\"{}\",reason=\"timeout\"}}",
        f.pass
    );
    let rejected = format!(
        "switchyard_tcp_rejected_total{{frontend=\"{}\",reason=\"client_hello\"}}",
        f.pass
    );
    f.lb.wait_metric(&sni, 2.0).await;
    assert_eq!(f.metric(&sni).await, 2.0);
    assert_eq!(f.metric(&rejected).await, 2.0);
    assert_eq!(f.accepted(), [0, 0, 0, 0]);
    f.lb.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The access log and the admin listing

#[tokio::test]
async fn bytes_in_counts_the_client_hello() {
    let f = Fixture::start("bytes").await;
    let x = through(&f.pki, f.pass_addr(), "b.example.com", "B", &f.leaves[B]).await;
    let lines = support::log_lines(&f.log, &f.pass, 1).await;
    let v = &lines[0];
    assert_eq!(v["backend"], "b", "{v}");
    assert_eq!(v["server"], f.ups[B].addr.to_string(), "{v}");
    // Every byte the client wrote, the ClientHello first, and every byte it read.
    assert_eq!(v["bytes_in"], x.written, "{v}");
    assert_eq!(v["bytes_out"], x.read, "{v}");
    assert!(
        x.written > 200,
        "a ClientHello is a few hundred bytes: {}",
        x.written
    );
    f.lb.shutdown().await;
}

#[tokio::test]
async fn a_connection_closed_after_its_client_hello_logs_the_bytes_read() {
    let f = Fixture::start("refusedbytes").await;
    // No SNI and no fallback: the ClientHello was read, then no route.
    let (_, x) = refused(&f.pki, f.strict_addr(), "127.0.0.1").await;
    let lines = support::log_lines(&f.log, &f.strict, 1).await;
    let v = &lines[0];
    assert_eq!(v["termination"], "no_route", "{v}");
    assert_eq!(v["backend"], serde_json::Value::Null, "{v}");
    assert!(
        x.written > 200,
        "a ClientHello is a few hundred bytes: {}",
        x.written
    );
    assert_eq!(v["bytes_in"], x.written, "{v}");
    assert_eq!(v["bytes_out"], 0, "{v}");
    let series = format!(
        "switchyard_bytes_received_total{{frontend=\"{}\"}}",
        f.strict
    );
    assert_eq!(f.metric(&series).await, x.written as f64);
    assert_eq!(f.accepted(), [0, 0, 0, 0]);
    f.lb.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_lists_sni_routes() {
    let f = Fixture::start("admin").await;
    let (status, body) = get(f.lb.admin_addr(), "/api/v1/routes").await;
    assert_eq!(status, 200, "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sni = |name: &str, backend: &str| {
        json!({"host": null, "path_prefix": null, "sni": name, "backend": backend,
            "strip_prefix": false, "source": "config"})
    };
    let want = json!({"frontends": [
        {
            "name": f.pass,
            "routes": [
                sni("a.example.com", "a"),
                sni("b.example.com", "b"),
                sni("*.example.com", "w"),
            ],
            "fallback": "fb",
        },
        {"name": f.strict, "routes": [sni("a.example.com", "a")], "fallback": null},
    ]});
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
    f.lb.shutdown().await;
}
