//! Switchyard seen through its admin API during a scenario: the routed set (`View`), the
//! `Monitor` that polls it every 20 ms, and the waits until routing equals etcd (`converge`,
//! `wait_reflect`).

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) state: String,
    pub(crate) source: String,
}

pub(crate) struct View {
    pub(crate) connected: bool,
    pub(crate) servers: Vec<Listed>,
}

impl View {
    /// The routed set: servers from etcd that are not draining, as (name, addr).
    pub(crate) fn routed(&self) -> BTreeSet<(String, String)> {
        self.servers
            .iter()
            .filter(|s| s.source == "etcd" && s.state != "draining")
            .map(|s| (s.name.clone(), s.addr.clone()))
            .collect()
    }
}

pub(crate) async fn view(http: &reqwest::Client, admin: SocketAddr) -> anyhow::Result<View> {
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

pub(crate) async fn metrics_text(
    http: &reqwest::Client,
    admin: SocketAddr,
) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// `switchyard_requests_total` of `backend` by code, and `switchyard_retries_total`.
pub(crate) fn proxy_counters(text: &str, backend: &str) -> String {
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

pub(crate) fn resyncs(text: &str) -> BTreeMap<String, f64> {
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

pub(crate) fn fmt_counts(m: &BTreeMap<String, f64>) -> String {
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
pub(crate) async fn converge(
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
pub(crate) async fn wait_reflect(
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
pub(crate) struct Monitor {
    pub(crate) stop: CancellationToken,
    pub(crate) handle: JoinHandle<MonitorResult>,
}

#[derive(Default, Debug)]
pub(crate) struct MonitorResult {
    pub(crate) samples: u64,
    pub(crate) errors: u64,
    /// Samples in which a stable server was not routed.
    pub(crate) stable_missing: u64,
    /// Samples with nothing routed at all.
    pub(crate) empty: u64,
    pub(crate) min_routed: Option<usize>,
    pub(crate) disconnected: Duration,
    pub(crate) disconnects: u64,
    /// Server name -> (samples shown down, first time shown down since the start).
    pub(crate) down: BTreeMap<String, (u64, Duration)>,
}

impl Monitor {
    pub(crate) fn start(admin: SocketAddr, stable: BTreeSet<(String, String)>) -> Monitor {
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

    pub(crate) async fn finish(self) -> MonitorResult {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

impl MonitorResult {
    pub(crate) fn line(&self) -> String {
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

/// Switchyard started on `toml`, once its routed set equals what etcd holds under `prefix`;
/// and a client for its admin API.
pub(crate) async fn start_converged(
    id: &str,
    toml: &str,
    kv: &Kv,
    prefix: &str,
) -> anyhow::Result<(Lb, reqwest::Client)> {
    let lb = Lb::start_ready(toml).await;
    let http = common::admin_client(Duration::from_secs(2));
    converge(&http, lb.admin_addr(), kv, prefix, CONVERGE_LIMIT)
        .await
        .map_err(|e| anyhow!("{id}: initial set: {e}"))?;
    Ok((lb, http))
}
