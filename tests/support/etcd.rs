//! A real etcd 3.4 for tests: `Etcd`, one child process (v2 enabled) on free loopback ports with
//! its data dir and log in a private temp dir, and the etcd v3 JSON-gateway calls that `Etcd` and
//! `EtcdCluster` (`etcd_cluster.rs`) share.
//!
//! What the start-up relies on: etcd accepts TCP before it answers HTTP (so each health probe is
//! short and retried), `--log-outputs` needs `--logger=zap`, and `--enable-v2` is off by default
//! in 3.4, so it is turned on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::client::http_client;
use super::{free_ports, tail, unique_temp_dir};

const ETCD_BIN: &str = "/usr/bin/etcd";
/// Fresh single node was healthy in 0.15–1.3 s here; 20 s leaves room for a loaded CI machine.
const ETCD_HEALTHY_DEADLINE: Duration = Duration::from_secs(20);
/// etcd accepts TCP before it is ready and then holds HTTP requests; keep each probe short.
const ETCD_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A port picked by `free_port` can be taken before etcd binds it; retry with new ports.
pub(super) const ETCD_START_ATTEMPTS: usize = 3;

/// One etcd process: its name, loopback ports and child. Its files, in the directory `spawn` is
/// given: `{name}.etcd/` (data), `{name}.log` and `{name}.stderr`.
pub(super) struct Member {
    pub(super) name: String,
    pub(super) client_port: u16,
    pub(super) peer_port: u16,
    child: Mutex<Option<Child>>,
}

impl Member {
    pub(super) fn new(name: String, client_port: u16, peer_port: u16) -> Member {
        Member {
            name,
            client_port,
            peer_port,
            child: Mutex::new(None),
        }
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `name=http://127.0.0.1:PEER_PORT`, this member's entry in `--initial-cluster`.
    pub(super) fn peer_entry(&self) -> String {
        format!("{}=http://127.0.0.1:{}", self.name, self.peer_port)
    }

    /// Start etcd (v2 enabled) with its files in `dir` and `cluster` flags (`--initial-cluster`
    /// and the like). The same call again reuses the data dir: a restart.
    pub(super) fn spawn(&self, dir: &Path, cluster: &[String]) {
        std::fs::create_dir_all(dir).expect("create etcd temp dir");
        let (client, peer) = (self.url(), format!("http://127.0.0.1:{}", self.peer_port));
        let stderr = std::fs::File::create(dir.join(format!("{}.stderr", self.name)))
            .expect("etcd stderr file");
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(dir.join(format!("{}.etcd", self.name)))
            .arg("--enable-v2=true")
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(cluster)
            .arg("--logger=zap")
            .arg(format!(
                "--log-outputs={}",
                dir.join(format!("{}.log", self.name)).display()
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
            .unwrap_or_else(|e| panic!("spawn {ETCD_BIN} for {}: {e}", self.name));
        *self.child.lock().unwrap() = Some(child);
    }

    /// The exit status, if the child has exited.
    pub(super) fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap();
        let child = guard.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// The running child's PID, if any.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// SIGKILL the child by PID and reap it. A no-op when it is not running.
    pub(super) fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill(); // SIGKILL; an error only means it already exited
            let _ = child.wait();
        }
    }

    /// The last `n` lines of this member's log and of its stderr, for failure messages.
    pub(super) fn log_tail(&self, dir: &Path, n: usize) -> String {
        format!(
            "--- tail of {name}.log ---\n{}\n--- {name}.stderr ---\n{}\n",
            tail(&dir.join(format!("{}.log", self.name)), n),
            tail(&dir.join(format!("{}.stderr", self.name)), 10),
            name = self.name,
        )
    }
}

/// Panics with how to install etcd when it is missing.
pub(super) fn require_etcd() {
    if !Path::new(ETCD_BIN).exists() {
        panic!(
            "{ETCD_BIN} not found: integration tests need a real etcd 3.4; \
             install the Debian package `etcd-server` (apt-get install -y etcd-server etcd-client)"
        );
    }
}

/// A client for `/health` probes, each bounded by `ETCD_PROBE_TIMEOUT`.
pub(super) fn probe_client() -> reqwest::Client {
    switchyard::tls::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(ETCD_PROBE_TIMEOUT)
        .connect_timeout(ETCD_PROBE_TIMEOUT)
        .build()
        .expect("build probe client")
}

/// Whether `GET {url}/health` answers `{"health":"true"}` now.
pub(super) async fn healthy(probe: &reqwest::Client, url: &str) -> bool {
    match probe.get(format!("{url}/health")).send().await {
        Ok(resp) => resp
            .text()
            .await
            .is_ok_and(|b| b.replace(' ', "").contains(r#""health":"true""#)),
        Err(_) => false,
    }
}

/// A single-node etcd 3.4 child process (`s1`) with v2 enabled, on free loopback ports, with its
/// data dir and log in a private temp dir. Killed by PID on drop; the temp dir is removed unless
/// the test is panicking (then its path is printed so `s1.log` can be read).
pub struct Etcd {
    node: Member,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Etcd {
    /// Start etcd and wait until `GET /health` answers `{"health":"true"}`.
    pub async fn start() -> Etcd {
        require_etcd();
        let http = http_client();
        let mut failures = Vec::new();
        for _attempt in 0..ETCD_START_ATTEMPTS {
            let ports = free_ports(2);
            let etcd = Etcd {
                node: Member::new("s1".into(), ports[0], ports[1]),
                dir: unique_temp_dir("switchyard-etcd"),
                http: http.clone(),
            };
            etcd.spawn();
            match etcd.wait_healthy().await {
                Ok(()) => return etcd,
                // `etcd` drops at the end of this arm: killed, its dir removed.
                Err(why) => failures.push(format!("{why}\n{}", etcd.node.log_tail(&etcd.dir, 40))),
            }
        }
        panic!(
            "etcd did not become healthy in {ETCD_START_ATTEMPTS} attempts:\n{}",
            failures.join("\n=====\n")
        );
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn client_port(&self) -> u16 {
        self.node.client_port
    }

    /// The temp dir holding `s1.etcd/`, `s1.log` and `s1.stderr`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&self) {
        let cluster = format!("--initial-cluster={}", self.node.peer_entry());
        self.node.spawn(&self.dir, &[cluster]);
    }

    async fn wait_healthy(&self) -> Result<(), String> {
        let probe = probe_client();
        let url = self.url();
        let end = Instant::now() + ETCD_HEALTHY_DEADLINE;
        loop {
            if let Some(status) = self.node.exited() {
                return Err(format!("etcd exited early ({status})"));
            }
            if healthy(&probe, &url).await {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!(
                    "no {{\"health\":\"true\"}} from {url}/health within {ETCD_HEALTHY_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running child's PID, if any.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// SIGKILL the child by PID and reap it. A no-op when it is not running.
    pub fn kill(&self) {
        self.node.kill();
    }

    /// Start again with the same command line and data dir (kills first if still running), then
    /// wait until healthy. Data and v2 event history survive a restart (the v2 index goes on from
    /// where it was).
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        if let Err(why) = self.wait_healthy().await {
            panic!(
                "etcd restart: {why} (dir {})\n{}",
                self.dir.display(),
                self.node.log_tail(&self.dir, 40)
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

    /// 1100 v2 writes to `/unrelated/k0`..`k9`: more than etcd's 1000-event window, so a
    /// long-poll re-armed with a cursor from before them is answered errorCode 401.
    pub async fn overflow_v2_event_window(&self) {
        for i in 0..1100 {
            let req = self
                .http
                .put(self.key_url(&format!("/unrelated/k{}", i % 10)))
                .form(&[("value", "x")]);
            self.write("put /unrelated", req).await;
        }
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

pub(super) fn modified_index(v: &serde_json::Value) -> u64 {
    v["node"]["modifiedIndex"].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// etcd v3 through the JSON gateway: `POST /v3/...`, keys and values in
// base64, int64 fields as JSON strings. Free functions on a base URL, shared by `Etcd` and the
// members of `EtcdCluster`.

/// Why one etcd call failed. `retryable`: a transport error, a timeout or a 5xx (leader election,
/// lost quorum), worth trying again; a 4xx means the request itself is wrong.
#[derive(Debug)]
pub(super) struct CallError {
    pub(super) retryable: bool,
    /// The HTTP status when etcd answered, and its body.
    pub(super) status: Option<u16>,
    pub(super) body: String,
    message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Send `req`; `Ok(JSON body)` on a 2xx, else etcd's answer (status and body) in the error.
pub(super) async fn call_json(
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
pub(super) fn json_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("etcd int64 field {s:?}: {e}")),
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("etcd int64 {n}")),
        _ => 0,
    }
}

/// A uint64 field of a gateway answer (`member_id`, `leader`, `cluster_id`): string or number.
pub(super) fn json_u64(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("etcd uint64 field {s:?}: {e}")),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("etcd uint64 {n}")),
        _ => 0,
    }
}

/// `range_end` for a prefix: the prefix with its last byte + 1 (trailing 0xff bytes dropped first).
pub(super) fn prefix_range_end(prefix: &str) -> Vec<u8> {
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
pub(super) async fn v3_put(
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
pub(super) async fn v3_delete_range(
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
pub(super) async fn v3_status(
    http: &reqwest::Client,
    base: &str,
) -> Result<serde_json::Value, CallError> {
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
