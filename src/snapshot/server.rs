//! One server as published: where it came from ([`Source`]), how discovery describes it
//! ([`ServerSpec`]), the published object ([`Server`]) and the health and load it shares with
//! every later version of itself ([`ServerState`]), the operator's word on it ([`AdminState`]),
//! the in-flight guard ([`ActiveGuard`]) and the data plane's per-server pool ([`ConnPool`]).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    /// When `admin` last changed (ms), or when the server appeared.
    admin_changed_ms: AtomicU64,
    /// Flips from up to down, and the time spent down before the current period (ms): HAProxy's
    /// `chkdown` and `downtime`.
    down_transitions: AtomicU64,
    down_total_ms: AtomicU64,
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
    pub(super) fn new(now_ms: u64) -> Self {
        ServerState {
            // Registration means ready: a new server takes traffic at once and is checked at once.
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(now_ms),
            up_since_ms: AtomicU64::new(0),
            draining_since_ms: AtomicU64::new(0),
            admin: AtomicU8::new(AdminState::Ready as u8),
            admin_changed_ms: AtomicU64::new(now_ms),
            down_transitions: AtomicU64::new(0),
            down_total_ms: AtomicU64::new(0),
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
    pub(super) state: Arc<ServerState>,
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

    pub(super) fn with_state(spec: &ServerSpec, state: Arc<ServerState>) -> Server {
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
    pub(super) fn is(&self, spec: &ServerSpec) -> bool {
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

    pub(super) fn set_admin(&self, a: AdminState) {
        if self.state.admin.swap(a as u8, Ordering::Relaxed) != a as u8 {
            self.state
                .admin_changed_ms
                .store(uptime_ms(), Ordering::Relaxed);
        }
    }

    /// Milliseconds since the admin state last changed (or since the server appeared).
    pub fn admin_age_ms(&self) -> u64 {
        uptime_ms().saturating_sub(self.state.admin_changed_ms.load(Ordering::Relaxed))
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Relaxed)
    }

    /// Sets health; returns true when this call flipped it.
    pub fn set_up(&self, up: bool) -> bool {
        let flipped = self.state.up.swap(up, Ordering::Relaxed) != up;
        if flipped {
            let now = uptime_ms().max(1);
            let before = self.state.changed_ms.swap(now, Ordering::Relaxed);
            if up {
                self.state
                    .down_total_ms
                    .fetch_add(now.saturating_sub(before), Ordering::Relaxed);
            } else {
                self.state.down_transitions.fetch_add(1, Ordering::Relaxed);
            }
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

    /// (transitions to down, milliseconds spent down including the current period).
    pub fn downtime(&self) -> (u64, u64) {
        let total = self.state.down_total_ms.load(Ordering::Relaxed);
        let current = if self.is_up() { 0 } else { self.state_age_ms() };
        (
            self.state.down_transitions.load(Ordering::Relaxed),
            total + current,
        )
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

    /// Requests in flight, read in the order [`Server::try_track`] and the queue rely on.
    #[inline]
    pub fn active_now(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Counts one request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.state), None)
    }

    /// Counts one request in flight if fewer than `limit` are (a slot of
    /// `max_conns_per_server`); the guard tells `rt`'s queue when it drops.
    pub fn try_track(
        self: &Arc<Self>,
        limit: usize,
        rt: &Arc<crate::balancer::BackendRuntime>,
    ) -> Option<ActiveGuard> {
        self.state
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard(Arc::clone(&self.state), Some(Arc::clone(rt))))
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
    pub(super) fn start_draining(&self) {
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
    pub(super) fn stop_draining(&self) {
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
    pub(super) fn drain_expired(&self, timeout: Duration) -> bool {
        let since = self.state.draining_since_ms.load(Ordering::Relaxed);
        since != 0 && uptime_ms().saturating_sub(since) >= timeout.as_millis() as u64
    }

    /// Ends whatever is still in flight to this server.
    pub(super) fn kill(&self) {
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

/// One request (or connection) in flight on a server; with a slot limit, also the backend
/// whose queue is told when the slot frees (`balancer::queue`).
pub struct ActiveGuard(
    Arc<ServerState>,
    Option<Arc<crate::balancer::BackendRuntime>>,
);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        match &self.1 {
            None => {
                self.0.active.fetch_sub(1, Ordering::Relaxed);
            }
            Some(rt) => {
                // Freed before the queue is read (see `Queue::wait`).
                self.0.active.fetch_sub(1, Ordering::SeqCst);
                rt.queue.released();
            }
        }
    }
}

/// Milliseconds since the process first asked, for ages shown in the admin API.
pub(super) fn uptime_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtime_adds_up_and_admin_age_restarts_on_change() {
        let s = Server::new(ServerSpec {
            name: "a".into(),
            addr: "127.0.0.1:1".into(),
            weight: 1,
            drain: false,
            source: Source::Static,
        });
        assert_eq!(s.downtime(), (0, 0));
        std::thread::sleep(Duration::from_millis(30));
        s.set_admin(AdminState::Ready);
        assert!(s.admin_age_ms() >= 30, "no change, no restart");
        s.set_admin(AdminState::Maint);
        assert!(s.admin_age_ms() < 30);
        for _ in 0..2 {
            assert!(s.set_up(false));
            std::thread::sleep(Duration::from_millis(30));
            assert!(s.downtime().1 >= 30, "the current period counts");
            assert!(s.set_up(true));
        }
        let (transitions, ms) = s.downtime();
        assert_eq!(transitions, 2);
        assert!(ms >= 60, "both periods: {ms} ms");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.downtime().1, ms, "not counting while up");
    }
}
