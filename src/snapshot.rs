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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::balancer::RoundRobin;
use crate::config::{self, Config};

/// Where a server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Consecutive check results in the current direction (rise/fall), owned by `health`.
    pub(crate) streak: Mutex<crate::health::Streak>,
    /// Idle keep-alive connections to this server; they close when the server is gone.
    pool: crate::proxy_http::Pool,
}

impl ServerState {
    fn new() -> Self {
        ServerState {
            // Registration means ready: a new server takes traffic at once and is checked at once.
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(uptime_ms()),
            streak: Mutex::new(Default::default()),
            pool: Default::default(),
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
        Server::with_state(spec, Arc::new(ServerState::new()))
    }

    fn with_state(spec: ServerSpec, state: Arc<ServerState>) -> Server {
        Server {
            name: spec.name,
            addr: spec.addr,
            weight: spec.weight,
            drain: spec.drain,
            source: spec.source,
            state,
        }
    }

    fn same_identity(&self, spec: &ServerSpec) -> bool {
        self.name == spec.name && self.addr == spec.addr && self.source == spec.source
    }

    /// Healthy and not draining: may take new requests.
    #[inline]
    pub fn available(&self) -> bool {
        !self.drain && self.state.up.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Relaxed)
    }

    /// Sets health; returns true when this call flipped it.
    pub fn set_up(&self, up: bool) -> bool {
        let flipped = self.state.up.swap(up, Ordering::Relaxed) != up;
        if flipped {
            self.state.changed_ms.store(uptime_ms(), Ordering::Relaxed);
        }
        flipped
    }

    /// Milliseconds since the health state last changed.
    pub fn state_age_ms(&self) -> u64 {
        uptime_ms().saturating_sub(self.state.changed_ms.load(Ordering::Relaxed))
    }

    pub fn pool(&self) -> &crate::proxy_http::Pool {
        &self.state.pool
    }

    pub(crate) fn state(&self) -> &ServerState {
        &self.state
    }

    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(&self.state))
    }

    /// `up`, `down` or `draining`, as the admin API shows it.
    pub fn state_name(&self) -> &'static str {
        if self.drain {
            "draining"
        } else if self.is_up() {
            "up"
        } else {
            "down"
        }
    }
}

pub struct ActiveGuard(Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One backend as published: its settings, its servers and its round-robin counter.
#[derive(Debug)]
pub struct BackendSet {
    pub config: Arc<config::Backend>,
    /// Static servers first (config order), then discovered ones sorted by key.
    pub servers: Vec<Arc<Server>>,
    /// Lives outside the snapshot: the same counter is carried into every new snapshot so
    /// rotation does not restart at 0 on each membership change.
    pub rr: Arc<RoundRobin>,
}

impl BackendSet {
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
        let (_, idx) = self.routes.iter().find(|(f, _)| f == frontend)?;
        self.backends.get(*idx)
    }
}

/// The single writer side of the snapshot. Publishing takes a mutex so that concurrent
/// discovery watchers and a reload never lose each other's update; readers never take it.
pub struct Publisher {
    shared: Arc<ArcSwap<Snapshot>>,
    write: Mutex<()>,
}

impl Publisher {
    pub fn new(config: &Config) -> Publisher {
        let p = Publisher {
            shared: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            write: Mutex::new(()),
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
            let specs = merge(b, discovered);
            let prev_servers = prev.map(|p| p.servers.as_slice()).unwrap_or(&[]);
            backends.push(BackendSet {
                config: Arc::new(b.clone()),
                servers: reuse(prev_servers, specs),
                rr: prev.map(|p| Arc::clone(&p.rr)).unwrap_or_default(),
            });
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
    /// when the result equals what is already published.
    pub fn publish_discovered(&self, backend: &str, mut discovered: Vec<ServerSpec>) -> bool {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        let Some(pos) = old.backends.iter().position(|b| b.name() == backend) else {
            return false;
        };
        discovered.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.addr.cmp(&b.addr)));
        let cur = &old.backends[pos];
        let specs = merge(&cur.config, discovered);
        let unchanged = specs.len() == cur.servers.len()
            && specs
                .iter()
                .zip(&cur.servers)
                .all(|(s, srv)| spec_of(srv) == *s);
        if unchanged {
            return false;
        }
        let backends = old
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendSet {
                config: Arc::clone(&b.config),
                servers: if i == pos {
                    reuse(&b.servers, specs.clone())
                } else {
                    b.servers.clone()
                },
                rr: Arc::clone(&b.rr),
            })
            .collect();
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes: old.routes.clone(),
            ready: old.ready,
        }));
        true
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
                .map(|b| BackendSet {
                    config: Arc::clone(&b.config),
                    servers: b.servers.clone(),
                    rr: Arc::clone(&b.rr),
                })
                .collect(),
            routes: old.routes.clone(),
            ready: true,
        }));
    }
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

/// Static servers (config order) followed by the discovered ones.
fn merge(b: &config::Backend, discovered: Vec<ServerSpec>) -> Vec<ServerSpec> {
    let mut specs: Vec<ServerSpec> = b
        .servers
        .iter()
        .map(|addr| ServerSpec {
            name: addr.clone(),
            addr: addr.clone(),
            weight: 1,
            drain: false,
            source: Source::Static,
        })
        .collect();
    specs.extend(discovered);
    specs
}

/// Builds the new server list, reusing the `Arc<Server>` (or at least its state) of every
/// server whose identity survives.
fn reuse(prev: &[Arc<Server>], specs: Vec<ServerSpec>) -> Vec<Arc<Server>> {
    specs
        .into_iter()
        .map(|spec| match prev.iter().find(|s| s.same_identity(&spec)) {
            Some(s) if s.weight == spec.weight && s.drain == spec.drain => Arc::clone(s),
            Some(s) => Arc::new(Server::with_state(spec, Arc::clone(&s.state))),
            None => Arc::new(Server::new(spec)),
        })
        .collect()
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
        assert!(p.publish_discovered(
            "b",
            vec![spec("2", "127.0.0.1:2"), spec("1", "127.0.0.1:1")]
        ));
        let snap = p.load_full_for_test();
        let b = snap.route("f").unwrap();
        let addrs: Vec<_> = b.servers.iter().map(|s| s.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:9", "127.0.0.1:1", "127.0.0.1:2"]);
        b.servers[1].set_up(false);

        // Same set again: nothing published.
        assert!(!p.publish_discovered(
            "b",
            vec![spec("1", "127.0.0.1:1"), spec("2", "127.0.0.1:2")]
        ));
        // Remove 2, add 3: 1 is the same object, and keeps its health.
        assert!(p.publish_discovered(
            "b",
            vec![spec("1", "127.0.0.1:1"), spec("3", "127.0.0.1:3")]
        ));
        let snap2 = p.load_full_for_test();
        let b2 = snap2.route("f").unwrap();
        assert!(Arc::ptr_eq(&b.servers[1], &b2.servers[1]));
        assert!(!b2.servers[1].is_up());
        assert!(
            Arc::ptr_eq(&b.servers[0], &b2.servers[0]),
            "static server reused"
        );
        assert!(
            Arc::ptr_eq(&b.rr, &b2.rr),
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
        p.publish_discovered("b", vec![spec("1", "127.0.0.1:1")]);
        let before = Arc::clone(&p.load().backends[0].servers[1]);
        before.set_up(false);
        let mut heavier = spec("1", "127.0.0.1:1");
        heavier.weight = 3;
        assert!(p.publish_discovered("b", vec![heavier]));
        let after = Arc::clone(&p.load().backends[0].servers[1]);
        assert_eq!(after.weight, 3);
        assert!(!after.is_up(), "health carried over");
    }

    #[test]
    fn reload_keeps_discovered_servers_when_prefix_is_unchanged() {
        let p = Publisher::new(&cfg());
        p.publish_discovered("b", vec![spec("1", "127.0.0.1:1")]);
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

    impl Publisher {
        fn load_full_for_test(&self) -> Arc<Snapshot> {
            self.shared.load_full()
        }
    }
}
