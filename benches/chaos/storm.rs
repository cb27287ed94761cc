//! Scenario c (`storm`): writers flood etcd with other keys (v2: the watched index falls out of
//! the event window; v3: plus compactions) while the prefix changes; see `main.rs`.

use super::*;

pub(crate) async fn storm(p: &Params, etcd: &Etcd, api: Api) -> anyhow::Result<Row> {
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
    let (lb, http) = start_converged(&id, &cfg.toml(), &kv, &prefix).await?;
    let admin = lb.admin_addr();
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

    let ports = names_of(&ups);
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
    wind_down(&id, lb, &ups, &kv, &prefix, &l).await?;
    Ok(row)
}
