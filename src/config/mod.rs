//! Configuration: the `switchyard.toml` contract (README, "Configuration reference") as typed,
//! validated structs, and the errors that name the offending key. `check`, startup and SIGHUP all
//! go through [`Config::from_toml`]; file IO is kept apart in [`Config::load`].
//!
//! This module owns the validated types. The file format as serde reads it is in `file.rs`
//! (`deny_unknown_fields`: a misspelt key is an error naming that key, never silently ignored),
//! its checks, section by section, in `validate.rs`, and every default as a named constant in
//! [`defaults`], re-exported here as `config::DEFAULT_*`.

pub mod acme;
mod cidr;
pub mod defaults;
mod file;
mod limiter;
mod policy;
mod routing;
mod size;
mod sticky;
mod unknown;
mod validate;
pub mod warnings;

pub use cidr::CidrSet;
pub use defaults::*;
pub use limiter::{LimitKey, Limiter};
pub use policy::{
    HeaderRules, PROTECTED_HEADERS, Policy, REDIRECT_CODES, RateKey, RateLimit, Redirect,
};
pub use sticky::{Sticky, is_token as is_cookie_name};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use file::FileConfig;

/// A configuration error; the message always names the offending key (or file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// Every problem found (two or more), in file order.
    #[error("{} problems:\n  {}", .0.len(), list(.0))]
    Several(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    lines.join("\n  ")
}

impl ConfigError {
    /// One error as itself, more as [`ConfigError::Several`].
    fn from_list(mut errors: Vec<ConfigError>) -> ConfigError {
        match errors.len() {
            1 => errors.remove(0),
            _ => ConfigError::Several(errors),
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Which etcd API discovery speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdApi {
    V2,
    V3,
}

impl EtcdApi {
    /// As written in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            EtcdApi::V2 => "v2",
            EtcdApi::V3 => "v3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    /// As written in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// `[log] access`: the access log's line format, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    Off,
    Json,
    Logfmt,
}

impl Default for AccessFormat {
    fn default() -> Self {
        DEFAULT_ACCESS_FORMAT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Smooth weighted round-robin.
    Roundrobin,
    /// Fewest requests in flight relative to weight.
    Leastconn,
    /// Power of two random choices, by requests in flight relative to weight.
    Random2,
    /// Consistent hashing (Maglev) of the backend's `hash_key`.
    Hash,
}

impl Balance {
    /// As written in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
            Balance::Random2 => "random2",
            Balance::Hash => "hash",
        }
    }
}

/// `[[backend]] hash_key`: what `balance = "hash"` hashes. A request without it (no such header
/// or cookie) is balanced round-robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address without the port (the PROXY header's source with `accept_proxy`).
    Source,
    /// The path and query as received.
    Uri,
    /// A request header's value (`header:NAME`; the name is kept lowercase).
    Header(String),
    /// A cookie's value (`cookie:NAME`).
    Cookie(String),
}

impl HashKey {
    /// Parses `source`, `uri`, `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b';') {
                Err(format!("{kind}: needs a name, as in \"{kind}:NAME\""))
            } else {
                Ok(name.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "source" => Ok(HashKey::Source),
            None if s == "uri" => Ok(HashKey::Uri),
            Some(("header", n)) => {
                let n = named("header", n)?;
                http::HeaderName::from_bytes(n.as_bytes())
                    .map(|h| HashKey::Header(h.as_str().to_string()))
                    .map_err(|_| format!("header:{n}: not a valid header name"))
            }
            Some(("cookie", n)) => named("cookie", n).map(HashKey::Cookie),
            _ => Err(format!(
                "unknown value {s:?}; expected \"source\", \"uri\", \"header:NAME\" or \"cookie:NAME\""
            )),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Source => f.write_str("source"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

impl serde::Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a backend speaks to its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2,
}

/// PROXY protocol header sent to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    None,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    None,
}

/// `[log]`: the access log (one line per request, or per connection in tcp mode).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub access: AccessFormat,
    /// Appended to; stdout when unset.
    pub access_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Validated config.

/// The validated configuration. Every field has its default filled in.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Worker threads (HAProxy's `nbthread`); `None`: one per CPU. Read at start only.
    pub threads: Option<usize>,
    /// `true` (the default): one tokio runtime whose worker threads steal each other's tasks.
    /// `false`: one current-thread runtime per thread, each accepting on every listener and
    /// serving what it accepted (pingora's `work_stealing = false`). Read at start only.
    pub work_stealing: bool,
    /// The Unix socket a running process listens on for a takeover (`takeover.rs`).
    pub upgrade_socket: PathBuf,
    pub admin_listen: SocketAddr,
    /// Bearer token required by the admin API's write endpoints and `/api/v1/config`.
    pub admin_token: Option<String>,
    /// The file this config was loaded from (for reloads asked through the admin API).
    pub path: Option<PathBuf>,
    pub log: LogConfig,
    pub etcd: Option<EtcdConfig>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// `[[service_tree]]`: directories in etcd whose every subdirectory is a service.
    pub service_trees: Vec<ServiceTree>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EtcdConfig {
    /// Base URLs without a trailing slash, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    pub api: EtcdApi,
    /// Client-side deadline on one long-poll; etcd never closes an idle one.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Deadline on ordinary (non-watch) requests.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// TLS to etcd (`https://` endpoints): a CA bundle, and a client certificate and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd authentication (v2: basic auth; v3: a token from `/v3/auth/authenticate`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Where the last published discovered servers are kept, to serve from when Switchyard
    /// starts while etcd is unreachable.
    pub snapshot_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Frontend {
    pub name: String,
    pub bind: SocketAddr,
    pub mode: Mode,
    /// The fallback: what a request (or connection) no route matches goes to. `None`: `404`
    /// (tcp mode: a close). With `backends`, the heaviest of them.
    pub backend: Option<String>,
    /// The fallback as a weighted split (`backends = [...]`, http mode), in file order; empty:
    /// `backend` alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// `[[frontend.route]]`, in file order.
    pub routes: Vec<Route>,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    /// Client connections open at once (HAProxy's `maxconn`); beyond it the listener stops
    /// accepting and new clients wait in the kernel's accept queue.
    pub maxconn: usize,
    /// Expect a PROXY protocol v1 or v2 header from the peer before anything else.
    pub accept_proxy: bool,
    /// HTTP/1.1 `CONNECT` requests are passed on to the backend (a pool of forward proxies),
    /// and a `2xx` answer makes the connection a tunnel; otherwise they get `405`.
    pub allow_connect: bool,
    /// Present: the listener terminates TLS.
    pub tls: Option<FrontendTls>,
    /// `[frontend.tls.acme]`: certificates this frontend orders and renews (`src/acme/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<acme::Acme>,
    /// The policy of requests no route takes, and of routes that set none of its keys.
    pub policy: Policy,
}

/// One `[[frontend.route]]`: which requests (http mode: host and path) or connections (tcp
/// mode: the ClientHello's SNI) go to `backend`. Host and SNI patterns are lower-case:
/// an exact name, `*.suffix` (one or more labels), or `None` for any.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub sni: Option<String>,
    /// Its backend; with `backends`, the heaviest of them (the first of equals).
    pub backend: String,
    /// A weighted split (`backends = [...]`), in file order; empty: every request goes to
    /// `backend`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// Its own policy keys over its frontend's.
    pub policy: Policy,
}

impl Frontend {
    /// Every backend its fallback sends requests to: `backend`, or each of its split's.
    pub fn fallback_names(&self) -> impl Iterator<Item = &str> {
        let split = self.backends.iter().map(|w| w.name.as_str());
        let single = if self.backends.is_empty() {
            self.backend.as_deref()
        } else {
            None
        };
        single.into_iter().chain(split)
    }
}

impl Route {
    /// Every backend it sends requests to: `backend`, or each of its split's.
    pub fn backend_names(&self) -> impl Iterator<Item = &str> {
        let split = self.backends.iter().map(|w| w.name.as_str());
        let single = self.backends.is_empty().then_some(self.backend.as_str());
        single.into_iter().chain(split)
    }
}

/// One backend of a route's weighted split: it takes `weight` out of the weights' sum of the
/// requests (0: none, a canary switched off).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WeightedBackend {
    pub name: String,
    pub weight: u32,
}

/// The longest service name a `[[service_tree]]` takes: a DNS label's limit, so that
/// `{service}.example.com` stays a host name.
pub const MAX_SERVICE_NAME: usize = 63;

/// One `[[service_tree]]`: every directory under `etcd_prefix` is a service with its own
/// backend (settings copied from `template`) and route in each of `frontends`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceTree {
    /// Without a trailing `/`.
    pub etcd_prefix: String,
    /// Where a service's servers are under its directory; `""`: directly in it.
    pub servers_dir: String,
    pub frontends: Vec<String>,
    /// Route templates, with `{service}` for the directory's name.
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub strip_prefix: bool,
    /// A `[[backend]]` with neither servers nor `etcd_prefix` whose settings each service's
    /// backend copies; `None`: the defaults.
    pub template: Option<String>,
    /// What each service's backend copies: the template's settings, or the defaults.
    pub backend: Backend,
    #[serde(with = "humantime_serde")]
    pub service_linger: Duration,
}

impl ServiceTree {
    /// The template filled in for `service`.
    pub fn fill(template: &str, service: &str) -> String {
        template.replace("{service}", service)
    }

    /// The etcd directory of `service`'s servers: `<etcd_prefix>/<service>/<servers_dir>`, or
    /// `<etcd_prefix>/<service>` when `servers_dir` is `""`.
    pub fn servers_prefix(&self, service: &str) -> String {
        if self.servers_dir.is_empty() {
            format!("{}/{service}", self.etcd_prefix)
        } else {
            format!("{}/{service}/{}", self.etcd_prefix, self.servers_dir)
        }
    }

    /// Whether a directory under `etcd_prefix` can be a service: its name is one host label
    /// (ASCII letters, digits, `-` and `_`, at most [`MAX_SERVICE_NAME`] characters), so it
    /// names a backend and fills the host and path templates into a valid route.
    pub fn check_service(&self, name: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > MAX_SERVICE_NAME {
            return Err(format!("not 1 to {MAX_SERVICE_NAME} characters"));
        }
        if let Some(c) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "{c:?} (a service name is a host label: letters, digits, '-' and '_')"
            ));
        }
        if let Some(host) = &self.host {
            crate::route::HostMatch::parse(Some(&Self::fill(host, name)))?;
        }
        if let Some(path) = &self.path_prefix {
            crate::route::parse_path_prefix(Some(&Self::fill(path, name)))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrontendTls {
    /// Chosen by SNI from each certificate's names; the first also serves a missing or unknown SNI.
    pub certs: Vec<CertPair>,
    pub alpn: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackendTls {
    /// CA bundle to verify servers; None = the system roots.
    pub ca: Option<PathBuf>,
    /// Server name to send and verify; None = the server's host.
    pub sni: Option<String>,
    /// Client certificate for mutual TLS.
    pub client: Option<CertPair>,
    /// Verify the server certificate (default true).
    pub verify: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Backend {
    pub name: String,
    pub etcd_prefix: Option<String>,
    pub servers: Vec<String>,
    pub balance: Balance,
    /// What `balance = "hash"` hashes (set exactly when the balance is `hash`).
    pub hash_key: Option<HashKey>,
    pub check: Check,
    pub passive: Passive,
    /// Ramp-up time of a server's weight after it comes back up (HAProxy's `slowstart`).
    #[serde(with = "humantime_serde")]
    pub slowstart: Option<Duration>,
    /// Percent of healthy servers below which health is ignored (Envoy's panic threshold);
    /// 0 = off, so that with every server down the answer is a quick 503.
    pub panic_threshold: u32,
    /// Retries in flight may add at most this percent to the requests in flight...
    pub retry_budget_percent: u32,
    /// ...but this many concurrent retries are always allowed.
    pub retry_budget_min: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    pub retries: u32,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// An idle pooled upstream connection is closed after this long (nginx's upstream
    /// `keepalive_timeout`); keep it below the servers' own keep-alive timeout, so that a
    /// request never races a server closing the connection it was sent on.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub protocol: Protocol,
    pub send_proxy: ProxyVersion,
    /// Present: connect to servers with TLS.
    pub tls: Option<BackendTls>,
    /// `[backend.sticky]`: cookie persistence.
    pub sticky: Option<Sticky>,
    /// Requests in flight on one server at once (HAProxy's server `maxconn`); more wait in the
    /// backend's queue (`balancer::queue`). 0 = no limit and no queue.
    pub max_conns_per_server: u32,
    /// How long a request may wait in the queue before its `503`; `None` as written when the
    /// file leaves it out ([`Backend::queue_timeout`] gives the value in force).
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
}

impl Backend {
    /// The queue timeout in force: the configured one, else [`DEFAULT_QUEUE_TIMEOUT`].
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    pub kind: CheckType,
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub inter: Duration,
    /// Interval while the state is changing (some results against the current state).
    #[serde(with = "humantime_serde")]
    pub fastinter: Duration,
    /// Interval while the server is down.
    #[serde(with = "humantime_serde")]
    pub downinter: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// For `http` checks: the healthy statuses; empty = any 2xx or 3xx.
    pub expect_status: Vec<u16>,
    /// For `http` checks: the Host header; default the server's address.
    pub host: Option<String>,
}

impl Default for Check {
    /// A backend without `[backend.check]`: HAProxy's defaults (see [`defaults`]), `fastinter`
    /// and `downinter` equal to `inter`.
    fn default() -> Self {
        Check {
            kind: DEFAULT_CHECK_TYPE,
            path: DEFAULT_CHECK_PATH.to_string(),
            inter: DEFAULT_CHECK_INTER,
            fastinter: DEFAULT_CHECK_INTER,
            downinter: DEFAULT_CHECK_INTER,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_CHECK_RISE,
            fall: DEFAULT_CHECK_FALL,
            expect_status: Vec::new(),
            host: None,
        }
    }
}

/// Passive checks: what live traffic may do to a server's health.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Passive {
    /// Consecutive live failures (connect error, reset, timeout) that mark a server down
    /// (HAProxy's `observe layer4 error-limit N on-error mark-down`); 0 = off.
    pub error_limit: u32,
    /// Consecutive 5xx answers that eject a server; 0 = off.
    pub consecutive_5xx: u32,
    /// Passive ejection never takes out more than this percent of a backend's servers.
    pub max_ejected_percent: u32,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            error_limit: DEFAULT_PASSIVE_ERROR_LIMIT,
            consecutive_5xx: DEFAULT_PASSIVE_CONSECUTIVE_5XX,
            max_ejected_percent: DEFAULT_PASSIVE_MAX_EJECTED_PERCENT,
        }
    }
}

impl Config {
    /// Takes over the running config's rate-limit buckets wherever a frontend (by name) or a
    /// route (by host, path and SNI) keeps the same `rate_limit`: a reload that leaves a limit
    /// as it was does not hand every client a fresh burst. A changed limit starts empty.
    pub fn keep_rate_limits(&mut self, old: &Config) {
        let limiter = |p: &Policy| p.rate_limit.as_ref().map(|r| Arc::clone(&r.limiter));
        for f in &mut self.frontends {
            let Some(of) = old.frontends.iter().find(|o| o.name == f.name) else {
                continue;
            };
            let fresh = limiter(&f.policy);
            f.policy.keep_buckets(&of.policy);
            let kept = limiter(&f.policy);
            for r in &mut f.routes {
                let inherited = match (&limiter(&r.policy), &fresh) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                if inherited {
                    // Still the frontend's buckets, whichever they are now.
                    if let (Some(rl), Some(k)) = (&mut r.policy.rate_limit, &kept) {
                        rl.limiter = Arc::clone(k);
                    }
                    continue;
                }
                let same = |o: &&Route| {
                    (&o.host, &o.path_prefix, &o.sni) == (&r.host, &r.path_prefix, &r.sni)
                };
                if let Some(or) = of.routes.iter().find(same) {
                    r.policy.keep_buckets(&or.policy);
                }
            }
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Config::from_toml(&text)?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses and validates TOML text. A file of only comments and blank lines is refused: it
    /// is a truncated or misplaced file, not a configuration.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let empty = text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if empty {
            return Err(ConfigError::Parse(
                "the file is empty: a configuration needs at least one [[frontend]]".to_string(),
            ));
        }
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(unknown::explain(text, &e)))?;
        validate::validate(file)
    }

    /// Whether `name` is a service tree's template (a backend that is not served itself).
    pub fn is_template(&self, name: &str) -> bool {
        self.service_trees
            .iter()
            .any(|t| t.template.as_deref() == Some(name))
    }

    /// A backend, by name.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"
[admin]
listen = "127.0.0.1:8404"

[etcd]
endpoints = ["http://127.0.0.1:2379"]
api = "v2"

[[frontend]]
name = "testloadbalancer"
bind = "0.0.0.0:80"
mode = "http"
backend = "testservice"

[[backend]]
name = "testservice"
etcd_prefix = "/testservice/backend"
servers = []
balance = "roundrobin"

[backend.check]
type = "tcp"
path = "/"
inter = "2s"
timeout = "1s"
rise = 2
fall = 3
"#;

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn classic_config_parses_with_defaults() {
        let c = Config::from_toml(CLASSIC).unwrap();
        assert_eq!(c.frontends[0].bind, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.frontends[0].header_timeout, Duration::from_secs(10));
        assert_eq!(c.frontends[0].max_header_size, 65536);
        let b = &c.backends[0];
        assert_eq!(b.etcd_prefix.as_deref(), Some("/testservice/backend"));
        assert_eq!(b.connect_timeout, Duration::from_secs(2));
        assert_eq!(b.response_timeout, Duration::from_secs(60));
        assert_eq!(b.retries, 2);
        assert_eq!(b.drain_timeout, Duration::from_secs(30));
        assert_eq!(b.pool_idle_timeout, Duration::from_secs(60));
        assert_eq!(b.check.rise, 2);
        assert_eq!(b.check.fastinter, Duration::from_secs(2));
        assert_eq!(b.check.downinter, Duration::from_secs(2));
        assert_eq!(b.passive, Passive::default());
        assert_eq!(b.panic_threshold, 0);
        assert_eq!(b.retry_budget_percent, 20);
        let e = c.etcd.unwrap();
        assert_eq!(e.poll_timeout, Duration::from_secs(60));
        assert_eq!(e.backoff_min, Duration::from_millis(100));
        assert_eq!(e.backoff_max, Duration::from_secs(5));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn names_are_the_file_spelling() {
        fn text(v: impl serde::Serialize) -> String {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        for m in [Mode::Http, Mode::Tcp] {
            assert_eq!(text(m), m.as_str());
        }
        for b in [
            Balance::Roundrobin,
            Balance::Leastconn,
            Balance::Random2,
            Balance::Hash,
        ] {
            assert_eq!(text(b), b.as_str());
        }
        for a in [EtcdApi::V2, EtcdApi::V3] {
            assert_eq!(text(a), a.as_str());
        }
    }

    #[test]
    fn shipped_example_configs_are_valid() {
        for f in ["config/switchyard.toml", "config/dev.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = CLASSIC.replace("rise = 2", "rise = 2\nrize = 3");
        assert!(err(&text).contains("rize"), "{}", err(&text));
        let text = CLASSIC.replace("[admin]", "[admin]\nlisten_addr = \"x\"");
        assert!(err(&text).contains("listen_addr"));
    }

    #[test]
    fn frontend_naming_a_missing_backend_is_rejected() {
        let text = CLASSIC.replace("backend = \"testservice\"", "backend = \"nope\"");
        let e = err(&text);
        assert!(e.contains("frontend \"testloadbalancer\".backend"), "{e}");
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn allow_connect_is_off_by_default_and_http_only() {
        let c = Config::from_toml(CLASSIC).unwrap();
        assert!(!c.frontends[0].allow_connect);
        let on = CLASSIC.replace("mode = \"http\"", "mode = \"http\"\nallow_connect = true");
        assert!(Config::from_toml(&on).unwrap().frontends[0].allow_connect);
        let tcp = CLASSIC.replace("mode = \"http\"", "mode = \"tcp\"\nallow_connect = true");
        let e = err(&tcp);
        assert!(
            e.contains("frontend \"testloadbalancer\".allow_connect"),
            "{e}"
        );
    }

    #[test]
    fn prefix_must_start_with_slash() {
        let text = CLASSIC.replace("\"/testservice/backend\"", "\"testservice/backend\"");
        assert!(err(&text).contains("etcd_prefix"));
    }

    #[test]
    fn pool_idle_timeout_is_read_and_zero_is_named() {
        let set = CLASSIC.replace(
            "etcd_prefix = \"/testservice/backend\"",
            "etcd_prefix = \"/testservice/backend\"\npool_idle_timeout = \"4s\"",
        );
        let c = Config::from_toml(&set).unwrap();
        assert_eq!(c.backends[0].pool_idle_timeout, Duration::from_secs(4));
        let e = err(&set.replace("\"4s\"", "\"0s\""));
        assert!(e.contains("pool_idle_timeout"), "{e}");
    }

    #[test]
    fn queue_keys_are_read_and_bad_ones_named() {
        let c = Config::from_toml(CLASSIC).unwrap();
        assert_eq!(c.backends[0].max_conns_per_server, 0);
        assert_eq!(c.backends[0].queue_timeout(), DEFAULT_QUEUE_TIMEOUT);
        let set = CLASSIC.replace(
            "etcd_prefix = \"/testservice/backend\"",
            "etcd_prefix = \"/testservice/backend\"\nmax_conns_per_server = 100\nqueue_timeout = \"3s\"",
        );
        let c = Config::from_toml(&set).unwrap();
        assert_eq!(c.backends[0].max_conns_per_server, 100);
        assert_eq!(c.backends[0].queue_timeout(), Duration::from_secs(3));
        let e = err(&set.replace("\"3s\"", "\"0s\""));
        assert!(
            e.contains(".queue_timeout") && e.contains("greater than zero"),
            "{e}"
        );
        let e = err(&set.replace("100", "-1"));
        assert!(e.contains("max_conns_per_server"), "{e}");
        let e = err(&set.replace("100", "\"many\""));
        assert!(e.contains("max_conns_per_server"), "{e}");
    }

    #[test]
    fn duplicate_bind_is_rejected() {
        let text = format!(
            "{CLASSIC}\n[[frontend]]\nname = \"b\"\nbind = \"0.0.0.0:80\"\nbackend = \"testservice\"\n"
        );
        let e = err(&text);
        assert!(e.contains("frontend \"b\".bind"), "{e}");
    }

    #[test]
    fn overlapping_binds_are_rejected_with_both_keys() {
        let fe = |name: &str, bind: &str| {
            format!(
                "[[frontend]]\nname = \"{name}\"\nbind = \"{bind}\"\nbackend = \"testservice\"\n"
            )
        };
        for (a, b) in [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("127.0.0.2:80", "0.0.0.0:80"),
            ("[::]:80", "127.0.0.1:80"),
            ("[::1]:80", "[::]:80"),
        ] {
            let text = CLASSIC.replace("0.0.0.0:80", a) + &fe("b", b);
            let e = err(&text);
            assert!(
                e.contains(&format!(
                    "frontend \"b\".bind: {}",
                    b.parse::<SocketAddr>().unwrap()
                )) && e.contains("overlaps frontend \"testloadbalancer\".bind"),
                "{a} {b}: {e}"
            );
        }
        // The admin listener counts too; distinct addresses on one port and port 0 do not clash.
        let e = err(&CLASSIC.replace("0.0.0.0:80", "0.0.0.0:8404"));
        assert!(e.contains("overlaps admin.listen = 127.0.0.1:8404"), "{e}");
        let ok = CLASSIC.replace("0.0.0.0:80", "127.0.0.1:80") + &fe("b", "127.0.0.2:80");
        Config::from_toml(&ok).unwrap();
        let ok = CLASSIC.replace("0.0.0.0:80", "0.0.0.0:0") + &fe("b", "0.0.0.0:0");
        Config::from_toml(&ok).unwrap();
    }

    #[test]
    fn empty_file_and_zero_frontends_are_refused() {
        for text in ["", "  \n# only a comment\n\n"] {
            assert!(err(text).contains("the file is empty"), "{text:?}");
        }
        let e = err("[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n");
        assert!(e.starts_with("frontend: no [[frontend]]"), "{e}");
    }

    #[test]
    fn empty_endpoints_are_refused_when_a_prefix_needs_them() {
        let e = err(&CLASSIC.replace("endpoints = [\"http://127.0.0.1:2379\"]", "endpoints = []"));
        assert!(
            e.starts_with(
                "etcd.endpoints: is empty, but backend \"testservice\" has an etcd_prefix"
            ),
            "{e}"
        );
        // Left out, it is a local member.
        let c = Config::from_toml(&CLASSIC.replace("endpoints = [\"http://127.0.0.1:2379\"]", ""))
            .unwrap();
        assert_eq!(c.etcd.unwrap().endpoints, [DEFAULT_ETCD_ENDPOINT]);
    }

    #[test]
    fn every_problem_is_reported_each_naming_its_key() {
        let text = CLASSIC
            .replace("[admin]\n", "[global]\nthreads = 0\n[admin]\n")
            .replace("inter = \"2s\"", "inter = \"0s\"")
            .replace("rise = 2", "rise = 0")
            .replace(
                "backend = \"testservice\"",
                "backend = \"testservice\"\nmaxconn = 0",
            )
            + "[[backend]]\nname = \"other\"\n\n[[frontend]]\nname = \"second\"\nbind = \"nowhere\"\nbackend = \"missing\"\n";
        let e = Config::from_toml(&text).unwrap_err();
        let ConfigError::Several(list) = &e else {
            panic!("one error only: {e}");
        };
        let keys: Vec<String> = list
            .iter()
            .map(|e| match e {
                ConfigError::Invalid { key, .. } => key.clone(),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "global.threads",
                "backend \"testservice\".check.inter",
                "backend \"testservice\".check.rise",
                "backend \"other\"",
                "frontend \"testloadbalancer\".maxconn",
                "frontend \"second\".bind",
            ]
        );
        assert!(
            e.to_string().starts_with("6 problems:\n  global.threads: "),
            "{e}"
        );
    }

    #[test]
    fn every_etcd_problem_is_reported() {
        let text = CLASSIC.replace(
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = [\"ftp://x\", \"http://127.0.0.1:2379\"]\nbackoff_min = \"0s\"\nusername = \"u\"",
        );
        let e = err(&text);
        for key in [
            "etcd.endpoints[0]: \"ftp://x\" must start with http://",
            "etcd.backoff_min: must be greater than zero",
            "etcd.username: username and password go together",
        ] {
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(e.starts_with("3 problems:"), "{e}");
    }

    #[test]
    fn a_refused_backend_does_not_make_its_frontend_refused_too() {
        let e = err(&CLASSIC.replace("inter = \"2s\"", "inter = \"0s\""));
        assert!(e.starts_with("backend \"testservice\".check.inter"), "{e}");
        assert!(!e.contains("frontend"), "{e}");
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        for listen in ["0.0.0.0:8404", "10.1.2.3:8404", "[::]:8404"] {
            let e = err(&CLASSIC.replace("127.0.0.1:8404", listen));
            assert!(
                e.starts_with("admin.token: is required when admin.listen"),
                "{e}"
            );
        }
        let with_token = CLASSIC.replace(
            "listen = \"127.0.0.1:8404\"",
            "listen = \"0.0.0.0:8404\"\ntoken = \"0123456789abcdef\"",
        );
        Config::from_toml(&with_token).unwrap();
        Config::from_toml(&CLASSIC.replace("127.0.0.1:8404", "[::1]:8404")).unwrap();
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_rate_limits() {
        let text = |fe_rate: &str, route_rate: &str| {
            format!(
                "[[backend]]\nname = \"api\"\nservers = [\"127.0.0.1:1\"]\n\
                 [[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nbackend = \"api\"\n\
                 rate_limit = {{ rate = \"{fe_rate}\" }}\n\
                 [[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\n\
                 rate_limit = {{ rate = \"{route_rate}\" }}\n\
                 [[frontend.route]]\nhost = \"b.com\"\nbackend = \"api\"\n"
            )
        };
        let l = |p: &Policy| Arc::clone(&p.rate_limit.as_ref().unwrap().limiter);
        let old = Config::from_toml(&text("10/s", "5/s")).unwrap();
        let mut same = Config::from_toml(&text("10/s", "5/s")).unwrap();
        same.keep_rate_limits(&old);
        let (of, nf) = (&old.frontends[0], &same.frontends[0]);
        assert!(Arc::ptr_eq(&l(&nf.policy), &l(&of.policy)));
        assert!(Arc::ptr_eq(
            &l(&nf.routes[0].policy),
            &l(&of.routes[0].policy)
        ));
        assert!(Arc::ptr_eq(&l(&nf.routes[1].policy), &l(&of.policy)));
        // A changed limit starts with empty buckets; the others keep theirs.
        let mut changed = Config::from_toml(&text("10/s", "6/s")).unwrap();
        changed.keep_rate_limits(&old);
        let cf = &changed.frontends[0];
        assert!(!Arc::ptr_eq(
            &l(&cf.routes[0].policy),
            &l(&of.routes[0].policy)
        ));
        assert!(Arc::ptr_eq(&l(&cf.routes[1].policy), &l(&of.policy)));
    }

    #[test]
    fn default_admin_port_is_haproxys_stats_port() {
        let c = Config::from_toml(&CLASSIC.replace("listen = \"127.0.0.1:8404\"", "")).unwrap();
        assert_eq!(c.admin_listen, "127.0.0.1:8404".parse().unwrap());
    }

    #[test]
    fn bad_duration_and_bad_address_are_named() {
        let text = CLASSIC.replace("inter = \"2s\"", "inter = \"2 parsecs\"");
        assert!(err(&text).contains("inter"), "{}", err(&text));
        let text = CLASSIC.replace("0.0.0.0:80", "0.0.0.0:http");
        assert!(err(&text).contains("bind"));
        let text = CLASSIC.replace("servers = []", "servers = [\"10.0.0.1:0\"]");
        assert!(err(&text).contains("servers[0]"), "{}", err(&text));
    }

    #[test]
    fn backend_needs_a_source_and_prefix_needs_etcd() {
        let text = CLASSIC.replace("etcd_prefix = \"/testservice/backend\"\n", "");
        assert!(err(&text).contains("backend \"testservice\""));
        let text = CLASSIC.replace(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\napi = \"v2\"\n",
            "",
        );
        assert!(err(&text).contains("[etcd]"), "{}", err(&text));
    }

    #[test]
    fn health_and_balancing_keys() {
        let text = CLASSIC
            .replace("balance = \"roundrobin\"", "balance = \"leastconn\"\nslowstart = \"10s\"\npanic_threshold = 50")
            .replace("fall = 3", "fall = 3\nfastinter = \"500ms\"\nexpect_status = [200, 204]\nhost = \"svc.local\"\n[backend.passive]\nconsecutive_5xx = 5");
        let c = Config::from_toml(&text).unwrap();
        let b = &c.backends[0];
        assert_eq!(b.balance, Balance::Leastconn);
        assert_eq!(b.slowstart, Some(Duration::from_secs(10)));
        assert_eq!(b.check.fastinter, Duration::from_millis(500));
        assert_eq!(
            b.check.downinter,
            Duration::from_secs(2),
            "downinter defaults to inter"
        );
        assert_eq!(b.check.expect_status, [200, 204]);
        assert_eq!(b.passive.consecutive_5xx, 5);
        assert_eq!(b.passive.error_limit, 1);
        let bad = text.replace("panic_threshold = 50", "panic_threshold = 150");
        assert!(err(&bad).contains("panic_threshold"));
        let bad = text.replace("[200, 204]", "[200, 2040]");
        assert!(err(&bad).contains("expect_status"));
        let bad = CLASSIC.replace("balance = \"roundrobin\"", "balance = \"fastest\"");
        assert!(err(&bad).contains("fastest"), "{}", err(&bad));
    }

    #[test]
    fn hash_keys_are_read_and_bad_ones_named() {
        let with = |key: &str| {
            CLASSIC.replace(
                "balance = \"roundrobin\"",
                &format!("balance = \"hash\"\nhash_key = \"{key}\""),
            )
        };
        for (text, want) in [
            ("source", HashKey::Source),
            ("uri", HashKey::Uri),
            ("header:X-User", HashKey::Header("x-user".into())),
            ("cookie:SID", HashKey::Cookie("SID".into())),
        ] {
            let c = Config::from_toml(&with(text)).unwrap();
            assert_eq!(c.backends[0].balance, Balance::Hash);
            assert_eq!(c.backends[0].hash_key.as_ref(), Some(&want));
            assert_eq!(want.to_string().to_lowercase(), text.to_lowercase());
        }
        for (key, says) in [
            ("url", "unknown value \"url\""),
            ("header:", "needs a name"),
            ("header:a b", "needs a name"),
            ("header:a(b", "not a valid header name"),
            ("cookie:", "needs a name"),
        ] {
            let e = err(&with(key));
            assert!(e.contains("hash_key") && e.contains(says), "{key}: {e}");
        }
        let e = err(&CLASSIC.replace("balance = \"roundrobin\"", "balance = \"hash\""));
        assert!(e.contains("hash_key") && e.contains("required"), "{e}");
        let e = err(&CLASSIC.replace(
            "balance = \"roundrobin\"",
            "balance = \"leastconn\"\nhash_key = \"uri\"",
        ));
        assert!(e.contains("only applies to balance = \"hash\""), "{e}");
    }

    #[test]
    fn a_tcp_frontend_hashes_only_the_source() {
        let tcp = |key: &str| {
            format!(
                "[[frontend]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nbackend = \"b\"\n\
                 [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\nbalance = \"hash\"\nhash_key = \"{key}\"\n"
            )
        };
        assert!(Config::from_toml(&tcp("source")).is_ok());
        for key in ["uri", "header:x-user", "cookie:sid"] {
            let e = err(&tcp(key));
            assert!(
                e.contains(&format!("hash_key = \"{key}\"")) && e.contains("\"raw\""),
                "{e}"
            );
        }
    }

    #[test]
    fn static_only_config_needs_no_etcd() {
        let c = Config::from_toml(
            r#"
[[frontend]]
name = "f"
bind = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
servers = ["127.0.0.1:1", "[::1]:8080", "web-3:80"]
"#,
        )
        .unwrap();
        assert!(c.etcd.is_none());
        assert_eq!(c.backends[0].check.kind, CheckType::Tcp);
        assert_eq!(c.threads, None);
    }

    #[test]
    fn durations_longer_than_a_year_are_refused() {
        let e = err(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n[backend.check]\n\
             inter = \"300000000000years\"\n",
        );
        assert!(e.contains("365 days") && e.contains("inter"), "{e}");
        let ok = Config::from_toml(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n[backend.check]\n\
             inter = \"1day\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn global_problems_are_reported_together() {
        let e = Config::from_toml(
            "[global]\nthreads = 0\nupgrade_socket = \"\"\n[[frontend]]\nname = \"f\"\n\
             bind = \"127.0.0.1:0\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\n\
             servers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("global.threads"), "{e}");
        assert!(e.contains("global.upgrade_socket"), "{e}");
    }

    #[test]
    fn threads_must_be_positive() {
        let with = |n: &str| {
            format!(
                "[global]\nthreads = {n}\n[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\n\
                 backend = \"b\"\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n"
            )
        };
        assert_eq!(Config::from_toml(&with("1")).unwrap().threads, Some(1));
        assert!(
            err(&with("0")).contains("global.threads"),
            "{}",
            err(&with("0"))
        );
    }
    #[test]
    fn upgrade_socket_has_a_default_and_is_checked() {
        let with = |global: &str| {
            format!(
                "[global]\n{global}\n[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\n\
                 backend = \"b\"\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n"
            )
        };
        assert_eq!(
            Config::from_toml(&with("")).unwrap().upgrade_socket,
            PathBuf::from(DEFAULT_UPGRADE_SOCKET)
        );
        assert_eq!(
            Config::from_toml(&with("upgrade_socket = \"/tmp/sy/u.sock\""))
                .unwrap()
                .upgrade_socket,
            PathBuf::from("/tmp/sy/u.sock")
        );
        let long = format!("upgrade_socket = \"/{}\"", "x".repeat(120));
        for bad in ["upgrade_socket = \"\"", long.as_str()] {
            let e = err(&with(bad));
            assert!(e.contains("global.upgrade_socket"), "{bad}: {e}");
        }
    }
}
