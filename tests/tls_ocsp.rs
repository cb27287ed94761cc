//! OCSP stapling on a TLS frontend, end to end: a CA and leaf certificates (`support::pki`), OCSP
//! responses for them signed by that CA with the `openssl ocsp` CLI (Debian's `openssl`, which
//! `deploy/test.sh` installs), Switchyard run through the harness, and a rustls client whose
//! certificate verifier keeps the stapled bytes. A `<cert>.ocsp` file is stapled over TLS 1.2 and
//! 1.3 and its nextUpdate exported; a replaced file is stapled without a restart and a removed
//! one stops being stapled; no file means no staple; a file that is not a response, or answers
//! for another certificate, is counted and the certificate is served without a staple.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use tokio::net::TcpStream;

use support::pki::{Leaf, Pki};
use support::{Cfg, Lb, Upstream, metric, wait_until};

/// How long the file watcher (1 s ticks) may take to staple a changed file.
const PICKUP: Duration = Duration::from_secs(5);
const BOTH_VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS12, &rustls::version::TLS13];

/// A DER OCSPResponse and its nextUpdate in Unix seconds, as `openssl` reads it.
struct Response {
    der: Vec<u8>,
    next_update: u64,
}

/// Runs `openssl` (or another tool) in `dir`, panicking with its stderr on failure.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (install Debian's openssl package; deploy/test.sh does)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A "good" response for `leaf`, valid for `minutes`, signed by the CA: `openssl ocsp` makes
/// a request, then answers it as a responder whose index lists the leaf's serial number.
fn respond(pki: &Pki, leaf: &Leaf, minutes: u32) -> Response {
    let cert = leaf.cert.to_str().unwrap();
    let serial = run(
        pki.dir(),
        "openssl",
        &["x509", "-in", cert, "-noout", "-serial"],
    );
    let serial = serial.trim().trim_start_matches("serial=");
    // index.txt: status, expiry, revocation date, serial, file name, subject.
    std::fs::write(
        pki.dir().join("index.txt"),
        format!("V\t491231000000Z\t\t{serial}\tunknown\t/CN=leaf\n"),
    )
    .unwrap();
    let ca = pki.ca_pem().to_str().unwrap();
    let req = ["ocsp", "-issuer", ca, "-cert", cert, "-no_nonce"];
    run(
        pki.dir(),
        "openssl",
        &[&req[..], &["-reqout", "req.der"]].concat(),
    );
    let minutes = minutes.to_string();
    run(
        pki.dir(),
        "openssl",
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-rsigner",
            ca,
            "-rkey",
            pki.ca_key().to_str().unwrap(),
            "-CA",
            ca,
            "-reqin",
            "req.der",
            "-respout",
            "resp.der",
            "-nmin",
            &minutes,
        ],
    );
    let text = run(
        pki.dir(),
        "openssl",
        &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
    );
    let next = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Next Update: "))
        .unwrap_or_else(|| panic!("no Next Update in:\n{text}"));
    let next_update = run(pki.dir(), "date", &["-u", "-d", next, "+%s"])
        .trim()
        .parse()
        .unwrap();
    Response {
        der: std::fs::read(pki.dir().join("resp.der")).unwrap(),
        next_update,
    }
}

/// `<cert>.ocsp`, the file Switchyard staples.
fn ocsp_file(leaf: &Leaf) -> PathBuf {
    let mut p = leaf.cert.clone().into_os_string();
    p.push(".ocsp");
    PathBuf::from(p)
}

/// Puts `bytes` in place as a cron job would: a temp file renamed over the old one.
fn install(leaf: &Leaf, bytes: &[u8]) {
    let tmp = leaf.cert.with_extension("ocsp.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, ocsp_file(leaf)).unwrap();
}

/// Verifies the server's certificate against the test CA like any client, and keeps the OCSP
/// response the server stapled (empty when it stapled none).
#[derive(Debug)]
struct KeepStaple {
    inner: Arc<WebPkiServerVerifier>,
    staple: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for KeepStaple {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.staple.lock().unwrap() = Some(ocsp_response.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A full handshake with `addr` for `name` over `version`; returns the stapled OCSP response.
async fn stapled(
    addr: SocketAddr,
    name: &str,
    pki: &Pki,
    version: &'static SupportedProtocolVersion,
) -> Vec<u8> {
    let verifier = Arc::new(KeepStaple {
        inner: WebPkiServerVerifier::builder(Arc::new(pki.roots()))
            .build()
            .unwrap(),
        staple: Mutex::new(None),
    });
    let cc = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake for {name} over {version:?}: {e}"));
    let staple = verifier.staple.lock().unwrap().take();
    staple.expect("the certificate was verified")
}

/// Switchyard with one TLS frontend serving `leaf`, in front of `up`.
async fn start(up: &Upstream, leaf: &Leaf) -> Lb {
    let toml = Cfg::http("web")
        .frontend_lines(&leaf.frontend_tls())
        .backend("b")
        .servers(&[up.addr()])
        .check_none()
        .toml();
    Lb::start_ready(&toml).await
}

fn next_update_series(name: &str) -> String {
    format!("switchyard_tls_ocsp_next_update_timestamp_seconds{{frontend=\"web\",name=\"{name}\"}}")
}

fn errors_series(name: &str) -> String {
    format!("switchyard_tls_ocsp_errors_total{{frontend=\"web\",name=\"{name}\"}}")
}

#[tokio::test]
async fn a_response_file_is_stapled_and_follows_replacement_and_removal() {
    const NAME: &str = "ocsp-stapled.test";
    let pki = Pki::new("stapled");
    let leaf = pki.leaf("site", &[NAME]);
    let first = respond(&pki, &leaf, 7 * 24 * 60);
    install(&leaf, &first.der);
    let up = Upstream::start("ocsp").await;
    let lb = start(&up, &leaf).await;
    let addr = lb.http_addr("web");
    for v in BOTH_VERSIONS {
        assert_eq!(stapled(addr, NAME, &pki, v).await, first.der, "{v:?}");
    }
    let series = next_update_series(NAME);
    assert_eq!(
        metric(&lb.metrics().await, &series),
        first.next_update as f64
    );

    // The cron job's next run: a new response (another nextUpdate) replaces the file.
    let second = respond(&pki, &leaf, 3 * 24 * 60);
    assert_ne!(second.next_update, first.next_update);
    install(&leaf, &second.der);
    let (pki_ref, want) = (&pki, &second.der);
    wait_until(
        "the replaced response is stapled",
        PICKUP,
        move || async move { stapled(addr, NAME, pki_ref, &rustls::version::TLS13).await == *want },
    )
    .await;
    assert_eq!(
        stapled(addr, NAME, &pki, &rustls::version::TLS12).await,
        second.der
    );
    assert_eq!(
        metric(&lb.metrics().await, &series),
        second.next_update as f64
    );

    // Removed: no staple, and the gauge says so.
    std::fs::remove_file(ocsp_file(&leaf)).unwrap();
    wait_until(
        "the removed response is not stapled",
        PICKUP,
        move || async move {
            stapled(addr, NAME, pki_ref, &rustls::version::TLS13)
                .await
                .is_empty()
        },
    )
    .await;
    let text = lb.metrics().await;
    assert!(text.contains(&format!("{series} 0")), "{text}");
    lb.shutdown().await;
}

#[tokio::test]
async fn no_file_means_no_staple_and_a_bad_file_is_counted_and_not_stapled() {
    const NAME: &str = "ocsp-bad.test";
    let pki = Pki::new("bad");
    let leaf = pki.leaf("site", &[NAME]);
    let other = pki.leaf("other", &["ocsp-other.test"]);
    let up = Upstream::start("ocsp").await;
    let lb = start(&up, &leaf).await;
    let addr = lb.http_addr("web");
    for v in BOTH_VERSIONS {
        assert!(stapled(addr, NAME, &pki, v).await.is_empty(), "{v:?}");
    }
    let text = lb.metrics().await;
    assert!(!text.contains(&next_update_series(NAME)), "{text}");
    assert!(!text.contains(&errors_series(NAME)), "{text}");

    // Not DER at all, then a real response for another certificate: each is counted, and the
    // certificate is still served, without a staple.
    let errors = errors_series(NAME);
    let bad_files = [
        b"not an OCSP response".to_vec(),
        respond(&pki, &other, 60).der,
    ];
    for (i, bad) in bad_files.iter().enumerate() {
        install(&leaf, bad);
        let (lb_ref, series, want) = (&lb, &errors, (i + 1) as f64);
        wait_until("the bad OCSP file is counted", PICKUP, move || async move {
            metric(&lb_ref.metrics().await, series) == want
        })
        .await;
        for v in BOTH_VERSIONS {
            assert!(stapled(addr, NAME, &pki, v).await.is_empty(), "{i}: {v:?}");
        }
    }
    assert!(!lb.metrics().await.contains(&next_update_series(NAME)));

    // The right response is stapled once it is in place.
    let good = respond(&pki, &leaf, 60);
    install(&leaf, &good.der);
    let (pki_ref, want) = (&pki, &good.der);
    wait_until("the good response is stapled", PICKUP, move || async move {
        stapled(addr, NAME, pki_ref, &rustls::version::TLS12).await == *want
    })
    .await;
    assert_eq!(
        metric(&lb.metrics().await, &next_update_series(NAME)),
        good.next_update as f64
    );
    lb.shutdown().await;
}

/// `switchyard_tls_certificate_expiry_timestamp_seconds` is the served certificate's notAfter,
/// to the second, as `openssl x509 -checkend` reads the same file.
#[tokio::test]
async fn the_certificate_expiry_is_exported() {
    const NAME: &str = "expiry.test";
    let pki = Pki::new("expiry");
    let leaf = pki.leaf("site", &[NAME]);
    let up = Upstream::start("expiry").await;
    let lb = start(&up, &leaf).await;
    let series = format!(
        "switchyard_tls_certificate_expiry_timestamp_seconds{{frontend=\"web\",name=\"{NAME}\"}}"
    );
    let not_after = metric(&lb.metrics().await, &series);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after > now, "a fresh certificate: {not_after}");
    // `-checkend N` exits 0 when the certificate is still valid N seconds from now.
    let valid_in = |secs: f64| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend"])
            .arg(format!("{}", secs.max(0.0) as u64))
            .arg("-in")
            .arg(&leaf.cert)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("openssl (deploy/test.sh installs it)")
            .success()
    };
    let left = not_after - now;
    assert!(valid_in(left - 5.0), "still valid just before: {left}");
    assert!(!valid_in(left + 5.0), "expired just after: {left}");
    lb.shutdown().await;
}
