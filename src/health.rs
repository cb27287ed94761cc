//! Active health checks and the rise/fall state machine.
//!
//! One task walks the published snapshot every quarter second and starts a probe (TCP connect,
//! or HTTP GET `path` where 2xx/3xx is healthy) for every server whose check is due; a new server
//! is due at once. A server goes down after `fall` consecutive failures and up after `rise`
//! consecutive successes (HAProxy's semantics). A connect failure on live traffic counts as a
//! failed check too ([`observe_failure`]). Health lives on the server's shared state, so it
//! survives snapshot updates; this module never publishes a snapshot.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::{Backend, CheckType};
use crate::metrics as m;
use crate::snapshot::{Server, Snapshot};

/// How often the task looks for due checks; also the latency of "checked at once".
const SCAN: Duration = Duration::from_millis(250);

/// Consecutive results in the current direction, and when the next active check is due.
#[derive(Debug, Default)]
pub struct Streak {
    ok: u32,
    fail: u32,
    next_due: Option<Instant>,
    in_flight: bool,
}

/// Records one check result; flips the server's state when rise or fall is reached.
/// Returns the new state when it flipped.
pub fn record(backend: &Backend, server: &Server, ok: bool, reason: &str) -> Option<bool> {
    let flip = {
        let mut s = server
            .state()
            .streak
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ok {
            s.ok = s.ok.saturating_add(1);
            s.fail = 0;
            (!server.is_up() && s.ok >= backend.check.rise).then_some(true)
        } else {
            s.fail = s.fail.saturating_add(1);
            s.ok = 0;
            (server.is_up() && s.fail >= backend.check.fall).then_some(false)
        }
    };
    let up = flip?;
    if !server.set_up(up) {
        return None;
    }
    metrics::gauge!(m::SERVER_UP, "backend" => backend.name.clone(), "server" => server.addr.clone())
        .set(if up { 1.0 } else { 0.0 });
    if up {
        info!(backend = %backend.name, server = %server.addr, name = %server.name, reason, "server up");
    } else {
        info!(backend = %backend.name, server = %server.addr, name = %server.name, reason, "server down");
    }
    Some(up)
}

/// A failure seen on live traffic (connect refused, reset, timeout): counts as a failed check
/// and makes the next active check due at once.
/// Without active checks nothing could bring the server back, so then it only logs.
pub fn observe_failure(backend: &Backend, server: &Server, reason: &str) {
    if backend.check.kind == CheckType::None {
        debug!(backend = %backend.name, server = %server.addr, reason, "live traffic failure (checks off)");
        return;
    }
    server
        .state()
        .streak
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .next_due = None;
    record(backend, server, false, reason);
}

/// Runs the checks until cancelled.
pub async fn run(shared: Arc<ArcSwap<Snapshot>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SCAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = shared.load_full();
        let now = Instant::now();
        for b in &snap.backends {
            if b.config.check.kind == CheckType::None {
                continue;
            }
            for server in &b.servers {
                {
                    let mut s = server
                        .state()
                        .streak
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if s.in_flight || s.next_due.is_some_and(|due| due > now) {
                        continue;
                    }
                    s.in_flight = true;
                    // Jitter of +-10% keeps checks of many servers from running in lockstep.
                    let inter = b.config.check.inter.mul_f64(rand::random_range(0.9..1.1));
                    s.next_due = Some(now + inter);
                }
                let backend = Arc::clone(&b.config);
                let server = Arc::clone(server);
                tokio::spawn(async move {
                    let result = probe(&backend, &server).await;
                    let ok = result.is_ok();
                    metrics::counter!(m::HEALTH_CHECKS,
                        "backend" => backend.name.clone(),
                        "server" => server.addr.clone(),
                        "result" => if ok { "success" } else { "failure" })
                    .increment(1);
                    let reason = match &result {
                        Ok(()) => "check passed".to_string(),
                        Err(e) => e.clone(),
                    };
                    debug!(backend = %backend.name, server = %server.addr, ok, reason, "health check");
                    record(&backend, &server, ok, &reason);
                    metrics::gauge!(m::SERVER_UP, "backend" => backend.name.clone(), "server" => server.addr.clone())
                        .set(if server.is_up() { 1.0 } else { 0.0 });
                    server
                        .state()
                        .streak
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .in_flight = false;
                });
            }
        }
    }
}

/// One probe; `Err` carries the reason for the log.
async fn probe(backend: &Backend, server: &Server) -> Result<(), String> {
    let check = &backend.check;
    let fut = async {
        let stream = TcpStream::connect(&server.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if check.kind == CheckType::Tcp {
            return Ok(());
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(check.path.as_str())
            .header(http::header::HOST, server.addr.as_str())
            .header(http::header::USER_AGENT, "switchyard-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("http status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(check.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", check.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::snapshot::{ServerSpec, Source};

    #[test]
    fn rise_and_fall() {
        let cfg = Config::from_toml(
            "[[frontend]]\nname='f'\nbind='127.0.0.1:0'\nbackend='b'\n[[backend]]\nname='b'\nservers=['127.0.0.1:1']\n[backend.check]\nrise=2\nfall=3\n",
        )
        .unwrap();
        let b = &cfg.backends[0];
        let s = Server::new(ServerSpec {
            name: "1".into(),
            addr: "127.0.0.1:1".into(),
            weight: 1,
            drain: false,
            source: Source::Static,
        });
        assert!(s.is_up(), "registration means ready");
        assert_eq!(record(b, &s, false, "x"), None);
        assert_eq!(record(b, &s, false, "x"), None);
        assert_eq!(
            record(b, &s, true, "ok"),
            None,
            "a success resets the fall count"
        );
        assert_eq!(record(b, &s, false, "x"), None);
        assert_eq!(record(b, &s, false, "x"), None);
        assert_eq!(record(b, &s, false, "x"), Some(false));
        assert!(!s.is_up());
        assert_eq!(record(b, &s, false, "x"), None);
        assert_eq!(record(b, &s, true, "ok"), None);
        assert_eq!(record(b, &s, true, "ok"), Some(true));
        assert!(s.is_up());
    }
}
