//! Metrics: the metric names (contract in DESIGN.md), their HELP texts, and the process-wide
//! Prometheus recorder. The recorder is global, so it is installed once per process and shared
//! by every `run()` (tests run several). Rendering is the admin server's job.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
pub const SERVER_UP: &str = "switchyard_server_up";
pub const UPSTREAM_CONNECT_ERRORS: &str = "switchyard_upstream_connect_errors_total";
pub const RETRIES: &str = "switchyard_retries_total";
pub const UPSTREAM_ABORTS: &str = "switchyard_upstream_aborts_total";
pub const DISCOVERY_CONNECTED: &str = "switchyard_discovery_connected";
pub const DISCOVERY_INDEX: &str = "switchyard_discovery_index";
pub const DISCOVERY_EVENTS: &str = "switchyard_discovery_events_total";
pub const DISCOVERY_RESYNCS: &str = "switchyard_discovery_resyncs_total";
pub const DISCOVERY_INVALID_VALUES: &str = "switchyard_discovery_invalid_values_total";
pub const DISCOVERY_LAST_SYNC: &str = "switchyard_discovery_last_sync_timestamp_seconds";
pub const HEALTH_CHECKS: &str = "switchyard_health_checks_total";
pub const BUILD_INFO: &str = "switchyard_build_info";
pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";

/// Metric handles looked up once per label set, then reused. The recorder's own lookup on every
/// `counter!` (building the key's label strings, hashing, searching the registry) was about 8% of
/// the instructions of a proxied request. Entries are few (status codes seen, times frontends),
/// so a short vector under a mutex beats a map; past `CACHE_MAX` entries handles are not kept.
#[derive(Debug)]
pub struct HandleCache<K, H> {
    entries: std::sync::Mutex<Vec<(K, H)>>,
}

const CACHE_MAX: usize = 64;

impl<K, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        HandleCache {
            entries: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<K, H> HandleCache<K, H> {
    /// Runs `f` on the handle whose key `is` matches, registering it with `make` the first time.
    pub fn with<R>(
        &self,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, H),
        f: impl FnOnce(&H) -> R,
    ) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = entries.iter().find(|(k, _)| is(k)) {
            return f(h);
        }
        let (k, h) = make();
        let r = f(&h);
        if entries.len() < CACHE_MAX {
            entries.push((k, h));
        }
        r
    }
}

/// Latency buckets in seconds: sub-millisecond proxying up to the 60 s response timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the recorder on first use and returns the handle that renders `/metrics`.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            crate::tls::describe();
            crate::access_log::describe();
            crate::proxy_tcp::describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            metrics::gauge!(DISCOVERY_CONNECTED).set(0.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by frontend, backend, server address and status code."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request received to response headers sent."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Client connections currently open, by frontend."
    );
    describe_gauge!(
        SERVER_UP,
        "1 if the server passes its health checks, 0 if it is down."
    );
    describe_counter!(
        UPSTREAM_CONNECT_ERRORS,
        "Failed connection attempts to an upstream server."
    );
    describe_counter!(
        UPSTREAM_ABORTS,
        "Responses whose body the upstream server cut short (reset or closed mid-body)."
    );
    describe_counter!(
        RETRIES,
        "Requests re-sent to another server after a connect failure."
    );
    describe_gauge!(
        DISCOVERY_CONNECTED,
        "1 while every etcd watch is connected, 0 otherwise."
    );
    describe_gauge!(
        DISCOVERY_INDEX,
        "Last etcd index (v2) or revision (v3) seen by discovery."
    );
    describe_counter!(
        DISCOVERY_EVENTS,
        "etcd watch events received, by backend and action."
    );
    describe_counter!(
        DISCOVERY_RESYNCS,
        "Full re-reads of a prefix, by reason (index_cleared, reconnect)."
    );
    describe_counter!(
        DISCOVERY_INVALID_VALUES,
        "etcd values skipped because they are not a valid address."
    );
    describe_gauge!(
        DISCOVERY_LAST_SYNC,
        Unit::Seconds,
        "Unix time of the last listing or event received from etcd."
    );
    describe_counter!(
        HEALTH_CHECKS,
        "Active health checks run, by backend, server and result."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP), by result (success, failure)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label is the build.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_handle_is_made_once_per_key() {
        let cache: HandleCache<u16, u32> = HandleCache::default();
        let mut made = 0;
        for code in [200, 200, 503, 200] {
            let v = cache.with(
                |k| *k == code,
                || {
                    made += 1;
                    (code, u32::from(code) * 2)
                },
                |h| *h,
            );
            assert_eq!(v, u32::from(code) * 2);
        }
        assert_eq!(made, 2);
    }
}
