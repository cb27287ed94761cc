//! Chaos under load: what etcd failures, discovery storms, upstream faults,
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
//! Files: this one (the parameters and the run), one a scenario (`members.rs` a and b,
//! `storm.rs` c, `faults.rs` d, `churn.rs` e, `reloads.rs` f, `shutdown.rs` g), and what they
//! share: `config.rs` (the base config), `kv.rs` (etcd writes and reads), `monitor.rs` (the routed
//! set), `load.rs`, `upstreams.rs`, `report.rs`; `../common` is shared with the other benches.
//!
//! NOTE: everything (etcd aside) shares one machine and one tokio runtime: the load clients compete
//! with the proxy and etcd for the same cores, so req/s is a floor, not Switchyard's capacity.

#[path = "../../tests/support/mod.rs"]
mod support;

#[path = "../common/mod.rs"]
mod common;

mod churn;
mod config;
mod faults;
mod kv;
mod load;
mod members;
mod monitor;
mod reloads;
mod report;
mod shutdown;
mod storm;
mod upstreams;

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
use support::config::Api;
use support::{Etcd, EtcdCluster, Lb, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use churn::*;
use config::*;
use faults::*;
use kv::*;
use load::*;
use members::*;
use monitor::*;
use reloads::*;
use report::*;
use shutdown::*;
use storm::*;
use upstreams::*;

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
