//! Scenarios a (`members`: members SIGKILLed, restarted, SIGSTOPped and continued in turn while
//! a fourth key comes and goes) and b (`cluster restart`: every member killed at once, then all
//! restarted), on a 3-member cluster; see `main.rs`.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterChaos {
    Members,
    FullRestart,
}

/// Which members are faulted right now (a writer avoids them); the lock is held while a fault
/// is applied and while a write is in progress, so a write never straddles a new fault.
pub(crate) type Gate = Arc<tokio::sync::Mutex<Vec<bool>>>;

/// What the key toggler saw: propagation of each change, and the changes never routed.
#[derive(Default)]
pub(crate) struct ToggleResult {
    pub(crate) changes: u64,
    pub(crate) propagation: Vec<Duration>,
    pub(crate) lost: Vec<String>,
    pub(crate) write_retries: u32,
    pub(crate) errors: Vec<String>,
}

/// Puts and deletes server `name` (-> `addr`) every `every`, through a member not faulted, and
/// times each change until routed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn toggler(
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

pub(crate) fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        bail!("kill -{sig} {pid}: {st}");
    }
    Ok(())
}

pub(crate) async fn cluster_scenario(
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
    let (lb, http) = start_converged(
        &id,
        &Cfg::new(api, &urls, &backend, &prefix).toml(),
        &kv,
        &prefix,
    )
    .await?;
    let admin = lb.admin_addr();
    let stable = view(&http, admin).await?.routed();
    let before = metrics_text(&http, admin).await?;

    let names = names_of(&ups);
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
    wind_down(&id, lb, &ups, &kv, &prefix, &l).await?;
    Ok(row)
}
