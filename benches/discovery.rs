//! Discovery benchmark: how fast an etcd write reaches routing, and whether membership churn under
//! load costs a single request. Runs against a real etcd 3.4 (v2 keys API) and Switchyard running
//! in-process (`tests/support`), and prints a table that is also written to
//! `benches/results/discovery.txt`.
//!
//! `cargo bench --bench discovery` runs the full measurement (well under 2 minutes); run without
//! `--bench` (e.g. `cargo test --benches`) it is a short smoke run that writes no results file.
//!
//! 1. Propagation: upstream A is registered; for each sample a fresh key for upstream B_i (a pool
//!    of 20 running upstreams, used in turn) is PUT to etcd while one keep-alive client polls the
//!    frontend back to back; the sample is the time from just before the PUT until the first
//!    answer from B_i. With A and B_i in the round-robin, every other request lands on B_i once it
//!    is published, so a sample is propagation plus one to two request round trips; the RTT row
//!    shows how much that is. The same samples also time the PUT's acknowledgement and a bare
//!    v2 long-poll armed by the bench, which is the floor any etcd watcher can reach.
//!    The key is deleted after each sample and the next starts once the removal is routed.
//! 2. The same measurement for the stack Switchyard replaces: a confd-style watcher (long-poll,
//!    full re-read, render haproxy.cfg, `haproxy -c`, `haproxy -D -sf $(cat pidfile)`), skipped
//!    when `/usr/sbin/haproxy` is missing.
//! 3. Churn under load: for 10 s a server is registered and the oldest one deleted every 200 ms
//!    (a pool of 6 running upstreams, 3 registered at any time, never fewer) while 32 keep-alive
//!    clients send GETs back to back. Every non-200 answer and every transport error is a failure;
//!    the expected number is 0. The confd+HAProxy stack gets the same load for comparison.
//!
//! NOTE: everything (etcd aside) shares one machine and one tokio runtime: the load clients compete
//! with the proxy for the same cores, so req/s is a floor, not Switchyard's capacity.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use support::config::Api;
use support::{Cfg, Etcd, Lb, Upstream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The whole run is cut off here (etcd and HAProxy are still stopped by their guards).
const TOTAL_DEADLINE: Duration = Duration::from_secs(110);
/// One propagation sample gives up after this (counted as a timeout, not a number).
const SAMPLE_LIMIT: Duration = Duration::from_secs(3);
/// Waiting for a removal or an initial set to be routed.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
const HAPROXY: &str = "/usr/sbin/haproxy";
const SY_PREFIX: &str = "/bench/backend";
const CONFD_PREFIX: &str = "/bench/confd";

struct Params {
    full: bool,
    rtt_samples: usize,
    samples: usize,
    confd_samples: usize,
    /// Upstreams used in turn as B_i.
    pool: usize,
    churn_for: Duration,
    churn_every: Duration,
    churn_pool: usize,
    churn_registered: usize,
    clients: usize,
}

impl Params {
    fn full() -> Params {
        Params {
            full: true,
            rtt_samples: 2000,
            samples: 200,
            confd_samples: 100,
            pool: 20,
            churn_for: Duration::from_secs(10),
            churn_every: Duration::from_millis(200),
            churn_pool: 6,
            churn_registered: 3,
            clients: 32,
        }
    }

    /// `cargo test --benches`: prove it runs, measure nothing worth keeping.
    fn smoke() -> Params {
        Params {
            full: false,
            rtt_samples: 100,
            samples: 10,
            confd_samples: 5,
            pool: 4,
            churn_for: Duration::from_secs(1),
            churn_every: Duration::from_millis(200),
            churn_pool: 6,
            churn_registered: 3,
            clients: 8,
        }
    }
}

fn main() {
    let p = if common::full_run() {
        Params::full()
    } else {
        Params::smoke()
    };
    common::main(
        "discovery",
        TOTAL_DEADLINE,
        p.full,
        run(&p),
        |report, took| (report.render(&p, took), report.problems()),
    );
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Report {
    rtt: Vec<Duration>,
    switchyard: Propagation,
    churn: Churn,
    confd: Result<ConfdResult, String>,
}

struct ConfdResult {
    prop: Propagation,
    churn: Churn,
    /// (`haproxy -c`, reload command) durations of every reload.
    reloads: Vec<(Duration, Duration)>,
    /// How many of `reloads` happened during the churn.
    churn_reloads: usize,
    /// `haproxy -c` of the same file with no load and no poll loop running.
    idle_check: Vec<Duration>,
}

async fn run(p: &Params) -> anyhow::Result<Report> {
    let etcd = Etcd::start().await;
    let kv = Kv::new(&etcd.url());
    let a = Upstream::start("a").await;
    kv.put(&format!("{SY_PREFIX}/a"), &a.addr().to_string())
        .await?;
    let lb = Lb::start_ready(&switchyard_config(&etcd.url())).await;
    let url = format!("http://{}/", lb.http_addr("web"));
    let sy = Target::Switchyard {
        admin: format!("http://{}/api/v1/backends", lb.admin_addr()),
        http: poll_client(),
    };
    let poller = poll_client();
    common::progress(format!("etcd {} and switchyard {url} up", etcd.url()));

    // Baseline: the request loop's own round trip with A alone.
    sy.wait_servers(1).await?;
    for _ in 0..50 {
        poll(&poller, &url).await?;
    }
    let mut rtt = Vec::with_capacity(p.rtt_samples);
    for _ in 0..p.rtt_samples {
        let t = Instant::now();
        let (code, body) = poll(&poller, &url).await?;
        rtt.push(t.elapsed());
        if code != 200 || body != "a" {
            bail!("baseline request answered {code} {body:?}, want 200 \"a\"");
        }
    }
    common::progress(format!("request RTT p50 {}", ms(pct(&rtt, 0.5))));

    let pool = start_upstreams("b", p.pool).await;
    let switchyard = propagation(&kv, SY_PREFIX, &sy, &poller, &url, &pool, p.samples).await?;
    common::progress("switchyard propagation done");
    kv.delete(&format!("{SY_PREFIX}/a")).await?;
    sy.wait_servers(0).await?;

    let ups = start_upstreams("u", p.churn_pool).await;
    let churn = churn(&kv, SY_PREFIX, &sy, &url, &ups, p).await?;
    common::progress("switchyard churn done");
    lb.shutdown().await;

    let confd = if Path::new(HAPROXY).exists() {
        match confd_stack(&kv, &a, &pool, &ups, p).await {
            Ok(r) => Ok(r),
            Err(e) => Err(format!("confd+HAProxy baseline failed: {e:#}")),
        }
    } else {
        Err(format!(
            "{HAPROXY} not installed: confd+HAProxy baseline skipped"
        ))
    };
    Ok(Report {
        rtt,
        switchyard,
        churn,
        confd,
    })
}

fn switchyard_config(etcd: &str) -> String {
    Cfg::http("web")
        .etcd(etcd)
        .api(Api::V2)
        .backend("bench")
        .prefix(SY_PREFIX)
        .check_none()
        .toml()
}

async fn start_upstreams(prefix: &str, n: usize) -> Vec<Upstream> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(Upstream::start(&format!("{prefix}{i}")).await);
    }
    v
}

/// What a measurement runs against, and how to know a membership change has been routed.
enum Target {
    /// Switchyard's admin API lists the published servers.
    Switchyard {
        admin: String,
        http: reqwest::Client,
    },
    /// The confd-style watcher reports what it rendered and reloaded.
    Confd { rendered: watch::Receiver<Rendered> },
}

impl Target {
    /// Waits until exactly `n` servers are routed (bounded by `SETTLE_LIMIT`).
    async fn wait_servers(&self, n: usize) -> anyhow::Result<()> {
        let end = Instant::now() + SETTLE_LIMIT;
        loop {
            let have = match self {
                Target::Switchyard { admin, http } => {
                    let v: serde_json::Value = http.get(admin).send().await?.json().await?;
                    v["backends"][0]["servers"]
                        .as_array()
                        .map(|s| s.len())
                        .unwrap_or(usize::MAX)
                }
                Target::Confd { rendered } => rendered.borrow().servers,
            };
            if have == n {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!("{have} servers routed after {SETTLE_LIMIT:?}, want {n}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Propagation.

#[derive(Default)]
struct Propagation {
    /// PUT issued -> PUT acknowledged by etcd.
    put_ack: Vec<Duration>,
    /// PUT issued -> a v2 long-poll armed by the bench returns the event.
    watch: Vec<Duration>,
    /// PUT issued -> first answer from the new server.
    routed: Vec<Duration>,
    /// Requests the poll loop sent per sample, to the first answer from the new server.
    polls: Vec<u32>,
    /// Requests of the poll loop that failed (transport error or non-200).
    poll_errors: u64,
    timeouts: usize,
}

async fn propagation(
    kv: &Kv,
    prefix: &str,
    target: &Target,
    poller: &reqwest::Client,
    url: &str,
    pool: &[Upstream],
    samples: usize,
) -> anyhow::Result<Propagation> {
    let mut out = Propagation::default();
    // A bench-side watcher resumes after the last write under the prefix.
    let mut cursor = kv.list(prefix).await?.0 + 1;
    for i in 0..samples {
        let b = &pool[i % pool.len()];
        let key = format!("{prefix}/s{i}");
        let watcher = {
            let kv = kv.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let r = tokio::time::timeout(SAMPLE_LIMIT, kv.wait(&prefix, cursor)).await;
                (r, Instant::now())
            })
        };
        // Give the long-poll a moment to register (outside the measured interval).
        tokio::time::sleep(Duration::from_millis(2)).await;

        let t0 = Instant::now();
        let put = {
            let (kv, key, value) = (kv.clone(), key.clone(), b.addr().to_string());
            tokio::spawn(async move {
                let r = kv.put(&key, &value).await;
                (r, Instant::now())
            })
        };
        let mut polls = 0u32;
        let routed = loop {
            if t0.elapsed() > SAMPLE_LIMIT {
                break None;
            }
            polls += 1;
            match poll(poller, url).await {
                Ok((200, body)) if body == b.name() => break Some(t0.elapsed()),
                Ok((200, _)) => {}
                _ => out.poll_errors += 1,
            }
        };
        let (put_res, put_at) = put.await?;
        put_res.with_context(|| format!("sample {i}: PUT {key}"))?;
        out.put_ack.push(put_at - t0);
        if let (Ok(Ok(_)), at) = watcher.await? {
            out.watch.push(at.saturating_duration_since(t0));
        }
        match routed {
            Some(d) => {
                out.routed.push(d);
                out.polls.push(polls);
            }
            None => out.timeouts += 1,
        }
        cursor = kv.delete(&key).await? + 1;
        target
            .wait_servers(1)
            .await
            .with_context(|| format!("sample {i}: removal of {key} not routed"))?;
    }
    Ok(out)
}

/// One keep-alive connection, polled back to back.
fn poll_client() -> reqwest::Client {
    common::keep_alive_client(Duration::from_secs(2), Duration::from_secs(1))
}

async fn poll(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, String)> {
    let resp = client.get(url).send().await?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().await?))
}

// ---------------------------------------------------------------------------------------------
// Churn under load.

struct Churn {
    elapsed: Duration,
    requests: u64,
    failed: u64,
    /// Failure kind -> count.
    failures: BTreeMap<String, u64>,
    latency: Vec<Duration>,
    /// Registrations and deletions issued.
    changes: usize,
    /// Requests each churn upstream received.
    hits: Vec<(String, usize)>,
}

async fn churn(
    kv: &Kv,
    prefix: &str,
    target: &Target,
    url: &str,
    ups: &[Upstream],
    p: &Params,
) -> anyhow::Result<Churn> {
    let key = |i: usize| format!("{prefix}/u{i}");
    let mut registered: VecDeque<usize> = VecDeque::new();
    for (i, u) in ups.iter().enumerate().take(p.churn_registered) {
        kv.put(&key(i), &u.addr().to_string()).await?;
        registered.push_back(i);
    }
    target.wait_servers(p.churn_registered).await?;
    for u in ups {
        u.reset_hits();
    }

    let start = Instant::now();
    let deadline = start + p.churn_for;
    let mut clients = Vec::with_capacity(p.clients);
    for _ in 0..p.clients {
        let url = url.to_string();
        clients.push(tokio::spawn(load_client(url, deadline)));
    }
    let mut tick = tokio::time::interval_at(start + p.churn_every, p.churn_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = p.churn_registered % ups.len();
    let mut changes = 0;
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        // Add first, then remove the oldest: never fewer than `churn_registered` servers.
        while registered.contains(&next) {
            next = (next + 1) % ups.len();
        }
        kv.put(&key(next), &ups[next].addr().to_string()).await?;
        registered.push_back(next);
        let oldest = registered.pop_front().expect("never empty");
        kv.delete(&key(oldest)).await?;
        changes += 2;
    }
    let mut out = Churn {
        elapsed: Duration::ZERO,
        requests: 0,
        failed: 0,
        failures: BTreeMap::new(),
        latency: Vec::new(),
        changes,
        hits: Vec::new(),
    };
    for c in clients {
        let r = c.await?;
        out.requests += r.requests;
        out.failed += r.failed;
        for (k, n) in r.failures {
            *out.failures.entry(k).or_default() += n;
        }
        out.latency.extend(r.latency);
    }
    out.elapsed = start.elapsed();
    out.hits = ups
        .iter()
        .map(|u| (u.name().to_string(), u.hits()))
        .collect();
    for i in registered {
        kv.delete(&key(i)).await?;
    }
    target.wait_servers(0).await?;
    Ok(out)
}

#[derive(Default)]
struct ClientResult {
    requests: u64,
    failed: u64,
    failures: HashMap<String, u64>,
    latency: Vec<Duration>,
}

/// One keep-alive client sending GETs back to back until `deadline`.
async fn load_client(url: String, deadline: Instant) -> ClientResult {
    let client = common::load_client();
    let mut r = ClientResult::default();
    while Instant::now() < deadline {
        let t = Instant::now();
        let outcome = common::get_200(&client, &url).await;
        r.requests += 1;
        r.latency.push(t.elapsed());
        if let Err(why) = outcome {
            r.failed += 1;
            *r.failures.entry(common::count_key(&why, &[])).or_default() += 1;
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The classic stack: a confd-style watcher rendering haproxy.cfg and reloading HAProxy.

async fn confd_stack(
    kv: &Kv,
    a: &Upstream,
    pool: &[Upstream],
    ups: &[Upstream],
    p: &Params,
) -> anyhow::Result<ConfdResult> {
    let confd = Confd::start(kv, CONFD_PREFIX).await?;
    let url = format!("http://127.0.0.1:{}/", confd.port);
    let target = Target::Confd {
        rendered: confd.rendered.clone(),
    };
    kv.put(&format!("{CONFD_PREFIX}/a"), &a.addr().to_string())
        .await?;
    target.wait_servers(1).await?;
    let mut idle_check = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        tokio::process::Command::new(HAPROXY)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(confd.dir.join("haproxy.cfg"))
            .status()
            .await?;
        idle_check.push(t.elapsed());
    }
    let poller = poll_client();
    for _ in 0..20 {
        poll(&poller, &url).await?;
    }
    let prop = propagation(
        kv,
        CONFD_PREFIX,
        &target,
        &poller,
        &url,
        pool,
        p.confd_samples,
    )
    .await?;
    common::progress("confd+HAProxy propagation done");
    kv.delete(&format!("{CONFD_PREFIX}/a")).await?;
    target.wait_servers(0).await?;
    let before = confd.reload_timings().len();
    let churn = churn(kv, CONFD_PREFIX, &target, &url, ups, p).await?;
    common::progress("confd+HAProxy churn done");
    let reloads = confd.reload_timings();
    confd.stop().await;
    Ok(ConfdResult {
        prop,
        churn,
        churn_reloads: reloads.len() - before,
        reloads,
        idle_check,
    })
}

#[derive(Debug, Clone, Default)]
struct Rendered {
    servers: usize,
}

/// The confd + HAProxy pair: a watch task and every HAProxy process it started (by PID).
struct Confd {
    dir: PathBuf,
    port: u16,
    rendered: watch::Receiver<Rendered>,
    /// Every PID the pidfile ever held; the guard kills those still running.
    pids: Arc<Mutex<BTreeSet<u32>>>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// (check, reload) durations of each reload.
    timings: Arc<Mutex<Vec<(Duration, Duration)>>>,
}

struct ConfdCtx {
    kv: Kv,
    prefix: String,
    dir: PathBuf,
    port: u16,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    timings: Arc<Mutex<Vec<(Duration, Duration)>>>,
    current: String,
}

impl Confd {
    async fn start(kv: &Kv, prefix: &str) -> anyhow::Result<Confd> {
        let dir =
            std::env::temp_dir().join(format!("switchyard-bench-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = support::free_port();
        let pids = Arc::new(Mutex::new(BTreeSet::new()));
        let timings = Arc::new(Mutex::new(Vec::new()));
        // A separate client: confd is a separate process.
        let mut ctx = ConfdCtx {
            kv: Kv::new(&kv.base),
            prefix: prefix.to_string(),
            dir: dir.clone(),
            port,
            pids: Arc::clone(&pids),
            timings: Arc::clone(&timings),
            current: String::new(),
        };
        let (index, leaves) = ctx.kv.list(prefix).await?;
        let n = ctx.apply(&leaves).await?;
        let (tx, rx) = watch::channel(Rendered { servers: n });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(confd_watch(ctx, index + 1, tx, cancel.clone()));
        Ok(Confd {
            dir,
            port,
            rendered: rx,
            pids,
            cancel,
            task: Some(task),
            timings,
        })
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        // Drop kills the HAProxy processes.
    }

    fn reload_timings(&self) -> Vec<(Duration, Duration)> {
        self.timings.lock().unwrap().clone()
    }
}

impl Drop for Confd {
    fn drop(&mut self) {
        self.cancel.cancel();
        let pids: Vec<u32> = self.pids.lock().unwrap().iter().copied().collect();
        let cfg = self.dir.join("haproxy.cfg");
        let ours = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*cfg.to_string_lossy()))
                .unwrap_or(false)
        };
        for &pid in &pids {
            if ours(pid) {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
        }
        let end = std::time::Instant::now() + Duration::from_secs(3);
        while pids.iter().any(|&p| ours(p)) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// confd's watch mode: long-poll the prefix, on any event re-read it whole, render, and reload
/// when the rendered file changed.
async fn confd_watch(
    mut ctx: ConfdCtx,
    mut cursor: u64,
    tx: watch::Sender<Rendered>,
    cancel: CancellationToken,
) {
    loop {
        let waited = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(60), ctx.kv.wait(&ctx.prefix, cursor)) => r,
        };
        match waited {
            Ok(Ok(idx)) => cursor = idx + 1,
            // 401 or transport: the re-read below resyncs the cursor.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => continue,
        }
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = ctx.kv.list(&ctx.prefix) => r,
        };
        let Ok((index, leaves)) = listed else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        cursor = cursor.max(index + 1);
        match ctx.apply(&leaves).await {
            Ok(n) => {
                tx.send_replace(Rendered { servers: n });
            }
            Err(e) => common::progress(format!("confd: {e:#}")),
        }
    }
}

impl ConfdCtx {
    /// Renders the template; when it changed: stage, `haproxy -c`, install, reload. Returns the
    /// number of servers now configured.
    async fn apply(&mut self, leaves: &[(String, String)]) -> anyhow::Result<usize> {
        let cfg = self.dir.join("haproxy.cfg");
        let pidfile = self.dir.join("haproxy.pid");
        let mut text = format!(
            "global\n    maxconn 4096\n    hard-stop-after 5s\n\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\n\
             frontend testloadbalancer\n    bind 127.0.0.1:{}\n    default_backend testservice\n\n\
             backend testservice\n    balance roundrobin\n",
            self.port
        );
        for (key, value) in leaves {
            let name = key.rsplit('/').next().unwrap_or(key);
            let _ = writeln!(text, "    server {name} {value}");
        }
        if text == self.current {
            return Ok(leaves.len());
        }
        let staged = self.dir.join("haproxy.cfg.staged");
        std::fs::write(&staged, &text)?;
        let t = Instant::now();
        let check = tokio::process::Command::new(HAPROXY)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&staged)
            .status()
            .await?;
        if !check.success() {
            bail!("haproxy -c refused the rendered config:\n{text}");
        }
        let checked = t.elapsed();
        std::fs::rename(&staged, &cfg)?;
        let t = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("haproxy.log"))?;
        let mut cmd = format!("{HAPROXY} -f {} -p {} -D", cfg.display(), pidfile.display());
        if pidfile.exists() {
            let _ = write!(cmd, " -sf $(cat {})", pidfile.display());
        }
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await?;
        let reloaded = t.elapsed();
        if !status.success() {
            bail!("`{cmd}` failed: {status}");
        }
        if let Ok(s) = std::fs::read_to_string(&pidfile) {
            let mut pids = self.pids.lock().unwrap();
            pids.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        self.timings.lock().unwrap().push((checked, reloaded));
        self.current = text;
        Ok(leaves.len())
    }
}

// ---------------------------------------------------------------------------------------------
// etcd v2 over one keep-alive client.

#[derive(Clone)]
struct Kv {
    http: reqwest::Client,
    base: String,
}

impl Kv {
    fn new(base: &str) -> Kv {
        switchyard::tls::install_provider();
        Kv {
            http: reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("reqwest client"),
            base: base.to_string(),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("{}/v2/keys{key}", self.base)
    }

    /// A write; returns the node's `modifiedIndex`.
    async fn write(&self, req: reqwest::RequestBuilder) -> anyhow::Result<u64> {
        let resp = req.timeout(Duration::from_secs(5)).send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("etcd answered {status}: {body}");
        }
        body["node"]["modifiedIndex"]
            .as_u64()
            .with_context(|| format!("no modifiedIndex in {body}"))
    }

    async fn put(&self, key: &str, value: &str) -> anyhow::Result<u64> {
        self.write(self.http.put(self.url(key)).form(&[("value", value)]))
            .await
    }

    async fn delete(&self, key: &str) -> anyhow::Result<u64> {
        self.write(self.http.delete(self.url(key))).await
    }

    /// `?wait=true&recursive=true&waitIndex=N`: the first event under `prefix` at or after
    /// `index`; returns its `modifiedIndex`. Unbounded: callers put a timeout around it.
    async fn wait(&self, prefix: &str, index: u64) -> anyhow::Result<u64> {
        let url = format!(
            "{}?wait=true&recursive=true&waitIndex={index}",
            self.url(prefix)
        );
        self.write(self.http.get(url).timeout(Duration::from_secs(3600)))
            .await
    }

    /// Every leaf under `prefix` (sorted) and the store index (`X-Etcd-Index`).
    async fn list(&self, prefix: &str) -> anyhow::Result<(u64, Vec<(String, String)>)> {
        let resp = self
            .http
            .get(format!("{}?recursive=true&sorted=true", self.url(prefix)))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        let index = resp
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("no X-Etcd-Index")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok((index, Vec::new()));
        }
        let body: serde_json::Value = resp.json().await?;
        let mut leaves = Vec::new();
        fn walk(n: &serde_json::Value, out: &mut Vec<(String, String)>) {
            if n["dir"].as_bool().unwrap_or(false) {
                for c in n["nodes"].as_array().into_iter().flatten() {
                    walk(c, out);
                }
            } else if let (Some(k), Some(v)) = (n["key"].as_str(), n["value"].as_str()) {
                out.push((k.to_string(), v.to_string()));
            }
        }
        walk(&body["node"], &mut leaves);
        Ok((index, leaves))
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// Nearest-rank percentile.
fn pct(v: &[Duration], q: f64) -> Duration {
    common::percentile(v, q).unwrap_or_default()
}

fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
    if m < 10.0 {
        format!("{m:.2}")
    } else {
        format!("{m:.1}")
    }
}

fn row(out: &mut String, label: &str, v: &[Duration]) {
    let _ = writeln!(
        out,
        "  {label:<48} {:>4}  {:>8} {:>8} {:>8} {:>8}",
        v.len(),
        ms(pct(v, 0.5)),
        ms(pct(v, 0.9)),
        ms(pct(v, 0.99)),
        ms(v.iter().max().copied().unwrap_or_default())
    );
}

fn mean_u32(v: &[u32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }
}

fn churn_line(out: &mut String, label: &str, c: &Churn, p: &Params) {
    let _ = writeln!(
        out,
        "{label}: {:.1} s, add/remove every {} ms, {} clients: {} requests, {} failed ({:.0} req/s)",
        c.elapsed.as_secs_f64(),
        p.churn_every.as_millis(),
        p.clients,
        c.requests,
        c.failed,
        c.requests as f64 / c.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  {} etcd writes ({} registered at a time, pool of {}); request latency p50 {} ms  p99 {} ms  max {} ms",
        c.changes,
        p.churn_registered,
        p.churn_pool,
        ms(pct(&c.latency, 0.5)),
        ms(pct(&c.latency, 0.99)),
        ms(c.latency.iter().max().copied().unwrap_or_default())
    );
    let hits: Vec<String> = c.hits.iter().map(|(n, h)| format!("{n}={h}")).collect();
    let _ = writeln!(out, "  hits per upstream: {}", hits.join(" "));
    for (kind, n) in &c.failures {
        let _ = writeln!(out, "  failure x{n}: {kind}");
    }
}

impl Report {
    fn render(&self, p: &Params, took: Duration) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", common::heading("discovery", p.full));
        let sy = &self.switchyard;
        let _ = writeln!(
            out,
            "propagation (etcd v2 PUT -> first routed request), {} samples: p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (request RTT p50 {} ms)",
            sy.routed.len(),
            ms(pct(&sy.routed, 0.5)),
            ms(pct(&sy.routed, 0.9)),
            ms(pct(&sy.routed, 0.99)),
            ms(sy.routed.iter().max().copied().unwrap_or_default()),
            ms(pct(&self.rtt, 0.5)),
        );
        let _ = writeln!(
            out,
            "  {:<48} {:>4}  {:>8} {:>8} {:>8} {:>8}",
            "all in ms, from just before the PUT", "n", "p50", "p90", "p99", "max"
        );
        row(&mut out, "etcd PUT acknowledged", &sy.put_ack);
        row(
            &mut out,
            "bare v2 long-poll sees the event (floor)",
            &sy.watch,
        );
        row(
            &mut out,
            "switchyard: first answer from the new server",
            &sy.routed,
        );
        let confd_prop = self.confd.as_ref().ok().map(|c| &c.prop);
        if let Some(c) = confd_prop {
            row(
                &mut out,
                "confd+HAProxy: first answer from the new server",
                &c.routed,
            );
        }
        row(
            &mut out,
            "request RTT, keep-alive, 1 server (no churn)",
            &self.rtt,
        );
        let _ = writeln!(
            out,
            "  round-robin over A and the new server: a sample is propagation + 1-2 request RTTs; \
             polls per sample: switchyard {:.1}{}",
            mean_u32(&sy.polls),
            confd_prop
                .map(|c| format!(", confd+HAProxy {:.1}", mean_u32(&c.polls)))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  timeouts (> {SAMPLE_LIMIT:?}): switchyard {}{}; failed poll requests: switchyard {}{}",
            sy.timeouts,
            confd_prop
                .map(|c| format!(", confd+HAProxy {}", c.timeouts))
                .unwrap_or_default(),
            sy.poll_errors,
            confd_prop
                .map(|c| format!(", confd+HAProxy {}", c.poll_errors))
                .unwrap_or_default(),
        );
        churn_line(&mut out, "churn", &self.churn, p);
        match &self.confd {
            Ok(c) => {
                churn_line(&mut out, "churn, confd+HAProxy (same load)", &c.churn, p);
                let check: Vec<Duration> = c.reloads.iter().map(|r| r.0).collect();
                let reload: Vec<Duration> = c.reloads.iter().map(|r| r.1).collect();
                let _ = writeln!(
                    out,
                    "  confd+HAProxy: {} reloads in all ({} during the churn); under the bench's load \
                     `haproxy -c` p50 {} ms, reload command p50 {} ms (idle `haproxy -c` p50 {} ms)",
                    c.reloads.len(),
                    c.churn_reloads,
                    ms(pct(&check, 0.5)),
                    ms(pct(&reload, 0.5)),
                    ms(pct(&c.idle_check, 0.5))
                );
            }
            Err(why) => {
                let _ = writeln!(out, "confd+HAProxy baseline: {why}");
            }
        }
        let _ = writeln!(
            out,
            "confd+HAProxy = a confd-style watcher in the bench: v2 long-poll, full re-read, render \
             haproxy.cfg, `haproxy -c`, `haproxy -D -sf $(cat pidfile)` ({})",
            common::command(HAPROXY, &["-v"])
                .lines()
                .next()
                .unwrap_or("haproxy ?")
        );
        let _ = writeln!(out, "bench wall time {:.1} s", took.as_secs_f64());
        out
    }

    fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.switchyard.timeouts > 0 {
            v.push(format!(
                "{} propagation samples timed out",
                self.switchyard.timeouts
            ));
        }
        if self.churn.failed > 0 {
            v.push(format!(
                "{} of {} requests failed during churn",
                self.churn.failed, self.churn.requests
            ));
        }
        v
    }
}
