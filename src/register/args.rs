//! `switchyard register` arguments: the flags as typed ([`RegisterArgs`]), their validation
//! into a [`RegisterConfig`] (every bad value is one [`ArgError`] naming its flag), and the
//! timings derived from the TTL (the heartbeat period and the deadline of one etcd request).

use std::fmt;
use std::time::Duration;

use crate::config::{
    DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTER, DEFAULT_CHECK_RISE, DEFAULT_CHECK_TIMEOUT,
    DEFAULT_ETCD_API, DEFAULT_ETCD_REQUEST_TIMEOUT,
};
use crate::value::parse_value;

/// One etcd request gets the heartbeat period (TTL/3) within these bounds, so a member that
/// accepts TCP but never answers is left in time to refresh through another one. The upper
/// bound is discovery's default `[etcd] request_timeout`.
const REQUEST_TIMEOUT_MIN: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT_MAX: Duration = DEFAULT_ETCD_REQUEST_TIMEOUT;
/// HAProxy's check timeout default (as `[backend.check] timeout`); shortened to the interval
/// when that is shorter.
const CHECK_TIMEOUT_DEFAULT: Duration = DEFAULT_CHECK_TIMEOUT;

/// `switchyard register` flags as typed. Everything is kept as text so that [`validate`]
/// (not clap) reports every bad value in one line naming the flag.
///
/// [`validate`]: RegisterArgs::validate
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// etcd client URLs, comma-separated or repeated (required)
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: Vec<String>,
    /// v2: a key with a TTL, refreshed; v3: a key with a lease, kept alive (JSON gateway)
    #[arg(long, value_name = "v2|v3", default_value = DEFAULT_ETCD_API.as_str())]
    pub api: String,
    /// The key to keep alive, e.g. /testservice/backend/1 (required)
    #[arg(long)]
    pub key: Option<String>,
    /// host:port, or {"addr":"host:port","weight":N,"drain":false} (required)
    #[arg(long)]
    pub value: Option<String>,
    /// Time to live, e.g. 30s; whole seconds, rounded up (required)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Register only while GET URL answers 2xx/3xx
    #[arg(long, value_name = "URL")]
    pub check_url: Option<String>,
    /// Register only while HOST:PORT accepts TCP connections
    #[arg(long, value_name = "HOST:PORT")]
    pub check_tcp: Option<String>,
    /// Time between two checks
    #[arg(long, value_name = "DURATION",
        default_value_t = humantime::format_duration(DEFAULT_CHECK_INTER).to_string())]
    pub check_interval: String,
    /// Deadline of one check [default: 1s, or the interval if shorter]
    #[arg(long, value_name = "DURATION")]
    pub check_timeout: Option<String>,
    /// Consecutive passing checks before registering again
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECK_RISE.to_string())]
    pub rise: String,
    /// Consecutive failing checks before deregistering
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHECK_FALL.to_string())]
    pub fall: String,
}

/// A bad `switchyard register` argument; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{arg}: {detail}")]
    Invalid { arg: &'static str, detail: String },
    #[error("--check-url and --check-tcp exclude each other; give one")]
    BothChecks,
}

fn invalid(arg: &'static str, detail: impl Into<String>) -> ArgError {
    ArgError::Invalid {
        arg,
        detail: detail.into(),
    }
}

/// Which etcd API keeps the key alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

/// The local check that gates the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET url`; 2xx and 3xx pass (redirects are not followed).
    Http(String),
    /// A TCP connect to `host:port`.
    Tcp(String),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Http(url) => write!(f, "http {url}"),
            Check::Tcp(addr) => write!(f, "tcp {addr}"),
        }
    }
}

/// Validated `switchyard register` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// Base URLs without a trailing slash.
    pub endpoints: Vec<String>,
    pub api: Api,
    pub key: String,
    /// Written as given (it already passed `parse_value`).
    pub value: String,
    /// Whole seconds, at least 1 (etcd v3 grants at least 2).
    pub ttl_secs: u64,
    pub check: Option<Check>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl RegisterConfig {
    /// The deadline of one etcd request: the heartbeat period, within bounds.
    pub fn request_timeout(&self) -> Duration {
        heartbeat_period(self.ttl_secs).clamp(REQUEST_TIMEOUT_MIN, REQUEST_TIMEOUT_MAX)
    }
}

/// A third of the TTL: two heartbeats can be lost before the key expires.
pub(super) fn heartbeat_period(ttl_secs: u64) -> Duration {
    Duration::from_millis(ttl_secs.max(1).saturating_mul(1000) / 3)
}

impl RegisterArgs {
    /// Checks every flag and builds the typed config; the first problem found is returned.
    pub fn validate(&self) -> Result<RegisterConfig, ArgError> {
        let mut endpoints = Vec::new();
        for raw in self.etcd.iter().flat_map(|s| s.split(',')) {
            endpoints.push(endpoint(raw.trim())?);
        }
        if endpoints.is_empty() {
            return Err(ArgError::Missing("--etcd"));
        }
        let api = match self.api.trim() {
            "v2" => Api::V2,
            "v3" => Api::V3,
            other => return Err(invalid("--api", format!("{other:?}: expected v2 or v3"))),
        };
        let key = self.key.as_deref().ok_or(ArgError::Missing("--key"))?;
        check_key(key)?;
        let value = self.value.as_deref().ok_or(ArgError::Missing("--value"))?;
        parse_value(value).map_err(|e| {
            invalid(
                "--value",
                format!("{e} (expected host:port or {{\"addr\":\"host:port\",...}})"),
            )
        })?;
        let raw_ttl = self.ttl.as_deref().ok_or(ArgError::Missing("--ttl"))?;
        let ttl = duration("--ttl", raw_ttl)?;
        if ttl < Duration::from_secs(1) {
            return Err(invalid(
                "--ttl",
                format!("{raw_ttl:?}: must be at least 1s"),
            ));
        }
        let ttl_secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let check = match (&self.check_url, &self.check_tcp) {
            (Some(_), Some(_)) => return Err(ArgError::BothChecks),
            (Some(url), None) => Some(Check::Http(check_url(url)?)),
            (None, Some(addr)) => Some(Check::Tcp(check_addr(addr)?)),
            (None, None) => None,
        };
        let check_interval = positive("--check-interval", &self.check_interval)?;
        let check_timeout = match &self.check_timeout {
            Some(raw) => positive("--check-timeout", raw)?,
            None => CHECK_TIMEOUT_DEFAULT.min(check_interval),
        };
        Ok(RegisterConfig {
            endpoints,
            api,
            key: key.to_string(),
            value: value.to_string(),
            ttl_secs,
            check,
            check_interval,
            check_timeout,
            rise: count("--rise", &self.rise)?,
            fall: count("--fall", &self.fall)?,
        })
    }
}

/// An etcd base URL: `http://host[:port]`, no path, returned without a trailing slash.
fn endpoint(raw: &str) -> Result<String, ArgError> {
    if raw.is_empty() {
        return Err(invalid("--etcd", "empty URL in the list"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| invalid("--etcd", format!("{raw:?}: {e}")))?;
    if url.scheme() != "http" {
        return Err(invalid(
            "--etcd",
            format!("{raw:?}: only http:// endpoints are supported"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("--etcd", format!("{raw:?}: no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "--etcd",
            format!("{raw:?}: give the base URL only (http://host:port)"),
        ));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// A key is an absolute path naming a leaf: `/dir/name`. Characters that would change the URL
/// (`?`, `#`, `%`) or be mangled in it (white space, control characters) are refused.
fn check_key(key: &str) -> Result<(), ArgError> {
    if !key.starts_with('/') {
        return Err(invalid("--key", format!("{key:?}: must start with '/'")));
    }
    if key.ends_with('/') {
        return Err(invalid(
            "--key",
            format!("{key:?}: must name a key, not a directory (no trailing '/')"),
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "--key",
            format!("{key:?}: character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

fn check_url(raw: &str) -> Result<String, ArgError> {
    let url =
        reqwest::Url::parse(raw).map_err(|e| invalid("--check-url", format!("{raw:?}: {e}")))?;
    if url.scheme() != "http" || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "--check-url",
            format!("{raw:?}: expected http://host:port/path"),
        ));
    }
    Ok(raw.to_string())
}

/// `host:port` (or `[v6]:port`) with a port in 1-65535.
fn check_addr(raw: &str) -> Result<String, ArgError> {
    let bad = || {
        invalid(
            "--check-tcp",
            format!("{raw:?}: expected host:port with a port in 1-65535"),
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !host.is_empty() => Ok(raw.to_string()),
        _ => Err(bad()),
    }
}

fn duration(arg: &'static str, raw: &str) -> Result<Duration, ArgError> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| invalid(arg, format!("{raw:?}: {e} (e.g. 500ms, 2s, 1m)")))
}

fn positive(arg: &'static str, raw: &str) -> Result<Duration, ArgError> {
    let d = duration(arg, raw)?;
    if d.is_zero() {
        return Err(invalid(arg, format!("{raw:?}: must be more than 0")));
    }
    Ok(d)
}

fn count(arg: &'static str, raw: &str) -> Result<u32, ArgError> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(invalid(
            arg,
            format!("{raw:?}: expected a whole number >= 1"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RegisterArgs,
    }

    fn validate(extra: &[&str]) -> Result<RegisterConfig, ArgError> {
        let mut argv = vec!["register"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .expect("clap accepts the flags")
            .args
            .validate()
    }

    const BASE: [&str; 8] = [
        "--etcd",
        "http://127.0.0.1:2379",
        "--key",
        "/svc/backend/1",
        "--value",
        "127.0.0.1:8080",
        "--ttl",
        "30s",
    ];

    fn with(extra: &[&str]) -> Result<RegisterConfig, ArgError> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(extra);
        validate(&v)
    }

    /// `BASE` with the flag `name` replaced by `value`, or dropped when `value` is `None`.
    fn replace(name: &str, value: Option<&str>) -> Result<RegisterConfig, ArgError> {
        let mut v = Vec::new();
        for pair in BASE.chunks(2) {
            if pair[0] == name {
                if let Some(x) = value {
                    v.extend([pair[0], x]);
                }
            } else {
                v.extend_from_slice(pair);
            }
        }
        validate(&v)
    }

    fn arg_of(e: ArgError) -> String {
        e.to_string()
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.api, Api::V2);
        assert_eq!(c.ttl_secs, 30);
        assert_eq!(c.check, None);
        assert_eq!(c.check_interval, Duration::from_secs(2));
        assert_eq!(c.check_timeout, Duration::from_secs(1));
        assert_eq!((c.rise, c.fall), (2, 3));
        assert_eq!(c.request_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn endpoints_split_trim_and_repeat() {
        let c = with(&[
            "--etcd",
            "http://127.0.0.1:1/, http://127.0.0.1:2",
            "--api",
            "v3",
        ])
        .unwrap();
        assert_eq!(
            c.endpoints,
            [
                "http://127.0.0.1:2379",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
        assert_eq!(c.api, Api::V3);
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_refuses_under_one() {
        assert_eq!(replace("--ttl", Some("1500ms")).unwrap().ttl_secs, 2);
        assert_eq!(replace("--ttl", Some("1s")).unwrap().ttl_secs, 1);
        assert_eq!(replace("--ttl", Some("2m")).unwrap().ttl_secs, 120);
        let c = replace("--ttl", Some("2s")).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(666));
        assert!(arg_of(replace("--ttl", Some("999ms")).unwrap_err()).starts_with("--ttl: "));
        assert!(arg_of(replace("--ttl", Some("0s")).unwrap_err()).starts_with("--ttl: "));
        assert!(arg_of(replace("--ttl", Some("30")).unwrap_err()).starts_with("--ttl: "));
    }

    #[test]
    fn missing_flags_are_named() {
        for flag in ["--etcd", "--key", "--value", "--ttl"] {
            assert_eq!(
                replace(flag, None).unwrap_err(),
                ArgError::Missing(match flag {
                    "--etcd" => "--etcd",
                    "--key" => "--key",
                    "--value" => "--value",
                    _ => "--ttl",
                })
            );
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&str, &str)] = &[
            ("--etcd", "127.0.0.1:2379"),
            ("--etcd", "https://127.0.0.1:2379"),
            ("--etcd", "http://127.0.0.1:2379/v2"),
            ("--etcd", "http://127.0.0.1:2379,"),
            ("--etcd", "not a url"),
            ("--key", "svc/backend/1"),
            ("--key", "/svc/backend/"),
            ("--key", "/svc/a b"),
            ("--key", "/svc/a?b"),
            ("--value", "garbage"),
            ("--value", "127.0.0.1:0"),
            ("--value", ""),
            ("--value", r#"{"addr":"nope"}"#),
            ("--ttl", "fast"),
        ];
        for (flag, bad) in cases {
            let e = replace(flag, Some(bad)).expect_err(bad);
            assert!(
                e.to_string().starts_with(&format!("{flag}: ")),
                "{flag} {bad:?}: {e}"
            );
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        let extra: &[(&str, &str)] = &[
            ("--api", "v4"),
            ("--check-url", "ftp://127.0.0.1/"),
            ("--check-url", "nope"),
            ("--check-tcp", "127.0.0.1"),
            ("--check-tcp", "127.0.0.1:0"),
            ("--check-tcp", ":80"),
            ("--check-interval", "0s"),
            ("--check-interval", "soon"),
            ("--check-timeout", "x"),
            ("--rise", "0"),
            ("--fall", "1.5"),
            ("--fall", "many"),
        ];
        for (flag, bad) in extra {
            let e = with(&[flag, bad]).expect_err(bad);
            assert!(
                e.to_string().starts_with(&format!("{flag}: ")),
                "{flag} {bad:?}: {e}"
            );
        }
    }

    #[test]
    fn json_values_and_checks_are_accepted() {
        let c = replace(
            "--value",
            Some(r#"{"addr":"127.0.0.1:8080","weight":2,"drain":false}"#),
        )
        .unwrap();
        assert!(c.value.starts_with('{'));
        let c = with(&[
            "--check-tcp",
            "[::1]:8080",
            "--check-interval",
            "200ms",
            "--rise",
            "1",
            "--fall",
            "5",
        ])
        .unwrap();
        assert_eq!(c.check, Some(Check::Tcp("[::1]:8080".into())));
        assert_eq!(c.check_timeout, Duration::from_millis(200));
        assert_eq!((c.rise, c.fall), (1, 5));
        let c = with(&["--check-url", "http://127.0.0.1:8080/healthz"]).unwrap();
        assert_eq!(
            c.check,
            Some(Check::Http("http://127.0.0.1:8080/healthz".into()))
        );
    }

    #[test]
    fn both_checks_are_refused() {
        let e = with(&[
            "--check-url",
            "http://127.0.0.1:1/",
            "--check-tcp",
            "127.0.0.1:1",
        ])
        .unwrap_err();
        assert_eq!(e, ArgError::BothChecks);
        assert!(e.to_string().contains("--check-url") && e.to_string().contains("--check-tcp"));
    }

    #[test]
    fn heartbeat_is_a_third_of_the_ttl() {
        assert_eq!(heartbeat_period(30), Duration::from_secs(10));
        assert_eq!(heartbeat_period(2), Duration::from_millis(666));
        assert_eq!(heartbeat_period(0), Duration::from_millis(333));
    }
}
