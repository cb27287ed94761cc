//! Fuzz target: the checks and translation of an HTTP/2 request head into HTTP/1.1 fields
//! (`h2_rules::h2_to_h1`: Host and `:authority`, Content-Length, Cookie crumbs), over heads
//! built from the input: byte 0's bit 0 picks `:scheme` (http or https) and bit 1 says whether
//! the first line is `:authority`; every further line (split at `\n`) is a field, its first
//! byte choosing the name (`host`, `cookie`, `content-length`, `x-other`, or the name up to a
//! `:` in the line) and the rest its value. Heads hyper's server could not hand over (an
//! invalid authority, name or value) are skipped.
//! Oracle: no panic; a head that passes has exactly one Host, equal to `:authority` as sent
//! (or to its only `host` field when it has no `:authority`), at most one Content-Length
//! (the decimal value of every one it had), at most one Cookie (its non-empty crumbs joined
//! with `; `), and every other field as it was; and a head whose authority is a plain
//! `name[:port]`, with no `host` field or one equal to it and no Content-Length, passes.
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use switchyard::http::h2_rules::h2_to_h1;

const NAMES: [&str; 4] = ["host", "cookie", "content-length", "x-other"];

/// A head built from `data`, and its `:authority` (if any), or `None` if hyper could not
/// have handed it over.
fn head(data: &[u8]) -> Option<(http::request::Parts, Option<String>)> {
    let (&flags, rest) = data.split_first()?;
    let mut lines = rest.split(|&b| b == b'\n');
    let scheme = if flags & 1 == 1 { "https" } else { "http" };
    let mut uri = Uri::builder().scheme(scheme).path_and_query("/");
    let mut authority = None;
    if flags & 2 == 2 {
        let a = std::str::from_utf8(lines.next()?).ok()?;
        uri = uri.authority(a);
        authority = Some(a.to_string());
    }
    // Without `:authority`, hyper's server hands over the path alone.
    let uri = match authority {
        Some(_) => uri.build().ok()?,
        None => Uri::from_static("/"),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let (name, value) = match NAMES.get(usize::from(pick % 5)) {
            Some(n) => (HeaderName::from_static(n), value),
            None => {
                let colon = value.iter().position(|&b| b == b':')?;
                let name = HeaderName::from_bytes(&value[..colon]).ok()?;
                (name, &value[colon + 1..])
            }
        };
        headers.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.version = Version::HTTP_2;
    parts.uri = uri;
    parts.headers = headers;
    Some((parts, authority))
}

fn values<'a>(h: &'a HeaderMap, name: &HeaderName) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(|v| v.as_bytes()).collect()
}

/// `name[:port]` with a lower-case letter/digit/`-`/`.` name and a port that fits.
fn plain_authority(a: &str) -> bool {
    let (name, port) = a.split_once(':').unwrap_or((a, "1"));
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535)
}

fuzz_target!(|data: &[u8]| {
    let Some((mut parts, authority)) = head(data) else {
        return;
    };
    let before = parts.headers.clone();
    let hosts = values(&before, &header::HOST);
    let lengths = values(&before, &header::CONTENT_LENGTH);
    let result = h2_to_h1(&mut parts);

    let must_pass = authority.as_deref().is_some_and(|a| {
        plain_authority(a) && (hosts.is_empty() || hosts == [a.as_bytes()]) && lengths.is_empty()
    });
    assert!(
        result.is_ok() || !must_pass,
        "refused ({result:?}): {authority:?} {before:?}"
    );
    if result.is_err() {
        return;
    }
    let after = &parts.headers;

    let host = values(after, &header::HOST);
    match &authority {
        Some(a) => assert_eq!(host, [a.as_bytes()], "{before:?}"),
        None => assert_eq!(host, hosts, "{before:?}"),
    }
    assert_eq!(host.len(), 1);

    let length = values(after, &header::CONTENT_LENGTH);
    assert!(length.len() <= 1, "{after:?}");
    assert_eq!(length.is_empty(), lengths.is_empty());
    if let Some(&l) = length.first() {
        let l = std::str::from_utf8(l).unwrap();
        let n: u64 = l.parse().unwrap();
        assert_eq!(l, n.to_string(), "not plain decimal: {l:?}");
        for v in &lengths {
            for e in std::str::from_utf8(v).unwrap().split(',') {
                assert_eq!(e.trim().parse::<u64>().ok(), Some(n), "{before:?}");
            }
        }
    }

    let crumbs = values(&before, &header::COOKIE);
    let cookie = values(after, &header::COOKIE);
    assert!(cookie.len() <= 1, "{after:?}");
    if crumbs.len() > 1 {
        let joined: Vec<&[u8]> = crumbs.iter().copied().filter(|c| !c.is_empty()).collect();
        let joined = joined.join(&b"; "[..]);
        let want: Vec<&[u8]> = if joined.is_empty() { vec![] } else { vec![&joined[..]] };
        assert_eq!(cookie, want, "{before:?}");
    } else {
        assert_eq!(cookie, crumbs);
    }

    for name in before.keys().chain(after.keys()) {
        if [header::HOST, header::CONTENT_LENGTH, header::COOKIE].contains(name) {
            continue;
        }
        assert_eq!(values(&before, name), values(after, name), "{name}");
    }
});
