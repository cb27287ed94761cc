//! A route's traffic policy: what the data plane does with a request besides picking its
//! backend (access lists, redirects, rate limits, header rules), read from a
//! `[[frontend.route]]` or a whole `[[frontend]]` and validated into one [`Policy`]. A route's
//! own value wins, key by key, over its frontend's ([`Policy::over`]). The data plane evaluates
//! it in `http::guard` (`allow`/`deny`, `rate_limit`) and `http::policy` (the rest); the lists
//! and buckets are `cidr.rs`'s and `limiter.rs`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::cidr::CidrSet;
use super::defaults::{
    DEFAULT_RATE_LIMIT_KEY, DEFAULT_REDIRECT_CODE, HTTPS_REDIRECT_CODE, HTTPS_REDIRECT_LOCATION,
    MAX_RATE_LIMIT_KEYS,
};
use super::limiter::Limiter;
use super::size::FileSize;
use super::{ConfigError, invalid};

/// Redirect codes a `redirect` may give (HAProxy's `redirect ... code` takes the same).
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Fields no header rule may touch: hop-by-hop (RFC 9110 7.6.1) and framing fields, which
/// the proxy itself writes for each hop; a rule on them would break the message. `Host` is
/// refused on `remove` only (setting it rewrites the host the upstream sees).
pub const PROTECTED_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "trailer",
    "proxy-connection",
    "content-length",
];

/// The policy keys as written, in a `[[frontend]]` or a `[[frontend.route]]`.
#[derive(Debug, Default)]
pub(super) struct FilePolicy {
    pub(super) allow: Option<Vec<String>>,
    pub(super) deny: Option<Vec<String>>,
    pub(super) rate_limit: Option<FileRateLimit>,
    pub(super) redirect: Option<FileRedirect>,
    pub(super) request_headers: Option<FileHeaderRules>,
    pub(super) response_headers: Option<FileHeaderRules>,
    pub(super) max_body_size: Option<FileSize>,
}

/// `redirect = "https"` or `redirect = { location = "...", code = 301 }`.
#[derive(Debug)]
pub(super) enum FileRedirect {
    Scheme(String),
    To(FileRedirectTo),
}

/// `{ location = "...", code = 301 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedirectTo {
    location: String,
    code: Option<u16>,
}

/// By hand rather than `#[serde(untagged)]`, which would answer a misspelt key in the table
/// with "data did not match any variant" instead of naming it.
impl<'de> Deserialize<'de> for FileRedirect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileRedirect;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"https\" or { location = \"...\", code = 301 }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileRedirect, E> {
                Ok(FileRedirect::Scheme(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<FileRedirect, A::Error> {
                FileRedirectTo::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(FileRedirect::To)
            }
        }
        d.deserialize_any(V)
    }
}

/// `rate_limit = { rate = "100/s", burst = 200, key = "source" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateLimit {
    rate: String,
    burst: Option<u32>,
    key: Option<String>,
}

/// `{ set = { NAME = VALUE }, add = { NAME = VALUE }, remove = [NAME] }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHeaderRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// What happens to a request besides forwarding it, in this order: `allow`/`deny`, then
/// `redirect`, then `rate_limit`, then the header rules, then balancing. Every key left out
/// does nothing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Policy {
    /// Only clients in these networks are served (`403` for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<CidrSet>,
    /// Clients in these networks get `403`. With `allow` too, a client must be in `allow` and
    /// not in `deny`: `deny` wins, as HAProxy's `http-request deny` rules for both lists, and
    /// nginx's `deny` listed before `allow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<CidrSet>,
    /// `429` past a rate per client (or per header value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Applied to the request before it goes upstream.
    pub request_headers: Option<HeaderRules>,
    /// Applied to the upstream's response before it goes to the client.
    pub response_headers: Option<HeaderRules>,
    /// The largest request body forwarded, in bytes (`413` beyond it: `http::body_limit`).
    pub max_body_size: Option<u64>,
}

impl Policy {
    /// Whether it does nothing (then the data plane skips it).
    pub fn is_empty(&self) -> bool {
        self.redirect.is_none()
            && self.request_headers.is_none()
            && self.response_headers.is_none()
            && self.max_body_size.is_none()
            && self.allow.is_none()
            && self.deny.is_none()
            && self.rate_limit.is_none()
    }

    /// Takes `old`'s buckets if its `rate_limit` is the same as this one's.
    pub fn keep_buckets(&mut self, old: &Policy) {
        if let (Some(new), Some(old)) = (&mut self.rate_limit, &old.rate_limit)
            && new == old
        {
            new.limiter = Arc::clone(&old.limiter);
        }
    }

    /// A route's policy over its frontend's: each key the route sets wins whole (a route's
    /// `request_headers` replaces the frontend's, it is not merged with them; a route's
    /// `allow` replaces the frontend's `allow`, while the frontend's `deny` still applies unless
    /// the route sets its own). A route without its own `rate_limit` shares the frontend's
    /// buckets with the other such routes.
    pub fn over(self, frontend: &Policy) -> Policy {
        Policy {
            allow: self.allow.or_else(|| frontend.allow.clone()),
            deny: self.deny.or_else(|| frontend.deny.clone()),
            rate_limit: self.rate_limit.or_else(|| frontend.rate_limit.clone()),
            redirect: self.redirect.or_else(|| frontend.redirect.clone()),
            request_headers: self
                .request_headers
                .or_else(|| frontend.request_headers.clone()),
            response_headers: self
                .response_headers
                .or_else(|| frontend.response_headers.clone()),
            max_body_size: self.max_body_size.or(frontend.max_body_size),
        }
    }
}

/// `rate_limit`: a token bucket per key, `per_period` tokens a `period` up to `burst`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// As written (`100/s`).
    pub rate: String,
    pub per_period: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: RateKey,
    /// The buckets, shared by every route this policy applies to.
    pub limiter: Arc<Limiter>,
}

/// Two limits are the same when written the same (their buckets are not compared).
impl PartialEq for RateLimit {
    fn eq(&self, o: &Self) -> bool {
        (self.per_period, self.period, self.burst, &self.key)
            == (o.per_period, o.period, o.burst, &o.key)
    }
}

impl serde::Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RateLimit", 3)?;
        st.serialize_field("rate", &self.rate)?;
        st.serialize_field("burst", &self.burst)?;
        let key = match &self.key {
            RateKey::Source => "source".to_string(),
            RateKey::Header(h) => format!("header:{h}"),
        };
        st.serialize_field("key", &key)?;
        st.end()
    }
}

/// What a `rate_limit` counts requests under.
#[derive(Debug, Clone, PartialEq)]
pub enum RateKey {
    /// The client's address (the PROXY header's source with `accept_proxy`).
    Source,
    /// The value of this request header; a request without it is counted under its client's
    /// address (so leaving the header out does not escape the limit).
    Header(HeaderName),
}

/// A redirect: `code` with `Location` filled from `location`, where `{host}` is the request's
/// host without its port and `{path}` its path with the query.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Redirect {
    pub location: String,
    pub code: u16,
}

/// Header rules, applied in this order: `remove`, `set` (replaces every field of the name),
/// `add` (appends one more).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// As written in the file (for the admin API's config).
impl serde::Serialize for HeaderRules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let pairs = |v: &[(HeaderName, HeaderValue)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        };
        let mut st = s.serialize_struct("HeaderRules", 3)?;
        st.serialize_field("set", &pairs(&self.set))?;
        st.serialize_field("add", &pairs(&self.add))?;
        let remove: Vec<&str> = self.remove.iter().map(|n| n.as_str()).collect();
        st.serialize_field("remove", &remove)?;
        st.end()
    }
}

/// Validates the policy keys of a frontend or route; `key` names where they are
/// (`frontend "web"`, `frontend "web".route[1]`). Every problem is reported.
pub(super) fn policy(key: &str, f: FilePolicy) -> Result<Policy, ConfigError> {
    fn take<T>(errors: &mut Vec<ConfigError>, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| errors.push(e)).ok()
    }
    let mut errors = Vec::new();
    let allow = f
        .allow
        .and_then(|l| take(&mut errors, cidrs(&format!("{key}.allow"), &l)));
    let deny = f
        .deny
        .and_then(|l| take(&mut errors, cidrs(&format!("{key}.deny"), &l)));
    let rate_limit = f
        .rate_limit
        .and_then(|r| take(&mut errors, rate_limit(&format!("{key}.rate_limit"), r)));
    let redirect = f
        .redirect
        .and_then(|r| take(&mut errors, redirect(&format!("{key}.redirect"), r)));
    let request_headers = f.request_headers.and_then(|r| {
        take(
            &mut errors,
            header_rules(&format!("{key}.request_headers"), r),
        )
    });
    let response_headers = f.response_headers.and_then(|r| {
        take(
            &mut errors,
            header_rules(&format!("{key}.response_headers"), r),
        )
    });
    let max_body_size = f.max_body_size.and_then(|s| {
        take(
            &mut errors,
            super::size::bytes(&s).map_err(|e| invalid(format!("{key}.max_body_size"), e)),
        )
    });
    if errors.is_empty() {
        Ok(Policy {
            allow,
            deny,
            rate_limit,
            redirect,
            request_headers,
            response_headers,
            max_body_size,
        })
    } else {
        Err(ConfigError::from_list(errors))
    }
}

fn cidrs(key: &str, list: &[String]) -> Result<CidrSet, ConfigError> {
    CidrSet::parse(list).map_err(|(i, m)| invalid(format!("{key}[{i}]"), m))
}

/// `"100/s"`, `"6000/m"`, `"10/h"`: how many, and per how long.
fn rate(key: &str, rate: &str) -> Result<(u32, Duration), ConfigError> {
    let bad = || {
        invalid(
            key,
            format!(
                "{rate:?} is not a rate: write a count per s, m or h (\"100/s\", \"6000/m\", \"10/h\")"
            ),
        )
    };
    let (n, unit) = rate.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000_000 {
        return Err(invalid(
            key,
            format!("{rate:?}: the count must be from 1 to 1000000000"),
        ));
    }
    Ok((n, period))
}

fn rate_limit(key: &str, f: FileRateLimit) -> Result<RateLimit, ConfigError> {
    let (per_period, period) = rate(&format!("{key}.rate"), &f.rate)?;
    // Without `burst`, a whole period's worth may come at once.
    let burst = f.burst.unwrap_or(per_period);
    if burst == 0 {
        return Err(invalid(
            format!("{key}.burst"),
            "must be at least 1 (a burst of 0 refuses everything)",
        ));
    }
    let written = f.key.as_deref().unwrap_or(DEFAULT_RATE_LIMIT_KEY);
    let rkey = match written.strip_prefix("header:") {
        None if written == "source" => RateKey::Source,
        Some(name) => RateKey::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                format!("{key}.key"),
                format!("{name:?} is not a header name"),
            )
        })?),
        None => {
            return Err(invalid(
                format!("{key}.key"),
                format!("{written:?}: write \"source\" or \"header:NAME\""),
            ));
        }
    };
    let limiter =
        Limiter::new(per_period, period, burst, MAX_RATE_LIMIT_KEYS).ok_or_else(|| {
            invalid(
                format!("{key}.rate"),
                format!("{:?} is too fine to time", f.rate),
            )
        })?;
    Ok(RateLimit {
        rate: f.rate,
        per_period,
        period,
        burst,
        key: rkey,
        limiter: Arc::new(limiter),
    })
}

fn redirect(key: &str, r: FileRedirect) -> Result<Redirect, ConfigError> {
    match r {
        FileRedirect::Scheme(s) if s == "https" => Ok(Redirect {
            location: HTTPS_REDIRECT_LOCATION.to_string(),
            code: HTTPS_REDIRECT_CODE,
        }),
        FileRedirect::Scheme(s) => Err(invalid(
            key,
            format!("{s:?}: write \"https\" or {{ location = \"...\", code = 301 }}"),
        )),
        FileRedirect::To(FileRedirectTo { location, code }) => {
            let code = code.unwrap_or(DEFAULT_REDIRECT_CODE);
            if !REDIRECT_CODES.contains(&code) {
                return Err(invalid(
                    format!("{key}.code"),
                    format!("{code} is not a redirect code: 301, 302, 303, 307 or 308"),
                ));
            }
            // With its placeholders filled, it must be a field value (no control characters).
            let sample = location.replace("{host}", "h").replace("{path}", "/");
            if location.is_empty() || HeaderValue::from_str(&sample).is_err() {
                return Err(invalid(
                    format!("{key}.location"),
                    format!(
                        "{location:?} is not a Location value (a URL or a path, visible ASCII)"
                    ),
                ));
            }
            Ok(Redirect { location, code })
        }
    }
}

/// A header name a rule may name (`op`: `set`, `add` or `remove`).
fn rule_name(key: &str, op: &str, name: &str) -> Result<HeaderName, ConfigError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(key, format!("{name:?} is not a header name")))?;
    if PROTECTED_HEADERS.contains(&n.as_str()) || (op == "remove" && n == http::header::HOST) {
        return Err(invalid(
            key,
            format!(
                "{name:?} is a hop-by-hop or framing field: the proxy writes it for each connection, and a rule would break the message"
            ),
        ));
    }
    Ok(n)
}

fn header_rules(key: &str, f: FileHeaderRules) -> Result<HeaderRules, ConfigError> {
    let pairs = |op: &str, m: BTreeMap<String, String>| {
        let key = format!("{key}.{op}");
        m.into_iter()
            .map(|(name, value)| {
                let n = rule_name(&key, op, &name)?;
                let v = HeaderValue::from_str(&value).map_err(|_| {
                    invalid(
                        key.as_str(),
                        format!("{name:?} = {value:?}: not a header value (visible ASCII, spaces and tabs)"),
                    )
                })?;
                Ok((n, v))
            })
            .collect::<Result<Vec<_>, ConfigError>>()
    };
    let set = pairs("set", f.set)?;
    let add = pairs("add", f.add)?;
    let rkey = format!("{key}.remove");
    let remove = f
        .remove
        .iter()
        .map(|name| rule_name(&rkey, "remove", name))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(HeaderRules { set, add, remove })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BACKENDS: &str = "[[backend]]\nname = \"api\"\nservers = [\"127.0.0.1:1\"]\n";
    const WEB: &str = "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nbackend = \"api\"\n";

    fn config(text: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{text}\n{BACKENDS}")).map_err(|e| e.to_string())
    }

    #[test]
    fn route_values_win_over_the_frontends() {
        let text = format!(
            "{WEB}redirect = \"https\"\nresponse_headers = {{ set = {{ \"X-Frame-Options\" = \"DENY\" }} }}\n\
             [[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"api\"\n\
             [[frontend.route]]\nhost = \"b.example.com\"\nbackend = \"api\"\n\
             redirect = {{ location = \"https://new.example.com{{path}}\", code = 301 }}\n\
             response_headers = {{ remove = [\"Server\"] }}\n"
        );
        let c = config(&text).unwrap();
        let f = &c.frontends[0];
        let fr = f.policy.redirect.as_ref().unwrap();
        assert_eq!(
            (fr.location.as_str(), fr.code),
            ("https://{host}{path}", 308)
        );
        // Route 0 sets nothing: the frontend's policy whole.
        assert_eq!(f.routes[0].policy, f.policy);
        // Route 1 sets both keys: its own, nothing merged from the frontend's.
        let p = &f.routes[1].policy;
        let r = p.redirect.as_ref().unwrap();
        assert_eq!(
            (r.location.as_str(), r.code),
            ("https://new.example.com{path}", 301)
        );
        let rh = p.response_headers.as_ref().unwrap();
        assert!(rh.set.is_empty());
        assert_eq!(rh.remove, vec![http::header::SERVER]);
    }

    #[test]
    fn rules_on_framing_fields_and_bad_values_are_refused_naming_the_rule() {
        let cases = [
            (
                "request_headers = { set = { \"Connection\" = \"close\" } }",
                "frontend \"web\".route[0].request_headers.set: \"Connection\" is a hop-by-hop",
            ),
            (
                "response_headers = { add = { \"Transfer-Encoding\" = \"chunked\" } }",
                "frontend \"web\".route[0].response_headers.add: \"Transfer-Encoding\"",
            ),
            (
                "request_headers = { remove = [\"Host\"] }",
                "frontend \"web\".route[0].request_headers.remove: \"Host\"",
            ),
            (
                "request_headers = { remove = [\"content-length\"] }",
                "frontend \"web\".route[0].request_headers.remove: \"content-length\"",
            ),
            (
                "request_headers = { set = { \"Bad Name\" = \"x\" } }",
                "frontend \"web\".route[0].request_headers.set: \"Bad Name\" is not a header name",
            ),
            (
                "response_headers = { set = { \"X-A\" = \"a\\nb\" } }",
                "frontend \"web\".route[0].response_headers.set: \"X-A\" = \"a\\nb\": not a header value",
            ),
            (
                "redirect = { location = \"https://x{path}\", code = 200 }",
                "frontend \"web\".route[0].redirect.code: 200 is not a redirect code",
            ),
            (
                "redirect = \"http\"",
                "frontend \"web\".route[0].redirect: \"http\"",
            ),
            (
                "redirect = { location = \"https://x{path}\", cod = 301 }",
                "unknown key; did you mean `code`?",
            ),
            ("redirect = 301", "\"https\" or { location"),
            (
                "allow = [\"10.0.0.0/8\", \"10.0.0.0/40\"]",
                "frontend \"web\".route[0].allow[1]: \"10.0.0.0/40\" is not a CIDR",
            ),
            (
                "deny = [\"nope\"]",
                "frontend \"web\".route[0].deny[0]: \"nope\" is not a CIDR",
            ),
            (
                "rate_limit = { rate = \"100/d\" }",
                "frontend \"web\".route[0].rate_limit.rate: \"100/d\" is not a rate",
            ),
            (
                "rate_limit = { rate = \"0/s\" }",
                "frontend \"web\".route[0].rate_limit.rate: \"0/s\": the count must be",
            ),
            (
                "rate_limit = { rate = \"10/s\", burst = 0 }",
                "frontend \"web\".route[0].rate_limit.burst: must be at least 1",
            ),
            (
                "rate_limit = { rate = \"10/s\", key = \"cookie:x\" }",
                "frontend \"web\".route[0].rate_limit.key: \"cookie:x\": write \"source\"",
            ),
            (
                "rate_limit = { rate = \"10/s\", key = \"header:a b\" }",
                "frontend \"web\".route[0].rate_limit.key: \"a b\" is not a header name",
            ),
            (
                "rate_limit = { rate = \"10/s\", brust = 3 }",
                "unknown key; did you mean `burst`?",
            ),
        ];
        for (rule, want) in cases {
            let text =
                format!("{WEB}[[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\n{rule}\n");
            let e = config(&text).expect_err(rule);
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
        // Setting Host is allowed (it rewrites the host the upstream sees); so is a frontend's.
        let ok = format!("{WEB}request_headers = {{ set = {{ \"Host\" = \"internal\" }} }}\n");
        config(&ok).unwrap();
        let e = config(&format!(
            "{WEB}request_headers = {{ set = {{ \"TE\" = \"x\" }} }}\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("frontend \"web\".request_headers.set: \"TE\""),
            "{e}"
        );
    }

    #[test]
    fn max_body_size_is_read_route_over_frontend_and_bad_sizes_name_the_key() {
        let text = format!(
            "{WEB}max_body_size = \"1MiB\"\n\
             [[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"api\"\n\
             [[frontend.route]]\nhost = \"b.example.com\"\nbackend = \"api\"\nmax_body_size = 512\n"
        );
        let c = config(&text).unwrap();
        let f = &c.frontends[0];
        assert_eq!(f.policy.max_body_size, Some(1 << 20));
        assert_eq!(f.routes[0].policy.max_body_size, Some(1 << 20));
        assert_eq!(f.routes[1].policy.max_body_size, Some(512));
        for (value, want) in [
            (
                "\"10XB\"",
                "frontend \"web\".route[0].max_body_size: \"10XB\": write a whole number",
            ),
            (
                "0",
                "frontend \"web\".route[0].max_body_size: 0: leave the key out",
            ),
            (
                "-3",
                "frontend \"web\".route[0].max_body_size: -3: must not be negative",
            ),
        ] {
            let text = format!(
                "{WEB}[[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\nmax_body_size = {value}\n"
            );
            let e = config(&text).expect_err(value);
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
        let e = config(&format!("{WEB}max_body_size = true\n")).unwrap_err();
        assert!(e.contains("max_body_size"), "{e}");
    }

    #[test]
    fn rates_access_lists_and_limits_go_over_key_by_key() {
        let text = format!(
            "{WEB}allow = [\"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]\n\
             rate_limit = {{ rate = \"6000/m\" }}\n\
             [[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\n\
             allow = [\"192.168.0.0/16\", \"2001:db8::/32\"]\n\
             rate_limit = {{ rate = \"10/h\", burst = 3, key = \"header:X-Api-Key\" }}\n\
             [[frontend.route]]\nhost = \"b.com\"\nbackend = \"api\"\n"
        );
        let c = config(&text).unwrap();
        let f = &c.frontends[0];
        let fl = f.policy.rate_limit.as_ref().unwrap();
        assert_eq!(
            (fl.per_period, fl.period, fl.burst),
            (6000, std::time::Duration::from_secs(60), 6000)
        );
        assert_eq!(fl.key, super::RateKey::Source);
        let a = &f.routes[0].policy;
        assert_eq!(a.allow.as_ref().unwrap().networks().len(), 2);
        // The frontend's deny still applies under the route's own allow.
        assert_eq!(a.deny, f.policy.deny);
        let al = a.rate_limit.as_ref().unwrap();
        assert_eq!(
            (al.per_period, al.period, al.burst),
            (10, std::time::Duration::from_secs(3600), 3)
        );
        assert_eq!(
            al.key,
            super::RateKey::Header(http::HeaderName::from_static("x-api-key"))
        );
        // Route b sets nothing: the frontend's limit, and its very buckets.
        let b = f.routes[1].policy.rate_limit.as_ref().unwrap();
        assert!(std::sync::Arc::ptr_eq(&b.limiter, &fl.limiter));
        let json = serde_json::to_value(&f.routes[0].policy).unwrap();
        assert_eq!(json["rate_limit"]["key"], "header:x-api-key");
        assert_eq!(json["allow"][1], "2001:db8::/32");
    }
}
