//! Health checks over the backend's own transport, end to end: an `http` check on a
//! `[backend.tls]` backend speaks TLS with the backend's CA (and its client certificate when it
//! has one), an `h2` backend is checked over HTTP/2 (ALPN `h2`, or h2c by prior knowledge), a
//! `send_proxy` backend gets the PROXY header first (v1: the check's own addresses, v2: LOCAL,
//! as HAProxy 2.6), and each failure is named with HAProxy's status code and a reason in
//! `/api/v1/backends` (`L4CON`, `L6RSP` "TLS: unknown CA", `L6TOUT`, `L7TOUT`, `L7STS`,
//! `L7RSP`), with its duration and the server's check, failure, transition and downtime counts.
//! Connecting is bounded by the backend's `connect_timeout` as well as the check's `timeout`.
//! Upstreams are real: rustls and hyper servers on loopback, certificates from `support::pki`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::Value;
use switchyard::proxy_protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use support::pki::Pki;
use support::{Cfg, Lb, Upstream, get, wait_until};

/// A check every 100 ms with a 400 ms timeout, one result flipping the state.
const FAST: &str = "inter = \"100ms\"\ntimeout = \"400ms\"\nrise = 1\nfall = 1";

fn config(server: SocketAddr, backend: &str, check_type: &str) -> String {
    Cfg::http("web")
        .backend("b")
        .servers(&[server])
        .backend_lines(backend)
        .check(&format!(
            "type = \"{check_type}\"\npath = \"/health\"\n{FAST}"
        ))
        .toml()
}

/// Waits until the server's last check has `status`, and returns the server's JSON.
async fn wait_status(lb: &Lb, addr: SocketAddr, status: &str) -> Value {
    let addr = addr.to_string();
    let (a, lb_ref) = (addr.as_str(), lb);
    wait_until(
        &format!("check status {status} for {addr}"),
        Duration::from_secs(10),
        || async move { lb_ref.server(a).await["check"]["status"] == status },
    )
    .await;
    lb.server(&addr).await
}

/// What an upstream saw: the PROXY header of each connection (when it reads one), the ALPN of
/// each TLS connection, and the version and User-Agent of each request.
#[derive(Default)]
struct Seen {
    proxy: Vec<Option<(SocketAddr, SocketAddr)>>,
    alpn: Vec<Option<Vec<u8>>>,
    requests: Vec<(http::Version, String)>,
}

/// How a test upstream behaves.
#[derive(Clone, Default)]
struct Spec {
    /// Serve TLS with this config.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Read a PROXY header first.
    proxy: bool,
}

/// An upstream on `127.0.0.1:0` answering `200 ok` over HTTP/1.1 or HTTP/2 (ALPN, or h2c by
/// prior knowledge), as `spec` says.
async fn upstream(spec: Spec) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (seen, spec) = (Arc::clone(&s2), spec.clone());
            tokio::spawn(async move {
                if spec.proxy {
                    match proxy_protocol::read_header(&mut tcp, Duration::from_secs(2)).await {
                        Ok(h) => seen.lock().unwrap().proxy.push(h),
                        Err(_) => return,
                    }
                }
                let s3 = Arc::clone(&seen);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let ua = req
                        .headers()
                        .get(http::header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    s3.lock().unwrap().requests.push((req.version(), ua));
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match spec.tls {
                    None => {
                        let _ = auto.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(sc) => {
                        let Ok(tls) = tokio_rustls::TlsAcceptor::from(sc).accept(tcp).await else {
                            return;
                        };
                        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                        seen.lock().unwrap().alpn.push(alpn);
                        let _ = auto.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A TLS server config for `127.0.0.1` signed by `pki`, speaking h2 and HTTP/1.1 by ALPN;
/// with `client_ca`, it requires a client certificate that CA signed.
fn server_tls(pki: &Pki, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    let leaf = pki.leaf("upstream", &["127.0.0.1"]);
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(ca.roots()))
                .build()
                .unwrap(),
        ),
    };
    let mut sc = builder
        .with_single_cert(leaf.chain(), leaf.key_der())
        .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(sc)
}

/// A server that accepts connections and never reads nor answers.
async fn blackhole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test]
async fn http_check_on_a_tls_backend_is_l7ok_and_clients_get_200() {
    let pki = Pki::new("hc-tls");
    let (up, seen) = upstream(Spec {
        tls: Some(server_tls(&pki, None)),
        ..Spec::default()
    })
    .await;
    let lb = Lb::start_ready(&config(up, &pki.backend_tls(), "http")).await;
    let s = wait_status(&lb, up, "L7OK").await;
    assert_eq!(s["state"], "up", "{s}");
    let check = &s["check"];
    assert_eq!(check["ok"], true, "{s}");
    assert_eq!(check["reason"], "L7 status 200", "{s}");
    let ms = f64_of(&check["duration_ms"]);
    assert!(ms > 0.0 && ms < 400.0, "{s}");
    assert!((0.0..5.0).contains(&f64_of(&check["age_seconds"])), "{s}");
    assert!(s["checks"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["check_failures"], 0, "{s}");
    assert_eq!(s["down_transitions"], 0, "{s}");
    assert_eq!(f64_of(&s["downtime_seconds"]), 0.0, "{s}");
    assert!(f64_of(&s["admin_age_seconds"]) >= 0.0, "{s}");
    // The unchanged fields beside them.
    assert_eq!(s["last_check"], "passed", "{s}");
    assert!(s["last_check_age_seconds"].is_number(), "{s}");
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.alpn
                .iter()
                .any(|a| a.as_deref() == Some(&b"http/1.1"[..])),
            "the check offers http/1.1 over TLS"
        );
        assert!(
            seen.requests
                .iter()
                .any(|(v, ua)| *v == http::Version::HTTP_11 && ua == "switchyard-check"),
            "the check reached the server over TLS"
        );
    }
    for _ in 0..3 {
        assert_eq!(get(lb.http_addr("web"), "/").await, (200, "ok".to_string()));
    }
    let text = lb.metrics().await;
    assert!(
        support::metric(
            &text,
            &format!(
                "switchyard_health_checks_total{{backend=\"b\",server=\"{up}\",result=\"success\"}}"
            )
        ) >= 1.0,
        "{text}"
    );

    // The admin state's age restarts when the operator changes it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(f64_of(&lb.server(&up.to_string()).await["admin_age_seconds"]) >= 0.5);
    assert_eq!(
        lb.set_server_state("b", &up.to_string(), "drain").await,
        200
    );
    let s = lb.server(&up.to_string()).await;
    assert!(f64_of(&s["admin_age_seconds"]) < 0.5, "{s}");
    lb.shutdown().await;
}

#[tokio::test]
async fn tcp_check_on_a_tls_backend_completes_the_handshake() {
    let pki = Pki::new("hc-tcp-tls");
    let (up, seen) = upstream(Spec {
        tls: Some(server_tls(&pki, None)),
        ..Spec::default()
    })
    .await;
    let lb = Lb::start_ready(&config(up, &pki.backend_tls(), "tcp")).await;
    let s = wait_status(&lb, up, "L6OK").await;
    assert_eq!(s["state"], "up", "{s}");
    assert_eq!(s["check"]["ok"], true, "{s}");
    assert!(!seen.lock().unwrap().alpn.is_empty(), "handshakes done");
    lb.shutdown().await;

    // With a CA that did not sign the server's certificate the handshake, and so the check,
    // fails.
    let other = Pki::new("hc-tcp-tls-other");
    let lb = Lb::start_ready(&config(up, &other.backend_tls(), "tcp")).await;
    let s = wait_status(&lb, up, "L6RSP").await;
    assert_eq!(s["check"]["reason"], "TLS: unknown CA", "{s}");
    lb.shutdown().await;
}

#[tokio::test]
async fn untrusted_ca_is_down_with_a_tls_reason() {
    let pki = Pki::new("hc-ca");
    let other = Pki::new("hc-ca-other");
    let (up, seen) = upstream(Spec {
        tls: Some(server_tls(&pki, None)),
        ..Spec::default()
    })
    .await;
    let lb = Lb::start_ready(&config(up, &other.backend_tls(), "http")).await;
    let s = wait_status(&lb, up, "L6RSP").await;
    assert_eq!(s["check"]["ok"], false, "{s}");
    assert_eq!(s["check"]["reason"], "TLS: unknown CA", "{s}");
    let addr = up.to_string();
    let (a, lb_ref) = (addr.as_str(), &lb);
    wait_until("server down", Duration::from_secs(5), || async move {
        lb_ref.server(a).await["state"] == "down"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = lb.server(&addr).await;
    assert_eq!(s["down_transitions"], 1, "{s}");
    assert!(f64_of(&s["downtime_seconds"]) >= 0.2, "{s}");
    let (checks, failures) = (
        s["checks"].as_u64().unwrap(),
        s["check_failures"].as_u64().unwrap(),
    );
    assert!(failures >= 2 && failures == checks, "{s}");
    assert_eq!(s["last_check"], "failed", "{s}");
    assert!(
        seen.lock().unwrap().requests.is_empty(),
        "no request got through"
    );
    assert_eq!(get(lb.http_addr("web"), "/").await.0, 503);
    let text = lb.metrics().await;
    assert!(
        support::metric(
            &text,
            &format!(
                "switchyard_health_checks_total{{backend=\"b\",server=\"{up}\",result=\"failure\"}}"
            )
        ) >= 2.0,
        "{text}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_requiring_upstream_is_up_only_with_the_certificate() {
    let pki = Pki::new("hc-mtls");
    let (up, seen) = upstream(Spec {
        tls: Some(server_tls(&pki, Some(&pki))),
        ..Spec::default()
    })
    .await;

    // Without a client certificate: down, and the reason names TLS.
    let lb = Lb::start_ready(&config(up, &pki.backend_tls(), "http")).await;
    let s = wait_status(&lb, up, "L6RSP").await;
    let reason = s["check"]["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("TLS: "), "{s}");
    assert!(reason.contains("Certificate"), "{s}");
    let addr = up.to_string();
    let (a, lb_ref) = (addr.as_str(), &lb);
    wait_until("server down", Duration::from_secs(5), || async move {
        lb_ref.server(a).await["state"] == "down"
    })
    .await;
    assert!(seen.lock().unwrap().requests.is_empty());
    lb.shutdown().await;

    // With it: up.
    let client = pki.leaf_for(
        "client",
        &["switchyard"],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    );
    let backend = format!(
        "{}\ncert = {}\nkey = {}",
        pki.backend_tls(),
        support::config::path(&client.cert),
        support::config::path(&client.key)
    );
    let lb = Lb::start_ready(&config(up, &backend, "http")).await;
    let s = wait_status(&lb, up, "L7OK").await;
    assert_eq!(s["state"], "up", "{s}");
    assert_eq!(get(lb.http_addr("web"), "/").await, (200, "ok".to_string()));
    lb.shutdown().await;
}

#[tokio::test]
async fn h2_backends_are_checked_over_h2() {
    // Over TLS: ALPN h2.
    let pki = Pki::new("hc-h2");
    let (up, seen) = upstream(Spec {
        tls: Some(server_tls(&pki, None)),
        ..Spec::default()
    })
    .await;
    let backend = format!("protocol = \"h2\"\n{}", pki.backend_tls());
    let lb = Lb::start_ready(&config(up, &backend, "http")).await;
    let s = wait_status(&lb, up, "L7OK").await;
    assert_eq!(s["check"]["reason"], "L7 status 200", "{s}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.alpn[0].as_deref(), Some(&b"h2"[..]));
        assert_eq!(
            seen.requests[0],
            (http::Version::HTTP_2, "switchyard-check".to_string())
        );
    }
    lb.shutdown().await;

    // Without TLS: h2c by prior knowledge.
    let (up, seen) = upstream(Spec::default()).await;
    let lb = Lb::start_ready(&config(up, "protocol = \"h2\"", "http")).await;
    wait_status(&lb, up, "L7OK").await;
    assert_eq!(
        seen.lock().unwrap().requests[0],
        (http::Version::HTTP_2, "switchyard-check".to_string())
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn send_proxy_checks_send_the_header_first() {
    for version in ["v1", "v2"] {
        let (up, seen) = upstream(Spec {
            proxy: true,
            ..Spec::default()
        })
        .await;
        let backend = format!("send_proxy = \"{version}\"");
        let lb = Lb::start_ready(&config(up, &backend, "http")).await;
        // The upstream answers only after reading a header, so L7OK says it came first.
        let s = wait_status(&lb, up, "L7OK").await;
        assert_eq!(s["state"], "up", "{version}: {s}");
        let header = seen.lock().unwrap().proxy[0];
        match version {
            // v1: the check's own connection, from Switchyard to the server.
            "v1" => {
                let (src, dst) = header.expect("v1 carries addresses");
                assert_eq!(dst, up);
                assert_eq!(src.ip().to_string(), "127.0.0.1");
                assert_ne!(src.port(), up.port());
            }
            // v2: LOCAL, which carries no address.
            _ => assert_eq!(header, None, "v2 checks send LOCAL"),
        }
        // A tcp check sends it too.
        lb.shutdown().await;
        let before = seen.lock().unwrap().proxy.len();
        let lb = Lb::start_ready(&config(up, &backend, "tcp")).await;
        wait_status(&lb, up, "L4OK").await;
        let s2 = Arc::clone(&seen);
        wait_until(
            "a header from the tcp check",
            Duration::from_secs(5),
            || {
                let s2 = Arc::clone(&s2);
                async move { s2.lock().unwrap().proxy.len() > before }
            },
        )
        .await;
        lb.shutdown().await;
    }
}

#[tokio::test]
async fn a_refused_port_is_l4con() {
    let dead: SocketAddr = format!("127.0.0.1:{}", support::dead_port())
        .parse()
        .unwrap();
    for kind in ["http", "tcp"] {
        let lb = Lb::start_ready(&config(dead, "", kind)).await;
        let s = wait_status(&lb, dead, "L4CON").await;
        assert_eq!(s["check"]["reason"], "L4 connect refused", "{kind}: {s}");
        assert_eq!(s["check"]["ok"], false, "{kind}: {s}");
        assert_eq!(s["state"], "down", "{kind}: {s}");
        lb.shutdown().await;
    }
}

#[tokio::test]
async fn a_blackhole_times_out_in_the_layer_it_stalls() {
    let hole = blackhole().await;
    // Plain HTTP: connected, request sent, no answer.
    let lb = Lb::start_ready(&config(hole, "", "http")).await;
    let s = wait_status(&lb, hole, "L7TOUT").await;
    assert_eq!(s["check"]["reason"], "L7 timeout", "{s}");
    let ms = f64_of(&s["check"]["duration_ms"]);
    assert!((390.0..1500.0).contains(&ms), "the 400 ms timeout: {s}");
    lb.shutdown().await;

    // TLS: the handshake never completes; connecting is bounded by `connect_timeout` too, as
    // on the data plane.
    let pki = Pki::new("hc-hole");
    let backend = format!("connect_timeout = \"150ms\"\n{}", pki.backend_tls());
    let lb = Lb::start_ready(&config(hole, &backend, "http")).await;
    let s = wait_status(&lb, hole, "L6TOUT").await;
    assert_eq!(s["check"]["reason"], "TLS timeout", "{s}");
    let ms = f64_of(&s["check"]["duration_ms"]);
    assert!(
        (140.0..390.0).contains(&ms),
        "the 150 ms connect_timeout: {s}"
    );
    lb.shutdown().await;

    // A tcp check on a plain backend only connects: the blackhole passes it.
    let lb = Lb::start_ready(&config(hole, "", "tcp")).await;
    let s = wait_status(&lb, hole, "L4OK").await;
    assert_eq!(s["check"]["reason"], "L4 check passed", "{s}");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_503_is_l7sts_and_garbage_is_l7rsp() {
    let sick = Upstream::start_with("sick", |_req| async {
        let mut r = Response::new(Full::new(Bytes::from("sick")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let lb = Lb::start_ready(&config(sick.addr(), "", "http")).await;
    let s = wait_status(&lb, sick.addr(), "L7STS").await;
    assert_eq!(s["check"]["reason"], "L7 status 503", "{s}");
    assert_eq!(s["check"]["ok"], false, "{s}");
    lb.shutdown().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let lb = Lb::start_ready(&config(garbage, "", "http")).await;
    let s = wait_status(&lb, garbage, "L7RSP").await;
    assert_eq!(s["check"]["reason"], "L7 invalid response", "{s}");
    lb.shutdown().await;
}
