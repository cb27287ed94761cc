//! The load: keep-alive clients sending `GET /` back to back until stopped, every failure
//! counted with its reason and when it was sent, and the lines that report them.

use super::*;

pub(crate) struct Load {
    pub(crate) stop: CancellationToken,
    pub(crate) start: Instant,
    pub(crate) handles: Vec<JoinHandle<ClientResult>>,
}

#[derive(Default)]
pub(crate) struct ClientResult {
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    /// (time since the load started, reason), the first few of each client.
    pub(crate) fail_times: Vec<(Duration, String)>,
    pub(crate) served: BTreeMap<String, u64>,
    pub(crate) latency_us: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct LoadResult {
    pub(crate) elapsed: Duration,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) fail_times: Vec<(Duration, String)>,
    pub(crate) served: BTreeMap<String, u64>,
    pub(crate) latency_us: Vec<u32>,
}

impl Load {
    /// `clients` keep-alive clients sending `GET {url}` back to back until `finish`.
    pub(crate) fn start(url: String, clients: usize, ports: Arc<Vec<(String, String)>>) -> Load {
        Self::start_with(url, clients, ports, false)
    }

    /// Like `start`; with `first_failure_ends`, a client stops after its first failure (so a
    /// server that is going away is not hammered with reconnects).
    pub(crate) fn start_with(
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
    pub(crate) async fn finish(self) -> LoadResult {
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

pub(crate) async fn load_client(
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

/// (address, name) of each upstream, for `common::count_key`.
pub(crate) fn names_of(ups: &[Upstream]) -> Arc<Vec<(String, String)>> {
    ports_of(&ups.iter().map(|u| (u.name(), u.addr())).collect::<Vec<_>>())
}

pub(crate) fn ports_of(ups: &[(&str, SocketAddr)]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        ups.iter()
            .map(|(n, a)| (a.to_string(), n.to_string()))
            .collect(),
    )
}

pub(crate) fn load_line(l: &LoadResult) -> String {
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

pub(crate) fn failure_lines(
    row: &mut Row,
    l: &LoadResult,
    origin: Option<Instant>,
    start: Instant,
) {
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

/// How a scenario ends once its load is in: the Lb shut down, the upstreams stopped, the
/// scenario's keys cleared from etcd, and a progress line with the load's counts.
pub(crate) async fn wind_down(
    id: &str,
    lb: Lb,
    ups: &[Upstream],
    kv: &Kv,
    prefix: &str,
    l: &LoadResult,
) -> anyhow::Result<()> {
    lb.shutdown().await;
    for u in ups {
        u.stop().await;
    }
    kv.clear(prefix).await?;
    common::progress(format!(
        "{id}: {} requests, {} failed",
        l.requests, l.failed
    ));
    Ok(())
}
