//! Service trees (`[[service_tree]]`): which keys under a tree's prefix are a service's servers
//! and route values ([`TreeLayout`]), and what the tree's watch does with its mirror after a
//! change ([`TreeSink`]): group the servers by service, publish each service that changed
//! (`Publisher::publish_service`), and remove a service once it has had no servers for the
//! tree's `service_linger` (`Publisher::remove_service`). The watch loop itself is the one every
//! prefix uses (`watch.rs`); it calls [`TreeSink::expire`] when a linger is due.
//!
//! Unreachable is not empty here either: only a listing or an event empties a service, and an
//! empty service keeps its route (answering `503`) until its linger ends. A service is known to
//! the sink from its first server key (or from the snapshot file, or from the publisher when the
//! watch restarts on a reload) until it is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::mirror::Mirror;
use super::watch::Sink;
use crate::config::ServiceTree;
use crate::snapshot::{Publisher, ServerSpec, ServiceRoute, ServiceUpdate};

/// A service's key that overrides its route's host (a plain value).
pub const HOST_KEY: &str = "host";
/// A service's key that overrides its route's path prefix (a plain value).
pub const PATH_PREFIX_KEY: &str = "path_prefix";

/// What a key under a tree's prefix is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Key<'k> {
    /// A server of the service the key is under.
    Server,
    /// One of a service's route values ([`HOST_KEY`], [`PATH_PREFIX_KEY`]).
    Plain,
    /// Anything else (other keys beside the servers' directory, keys directly under the tree).
    Ignored,
    /// A server or route key under a directory that is no service name: skipped (and warned
    /// about once, by the mirror).
    BadService(&'k str, String),
}

/// The key layout of one `[[service_tree]]`: `<prefix>/<service>/<servers_dir>/<server>` are
/// servers (below `servers_dir` at any depth, as below a backend's prefix; with `servers_dir =
/// ""`, the keys directly in the service's directory), `<prefix>/<service>/host` and
/// `<prefix>/<service>/path_prefix` route values, other keys ignored.
#[derive(Debug, Clone)]
pub struct TreeLayout {
    tree: ServiceTree,
}

impl TreeLayout {
    pub fn new(tree: &ServiceTree) -> TreeLayout {
        TreeLayout { tree: tree.clone() }
    }

    /// The tree's prefix (no trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.tree.etcd_prefix
    }

    /// The name of the directory under the tree that `key` is in (or is), valid or not; `None`
    /// for the tree's own directory and for keys outside it.
    pub fn service_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix())?.strip_prefix('/')?;
        let name = rest.split('/').next().unwrap_or(rest);
        (!name.is_empty()).then_some(name)
    }

    /// The directory of `service`'s servers, with a trailing `/` (the keys a mirror lists as its
    /// servers start with it).
    pub fn servers_dir(&self, service: &str) -> String {
        format!("{}/", self.tree.servers_prefix(service))
    }

    /// What `key` is.
    pub(crate) fn key<'k>(&self, key: &'k str) -> Key<'k> {
        let Some(rest) = key
            .strip_prefix(self.prefix())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Key::Ignored;
        };
        let Some((service, below)) = rest.split_once('/') else {
            return Key::Ignored;
        };
        let dir = &self.tree.servers_dir;
        let kind = if below == HOST_KEY || below == PATH_PREFIX_KEY {
            Key::Plain
        } else if dir.is_empty() {
            if below.is_empty() || below.contains('/') {
                Key::Ignored
            } else {
                Key::Server
            }
        } else {
            match below
                .strip_prefix(dir.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                Some(server) if !server.is_empty() => Key::Server,
                _ => Key::Ignored,
            }
        };
        if kind == Key::Ignored {
            return kind;
        }
        match self.tree.check_service(service) {
            Ok(()) => kind,
            Err(why) => Key::BadService(service, why),
        }
    }
}

/// The sink of a tree's watch: publishes each service from the mirror and lingers empty ones.
pub(super) struct TreeSink {
    /// The tree's position in the config's `service_trees` (the publisher's handle for it).
    index: usize,
    layout: TreeLayout,
    linger: Duration,
    publisher: Arc<Publisher>,
    /// Every service this tree has published and not removed, with the deadline of its
    /// linger while it has no servers.
    services: BTreeMap<String, Option<Instant>>,
    /// Services and servers from the snapshot file, served if etcd does not answer at start.
    saved: Vec<(String, Vec<ServerSpec>)>,
}

impl TreeSink {
    /// The sink of tree `index`. It takes over the services the publisher already has for the
    /// tree (published before a reload restarted discovery), so that a first listing that
    /// lacks one starts its linger.
    pub(super) fn new(
        index: usize,
        tree: &ServiceTree,
        publisher: Arc<Publisher>,
        saved: Vec<(String, Vec<ServerSpec>)>,
    ) -> TreeSink {
        let services = publisher
            .services(index)
            .into_iter()
            .map(|s| (s, None))
            .collect();
        TreeSink {
            index,
            layout: TreeLayout::new(tree),
            linger: tree.service_linger,
            publisher,
            services,
            saved,
        }
    }

    /// The route values of `service` (an empty value is no override).
    fn route(&self, mirror: &Mirror, service: &str) -> ServiceRoute {
        let value = |key: &str| {
            mirror
                .value(&format!("{}/{service}/{key}", self.layout.prefix()))
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        ServiceRoute {
            host: value(HOST_KEY),
            path_prefix: value(PATH_PREFIX_KEY),
        }
    }

    /// Publishes `service` as the mirror has it (see [`TreeSink::update`]).
    fn sync(&mut self, mirror: &Mirror, service: &str, now: Instant) -> bool {
        match self.update(mirror, service, now) {
            Some(u) => self.publisher.publish_services(self.index, &[u]),
            None => false,
        }
    }

    /// `service` as the mirror has it: its servers and route values, or, once it has no
    /// servers left, no servers (`503`) until its linger (started here) ends. `None`: nothing
    /// to publish (a service never seen with servers).
    fn update(&mut self, mirror: &Mirror, service: &str, now: Instant) -> Option<ServiceUpdate> {
        let dir = self.layout.servers_dir(service);
        let has_servers = mirror.specs_under(&dir).next().is_some();
        match (has_servers, self.services.get_mut(service)) {
            (false, None) => return None,
            (false, Some(deadline)) => {
                if deadline.is_none() {
                    *deadline = Some(now + self.linger);
                    info!(service, tree = %self.layout.prefix(), linger = ?self.linger,
                        "service has no servers: answering 503 until its linger ends");
                }
            }
            (true, Some(deadline)) => {
                if deadline.take().is_some() {
                    info!(service, tree = %self.layout.prefix(), "service has servers again: linger cancelled");
                }
            }
            (true, None) => {
                self.services.insert(service.to_string(), None);
            }
        }
        Some(ServiceUpdate {
            name: service.to_string(),
            servers: mirror.specs_under(&dir).cloned().collect(),
            route: self.route(mirror, service),
        })
    }

    /// Every service the mirror has servers for, and every one this sink knows.
    fn all_services(&self, mirror: &Mirror) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.services.keys().cloned().collect();
        let mut last: Option<&str> = None;
        // Keys are sorted, so one service's keys are consecutive.
        for name in mirror.keys().filter_map(|k| self.layout.service_of(k)) {
            if last != Some(name) {
                names.insert(name.to_string());
                last = Some(name);
            }
        }
        names
    }

    /// Every service, in one snapshot.
    fn sync_all(&mut self, mirror: &Mirror, now: Instant) -> bool {
        let updates: Vec<ServiceUpdate> = self
            .all_services(mirror)
            .into_iter()
            .filter_map(|service| self.update(mirror, &service, now))
            .collect();
        self.publisher.publish_services(self.index, &updates)
    }
}

impl Sink for TreeSink {
    fn listed(&mut self, mirror: &Mirror, changed: bool, first: bool, now: Instant) -> bool {
        if first {
            self.saved = Vec::new();
        }
        (changed || first) && self.sync_all(mirror, now)
    }

    fn changed(&mut self, mirror: &Mirror, key: &str, now: Instant) -> bool {
        match self.layout.service_of(key) {
            Some(service) => self.sync(mirror, service, now),
            // The tree's own directory (deleted or replaced): every service may have changed.
            None => self.sync_all(mirror, now),
        }
    }

    fn serve_saved(&mut self) -> Option<usize> {
        if self.saved.is_empty() {
            return None;
        }
        let mut servers = 0;
        let mut updates = Vec::new();
        for (service, specs) in std::mem::take(&mut self.saved) {
            servers += specs.len();
            self.services.insert(service.clone(), None);
            updates.push(ServiceUpdate {
                name: service,
                servers: specs,
                route: ServiceRoute::default(),
            });
        }
        self.publisher.publish_services(self.index, &updates);
        Some(servers)
    }

    fn deadline(&self) -> Option<Instant> {
        self.services.values().flatten().min().copied()
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(s, _)| s.clone())
            .collect();
        for service in due {
            self.services.remove(&service);
            self.publisher.remove_service(self.index, &service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::discovery::Applied;
    use crate::etcd::v2;
    use crate::route::HostMatch;

    fn config(servers_dir: &str) -> Config {
        Config::from_toml(&format!(
            r#"
[etcd]
endpoints = ["http://127.0.0.1:1"]
[[frontend]]
name = "web"
bind = "127.0.0.1:0"
[[backend]]
name = "svc-defaults"
[[service_tree]]
etcd_prefix = "/services"
servers_dir = "{servers_dir}"
frontends = ["web"]
host = "{{service}}.example.com"
template = "svc-defaults"
service_linger = "1s"
"#
        ))
        .unwrap()
    }

    #[test]
    fn keys_are_servers_route_values_or_ignored() {
        let cfg = config("backend");
        let t = TreeLayout::new(&cfg.service_trees[0]);
        assert_eq!(t.key("/services/foo/backend/1"), Key::Server);
        assert_eq!(t.key("/services/foo/backend/deep/2"), Key::Server);
        assert_eq!(t.key("/services/foo/host"), Key::Plain);
        assert_eq!(t.key("/services/foo/path_prefix"), Key::Plain);
        for ignored in [
            "/services/foo",
            "/services/foo/backend",
            "/services/foo/other/1",
            "/services/foo/backendx/1",
            "/servicesx/foo/backend/1",
            "/elsewhere/foo/backend/1",
        ] {
            assert_eq!(t.key(ignored), Key::Ignored, "{ignored}");
        }
        assert!(matches!(
            t.key("/services/a.b/backend/1"),
            Key::BadService("a.b", _)
        ));
        assert!(matches!(
            t.key(&format!("/services/{}/host", "x".repeat(64))),
            Key::BadService(..)
        ));
        assert_eq!(t.service_of("/services/foo/backend/1"), Some("foo"));
        assert_eq!(t.service_of("/services/foo"), Some("foo"));
        assert_eq!(t.service_of("/services"), None);
        assert_eq!(t.servers_dir("foo"), "/services/foo/backend/");

        let cfg = config("");
        let t = TreeLayout::new(&cfg.service_trees[0]);
        assert_eq!(t.key("/services/foo/1"), Key::Server);
        assert_eq!(t.key("/services/foo/host"), Key::Plain);
        assert_eq!(t.key("/services/foo/config/1"), Key::Ignored);
        assert_eq!(t.servers_dir("foo"), "/services/foo/");
    }

    struct Fixture {
        publisher: Arc<Publisher>,
        mirror: Mirror,
        sink: TreeSink,
        t0: Instant,
    }

    impl Fixture {
        fn new() -> Fixture {
            let cfg = config("backend");
            let publisher = Arc::new(Publisher::new(&cfg));
            let tree = &cfg.service_trees[0];
            Fixture {
                sink: TreeSink::new(0, tree, Arc::clone(&publisher), Vec::new()),
                mirror: Mirror::tree(TreeLayout::new(tree)),
                publisher,
                t0: Instant::now(),
            }
        }

        fn put(&mut self, key: &str, value: &str, at: Duration) -> bool {
            self.mirror.put(key, value) == Applied::Changed
                && self.sink.changed(&self.mirror, key, self.t0 + at)
        }

        fn delete(&mut self, key: &str, at: Duration) -> bool {
            self.mirror.delete(key) == Applied::Changed
                && self.sink.changed(&self.mirror, key, self.t0 + at)
        }

        /// The addresses of `service`'s backend, `None` when it is not published.
        fn servers(&self, service: &str) -> Option<Vec<String>> {
            let snap = self.publisher.load();
            let b = snap.backend(service)?;
            Some(b.servers.iter().map(|s| s.addr.clone()).collect())
        }

        /// The host of the route to `service` in frontend `web`.
        fn host(&self, service: &str) -> Option<HostMatch> {
            let snap = self.publisher.load();
            let (_, table) = snap.routes.iter().find(|(f, _)| f == "web")?;
            let r = table
                .routes()
                .iter()
                .find(|r| &*r.backend_name == service)?;
            Some(r.host.clone())
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_service_appears_moves_and_lingers_before_it_is_removed() {
        let mut f = Fixture::new();
        assert!(!f.sink.listed(&f.mirror, false, true, f.t0));
        assert!(f.put("/services/foo/backend/1", "10.0.0.1:80", ms(0)));
        assert_eq!(f.servers("foo").unwrap(), ["10.0.0.1:80"]);
        assert_eq!(
            f.host("foo"),
            Some(HostMatch::Exact("foo.example.com".into()))
        );
        // A route value before the service's first server creates nothing.
        assert!(!f.put("/services/bar/host", "bar.internal", ms(0)));
        assert!(f.servers("bar").is_none());
        assert!(f.put("/services/bar/backend/1", "10.0.0.2:80", ms(0)));
        assert_eq!(f.host("bar"), Some(HostMatch::Exact("bar.internal".into())));
        // Garbage and keys beside the servers change nothing.
        assert!(!f.put("/services/foo/backend/2", "garbage", ms(0)));
        assert!(!f.put("/services/foo/notes", "10.0.0.9:80", ms(0)));
        assert_eq!(f.servers("foo").unwrap(), ["10.0.0.1:80"]);

        // No servers: published empty (503), lingering 1 s from the event.
        assert!(f.delete("/services/foo/backend/1", ms(100)));
        assert_eq!(f.servers("foo").unwrap(), Vec::<String>::new());
        assert!(f.host("foo").is_some());
        assert_eq!(f.sink.deadline(), Some(f.t0 + ms(1100)));
        f.sink.expire(f.t0 + ms(1099));
        assert!(f.servers("foo").is_some(), "not before its deadline");
        // Back before the deadline: the linger is cancelled.
        assert!(f.put("/services/foo/backend/3", "10.0.0.3:80", ms(500)));
        assert_eq!(f.sink.deadline(), None);
        f.sink.expire(f.t0 + ms(5000));
        assert_eq!(f.servers("foo").unwrap(), ["10.0.0.3:80"]);

        // Gone again: removed at the deadline, routes and all.
        assert!(f.delete("/services/foo/backend/3", ms(2000)));
        f.sink.expire(f.t0 + ms(3000));
        assert!(f.servers("foo").is_none());
        assert!(f.host("foo").is_none());
        assert_eq!(f.sink.deadline(), None);
        assert_eq!(f.publisher.services(0), ["bar"]);
    }

    #[test]
    fn a_listing_that_lacks_a_service_starts_its_linger() {
        let mut f = Fixture::new();
        let listing = |addr: &str| {
            vec![
                (
                    "/services/foo/backend/1".to_string(),
                    "10.0.0.1:80".to_string(),
                ),
                ("/services/bar/backend/1".to_string(), addr.to_string()),
                (
                    "/services/bar/host".to_string(),
                    "api.example.com".to_string(),
                ),
            ]
        };
        f.mirror.replace(&listing("10.0.0.2:80"));
        assert!(f.sink.listed(&f.mirror, true, true, f.t0));
        assert_eq!(
            f.host("bar"),
            Some(HostMatch::Exact("api.example.com".into()))
        );
        // A resync (after an index reset, a compaction, a reconnect) without foo.
        f.mirror.replace(&listing("10.0.0.2:80")[1..]);
        assert!(f.sink.listed(&f.mirror, true, false, f.t0 + ms(10)));
        assert_eq!(f.servers("foo").unwrap(), Vec::<String>::new());
        assert_eq!(f.sink.deadline(), Some(f.t0 + ms(1010)));
        f.sink.expire(f.t0 + ms(1010));
        assert!(f.servers("foo").is_none());
        assert_eq!(f.servers("bar").unwrap(), ["10.0.0.2:80"]);

        // A new watch (after a reload) takes over the published services: a first listing
        // that lacks one lingers it.
        let cfg = config("backend");
        let tree = &cfg.service_trees[0];
        let mut sink = TreeSink::new(0, tree, Arc::clone(&f.publisher), Vec::new());
        let mut mirror = Mirror::tree(TreeLayout::new(tree));
        mirror.replace(&[]);
        assert!(sink.listed(&mirror, false, true, f.t0));
        assert_eq!(f.servers("bar").unwrap(), Vec::<String>::new());
        assert_eq!(sink.deadline(), Some(f.t0 + ms(1000)));
    }

    #[test]
    fn a_directory_delete_empties_its_service() {
        let mut f = Fixture::new();
        f.put("/services/foo/backend/1", "10.0.0.1:80", ms(0));
        f.put("/services/foo/backend/2", "10.0.0.2:80", ms(0));
        let ev = v2::Response {
            action: "delete".into(),
            node: v2::Node {
                key: "/services/foo".into(),
                value: None,
                dir: true,
                nodes: vec![],
                modified_index: 9,
            },
            prev_node: None,
        };
        assert_eq!(f.mirror.apply(&ev), Applied::Changed);
        assert!(f.sink.changed(&f.mirror, "/services/foo", f.t0));
        assert_eq!(f.servers("foo").unwrap(), Vec::<String>::new());
        assert!(f.sink.deadline().is_some());
    }

    #[test]
    fn saved_services_are_served_until_the_first_listing() {
        let cfg = config("backend");
        let tree = &cfg.service_trees[0];
        let publisher = Arc::new(Publisher::new(&cfg));
        let spec = ServerSpec {
            name: "1".into(),
            addr: "10.0.0.1:80".into(),
            weight: 1,
            drain: false,
            source: crate::snapshot::Source::Etcd,
        };
        let saved = vec![("foo".to_string(), vec![spec])];
        let mut sink = TreeSink::new(0, tree, Arc::clone(&publisher), saved);
        assert_eq!(sink.serve_saved(), Some(1));
        assert_eq!(sink.serve_saved(), None, "once");
        assert_eq!(publisher.services(0), ["foo"]);
    }
}
