//! TLS with rustls (the `ring` provider, installed once per process): the frontend acceptor with
//! certificates chosen by SNI, OCSP responses stapled from `<cert>.ocsp` files, both reloaded
//! without dropping connections, and client configs for upstreams (`[backend.tls]`) and etcd
//! (`[etcd] ca/cert/key`).
//!
//! The acceptor's rustls `ServerConfig` never changes; it picks cipher suites in the provider's
//! order, not the client's (the order is listed in the README and pinned by a unit test below).
//! Its certificate resolver reads one `ArcSwap` of loaded certificates, so a reload swaps that and
//! the next handshake uses it while established connections carry on. A certificate or key that
//! does not load leaves the old ones in place; an OCSP file that does not load only drops that
//! certificate's staple. Client configs are cached per settings, because loading the system roots
//! is slow.
//!
//! Certificates that `src/acme/` orders reach the resolver through [`AcmeCerts`]: the acme module
//! fills it from etcd, and a frontend with `[frontend.tls.acme]` prefers its certificate for a
//! name over the `certs` files, and answers tls-alpn-01 challenges (ALPN `acme-tls/1`) from it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tracing::{error, info, warn};
use x509_cert::der::Decode;
use x509_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};

use crate::config::{BackendTls, CertPair, Config, EtcdConfig, FrontendTls};
use crate::metrics::{TLS_CERT_EXPIRY, TLS_OCSP_ERRORS, TLS_OCSP_NEXT_UPDATE, TLS_RELOADS};

/// Installs the process-wide crypto provider; later calls do nothing.
pub fn install_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Err means another provider is installed already (by an embedding program): fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn load_pair(pair: &CertPair) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(&pair.cert)?;
    let key = load_key(&pair.key)?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        file_err(
            &pair.key,
            format!("does not match {}: {e}", pair.cert.display()),
        )
    })
}

/// Appended to a certificate's file name to find its OCSP response (HAProxy's convention:
/// `site.pem` -> `site.pem.ocsp`, a DER-encoded OCSPResponse).
pub const OCSP_SUFFIX: &str = ".ocsp";

/// The OCSP response file that belongs to certificate file `cert`.
pub fn ocsp_path(cert: &Path) -> PathBuf {
    let mut p = cert.as_os_str().to_owned();
    p.push(OCSP_SUFFIX);
    PathBuf::from(p)
}

/// Checks that `der` is a successful basic OCSP response with an answer for the certificate
/// whose serial number is `serial`, and returns that answer's nextUpdate in Unix seconds (`None`
/// when the responder left it out). The response's signature is not checked here: clients check
/// it against the CA they trust.
fn parse_ocsp(
    der: &[u8],
    serial: &x509_cert::serial_number::SerialNumber,
) -> Result<Option<u64>, String> {
    let resp = OcspResponse::from_der(der).map_err(|e| format!("not an OCSPResponse: {e}"))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(format!("response status {:?}", resp.response_status));
    }
    let bytes = resp
        .response_bytes
        .ok_or("a successful response without responseBytes")?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a BasicOCSPResponse: {e}"))?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| &r.cert_id.serial_number == serial)
        .ok_or("no answer for this certificate's serial number")?;
    Ok(single
        .next_update
        .as_ref()
        .map(|t| t.0.to_unix_duration().as_secs()))
}

/// The `name` label of a certificate's metrics: its first DNS name, else its file name.
fn cert_label(leaf: Option<&x509_cert::Certificate>, path: &Path) -> String {
    use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};
    let dns = leaf
        .and_then(|c| c.tbs_certificate.get::<SubjectAltName>().ok().flatten())
        .and_then(|(_, san)| {
            san.0.into_iter().find_map(|n| match n {
                GeneralName::DnsName(d) => Some(d.to_string()),
                _ => None,
            })
        });
    dns.unwrap_or_else(|| {
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    })
}

/// Sets `frontend`/`name`'s nextUpdate gauge; 0 once a certificate that had a staple has none, or
/// its new response has no nextUpdate (the exporter cannot drop a gauge). A certificate that
/// never had a staple with a nextUpdate gets no gauge.
fn set_next_update(frontend: &str, name: &str, next_update: Option<u64>) {
    static SET: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = (frontend.to_string(), name.to_string());
    let value = match next_update {
        Some(t) => {
            set.insert(key);
            t as f64
        }
        None if set.remove(&key) => 0.0,
        None => return,
    };
    let labels = [
        ("frontend", frontend.to_string()),
        ("name", name.to_string()),
    ];
    metrics::gauge!(TLS_OCSP_NEXT_UPDATE, &labels).set(value);
}

/// Exports the certificate's notAfter, and staples `<cert>.ocsp` to `ck` when that file exists.
/// A file that cannot be read or is not a successful response for this certificate is logged and
/// counted, and `ck` is served without a staple.
fn staple(frontend: &str, pair: &CertPair, mut ck: CertifiedKey) -> CertifiedKey {
    let path = ocsp_path(&pair.cert);
    let read = match std::fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        r => Some(r),
    };
    let leaf = ck
        .cert
        .first()
        .and_then(|der| x509_cert::Certificate::from_der(der).ok());
    let name = cert_label(leaf.as_ref(), &pair.cert);
    if let Some(leaf) = &leaf {
        let not_after = leaf.tbs_certificate.validity.not_after.to_unix_duration();
        let labels = [("frontend", frontend.to_string()), ("name", name.clone())];
        metrics::gauge!(TLS_CERT_EXPIRY, &labels).set(not_after.as_secs() as f64);
    }
    let Some(read) = read else {
        set_next_update(frontend, &name, None);
        return ck;
    };
    let parsed = read.map_err(|e| e.to_string()).and_then(|der| {
        let leaf = leaf
            .as_ref()
            .ok_or("the certificate's serial number cannot be read")?;
        let next = parse_ocsp(&der, &leaf.tbs_certificate.serial_number)?;
        Ok((der, next))
    });
    match parsed {
        Ok((der, next)) => {
            ck.ocsp = Some(der);
            // A response without nextUpdate (newer information is always available) has no
            // expiry to export.
            set_next_update(frontend, &name, next);
        }
        Err(e) => {
            warn!(frontend, file = %path.display(), error = %e,
                "OCSP response not stapled; the certificate is served without it");
            let labels = [("frontend", frontend.to_string()), ("name", name.clone())];
            metrics::counter!(TLS_OCSP_ERRORS, &labels).increment(1);
            set_next_update(frontend, &name, None);
        }
    }
    ck
}

/// A frontend's certificates as served: every pair loaded (or the first error), then stapled.
fn load_served(frontend: &str, config: &FrontendTls) -> Result<Certs, TlsError> {
    let loaded = config
        .certs
        .iter()
        .map(load_pair)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Certs(
        loaded
            .into_iter()
            .zip(&config.certs)
            .map(|(ck, pair)| Arc::new(staple(frontend, pair, ck)))
            .collect(),
    ))
}

/// Loaded certificates, in config order; the first is the default.
#[derive(Debug)]
struct Certs(Vec<Arc<CertifiedKey>>);

/// The ALPN protocol of the tls-alpn-01 challenge (RFC 8737): a validator offers only it, and
/// the connection ends after the handshake.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates by lower-case DNS name: each of a certificate's names maps to it.
pub type CertsByName = HashMap<String, Arc<CertifiedKey>>;

/// The certificates the acme module publishes for the acceptors of one `run`: the ordered ones
/// (from etcd, by each of their names) and the tls-alpn-01 challenge certificates (by the
/// name being validated). Each map is replaced whole; a handshake reads it without locking.
#[derive(Debug, Default)]
pub struct AcmeCerts {
    pub certs: ArcSwap<CertsByName>,
    pub challenges: ArcSwap<CertsByName>,
}

/// A frontend's part of [`AcmeCerts`]: the shared maps, and its own certificate's name (what a
/// handshake without a known SNI gets when the frontend has no `certs` files).
#[derive(Debug)]
struct AcmeSource {
    shared: Arc<AcmeCerts>,
    name: String,
}

#[derive(Debug)]
struct SniResolver {
    certs: ArcSwap<Certs>,
    acme: Option<AcmeSource>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
            if let Some(ck) = sni.and_then(|s| acme.shared.certs.load().get(&s).cloned()) {
                return Some(ck);
            }
        }
        let certs = self.certs.load();
        if let Some(name) = hello.server_name()
            && let Ok(name) = ServerName::try_from(name)
        {
            for ck in certs.0.iter() {
                let Some(der) = ck.cert.first() else { continue };
                if webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                {
                    return Some(Arc::clone(ck));
                }
            }
        }
        certs.0.first().cloned().or_else(|| {
            let acme = self.acme.as_ref()?;
            acme.shared.certs.load().get(&acme.name).cloned()
        })
    }
}

/// The resolver of tls-alpn-01 handshakes: the challenge certificate for the SNI, or none
/// (never a real certificate).
#[derive(Debug)]
struct ChallengeResolver(Arc<AcmeCerts>);

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        self.0.challenges.load().get(&sni).cloned()
    }
}

/// A frontend's TLS: the acceptor and its reloadable certificates.
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    /// With tls-alpn-01: the config of handshakes offering ALPN `acme-tls/1` (chosen after
    /// reading the ClientHello, so the frontend's own ALPN list stays as configured: rustls
    /// refuses a client whose offered protocols miss all of the server's).
    challenge: Option<Arc<ServerConfig>>,
    resolver: Arc<SniResolver>,
    /// The frontend's name, for logs and metric labels.
    frontend: String,
    config: FrontendTls,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl TlsAcceptor {
    /// The acceptor for `frontend`'s `[frontend.tls]` settings.
    pub fn new(frontend: &str, config: &FrontendTls) -> Result<TlsAcceptor, TlsError> {
        Self::with_acme(frontend, config, None)
    }

    /// As [`TlsAcceptor::new`], also serving the ACME certificates of `acme.0` (by SNI, else
    /// the one named `acme.1`), and with `acme.2` answering tls-alpn-01 challenges from it.
    fn with_acme(
        frontend: &str,
        config: &FrontendTls,
        acme: Option<(Arc<AcmeCerts>, String, bool)>,
    ) -> Result<TlsAcceptor, TlsError> {
        install_provider();
        let stamps = stamps(config);
        let challenge = acme.as_ref().filter(|a| a.2).map(|a| {
            let mut sc = ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(ChallengeResolver(Arc::clone(&a.0))));
            sc.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            Arc::new(sc)
        });
        let resolver = Arc::new(SniResolver {
            certs: ArcSwap::from_pointee(load_served(frontend, config)?),
            acme: acme.map(|(shared, name, _)| AcmeSource { shared, name }),
        });
        let mut sc = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // The server's suite order wins over the client's (what testssl.sh reports as "has
        // server cipher order"): the provider's order, AEAD with ECDHE only, strongest first.
        sc.ignore_client_order = true;
        sc.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(TlsAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            challenge,
            resolver,
            frontend: frontend.to_string(),
            stamps: Mutex::new(stamps),
            config: config.clone(),
        })
    }

    /// The acceptor a frontend needs (none without `[frontend.tls]`), with its certificate
    /// file watcher running; shared by the http and tcp listeners. `acme`: the certificates
    /// the acme module publishes, used when the frontend has `[frontend.tls.acme]`.
    pub fn for_frontend(
        frontend: &crate::config::Frontend,
        acme: Option<&Arc<AcmeCerts>>,
    ) -> Result<Option<Arc<TlsAcceptor>>, TlsError> {
        let acme = frontend.acme.as_ref().zip(acme).map(|(a, shared)| {
            (
                Arc::clone(shared),
                a.name().to_string(),
                a.challenge == crate::config::acme::AcmeChallenge::TlsAlpn01,
            )
        });
        match &frontend.tls {
            Some(t) => Ok(Some(
                Arc::new(TlsAcceptor::with_acme(&frontend.name, t, acme)?).spawn_watcher(),
            )),
            None => Ok(None),
        }
    }

    /// The handshake, bounded by `handshake_timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let handshake = async {
            let Some(challenge) = &self.challenge else {
                return self.acceptor.accept(stream).await;
            };
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                    .await?;
            let validator = start
                .client_hello()
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
            if !validator {
                return start.into_stream(Arc::clone(self.acceptor.config())).await;
            }
            // The validator has seen the challenge certificate: nothing more to say.
            drop(start.into_stream(Arc::clone(challenge)).await?);
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "acme-tls/1 challenge answered",
            ))
        };
        match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timeout",
            )),
        }
    }

    /// Re-reads every certificate, key and OCSP response. On a certificate or key error the
    /// loaded ones stay in use; an OCSP file that does not load only loses its staple.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.config);
        let certs = load_served(&self.frontend, &self.config)?;
        self.resolver.certs.store(Arc::new(certs));
        Ok(())
    }

    /// Starts the file watcher for this acceptor: it reloads when a certificate, key or OCSP
    /// file changes (appears, is replaced or is removed), and stops by itself once the acceptor
    /// is dropped (frontend restarted or removed).
    pub fn spawn_watcher(self: &Arc<Self>) -> Arc<Self> {
        let frontend = self.frontend.clone();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let now = stamps(&me.config);
                let changed = *me.stamps.lock().unwrap_or_else(|e| e.into_inner()) != now;
                if changed {
                    me.reload_logged(&frontend, "certificate files changed");
                }
            }
        });
        Arc::clone(self)
    }

    /// `reload`, with the outcome logged and counted.
    pub fn reload_logged(&self, frontend: &str, why: &str) {
        match self.reload() {
            Ok(()) => {
                info!(frontend, why, "TLS certificates reloaded");
                metrics::counter!(TLS_RELOADS, "result" => "success").increment(1);
            }
            Err(e) => {
                error!(frontend, why, error = %e, "TLS certificates not reloaded; the old ones stay");
                metrics::counter!(TLS_RELOADS, "result" => "failure").increment(1);
            }
        }
    }
}

/// Modification times of every certificate, key and OCSP file (`None`: missing or unreadable).
fn stamps(config: &FrontendTls) -> Vec<Option<SystemTime>> {
    config
        .certs
        .iter()
        .flat_map(|p| [p.cert.clone(), p.key.clone(), ocsp_path(&p.cert)])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Client side.

/// Accepts any server certificate: `[backend.tls] verify = false`, for self-signed upstreams
/// on a trusted network. Signatures are still checked, so the handshake is real.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in load_certs(path)? {
                store.add(c).map_err(|e| file_err(path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(file_err(
                    Path::new("system roots"),
                    "no CA certificate found (install ca-certificates or set ca)",
                ));
            }
        }
    }
    Ok(store)
}

fn build_client(
    ca: Option<&Path>,
    client: Option<&CertPair>,
    verify: bool,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    install_provider();
    let builder = if verify {
        ClientConfig::builder().with_root_certificates(roots(ca)?)
    } else {
        ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))))
    };
    let mut cc = match client {
        Some(pair) => {
            builder.with_client_auth_cert(load_certs(&pair.cert)?, load_key(&pair.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    cc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cc)
}

/// The client config for a backend's servers, cached per (settings, ALPN).
pub fn client_config(tls: &BackendTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    type Cache = Mutex<HashMap<String, Arc<ClientConfig>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = format!("{tls:?}{alpn:?}");
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(Arc::clone(c));
    }
    let cc = Arc::new(build_client(
        tls.ca.as_deref(),
        tls.client.as_ref(),
        tls.verify,
        alpn,
    )?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Arc::clone(&cc));
    Ok(cc)
}

/// The host part of `host:port` / `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TLS to an upstream server over an established TCP stream. The name sent and verified is
/// `sni`, or else the server's host (an IP address is verified against the certificate's IPs).
pub async fn connect(
    tls: &BackendTls,
    addr: &str,
    stream: TcpStream,
    alpn: &[&[u8]],
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cc = client_config(tls, alpn).map_err(io::Error::other)?;
    let name = tls.sni.as_deref().unwrap_or_else(|| host_of(addr));
    let name = ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(cc)
        .connect(name, stream)
        .await
}

/// The TLS config for an ACME directory's HTTPS: trusting `ca` (a PEM bundle), or the system
/// roots. hyper-rustls sets the ALPN protocols.
pub fn acme_client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    build_client(ca, None, true, &[])
}

/// The TLS config for etcd, when `[etcd]` has `ca`, `cert` or an `https://` endpoint.
pub fn etcd_client_config(etcd: &EtcdConfig) -> Result<Option<ClientConfig>, TlsError> {
    let https = etcd.endpoints.iter().any(|e| e.starts_with("https://"));
    if !https && etcd.ca.is_none() && etcd.cert.is_none() {
        return Ok(None);
    }
    let client = etcd
        .cert
        .clone()
        .zip(etcd.key.clone())
        .map(|(cert, key)| CertPair { cert, key });
    build_client(etcd.ca.as_deref(), client.as_ref(), true, &[b"http/1.1"]).map(Some)
}

/// Loads every TLS file the config names, so `check` and startup report a bad certificate
/// with the key that names it, instead of failing at the first handshake.
pub fn validate_files(config: &Config) -> Result<(), crate::config::ConfigError> {
    let err = |key: String, e: TlsError| crate::config::ConfigError::Invalid {
        key,
        message: e.to_string(),
    };
    install_provider();
    for f in &config.frontends {
        if let Some(t) = &f.tls {
            for (i, pair) in t.certs.iter().enumerate() {
                load_pair(pair)
                    .map_err(|e| err(format!("frontend {:?}.tls.certs[{i}]", f.name), e))?;
            }
        }
    }
    for f in &config.frontends {
        if let Some(ca) = f.acme.as_ref().and_then(|a| a.ca.as_deref()) {
            acme_client_config(Some(ca))
                .map_err(|e| err(format!("frontend {:?}.tls.acme.ca", f.name), e))?;
        }
    }
    for b in &config.backends {
        if let Some(t) = &b.tls {
            build_client(t.ca.as_deref(), t.client.as_ref(), t.verify, &[])
                .map_err(|e| err(format!("backend {:?}.tls", b.name), e))?;
        }
    }
    if let Some(e) = &config.etcd {
        etcd_client_config(e).map_err(|x| err("etcd.ca".to_string(), x))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("10.0.0.1:443"), "10.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("api.internal:443"), "api.internal");
    }

    /// The suites a frontend negotiates, in its order of preference, which wins over the
    /// client's; the README's TLS section lists the same. A rustls upgrade that changes the
    /// provider's order fails here.
    #[test]
    fn frontend_suites_are_the_documented_ones_in_server_order() {
        use rustls::CipherSuite::*;
        let dir =
            std::env::temp_dir().join(format!("switchyard-unit-suites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let pair = CertPair {
            cert: dir.join("a.pem"),
            key: dir.join("a.key"),
        };
        std::fs::write(&pair.cert, ck.cert.pem()).unwrap();
        std::fs::write(&pair.key, ck.signing_key.serialize_pem()).unwrap();
        let acceptor = TlsAcceptor::new(
            "unit",
            &FrontendTls {
                certs: vec![pair],
                alpn: vec![],
                handshake_timeout: Duration::from_secs(1),
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let sc = acceptor.acceptor.config();
        assert!(sc.ignore_client_order);
        let suites: Vec<_> = sc
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            suites,
            [
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
    }

    #[test]
    fn ocsp_file_is_named_after_the_certificate() {
        assert_eq!(
            ocsp_path(Path::new("/etc/ssl/site.pem")),
            PathBuf::from("/etc/ssl/site.pem.ocsp")
        );
    }

    #[test]
    fn ocsp_responses_that_answer_nothing_are_refused() {
        let serial = x509_cert::serial_number::SerialNumber::new(&[1]).unwrap();
        let e = parse_ocsp(b"not DER", &serial).unwrap_err();
        assert!(e.contains("not an OCSPResponse"), "{e}");
        // OCSPResponse { responseStatus tryLater (3) }: a responder's "ask again", no answer.
        let e = parse_ocsp(&[0x30, 0x03, 0x0a, 0x01, 0x03], &serial).unwrap_err();
        assert!(e.contains("TryLater"), "{e}");
    }

    /// HAProxy's `crt`: one PEM file holding the certificate, its chain and the key, in either
    /// order. The same file serves as `cert` and `key` (what `switchyard migrate` writes).
    #[test]
    fn a_combined_pem_is_both_cert_and_key() {
        let dir =
            std::env::temp_dir().join(format!("switchyard-unit-combined-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let (cert, chain, key) = (
            leaf.cert.pem(),
            other.cert.pem(),
            leaf.signing_key.serialize_pem(),
        );
        for (name, text) in [
            ("cert-first.pem", format!("{cert}{chain}{key}")),
            ("key-first.pem", format!("{key}{cert}{chain}")),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let pair = CertPair {
                cert: path.clone(),
                key: path,
            };
            let ck = load_pair(&pair).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ck.cert.len(), 2, "{name}: the leaf and its chain");
            assert_eq!(ck.cert[0].as_ref(), leaf.cert.der().as_ref(), "{name}");
            TlsAcceptor::new(
                "unit",
                &FrontendTls {
                    certs: vec![pair],
                    alpn: vec![],
                    handshake_timeout: Duration::from_secs(1),
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // A combined file whose key belongs to another certificate is refused, naming it.
        let path = dir.join("mismatch.pem");
        std::fs::write(
            &path,
            format!("{cert}{}", other.signing_key.serialize_pem()),
        )
        .unwrap();
        let pair = CertPair {
            cert: path.clone(),
            key: path,
        };
        let e = load_pair(&pair).unwrap_err().to_string();
        assert!(
            e.contains("mismatch.pem") && e.contains("does not match"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_files_are_named() {
        let pair = CertPair {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
        };
        let e = load_pair(&pair).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
