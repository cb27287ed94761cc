//! Active health checks end to end: a server whose process dies is marked down after `fall`
//! failed checks and takes no traffic; when it comes back it is marked up after `rise` passes.
//! HTTP checks judge the status code.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use support::{Cfg, Lb, Upstream, get, wait_until};

fn config(backend: &str, servers: &[String], check: &str) -> String {
    Cfg::http("web")
        .backend(backend)
        .servers(servers)
        .check(check)
        .toml()
}

async fn state_of(lb: &Lb, addr: &str) -> String {
    let server = lb.server(addr).await;
    server["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn tcp_check_marks_a_dead_server_down_and_back_up() {
    let a = Upstream::start("A").await;
    let b = Upstream::start("B").await;
    let b_addr = b.addr();
    let lb = Lb::start_ready(&config(
        "tcpcheck",
        &[a.addr().to_string(), b_addr.to_string()],
        "type = \"tcp\"\ninter = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2",
    ))
    .await;
    let lb_ref = &lb;
    b.stop().await;
    wait_until("B marked down", Duration::from_secs(5), || async move {
        state_of(lb_ref, &b_addr.to_string()).await == "down"
    })
    .await;
    // Every request succeeds and goes to A.
    for _ in 0..10 {
        assert_eq!(get(lb.http_addr("web"), "/").await, (200, "A".to_string()));
    }
    let text = lb.metrics().await;
    assert!(
        text.contains(&format!(
            "switchyard_server_up{{backend=\"tcpcheck\",server=\"{b_addr}\"}} 0"
        )),
        "{text}"
    );
    assert!(text.contains("switchyard_health_checks_total{backend=\"tcpcheck\""));

    // B comes back on the same port: up again after `rise` passes.
    let b2 = Upstream::start_at("B", b_addr, |_req| async {
        Response::new(Full::new(Bytes::from("B")))
    })
    .await;
    wait_until("B marked up", Duration::from_secs(5), || async move {
        state_of(lb_ref, &b_addr.to_string()).await == "up"
    })
    .await;
    b2.reset_hits();
    for _ in 0..10 {
        get(lb.http_addr("web"), "/").await;
    }
    assert_eq!(b2.hits(), 5);
    lb.shutdown().await;
}

#[tokio::test]
async fn http_check_judges_the_status() {
    let sick = Upstream::start_with("sick", |req| async move {
        let mut r = Response::new(Full::new(Bytes::from("sick")));
        if req.uri().path() == "/healthz" {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    })
    .await;
    let well = Upstream::start("well").await;
    let sick_addr = sick.addr().to_string();
    let lb = Lb::start_ready(&config(
        "httpcheck",
        &[sick_addr.clone(), well.addr().to_string()],
        "type = \"http\"\npath = \"/healthz\"\ninter = \"100ms\"\nfall = 1",
    ))
    .await;
    let lb_ref = &lb;
    let a = sick_addr.clone();
    wait_until("sick marked down", Duration::from_secs(5), || {
        let a = a.clone();
        async move { state_of(lb_ref, &a).await == "down" }
    })
    .await;
    assert_eq!(state_of(&lb, &well.addr().to_string()).await, "up");
    let seen = well.last_request().unwrap();
    assert_eq!(seen.uri.path(), "/healthz");
    lb.shutdown().await;
}

/// Seconds since the server's last check, from the admin API (`None`: never checked).
async fn check_age(lb: &Lb, addr: &str) -> Option<f64> {
    lb.server(addr).await["last_check_age_seconds"].as_f64()
}

#[tokio::test]
async fn drained_servers_are_still_checked_and_maintenance_ones_are_not() {
    let a = Upstream::start("A").await;
    let addr = a.addr().to_string();
    let lb = Lb::start_ready(&config(
        "drainchecks",
        std::slice::from_ref(&addr),
        "type = \"tcp\"\ninter = \"100ms\"\ntimeout = \"100ms\"",
    ))
    .await;
    let set = |state: &'static str| {
        let (lb, addr) = (&lb, &addr);
        async move {
            assert_eq!(lb.set_server_state("drainchecks", addr, state).await, 200);
        }
    };
    set("drain").await;
    // Checked on: the last check stays fresh (HAProxy checks servers in drain too).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let age = check_age(&lb, &addr).await.expect("checked while draining");
    assert!(age < 0.4, "last check {age} s ago while draining");
    set("maint").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let age = check_age(&lb, &addr).await.expect("checked before");
    assert!(
        age >= 0.5,
        "maintenance stops the checks, last one {age} s ago"
    );
}
