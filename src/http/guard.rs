//! Refusing a request by its policy's `allow`/`deny` (`403`) and `rate_limit` (`429` with
//! `Retry-After`), before any upstream work: `forward::handle` calls [`check`] right after
//! routing, and answers with what it returns instead of forwarding. Each refusal is one
//! plain-text answer, one `switchyard_requests_refused_total{frontend, reason}`, the frontend's
//! stats-page count and the access log's termination (`denied`, `rate_limited`). The lists and
//! the buckets themselves are `config::CidrSet` and `config::Limiter`.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::access_log::Termination;
use crate::config::{LimitKey, Policy, RateKey, RateLimit};
use crate::stats::Refusal;

use super::answers::plain;
use super::{Body, Conn};

/// Why a request is refused (`None` from [`check`]: go on).
#[derive(Debug)]
pub(crate) enum Refused {
    Denied,
    /// With the time until the next token.
    RateLimited(Duration),
}

impl Refused {
    fn why(&self) -> Refusal {
        match self {
            Refused::Denied => Refusal::Denied,
            Refused::RateLimited(_) => Refusal::RateLimited,
        }
    }
}

/// Whether `req` is refused by its policy, in the contract's order: `allow`/`deny` first (a
/// denied client is not even redirected), then, unless the request is `redirected`,
/// `rate_limit` (a redirect costs no token). Counted only when answered ([`answer`]): a request
/// refused as malformed first is not counted here.
pub(crate) fn check<B>(
    conn: &Conn,
    policy: Option<&Policy>,
    redirected: bool,
    req: &Request<B>,
) -> Option<Refused> {
    let policy = policy?;
    let ip = conn.client.ip();
    if denied(policy, ip) {
        return Some(Refused::Denied);
    }
    match (redirected, &policy.rate_limit) {
        (false, Some(rl)) => limited(rl, ip, req).map(Refused::RateLimited),
        _ => None,
    }
}

/// Whether `ip` is refused: in `deny`, or not in a set `allow` (`deny` wins).
fn denied(policy: &Policy, ip: IpAddr) -> bool {
    policy.deny.as_ref().is_some_and(|d| d.contains(ip))
        || policy.allow.as_ref().is_some_and(|a| !a.contains(ip))
}

/// `Some(wait)` when the request's bucket is empty.
fn limited<B>(rl: &RateLimit, ip: IpAddr, req: &Request<B>) -> Option<Duration> {
    let key = match &rl.key {
        RateKey::Header(name) => match req.headers().get(name) {
            Some(v) => LimitKey::value(v.as_bytes()),
            // Leaving the header out does not escape the limit: counted by address instead.
            None => LimitKey::source(ip),
        },
        RateKey::Source => LimitKey::source(ip),
    };
    rl.limiter.check(&key).err()
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (RFC 9110 10.2.3 has no fractions).
pub(crate) fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.as_secs() == 0))
}

/// The answer to a refused request and how the access log ends it; counts the refusal.
pub(crate) fn answer(conn: &Conn, r: Refused) -> (Response<Body>, Termination) {
    let fe = &conn.fe;
    fe.count_refused(r.why());
    match r {
        Refused::RateLimited(wait) => {
            let secs = retry_after(wait);
            let mut resp = plain(
                StatusCode::TOO_MANY_REQUESTS,
                format!("429 Too Many Requests: rate limit reached; retry after {secs}s\n"),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            (resp, Termination::RateLimited)
        }
        Refused::Denied => (
            plain(
                StatusCode::FORBIDDEN,
                "403 Forbidden: the client address is not allowed\n",
            ),
            Termination::Denied,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after(Duration::ZERO), 1);
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after(Duration::from_secs(360)), 360);
    }

    #[test]
    fn deny_wins_over_allow() {
        let set = |l: &[&str]| {
            crate::config::CidrSet::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        let p = Policy {
            allow: Some(set(&["10.0.0.0/8"])),
            deny: Some(set(&["10.1.0.0/16"])),
            ..Policy::default()
        };
        assert!(!denied(&p, "10.2.3.4".parse().unwrap()));
        assert!(!denied(&p, "::ffff:10.2.3.4".parse().unwrap()));
        assert!(denied(&p, "10.1.3.4".parse().unwrap()));
        assert!(denied(&p, "11.0.0.1".parse().unwrap()));
        assert!(!denied(&Policy::default(), "11.0.0.1".parse().unwrap()));
    }
}
