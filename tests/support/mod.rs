//! Shared integration-test harness: a real etcd 3.4 child process (`Etcd`), in-process hyper
//! upstreams with hit counters (`Upstream`), Switchyard itself run in-process on port-0 listeners
//! (`Lb`), and small polling/HTTP helpers.
//!
//! Owns process and socket lifecycle for tests; it does not own assertions about Switchyard's
//! behaviour (those live in the `tests/*.rs` that use it as `mod support;`).
//! Facts this relies on (etcd accepts TCP before it answers HTTP, `--log-outputs` needs
//! `--logger=zap`, `--enable-v2` is off by default) are in shared/etcd-facts.md section 1.
#![allow(dead_code)]
pub mod raw;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchyard::Listeners;
use switchyard::config::Config;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ETCD_BIN: &str = "/usr/bin/etcd";
/// Fresh single node was healthy in 0.15–1.3 s here; 20 s leaves room for a loaded CI machine.
const ETCD_HEALTHY_DEADLINE: Duration = Duration::from_secs(20);
/// etcd accepts TCP before it is ready and then holds HTTP requests; keep each probe short.
const ETCD_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A port picked by `free_port` can be taken before etcd binds it; retry with new ports.
const ETCD_START_ATTEMPTS: usize = 3;
const POLL_EVERY: Duration = Duration::from_millis(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// helpers

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, drop).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `n` distinct free loopback ports (all held open together while picking, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<StdTcpListener> = (0..n)
        .map(|_| StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Poll `f` every ~10 ms until it returns true; panic naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A reqwest client for tests: no proxy (loopback only), bounded, and no pooled connections, so
/// every request opens a new connection (matters for L4 round-robin, which balances per connection).
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a crypto provider of its own (Switchyard installs ring).
    switchyard::tls::install_provider();
    reqwest::Client::builder()
        // A ready TLS config: otherwise every build loads the system roots (~50 ms), which
        // skews every timing a test makes. These clients only speak plain HTTP.
        .use_preconfigured_tls(plain_tls())
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("build reqwest client")
}

/// A config with one admin listener, one HTTP frontend `web` on a free port (with `frontend`
/// lines appended) and one backend of static `servers` (with `backend` lines appended: keys,
/// then its sections).
pub fn static_config(name: &str, servers: &[String], frontend: &str, backend: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[frontend]]
name = "web"
bind = "127.0.0.1:0"
backend = "{name}"
{frontend}
[[backend]]
name = "{name}"
servers = [{}]
{backend}
"#,
        list.join(", ")
    )
}

/// The value of the first `/metrics` line that starts with `name_and_labels` (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// An empty-roots rustls config, built once, for clients that never speak TLS.
pub fn plain_tls() -> rustls::ClientConfig {
    static CFG: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        switchyard::tls::install_provider();
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
    .clone()
}

thread_local! {
    static CACHED_HTTP_CLIENT: reqwest::Client = http_client();
}

/// `http_client()`, built once per thread and then cloned (a clone is an `Arc`), for polling
/// loops that want no per-request client build at all. (A build without `plain_tls()` cost
/// 45–85 ms here, rustls loading the system roots.) It still opens a new connection per request
/// (no idle pool). Each `#[tokio::test]` runs on its own thread, so a cached client is not
/// shared between tests' runtimes.
pub fn cached_http_client() -> reqwest::Client {
    CACHED_HTTP_CLIENT.with(|c| c.clone())
}

/// Like `try_get`, with `cached_http_client()` (for polling loops).
pub async fn try_get_cached(addr: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    let resp = cached_http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok((status, body))
}

/// `GET http://{addr}{path}` on a fresh connection; `Err` on a transport error or timeout.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    let resp = http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok((status, body))
}

/// `GET http://{addr}{path}`: status and body; panics on a transport error or timeout.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// etcd

/// A single-node etcd 3.4 child process with v2 enabled, on free loopback ports, with its data dir
/// and log in a private temp dir. Killed by PID on drop; the temp dir is removed unless the test
/// is panicking (then its path is printed so etcd.log can be read).
pub struct Etcd {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    http: reqwest::Client,
}

impl Etcd {
    /// Start etcd and wait until `GET /health` answers `{"health":"true"}`.
    pub async fn start() -> Etcd {
        if !Path::new(ETCD_BIN).exists() {
            panic!(
                "{ETCD_BIN} not found: integration tests need a real etcd 3.4; \
                 install the Debian package `etcd-server` (apt-get install -y etcd-server etcd-client)"
            );
        }
        let http = http_client();
        let mut failures = Vec::new();
        for _attempt in 0..ETCD_START_ATTEMPTS {
            let ports = free_ports(2);
            let etcd = Etcd {
                child: Mutex::new(None),
                dir: unique_temp_dir("switchyard-etcd"),
                client_port: ports[0],
                peer_port: ports[1],
                http: http.clone(),
            };
            etcd.spawn();
            match etcd.wait_healthy().await {
                Ok(()) => return etcd,
                // `etcd` drops at the end of this arm: killed, its dir removed.
                Err(why) => failures.push(format!(
                    "{why}\n--- tail of etcd.log ---\n{}\n--- etcd stderr ---\n{}",
                    tail(&etcd.dir.join("etcd.log"), 40),
                    tail(&etcd.dir.join("etcd.stderr"), 10)
                )),
            }
        }
        panic!(
            "etcd did not become healthy in {ETCD_START_ATTEMPTS} attempts:\n{}",
            failures.join("\n=====\n")
        );
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The temp dir holding `data.etcd/`, `etcd.log` and `etcd.stderr`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data.etcd")
    }

    fn spawn(&self) {
        std::fs::create_dir_all(&self.dir).expect("create etcd temp dir");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let stderr = std::fs::File::create(self.dir.join("etcd.stderr")).expect("etcd.stderr");
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg("s1")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--enable-v2=true")
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("s1={peer}"))
            .arg("--logger=zap")
            .arg(format!(
                "--log-outputs={}",
                self.dir.join("etcd.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // etcd reads ETCD_* variables as flags; a developer's environment must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD_BIN}: {e}"));
        *self.child.lock().unwrap() = Some(child);
    }

    async fn wait_healthy(&self) -> Result<(), String> {
        switchyard::tls::install_provider();
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(ETCD_PROBE_TIMEOUT)
            .connect_timeout(ETCD_PROBE_TIMEOUT)
            .build()
            .expect("build probe client");
        let url = format!("{}/health", self.url());
        let end = Instant::now() + ETCD_HEALTHY_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("etcd exited early ({status})"));
            }
            if let Ok(resp) = probe.get(&url).send().await
                && let Ok(body) = resp.text().await
                && body.replace(' ', "").contains(r#""health":"true""#)
            {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "no {{\"health\":\"true\"}} from {url} within {ETCD_HEALTHY_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap();
        let child = guard.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// The running child's PID, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// SIGKILL the child by PID and reap it. A no-op when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill(); // SIGKILL; an error only means it already exited
            let _ = child.wait();
        }
    }

    /// Start again with the same command line and data dir (kills first if still running), then
    /// wait until healthy. Data and v2 event history survive (etcd-facts.md 2.8).
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        if let Err(why) = self.wait_healthy().await {
            panic!(
                "etcd restart: {why}\n--- tail of {}/etcd.log ---\n{}",
                self.dir.display(),
                tail(&self.dir.join("etcd.log"), 40)
            );
        }
    }

    fn key_url(&self, key: &str) -> String {
        assert!(
            key.starts_with('/'),
            "etcd key must start with '/': {key:?}"
        );
        format!("{}/v2/keys{}", self.url(), key)
    }

    async fn write(&self, what: &str, req: reqwest::RequestBuilder) -> serde_json::Value {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("etcd {what}: {e}"));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            panic!("etcd {what}: {status}: {body}");
        }
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("etcd {what}: bad JSON {e}: {body}"))
    }

    /// `PUT /v2/keys{key} value=VALUE`; returns the node's `modifiedIndex`.
    pub async fn put(&self, key: &str, value: &str) -> u64 {
        let req = self.http.put(self.key_url(key)).form(&[("value", value)]);
        modified_index(&self.write(&format!("put {key}"), req).await)
    }

    /// `PUT /v2/keys{key} value=VALUE ttl=N`, the classic registration; returns `modifiedIndex`.
    pub async fn put_ttl(&self, key: &str, value: &str, ttl_secs: u64) -> u64 {
        let ttl = ttl_secs.to_string();
        let req = self
            .http
            .put(self.key_url(key))
            .form(&[("value", value), ("ttl", ttl.as_str())]);
        modified_index(&self.write(&format!("put {key} ttl {ttl}"), req).await)
    }

    /// `PUT /v2/keys{key} ttl=N refresh=true prevExist=true`: a heartbeat that keeps the value
    /// and wakes no watcher. Panics if the key is missing (404).
    pub async fn refresh(&self, key: &str, ttl_secs: u64) -> u64 {
        let ttl = ttl_secs.to_string();
        let req = self.http.put(self.key_url(key)).form(&[
            ("ttl", ttl.as_str()),
            ("refresh", "true"),
            ("prevExist", "true"),
        ]);
        modified_index(&self.write(&format!("refresh {key}"), req).await)
    }

    /// `DELETE /v2/keys{key}` (a plain key); returns the delete's `modifiedIndex`.
    pub async fn delete(&self, key: &str) -> u64 {
        let req = self.http.delete(self.key_url(key));
        modified_index(&self.write(&format!("delete {key}"), req).await)
    }

    /// `DELETE /v2/keys{key}?recursive=true`: one `delete` event for the dir, none per child.
    pub async fn delete_dir(&self, key: &str) -> u64 {
        let req = self
            .http
            .delete(format!("{}?recursive=true", self.key_url(key)));
        modified_index(&self.write(&format!("delete dir {key}"), req).await)
    }

    /// The value of `key`, or `None` if etcd answers 404.
    pub async fn value(&self, key: &str) -> Option<String> {
        let resp = self
            .http
            .get(self.key_url(key))
            .send()
            .await
            .unwrap_or_else(|e| panic!("etcd get {key}: {e}"));
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "etcd get {key}: {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("etcd get: JSON");
        Some(v["node"]["value"].as_str().unwrap_or_default().to_string())
    }

    /// The v2 store index (`X-Etcd-Index` of `GET /v2/keys/`).
    pub async fn index(&self) -> u64 {
        let resp = self
            .http
            .get(format!("{}/v2/keys/", self.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("etcd index: {e}"));
        resp.headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("etcd index: no X-Etcd-Index in {:?}", resp.headers()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("etcd temp dir kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn modified_index(v: &serde_json::Value) -> u64 {
    v["node"]["modifiedIndex"].as_u64().unwrap_or(0)
}

fn unique_temp_dir(prefix: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The last `n` lines of a file (for failure messages), or a note that it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// etcd v3 through the JSON gateway (etcd-facts.md section 3): `POST /v3/...`, keys and values in
// base64, int64 fields as JSON strings. Free functions on a base URL, shared by `Etcd` and the
// members of `EtcdCluster`.

/// Why one etcd call failed. `retryable`: a transport error, a timeout or a 5xx (leader election,
/// lost quorum), worth trying again; a 4xx means the request itself is wrong.
#[derive(Debug)]
struct CallError {
    retryable: bool,
    /// The HTTP status when etcd answered, and its body.
    status: Option<u16>,
    body: String,
    message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Send `req`; `Ok(JSON body)` on a 2xx, else etcd's answer (status and body) in the error.
async fn call_json(
    what: &str,
    req: reqwest::RequestBuilder,
) -> Result<serde_json::Value, CallError> {
    let resp = req.send().await.map_err(|e| CallError {
        retryable: true,
        status: None,
        body: String::new(),
        message: format!("etcd {what}: {e}"),
    })?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| CallError {
        retryable: true,
        status: Some(status.as_u16()),
        body: String::new(),
        message: format!("etcd {what}: {status}: reading body: {e}"),
    })?;
    if !status.is_success() {
        return Err(CallError {
            retryable: status.is_server_error(),
            status: Some(status.as_u16()),
            message: format!("etcd {what}: {status}: {body}"),
            body,
        });
    }
    serde_json::from_str(&body).map_err(|e| CallError {
        retryable: false,
        status: Some(status.as_u16()),
        message: format!("etcd {what}: bad JSON {e}: {body}"),
        body,
    })
}

fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An int64 field of a gateway answer: a JSON string (`"4"`) or number; omitted (= 0) is 0.
fn json_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("etcd int64 field {s:?}: {e}")),
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("etcd int64 {n}")),
        _ => 0,
    }
}

/// A uint64 field of a gateway answer (`member_id`, `leader`, `cluster_id`): string or number.
fn json_u64(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("etcd uint64 field {s:?}: {e}")),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("etcd uint64 {n}")),
        _ => 0,
    }
}

/// `range_end` for a prefix: the prefix with its last byte + 1 (trailing 0xff bytes dropped first).
fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    panic!("prefix {prefix:?} has no range end (empty or all 0xff)");
}

async fn v3_post(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, CallError> {
    call_json(what, http.post(format!("{base}{path}")).json(&body)).await
}

/// `POST /v3/kv/put`; the put's revision (`header.revision`).
async fn v3_put(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    value: &str,
    lease: Option<&str>,
) -> Result<i64, CallError> {
    let mut body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
    if let Some(id) = lease {
        body["lease"] = serde_json::Value::String(id.to_string());
    }
    let v = v3_post(http, base, &format!("v3 put {key}"), "/v3/kv/put", body).await?;
    Ok(json_i64(&v["header"]["revision"]))
}

/// `POST /v3/lease/grant {"TTL":N}`; the lease ID (a string: IDs exceed 2^53).
async fn v3_grant(http: &reqwest::Client, base: &str, ttl_secs: u64) -> Result<String, CallError> {
    let v = v3_post(
        http,
        base,
        &format!("v3 lease grant TTL {ttl_secs}"),
        "/v3/lease/grant",
        serde_json::json!({"TTL": ttl_secs.to_string()}),
    )
    .await?;
    let id = json_i64(&v["ID"]);
    assert!(id != 0, "etcd v3 lease grant: no ID in {v}");
    Ok(id.to_string())
}

/// `POST /v3/kv/deleterange` of `key` (with `range_end` when given); the revision after it.
async fn v3_delete_range(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    range_end: Option<Vec<u8>>,
) -> Result<i64, CallError> {
    let mut body = serde_json::json!({"key": b64(key.as_bytes())});
    if let Some(end) = range_end {
        body["range_end"] = serde_json::Value::String(b64(&end));
    }
    let what = format!("v3 delete {key}");
    let v = v3_post(http, base, &what, "/v3/kv/deleterange", body).await?;
    Ok(json_i64(&v["header"]["revision"]))
}

/// `POST /v3/maintenance/status`: the member's view (`header.revision`, `leader`, `header.member_id`).
async fn v3_status(http: &reqwest::Client, base: &str) -> Result<serde_json::Value, CallError> {
    let what = "v3 maintenance status";
    v3_post(
        http,
        base,
        what,
        "/v3/maintenance/status",
        serde_json::json!({}),
    )
    .await
}

/// `POST /v3/kv/compaction {"revision":"N","physical":true}`.
async fn v3_compact(http: &reqwest::Client, base: &str, revision: i64) -> Result<(), CallError> {
    let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
    let what = format!("v3 compact {revision}");
    v3_post(http, base, &what, "/v3/kv/compaction", body)
        .await
        .map(|_| ())
}

/// v3 helpers on the single node; each panics with etcd's answer on failure.
impl Etcd {
    /// v3 `put` (no lease); returns the put's revision.
    pub async fn put_v3(&self, key: &str, value: &str) -> i64 {
        or_panic(v3_put(&self.http, &self.url(), key, value, None).await)
    }

    /// Grant a lease of `ttl_secs` and put `key` with it; returns (lease ID, put revision).
    pub async fn put_v3_lease(&self, key: &str, value: &str, ttl_secs: u64) -> (String, i64) {
        let base = self.url();
        let lease = or_panic(v3_grant(&self.http, &base, ttl_secs).await);
        let rev = or_panic(v3_put(&self.http, &base, key, value, Some(&lease)).await);
        (lease, rev)
    }

    /// v3 delete of one key; returns the revision after it (unchanged if the key was absent).
    pub async fn delete_v3(&self, key: &str) -> i64 {
        or_panic(v3_delete_range(&self.http, &self.url(), key, None).await)
    }

    /// v3 delete of every key starting with `prefix` (`range_end` = prefix with last byte + 1);
    /// returns the revision after it.
    pub async fn delete_prefix_v3(&self, prefix: &str) -> i64 {
        let end = prefix_range_end(prefix);
        or_panic(v3_delete_range(&self.http, &self.url(), prefix, Some(end)).await)
    }

    /// The current v3 store revision (a fresh store is at 1).
    pub async fn revision_v3(&self) -> i64 {
        let v = or_panic(v3_status(&self.http, &self.url()).await);
        json_i64(&v["header"]["revision"])
    }

    /// Compact the v3 history up to `revision` (physically, before returning). Watches that start
    /// below it are then canceled with `compact_revision`.
    pub async fn compact_v3(&self, revision: i64) {
        or_panic(v3_compact(&self.http, &self.url(), revision).await)
    }
}

fn or_panic<T>(r: Result<T, CallError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// etcd: a 3-member (or n-member) loopback cluster

/// Fresh 3-member cluster, all started together, was healthy in ~2.2 s here (etcd-facts.md 1).
const CLUSTER_HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a cluster write keeps retrying a 5xx or timeout: a leader election takes ~2 s.
const CLUSTER_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// One write attempt: a PUT to a follower during an election hung > 2 s, then the retry worked.
const CLUSTER_WRITE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Locating the leader right after a kill may need an election first.
const CLUSTER_LEADER_DEADLINE: Duration = Duration::from_secs(10);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Mutex<Option<Child>>,
}

/// A real etcd 3.4 cluster of `n` members on free loopback ports (command lines as in
/// etcd-facts.md 1 "3-member loopback cluster", v2 enabled), data dirs and logs (`mN.log`) in one
/// private temp dir. Members are indexed from 0 (named `m1`, `m2`, ...). Killed by PID on drop;
/// the temp dir is kept (and printed) when the test is panicking.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
    /// Bounded per attempt; writes retry on top of it (see `CLUSTER_WRITE_DEADLINE`).
    http: reqwest::Client,
}

impl EtcdCluster {
    /// Start `n` members together, then wait until every one answers `{"health":"true"}`.
    pub async fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs at least one member");
        if !Path::new(ETCD_BIN).exists() {
            panic!(
                "{ETCD_BIN} not found: integration tests need a real etcd 3.4; \
                 install the Debian package `etcd-server` (apt-get install -y etcd-server etcd-client)"
            );
        }
        switchyard::tls::install_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(CLUSTER_WRITE_ATTEMPT_TIMEOUT)
            .connect_timeout(CLUSTER_WRITE_ATTEMPT_TIMEOUT)
            .pool_max_idle_per_host(0)
            .build()
            .expect("build reqwest client");
        let mut failures = Vec::new();
        for _attempt in 0..ETCD_START_ATTEMPTS {
            let ports = free_ports(2 * n);
            let cluster = EtcdCluster {
                members: (0..n)
                    .map(|i| Member {
                        name: format!("m{}", i + 1),
                        client_port: ports[2 * i],
                        peer_port: ports[2 * i + 1],
                        child: Mutex::new(None),
                    })
                    .collect(),
                dir: unique_temp_dir("switchyard-etcd-cluster"),
                http: http.clone(),
            };
            let all: Vec<usize> = (0..n).collect();
            for &i in &all {
                cluster.spawn(i);
            }
            match cluster.wait_healthy(&all, CLUSTER_HEALTHY_DEADLINE).await {
                Ok(()) => return cluster,
                // `cluster` drops at the end of this arm: members killed, its dir removed.
                Err(why) => failures.push(format!("{why}\n{}", cluster.log_tails(30))),
            }
        }
        panic!(
            "etcd cluster of {n} did not become healthy in {ETCD_START_ATTEMPTS} attempts:\n{}",
            failures.join("\n=====\n")
        );
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs (`http://127.0.0.1:PORT`) in member order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.member(i).client_port)
    }

    /// The temp dir holding `mN.etcd/`, `mN.log` and `mN.stderr`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Member `i`'s running child PID, if any.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.member(i)
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.id())
    }

    fn member(&self, i: usize) -> &Member {
        self.members
            .get(i)
            .unwrap_or_else(|| panic!("no member {i} (cluster of {})", self.members.len()))
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize) {
        let m = self.member(i);
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let stderr = std::fs::File::create(self.dir.join(format!("{}.stderr", m.name)))
            .expect("member stderr file");
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(format!("{}.etcd", m.name)))
            .arg("--enable-v2=true")
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(self.initial_cluster())
            .arg("--initial-cluster-token")
            .arg("lb-test-cluster")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger=zap")
            .arg(format!(
                "--log-outputs={}",
                self.dir.join(format!("{}.log", m.name)).display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // etcd reads ETCD_* variables as flags; a developer's environment must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD_BIN} for {}: {e}", m.name));
        *m.child.lock().unwrap() = Some(child);
    }

    /// Poll `/health` of each member in `which` (short per-probe timeout) until all are healthy.
    async fn wait_healthy(&self, which: &[usize], deadline: Duration) -> Result<(), String> {
        switchyard::tls::install_provider();
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(ETCD_PROBE_TIMEOUT)
            .connect_timeout(ETCD_PROBE_TIMEOUT)
            .build()
            .expect("build probe client");
        let end = Instant::now() + deadline;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            for &i in &pending {
                if let Some(status) = self.exited(i) {
                    return Err(format!(
                        "etcd member {i} ({}) exited early ({status})",
                        self.member(i).name
                    ));
                }
            }
            let mut still = Vec::new();
            for &i in &pending {
                let url = format!("{}/health", self.url(i));
                let healthy = match probe.get(&url).send().await {
                    Ok(resp) => resp
                        .text()
                        .await
                        .is_ok_and(|b| b.replace(' ', "").contains(r#""health":"true""#)),
                    Err(_) => false,
                };
                if !healthy {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "members {pending:?} gave no {{\"health\":\"true\"}} within {deadline:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn exited(&self, i: usize) -> Option<std::process::ExitStatus> {
        let mut guard = self.member(i).child.lock().unwrap();
        let child = guard.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// The last `n` lines of every member's log and stderr (for failure messages).
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!(
                "--- tail of {}.log ---\n{}\n--- {}.stderr ---\n{}\n",
                m.name,
                tail(&self.dir.join(format!("{}.log", m.name)), n),
                m.name,
                tail(&self.dir.join(format!("{}.stderr", m.name)), 5),
            ));
        }
        out
    }

    /// SIGKILL member `i` by PID and reap it. A no-op when it is not running.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.member(i).child.lock().unwrap().take() {
            let _ = child.kill(); // SIGKILL; an error only means it already exited
            let _ = child.wait();
        }
    }

    /// Start member `i` again (killing it first if running) with the same command line and data
    /// dir, then wait until it is healthy. It can only become healthy while a quorum is up: to
    /// bring back several members of a cluster without quorum, use `restart_many`.
    pub async fn restart(&self, i: usize) {
        self.restart_many(&[i]).await;
    }

    /// Start all of `which` again (same command lines and data dirs), then wait until each is healthy.
    pub async fn restart_many(&self, which: &[usize]) {
        for &i in which {
            self.kill(i);
            self.spawn(i);
        }
        if let Err(why) = self.wait_healthy(which, CLUSTER_HEALTHY_DEADLINE).await {
            panic!(
                "etcd cluster restart of {which:?}: {why}\n(dir {})\n{}",
                self.dir.display(),
                self.log_tails(30)
            );
        }
    }

    /// Run `attempt` until it succeeds, fails for good (4xx), or `CLUSTER_WRITE_DEADLINE` passes
    /// (5xx and timeouts are retried: a leader election takes ~2 s). Panics with etcd's answer.
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let end = Instant::now() + CLUSTER_WRITE_DEADLINE;
        let mut retried = false;
        loop {
            match attempt(retried).await {
                Ok(v) => return v,
                Err(e) if e.retryable && Instant::now() < end => {
                    retried = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "etcd cluster {what}: {e} (retried until {CLUSTER_WRITE_DEADLINE:?} on 5xx/timeouts)"
                ),
            }
        }
    }

    fn key_url(&self, i: usize, key: &str) -> String {
        assert!(
            key.starts_with('/'),
            "etcd key must start with '/': {key:?}"
        );
        format!("{}/v2/keys{}", self.url(i), key)
    }

    /// v2 `PUT /v2/keys{key} value=VALUE` via member `i`; returns `modifiedIndex`. Retries on a
    /// 5xx or timeout for up to 10 s (a leader election after a kill).
    pub async fn put(&self, i: usize, key: &str, value: &str) -> u64 {
        let url = self.key_url(i, key);
        let what = format!("put {key} via member {i}");
        let v = self
            .retry(&what, |_| {
                call_json(&what, self.http.put(&url).form(&[("value", value)]))
            })
            .await;
        modified_index(&v)
    }

    /// v2 `DELETE /v2/keys{key}` via member `i`; returns the delete's `modifiedIndex`. Retries like
    /// `put`; a `404` on a retry means an earlier attempt did delete it (returns etcd's index then).
    pub async fn delete(&self, i: usize, key: &str) -> u64 {
        let url = self.key_url(i, key);
        let what = format!("delete {key} via member {i}");
        self.retry(&what, |retried| {
            let req = self.http.delete(&url);
            let what = what.clone();
            async move {
                match call_json(&what, req).await {
                    Ok(v) => Ok(modified_index(&v)),
                    // v2 "Key not found" (errorCode 100) carries the current index.
                    Err(e) if retried && e.status == Some(404) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&e.body).unwrap_or_default();
                        Ok(v["index"].as_u64().unwrap_or(0))
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// v3 put via member `i`'s gateway; returns the revision. Retries like `put`.
    pub async fn put_v3(&self, i: usize, key: &str, value: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 put {key} via member {i}");
        self.retry(&what, |_| v3_put(&self.http, &base, key, value, None))
            .await
    }

    /// v3 delete of one key via member `i`'s gateway; returns the revision after it. Retries
    /// like `put` (deleting an absent key is not an error in v3).
    pub async fn delete_v3(&self, i: usize, key: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 delete {key} via member {i}");
        self.retry(&what, |_| v3_delete_range(&self.http, &base, key, None))
            .await
    }

    /// v3 delete of every key under `prefix` via member `i`; returns the revision after it.
    pub async fn delete_prefix_v3(&self, i: usize, prefix: &str) -> i64 {
        let base = self.url(i);
        let what = format!("v3 delete prefix {prefix} via member {i}");
        self.retry(&what, |_| {
            v3_delete_range(&self.http, &base, prefix, Some(prefix_range_end(prefix)))
        })
        .await
    }

    /// The current v3 revision as member `i` sees it.
    pub async fn revision_v3(&self, i: usize) -> i64 {
        let base = self.url(i);
        let v = self
            .retry("v3 status", |_| v3_status(&self.http, &base))
            .await;
        json_i64(&v["header"]["revision"])
    }

    /// Which member is the leader (asks every running member's `/v3/maintenance/status` and
    /// compares `leader` with `header.member_id`). Waits up to 10 s for an election; panics if
    /// no running member reports itself as leader by then.
    pub async fn leader(&self) -> usize {
        let end = Instant::now() + CLUSTER_LEADER_DEADLINE;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            for i in 0..self.members.len() {
                if self.pid(i).is_none() {
                    continue;
                }
                match v3_status(&self.http, &self.url(i)).await {
                    Ok(v) => {
                        let me = json_u64(&v["header"]["member_id"]);
                        let leader = json_u64(&v["leader"]);
                        if me != 0 && me == leader {
                            return i;
                        }
                        seen.push(format!("member {i}: member_id {me}, leader {leader}"));
                    }
                    Err(e) => seen.push(format!("member {i}: {e}")),
                }
            }
            if Instant::now() >= end {
                panic!(
                    "no etcd member reported itself leader within {CLUSTER_LEADER_DEADLINE:?}: {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!(
                "etcd cluster temp dir kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// upstreams

/// What an `Upstream` saw in its last request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An in-process HTTP/1.1 server on `127.0.0.1:0` that counts hits and remembers the last request.
/// Default answer: `200` with the upstream's name as the body.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Seen>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Upstream {
    /// Answer every request `200` with body = `name`.
    pub async fn start(name: &str) -> Upstream {
        let body = Bytes::from(name.to_string());
        Self::start_with(name, move |_req| {
            let body = body.clone();
            async move { Response::new(Full::new(body)) }
        })
        .await
    }

    /// Like `start`, but `handler` builds each response (slow answers, status codes, ...). Hits and
    /// the last request's head are recorded before `handler` runs.
    pub async fn start_with<F, Fut>(name: &str, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// Like `start_with` on a chosen address (e.g. to bring a stopped upstream back on its port).
    pub async fn start_at<F, Fut>(name: &str, addr: SocketAddr, handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream {name}: bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();

        let (h, l, c, t) = (hits.clone(), last.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (h, l, c, handler) = (h.clone(), l.clone(), c.clone(), handler.clone());
                t.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = Some(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    // On stop the connection is dropped mid-flight: the socket closes, as if the
                    // process had died.
                    tokio::select! {
                        _ = conn => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
            // `listener` drops here: new connections are refused.
        });
        tracker.close();
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            last,
            cancel,
            tracker,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn reset_hits(&self) {
        self.hits.store(0, Ordering::SeqCst);
    }

    /// Method, URI and headers of the last request (to check X-Forwarded-For and friends).
    pub fn last_request(&self) -> Option<Seen> {
        self.last.lock().unwrap().clone()
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.last_request().map(|s| s.headers)
    }

    /// Stop accepting, close every open connection, and return once the listener is closed
    /// (connecting to `addr()` is then refused).
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Switchyard in-process

/// Switchyard's `run()` spawned on the current runtime, on listeners bound from the config
/// (use port 0 in `bind`/`listen`).
pub struct Lb {
    admin: SocketAddr,
    frontends: HashMap<String, SocketAddr>,
    cancel: CancellationToken,
    reloads: mpsc::Sender<Config>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Lb {
    pub async fn start(toml: &str) -> Lb {
        let cfg = Config::from_toml(toml)
            .unwrap_or_else(|e| panic!("config: {e:?}\n--- toml ---\n{toml}"));
        let listeners = Listeners::bind(&cfg)
            .await
            .unwrap_or_else(|e| panic!("Listeners::bind: {e}"));
        let admin = listeners.admin_addr();
        let mut frontends = HashMap::new();
        for name in frontend_names(toml) {
            let addr = listeners
                .frontend_addr(&name)
                .unwrap_or_else(|| panic!("Listeners has no frontend {name:?}"));
            frontends.insert(name, addr);
        }
        let cancel = CancellationToken::new();
        let (reloads, rx) = mpsc::channel(4);
        let handle = tokio::spawn(switchyard::run(cfg, listeners, cancel.clone(), rx));
        Lb {
            admin,
            frontends,
            cancel,
            reloads,
            handle: Some(handle),
        }
    }

    /// `start` then `wait_ready`.
    pub async fn start_ready(toml: &str) -> Lb {
        let lb = Self::start(toml).await;
        lb.wait_ready().await;
        lb
    }

    /// The bound address of frontend `name`; panics if the config has no such frontend.
    pub fn http_addr(&self, name: &str) -> SocketAddr {
        *self
            .frontends
            .get(name)
            .unwrap_or_else(|| panic!("no frontend {name:?} (have {:?})", self.frontends.keys()))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Sets a server's state (`ready`, `drain`, `maint`) through the admin API, without a token;
    /// returns the HTTP status.
    pub async fn set_server_state(&self, backend: &str, server: &str, state: &str) -> u16 {
        http_client()
            .post(format!(
                "http://{}/api/v1/backends/{backend}/servers/{server}/state",
                self.admin
            ))
            .body(format!("{{\"state\":\"{state}\"}}"))
            .send()
            .await
            .expect("admin API")
            .status()
            .as_u16()
    }

    /// Poll `GET /readyz` until `200` (10 s deadline).
    pub async fn wait_ready(&self) {
        let admin = self.admin;
        wait_until(
            "switchyard /readyz == 200",
            Duration::from_secs(10),
            || async move { matches!(try_get(admin, "/readyz").await, Ok((200, _))) },
        )
        .await;
    }

    /// `GET /api/v1/backends` as JSON.
    pub async fn backends(&self) -> serde_json::Value {
        let (status, body) = get(self.admin, "/api/v1/backends").await;
        assert_eq!(status, 200, "/api/v1/backends: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/v1/backends: {e}: {body}"))
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, body) = get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Hand a new config to the running instance (what SIGHUP does after re-reading the file).
    pub async fn reload(&self, cfg: Config) {
        self.reloads
            .send(cfg)
            .await
            .expect("reload channel closed: run() has exited");
    }

    pub async fn reload_toml(&self, toml: &str) {
        let cfg = Config::from_toml(toml).unwrap_or_else(|e| panic!("config: {e:?}\n{toml}"));
        self.reload(cfg).await;
    }

    /// Cancel and wait (10 s) for `run()` to return; asserts it returned `Ok`.
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    pub async fn shutdown_within(mut self, limit: Duration) {
        self.cancel.cancel();
        let handle = self.handle.take().expect("shutdown twice");
        match tokio::time::timeout(limit, handle).await {
            Err(_) => panic!("run() did not return within {limit:?} of cancel"),
            Ok(Err(join)) => panic!("run() task failed: {join}"),
            Ok(Ok(Err(e))) => panic!("run() returned an error: {e:#}"),
            Ok(Ok(Ok(()))) => {}
        }
    }

    /// The cancellation token handed to `run()` (to cancel without waiting).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// `[[frontend]] name`s in a config, in order (Config is opaque to tests).
fn frontend_names(toml: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(toml).expect("config is not TOML");
    table
        .get("frontend")
        .and_then(|f| f.as_array())
        .map(|fs| {
            fs.iter()
                .filter_map(|f| f.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
