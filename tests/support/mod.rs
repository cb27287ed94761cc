//! Shared integration-test harness, one concern a file:
//!
//! - `etcd.rs`: `Etcd`, a real etcd 3.4 child process, and the v3 gateway calls;
//!   `etcd_cluster.rs`: `EtcdCluster`, n members on loopback.
//! - `upstream.rs`: `Upstream`, in-process hyper upstreams with hit counters.
//! - `lb.rs`: `Lb`, Switchyard itself run in-process on port-0 listeners.
//! - `client.rs`: reqwest clients and `get`/`try_get`.
//! - `config.rs`: `Cfg`, a builder for the TOML config a test hands to `Lb`.
//! - `pki.rs`: `Pki`, a CA and certificates made while the test runs.
//! - `raw/`: HTTP/1 as bytes on a socket: a recording upstream, scripted upstreams and raw
//!   clients, for hostile input, framing and connection reuse.
//! - `stream.rs`: bounded reads on a byte stream (a line, an echo, up to the close).
//! - here: ports, polling, `/metrics` parsing and temp dirs.
//!
//! Owns process and socket lifecycle for tests; it does not own assertions about Switchyard's
//! behaviour (those live in the `tests/*.rs` that use it as `mod support;`). Each test binary
//! compiles this module on its own and uses a part of it, hence the `allow` below.
#![allow(dead_code, unused_imports)]
pub mod client;
pub mod config;
pub mod etcd;
pub mod etcd_cluster;
pub mod lb;
pub mod pki;
pub mod raw;
pub mod stream;
pub mod upstream;

use std::future::Future;
use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use client::{
    cached_http_client, get, h2c, http_client, plain_tls, send, try_get, try_get_cached,
};
pub use config::{Cfg, static_config};
pub use etcd::Etcd;
pub use etcd_cluster::EtcdCluster;
pub use lb::Lb;
pub use upstream::{Seen, Upstream};

const POLL_EVERY: Duration = Duration::from_millis(10);

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, read the port, drop).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A loopback port where nothing listens, and nothing will while the test process runs: a
/// socket is bound to it (without listening) and held, so connecting is refused, and a
/// listener bound to port 0 meanwhile (Switchyard's own admin port, say) cannot be handed the
/// same port, as it can be one that `free_port` let go of.
pub fn dead_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1:0");
    let port = s.local_addr().expect("local_addr").port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    port
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

/// The value of the first `/metrics` line that starts with `name_and_labels` (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
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

/// Waits (5 s) until the access log has at least `n` JSON lines for `frontend`.
pub async fn log_lines(file: &Path, frontend: &str, n: usize) -> Vec<serde_json::Value> {
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["frontend"] == frontend)
            .collect()
    };
    wait_until(
        &format!("{n} access log lines for {frontend}"),
        Duration::from_secs(5),
        || {
            let got = read().len();
            async move { got >= n }
        },
    )
    .await;
    read()
}
