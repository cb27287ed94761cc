//! `Lb`: Switchyard's `run()` in-process on the test's runtime, on listeners bound from a config
//! (port 0), with its frontend and admin addresses, reloads, and a bounded shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::Listeners;
use switchyard::config::Config;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{get, http_client, try_get};
use super::{metric, wait_until};

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

    /// The servers of the first backend in `/api/v1/backends` (none if it has no backend).
    pub async fn servers(&self) -> Vec<serde_json::Value> {
        let j = self.backends().await;
        j["backends"][0]["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Server `addr` of the first backend in `/api/v1/backends` (`Null` when not listed).
    pub async fn server(&self, addr: &str) -> serde_json::Value {
        self.servers()
            .await
            .into_iter()
            .find(|s| s["addr"] == addr)
            .unwrap_or_default()
    }

    /// The addresses of the first backend's servers, sorted.
    pub async fn listed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .servers()
            .await
            .iter()
            .map(|s| s["addr"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    }

    /// Polls until the first backend lists exactly `want` (10 s deadline, then a panic naming
    /// `what` and the last list seen).
    pub async fn wait_listed(&self, what: &str, want: &[SocketAddr]) {
        let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = vec![];
        while Instant::now() < deadline {
            last = self.listed().await;
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: listed {last:?}, wanted {want:?}");
    }

    /// Polls `/metrics` until the sample `series` (name and labels) is at least `at_least`
    /// (10 s deadline).
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        wait_until(
            &format!("{series} >= {at_least}"),
            Duration::from_secs(10),
            || async move { metric(&self.metrics().await, series) >= at_least },
        )
        .await;
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
