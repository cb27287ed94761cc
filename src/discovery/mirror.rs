//! The mirror of one prefix: `key -> server` for every valid key below it, kept up to date by
//! authoritative listings and by v2 and v3 watch events ([`Mirror`]), and whether each of them
//! changed anything ([`Applied`]). Values are parsed by [`crate::value`]. Under a backend's
//! prefix every key is a server; under a service tree's, the [`TreeLayout`] says which keys are
//! servers (and of which service), which are a service's plain route values, and which are
//! ignored.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::{debug, warn};

use super::tree::{Key, TreeLayout};
use crate::etcd::v2;
use crate::metrics as m;
use crate::snapshot::{ServerSpec, Source};
use crate::value::parse_value;

/// `key -> server` for every valid key below one prefix, plus the invalid values already reported
/// (so each is warned about and counted once, not on every re-list). Each key's server is kept
/// as the spec to publish, so publishing after one event copies nothing per server.
#[derive(Debug, Default)]
pub struct Mirror {
    prefix: String,
    backend: String,
    /// `Some` for a service tree: which keys are servers, of which service.
    tree: Option<TreeLayout>,
    servers: BTreeMap<String, ServerSpec>,
    /// A tree's plain values (a service's `host` and `path_prefix`), by key.
    values: BTreeMap<String, String>,
    reported_invalid: HashMap<String, String>,
    /// A tree's directories already warned about as no service name.
    reported_names: HashSet<String>,
}

/// What applying an event did to the mirror.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
}

impl Mirror {
    pub fn new(backend: &str, prefix: &str) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            backend: backend.to_string(),
            ..Mirror::default()
        }
    }

    /// The mirror of a service tree: a service's servers are the ones below its directory
    /// ([`Mirror::specs_under`]).
    pub(crate) fn tree(layout: TreeLayout) -> Mirror {
        Mirror {
            prefix: layout.prefix().to_string(),
            backend: layout.prefix().to_string(),
            tree: Some(layout),
            ..Mirror::default()
        }
    }

    /// The server list to publish, in key order.
    pub fn specs(&self) -> impl Iterator<Item = &ServerSpec> {
        self.servers.values()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The servers below `dir` (a tree service's directory, ending in `/`), in key order.
    pub fn specs_under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a ServerSpec> {
        self.servers
            .range::<str, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(dir))
            .map(|(_, s)| s)
    }

    /// The keys of every server, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    /// A plain value of a tree (a service's route override).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The backend a key's server belongs to, for logs and metrics: this mirror's backend, or
    /// the tree service the key is under (the tree's prefix for a key under no service).
    pub fn label<'a>(&'a self, key: &'a str) -> &'a str {
        match &self.tree {
            None => &self.backend,
            Some(t) => t.service_of(key).unwrap_or(&self.prefix),
        }
    }

    /// What `key` holds: always a server under a backend's prefix; under a tree, what its
    /// layout says (a directory that is no service name is warned about once).
    fn kind<'k>(&mut self, key: &'k str) -> Key<'k> {
        let Some(tree) = &self.tree else {
            return Key::Server;
        };
        match tree.key(key) {
            Key::BadService(name, why) => {
                if self.reported_names.insert(name.to_string()) {
                    warn!(tree = %self.prefix, directory = name, error = %why,
                        "a directory of the service tree is no service name; skipped");
                }
                Key::BadService(name, why)
            }
            other => other,
        }
    }

    /// Parses `raw` for `key` into the server to publish, named after the key's last segment
    /// (confd's `base`). An invalid value is reported once and yields `None`.
    fn parse(&mut self, key: &str, raw: &str) -> Option<ServerSpec> {
        match parse_value(raw) {
            Ok(v) => {
                self.reported_invalid.remove(key);
                Some(ServerSpec {
                    name: key.rsplit('/').next().unwrap_or(key).to_string(),
                    addr: v.addr,
                    weight: v.weight,
                    drain: v.drain,
                    source: Source::Etcd,
                })
            }
            Err(e) => {
                if self.reported_invalid.get(key).map(String::as_str) != Some(raw) {
                    let backend = self.label(key).to_string();
                    warn!(backend = %backend, key, value = raw, error = %e,
                        "invalid value in etcd skipped");
                    metrics::counter!(m::DISCOVERY_INVALID_VALUES, "backend" => backend)
                        .increment(1);
                    self.reported_invalid
                        .insert(key.to_string(), raw.to_string());
                }
                None
            }
        }
    }

    /// Replaces the whole mirror with an authoritative listing. A key whose new value is invalid
    /// keeps its last good value (as confd + HAProxy keep the last config that passed the check).
    pub fn replace(&mut self, leaves: &[(String, String)]) -> Applied {
        let mut next = BTreeMap::new();
        let mut values = BTreeMap::new();
        for (key, raw) in leaves {
            match self.kind(key) {
                Key::Server => {}
                Key::Plain => {
                    values.insert(key.clone(), raw.trim().to_string());
                    continue;
                }
                Key::Ignored | Key::BadService(..) => continue,
            }
            if let Some(v) = self.parse(key, raw) {
                next.insert(key.clone(), v);
            } else if let Some(old) = self.servers.get(key) {
                next.insert(key.clone(), old.clone());
            }
        }
        self.reported_invalid
            .retain(|k, _| leaves.iter().any(|(key, _)| key == k));
        if next == self.servers && values == self.values {
            Applied::Unchanged
        } else {
            self.servers = next;
            self.values = values;
            Applied::Changed
        }
    }

    /// A key was written (v2 set/create/update/compareAndSwap, v3 PUT). An invalid value keeps
    /// the last good one of that key (e.g. a heartbeat that blanked it).
    pub fn put(&mut self, key: &str, raw: &str) -> Applied {
        match self.kind(key) {
            Key::Server => {}
            Key::Plain => {
                let raw = raw.trim();
                if self.values.get(key).map(String::as_str) == Some(raw) {
                    return Applied::Unchanged;
                }
                self.values.insert(key.to_string(), raw.to_string());
                return Applied::Changed;
            }
            Key::Ignored | Key::BadService(..) => return Applied::Unchanged,
        }
        match self.parse(key, raw) {
            Some(v) if self.servers.get(key) == Some(&v) => Applied::Unchanged,
            Some(v) => {
                self.servers.insert(key.to_string(), v);
                Applied::Changed
            }
            None => Applied::Unchanged,
        }
    }

    /// A key was removed (v2 delete/compareAndDelete/expire, v3 DELETE, lease expiry).
    pub fn delete(&mut self, key: &str) -> Applied {
        self.reported_invalid.remove(key);
        self.remove(key)
    }

    /// Applies one v2 watch event.
    pub fn apply(&mut self, ev: &v2::Response) -> Applied {
        let node = &ev.node;
        match ev.action.as_str() {
            "set" | "create" | "update" | "compareAndSwap" => {
                if node.dir {
                    // A new (empty) directory holds no server; a dir replacing a key removes it.
                    return self.remove(&node.key);
                }
                self.put(&node.key, node.value.as_deref().unwrap_or(""))
            }
            "delete" | "compareAndDelete" | "expire" => {
                if node.dir || node.key == self.prefix {
                    // One event for a whole directory: drop every key below it.
                    let before = self.servers.len() + self.values.len();
                    let dir = format!("{}/", node.key.trim_end_matches('/'));
                    self.servers.retain(|k, _| !k.starts_with(&dir));
                    self.values.retain(|k, _| !k.starts_with(&dir));
                    self.reported_invalid.retain(|k, _| !k.starts_with(&dir));
                    if self.servers.len() + self.values.len() == before {
                        Applied::Unchanged
                    } else {
                        Applied::Changed
                    }
                } else {
                    self.delete(&node.key)
                }
            }
            other => {
                debug!(action = other, key = %node.key, "unknown etcd action ignored");
                Applied::Unchanged
            }
        }
    }

    fn remove(&mut self, key: &str) -> Applied {
        if self.servers.remove(key).is_some() || self.values.remove(key).is_some() {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, key: &str, value: Option<&str>, idx: u64) -> v2::Response {
        v2::Response {
            action: action.into(),
            node: v2::Node {
                key: key.into(),
                value: value.map(String::from),
                dir: false,
                nodes: vec![],
                modified_index: idx,
            },
            prev_node: None,
        }
    }

    fn addrs(m: &Mirror) -> Vec<String> {
        m.specs()
            .map(|s| format!("{}={}", s.name, s.addr))
            .collect()
    }

    #[test]
    fn every_action_is_applied() {
        let mut m = Mirror::new("b", "/svc");
        let p = "/svc/";
        assert_eq!(
            m.apply(&ev("create", &format!("{p}1"), Some("h:1"), 5)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("set", &format!("{p}2"), Some("h:2"), 6)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("update", &format!("{p}2"), Some("h:22"), 7)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("compareAndSwap", &format!("{p}1"), Some("h:11"), 8)),
            Applied::Changed
        );
        assert_eq!(addrs(&m), ["1=h:11", "2=h:22"]);
        // The same value again (a plain re-set) changes nothing.
        assert_eq!(
            m.apply(&ev("set", &format!("{p}1"), Some("h:11"), 9)),
            Applied::Unchanged
        );
        assert_eq!(
            m.apply(&ev("compareAndDelete", &format!("{p}1"), None, 10)),
            Applied::Changed
        );
        assert_eq!(
            m.apply(&ev("expire", &format!("{p}2"), None, 11)),
            Applied::Changed
        );
        assert!(m.is_empty());
        assert_eq!(
            m.apply(&ev("delete", &format!("{p}9"), None, 12)),
            Applied::Unchanged
        );
    }

    #[test]
    fn invalid_value_is_skipped_and_keeps_the_last_good_one() {
        let mut m = Mirror::new("b", "/svc");
        m.apply(&ev("set", "/svc/1", Some("h:1"), 5));
        // The old-style heartbeat that blanks the value must not drop a live server.
        assert_eq!(
            m.apply(&ev("update", "/svc/1", Some(""), 6)),
            Applied::Unchanged
        );
        assert_eq!(
            m.apply(&ev("set", "/svc/2", Some("garbage"), 7)),
            Applied::Unchanged
        );
        assert_eq!(addrs(&m), ["1=h:1"]);
        // A listing keeps the last good value of a key that now holds garbage.
        let listing = vec![
            ("/svc/1".to_string(), "".to_string()),
            ("/svc/3".to_string(), "h:3".to_string()),
        ];
        assert_eq!(m.replace(&listing), Applied::Changed);
        assert_eq!(addrs(&m), ["1=h:1", "3=h:3"]);
        assert_eq!(m.replace(&listing), Applied::Unchanged);
    }

    #[test]
    fn recursive_dir_delete_drops_everything_below() {
        let mut m = Mirror::new("b", "/svc");
        m.replace(&[
            ("/svc/1".into(), "h:1".into()),
            ("/svc/sub/2".into(), "h:2".into()),
            ("/svc/sub/3".into(), "h:3".into()),
            ("/svc/subway".into(), "h:4".into()),
        ]);
        let mut dir = ev("delete", "/svc/sub", None, 20);
        dir.node.dir = true;
        assert_eq!(m.apply(&dir), Applied::Changed);
        assert_eq!(addrs(&m), ["1=h:1", "subway=h:4"]);
        // Deleting the prefix directory itself empties the set.
        let mut root = ev("delete", "/svc", None, 21);
        root.node.dir = true;
        assert_eq!(m.apply(&root), Applied::Changed);
        assert!(m.is_empty());
    }

    #[test]
    fn nested_names_are_the_last_segment() {
        let mut m = Mirror::new("b", "/svc");
        m.replace(&[("/svc/sub/3".into(), "h:3".into())]);
        let names: Vec<&str> = m.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["3"]);
    }
}
