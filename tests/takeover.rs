//! Zero-downtime upgrades with the real binary: `switchyard run --takeover SOCKET` started from
//! a copy of the binary at another path (as a package upgrade would) takes the listening sockets
//! of the running process while clients keep sending requests, on keep-alive connections and
//! one request per connection; a failed takeover (bad config, no socket, another protocol
//! version, a bind that fails) leaves the running process serving; a takeover with another
//! config binds what it adds; and systemd socket activation (`systemd-socket-activate`, the
//! tool systemd ships) hands Switchyard its listening socket and hears `READY=1`.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{Upstream, free_port, try_get, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// How long the slow upstream path takes to answer.
const SLOW: Duration = Duration::from_millis(1500);

/// A Switchyard child process, its stderr in a file; killed (by its PID) if the test ends first.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit on its own.
    async fn exited_within(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < end,
                "process still running after {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh temp dir for one test, with a copy of the binary in it (`switchyard-next`): the
/// "new version" of an upgrade runs from another file than the old one.
fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("switchyard-takeover-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let next = dir.join("switchyard-next");
    std::fs::copy(BIN, &next).unwrap();
    (dir, next)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

/// The config: frontend `web` (and `extra` frontends: name, port, mode) to the upstream.
fn config(dir: &Path, admin: u16, web: u16, up: SocketAddr, extra: &[(&str, u16, &str)]) -> String {
    let mut s = format!(
        r#"[global]
shutdown_grace = "10s"
upgrade_socket = "{sock}"
[admin]
listen = "127.0.0.1:{admin}"
[[frontend]]
name = "web"
bind = "127.0.0.1:{web}"
backend = "app"
"#,
        sock = dir.join("upgrade.sock").display()
    );
    for (name, port, mode) in extra {
        s.push_str(&format!(
            "[[frontend]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\nmode = \"{mode}\"\nbackend = \"app\"\n"
        ));
    }
    s.push_str(&format!(
        "[[backend]]\nname = \"app\"\nservers = [\"{up}\"]\n[backend.check]\ntype = \"none\"\n"
    ));
    s
}

/// An upstream answering `app`, after `SLOW` on `/slow`.
async fn upstream() -> Upstream {
    Upstream::start_with("app", |req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(SLOW).await;
        }
        Response::new(Full::new(Bytes::from("app")))
    })
    .await
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn run(bin: &Path, cfg: &Path, takeover: Option<&Path>, log: PathBuf) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("-c").arg(cfg);
    if let Some(sock) = takeover {
        cmd.arg("--takeover").arg(sock);
    }
    Proc::spawn(&mut cmd, log)
}

async fn wait_ready(admin: u16) {
    wait_until("readyz", Duration::from_secs(10), || async move {
        matches!(try_get(addr(admin), "/readyz").await, Ok((200, _)))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 clients, so that no client library retries a failed request behind our back.

/// One response off `s` (`buf` holds bytes read past the last one): its status, body, and
/// whether it says `Connection: close`.
async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, String, bool), String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) => return Err(format!("closed after {} bytes of a response", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no content-length: {head:?}"))?;
    let close = head
        .lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"));
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) => return Err("closed in a response body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    Ok((status, body, close))
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
}

/// Bound on one request of the load (a failure if it takes longer).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Requests `GET /` on `target` until `stop` (checked between requests): with `keep_alive`,
/// many per connection (reconnecting when told `Connection: close`), else one per connection.
async fn load(
    target: SocketAddr,
    keep_alive: bool,
    stop: Arc<tokio::sync::Notify>,
    tally: Arc<Mutex<Tally>>,
) {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = Arc::clone(&stopped);
    let watcher = tokio::spawn(async move {
        stop.notified().await;
        s2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let is_stopped = || stopped.load(std::sync::atomic::Ordering::SeqCst);
    let req: &[u8] = if keep_alive {
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    };
    'connections: while !is_stopped() {
        let mut s = match TcpStream::connect(target).await {
            Ok(s) => s,
            Err(e) => {
                tally.lock().unwrap().failures.push(format!("connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut buf = Vec::new();
        loop {
            let one = async {
                s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
                read_response(&mut s, &mut buf).await
            };
            let r = tokio::time::timeout(REQUEST_DEADLINE, one)
                .await
                .unwrap_or_else(|_| Err("no response in time".into()));
            let mut t = tally.lock().unwrap();
            match r {
                Ok((200, body, close)) if body == "app" => {
                    t.ok += 1;
                    if close || !keep_alive || is_stopped() {
                        continue 'connections;
                    }
                }
                Ok((status, body, _)) => {
                    t.failures.push(format!("status {status}: {body}"));
                    continue 'connections;
                }
                Err(e) => {
                    t.failures.push(format!("keep_alive={keep_alive}: {e}"));
                    continue 'connections;
                }
            }
        }
    }
    watcher.abort();
}

/// One `GET path` on its own connection: the status and body.
async fn get_once(target: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let (status, body, _) = tokio::time::timeout(REQUEST_DEADLINE, read_response(&mut s, &mut buf))
        .await
        .map_err(|_| "no response in time".to_string())??;
    Ok((status, body))
}

/// Starts `keep_alive` keep-alive and `one_shot` one-request-per-connection clients on `target`.
fn start_load(
    target: SocketAddr,
    keep_alive: usize,
    one_shot: usize,
) -> (
    Arc<tokio::sync::Notify>,
    Arc<Mutex<Tally>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks = (0..keep_alive + one_shot)
        .map(|i| {
            tokio::spawn(load(
                target,
                i < keep_alive,
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();
    (stop, tally, tasks)
}

async fn stop_load(
    stop: Arc<tokio::sync::Notify>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> Tally {
    stop.notify_waiters();
    for t in tasks {
        tokio::time::timeout(REQUEST_DEADLINE + Duration::from_secs(2), t)
            .await
            .expect("load client ends")
            .unwrap();
    }
    std::mem::take(&mut *tally.lock().unwrap())
}

// ---------------------------------------------------------------------------------------------

/// Under load on keep-alive and one-request connections (to an http frontend, and through a
/// tcp-mode one), the binary is upgraded twice (a copy at another path, then the original
/// again): no connection is refused and no request fails; a slow request started before the
/// first upgrade is answered `200` by the old process, which then exits 0; each new process
/// serves and is itself taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_nothing_and_fails_nothing() {
    let up = upstream().await;
    let (dir, next) = setup("load");
    let (admin, web, relay) = (free_port(), free_port(), free_port());
    let cfg = write(
        &dir,
        "sy.toml",
        &config(&dir, admin, web, up.addr(), &[("relay", relay, "tcp")]),
    );
    let sock = dir.join("upgrade.sock");
    let mut old = run(Path::new(BIN), &cfg, None, dir.join("old.log"));
    wait_ready(admin).await;
    wait_until("upgrade socket", Duration::from_secs(5), || {
        let exists = sock.exists();
        async move { exists }
    })
    .await;

    let (stop, tally, tasks) = start_load(addr(web), 2, 2);
    // Through the tcp frontend one request per connection: a relay lives as long as its client
    // keeps the connection, and one still open at the end of `shutdown_grace` is cut (Switchyard
    // cannot end a byte stream gracefully, as it ends an HTTP connection after an answer).
    let (relay_stop, relay_tally, relay_tasks) = start_load(addr(relay), 0, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow = tokio::spawn(get_once(addr(web), "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // First upgrade: the copy takes over from the original.
    let mut new = run(&next, &cfg, Some(&sock), dir.join("new.log"));
    let status = old.exited_within(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "old exit {status:?}; its log:\n{}",
        old.log()
    );
    assert_eq!(
        slow.await.unwrap(),
        Ok((200, "app".to_string())),
        "the slow request in flight at the upgrade"
    );
    assert!(new.running(), "new process died; its log:\n{}", new.log());
    let log = old.log();
    assert!(log.contains("taken over"), "{log}");
    assert!(new.log().contains("takeover done"), "{}", new.log());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Second upgrade: the new process can itself be taken over (it listens on the socket now).
    wait_until("upgrade socket again", Duration::from_secs(5), || {
        let exists = sock.exists();
        async move { exists }
    })
    .await;
    let mut third = run(Path::new(BIN), &cfg, Some(&sock), dir.join("third.log"));
    let status = new.exited_within(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "second exit {status:?}; its log:\n{}",
        new.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = stop_load(stop, tally, tasks).await;
    let r = stop_load(relay_stop, relay_tally, relay_tasks).await;
    assert!(
        third.running(),
        "third process died; its log:\n{}",
        third.log()
    );
    for (what, t) in [("http", t), ("tcp", r)] {
        assert!(
            t.failures.is_empty(),
            "{what}: {} of {} requests failed: {:?}",
            t.failures.len(),
            t.ok + t.failures.len(),
            &t.failures[..t.failures.len().min(10)]
        );
        assert!(t.ok > 50, "{what}: only {} requests made", t.ok);
    }
    // The admin listener went along too.
    assert_eq!(try_get(addr(admin), "/healthz").await.unwrap().0, 200);
    third.signal("-TERM");
    assert!(third.exited_within(Duration::from_secs(15)).await.success());
    assert!(
        !sock.exists(),
        "the upgrade socket's file is removed at exit"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Failed takeovers leave the running process serving, and the new process exits non-zero
/// with a message: a bad config (1), no upgrade socket (2), a frontend that cannot be bound
/// (2); another protocol version is refused with a message saying so. A good takeover still
/// works after all of them.
#[tokio::test]
async fn a_failed_takeover_leaves_the_old_process_serving() {
    let up = upstream().await;
    let (dir, next) = setup("fail");
    let (admin, web) = (free_port(), free_port());
    let cfg = write(&dir, "sy.toml", &config(&dir, admin, web, up.addr(), &[]));
    let sock = dir.join("upgrade.sock");
    let mut old = run(Path::new(BIN), &cfg, None, dir.join("old.log"));
    wait_ready(admin).await;
    wait_until("upgrade socket", Duration::from_secs(5), || {
        let exists = sock.exists();
        async move { exists }
    })
    .await;
    let serving = || async { get_once(addr(web), "/").await };

    // A bad config: exit 1, naming the key; the old process is not even contacted.
    let bad = write(&dir, "bad.toml", "[global]\nupgrade_sokcet = \"/x\"\n");
    let mut p = run(&next, &bad, Some(&sock), dir.join("bad.log"));
    assert_eq!(
        p.exited_within(Duration::from_secs(10)).await.code(),
        Some(1)
    );
    assert!(p.log().contains("upgrade_sokcet"), "{}", p.log());
    assert_eq!(serving().await, Ok((200, "app".to_string())));

    // No process at that socket: exit 2.
    let mut p = run(
        &next,
        &cfg,
        Some(&dir.join("nobody.sock")),
        dir.join("nobody.log"),
    );
    assert_eq!(
        p.exited_within(Duration::from_secs(10)).await.code(),
        Some(2)
    );
    assert!(p.log().contains("cannot connect"), "{}", p.log());

    // Another protocol version: refused, with the versions named.
    let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
    c.write_all(b"{\"type\":\"hello\",\"version\":99}\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.contains("\"refused\"") && answer.contains("version 1") && answer.contains("99"),
        "{answer}"
    );
    assert_eq!(serving().await, Ok((200, "app".to_string())));

    // An added frontend whose port is taken: the new process cannot bind it and exits 2
    // before telling the old one anything.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let clash = write(
        &dir,
        "clash.toml",
        &config(&dir, admin, web, up.addr(), &[("api", taken_port, "http")]),
    );
    let mut p = run(&next, &clash, Some(&sock), dir.join("clash.log"));
    assert_eq!(
        p.exited_within(Duration::from_secs(10)).await.code(),
        Some(2)
    );
    assert!(
        p.log().contains("frontend \"api\"") && p.log().contains("keeps serving"),
        "{}",
        p.log()
    );
    drop(taken);
    assert!(old.running(), "old process died; its log:\n{}", old.log());
    assert_eq!(serving().await, Ok((200, "app".to_string())));
    let log = old.log();
    assert!(log.contains("takeover failed"), "{log}");

    // And a good takeover still goes through.
    let mut new = run(&next, &cfg, Some(&sock), dir.join("new.log"));
    assert!(old.exited_within(Duration::from_secs(15)).await.success());
    assert_eq!(serving().await, Ok((200, "app".to_string())));
    assert!(new.running(), "{}", new.log());
    std::fs::remove_dir_all(&dir).ok();
}

/// The new process's side of a failed handshake: a running process that speaks another protocol
/// version, or refuses, makes `--takeover` exit 2 with the reason, binding nothing. One that
/// hands over no socket, hears `serving`, but never says `stopped` and still listens on its
/// upgrade socket keeps serving, so the new process stops and exits 2; if it is gone, the new
/// one serves on. (The running process here is the test, answering on a Unix socket.)
#[tokio::test]
async fn the_new_process_exits_2_when_the_old_one_refuses_or_does_not_stop() {
    let up = upstream().await;
    let (dir, next) = setup("skew");
    let (admin, web) = (free_port(), free_port());
    let cfg = write(&dir, "sy.toml", &config(&dir, admin, web, up.addr(), &[]));
    let fake = dir.join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&fake).unwrap();
    let answers = [
        (
            "{\"type\":\"listeners\",\"version\":2,\"listeners\":[]}\n",
            "running process speaks version 2, this binary 1",
        ),
        (
            "{\"type\":\"refused\",\"message\":\"not today\"}\n",
            "refused the takeover: not today",
        ),
    ];
    for (i, (answer, expect)) in answers.into_iter().enumerate() {
        let mut p = run(&next, &cfg, Some(&fake), dir.join(format!("new{i}.log")));
        let (mut c, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the new process connects")
            .unwrap();
        let mut hello = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut hello))
            .await
            .unwrap()
            .unwrap();
        let hello = String::from_utf8_lossy(&hello[..n]).into_owned();
        assert_eq!(hello, "{\"type\":\"hello\",\"version\":1}\n");
        c.write_all(answer.as_bytes()).await.unwrap();
        assert_eq!(
            p.exited_within(Duration::from_secs(10)).await.code(),
            Some(2)
        );
        let log = p.log();
        assert!(
            log.contains(expect) && log.contains("keeps serving"),
            "{log}"
        );
        assert!(get_once(addr(web), "/").await.is_err(), "nothing was bound");
    }

    // No sockets handed over (the new process binds its own), then silence after `serving`.
    let no_sockets = "{\"type\":\"listeners\",\"version\":1,\"listeners\":[]}\n";
    for old_still_listens in [true, false] {
        let mut p = run(&next, &cfg, Some(&fake), dir.join("silent.log"));
        let (mut c, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the new process connects")
            .unwrap();
        let mut buf = vec![0u8; 256];
        let _ = c.read(&mut buf).await.unwrap();
        c.write_all(no_sockets.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("serving")
            .unwrap();
        assert_eq!(&buf[..n], b"{\"type\":\"serving\"}\n");
        assert_eq!(get_once(addr(web), "/").await, Ok((200, "app".to_string())));
        if old_still_listens {
            drop(c);
            assert_eq!(
                p.exited_within(Duration::from_secs(15)).await.code(),
                Some(2)
            );
            assert!(
                p.log().contains("it keeps serving, this process stops"),
                "{}",
                p.log()
            );
            // Its probe: whether the old process still listens.
            let probe = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
            assert!(
                probe.is_ok_and(|p| p.is_ok()),
                "the new process probed the socket"
            );
        } else {
            drop(listener);
            std::fs::remove_file(&fake).unwrap();
            drop(c);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(p.running(), "{}", p.log());
            assert_eq!(get_once(addr(web), "/").await, Ok((200, "app".to_string())));
            p.signal("-TERM");
            assert!(p.exited_within(Duration::from_secs(15)).await.success());
            break;
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A takeover with another config: the frontend it adds is bound fresh, the one it keeps is
/// inherited, and a moved admin listener is bound at its new address (the old one closes with
/// the old process). The new config also switches to one runtime per thread.
#[tokio::test]
async fn a_takeover_with_a_changed_config_binds_what_changed() {
    let up = upstream().await;
    let (dir, next) = setup("change");
    let (admin, web, api, admin2) = (free_port(), free_port(), free_port(), free_port());
    let cfg = write(&dir, "sy.toml", &config(&dir, admin, web, up.addr(), &[]));
    let sock = dir.join("upgrade.sock");
    let mut old = run(Path::new(BIN), &cfg, None, dir.join("old.log"));
    wait_ready(admin).await;
    wait_until("upgrade socket", Duration::from_secs(5), || {
        let exists = sock.exists();
        async move { exists }
    })
    .await;
    assert!(
        get_once(addr(api), "/").await.is_err(),
        "api is not bound yet"
    );

    let cfg2 = write(
        &dir,
        "sy2.toml",
        // The new process also runs one runtime per thread (each accepting on every frontend).
        &config(&dir, admin2, web, up.addr(), &[("api", api, "http")]).replacen(
            "[global]\n",
            "[global]\nwork_stealing = false\nthreads = 2\n",
            1,
        ),
    );
    let new = run(&next, &cfg2, Some(&sock), dir.join("new.log"));
    assert!(old.exited_within(Duration::from_secs(15)).await.success());
    assert_eq!(get_once(addr(web), "/").await, Ok((200, "app".to_string())));
    assert_eq!(get_once(addr(api), "/").await, Ok((200, "app".to_string())));
    wait_ready(admin2).await;
    assert!(
        try_get(addr(admin), "/healthz").await.is_err(),
        "the old admin address closed with the old process"
    );
    let log = new.log();
    assert!(
        log.contains("listening socket inherited frontend=web"),
        "{log}"
    );
    assert!(
        !log.contains("listening socket inherited frontend=api"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// systemd socket activation, with the tool systemd ships for it: `systemd-socket-activate`
/// binds the port, waits for the first client, then execs Switchyard with the socket as fd 3
/// (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES=web`). The client that connected before
/// Switchyard ran is answered; Switchyard tells `NOTIFY_SOCKET` `READY=1`, and `STOPPING=1`
/// on SIGTERM.
#[tokio::test]
async fn socket_activation_serves_the_socket_systemd_passed() {
    let up = upstream().await;
    let (dir, _) = setup("systemd");
    let (admin, web) = (free_port(), free_port());
    let cfg = write(&dir, "sy.toml", &config(&dir, admin, web, up.addr(), &[]));
    let notify_path = dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{web}"))
        .arg("--fdname=web")
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg(BIN)
        .arg("run")
        .arg("-c")
        .arg(&cfg);
    let mut p = Proc::spawn(&mut cmd, dir.join("sy.log"));
    // The activator listens first; Switchyard starts on the first connection.
    let target = addr(web);
    wait_until(
        "the activator listens",
        Duration::from_secs(5),
        || async move { TcpStream::connect(target).await.is_ok() },
    )
    .await;
    assert_eq!(get_once(addr(web), "/").await, Ok((200, "app".to_string())));
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), notify.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    let log = p.log();
    assert!(
        log.contains("listening socket inherited frontend=web"),
        "{log}"
    );
    wait_ready(admin).await;
    p.signal("-TERM");
    let n = tokio::time::timeout(Duration::from_secs(10), notify.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert!(p.exited_within(Duration::from_secs(15)).await.success());
    std::fs::remove_dir_all(&dir).ok();
}
