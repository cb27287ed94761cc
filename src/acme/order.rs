//! One ACME order with instant-acme, run by the instance holding the lock: the account (read
//! from etcd, or created and stored there), the order, its challenges (stored in etcd with the
//! lock's lease, so every instance answers them and they vanish with the lock), finalization
//! with a fresh key, and the issued chain and key as one PEM text.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::Answer;
use super::store::Store;
use crate::config::acme::{Acme as AcmeConfig, AcmeChallenge};

/// Where the account credentials live: a JSON object from directory URL to instant-acme's
/// credentials, so a fleet shares one account per ACME server.
pub(super) const ACCOUNT_KEY: &str = "/switchyard/acme/account";
/// Below it, one key per pending challenge.
pub(super) const CHALLENGES_PREFIX: &str = "/switchyard/acme/challenges/";
/// How long after storing the challenges the ACME server is told to check them: the time the
/// other instances' watches take to see them (milliseconds on a healthy cluster).
const CHALLENGE_PROPAGATION: Duration = Duration::from_secs(1);
/// How long the ACME server may take to validate the challenges, and to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client for the directory: hyper-rustls with our ring provider, trusting `ca` (or
/// the system roots).
fn http_client(ca: Option<&Path>) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let tls = crate::tls::acme_client_config(ca).map_err(|e| format!("acme.ca: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
    Ok(Box::new(client))
}

/// Every stored account, by directory URL.
async fn accounts(store: &Store) -> Result<BTreeMap<String, serde_json::Value>, String> {
    match store
        .get(ACCOUNT_KEY)
        .await
        .map_err(|e| format!("etcd: {e}"))?
    {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{ACCOUNT_KEY}: not a JSON object of accounts: {e}")),
        None => Ok(BTreeMap::new()),
    }
}

/// Drops the stored account of `cfg.directory` (the server no longer knows it).
async fn forget_account(store: &Store, cfg: &AcmeConfig) -> Result<(), String> {
    let mut all = accounts(store).await?;
    all.remove(&cfg.directory);
    let text = serde_json::to_string(&all).map_err(|e| e.to_string())?;
    store
        .put(ACCOUNT_KEY, &text, None)
        .await
        .map_err(|e| format!("etcd: {e}"))
}

/// The account for `cfg.directory`: restored from etcd, or created and stored there.
async fn load_account(store: &Store, cfg: &AcmeConfig) -> Result<Account, String> {
    let mut all = accounts(store).await?;
    let http = http_client(cfg.ca.as_deref())?;
    if let Some(creds) = all.get(&cfg.directory) {
        let creds: AccountCredentials =
            serde_json::from_value(creds.clone()).map_err(|e| format!("{ACCOUNT_KEY}: {e}"))?;
        return Account::builder_with_http(http)
            .from_credentials(creds)
            .await
            .map_err(|e| format!("restoring the account: {e}"));
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("creating the account: {e}"))?;
    all.insert(
        cfg.directory.clone(),
        serde_json::to_value(&creds).map_err(|e| e.to_string())?,
    );
    let text = serde_json::to_string(&all).map_err(|e| e.to_string())?;
    store
        .put(ACCOUNT_KEY, &text, None)
        .await
        .map_err(|e| format!("storing the account: {e}"))?;
    tracing::info!(directory = %cfg.directory, "ACME account created");
    Ok(account)
}

/// Orders a certificate for `cfg.domains`; `publish` stores a challenge answer (with the lock's
/// lease) and makes it served. Returns the chain followed by the private key, in PEM.
pub(super) async fn order<F, Fut>(
    store: &Store,
    cfg: &AcmeConfig,
    publish: F,
) -> Result<String, String>
where
    F: Fn(Answer) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let identifiers: Vec<Identifier> = cfg
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let new_order = NewOrder::new(&identifiers);
    let account = load_account(store, cfg).await?;
    let mut order = match account.new_order(&new_order).await {
        // The server lost the account (a test server restarted, an account deactivated
        // elsewhere): create a new one, once.
        Err(e) if e.to_string().contains("accountDoesNotExist") => {
            tracing::warn!(directory = %cfg.directory, error = %e,
                "the ACME server does not know the stored account; creating a new one");
            forget_account(store, cfg).await?;
            load_account(store, cfg).await?.new_order(&new_order).await
        }
        r => r,
    }
    .map_err(|e| format!("new order: {e}"))?;
    let kind = match cfg.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    // First pass: store every answer; second pass, once they had time to reach every
    // instance: tell the server to check.
    let mut pending = 0;
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| format!("the server offers no {kind:?} challenge"))?;
        let domain = challenge.identifier().to_string();
        let ka = challenge.key_authorization();
        let answer = match cfg.challenge {
            AcmeChallenge::Http01 => Answer::Http01 {
                token: challenge.token.clone(),
                key_authorization: ka.as_str().to_string(),
            },
            AcmeChallenge::TlsAlpn01 => Answer::TlsAlpn01 {
                domain,
                digest: B64.encode(ka.digest()),
            },
        };
        publish(answer).await?;
        pending += 1;
    }
    if pending > 0 {
        tokio::time::sleep(CHALLENGE_PROPAGATION).await;
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the server offers no {kind:?} challenge"))?;
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        let why = order
            .state()
            .error
            .as_ref()
            .map(|p| format!(": {p}"))
            .unwrap_or_default();
        return Err(format!("order is {status:?} after validation{why}"));
    }
    let mut params =
        rcgen::CertificateParams::new(cfg.domains.clone()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("downloading the certificate: {e}"))?;
    Ok(format!("{}\n{}", chain.trim_end(), key.serialize_pem()))
}
