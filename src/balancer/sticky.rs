//! Cookie persistence (`[backend.sticky]`) on the balancer's side: the opaque id that names a
//! server in the cookie, the map from id to server built at publish time ([`Ids`], so a lookup
//! is one hash probe at 10,000 servers), and the pick of the server a cookie names. Reading and
//! writing the cookie itself is `http/sticky.rs`'s.
//!
//! An id is the first 64 bits of SHA-1 over a fixed key, the backend's name and the server's
//! address, as 16 hex digits. It is derived, not random: every Switchyard instance behind one
//! DNS name, and the same one after a restart or an upgrade, gives a server the same id, and
//! the id does not show the address (HAProxy's `cookie` values are names the operator writes
//! per server; ours cannot be written by hand, since servers come and go through etcd). It is
//! not a secret: someone who knows the scheme and guesses an address can compute its id, which
//! gets them no more than a request to that server would.

use std::collections::HashMap;
use std::sync::Arc;

use sha1::{Digest, Sha1};

use crate::snapshot::{BackendSet, Server};

/// The fixed key hashed ahead of every id: changing it re-pins every client once.
const ID_KEY: &[u8] = b"switchyard sticky server id v1\0";

/// Hex digits in a cookie value.
pub const ID_HEX_LEN: usize = 16;

/// The id of server `addr` of backend `backend`.
pub fn server_id(backend: &str, addr: &str) -> u64 {
    let mut h = Sha1::new();
    h.update(ID_KEY);
    // The name's length first: ("ab", "c:1") and ("a", "bc:1") are different servers.
    h.update((backend.len() as u64).to_be_bytes());
    h.update(backend.as_bytes());
    h.update(addr.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// An id as the cookie carries it: 16 lowercase hex digits.
pub fn render(id: u64) -> String {
    format!("{id:0width$x}", width = ID_HEX_LEN)
}

/// A cookie value as an id: exactly 16 hex digits (either case), else `None`.
pub fn parse(v: &[u8]) -> Option<u64> {
    if v.len() != ID_HEX_LEN || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Id -> index into a backend's `servers`, built with the published set (only for a sticky
/// backend).
#[derive(Debug, Default)]
pub struct Ids {
    map: FastMap<u64, u32>,
}

impl Ids {
    /// The ids of `servers` of backend `backend`. Two servers with one address (under two
    /// names) share an id: the first one listed is the one it names.
    pub fn build(backend: &str, servers: &[Arc<Server>]) -> Ids {
        let mut map = FastMap::with_capacity_and_hasher(servers.len(), Default::default());
        for (i, s) in servers.iter().enumerate() {
            map.entry(server_id(backend, &s.addr)).or_insert(i as u32);
        }
        Ids { map }
    }

    /// The index of the server `id` names.
    pub fn get(&self, id: u64) -> Option<usize> {
        self.map.get(&id).map(|&i| i as usize)
    }
}

impl BackendSet {
    /// The index into `servers` of the server `id` names (whatever its state), if this backend
    /// is sticky and has it.
    pub fn sticky_index(&self, id: u64) -> Option<usize> {
        self.sticky.as_ref()?.get(id)
    }

    /// The server at `index` if it may take the request: up, not draining, weighted, not in
    /// maintenance ([`Server::available`]) and not already tried by this request. Slowstart
    /// does not turn a pinned client away (HAProxy honours the cookie during slowstart too).
    pub fn sticky_pick(&self, index: usize, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        let s = self.servers.get(index)?;
        (s.available() && !tried.iter().any(|t| Arc::ptr_eq(t, s))).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_hide_the_address() {
        let a = server_id("cache", "10.0.0.1:8080");
        // Fixed by SHA-1's spec and the key: the same in every process and version.
        assert_eq!(render(a), render(server_id("cache", "10.0.0.1:8080")));
        assert_eq!(render(a), "d9b3052fb8a0ee0c", "the id must never change");
        assert_ne!(a, server_id("cache", "10.0.0.1:8081"));
        assert_ne!(a, server_id("other", "10.0.0.1:8080"));
        assert_ne!(server_id("ab", "c:1"), server_id("a", "bc:1"));
        let v = render(a);
        assert_eq!(v.len(), ID_HEX_LEN);
        for part in ["10", "8080", "0a000001", "1f90"] {
            assert!(!v.contains(part), "{v} shows {part}");
        }
    }

    #[test]
    fn the_published_map_names_every_server_of_ten_thousand() {
        use crate::config::Config;
        use crate::snapshot::{Publisher, ServerSpec, Source};
        let cfg = Config::from_toml(
            "[etcd]\n[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\netcd_prefix = \"/svc\"\n[backend.sticky]\ncookie = \"s\"\n",
        )
        .unwrap();
        let p = Publisher::new(&cfg);
        let specs: Vec<ServerSpec> = (0..10_000)
            .map(|i| ServerSpec {
                name: format!("{i:05}"),
                addr: format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
                weight: 1,
                drain: false,
                source: Source::Etcd,
            })
            .collect();
        p.publish_discovered("b", &specs);
        let snap = p.load();
        let b = &snap.backends[0];
        assert_eq!(b.servers.len(), 10_000);
        for (i, s) in b.servers.iter().enumerate() {
            assert_eq!(
                b.sticky_index(server_id("b", &s.addr)),
                Some(i),
                "{}",
                s.addr
            );
        }
        assert_eq!(b.sticky_index(server_id("b", "10.0.0.0:8081")), None);
        // Up and untried: picked; draining or tried: not.
        let first = &b.servers[0];
        assert!(b.sticky_pick(0, &[]).is_some_and(|s| Arc::ptr_eq(s, first)));
        assert!(b.sticky_pick(0, std::slice::from_ref(first)).is_none());
        b.servers[1].set_up(false);
        assert!(b.sticky_pick(1, &[]).is_none());
        assert!(b.sticky_pick(2, &[]).is_some());
        assert!(b.sticky_pick(10_000, &[]).is_none());
        p.set_admin_state("b", "00000", crate::snapshot::AdminState::Drain)
            .unwrap();
        let snap = p.load();
        assert!(snap.backends[0].sticky_pick(0, &[]).is_none(), "draining");
    }

    #[test]
    fn values_parse_only_as_sixteen_hex_digits() {
        let id = server_id("b", "127.0.0.1:1");
        assert_eq!(parse(render(id).as_bytes()), Some(id));
        assert_eq!(parse(render(id).to_uppercase().as_bytes()), Some(id));
        assert_eq!(parse(b"0000000000000000"), Some(0));
        for bad in [
            &b""[..],
            b"abc",
            b"0123456789abcdef0",
            b"0123456789abcdeg",
            b"+123456789abcdef",
            b"0123456789abcde ",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
