//! The one published view of the world: an immutable [`Snapshot`] of every backend and its
//! servers, behind one `ArcSwap`. The data plane `load()`s it per request; the discovery task and
//! config reloads replace it whole through [`Publisher`].
//!
//! Membership, weight and drain state are published together in the snapshot. Health and
//! in-flight counts are atomics in a [`ServerState`] that a server keeps across publishes: a
//! server whose identity (name, address, source) survives an update is the same `Arc<Server>`
//! (or, if only its weight or drain flag changed, a new `Server` sharing the old state).
//! This module does not watch etcd, probe servers or pick one; see `discovery`, `health` and
//! `balancer`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::balancer::BackendRuntime;
use crate::config::{self, Config};

/// Where a server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Etcd,
    Static,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Etcd => "etcd",
            Source::Static => "static",
        }
    }
}

/// A server as discovery (or the static config) describes it, before it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The key's last path segment (confd's `base`), or the address for static servers.
    pub name: String,
    /// `host:port` as written (`127.0.0.1:8080`, `[::1]:8080`, `web-3:80`).
    pub addr: String,
    pub weight: u32,
    pub drain: bool,
    pub source: Source,
}

/// Health and load of one server; shared by every `Server` object with the same identity.
#[derive(Debug)]
pub struct ServerState {
    up: AtomicBool,
    /// Requests or connections in flight.
    active: AtomicUsize,
    /// When `up` last flipped, as milliseconds since the process epoch (for the admin API).
    changed_ms: AtomicU64,
    /// When the server last came back up (ms), for slowstart; 0 = it never went down.
    up_since_ms: AtomicU64,
    /// When it started draining (ms, at least 1); 0 = not draining.
    draining_since_ms: AtomicU64,
    /// The operator's word (runtime admin API): 0 ready, 1 drain, 2 maint. See [`AdminState`].
    admin: AtomicU8,
    /// Requests answered through this server, and how many of them were 5xx (stats page).
    requests: AtomicU64,
    errors: AtomicU64,
    /// Consecutive failures seen on live traffic (connect error, reset, timeout).
    pub(crate) live_errors: AtomicU32,
    /// Consecutive 5xx answers seen on live traffic.
    pub(crate) consecutive_5xx: AtomicU32,
    /// Consecutive check results in the current direction (rise/fall), owned by `health`.
    pub(crate) streak: Mutex<crate::health::Streak>,
    /// Cancelled when a drain runs past its timeout: every upstream connection to the server
    /// watches it and closes, which ends the requests still in flight.
    kill: Mutex<crate::signal::Signal>,
    /// Idle keep-alive connections to this server; they close when the server is gone.
    pool: OnceLock<Box<dyn ConnPool>>,
    /// `switchyard_requests_total` handles of this server, by frontend and status code.
    pub(crate) request_counters: crate::metrics::HandleCache<(Arc<str>, u16), metrics::Counter>,
}

/// What the data plane keeps for each server: its upstream connection pool (`http::pool`),
/// owned by the server object so that it dies with it. This module only clears it when the
/// server drains; the type is the data plane's, reached through `Server::pool`, so that the
/// snapshot does not depend on the data plane.
pub trait ConnPool: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Closes every idle connection.
    fn clear(&self);
}

impl ServerState {
    /// A new server's state; `now_ms` is [`uptime_ms`], read once per publish rather than once
    /// per server (10,000 clock reads were a twentieth of an initial load).
    fn new(now_ms: u64) -> Self {
        ServerState {
            // Registration means ready: a new server takes traffic at once and is checked at once.
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(now_ms),
            up_since_ms: AtomicU64::new(0),
            draining_since_ms: AtomicU64::new(0),
            admin: AtomicU8::new(AdminState::Ready as u8),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            live_errors: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            streak: Mutex::new(Default::default()),
            kill: Mutex::new(crate::signal::Signal::new()),
            pool: Default::default(),
            request_counters: Default::default(),
        }
    }
}

#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    pub drain: bool,
    pub source: Source,
    state: Arc<ServerState>,
}

impl Server {
    pub fn new(spec: ServerSpec) -> Server {
        Server {
            name: spec.name,
            addr: spec.addr,
            weight: spec.weight,
            drain: spec.drain,
            source: spec.source,
            state: Arc::new(ServerState::new(uptime_ms())),
        }
    }

    fn with_state(spec: &ServerSpec, state: Arc<ServerState>) -> Server {
        Server {
            name: spec.name.clone(),
            addr: spec.addr.clone(),
            weight: spec.weight,
            drain: spec.drain,
            source: spec.source,
            state,
        }
    }

    /// Whether this server is exactly `spec` (identity, weight and drain flag).
    fn is(&self, spec: &ServerSpec) -> bool {
        self.same_identity(spec) && self.weight == spec.weight && self.drain == spec.drain
    }

    fn same_identity(&self, spec: &ServerSpec) -> bool {
        self.name == spec.name && self.addr == spec.addr && self.source == spec.source
    }

    /// Healthy, not draining, not in maintenance and with a weight: may take new requests.
    #[inline]
    pub fn available(&self) -> bool {
        self.weight > 0
            && self.state.up.load(Ordering::Relaxed)
            && !self.is_draining()
            && self.admin() != AdminState::Maint
    }

    /// Removed from etcd, marked `"drain": true`, or drained by the operator: takes no new
    /// requests.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.drain || self.state.draining_since_ms.load(Ordering::Relaxed) != 0
    }

    /// What the operator set through the runtime admin API.
    pub fn admin(&self) -> AdminState {
        match self.state.admin.load(Ordering::Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    fn set_admin(&self, a: AdminState) {
        self.state.admin.store(a as u8, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Relaxed)
    }

    /// Sets health; returns true when this call flipped it.
    pub fn set_up(&self, up: bool) -> bool {
        let flipped = self.state.up.swap(up, Ordering::Relaxed) != up;
        if flipped {
            let now = uptime_ms().max(1);
            self.state.changed_ms.store(now, Ordering::Relaxed);
            if up {
                self.state.up_since_ms.store(now, Ordering::Relaxed);
                self.state.live_errors.store(0, Ordering::Relaxed);
                self.state.consecutive_5xx.store(0, Ordering::Relaxed);
            }
        }
        flipped
    }

    /// The share of its weight a server gets during `slowstart` after coming back up: from 5%
    /// to 100% linearly. 1.0 when not ramping.
    pub fn ramp(&self, slowstart: Option<Duration>) -> f64 {
        let Some(ss) = slowstart else { return 1.0 };
        let since = self.state.up_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let elapsed = uptime_ms().saturating_sub(since) as f64 / 1000.0;
        (elapsed / ss.as_secs_f64()).clamp(0.05, 1.0)
    }

    /// Milliseconds since the health state last changed.
    pub fn state_age_ms(&self) -> u64 {
        uptime_ms().saturating_sub(self.state.changed_ms.load(Ordering::Relaxed))
    }

    /// The data plane's connection pool for this server (`P`, made on first use).
    pub fn pool<P: ConnPool + Default>(&self) -> &P {
        let pool: &dyn ConnPool = &**self.state.pool.get_or_init(|| Box::new(P::default()));
        (pool as &dyn std::any::Any)
            .downcast_ref::<P>()
            .expect("a server's pool is of one type: the data plane's")
    }

    /// Closes the idle pooled connections, if there is a pool.
    fn clear_pool(&self) {
        if let Some(pool) = self.state.pool.get() {
            pool.clear();
        }
    }

    pub(crate) fn state(&self) -> &ServerState {
        &self.state
    }

    /// Counts one answered request: for the stats page (5xx count as errors) and in
    /// `switchyard_requests_total`, whose handle is looked up once per frontend and code.
    pub fn count_request(&self, frontend: &Arc<str>, backend: &str, status: u16) {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.state.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.state.request_counters.with(
            |(f, code)| *code == status && **f == **frontend,
            || {
                let c = metrics::counter!(crate::metrics::REQUESTS,
                    "frontend" => frontend.to_string(), "backend" => backend.to_string(),
                    "server" => self.addr.clone(), "code" => status.to_string());
                ((Arc::clone(frontend), status), c)
            },
            |c| c.increment(1),
        );
    }

    /// (requests, errors) answered through this server so far.
    pub fn request_counts(&self) -> (u64, u64) {
        (
            self.state.requests.load(Ordering::Relaxed),
            self.state.errors.load(Ordering::Relaxed),
        )
    }

    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.state))
    }

    /// The signal a new upstream connection watches (see `ServerState::kill`).
    pub fn kill_token(&self) -> crate::signal::Signal {
        self.state
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts draining (once) and closes the idle pooled connections.
    fn start_draining(&self) {
        let now = uptime_ms().max(1);
        if self
            .state
            .draining_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.clear_pool();
        }
    }

    /// Back in service (a `"drain": true` flag was lifted): a fresh kill token if the old one
    /// fired, so new connections are not born dead.
    fn stop_draining(&self) {
        // Read first: every publish passes every server through here, and a read of a
        // non-draining server is cheaper than a write.
        if self.state.draining_since_ms.load(Ordering::Relaxed) != 0
            && self.state.draining_since_ms.swap(0, Ordering::Relaxed) != 0
        {
            let mut kill = self.state.kill.lock().unwrap_or_else(|e| e.into_inner());
            if kill.is_fired() {
                *kill = crate::signal::Signal::new();
            }
        }
    }

    /// Whether a drain started more than `timeout` ago.
    fn drain_expired(&self, timeout: Duration) -> bool {
        let since = self.state.draining_since_ms.load(Ordering::Relaxed);
        since != 0 && uptime_ms().saturating_sub(since) >= timeout.as_millis() as u64
    }

    /// Ends whatever is still in flight to this server.
    fn kill(&self) {
        self.state
            .kill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fire();
        self.clear_pool();
    }

    /// `up`, `down` or `draining`, as the admin API shows it (maintenance shows as `down`,
    /// with `admin: "maint"` beside it).
    pub fn state_name(&self) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if self.admin() == AdminState::Maint {
            "down"
        } else if self.is_up() {
            "up"
        } else {
            "down"
        }
    }
}

/// A server's administrative state, as HAProxy's `set server state ready|drain|maint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Normal: health decides.
    Ready = 0,
    /// No new requests; in-flight ones finish (no drain timeout: the operator decides).
    Drain = 1,
    /// Out of rotation entirely ("disable"); health checks go on.
    Maint = 2,
}

impl AdminState {
    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" | "enable" | "undrain" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" | "disable" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

pub struct ActiveGuard(Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend as published: its settings, its servers, the weighted schedule and the runtime
/// state (round-robin counter, retry budget) that outlives snapshots.
#[derive(Debug)]
pub struct BackendSet {
    pub config: Arc<config::Backend>,
    /// Static servers first (config order), then discovered ones sorted by name and address.
    pub servers: Vec<Arc<Server>>,
    /// Smooth weighted round-robin order, as indices into `servers`; empty when every server
    /// has the same weight (then the order is simply `servers`).
    pub schedule: Vec<u32>,
    /// Removed servers still finishing requests in flight: listed as draining, never picked.
    pub draining: Vec<Arc<Server>>,
    /// Lives outside the snapshot: carried into every new snapshot so rotation does not restart
    /// at 0 on each membership change, and the retry budget sees all requests.
    pub runtime: Arc<BackendRuntime>,
}

impl BackendSet {
    fn new(
        config: Arc<config::Backend>,
        servers: Vec<Arc<Server>>,
        draining: Vec<Arc<Server>>,
        runtime: Arc<BackendRuntime>,
    ) -> BackendSet {
        BackendSet {
            schedule: crate::balancer::schedule(&servers),
            config,
            servers,
            draining,
            runtime,
        }
    }

    /// The same set with another draining list (the schedule is reused).
    fn with_draining(&self, draining: Vec<Arc<Server>>) -> BackendSet {
        BackendSet {
            config: Arc::clone(&self.config),
            servers: self.servers.clone(),
            schedule: self.schedule.clone(),
            draining,
            runtime: Arc::clone(&self.runtime),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// The immutable view the data plane reads. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub backends: Vec<BackendSet>,
    /// Frontend name -> index into `backends`, for the listener tasks.
    pub routes: Vec<(String, usize)>,
    /// True once every etcd prefix has been listed once (or there are none).
    pub ready: bool,
}

impl Snapshot {
    pub fn backend(&self, name: &str) -> Option<&BackendSet> {
        self.backends.iter().find(|b| b.name() == name)
    }

    pub fn route(&self, frontend: &str) -> Option<&BackendSet> {
        self.backends.get(self.route_index(frontend)?)
    }

    /// The position in `backends` of the frontend's backend.
    pub fn route_index(&self, frontend: &str) -> Option<usize> {
        let (_, idx) = self.routes.iter().find(|(f, _)| f == frontend)?;
        (*idx < self.backends.len()).then_some(*idx)
    }
}

/// The single writer side of the snapshot. Publishing takes a mutex so that concurrent
/// discovery watchers, reloads and the drain sweep never lose each other's update; readers
/// never take it.
pub struct Publisher {
    shared: Arc<ArcSwap<Snapshot>>,
    write: Mutex<()>,
    /// Operator overrides by (backend, server name): applied to every server object with that
    /// name, so they survive snapshot updates and a key that expires and comes back.
    admin: Mutex<HashMap<(String, String), AdminState>>,
}

impl Publisher {
    pub fn new(config: &Config) -> Publisher {
        let p = Publisher {
            shared: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            write: Mutex::new(()),
            admin: Mutex::new(HashMap::new()),
        };
        p.apply_config(config);
        p
    }

    /// The handle readers `load()` from.
    pub fn shared(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.shared)
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.load()
    }

    /// Rebuilds the snapshot for a new config: backends and routes from the config, static
    /// servers from the config, discovered servers kept for backends whose prefix is unchanged.
    pub fn apply_config(&self, config: &Config) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        let mut backends = Vec::with_capacity(config.backends.len());
        for b in &config.backends {
            let prev = old.backend(&b.name);
            let discovered: Vec<ServerSpec> = match prev {
                Some(p) if p.config.etcd_prefix == b.etcd_prefix => p
                    .servers
                    .iter()
                    .filter(|s| s.source == Source::Etcd)
                    .map(|s| spec_of(s))
                    .collect(),
                _ => Vec::new(),
            };
            let statics = static_specs(b);
            let specs = merge(&statics, &discovered);
            let (set, fresh) = next_set(Arc::new(b.clone()), prev, &specs);
            self.apply_admin(set.name(), fresh.iter().map(|&i| &set.servers[i]));
            backends.push(set);
        }
        // Servers of backends that are gone drain too; nothing lists them any more.
        for b in &old.backends {
            if config.backend(b.name()).is_none() {
                b.servers.iter().for_each(|s| s.start_draining());
            }
        }
        let routes = config
            .frontends
            .iter()
            .map(|f| {
                let idx = config
                    .backends
                    .iter()
                    .position(|b| b.name == f.backend)
                    .expect("validated: frontend names an existing backend");
                (f.name.clone(), idx)
            })
            .collect();
        let has_prefix = config.backends.iter().any(|b| b.etcd_prefix.is_some());
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes,
            ready: old.ready || !has_prefix,
        }));
    }

    /// Replaces the discovered servers of one backend. Publishes nothing (and returns false)
    /// when the result equals what is already published. The specs are only read: a server
    /// that is already published costs no copy.
    pub fn publish_discovered<'a>(
        &self,
        backend: &str,
        discovered: impl IntoIterator<Item = &'a ServerSpec>,
    ) -> bool {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        let Some(pos) = old.backends.iter().position(|b| b.name() == backend) else {
            return false;
        };
        let cur = &old.backends[pos];
        let statics = static_specs(&cur.config);
        let specs = merge(&statics, discovered);
        let unchanged = specs.len() == cur.servers.len()
            && specs.iter().zip(&cur.servers).all(|(s, srv)| srv.is(s));
        if unchanged {
            return false;
        }
        let backends = old
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i == pos {
                    let (set, fresh) = next_set(Arc::clone(&b.config), Some(b), &specs);
                    self.apply_admin(set.name(), fresh.iter().map(|&i| &set.servers[i]));
                    set
                } else {
                    b.with_draining(b.draining.clone())
                }
            })
            .collect();
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes: old.routes.clone(),
            ready: old.ready,
        }));
        true
    }

    /// Sets a server's administrative state (runtime admin API). `server` is its name or its
    /// address. Returns the server, or `None` when the backend or server is unknown.
    pub fn set_admin_state(
        &self,
        backend: &str,
        server: &str,
        state: AdminState,
    ) -> Option<Arc<Server>> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let snap = self.shared.load_full();
        let set = snap.backend(backend)?;
        let found = Arc::clone(
            set.servers
                .iter()
                .find(|s| s.name == server || s.addr == server)?,
        );
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let key = (backend.to_string(), found.name.clone());
        if state == AdminState::Ready {
            admin.remove(&key);
        } else {
            admin.insert(key, state);
        }
        drop(admin);
        self.apply_admin(set.name(), set.servers.iter());
        Some(found)
    }

    /// Pushes the operator overrides of `backend` onto `servers`: all of the backend's servers
    /// when an override changed, only the new server objects when a new version is published
    /// (the others got theirs when first published or when the override was set, under the
    /// same write lock).
    fn apply_admin<'a>(&self, backend: &str, servers: impl Iterator<Item = &'a Arc<Server>>) {
        let admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        // This backend's overrides, looked up by borrowed name (no allocation per server).
        let mine: HashMap<&str, AdminState> = admin
            .iter()
            .filter(|((b, _), _)| b == backend)
            .map(|((_, name), state)| (name.as_str(), *state))
            .collect();
        for s in servers {
            let want = mine
                .get(s.name.as_str())
                .copied()
                .unwrap_or(AdminState::Ready);
            if s.admin() == want {
                continue;
            }
            s.set_admin(want);
            match want {
                AdminState::Drain => {
                    s.start_draining();
                }
                AdminState::Ready | AdminState::Maint => {
                    if !s.drain {
                        s.stop_draining();
                    }
                }
            }
            info!(backend, server = %s.addr, name = %s.name, state = want.as_str(),
                "administrative state set");
        }
    }

    /// Marks discovery as having loaded its first listing of every prefix.
    pub fn set_ready(&self) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        if old.ready {
            return;
        }
        self.shared.store(Arc::new(Snapshot {
            backends: old
                .backends
                .iter()
                .map(|b| b.with_draining(b.draining.clone()))
                .collect(),
            routes: old.routes.clone(),
            ready: true,
        }));
    }

    /// Ends drains: a removed server leaves the draining list once its last request finished;
    /// one past `drain_timeout` has what is still in flight cut off. Run periodically.
    pub fn sweep_draining(&self) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        let mut changed = false;
        let backends: Vec<BackendSet> = old
            .backends
            .iter()
            .map(|b| {
                let timeout = b.config.drain_timeout;
                for s in b.servers.iter().filter(|s| s.drain) {
                    if s.active() > 0 && s.drain_expired(timeout) {
                        warn!(backend = %b.name(), server = %s.addr, active = s.active(),
                            "drain timeout: closing the requests still in flight");
                        s.kill();
                    }
                }
                let keep: Vec<Arc<Server>> = b
                    .draining
                    .iter()
                    .filter(|s| {
                        if s.active() == 0 {
                            info!(backend = %b.name(), server = %s.addr, "drained");
                            return false;
                        }
                        if s.drain_expired(timeout) {
                            warn!(backend = %b.name(), server = %s.addr, active = s.active(),
                                "drain timeout: closing the requests still in flight");
                            s.kill();
                            return false;
                        }
                        true
                    })
                    .cloned()
                    .collect();
                changed |= keep.len() != b.draining.len();
                b.with_draining(keep)
            })
            .collect();
        if changed {
            self.shared.store(Arc::new(Snapshot {
                backends,
                routes: old.routes.clone(),
                ready: old.ready,
            }));
        }
    }
}

/// The next version of a backend: survivors reused, removed servers draining (listed while they
/// still have requests in flight), drain flags applied. Also returns the indices (into the new
/// `servers`) of the server objects that are new in this version.
fn next_set(
    config: Arc<config::Backend>,
    prev: Option<&BackendSet>,
    specs: &[&ServerSpec],
) -> (BackendSet, Vec<usize>) {
    let prev_servers = prev.map(|p| p.servers.as_slice()).unwrap_or(&[]);
    let (servers, kept, fresh) = reuse(prev_servers, specs);
    // Only the new objects: one carried over as is already follows this rule (it was applied
    // when the object was first published, and `apply_admin` keeps it on every override).
    // Not touching the others keeps one change at 10,000 servers from reading 10,000 states.
    for s in fresh.iter().map(|&i| &servers[i]) {
        if s.drain || s.admin() == AdminState::Drain {
            s.start_draining();
        } else {
            s.stop_draining();
        }
    }
    let mut draining: Vec<Arc<Server>> = prev.map(|p| p.draining.clone()).unwrap_or_default();
    for (old, _) in prev_servers.iter().zip(&kept).filter(|(_, kept)| !**kept) {
        old.start_draining();
        // A departed server must not keep reporting "up" (alerts sum this gauge).
        metrics::gauge!(crate::metrics::SERVER_UP, "backend" => config.name.clone(), "server" => old.addr.clone())
            .set(0.0);
        if old.active() > 0 {
            info!(backend = %config.name, server = %old.addr, active = old.active(),
                "server removed: draining the requests in flight");
            draining.push(Arc::clone(old));
        }
    }
    let runtime = prev.map(|p| Arc::clone(&p.runtime)).unwrap_or_default();
    (BackendSet::new(config, servers, draining, runtime), fresh)
}

fn spec_of(s: &Server) -> ServerSpec {
    ServerSpec {
        name: s.name.clone(),
        addr: s.addr.clone(),
        weight: s.weight,
        drain: s.drain,
        source: s.source,
    }
}

/// A backend's static servers, in config order.
fn static_specs(b: &config::Backend) -> Vec<ServerSpec> {
    b.servers
        .iter()
        .map(|addr| ServerSpec {
            name: addr.clone(),
            addr: addr.clone(),
            weight: 1,
            drain: false,
            source: Source::Static,
        })
        .collect()
}

/// Static servers (config order) followed by the discovered ones sorted by [`Identity`]: the
/// layout of every published server list, which [`reuse`] relies on.
fn merge<'s, 'd: 's>(
    statics: &'s [ServerSpec],
    discovered: impl IntoIterator<Item = &'d ServerSpec>,
) -> Vec<&'s ServerSpec> {
    let mut specs: Vec<&'s ServerSpec> = statics.iter().collect();
    let first_discovered = specs.len();
    specs.extend(discovered.into_iter().map(|s| -> &'s ServerSpec { s }));
    // Usually already in order (the mirror lists keys sorted, a reload passes the published
    // order on): then this is one comparison per server.
    specs[first_discovered..].sort_by(|a, b| identity_of_spec(a).cmp(&identity_of_spec(b)));
    specs
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A server's identity: name, address, source. Discovered servers are published in this order.
type Identity<'a> = (&'a str, &'a str, Source);

fn identity_of_spec(s: &ServerSpec) -> Identity<'_> {
    (&s.name, &s.addr, s.source)
}

fn identity_of(s: &Server) -> Identity<'_> {
    (&s.name, &s.addr, s.source)
}

/// Builds the new server list, reusing the `Arc<Server>` (or at least its state) of every
/// server whose identity survives. Also says which previous servers were kept, and which
/// entries of the new list are new objects (new servers, or a new weight or drain flag).
///
/// Both lists are laid out as [`merge`] lays them out: static servers first, then discovered ones
/// sorted by [`Identity`]. The static ones (few, in config order, which a reload may change) are
/// matched by a hash of their identity; the discovered ones by one merge walk over both sorted
/// lists, so one change at 10,000 servers costs one comparison per server, no hashing.
fn reuse(prev: &[Arc<Server>], specs: &[&ServerSpec]) -> (Vec<Arc<Server>>, Vec<bool>, Vec<usize>) {
    let prev_static = prev
        .iter()
        .take_while(|s| s.source == Source::Static)
        .count();
    let new_static = specs
        .iter()
        .take_while(|s| s.source == Source::Static)
        .count();
    let by_identity: FastMap<Identity, usize> = prev[..prev_static]
        .iter()
        .enumerate()
        .map(|(i, s)| (identity_of(s), i))
        .collect();
    // Which previous servers live on (the others start draining).
    let mut kept = vec![false; prev.len()];
    let mut servers = Vec::with_capacity(specs.len());
    let mut fresh = Vec::new();
    let now_ms = uptime_ms();
    // The next previous discovered server the walk has not passed yet.
    let mut next = prev_static;
    for (k, &spec) in specs.iter().enumerate() {
        let found = if k < new_static {
            by_identity.get(&identity_of_spec(spec)).copied()
        } else {
            let mut found = None;
            while let Some(old) = prev.get(next) {
                match identity_of(old).cmp(&identity_of_spec(spec)) {
                    // `old` sorts before this spec: it is not in the new list.
                    std::cmp::Ordering::Less => next += 1,
                    std::cmp::Ordering::Equal => {
                        found = Some(next);
                        next += 1;
                        break;
                    }
                    // This spec sorts before `old`: it is new.
                    std::cmp::Ordering::Greater => break,
                }
            }
            found
        };
        let server = match found {
            Some(i) => {
                kept[i] = true;
                let old = &prev[i];
                if old.weight == spec.weight && old.drain == spec.drain {
                    servers.push(Arc::clone(old));
                    continue;
                }
                Server::with_state(spec, Arc::clone(&old.state))
            }
            None => Server::with_state(spec, Arc::new(ServerState::new(now_ms))),
        };
        fresh.push(servers.len());
        servers.push(Arc::new(server));
    }
    (servers, kept, fresh)
}

/// Milliseconds since the process first asked, for ages shown in the admin API.
pub(crate) fn uptime_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml(
            r#"
[etcd]
endpoints = ["http://127.0.0.1:1"]
[[frontend]]
name = "f"
bind = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
etcd_prefix = "/svc"
servers = ["127.0.0.1:9"]
[[backend]]
name = "other"
servers = ["127.0.0.1:10"]
"#,
        )
        .unwrap()
    }

    fn spec(name: &str, addr: &str) -> ServerSpec {
        ServerSpec {
            name: name.into(),
            addr: addr.into(),
            weight: 1,
            drain: false,
            source: Source::Etcd,
        }
    }

    #[test]
    fn publish_merges_static_and_reuses_survivors() {
        let p = Publisher::new(&cfg());
        assert!(!p.load().ready);
        assert!(p.publish_discovered("b", &[spec("2", "127.0.0.1:2"), spec("1", "127.0.0.1:1")]));
        let snap = p.load_full_for_test();
        let b = snap.route("f").unwrap();
        let addrs: Vec<_> = b.servers.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:9", "127.0.0.1:1", "127.0.0.1:2"]);
        b.servers[1].set_up(false);

        // Same set again: nothing published.
        assert!(!p.publish_discovered("b", &[spec("1", "127.0.0.1:1"), spec("2", "127.0.0.1:2")]));
        // Remove 2, add 3: 1 is the same object, and keeps its health.
        assert!(p.publish_discovered("b", &[spec("1", "127.0.0.1:1"), spec("3", "127.0.0.1:3")]));
        let snap2 = p.load_full_for_test();
        let b2 = snap2.route("f").unwrap();
        assert!(Arc::ptr_eq(&b.servers[1], &b2.servers[1]));
        assert!(!b2.servers[1].is_up());
        assert!(
            Arc::ptr_eq(&b.servers[0], &b2.servers[0]),
            "static server reused"
        );
        assert!(
            Arc::ptr_eq(&b.runtime, &b2.runtime),
            "round-robin counter carried over"
        );
        assert_eq!(b2.servers[2].name, "3");
        // The other backend is untouched.
        assert!(Arc::ptr_eq(
            &snap.backend("other").unwrap().servers[0],
            &snap2.backend("other").unwrap().servers[0]
        ));
    }

    #[test]
    fn weight_change_republishes_but_keeps_state() {
        let p = Publisher::new(&cfg());
        p.publish_discovered("b", &[spec("1", "127.0.0.1:1")]);
        let before = Arc::clone(&p.load().backends[0].servers[1]);
        before.set_up(false);
        let mut heavier = spec("1", "127.0.0.1:1");
        heavier.weight = 3;
        assert!(p.publish_discovered("b", &[heavier]));
        let after = Arc::clone(&p.load().backends[0].servers[1]);
        assert_eq!(after.weight, 3);
        assert!(!after.is_up(), "health carried over");
    }

    #[test]
    fn reload_keeps_discovered_servers_when_prefix_is_unchanged() {
        let p = Publisher::new(&cfg());
        p.publish_discovered("b", &[spec("1", "127.0.0.1:1")]);
        p.set_ready();
        let mut c = cfg();
        c.backends[0].servers = vec![];
        p.apply_config(&c);
        let snap = p.load();
        assert!(snap.ready);
        let addrs: Vec<_> = snap.backends[0]
            .servers
            .iter()
            .map(|s| s.addr.clone())
            .collect();
        assert_eq!(addrs, ["127.0.0.1:1"]);
        c.backends[0].etcd_prefix = Some("/elsewhere".into());
        p.apply_config(&c);
        assert!(p.load().backends[0].servers.is_empty());
    }

    /// The discovered servers of backend "b" (after its static one), by name.
    fn discovered(p: &Publisher) -> Vec<Arc<Server>> {
        p.load().backends[0].servers[1..].to_vec()
    }

    #[test]
    fn changes_in_the_middle_keep_every_other_server_object() {
        let p = Publisher::new(&cfg());
        let names = ["a", "c", "e", "g", "i"];
        let specs: Vec<ServerSpec> = names.iter().map(|n| spec(n, &format!("h:{n}"))).collect();
        assert!(p.publish_discovered("b", &specs));
        let before = discovered(&p);
        // Given out of order; "c" and "g" leave, "b", "d" and "z" arrive.
        let next = [
            spec("z", "h:z"),
            spec("i", "h:i"),
            spec("d", "h:d"),
            spec("a", "h:a"),
            spec("e", "h:e"),
            spec("b", "h:b"),
        ];
        assert!(p.publish_discovered("b", &next));
        let after = discovered(&p);
        let got: Vec<&str> = after.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(got, ["a", "b", "d", "e", "i", "z"], "sorted by name");
        for (old, new) in [(0, 0), (2, 3), (4, 4)] {
            assert!(
                Arc::ptr_eq(&before[old], &after[new]),
                "{} is the same object",
                before[old].name
            );
        }
        assert!(
            before[1].is_draining() && before[3].is_draining(),
            "c and g left"
        );
        assert!(after.iter().all(|s| !s.is_draining()));
        // The same address under another name is another server.
        assert!(p.publish_discovered("b", &[spec("a", "h:i")]));
        assert!(!Arc::ptr_eq(&after[0], &discovered(&p)[0]));
    }

    #[test]
    fn reordered_static_servers_keep_their_state() {
        let p = Publisher::new(&cfg());
        let mut c = cfg();
        c.backends[0].servers = vec!["127.0.0.1:7".into(), "127.0.0.1:8".into()];
        p.apply_config(&c);
        let before = p.load().backends[0].servers.clone();
        before[0].set_up(false);
        c.backends[0].servers.reverse();
        p.apply_config(&c);
        let after = p.load().backends[0].servers.clone();
        assert_eq!(after[1].addr, "127.0.0.1:7");
        assert!(Arc::ptr_eq(&before[0], &after[1]));
        assert!(!after[1].is_up(), "health carried over");
    }

    #[test]
    fn drain_flag_and_admin_override_survive_publishes() {
        let p = Publisher::new(&cfg());
        p.publish_discovered("b", &[spec("1", "h:1"), spec("2", "h:2")]);
        let one = p.set_admin_state("b", "1", AdminState::Drain).unwrap();
        assert!(one.is_draining());
        // Carried over untouched by an unrelated change.
        p.publish_discovered("b", &[spec("1", "h:1"), spec("2", "h:2"), spec("3", "h:3")]);
        let now = discovered(&p);
        assert!(Arc::ptr_eq(&one, &now[0]));
        assert!(now[0].is_draining() && now[0].admin() == AdminState::Drain);
        assert!(!now[1].is_draining() && !now[2].is_draining());
        // "1" leaves and comes back as a new server: the override follows its name.
        p.publish_discovered("b", &[spec("2", "h:2")]);
        p.publish_discovered("b", &[spec("1", "h:1"), spec("2", "h:2")]);
        let back = discovered(&p);
        assert!(!Arc::ptr_eq(&one, &back[0]));
        assert!(back[0].is_draining() && back[0].admin() == AdminState::Drain);
        p.set_admin_state("b", "1", AdminState::Ready);
        assert!(!back[0].is_draining());
        // A drain flag set and lifted in etcd: same state, draining then not.
        let mut drained = spec("2", "h:2");
        drained.drain = true;
        p.publish_discovered("b", &[spec("1", "h:1"), drained]);
        let two = Arc::clone(&discovered(&p)[1]);
        assert!(two.is_draining());
        p.publish_discovered("b", &[spec("1", "h:1"), spec("2", "h:2")]);
        let undrained = Arc::clone(&discovered(&p)[1]);
        assert!(!undrained.is_draining());
        assert!(Arc::ptr_eq(&two.state, &undrained.state), "same state");
    }

    impl Publisher {
        fn load_full_for_test(&self) -> Arc<Snapshot> {
            self.shared.load_full()
        }
    }
}
