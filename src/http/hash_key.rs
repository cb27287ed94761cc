//! The value a request is hashed by under `balance = "hash"`: the client's address, the path
//! and query, a header or a cookie (`[[backend]] hash_key`), as a hash for
//! `BackendSet::pick_keyed`. `None` when the request has no such value: it is then balanced
//! round-robin.

use std::net::SocketAddr;

use http::Request;
use http::header::COOKIE;

use crate::balancer::maglev::key_hash;
use crate::config::{Backend, Balance, HashKey};

/// The hash of the request's key, or `None` (not a hash backend, or no value for the key).
pub(crate) fn of<B>(cfg: &Backend, req: &Request<B>, client: SocketAddr) -> Option<u64> {
    if cfg.balance != Balance::Hash {
        return None;
    }
    match cfg.hash_key.as_ref()? {
        HashKey::Source => Some(key_hash(client.ip())),
        HashKey::Uri => Some(key_hash(
            req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        )),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .map(key_hash),
        HashKey::Cookie(name) => cookie(req, name).map(key_hash),
    }
}

/// The value of cookie `name` in the request's `Cookie` fields; an empty value is none.
fn cookie<'a, B>(req: &'a Request<B>, name: &'a str) -> Option<&'a [u8]> {
    cookie_values(req.headers(), name)
        .next()
        .filter(|v| !v.is_empty())
}

/// The values of every cookie `name` in `Cookie` fields, in order, as written (RFC 6265 5.4:
/// `name=value` pairs separated by `;`, blanks around them trimmed; HTTP/2 may split them over
/// several fields).
pub(crate) fn cookie_values<'a>(
    headers: &'a http::HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn backend(key: &str) -> Backend {
        let cfg = Config::from_toml(&format!(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\nbalance = \"hash\"\nhash_key = \"{key}\"\n"
        ))
        .unwrap();
        cfg.backends[0].clone()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const A: &str = "192.0.2.1:1000";

    #[test]
    fn source_ignores_the_port() {
        let b = backend("source");
        let r = req("/", &[]);
        let k1 = of(&b, &r, A.parse().unwrap());
        assert!(k1.is_some());
        assert_eq!(k1, of(&b, &r, "192.0.2.1:2000".parse().unwrap()));
        assert_ne!(k1, of(&b, &r, "192.0.2.2:1000".parse().unwrap()));
    }

    #[test]
    fn uri_is_path_and_query() {
        let b = backend("uri");
        let c = A.parse().unwrap();
        let k = |u| of(&b, &req(u, &[]), c);
        assert_eq!(k("/a?x=1"), k("/a?x=1"));
        assert_ne!(k("/a?x=1"), k("/a?x=2"));
        assert_ne!(k("/a"), k("/b"));
    }

    #[test]
    fn header_and_cookie_values_or_none() {
        let c = A.parse().unwrap();
        let h = backend("header:X-User");
        assert_eq!(of(&h, &req("/", &[]), c), None);
        assert_eq!(of(&h, &req("/", &[("x-user", "")]), c), None);
        let alice = of(&h, &req("/", &[("X-User", "alice")]), c);
        assert!(alice.is_some());
        assert_ne!(alice, of(&h, &req("/", &[("x-user", "bob")]), c));

        let k = backend("cookie:sid");
        assert_eq!(of(&k, &req("/", &[("cookie", "other=1")]), c), None);
        assert_eq!(of(&k, &req("/", &[("cookie", "xsid=1; sid=")]), c), None);
        let one = of(&k, &req("/", &[("cookie", "a=b; sid=42")]), c);
        assert!(one.is_some());
        // Split over two fields (HTTP/2) and spaced differently: the same value.
        assert_eq!(
            one,
            of(
                &k,
                &req("/", &[("cookie", "a=b"), ("cookie", "sid = 42")]),
                c
            )
        );
        assert_ne!(one, of(&k, &req("/", &[("cookie", "sid=43")]), c));
    }

    #[test]
    fn other_balances_have_no_key() {
        let mut b = backend("source");
        b.balance = Balance::Roundrobin;
        assert_eq!(of(&b, &req("/", &[]), A.parse().unwrap()), None);
    }
}
