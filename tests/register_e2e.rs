//! End to end, as users run it: an upstream, `switchyard register` next to it, and Switchyard
//! routing to it through a real etcd, for v2 and v3. SIGTERM to the sidekick takes the server
//! out within a second; after SIGKILL it goes once the TTL runs out.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cfg, Etcd, Lb, Upstream, try_get, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Sidekick(Child);

impl Drop for Sidekick {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sidekick(etcd: &Etcd, api: &str, key: &str, addr: &str) -> Sidekick {
    Sidekick(
        Command::new(BIN)
            .args([
                "register",
                "--etcd",
                &etcd.url(),
                "--api",
                api,
                "--key",
                key,
                "--value",
                addr,
            ])
            .args([
                "--ttl",
                "2s",
                "--check-tcp",
                addr,
                "--check-interval",
                "200ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn config(etcd: &Etcd, api: &str, backend: &str) -> String {
    Cfg::http("web")
        .etcd(&etcd.url())
        .etcd_lines(&format!("api = \"{api}\""))
        .etcd_backend(backend)
        .check_none()
        .toml()
}

async fn serves(lb: &Lb, body: &str) -> bool {
    matches!(try_get(lb.http_addr("web"), "/").await, Ok((200, b)) if b == body)
}

async fn empty(lb: &Lb) -> bool {
    lb.servers().await.is_empty()
}

#[tokio::test]
async fn sidekick_registers_and_sigterm_or_sigkill_removes() {
    for api in ["v2", "v3"] {
        let etcd = Etcd::start().await;
        let up = Upstream::start("app").await;
        let backend = format!("e2e{api}");
        let lb = Lb::start_ready(&config(&etcd, api, &backend)).await;
        let key = format!("/{backend}/backend/1");
        let addr = up.addr().to_string();

        let mut sk = sidekick(&etcd, api, &key, &addr);
        let lb_ref = &lb;
        wait_until(
            "traffic flows to the registered upstream",
            Duration::from_secs(10),
            || async move { serves(lb_ref, "app").await },
        )
        .await;
        // SIGTERM: deregistered within a second, and the sidekick exits 0.
        let t = Instant::now();
        assert!(
            Command::new("kill")
                .args(["-TERM", &sk.0.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        wait_until(
            "gone after SIGTERM",
            Duration::from_secs(3),
            || async move { empty(lb_ref).await },
        )
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{api}: took {:?}",
            t.elapsed()
        );
        let status = sk.0.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{api}");
        std::mem::forget(sk);

        // SIGKILL: the key stays until its 2 s TTL runs out, then the server goes.
        let mut sk = sidekick(&etcd, api, &key, &addr);
        wait_until("registered again", Duration::from_secs(10), || async move {
            serves(lb_ref, "app").await
        })
        .await;
        sk.0.kill().unwrap();
        let _ = sk.0.wait();
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            serves(&lb, "app").await,
            "{api}: still registered right after SIGKILL"
        );
        wait_until(
            "gone after the TTL",
            Duration::from_secs(6),
            || async move { empty(lb_ref).await },
        )
        .await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "{api}: gone before the TTL ({took:?})"
        );
        lb.shutdown().await;
    }
}
