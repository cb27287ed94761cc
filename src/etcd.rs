//! The etcd client side shared by discovery and the register sidekick: the HTTP client, endpoint
//! rotation, the reconnect backoff, and one bounded request. The wire formats and calls of each
//! API live in the submodules: [`v2`] (keys API) and [`v3`] (JSON gateway), reads (listings,
//! watches) for discovery and writes (TTL keys, leases) for `register`.
//!
//! NOTE: endpoint rotation is plain round-robin over the configured members: etcd's v2 index and
//! v3 revision are cluster-wide, so a cursor taken on one member is valid on any other.

pub mod v2;
pub mod v3;

use std::time::Duration;

use bytes::Bytes;

use crate::config::EtcdConfig;

/// An idle connection to an etcd member is closed after this long (discovery's and the register
/// sidekick's clients).
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to etcd. Every one of them means "try again later" to discovery; none of them
/// may shrink the published set.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{endpoint}: {source}")]
    Transport {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("{endpoint}: cannot decode answer: {detail}")]
    Decode { endpoint: String, detail: String },
}

/// The configured members and which one is in use.
#[derive(Debug, Clone)]
pub struct Endpoints {
    urls: Vec<String>,
    current: usize,
}

impl Endpoints {
    pub fn new(urls: Vec<String>) -> Endpoints {
        assert!(!urls.is_empty(), "validated: at least one endpoint");
        Endpoints { urls, current: 0 }
    }

    pub fn current(&self) -> &str {
        &self.urls[self.current]
    }

    /// Moves to the next member (after an error or a timeout).
    pub fn rotate(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }
}

/// Capped exponential backoff with jitter: 100 ms doubling to 5 s by default. Each delay is drawn
/// uniformly from [d/2, d] so that many Switchyards do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now; doubles the next one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        // Saturating: a validated config can set `backoff_max` near `Duration::MAX`.
        self.next = self.next.saturating_mul(2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(rand::random_range(0..=half.as_nanos() as u64))
    }
}

/// Sends one request and reads its whole answer, both within `timeout`: the status and the body.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    endpoint: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), EtcdError> {
    let transport = |source| EtcdError::Transport {
        endpoint: endpoint.to_string(),
        source,
    };
    let fut = async {
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(EtcdError::Timeout {
                endpoint: endpoint.to_string(),
                after: timeout,
            })
        })
}

/// The start of an answer body for an error message: at most 200 bytes, trimmed.
pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

/// The HTTP client for etcd: no proxy from the environment (etcd is on the local network and a
/// stray `http_proxy` must not capture it), a connect timeout so a dead member fails fast, TLS
/// when `[etcd]` asks for it (CA, client certificate), and for v2 the basic-auth credentials
/// (v3 authenticates with a token per connection, see `v3::authenticate`).
pub fn http_client(cfg: &EtcdConfig) -> Result<reqwest::Client, crate::tls::TlsError> {
    // reqwest is built without a crypto provider of its own; ours must be installed first.
    crate::tls::install_provider();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(cfg.request_timeout.min(Duration::from_secs(2)))
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    if let Some(tls) = crate::tls::etcd_client_config(cfg)? {
        b = b.use_preconfigured_tls(tls);
    }
    if cfg.api == crate::config::EtcdApi::V2
        && let (Some(user), Some(pass)) = (&cfg.username, &cfg.password)
    {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let mut headers = reqwest::header::HeaderMap::new();
        let mut v =
            reqwest::header::HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| {
                crate::tls::TlsError::File {
                    path: "etcd.username".into(),
                    message: e.to_string(),
                }
            })?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
        b = b.default_headers(headers);
    }
    Ok(b.build()
        .expect("a client with these options always builds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut caps = vec![];
        for _ in 0..10 {
            caps.push(b.next);
            let d = b.next_delay();
            let cap = *caps.last().unwrap();
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} not within [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert_eq!(caps[0], Duration::from_millis(100));
        assert_eq!(caps[1], Duration::from_millis(200));
        assert_eq!(*caps.last().unwrap(), Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_near_duration_max_does_not_overflow() {
        // Regression (fuzz target `config`): `[etcd] backoff_max = "400000000000years"` is valid
        // config, and the doubling overflowed `Duration` on the way there.
        let max = Duration::from_secs(400_000_000_000 * 31_557_600);
        let mut b = Backoff::new(Duration::from_millis(100), max);
        for _ in 0..70 {
            assert!(b.next_delay() <= max);
        }
        let mut b = Backoff::new(max, max);
        assert!(b.next_delay() <= max);
        assert!(b.next_delay() <= max);
    }

    #[test]
    fn rotation_wraps() {
        let mut e = Endpoints::new(vec!["a".into(), "b".into()]);
        assert_eq!(e.current(), "a");
        e.rotate();
        assert_eq!(e.current(), "b");
        e.rotate();
        assert_eq!(e.current(), "a");
    }
}
