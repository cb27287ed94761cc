//! The configuration's defaults, one named constant each: what a setting is when the file leaves
//! it out. They are the "default" column of the README's "Configuration reference"; where that
//! table does not fix one, HAProxy's is used. Re-exported as `config::DEFAULT_*`, so that the
//! `register` and `migrate` commands share them instead of repeating the literals.

use std::time::Duration;

use super::{AccessFormat, Balance, CheckType, EtcdApi, Mode, Protocol, ProxyVersion};

// --- [global] ---------------------------------------------------------------------------------

/// `[global] shutdown_grace`: after SIGTERM, how long in-flight requests may take to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `[global] work_stealing`: one multi-thread runtime (tokio's default), rather than one
/// current-thread runtime per thread.
pub const DEFAULT_WORK_STEALING: bool = true;
/// `[global] upgrade_socket`: where a running Switchyard listens for a takeover by a new binary
/// (`switchyard run --takeover`); systemd's `RuntimeDirectory=switchyard` makes its directory.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/run/switchyard/upgrade.sock";

// --- [log] ------------------------------------------------------------------------------------

/// `[log] access`: no access log.
pub const DEFAULT_ACCESS_FORMAT: AccessFormat = AccessFormat::Off;

// --- [admin] ----------------------------------------------------------------------------------

/// `[admin] listen`: the admin server, on loopback only. Port 8404 is HAProxy's stats
/// convention; Prometheus's own 9090 would collide on a host that runs both.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8404";

// --- [etcd] -----------------------------------------------------------------------------------

/// `[etcd] endpoints` when the list is empty: a local member (etcd's and confd's default).
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// `[etcd] api`: the v2 keys API, as the classic confd stack used.
pub const DEFAULT_ETCD_API: EtcdApi = EtcdApi::V2;
/// `[etcd] poll_timeout`: client-side deadline on one long-poll or idle watch, then re-arm.
pub const DEFAULT_ETCD_POLL_TIMEOUT: Duration = Duration::from_secs(60);
/// `[etcd] request_timeout`: deadline on every other etcd request (listings, writes).
pub const DEFAULT_ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `[etcd] backoff_min`: the first reconnect delay, doubled (with jitter) after each failure...
pub const DEFAULT_ETCD_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// `[etcd] backoff_max`: ...up to this one.
pub const DEFAULT_ETCD_BACKOFF_MAX: Duration = Duration::from_secs(5);

// --- [[frontend]] -----------------------------------------------------------------------------

/// `[[frontend]] mode`: HTTP (L7).
pub const DEFAULT_MODE: Mode = Mode::Http;
/// `[[frontend]] header_timeout`: the whole request header section must arrive within this.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `[[frontend]] idle_timeout`: client keep-alive idle time (and a new connection's wait for
/// its first byte).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[frontend]] max_header_size`: bytes in the request header section, else `431`.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// `[[frontend]] maxconn`: client connections open at once. HAProxy's own default is of this
/// order (it derives it from the open-files limit).
pub const DEFAULT_MAXCONN: usize = 10_000;
/// `[[frontend]] accept_proxy`: no PROXY protocol header is expected from clients.
pub const DEFAULT_ACCEPT_PROXY: bool = false;
/// `[[frontend]] allow_connect`: HTTP/1.1 `CONNECT` gets `405`.
pub const DEFAULT_ALLOW_CONNECT: bool = false;

// --- [frontend.tls] and [backend.tls] ---------------------------------------------------------

/// `[frontend.tls] alpn` of a `mode = "http"` frontend: HTTP/2 preferred, HTTP/1.1 offered.
pub const DEFAULT_HTTP_ALPN: &[&str] = &["h2", "http/1.1"];
/// `[frontend.tls] alpn` of a `mode = "tcp"` frontend: none offered.
pub const DEFAULT_TCP_ALPN: &[&str] = &[];
/// `[frontend.tls] handshake_timeout`: a TLS handshake not done by then is closed.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[backend.tls] verify`: server certificates are verified.
pub const DEFAULT_BACKEND_TLS_VERIFY: bool = true;

// --- [[backend]] ------------------------------------------------------------------------------

/// `[[backend]] balance`: smooth weighted round-robin.
pub const DEFAULT_BALANCE: Balance = Balance::Roundrobin;
/// `[[backend]] panic_threshold`: 0, off (all servers down is a quick `503`).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 0;
/// `[[backend]] retry_budget_percent`: retries may add this percent to the requests in flight...
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// `[[backend]] retry_budget_min`: ...but this many concurrent retries are always allowed.
pub const DEFAULT_RETRY_BUDGET_MIN: u32 = 3;
/// `[[backend]] connect_timeout`: upstream TCP connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `[[backend]] response_timeout`: time to the upstream's response, else `504`.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[backend]] retries`: retries on another server after a connect failure.
pub const DEFAULT_RETRIES: u32 = 2;
/// `[[backend]] drain_timeout`: how long in-flight work on a removed server may continue.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `[[backend]] pool_idle_timeout`: an idle pooled upstream connection is closed after this.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `[[backend]] max_conns_per_server`: 0, no limit (and no queue).
pub const DEFAULT_MAX_CONNS_PER_SERVER: u32 = 0;
/// `[[backend]] queue_timeout`: how long a request waits for a free server slot, then `503`.
/// HAProxy's `timeout queue` falls back to `timeout connect`; ours is not `connect_timeout`
/// (2 s, made for a SYN to be answered) but the time a busy server gets to finish a request,
/// the figure of the README's example.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// `[[backend]] protocol`: HTTP/1.1 to the servers.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Http1;
/// `[[backend]] send_proxy`: no PROXY protocol header to the servers.
pub const DEFAULT_SEND_PROXY: ProxyVersion = ProxyVersion::None;

// --- [backend.sticky] -----------------------------------------------------------------------

/// `[backend.sticky] secure`: off, so the cookie works on plain-HTTP frontends too (HAProxy's
/// `cookie ... insert` adds `Secure` only when told).
pub const DEFAULT_STICKY_SECURE: bool = false;
/// `[backend.sticky] http_only`: on; the page's scripts have no use for it (HAProxy's
/// `httponly`, which its users nearly always set).
pub const DEFAULT_STICKY_HTTP_ONLY: bool = true;

// --- [backend.check] (HAProxy's defaults) ----------------------------------------------------

/// `[backend.check] type`: a TCP connect.
pub const DEFAULT_CHECK_TYPE: CheckType = CheckType::Tcp;
/// `[backend.check] path`: what an `http` check asks for.
pub const DEFAULT_CHECK_PATH: &str = "/";
/// `[backend.check] inter`: the probe interval (HAProxy's `inter`); `fastinter` and `downinter`
/// default to the backend's `inter`.
pub const DEFAULT_CHECK_INTER: Duration = Duration::from_secs(2);
/// `[backend.check] timeout`: the probe timeout (HAProxy's `timeout check`).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `[backend.check] rise`: consecutive successes that bring a server up.
pub const DEFAULT_CHECK_RISE: u32 = 2;
/// `[backend.check] fall`: consecutive failures that take a server down.
pub const DEFAULT_CHECK_FALL: u32 = 3;

// --- [backend.passive] ------------------------------------------------------------------------

/// `[backend.passive] error_limit`: one live failure marks a server down (HAProxy's
/// `observe layer4 error-limit 1 on-error mark-down`).
pub const DEFAULT_PASSIVE_ERROR_LIMIT: u32 = 1;
/// `[backend.passive] consecutive_5xx`: 0, off.
pub const DEFAULT_PASSIVE_CONSECUTIVE_5XX: u32 = 0;
/// `[backend.passive] max_ejected_percent`: passive ejection takes out at most half the servers.
pub const DEFAULT_PASSIVE_MAX_EJECTED_PERCENT: u32 = 50;

// --- [[frontend.route]] and [[service_tree]] ----------------------------------------------------

/// `[[frontend.route]] path_prefix` (every path) and `strip_prefix` (and `[[service_tree]]`'s:
/// the path goes upstream whole): the route table's own, where they are used.
pub use crate::route::{DEFAULT_PATH_PREFIX, DEFAULT_STRIP_PREFIX};
/// `redirect = "https"`: a permanent redirect that keeps the method and body (HAProxy's
/// `redirect scheme https` answers 302 unless given a code; the contract asks for 308).
pub const HTTPS_REDIRECT_CODE: u16 = 308;
/// `redirect = "https"`: the same host (without its port) and path, on https.
pub const HTTPS_REDIRECT_LOCATION: &str = "https://{host}{path}";
/// `redirect = { location }` without a `code`: 302, as HAProxy's `redirect` without one.
pub const DEFAULT_REDIRECT_CODE: u16 = 302;
/// `[[service_tree]] servers_dir`: `<prefix>/<service>/backend/<server>`, confd's layout.
pub const DEFAULT_SERVERS_DIR: &str = "backend";
/// `[[service_tree]] service_linger`: how long a service with no keys left keeps its route
/// (answering `503`) before it is removed (then `404`).
pub const DEFAULT_SERVICE_LINGER: Duration = Duration::from_secs(60);

// --- rate_limit -----------------------------------------------------------------------------------

/// The most keys (client addresses, header values) one `rate_limit` keeps a bucket for. At
/// about 100 bytes a key this caps one limiter near 10 MiB however many sources send; past it,
/// new keys share one overflow bucket until a sweep frees room (`config::limiter`).
pub const MAX_RATE_LIMIT_KEYS: usize = 100_000;
/// A full `rate_limit` store is swept (idle keys dropped, the map shrunk) at most this often.
pub const RATE_LIMIT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// `rate_limit` without `key`: each client address has its own bucket.
pub const DEFAULT_RATE_LIMIT_KEY: &str = "source";
