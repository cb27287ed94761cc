//! Configuration: the TOML file format (contract in DESIGN.md), its validation into typed
//! structs, and the errors that name the offending key. `check`, startup and SIGHUP all go
//! through [`Config::from_toml`]; file IO is kept apart in [`Config::load`].
//!
//! File structs carry `deny_unknown_fields`, so a misspelt key is an error naming that key,
//! never silently ignored. Defaults follow HAProxy's where DESIGN.md does not fix them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    pub fn as_str(self) -> &'static str {
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

/// `[log] access`: the access log's line format, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    #[default]
    Off,
    Json,
    Logfmt,
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

// ---------------------------------------------------------------------------------------------
// File structs: exactly what the TOML may contain.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    global: FileGlobal,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    log: LogConfig,
    etcd: Option<FileEtcd>,
    #[serde(default)]
    frontend: Vec<FileFrontend>,
    #[serde(default)]
    backend: Vec<FileBackend>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGlobal {
    #[serde(default, deserialize_with = "bounded::deserialize")]
    shutdown_grace: Option<Duration>,
    threads: Option<usize>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEtcd {
    #[serde(default)]
    endpoints: Vec<String>,
    api: Option<EtcdApi>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    poll_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    request_timeout: Option<Duration>,
    snapshot_file: Option<std::path::PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    backoff_min: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    backoff_max: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFrontend {
    name: String,
    bind: String,
    mode: Option<Mode>,
    backend: String,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    idle_timeout: Option<Duration>,
    max_header_size: Option<usize>,
    maxconn: Option<usize>,
    accept_proxy: Option<bool>,
    allow_connect: Option<bool>,
    tls: Option<FileFrontendTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFrontendTls {
    #[serde(default)]
    certs: Vec<FileCertPair>,
    alpn: Option<Vec<String>>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    handshake_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertPair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackendTls {
    ca: Option<PathBuf>,
    sni: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    name: String,
    etcd_prefix: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    balance: Option<Balance>,
    check: Option<FileCheck>,
    passive: Option<FilePassive>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    slowstart: Option<Duration>,
    panic_threshold: Option<u32>,
    retry_budget_percent: Option<u32>,
    retry_budget_min: Option<u32>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    response_timeout: Option<Duration>,
    retries: Option<u32>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pool_idle_timeout: Option<Duration>,
    protocol: Option<Protocol>,
    send_proxy: Option<ProxyVersion>,
    tls: Option<FileBackendTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    #[serde(rename = "type")]
    kind: Option<CheckType>,
    path: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    inter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    fastinter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    downinter: Option<Duration>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    expect_status: Option<Vec<u16>>,
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePassive {
    error_limit: Option<u32>,
    consecutive_5xx: Option<u32>,
    max_ejected_percent: Option<u32>,
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
    pub admin_listen: SocketAddr,
    /// Bearer token required by the admin API's write endpoints and `/api/v1/config`.
    pub admin_token: Option<String>,
    /// The file this config was loaded from (for reloads asked through the admin API).
    pub path: Option<PathBuf>,
    pub log: LogConfig,
    pub etcd: Option<EtcdConfig>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
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
    pub backend: String,
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
    fn default() -> Self {
        // HAProxy's defaults: inter 2s, rise 2, fall 3, fastinter and downinter = inter;
        // timeout is HAProxy's `timeout check`.
        Check {
            kind: CheckType::Tcp,
            path: "/".to_string(),
            inter: Duration::from_secs(2),
            fastinter: Duration::from_secs(2),
            downinter: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
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
            error_limit: 1,
            consecutive_5xx: 0,
            max_ejected_percent: 50,
        }
    }
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

impl Config {
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

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        validate(file)
    }

    /// The backend a frontend routes to, by name.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("{value:?} is not an ip:port address")))
}

/// Durations in the file: humantime strings, at most [`bounded::MAX`]. Every duration ends up
/// added to an `Instant` (a deadline, a timer), and one of centuries would overflow it there.
mod bounded {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<humantime_serde::Serde<Duration>> = Option::deserialize(d)?;
        match v.map(|s| s.into_inner()) {
            Some(x) if x > MAX => Err(D::Error::custom(format!(
                "{} is longer than the limit of 365 days",
                humantime::format_duration(x)
            ))),
            v => Ok(v),
        }
    }
}

/// HAProxy's own default `maxconn` is of this order (it derives it from the open-files limit).
const DEFAULT_MAXCONN: usize = 10_000;

fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn percent(key: &str, v: u32) -> Result<u32, ConfigError> {
    if v > 100 {
        return Err(invalid(key, format!("{v} is not a percentage (0-100)")));
    }
    Ok(v)
}

fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let shutdown_grace = file
        .global
        .shutdown_grace
        .unwrap_or(Duration::from_secs(30));
    let threads = file.global.threads;
    if threads.is_some_and(|t| t == 0 || t > 1024) {
        return Err(invalid("global.threads", "must be between 1 and 1024"));
    }
    let admin_listen = parse_listen(
        "admin.listen",
        file.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN),
    )?;
    let admin_token = file.admin.token;
    if admin_token.as_deref().is_some_and(|t| t.len() < 16) {
        return Err(invalid("admin.token", "must be at least 16 characters"));
    }

    let etcd = match file.etcd {
        None => None,
        Some(e) => {
            let endpoints = if e.endpoints.is_empty() {
                vec![DEFAULT_ETCD.to_string()]
            } else {
                e.endpoints
            };
            let mut clean = Vec::with_capacity(endpoints.len());
            for (i, ep) in endpoints.iter().enumerate() {
                let key = format!("etcd.endpoints[{i}]");
                let url = reqwest::Url::parse(ep)
                    .map_err(|err| invalid(&key, format!("{ep:?} is not a URL: {err}")))?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err(invalid(&key, format!("{ep:?} must start with http://")));
                }
                clean.push(ep.trim_end_matches('/').to_string());
            }
            let backoff_min = positive(
                "etcd.backoff_min",
                e.backoff_min.unwrap_or(Duration::from_millis(100)),
            )?;
            let backoff_max = e.backoff_max.unwrap_or(Duration::from_secs(5));
            if backoff_max < backoff_min {
                return Err(invalid(
                    "etcd.backoff_max",
                    "must not be smaller than etcd.backoff_min",
                ));
            }
            let api = e.api.unwrap_or(EtcdApi::V2);
            if e.cert.is_some() != e.key.is_some() {
                return Err(invalid("etcd.cert", "cert and key go together"));
            }
            if e.username.is_some() != e.password.is_some() {
                return Err(invalid(
                    "etcd.username",
                    "username and password go together",
                ));
            }
            Some(EtcdConfig {
                endpoints: clean,
                api,
                poll_timeout: positive(
                    "etcd.poll_timeout",
                    e.poll_timeout.unwrap_or(Duration::from_secs(60)),
                )?,
                request_timeout: positive(
                    "etcd.request_timeout",
                    e.request_timeout.unwrap_or(Duration::from_secs(5)),
                )?,
                backoff_min,
                backoff_max,
                snapshot_file: e.snapshot_file,
                ca: e.ca,
                cert: e.cert,
                key: e.key,
                username: e.username,
                password: e.password,
            })
        }
    };

    let mut backends = Vec::with_capacity(file.backend.len());
    let mut names = HashSet::new();
    for (i, b) in file.backend.into_iter().enumerate() {
        let key = format!("backend[{i}]");
        if b.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "must not be empty"));
        }
        let key = format!("backend {:?}", b.name);
        if !names.insert(b.name.clone()) {
            return Err(invalid(format!("{key}.name"), "duplicate backend name"));
        }
        if let Some(p) = &b.etcd_prefix {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("{key}.etcd_prefix"),
                    format!("{p:?} must start with '/'"),
                ));
            }
            if etcd.is_none() {
                return Err(invalid(
                    format!("{key}.etcd_prefix"),
                    "needs an [etcd] section with endpoints",
                ));
            }
        }
        if b.etcd_prefix.is_none() && b.servers.is_empty() {
            return Err(invalid(
                &key,
                "needs etcd_prefix, servers, or both (it has neither)",
            ));
        }
        for (j, s) in b.servers.iter().enumerate() {
            if let Err(e) = crate::value::parse_addr(s) {
                return Err(invalid(format!("{key}.servers[{j}]"), e.to_string()));
            }
        }
        let check = match b.check {
            None => Check::default(),
            Some(c) => {
                let d = Check::default();
                let inter = positive(&format!("{key}.check.inter"), c.inter.unwrap_or(d.inter))?;
                let check = Check {
                    kind: c.kind.unwrap_or(d.kind),
                    path: c.path.unwrap_or(d.path),
                    inter,
                    fastinter: positive(
                        &format!("{key}.check.fastinter"),
                        c.fastinter.unwrap_or(inter),
                    )?,
                    downinter: positive(
                        &format!("{key}.check.downinter"),
                        c.downinter.unwrap_or(inter),
                    )?,
                    timeout: positive(
                        &format!("{key}.check.timeout"),
                        c.timeout.unwrap_or(d.timeout),
                    )?,
                    rise: c.rise.unwrap_or(d.rise),
                    fall: c.fall.unwrap_or(d.fall),
                    expect_status: c.expect_status.unwrap_or_default(),
                    host: c.host,
                };
                if let Some(bad) = check
                    .expect_status
                    .iter()
                    .find(|s| !(100..=599).contains(*s))
                {
                    return Err(invalid(
                        format!("{key}.check.expect_status"),
                        format!("{bad} is not an HTTP status"),
                    ));
                }
                if check
                    .host
                    .as_deref()
                    .is_some_and(|h| h.is_empty() || http::HeaderValue::from_str(h).is_err())
                {
                    return Err(invalid(
                        format!("{key}.check.host"),
                        "not a valid Host header",
                    ));
                }
                if check.rise == 0 {
                    return Err(invalid(format!("{key}.check.rise"), "must be at least 1"));
                }
                if check.fall == 0 {
                    return Err(invalid(format!("{key}.check.fall"), "must be at least 1"));
                }
                if !check.path.starts_with('/') {
                    return Err(invalid(
                        format!("{key}.check.path"),
                        format!("{:?} must start with '/'", check.path),
                    ));
                }
                check
            }
        };
        let passive = match b.passive {
            None => Passive::default(),
            Some(p) => {
                let d = Passive::default();
                Passive {
                    error_limit: p.error_limit.unwrap_or(d.error_limit),
                    consecutive_5xx: p.consecutive_5xx.unwrap_or(d.consecutive_5xx),
                    max_ejected_percent: percent(
                        &format!("{key}.passive.max_ejected_percent"),
                        p.max_ejected_percent.unwrap_or(d.max_ejected_percent),
                    )?,
                }
            }
        };
        if let Some(d) = b.slowstart {
            positive(&format!("{key}.slowstart"), d)?;
        }
        let tls = match b.tls {
            None => None,
            Some(t) => {
                if t.cert.is_some() != t.key.is_some() {
                    return Err(invalid(
                        format!("{key}.tls.cert"),
                        "cert and key go together",
                    ));
                }
                Some(BackendTls {
                    ca: t.ca,
                    sni: t.sni,
                    client: t.cert.zip(t.key).map(|(cert, key)| CertPair { cert, key }),
                    verify: t.verify.unwrap_or(true),
                })
            }
        };
        backends.push(Backend {
            protocol: b.protocol.unwrap_or(Protocol::Http1),
            send_proxy: b.send_proxy.unwrap_or(ProxyVersion::None),
            tls,
            passive,
            slowstart: b.slowstart,
            panic_threshold: percent(
                &format!("{key}.panic_threshold"),
                b.panic_threshold.unwrap_or(0),
            )?,
            retry_budget_percent: percent(
                &format!("{key}.retry_budget_percent"),
                b.retry_budget_percent.unwrap_or(20),
            )?,
            retry_budget_min: b.retry_budget_min.unwrap_or(3),
            connect_timeout: positive(
                &format!("{key}.connect_timeout"),
                b.connect_timeout.unwrap_or(Duration::from_secs(2)),
            )?,
            response_timeout: positive(
                &format!("{key}.response_timeout"),
                b.response_timeout.unwrap_or(Duration::from_secs(60)),
            )?,
            retries: b.retries.unwrap_or(2),
            drain_timeout: b.drain_timeout.unwrap_or(Duration::from_secs(30)),
            pool_idle_timeout: positive(
                &format!("{key}.pool_idle_timeout"),
                b.pool_idle_timeout.unwrap_or(Duration::from_secs(60)),
            )?,
            name: b.name,
            etcd_prefix: b.etcd_prefix.map(|p| p.trim_end_matches('/').to_string()),
            servers: b.servers,
            balance: b.balance.unwrap_or(Balance::Roundrobin),
            check,
        });
    }

    let mut frontends = Vec::with_capacity(file.frontend.len());
    let mut binds = HashSet::new();
    let mut fnames = HashSet::new();
    for (i, f) in file.frontend.into_iter().enumerate() {
        if f.name.is_empty() {
            return Err(invalid(format!("frontend[{i}].name"), "must not be empty"));
        }
        let key = format!("frontend {:?}", f.name);
        if !fnames.insert(f.name.clone()) {
            return Err(invalid(format!("{key}.name"), "duplicate frontend name"));
        }
        let bind = parse_listen(&format!("{key}.bind"), &f.bind)?;
        // Port 0 (tests) asks the OS for a fresh port each time, so it cannot collide.
        if bind.port() != 0 && (!binds.insert(bind) || bind == admin_listen) {
            return Err(invalid(
                format!("{key}.bind"),
                format!("{bind} is already used by another listener"),
            ));
        }
        let mode = f.mode.unwrap_or(Mode::Http);
        let tls = match f.tls {
            None => None,
            Some(t) => {
                if t.certs.is_empty() {
                    return Err(invalid(
                        format!("{key}.tls.certs"),
                        "needs at least one { cert, key } pair",
                    ));
                }
                let alpn = t.alpn.unwrap_or_else(|| match mode {
                    Mode::Http => vec!["h2".to_string(), "http/1.1".to_string()],
                    Mode::Tcp => Vec::new(),
                });
                if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
                    return Err(invalid(
                        format!("{key}.tls.alpn"),
                        format!("{bad:?} is not a protocol name"),
                    ));
                }
                Some(FrontendTls {
                    certs: t
                        .certs
                        .into_iter()
                        .map(|c| CertPair {
                            cert: c.cert,
                            key: c.key,
                        })
                        .collect(),
                    alpn,
                    handshake_timeout: positive(
                        &format!("{key}.tls.handshake_timeout"),
                        t.handshake_timeout.unwrap_or(Duration::from_secs(10)),
                    )?,
                })
            }
        };
        if !backends.iter().any(|b| b.name == f.backend) {
            return Err(invalid(
                format!("{key}.backend"),
                format!("names no backend: {:?}", f.backend),
            ));
        }
        let max_header_size = f.max_header_size.unwrap_or(64 * 1024);
        if max_header_size < 1024 {
            return Err(invalid(
                format!("{key}.max_header_size"),
                "must be at least 1024 bytes",
            ));
        }
        frontends.push(Frontend {
            header_timeout: positive(
                &format!("{key}.header_timeout"),
                f.header_timeout.unwrap_or(Duration::from_secs(10)),
            )?,
            idle_timeout: positive(
                &format!("{key}.idle_timeout"),
                f.idle_timeout.unwrap_or(Duration::from_secs(60)),
            )?,
            max_header_size,
            maxconn: match f.maxconn.unwrap_or(DEFAULT_MAXCONN) {
                0 => return Err(invalid(format!("{key}.maxconn"), "must be at least 1")),
                n => n,
            },
            accept_proxy: f.accept_proxy.unwrap_or(false),
            allow_connect: match (f.allow_connect, mode) {
                (Some(true), Mode::Tcp) => {
                    return Err(invalid(
                        format!("{key}.allow_connect"),
                        "is for mode = \"http\" frontends",
                    ));
                }
                (v, _) => v.unwrap_or(false),
            },
            tls,
            name: f.name,
            bind,
            mode,
            backend: f.backend,
        });
    }

    if let Some(path) = &file.log.access_file {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(invalid(
                "log.access_file",
                format!("{}: its directory does not exist", path.display()),
            ));
        }
    }

    Ok(Config {
        shutdown_grace,
        threads,
        admin_listen,
        admin_token,
        path: None,
        log: file.log,
        etcd,
        frontends,
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: &str = r#"
[admin]
listen = "127.0.0.1:9090"

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
    fn duplicate_bind_is_rejected() {
        let text = format!(
            "{CLASSIC}\n[[frontend]]\nname = \"b\"\nbind = \"0.0.0.0:80\"\nbackend = \"testservice\"\n"
        );
        let e = err(&text);
        assert!(e.contains("frontend \"b\".bind"), "{e}");
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
}
