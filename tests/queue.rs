//! Server queues (`max_conns_per_server`, `queue_timeout`): requests beyond every server's limit
//! wait FIFO for the first slot on any server, get a `503` naming the backend at the timeout,
//! and leave the queue when their client does; over HTTP/1.1 and HTTP/2, for tcp-mode
//! connections, across a reload and in the services of an etcd service tree, with the queue on
//! `/metrics`, in `/api/v1/backends` and in the access log. The upstreams are real servers that
//! hold each request until the test lets it go, so the slots in use are the test's to choose.
//! (Backend names differ per test: the metrics recorder is the process's.)

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Response;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use support::config::{self, Cfg};
use support::stream::get_a;
use support::{Lb, Upstream, h2c, http_client, metric, wait_until};

/// A request that reached an upstream: its path, and the switch that lets it be answered.
struct Held {
    path: String,
    release: oneshot::Sender<()>,
}

impl Held {
    fn go(self) -> String {
        let _ = self.release.send(());
        self.path
    }
}

/// An upstream that answers each request (body: its path) only once the test releases it;
/// every request that arrives is reported on `arrived`.
async fn holding(name: &str, arrived: mpsc::UnboundedSender<Held>) -> Upstream {
    Upstream::start_with(name, move |req| {
        let arrived = arrived.clone();
        async move {
            let path = req.uri().path().to_string();
            let (release, rx) = oneshot::channel();
            let _ = arrived.send(Held {
                path: path.clone(),
                release,
            });
            let _ = tokio::time::timeout(Duration::from_secs(20), rx).await;
            Response::new(Full::new(Bytes::from(path)))
        }
    })
    .await
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Held>) -> Held {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a request reached an upstream in time")
        .expect("the upstreams are running")
}

/// Nothing more reaches the upstreams for a while (the queue holds it).
async fn none_arrives(rx: &mut mpsc::UnboundedReceiver<Held>, why: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(h) = rx.try_recv() {
        panic!("{} reached an upstream: {why}", h.path);
    }
}

fn queue_toml(backend: &str, servers: &[SocketAddr], lines: &str) -> String {
    Cfg::http("web")
        .backend(backend)
        .servers(servers)
        .backend_lines(lines)
        .check_none()
        .toml()
}

async fn depth(lb: &Lb, backend: &str) -> f64 {
    metric(
        &lb.metrics().await,
        &format!("switchyard_queue_depth{{backend=\"{backend}\"}}"),
    )
}

async fn wait_depth(lb: &Lb, backend: &str, want: f64) {
    wait_until(
        &format!("queue depth {want} for {backend}"),
        Duration::from_secs(5),
        || async move { depth(lb, backend).await == want },
    )
    .await;
}

/// GETs `path` in a task of its own: (status, body).
fn spawn_get(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<(u16, String)> {
    let url = format!("http://{addr}{path}");
    tokio::spawn(async move {
        let r = http_client().get(&url).send().await.expect("an answer");
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[tokio::test]
async fn two_servers_one_slot_each_the_third_waits_and_waiters_go_in_order() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = holding("a", tx.clone()).await;
    let b = holding("b", tx).await;
    let toml = queue_toml(
        "qfifo",
        &[a.addr(), b.addr()],
        "max_conns_per_server = 1\nqueue_timeout = \"20s\"",
    );
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");

    let mut answers = vec![spawn_get(web, "/1"), spawn_get(web, "/2")];
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    // Both servers busy: the next three queue, in the order they came.
    for (i, path) in ["/3", "/4", "/5"].iter().enumerate() {
        answers.push(spawn_get(web, path));
        wait_depth(&lb, "qfifo", i as f64 + 1.0).await;
    }
    none_arrives(&mut rx, "both servers are at max_conns_per_server = 1").await;

    // The stats API shows the queue and each server's slots (HAProxy's Cur/Max, Cur/Limit).
    let backends = lb.backends().await;
    let q = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "qfifo")
        .unwrap();
    assert_eq!(q["queue"]["current"], 3, "{q}");
    assert_eq!(q["queue"]["max"], 3, "{q}");
    assert_eq!(q["queue"]["max_conns_per_server"], 1, "{q}");
    for s in q["servers"].as_array().unwrap() {
        assert_eq!(
            (s["active"].as_u64(), s["limit"].as_u64()),
            (Some(1), Some(1))
        );
    }

    // Each slot that frees goes to the oldest waiter, whichever server it is on.
    first.go();
    let third = next(&mut rx).await;
    assert_eq!(third.path, "/3");
    none_arrives(&mut rx, "one slot freed, one waiter served").await;
    second.go();
    let fourth = next(&mut rx).await;
    assert_eq!(fourth.path, "/4");
    third.go();
    let fifth = next(&mut rx).await;
    assert_eq!(fifth.path, "/5");
    wait_depth(&lb, "qfifo", 0.0).await;
    fourth.go();
    fifth.go();
    for (i, h) in answers.into_iter().enumerate() {
        let (code, body) = h.await.unwrap();
        assert_eq!((code, body), (200, format!("/{}", i + 1)));
    }
    let text = lb.metrics().await;
    assert_eq!(
        metric(
            &text,
            "switchyard_queue_wait_seconds_count{backend=\"qfifo\"}"
        ),
        3.0,
        "three requests waited"
    );
    drop((a, b));
}

#[tokio::test]
async fn a_request_that_waits_past_queue_timeout_gets_503_naming_the_backend() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = holding("a", tx).await;
    let dir = std::env::temp_dir().join(format!("switchyard-queue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("access.log");
    let _ = std::fs::remove_file(&file);
    let toml = Cfg::new()
        .table(&format!(
            "[log]\naccess = \"json\"\naccess_file = {}",
            config::path(&file)
        ))
        .frontend("web")
        .backend("qtimeout")
        .servers(&[a.addr()])
        .backend_lines("max_conns_per_server = 1\nqueue_timeout = \"400ms\"")
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    let busy = spawn_get(web, "/busy");
    let held = next(&mut rx).await;
    let start = Instant::now();
    let r = http_client()
        .get(format!("http://{web}/late"))
        .send()
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("backend qtimeout") && body.contains("queue_timeout"),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );
    assert_eq!(depth(&lb, "qtimeout").await, 0.0);
    held.go();
    assert_eq!(busy.await.unwrap(), (200, "/busy".to_string()));
    // The access log says how it ended; the backend's stats count it.
    wait_until("the 503's log line", Duration::from_secs(5), || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"termination\":\"queue_timeout\"") && l.contains("/late"))
        }
    })
    .await;
    let backends = lb.backends().await;
    let q = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "qtimeout")
        .unwrap()
        .clone();
    assert_eq!(q["stats"]["errors"]["queue_timeout"], 1, "{q}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_that_leaves_while_queued_frees_its_place() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = holding("a", tx).await;
    let toml = queue_toml(
        "qleave",
        &[a.addr()],
        "max_conns_per_server = 1\nqueue_timeout = \"20s\"",
    );
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    let busy = spawn_get(web, "/busy");
    let held = next(&mut rx).await;

    let mut gone = TcpStream::connect(web).await.unwrap();
    gone.write_all(b"GET /gone HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_depth(&lb, "qleave", 1.0).await;
    drop(gone);
    wait_depth(&lb, "qleave", 0.0).await;

    // The slot was not leaked: once the busy request ends, the next one is served.
    held.go();
    assert_eq!(busy.await.unwrap(), (200, "/busy".to_string()));
    let after = spawn_get(web, "/after");
    let h = next(&mut rx).await;
    assert_eq!(
        h.path, "/after",
        "the request that left never reached the server"
    );
    h.go();
    assert_eq!(after.await.unwrap(), (200, "/after".to_string()));
}

#[tokio::test]
async fn http2_streams_queue_and_a_reset_stream_leaves_the_queue() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = holding("a", tx).await;
    let toml = queue_toml(
        "qh2",
        &[a.addr()],
        "max_conns_per_server = 1\nqueue_timeout = \"20s\"",
    );
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    let mut sender = h2c::<Empty<Bytes>>(web).await;
    let get = |path: &str| {
        hyper::Request::builder()
            .uri(format!("http://x{path}"))
            .body(Empty::new())
            .unwrap()
    };
    let first = tokio::spawn(sender.send_request(get("/1")));
    let held = next(&mut rx).await;
    assert_eq!(held.path, "/1");
    // A stream that queues and is then reset by the client.
    let reset = tokio::spawn(sender.send_request(get("/reset")));
    wait_depth(&lb, "qh2", 1.0).await;
    reset.abort();
    wait_depth(&lb, "qh2", 0.0).await;
    // One that queues and is served when the first ends.
    let second = tokio::spawn(sender.send_request(get("/2")));
    wait_depth(&lb, "qh2", 1.0).await;
    none_arrives(&mut rx, "the one slot is taken").await;
    held.go();
    let h = next(&mut rx).await;
    assert_eq!(h.path, "/2");
    h.go();
    for (resp, want) in [(first, "/1"), (second, "/2")] {
        let resp = resp.await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want);
    }
    wait_depth(&lb, "qh2", 0.0).await;
}

#[tokio::test]
async fn the_queue_metrics_exist_at_zero_for_limited_backends_only() {
    let a = Upstream::start("a").await;
    let toml = Cfg::http("web")
        .backend("qzero")
        .servers(&[a.addr()])
        .backend_lines("max_conns_per_server = 10")
        .check_none()
        .frontend("other")
        .backend("qnone")
        .servers(&[a.addr()])
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let text = lb.metrics().await;
    for line in [
        "switchyard_queue_depth{backend=\"qzero\"} 0",
        "switchyard_queue_wait_seconds_count{backend=\"qzero\"} 0",
        "# TYPE switchyard_queue_depth gauge",
        "# TYPE switchyard_queue_wait_seconds histogram",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains("switchyard_queue_depth{backend=\"qnone\"}"),
        "{text}"
    );
    // Requests below the limit do not wait.
    let r = http_client()
        .get(format!("http://{}/", lb.http_addr("web")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        metric(
            &lb.metrics().await,
            "switchyard_queue_wait_seconds_count{backend=\"qzero\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_server_added_while_requests_wait_takes_them_without_a_release() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = holding("a", tx.clone()).await;
    let b = holding("b", tx).await;
    let lines = "max_conns_per_server = 1\nqueue_timeout = \"20s\"";
    let lb = Lb::start_ready(&queue_toml("qgrow", &[a.addr()], lines)).await;
    let web = lb.http_addr("web");
    let busy = spawn_get(web, "/busy");
    let held = next(&mut rx).await;
    let waiting = spawn_get(web, "/waiting");
    wait_depth(&lb, "qgrow", 1.0).await;
    // The queue is the backend's, kept across the reload; the new server's slot is found by
    // the waiting request although nothing ended on the first server.
    lb.reload_toml(&queue_toml("qgrow", &[a.addr(), b.addr()], lines))
        .await;
    let h = next(&mut rx).await;
    assert_eq!(h.path, "/waiting");
    wait_depth(&lb, "qgrow", 0.0).await;
    h.go();
    assert_eq!(waiting.await.unwrap(), (200, "/waiting".to_string()));
    held.go();
    assert_eq!(busy.await.unwrap(), (200, "/busy".to_string()));
}

/// GETs `path` with `Host: host` in a task of its own: (status, body).
fn spawn_get_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> tokio::task::JoinHandle<(u16, String)> {
    let (url, host) = (format!("http://{addr}{path}"), host.to_string());
    tokio::spawn(async move {
        let r = http_client()
            .get(&url)
            .header("host", host)
            .send()
            .await
            .expect("an answer");
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[tokio::test]
async fn each_service_of_a_tree_has_its_own_queue_and_a_discovered_server_drains_it() {
    let etcd = support::Etcd::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (a, a2, b) = (
        holding("a", tx.clone()).await,
        holding("a2", tx.clone()).await,
        holding("b", tx).await,
    );
    let toml = Cfg::http("web")
        .no_fallback()
        .etcd(&etcd.url())
        .backend("qtpl")
        .backend_lines("max_conns_per_server = 1\nqueue_timeout = \"20s\"")
        .check_none()
        .service_tree(
            "frontends = [\"web\"]\ntemplate = \"qtpl\"\netcd_prefix = \"/qsvc\"\nhost = \"{service}.example.com\"",
        )
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let web = lb.http_addr("web");
    etcd.put("/qsvc/qsa/backend/1", &a.addr().to_string()).await;
    etcd.put("/qsvc/qsb/backend/1", &b.addr().to_string()).await;
    wait_until("both services routed", Duration::from_secs(10), || async {
        let text = lb.metrics().await;
        text.contains("switchyard_queue_depth{backend=\"qsa\"} 0")
            && text.contains("switchyard_queue_depth{backend=\"qsb\"} 0")
    })
    .await;

    let busy = spawn_get_host(web, "qsa.example.com", "/busy");
    let held = next(&mut rx).await;
    assert_eq!(held.path, "/busy");
    let waiting = spawn_get_host(web, "qsa.example.com", "/waiting");
    wait_depth(&lb, "qsa", 1.0).await;
    // The other service's server has its own slot: served at once.
    let other = spawn_get_host(web, "qsb.example.com", "/other");
    let h = next(&mut rx).await;
    assert_eq!(h.path, "/other");
    assert_eq!(depth(&lb, "qsb").await, 0.0);
    h.go();
    assert_eq!(other.await.unwrap(), (200, "/other".to_string()));

    // A second server registers for qsa: the waiting request goes to it.
    etcd.put("/qsvc/qsa/backend/2", &a2.addr().to_string())
        .await;
    let h = next(&mut rx).await;
    assert_eq!(h.path, "/waiting");
    wait_depth(&lb, "qsa", 0.0).await;
    h.go();
    held.go();
    assert_eq!(waiting.await.unwrap(), (200, "/waiting".to_string()));
    assert_eq!(busy.await.unwrap(), (200, "/busy".to_string()));
}

#[tokio::test]
async fn a_tcp_connection_holds_its_slot_until_it_closes() {
    let a = Upstream::start("A").await;
    let toml = Cfg::tcp("raw")
        .backend("qtcp")
        .servers(&[a.addr()])
        .backend_lines("max_conns_per_server = 1\nqueue_timeout = \"20s\"")
        .check_none()
        .toml();
    let lb = Lb::start_ready(&toml).await;
    let raw = lb.http_addr("raw");
    let mut first = TcpStream::connect(raw).await.unwrap();
    assert!(get_a(&mut first).await.unwrap().starts_with("HTTP/1.1 200"));
    // The second connection waits for the first one's slot, however idle the first is.
    let second = tokio::spawn(async move {
        let mut s = TcpStream::connect(raw).await.unwrap();
        get_a(&mut s).await
    });
    wait_depth(&lb, "qtcp", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "relayed beyond max_conns_per_server");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the first connection closed")
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(depth(&lb, "qtcp").await, 0.0);
}
