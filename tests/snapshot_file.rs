//! `[etcd] snapshot_file`: the last published set is kept on disk, and a Switchyard that starts
//! while etcd is unreachable serves from it, says so, and resyncs once etcd answers.

mod support;

use std::time::Duration;

use support::config::{self, Cfg};
use support::{Etcd, Lb, Upstream, get, wait_until};

fn config(etcd: &Etcd, file: &std::path::Path) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .etcd_lines(&format!(
            "backoff_max = \"300ms\"\nsnapshot_file = {}",
            config::path(file)
        ))
        .etcd_backend("saved")
        .check_none()
        .toml()
}

#[tokio::test]
async fn starts_from_the_snapshot_file_while_etcd_is_down() {
    let dir = std::env::temp_dir().join(format!("switchyard-snapfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("last-known-good.json");
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("A").await, Upstream::start("B").await);
    etcd.put("/saved/backend/1", &a.addr().to_string()).await;
    etcd.put("/saved/backend/2", &b.addr().to_string()).await;

    let lb = Lb::start_ready(&config(&etcd, &file)).await;
    let f = &file;
    let (aa, ba) = (a.addr().to_string(), b.addr().to_string());
    wait_until(
        "the snapshot file lists both servers",
        Duration::from_secs(5),
        || {
            let (aa, ba) = (aa.clone(), ba.clone());
            async move {
                let t = std::fs::read_to_string(f).unwrap_or_default();
                t.contains(&aa) && t.contains(&ba)
            }
        },
    )
    .await;
    assert!(
        !dir.join("last-known-good.tmp").exists(),
        "written through a temp file + rename"
    );
    lb.shutdown().await;

    // etcd is down when Switchyard starts: it serves what the file holds, and says so.
    etcd.kill();
    let lb = Lb::start_ready(&config(&etcd, &file)).await;
    let j = lb.backends().await;
    assert_eq!(j["discovery"]["from_snapshot_file"], true, "{j}");
    assert_eq!(j["discovery"]["connected"], false);
    let mut bodies = vec![];
    for _ in 0..4 {
        let (status, body) = get(lb.http_addr("web"), "/").await;
        assert_eq!(status, 200);
        bodies.push(body);
    }
    bodies.sort();
    assert_eq!(bodies, ["A", "A", "B", "B"]);

    // Once etcd answers, its listing replaces the file's set.
    etcd.restart().await;
    etcd.delete("/saved/backend/2").await;
    let lb_ref = &lb;
    wait_until(
        "resynced from etcd",
        Duration::from_secs(15),
        || async move {
            let j = lb_ref.backends().await;
            j["discovery"]["from_snapshot_file"] == false
                && j["backends"][0]["servers"].as_array().unwrap().len() == 1
        },
    )
    .await;
    wait_until("the file follows etcd", Duration::from_secs(5), || {
        let ba = b.addr().to_string();
        async move { !std::fs::read_to_string(f).unwrap_or_default().contains(&ba) }
    })
    .await;
    lb.shutdown().await;

    // A corrupt file is ignored with a warning, not a crash: etcd is used.
    std::fs::write(&file, "{ not json").unwrap();
    let lb = Lb::start_ready(&config(&etcd, &file)).await;
    assert_eq!(get(lb.http_addr("web"), "/").await, (200, "A".to_string()));
    lb.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}
