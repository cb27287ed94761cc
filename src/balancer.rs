//! Server selection over one published backend: smooth weighted round-robin, least
//! connections, and power-of-two random choices, plus slowstart, the panic threshold and the
//! per-backend runtime state ([`BackendRuntime`]: the round-robin cursor, the retry budget and
//! the server queue) that is carried from snapshot to snapshot. With `max_conns_per_server`, a
//! pick skips servers at their limit ([`queue`] waits when all are).
//!
//! A pick is lock-free and allocation-free. Round-robin reads a precomputed schedule (built at
//! publish time, see [`schedule`]): one `fetch_add` and, in the common case (the server under
//! the cursor is available), one slot read. When that server is down or draining, the pick takes
//! the k-th available server by weight instead, so the share of an unavailable server spreads
//! over all the others rather than landing on its neighbour.
//! This module does not change health; it reads `Server::available`.
//!
//! `balance = "hash"` reads a Maglev table built at publish time ([`maglev`]): the key's slot,
//! and when that server is down, draining or tried, the next slots of the table in turn, so the
//! key's traffic goes to the next server and comes back when the first is up again. Slowstart
//! does not apply to it (as in HAProxy, a hash does not ramp: the keys are the server's).

pub mod maglev;
pub mod queue;
pub mod sticky;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;
use crate::snapshot::{BackendSet, Server};

/// Per-backend state that outlives snapshots.
#[derive(Debug, Default)]
pub struct BackendRuntime {
    next: AtomicUsize,
    /// Requests in flight through this backend, and how many of them are retries.
    in_flight: AtomicUsize,
    retries: AtomicUsize,
    /// Traffic counters for the admin API (cumulative, by backend name).
    pub stats: crate::stats::BackendStats,
    /// Requests waiting for a server slot (`max_conns_per_server`).
    pub queue: queue::Queue,
}

impl BackendRuntime {
    #[inline]
    fn tick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            rt: Arc::clone(self),
            retry: false,
        }
    }
}

/// A request in flight; after [`InFlight::try_retry`] succeeded, also a retry in flight.
pub struct InFlight {
    rt: Arc<BackendRuntime>,
    retry: bool,
}

impl InFlight {
    /// Envoy-style retry budget: retries in flight may be at most `percent` of the requests in
    /// flight, but `min` concurrent retries are always allowed. A dead backend therefore cannot
    /// multiply the load by the retry count.
    pub fn try_retry(&mut self, percent: u32, min: u32) -> bool {
        if self.retry {
            return true; // this request already holds a retry slot
        }
        let in_flight = self.rt.in_flight.load(Ordering::Relaxed);
        let allowed = (in_flight * percent as usize / 100).max(min as usize);
        if self.rt.retries.fetch_add(1, Ordering::Relaxed) < allowed {
            self.retry = true;
            true
        } else {
            self.rt.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.rt.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.retry {
            self.rt.retries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Builds the smooth weighted round-robin order for `servers` (indices). Each server with
/// weight w gets w slots, spread evenly: slot j of server i sits at virtual time (j + 1/2) / w,
/// and the slots are taken in time order (ties by index). For weights 5,1,1 this gives
/// `a a b a c a a`-like interleaving instead of `a a a a a b c`. Empty when all weights are equal.
pub fn schedule(servers: &[Arc<Server>]) -> Vec<u32> {
    let first = servers.first().map(|s| s.weight);
    if servers.iter().all(|s| Some(s.weight) == first) {
        return Vec::new();
    }
    let g = servers
        .iter()
        .map(|s| s.weight)
        .filter(|&w| w > 0)
        .fold(0, gcd);
    let total: usize = servers.iter().map(|s| (s.weight / g.max(1)) as usize).sum();
    let mut out = Vec::with_capacity(total);
    // (virtual time as a fraction num/den compared through f64, index, slot number, weight)
    let mut heap = BinaryHeap::new();
    for (i, s) in servers.iter().enumerate() {
        let w = s.weight / g.max(1);
        if w > 0 {
            heap.push(Reverse((Key(0.5 / w as f64), i, 0u32, w)));
        }
    }
    while let Some(Reverse((_, i, j, w))) = heap.pop() {
        out.push(i as u32);
        if j + 1 < w {
            heap.push(Reverse((Key((j as f64 + 1.5) / w as f64), i, j + 1, w)));
        }
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// An f64 with a total order, for the schedule heap (values are finite and positive).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn untried(s: &Arc<Server>, tried: &[Arc<Server>]) -> bool {
    !tried.iter().any(|t| Arc::ptr_eq(t, s))
}

/// Random turns tried when a roundrobin turn falls on an unusable server, before the scan.
const RR_PROBES: usize = 4;

/// Slots of the hash table walked from a key's slot while their servers are unusable, before
/// the scan (with 90% of the weight down, all 64 are down once in a thousand keys).
const HASH_PROBES: usize = 64;

impl BackendSet {
    /// The next server for a request, or `None` when no server is available.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<Server>> {
        self.pick_excluding(&[])
    }

    /// The next server that is not in `tried` (used for retries, so a failed attempt goes to a
    /// different server). `tried` is short: at most `retries + 1` entries.
    pub fn pick_excluding(&self, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        self.pick_keyed(None, tried)
    }

    /// As [`BackendSet::pick_excluding`], with the hash of the request's `hash_key`
    /// ([`maglev::key_hash`]) for `balance = "hash"`; without one (no such header or cookie),
    /// or for the other balances, the key is not used.
    pub fn pick_keyed(&self, key: Option<u64>, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        if self.servers.is_empty() {
            return None;
        }
        match self.config.balance {
            Balance::Hash => match key {
                Some(h) => self.pick_hash(h, tried),
                None => self.pick_rr(tried),
            },
            Balance::Roundrobin => self.pick_rr(tried),
            Balance::Leastconn => self.pick_least(tried, self.runtime.tick()),
            Balance::Random2 => self.pick_random2(tried),
        }
    }

    /// Envoy's panic mode: with fewer than `panic_threshold` percent of the (non-draining)
    /// servers healthy, health is ignored and traffic spreads over all of them.
    fn in_panic(&self) -> bool {
        let threshold = self.config.panic_threshold as usize;
        if threshold == 0 {
            return false;
        }
        let (mut total, mut healthy) = (0usize, 0usize);
        for s in self
            .servers
            .iter()
            .filter(|s| s.weight > 0 && !s.is_draining())
        {
            total += 1;
            healthy += s.is_up() as usize;
        }
        total > 0 && healthy * 100 < threshold * total
    }

    /// Whether a candidate may take this request: available (or, in panic, merely not
    /// draining), not tried yet, and past its slowstart dice roll.
    fn usable(&self, s: &Arc<Server>, tried: &[Arc<Server>], panic: bool) -> bool {
        let ok = if panic {
            s.weight > 0 && !s.is_draining()
        } else {
            s.available()
        };
        ok && untried(s, tried) && self.has_slot(s)
    }

    /// Below `max_conns_per_server` (always, without one: a single branch on the hot path).
    #[inline]
    fn has_slot(&self, s: &Server) -> bool {
        let limit = self.config.max_conns_per_server;
        limit == 0 || s.active_now() < limit as usize
    }

    /// Whether any server could take a request, slots aside: `false` means a quick `503`
    /// rather than a wait in the queue.
    pub(crate) fn any_eligible(&self, tried: &[Arc<Server>]) -> bool {
        let panic = self.in_panic();
        self.servers.iter().any(|s| {
            let ok = if panic {
                s.weight > 0 && !s.is_draining()
            } else {
                s.available()
            };
            ok && untried(s, tried)
        })
    }

    fn slowstart_admits(&self, s: &Server) -> bool {
        let r = s.ramp(self.config.slowstart);
        r >= 1.0 || rand::random::<f64>() < r
    }

    fn pick_rr(&self, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        let tick = self.runtime.tick();
        let idx = if self.schedule.is_empty() {
            tick % self.servers.len()
        } else {
            self.schedule[tick % self.schedule.len()] as usize
        };
        let cand = &self.servers[idx];
        if self.usable(cand, tried, false) {
            if self.slowstart_admits(cand) {
                return Some(cand);
            }
            // Turned away by slowstart: someone else takes this turn, if there is anyone.
            return self
                .kth_by_weight(tried, false, tick, Some(cand))
                .or(Some(cand));
        }
        // The turn's server is down, draining or tried. Without a panic threshold, a few
        // random turns of the rotation nearly always find a usable server (each with its
        // weight's share), which spares the scans below: 15 us a pick at 10,000 servers with
        // 10% of them down. (With a threshold, panic mode must be judged first, over them all.)
        if self.config.panic_threshold == 0 {
            let turns = if self.schedule.is_empty() {
                self.servers.len()
            } else {
                self.schedule.len()
            };
            for _ in 0..RR_PROBES {
                let t = rand::random_range(0..turns);
                let s = match self.schedule.get(t) {
                    Some(&i) => &self.servers[i as usize],
                    None => &self.servers[t],
                };
                if self.usable(s, tried, false) && self.slowstart_admits(s) {
                    return Some(s);
                }
            }
        }
        let panic = self.in_panic();
        if panic && self.usable(cand, tried, true) {
            return Some(cand);
        }
        self.kth_by_weight(tried, panic, tick, None)
    }

    /// The key's server in the Maglev table, or the first usable one in the slots after it.
    fn pick_hash(&self, h: u64, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        let Some(table) = &self.hash else {
            return self.pick_rr(tried); // no server has a weight: nobody is in the table
        };
        let start = table.slot(h);
        for i in 0..HASH_PROBES {
            let s = &self.servers[table.at(start + i)];
            if self.usable(s, tried, false) {
                return Some(s);
            }
        }
        // Most of the weight is unusable: still the same server for the same key while the
        // set stays the same, chosen by weight among the usable ones (or, in panic, all).
        let panic = self.in_panic();
        let first = &self.servers[table.at(start)];
        if panic && self.usable(first, tried, true) {
            return Some(first);
        }
        self.kth_by_weight(tried, panic, h as usize, None)
    }

    /// The k-th usable server (other than `skip`) counting each one `weight` times
    /// (k = tick mod total weight).
    fn kth_by_weight(
        &self,
        tried: &[Arc<Server>],
        panic: bool,
        tick: usize,
        skip: Option<&Arc<Server>>,
    ) -> Option<&Arc<Server>> {
        let ok = |s: &&Arc<Server>| {
            self.usable(s, tried, panic) && skip.is_none_or(|k| !Arc::ptr_eq(k, s))
        };
        let total: usize = self
            .servers
            .iter()
            .filter(ok)
            .map(|s| s.weight as usize)
            .sum();
        if total == 0 {
            return None;
        }
        let mut k = tick % total;
        for s in self.servers.iter().filter(ok) {
            if k < s.weight as usize {
                return Some(s);
            }
            k -= s.weight as usize;
        }
        None
    }

    /// Fewest requests in flight per unit of (ramped) weight; the scan starts at a rotating
    /// offset so ties are spread.
    fn pick_least(&self, tried: &[Arc<Server>], tick: usize) -> Option<&Arc<Server>> {
        let best = self.least_among(tried, false, tick);
        if best.is_some() || !self.in_panic() {
            return best;
        }
        self.least_among(tried, true, tick)
    }

    fn least_among(&self, tried: &[Arc<Server>], panic: bool, tick: usize) -> Option<&Arc<Server>> {
        let n = self.servers.len();
        let mut best: Option<(&Arc<Server>, f64)> = None;
        for i in 0..n {
            let s = &self.servers[(tick + i) % n];
            if !self.usable(s, tried, panic) {
                continue;
            }
            let score = self.score(s);
            if best.is_none_or(|(_, b)| score < b) {
                best = Some((s, score));
            }
        }
        best.map(|(s, _)| s)
    }

    fn score(&self, s: &Server) -> f64 {
        (s.active() as f64 + 1.0) / (s.weight as f64 * s.ramp(self.config.slowstart))
    }

    /// Two random candidates, the less loaded wins; falls back to a full scan when neither is
    /// usable.
    fn pick_random2(&self, tried: &[Arc<Server>]) -> Option<&Arc<Server>> {
        let n = self.servers.len();
        let a = &self.servers[rand::random_range(0..n)];
        let b = &self.servers[rand::random_range(0..n)];
        match (self.usable(a, tried, false), self.usable(b, tried, false)) {
            (true, true) => Some(if self.score(b) < self.score(a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => self.pick_least(tried, self.runtime.tick()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::snapshot::{AdminState, Publisher, ServerSpec, Source};
    use std::collections::HashMap;

    fn publisher_with(balance: &str, extra: &str, weights: &[u32]) -> Publisher {
        let cfg = Config::from_toml(&format!(
            r#"
[etcd]
[[frontend]]
name = "f"
bind = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
etcd_prefix = "/svc"
balance = "{balance}"
{extra}
"#
        ))
        .unwrap();
        let p = Publisher::new(&cfg);
        let specs = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| ServerSpec {
                name: format!("{i}"),
                addr: format!("127.0.0.1:{}", 1000 + i),
                weight: w,
                drain: false,
                source: Source::Etcd,
            })
            .collect::<Vec<_>>();
        p.publish_discovered("b", &specs);
        p
    }

    fn publisher(n: usize) -> Publisher {
        publisher_with("roundrobin", "", &vec![1; n])
    }

    fn counts(b: &BackendSet, picks: usize) -> HashMap<usize, usize> {
        let mut m = HashMap::new();
        for _ in 0..picks {
            let s = b.pick().unwrap();
            let i: usize = s.name.parse().unwrap();
            *m.entry(i).or_default() += 1;
        }
        m
    }

    #[test]
    fn even_rotation_over_available_servers() {
        let p = publisher(3);
        let snap = p.load();
        let m = counts(&snap.backends[0], 300);
        assert_eq!(m.len(), 3);
        assert!(m.values().all(|&c| c == 100), "{m:?}");
    }

    #[test]
    fn down_servers_are_skipped_and_their_share_spreads() {
        let p = publisher(5);
        let snap = p.load();
        let b = &snap.backends[0];
        b.servers[1].set_up(false);
        b.servers[4].set_up(false);
        let m = counts(b, 3000);
        assert!(!m.contains_key(&1) && !m.contains_key(&4));
        assert_eq!(m.len(), 3);
        for c in m.values() {
            assert!((800..=1200).contains(c), "uneven: {m:?}");
        }
    }

    #[test]
    fn a_turn_on_a_down_server_goes_to_another_up_one_evenly() {
        // 1,000 servers, every 10th down: 20 rounds of the rotation hit each up server 20
        // times on its own turns; the down servers' turns spread at random over the rest.
        let p = publisher(1000);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in &b.servers {
            if s.name.parse::<usize>().unwrap() % 10 == 0 {
                s.set_up(false);
            }
        }
        let m = counts(b, 20_000);
        assert_eq!(m.len(), 900, "only up servers are picked");
        assert!(m.keys().all(|i| i % 10 != 0));
        for (i, c) in &m {
            assert!((20..=35).contains(c), "server {i}: {c} picks");
        }
    }

    #[test]
    fn none_when_all_down_or_empty_unless_panic() {
        let p = publisher(2);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in &b.servers {
            s.set_up(false);
        }
        assert!(b.pick().is_none());
        assert!(publisher(0).load().backends[0].pick().is_none());

        // Panic threshold 50%: with 1 of 4 healthy, traffic spreads over all four.
        let p = publisher_with("roundrobin", "panic_threshold = 50", &[1, 1, 1, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in &b.servers[1..] {
            s.set_up(false);
        }
        let m = counts(b, 400);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m.values().all(|&c| c == 100), "{m:?}");
        // 2 of 4 healthy is not below 50%: only the healthy ones.
        b.servers[1].set_up(true);
        let m = counts(b, 400);
        assert_eq!(m.len(), 2, "{m:?}");
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

    #[test]
    fn weighted_distribution_within_5_percent_over_10000_picks() {
        let weights = [5u32, 3, 1, 1, 0];
        let p = publisher_with("roundrobin", "", &weights);
        let snap = p.load();
        let b = &snap.backends[0];
        let m = counts(b, 10_000);
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = 10_000.0 * w as f64 / total as f64;
            let got = *m.get(&i).unwrap_or(&0) as f64;
            assert!(
                (got - want).abs() <= want * 0.05,
                "server {i}: {got} vs {want} ({m:?})"
            );
        }
        // Smooth: the heavy server never takes more than 2 slots in a row with weights 5,3,1,1.
        let order: Vec<u32> = b.schedule.clone();
        let longest = order
            .chunk_by(|a, c| a == c)
            .map(|r| r.len())
            .max()
            .unwrap();
        assert!(longest <= 2, "{order:?}");

        // With one weighted server down, the others keep their relative weights.
        b.servers[0].set_up(false);
        let m = counts(b, 5000);
        let (w3, w1) = (m[&1] as f64, m[&2] as f64);
        assert!((w3 / w1 - 3.0).abs() < 0.3, "{m:?}");
    }

    #[test]
    fn leastconn_prefers_the_idle_server() {
        let p = publisher_with("leastconn", "", &[1, 1, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        let _busy0 = b.servers[0].track();
        let _busy1 = b.servers[1].track();
        let _busy1b = b.servers[1].track();
        for _ in 0..5 {
            assert_eq!(b.pick().unwrap().name, "2");
        }
        let _busy2 = b.servers[2].track();
        for _ in 0..5 {
            assert_ne!(
                b.pick().unwrap().name,
                "1",
                "1 has two in flight, 0 and 2 one each"
            );
        }
    }

    #[test]
    fn random2_spreads_and_avoids_the_loaded_server() {
        let p = publisher_with("random2", "", &[1, 1, 1, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        let guards: Vec<_> = (0..10).map(|_| b.servers[0].track()).collect();
        let m = counts(b, 2000);
        // Server 0 only wins when both choices land on it.
        assert!(m.get(&0).copied().unwrap_or(0) < 200, "{m:?}");
        assert_eq!(m.len(), 4, "{m:?}");
        drop(guards);
    }

    #[test]
    fn slowstart_ramps_a_server_that_came_back() {
        let p = publisher_with("roundrobin", "slowstart = \"1h\"", &[1, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        // Fresh registration is not ramped.
        assert_eq!(b.servers[0].ramp(b.config.slowstart), 1.0);
        b.servers[0].set_up(false);
        b.servers[0].set_up(true);
        assert!(b.servers[0].ramp(b.config.slowstart) < 0.06);
        let m = counts(b, 2000);
        assert!(m.get(&0).copied().unwrap_or(0) < 200, "{m:?}");
    }

    fn hash_owner(b: &BackendSet, k: usize) -> usize {
        let h = maglev::key_hash(format!("/k/{k}"));
        b.pick_keyed(Some(h), &[]).unwrap().name.parse().unwrap()
    }

    #[test]
    fn hash_keeps_keys_and_a_down_servers_keys_move_and_come_back() {
        let p = publisher_with("hash", "hash_key = \"uri\"", &[1; 10]);
        let snap = p.load();
        let b = &snap.backends[0];
        let before: Vec<usize> = (0..10_000).map(|k| hash_owner(b, k)).collect();
        assert_eq!(
            before,
            (0..10_000).map(|k| hash_owner(b, k)).collect::<Vec<_>>()
        );
        let on3 = before.iter().filter(|&&s| s == 3).count();
        assert!((800..1200).contains(&on3), "{on3}");
        b.servers[3].set_up(false);
        let during: Vec<usize> = (0..10_000).map(|k| hash_owner(b, k)).collect();
        for (k, (a, d)) in before.iter().zip(&during).enumerate() {
            if *a == 3 {
                assert_ne!(*d, 3, "key {k} still on the down server");
            } else {
                assert_eq!(a, d, "key {k} moved though its server is up");
            }
        }
        // The down server's keys spread over the others rather than onto one neighbour.
        let mut spread = HashMap::<usize, usize>::new();
        for (a, d) in before.iter().zip(&during) {
            if *a == 3 {
                *spread.entry(*d).or_default() += 1;
            }
        }
        assert!(spread.len() >= 8, "{spread:?}");
        // All come back once it is up; drain and maint count as down too.
        b.servers[3].set_up(true);
        assert_eq!(
            before,
            (0..10_000).map(|k| hash_owner(b, k)).collect::<Vec<_>>()
        );
        for state in [AdminState::Drain, AdminState::Maint] {
            p.set_admin_state("b", "5", state).unwrap();
            assert!((0..10_000).all(|k| hash_owner(b, k) != 5), "{state:?}");
        }
        p.set_admin_state("b", "5", AdminState::Ready).unwrap();
        assert_eq!(
            before,
            (0..10_000).map(|k| hash_owner(b, k)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hash_retries_walk_on_and_a_missing_key_is_round_robin() {
        let p = publisher_with("hash", "hash_key = \"header:x-user\"", &[1, 1, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        let h = maglev::key_hash("alice");
        let first = Arc::clone(b.pick_keyed(Some(h), &[]).unwrap());
        let second = Arc::clone(b.pick_keyed(Some(h), std::slice::from_ref(&first)).unwrap());
        assert!(!Arc::ptr_eq(&first, &second));
        let all = b.servers.clone();
        assert!(b.pick_keyed(Some(h), &all).is_none());
        // No key: the plain rotation, even over 300 picks.
        let m = counts(b, 300);
        assert!(m.values().all(|&c| c == 100), "{m:?}");
    }

    #[test]
    fn hash_honours_weights_and_holds_with_most_servers_down() {
        let p = publisher_with("hash", "hash_key = \"uri\"", &[2, 1]);
        let snap = p.load();
        let b = &snap.backends[0];
        let on0 = (0..10_000).filter(|&k| hash_owner(b, k) == 0).count() as f64;
        assert!((on0 / (10_000.0 - on0) - 2.0).abs() < 0.2, "{on0}");

        // 99 of 100 down: every key still finds the one up server (past the table walk).
        let p = publisher_with("hash", "hash_key = \"uri\"", &[1; 100]);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in &b.servers[1..] {
            s.set_up(false);
        }
        assert!((0..1000).all(|k| hash_owner(b, k) == 0));
    }

    #[test]
    fn every_balance_skips_servers_at_max_conns_per_server() {
        for balance in ["roundrobin", "leastconn", "random2"] {
            let p = publisher_with(balance, "max_conns_per_server = 2", &[1, 1, 1]);
            let snap = p.load();
            let b = &snap.backends[0];
            let full: Vec<_> = (0..2)
                .map(|_| b.servers[0].try_track(2, &b.runtime).unwrap())
                .collect();
            assert!(b.servers[0].try_track(2, &b.runtime).is_none());
            let m = counts(b, 300);
            assert!(!m.contains_key(&0), "{balance}: {m:?}");
            assert_eq!(m.len(), 2, "{balance}: {m:?}");
            // All full: no pick, but still eligible (a wait, not a 503).
            let more: Vec<_> = b.servers[1..]
                .iter()
                .flat_map(|s| [s.try_track(2, &b.runtime), s.try_track(2, &b.runtime)])
                .collect();
            assert!(more.iter().all(Option::is_some));
            assert!(b.pick().is_none(), "{balance}");
            assert!(b.any_eligible(&[]), "{balance}");
            drop(full);
            assert_eq!(b.pick().unwrap().name, "0", "{balance}: the freed one");
            drop(more);
        }
        // Down servers are not eligible: a quick 503 rather than a wait.
        let p = publisher_with("roundrobin", "max_conns_per_server = 1", &[1]);
        let snap = p.load();
        let b = &snap.backends[0];
        b.servers[0].set_up(false);
        assert!(!b.any_eligible(&[]));
    }

    #[test]
    fn hash_sends_a_full_servers_keys_to_the_next_in_its_table_and_back() {
        let p = publisher_with(
            "hash",
            "hash_key = \"uri\"\nmax_conns_per_server = 1",
            &[1; 5],
        );
        let snap = p.load();
        let b = &snap.backends[0];
        let before: Vec<usize> = (0..1000).map(|k| hash_owner(b, k)).collect();
        let busy = b.servers[2].try_track(1, &b.runtime).unwrap();
        for (k, &owner) in before.iter().enumerate() {
            let now = hash_owner(b, k);
            if owner == 2 {
                assert_ne!(now, 2, "key {k} sent to the full server");
            } else {
                assert_eq!(now, owner, "key {k} moved though its server has a slot");
            }
        }
        drop(busy);
        assert_eq!(
            before,
            (0..1000).map(|k| hash_owner(b, k)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn retry_budget_limits_concurrent_retries() {
        let rt = Arc::new(BackendRuntime::default());
        let mut reqs: Vec<InFlight> = (0..20).map(|_| rt.request()).collect();
        // 20 in flight, 20%: 4 retries allowed, min 3.
        let granted = reqs
            .iter_mut()
            .filter_map(|r| r.try_retry(20, 3).then_some(()))
            .count();
        assert_eq!(granted, 4);
        reqs.truncate(2);
        // Retry slots were released with their requests; 2 in flight -> the minimum of 3 applies.
        let mut more: Vec<InFlight> = (0..5).map(|_| rt.request()).collect();
        let granted = more
            .iter_mut()
            .filter_map(|r| r.try_retry(20, 3).then_some(()))
            .count();
        assert_eq!(granted, 3 - reqs.iter().filter(|r| r.retry).count());
    }
}
