//! Running out of file descriptors (EMFILE on accept): the built binary runs with
//! `ulimit -n 64` (through `bash -c 'ulimit -n 64; exec switchyard run -c FILE'`, so the PID
//! is Switchyard's), in front of an in-process upstream (TCP health checks every 500 ms, which
//! fail too while descriptors are out), with an HTTP and a TCP frontend.
//! The test opens more client connections than the limit allows and keeps them open, then
//! asserts that Switchyard does not spin while accept keeps failing (its CPU time from
//! `/proc/PID/stat` grows by less than 30% of the wall time over 3 s), that it logs the
//! failure ("accept failed" on stderr), that it survives, and that once the connections are
//! closed new clients are served `200` again through both frontends. The process is killed by
//! PID and reaped at the end, also when an assertion fails.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use support::{Cfg, Upstream, free_port, try_get_cached, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const NOFILE: u32 = 64;
/// Client connections held open to each frontend: together well over `NOFILE`.
const HTTP_CLIENTS: usize = 100;
const TCP_CLIENTS: usize = 30;
/// How long the CPU time is watched while accept fails.
const WATCH: Duration = Duration::from_secs(3);
/// The most CPU time Switchyard may use while saturated, as a share of the wall time.
const MAX_CPU_SHARE: f64 = 0.30;

/// Switchyard as a child process; killed by PID and reaped on drop.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Open file descriptors, from `/proc/PID/fd`.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// utime + stime in clock ticks, from `/proc/PID/stat`.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The command name (field 2) is in parentheses and may hold spaces: split after it.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime and stime are fields 14 and 15.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- switchyard stderr ---\n{}", self.stderr());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn start(upstream: SocketAddr, http: u16, tcp: u16, admin: u16) -> Proc {
    let dir = std::env::temp_dir().join(format!("switchyard-emfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        Cfg::new()
            .admin_listen(format!("127.0.0.1:{admin}"))
            .frontend("web")
            .bind(format!("127.0.0.1:{http}"))
            .tcp_frontend("raw")
            .bind(format!("127.0.0.1:{tcp}"))
            .backend("b")
            .servers(&[upstream])
            .check("type = \"tcp\"\ninter = \"500ms\"")
            .toml(),
    )
    .unwrap();
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {NOFILE} && exec \"$0\" run -c \"$1\""))
        .arg(BIN)
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn bash");
    Proc { child, dir }
}

/// `GET /` through the TCP frontend (raw HTTP/1.1 relayed to the upstream): the status line.
async fn get_via_tcp(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines().next().map(str::to_string)
    };
    timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_emfile_backs_off_logs_and_recovers() {
    timeout(Duration::from_secs(30), async {
        let up = Upstream::start("up").await;
        let (http_port, tcp_port, admin_port) = (free_port(), free_port(), free_port());
        let mut proc = start(up.addr(), http_port, tcp_port, admin_port);
        let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
        let tcp: SocketAddr = ([127, 0, 0, 1], tcp_port).into();
        wait_until("switchyard serves 200", Duration::from_secs(10), || async {
            matches!(try_get_cached(http, "/").await, Ok((200, _)))
        })
        .await;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", proc.pid())).unwrap();
        let nofile = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_default()
            .to_string();
        assert!(
            nofile.split_whitespace().nth(3) == Some(&NOFILE.to_string()),
            "the child's open-files limit is not {NOFILE}: {nofile}"
        );
        let baseline = proc.fds();

        // Saturate: every connection is accepted until the table is full; the rest wait in
        // the listen backlog (the kernel completed their handshakes) while accept fails.
        let mut held = Vec::new();
        for _ in 0..HTTP_CLIENTS {
            held.push(TcpStream::connect(http).await.expect("connect (backlog)"));
        }
        for _ in 0..TCP_CLIENTS {
            held.push(TcpStream::connect(tcp).await.expect("connect (backlog)"));
        }
        wait_until(
            "\"accept failed\" on stderr",
            Duration::from_secs(5),
            || async { proc.stderr().contains("accept failed") },
        )
        .await;
        let full = proc.fds();
        assert!(
            full + 4 >= NOFILE as usize,
            "expected the descriptor table to be (nearly) full: {full} of {NOFILE}"
        );

        // Saturated: no spinning.
        let ticks = clock_ticks_per_second();
        let (cpu0, t0) = (proc.cpu_ticks(), Instant::now());
        tokio::time::sleep(WATCH).await;
        let (cpu1, wall) = (proc.cpu_ticks(), t0.elapsed());
        let cpu = (cpu1 - cpu0) as f64 / ticks;
        let share = cpu / wall.as_secs_f64();
        // A new client meanwhile: the connect succeeds (backlog) but no answer comes.
        let starved = timeout(Duration::from_millis(500), try_get_cached(http, "/")).await;
        let log = proc.stderr();
        let failures = log.matches("accept failed").count();
        eprintln!(
            "fds: {baseline} at rest, {full} saturated (limit {NOFILE}); CPU {cpu:.3} s over \
             {wall:?} ({:.1}%); {failures} \"accept failed\" lines; a new client while \
             saturated: {starved:?}",
            share * 100.0
        );
        assert!(
            share < MAX_CPU_SHARE,
            "Switchyard used {:.0}% of a CPU while accept failed with EMFILE (spinning?)",
            share * 100.0
        );
        assert!(proc.still_running(), "Switchyard exited under EMFILE");
        for fe in ["frontend=web", "frontend=raw"] {
            assert!(
                log.lines()
                    .any(|l| l.contains("accept failed") && l.contains(fe)),
                "no \"accept failed\" line for {fe}:\n{log}"
            );
        }

        // Release everything: new clients are served again, on both frontends.
        drop(held);
        let t1 = Instant::now();
        wait_until(
            "HTTP frontend serves 200 after the connections closed",
            Duration::from_secs(10),
            || async { matches!(try_get_cached(http, "/").await, Ok((200, b)) if b == "up") },
        )
        .await;
        let http_back = t1.elapsed();
        wait_until(
            "TCP frontend relays a 200 after the connections closed",
            Duration::from_secs(10),
            || async {
                get_via_tcp(tcp)
                    .await
                    .is_some_and(|l| l.starts_with("HTTP/1.1 200"))
            },
        )
        .await;
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let (status, _) = timeout(Duration::from_secs(5), support::get(admin, "/readyz"))
            .await
            .expect("admin answers");
        assert_eq!(status, 200, "admin /readyz after recovery");
        eprintln!(
            "recovered: HTTP 200 {http_back:?} after closing; fds now {}",
            proc.fds()
        );
        assert!(proc.still_running(), "Switchyard exited");
        let log = proc.stderr();
        assert!(!log.contains("panicked"), "a panic in Switchyard:\n{log}");
        drop(proc);
    })
    .await
    .expect("test within 30 s");
}
