//! The register sidekick (`switchyard register`): keeps one `KEY=VALUE` alive in etcd for the
//! backend it runs next to, as the classic stack's `etcdctl set --ttl` loop did, and removes it on
//! SIGTERM/SIGINT. With `--api v2` the key carries a TTL and is refreshed every TTL/3 with
//! `refresh=true&prevExist=true` (no value sent, no watcher woken), and re-created when a refresh
//! finds it gone; with `--api v3` it is put with a lease that is kept alive every TTL/3 through
//! the JSON gateway, and a lost lease is replaced. An optional local check (TCP connect or HTTP
//! GET, with rise/fall) gates the registration: the key is in etcd only while the service passes.
//!
//! It owns the heartbeat loop ([`run`]) and the cleanup, and the process around them ([`main`]:
//! runtime, signals, exit code); README, "The register sidekick". Argument validation
//! ([`RegisterArgs::validate`]) is in `args.rs`, the local check in `check.rs`. The etcd calls (PUT with a TTL, refresh and delete on
//! v2; lease grant, put, keepalive and revoke on v3), endpoint rotation and backoff come from
//! [`crate::etcd`]; what a valid value is, from [`crate::value::parse_value`].

mod args;
mod check;

pub use args::{Api, ArgError, Check, RegisterArgs, RegisterConfig};

use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{DEFAULT_ETCD_BACKOFF_MAX, DEFAULT_ETCD_BACKOFF_MIN};
use crate::etcd::v2::{self, Deleted, Refresh};
use crate::etcd::v3::{self, Lease, Revoked};
use crate::etcd::{Backoff, Endpoints, EtcdError};
use args::heartbeat_period;
use check::{RiseFall, check_loop};

/// The etcd reconnect backoff of discovery's defaults (`[etcd] backoff_min`, `backoff_max`):
/// 100 ms doubling to 5 s, with jitter.
const BACKOFF_MIN: Duration = DEFAULT_ETCD_BACKOFF_MIN;
const BACKOFF_MAX: Duration = DEFAULT_ETCD_BACKOFF_MAX;
/// Removing the registration on shutdown gets this long in all; a dead etcd must not hold the
/// exit (the TTL removes the key anyway).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to sleep when nothing is due until the local check changes its mind.
const IDLE: Duration = Duration::from_secs(3600);

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
