//! Shared integration-test harness: a real etcd 3.4 child process (`Etcd`), in-process hyper
//! upstreams with hit counters (`Upstream`), Switchyard itself run in-process on port-0 listeners
//! (`Lb`), and small polling/HTTP helpers.
//!
//! Owns process and socket lifecycle for tests; it does not own assertions about Switchyard's
//! behaviour (those live in the `tests/*.rs` that use it as `mod support;`).
//! Facts this relies on (etcd accepts TCP before it answers HTTP, `--log-outputs` needs
//! `--logger=zap`, `--enable-v2` is off by default) are in shared/etcd-facts.md section 1.
#![allow(dead_code)]

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
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("build reqwest client")
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
