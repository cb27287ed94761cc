//! Scenario f (`reloads`): a config reload every second under load, cycling three configs; see
//! `main.rs`.

use super::*;

pub(crate) async fn reloads(p: &Params, etcd: &Etcd) -> anyhow::Result<Row> {
    let id = "f".to_string();
    let backend = "freload";
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let ups = [
        named_upstream("r1").await,
        named_upstream("r2").await,
        named_upstream("r3").await,
    ];
    let kv = Kv::new(Api::V2, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    for (i, u) in ups.iter().enumerate() {
        kv.put(&format!("{prefix}/{}", i + 1), &u.addr().to_string())
            .await?;
    }
    let urls = vec![etcd.url()];
    let base = Cfg::new(Api::V2, &urls, backend, &prefix);
    let mut backend_changed = Cfg::new(Api::V2, &urls, backend, &prefix);
    backend_changed.extra = "retries = 3\nconnect_timeout = \"1500ms\"\nbalance = \"leastconn\"";
    let mut etcd_changed = Cfg::new(Api::V2, &urls, backend, &prefix);
    etcd_changed.etcd = "poll_timeout = \"30s\"";
    etcd_changed.frontend = "header_timeout = \"9s\"";
    let variants = [base.toml(), backend_changed.toml(), etcd_changed.toml()];
    let (lb, http) = start_converged(&id, &variants[0], &kv, &prefix).await?;
    let admin = lb.admin_addr();
    let stable = view(&http, admin).await?.routed();
    let before = metrics_text(&http, admin).await?;
    let ports = names_of(&ups);
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let monitor = Monitor::start(admin, stable);
    let t0 = Instant::now();
    let mut n = 0usize;
    while t0.elapsed() < p.reload_for {
        tokio::time::sleep_until(t0 + p.reload_every * (n as u32 + 1)).await;
        n += 1;
        lb.reload_toml(&variants[n % variants.len()]).await;
    }
    // Back to the base config (if not there already), then a second of calm load.
    if !n.is_multiple_of(variants.len()) {
        n += 1;
        lb.reload_toml(&variants[0]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: format!(
            "config reload every {} ms for {} s (3 configs in turn)",
            p.reload_every.as_millis(),
            p.reload_for.as_secs_f64()
        ),
        expect_zero: true,
        cases: n,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await);
    let after = metrics_text(&http, admin).await?;
    let ok = |t: &str| {
        common::sum_samples(
            t,
            "switchyard_config_reloads_total{",
            &["result=\"success\""],
        )
    };
    let bad = |t: &str| {
        common::sum_samples(
            t,
            "switchyard_config_reloads_total{",
            &["result=\"failure\""],
        )
    };
    let applied = ok(&after) - ok(&before);
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!(
        "{n} reloads sent; switchyard_config_reloads_total success +{applied}, failure +{}; resyncs before {} -> after {}; {}",
        bad(&after) - bad(&before),
        fmt_counts(&resyncs(&before)),
        fmt_counts(&resyncs(&after)),
        proxy_counters(&after, backend)
    ));
    if applied < n as f64 {
        row.problems
            .push(format!("{id}: {n} reloads sent, {applied} applied"));
    }
    if mon.stable_missing > 0 {
        row.problems.push(format!(
            "{id}: a server was missing from routing in {} samples",
            mon.stable_missing
        ));
    }
    failure_lines(&mut row, &l, None, t0);
    wind_down(&id, lb, &ups, &kv, &prefix, &l).await?;
    Ok(row)
}
