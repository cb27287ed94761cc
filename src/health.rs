//! Health: active checks, the rise/fall state machine, and passive checks on live traffic.
//!
//! One task walks the published snapshot every 100 ms and starts a probe (TCP connect, or HTTP
//! GET `path` where 2xx/3xx or the `expect_status` list is healthy, over the backend's own
//! transport: see [`probe`]) for every server whose check is due; a new server is due at once.
//! Each check's status code, reason and duration, and counts of checks and failures, are kept
//! for the admin API. A server goes down after `fall` consecutive failures and
//! up after `rise` consecutive successes, checked every `inter`, `fastinter` while its state is
//! changing and `downinter` while down (HAProxy's semantics and defaults, with +-10% jitter).
//! Live traffic feeds in through [`observe_failure`] and [`observe_response`]: failures eject a
//! server at once (guarded by `max_ejected_percent`) and switch it to fast checks; it comes back
//! only through active checks. Health lives on the server's shared state, so it survives
//! snapshot updates; this module never publishes a snapshot.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use std::sync::atomic::Ordering;

use crate::config::{Backend, CheckType};
use crate::metrics as m;
use crate::snapshot::{AdminState, BackendSet, Server, Snapshot};

pub mod probe;

pub use probe::{Outcome, Status};

/// How often the task looks for due checks; also the latency of "checked at once".
const SCAN: Duration = Duration::from_millis(100);

/// Consecutive results in the current direction, and when the next active check is due.
#[derive(Debug, Default)]
pub struct Streak {
    ok: u32,
    fail: u32,
    next_due: Option<Instant>,
    in_flight: bool,
    last: Option<(Outcome, Instant)>,
    /// Checks run and checks failed (HAProxy's `chkfail`).
    checks: u64,
    failures: u64,
}

/// Records one check result; flips the server's state when rise or fall is reached.
/// Returns the new state when it flipped.
pub fn record(backend: &Backend, server: &Server, outcome: Outcome) -> Option<bool> {
    let ok = outcome.status.ok();
    let (status, reason) = (outcome.status, outcome.reason.clone());
    let flip = {
        let mut s = server
            .state()
            .streak
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.last = Some((outcome, Instant::now()));
        s.checks += 1;
        if !ok {
            s.failures += 1;
        }
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
    flip_to(backend, server, up, status.as_str(), &reason).then_some(up)
}

/// `status` is the check's status code, or `passive` for an ejection by live traffic.
fn flip_to(backend: &Backend, server: &Server, up: bool, status: &str, reason: &str) -> bool {
    if !server.set_up(up) {
        return false;
    }
    if up {
        info!(backend = %backend.name, server = %server.addr, name = %server.name, status, reason, "server up");
    } else {
        warn!(backend = %backend.name, server = %server.addr, name = %server.name, status, reason, "server down");
    }
    true
}

/// The interval to the next check: `downinter` while down, `fastinter` while the results
/// disagree with the state (going up or going down), `inter` otherwise.
fn interval(check: &crate::config::Check, up: bool, s: &Streak) -> Duration {
    match (up, s.ok, s.fail) {
        (true, _, 0) => check.inter,
        (true, _, _) => check.fastinter,
        (false, 0, _) => check.downinter,
        (false, _, _) => check.fastinter,
    }
}

/// A failure seen on live traffic (connect error, reset, timeout). It makes the next active
/// check due at once, and `passive.error_limit` consecutive ones mark the server down (HAProxy's
/// `observe layer4` with `on-error mark-down`). Without active checks nothing could bring the
/// server back, so then it only logs.
pub fn observe_failure(set: &BackendSet, server: &Server, reason: &str) {
    let backend = &set.config;
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
    let n = server.state().live_errors.fetch_add(1, Ordering::Relaxed) + 1;
    let limit = backend.passive.error_limit;
    if limit > 0 && n >= limit {
        eject(
            set,
            server,
            &format!("{reason} ({n} consecutive on live traffic)"),
        );
    }
}

/// A response on live traffic: resets the live error count, and counts consecutive 5xx for
/// the optional `passive.consecutive_5xx` ejection.
#[inline]
pub fn observe_response(set: &BackendSet, server: &Server, status: u16) {
    let st = server.state();
    if st.live_errors.load(Ordering::Relaxed) != 0 {
        st.live_errors.store(0, Ordering::Relaxed);
    }
    let limit = set.config.passive.consecutive_5xx;
    if limit == 0 || set.config.check.kind == CheckType::None {
        return;
    }
    if status >= 500 {
        let n = st.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= limit {
            eject(
                set,
                server,
                &format!("{n} consecutive {status}-class answers"),
            );
        }
    } else if st.consecutive_5xx.load(Ordering::Relaxed) != 0 {
        st.consecutive_5xx.store(0, Ordering::Relaxed);
    }
}

/// Passive ejection, guarded: never takes out more than `max_ejected_percent` of the servers.
/// The server comes back through its active checks (`rise` passes).
fn eject(set: &BackendSet, server: &Server, reason: &str) {
    if !server.is_up() {
        return;
    }
    let live: Vec<&Arc<Server>> = set.servers.iter().filter(|s| !s.is_draining()).collect();
    let down = live.iter().filter(|s| !s.is_up()).count();
    let max = set.config.passive.max_ejected_percent as usize;
    if (down + 1) * 100 > max * live.len() {
        debug!(backend = %set.config.name, server = %server.addr, down, total = live.len(),
            "passive ejection skipped: max_ejected_percent reached");
        return;
    }
    {
        let mut s = server
            .state()
            .streak
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.ok = 0;
        s.fail = set.config.check.fall;
        s.next_due = None;
    }
    flip_to(&set.config, server, false, "passive", reason);
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
            // Draining servers are still checked (HAProxy does the same), so an undrained one
            // comes back with a known state; a server in maintenance is not, and removed ones
            // are no longer in `servers`.
            for server in b.servers.iter().filter(|s| s.admin() != AdminState::Maint) {
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
                    let inter = interval(&b.config.check, server.is_up(), &s)
                        .mul_f64(rand::random_range(0.9..1.1));
                    s.next_due = Some(now + inter);
                }
                let backend = Arc::clone(&b.config);
                let server = Arc::clone(server);
                tokio::spawn(async move {
                    let outcome = probe::check(&backend, &server.addr).await;
                    let ok = outcome.status.ok();
                    metrics::counter!(m::HEALTH_CHECKS,
                        "backend" => backend.name.clone(),
                        "server" => server.addr.clone(),
                        "result" => if ok { "success" } else { "failure" })
                    .increment(1);
                    debug!(backend = %backend.name, server = %server.addr,
                        status = outcome.status.as_str(), reason = %outcome.reason,
                        duration = ?outcome.duration, "health check");
                    record(&backend, &server, outcome);
                    let mut s = server
                        .state()
                        .streak
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    s.in_flight = false;
                    // Re-plan with the new streak, so a change of state switches interval now.
                    let inter = interval(&backend.check, server.is_up(), &s)
                        .mul_f64(rand::random_range(0.9..1.1));
                    s.next_due = Some(Instant::now() + inter);
                });
            }
        }
    }
}

/// The last check's result and its age, for the admin API.
pub fn last_check(server: &Server) -> Option<(bool, Duration)> {
    let s = server
        .state()
        .streak
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    s.last.as_ref().map(|(o, at)| (o.status.ok(), at.elapsed()))
}

/// What the admin API shows of a server's checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckView {
    /// The last check and its age.
    pub last: Option<(Outcome, Duration)>,
    pub checks: u64,
    pub failures: u64,
}

pub fn check_view(server: &Server) -> CheckView {
    let s = server
        .state()
        .streak
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    CheckView {
        last: s.last.as_ref().map(|(o, at)| (o.clone(), at.elapsed())),
        checks: s.checks,
        failures: s.failures,
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
        let fail = || Outcome::new(Status::L4Con, "L4 connect refused", Duration::ZERO);
        let pass = || Outcome::new(Status::L4Ok, "L4 check passed", Duration::ZERO);
        assert!(s.is_up(), "registration means ready");
        assert_eq!(record(b, &s, fail()), None);
        assert_eq!(record(b, &s, fail()), None);
        assert_eq!(
            record(b, &s, pass()),
            None,
            "a success resets the fall count"
        );
        assert_eq!(record(b, &s, fail()), None);
        assert_eq!(record(b, &s, fail()), None);
        assert_eq!(record(b, &s, fail()), Some(false));
        assert!(!s.is_up());
        assert_eq!(s.downtime().0, 1, "one transition to down");
        assert_eq!(record(b, &s, fail()), None);
        assert_eq!(record(b, &s, pass()), None);
        assert_eq!(record(b, &s, pass()), Some(true));
        assert!(s.is_up());
        let view = check_view(&s);
        assert_eq!((view.checks, view.failures), (9, 6));
        assert_eq!(view.last.unwrap().0.status, Status::L4Ok);
        assert_eq!(s.downtime().0, 1);
    }
}
