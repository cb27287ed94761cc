//! Metrics: every metric name (the README's "Metrics" section lists them), their HELP texts, and the process-wide
//! Prometheus recorder. The recorder is global, so it is installed once per process and shared
//! by every `run()` (tests run several). Rendering is the admin server's job.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "switchyard_requests_total";
/// Requests no route took and no fallback backend either (`404`).
pub const NO_ROUTE: &str = "switchyard_no_route_total";
/// `switchyard_requests_refused_total{frontend,reason}`: requests a traffic policy refused
/// (README, "Traffic policy"); `reason` is the access log's termination (`denied`,
/// `rate_limited`, `body_too_large`).
pub const REQUESTS_REFUSED: &str = "switchyard_requests_refused_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
/// `switchyard_queue_depth{backend}`: requests waiting for a server slot now, written at each
/// scrape from the running snapshot (`exposition.rs`) for backends with `max_conns_per_server`.
pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
/// `switchyard_queue_wait_seconds{backend}`: how long each request that had to wait for a
/// server slot waited (served or timed out); registered at 0 by `exposition::register_zeros`.
pub const QUEUE_WAIT: &str = "switchyard_queue_wait_seconds";
/// `switchyard_server_up{backend,server}`, written at each scrape from the running snapshot
/// (`exposition.rs`), so a removed server's series ends.
pub const SERVER_UP: &str = "switchyard_server_up";
/// `switchyard_server_admin_state{backend,server,state}`: 1 for the server's administrative
/// state (`ready`, `drain`, `maint`), 0 for the others; written at each scrape like
/// [`SERVER_UP`].
pub const SERVER_ADMIN_STATE: &str = "switchyard_server_admin_state";
/// `switchyard_backend_servers{backend,state}`: a backend's servers by state (`up`, `down`,
/// `draining`, `maint`), counted from the running snapshot at each scrape, so an empty backend
/// shows zeros instead of no series.
pub const BACKEND_SERVERS: &str = "switchyard_backend_servers";
pub const UPSTREAM_CONNECT_ERRORS: &str = "switchyard_upstream_connect_errors_total";
pub const RETRIES: &str = "switchyard_retries_total";
/// The same re-sends as `RETRIES`, by what made the attempt before fail (`forward::Cause`).
pub const RETRIES_BY_CAUSE: &str = "switchyard_retries_by_cause_total";
/// Client requests refused as malformed (400, 405, 408, 414, 431, 501, 505), by reason.
pub const HTTP_REQUEST_ERRORS: &str = "switchyard_http_request_errors_total";
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
/// `switchyard_config_last_reload_successful`: 1 when the last reload (or the start) succeeded,
/// 0 after a refused one, until a later reload succeeds (Prometheus's own name for this).
pub const CONFIG_LAST_RELOAD_OK: &str = "switchyard_config_last_reload_successful";
/// `switchyard_config_last_reload_success_timestamp_seconds`: when the running configuration was
/// loaded (start or reload).
pub const CONFIG_LAST_RELOAD_TIME: &str = "switchyard_config_last_reload_success_timestamp_seconds";
/// `switchyard_tls_certificate_expiry_timestamp_seconds{frontend,name}`: the served
/// certificate's notAfter; `name` as for [`TLS_OCSP_NEXT_UPDATE`].
pub const TLS_CERT_EXPIRY: &str = "switchyard_tls_certificate_expiry_timestamp_seconds";
/// `switchyard_tls_reloads_total{result}`.
pub const TLS_RELOADS: &str = "switchyard_tls_reloads_total";
/// `switchyard_tls_handshakes_total{result}`: success, failure (garbage, no shared cipher, ...)
/// or timeout.
pub const TLS_HANDSHAKES: &str = "switchyard_tls_handshakes_total";

/// `switchyard_tls_ocsp_next_update_timestamp_seconds{frontend, name}`: the stapled response's
/// nextUpdate; `name` is the certificate's first DNS name, else its file name.
pub const TLS_OCSP_NEXT_UPDATE: &str = "switchyard_tls_ocsp_next_update_timestamp_seconds";
/// `switchyard_tls_ocsp_errors_total{frontend, name}`: OCSP files that could not be stapled.
pub const TLS_OCSP_ERRORS: &str = "switchyard_tls_ocsp_errors_total";
/// `switchyard_proxy_header_errors_total{frontend,reason}`: PROXY headers refused on a listener
/// with `accept_proxy` (reason `malformed`, `timeout`, or `truncated` when the peer closed).
pub const PROXY_HEADER_ERRORS: &str = "switchyard_proxy_header_errors_total";
/// `switchyard_sni_errors_total{frontend,reason}`: tcp-mode clients whose TLS ClientHello could
/// not be read for SNI routing (reason `timeout`, `not_tls`, `too_large`, `closed`,
/// `bad_hello`, `io`; `sni::SniError::reason`).
pub const SNI_ERRORS: &str = "switchyard_sni_errors_total";
/// `switchyard_tcp_connections_total{frontend,backend,server}`: relays established.
pub const TCP_CONNECTIONS: &str = "switchyard_tcp_connections_total";
/// `switchyard_bytes_received_total{frontend}`: bytes read from clients (TCP mode).
pub const BYTES_RECEIVED: &str = "switchyard_bytes_received_total";
/// `switchyard_bytes_sent_total{frontend}`: bytes written to clients (TCP mode).
pub const BYTES_SENT: &str = "switchyard_bytes_sent_total";
/// `switchyard_tcp_rejected_total{frontend,reason}`: client connections closed before a relay
/// started (reason `proxy_header`, `tls_handshake`, `client_hello`, `no_route`, `no_server`, `queue_timeout`,
/// `unreachable`).
pub const TCP_REJECTED: &str = "switchyard_tcp_rejected_total";
/// `switchyard_connections_limited_total{frontend}`: times a frontend reached its `maxconn`.
pub const CONNECTIONS_LIMITED: &str = "switchyard_connections_limited_total";
/// `switchyard_access_log_dropped_total`: access log lines dropped (the writer was behind).
/// ACME orders by outcome (`result` = `valid` | `failed`), registered at 0 when ACME starts.
pub const ACME_ORDERS: &str = "switchyard_acme_orders_total";
pub const ACCESS_LOG_DROPPED: &str = "switchyard_access_log_dropped_total";

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
                .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), DURATION_BUCKETS)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            metrics::gauge!(DISCOVERY_CONNECTED).set(0.0);
            for result in ["success", "failure"] {
                metrics::counter!(CONFIG_RELOADS, "result" => result).increment(0);
            }
            handle
        })
        .clone()
}

/// Records the outcome of a configuration reload (SIGHUP or the admin API): the counter by
/// result, the last-reload gauge, and on success its timestamp. The start counts as a success.
pub fn config_loaded(ok: bool) {
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!(CONFIG_LAST_RELOAD_TIME).set(now);
    }
    metrics::gauge!(CONFIG_LAST_RELOAD_OK).set(if ok { 1.0 } else { 0.0 });
}

/// Records a refused reload: [`CONFIG_RELOADS`]`{result="failure"}` and the gauge at 0.
pub fn reload_refused() {
    metrics::counter!(CONFIG_RELOADS, "result" => "failure").increment(1);
    config_loaded(false);
}

/// Records an applied reload: [`CONFIG_RELOADS`]`{result="success"}` and the gauge at 1.
pub fn reload_applied() {
    metrics::counter!(CONFIG_RELOADS, "result" => "success").increment(1);
    config_loaded(true);
}

fn describe() {
    describe_counter!(
        ACME_ORDERS,
        "ACME certificate orders this instance ran, by result (valid or failed)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_OK,
        "1 if the last configuration reload (or the start) succeeded, 0 if it was refused."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_TIME,
        Unit::Seconds,
        "When the running configuration was loaded (start or the last successful reload)."
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        Unit::Seconds,
        "The served certificate's notAfter (Unix time), by frontend and name (first DNS name, else file name)."
    );
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by frontend, backend, server address and status code."
    );
    describe_counter!(
        REQUESTS_REFUSED,
        "HTTP requests a traffic policy refused, by frontend and reason: denied (allow/deny, 403), rate_limited (429), body_too_large (max_body_size, 413)."
    );
    describe_counter!(
        NO_ROUTE,
        "HTTP requests that no route took and the frontend had no fallback backend for (answered 404), by frontend."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request received to response headers sent."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time requests waited in a backend's queue for a server slot (max_conns_per_server), by backend; only requests that waited."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Client connections currently open, by frontend."
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
        "HTTP requests re-sent to another server: after a failed connect, or (idempotent and \
         bodiless ones) after a server failed before answering. One per extra attempt."
    );
    describe_counter!(
        RETRIES_BY_CAUSE,
        "The re-sends of switchyard_retries_total by the failure before them (connect_refused, \
         connect_timeout, tls_error, connect_failed, server_reset, server_invalid)."
    );
    describe_counter!(
        HTTP_REQUEST_ERRORS,
        "Client requests refused as malformed, by frontend and reason (bad_request, \
         header_timeout, body_timeout, uri_too_long, headers_too_large, not_implemented, \
         version, method_not_allowed)."
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
    describe_counter!(
        TLS_RELOADS,
        "Certificate reloads (SIGHUP or a changed file), by result."
    );
    describe_gauge!(
        TLS_OCSP_NEXT_UPDATE,
        Unit::Seconds,
        "Unix time of the stapled OCSP response's nextUpdate (0 once none is stapled)."
    );
    describe_counter!(
        TLS_OCSP_ERRORS,
        "OCSP files not stapled: unreadable, or no answer for their certificate."
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes on frontends, by result (success, failure, timeout)."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access log lines dropped because the writer could not keep up (the queue was full)."
    );
    describe_counter!(
        TCP_CONNECTIONS,
        "TCP-mode relays established, by frontend, backend and server address."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from clients, by frontend (tcp and http mode; headers included)."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Bytes sent to clients, by frontend (tcp and http mode; headers included)."
    );
    describe_counter!(
        CONNECTIONS_LIMITED,
        "Times a frontend reached its maxconn and stopped accepting until a connection closed."
    );
    describe_counter!(
        TCP_REJECTED,
        "TCP-mode client connections closed before a relay started, by frontend and reason."
    );
    describe_counter!(
        SNI_ERRORS,
        "TLS ClientHellos not read for SNI routing in tcp mode, by frontend and reason \
         (timeout, not_tls, too_large, closed, bad_hello, io)."
    );
    describe_counter!(
        PROXY_HEADER_ERRORS,
        "PROXY protocol headers refused (malformed, timeout, truncated), by frontend."
    );
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
