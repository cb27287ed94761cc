//! The writer side: [`Publisher`] builds each new [`Snapshot`] from the config, the discovered
//! servers, the operator's overrides and the drain sweep, and stores it. Its helpers lay out a
//! backend's server list (static servers first, then discovered ones sorted by identity) and
//! carry every surviving server object, or at least its state, into the next version.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::server::{AdminState, Server, ServerSpec, ServerState, Source, uptime_ms};
use super::{BackendSet, RouteTable, Snapshot};
use crate::config::{self, Config};
use crate::route::{self, HostMatch, Table};
use crate::split::{Split, Weighted};

/// The single writer side of the snapshot. Publishing takes a mutex so that concurrent
/// discovery watchers, reloads and the drain sweep never lose each other's update; readers
/// never take it.
pub struct Publisher {
    shared: Arc<ArcSwap<Snapshot>>,
    /// Held by every publish; holds what the routing tables are built from.
    write: Mutex<Routing>,
    /// Operator overrides by (backend, server name): applied to every server object with that
    /// name, so they survive snapshot updates and a key that expires and comes back.
    admin: Mutex<HashMap<(String, String), AdminState>>,
}

impl Publisher {
    pub fn new(config: &Config) -> Publisher {
        let p = Publisher {
            shared: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            write: Mutex::new(Routing::default()),
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
        let mut routing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.shared.load_full();
        let mut backends = Vec::with_capacity(config.backends.len());
        for b in config
            .backends
            .iter()
            .filter(|b| !config.is_template(&b.name))
        {
            let prev = old.backend(&b.name);
            let discovered = match prev {
                Some(p) if p.config.etcd_prefix == b.etcd_prefix => discovered_of(p),
                _ => Vec::new(),
            };
            let statics = static_specs(b);
            let specs = merge(&statics, &discovered);
            let (set, fresh) = next_set(Arc::new(b.clone()), prev, &specs);
            self.apply_admin(set.name(), fresh.iter().map(|&i| &set.servers[i]));
            backends.push(set);
        }
        // Tree services stay while their tree does (same prefix), with the tree's new template.
        let services: Vec<Service> = std::mem::take(&mut routing.services)
            .into_iter()
            .filter_map(|mut svc| {
                let old_tree = routing.trees.get(svc.tree)?;
                let tree = config
                    .service_trees
                    .iter()
                    .position(|t| t.etcd_prefix == old_tree.etcd_prefix)?;
                svc.tree = tree;
                Some(svc)
            })
            .collect();
        routing.frontends = config.frontends.clone();
        routing.trees = config.service_trees.clone();
        routing.services = Vec::with_capacity(services.len());
        for svc in services {
            let prev = old.backend(&svc.name);
            if backends.iter().any(|b| b.name() == svc.name) {
                continue;
            }
            let cfg = Arc::new(routing.service_backend(svc.tree, &svc.name));
            let discovered = match prev {
                Some(p) if p.config.etcd_prefix == cfg.etcd_prefix => discovered_of(p),
                _ => Vec::new(),
            };
            let (set, fresh) = next_set(cfg, prev, &discovered.iter().collect::<Vec<_>>());
            self.apply_admin(set.name(), fresh.iter().map(|&i| &set.servers[i]));
            backends.push(set);
            routing.services.push(svc);
        }
        // Servers of backends that are gone drain too; nothing lists them any more.
        for b in &old.backends {
            if !backends.iter().any(|n| n.name() == b.name()) {
                b.servers.iter().for_each(|s| s.start_draining());
            }
        }
        let routes = routing.tables(&backends);
        let has_prefix = config.backends.iter().any(|b| b.etcd_prefix.is_some())
            || !config.service_trees.is_empty();
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes,
            ready: old.ready || !has_prefix,
        }));
    }

    /// Creates or updates the service `service` of tree `tree` (its position in the config's
    /// `service_trees`): its discovered servers and its route overrides. A service named like
    /// a configured backend is not created (the configured one wins; logged once). Publishes
    /// nothing, and returns false, when nothing changed.
    pub fn publish_service<'a>(
        &self,
        tree: usize,
        service: &str,
        discovered: impl IntoIterator<Item = &'a ServerSpec>,
        overrides: &ServiceRoute,
    ) -> bool {
        let update = ServiceUpdate {
            name: service.to_string(),
            servers: discovered.into_iter().cloned().collect(),
            route: overrides.clone(),
        };
        self.publish_services(tree, std::slice::from_ref(&update))
    }

    /// [`Publisher::publish_service`] for many services of one tree at once, in one snapshot
    /// (a tree's first listing: a snapshot and a table rebuild per service would make loading
    /// 1,000 services quadratic).
    pub fn publish_services(&self, tree: usize, updates: &[ServiceUpdate]) -> bool {
        let mut routing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if tree >= routing.trees.len() || updates.is_empty() {
            return false;
        }
        let old = self.shared.load_full();
        let position: HashMap<&str, usize> = old
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name(), i))
            .collect();
        let known: HashMap<String, usize> = routing
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.tree == tree)
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let mut backends: Option<Vec<BackendSet>> = None;
        let mut route_changed = false;
        for u in updates {
            let service = u.name.as_str();
            let known = known.get(service).copied();
            let at = position.get(service).copied();
            if known.is_none() && at.is_some() {
                if routing.clashes.insert(format!("backend {service}")) {
                    warn!(service, tree = %routing.trees[tree].etcd_prefix,
                        "a service of the tree has the name of another backend; the other one is kept");
                }
                continue;
            }
            let prev = at.map(|i| &old.backends[i]);
            let cfg = match prev {
                Some(p) => Arc::clone(&p.config),
                None => Arc::new(routing.service_backend(tree, service)),
            };
            let specs = merge(&[], &u.servers);
            let this_route_changed = match known {
                Some(i) => routing.services[i].route != u.route,
                None => true,
            };
            let servers_same = prev.is_some_and(|cur| {
                specs.len() == cur.servers.len()
                    && specs.iter().zip(&cur.servers).all(|(s, srv)| srv.is(s))
            });
            if servers_same && !this_route_changed {
                continue;
            }
            let list = backends.get_or_insert_with(|| {
                old.backends
                    .iter()
                    .map(|b| b.with_draining(b.draining.clone()))
                    .collect()
            });
            let (set, fresh) = next_set(cfg, prev, &specs);
            self.apply_admin(set.name(), fresh.iter().map(|&i| &set.servers[i]));
            match at {
                Some(i) => list[i] = set,
                None => {
                    list.push(set);
                    routing.services.push(Service {
                        tree,
                        name: service.to_string(),
                        route: u.route.clone(),
                    });
                    info!(service, tree = %routing.trees[tree].etcd_prefix, "service discovered");
                }
            }
            if let Some(i) = known {
                routing.services[i].route = u.route.clone();
            }
            route_changed |= this_route_changed;
        }
        let Some(backends) = backends else {
            return false;
        };
        let routes = if route_changed {
            routing.tables(&backends)
        } else {
            old.routes.clone()
        };
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes,
            ready: old.ready,
        }));
        true
    }

    /// Removes a tree service (its backend and routes): it has had no keys for its tree's
    /// `service_linger`. Its servers drain. Returns false when it was not published.
    pub fn remove_service(&self, tree: usize, service: &str) -> bool {
        let mut routing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = routing
            .services
            .iter()
            .position(|s| s.tree == tree && s.name == service)
        else {
            return false;
        };
        routing.services.remove(i);
        let old = self.shared.load_full();
        let mut backends = Vec::with_capacity(old.backends.len());
        for b in &old.backends {
            if b.name() == service {
                for s in &b.servers {
                    s.start_draining();
                }
            } else {
                backends.push(b.with_draining(b.draining.clone()));
            }
        }
        info!(service, "service removed: no keys for its service_linger");
        let routes = routing.tables(&backends);
        self.shared.store(Arc::new(Snapshot {
            backends,
            routes,
            ready: old.ready,
        }));
        true
    }

    /// The services of tree `tree` that are published now (a watch that starts after a reload
    /// takes them over, so one its first listing lacks lingers before it is removed).
    pub fn services(&self, tree: usize) -> Vec<String> {
        let routing = self.write.lock().unwrap_or_else(|e| e.into_inner());
        routing
            .services
            .iter()
            .filter(|s| s.tree == tree)
            .map(|s| s.name.clone())
            .collect()
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
        // Most sweeps find nothing to finish: then no set is rebuilt (a rebuild clones every
        // backend's server list, which at thousands of services cost more than the requests).
        let mut due = false;
        for b in &old.backends {
            let timeout = b.config.drain_timeout;
            for s in b.servers.iter().filter(|s| s.drain) {
                if s.active() > 0 && s.drain_expired(timeout) {
                    warn!(backend = %b.name(), server = %s.addr, active = s.active(),
                        "drain timeout: closing the requests still in flight");
                    s.kill();
                }
            }
            due |= b
                .draining
                .iter()
                .any(|s| s.active() == 0 || s.drain_expired(timeout));
        }
        if !due {
            return;
        }
        let mut changed = false;
        let backends: Vec<BackendSet> = old
            .backends
            .iter()
            .map(|b| {
                let timeout = b.config.drain_timeout;
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

/// One service as discovery has it, for [`Publisher::publish_services`].
#[derive(Debug, Clone)]
pub struct ServiceUpdate {
    pub name: String,
    pub servers: Vec<ServerSpec>,
    pub route: ServiceRoute,
}

/// A tree service's route overrides, from its optional `host` and `path_prefix` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
}

/// A published tree service.
#[derive(Debug)]
struct Service {
    /// Its tree: a position in `Routing::trees`.
    tree: usize,
    name: String,
    route: ServiceRoute,
}

/// What the routing tables are built from: the frontends' routes, the trees and their services.
#[derive(Debug, Default)]
struct Routing {
    frontends: Vec<config::Frontend>,
    trees: Vec<config::ServiceTree>,
    services: Vec<Service>,
    /// Clashes already logged, so each is logged once.
    clashes: HashSet<String>,
}

impl Routing {
    /// The backend settings of a tree's service: the tree's template, named after the service
    /// and watching its servers' directory.
    fn service_backend(&self, tree: usize, service: &str) -> config::Backend {
        let t = &self.trees[tree];
        let mut b = t.backend.clone();
        b.name = service.to_string();
        b.servers = Vec::new();
        b.etcd_prefix = Some(t.servers_prefix(service));
        b
    }

    /// Every frontend's table over `backends`: its configured routes, then the routes of the
    /// tree services it serves (one that repeats a configured route's host and path is left
    /// out: the configured one wins, logged once).
    fn tables(&mut self, backends: &[BackendSet]) -> Vec<(String, Arc<RouteTable>)> {
        let index = |name: &str| backends.iter().position(|b| b.name() == name);
        let mut out = Vec::with_capacity(self.frontends.len());
        for f in &self.frontends {
            // A tree's routes, and requests no route takes, have the frontend's policy.
            let frontend_policy = Arc::new(f.policy.clone());
            let mut routes = Vec::with_capacity(f.routes.len());
            for r in &f.routes {
                let Some(backend) = index(&r.backend) else {
                    continue;
                };
                // Validated with the config: a host that does not parse cannot get here, and
                // must never become a route for any host if it did.
                let Ok(host) = HostMatch::parse(r.host.as_deref()) else {
                    continue;
                };
                // A split over the backends that exist (all do: validated with the config).
                let split = split_of(&r.backends, index);
                routes.push(route::Route {
                    host,
                    path_prefix: r.path_prefix.clone(),
                    strip_prefix: r.strip_prefix,
                    sni: r
                        .sni
                        .as_deref()
                        .and_then(|s| HostMatch::parse(Some(s)).ok()),
                    backend,
                    backend_name: Arc::from(r.backend.as_str()),
                    split,
                    source: route::Source::Config,
                    policy: Arc::new(r.policy.clone()),
                });
            }
            let configured = routes.len();
            for svc in &self.services {
                let t = &self.trees[svc.tree];
                if !t.frontends.contains(&f.name) {
                    continue;
                }
                let Some(backend) = index(&svc.name) else {
                    continue;
                };
                let host = svc.route.host.clone().or_else(|| {
                    t.host
                        .as_deref()
                        .map(|h| config::ServiceTree::fill(h, &svc.name))
                });
                let path_prefix = svc
                    .route
                    .path_prefix
                    .clone()
                    .or_else(|| {
                        t.path_prefix
                            .as_deref()
                            .map(|p| config::ServiceTree::fill(p, &svc.name))
                    })
                    .unwrap_or_else(|| config::DEFAULT_PATH_PREFIX.to_string());
                let Ok(host) = HostMatch::parse(host.as_deref()) else {
                    if self.clashes.insert(format!("host {}", svc.name)) {
                        warn!(service = %svc.name, host = ?host, "the service's host is not a host name; it has no route");
                    }
                    continue;
                };
                let path_prefix = match route::parse_path_prefix(Some(&path_prefix)) {
                    Ok(p) => p,
                    Err(e) => {
                        if self.clashes.insert(format!("path {}", svc.name)) {
                            warn!(service = %svc.name, error = %e, "the service's path_prefix cannot be routed; it has no route");
                        }
                        continue;
                    }
                };
                if let Some(c) = routes[..configured]
                    .iter()
                    .find(|c| c.host == host && c.path_prefix == path_prefix)
                {
                    if self
                        .clashes
                        .insert(format!("route {} {}", f.name, svc.name))
                    {
                        warn!(frontend = %f.name, service = %svc.name, backend = %c.backend_name,
                            "a configured route has the service's host and path; the configured one is kept");
                    }
                    continue;
                }
                routes.push(route::Route {
                    host,
                    path_prefix,
                    strip_prefix: t.strip_prefix,
                    sni: None,
                    backend,
                    backend_name: Arc::from(svc.name.as_str()),
                    split: None,
                    source: route::Source::Etcd,
                    policy: Arc::clone(&frontend_policy),
                });
            }
            let fallback = f
                .backend
                .as_deref()
                .and_then(|b| Some((index(b)?, Arc::from(b))));
            let table = Table::new(routes, fallback, frontend_policy)
                .with_fallback_split(split_of(&f.backends, index));
            out.push((f.name.clone(), Arc::new(table)));
        }
        out
    }
}

/// A route's (or a fallback's) weighted split over the published backends; `None` without
/// one (validated with the config: every name is a backend, the weights sum to more than 0).
fn split_of(
    split: &[config::WeightedBackend],
    index: impl Fn(&str) -> Option<usize>,
) -> Option<Arc<Split>> {
    let weighted = split.iter().filter_map(|w| {
        Some(Weighted {
            backend: index(&w.name)?,
            name: Arc::from(w.name.as_str()),
            weight: w.weight,
        })
    });
    Split::new(weighted.collect()).map(Arc::new)
}

/// The discovered servers of a published backend, to carry into its next version.
fn discovered_of(set: &BackendSet) -> Vec<ServerSpec> {
    set.servers
        .iter()
        .filter(|s| s.source == Source::Etcd)
        .map(|s| spec_of(s))
        .collect()
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
