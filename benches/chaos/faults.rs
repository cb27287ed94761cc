//! Scenario d (`upstream`): one of three upstreams stopped, hung, reset or talking garbage for a
//! while under load, then repaired; see `main.rs`.

use super::*;

pub(crate) async fn upstream_fault(p: &Params, etcd: &Etcd, fault: Fault) -> anyhow::Result<Row> {
    let (tag, label, expect_zero) = match fault {
        Fault::Stop => (
            "stop",
            "upstream stopped (listener + connections closed)",
            true,
        ),
        Fault::Bad(Mode::Hang) => (
            "hung",
            "upstream hung (never answers), response_timeout 1s",
            false,
        ),
        Fault::Bad(Mode::ResetHead) => {
            ("reset-head", "upstream RST before the response head", true)
        }
        Fault::Bad(Mode::ResetBody) => (
            "reset-body",
            "upstream RST mid-body (head + 512 of 4096 bytes)",
            false,
        ),
        Fault::Bad(Mode::Garbage) => ("garbage", "upstream answers non-HTTP bytes", true),
        Fault::Bad(Mode::Normal) => unreachable!("not a fault"),
    };
    let id = format!("d/{tag}");
    let backend = format!("d{}", tag.replace('-', ""));
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let u1 = named_upstream("u1").await;
    let u3 = named_upstream("u3").await;
    let mode = Arc::new(AtomicU8::new(Mode::Normal as u8));
    let hits = Arc::new(AtomicUsize::new(0));
    let u2 =
        RawUpstream::start_at("u2", "127.0.0.1:0".parse()?, mode.clone(), hits.clone()).await?;
    let u2_addr = u2.addr;
    let kv = Kv::new(Api::V2, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    for (n, a) in [("1", u1.addr()), ("2", u2_addr), ("3", u3.addr())] {
        kv.put(&format!("{prefix}/{n}"), &a.to_string()).await?;
    }
    let urls = vec![etcd.url()];
    let mut cfg = Cfg::new(Api::V2, &urls, &backend, &prefix);
    cfg.check = "http";
    cfg.extra = "response_timeout = \"1s\"";
    let (lb, http) = start_converged(&id, &cfg.toml(), &kv, &prefix).await?;
    let admin = lb.admin_addr();
    // Wait until all three pass their checks.
    let t = Instant::now();
    while !view(&http, admin)
        .await?
        .servers
        .iter()
        .all(|s| s.state == "up")
    {
        if t.elapsed() > CONVERGE_LIMIT {
            bail!("{id}: servers not all up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ports = ports_of(&[("u1", u1.addr()), ("u2", u2_addr), ("u3", u3.addr())]);
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let start = load.start;
    let monitor = Monitor::start(admin, BTreeSet::new());
    tokio::time::sleep_until(start + p.fault_at).await;
    let hits_before = hits.load(Ordering::SeqCst);
    let fault_t = Instant::now();
    match fault {
        Fault::Stop => u2.stop().await,
        Fault::Bad(m) => mode.store(m as u8, Ordering::SeqCst),
    }
    common::progress(format!("{id}: u2 faulted"));
    // u2's first `down` after the fault.
    let mut detect = None;
    while Instant::now() < start + p.repair_at {
        if detect.is_none()
            && let Ok(v) = view(&http, admin).await
            && v.servers.iter().any(|s| s.name == "2" && s.state == "down")
        {
            detect = Some(fault_t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits_faulty = hits.load(Ordering::SeqCst) - hits_before;
    let repaired = match fault {
        Fault::Stop => {
            Some(RawUpstream::start_at("u2", u2_addr, mode.clone(), hits.clone()).await?)
        }
        Fault::Bad(_) => {
            mode.store(Mode::Normal as u8, Ordering::SeqCst);
            None
        }
    };
    let repair_t = Instant::now();
    common::progress(format!("{id}: u2 repaired"));
    let mut back_up = None;
    while Instant::now() < start + p.fault_load {
        if back_up.is_none()
            && let Ok(v) = view(&http, admin).await
            && v.servers.iter().any(|s| s.name == "2" && s.state == "up")
        {
            back_up = Some(repair_t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: label.to_string(),
        expect_zero,
        cases: 1,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    row.detail(load_line(&l));
    row.detail(format!(
        "u2 faulted at +{:.1} s, repaired at +{:.1} s; u2 shown down {} after the fault, up {} after the repair; \
         requests (checks included) u2 received while faulty: {}; u2 down in {} monitor samples",
        p.fault_at.as_secs_f64(),
        p.repair_at.as_secs_f64(),
        detect.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into()),
        back_up.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into()),
        hits_faulty,
        mon.down.get("2").map(|d| d.0).unwrap_or(0)
    ));
    let u2_label = format!("server=\"{u2_addr}\"");
    let checks = |result: &str| {
        common::sum_samples(
            &after,
            "switchyard_health_checks_total{",
            &[&u2_label, &format!("result=\"{result}\"")],
        )
    };
    row.detail(format!(
        "health checks on u2 (whole run): {} passed, {} failed; {}",
        checks("success"),
        checks("failure"),
        proxy_counters(&after, &backend)
    ));
    failure_lines(&mut row, &l, Some(fault_t), start);
    u2.stop().await;
    if let Some(u) = repaired {
        u.stop().await;
    }
    wind_down(&id, lb, &[u1, u3], &kv, &prefix, &l).await?;
    Ok(row)
}
