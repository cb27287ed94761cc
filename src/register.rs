//! The register sidekick (`switchyard register`): keeps one `KEY=VALUE` alive in etcd for the
//! backend it runs next to, as the classic stack's `etcdctl set --ttl` loop did, and removes it on
//! SIGTERM/SIGINT. With `--api v2` the key carries a TTL and is refreshed every TTL/3 with
//! `refresh=true&prevExist=true` (no value sent, no watcher woken), and re-created when a refresh
//! finds it gone; with `--api v3` it is put with a lease that is kept alive every TTL/3 through
//! the JSON gateway, and a lost lease is replaced. An optional local check (TCP connect or HTTP
//! GET, with rise/fall) gates the registration: the key is in etcd only while the service passes.
//!
//! It owns argument validation ([`RegisterArgs::validate`]), the heartbeat loop ([`run`]), the
//! local check and the cleanup, and the process around them ([`main`]: runtime, signals, exit
//! code); README, "The register sidekick". The etcd calls (PUT with a TTL, refresh and delete on
//! v2; lease grant, put, keepalive and revoke on v3), endpoint rotation and backoff come from
//! [`crate::etcd`]; what a valid value is, from [`crate::value::parse_value`].

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{
    DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTER, DEFAULT_CHECK_RISE, DEFAULT_CHECK_TIMEOUT,
    DEFAULT_ETCD_API, DEFAULT_ETCD_BACKOFF_MAX, DEFAULT_ETCD_BACKOFF_MIN,
    DEFAULT_ETCD_REQUEST_TIMEOUT,
};
use crate::etcd::v2::{self, Deleted, Refresh};
use crate::etcd::v3::{self, Lease, Revoked};
use crate::etcd::{Backoff, Endpoints, EtcdError};
use crate::value::parse_value;

/// The etcd reconnect backoff of discovery's defaults (`[etcd] backoff_min`, `backoff_max`):
/// 100 ms doubling to 5 s, with jitter.
const BACKOFF_MIN: Duration = DEFAULT_ETCD_BACKOFF_MIN;
const BACKOFF_MAX: Duration = DEFAULT_ETCD_BACKOFF_MAX;
/// One etcd request gets the heartbeat period (TTL/3) within these bounds, so a member that
/// accepts TCP but never answers is left in time to refresh through another one. The upper
/// bound is discovery's default `[etcd] request_timeout`.
const REQUEST_TIMEOUT_MIN: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT_MAX: Duration = DEFAULT_ETCD_REQUEST_TIMEOUT;
/// Removing the registration on shutdown gets this long in all; a dead etcd must not hold the
/// exit (the TTL removes the key anyway).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// HAProxy's check timeout default (as `[backend.check] timeout`); shortened to the interval
/// when that is shorter.
const CHECK_TIMEOUT_DEFAULT: Duration = DEFAULT_CHECK_TIMEOUT;
/// How long to sleep when nothing is due until the local check changes its mind.
const IDLE: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Arguments and configuration.

/// `switchyard register` flags as typed. Everything is kept as text so that [`validate`]
/// (not clap) reports every bad value in one line naming the flag.
///
/// [`validate`]: RegisterArgs::validate
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// etcd client URLs, comma-separated or repeated (required)
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: Vec<String>,
    /// v2: a key with a TTL, refreshed; v3: a key with a lease, kept alive (JSON gateway)
    #[arg(long, value_name = "v2|v3", default_value = DEFAULT_ETCD_API.as_str())]
    pub api: String,
    /// The key to keep alive, e.g. /testservice/backend/1 (required)
    #[arg(long)]
    pub key: Option<String>,
    /// host:port, or {"addr":"host:port","weight":N,"drain":false} (required)
    #[arg(long)]
    pub value: Option<String>,
    /// Time to live, e.g. 30s; whole seconds, rounded up (required)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Register only while GET URL answers 2xx/3xx
    #[arg(long, value_name = "URL")]
    pub check_url: Option<String>,
    /// Register only while HOST:PORT accepts TCP connections
    #[arg(long, value_name = "HOST:PORT")]
    pub check_tcp: Option<String>,
    /// Time between two checks
    #[arg(long, value_name = "DURATION",
        default_value_t = humantime::format_duration(DEFAULT_CHECK_INTER).to_string())]
    pub check_interval: String,
    /// Deadline of one check [default: 1s, or the interval if shorter]
    #[arg(long, value_name = "DURATION")]
    pub check_timeout: Option<String>,
    /// Consecutive passing checks before registering again
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECK_RISE.to_string())]
    pub rise: String,
    /// Consecutive failing checks before deregistering
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECK_FALL.to_string())]
    pub fall: String,
}

/// A bad `switchyard register` argument; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{arg}: {detail}")]
    Invalid { arg: &'static str, detail: String },
    #[error("--check-url and --check-tcp exclude each other; give one")]
    BothChecks,
}

fn invalid(arg: &'static str, detail: impl Into<String>) -> ArgError {
    ArgError::Invalid {
        arg,
        detail: detail.into(),
    }
}

/// Which etcd API keeps the key alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

/// The local check that gates the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET url`; 2xx and 3xx pass (redirects are not followed).
    Http(String),
    /// A TCP connect to `host:port`.
    Tcp(String),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Http(url) => write!(f, "http {url}"),
            Check::Tcp(addr) => write!(f, "tcp {addr}"),
        }
    }
}

/// Validated `switchyard register` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// Base URLs without a trailing slash.
    pub endpoints: Vec<String>,
    pub api: Api,
    pub key: String,
    /// Written as given (it already passed `parse_value`).
    pub value: String,
    /// Whole seconds, at least 1 (etcd v3 grants at least 2).
    pub ttl_secs: u64,
    pub check: Option<Check>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl RegisterConfig {
    /// The deadline of one etcd request: the heartbeat period, within bounds.
    pub fn request_timeout(&self) -> Duration {
        heartbeat_period(self.ttl_secs).clamp(REQUEST_TIMEOUT_MIN, REQUEST_TIMEOUT_MAX)
    }
}

/// A third of the TTL: two heartbeats can be lost before the key expires.
fn heartbeat_period(ttl_secs: u64) -> Duration {
    Duration::from_millis(ttl_secs.max(1).saturating_mul(1000) / 3)
}

impl RegisterArgs {
    /// Checks every flag and builds the typed config; the first problem found is returned.
    pub fn validate(&self) -> Result<RegisterConfig, ArgError> {
        let mut endpoints = Vec::new();
        for raw in self.etcd.iter().flat_map(|s| s.split(',')) {
            endpoints.push(endpoint(raw.trim())?);
        }
        if endpoints.is_empty() {
            return Err(ArgError::Missing("--etcd"));
        }
        let api = match self.api.trim() {
            "v2" => Api::V2,
            "v3" => Api::V3,
            other => return Err(invalid("--api", format!("{other:?}: expected v2 or v3"))),
        };
        let key = self.key.as_deref().ok_or(ArgError::Missing("--key"))?;
        check_key(key)?;
        let value = self.value.as_deref().ok_or(ArgError::Missing("--value"))?;
        parse_value(value).map_err(|e| {
            invalid(
                "--value",
                format!("{e} (expected host:port or {{\"addr\":\"host:port\",...}})"),
            )
        })?;
        let raw_ttl = self.ttl.as_deref().ok_or(ArgError::Missing("--ttl"))?;
        let ttl = duration("--ttl", raw_ttl)?;
        if ttl < Duration::from_secs(1) {
            return Err(invalid(
                "--ttl",
                format!("{raw_ttl:?}: must be at least 1s"),
            ));
        }
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let check = match (&self.check_url, &self.check_tcp) {
            (Some(_), Some(_)) => return Err(ArgError::BothChecks),
            (Some(url), None) => Some(Check::Http(check_url(url)?)),
            (None, Some(addr)) => Some(Check::Tcp(check_addr(addr)?)),
            (None, None) => None,
        };
        let check_interval = positive("--check-interval", &self.check_interval)?;
        let check_timeout = match &self.check_timeout {
            Some(raw) => positive("--check-timeout", raw)?,
            None => CHECK_TIMEOUT_DEFAULT.min(check_interval),
        };
        Ok(RegisterConfig {
            endpoints,
            api,
            key: key.to_string(),
            value: value.to_string(),
            ttl_secs,
            check,
            check_interval,
            check_timeout,
            rise: count("--rise", &self.rise)?,
            fall: count("--fall", &self.fall)?,
        })
    }
}

/// An etcd base URL: `http://host[:port]`, no path, returned without a trailing slash.
fn endpoint(raw: &str) -> Result<String, ArgError> {
    if raw.is_empty() {
        return Err(invalid("--etcd", "empty URL in the list"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| invalid("--etcd", format!("{raw:?}: {e}")))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "--etcd",
            format!("{raw:?}: only http:// endpoints are supported"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("--etcd", format!("{raw:?}: no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "--etcd",
            format!("{raw:?}: give the base URL only (http://host:port)"),
        ));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// A key is an absolute path naming a leaf: `/dir/name`. Characters that would change the URL
/// (`?`, `#`, `%`) or be mangled in it (white space, control characters) are refused.
fn check_key(key: &str) -> Result<(), ArgError> {
    if !key.starts_with('/') {
        return Err(invalid("--key", format!("{key:?}: must start with '/'")));
    }
    if key.ends_with('/') {
        return Err(invalid(
            "--key",
            format!("{key:?}: must name a key, not a directory (no trailing '/')"),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "--key",
            format!("{key:?}: character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

fn check_url(raw: &str) -> Result<String, ArgError> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| invalid("--check-url", format!("{raw:?}: {e}")))?;
    if url.scheme() != "http" || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "--check-url",
            format!("{raw:?}: expected http://host:port/path"),
        ));
    }
    Ok(raw.to_string())
}

/// `host:port` (or `[v6]:port`) with a port in 1-65535.
fn check_addr(raw: &str) -> Result<String, ArgError> {
    let bad = || {
        invalid(
            "--check-tcp",
            format!("{raw:?}: expected host:port with a port in 1-65535"),
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !host.is_empty() => Ok(raw.to_string()),
        _ => Err(bad()),
    }
}

fn duration(arg: &'static str, raw: &str) -> Result<Duration, ArgError> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| invalid(arg, format!("{raw:?}: {e} (e.g. 500ms, 2s, 1m)")))
}

fn positive(arg: &'static str, raw: &str) -> Result<Duration, ArgError> {
    let d = duration(arg, raw)?;
    if d.is_zero() {
        return Err(invalid(arg, format!("{raw:?}: must be more than 0")));
    }
    Ok(d)
}

fn count(arg: &'static str, raw: &str) -> Result<u32, ArgError> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            arg,
            format!("{raw:?}: expected a whole number >= 1"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The process.

/// Runs the sidekick as a process: a runtime, SIGTERM/SIGINT to stop, [`run`], the exit code
/// (0 after a clean stop, 2 on a runtime failure). Logging is set up by the caller.
pub fn main(cfg: RegisterConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        if let Err(e) = spawn_signals(cancel.clone()) {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
        match run(cfg, cancel).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::from(2)
            }
        }
    })
}

/// SIGTERM or SIGINT cancels `run`, which then removes the registration.
fn spawn_signals(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        cancel.cancel();
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The heartbeat loop.

/// Keeps `cfg.key = cfg.value` in etcd until `cancel` fires, then removes it (bounded by
/// [`CLEANUP_TIMEOUT`]) and returns. etcd errors never end it: each one rotates to the next
/// endpoint and retries after a backoff.
pub async fn run(cfg: RegisterConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    // reqwest is built with rustls and no default provider; idempotent.
    crate::tls::install_provider();
    info!(key = %cfg.key, value = %cfg.value, ttl_secs = cfg.ttl_secs, api = ?cfg.api,
        endpoints = ?cfg.endpoints, check = ?cfg.check.as_ref().map(|c| c.to_string()),
        "register sidekick starting");
    // Without a check the service counts as healthy; with one, registration waits for a pass.
    let (health_tx, mut healthy) = watch::channel(cfg.check.is_none());
    let checker_cancel = cancel.child_token();
    let checker = cfg.check.clone().map(|check| {
        let rf = RiseFall::new(cfg.rise, cfg.fall);
        tokio::spawn(check_loop(
            check,
            cfg.check_interval,
            cfg.check_timeout,
            rf,
            health_tx.clone(),
            checker_cancel.clone(),
        ))
    });
    let mut sk = Sidekick::new(cfg);
    let mut wake = Instant::now();
    loop {
        // `health_tx` lives until the end, so `changed` never fails.
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = healthy.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let want = *healthy.borrow_and_update();
        // NOTE: an etcd request in flight is dropped on cancel; `dirty` remembers that it may
        // have landed, so the cleanup below still removes it.
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            next = sk.step(want) => next,
        };
        wake = Instant::now() + next;
    }
    if sk.dirty {
        info!(key = %sk.cfg.key, "stopping: removing the registration");
        if tokio::time::timeout(CLEANUP_TIMEOUT, sk.deregister_until_done())
            .await
            .is_err()
        {
            warn!(key = %sk.cfg.key, timeout = ?CLEANUP_TIMEOUT,
                "could not remove the registration in time; it expires with its TTL");
        }
    } else {
        info!(key = %sk.cfg.key, "stopping: nothing registered");
    }
    checker_cancel.cancel();
    if let Some(task) = checker
        && let Err(e) = task.await
    {
        warn!("health check task ended abnormally: {e}");
    }
    drop(health_tx);
    Ok(())
}

/// What each API needs to remember between heartbeats.
enum Store {
    /// The key carries its own TTL; nothing to remember.
    V2,
    /// The lease the key is put with, once granted.
    V3 { lease: Option<Lease> },
}

/// The registration's state and the etcd connection it goes through.
struct Sidekick {
    cfg: RegisterConfig,
    http: reqwest::Client,
    endpoints: Endpoints,
    backoff: Backoff,
    store: Store,
    /// The key is in etcd and being kept alive.
    registered: bool,
    /// Something of ours may be in etcd (a registration was attempted and not confirmed
    /// removed): remove it when unhealthy or stopping.
    dirty: bool,
    /// In a streak of failed etcd requests: the first is logged at warn, the rest at debug.
    failing: bool,
}

impl Sidekick {
    fn new(cfg: RegisterConfig) -> Sidekick {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(cfg.request_timeout())
            .tcp_nodelay(true)
            .pool_idle_timeout(crate::etcd::POOL_IDLE_TIMEOUT)
            .build()
            .expect("a client with these options always builds");
        let store = match cfg.api {
            Api::V2 => Store::V2,
            Api::V3 => Store::V3 { lease: None },
        };
        Sidekick {
            endpoints: Endpoints::new(cfg.endpoints.clone()),
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            cfg,
            http,
            store,
            registered: false,
            dirty: false,
            failing: false,
        }
    }

    /// Does what is due for the wanted state (register, heartbeat or deregister) and returns
    /// how long to wait before the next step: the heartbeat period, the backoff after an error,
    /// or [`IDLE`] when only a health change can make something due.
    async fn step(&mut self, healthy: bool) -> Duration {
        let (what, result) = match (healthy, self.registered, self.dirty) {
            (true, false, _) => ("register", self.register().await),
            (true, true, _) => ("heartbeat", self.heartbeat().await),
            (false, _, true) => {
                let r = self.deregister().await;
                if r.is_ok() {
                    info!(key = %self.cfg.key, "deregistered while the local service is unhealthy");
                }
                ("deregister", r)
            }
            (false, _, false) => return IDLE,
        };
        match result {
            Ok(()) => {
                self.succeeded();
                if self.registered { self.period() } else { IDLE }
            }
            Err(e) => self.failed(what, &e),
        }
    }

    fn period(&self) -> Duration {
        match self.store {
            Store::V3 { lease: Some(l) } => heartbeat_period(l.ttl),
            _ => heartbeat_period(self.cfg.ttl_secs),
        }
    }

    fn succeeded(&mut self) {
        if self.failing {
            info!(endpoint = %self.endpoints.current(), "etcd answers again");
            self.failing = false;
        }
        self.backoff.reset();
    }

    /// Logs the error, moves to the next endpoint and returns the backoff delay.
    fn failed(&mut self, what: &str, e: &EtcdError) -> Duration {
        let delay = self.backoff.next_delay();
        let e = error_chain(e);
        if self.failing {
            debug!(error = %e, retry_in = ?delay, "{what} failed");
        } else {
            warn!(error = %e, retry_in = ?delay,
                "{what} failed; retrying on the next endpoint until etcd answers");
            self.failing = true;
        }
        self.endpoints.rotate();
        delay
    }

    /// Removes the registration, retrying on other endpoints until it is done (the caller
    /// bounds the time).
    async fn deregister_until_done(&mut self) {
        self.backoff.reset();
        loop {
            match self.deregister().await {
                Ok(()) => return,
                Err(e) => {
                    let delay = self.failed("deregister", &e);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Puts the key in etcd: v2 writes it with its TTL; v3 grants a lease (unless one is held)
    /// and puts the key with it.
    async fn register(&mut self) -> Result<(), EtcdError> {
        let was_dirty = self.dirty;
        self.dirty = true;
        let result = self.register_once().await;
        if let Err(EtcdError::Transport { source, .. }) = &result
            && source.is_connect()
        {
            // Nothing was sent: nothing new can have landed.
            self.dirty = was_dirty || matches!(self.store, Store::V3 { lease: Some(_) });
        }
        result
    }

    /// One attempt of [`Sidekick::register`].
    async fn register_once(&mut self) -> Result<(), EtcdError> {
        match self.store {
            Store::V2 => self.v2_create().await?,
            Store::V3 { lease } => {
                let mut lease = lease;
                // A held lease may have died meanwhile: then grant another, once.
                let mut attempts = 2;
                loop {
                    let l = match lease {
                        Some(l) => l,
                        None => {
                            let l = self.v3_grant().await?;
                            self.store = Store::V3 { lease: Some(l) };
                            l
                        }
                    };
                    if self.v3_put(l.id).await? {
                        break;
                    }
                    attempts -= 1;
                    self.store = Store::V3 { lease: None };
                    lease = None;
                    if attempts == 0 {
                        return Err(EtcdError::Decode {
                            endpoint: self.endpoints.current().to_string(),
                            detail: "fresh lease not found on put".into(),
                        });
                    }
                }
            }
        }
        self.registered = true;
        let lease = match self.store {
            Store::V3 { lease: Some(l) } => Some(l.id),
            _ => None,
        };
        info!(key = %self.cfg.key, value = %self.cfg.value, endpoint = %self.endpoints.current(),
            lease = ?lease, "registered");
        Ok(())
    }

    /// Keeps the registration alive; re-registers at once when it is gone (expired, deleted,
    /// lease revoked).
    async fn heartbeat(&mut self) -> Result<(), EtcdError> {
        match self.store {
            Store::V2 => match self.v2_refresh().await? {
                Refresh::Alive => debug!(key = %self.cfg.key, "refreshed"),
                Refresh::Gone => {
                    info!(key = %self.cfg.key, "key gone (expired or deleted); re-creating it");
                    self.registered = false;
                    self.register().await?;
                }
            },
            Store::V3 { lease: None } => {
                self.registered = false;
                self.register().await?;
            }
            Store::V3 { lease: Some(l) } => match self.v3_keepalive(l.id).await? {
                Some(ttl) => {
                    debug!(key = %self.cfg.key, lease = l.id, ttl, "lease kept alive");
                    self.store = Store::V3 {
                        lease: Some(Lease { id: l.id, ttl }),
                    };
                }
                None => {
                    info!(key = %self.cfg.key, lease = l.id,
                        "lease gone (expired or revoked); granting a new one");
                    self.store = Store::V3 { lease: None };
                    self.registered = false;
                    self.register().await?;
                }
            },
        }
        Ok(())
    }

    /// Removes the registration: v2 deletes the key if it still holds our value; v3 revokes the
    /// lease, which deletes the key.
    async fn deregister(&mut self) -> Result<(), EtcdError> {
        match self.store {
            Store::V2 => self.v2_delete().await?,
            Store::V3 { lease: Some(l) } => {
                self.v3_revoke(l.id).await?;
                self.store = Store::V3 { lease: None };
            }
            Store::V3 { lease: None } => {}
        }
        self.registered = false;
        self.dirty = false;
        Ok(())
    }

    // --- wire: one etcd call on the current endpoint, bounded by the request timeout ---

    /// v2: `PUT` of the key with its value and TTL (a `set`).
    async fn v2_create(&self) -> Result<(), EtcdError> {
        let c = &self.cfg;
        v2::put_with_ttl(
            &self.http,
            self.endpoints.current(),
            &c.key,
            &c.value,
            c.ttl_secs,
            c.request_timeout(),
        )
        .await
    }

    /// v2: resets the TTL, keeps the value, wakes no watcher.
    async fn v2_refresh(&self) -> Result<Refresh, EtcdError> {
        let c = &self.cfg;
        v2::refresh(
            &self.http,
            self.endpoints.current(),
            &c.key,
            c.ttl_secs,
            c.request_timeout(),
        )
        .await
    }

    /// v2: deletes the key if it still holds our value; a newer value from another instance is
    /// kept.
    async fn v2_delete(&self) -> Result<(), EtcdError> {
        let c = &self.cfg;
        let deleted = v2::delete_if(
            &self.http,
            self.endpoints.current(),
            &c.key,
            &c.value,
            c.request_timeout(),
        )
        .await?;
        match deleted {
            Deleted::Deleted => info!(key = %c.key, "key deleted"),
            Deleted::AlreadyGone => info!(key = %c.key, "key already gone"),
            Deleted::OtherValue => {
                info!(key = %c.key, "key holds another value (another instance?); left alone")
            }
        }
        Ok(())
    }

    /// v3: a lease of the TTL (etcd may grant another).
    async fn v3_grant(&self) -> Result<Lease, EtcdError> {
        let c = &self.cfg;
        let lease = v3::grant(
            &self.http,
            self.endpoints.current(),
            c.ttl_secs,
            c.request_timeout(),
        )
        .await?;
        if lease.ttl != c.ttl_secs {
            info!(
                asked = c.ttl_secs,
                granted = lease.ttl,
                "etcd granted another TTL"
            );
        }
        Ok(lease)
    }

    /// v3: puts the key with the lease. `Ok(false)`: the lease is gone.
    async fn v3_put(&self, lease: i64) -> Result<bool, EtcdError> {
        let c = &self.cfg;
        v3::put_with_lease(
            &self.http,
            self.endpoints.current(),
            &c.key,
            &c.value,
            lease,
            c.request_timeout(),
        )
        .await
    }

    /// v3: the lease's TTL, or `None` when it is gone.
    async fn v3_keepalive(&self, id: i64) -> Result<Option<u64>, EtcdError> {
        v3::keepalive(
            &self.http,
            self.endpoints.current(),
            id,
            self.cfg.request_timeout(),
        )
        .await
    }

    /// v3: revokes the lease, which deletes the key.
    async fn v3_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let revoked = v3::revoke(
            &self.http,
            self.endpoints.current(),
            id,
            self.cfg.request_timeout(),
        )
        .await?;
        match revoked {
            Revoked::Revoked => info!(key = %self.cfg.key, lease = id, "lease revoked"),
            Revoked::AlreadyGone => info!(key = %self.cfg.key, lease = id, "lease already gone"),
        }
        Ok(())
    }
}

/// The error and its sources ("error sending request: ...: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The local check.

/// Consecutive-result counter. The first result decides the initial state (so a healthy
/// service registers after one pass); after that `fall` failures in a row take it down and
/// `rise` passes in a row bring it back.
#[derive(Debug)]
struct RiseFall {
    rise: u32,
    fall: u32,
    up: Option<bool>,
    streak: u32,
}

impl RiseFall {
    fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise,
            fall,
            up: None,
            streak: 0,
        }
    }

    /// Records one result; returns the new state when it changed (or was first decided).
    fn record(&mut self, ok: bool) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(ok);
                return Some(ok);
            }
            Some(up) if up == ok => self.streak = 0,
            Some(_) => self.streak += 1,
        }
        let need = if ok { self.rise } else { self.fall };
        if self.streak >= need {
            self.up = Some(ok);
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// Runs the check every `interval` and publishes the healthy state on `tx`.
async fn check_loop(
    check: Check,
    interval: Duration,
    timeout: Duration,
    mut rf: RiseFall,
    tx: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client with these options always builds");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe(&check, &http, timeout) => r,
        };
        if let Err(why) = &result {
            debug!(check = %check, reason = %why, "check failed");
        }
        match (rf.record(result.is_ok()), &result) {
            (Some(true), _) => info!(check = %check, "local service passes its check: registering"),
            (Some(false), Err(why)) => {
                info!(check = %check, reason = %why, "local service fails its check: not registered")
            }
            _ => continue,
        }
        tx.send_replace(rf.up == Some(true));
    }
}

/// One check; `Err` carries the reason for the log.
async fn probe(check: &Check, http: &reqwest::Client, timeout: Duration) -> Result<(), String> {
    match check {
        Check::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            }
        }
        Check::Http(url) => match tokio::time::timeout(timeout, http.get(url).send()).await {
            Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
            Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status().as_u16())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RegisterArgs,
    }

    fn validate(extra: &[&str]) -> Result<RegisterConfig, ArgError> {
        let mut argv = vec!["register"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .expect("clap accepts the flags")
            .args
            .validate()
    }

    const BASE: [&str; 8] = [
        "--etcd",
        "http://127.0.0.1:2379",
        "--key",
        "/svc/backend/1",
        "--value",
        "127.0.0.1:8080",
        "--ttl",
        "30s",
    ];

    fn with(extra: &[&str]) -> Result<RegisterConfig, ArgError> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        validate(&v)
    }

    /// `BASE` with the flag `name` replaced by `value`, or dropped when `value` is `None`.
    fn replace(name: &str, value: Option<&str>) -> Result<RegisterConfig, ArgError> {
        let mut v = Vec::new();
        for pair in BASE.chunks(2) {
            if pair[0] == name {
                if let Some(x) = value {
                    v.extend([pair[0], x]);
                }
            } else {
                v.extend_from_slice(pair);
            }
        }
        validate(&v)
    }

    fn arg_of(e: ArgError) -> String {
        e.to_string()
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.api, Api::V2);
        assert_eq!(c.ttl_secs, 30);
        assert_eq!(c.check, None);
        assert_eq!(c.check_interval, Duration::from_secs(2));
        assert_eq!(c.check_timeout, Duration::from_secs(1));
        assert_eq!((c.rise, c.fall), (2, 3));
        assert_eq!(c.request_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn endpoints_split_trim_and_repeat() {
        let c = with(&[
            "--etcd",
            "http://127.0.0.1:1/, http://127.0.0.1:2",
            "--api",
            "v3",
        ])
        .unwrap();
        assert_eq!(
            c.endpoints,
            [
                "http://127.0.0.1:2379",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
        assert_eq!(c.api, Api::V3);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_refuses_under_one() {
        assert_eq!(replace("--ttl", Some("1500ms")).unwrap().ttl_secs, 2);
        assert_eq!(replace("--ttl", Some("1s")).unwrap().ttl_secs, 1);
        assert_eq!(replace("--ttl", Some("2m")).unwrap().ttl_secs, 120);
        let c = replace("--ttl", Some("2s")).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(666));
        assert!(arg_of(replace("--ttl", Some("999ms")).unwrap_err()).starts_with("--ttl: "));
        assert!(arg_of(replace("--ttl", Some("0s")).unwrap_err()).starts_with("--ttl: "));
        assert!(arg_of(replace("--ttl", Some("30")).unwrap_err()).starts_with("--ttl: "));
    }

    #[test]
    fn missing_flags_are_named() {
        for flag in ["--etcd", "--key", "--value", "--ttl"] {
            assert_eq!(
                replace(flag, None).unwrap_err(),
                ArgError::Missing(match flag {
                    "--etcd" => "--etcd",
                    "--key" => "--key",
                    "--value" => "--value",
                    _ => "--ttl",
                })
            );
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&str, &str)] = &[
            ("--etcd", "127.0.0.1:2379"),
            ("--etcd", "https://127.0.0.1:2379"),
            ("--etcd", "http://127.0.0.1:2379/v2"),
            ("--etcd", "http://127.0.0.1:2379,"),
            ("--etcd", "not a url"),
            ("--key", "svc/backend/1"),
            ("--key", "/svc/backend/"),
            ("--key", "/svc/a b"),
            ("--key", "/svc/a?b"),
            ("--value", "garbage"),
            ("--value", "127.0.0.1:0"),
            ("--value", ""),
            ("--value", r#"{"addr":"nope"}"#),
            ("--ttl", "fast"),
        ];
        for (flag, bad) in cases {
            let e = replace(flag, Some(bad)).expect_err(bad);
            assert!(
                e.to_string().starts_with(&format!("{flag}: ")),
                "{flag} {bad:?}: {e}"
            );
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        let extra: &[(&str, &str)] = &[
            ("--api", "v4"),
            ("--check-url", "ftp://127.0.0.1/"),
            ("--check-url", "nope"),
            ("--check-tcp", "127.0.0.1"),
            ("--check-tcp", "127.0.0.1:0"),
            ("--check-tcp", ":80"),
            ("--check-interval", "0s"),
            ("--check-interval", "soon"),
            ("--check-timeout", "x"),
            ("--rise", "0"),
            ("--fall", "1.5"),
            ("--fall", "many"),
        ];
        for (flag, bad) in extra {
            let e = with(&[flag, bad]).expect_err(bad);
            assert!(
                e.to_string().starts_with(&format!("{flag}: ")),
                "{flag} {bad:?}: {e}"
            );
        }
    }

    #[test]
    fn json_values_and_checks_are_accepted() {
        let c = replace(
            "--value",
            Some(r#"{"addr":"127.0.0.1:8080","weight":2,"drain":false}"#),
        )
        .unwrap();
        assert!(c.value.starts_with('{'));
        let c = with(&[
            "--check-tcp",
            "[::1]:8080",
            "--check-interval",
            "200ms",
            "--rise",
            "1",
            "--fall",
            "5",
        ])
        .unwrap();
        assert_eq!(c.check, Some(Check::Tcp("[::1]:8080".into())));
        assert_eq!(c.check_timeout, Duration::from_millis(200));
        assert_eq!((c.rise, c.fall), (1, 5));
        let c = with(&["--check-url", "http://127.0.0.1:8080/healthz"]).unwrap();
        assert_eq!(
            c.check,
            Some(Check::Http("http://127.0.0.1:8080/healthz".into()))
        );
    }

    #[test]
    fn both_checks_are_refused() {
        let e = with(&[
            "--check-url",
            "http://127.0.0.1:1/",
            "--check-tcp",
            "127.0.0.1:1",
        ])
        .unwrap_err();
        assert_eq!(e, ArgError::BothChecks);
        assert!(e.to_string().contains("--check-url") && e.to_string().contains("--check-tcp"));
    }

    #[test]
    fn rise_fall_first_result_decides_then_streaks() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(true), Some(true));
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None); // streak broken
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));

        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
    }

    #[test]
    fn heartbeat_is_a_third_of_the_ttl() {
        assert_eq!(heartbeat_period(30), Duration::from_secs(10));
        assert_eq!(heartbeat_period(2), Duration::from_millis(666));
        assert_eq!(heartbeat_period(0), Duration::from_millis(333));
    }
}
