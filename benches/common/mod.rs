//! What the benches that run Switchyard in-process against a real etcd share (`chaos/`,
//! `failover.rs`, `discovery.rs`; the harness itself is `tests/support`):
//!
//! - `main`: `--bench` means the full measurement, anything else (`cargo test --benches`) a
//!   short smoke run; one multi-thread runtime, a deadline on the whole run, the report printed
//!   and, for a full run, written to `benches/results/{name}.txt`; exit 1 on an error or on any
//!   problem the report names. `progress` lines on stderr carry the time since the start.
//! - The load: the HTTP/1.1 keep-alive client each load task uses, one request judged
//!   (`get_200`), and failure reasons made countable (`error_chain`, `count_key`).
//! - Reading Switchyard: an admin-API client, sums over `/metrics` samples.
//! - The report: nearest-rank percentiles, the environment (`command`, `git_rev`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static NAME: OnceLock<&'static str> = OnceLock::new();
static START: OnceLock<Instant> = OnceLock::new();

/// `cargo bench` passes `--bench`; `cargo test --benches` does not.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Runs bench `name`: `run` within `deadline`, then `report` turns its result and the wall
/// time into the text to print and the problems that fail the run. With `write_results`, the
/// text also goes to `benches/results/{name}.txt`.
pub fn main<T, F, R>(name: &'static str, deadline: Duration, write_results: bool, run: F, report: R)
where
    F: Future<Output = anyhow::Result<T>>,
    R: FnOnce(&T, Duration) -> (String, Vec<String>),
{
    let _ = NAME.set(name);
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    // reqwest is built without a default TLS provider (`rustls-no-provider`): every client
    // (the harness's too) needs the process-wide one installed first.
    switchyard::tls::install_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = rt.block_on(async { *START.get_or_init(Instant::now) });
    let outcome = rt.block_on(async { tokio::time::timeout(deadline, run).await });
    let result = match outcome {
        Err(_) => {
            eprintln!("{name} bench: FAILED: not finished within {deadline:?}");
            std::process::exit(1);
        }
        Ok(Err(e)) => {
            eprintln!("{name} bench: FAILED: {e:#}");
            std::process::exit(1);
        }
        Ok(Ok(r)) => r,
    };
    let (text, problems) = report(&result, started.elapsed());
    println!("\n{text}");
    if write_results {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
        std::fs::create_dir_all(&dir).expect("create benches/results");
        let path = dir.join(format!("{name}.txt"));
        std::fs::write(&path, &text).expect("write results");
        println!("written to {}", path.display());
    }
    if !problems.is_empty() {
        eprintln!("{name} bench: FAILED: {}", problems.join("; "));
        std::process::exit(1);
    }
}

/// A progress line on stderr with the time since the start.
pub fn progress(msg: impl AsRef<str>) {
    let t = START.get_or_init(Instant::now).elapsed();
    let name = NAME.get().copied().unwrap_or("bench");
    eprintln!("[{name} {:>6.1}s] {}", t.as_secs_f64(), msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Load.

/// An HTTP/1.1 client on one keep-alive connection (no proxy, no Nagle), each request bounded
/// by `limit` and each connect by `connect`.
pub fn keep_alive_client(limit: Duration, connect: Duration) -> reqwest::Client {
    switchyard::tls::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .timeout(limit)
        .connect_timeout(connect)
        .build()
        .expect("reqwest client")
}

/// The client of one load task: 5 s per request, 2 s to connect.
pub fn load_client() -> reqwest::Client {
    keep_alive_client(Duration::from_secs(5), Duration::from_secs(2))
}

/// `GET url`: the body of a 200, or why the request failed (another status and its body, a
/// body that broke, or the transport error with its causes).
pub async fn get_200(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let resp = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    let code = resp.status().as_u16();
    match resp.bytes().await {
        Ok(body) if code == 200 => Ok(body),
        Ok(body) => Err(format!(
            "HTTP {code}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!(
            "HTTP {code}, then the body failed: {}",
            error_chain(&e)
        )),
    }
}

/// An error and its sources on one line (reqwest's own message hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// A failure reason made countable: known addresses become their names (`names`: address,
/// name), other loopback ports `PORT` (they differ between runs).
pub fn count_key(reason: &str, names: &[(String, String)]) -> String {
    let mut s = reason.to_string();
    for (addr, name) in names {
        s = s.replace(addr.as_str(), name);
    }
    s.split("127.0.0.1:")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                let rest = part.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("127.0.0.1:PORT{rest}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Reading Switchyard.

/// A client for the admin API (`/api/v1/backends`, `/metrics`), each call bounded by `limit`.
pub fn admin_client(limit: Duration) -> reqwest::Client {
    keep_alive_client(limit, limit)
}

/// The sum of every sample of `metric` (a name with its opening brace) whose line contains
/// all of `needles`.
pub fn sum_samples(text: &str, metric: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

// ---------------------------------------------------------------------------------------------
// The report.

/// Nearest-rank percentile `q` (0 to 1) of `v`; `None` when empty.
pub fn percentile<T: Copy + Ord>(v: &[T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// The report's first line: what ran (a smoke run says so), when, at which revision, against
/// which etcd, on how many CPUs.
pub fn heading(name: &str, full: bool) -> String {
    format!(
        "switchyard {name} bench{}: {}, git {}, {}, {} CPUs",
        if full {
            ""
        } else {
            " (SMOKE RUN, not a measurement)"
        },
        command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        git_rev(),
        command("/usr/bin/etcd", &["--version"])
            .lines()
            .next()
            .unwrap_or("etcd ?")
            .replace("etcd Version: ", "etcd "),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    )
}

/// The trimmed output of `cmd args` run in the repository, or `?`.
pub fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".to_string())
}

/// `git rev-parse --short HEAD`, plus `+dirty` when tracked files under src/ differ from it.
pub fn git_rev() -> String {
    let rev = command("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !command(
        "git",
        &["status", "--porcelain", "--untracked-files=no", "src"],
    )
    .is_empty();
    if dirty { format!("{rev}+dirty") } else { rev }
}
