//! Automatic certificates (`[frontend.tls.acme]`), shared by a fleet through etcd. Owns the
//! certificates ordered for the frontends, the challenge answers, and the order loop:
//!
//! - a watch on `/switchyard/acme/` keeps every instance's view of the stored certificates
//!   (`certs/<name>`: chain and key in PEM) and pending challenges (`challenges/<id>`), and
//!   publishes them to the TLS acceptors ([`crate::tls::AcmeCerts`]) and to http-01 answers;
//! - one task per certificate orders it when none is stored, when the stored one does not cover
//!   the configured names, or when it is due for renewal; only the instance that creates
//!   `/switchyard/acme/lock` (bound to a lease) orders, and it first re-reads the certificate,
//!   so no instance orders what another has just stored;
//! - failures back off ([`ORDER_BACKOFF_MIN`] doubling to [`ORDER_BACKOFF_MAX`]), are logged at
//!   WARN, counted in `switchyard_acme_orders_total{result}` and shown by [`Acme::status_json`].
//!
//! It does not own the TLS handshake (`crate::tls` reads the published maps) nor the http path
//! (`crate::http` asks [`Acme::http_answer`]).

mod challenge;
mod order;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use x509_cert::der::Decode;

use crate::config::Config;
use crate::config::acme::Acme as AcmeConfig;
use crate::etcd::Backoff;
use crate::metrics::ACME_ORDERS;
use crate::tls::{AcmeCerts, CertsByName};
use challenge::Answer;
use store::Store;

/// Everything ACME keeps in etcd is below this prefix.
pub const PREFIX: &str = "/switchyard/acme";
/// Below it, one key per certificate, named after its first domain.
pub const CERTS_PREFIX: &str = "/switchyard/acme/certs/";
/// The order lock: created only if absent, bound to a lease of [`LOCK_TTL`].
pub const LOCK_KEY: &str = "/switchyard/acme/lock";
/// The lock's lease: an instance that dies while ordering frees the lock this long after.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// A failed order is tried again after this, doubling up to [`ORDER_BACKOFF_MAX`].
pub const ORDER_BACKOFF_MIN: Duration = Duration::from_secs(60);
/// The longest wait between two failed orders: an outage is retried at least hourly.
pub const ORDER_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// While another instance holds the lock, look again this often.
const LOCK_RETRY: Duration = Duration::from_secs(3);
/// Longest sleep of an order task before it looks at its certificate again.
const RECHECK: Duration = Duration::from_secs(5);
/// One order (account, challenges, validation, issuance) gives up after this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// Wait between attempts to list or watch the prefix after an etcd error.
const WATCH_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// A watch that brought nothing for this long is answered with a fresh listing anyway.
const WATCH_IDLE: Duration = Duration::from_secs(60);

/// A certificate stored in etcd, parsed.
#[derive(Debug)]
struct Stored {
    /// The text as stored, to skip parsing it again when it did not change.
    pem: String,
    ck: Arc<CertifiedKey>,
    names: Vec<String>,
    issuer: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The outcome of the last order attempt of one certificate.
#[derive(Debug, Clone, Default)]
struct Attempt {
    last_error: Option<String>,
    next_attempt: Option<SystemTime>,
}

/// One `run`'s ACME state: what the watch last saw, and the order tasks' outcomes.
#[derive(Debug, Default)]
pub struct Acme {
    /// Read by the TLS acceptors of frontends with `[frontend.tls.acme]`.
    pub certs: Arc<AcmeCerts>,
    /// http-01: token -> key authorization.
    http: ArcSwap<HashMap<String, String>>,
    /// By certificate name (the key below [`CERTS_PREFIX`]).
    stored: ArcSwap<HashMap<String, Arc<Stored>>>,
    attempts: Mutex<HashMap<String, Attempt>>,
    /// The frontends serving each certificate (by name), for the expiry gauge's labels.
    frontends: Mutex<HashMap<String, Vec<String>>>,
    /// tls-alpn-01 certificates already made, by (domain, digest).
    alpn_cache: Mutex<HashMap<(String, String), Arc<CertifiedKey>>>,
    /// Cancels the running watch and order tasks (a reload that changes ACME restarts them).
    tasks: Mutex<Option<CancellationToken>>,
}

/// Parses `<chain PEM><key PEM>` as stored.
fn parse_stored(pem: &str) -> Result<Stored, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("no certificate")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = x509_cert::Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let tbs = &cert.tbs_certificate;
    let names = dns_names(&cert);
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())?;
    Ok(Stored {
        pem: pem.to_string(),
        ck: Arc::new(ck),
        names,
        issuer: tbs.issuer.to_string(),
        not_before: SystemTime::UNIX_EPOCH + tbs.validity.not_before.to_unix_duration(),
        not_after: SystemTime::UNIX_EPOCH + tbs.validity.not_after.to_unix_duration(),
    })
}

/// The lower-case DNS names of a certificate's subjectAltName.
fn dns_names(cert: &x509_cert::Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};
    cert.tbs_certificate
        .get::<SubjectAltName>()
        .ok()
        .flatten()
        .map(|(_, san)| {
            san.0
                .into_iter()
                .filter_map(|n| match n {
                    GeneralName::DnsName(d) => Some(d.to_string().to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// When `stored` should be replaced for `cfg`: now when it lacks a configured name, else
/// `renew_before` ahead of its expiry, but never in the first third of its lifetime (so a
/// `renew_before` longer than the ACME server's certificates renews every third of their
/// lifetime instead of ordering without pause).
fn renew_at(stored: &Stored, cfg: &AcmeConfig) -> SystemTime {
    if !cfg.domains.iter().all(|d| stored.names.contains(d)) {
        return SystemTime::UNIX_EPOCH;
    }
    let lifetime = stored
        .not_after
        .duration_since(stored.not_before)
        .unwrap_or_default();
    let by_expiry = stored
        .not_after
        .checked_sub(cfg.renew_before)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    by_expiry.max(stored.not_before + lifetime / 3)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The distinct certificates of a config: name -> settings (validation made sure frontends
/// sharing a name share the settings).
fn wanted(config: &Config) -> BTreeMap<String, AcmeConfig> {
    config
        .frontends
        .iter()
        .filter_map(|f| f.acme.as_ref())
        .map(|a| (a.name().to_string(), a.clone()))
        .collect()
}

/// Registers `switchyard_acme_orders_total` at 0 for both results.
fn register_metrics() {
    for result in ["valid", "failed"] {
        metrics::counter!(ACME_ORDERS, "result" => result).increment(0);
    }
}

impl Acme {
    /// (Re)starts the watch and the order tasks for `config`'s `[frontend.tls.acme]` sections;
    /// with none (or no `[etcd]`), stops them. `cancel` is the run's token.
    pub fn start(self: &Arc<Self>, config: &Config, cancel: &CancellationToken) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tasks.take() {
            old.cancel();
        }
        let wanted = wanted(config);
        let mut frontends: HashMap<String, Vec<String>> = HashMap::new();
        for f in &config.frontends {
            if let Some(a) = &f.acme {
                frontends
                    .entry(a.name().to_string())
                    .or_default()
                    .push(f.name.clone());
            }
        }
        *self.frontends.lock().unwrap_or_else(|e| e.into_inner()) = frontends;
        let Some(etcd) = config.etcd.as_ref().filter(|_| !wanted.is_empty()) else {
            return;
        };
        register_metrics();
        let store = match Store::new(etcd) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(error = %e, "ACME not started: cannot build the etcd client");
                return;
            }
        };
        let token = cancel.child_token();
        tokio::spawn(Arc::clone(self).watch(Arc::clone(&store), token.clone()));
        for (name, cfg) in wanted {
            info!(certificate = %name, domains = ?cfg.domains, directory = %cfg.directory, "ACME certificate managed");
            tokio::spawn(Arc::clone(self).manage(Arc::clone(&store), cfg, token.clone()));
        }
        *tasks = Some(token);
    }

    /// The key authorization for `path` when it is `/.well-known/acme-challenge/<token>` of a
    /// pending http-01 challenge.
    pub fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix("/.well-known/acme-challenge/")?;
        self.http.load().get(token).cloned()
    }

    /// Replaces the published certificates and challenges with those of a listing of the prefix.
    fn apply(&self, leaves: &[(String, String)]) {
        let mut stored = HashMap::new();
        let mut by_name: CertsByName = HashMap::new();
        let mut http = HashMap::new();
        let mut alpn: CertsByName = HashMap::new();
        let old = self.stored.load();
        let mut alpn_cache = self.alpn_cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut next_cache = HashMap::new();
        for (key, value) in leaves {
            if let Some(name) = key.strip_prefix(CERTS_PREFIX) {
                let parsed = match old.get(name) {
                    // Unchanged text parses the same: keep the loaded key.
                    Some(s) if s.pem == *value => Ok(Arc::clone(s)),
                    _ => parse_stored(value).map(Arc::new),
                };
                match parsed {
                    Ok(s) => {
                        for n in &s.names {
                            by_name.insert(n.clone(), Arc::clone(&s.ck));
                        }
                        stored.insert(name.to_string(), s);
                    }
                    Err(e) => warn!(key = %key, error = %e, "ACME certificate in etcd not loaded"),
                }
            } else if key.starts_with(order::CHALLENGES_PREFIX) {
                match serde_json::from_str::<Answer>(value) {
                    Ok(Answer::Http01 {
                        token,
                        key_authorization,
                    }) => {
                        http.insert(token, key_authorization);
                    }
                    Ok(Answer::TlsAlpn01 { domain, digest }) => {
                        let made = match alpn_cache.remove(&(domain.clone(), digest.clone())) {
                            Some(ck) => Ok(ck),
                            None => challenge::alpn_cert(&domain, &digest),
                        };
                        match made {
                            Ok(ck) => {
                                alpn.insert(domain.clone(), Arc::clone(&ck));
                                next_cache.insert((domain, digest), ck);
                            }
                            Err(e) => warn!(key = %key, error = %e, "ACME challenge not served"),
                        }
                    }
                    Err(e) => {
                        warn!(key = %key, error = %e, "ACME challenge in etcd not understood")
                    }
                }
            }
        }
        *alpn_cache = next_cache;
        let frontends = self.frontends.lock().unwrap_or_else(|e| e.into_inner());
        for (name, s) in &stored {
            // The same gauge as a `certs` file's, so expiry alerts cover ACME certificates too.
            let not_after = s
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            for f in frontends.get(name).into_iter().flatten() {
                let labels = [("frontend", f.clone()), ("name", name.clone())];
                metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY, &labels).set(not_after);
            }
            if old.get(name).is_none_or(|o| !Arc::ptr_eq(o, s)) {
                info!(certificate = %name, not_after = %rfc3339(s.not_after), issuer = %s.issuer,
                    "ACME certificate loaded from etcd");
            }
        }
        self.stored.store(Arc::new(stored));
        self.certs.certs.store(Arc::new(by_name));
        self.certs.challenges.store(Arc::new(alpn));
        self.http.store(Arc::new(http));
    }

    /// Lists the prefix and applies it: the revision read at.
    async fn refresh(&self, store: &Store) -> Result<i64, crate::etcd::EtcdError> {
        let listing = store.list(PREFIX).await?;
        self.apply(&listing.leaves);
        Ok(listing.revision)
    }

    /// Keeps the published state equal to etcd's: a listing, then a watch; any event (or a
    /// quiet [`WATCH_IDLE`]) brings a fresh listing. Errors back off and start over.
    async fn watch(self: Arc<Self>, store: Arc<Store>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(WATCH_BACKOFF.0, WATCH_BACKOFF.1);
        loop {
            let e = tokio::select! {
                _ = cancel.cancelled() => return,
                Err(e) = self.watch_round(&store, &mut backoff) => e,
            };
            debug!(error = %e, "ACME watch on etcd failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One listing and the watch after it, until an error.
    async fn watch_round(
        &self,
        store: &Store,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, crate::etcd::EtcdError> {
        use crate::etcd::v3::Message;
        let revision = self.refresh(store).await?;
        backoff.reset();
        let mut w = store.watch(PREFIX, revision + 1).await?;
        loop {
            match w.next(WATCH_IDLE).await? {
                Some(Message::Events(_)) | None => {
                    self.refresh(store).await?;
                }
                Some(Message::Failed(detail)) => {
                    return Err(crate::etcd::EtcdError::Decode {
                        endpoint: String::new(),
                        detail: format!("watch ended: {detail}"),
                    });
                }
                Some(Message::Compacted { .. }) => {
                    return Err(crate::etcd::EtcdError::Decode {
                        endpoint: String::new(),
                        detail: "watch start compacted away; listing again".to_string(),
                    });
                }
                Some(_) => {}
            }
        }
    }
}

/// What one pass of an order task did.
enum Pass {
    /// A certificate was ordered and stored.
    Ordered,
    /// Another instance holds the lock.
    Busy,
    /// After taking the lock, the stored certificate turned out fine (another instance stored
    /// it meanwhile).
    NotNeeded,
}

impl Acme {
    fn attempt(&self, name: &str) -> Attempt {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    fn set_attempt(&self, name: &str, a: Attempt) {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), a);
    }

    /// When the certificate `cfg` names should be ordered (the past: now).
    fn due(&self, cfg: &AcmeConfig) -> SystemTime {
        match self.stored.load().get(cfg.name()) {
            Some(s) => renew_at(s, cfg),
            None => SystemTime::UNIX_EPOCH,
        }
    }

    /// One certificate's order task: waits until it is due (and past a failure's backoff),
    /// then orders under the lock.
    async fn manage(
        self: Arc<Self>,
        store: Arc<Store>,
        cfg: AcmeConfig,
        cancel: CancellationToken,
    ) {
        let name = cfg.name().to_string();
        let mut backoff = Backoff::new(ORDER_BACKOFF_MIN, ORDER_BACKOFF_MAX);
        loop {
            let now = SystemTime::now();
            let attempt = self.attempt(&name);
            let not_before = attempt
                .next_attempt
                .filter(|_| attempt.last_error.is_some())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let at = self.due(&cfg).max(not_before);
            if let Ok(wait) = at.duration_since(now)
                && !wait.is_zero()
            {
                if attempt.last_error.is_none() {
                    self.set_attempt(
                        &name,
                        Attempt {
                            last_error: None,
                            next_attempt: Some(at),
                        },
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait.min(RECHECK)) => continue,
                }
            }
            let pass = tokio::select! {
                _ = cancel.cancelled() => return,
                p = tokio::time::timeout(ORDER_TIMEOUT, self.pass(&store, &cfg)) =>
                    p.unwrap_or_else(|_| Err(format!("no certificate within {ORDER_TIMEOUT:?}"))),
            };
            match pass {
                Ok(Pass::Ordered) => {
                    metrics::counter!(ACME_ORDERS, "result" => "valid").increment(1);
                    backoff.reset();
                    let next = self.due(&cfg);
                    self.set_attempt(
                        &name,
                        Attempt {
                            last_error: None,
                            next_attempt: Some(next),
                        },
                    );
                    info!(certificate = %name, renew_at = %rfc3339(next), "ACME certificate ordered and stored in etcd");
                }
                Ok(Pass::NotNeeded) => {}
                Ok(Pass::Busy) => {
                    debug!(certificate = %name, "another instance holds the ACME lock");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(LOCK_RETRY) => {}
                    }
                }
                Err(e) => {
                    metrics::counter!(ACME_ORDERS, "result" => "failed").increment(1);
                    let delay = backoff.next_delay();
                    let next = SystemTime::now() + delay;
                    warn!(certificate = %name, error = %e, retry_in = ?delay,
                        "ACME order failed; the current certificate (if any) stays in use");
                    self.set_attempt(
                        &name,
                        Attempt {
                            last_error: Some(e),
                            next_attempt: Some(next),
                        },
                    );
                }
            }
        }
    }

    /// Takes the lock, checks again that the certificate is due, orders and stores it.
    async fn pass(&self, store: &Store, cfg: &AcmeConfig) -> Result<Pass, String> {
        let etcd = |e: crate::etcd::EtcdError| format!("etcd: {e}");
        let lease = store.grant(LOCK_TTL.as_secs()).await.map_err(etcd)?;
        let holder = format!("{}:{}", cfg.name(), std::process::id());
        let taken = match store.create(LOCK_KEY, &holder, lease).await {
            Ok(t) => t,
            Err(e) => {
                let _ = store.revoke(lease).await;
                return Err(etcd(e));
            }
        };
        if !taken {
            let _ = store.revoke(lease).await;
            return Ok(Pass::Busy);
        }
        let keepalive = async {
            loop {
                tokio::time::sleep(LOCK_TTL / 3).await;
                match store.keepalive(lease).await {
                    Ok(true) => {}
                    Ok(false) => return "the ACME lock's lease expired".to_string(),
                    Err(e) => debug!(error = %e, "ACME lock keepalive failed"),
                }
            }
        };
        let work = async {
            self.refresh(store).await.map_err(etcd)?;
            if self.due(cfg) > SystemTime::now() {
                return Ok(Pass::NotNeeded);
            }
            let publish = |answer: Answer| async move {
                let key = format!("{}{}", order::CHALLENGES_PREFIX, answer.id());
                let text = serde_json::to_string(&answer).map_err(|e| e.to_string())?;
                store.put(&key, &text, Some(lease)).await.map_err(etcd)?;
                self.refresh(store).await.map_err(etcd)?;
                Ok(())
            };
            let pem = order::order(store, cfg, publish).await?;
            // Refuse to store what would not load.
            parse_stored(&pem).map_err(|e| format!("the issued certificate does not load: {e}"))?;
            let key = format!("{CERTS_PREFIX}{}", cfg.name());
            store.put(&key, &pem, None).await.map_err(etcd)?;
            self.refresh(store).await.map_err(etcd)?;
            Ok(Pass::Ordered)
        };
        let result = tokio::select! {
            r = work => r,
            e = keepalive => Err(e),
        };
        // Frees the lock and deletes the challenges stored with its lease.
        if let Err(e) = store.revoke(lease).await {
            debug!(error = %e, "ACME lock not released; its lease expires");
        }
        result
    }

    /// `GET /api/v1/certificates`: every certificate a frontend serves, ACME-ordered or from
    /// `certs` files, with its names, issuer and expiry; ACME ones also with the last order
    /// error and when the next order is due.
    pub fn status_json(&self, config: &Config) -> serde_json::Value {
        let stored = self.stored.load();
        let mut out = Vec::new();
        for (name, cfg) in wanted(config) {
            let attempt = self.attempt(&name);
            let s = stored.get(&name);
            out.push(serde_json::json!({
                "name": name,
                "source": "acme",
                "domains": cfg.domains,
                "names": s.map(|s| s.names.clone()),
                "issuer": s.map(|s| s.issuer.clone()),
                "not_after": s.map(|s| rfc3339(s.not_after)),
                "last_error": attempt.last_error,
                "next_attempt": attempt.next_attempt.map(rfc3339),
            }));
        }
        for f in &config.frontends {
            for pair in f.tls.iter().flat_map(|t| &t.certs) {
                let cert = std::fs::read(&pair.cert)
                    .ok()
                    .and_then(|pem| CertificateDer::pem_slice_iter(&pem).next()?.ok())
                    .and_then(|der| x509_cert::Certificate::from_der(&der).ok());
                let names = cert.as_ref().map(dns_names);
                let name = names
                    .as_ref()
                    .and_then(|n| n.first().cloned())
                    .unwrap_or_else(|| pair.cert.display().to_string());
                out.push(serde_json::json!({
                    "name": name,
                    "source": "file",
                    "frontend": f.name,
                    "file": pair.cert,
                    "names": names,
                    "issuer": cert.as_ref().map(|c| c.tbs_certificate.issuer.to_string()),
                    "not_after": cert.as_ref().map(|c| rfc3339(SystemTime::UNIX_EPOCH + c.tbs_certificate.validity.not_after.to_unix_duration())),
                    "last_error": serde_json::Value::Null,
                    "next_attempt": serde_json::Value::Null,
                }));
            }
        }
        serde_json::json!({ "certificates": out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(names: &[&str], not_before: u64, not_after: u64) -> Stored {
        let ck = challenge::alpn_cert(
            "a.example",
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 32]),
        )
        .unwrap();
        Stored {
            pem: String::new(),
            ck,
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: String::new(),
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(not_before),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after),
        }
    }

    fn cfg(domains: &[&str], renew_before: u64) -> AcmeConfig {
        AcmeConfig {
            directory: "https://acme.test/dir".into(),
            email: None,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            challenge: crate::config::acme::AcmeChallenge::TlsAlpn01,
            ca: None,
            renew_before: Duration::from_secs(renew_before),
            insecure_shared_keys: true,
        }
    }

    #[test]
    fn renewal_is_due_renew_before_the_expiry_but_not_in_the_first_third() {
        let at = |s: &Stored, c: &AcmeConfig| {
            renew_at(s, c)
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let s = stored(&["a.example"], 1000, 10_000);
        assert_eq!(at(&s, &cfg(&["a.example"], 1000)), 9000);
        // renew_before longer than the lifetime: a third into it.
        assert_eq!(at(&s, &cfg(&["a.example"], 1_000_000)), 4000);
        // A name the certificate lacks: now.
        assert_eq!(at(&s, &cfg(&["a.example", "b.example"], 1000)), 0);
    }

    #[test]
    fn http_answers_only_pending_tokens() {
        let acme = Acme::default();
        acme.apply(&[(
            format!("{}tok1", order::CHALLENGES_PREFIX),
            r#"{"type":"http-01","token":"tok1","key_authorization":"tok1.abc"}"#.to_string(),
        )]);
        assert_eq!(
            acme.http_answer("/.well-known/acme-challenge/tok1")
                .as_deref(),
            Some("tok1.abc")
        );
        assert_eq!(acme.http_answer("/.well-known/acme-challenge/tok2"), None);
        assert_eq!(acme.http_answer("/tok1"), None);
        acme.apply(&[]);
        assert_eq!(acme.http_answer("/.well-known/acme-challenge/tok1"), None);
    }
}
