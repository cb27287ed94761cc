//! Server selection: round-robin over the available servers of one published backend.
//!
//! The counter ([`RoundRobin`]) is shared by every snapshot of a backend, so a membership change
//! does not restart the rotation. A pick is lock-free and allocation-free: one `fetch_add`, and
//! in the common case (the server under the cursor is available) one slot read. When that server
//! is down or draining, the pick takes the k-th available server instead, so the share of an
//! unavailable server spreads over all the others rather than landing on its neighbour.
//! This module does not know about health checks or discovery; it reads `Server::available`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::snapshot::{BackendSet, Server};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    #[inline]
    fn tick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

impl BackendSet {
    /// The next available server, or `None` when no server is up.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Server>> {
        self.pick_excluding(&[])
    }

    /// The next available server that is not in `tried` (used for retries, so a failed
    /// connect goes to a different server). `tried` is short: at most `retries + 1` entries.
    pub fn pick_excluding(&self, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        let servers = &self.servers;
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let tick = self.rr.tick();
        let usable = |s: &Arc<Server>| s.available() && !tried.iter().any(|t| Arc::ptr_eq(t, s));
        let first = &servers[tick % n];
        if usable(first) {
            return Some(first);
        }
        let count = servers.iter().filter(|s| usable(s)).count();
        if count == 0 {
            return None;
        }
        servers.iter().filter(|s| usable(s)).nth(tick % count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::snapshot::{Publisher, ServerSpec, Source};
    use std::collections::HashMap;

    fn publisher(n: usize) -> Publisher {
        let cfg = Config::from_toml(
            r#"
[etcd]
[[frontend]]
name = "f"
bind = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
etcd_prefix = "/svc"
"#,
        )
        .unwrap();
        let p = Publisher::new(&cfg);
        let specs = (0..n)
            .map(|i| ServerSpec {
                name: format!("{i}"),
                addr: format!("127.0.0.1:{}", 1000 + i),
                weight: 1,
                drain: i == 4,
                source: Source::Etcd,
            })
            .collect();
        p.publish_discovered("b", specs);
        p
    }

    fn counts(b: &BackendSet, picks: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            *m.entry(b.pick().unwrap().addr.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn even_rotation_over_available_servers() {
        let p = publisher(3);
        let snap = p.load();
        let b = &snap.backends[0];
        let m = counts(b, 300);
        assert_eq!(m.len(), 3);
        assert!(m.values().all(|&c| c == 100), "{m:?}");
    }

    #[test]
    fn down_and_draining_servers_are_skipped_and_share_spreads() {
        let p = publisher(5); // server 4 is draining
        let snap = p.load();
        let b = &snap.backends[0];
        b.servers[1].set_up(false);
        let m = counts(b, 3000);
        assert!(!m.contains_key("127.0.0.1:1001"));
        assert!(!m.contains_key("127.0.0.1:1004"));
        assert_eq!(m.len(), 3);
        for c in m.values() {
            assert!((800..=1200).contains(c), "uneven: {m:?}");
        }
    }

    #[test]
    fn none_when_all_down_or_empty() {
        let p = publisher(2);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in &b.servers {
            s.set_up(false);
        }
        assert!(b.pick().is_none());
        let empty = publisher(0);
        assert!(empty.load().backends[0].pick().is_none());
    }

    #[test]
    fn excluding_tried_servers_moves_on() {
        let p = publisher(3);
        let snap = p.load();
        let b = &snap.backends[0];
        let first = Arc::clone(b.pick().unwrap());
        for _ in 0..10 {
            let other = b.pick_excluding(std::slice::from_ref(&first)).unwrap();
            assert!(!Arc::ptr_eq(other, &first));
        }
        let all: Vec<_> = b.servers.clone();
        assert!(b.pick_excluding(&all).is_none());
    }
}
