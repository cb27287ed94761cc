//! Scenario e (`churn`): servers registered and deregistered every 10 ms under load; see
//! `main.rs`.

use super::*;

pub(crate) async fn churn(p: &Params, etcd: &Etcd, api: Api) -> anyhow::Result<Row> {
    let id = format!("e/{}", api.as_str());
    let backend = format!("e{}", api.as_str());
    let prefix = format!("/chaos/{backend}/backend");
    common::progress(format!("{id}: start"));
    let names: [&'static str; 6] = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let mut ups = Vec::new();
    for n in names {
        ups.push(named_upstream(n).await);
    }
    let kv = Kv::new(api, vec![etcd.url()]);
    kv.clear(&prefix).await?;
    let mut registered: std::collections::VecDeque<usize> = (0..3).collect();
    for &i in &registered {
        kv.put(
            &format!("{prefix}/{}", names[i]),
            &ups[i].addr().to_string(),
        )
        .await?;
    }
    let urls = vec![etcd.url()];
    let (lb, http) = start_converged(
        &id,
        &Cfg::new(api, &urls, &backend, &prefix).toml(),
        &kv,
        &prefix,
    )
    .await?;
    let admin = lb.admin_addr();
    let ports = names_of(&ups);
    let load = Load::start(format!("http://{}/", lb.http_addr("web")), p.clients, ports);
    let monitor = Monitor::start(admin, BTreeSet::new());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let every = p.churn_for / p.churn_changes as u32;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let mut write_lat = Vec::new();
    let mut changes = 0usize;
    while changes < p.churn_changes {
        tick.tick().await;
        let t = Instant::now();
        // Alternate: register a pool member that is not registered, then deregister the oldest;
        // 3 or 4 servers stay registered.
        if changes.is_multiple_of(2) {
            let i = (0..names.len())
                .find(|i| !registered.contains(i))
                .expect("a free pool member");
            kv.put(
                &format!("{prefix}/{}", names[i]),
                &ups[i].addr().to_string(),
            )
            .await?;
            registered.push_back(i);
        } else {
            let i = registered.pop_front().expect("registered");
            kv.delete(&format!("{prefix}/{}", names[i])).await?;
        }
        write_lat.push(t.elapsed());
        changes += 1;
    }
    let churn_secs = t0.elapsed();
    let set = converge(&http, admin, &kv, &prefix, CONVERGE_LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = load.finish().await;
    let mon = monitor.finish().await;
    let mut row = Row {
        id: id.clone(),
        label: format!(
            "{} register/deregister changes in {} s ({})",
            p.churn_changes,
            p.churn_for.as_secs_f64(),
            api.as_str()
        ),
        expect_zero: true,
        cases: changes,
        ..Row::default()
    };
    row.take_load(&l);
    row.take_set(set);
    let after = metrics_text(&http, admin).await?;
    row.detail(load_line(&l));
    row.detail(mon.line());
    row.detail(format!(
        "{changes} changes in {:.2} s (etcd write acknowledged p50 {} ms, max {} ms); discovery events {}; {}",
        churn_secs.as_secs_f64(),
        pct_ms(&write_lat, 0.5),
        pct_ms(&write_lat, 1.0),
        common::sum_samples(&after, "switchyard_discovery_events_total{", &[&format!("backend=\"{backend}\"")]),
        proxy_counters(&after, &backend)
    ));
    if mon.empty > 0 {
        row.problems.push(format!(
            "{id}: nothing routed in {} monitor samples",
            mon.empty
        ));
    }
    failure_lines(&mut row, &l, None, t0);
    wind_down(&id, lb, &ups, &kv, &prefix, &l).await?;
    Ok(row)
}
