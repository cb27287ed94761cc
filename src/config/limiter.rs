//! The state behind a `rate_limit`: one token bucket per key (a client address, or a
//! header's value), held by `governor`'s keyed rate limiter (GCRA: one 64-bit timestamp per
//! key), in a store of our own that caps how many keys it holds. It lives with the validated
//! [`RateLimit`](super::RateLimit) so that every route sharing that policy shares its
//! buckets; the data plane (`http::guard`) only calls [`Limiter::check`].
//!
//! governor's keyed store grows with every new key and never shrinks by itself, so a flood of
//! distinct source addresses would grow it without bound. Here it holds at most
//! [`MAX_RATE_LIMIT_KEYS`](super::MAX_RATE_LIMIT_KEYS) keys: when it is full, keys idle long
//! enough that their bucket is full again are dropped (`retain_recent`, which loses nothing:
//! such a key is as good as new) and the map shrunk, at most once per
//! [`RATE_LIMIT_SWEEP_INTERVAL`](super::RATE_LIMIT_SWEEP_INTERVAL); a new key that still finds
//! no room shares one overflow bucket with every other such key until room is made. Keys
//! already held keep their own bucket, so a flood of new addresses limits the flood, not the
//! clients seen before it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::defaults::RATE_LIMIT_SWEEP_INTERVAL;

/// What a request is counted under: the client's address (an IPv4-mapped IPv6 one as IPv4),
/// or a header's value as a 64-bit hash, so that a key's size does not depend on what clients
/// send (100,000 keys of 8 KiB values would otherwise hold 800 MiB). The hash is seeded once per
/// process at random: two values share a bucket with odds of about 1 in 2^64 per pair, and
/// clients cannot aim for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Source(IpAddr),
    Value(u64),
}

impl LimitKey {
    /// The client's address as a key: `::ffff:10.1.2.3` and `10.1.2.3` are one client.
    pub fn source(ip: IpAddr) -> LimitKey {
        LimitKey::Source(ip.to_canonical())
    }

    /// A header value as a key.
    pub fn value(v: &[u8]) -> LimitKey {
        use std::hash::BuildHasher;
        static SEED: std::sync::OnceLock<foldhash::quality::RandomState> =
            std::sync::OnceLock::new();
        LimitKey::Value(SEED.get_or_init(Default::default).hash_one(v))
    }
}

/// How full the store is, shared by the store (which counts) and the [`Limiter`] (which
/// sweeps).
#[derive(Debug, Default)]
struct Fill {
    /// Keys held (exact after a sweep, counted up as keys are added in between).
    keys: AtomicUsize,
    /// A new key found no room since the last sweep.
    full: AtomicBool,
}

/// governor's DashMap store with a cap on its keys and one bucket for the keys past it.
#[derive(Debug)]
struct CappedStore {
    /// Hashed with foldhash (seeded per process) rather than the default SipHash: the lookup
    /// is on every request of a limited route: 315 instructions a request with SipHash, 141
    /// with foldhash (callgrind, benches/load/callgrind.sh `policy`).
    map: DashMapStateStore<LimitKey, foldhash::quality::RandomState>,
    overflow: InMemoryState,
    cap: usize,
    fill: Arc<Fill>,
}

impl StateStore for CappedStore {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // Racing adders may overshoot the cap by the number of threads: harmless.
        if self.fill.keys.load(Ordering::Relaxed) < self.cap {
            self.fill.keys.fetch_add(1, Ordering::Relaxed);
            return self.map.measure_and_replace(key, f);
        }
        self.fill.full.store(true, Ordering::Relaxed);
        self.overflow.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
        self.fill.keys.store(self.map.len(), Ordering::Relaxed);
        self.fill.full.store(false, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Token buckets, one per key, with at most `cap` keys.
pub struct Limiter {
    buckets: RateLimiter<LimitKey, CappedStore, DefaultClock>,
    clock: DefaultClock,
    fill: Arc<Fill>,
    /// When the last sweep ran, in nanoseconds since `born`.
    last_sweep: AtomicU64,
    born: Instant,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("keys", &self.fill.keys.load(Ordering::Relaxed))
            .finish()
    }
}

impl Limiter {
    /// `per_period` requests per `period` on average, up to `burst` at once, for each of at
    /// most `cap` keys. `None` if the rate is too fine to time (more than one a nanosecond).
    pub fn new(per_period: u32, period: Duration, burst: u32, cap: usize) -> Option<Limiter> {
        let quota = Quota::with_period(period / per_period.max(1))?
            .allow_burst(std::num::NonZeroU32::new(burst.max(1))?);
        let fill = Arc::new(Fill::default());
        let clock = DefaultClock::default();
        let store = CappedStore {
            map: DashMapStateStore::with_hasher(foldhash::quality::RandomState::default()),
            overflow: InMemoryState::default(),
            cap: cap.max(1),
            fill: Arc::clone(&fill),
        };
        Some(Limiter {
            buckets: RateLimiter::new(quota, store, clock.clone()),
            clock,
            fill,
            last_sweep: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// Takes one token from `key`'s bucket; `Err(wait)`: none left, the next one comes after
    /// `wait`.
    pub fn check(&self, key: &LimitKey) -> Result<(), Duration> {
        let r = self
            .buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if self.fill.full.load(Ordering::Relaxed) {
            self.sweep();
        }
        r
    }

    /// Drops the keys whose bucket is full again and shrinks the map, unless another sweep
    /// ran within [`RATE_LIMIT_SWEEP_INTERVAL`] (then the overflow bucket serves meanwhile).
    fn sweep(&self) {
        let now = self.born.elapsed().as_nanos() as u64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due =
            last == 0 || now.saturating_sub(last) >= RATE_LIMIT_SWEEP_INTERVAL.as_nanos() as u64;
        if due
            && self
                .last_sweep
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> LimitKey {
        LimitKey::source(IpAddr::V4(std::net::Ipv4Addr::from(i)))
    }

    #[test]
    fn a_burst_then_refusals_with_the_wait() {
        let l = Limiter::new(1, Duration::from_secs(1), 5, 100).unwrap();
        for _ in 0..5 {
            l.check(&ip(1)).unwrap();
        }
        let wait = l.check(&ip(1)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another key has its own bucket; a mapped address is the same client.
        l.check(&ip(2)).unwrap();
        let mapped = LimitKey::source("::ffff:0.0.0.1".parse().unwrap());
        assert_eq!(mapped, ip(1));
        assert!(l.check(&mapped).is_err());
        // Header values: one bucket per value.
        assert_eq!(LimitKey::value(b"k1"), LimitKey::value(b"k1"));
        assert_ne!(LimitKey::value(b"k1"), LimitKey::value(b"k2"));
    }

    #[test]
    fn keys_past_the_cap_share_one_overflow_bucket() {
        let l = Limiter::new(1, Duration::from_secs(3600), 2, 10).unwrap();
        for i in 0..10 {
            l.check(&ip(i)).unwrap();
        }
        assert_eq!(l.keys(), 10);
        // The store is full: new keys share the overflow bucket (burst 2), and none is added.
        l.check(&ip(100)).unwrap();
        l.check(&ip(101)).unwrap();
        assert!(l.check(&ip(102)).is_err());
        assert!(l.keys() <= 10, "{}", l.keys());
        // Keys held keep their own buckets.
        l.check(&ip(3)).unwrap();
        assert!(l.check(&ip(3)).is_err());
    }

    #[test]
    fn a_sweep_drops_keys_whose_bucket_is_full_again() {
        // One token every nanosecond-ish: every bucket is full again almost at once.
        let l = Limiter::new(1_000_000, Duration::from_secs(1), 1, 50).unwrap();
        for i in 0..200 {
            let _ = l.check(&ip(i));
            std::thread::sleep(Duration::from_micros(20));
        }
        // The first overflow swept the (idle) keys away, making room for new ones.
        assert!(l.keys() <= 50);
        std::thread::sleep(Duration::from_millis(5));
        l.buckets.retain_recent();
        assert_eq!(l.keys(), 0);
    }
}
