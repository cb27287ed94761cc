//! Evaluating a route's traffic policy (`config::Policy`) on a request: the redirect answer
//! and the header rules. `forward::handle` calls these in the contract's order: redirect, then
//! the request's header rules, then balancing; the response's rules once the upstream answers.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::config::{HeaderRules, Redirect};

use super::Body;
use super::answers::plain;

/// The redirect for `req`: `redirect.code` with `Location` filled in (`{host}`: the request's
/// host without its port; `{path}`: its path with the query, as received), a short plain-text
/// body naming it, and `Cache-Control: no-cache` on a temporary one, as HAProxy's redirects.
/// `400` when the request has no host to fill in, or the filled-in location is no field value.
pub(crate) fn redirect<B>(
    redirect: &Redirect,
    host: Option<&str>,
    req: &Request<B>,
) -> Response<Body> {
    let needs_host = redirect.location.contains("{host}");
    let host = host.map(without_port).unwrap_or("");
    if needs_host && host.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: no host to redirect to\n",
        );
    }
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = fill(&redirect.location, host, path);
    let Ok(value) = HeaderValue::from_str(&location) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the redirect's location is not a field value\n",
        );
    };
    let status = StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::FOUND);
    let reason = status.canonical_reason().unwrap_or("Redirect");
    let mut resp = plain(
        status,
        format!("{} {reason}: {location}\n", status.as_u16()),
    );
    resp.headers_mut().insert(header::LOCATION, value);
    if matches!(redirect.code, 302 | 303 | 307) {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

/// A host as received (`example.com:8080`, `[::1]:8080`) without its port.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `template` with `{host}` and `{path}` replaced in one pass (a host holding `{path}` stays
/// as it is).
fn fill(template: &str, host: &str, path: &str) -> String {
    let mut out = String::with_capacity(template.len() + host.len() + path.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(t) = tail.strip_prefix("{host}") {
            out.push_str(host);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{path}") {
            out.push_str(path);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Applies `rules` to `headers`: `remove`, then `set` (replacing every field of the name),
/// then `add` (one more field).
pub(crate) fn apply(rules: &HeaderRules, headers: &mut HeaderMap) {
    for name in &rules.remove {
        headers.remove(name);
    }
    for (name, value) in &rules.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &rules.add {
        headers.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn placeholders_are_filled_once_and_ports_dropped() {
        assert_eq!(
            fill("https://{host}{path}", "a.com", "/x?y=1"),
            "https://a.com/x?y=1"
        );
        assert_eq!(fill("{path}{x}{", "h", "/{host}"), "/{host}{x}{");
        assert_eq!(without_port("a.com:8080"), "a.com");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        assert_eq!(without_port("a.com"), "a.com");
    }

    #[test]
    fn https_redirect_keeps_the_query_and_drops_the_port() {
        let r = Redirect {
            location: "https://{host}{path}".into(),
            code: 308,
        };
        let req = Request::get("/a/b?c=d").body(()).unwrap();
        let resp = redirect(&r, Some("shop.example.com:8080"), &req);
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "https://shop.example.com/a/b?c=d"
        );
        assert!(resp.headers().get(header::CACHE_CONTROL).is_none());
        assert_eq!(redirect(&r, None, &req).status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn rules_remove_then_set_then_add() {
        let n = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        let v = |s: &'static str| HeaderValue::from_static(s);
        let rules = HeaderRules {
            set: vec![(n("x-env"), v("prod"))],
            add: vec![(n("x-tag"), v("b"))],
            remove: vec![n("x-debug"), n("x-tag")],
        };
        let mut h = HeaderMap::new();
        h.append("x-env", v("dev"));
        h.append("x-env", v("test"));
        h.append("x-debug", v("1"));
        h.append("x-tag", v("a"));
        apply(&rules, &mut h);
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), vec!["prod"]);
        assert!(h.get("x-debug").is_none());
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), vec!["b"]);
    }
}
