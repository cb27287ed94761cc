//! Discovery: turns etcd keys under each backend's `etcd_prefix` into published server sets,
//! and the directories under each `[[service_tree]]`'s prefix into services (a backend and a
//! route each).
//!
//! Owns the per-prefix mirror `key -> server` (values parsed by [`crate::value`]), the
//! application of v2 events and v3 watch events to that mirror, the resync on errorCode 401 (v2)
//! or compaction (v3), the reconnect loop, the readiness latch and the snapshot file. Deltas never
//! leave this module: each change publishes the prefix's whole server list through
//! [`Publisher::publish_discovered`] (a tree: the changed service's, through
//! [`Publisher::publish_service`]), which publishes nothing when nothing changed.
//!
//! NOTE: one long-poll (v2) or watch stream (v3) per prefix rather than one over a common root. A watch on a common root
//! (often `/`) is woken by every unrelated write in the cluster, and one 401 would force a re-list
//! of everything; per-prefix watches only wake for their own keys, keep independent cursors, and
//! a resync re-reads one prefix. The cost is one idle HTTP connection per prefix. A service tree
//! is one prefix: its services appear at run time, so it cannot be watched per service.
//!
//! Unreachable is not empty: a transport error, a timeout or an undecodable answer never changes
//! membership. Only an authoritative listing or an event does.
//!
//! This file starts the watchers ([`spawn`]) and holds the status the admin API shows
//! ([`Status`]). The mirror is in `mirror.rs`, the watch loop of one prefix in `watch.rs` (with
//! the sink of a backend's prefix), the sink and key layout of a service tree in `tree.rs`, the
//! snapshot file in `saved.rs`.

mod mirror;
mod saved;
mod tree;
mod watch;

pub use mirror::{Applied, Mirror};
pub use saved::{Saved, load_snapshot_file, run_snapshot_writer};
use tree::{TreeLayout, TreeSink};
use watch::{BackendSink, Shared, Watcher};

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::{Config, ServiceTree};
use crate::etcd::http_client;
use crate::metrics as m;
use crate::snapshot::{Publisher, ServerSpec};
// The value contract lives in `value`; these paths stay for the fuzz targets and benches.
pub use crate::value::{Value, ValueError, parse_addr, parse_value};

// ---------------------------------------------------------------------------------------------
// Status shared with the admin API.

#[derive(Debug, Clone, Default)]
struct PrefixStatus {
    /// Serving what the snapshot file held, because etcd has not answered yet.
    from_file: bool,
    connected: bool,
    index: u64,
    last_sync: Option<SystemTime>,
    resyncs: u64,
}

/// Discovery health for `/api/v1/backends` and the metrics: one entry per watched prefix.
#[derive(Debug, Default)]
pub struct Status {
    api: &'static str,
    prefixes: Mutex<Vec<PrefixStatus>>,
}

/// What the admin API shows.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub api: &'static str,
    pub connected: bool,
    pub index: u64,
    pub last_sync_age_seconds: Option<f64>,
    pub resyncs: u64,
    pub from_snapshot_file: bool,
}

impl Status {
    fn new(api: &'static str, prefixes: usize) -> Status {
        Status {
            api,
            prefixes: Mutex::new(vec![PrefixStatus::default(); prefixes]),
        }
    }

    fn update(&self, slot: usize, f: impl FnOnce(&mut PrefixStatus)) {
        let view = {
            let mut all = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut all[slot]);
            aggregate(self.api, &all)
        };
        metrics::gauge!(m::DISCOVERY_CONNECTED).set(if view.connected { 1.0 } else { 0.0 });
        metrics::gauge!(m::DISCOVERY_INDEX).set(view.index as f64);
    }

    pub fn view(&self) -> StatusView {
        aggregate(
            self.api,
            &self.prefixes.lock().unwrap_or_else(|e| e.into_inner()),
        )
    }
}

fn aggregate(api: &'static str, all: &[PrefixStatus]) -> StatusView {
    // Connected only if every watch is; the oldest sync is the one that matters.
    let oldest = all.iter().map(|p| p.last_sync).min().flatten();
    StatusView {
        api,
        connected: !all.is_empty() && all.iter().all(|p| p.connected),
        index: all.iter().map(|p| p.index).max().unwrap_or(0),
        last_sync_age_seconds: oldest.map(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs_f64()
        }),
        resyncs: all.iter().map(|p| p.resyncs).sum(),
        from_snapshot_file: all.iter().any(|p| p.from_file),
    }
}

// ---------------------------------------------------------------------------------------------
// Starting the watch loops (one per prefix, see `watch.rs`).

/// Starts one watcher per backend that has an `etcd_prefix` and one per `[[service_tree]]`.
/// Returns the shared status (None when nothing uses etcd) and marks the snapshot ready once
/// every prefix was listed once.
pub fn spawn(
    config: &Config,
    publisher: Arc<Publisher>,
    cancel: CancellationToken,
) -> Option<Arc<Status>> {
    let etcd = config.etcd.clone()?;
    let watched: Vec<(String, String)> = config
        .backends
        .iter()
        .filter_map(|b| Some((b.name.clone(), b.etcd_prefix.clone()?)))
        .collect();
    let prefixes = watched.len() + config.service_trees.len();
    if prefixes == 0 {
        return None;
    }
    let mut saved = match &etcd.snapshot_file {
        Some(path) => match load_snapshot_file(path) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "snapshot file not usable; ignoring it");
                HashMap::new()
            }
        },
        None => HashMap::new(),
    };
    let client = match http_client(&etcd) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "etcd client cannot be built; discovery is off, static servers only");
            return None;
        }
    };
    let status = Arc::new(Status::new(etcd.api.as_str(), prefixes));
    let shared = Shared {
        etcd,
        client,
        status: Arc::clone(&status),
        publisher: Arc::clone(&publisher),
        pending: Arc::new(AtomicUsize::new(prefixes)),
    };
    for (slot, (backend, prefix)) in watched.into_iter().enumerate() {
        let fallback = saved
            .remove(&backend)
            .filter(|s| s.prefix == prefix)
            .map(|s| s.servers);
        let sink = BackendSink {
            backend: backend.clone(),
            publisher: Arc::clone(&publisher),
            fallback,
        };
        let mirror = Mirror::new(&backend, &prefix);
        let w = Watcher::new(backend, prefix, slot, mirror, sink, &shared);
        tokio::spawn(w.run(cancel.clone()));
    }
    let first_tree_slot = prefixes - config.service_trees.len();
    for (i, tree) in config.service_trees.iter().enumerate() {
        let sink = TreeSink::new(
            i,
            tree,
            Arc::clone(&publisher),
            saved_services(tree, &mut saved),
        );
        let mirror = Mirror::tree(TreeLayout::new(tree));
        let name = format!("service_tree[{i}]");
        let prefix = tree.etcd_prefix.clone();
        let w = Watcher::new(name, prefix, first_tree_slot + i, mirror, sink, &shared);
        tokio::spawn(w.run(cancel.clone()));
    }
    Some(status)
}

/// The services of `tree` in the snapshot file (taken out of `saved`): the backends saved with
/// the prefix one of its services has, under a name the tree takes as a service.
fn saved_services(
    tree: &ServiceTree,
    saved: &mut HashMap<String, Saved>,
) -> Vec<(String, Vec<ServerSpec>)> {
    let names: Vec<String> = saved
        .iter()
        .filter(|(name, s)| {
            tree.check_service(name).is_ok() && s.prefix == tree.servers_prefix(name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    names
        .into_iter()
        .filter_map(|name| {
            let s = saved.remove(&name)?;
            (!s.servers.is_empty()).then_some((name, s.servers))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_aggregates_prefixes() {
        let s = Status::new("v2", 2);
        s.update(0, |p| {
            p.connected = true;
            p.index = 10;
        });
        assert!(!s.view().connected, "one prefix is not connected yet");
        s.update(1, |p| {
            p.connected = true;
            p.index = 12;
            p.last_sync = Some(SystemTime::now());
        });
        let v = s.view();
        assert!(v.connected);
        assert_eq!(v.index, 12);
        assert!(v.last_sync_age_seconds.is_none(), "prefix 0 never synced");
    }
}
