//! Chaos under load (issue #8 item 4): what etcd failures, discovery storms, upstream faults,
//! membership churn, config reloads and a shutdown cost the clients of a loaded Switchyard, and
//! whether the routed server set still matches etcd afterwards. Runs real etcd 3.4 processes (a
//! single node, and a 3-member cluster for the member faults), in-process upstreams, and
//! Switchyard in-process (`tests/support`), loopback only, on ports picked at run time. Prints a
//! table that is also written to `benches/results/chaos.txt`.
//!
//! `cargo bench --bench chaos` runs every scenario (about 6 minutes); run without `--bench` (e.g.
//! `cargo test --benches`) it is a short smoke run of a few scenarios, cut down, that writes no
//! results file. `CHAOS_SCENARIOS=a,e` runs only those scenarios (either mode).
//!
//! Load: 16 keep-alive clients (`--bench`) send `GET /` back to back; every non-200 answer and
//! every transport error is a failure, counted with its reason. Checks are `inter 1s, fastinter
//! 200ms, downinter 1s, rise 2, fall 3, timeout 300ms` (`tcp`, or `http` where said); everything
//! else is Switchyard's default unless a scenario says otherwise. A monitor polls
//! `/api/v1/backends` every 20 ms during each scenario; "set after" is the time, once the faults
//! stop, until the routed set (servers not draining) equals what a quorum read of etcd holds.
//!
//! a. `members`: 3-member cluster, Switchyard given all three endpoints. Every 2 s for 30 s one
//!    action, rotating over the members: SIGKILL, restart (same data dir), SIGSTOP, SIGCONT. A
//!    fourth key is put and deleted every 500 ms through a member that is not faulted, and its
//!    arrival in routing timed. Expected: 0 failed, the three stable servers never leave the
//!    routed set. v2 and v3.
//! b. `cluster restart`: the same cluster, every member SIGKILLed at once, down 3 s, all
//!    restarted; twice per API. Expected: 0 failed, the set kept while etcd is gone.
//! c. `storm`: single node. v2: 8 writers put OTHER keys as fast as they can for 10 s (several
//!    thousand events, so the watched index falls out of etcd's 1000-event window and the re-armed
//!    long-poll gets errorCode 401); v3: the same writes plus a compaction at the current
//!    revision every second. Meanwhile keys under the prefix change at random intervals (50 ms to
//!    1.5 s). `poll_timeout = 1s` so that the long-poll / watch is re-armed from the same cursor
//!    within the run (with the 60 s default the 401 comes at most 60 s later, the same way).
//!    Expected: 0 failed, every prefix change routed, at least one resync, the set equal after.
//! d. `upstream`: 3 upstreams, `u2` (a raw TCP server) turns faulty at +2 s and is repaired at
//!    +5 s (8 s of load): stopped (listener and connections closed), hung (never answers;
//!    `response_timeout = 1s`), reset before the response head, reset mid-body (head and part of
//!    the body, then RST), garbage (non-HTTP bytes). `http` checks (timeout 300 ms).
//! e. `churn`: 1000 register/deregister changes in 10 s (one every 10 ms; a pool of 6 live
//!    upstreams, 3 or 4 registered at any time). Expected: 0 failed. v2 and v3.
//! f. `reloads`: a config reload every second for 30 s (`Lb::reload_toml`, what SIGHUP does after
//!    re-reading the file), cycling three configs: the base one; backend settings changed; etcd
//!    `poll_timeout` and the frontend's `header_timeout` changed (restarts discovery and the
//!    accept loop). Expected: 0 failed, every reload applied.
//! g. `shutdown`: `shutdown_grace = 3s`; 16 requests taking 1.5 s and 4 taking 10 s are in flight
//!    (plus the keep-alive load, each client stopping at its first failure) when the Lb is
//!    cancelled (what SIGTERM does). Expected: the 16 answer 200, `run()` returns at the grace,
//!    and a new connection (probed with a raw socket during the drain and after `run()`
//!    returned) is refused at once. Reported: how each keep-alive client's first request after
//!    the cancel ends, and what the 4 longer requests get (in-process, `run()` returning does
//!    not end the connection tasks it leaves behind; the binary exits, which does).
//!
//! NOTE: everything (etcd aside) shares one machine and one tokio runtime: the load clients compete
//! with the proxy and etcd for the same cores, so req/s is a floor, not Switchyard's capacity.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{Etcd, EtcdCluster, Lb, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The whole run is cut off here (etcd is still killed by its guards).
const TOTAL_DEADLINE: Duration = Duration::from_secs(900);
/// Until the routed set equals etcd's (initially, and once the faults stop).
const CONVERGE_LIMIT: Duration = Duration::from_secs(15);
/// A change made during the chaos counts as lost if not routed within this.
const REFLECT_LIMIT: Duration = Duration::from_secs(15);
const MONITOR_EVERY: Duration = Duration::from_millis(20);
/// One etcd write attempt; writes are retried (rotating members) up to `WRITE_DEADLINE`.
const WRITE_ATTEMPT: Duration = Duration::from_millis(2500);
const WRITE_DEADLINE: Duration = Duration::from_secs(20);
/// Health check settings written into every config (see the module docs).
const CHECK: &str = "inter = \"1s\"\nfastinter = \"200ms\"\ndowninter = \"1s\"\ntimeout = \"300ms\"\nrise = 2\nfall = 3";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    V2,
    V3,
}

impl Api {
    fn as_str(self) -> &'static str {
        match self {
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Normal = 0,
    Hang = 1,
    ResetHead = 2,
    ResetBody = 3,
    Garbage = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Hang,
            2 => Mode::ResetHead,
            3 => Mode::ResetBody,
            4 => Mode::Garbage,
            _ => Mode::Normal,
        }
    }
}

/// An upstream fault of scenario d: stop the server, or switch its answers to a bad mode.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Stop,
    Bad(Mode),
}

struct Params {
    full: bool,
    clients: usize,
    only: Option<BTreeSet<String>>,
    cluster_apis: Vec<Api>,
    members_for: Duration,
    members_every: Duration,
    toggle_every: Duration,
    restart_cycles: usize,
    restart_down: Duration,
    storm_apis: Vec<Api>,
    storm_for: Duration,
    storm_writers: usize,
    faults: Vec<Fault>,
    fault_load: Duration,
    fault_at: Duration,
    repair_at: Duration,
    churn_apis: Vec<Api>,
    churn_changes: usize,
    churn_for: Duration,
    reload_for: Duration,
    reload_every: Duration,
    grace: Duration,
    slow_ok: Duration,
    slow_long: Duration,
    n_slow_ok: usize,
    n_slow_long: usize,
}

impl Params {
    fn full() -> Params {
        Params {
            full: true,
            clients: 16,
            only: None,
            cluster_apis: vec![Api::V2, Api::V3],
            members_for: Duration::from_secs(30),
            members_every: Duration::from_secs(2),
            toggle_every: Duration::from_millis(500),
            restart_cycles: 2,
            restart_down: Duration::from_secs(3),
            storm_apis: vec![Api::V2, Api::V3],
            storm_for: Duration::from_secs(10),
            storm_writers: 8,
            faults: vec![
                Fault::Stop,
                Fault::Bad(Mode::Hang),
                Fault::Bad(Mode::ResetHead),
                Fault::Bad(Mode::ResetBody),
                Fault::Bad(Mode::Garbage),
            ],
            fault_load: Duration::from_secs(8),
            fault_at: Duration::from_secs(2),
            repair_at: Duration::from_secs(5),
            churn_apis: vec![Api::V2, Api::V3],
            churn_changes: 1000,
            churn_for: Duration::from_secs(10),
            reload_for: Duration::from_secs(30),
            reload_every: Duration::from_secs(1),
            grace: Duration::from_secs(3),
            slow_ok: Duration::from_millis(1500),
            slow_long: Duration::from_secs(10),
            n_slow_ok: 16,
            n_slow_long: 4,
        }
    }

    /// `cargo test --benches`: prove it runs (a few seconds), measure nothing worth keeping.
    fn smoke() -> Params {
        Params {
            full: false,
            clients: 4,
            only: Some(["d", "e", "g"].iter().map(|s| s.to_string()).collect()),
            cluster_apis: vec![Api::V2],
            members_for: Duration::from_secs(4),
            restart_cycles: 1,
            restart_down: Duration::from_millis(500),
            storm_apis: vec![Api::V2],
            storm_for: Duration::from_secs(2),
            storm_writers: 4,
            faults: vec![Fault::Bad(Mode::Garbage)],
            fault_load: Duration::from_millis(1500),
            fault_at: Duration::from_millis(400),
            repair_at: Duration::from_millis(1000),
            churn_apis: vec![Api::V2],
            churn_changes: 60,
            churn_for: Duration::from_millis(600),
            reload_for: Duration::from_millis(1000),
            reload_every: Duration::from_millis(300),
            grace: Duration::from_millis(800),
            slow_ok: Duration::from_millis(300),
            slow_long: Duration::from_millis(1500),
            n_slow_ok: 4,
            n_slow_long: 1,
            ..Params::full()
        }
    }

    fn wants(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(id))
    }
}

fn main() {
    let mut p = if common::full_run() {
        Params::full()
    } else {
        Params::smoke()
    };
    if let Ok(list) = std::env::var("CHAOS_SCENARIOS") {
        p.only = Some(list.split(',').map(|s| s.trim().to_string()).collect());
    }
    // A partial run (CHAOS_SCENARIOS) does not replace the committed figures.
    let write = p.full && std::env::var_os("CHAOS_SCENARIOS").is_none();
    common::main("chaos", TOTAL_DEADLINE, write, run(&p), |rows, took| {
        let problems = rows.iter().flat_map(|r| r.problems.clone()).collect();
        (render(rows, &p, took), problems)
    });
}

async fn run(p: &Params) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if p.wants("a") || p.wants("b") {
        let cluster = EtcdCluster::start(3).await;
        common::progress(format!("etcd cluster up: {:?}", cluster.urls()));
        for &api in &p.cluster_apis {
            if p.wants("a") {
                rows.push(cluster_scenario(p, &cluster, api, ClusterChaos::Members).await?);
            }
            if p.wants("b") {
                rows.push(cluster_scenario(p, &cluster, api, ClusterChaos::FullRestart).await?);
            }
        }
    }
    let wants_single = ["c", "d", "e", "f", "g"].iter().any(|s| p.wants(s));
    if wants_single {
        let etcd = Etcd::start().await;
        common::progress(format!("etcd {} up", etcd.url()));
        if p.wants("c") {
            for &api in &p.storm_apis {
                rows.push(storm(p, &etcd, api).await?);
            }
        }
        if p.wants("d") {
            for &f in &p.faults {
                rows.push(upstream_fault(p, &etcd, f).await?);
            }
        }
        if p.wants("e") {
            for &api in &p.churn_apis {
                rows.push(churn(p, &etcd, api).await?);
            }
        }
        if p.wants("f") {
            rows.push(reloads(p, &etcd).await?);
        }
        if p.wants("g") {
            rows.push(shutdown(p, &etcd).await?);
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Report rows.

#[derive(Default)]
struct Row {
    id: String,
    label: String,
    /// Every failure counts against the scenario (else they are documented, not judged).
    expect_zero: bool,
    secs: f64,
    requests: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    /// Faults applied (count) for the reliability table.
    cases: usize,
    /// After the faults: routed set == etcd (time to get there), or the difference.
    set_after: Option<Result<Duration, String>>,
    details: Vec<String>,
    problems: Vec<String>,
}

impl Row {
    fn take_load(&mut self, l: &LoadResult) {
        self.secs = l.elapsed.as_secs_f64();
        self.requests = l.requests;
        self.failed = l.failed;
        self.failures = l.failures.clone();
        if self.expect_zero && l.failed > 0 {
            self.problems.push(format!(
                "{}: {} of {} requests failed (expected 0)",
                self.id, l.failed, l.requests
            ));
        }
    }

    fn take_set(&mut self, r: Result<Duration, String>) {
        if let Err(e) = &r {
            self.problems
                .push(format!("{}: routed set != etcd: {e}", self.id));
        }
        self.set_after = Some(r);
    }

    fn detail(&mut self, s: impl Into<String>) {
        self.details.push(s.into());
    }
}

// ---------------------------------------------------------------------------------------------
// Config.

struct Cfg<'a> {
    api: Api,
    endpoints: &'a [String],
    backend: &'a str,
    prefix: &'a str,
    check: &'a str,
    global: &'a str,
    etcd: &'a str,
    frontend: &'a str,
    extra: &'a str,
}

impl<'a> Cfg<'a> {
    fn new(api: Api, endpoints: &'a [String], backend: &'a str, prefix: &'a str) -> Cfg<'a> {
        Cfg {
            api,
            endpoints,
            backend,
            prefix,
            check: "tcp",
            global: "",
            etcd: "",
            frontend: "",
            extra: "",
        }
    }

    fn toml(&self) -> String {
        support::Cfg::http("web")
            .table(&format!("[global]\n{}", self.global))
            .etcd_endpoints(self.endpoints)
            .etcd_lines(&format!("api = \"{}\"\n{}", self.api.as_str(), self.etcd))
            .frontend_lines(self.frontend)
            .backend(self.backend)
            .prefix(self.prefix)
            .backend_lines(self.extra)
            .check(&format!("type = \"{}\"\n{CHECK}", self.check))
            .toml()
    }
}

// ---------------------------------------------------------------------------------------------
// etcd through its HTTP APIs (v2 keys, v3 JSON gateway), with member rotation and retries.

#[derive(Clone)]
struct Kv {
    api: Api,
    urls: Vec<String>,
    http: reqwest::Client,
}

enum Op<'a> {
    Put(&'a str, &'a str),
    Delete(&'a str),
}

fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&b).into_owned()
}

/// An int64 of a gateway answer: a JSON string or number; absent is 0.
fn json_i64(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

impl Kv {
    fn new(api: Api, urls: Vec<String>) -> Kv {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(WRITE_ATTEMPT)
            .connect_timeout(WRITE_ATTEMPT)
            .pool_max_idle_per_host(4)
            .build()
            .expect("reqwest client");
        Kv { api, urls, http }
    }

    /// One attempt on member `i`. `Err((retryable, why))`.
    async fn attempt(&self, i: usize, op: &Op<'_>) -> Result<(), (bool, String)> {
        let base = &self.urls[i];
        let req = match (self.api, op) {
            (Api::V2, Op::Put(k, v)) => self
                .http
                .put(format!("{base}/v2/keys{k}"))
                .form(&[("value", *v)]),
            (Api::V2, Op::Delete(k)) => self.http.delete(format!("{base}/v2/keys{k}")),
            (Api::V3, Op::Put(k, v)) => self
                .http
                .post(format!("{base}/v3/kv/put"))
                .json(&serde_json::json!({"key": b64(k.as_bytes()), "value": b64(v.as_bytes())})),
            (Api::V3, Op::Delete(k)) => self
                .http
                .post(format!("{base}/v3/kv/deleterange"))
                .json(&serde_json::json!({"key": b64(k.as_bytes())})),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| (true, common::error_chain(&e)))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.is_success() || (status == 404 && matches!(op, Op::Delete(_))) {
            return Ok(());
        }
        Err((status.is_server_error(), format!("{status}: {body}")))
    }

    /// The write through `members` (rotating on each failure) until it succeeds, a 4xx, or
    /// `WRITE_DEADLINE`. Returns how many attempts failed.
    async fn write_via(&self, members: &[usize], op: Op<'_>) -> anyhow::Result<u32> {
        let end = Instant::now() + WRITE_DEADLINE;
        let mut failed = 0;
        let mut n = 0;
        loop {
            let i = members[n % members.len()];
            n += 1;
            match self.attempt(i, &op).await {
                Ok(()) => return Ok(failed),
                Err((true, why)) if Instant::now() < end => {
                    failed += 1;
                    if failed == 1 || failed % 10 == 0 {
                        common::progress(format!(
                            "etcd write via member {i} failed ({why}); retrying"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, why)) => bail!("etcd write via member {i}: {why}"),
            }
        }
    }

    async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.urls.len()).collect();
        self.write_via(&all, Op::Put(key, value)).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let all: Vec<usize> = (0..self.urls.len()).collect();
        self.write_via(&all, Op::Delete(key)).await.map(|_| ())
    }

    /// Server name (last key segment) -> value under `prefix`, by a quorum read, rotating members.
    async fn list(&self, prefix: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
        let mut last = String::new();
        let end = Instant::now() + WRITE_DEADLINE;
        let mut n = 0;
        while Instant::now() < end {
            let base = &self.urls[n % self.urls.len()];
            n += 1;
            match self.list_on(base, prefix).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd listing of {prefix}: {last}")
    }

    async fn list_on(
        &self,
        base: &str,
        prefix: &str,
    ) -> anyhow::Result<BTreeSet<(String, String)>> {
        let mut out = BTreeSet::new();
        match self.api {
            Api::V2 => {
                let resp = self
                    .http
                    .get(format!("{base}/v2/keys{prefix}?recursive=true&quorum=true"))
                    .send()
                    .await?;
                if resp.status() == 404 {
                    return Ok(out);
                }
                if !resp.status().is_success() {
                    bail!("{}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                fn walk(n: &serde_json::Value, out: &mut BTreeSet<(String, String)>) {
                    if n["dir"].as_bool() == Some(true) {
                        for c in n["nodes"].as_array().into_iter().flatten() {
                            walk(c, out);
                        }
                    } else if let (Some(k), Some(v)) = (n["key"].as_str(), n["value"].as_str()) {
                        let name = k.rsplit('/').next().unwrap_or(k).to_string();
                        out.insert((name, v.to_string()));
                    }
                }
                walk(&v["node"], &mut out);
            }
            Api::V3 => {
                let start = format!("{prefix}/");
                let end = format!("{prefix}0");
                let resp = self
                    .http
                    .post(format!("{base}/v3/kv/range"))
                    .json(&serde_json::json!({"key": b64(start.as_bytes()), "range_end": b64(end.as_bytes())}))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.status());
                }
                let v: serde_json::Value = resp.json().await?;
                for kv in v["kvs"].as_array().into_iter().flatten() {
                    let k = unb64(kv["key"].as_str().unwrap_or_default());
                    let val = unb64(kv["value"].as_str().unwrap_or_default());
                    let name = k.rsplit('/').next().unwrap_or(&k).to_string();
                    out.insert((name, val));
                }
            }
        }
        Ok(out)
    }

    /// v3: the current revision (member 0).
    async fn revision(&self) -> anyhow::Result<i64> {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/v3/maintenance/status", self.urls[0]))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .json()
            .await?;
        Ok(json_i64(&v["header"]["revision"]))
    }

    /// v3: compact the history up to `rev`.
    async fn compact(&self, rev: i64) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/v3/kv/compaction", self.urls[0]))
            .json(&serde_json::json!({"revision": rev.to_string(), "physical": true}))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("compact {rev}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Removes every key under `prefix`.
    async fn clear(&self, prefix: &str) -> anyhow::Result<()> {
        for (name, _) in self.list(prefix).await? {
            self.delete(&format!("{prefix}/{name}")).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Switchyard's admin API.

#[derive(Clone, Debug)]
struct Listed {
    name: String,
    addr: String,
    state: String,
    source: String,
}

struct View {
    connected: bool,
    servers: Vec<Listed>,
}

impl View {
    /// The routed set: servers from etcd that are not draining, as (name, addr).
    fn routed(&self) -> BTreeSet<(String, String)> {
        self.servers
            .iter()
            .filter(|s| s.source == "etcd" && s.state != "draining")
            .map(|s| (s.name.clone(), s.addr.clone()))
            .collect()
    }
}

async fn view(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<View> {
    let v: serde_json::Value = http
        .get(format!("http://{admin}/api/v1/backends"))
        .send()
        .await?
        .json()
        .await?;
    let mut servers = Vec::new();
    for s in v["backends"][0]["servers"].as_array().into_iter().flatten() {
        let f = |k: &str| s[k].as_str().unwrap_or_default().to_string();
        servers.push(Listed {
            name: f("name"),
            addr: f("addr"),
            state: f("state"),
            source: f("source"),
        });
    }
    Ok(View {
        connected: v["discovery"]["connected"].as_bool().unwrap_or(false),
        servers,
    })
}

async fn metrics_text(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// `switchyard_requests_total` of `backend` by code, and `switchyard_retries_total`.
fn proxy_counters(text: &str, backend: &str) -> String {
    let mut codes: BTreeMap<String, f64> = BTreeMap::new();
    let b = format!("backend=\"{backend}\"");
    for l in text.lines() {
        if !l.starts_with("switchyard_requests_total{") || !l.contains(&b) {
            continue;
        }
        let code = l
            .split("code=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *codes.entry(code).or_default() += v;
    }
    let retries = common::sum_samples(text, "switchyard_retries_total{", &[&b]);
    format!(
        "switchyard counted by code: {}; retries {retries}",
        codes
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn resyncs(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("switchyard_discovery_resyncs_total{reason=\"")
            && let Some((reason, v)) = rest.split_once("\"} ")
        {
            out.insert(reason.to_string(), v.parse().unwrap_or(0.0));
        }
    }
    out
}

fn fmt_counts(m: &BTreeMap<String, f64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until the routed set equals what etcd holds under `prefix`; the time it took, or the
/// difference at the deadline.
async fn converge(
    http: &reqwest::Client,
    admin: SocketAddr,
    kv: &Kv,
    prefix: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let t = Instant::now();
    let end = t + limit;
    loop {
        let last = match (kv.list(prefix).await, view(http, admin).await) {
            (Ok(want), Ok(v)) => {
                let have = v.routed();
                if want == have {
                    return Ok(t.elapsed());
                }
                format!(
                    "etcd has {} servers, routed {}: only in etcd {:?}, only routed {:?}",
                    want.len(),
                    have.len(),
                    want.difference(&have).collect::<Vec<_>>(),
                    have.difference(&want).collect::<Vec<_>>()
                )
            }
            (Err(e), _) => format!("etcd: {e:#}"),
            (_, Err(e)) => format!("admin: {e:#}"),
        };
        if Instant::now() >= end {
            return Err(format!("after {limit:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until server `name` is routed with `addr` (`Some`) or not routed (`None`).
async fn wait_reflect(
    http: &reqwest::Client,
    admin: SocketAddr,
    name: &str,
    addr: Option<&str>,
    limit: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(v) = view(http, admin).await {
            let r = v.routed();
            let now = r.iter().find(|(n, _)| n == name).map(|(_, a)| a.as_str());
            if now == addr {
                return Some(t.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Polls the admin API until cancelled: is discovery connected, are the stable servers all
/// routed, which servers are shown down.
struct Monitor {
    stop: CancellationToken,
    handle: JoinHandle<MonitorResult>,
}

#[derive(Default, Debug)]
struct MonitorResult {
    samples: u64,
    errors: u64,
    /// Samples in which a stable server was not routed.
    stable_missing: u64,
    /// Samples with nothing routed at all.
    empty: u64,
    min_routed: Option<usize>,
    disconnected: Duration,
    disconnects: u64,
    /// Server name -> (samples shown down, first time shown down since the start).
    down: BTreeMap<String, (u64, Duration)>,
}

impl Monitor {
    fn start(admin: SocketAddr, stable: BTreeSet<(String, String)>) -> Monitor {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let http = common::admin_client(Duration::from_secs(2));
            let mut r = MonitorResult::default();
            let t0 = Instant::now();
            let mut last = Instant::now();
            let mut was_connected = true;
            while !s.is_cancelled() {
                match view(&http, admin).await {
                    Ok(v) => {
                        r.samples += 1;
                        let routed = v.routed();
                        if !stable.is_subset(&routed) {
                            r.stable_missing += 1;
                        }
                        if routed.is_empty() {
                            r.empty += 1;
                        }
                        r.min_routed = Some(r.min_routed.unwrap_or(usize::MAX).min(routed.len()));
                        let now = Instant::now();
                        if !v.connected {
                            r.disconnected += now - last;
                            if was_connected {
                                r.disconnects += 1;
                            }
                        }
                        was_connected = v.connected;
                        last = now;
                        for srv in &v.servers {
                            if srv.state == "down" {
                                let e = r.down.entry(srv.name.clone()).or_insert((0, t0.elapsed()));
                                e.0 += 1;
                            }
                        }
                    }
                    Err(_) => r.errors += 1,
                }
                tokio::time::sleep(MONITOR_EVERY).await;
            }
            r
        });
        Monitor { stop, handle }
    }

    async fn finish(self) -> MonitorResult {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

impl MonitorResult {
    fn line(&self) -> String {
        format!(
            "monitor: {} samples of /api/v1/backends ({} failed); stable servers missing in {}, \
             nothing routed in {}, fewest routed {}; discovery disconnected {} times, {:.1} s in all",
            self.samples,
            self.errors,
            self.stable_missing,
            self.empty,
            self.min_routed.map(|n| n.to_string()).unwrap_or("-".into()),
            self.disconnects,
            self.disconnected.as_secs_f64()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Load.

struct Load {
    stop: CancellationToken,
    start: Instant,
    handles: Vec<JoinHandle<ClientResult>>,
}

#[derive(Default)]
struct ClientResult {
    requests: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    /// (time since the load started, reason), the first few of each client.
    fail_times: Vec<(Duration, String)>,
    served: BTreeMap<String, u64>,
    latency_us: Vec<u32>,
}

#[derive(Default)]
struct LoadResult {
    elapsed: Duration,
    requests: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    fail_times: Vec<(Duration, String)>,
    served: BTreeMap<String, u64>,
    latency_us: Vec<u32>,
}

impl Load {
    /// `clients` keep-alive clients sending `GET {url}` back to back until `finish`.
    fn start(url: String, clients: usize, ports: Arc<Vec<(String, String)>>) -> Load {
        Self::start_with(url, clients, ports, false)
    }

    /// Like `start`; with `first_failure_ends`, a client stops after its first failure (so a
    /// server that is going away is not hammered with reconnects).
    fn start_with(
        url: String,
        clients: usize,
        ports: Arc<Vec<(String, String)>>,
        first_failure_ends: bool,
    ) -> Load {
        let stop = CancellationToken::new();
        let start = Instant::now();
        let handles = (0..clients)
            .map(|_| {
                tokio::spawn(load_client(
                    url.clone(),
                    stop.clone(),
                    start,
                    ports.clone(),
                    first_failure_ends,
                ))
            })
            .collect();
        Load {
            stop,
            start,
            handles,
        }
    }

    /// Stops the clients (a request in flight completes first) and sums their results.
    async fn finish(self) -> LoadResult {
        self.stop.cancel();
        let mut r = LoadResult::default();
        for h in self.handles {
            let c = h.await.unwrap_or_default();
            r.requests += c.requests;
            r.failed += c.failed;
            for (k, n) in c.failures {
                *r.failures.entry(k).or_default() += n;
            }
            for (k, n) in c.served {
                *r.served.entry(k).or_default() += n;
            }
            r.fail_times.extend(c.fail_times);
            r.latency_us.extend(c.latency_us);
        }
        r.elapsed = self.start.elapsed();
        r.fail_times.sort();
        r
    }
}

async fn load_client(
    url: String,
    stop: CancellationToken,
    start: Instant,
    names: Arc<Vec<(String, String)>>,
    first_failure_ends: bool,
) -> ClientResult {
    let client = common::load_client();
    let mut r = ClientResult::default();
    while !stop.is_cancelled() {
        let t = Instant::now();
        let outcome = common::get_200(&client, &url)
            .await
            .map(|body| String::from_utf8_lossy(&body).into_owned());
        r.requests += 1;
        r.latency_us.push(t.elapsed().as_micros() as u32);
        match outcome {
            Ok(body) => *r.served.entry(body).or_default() += 1,
            Err(why) => {
                r.failed += 1;
                let why = common::count_key(&why, &names);
                if r.fail_times.len() < 50 {
                    r.fail_times.push((t.duration_since(start), why.clone()));
                }
                *r.failures.entry(why).or_default() += 1;
                if first_failure_ends {
                    break;
                }
            }
        }
    }
    r
}

fn ports_of(ups: &[(&str, SocketAddr)]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        ups.iter()
            .map(|(n, a)| (a.to_string(), n.to_string()))
            .collect(),
    )
}

fn load_line(l: &LoadResult) -> String {
    let pct = |q: f64| common::percentile(&l.latency_us, q).unwrap_or(0) as f64 / 1e3;
    format!(
        "load: {} requests in {:.1} s ({:.0} req/s), {} failed; latency p50 {:.2} ms p99 {:.2} ms max {:.1} ms; 200s by upstream: {}",
        l.requests,
        l.elapsed.as_secs_f64(),
        l.requests as f64 / l.elapsed.as_secs_f64().max(1e-9),
        l.failed,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        l.served
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn failure_lines(row: &mut Row, l: &LoadResult, origin: Option<Instant>, start: Instant) {
    for (k, n) in &l.failures {
        row.detail(format!("failure x{n}: {k}"));
    }
    if let (Some(first), Some(last)) = (l.fail_times.first(), l.fail_times.last()) {
        let rel = |d: Duration| match origin {
            Some(o) => {
                let at = start + d;
                if at >= o {
                    format!("+{:.0} ms", (at - o).as_secs_f64() * 1e3)
                } else {
                    format!("-{:.0} ms", (o - at).as_secs_f64() * 1e3)
                }
            }
            None => format!("{:.2} s", d.as_secs_f64()),
        };
        row.detail(format!(
            "failures (sampled, up to 50 per client) sent between {} and {}{}",
            rel(first.0),
            rel(last.0),
            if origin.is_some() {
                " relative to the fault"
            } else {
                " into the load"
            }
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

async fn named_upstream(name: &'static str) -> Upstream {
    Upstream::start(name).await
}

/// A raw TCP HTTP/1.1 server (keep-alive, bodiless requests) whose answers follow `mode`:
/// normal, never, RST before the head, RST mid-body, or non-HTTP bytes.
struct RawUpstream {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl RawUpstream {
    async fn start_at(
        name: &'static str,
        addr: SocketAddr,
        mode: Arc<AtomicU8>,
        hits: Arc<AtomicUsize>,
    ) -> anyhow::Result<RawUpstream> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let (c, mode, hits) = (c.clone(), mode.clone(), hits.clone());
                t.spawn(async move {
                    tokio::select! {
                        _ = raw_conn(stream, name, &mode, &hits, &c) => {}
                        _ = c.cancelled() => {}
                    }
                });
            }
        });
        tracker.close();
        Ok(RawUpstream {
            addr,
            cancel,
            tracker,
        })
    }

    /// Closes the listener and every connection (as if the process died).
    async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn raw_conn(
    mut s: TcpStream,
    name: &str,
    mode: &AtomicU8,
    hits: &AtomicUsize,
    cancel: &CancellationToken,
) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..end);
        hits.fetch_add(1, Ordering::SeqCst);
        match Mode::from_u8(mode.load(Ordering::SeqCst)) {
            Mode::Normal => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
                    name.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            Mode::Hang => {
                cancel.cancelled().await;
                return;
            }
            Mode::ResetHead => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                let _ = s.set_zero_linger();
                return; // dropped with SO_LINGER 0: RST
            }
            Mode::ResetBody => {
                let mut resp =
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4096\r\n\r\n"
                        .to_vec();
                resp.extend_from_slice(&[b'x'; 512]);
                let _ = s.write_all(&resp).await;
                // Let the head reach the proxy (it forwards it), then reset mid-body.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s.set_zero_linger();
                return;
            }
            Mode::Garbage => {
                let _ = s
                    .write_all(
                        b"SSH-2.0-OpenSSH_9.2p1\r\n\x00\x01\x02 not http at all \xff\xfe\r\n\r\n",
                    )
                    .await;
                let _ = s.shutdown().await;
                return;
            }
        }
    }
}

/// A small xorshift generator (no need for a seeded crate here).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pct_ms(v: &[Duration], q: f64) -> String {
    match common::percentile(v, q) {
        Some(d) => format!("{:.1}", d.as_secs_f64() * 1e3),
        None => "-".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// a, b: a 3-member etcd cluster: members killed / stopped / continued, or all restarted.

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClusterChaos {
    Members,
    FullRestart,
}

/// Which members are faulted right now (a writer avoids them); the lock is held while a fault
/// is applied and while a write is in progress, so a write never straddles a new fault.
type Gate = Arc<tokio::sync::Mutex<Vec<bool>>>;

/// What the key toggler saw: propagation of each change, and the changes never routed.
#[derive(Default)]
struct ToggleResult {
    changes: u64,
    propagation: Vec<Duration>,
    lost: Vec<String>,
    write_retries: u32,
    errors: Vec<String>,
}

/// Puts and deletes server `name` (-> `addr`) every `every`, through a member not faulted, and
/// times each change until routed.
#[allow(clippy::too_many_arguments)]
async fn toggler(
    kv: Kv,
    gate: Gate,
    admin: SocketAddr,
    prefix: String,
    name: String,
    addr: String,
    every: Duration,
    stop: CancellationToken,
) -> ToggleResult {
    let http = common::admin_client(Duration::from_secs(2));
    let mut r = ToggleResult::default();
    let mut present = false;
    let key = format!("{prefix}/{name}");
    let mut next = 0usize;
    while !stop.is_cancelled() {
        let wrote = {
            let faulted = gate.lock().await;
            let ok: Vec<usize> = (0..faulted.len()).filter(|&i| !faulted[i]).collect();
            if ok.is_empty() {
                None
            } else {
                // Rotate the first member tried, so every member serves writes.
                let first = next % ok.len();
                next += 1;
                let order: Vec<usize> = ok[first..].iter().chain(&ok[..first]).copied().collect();
                let op = if present {
                    Op::Delete(&key)
                } else {
                    Op::Put(&key, &addr)
                };
                Some(kv.write_via(&order, op).await)
            }
        };
        match wrote {
            None => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Some(Err(e)) => {
                r.errors.push(format!("{e:#}"));
                tokio::time::sleep(every).await;
                continue;
            }
            Some(Ok(retries)) => r.write_retries += retries,
        }
        present = !present;
        r.changes += 1;
        let want = present.then_some(addr.as_str());
        match wait_reflect(&http, admin, &name, want, REFLECT_LIMIT).await {
            Some(d) => r.propagation.push(d),
            None => r.lost.push(format!(
                "change {} ({}) not routed within {REFLECT_LIMIT:?}",
                r.changes,
                if present { "put" } else { "delete" }
            )),
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
    r
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        bail!("kill -{sig} {pid}: {st}");
    }
    Ok(())
}

async fn cluster_scenario(
    p: &Params,
    cluster: &EtcdCluster,
    api: Api,
    chaos: ClusterChaos,
) -> anyhow::Result<Row> {
    let (tag, label) = match chaos {
        ClusterChaos::Members => (
            "a",
            format!(
                "etcd members killed/STOPped/CONTed every {} s for {} s ({})",
                p.members_every.as_secs_f64(),
                p.members_for.as_secs_f64(),
                api.as_str()
            ),
        ),
        ClusterChaos::FullRestart => (
            "b",
            format!(
                "whole etcd cluster killed and restarted x{} ({})",
                p.restart_cycles,
                api.as_str()
            ),
        ),
    };
    let id = format!("{tag}/{}", api.as_str());
    let backend = format!("{tag}{}", api.as_str());
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let ups = [
        named_upstream("u1").await,
        named_upstream("u2").await,
        named_upstream("u3").await,
        named_upstream("u4").await,
    ];
    let kv = Kv::new(api, cluster.urls());
    kv.clear(&prefix).await?;
    for (i, u) in ups[..3].iter().enumerate() {
        kv.put(&format!("{prefix}/{}", i + 1), &u.addr().to_string())
            .await?;
    }
    let urls = cluster.urls();
    let lb = Lb::start_ready(&Cfg::new(api, &urls, &backend, &prefix).toml()).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    let stable = view(&http, admin).await?.routed();
    let before = metrics_text(&http, admin).await?;

    let names = ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>());
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, names);
    let monitor = Monitor::start(admin, stable);
    let gate: Gate = Arc::new(tokio::sync::Mutex::new(vec![false; cluster.len()]));
    let stop_toggle = CancellationToken::new();
    let toggle = tokio::spawn(toggler(
        kv.clone(),
        gate.clone(),
        admin,
        prefix.clone(),
        "4".into(),
        ups[3].addr().to_string(),
        p.toggle_every,
        stop_toggle.clone(),
    ));

    let mut row = Row {
        id: id.clone(),
        label,
        expect_zero: true,
        ..Row::default()
    };
    let t0 = Instant::now();
    let mut events: Vec<String> = Vec::new();
    let mut stopped: Option<usize> = None;
    let mut killed: Option<usize> = None;
    match chaos {
        ClusterChaos::Members => {
            // Rounded up to whole kill/restart, STOP/CONT pairs, so the cluster ends whole.
            let ticks = (p.members_for.as_millis() / p.members_every.as_millis()) as usize;
            let ticks = ticks.div_ceil(2) * 2;
            for k in 0..ticks {
                let at = t0 + p.members_every * (k as u32 + 1);
                tokio::time::sleep_until(at).await;
                let cycle = k / 4;
                let t = Instant::now();
                let what = match k % 4 {
                    0 => {
                        let m = cycle % 3;
                        let mut g = gate.lock().await;
                        g[m] = true;
                        cluster.kill(m);
                        killed = Some(m);
                        format!("SIGKILL m{}", m + 1)
                    }
                    1 => {
                        let m = killed.take().expect("killed member");
                        cluster.restart(m).await;
                        gate.lock().await[m] = false;
                        format!(
                            "restart m{} (healthy after {} ms)",
                            m + 1,
                            t.elapsed().as_millis()
                        )
                    }
                    2 => {
                        let m = (cycle + 1) % 3;
                        let mut g = gate.lock().await;
                        g[m] = true;
                        signal(cluster.pid(m).context("pid")?, "STOP")?;
                        stopped = Some(m);
                        format!("SIGSTOP m{}", m + 1)
                    }
                    _ => {
                        let m = stopped.take().expect("stopped member");
                        signal(cluster.pid(m).context("pid")?, "CONT")?;
                        gate.lock().await[m] = false;
                        format!("SIGCONT m{}", m + 1)
                    }
                };
                row.cases += 1;
                events.push(format!("+{:.1}s {what}", (t - t0).as_secs_f64()));
                common::progress(format!("{id}: {what}"));
            }
        }
        ClusterChaos::FullRestart => {
            for c in 0..p.restart_cycles {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let all: Vec<usize> = (0..cluster.len()).collect();
                let t = Instant::now();
                {
                    let mut g = gate.lock().await;
                    for f in g.iter_mut() {
                        *f = true;
                    }
                    for &i in &all {
                        cluster.kill(i);
                    }
                }
                events.push(format!(
                    "+{:.1}s all members SIGKILLed",
                    (t - t0).as_secs_f64()
                ));
                common::progress(format!("{id}: cycle {c}: all members killed"));
                tokio::time::sleep(p.restart_down).await;
                let r = Instant::now();
                cluster.restart_many(&all).await;
                let healthy = r.elapsed();
                gate.lock().await.iter_mut().for_each(|f| *f = false);
                // Until Switchyard has reconnected (its backoff grew while etcd was gone).
                let h = Instant::now();
                let mut reconnected = None;
                while h.elapsed() < CONVERGE_LIMIT {
                    if view(&http, admin).await.is_ok_and(|v| v.connected) {
                        reconnected = Some(h.elapsed());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                events.push(format!(
                    "+{:.1}s all restarted, healthy after {} ms, switchyard reconnected {} later",
                    (r - t0).as_secs_f64(),
                    healthy.as_millis(),
                    reconnected
                        .map(|d| format!("{} ms", d.as_millis()))
                        .unwrap_or_else(|| "NOT".into())
                ));
                if reconnected.is_none() {
                    row.problems.push(format!(
                        "{id}: not reconnected {CONVERGE_LIMIT:?} after etcd was healthy"
                    ));
                }
                common::progress(format!("{id}: cycle {c}: all members healthy again"));
                row.cases += 1;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Leave the cluster whole.
    if let Some(m) = stopped {
        signal(cluster.pid(m).context("pid")?, "CONT")?;
        events.push(format!("end: SIGCONT m{}", m + 1));
    }
    if let Some(m) = killed {
        cluster.restart(m).await;
        events.push(format!("end: restart m{}", m + 1));
    }
    gate.lock().await.iter_mut().for_each(|f| *f = false);
    // Let the toggler finish its last change, then a second of calm load.
    stop_toggle.cancel();
    let tg = toggle.await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!("faults: {}", events.join("; ")));
    row.detail(format!(
        "key 4 toggled {} times through unfaulted members ({} write attempts retried): routed after p50 {} ms, max {} ms; not routed: {}",
        tg.changes,
        tg.write_retries,
        pct_ms(&tg.propagation, 0.5),
        pct_ms(&tg.propagation, 1.0),
        if tg.lost.is_empty() {
            "none".to_string()
        } else {
            tg.lost.join("; ")
        }
    ));
    if !tg.errors.is_empty() {
        row.detail(format!("toggler write errors: {}", tg.errors.join("; ")));
    }
    row.detail(format!(
        "resyncs before {} -> after {}; {}",
        fmt_counts(&resyncs(&before)),
        fmt_counts(&resyncs(&after)),
        proxy_counters(&after, &backend)
    ));
    if mon.stable_missing > 0 {
        row.problems.push(format!(
            "{id}: a stable server was missing from routing in {} samples",
            mon.stable_missing
        ));
    }
    if !tg.lost.is_empty() {
        row.problems
            .push(format!("{id}: {} changes never routed", tg.lost.len()));
    }
    failure_lines(&mut row, &l, None, t0);
    lb.shutdown().await;
    for u in &ups {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// c: index-cleared (v2) / compaction (v3) storm while the prefix changes.

async fn storm(p: &Params, etcd: &Etcd, api: Api) -> anyhow::Result<Row> {
    let id = format!("c/{}", api.as_str());
    let backend = format!("c{}", api.as_str());
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let names: [&'static str; 6] = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let mut ups = Vec::new();
    for n in names {
        ups.push(named_upstream(n).await);
    }
    let kv = Kv::new(api, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    // s1 is never touched (stable); s2..s6 change.
    let mut present = [false; 6];
    for i in 0..3 {
        kv.put(
            &format!("{prefix}/{}", names[i]),
            &ups[i].addr().to_string(),
        )
        .await?;
        present[i] = true;
    }
    let urls = vec![etcd.url()];
    let mut cfg = Cfg::new(api, &urls, &backend, &prefix);
    cfg.etcd = "poll_timeout = \"1s\"";
    let lb = Lb::start_ready(&cfg.toml()).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    let stable: BTreeSet<(String, String)> = [("s1".to_string(), ups[0].addr().to_string())]
        .into_iter()
        .collect();
    let before = metrics_text(&http, admin).await?;
    let rev_before = if api == Api::V3 {
        kv.revision().await?
    } else {
        0
    };
    let index_before = if api == Api::V2 {
        etcd.index().await
    } else {
        0
    };

    let ports = ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>());
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let monitor = Monitor::start(admin, stable);
    let stop = CancellationToken::new();
    let noise_ok = Arc::new(AtomicU64::new(0));
    let noise_err = Arc::new(AtomicU64::new(0));
    let mut noise = Vec::new();
    for w in 0..p.storm_writers {
        let (kv, stop, ok, err) = (
            kv.clone(),
            stop.clone(),
            noise_ok.clone(),
            noise_err.clone(),
        );
        let key_base = format!("/chaos-noise/{backend}/w{w}");
        noise.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let key = format!("{key_base}/k{}", n % 20);
                n += 1;
                match kv.attempt(0, &Op::Put(&key, "noise")).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => err.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let compactions = Arc::new(AtomicU64::new(0));
    let compactor = (api == Api::V3).then(|| {
        let (kv, stop, n) = (kv.clone(), stop.clone(), compactions.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(rev) = kv.revision().await
                    && kv.compact(rev).await.is_ok()
                {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    // The prefix changes at random intervals; each is timed until routed.
    let t0 = Instant::now();
    let mut rng = Rng::new();
    let mut prop = Vec::new();
    let mut lost = Vec::new();
    let mut changes = 0u64;
    while t0.elapsed() < p.storm_for {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(1450))).await;
        let i = 1 + rng.below(5) as usize;
        let key = format!("{prefix}/{}", names[i]);
        let addr = ups[i].addr().to_string();
        if present[i] {
            kv.delete(&key).await?;
        } else {
            kv.put(&key, &addr).await?;
        }
        present[i] = !present[i];
        changes += 1;
        let want = present[i].then_some(addr.as_str());
        match wait_reflect(&http, admin, names[i], want, REFLECT_LIMIT).await {
            Some(d) => prop.push(d),
            None => lost.push(format!("change {changes} of {}", names[i])),
        }
    }
    stop.cancel();
    for n in noise {
        n.await?;
    }
    if let Some(c) = compactor {
        c.await?;
    }
    let storm_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: match api {
            Api::V2 => format!(
                "v2 index-cleared storm: {} s of writes to other keys, prefix changing",
                p.storm_for.as_secs()
            ),
            Api::V3 => format!(
                "v3 compaction storm: {} s of writes + compaction every 1 s, prefix changing",
                p.storm_for.as_secs()
            ),
        },
        expect_zero: true,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    let rb = resyncs(&before);
    let ra = resyncs(&after);
    let reason = if api == Api::V2 {
        "index_cleared"
    } else {
        "compacted"
    };
    let delta = ra.get(reason).copied().unwrap_or(0.0) - rb.get(reason).copied().unwrap_or(0.0);
    row.cases = delta as usize;
    let history = match api {
        Api::V2 => format!("v2 index {} -> {}", index_before, etcd.index().await),
        Api::V3 => format!(
            "v3 revision {} -> {}, {} compactions",
            rev_before,
            kv.revision().await?,
            compactions.load(Ordering::Relaxed)
        ),
    };
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!(
        "storm {:.1} s: {} noise writes ok ({} failed) by {} writers, {history}; {changes} prefix changes, routed after p50 {} ms max {} ms, not routed: {}",
        storm_secs,
        noise_ok.load(Ordering::Relaxed),
        noise_err.load(Ordering::Relaxed),
        p.storm_writers,
        pct_ms(&prop, 0.5),
        pct_ms(&prop, 1.0),
        if lost.is_empty() { "none".to_string() } else { lost.join(", ") }
    ));
    row.detail(format!(
        "resyncs before {} -> after {} ({reason} +{delta}); {}",
        fmt_counts(&rb),
        fmt_counts(&ra),
        proxy_counters(&after, &backend)
    ));
    if delta < 1.0 && p.full {
        row.problems.push(format!(
            "{id}: no {reason} resync happened during the storm"
        ));
    }
    if !lost.is_empty() {
        row.problems
            .push(format!("{id}: {} prefix changes never routed", lost.len()));
    }
    if mon.stable_missing > 0 {
        row.problems.push(format!(
            "{id}: the stable server was missing from routing in {} samples",
            mon.stable_missing
        ));
    }
    failure_lines(&mut row, &l, None, t0);
    lb.shutdown().await;
    for u in &ups {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// d: one upstream stopped, hung, reset or talking garbage.

async fn upstream_fault(p: &Params, etcd: &Etcd, fault: Fault) -> anyhow::Result<Row> {
    let (tag, label, expect_zero) = match fault {
        Fault::Stop => (
            "stop",
            "upstream stopped (listener + connections closed)",
            true,
        ),
        Fault::Bad(Mode::Hang) => (
            "hung",
            "upstream hung (never answers), response_timeout 1s",
            false,
        ),
        Fault::Bad(Mode::ResetHead) => {
            ("reset-head", "upstream RST before the response head", true)
        }
        Fault::Bad(Mode::ResetBody) => (
            "reset-body",
            "upstream RST mid-body (head + 512 of 4096 bytes)",
            false,
        ),
        Fault::Bad(Mode::Garbage) => ("garbage", "upstream answers non-HTTP bytes", true),
        Fault::Bad(Mode::Normal) => unreachable!("not a fault"),
    };
    let id = format!("d/{tag}");
    let backend = format!("d{}", tag.replace('-', ""));
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let u1 = named_upstream("u1").await;
    let u3 = named_upstream("u3").await;
    let mode = Arc::new(AtomicU8::new(Mode::Normal as u8));
    let hits = Arc::new(AtomicUsize::new(0));
    let u2 =
        RawUpstream::start_at("u2", "127.0.0.1:0".parse()?, mode.clone(), hits.clone()).await?;
    let u2_addr = u2.addr;
    let kv = Kv::new(Api::V2, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    for (n, a) in [("1", u1.addr()), ("2", u2_addr), ("3", u3.addr())] {
        kv.put(&format!("{prefix}/{n}"), &a.to_string()).await?;
    }
    let urls = vec![etcd.url()];
    let mut cfg = Cfg::new(Api::V2, &urls, &backend, &prefix);
    cfg.check = "http";
    cfg.extra = "response_timeout = \"1s\"";
    let lb = Lb::start_ready(&cfg.toml()).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    // Wait until all three pass their checks.
    let t = Instant::now();
    while !view(&http, admin)
        .await?
        .servers
        .iter()
        .all(|s| s.state == "up")
    {
        if t.elapsed() > CONVERGE_LIMIT {
            bail!("{id}: servers not all up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ports = ports_of(&[("u1", u1.addr()), ("u2", u2_addr), ("u3", u3.addr())]);
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let start = load.start;
    let monitor = Monitor::start(admin, BTreeSet::new());
    tokio::time::sleep_until(start + p.fault_at).await;
    let hits_before = hits.load(Ordering::SeqCst);
    let fault_t = Instant::now();
    match fault {
        Fault::Stop => u2.stop().await,
        Fault::Bad(m) => mode.store(m as u8, Ordering::SeqCst),
    }
    common::progress(format!("{id}: u2 faulted"));
    // u2's first `down` after the fault.
    let mut detect = None;
    while Instant::now() < start + p.repair_at {
        if detect.is_none()
            && let Ok(v) = view(&http, admin).await
            && v.servers.iter().any(|s| s.name == "2" && s.state == "down")
        {
            detect = Some(fault_t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits_faulty = hits.load(Ordering::SeqCst) - hits_before;
    let repaired = match fault {
        Fault::Stop => {
            Some(RawUpstream::start_at("u2", u2_addr, mode.clone(), hits.clone()).await?)
        }
        Fault::Bad(_) => {
            mode.store(Mode::Normal as u8, Ordering::SeqCst);
            None
        }
    };
    let repair_t = Instant::now();
    common::progress(format!("{id}: u2 repaired"));
    let mut back_up = None;
    while Instant::now() < start + p.fault_load {
        if back_up.is_none()
            && let Ok(v) = view(&http, admin).await
            && v.servers.iter().any(|s| s.name == "2" && s.state == "up")
        {
            back_up = Some(repair_t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: label.to_string(),
        expect_zero,
        cases: 1,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    row.detail(load_line(&l));
    row.detail(format!(
        "u2 faulted at +{:.1} s, repaired at +{:.1} s; u2 shown down {} after the fault, up {} after the repair; \
         requests (checks included) u2 received while faulty: {}; u2 down in {} monitor samples",
        p.fault_at.as_secs_f64(),
        p.repair_at.as_secs_f64(),
        detect.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into()),
        back_up.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into()),
        hits_faulty,
        mon.down.get("2").map(|d| d.0).unwrap_or(0)
    ));
    let u2_label = format!("server=\"{u2_addr}\"");
    let checks = |result: &str| {
        common::sum_samples(
            &after,
            "switchyard_health_checks_total{",
            &[&u2_label, &format!("result=\"{result}\"")],
        )
    };
    row.detail(format!(
        "health checks on u2 (whole run): {} passed, {} failed; {}",
        checks("success"),
        checks("failure"),
        proxy_counters(&after, &backend)
    ));
    failure_lines(&mut row, &l, Some(fault_t), start);
    lb.shutdown().await;
    u1.stop().await;
    u3.stop().await;
    u2.stop().await;
    if let Some(u) = repaired {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// e: register/deregister churn.

async fn churn(p: &Params, etcd: &Etcd, api: Api) -> anyhow::Result<Row> {
    let id = format!("e/{}", api.as_str());
    let backend = format!("e{}", api.as_str());
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let names: [&'static str; 6] = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let mut ups = Vec::new();
    for n in names {
        ups.push(named_upstream(n).await);
    }
    let kv = Kv::new(api, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    let mut registered: std::collections::VecDeque<usize> = (0..3).collect();
    for &i in &registered {
        kv.put(
            &format!("{prefix}/{}", names[i]),
            &ups[i].addr().to_string(),
        )
        .await?;
    }
    let urls = vec![etcd.url()];
    let lb = Lb::start_ready(&Cfg::new(api, &urls, &backend, &prefix).toml()).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    let ports = ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>());
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let monitor = Monitor::start(admin, BTreeSet::new());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let every = p.churn_for / p.churn_changes as u32;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let mut write_lat = Vec::new();
    let mut changes = 0usize;
    while changes < p.churn_changes {
        tick.tick().await;
        let t = Instant::now();
        // Alternate: register a pool member that is not registered, then deregister the oldest;
        // 3 or 4 servers stay registered.
        if changes.is_multiple_of(2) {
            let i = (0..names.len())
                .find(|i| !registered.contains(i))
                .expect("a free pool member");
            kv.put(
                &format!("{prefix}/{}", names[i]),
                &ups[i].addr().to_string(),
            )
            .await?;
            registered.push_back(i);
        } else {
            let i = registered.pop_front().expect("registered");
            kv.delete(&format!("{prefix}/{}", names[i])).await?;
        }
        write_lat.push(t.elapsed());
        changes += 1;
    }
    let churn_secs = t0.elapsed();
    let set = converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: format!(
            "{} register/deregister changes in {} s ({})",
            p.churn_changes,
            p.churn_for.as_secs_f64(),
            api.as_str()
        ),
        expect_zero: true,
        cases: changes,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(set);
    let after = metrics_text(&http, admin).await?;
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!(
        "{changes} changes in {:.2} s (etcd write acknowledged p50 {} ms, max {} ms); discovery events {}; {}",
        churn_secs.as_secs_f64(),
        pct_ms(&write_lat, 0.5),
        pct_ms(&write_lat, 1.0),
        common::sum_samples(&after, "switchyard_discovery_events_total{", &[&format!("backend=\"{backend}\"")]),
        proxy_counters(&after, &backend)
    ));
    if mon.empty > 0 {
        row.problems.push(format!(
            "{id}: nothing routed in {} monitor samples",
            mon.empty
        ));
    }
    failure_lines(&mut row, &l, None, t0);
    lb.shutdown().await;
    for u in &ups {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// f: config reloads under load.

async fn reloads(p: &Params, etcd: &Etcd) -> anyhow::Result<Row> {
    let id = "f".to_string();
    let backend = "freload";
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let ups = [
        named_upstream("r1").await,
        named_upstream("r2").await,
        named_upstream("r3").await,
    ];
    let kv = Kv::new(Api::V2, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    for (i, u) in ups.iter().enumerate() {
        kv.put(&format!("{prefix}/{}", i + 1), &u.addr().to_string())
            .await?;
    }
    let urls = vec![etcd.url()];
    let base = Cfg::new(Api::V2, &urls, backend, &prefix);
    let mut backend_changed = Cfg::new(Api::V2, &urls, backend, &prefix);
    backend_changed.extra = "retries = 3\nconnect_timeout = \"1500ms\"\nbalance = \"leastconn\"";
    let mut etcd_changed = Cfg::new(Api::V2, &urls, backend, &prefix);
    etcd_changed.etcd = "poll_timeout = \"30s\"";
    etcd_changed.frontend = "header_timeout = \"9s\"";
    let variants = [base.toml(), backend_changed.toml(), etcd_changed.toml()];
    let lb = Lb::start_ready(&variants[0]).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    let stable = view(&http, admin).await?.routed();
    let before = metrics_text(&http, admin).await?;
    let ports = ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>());
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let monitor = Monitor::start(admin, stable);
    let t0 = Instant::now();
    let mut n = 0usize;
    while t0.elapsed() < p.reload_for {
        tokio::time::sleep_until(t0 + p.reload_every * (n as u32 + 1)).await;
        n += 1;
        lb.reload_toml(&variants[n % variants.len()]).await;
    }
    // Back to the base config (if not there already), then a second of calm load.
    if !n.is_multiple_of(variants.len()) {
        n += 1;
        lb.reload_toml(&variants[0]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: format!(
            "config reload every {} ms for {} s (3 configs in turn)",
            p.reload_every.as_millis(),
            p.reload_for.as_secs_f64()
        ),
        expect_zero: true,
        cases: n,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    let ok = |t: &str| {
        common::sum_samples(
            t,
            "switchyard_config_reloads_total{",
            &["result=\"success\""],
        )
    };
    let bad = |t: &str| {
        common::sum_samples(
            t,
            "switchyard_config_reloads_total{",
            &["result=\"failure\""],
        )
    };
    let applied = ok(&after) - ok(&before);
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!(
        "{n} reloads sent; switchyard_config_reloads_total success +{applied}, failure +{}; resyncs before {} -> after {}; {}",
        bad(&after) - bad(&before),
        fmt_counts(&resyncs(&before)),
        fmt_counts(&resyncs(&after)),
        proxy_counters(&after, backend)
    ));
    if applied < n as f64 {
        row.problems
            .push(format!("{id}: {n} reloads sent, {applied} applied"));
    }
    if mon.stable_missing > 0 {
        row.problems.push(format!(
            "{id}: a server was missing from routing in {} samples",
            mon.stable_missing
        ));
    }
    failure_lines(&mut row, &l, None, t0);
    lb.shutdown().await;
    for u in &ups {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// g: shutdown with requests in flight.

/// What a fresh connection to the frontend got.
async fn probe_new_connection(addr: SocketAddr) -> String {
    let t = Instant::now();
    let mut s =
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Err(_) => return "connect timed out (500 ms)".into(),
            Ok(Err(e)) => return format!("connect: {}", e.kind()),
            Ok(Ok(s)) => s,
        };
    if s.write_all(b"GET / HTTP/1.1\r\nhost: chaos\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return "connected; write failed".into();
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await {
        Err(_) => format!("connected, no answer within 2 s (read {} bytes)", buf.len()),
        Ok(Err(e)) => format!(
            "connected, then {} after {} ms with {} bytes",
            e.kind(),
            t.elapsed().as_millis(),
            buf.len()
        ),
        Ok(Ok(_)) if buf.is_empty() => format!(
            "connected, closed without an answer after {} ms",
            t.elapsed().as_millis()
        ),
        Ok(Ok(_)) => format!(
            "connected, answered {:?}",
            String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or_default()
        ),
    }
}

async fn shutdown(p: &Params, etcd: &Etcd) -> anyhow::Result<Row> {
    let id = "g".to_string();
    let backend = "gshutdown";
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let mk = |name: &'static str| {
        let slow_hits = slow_hits.clone();
        Upstream::start_with(name, move |req| {
            let slow_hits = slow_hits.clone();
            async move {
                // `/slow/MS` answers after MS milliseconds.
                if let Some(ms) = req
                    .uri()
                    .path()
                    .strip_prefix("/slow/")
                    .and_then(|m| m.parse::<u64>().ok())
                {
                    slow_hits.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Response::new(Full::new(Bytes::from_static(name.as_bytes())))
            }
        })
    };
    let ups = [mk("g1").await, mk("g2").await];
    let kv = Kv::new(Api::V2, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    for (i, u) in ups.iter().enumerate() {
        kv.put(&format!("{prefix}/{}", i + 1), &u.addr().to_string())
            .await?;
    }
    let urls = vec![etcd.url()];
    let grace_s = format!("shutdown_grace = \"{}ms\"", p.grace.as_millis());
    let mut cfg = Cfg::new(Api::V2, &urls, backend, &prefix);
    cfg.global = &grace_s;
    let lb = Lb::start_ready(&cfg.toml()).await;
    let admin = lb.admin_addr();
    let web = lb.http_addr("web");
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    let ports = ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>());
    // Each keep-alive client stops at its first failure (expected after the cancel).
    let load = Load::start_with(format!("http://{web}/"), p.clients, ports.clone(), true);
    let l_start = load.start;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Slow requests, each on its own connection.
    let mut slow = Vec::new();
    let n_slow = p.n_slow_ok + p.n_slow_long;
    for k in 0..n_slow {
        let ms = if k < p.n_slow_ok {
            p.slow_ok.as_millis()
        } else {
            p.slow_long.as_millis()
        };
        let url = format!("http://{web}/slow/{ms}");
        let ports = ports.clone();
        slow.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let r = common::get_200(&c, &url).await.map(|_| ());
            (Instant::now(), r.map_err(|e| common::count_key(&e, &ports)))
        }));
    }
    let t = Instant::now();
    while slow_hits.load(Ordering::SeqCst) < n_slow {
        if t.elapsed() > Duration::from_secs(5) {
            bail!("{id}: slow requests not all in flight");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cancel_t = Instant::now();
    lb.cancel_token().cancel();
    common::progress(format!(
        "{id}: cancelled with {n_slow} slow requests in flight"
    ));
    let run_returned = tokio::spawn(async move {
        lb.shutdown_within(Duration::from_secs(30)).await;
        Instant::now()
    });
    // New connections during the drain, each probe on its own (a probe waits up to 2 s).
    let probe_tasks: Vec<_> = [Duration::from_millis(50), p.grace / 3, p.grace * 2 / 3]
        .into_iter()
        .map(|at| {
            tokio::spawn(async move {
                tokio::time::sleep_until(cancel_t + at).await;
                let started = cancel_t.elapsed();
                let r = probe_new_connection(web).await;
                (format!("opened at +{} ms", started.as_millis()), r)
            })
        })
        .collect();
    let returned = run_returned.await?;
    let run_took = returned - cancel_t;
    // The keep-alive clients stop here (a request in flight completes first).
    load.stop.cancel();
    let mut probes = Vec::new();
    for t in probe_tasks {
        probes.push(t.await?);
    }
    probes.push((
        "after run() returned".to_string(),
        probe_new_connection(web).await,
    ));
    let l = load.finish().await;
    let mut ok_done = Vec::new();
    let mut ok_failed = Vec::new();
    let mut long_results = Vec::new();
    for (k, h) in slow.into_iter().enumerate() {
        let (done, r) = h.await?;
        let took = done.saturating_duration_since(cancel_t);
        if k < p.n_slow_ok {
            match r {
                Ok(()) => ok_done.push(took),
                Err(e) => ok_failed.push(e),
            }
        } else {
            long_results.push((took, r));
        }
    }
    let long_failed: Vec<&String> = long_results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let mut row = Row {
        id: id.clone(),
        label: format!(
            "shutdown with {} requests in flight (grace {} ms)",
            n_slow,
            p.grace.as_millis()
        ),
        expect_zero: false,
        cases: 1,
        ..Row::default()
    };
    row.secs = l.elapsed.as_secs_f64();
    row.requests = l.requests + n_slow as u64;
    row.failed = l.failed + (ok_failed.len() + long_failed.len()) as u64;
    for (k, n) in &l.failures {
        *row.failures
            .entry(format!("keep-alive client after cancel: {k}"))
            .or_default() += n;
    }
    for e in &ok_failed {
        *row.failures
            .entry(format!("slow request within grace: {e}"))
            .or_default() += 1;
    }
    for e in &long_failed {
        *row.failures
            .entry(format!("slow request beyond grace: {e}"))
            .or_default() += 1;
    }
    row.detail(load_line(&l));
    row.detail(format!(
        "{} requests of {} ms in flight at cancel: {} answered 200 (done {} .. {} ms after cancel), {} failed",
        p.n_slow_ok,
        p.slow_ok.as_millis(),
        ok_done.len(),
        ok_done.iter().min().map(|d| d.as_millis()).unwrap_or(0),
        ok_done.iter().max().map(|d| d.as_millis()).unwrap_or(0),
        ok_failed.len()
    ));
    row.detail(format!(
        "{} requests of {} ms in flight at cancel: {}",
        p.n_slow_long,
        p.slow_long.as_millis(),
        long_results
            .iter()
            .map(|(took, r)| format!(
                "{} after {} ms",
                match r {
                    Ok(()) => "200",
                    Err(e) => e.as_str(),
                },
                took.as_millis()
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    row.detail(format!(
        "run() returned {} ms after cancel (grace {} ms)",
        run_took.as_millis(),
        p.grace.as_millis()
    ));
    row.detail(format!(
        "new connections: {}",
        probes
            .iter()
            .map(|(when, what)| format!("{when}: {what}"))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    failure_lines(&mut row, &l, Some(cancel_t), l_start);
    if !ok_failed.is_empty() {
        row.problems.push(format!(
            "{id}: {} requests that fit in the grace failed: {:?}",
            ok_failed.len(),
            ok_failed
        ));
    }
    if run_took > p.grace + Duration::from_secs(1) {
        row.problems.push(format!(
            "{id}: run() returned {} ms after cancel, grace {} ms",
            run_took.as_millis(),
            p.grace.as_millis()
        ));
    }
    // Refused at once, during the drain too (not left queueing in a backlog nobody serves).
    for (when, what) in &probes {
        if !what.starts_with("connect: ") {
            row.problems.push(format!(
                "{id}: a new connection {when} was not refused: {what}"
            ));
        }
    }
    for u in &ups {
        u.stop().await;
    }
    kv.clear(&prefix).await?;
    common::progress(format!("{id}: done"));
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// Output.

fn render(rows: &[Row], p: &Params, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switchyard chaos bench{}: {}, git {}, {}, {} CPUs",
        if p.full {
            ""
        } else {
            " (SMOKE RUN, not a measurement)"
        },
        common::command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        common::git_rev(),
        common::command("/usr/bin/etcd", &["--version"])
            .lines()
            .next()
            .unwrap_or("etcd ?")
            .replace("etcd Version: ", "etcd "),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "load: {} keep-alive clients, GET / back to back; a failure is any non-200 answer or transport error. \
         checks inter 1s fastinter 200ms downinter 1s rise 2 fall 3 timeout 300ms (tcp; http in d)",
        p.clients
    );
    let _ = writeln!(
        out,
        "cases: a member actions (kill, restart, STOP, CONT); b whole-cluster restarts; c resyncs the \
         storm caused; d one fault; e etcd changes; f reloads; g one shutdown. \
         set after: time until the routed set equalled a quorum read of etcd once the faults stopped"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>9} {:>7} {:>7}  {:<26} failure reasons",
        "scenario", "cases", "requests", "failed", "req/s", "set after (== etcd)"
    );
    for r in rows {
        let reasons = if r.failures.is_empty() {
            "-".to_string()
        } else {
            r.failures
                .iter()
                .map(|(k, n)| format!("{n}x {}", short(k)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let set = match &r.set_after {
            None => "-".to_string(),
            Some(Ok(d)) => format!("ok ({} ms)", d.as_millis()),
            Some(Err(_)) => "MISMATCH".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>9} {:>7} {:>7.0}  {:<26} {reasons}",
            r.id,
            r.cases,
            r.requests,
            r.failed,
            r.requests as f64 / r.secs.max(1e-9),
            set
        );
    }
    for r in rows {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} {}: {} requests, {} failed{}",
            r.id,
            r.label,
            r.requests,
            r.failed,
            if r.expect_zero {
                " (expected 0)"
            } else {
                " (failures documented, not judged)"
            }
        );
        for d in &r.details {
            let _ = writeln!(out, "  {d}");
        }
        if let Some(Err(e)) = &r.set_after {
            let _ = writeln!(out, "  set after: {e}");
        }
        for pr in &r.problems {
            let _ = writeln!(out, "  PROBLEM: {pr}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "bench wall time {:.1} s", took.as_secs_f64());
    out
}

/// A failure reason cut for the table (the full text is in the scenario's details): an HTTP
/// status with its first words, or what the client was doing and the root cause.
fn short(s: &str) -> String {
    let parts: Vec<&str> = s.split(": ").collect();
    let cut = match parts
        .iter()
        .position(|p| p.starts_with("error sending request"))
    {
        // Transport errors: the context before reqwest's wrapper, then the innermost cause.
        Some(i) => {
            let mut v = parts[..i].to_vec();
            v.push(parts[parts.len() - 1]);
            v.join(": ")
        }
        None if parts[0].contains("body failed") => {
            format!("{}: {}", parts[0], parts[parts.len() - 1])
        }
        None => parts[..parts.len().min(2)].join(": "),
    };
    cut.chars().take(90).collect()
}
