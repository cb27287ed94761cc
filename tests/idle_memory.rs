//! Memory per idle keep-alive connection (README, "Idle connections"): the built binary, in
//! front of an in-process upstream, holds `CONNS` plain HTTP/1.1 connections that each sent one
//! request, read its answer and then wait. Its RSS (`/proc/PID/status` VmRSS) may grow by at
//! most `MAX_KIB_PER_CONN` per held connection, and once they close, the allocator gives the
//! memory back (`switchyard::memory`): RSS falls to within `MAX_KEPT_KIB_PER_CONN` per
//! connection of where it was before. A test binary of its own, so that nothing else moves the
//! child's RSS. The child is killed by PID and reaped at the end, also when an assertion fails.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use support::{Cfg, Upstream, free_port, try_get_cached, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// Idle connections held at once.
const CONNS: usize = 2_000;
/// Connections opened at once while the held ones are being set up.
const PARALLEL: usize = 100;
/// The ceiling per idle connection, KiB. A debug build measured about 2.5 (the README's
/// release numbers are lower); before buffers were released while idle it was over 15.
const MAX_KIB_PER_CONN: u64 = 6;
/// What may stay allocated per connection after all of them closed, KiB.
const MAX_KEPT_KIB_PER_CONN: u64 = 1;

/// Switchyard as a child process; killed by PID and reaped on drop.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
            eprintln!("--- switchyard stderr ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(upstream: SocketAddr, http: u16, admin: u16) -> Proc {
    let dir = std::env::temp_dir().join(format!("switchyard-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        Cfg::new()
            .table("[global]\nthreads = 2")
            .admin_listen(format!("127.0.0.1:{admin}"))
            .frontend("web")
            .bind(format!("127.0.0.1:{http}"))
            .frontend_lines("maxconn = 10000\nidle_timeout = \"120s\"")
            .backend("b")
            .servers(&[upstream])
            .check_none()
            .toml(),
    )
    .unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = Command::new(BIN)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn switchyard");
    Proc { child, dir }
}

/// A connection that sent one request and read its whole answer, then is left open.
async fn one_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
        // The upstream answers with its name, "up", and a Content-Length.
        if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"up") {
            break;
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    s
}

async fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(PARALLEL) {
        let opened = futures_util::future::join_all(chunk.iter().map(|_| one_request(addr))).await;
        held.extend(opened);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_costs_a_few_kib_and_gives_them_back() {
    timeout(Duration::from_secs(60), async {
        let up = Upstream::start("up").await;
        let (http_port, admin_port) = (free_port(), free_port());
        let proc = start(up.addr(), http_port, admin_port);
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        wait_until("switchyard serves 200", Duration::from_secs(10), || async {
            matches!(try_get_cached(http, "/").await, Ok((200, _)))
        })
        .await;
        // Warm up what every connection shares: the upstream pool, the runtime's slabs.
        drop(hold(http, PARALLEL).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = proc.rss_kib();

        let held = hold(http, CONNS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let with = proc.rss_kib();
        let per_conn = with.saturating_sub(before) as f64 / CONNS as f64;
        drop(held);
        // The allocator collects as soon as a runtime thread goes idle after the closes.
        let mut after = proc.rss_kib();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = proc.rss_kib();
            if after <= before + MAX_KEPT_KIB_PER_CONN * CONNS as u64 {
                break;
            }
        }
        println!(
            "RSS {before} KiB before, {with} KiB with {CONNS} idle connections \
             ({per_conn:.2} KiB each), {after} KiB after they closed"
        );
        assert!(
            per_conn <= MAX_KIB_PER_CONN as f64,
            "{per_conn:.2} KiB per idle connection (ceiling {MAX_KIB_PER_CONN})"
        );
        assert!(
            after <= before + MAX_KEPT_KIB_PER_CONN * CONNS as u64,
            "RSS {after} KiB after the close, {before} KiB before"
        );
    })
    .await
    .expect("the test took over 60 s");
}
