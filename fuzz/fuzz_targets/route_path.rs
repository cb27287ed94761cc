//! Fuzz target: the routing table's path normal form (`route::normalize_path`), its host
//! matchers (`HostMatch::parse`, `matches`) and its picks (`Table::route`, `Table::pick_sni`).
//! The input is `host\npath`, or a path alone (no host).
//! Oracle: no panic; a normalized path starts with '/', has no `//`, `/./`, `/../`, no trailing
//! `/.` or `/..`, no `?` or `#`, only escapes with upper-case hex that do not stand for an
//! unreserved character, and normalizing it again gives it back unchanged (borrowed); a path
//! normalize refuses, the table refuses too. A routed request took the route a scan of every
//! route in precedence order finds for its normalized path, and is forwarded with that path (less
//! the prefix of a stripping route), borrowed only when it is the request's own. A host parsed as
//! a route's host matches itself, round-trips through its written form, and a wildcard matches a
//! name below its suffix but not the suffix itself.
#![no_main]

use std::borrow::Cow;
use std::cmp::Reverse;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use switchyard::route::{
    BadPath, HostMatch, Route, Source, Table, normalize_path, parse_path_prefix, strip_prefix,
};

const FALLBACK: usize = 99;

fn route(host: Option<&str>, prefix: &str, strip: bool, sni: bool, backend: usize) -> Route {
    let host = HostMatch::parse(host).unwrap();
    Route {
        host: if sni { HostMatch::Any } else { host.clone() },
        path_prefix: parse_path_prefix(Some(prefix)).unwrap(),
        strip_prefix: strip,
        sni: sni.then_some(host),
        backend,
        backend_name: Arc::from(format!("b{backend}")),
        split: None,
        source: Source::Config,
        policy: (),
    }
}

/// Routes in file order, each to its own backend.
static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let hosts = [
        Some("api.example.com"),
        Some("*.example.com"),
        Some("*.a.example.com"),
        Some("[::1]"),
        None,
    ];
    let prefixes = ["/", "/v1/", "/v1", "/admin/", "/a.b/~"];
    let mut routes = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for (p, prefix) in prefixes.iter().enumerate() {
            let n = routes.len();
            routes.push(route(*host, prefix, (h + p) % 2 == 0, false, n));
        }
        let n = routes.len();
        routes.push(route(*host, "/", false, true, n));
    }
    // A duplicate: never picked (the first in the file wins).
    let n = routes.len();
    routes.push(route(Some("api.example.com"), "/v1/", false, false, n));
    routes
});

static TABLE: LazyLock<Table> =
    LazyLock::new(|| Table::new(ROUTES.clone(), Some((FALLBACK, Arc::from("fallback"))), ()));

/// The precedence rules as a scan of every route (SNI routes when `sni`).
fn scan(host: Option<&str>, path: &str, sni: bool) -> Option<&'static Route> {
    ROUTES
        .iter()
        .enumerate()
        .filter(|(_, r)| r.sni.is_some() == sni)
        .filter(|(_, r)| {
            let m = r.sni.as_ref().unwrap_or(&r.host);
            match host {
                Some(h) => m.matches(h),
                None => *m == HostMatch::Any,
            }
        })
        .filter(|(_, r)| sni || path.starts_with(r.path_prefix.as_str()))
        .min_by_key(|(i, r)| {
            let (class, suffix) = match r.sni.as_ref().unwrap_or(&r.host) {
                HostMatch::Exact(_) => (0, 0),
                HostMatch::Wildcard(s) => (1, s.len()),
                HostMatch::Any => (2, 0),
            };
            (class, Reverse(suffix), Reverse(r.path_prefix.len()), *i)
        })
        .map(|(_, r)| r)
}

fn check_normal(raw: &str, n: &str) {
    assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
    for bad in ["//", "/./", "/../", "?", "#"] {
        assert!(!n.contains(bad), "{raw:?} -> {n:?}");
    }
    assert!(
        !n.ends_with("/.") && !n.ends_with("/.."),
        "{raw:?} -> {n:?}"
    );
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let hex = &b[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "{raw:?} -> {n:?}"
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
            "{raw:?} -> {n:?}"
        );
    }
    assert_eq!(normalize_path(n), Ok(Cow::Borrowed(n)), "{raw:?}");
}

fn check_host(raw: &str) {
    let Ok(m) = HostMatch::parse(Some(raw)) else {
        return;
    };
    assert_eq!(
        HostMatch::parse(Some(&m.to_string())),
        Ok(m.clone()),
        "{raw:?}"
    );
    match &m {
        HostMatch::Exact(h) => {
            assert!(m.matches(h) && m.matches(raw), "{raw:?}");
            assert!(
                m.matches(&format!("{}:8080", h.to_ascii_uppercase())),
                "{raw:?}"
            );
        }
        HostMatch::Wildcard(s) => {
            assert!(
                m.matches(&format!("x.{s}")) && m.matches(&format!("x.y.{s}")),
                "{raw:?}"
            );
            assert!(!m.matches(s), "{raw:?}");
        }
        HostMatch::Any => panic!("{raw:?}: a host parsed as any host"),
    }
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let (host, path) = match input.split_once('\n') {
        Some((h, p)) => (Some(h), p),
        None => (None, &*input),
    };

    let normalized = normalize_path(path);
    if let Ok(n) = &normalized {
        check_normal(path, n);
        if let Cow::Borrowed(b) = n {
            assert_eq!(*b, path);
        }
    }

    let routed = TABLE.route(host, path);
    match (&routed, &normalized) {
        (Ok(r), _) if path == "*" => {
            assert_eq!(r.path, "*");
            assert_eq!(r.route, scan(host, "/", false), "{host:?}");
        }
        (Ok(r), Ok(n)) => {
            let want = scan(host, n, false);
            assert_eq!(r.route, want, "{host:?} {path:?}");
            assert_eq!(TABLE.pick(host, n), want, "{host:?} {path:?}");
            assert_eq!(
                r.backend,
                Some(want.map_or(FALLBACK, |w| w.backend)),
                "{host:?} {path:?}"
            );
            let forward = match want {
                Some(w) if w.strip_prefix => strip_prefix(n, &w.path_prefix),
                _ => Cow::Borrowed(&**n),
            };
            assert_eq!(r.path, forward, "{host:?} {path:?}");
            assert!(r.path.starts_with('/'), "{host:?} {path:?}");
            assert_eq!(
                matches!(r.path, Cow::Borrowed(_)),
                r.path == path,
                "{path:?}"
            );
        }
        (Ok(r), Err(e)) => panic!("{path:?} routed ({r:?}) but not normalized ({e:?})"),
        (Err(BadPath::Ambiguous), Err(e)) => panic!("{path:?}: ambiguous, yet {e:?}"),
        (Err(BadPath::Ambiguous), Ok(_)) => {}
        (Err(e), Ok(n)) => panic!("{path:?} normalized to {n:?}, but routing says {e:?}"),
        (Err(e), Err(n)) => assert!(path == "*" || e == n, "{path:?}: {e:?} vs {n:?}"),
    }

    if let Some(h) = host {
        check_host(h);
    }
    let want = scan(host, "", true).map_or(FALLBACK, |r| r.backend);
    assert_eq!(TABLE.pick_sni(host), Some(want), "{host:?}");
});
