//! `switchyard register`, the sidekick, as users run it: the real binary as a child process
//! against a real etcd 3.4. v2 heartbeats keep the key without waking watchers, SIGTERM/SIGINT
//! delete it and exit 0, SIGKILL leaves it to its TTL, a key deleted behind its back comes back;
//! v3 keeps a lease alive and replaces a revoked one; a local TCP/HTTP check gates the
//! registration; a dead or hung endpoint is skipped; an etcd outage is ridden out; bad arguments
//! exit 1 naming the flag. Plus one in-process run of `switchyard::register::run`.
//!
//! The end-to-end test with the load balancer lives elsewhere.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use support::{Etcd, Upstream, wait_until};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const VALUE: &str = "127.0.0.1:18081";

// ---------------------------------------------------------------------------------------------
// helpers

/// The sidekick as a child process, its stderr in a file (printed if the test fails). Killed by
/// PID on drop.
struct Sidekick {
    child: Child,
    log: PathBuf,
}

impl Sidekick {
    fn start(args: &[&str]) -> Sidekick {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "switchyard-register-{}-{}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("create sidekick log");
        let child = Command::new(BIN)
            .arg("register")
            .args(args)
            .env("RUST_LOG", "switchyard=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchyard register");
        Sidekick { child, log }
    }

    /// `--etcd URL --key KEY --value VALUE --ttl 2s` plus `extra`.
    fn v2(etcd: &str, key: &str, extra: &[&str]) -> Sidekick {
        let mut args = vec![
            "--etcd", etcd, "--key", key, "--value", VALUE, "--ttl", "2s",
        ];
        args.extend_from_slice(extra);
        Sidekick::start(&args)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} {}", self.child.id());
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit; panics (with its log) after `deadline`.
    async fn exit_within(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= end {
                panic!(
                    "sidekick still running {deadline:?} after the signal\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidekick {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sidekick log ---\n{}", self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// reqwest is built with rustls and no default provider: install it before any client is built.
async fn start_etcd() -> Etcd {
    switchyard::tls::install_provider();
    Etcd::start().await
}

fn http() -> reqwest::Client {
    switchyard::tls::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The v2 node of `key` (`None` on 404).
async fn v2_node(etcd: &Etcd, key: &str) -> Option<serde_json::Value> {
    let resp = http()
        .get(format!("{}/v2/keys{key}", etcd.url()))
        .send()
        .await
        .expect("v2 get");
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(
        resp.status().is_success(),
        "v2 get {key}: {}",
        resp.status()
    );
    let v: serde_json::Value = resp.json().await.expect("v2 get: JSON");
    Some(v["node"].clone())
}

async fn v3_post(etcd: &Etcd, path: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = http()
        .post(format!("{}/v3/{path}", etcd.url()))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("v3 {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "v3 {path}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("v3 {path}: {e}: {text}"))
}

/// `(value, lease)` of a v3 key via `/v3/kv/range`; the lease ID stays a string (> 2^53).
async fn v3_get(etcd: &Etcd, key: &str) -> V3Kv {
    let r = v3_post(
        etcd,
        "kv/range",
        serde_json::json!({ "key": B64.encode(key) }),
    )
    .await;
    let kv = r["kvs"].as_array()?.first()?.clone();
    let value = B64
        .decode(kv["value"].as_str().unwrap_or_default())
        .expect("base64 value");
    Some((
        String::from_utf8(value).expect("utf-8 value"),
        kv["lease"].as_str().map(String::from),
    ))
}

type V3Kv = Option<(String, Option<String>)>;

/// Polls `v3_get` until `done` holds; returns that answer. Panics naming `what` after `deadline`.
async fn wait_v3(
    etcd: &Etcd,
    key: &str,
    what: &str,
    deadline: Duration,
    done: impl Fn(&V3Kv) -> bool,
) -> V3Kv {
    let end = Instant::now() + deadline;
    loop {
        let kv = v3_get(etcd, key).await;
        if done(&kv) {
            return kv;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what} (last: {kv:?})");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_v2(etcd: &Etcd, key: &str, want: Option<&str>, deadline: Duration) {
    wait_until(&format!("v2 {key} == {want:?}"), deadline, || async move {
        etcd.value(key).await.as_deref() == want
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// v2

#[tokio::test]
async fn v2_heartbeats_keep_the_key_without_waking_watchers_and_sigterm_deletes_it() {
    let etcd = start_etcd().await;
    let key = "/hb/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &[]);
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;
    let registered_at = Instant::now();
    let node = v2_node(&etcd, key).await.expect("registered");
    assert_eq!(
        node["ttl"].as_u64(),
        Some(2),
        "created with its TTL: {node}"
    );
    let created = node["createdIndex"].as_u64().expect("createdIndex");

    // Refreshes consume indexes but must not wake a watcher (nor be replayed from history).
    let url = format!(
        "{}/v2/keys/hb?wait=true&recursive=true&waitIndex={}",
        etcd.url(),
        created + 1
    );
    let poll = async {
        let resp = http().get(&url).send().await?;
        resp.text().await
    };
    match tokio::time::timeout(Duration::from_secs(3), poll).await {
        Err(_) => {}
        Ok(r) => panic!("the watcher woke up while only heartbeats ran: {r:?}"),
    }
    assert!(sk.running(), "sidekick exited\n{}", sk.log_text());
    assert!(
        etcd.index().await > created + 2,
        "heartbeats were sent (they consume indexes)"
    );

    // Five seconds with a 2 s TTL: only heartbeats keep it; the value never changed.
    tokio::time::sleep_until(registered_at + Duration::from_secs(5)).await;
    let node = v2_node(&etcd, key)
        .await
        .expect("still registered after 5 s");
    assert_eq!(node["value"], VALUE);
    assert_eq!(
        node["createdIndex"].as_u64(),
        Some(created),
        "never re-created"
    );

    sk.signal("-TERM");
    wait_v2(&etcd, key, None, Duration::from_secs(1)).await;
    let status = sk.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", sk.log_text());
}

#[tokio::test]
async fn v2_sigkill_leaves_the_key_to_its_ttl() {
    let etcd = start_etcd().await;
    let key = "/kill/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &[]);
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // a heartbeat or so
    sk.child.kill().expect("SIGKILL");
    sk.child.wait().expect("reap");
    assert_eq!(
        etcd.value(key).await.as_deref(),
        Some(VALUE),
        "nobody deletes it"
    );
    // TTL 2 s, plus etcd's expiry sweep.
    wait_v2(&etcd, key, None, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn v2_key_deleted_behind_its_back_is_recreated_and_sigint_deletes_it() {
    let etcd = start_etcd().await;
    let key = "/gone/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &[]);
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;
    let before = v2_node(&etcd, key).await.unwrap()["createdIndex"]
        .as_u64()
        .unwrap();
    etcd.delete(key).await; // what an expiry looks like to the next refresh: 404
    // The next heartbeat (every TTL/3 ≈ 0.67 s) finds it gone and re-creates it with its TTL.
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(2)).await;
    let node = v2_node(&etcd, key).await.unwrap();
    assert!(node["createdIndex"].as_u64().unwrap() > before, "{node}");
    assert!(
        node["ttl"].as_u64().is_some(),
        "re-created with a TTL: {node}"
    );

    sk.signal("-INT");
    wait_v2(&etcd, key, None, Duration::from_secs(1)).await;
    let status = sk.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", sk.log_text());
}

#[tokio::test]
async fn v2_shutdown_leaves_another_instances_value_alone() {
    let etcd = start_etcd().await;
    let key = "/other/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &[]);
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;
    etcd.put(key, "127.0.0.1:19999").await; // a newer instance took the key over
    sk.signal("-TERM");
    let status = sk.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", sk.log_text());
    assert_eq!(etcd.value(key).await.as_deref(), Some("127.0.0.1:19999"));
}

// ---------------------------------------------------------------------------------------------
// v3

#[tokio::test]
async fn v3_lease_is_kept_alive_replaced_when_revoked_and_revoked_on_sigterm() {
    let etcd = start_etcd().await;
    let key = "/v3svc/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &["--api", "v3"]);
    let first = wait_v3(
        &etcd,
        key,
        "v3 key registered",
        Duration::from_secs(5),
        |kv| kv.is_some(),
    )
    .await;
    let (value, lease) = first.unwrap();
    assert_eq!(value, VALUE);
    let lease = lease.expect("put with a lease");
    // The lease is kept alive past its TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        v3_get(&etcd, key).await,
        Some((VALUE.to_string(), Some(lease.clone()))),
        "same key, same lease after more than one TTL"
    );

    // Revoked behind its back: the key goes with the lease; a new lease and put follow.
    v3_post(&etcd, "lease/revoke", serde_json::json!({ "ID": lease })).await;
    let again = wait_v3(
        &etcd,
        key,
        "v3 key re-created with a new lease",
        Duration::from_secs(3),
        |kv| matches!(kv, Some((_, Some(l))) if *l != lease),
    )
    .await;
    assert_eq!(again.unwrap().0, VALUE);

    sk.signal("-TERM");
    wait_until("v3 key gone", Duration::from_secs(1), || async {
        v3_get(&etcd, key).await.is_none()
    })
    .await;
    let status = sk.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", sk.log_text());
}

// ---------------------------------------------------------------------------------------------
// health gating

fn ok_handler(
    _req: hyper::Request<hyper::body::Incoming>,
) -> std::future::Ready<Response<Full<Bytes>>> {
    std::future::ready(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[tokio::test]
async fn tcp_check_deregisters_while_the_service_is_down() {
    let etcd = start_etcd().await;
    let key = "/tcp/backend/1";
    let svc = Upstream::start("svc").await;
    let addr = svc.addr().to_string();
    let mut sk = Sidekick::v2(
        &etcd.url(),
        key,
        &["--check-tcp", &addr, "--check-interval", "200ms"],
    );
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;

    svc.stop().await;
    // fall (3) x interval (200 ms) + 1 s
    wait_v2(&etcd, key, None, Duration::from_millis(1600)).await;
    // Stays away while the service is down (no heartbeat re-creates it).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(etcd.value(key).await, None);

    let _svc = Upstream::start_at("svc", svc.addr(), ok_handler).await;
    // rise (2) x interval + 1 s
    wait_v2(&etcd, key, Some(VALUE), Duration::from_millis(1400)).await;

    sk.signal("-TERM");
    wait_v2(&etcd, key, None, Duration::from_secs(1)).await;
    assert_eq!(sk.exit_within(Duration::from_secs(5)).await.code(), Some(0));
}

#[tokio::test]
async fn http_check_gates_the_first_registration_and_v3_follows_it() {
    let etcd = start_etcd().await;
    let key = "/http/backend/1";
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let svc = Upstream::start_with("svc", move |_req| {
        let ok = h.load(Ordering::SeqCst);
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"")));
            if !ok {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    })
    .await;
    let url = format!("http://{}/healthz", svc.addr());
    let mut sk = Sidekick::v2(
        &etcd.url(),
        key,
        &[
            "--api",
            "v3",
            "--check-url",
            &url,
            "--check-interval",
            "200ms",
        ],
    );
    // Failing from the start: never registered.
    wait_until(
        "checks reach the service",
        Duration::from_secs(5),
        || async { svc.hits() >= 3 },
    )
    .await;
    assert_eq!(v3_get(&etcd, key).await, None, "{}", sk.log_text());

    healthy.store(true, Ordering::SeqCst);
    wait_until(
        "registered once healthy",
        Duration::from_secs(2),
        || async { v3_get(&etcd, key).await.is_some() },
    )
    .await;

    healthy.store(false, Ordering::SeqCst);
    wait_until(
        "lease revoked while unhealthy",
        Duration::from_millis(1600),
        || async { v3_get(&etcd, key).await.is_none() },
    )
    .await;

    sk.signal("-TERM");
    assert_eq!(sk.exit_within(Duration::from_secs(5)).await.code(), Some(0));
    assert_eq!(v3_get(&etcd, key).await, None);
}

// ---------------------------------------------------------------------------------------------
// failover and outages

#[tokio::test]
async fn dead_and_hung_endpoints_are_skipped() {
    let etcd = start_etcd().await;
    let dead = format!("http://127.0.0.1:{}", support::dead_port());
    // Accepts TCP (the kernel's backlog) and never answers HTTP, like a member that is not ready.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("http://{}", hung.local_addr().unwrap());
    let endpoints = format!("{dead},{hung},{}", etcd.url());
    let mut v2 = Sidekick::v2(&endpoints, "/fo/backend/v2", &[]);
    let mut v3 = Sidekick::v2(&endpoints, "/fo/backend/v3", &["--api", "v3"]);
    wait_v2(&etcd, "/fo/backend/v2", Some(VALUE), Duration::from_secs(5)).await;
    wait_until("v3 registered", Duration::from_secs(5), || async {
        v3_get(&etcd, "/fo/backend/v3").await.is_some()
    })
    .await;
    // And kept alive there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(etcd.value("/fo/backend/v2").await.as_deref(), Some(VALUE));
    assert!(v3_get(&etcd, "/fo/backend/v3").await.is_some());
    for sk in [&mut v2, &mut v3] {
        sk.signal("-TERM");
        assert_eq!(sk.exit_within(Duration::from_secs(5)).await.code(), Some(0));
    }
    assert_eq!(etcd.value("/fo/backend/v2").await, None);
    assert_eq!(v3_get(&etcd, "/fo/backend/v3").await, None);
}

#[tokio::test]
async fn etcd_outage_is_ridden_out() {
    let etcd = start_etcd().await;
    let key = "/outage/backend/1";
    let mut sk = Sidekick::v2(&etcd.url(), key, &[]);
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(5)).await;
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await; // longer than the TTL
    assert!(
        sk.running(),
        "exited while etcd was down\n{}",
        sk.log_text()
    );
    etcd.restart().await;
    // The backoff reaches 1.6-3.2 s by now; the key may have expired meanwhile: either way it is
    // there again after the next attempt.
    wait_v2(&etcd, key, Some(VALUE), Duration::from_secs(6)).await;
    sk.signal("-TERM");
    assert_eq!(sk.exit_within(Duration::from_secs(5)).await.code(), Some(0));
    assert_eq!(etcd.value(key).await, None);
}

#[tokio::test]
async fn sigterm_with_etcd_unreachable_exits_in_bounded_time() {
    let dead = format!("http://127.0.0.1:{}", support::dead_port());
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = format!("http://{}", hung.local_addr().unwrap());
    let mut refused = Sidekick::v2(&dead, "/nowhere/backend/1", &[]);
    let mut stalled = Sidekick::v2(&hung, "/nowhere/backend/2", &[]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(refused.running(), "{}", refused.log_text());
    assert!(stalled.running(), "{}", stalled.log_text());
    refused.signal("-TERM");
    stalled.signal("-TERM");
    // Every attempt was refused at connect, so nothing can be registered: nothing to clean up.
    assert_eq!(
        refused.exit_within(Duration::from_secs(1)).await.code(),
        Some(0)
    );
    // A request may have landed on the hung member: cleanup is tried, bounded by 5 s.
    assert_eq!(
        stalled.exit_within(Duration::from_secs(6)).await.code(),
        Some(0)
    );
}

// ---------------------------------------------------------------------------------------------
// arguments

/// Runs `switchyard register ARGS` and returns (exit code, stderr); kills it after 5 s.
async fn run_args(args: &[&str]) -> (Option<i32>, String) {
    let mut sk = Sidekick::start(args);
    let status = sk.exit_within(Duration::from_secs(5)).await;
    (status.code(), sk.log_text())
}

#[tokio::test]
async fn bad_arguments_exit_1_naming_the_flag() {
    let base = |skip: &str| -> Vec<&'static str> {
        let all = [
            ("--etcd", "http://127.0.0.1:1"),
            ("--key", "/svc/backend/1"),
            ("--value", VALUE),
            ("--ttl", "30s"),
        ];
        all.iter()
            .filter(|(f, _)| *f != skip)
            .flat_map(|(f, v)| [*f, *v])
            .collect()
    };
    let mut cases: Vec<(Vec<&str>, &str)> = ["--etcd", "--key", "--value", "--ttl"]
        .iter()
        .map(|f| (base(f), *f))
        .collect();
    let full = |extra: &[&'static str]| {
        let mut v = base("");
        v.extend_from_slice(extra);
        v
    };
    let ttl = |t: &'static str| {
        let mut v = base("--ttl");
        v.extend(["--ttl", t]);
        v
    };
    let key = |k: &'static str| {
        let mut v = base("--key");
        v.extend(["--key", k]);
        v
    };
    let value = |x: &'static str| {
        let mut v = base("--value");
        v.extend(["--value", x]);
        v
    };
    cases.extend([
        (key("svc/backend/1"), "--key"),
        (value("garbage"), "--value"),
        (value("127.0.0.1:70000"), "--value"),
        (value(r#"{"addr":""}"#), "--value"),
        (
            vec![
                "--etcd",
                "not a url",
                "--key",
                "/k",
                "--value",
                VALUE,
                "--ttl",
                "3s",
            ],
            "--etcd",
        ),
        (
            vec![
                "--etcd",
                "ftp://127.0.0.1:1",
                "--key",
                "/k",
                "--value",
                VALUE,
                "--ttl",
                "3s",
            ],
            "--etcd",
        ),
        (ttl("soon"), "--ttl"),
        (ttl("500ms"), "--ttl"),
        (full(&["--api", "v4"]), "--api"),
        (
            full(&[
                "--check-url",
                "http://127.0.0.1:1/",
                "--check-tcp",
                "127.0.0.1:1",
            ]),
            "--check-url and --check-tcp",
        ),
        (full(&["--check-url", "nope"]), "--check-url"),
        (full(&["--check-tcp", "127.0.0.1"]), "--check-tcp"),
        (full(&["--check-interval", "often"]), "--check-interval"),
        (full(&["--rise", "0"]), "--rise"),
    ]);
    for (args, flag) in cases {
        let (code, stderr) = run_args(&args).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr:?} names {flag}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// in-process

#[tokio::test]
async fn run_in_process_registers_and_cleans_up_on_cancel() {
    use switchyard::register::{Api, RegisterConfig, run};
    let etcd = start_etcd().await;
    let key = "/inproc/backend/1";
    let cfg = RegisterConfig {
        endpoints: vec![etcd.url()],
        api: Api::V3,
        key: key.to_string(),
        value: VALUE.to_string(),
        ttl_secs: 2,
        check: None,
        check_interval: Duration::from_secs(2),
        check_timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(cfg, cancel.clone()));
    wait_until("v3 registered", Duration::from_secs(5), || async {
        v3_get(&etcd, key).await.is_some()
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("run returns after cancel")
        .expect("no panic")
        .expect("Ok after cancel");
    assert_eq!(v3_get(&etcd, key).await, None);
}
