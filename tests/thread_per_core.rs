//! `[global] work_stealing = false`: one current-thread runtime per thread, each accepting on
//! every frontend and serving what it accepted. Run as the real binary with `threads = 2`:
//! both threads serve connections, `maxconn` is one limit for the frontend whichever thread
//! accepts, a reload's new frontend is served, and SIGTERM drains and exits 0.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::stream::get_a;
use support::{Upstream, free_port, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A `switchyard run` of a config written to a temp dir; killed on drop if still running.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Proc {
    fn start(tag: &str, config: &str) -> Proc {
        let dir = std::env::temp_dir().join(format!("switchyard-tpc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sy.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc { child, dir }
    }

    fn rewrite(&self, config: &str) {
        std::fs::write(self.dir.join("sy.toml"), config).unwrap();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// CPU ticks (utime + stime) of each of the process's threads, by thread name.
    fn thread_ticks(&self) -> Vec<(String, u64)> {
        let task = format!("/proc/{}/task", self.child.id());
        let mut out = Vec::new();
        for e in std::fs::read_dir(task).unwrap() {
            let p = e.unwrap().path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(p.join("comm")),
                std::fs::read_to_string(p.join("stat")),
            ) else {
                continue;
            };
            // Fields after the `(comm)`: state is the first, utime and stime the 12th and 13th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            out.push((comm.trim().to_string(), ticks));
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(admin: u16, frontends: &[(&str, u16, &str)], up: SocketAddr) -> String {
    let mut s = format!(
        "[global]\nthreads = 2\nwork_stealing = false\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n"
    );
    for (name, port, extra) in frontends {
        s += &format!(
            "[[frontend]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\nbackend = \"up\"\n{extra}\n\n"
        );
    }
    s += &format!(
        "[[backend]]\nname = \"up\"\nservers = [\"{up}\"]\n[backend.check]\ntype = \"none\"\n"
    );
    s
}

async fn answered(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(mut s) => matches!(
            tokio::time::timeout(Duration::from_secs(2), get_a(&mut s)).await,
            Ok(Ok(a)) if a.starts_with("HTTP/1.1 200")
        ),
        Err(_) => false,
    }
}

#[tokio::test]
async fn both_threads_serve_and_sigterm_drains() {
    let up = Upstream::start("A").await;
    let (admin, web) = (free_port(), free_port());
    let p = Proc::start("serve", &config(admin, &[("web", web, "")], up.addr()));
    let addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    wait_until("the frontend answers", Duration::from_secs(10), || {
        answered(addr)
    })
    .await;

    // 32 keep-alive clients, 300 requests each: every one answered.
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for _ in 0..300 {
                let a = get_a(&mut s).await.unwrap();
                assert!(a.starts_with("HTTP/1.1 200"), "{a}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let threads = p.thread_ticks();
    let worker = threads
        .iter()
        .find(|(name, _)| name.starts_with("switchyard-work"))
        .unwrap_or_else(|| panic!("no worker thread among {threads:?}"));
    // The clients connect in a burst, which the first thread awake would take whole: the
    // accept loops balance it (`Loads::ahead` in src/listener.rs).
    let total: u64 = threads.iter().map(|t| t.1).sum();
    assert!(
        worker.1 * 5 >= total,
        "the worker thread did less than a fifth of the work (CPU ticks by thread: {threads:?})"
    );

    p.signal("-TERM");
    let mut p = p;
    let status = tokio::task::spawn_blocking(move || {
        let s = p.child.wait().unwrap();
        (p, s)
    })
    .await
    .unwrap()
    .1;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn maxconn_is_one_limit_across_threads() {
    let up = Upstream::start("A").await;
    let (admin, web) = (free_port(), free_port());
    let p = Proc::start(
        "maxconn",
        &config(admin, &[("web", web, "maxconn = 2")], up.addr()),
    );
    let addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    wait_until("the frontend answers", Duration::from_secs(10), || {
        answered(addr)
    })
    .await;
    // Wait until the probe connections are closed on the proxy's side too.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Connections beyond the limit wait whichever thread would accept them: with a limit per
    // thread, some of these would be served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get_a(&mut s).await.unwrap().starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        waiting.push(s);
    }
    for s in &mut waiting {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
        assert!(
            r.is_err(),
            "a client beyond maxconn = 2 was answered: {r:?}"
        );
    }
    // One leaves: one waiting client is served.
    drop(held.pop());
    let mut served = 0;
    for s in &mut waiting {
        let mut b = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await
            && b[..n].starts_with(b"HTTP/1.1 200")
        {
            served += 1;
        }
    }
    assert_eq!(served, 1, "one place freed, one waiting client served");
    drop(p);
}

#[tokio::test]
async fn a_reload_adds_a_frontend_every_thread_serves() {
    let up = Upstream::start("A").await;
    let (admin, web, more) = (free_port(), free_port(), free_port());
    let p = Proc::start("reload", &config(admin, &[("web", web, "")], up.addr()));
    let addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    let added: SocketAddr = format!("127.0.0.1:{more}").parse().unwrap();
    wait_until("the frontend answers", Duration::from_secs(10), || {
        answered(addr)
    })
    .await;
    assert!(!answered(added).await);

    p.rewrite(&config(
        admin,
        &[("web", web, ""), ("more", more, "")],
        up.addr(),
    ));
    p.signal("-HUP");
    wait_until(
        "the added frontend answers",
        Duration::from_secs(10),
        || answered(added),
    )
    .await;
    let mut all = Vec::new();
    for _ in 0..20 {
        all.push(tokio::spawn(answered(added)));
    }
    for a in all {
        assert!(
            a.await.unwrap(),
            "the added frontend answers every connection"
        );
    }
    assert!(answered(addr).await, "the kept frontend still answers");
    drop(p);
}
