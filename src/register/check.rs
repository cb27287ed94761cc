//! The register sidekick's local check: a TCP connect or an HTTP GET every interval, with
//! HAProxy-style rise/fall, publishing "healthy" on a watch channel that gates the registration.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Check;

/// Consecutive-result counter. The first result decides the initial state (so a healthy
/// service registers after one pass); after that `fall` failures in a row take it down and
/// `rise` passes in a row bring it back.
#[derive(Debug)]
pub(super) struct RiseFall {
    rise: u32,
    fall: u32,
    up: Option<bool>,
    streak: u32,
}

impl RiseFall {
    pub(super) fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise,
            fall,
            up: None,
            streak: 0,
        }
    }

    /// Records one result; returns the new state when it changed (or was first decided).
    fn record(&mut self, ok: bool) -> Option<bool> {
        match self.up {
            None => {
                self.up = Some(ok);
                return Some(ok);
            }
            Some(up) if up == ok => self.streak = 0,
            Some(_) => self.streak += 1,
        }
        let need = if ok { self.rise } else { self.fall };
        if self.streak >= need {
            self.up = Some(ok);
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// Runs the check every `interval` and publishes the healthy state on `tx`.
pub(super) async fn check_loop(
    check: Check,
    interval: Duration,
    timeout: Duration,
    mut rf: RiseFall,
    tx: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client with these options always builds");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe(&check, &http, timeout) => r,
        };
        if let Err(why) = &result {
            debug!(check = %check, reason = %why, "check failed");
        }
        match (rf.record(result.is_ok()), &result) {
            (Some(true), _) => info!(check = %check, "local service passes its check: registering"),
            (Some(false), Err(why)) => {
                info!(check = %check, reason = %why, "local service fails its check: not registered")
            }
            _ => continue,
        }
        tx.send_replace(rf.up == Some(true));
    }
}

/// One check; `Err` carries the reason for the log.
async fn probe(check: &Check, http: &reqwest::Client, timeout: Duration) -> Result<(), String> {
    match check {
        Check::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            }
        }
        Check::Http(url) => match tokio::time::timeout(timeout, http.get(url).send()).await {
            Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
            Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status().as_u16())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_fall_first_result_decides_then_streaks() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(true), Some(true));
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None); // streak broken
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));

        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
    }
}
