//! Scenario g (`shutdown`): the Lb cancelled with requests in flight and a grace period; see
//! `main.rs`.

use super::*;

/// What a fresh connection to the frontend got.
pub(crate) async fn probe_new_connection(addr: SocketAddr) -> String {
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

pub(crate) async fn shutdown(p: &Params, etcd: &Etcd) -> anyhow::Result<Row> {
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
    let (lb, _) = start_converged(&id, &cfg.toml(), &kv, &prefix).await?;
    let web = lb.http_addr("web");
    let ports = names_of(&ups);
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
