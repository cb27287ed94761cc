//! The etcd value contract: what a key below a backend's `etcd_prefix` may hold (README, "etcd
//! keys and values"). A value is either `host:port` as the classic stack writes it, or JSON
//! `{"addr":"host:port","weight":N,"drain":false}`.
//!
//! A leaf: it imports no other module of the crate. Discovery parses what it reads from etcd with
//! [`parse_value`], `config` checks static `servers` with [`parse_addr`], the register sidekick
//! refuses a `--value` that discovery would skip, and `migrate` keeps only the server addresses
//! Switchyard accepts.

use serde::Deserialize;

/// The largest server weight (HAProxy's range: 0, no traffic, to 256).
pub const MAX_WEIGHT: u32 = 256;
/// A server's weight when its value does not give one (a plain `host:port` value).
pub const DEFAULT_WEIGHT: u32 = 1;

/// Why a value or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("empty value")]
    Empty,
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{0:?}: port must be 1-65535")]
    BadPort(String),
    #[error("{0:?}: bad host name")]
    BadHost(String),
    #[error("bad JSON value: {0}")]
    Json(String),
    #[error("weight {0} is out of range 0-256")]
    Weight(u32),
}

/// Checks a `host:port` address as the classic stack writes it: `172.17.8.101:55555`,
/// `[::1]:8080` or `web-3:80`. Port 0 and ports above 65535 are refused.
pub fn parse_addr(s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return if sa.port() == 0 {
            Err(ValueError::BadPort(s.to_string()))
        } else {
            Ok(())
        };
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| ValueError::NotHostPort(s.to_string()))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() => {
            return Err(ValueError::BadPort(s.to_string()));
        }
        _ => return Err(ValueError::NotHostPort(s.to_string())),
    }
    // A host name (RFC 1123 labels; '_' tolerated as some registries use it). An IPv6 address
    // without brackets, or anything with spaces or slashes, is refused.
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(ValueError::BadHost(s.to_string()))
    }
}

#[derive(Debug, Deserialize)]
struct JsonValue {
    addr: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    drain: bool,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// A parsed etcd value: the address, its weight and drain flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub addr: String,
    pub weight: u32,
    pub drain: bool,
}

/// Parses a value under a prefix: `host:port`, or `{"addr":..,"weight":..,"drain":..}`.
/// Surrounding white space (a trailing newline from `curl -d value=@file`) is ignored.
pub fn parse_value(raw: &str) -> Result<Value, ValueError> {
    let s = raw.trim();
    if s.starts_with('{') {
        let j: JsonValue = serde_json::from_str(s).map_err(|e| ValueError::Json(e.to_string()))?;
        let addr = j.addr.trim().to_string();
        parse_addr(&addr)?;
        if j.weight > MAX_WEIGHT {
            return Err(ValueError::Weight(j.weight));
        }
        return Ok(Value {
            addr,
            weight: j.weight,
            drain: j.drain,
        });
    }
    parse_addr(s)?;
    Ok(Value {
        addr: s.to_string(),
        weight: DEFAULT_WEIGHT,
        drain: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_the_classic_stack_writes() {
        for ok in [
            "172.17.8.101:55555",
            "[::1]:8080",
            "web-3:80",
            "a.b-c.d:65535",
            "svc_1:1",
        ] {
            assert_eq!(parse_addr(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "garbage",
            "1.2.3.4",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            ":80",
            "::1:8080",
            "a b:80",
            "http://x:80",
            "host:port",
            "-x:80",
            "x..y:80",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            parse_addr("1.2.3.4:99999"),
            Err(ValueError::BadPort(_))
        ));
    }

    #[test]
    fn json_values() {
        assert_eq!(
            parse_value(r#"{"addr":"172.17.8.101:55555","weight":2,"drain":true}"#).unwrap(),
            Value {
                addr: "172.17.8.101:55555".into(),
                weight: 2,
                drain: true
            }
        );
        assert_eq!(parse_value(r#"{"addr":"h:1"}"#).unwrap().weight, 1);
        assert!(parse_value(r#"{"addr":"h:0"}"#).is_err());
        assert!(parse_value(r#"{"weight":2}"#).is_err());
        assert!(parse_value(r#"{"addr":"h:1","weight":300}"#).is_err());
        assert!(parse_value("{broken").is_err());
        assert_eq!(parse_value(" 10.0.0.1:80\n").unwrap().addr, "10.0.0.1:80");
    }
}
