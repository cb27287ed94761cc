//! The L4 data plane (`mode = "tcp"`) with static servers (no etcd needed): round-robin per
//! connection, connect-failure retry on another server, the idle timeout, exact byte counts for
//! a 1 MiB echo, no server available, draining a removed server (the relay keeps working; the
//! drain timeout ends it), shutdown leaving established relays alone, and TLS on both sides.
//! Upstreams are tiny TCP servers in this file: each writes its name and a newline on connect,
//! then echoes.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::pki::Pki;
use support::stream::{echo, read_line, until_closed};
use support::{Cfg, Lb, free_port, metric, wait_until};

/// Bound on every single network wait in this file.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Upstreams and clients

/// A TCP server that answers every connection with `name\n`, then echoes until EOF.
struct Banner {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl Banner {
    async fn start(name: &str) -> Banner {
        Self::start_tls(name, None).await
    }

    /// With `tls`, every connection is a TLS handshake first.
    async fn start_tls(name: &str, tls: Option<Arc<switchyard::tls::TlsAcceptor>>) -> Banner {
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
                let (c, name, tls) = (c.clone(), name.clone(), tls.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = c.cancelled() => {}
                        _ = async {
                            match tls {
                                None => banner_echo(s, &name).await,
                                Some(t) => if let Ok(s) = t.accept(s).await {
                                    banner_echo(s, &name).await
                                },
                            }
                        } => {}
                    }
                });
            }
        });
        Banner {
            addr,
            accepted,
            cancel,
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Banner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn banner_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: &str) {
    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown().await;
}

/// Connects and reads the upstream's banner.
async fn hello(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let name = read_line(&mut s).await;
    (s, name)
}

// ---------------------------------------------------------------------------------------------
// Config and metrics

/// One tcp frontend named `fe` in front of its backend `fe-be` with `servers`.
fn tcp(fe: &str, servers: &[String]) -> Cfg {
    Cfg::tcp(fe).backend(&format!("{fe}-be")).servers(servers)
}

/// `tcp(fe, servers)` with these lines added to the frontend and the backend, checks off.
fn config(fe: &str, servers: &[String], extra_frontend: &str, extra_backend: &str) -> String {
    tcp(fe, servers)
        .frontend_lines(extra_frontend)
        .backend_lines(extra_backend)
        .check_none()
        .toml()
}

/// The sum over every sample of `name` whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn round_robin_per_connection_over_three_upstreams() {
    let ups = [
        Banner::start("A").await,
        Banner::start("B").await,
        Banner::start("C").await,
    ];
    let servers: Vec<String> = ups.iter().map(|u| u.addr()).collect();
    let lb = Lb::start_ready(&config("rr", &servers, "", "")).await;
    let addr = lb.http_addr("rr");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for i in 0..30 {
        let (mut s, name) = hello(addr).await;
        echo(&mut s, &format!("message {i}\n")).await;
        order.push(name.clone());
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!((seen["A"], seen["B"], seen["C"]), (10, 10, 10), "{seen:?}");
    // Strict rotation: no server twice in a row.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    for u in &ups {
        assert_eq!(u.accepted(), 10);
    }
    let text = lb.metrics().await;
    for u in &ups {
        let line = format!(
            "switchyard_tcp_connections_total{{frontend=\"rr\",backend=\"rr-be\",server=\"{}\"}}",
            u.addr()
        );
        assert_eq!(metric(&text, &line), 10.0, "{line}\n{text}");
    }
    let rx = metric(&text, "switchyard_bytes_received_total{frontend=\"rr\"}");
    assert!(rx >= 30.0 * 10.0, "bytes received {rx}");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_dead_server_is_retried_on_another_and_counted() {
    let a = Banner::start("A").await;
    let b = Banner::start("B").await;
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let servers = vec![a.addr(), dead.clone(), b.addr()];
    // Checks off: nothing takes the dead server out, so every rotation meets it.
    let lb = Lb::start_ready(&config("failover", &servers, "", "retries = 2")).await;
    let addr = lb.http_addr("failover");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let (mut s, name) = hello(addr).await;
        echo(&mut s, "x").await;
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<usize>(), 30);
    assert!(seen["A"] >= 10 && seen["B"] >= 10, "{seen:?}");
    let text = lb.metrics().await;
    let errors = metric(
        &text,
        &format!(
            "switchyard_upstream_connect_errors_total{{backend=\"failover-be\",server=\"{dead}\"}}"
        ),
    );
    assert!(errors >= 5.0, "connect errors {errors}\n{text}");
    let retries = metric(&text, "switchyard_retries_total{backend=\"failover-be\"}");
    assert_eq!(retries, errors, "one retry per connect error");
    lb.shutdown().await;
}

#[tokio::test]
async fn with_every_server_dead_the_client_is_closed_after_the_retries() {
    let dead: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let lb = Lb::start_ready(&config("alldead", &dead, "", "retries = 5")).await;
    let mut s = TcpStream::connect(lb.http_addr("alldead")).await.unwrap();
    let (r, took) = until_closed(&mut s).await;
    assert!(r.unwrap_or_default().is_empty());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let text = lb.metrics().await;
    // Two servers: one try each, then nobody is left to try.
    let errors = metric_sum(
        &text,
        "switchyard_upstream_connect_errors_total",
        &["backend=\"alldead-be\""],
    );
    assert_eq!(errors, 2.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "switchyard_tcp_rejected_total{frontend=\"alldead\",reason=\"unreachable\"}"
        ),
        1.0,
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn no_server_available_closes_the_client_at_once() {
    let dead = format!("127.0.0.1:{}", support::dead_port());
    let check = "type = \"tcp\"\ninter = \"100ms\"\ntimeout = \"50ms\"\nfall = 1\nrise = 1";
    let lb = Lb::start_ready(&tcp("none-up", &[dead]).check(check).toml()).await;
    wait_until("the dead server is marked down", WAIT, || async {
        lb.backends().await["backends"][0]["servers"][0]["state"] == "down"
    })
    .await;
    let mut s = TcpStream::connect(lb.http_addr("none-up")).await.unwrap();
    s.write_all(b"hello?").await.unwrap();
    let (r, took) = until_closed(&mut s).await;
    assert_eq!(
        r.expect("a clean close, not a reset"),
        b"",
        "nothing relayed"
    );
    assert!(took < Duration::from_millis(400), "took {took:?}");
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_tcp_rejected_total{frontend=\"none-up\",reason=\"no_server\"}"
        ),
        1.0,
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn an_idle_relay_is_closed_and_an_active_one_is_not() {
    let up = Banner::start("A").await;
    let lb = Lb::start_ready(&config(
        "idle",
        &[up.addr()],
        "idle_timeout = \"400ms\"",
        "",
    ))
    .await;
    let (mut s, _) = hello(lb.http_addr("idle")).await;
    // Traffic every 100 ms for well over the idle timeout keeps the relay open.
    for i in 0..12 {
        echo(&mut s, &format!("tick {i}\n")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence: closed after about 400 ms.
    let (r, took) = until_closed(&mut s).await;
    assert!(r.unwrap_or_default().is_empty());
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "closed after {took:?} of silence"
    );
    wait_until("the connection gauge drops to 0", WAIT, || async {
        metric(
            &lb.metrics().await,
            "switchyard_connections_active{frontend=\"idle\"}",
        ) == 0.0
    })
    .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn one_mebibyte_each_way_arrives_exactly_and_is_counted() {
    let up = Banner::start("A").await;
    let lb = Lb::start_ready(&config("bytes", &[up.addr()], "", "")).await;
    let (s, name) = hello(lb.http_addr("bytes")).await;
    assert_eq!(name, "A");
    const N: usize = 1 << 20;
    let payload: Vec<u8> = (0..N).map(|i| (i * 31 % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(7919) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(N);
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
        .await
        .expect("echo of 1 MiB within 20 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), N);
    assert!(got == payload, "echoed bytes differ");
    let text = lb.metrics().await;
    assert_eq!(
        metric(&text, "switchyard_bytes_received_total{frontend=\"bytes\"}"),
        N as f64
    );
    assert_eq!(
        metric(&text, "switchyard_bytes_sent_total{frontend=\"bytes\"}"),
        (N + "A\n".len()) as f64
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_removed_server_drains_its_established_relay() {
    let a = Banner::start("A").await;
    let b = Banner::start("B").await;
    let toml = |servers: &[String]| config("drain", servers, "", "drain_timeout = \"30s\"");
    let lb = Lb::start_ready(&toml(&[a.addr(), b.addr()])).await;
    let addr = lb.http_addr("drain");
    let (mut held, first) = hello(addr).await;
    let (keep, gone) = if first == "A" { (&b, &a) } else { (&a, &b) };
    lb.reload_toml(&toml(&[keep.addr()])).await;
    let gone_addr = gone.addr();
    wait_until("the removed server is listed as draining", WAIT, || async {
        lb.server(&gone_addr).await["state"] == "draining"
    })
    .await;
    // New connections go to the remaining server only.
    let keep_name = if first == "A" { "B" } else { "A" };
    for _ in 0..4 {
        let (_s, name) = hello(addr).await;
        assert_eq!(name, keep_name);
    }
    // The established relay still works, well past a few drain sweeps.
    for i in 0..5 {
        echo(&mut held, &format!("still here {i}\n")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entry = lb.server(&gone_addr).await;
    assert_eq!(entry["active"], 1, "the relay counts in flight: {entry}");
    // Closing it ends the drain.
    drop(held);
    wait_until("the drained server leaves the list", WAIT, || async {
        lb.server(&gone_addr).await.is_null()
    })
    .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn the_drain_timeout_closes_a_relay_that_outlives_it() {
    let a = Banner::start("A").await;
    let b = Banner::start("B").await;
    let toml = |servers: &[String]| config("killed", servers, "", "drain_timeout = \"300ms\"");
    let lb = Lb::start_ready(&toml(&[a.addr(), b.addr()])).await;
    let (mut held, first) = hello(lb.http_addr("killed")).await;
    let keep = if first == "A" { &b } else { &a };
    echo(&mut held, "before\n").await;
    let removed = Instant::now();
    lb.reload_toml(&toml(&[keep.addr()])).await;
    let (r, _) = until_closed(&mut held).await;
    let took = removed.elapsed();
    assert!(r.unwrap_or_default().is_empty());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed {took:?} after removal"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_but_lets_relays_finish() {
    let up = Banner::start("A").await;
    let lb = Lb::start_ready(&config("stop", &[up.addr()], "", "")).await;
    let addr = lb.http_addr("stop");
    let (mut held, _) = hello(addr).await;
    let cancel = lb.cancel_token();
    let done = tokio::spawn(lb.shutdown_within(Duration::from_secs(10)));
    cancel.cancel();
    // Nothing accepts any more: a new connection (the socket may still sit in the kernel's
    // backlog until run() returns) never gets a banner.
    wait_until("the listener stops accepting", WAIT, || async {
        match TcpStream::connect(addr).await {
            Err(_) => true,
            Ok(mut s) => {
                let mut b = [0u8; 1];
                !matches!(
                    tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await,
                    Ok(Ok(n)) if n > 0
                )
            }
        }
    })
    .await;
    // The established relay keeps working during the grace period.
    echo(&mut held, "during shutdown\n").await;
    assert!(!done.is_finished(), "run() waits for the open relay");
    drop(held);
    tokio::time::timeout(WAIT, done)
        .await
        .expect("run() returns once the relay closed")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn tls_is_terminated_and_originated() {
    let pki = Pki::new("tcp-tls");
    let front = pki.self_signed("front", &["lb.test"]);
    let back = pki.self_signed("back", &["127.0.0.1"]);
    let up_tls = switchyard::tls::TlsAcceptor::new(
        "upstream",
        &switchyard::config::FrontendTls {
            certs: vec![back.pair()],
            alpn: vec![],
            handshake_timeout: WAIT,
        },
    )
    .unwrap();
    let up = Banner::start_tls("secure", Some(Arc::new(up_tls))).await;
    let toml = config(
        "tls",
        &[up.addr()],
        &front.frontend_tls(),
        &back.backend_tls(),
    );
    let lb = Lb::start_ready(&toml).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(front.der.clone()).unwrap();
    let cc = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    for i in 0..3 {
        let tcp = TcpStream::connect(lb.http_addr("tls")).await.unwrap();
        let mut s = connector
            .connect("lb.test".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake with the frontend");
        assert_eq!(read_line(&mut s).await, "secure");
        echo(&mut s, &format!("over TLS both ways {i}\n")).await;
        s.shutdown().await.unwrap();
    }
    assert_eq!(up.accepted(), 3);

    // A client that does not speak TLS is refused without reaching the upstream.
    let mut plain = TcpStream::connect(lb.http_addr("tls")).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (r, _) = until_closed(&mut plain).await;
    assert!(!String::from_utf8_lossy(&r.unwrap_or_default()).contains("secure"));
    assert_eq!(up.accepted(), 3);
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_tcp_rejected_total{frontend=\"tls\",reason=\"tls_handshake\"}"
        ),
        1.0,
        "{text}"
    );
    lb.shutdown().await;
}
