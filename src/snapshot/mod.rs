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
//!
//! This file holds the published types, [`Snapshot`] and [`BackendSet`]; a server and its shared
//! state are in `server.rs`, the writer side ([`Publisher`]) in `publish.rs`.

mod publish;
mod server;

pub use publish::{Publisher, ServiceRoute, ServiceUpdate};
pub use server::{ActiveGuard, AdminState, ConnPool, Server, ServerSpec, ServerState, Source};

use std::sync::Arc;

use crate::balancer::BackendRuntime;
use crate::config;
use crate::config::Policy;
use crate::route::Table;

/// A frontend's routing table: each route carries its traffic policy.
pub type RouteTable = Table<Arc<Policy>>;

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
    /// For `balance = "hash"`: the Maglev table over `servers` (`None` for the other balances,
    /// or when no server has a weight). Shared, not copied, while the servers stay the same.
    pub hash: Option<Arc<crate::balancer::maglev::Table>>,
    /// With `[backend.sticky]`: the cookie's server ids -> index into `servers`.
    pub sticky: Option<Arc<crate::balancer::sticky::Ids>>,
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
        let hash = (config.balance == config::Balance::Hash)
            .then(|| {
                let ids: Vec<_> = servers
                    .iter()
                    .map(|s| ((&s.name, &s.addr), s.weight))
                    .collect();
                crate::balancer::maglev::Table::build(&ids)
            })
            .flatten()
            .map(Arc::new);
        let sticky = config
            .sticky
            .is_some()
            .then(|| Arc::new(crate::balancer::sticky::Ids::build(&config.name, &servers)));
        BackendSet {
            schedule: crate::balancer::schedule(&servers),
            hash,
            sticky,
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
            hash: self.hash.clone(),
            sticky: self.sticky.clone(),
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
    /// The configured backends (templates left out), then the services of the service trees.
    pub backends: Vec<BackendSet>,
    /// Each frontend's routing table (routes to indices into `backends`), by frontend name.
    /// Shared with the next snapshot while routes and backend positions stay the same.
    pub routes: Vec<(String, Arc<RouteTable>)>,
    /// True once every etcd prefix has been listed once (or there are none).
    pub ready: bool,
}

impl Snapshot {
    pub fn backend(&self, name: &str) -> Option<&BackendSet> {
        self.backends.iter().find(|b| b.name() == name)
    }

    /// The frontend's routing table.
    pub fn table(&self, frontend: &str) -> Option<&RouteTable> {
        let (_, table) = self.routes.iter().find(|(f, _)| f == frontend)?;
        Some(table)
    }

    /// The frontend's fallback backend (its `backend` key).
    pub fn route(&self, frontend: &str) -> Option<&BackendSet> {
        self.backends.get(self.route_index(frontend)?)
    }

    /// The position in `backends` of the frontend's fallback backend.
    pub fn route_index(&self, frontend: &str) -> Option<usize> {
        let (idx, _) = self.table(frontend)?.fallback()?;
        (idx < self.backends.len()).then_some(idx)
    }

    /// Whether any backend the frontend can reach sends a PROXY header (then its connections
    /// need the address the client connected to).
    pub fn sends_proxy(&self, frontend: &str) -> bool {
        let Some(table) = self.table(frontend) else {
            return false;
        };
        let sends = |i: usize| {
            self.backends
                .get(i)
                .is_some_and(|b| b.config.send_proxy != config::ProxyVersion::None)
        };
        table.fallback().is_some_and(|(i, _)| sends(i))
            || table
                .fallback_split()
                .is_some_and(|s| s.backends().iter().any(|w| sends(w.backend)))
            || table.routes().iter().any(|r| match &r.split {
                Some(split) => split.backends().iter().any(|w| sends(w.backend)),
                None => sends(r.backend),
            })
    }
}
