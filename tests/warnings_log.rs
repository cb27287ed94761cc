//! Failures an operator must see at the default log level (the binary run without `RUST_LOG`,
//! its stderr read line by line): upstream connect and TLS errors at WARN, at most one per
//! server per interval; etcd unreachable at start with no snapshot file; a refused
//! `POST /api/v1/reload`; an etcd prefix that is empty at its first listing.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Etcd, Upstream, dead_port, free_port, try_get, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A `switchyard run` at the default log level, its stderr collected by a thread.
struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
    admin: SocketAddr,
}

impl Logged {
    /// Writes `config` (with `{admin}` filled in) and runs it; waits for the admin server.
    async fn start(tag: &str, config: &str) -> Logged {
        let dir =
            std::env::temp_dir().join(format!("switchyard-warn-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let path = dir.join("sy.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.replace("{admin}", &admin.to_string()).as_bytes())
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let logged = Logged {
            child,
            lines,
            dir,
            admin,
        };
        wait_until("admin server", Duration::from_secs(10), || async move {
            try_get(admin, "/healthz").await.is_ok()
        })
        .await;
        logged
    }

    /// The WARN lines that contain every one of `needles`.
    fn warns(&self, needles: &[&str]) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" WARN ") && needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    async fn wait_warn(&self, needles: &[&str]) -> String {
        let what = format!("a WARN line with {needles:?}");
        wait_until(&what, Duration::from_secs(10), || async {
            !self.warns(needles).is_empty()
        })
        .await;
        self.warns(needles).remove(0)
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn frontend(bind: SocketAddr, backend: &str) -> String {
    format!("[[frontend]]\nname = \"web\"\nbind = \"{bind}\"\nbackend = \"{backend}\"\n")
}

async fn status_of(addr: SocketAddr) -> u16 {
    match try_get(addr, "/").await {
        Ok((s, _)) => s,
        Err(e) => panic!("{addr}: {e}"),
    }
}

#[tokio::test]
async fn upstream_connect_and_tls_errors_warn_once_per_server_per_interval() {
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dead = format!("127.0.0.1:{}", dead_port());
    // A plain HTTP server behind [backend.tls]: the handshake fails.
    let plain = Upstream::start("plain").await;
    let config = format!(
        "[admin]\nlisten = \"{{admin}}\"\n{}\
         [[frontend.route]]\npath_prefix = \"/tls/\"\nbackend = \"tls\"\n\
         [[backend]]\nname = \"dead\"\nservers = [\"{dead}\"]\nretries = 0\n[backend.check]\ntype = \"none\"\n\
         [[backend]]\nname = \"tls\"\nservers = [\"{}\"]\nretries = 0\n[backend.check]\ntype = \"none\"\n[backend.tls]\nverify = false\n",
        frontend(web, "dead"),
        plain.addr()
    );
    let lb = Logged::start("connect", &config).await;
    // 502: the one server could not be reached (connect, or the TLS handshake).
    for _ in 0..5 {
        assert_eq!(status_of(web).await, 502);
        assert_eq!(try_get(web, "/tls/x").await.unwrap().0, 502);
    }
    let line = lb
        .wait_warn(&[
            "upstream connect failed",
            "backend=dead",
            &format!("server={dead}"),
        ])
        .await;
    assert!(line.contains("tls=false"), "{line}");
    let line = lb
        .wait_warn(&["upstream connect failed", "backend=tls", "tls=true"])
        .await;
    assert!(line.contains("error="), "{line}");
    // Ten failures each, one line each: the rest are held back for the next interval.
    assert_eq!(
        lb.warns(&["upstream connect failed", "backend=dead"]).len(),
        1,
        "{}",
        lb.all()
    );
    assert_eq!(
        lb.warns(&["upstream connect failed", "backend=tls"]).len(),
        1,
        "{}",
        lb.all()
    );
    assert_eq!(plain.hits(), 0);
}

#[tokio::test]
async fn etcd_unreachable_at_start_warns_with_the_endpoints_rate_limited() {
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", dead_port());
    let config = format!(
        "[admin]\nlisten = \"{{admin}}\"\n[etcd]\nendpoints = [\"{endpoint}\"]\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n{}\
         [[backend]]\nname = \"svc\"\netcd_prefix = \"/svc\"\n",
        frontend(web, "svc")
    );
    let lb = Logged::start("etcd", &config).await;
    let line = lb
        .wait_warn(&["etcd unreachable at start", &endpoint])
        .await;
    assert!(line.contains("watch=svc"), "{line}");
    // Retries every 200 ms at most; still one line until the interval has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lb.warns(&["etcd unreachable at start"]).len(),
        1,
        "{}",
        lb.all()
    );
}

#[tokio::test]
async fn refused_reloads_are_warned() {
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let up = Upstream::start("A").await;
    let token = "0123456789abcdef0123";
    let config = format!(
        "[admin]\nlisten = \"{{admin}}\"\ntoken = \"{token}\"\n{}\
         [[backend]]\nname = \"b\"\nservers = [\"{}\"]\n",
        frontend(web, "b"),
        up.addr()
    );
    let lb = Logged::start("reload", &config).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/reload", lb.admin);
    let r = client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let line = lb
        .wait_warn(&["admin POST refused: no bearer token", "/api/v1/reload"])
        .await;
    assert!(line.contains("status=401"), "{line}");
    let r = client
        .post(&url)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A bad config: refused with the key, logged at WARN, the running config stays.
    std::fs::write(lb.dir.join("sy.toml"), "[[frontend]]\nname = 1\n").unwrap();
    let r = client.post(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let line = lb.wait_warn(&["POST /api/v1/reload refused"]).await;
    assert!(line.contains("sy.toml"), "{line}");
    assert_eq!(status_of(web).await, 200);
}

#[tokio::test]
async fn an_empty_prefix_at_the_first_listing_is_warned() {
    let etcd = Etcd::start().await;
    etcd.put("/full/1", &format!("127.0.0.1:{}", dead_port()))
        .await;
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nlisten = \"{{admin}}\"\n[etcd]\nendpoints = [\"{}\"]\n{}\
         [[frontend.route]]\npath_prefix = \"/full/\"\nbackend = \"full\"\n\
         [[backend]]\nname = \"empty\"\netcd_prefix = \"/nothing/here\"\n\
         [[backend]]\nname = \"full\"\netcd_prefix = \"/full\"\n",
        etcd.url(),
        frontend(web, "empty")
    );
    let lb = Logged::start("empty", &config).await;
    let admin = lb.admin;
    wait_until("readyz", Duration::from_secs(10), || async move {
        matches!(try_get(admin, "/readyz").await, Ok((200, _)))
    })
    .await;
    let line = lb.wait_warn(&["etcd prefix is empty"]).await;
    assert!(
        line.contains("watch=empty") && line.contains("prefix=/nothing/here"),
        "{line}"
    );
    assert_eq!(lb.warns(&["etcd prefix is empty"]).len(), 1, "{}", lb.all());
}
