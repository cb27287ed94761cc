//! The TLS acceptor on its own: SNI chooses the certificate (the first one serves a missing or
//! unknown name), ALPN is offered, the server's cipher suite order wins over the client's, a bad
//! PEM on reload keeps the old certificate, a changed file is picked up without a restart, and
//! garbage on the port fails fast while the next handshake works. Certificates are generated
//! while the test runs (`support::pki`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use switchyard::config::{CertPair, FrontendTls};
use switchyard::tls::TlsAcceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::pki::{Leaf, Pki};

/// Serves handshakes forever; each connection gets "hi" after the handshake.
async fn serve(acceptor: Arc<TlsAcceptor>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let a = Arc::clone(&acceptor);
            tokio::spawn(async move {
                if let Ok(mut tls) = a.accept(s).await {
                    let _ = tls.write_all(b"hi").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects with `sni` (no SNI is sent for an IP address), trusting `roots`; returns the
/// certificate the server presented and the negotiated ALPN protocol.
async fn handshake(
    addr: std::net::SocketAddr,
    sni: &str,
    roots: &[&Leaf],
) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    switchyard::tls::install_provider();
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.der.clone()).unwrap();
    }
    let mut cc = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    cc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let s = TcpStream::connect(addr).await.unwrap();
    let mut tls = conn
        .connect(ServerName::try_from(sni.to_string()).unwrap(), s)
        .await
        .unwrap_or_else(|e| panic!("handshake with {sni}: {e}"));
    let mut hi = [0u8; 2];
    tls.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi");
    let (_, c) = tls.get_ref();
    (
        c.peer_certificates().unwrap()[0].clone().into_owned(),
        c.alpn_protocol().map(|p| p.to_vec()),
    )
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_alpn_is_offered() {
    let pki = Pki::new("sni");
    let a = pki.self_signed("a", &["a.test", "127.0.0.1"]);
    let b = pki.self_signed("b", &["b.test", "*.wild.test"]);
    let cfg = FrontendTls {
        certs: vec![a.pair(), b.pair()],
        alpn: vec!["h2".into(), "http/1.1".into()],
        handshake_timeout: Duration::from_secs(2),
    };
    let acceptor = Arc::new(TlsAcceptor::new("test", &cfg).unwrap());
    let addr = serve(acceptor).await;
    let roots = [&a, &b];
    let (got, alpn) = handshake(addr, "b.test", &roots).await;
    assert_eq!(got, b.der, "SNI b.test gets b's certificate");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        handshake(addr, "x.wild.test", &roots).await.0,
        b.der,
        "wildcard name"
    );
    assert_eq!(handshake(addr, "a.test", &roots).await.0, a.der);
    // No SNI (an IP address): the first certificate.
    assert_eq!(handshake(addr, "127.0.0.1", &roots).await.0, a.der);
}

/// The suite negotiated with a client that speaks only `version` and offers `suites` in that
/// order.
async fn negotiated_suite(
    addr: std::net::SocketAddr,
    root: &Leaf,
    version: &'static rustls::SupportedProtocolVersion,
    suites: Vec<rustls::SupportedCipherSuite>,
) -> rustls::CipherSuite {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::ring::default_provider()
    };
    let mut store = rustls::RootCertStore::empty();
    store.add(root.der.clone()).unwrap();
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let s = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from("a.test").unwrap(), s)
        .await
        .unwrap_or_else(|e| panic!("handshake with {version:?}: {e}"));
    tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
}

#[tokio::test]
async fn the_servers_cipher_suite_order_wins() {
    switchyard::tls::install_provider();
    let pki = Pki::new("order");
    // rcgen makes ECDSA P-256 keys, so only the ECDHE_ECDSA suites apply in TLS 1.2.
    let a = pki.self_signed("a", &["a.test"]);
    let cfg = FrontendTls {
        certs: vec![a.pair()],
        alpn: vec![],
        handshake_timeout: Duration::from_secs(2),
    };
    let addr = serve(Arc::new(TlsAcceptor::new("test", &cfg).unwrap())).await;
    // A client that prefers the server's last choices: CHACHA20 first, then AES-128, AES-256.
    let reversed: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .rev()
        .collect();
    use rustls::CipherSuite::*;
    assert_eq!(
        negotiated_suite(addr, &a, &rustls::version::TLS12, reversed.clone()).await,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    assert_eq!(
        negotiated_suite(addr, &a, &rustls::version::TLS13, reversed).await,
        TLS13_AES_256_GCM_SHA384
    );
    // The client still decides what it offers: without AES-256 the server's next choice wins.
    let no_aes256: Vec<_> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .into_iter()
        .rev()
        .filter(|s| {
            ![
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS13_AES_256_GCM_SHA384,
            ]
            .contains(&s.suite())
        })
        .collect();
    assert_eq!(
        negotiated_suite(addr, &a, &rustls::version::TLS12, no_aes256.clone()).await,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    assert_eq!(
        negotiated_suite(addr, &a, &rustls::version::TLS13, no_aes256).await,
        TLS13_AES_128_GCM_SHA256
    );
}

#[tokio::test]
async fn bad_pem_on_reload_keeps_the_old_certificate_and_a_good_one_is_picked_up() {
    let pki = Pki::new("reload");
    let a = pki.self_signed("a", &["a.test"]);
    let cfg = FrontendTls {
        certs: vec![a.pair()],
        alpn: vec![],
        handshake_timeout: Duration::from_secs(2),
    };
    // The watcher the server runs: it stops once the acceptor is dropped.
    let acceptor = Arc::new(TlsAcceptor::new("test", &cfg).unwrap()).spawn_watcher();
    let addr = serve(Arc::clone(&acceptor)).await;
    assert_eq!(handshake(addr, "a.test", &[&a]).await.0, a.der);

    // A broken PEM: reload fails and the old certificate keeps serving.
    std::fs::write(
        &a.cert,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = acceptor.reload().unwrap_err().to_string();
    assert!(e.contains("a.pem"), "{e}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // the file watcher tries too
    assert_eq!(handshake(addr, "a.test", &[&a]).await.0, a.der);

    // A new valid certificate in the same files is picked up by the watcher, no restart.
    let a2 = pki.self_signed("a", &["a.test"]);
    let t = Instant::now();
    loop {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut store = rustls::RootCertStore::empty();
        store.add(a2.der.clone()).unwrap();
        let cc = rustls::ClientConfig::builder()
            .with_root_certificates(store)
            .with_no_client_auth();
        let ok = tokio_rustls::TlsConnector::from(Arc::new(cc))
            .connect(ServerName::try_from("a.test").unwrap(), s)
            .await
            .is_ok();
        if ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "new certificate not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn garbage_fails_fast_and_the_next_handshake_works() {
    let pki = Pki::new("garbage");
    let a = pki.self_signed("a", &["a.test"]);
    let cfg = FrontendTls {
        certs: vec![a.pair()],
        alpn: vec![],
        handshake_timeout: Duration::from_millis(500),
    };
    let addr = serve(Arc::new(TlsAcceptor::new("test", &cfg).unwrap())).await;
    // Plain HTTP on the TLS port: closed quickly.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "held for {:?}",
        t.elapsed()
    );
    // Silence: closed at the handshake timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(handshake(addr, "a.test", &[&a]).await.0, a.der);
    // A certificate file that does not exist is an error naming it.
    let bad = FrontendTls {
        certs: vec![CertPair {
            cert: pki.dir().join("missing.pem"),
            key: a.key.clone(),
        }],
        alpn: vec![],
        handshake_timeout: Duration::from_secs(1),
    };
    let e = TlsAcceptor::new("test", &bad)
        .err()
        .expect("missing file")
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
}
