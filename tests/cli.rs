//! The `switchyard` binary as users run it: `check` exit codes and messages, `run` with a real
//! etcd, SIGHUP reloads (a bad config is refused and the old one keeps serving), SIGTERM drains
//! an in-flight request and exits 0, bind failures exit 2, and the discovery gauges in a
//! process of its own.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{Etcd, Upstream, free_port, get, try_get, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_accepts_the_shipped_configs_and_names_bad_keys() {
    for f in ["config/switchyard.toml", "config/dev.toml"] {
        let out = Command::new(BIN).args(["check", "-c", f]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "configuration valid"
        );
    }
    let dir = tempdir("check");
    let cases = [
        (
            "typo.toml",
            "[admin]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n",
            "lisen",
        ),
        (
            "nobackend.toml",
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:1\"\nbackend = \"missing\"\n",
            "frontend \"f\".backend",
        ),
        (
            "prefix.toml",
            "[etcd]\n[[backend]]\nname = \"b\"\netcd_prefix = \"no/slash\"\n",
            "etcd_prefix",
        ),
        ("syntax.toml", "[[frontend]\n", "TOML"),
    ];
    for (name, text, needle) in cases {
        let p = write(&dir, name, text);
        let out = Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(needle) || (needle == "TOML" && err.contains("expected")),
            "{name}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    let out = Command::new(BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).ok();
}

fn run_config(admin: u16, web: u16, etcd: &str, servers: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[etcd]
endpoints = ["{etcd}"]
[[frontend]]
name = "testloadbalancer"
bind = "127.0.0.1:{web}"
backend = "testservice"
[[backend]]
name = "testservice"
etcd_prefix = "/testservice/backend"
servers = [{servers}]
[backend.check]
type = "none"
"#
    )
}

#[tokio::test]
async fn run_reload_and_graceful_sigterm() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("A").await;
    let slow = Upstream::start_with("slow", |_req| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        Response::new(Full::new(Bytes::from("slow")))
    })
    .await;
    etcd.put("/testservice/backend/1", &a.addr().to_string())
        .await;
    let (admin_port, web_port) = (free_port(), free_port());
    let dir = tempdir("run");
    let cfg = write(
        &dir,
        "sy.toml",
        &run_config(admin_port, web_port, &etcd.url(), ""),
    );
    let child = Command::new(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Running(child);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let web: std::net::SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    wait_until("readyz", Duration::from_secs(10), || async move {
        matches!(try_get(admin, "/readyz").await, Ok((200, _)))
    })
    .await;
    assert_eq!(get(web, "/").await, (200, "A".to_string()));
    assert_eq!(get(admin, "/healthz").await.0, 200);
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("switchyard_discovery_connected 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_discovery_index "), "{metrics}");
    assert!(metrics.contains("# HELP switchyard_requests_total"));
    // The reload series exist from the start: the start counts as a successful load.
    for line in [
        "switchyard_config_last_reload_successful 1",
        "switchyard_config_reloads_total{result=\"failure\"} 0",
        "switchyard_config_reloads_total{result=\"success\"} 0",
        "switchyard_retries_total{backend=\"testservice\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }

    // A bad config on SIGHUP is refused; the running one keeps serving.
    write(&dir, "sy.toml", "[[frontend]]\nname = 1\n");
    signal(&child.0, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(web, "/").await, (200, "A".to_string()));
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metrics.contains("switchyard_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "switchyard_config_last_reload_successful 0"),
        "{metrics}"
    );

    // A good one is applied: a static server joins the discovered one.
    write(
        &dir,
        "sy.toml",
        &run_config(
            admin_port,
            web_port,
            &etcd.url(),
            &format!("\"{}\"", slow.addr()),
        ),
    );
    signal(&child.0, "-HUP");
    wait_until(
        "static server after reload",
        Duration::from_secs(5),
        || async move {
            get(admin, "/api/v1/backends")
                .await
                .1
                .contains("\"source\":\"static\"")
        },
    )
    .await;
    // The alert on a refused reload clears once a later one succeeds.
    let metrics = get(admin, "/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "switchyard_config_last_reload_successful 1"),
        "{metrics}"
    );

    // SIGTERM with a request in flight: it completes, then the process exits 0.
    let inflight = tokio::spawn(async move {
        loop {
            let r = get(web, "/").await;
            if r.1 == "slow" {
                return r;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = child;
    signal(&child.0, "-TERM");
    let r = tokio::time::timeout(Duration::from_secs(5), inflight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, (200, "slow".to_string()));
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait().unwrap();
        std::mem::forget(child);
        s
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn bind_failure_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempdir("bind");
    let cfg = write(
        &dir,
        "sy.toml",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:{port}\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n",
            free_port()
        ),
    );
    let out = Command::new(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("frontend \"f\": cannot bind 127.0.0.1:{port}")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `check` on `text`: (exit code, stdout, stderr).
fn check(dir: &Path, name: &str, text: &str) -> (Option<i32>, String, String) {
    let p = write(dir, name, text);
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const STATIC_BACKEND: &str = "[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n";

fn frontend(name: &str, bind: &str) -> String {
    format!("[[frontend]]\nname = \"{name}\"\nbind = \"{bind}\"\nbackend = \"b\"\n")
}

#[test]
fn check_refuses_what_cannot_work() {
    let dir = tempdir("refuse");
    let port = free_port();
    let cases = [
        (
            "empty.toml",
            "# nothing here\n\n".to_string(),
            "the file is empty",
        ),
        (
            "nofrontend.toml",
            STATIC_BACKEND.to_string(),
            "frontend: no [[frontend]]",
        ),
        (
            "noendpoints.toml",
            format!(
                "[etcd]\nendpoints = []\n{}[[backend]]\nname = \"b\"\netcd_prefix = \"/b\"\n",
                frontend("f", "127.0.0.1:0")
            ),
            "etcd.endpoints: is empty, but backend \"b\" has an etcd_prefix",
        ),
        (
            "overlap.toml",
            format!(
                "{}{}{STATIC_BACKEND}",
                frontend("any", &format!("0.0.0.0:{port}")),
                frontend("local", &format!("127.0.0.1:{port}"))
            ),
            "frontend \"local\".bind: 127.0.0.1:",
        ),
        (
            "overlap6.toml",
            format!(
                "[admin]\nlisten = \"127.0.0.1:{port}\"\n{}{STATIC_BACKEND}",
                frontend("v6", &format!("[::]:{port}"))
            ),
            "overlaps admin.listen",
        ),
        (
            "typo.toml",
            format!(
                "{}{STATIC_BACKEND}[backend.check]\nfal = 3\n",
                frontend("f", "127.0.0.1:0")
            ),
            "backend.check.fal: unknown key; did you mean `fall`?",
        ),
        (
            "admin.toml",
            format!(
                "[admin]\nlisten = \"0.0.0.0:{port}\"\n{}{STATIC_BACKEND}",
                frontend("f", "127.0.0.1:0")
            ),
            "[admin] token",
        ),
        (
            "framing.toml",
            format!(
                "{}{STATIC_BACKEND}",
                format_args!(
                    "{}[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"b\"\n\
                     response_headers = {{ set = {{ \"Transfer-Encoding\" = \"chunked\" }} }}\n",
                    frontend("f", "127.0.0.1:0")
                )
            ),
            "frontend \"f\".route[0].response_headers.set: \"Transfer-Encoding\" is a hop-by-hop or framing field",
        ),
        (
            "nohost.toml",
            format!(
                "{}request_headers = {{ remove = [\"Host\"] }}\n{STATIC_BACKEND}",
                frontend("f", "127.0.0.1:0")
            ),
            "frontend \"f\".request_headers.remove: \"Host\"",
        ),
    ];
    for (name, text, needle) in cases {
        let (code, _, err) = check(&dir, name, &text);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_reports_every_problem_at_once() {
    let dir = tempdir("several");
    let text = format!(
        "[global]\nthreads = 0\n{}maxconn = 0\n{}bind = \"nowhere\"\n[[backend]]\nname = \"b\"\n",
        frontend("f", "127.0.0.1:0"),
        "[[frontend]]\nname = \"g\"\nbackend = \"b\"\n"
    );
    let (code, _, err) = check(&dir, "several.toml", &text);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("4 problems:"), "{err}");
    for key in [
        "global.threads:",
        "backend \"b\": needs etcd_prefix, servers",
        "frontend \"f\".maxconn:",
        "frontend \"g\".bind:",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_warns_and_still_accepts() {
    let dir = tempdir("warn");
    let text = format!(
        "{}[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\", \"nowhere.invalid:80\"]\n\
         [[backend]]\nname = \"spare\"\nservers = [\"127.0.0.1:2\"]\n",
        frontend("f", "127.0.0.1:0")
    );
    let (code, out, err) = check(&dir, "warn.toml", &text);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "configuration valid");
    assert!(
        err.contains("warning: backend \"spare\": no frontend, route or service tree uses it"),
        "{err}"
    );
    assert!(
        err.contains("warning: backend \"b\".servers[1]: \"nowhere.invalid:80\" does not resolve"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn systemd_reload_checks_the_config_before_the_hup() {
    let unit = std::fs::read_to_string("deploy/systemd/switchyard.service").unwrap();
    let reloads: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert!(
        reloads[0].starts_with("/usr/bin/switchyard check -c "),
        "{reloads:?}"
    );
    assert!(reloads[1].contains("kill -HUP $MAINPID"), "{reloads:?}");
}

#[test]
fn admin_off_loopback_needs_a_token_at_check_and_run() {
    let dir = tempdir("token");
    let off = format!(
        "[admin]\nlisten = \"0.0.0.0:{}\"\n{}{STATIC_BACKEND}",
        free_port(),
        frontend("f", "127.0.0.1:0")
    );
    let (code, _, err) = check(&dir, "off.toml", &off);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("admin.token: is required when admin.listen"),
        "{err}"
    );
    assert!(err.contains("[admin] token"), "{err}");
    // `run` refuses it too, before binding anything.
    let p = write(&dir, "off.toml", &off);
    let out = Command::new(BIN)
        .arg("run")
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[admin] token"));
    // token_env: the token comes from the environment, as the Docker image's config does it.
    let env_cfg = off.replace(
        "[admin]\n",
        "[admin]\ntoken_env = \"SWITCHYARD_TEST_ADMIN_TOKEN\"\n",
    );
    let p = write(&dir, "env.toml", &env_cfg);
    let with = |token: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("check").arg("-c").arg(&p);
        match token {
            Some(t) => c.env("SWITCHYARD_TEST_ADMIN_TOKEN", t),
            None => c.env_remove("SWITCHYARD_TEST_ADMIN_TOKEN"),
        };
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = with(Some("0123456789abcdef"));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = with(None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "admin.token_env: the environment variable \"SWITCHYARD_TEST_ADMIN_TOKEN\" is not set"
        ),
        "{err}"
    );
    let (code, err) = with(Some("short"));
    assert_eq!(code, Some(1));
    assert!(err.contains("admin.token: must be at least 16"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
