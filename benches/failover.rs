//! Failover benchmark: what a server failure under load costs the clients, and how fast the
//! health checks see it go and come back. Runs against a real etcd 3.4 (v2 keys API, the backend
//! has an `etcd_prefix`), three in-process upstreams `u1 u2 u3` registered in etcd as keys `1 2 3`,
//! and Switchyard running in-process (`tests/support`). Prints a table that is also written to
//! `benches/results/failover.txt`.
//!
//! `cargo bench --bench failover` runs the full measurement (about 40 s); run without `--bench`
//! (e.g. `cargo test --benches`) it is a short smoke run that writes no results file.
//!
//! Each scenario: 32 keep-alive clients send `GET /` back to back. Every non-200 answer and every
//! transport error is a failure (with its reason). Checks are
//! `type = "tcp", inter = 1s, fastinter = 200ms, downinter = 1s, rise = 2, fall = 3`; every other
//! setting is Switchyard's default (passive `error_limit = 1`, `retries = 2`, retry budget 20 %
//! of the requests in flight, at least 3).
//! 1. `dead`: 12 s of load; at 3 s upstream u2 is stopped (`Upstream::stop`: listener closed and
//!    the open keep-alive connections dropped mid-flight, as when the process dies); at 7 s it is
//!    started again on the same port. Expected: 0 failed requests.
//! 2. `dead, 20ms answers`: the same with every upstream taking 20 ms to answer (8 s of load,
//!    fault at 2 s, repair at 5 s), so that about a third of the 32 requests in flight are on
//!    u2 when it dies instead of the handful an instant answer leaves there. Expected: 0 failed.
//! 3. `hung`: 12 s of load; at 3 s u2 stops answering (connections are still accepted, its
//!    handler never returns) with `response_timeout = 1s`; at 7 s it answers again. Requests that
//!    were sent to it before it was ejected end in 504: this scenario documents that limit.
//!
//! Measured from the fault (a 5 ms poll of `/api/v1/backends` and a 10 ms poll of `/metrics`):
//! detect = until u2 shows `down` (bound inter x fall; passive ejection on live traffic is
//! usually far faster); the last connect attempt Switchyard made to u2 (dead) or the last request
//! that reached u2 (hung); the first and last client-visible failure. From the repair: until u2
//! shows `up` (bound rise x downinter, the worst case being one downinter wait for the first
//! check, then (rise - 1) x fastinter) and until a client gets its first answer from u2.
//!
//! NOTE: everything (etcd aside) shares one machine and one tokio runtime: the load clients compete
//! with the proxy for the same cores, so req/s is a floor, not Switchyard's capacity.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::config::Api;
use support::{Cfg, Etcd, Lb, Upstream};
use tokio::time::Instant;

/// The whole run is cut off here (etcd is still killed by its guard).
const TOTAL_DEADLINE: Duration = Duration::from_secs(58);
/// Waiting for the initial set to be routed and up.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Admin state poll period, and the metrics poll period.
const STATE_POLL: Duration = Duration::from_millis(5);
const METRICS_POLL: Duration = Duration::from_millis(10);
/// The failing server: upstream `u2`, etcd key `2`.
const VICTIM: usize = 1;
const NAMES: [&str; 3] = ["u1", "u2", "u3"];

/// Health check settings (also written into the config).
const INTER_MS: u64 = 1000;
const FASTINTER_MS: u64 = 200;
const DOWNINTER_MS: u64 = 1000;
const RISE: u64 = 2;
const FALL: u64 = 3;
const RESPONSE_TIMEOUT_MS: u64 = 1000;

struct Params {
    full: bool,
    clients: usize,
    scenarios: Vec<Scenario>,
}

#[derive(Clone, Copy)]
struct Scenario {
    /// Backend name and etcd prefix `/failover/{key}`.
    key: &'static str,
    label: &'static str,
    /// Fault = u2 stops answering (else: u2 is stopped); with `response_timeout`.
    hung: bool,
    /// Every upstream answers after this long.
    service: Duration,
    load_for: Duration,
    fault_at: Duration,
    repair_at: Duration,
}

impl Params {
    fn full() -> Params {
        let s = |key, label, hung, service_ms, load, fault, repair| Scenario {
            key,
            label,
            hung,
            service: Duration::from_millis(service_ms),
            load_for: Duration::from_secs(load),
            fault_at: Duration::from_secs(fault),
            repair_at: Duration::from_secs(repair),
        };
        Params {
            full: true,
            clients: 32,
            scenarios: vec![
                s("dead", "dead (stop)", false, 0, 12, 3, 7),
                s("dead20", "dead, 20ms answers", false, 20, 8, 2, 5),
                s("hung", "hung (1s timeout)", true, 0, 12, 3, 7),
            ],
        }
    }

    /// `cargo test --benches`: prove it runs, measure nothing worth keeping.
    fn smoke() -> Params {
        let mut p = Params::full();
        p.full = false;
        p.clients = 8;
        for s in &mut p.scenarios {
            s.load_for = Duration::from_secs(4);
            s.fault_at = Duration::from_secs(1);
            // After the hung scenario's first response timeout (1 s), so its ejection is seen.
            s.repair_at = Duration::from_millis(2500);
        }
        p
    }
}

fn main() {
    let p = if common::full_run() {
        Params::full()
    } else {
        Params::smoke()
    };
    common::main(
        "failover",
        TOTAL_DEADLINE,
        p.full,
        run(&p),
        |results, took| (render(results, &p, took), problems(results, &p)),
    );
}

async fn run(p: &Params) -> anyhow::Result<Vec<Outcome>> {
    let etcd = Etcd::start().await;
    common::progress(format!("etcd {} up", etcd.url()));
    let mut out = Vec::new();
    for sc in &p.scenarios {
        let o = scenario(&etcd, sc, p.clients)
            .await
            .with_context(|| format!("scenario {}", sc.key))?;
        common::progress(format!(
            "{}: {} requests, {} failed",
            sc.key, o.requests, o.failed
        ));
        out.push(o);
    }
    Ok(out)
}

fn config(etcd: &str, prefix: &str, sc: &Scenario) -> String {
    let timeout = if sc.hung {
        format!("response_timeout = \"{RESPONSE_TIMEOUT_MS}ms\"\n")
    } else {
        String::new()
    };
    Cfg::http("web")
        .etcd(etcd)
        .api(Api::V2)
        .backend(sc.key)
        .prefix(prefix)
        .backend_lines(&timeout)
        .check(&format!(
            "type = \"tcp\"\ninter = \"{INTER_MS}ms\"\nfastinter = \"{FASTINTER_MS}ms\"\n\
             downinter = \"{DOWNINTER_MS}ms\"\ntimeout = \"500ms\"\nrise = {RISE}\nfall = {FALL}"
        ))
        .toml()
}

/// `200` with the upstream's name after `service`, unless `hang` is set: then the answer never
/// comes (until the upstream stops).
async fn answer(
    name: &'static str,
    hang: Arc<AtomicBool>,
    service: Duration,
) -> Response<Full<Bytes>> {
    if hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    if !service.is_zero() {
        tokio::time::sleep(service).await;
    }
    Response::new(Full::new(Bytes::from_static(name.as_bytes())))
}

/// An upstream answering with [`answer`].
async fn upstream(name: &'static str, hang: &Arc<AtomicBool>, service: Duration) -> Upstream {
    let hang = hang.clone();
    Upstream::start_with(name, move |_req| answer(name, hang.clone(), service)).await
}

// ---------------------------------------------------------------------------------------------
// One scenario.

#[derive(Default)]
struct Outcome {
    label: &'static str,
    hung: bool,
    fault_at: Duration,
    repair_at: Duration,
    elapsed: Duration,
    requests: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    /// 200 answers per upstream.
    served: [u64; 3],
    latency: Vec<u32>,
    /// Fault -> u2 shown `down` (first time).
    detect: Option<Duration>,
    /// down -> up flips of u2 seen while it was faulty (re-admitted by a passing check).
    readmitted: usize,
    /// Fault -> the last increase of u2's connect errors (dead).
    last_attempt: Option<Duration>,
    connect_errors: u64,
    retries: u64,
    /// Fault -> the last request that reached u2 while it was hung.
    last_reached: Option<Duration>,
    /// Requests that reached u2 while it was hung.
    reached_while_hung: usize,
    /// The last 200 from u2 before the fault, relative to the fault (completion time).
    last_served_before: Option<Duration>,
    /// First and last client-visible failure, relative to the fault (negative = before).
    first_failure: Option<f64>,
    last_failure: Option<f64>,
    /// Repair -> u2 shown `up` (0 if it already was).
    recovery_up: Option<Duration>,
    /// Repair -> first 200 from u2 completed.
    recovery_traffic: Option<Duration>,
    /// The longest gap without any completed request, and where it started (relative to the
    /// fault).
    longest_stall: (Duration, f64),
    state_poll_errors: u64,
    /// u2's requests in flight (`active`) just before the fault, and the most seen before it.
    in_flight_at_fault: Option<u64>,
    in_flight_before: u64,
}

async fn scenario(etcd: &Etcd, sc: &Scenario, clients: usize) -> anyhow::Result<Outcome> {
    let prefix = format!("/failover/{}", sc.key);
    let hang = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let u1 = upstream(NAMES[0], &never, sc.service).await;
    let u2 = upstream(NAMES[1], &hang, sc.service).await;
    let u3 = upstream(NAMES[2], &never, sc.service).await;
    let victim_addr = u2.addr();
    for (i, u) in [&u1, &u2, &u3].iter().enumerate() {
        etcd.put(&format!("{prefix}/{}", i + 1), &u.addr().to_string())
            .await;
    }
    let lb = Lb::start_ready(&config(&etcd.url(), &prefix, sc)).await;
    let admin = lb.admin_addr();
    let http = common::admin_client(Duration::from_secs(1));
    let settle = Instant::now() + SETTLE_LIMIT;
    loop {
        let states = states(&http, admin).await.unwrap_or_default();
        if states.len() == 3 && states.values().all(|s| s.0 == "up") {
            break;
        }
        if Instant::now() >= settle {
            bail!("servers not all routed and up after {SETTLE_LIMIT:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{}/", lb.http_addr("web"));
    let addrs: Arc<Vec<(String, String)>> = Arc::new(
        [&u1, &u2, &u3]
            .iter()
            .zip(NAMES)
            .map(|(u, n)| (u.addr().to_string(), n.to_string()))
            .collect(),
    );
    common::progress(format!(
        "{}: switchyard {url}, upstreams {}",
        sc.key,
        addrs
            .iter()
            .map(|(a, n)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    let start = Instant::now();
    let end = start + sc.load_for;
    let clients: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(load_client(url.clone(), start, end, addrs.clone())))
        .collect();
    let metrics = tokio::spawn(poll_metrics(
        http.clone(),
        admin,
        victim_addr.to_string(),
        end,
    ));

    // Fault, repair, and the state of u2 as the admin API shows it.
    let mut fault: Option<Instant> = None;
    let mut repair: Option<Instant> = None;
    let mut restarted: Option<Upstream> = None;
    let mut last_state = "up".to_string();
    let mut o = Outcome {
        label: sc.label,
        hung: sc.hung,
        fault_at: sc.fault_at,
        repair_at: sc.repair_at,
        ..Outcome::default()
    };
    let mut hits_seen = 0usize;
    let mut hits_at_fault = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if fault.is_none() && now >= start + sc.fault_at {
            if let Ok(s) = states(&http, admin).await {
                o.in_flight_at_fault = s.get("2").map(|s| s.1);
            }
            hits_at_fault = u2.hits();
            hits_seen = hits_at_fault;
            fault = Some(Instant::now());
            if sc.hung {
                hang.store(true, Ordering::SeqCst);
            } else {
                u2.stop().await;
            }
            common::progress(format!("{}: u2 faulted", sc.key));
        }
        if repair.is_none() && now >= start + sc.repair_at {
            repair = Some(Instant::now());
            if sc.hung {
                hang.store(false, Ordering::SeqCst);
            } else {
                let (h, service) = (hang.clone(), sc.service);
                restarted = Some(
                    Upstream::start_at(NAMES[1], victim_addr, move |_req| {
                        answer(NAMES[1], h.clone(), service)
                    })
                    .await,
                );
            }
            common::progress(format!("{}: u2 repaired", sc.key));
        }
        match states(&http, admin).await {
            Ok(s) => {
                let (state, active) = s.get("2").cloned().unwrap_or(("missing".into(), 0));
                if fault.is_none() {
                    o.in_flight_before = o.in_flight_before.max(active);
                }
                let at = Instant::now();
                if let (Some(f), None) = (fault, repair) {
                    if state == "down" && o.detect.is_none() {
                        o.detect = Some(at - f);
                    }
                    if last_state == "down" && state == "up" {
                        o.readmitted += 1;
                    }
                }
                if let Some(r) = repair
                    && state == "up"
                    && o.recovery_up.is_none()
                {
                    o.recovery_up = Some(at.saturating_duration_since(r));
                }
                last_state = state;
            }
            Err(_) => o.state_poll_errors += 1,
        }
        if let (Some(f), None, true) = (fault, repair, sc.hung) {
            let hits = u2.hits();
            if hits > hits_seen {
                hits_seen = hits;
                o.last_reached = Some(Instant::now() - f);
            }
        }
        tokio::time::sleep(STATE_POLL).await;
    }
    o.reached_while_hung = hits_seen - hits_at_fault;

    let mut events = Vec::new();
    for c in clients {
        let r = c.await?;
        o.requests += r.requests;
        o.failed += r.failed;
        for (k, n) in r.failures {
            *o.failures.entry(k).or_default() += n;
        }
        events.extend(r.events);
    }
    o.elapsed = start.elapsed();
    let (timeline, metrics_errors) = metrics.await?;
    if metrics_errors > 0 {
        common::progress(format!(
            "{}: {metrics_errors} failed /metrics polls",
            sc.key
        ));
    }
    let fault = fault.context("the load ended before the fault")?;
    let repair = repair.context("the load ended before the repair")?;
    analyse(&mut o, &events, &timeline, start, fault, repair);
    o.retries = scrape(&http, admin, "switchyard_retries_total{", sc.key)
        .await
        .unwrap_or(0.0) as u64;

    lb.shutdown().await;
    for u in [&u1, &u2, &u3] {
        u.stop().await;
    }
    if let Some(u) = restarted {
        u.stop().await;
    }
    etcd.delete_dir(&prefix).await;
    Ok(o)
}

/// Fills the timing fields from the client events and the metrics timeline.
fn analyse(
    o: &mut Outcome,
    events: &[Event],
    connect_errors: &[(Instant, f64)],
    start: Instant,
    fault: Instant,
    repair: Instant,
) {
    let rel = |t_us: u32| start + Duration::from_micros(t_us as u64);
    let signed = |t: Instant| {
        if t >= fault {
            (t - fault).as_secs_f64()
        } else {
            -(fault - t).as_secs_f64()
        }
    };
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.done_us);
    // Gaps are measured from the first completed request (not from the start of the load, which
    // includes the clients' connection setup).
    let mut prev = sorted.first().map(|e| e.done_us).unwrap_or(0);
    for e in &sorted {
        let at = rel(e.done_us);
        o.latency.push(e.latency_us);
        match e.outcome {
            FAILED => {
                let s = signed(at);
                o.first_failure.get_or_insert(s);
                o.last_failure = Some(s);
            }
            i if (i as usize) < 3 => {
                o.served[i as usize] += 1;
                if i as usize == VICTIM {
                    if at <= fault {
                        o.last_served_before = Some(fault - at);
                    } else if at > repair && o.recovery_traffic.is_none() {
                        o.recovery_traffic = Some(at - repair);
                    }
                }
            }
            _ => {}
        }
        let gap = Duration::from_micros((e.done_us - prev) as u64);
        if gap > o.longest_stall.0 {
            o.longest_stall = (gap, signed(rel(prev)));
        }
        prev = e.done_us;
    }
    o.connect_errors = connect_errors.last().map(|c| c.1 as u64).unwrap_or(0);
    o.last_attempt = connect_errors
        .windows(2)
        .filter(|w| w[1].1 > w[0].1 && w[1].0 >= fault)
        .map(|w| w[1].0 - fault)
        .next_back();
}

// ---------------------------------------------------------------------------------------------
// Admin API and metrics polling.

/// Server name -> (state, requests in flight), from `/api/v1/backends` (one backend).
async fn states(
    http: &reqwest::Client,
    admin: SocketAddr,
) -> anyhow::Result<HashMap<String, (String, u64)>> {
    let v: serde_json::Value = http
        .get(format!("http://{admin}/api/v1/backends"))
        .send()
        .await?
        .json()
        .await?;
    let mut out = HashMap::new();
    for s in v["backends"][0]["servers"].as_array().into_iter().flatten() {
        out.insert(
            s["name"].as_str().unwrap_or_default().to_string(),
            (
                s["state"].as_str().unwrap_or_default().to_string(),
                s["active"].as_u64().unwrap_or_default(),
            ),
        );
    }
    Ok(out)
}

/// The sum of every sample of `metric` (a name with its opening brace) whose labels contain
/// `"{needle}"`.
async fn scrape(
    http: &reqwest::Client,
    admin: SocketAddr,
    metric: &str,
    needle: &str,
) -> anyhow::Result<f64> {
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(common::sum_samples(
        &text,
        metric,
        &[&format!("\"{needle}\"")],
    ))
}

/// Polls u2's `switchyard_upstream_connect_errors_total` until `end`; returns its value each
/// time it changed (the first poll included) and the number of failed polls.
async fn poll_metrics(
    http: reqwest::Client,
    admin: SocketAddr,
    victim: String,
    end: Instant,
) -> (Vec<(Instant, f64)>, u64) {
    let mut timeline: Vec<(Instant, f64)> = Vec::new();
    let mut errors = 0;
    while Instant::now() < end {
        match scrape(
            &http,
            admin,
            "switchyard_upstream_connect_errors_total{",
            &victim,
        )
        .await
        {
            Ok(v) if timeline.last().is_none_or(|l| l.1 != v) => {
                timeline.push((Instant::now(), v));
            }
            Ok(_) => {}
            Err(_) => errors += 1,
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
    (timeline, errors)
}

// ---------------------------------------------------------------------------------------------
// Load.

const FAILED: u8 = u8::MAX;
const OTHER: u8 = 3;

struct Event {
    /// Completion time, microseconds since the load started.
    done_us: u32,
    latency_us: u32,
    /// Index of the upstream that answered 200, `OTHER` for a 200 from none of them, `FAILED`.
    outcome: u8,
}

#[derive(Default)]
struct ClientResult {
    requests: u64,
    failed: u64,
    failures: HashMap<String, u64>,
    events: Vec<Event>,
}

/// One keep-alive client sending GETs back to back until `end`.
async fn load_client(
    url: String,
    start: Instant,
    end: Instant,
    addrs: Arc<Vec<(String, String)>>,
) -> ClientResult {
    let client = common::load_client();
    let mut r = ClientResult::default();
    while Instant::now() < end {
        let t = Instant::now();
        let outcome = common::get_200(&client, &url).await.map(|body| {
            NAMES
                .iter()
                .position(|n| n.as_bytes() == &body[..])
                .map(|i| i as u8)
                .unwrap_or(OTHER)
        });
        let done = Instant::now();
        r.requests += 1;
        let outcome = match outcome {
            Ok(i) => i,
            Err(why) => {
                r.failed += 1;
                *r.failures
                    .entry(common::count_key(&why, &addrs))
                    .or_default() += 1;
                FAILED
            }
        };
        r.events.push(Event {
            done_us: (done - start).as_micros() as u32,
            latency_us: (done - t).as_micros() as u32,
            outcome,
        });
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Output.

/// Nearest-rank percentile of microsecond samples, in ms.
fn pct_ms(v: &[u32], q: f64) -> f64 {
    common::percentile(v, q).unwrap_or(0) as f64 / 1e3
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
        None => "-".to_string(),
    }
}

fn signed_ms(s: Option<f64>) -> String {
    match s {
        Some(s) => format!("{:+.0}", s * 1e3),
        None => "-".to_string(),
    }
}

fn detect_bound() -> Duration {
    Duration::from_millis(INTER_MS * FALL)
}

fn recovery_bound() -> Duration {
    Duration::from_millis(RISE * DOWNINTER_MS)
}

fn render(results: &[Outcome], p: &Params, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", common::heading("failover", p.full));
    let _ = writeln!(
        out,
        "load: {} keep-alive clients, GET / back to back over u1 u2 u3 (etcd v2 prefix, \
         round-robin); u2 is faulted, then repaired (times per scenario below)",
        p.clients,
    );
    let _ = writeln!(
        out,
        "checks: tcp, inter {INTER_MS}ms fastinter {FASTINTER_MS}ms downinter {DOWNINTER_MS}ms \
         rise {RISE} fall {FALL}; passive ejection on live traffic (error_limit 1, default); \
         bounds: detect inter x fall = {} ms, recovery rise x downinter = {} ms (rise x fastinter = {} ms)",
        detect_bound().as_millis(),
        recovery_bound().as_millis(),
        RISE * FASTINTER_MS
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>6} {:>7}  {:>17}  {:>24}  failure reasons",
        "scenario", "requests", "failed", "req/s", "detect ms (bound)", "recovery up/traffic ms"
    );
    for o in results {
        let reasons = if o.failures.is_empty() {
            "-".to_string()
        } else {
            o.failures
                .iter()
                .map(|(k, n)| format!("{n}x {}", short(k)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            out,
            "{:<18} {:>8} {:>6} {:>7.0}  {:>17}  {:>24}  {reasons}",
            o.label,
            o.requests,
            o.failed,
            o.requests as f64 / o.elapsed.as_secs_f64(),
            format!("{} ({})", ms(o.detect), detect_bound().as_millis()),
            format!(
                "{} / {} ({})",
                ms(o.recovery_up),
                ms(o.recovery_traffic),
                recovery_bound().as_millis()
            ),
        );
    }
    for o in results {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}: {} requests in {:.1} s (u2 faulted at {:.1} s, repaired at {:.1} s), {} failed; \
             latency p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.1} ms  max {:.1} ms",
            o.label,
            o.requests,
            o.elapsed.as_secs_f64(),
            o.fault_at.as_secs_f64(),
            o.repair_at.as_secs_f64(),
            o.failed,
            pct_ms(&o.latency, 0.5),
            pct_ms(&o.latency, 0.99),
            pct_ms(&o.latency, 0.999),
            pct_ms(&o.latency, 1.0),
        );
        let _ = writeln!(
            out,
            "  200s per upstream: u1={} u2={} u3={}; switchyard_retries_total {}; connect errors to u2 {}; \
             u2 requests in flight just before the fault {} (max seen before it {})",
            o.served[0],
            o.served[1],
            o.served[2],
            o.retries,
            o.connect_errors,
            o.in_flight_at_fault
                .map(|n| n.to_string())
                .unwrap_or("-".into()),
            o.in_flight_before
        );
        let _ = writeln!(
            out,
            "  from the fault (ms): u2 down after {}; last 200 from u2 {} ms before; {}; \
             client failures from {} to {}; longest stall {:.0} ms at {}",
            ms(o.detect),
            ms(o.last_served_before),
            if o.hung {
                format!(
                    "{} requests reached hung u2, the last at {}; u2 re-admitted {} times by a passing check",
                    o.reached_while_hung,
                    ms(o.last_reached),
                    o.readmitted
                )
            } else {
                format!(
                    "last connect attempt to u2 at {}; u2 re-admitted {} times",
                    ms(o.last_attempt),
                    o.readmitted
                )
            },
            signed_ms(o.first_failure),
            signed_ms(o.last_failure),
            o.longest_stall.0.as_secs_f64() * 1e3,
            signed_ms(Some(o.longest_stall.1)),
        );
        let _ = writeln!(
            out,
            "  from the repair (ms): u2 up after {}, first 200 from u2 after {}",
            ms(o.recovery_up),
            ms(o.recovery_traffic)
        );
        for (kind, n) in &o.failures {
            let _ = writeln!(out, "  failure x{n}: {kind}");
        }
        if o.state_poll_errors > 0 {
            let _ = writeln!(out, "  ({} admin state polls failed)", o.state_poll_errors);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "notes: detect and recovery come from polling /api/v1/backends every {} ms on a machine the \
         load keeps busy, so they are good to a few ms (tens under contention). A TCP check passes \
         against a hung server (it still accepts), so after each passive ejection the hung u2 is \
         re-admitted after rise x fastinter and each client's next request to it waits out \
         response_timeout again: about one 504 per client per re-admission; \"up after\" on repair \
         can then be ~0 ms because u2 was already re-admitted.",
        STATE_POLL.as_millis()
    );
    let _ = writeln!(out, "bench wall time {:.1} s", took.as_secs_f64());
    out
}

/// A failure reason cut for the table (the full text follows below it).
fn short(s: &str) -> String {
    let first = s.split(':').next().unwrap_or(s);
    first.chars().take(40).collect()
}

fn problems(results: &[Outcome], p: &Params) -> Vec<String> {
    let mut v = Vec::new();
    for o in results {
        if !o.hung && o.failed > 0 {
            v.push(format!(
                "{}: {} of {} requests failed (expected 0)",
                o.label, o.failed, o.requests
            ));
        }
        match o.detect {
            None => v.push(format!("{}: u2 was never shown down", o.label)),
            Some(d) if d > detect_bound() => v.push(format!(
                "{}: u2 shown down after {} ms, over inter x fall = {} ms",
                o.label,
                d.as_millis(),
                detect_bound().as_millis()
            )),
            _ => {}
        }
        if p.full && (o.recovery_up.is_none() || o.recovery_traffic.is_none()) {
            v.push(format!("{}: u2 did not come back", o.label));
        }
    }
    v
}
