//! `[frontend.tls.acme]`: automatic certificates. The file format as serde reads it, the
//! validated [`Acme`] settings, and the checks that need the whole config: ACME shares private
//! keys through etcd, so it needs `[etcd]`, and one with authentication unless
//! `insecure_shared_keys = true` says otherwise on purpose. The ordering itself lives in
//! `src/acme/`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults::{DEFAULT_ACME_DIRECTORY, DEFAULT_ACME_RENEW_BEFORE};
use super::file::bounded;
use super::validate::Errors;
use super::{ConfigError, EtcdConfig, Frontend, Route, invalid};

/// `[frontend.tls.acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAcme {
    pub(super) directory: Option<String>,
    pub(super) email: Option<String>,
    pub(super) domains: Option<FileDomains>,
    pub(super) challenge: Option<AcmeChallenge>,
    pub(super) ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) renew_before: Option<Duration>,
    pub(super) insecure_shared_keys: Option<bool>,
}

/// `domains = ["a.example", ...]` or `domains = "routes"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileDomains {
    List(Vec<String>),
    Word(String),
}

/// How the ACME server checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum AcmeChallenge {
    /// A self-signed certificate for the name on ALPN `acme-tls/1`, on this TLS frontend.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `GET /.well-known/acme-challenge/TOKEN` on port 80: any http frontend of this process.
    #[serde(rename = "http-01")]
    Http01,
}

/// The validated `[frontend.tls.acme]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Acme {
    pub directory: String,
    pub email: Option<String>,
    /// Lower-case DNS names, the first naming the certificate (`/switchyard/acme/certs/<first>`).
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    /// Trust for the directory's HTTPS (a private ACME server); `None`: the system roots.
    pub ca: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub renew_before: Duration,
    pub insecure_shared_keys: bool,
}

impl Acme {
    /// The certificate's name in etcd and in `/api/v1/certificates`: its first domain.
    pub fn name(&self) -> &str {
        &self.domains[0]
    }
}

/// A name the ACME server can validate with http-01 or tls-alpn-01: letters, digits and
/// hyphens in dot-separated labels, no wildcard (that needs dns-01), not an IP address.
fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.parse::<std::net::IpAddr>().is_err()
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Every exact (not `*.`) host or SNI of `routes`, in route order, without repeats.
fn route_domains(routes: &[Route]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in routes {
        for name in [&r.host, &r.sni].into_iter().flatten() {
            if !name.starts_with("*.") && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Validates one frontend's `[frontend.tls.acme]`; `key` names the frontend, `routes` are its
/// validated routes (for `domains = "routes"`).
pub(super) fn acme(key: &str, a: FileAcme, routes: &[Route]) -> Result<Acme, ConfigError> {
    let key = format!("{key}.tls.acme");
    // Every problem at once, as the rest of `check` reports them.
    let mut errs = Errors::default();
    let domains = errs
        .take(domains(&key, a.domains, routes))
        .unwrap_or_default();
    let directory = a
        .directory
        .unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.to_string());
    if !directory.starts_with("https://") {
        errs.push(invalid(
            format!("{key}.directory"),
            format!("{directory:?}: an ACME directory is an https:// URL"),
        ));
    }
    if let Some(email) = &a.email
        && (!email.contains('@') || email.contains(char::is_whitespace))
    {
        errs.push(invalid(
            format!("{key}.email"),
            format!("{email:?} is not an email address"),
        ));
    }
    let renew_before = a.renew_before.unwrap_or(DEFAULT_ACME_RENEW_BEFORE);
    if renew_before.is_zero() {
        errs.push(invalid(format!("{key}.renew_before"), "must be above zero"));
    }
    errs.finish(Acme {
        directory,
        email: a.email,
        domains,
        challenge: a.challenge.unwrap_or(AcmeChallenge::TlsAlpn01),
        ca: a.ca,
        renew_before,
        insecure_shared_keys: a.insecure_shared_keys.unwrap_or(false),
    })
}

/// `domains`: a list of DNS names (lowercased, each once), or "routes".
fn domains(
    key: &str,
    domains: Option<FileDomains>,
    routes: &[Route],
) -> Result<Vec<String>, ConfigError> {
    let domains = match domains {
        None => {
            return Err(invalid(
                format!("{key}.domains"),
                "is required: a list of names, or \"routes\" (every exact host of this frontend's routes)",
            ));
        }
        Some(FileDomains::Word(w)) if w == "routes" => {
            let d = route_domains(routes);
            if d.is_empty() {
                return Err(invalid(
                    format!("{key}.domains"),
                    "\"routes\", but no route of this frontend has an exact host or sni",
                ));
            }
            d
        }
        Some(FileDomains::Word(w)) => {
            return Err(invalid(
                format!("{key}.domains"),
                format!("{w:?}: expected a list of names, or \"routes\""),
            ));
        }
        Some(FileDomains::List(list)) => {
            if list.is_empty() {
                return Err(invalid(format!("{key}.domains"), "must not be empty"));
            }
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for d in list {
                let d = d.to_ascii_lowercase();
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            out
        }
    };
    if let Some(bad) = domains.iter().find(|d| !valid_domain(d)) {
        return Err(invalid(
            format!("{key}.domains"),
            format!(
                "{bad:?} is not a DNS name an http-01 or tls-alpn-01 challenge can prove (no wildcards, no IP addresses)"
            ),
        ));
    }
    Ok(domains)
}

/// The checks across sections: every ACME frontend needs `[etcd]`, with authentication (a
/// username and password, or a client certificate) unless it sets `insecure_shared_keys`;
/// http-01 needs a plain http frontend to answer on; two frontends ordering the same name
/// must agree on its settings.
pub(super) fn cross_checks(frontends: &[Frontend], etcd: Option<&EtcdConfig>) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let plain_http = frontends
        .iter()
        .any(|f| f.mode == super::Mode::Http && f.tls.is_none());
    for f in frontends {
        let Some(a) = &f.acme else { continue };
        let key = format!("frontend {:?}.tls.acme", f.name);
        match etcd {
            None => errs.push(invalid(
                key.clone(),
                "needs [etcd]: the account, certificates and challenges are shared through etcd under /switchyard/acme/",
            )),
            Some(e) if e.username.is_none() && e.cert.is_none() && !a.insecure_shared_keys => {
                errs.push(invalid(
                    format!("{key}.insecure_shared_keys"),
                    "[etcd] has no authentication (etcd.username/password or etcd.cert/key), so the certificates' private keys under /switchyard/acme/ would be readable by anyone who reaches etcd; enable etcd auth, or set insecure_shared_keys = true on purpose",
                ));
            }
            Some(_) => {}
        }
        if a.challenge == AcmeChallenge::Http01 && !plain_http {
            errs.push(invalid(
                format!("{key}.challenge"),
                "\"http-01\" is answered on a plain (no TLS) mode = \"http\" frontend, and there is none",
            ));
        }
        if let Some(other) = frontends
            .iter()
            .filter_map(|o| o.acme.as_ref().map(|oa| (o, oa)))
            .find(|(o, oa)| o.name < f.name && oa.name() == a.name() && *oa != a)
        {
            errs.push(invalid(
                key.clone(),
                format!(
                    "orders {:?} like frontend {:?}, with other settings; give both the same [frontend.tls.acme]",
                    a.name(),
                    other.0.name
                ),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const TAIL: &str = "\n[[backend]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n";

    fn web(acme: &str, etcd: bool) -> String {
        let etcd = if etcd {
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"p\"\n"
        } else {
            ""
        };
        format!(
            "{etcd}[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:8443\"\nbackend = \"app\"\n\
             [[frontend.route]]\nhost = \"shop.example.com\"\nbackend = \"app\"\n\
             [[frontend.route]]\nhost = \"*.example.com\"\nbackend = \"app\"\n\
             [frontend.tls]\n[frontend.tls.acme]\n{acme}\n{TAIL}"
        )
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_routes() {
        let c = Config::from_toml(&web("domains = \"routes\"", true)).unwrap();
        let a = c.frontends[0].acme.as_ref().unwrap();
        // The wildcard route is not a name http-01 or tls-alpn-01 can prove.
        assert_eq!(a.domains, ["shop.example.com"]);
        assert_eq!(a.directory, DEFAULT_ACME_DIRECTORY);
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(a.renew_before, DEFAULT_ACME_RENEW_BEFORE);
        assert!(c.frontends[0].tls.as_ref().unwrap().certs.is_empty());
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let e = err(&web(
            "domains = [\"*.example.com\"]\ndirectory = \"http://acme.test/dir\"\n\
             email = \"ops\"\nrenew_before = \"0s\"",
            true,
        ));
        for key in ["domains", "directory", "email", "renew_before"] {
            assert!(e.contains(&format!("tls.acme.{key}")), "{key} in {e}");
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        let e = err(&web("domains = [\"*.example.com\"]", true));
        assert!(e.contains("frontend \"web\".tls.acme.domains"), "{e}");
        let e = err(&web("", true));
        assert!(e.contains("tls.acme.domains: is required"), "{e}");
        let e = err(&web(
            "domains = [\"a.example.com\"]\ndirectory = \"http://acme.test/dir\"",
            true,
        ));
        assert!(e.contains("tls.acme.directory"), "{e}");
        let e = err(&web(
            "domains = [\"a.example.com\"]\nchallange = \"x\"",
            true,
        ));
        assert!(e.contains("challange"), "{e}");
        let e = err(&web("domains = [\"a.example.com\"]", false));
        assert!(e.contains("tls.acme: needs [etcd]"), "{e}");
        // http-01 without a plain http frontend to answer on.
        let e = err(&web(
            "domains = [\"a.example.com\"]\nchallenge = \"http-01\"",
            true,
        ));
        assert!(e.contains("tls.acme.challenge"), "{e}");
    }

    #[test]
    fn domains_are_dns_names() {
        assert!(valid_domain("shop.example.com"));
        assert!(valid_domain("a-b.example"));
        assert!(!valid_domain("*.example.com"));
        assert!(!valid_domain("127.0.0.1"));
        assert!(!valid_domain("localhost"));
        assert!(!valid_domain("-a.example"));
        assert!(!valid_domain("a..example"));
    }
}
