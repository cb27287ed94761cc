//! In-process traffic counters for the admin API and the stats page: per frontend (connections
//! now and at most, requests, bytes, connections held at `maxconn`, malformed requests, requests
//! refused by a policy by reason) and
//! per backend (requests, bytes, retries, failures by termination word, a latency histogram).
//!
//! Owns the counters and their JSON; the data plane bumps them (relaxed atomics: no lock, no
//! allocation per request) and `admin` serves them. They are cumulative since start and kept by
//! name: a frontend's live in the [`Registry`] (so a reload that restarts its accept loop keeps
//! them), a backend's in its `balancer::BackendRuntime` (carried into every snapshot). Prometheus
//! metrics are `metrics`'s; these exist because the recorder's handles cannot be read back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// One frontend's counters.
#[derive(Debug, Default)]
pub struct FrontendStats {
    connections: AtomicU64,
    max_connections: AtomicU64,
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    /// Requests refused by a policy, in the order of [`REFUSALS`].
    refused_by: [AtomicU64; REFUSALS.len()],
}

/// Why a route's policy refused a request (`switchyard_requests_refused_total`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    RateLimited,
    BodyTooLarge,
}

/// Every refusal, in the order of `FrontendStats::refused_by`, with its word.
const REFUSALS: [(Refusal, &str); 3] = [
    (Refusal::Denied, "denied"),
    (Refusal::RateLimited, "rate_limited"),
    (Refusal::BodyTooLarge, "body_too_large"),
];

impl Refusal {
    pub fn as_str(self) -> &'static str {
        REFUSALS[self as usize].1
    }
}

impl FrontendStats {
    /// A client connection opened; returns how many are open now, this one included.
    pub fn open(&self) -> u64 {
        let now = self.connections.fetch_add(1, Relaxed) + 1;
        self.max_connections.fetch_max(now, Relaxed);
        now
    }

    pub fn close(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// Client connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn received(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub fn sent(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// A connection had to wait at `maxconn` (counted like `switchyard_connections_limited_total`).
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// A request refused by its policy (counted like `switchyard_requests_refused_total`).
    pub fn refused_by(&self, why: Refusal) {
        self.refused_by[why as usize].fetch_add(1, Relaxed);
    }

    /// A malformed request (counted like `switchyard_http_request_errors_total`).
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
}

/// The frontends' counters by name, for the life of the process (`run`).
#[derive(Debug, Default)]
pub struct Registry {
    frontends: Mutex<BTreeMap<String, Arc<FrontendStats>>>,
}

impl Registry {
    /// The counters of frontend `name`, created at 0 the first time.
    pub fn frontend(&self, name: &str) -> Arc<FrontendStats> {
        let mut map = self.frontends.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    /// The counters of frontend `name`, if it ever started.
    pub fn get(&self, name: &str) -> Option<Arc<FrontendStats>> {
        let map = self.frontends.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }
}

/// The JSON of one frontend for `GET /api/v1/frontends`.
pub fn frontend_json(
    name: &str,
    mode: &str,
    bind: &str,
    limit: Option<usize>,
    s: &FrontendStats,
) -> Value {
    json!({
        "name": name,
        "mode": mode,
        "bind": bind,
        "connections": s.connections.load(Relaxed),
        "max_connections": s.max_connections.load(Relaxed),
        "limit": limit,
        "requests": s.requests.load(Relaxed),
        "bytes_in": s.bytes_in.load(Relaxed),
        "bytes_out": s.bytes_out.load(Relaxed),
        "refused": s.refused.load(Relaxed),
        "errors": s.errors.load(Relaxed),
        "requests_refused": REFUSALS
            .iter()
            .zip(&s.refused_by)
            .map(|((_, word), n)| (word.to_string(), Value::from(n.load(Relaxed))))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// The failures a backend's requests (or tcp connections) are counted under, named by their
/// access log termination word (`access_log::Termination::failure` maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectError,
    ServerError,
    ServerTimeout,
    NoServer,
    QueueTimeout,
    ServerAbort,
    ClientAbort,
}

/// Every failure, in the order of `BackendStats::errors`, with its word.
const ERRORS: [(Failure, &str); 7] = [
    (Failure::ConnectError, "connect_error"),
    (Failure::ServerError, "server_error"),
    (Failure::ServerTimeout, "server_timeout"),
    (Failure::NoServer, "no_server"),
    (Failure::QueueTimeout, "queue_timeout"),
    (Failure::ServerAbort, "server_abort"),
    (Failure::ClientAbort, "client_abort"),
];

/// Latency buckets: bucket `i` holds durations up to `BUCKET_BASE_US * 2^(i/2)` (the last one
/// everything beyond), so each bucket is about 41% wider than the one before: from 0.1 ms to
/// about 28 minutes, with a percentile off by at most that ratio.
const BUCKETS: usize = 48;
const BUCKET_BASE_US: f64 = 100.0;

/// One backend's counters.
#[derive(Debug)]
pub struct BackendStats {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    retries: AtomicU64,
    errors: [AtomicU64; ERRORS.len()],
    latency: [AtomicU64; BUCKETS],
}

impl Default for BackendStats {
    fn default() -> BackendStats {
        BackendStats {
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of `d`.
fn bucket(d: Duration) -> usize {
    // Integer arithmetic (a float log2 and ceil cost ~80 instructions a request): bucket `i`
    // is the smallest with `us <= base * 2^(i/2)`, i.e. `us^2 <= base^2 * 2^i`. Durations are
    // capped at 2^32 us (~72 min), far beyond the last bucket, so `us^2` fits in a u64.
    let us = d.as_micros().min(u128::from(u32::MAX)) as u64;
    let base = BUCKET_BASE_US as u64;
    if us <= base {
        return 0;
    }
    let (a, b) = (us * us, base * base);
    // floor(log2 a) - floor(log2 b) is at most the answer and at most one below it.
    let mut i = a.ilog2().saturating_sub(b.ilog2());
    while u128::from(b) << i < u128::from(a) {
        i += 1;
    }
    (i as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn bucket_ms(i: usize) -> f64 {
    BUCKET_BASE_US * 2f64.powf(i as f64 / 2.0) / 1000.0
}

impl BackendStats {
    /// A request (tcp: a connection) ended as `termination`; `latency`: from its start to the
    /// response head (http) or to the server's connection (tcp), when there was one.
    pub fn finish(&self, failure: Option<Failure>, latency: Option<Duration>) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(f) = failure {
            self.errors[f as usize].fetch_add(1, Relaxed);
        }
        if let Some(d) = latency {
            self.latency[bucket(d)].fetch_add(1, Relaxed);
        }
    }

    /// A request already counted by `finish` failed later (its response body broke off).
    pub fn failed(&self, failure: Failure) {
        self.errors[failure as usize].fetch_add(1, Relaxed);
    }

    pub fn received(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub fn sent(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// The latency at quantile `q` (0..1): the upper bound of the bucket it falls in, in
    /// milliseconds; `None` before any sample.
    fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_ms(i));
            }
        }
        Some(bucket_ms(BUCKETS - 1))
    }

    /// The `stats` object of a backend in `GET /api/v1/backends`.
    pub fn json(&self) -> Value {
        let errors: serde_json::Map<String, Value> = ERRORS
            .iter()
            .zip(&self.errors)
            .map(|((_, word), c)| (word.to_string(), json!(c.load(Relaxed))))
            .collect();
        json!({
            "requests": self.requests.load(Relaxed),
            "bytes_in": self.bytes_in.load(Relaxed),
            "bytes_out": self.bytes_out.load(Relaxed),
            "retries": self.retries.load(Relaxed),
            "errors": errors,
            "latency_ms": {"p50": self.quantile(0.5), "p99": self.quantile(0.99)},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_root_two() {
        assert_eq!(bucket(Duration::from_micros(50)), 0);
        assert_eq!(bucket(Duration::from_micros(100)), 0);
        assert_eq!(bucket(Duration::from_micros(101)), 1);
        assert_eq!(bucket(Duration::from_micros(200)), 2);
        assert_eq!(bucket(Duration::from_millis(10)), 14);
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
        assert!((bucket_ms(14) - 12.8).abs() < 1e-9);
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let s = BackendStats::default();
        assert_eq!(s.quantile(0.5), None);
        for _ in 0..98 {
            s.finish(None, Some(Duration::from_millis(1)));
        }
        s.finish(Some(Failure::ServerError), Some(Duration::from_millis(500)));
        s.finish(Some(Failure::ServerTimeout), Some(Duration::from_secs(2)));
        let p50 = s.quantile(0.5).unwrap();
        assert!((0.9..=1.5).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap();
        assert!((500.0..=710.0).contains(&p99), "{p99}");
        let v = s.json();
        assert_eq!(v["requests"], 100);
        assert_eq!(v["errors"]["server_error"], 1);
        assert_eq!(v["errors"]["server_timeout"], 1);
        assert_eq!(v["errors"]["client_abort"], 0);
    }

    #[test]
    fn frontend_counts_the_most_connections_seen() {
        let f = FrontendStats::default();
        assert_eq!(f.open(), 1);
        assert_eq!(f.open(), 2);
        f.close();
        f.close();
        assert_eq!(f.open(), 1);
        let v = frontend_json("web", "http", "127.0.0.1:80", Some(10), &f);
        assert_eq!(v["connections"], 1);
        assert_eq!(v["max_connections"], 2);
        assert_eq!(v["limit"], 10);
    }
}
