//! What an HTTP/2 client's request must satisfy before it is forwarded, and how its fields are
//! turned into HTTP/1.1 ones (RFC 9113 8.2.3 and 8.3.1, RFC 9110 8.6): one pure function over a
//! request head, [`h2_to_h1`], which `forward` applies to every HTTP/2 request (whatever the
//! backend's protocol) and the `h2_to_h1` fuzz target drives with arbitrary heads.
//!
//! - Authority: at most one `host` field, with valid syntax; when `:authority` is present too,
//!   both name the same host and port (the host compared case-insensitively, a missing port
//!   read as the scheme's default); one of the two must be present. The forwarded `Host` is
//!   `:authority` as sent (else the `host` field). HTTP/1.1 requests get the same checks in
//!   `crate::http::refuse`.
//! - `content-length`: fields (or list elements) that all carry the same decimal value are
//!   collapsed into one field; differing or malformed values are refused.
//! - `cookie`: HTTP/2 may split the Cookie header into one field per crumb; they are joined
//!   with `; ` into one field, which is what HTTP/1.1 servers expect.
//!
//! A request that breaks a rule gets `400` (nginx answers `400` to a Host that differs from
//! `:authority`; HAProxy replaces it with `:authority`).

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::Scheme;

use crate::http::split_host;

/// Why an HTTP/2 request is malformed (the text goes into the `400` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// Separator of the joined Cookie crumbs (RFC 9113 8.2.3).
const COOKIE_SEPARATOR: &[u8] = b"; ";

/// Checks an HTTP/2 request head and rewrites its fields for HTTP/1.1 in place (see the
/// module documentation): exactly one `Host`, equal to `:authority` when there is one; at most
/// one `Content-Length`; at most one `Cookie`. `parts.uri` carries `:scheme` and `:authority`.
/// On `Err` the head may be partly rewritten and must not be forwarded.
///
/// NOTE: runs on every HTTP/2 request: it allocates only to join cookie crumbs or rewrite a
/// Content-Length, and a `Host` equal to `:authority` (or a lone `Host`) costs one
/// `HeaderValue` built from the authority's bytes.
pub fn h2_to_h1(parts: &mut Parts) -> Result<(), Malformed> {
    host(parts)?;
    content_length(&mut parts.headers)?;
    join_cookies(&mut parts.headers)
}

/// RFC 9113 8.3.1: `Host` and `:authority` must agree; the forwarded `Host` is `:authority`.
fn host(parts: &mut Parts) -> Result<(), Malformed> {
    let headers = &mut parts.headers;
    let mut hosts = headers.get_all(header::HOST).iter();
    let field = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(Malformed("more than one Host header")),
        (f, None) => f,
    };
    let Some(authority) = parts.uri.authority() else {
        // No `:authority`: the `host` field is the only authority, as in HTTP/1.1.
        return match field {
            Some(f) if f.to_str().ok().and_then(split_host).is_some() => Ok(()),
            Some(_) => Err(Malformed("invalid Host header")),
            None => Err(Malformed("neither :authority nor Host")),
        };
    };
    let Some((host, port)) = split_host(authority.as_str()) else {
        return Err(Malformed("invalid :authority"));
    };
    if let Some(f) = field {
        let Some((fhost, fport)) = f.to_str().ok().and_then(split_host) else {
            return Err(Malformed("invalid Host header"));
        };
        let default = if parts.uri.scheme() == Some(&Scheme::HTTPS) {
            443
        } else {
            80
        };
        let same =
            host.eq_ignore_ascii_case(fhost) && port.unwrap_or(default) == fport.unwrap_or(default);
        if !same {
            return Err(Malformed("the Host header does not match :authority"));
        }
        if f.as_bytes() == authority.as_str().as_bytes() {
            return Ok(());
        }
    }
    // `split_host` accepted it, so every byte is a valid field value byte.
    let value =
        HeaderValue::from_str(authority.as_str()).map_err(|_| Malformed("invalid :authority"))?;
    headers.insert(header::HOST, value);
    Ok(())
}

/// RFC 9110 8.6: several Content-Length values are one value or a malformed request.
fn content_length(headers: &mut HeaderMap) -> Result<(), Malformed> {
    let mut fields = 0usize;
    let mut value: Option<u64> = None;
    // Whether the one field is the value's plain decimal form already.
    let mut canonical = true;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        fields += 1;
        for element in v.as_bytes().split(|&b| b == b',') {
            let digits = element.trim_ascii();
            let n = parse_decimal(digits).ok_or(Malformed("invalid Content-Length"))?;
            // No surrounding space, no leading zero.
            canonical &= digits.len() == element.len() && (digits.len() == 1 || digits[0] != b'0');
            match value {
                Some(m) if m != n => {
                    return Err(Malformed("differing Content-Length values"));
                }
                Some(_) => canonical = false,
                None => value = Some(n),
            }
        }
    }
    if let Some(n) = value
        && (fields > 1 || !canonical)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(())
}

/// A non-empty run of ASCII digits as a `u64` (no sign, no overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// RFC 9113 8.2.3: the crumbs of a split Cookie header are joined with `; ` before the request
/// leaves HTTP/2. Empty crumbs are left out; a Cookie made only of them is removed.
fn join_cookies(headers: &mut HeaderMap) -> Result<(), Malformed> {
    let crumbs = headers.get_all(header::COOKIE);
    let mut it = crumbs.iter();
    if it.next().is_none() || it.next().is_none() {
        return Ok(());
    }
    let len: usize = crumbs
        .iter()
        .map(|c| c.len() + COOKIE_SEPARATOR.len())
        .sum();
    let mut joined = BytesMut::with_capacity(len);
    for c in crumbs.iter().filter(|c| !c.is_empty()) {
        if !joined.is_empty() {
            joined.put_slice(COOKIE_SEPARATOR);
        }
        joined.put_slice(c.as_bytes());
    }
    if joined.is_empty() {
        headers.remove(header::COOKIE);
        return Ok(());
    }
    // Valid field values joined by `; ` are a valid field value.
    let value = HeaderValue::from_maybe_shared(joined.freeze())
        .map_err(|_| Malformed("invalid Cookie header"))?;
    headers.insert(header::COOKIE, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    /// An HTTP/2 request head for `uri` with `fields`, as hyper's server hands it over.
    fn head(uri: &str, fields: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().version(http::Version::HTTP_2).uri(uri);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn translate(uri: &str, fields: &[(&str, &str)]) -> Result<Parts, &'static str> {
        let mut p = head(uri, fields);
        h2_to_h1(&mut p).map(|()| p).map_err(|m| m.0)
    }

    fn all<'a>(p: &'a Parts, name: &str) -> Vec<&'a str> {
        p.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn host_comes_from_authority() {
        let p = translate("http://a.test/x", &[]).unwrap();
        assert_eq!(all(&p, "host"), ["a.test"]);
        // Same host and port after scheme-based normalization: :authority is forwarded.
        for (uri, host) in [
            ("http://A.test/", "a.TEST"),
            ("http://a.test/", "a.test:80"),
            ("http://a.test:80/", "a.test"),
            ("https://a.test/", "a.test:443"),
            ("http://a.test:8080/", "a.test:8080"),
            ("http://[::1]:81/", "[::1]:81"),
            ("http://a.test/", "a.test:"),
        ] {
            let p =
                translate(uri, &[("host", host)]).unwrap_or_else(|e| panic!("{uri} {host}: {e}"));
            let authority = p.uri.authority().unwrap().as_str();
            assert_eq!(all(&p, "host"), [authority], "{uri} {host}");
        }
        // No :authority: the host field stands.
        let p = translate("/x", &[("host", "b.test")]).unwrap();
        assert_eq!(all(&p, "host"), ["b.test"]);
    }

    #[test]
    fn conflicting_or_invalid_authorities_are_refused() {
        let refused = [
            (
                "http://a.test/",
                &[("host", "a.test"), ("host", "a.test")][..],
            ),
            ("http://a.test/", &[("host", "b.test")]),
            ("http://a.test/", &[("host", "a.test:8080")]),
            ("https://a.test/", &[("host", "a.test:80")]),
            ("http://a.test/", &[("host", "h evil")]),
            ("http://a.test/", &[("host", "a.test, b.test")]),
            ("http://a.test/", &[("host", "")]),
            ("http://u@a.test/", &[]),
            ("/x", &[]),
            ("/x", &[("host", "h evil")]),
            ("/x", &[("host", "a"), ("host", "b")]),
        ];
        for (uri, fields) in refused {
            assert!(translate(uri, fields).is_err(), "{uri} {fields:?}");
        }
    }

    #[test]
    fn content_lengths_collapse_or_are_refused() {
        let cl = |values: &[&str]| {
            let fields: Vec<(&str, &str)> = values.iter().map(|v| ("content-length", *v)).collect();
            translate("http://a/", &fields).map(|p| all(&p, "content-length").join("|"))
        };
        assert_eq!(cl(&[]), Ok(String::new()));
        assert_eq!(cl(&["5"]), Ok("5".into()));
        assert_eq!(cl(&["5", "5"]), Ok("5".into()));
        assert_eq!(cl(&["5", "5, 5"]), Ok("5".into()));
        assert_eq!(cl(&["05", "5"]), Ok("5".into()));
        assert_eq!(cl(&["0"]), Ok("0".into()));
        assert_eq!(cl(&["007"]), Ok("7".into()));
        assert_eq!(
            cl(&["18446744073709551615"]),
            Ok("18446744073709551615".into())
        );
        for bad in [
            &["5", "6"][..],
            &["5, 6"],
            &["-5"],
            &["+5"],
            &["5", ""],
            &["5,"],
            &["0x5"],
            &["18446744073709551616"],
        ] {
            assert!(cl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookie_crumbs_are_joined() {
        let p = translate(
            "http://a/",
            &[
                ("cookie", "a=1"),
                ("x-other", "o"),
                ("cookie", "b=2"),
                ("cookie", "c=3"),
            ],
        )
        .unwrap();
        assert_eq!(all(&p, "cookie"), ["a=1; b=2; c=3"]);
        assert_eq!(all(&p, "x-other"), ["o"]);
        let p = translate("http://a/", &[("cookie", "a=1")]).unwrap();
        assert_eq!(all(&p, "cookie"), ["a=1"]);
        let p = translate("http://a/", &[("cookie", ""), ("cookie", "b=2")]).unwrap();
        assert_eq!(all(&p, "cookie"), ["b=2"]);
        let p = translate("http://a/", &[("cookie", ""), ("cookie", "")]).unwrap();
        assert!(all(&p, "cookie").is_empty());
    }
}
