//! Cookie persistence (`[backend.sticky]`, README "Sticky sessions") on the HTTP side: reading
//! the cookie that names a server from the request, and the `Set-Cookie` that (re)pins the
//! client on the upstream's response (HAProxy's `cookie NAME insert`). The ids and their map
//! are `balancer/sticky.rs`'s; `forward` asks [`Cookie::pick`] first and calls
//! [`Cookie::set_cookie`] on the answer.
//!
//! The request is passed on as it came, cookie included (HAProxy's `insert` without
//! `indirect`): the servers may log it, and nothing else in it changes.

use std::sync::Arc;

use http::HeaderMap;
use http::header::{HeaderValue, SET_COOKIE};

use crate::balancer::sticky::{parse, render, server_id};
use crate::config::Sticky;
use crate::snapshot::{BackendSet, Server};

/// What a request to a sticky backend carries: the server its cookie names, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cookie {
    /// The index into the backend's `servers` of the server named.
    named: Option<usize>,
}

impl Cookie {
    /// `None` for a backend without `[backend.sticky]`. Of several cookies of that name (two
    /// paths, or a stale one), the first whose value names one of the backend's servers
    /// counts; a value that names none (garbage, a removed server) is as no cookie.
    pub(crate) fn of(backend: &BackendSet, headers: &HeaderMap) -> Option<Cookie> {
        let cfg = backend.config.sticky.as_ref()?;
        let named = values(headers, &cfg.cookie)
            .filter_map(parse)
            .find_map(|id| backend.sticky_index(id));
        Some(Cookie { named })
    }

    /// The named server, if it may take this request (up, not draining, not tried).
    pub(crate) fn pick<'b>(
        &self,
        backend: &'b BackendSet,
        tried: &[Arc<Server>],
    ) -> Option<&'b Arc<Server>> {
        backend.sticky_pick(self.named?, tried)
    }

    /// Adds the `Set-Cookie` naming `server` to the upstream's response headers, unless the
    /// request's cookie already named it.
    pub(crate) fn set_cookie(&self, backend: &BackendSet, server: &Arc<Server>, h: &mut HeaderMap) {
        let Some(cfg) = backend.config.sticky.as_ref() else {
            return;
        };
        let same = self
            .named
            .and_then(|i| backend.servers.get(i))
            .is_some_and(|s| Arc::ptr_eq(s, server));
        if same {
            return;
        }
        let value = set_cookie_value(cfg, server_id(&backend.config.name, &server.addr));
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(SET_COOKIE, v);
        }
    }
}

/// `NAME=ID; Path=/` with the configured attributes. `Path=/`: the cookie comes back on every
/// path of the site, as HAProxy's `insert` users expect.
pub(crate) fn set_cookie_value(cfg: &Sticky, id: u64) -> String {
    let mut v = format!("{}={}; Path=/", cfg.cookie, render(id));
    if let Some(age) = cfg.max_age {
        v.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if cfg.secure {
        v.push_str("; Secure");
    }
    if cfg.http_only {
        v.push_str("; HttpOnly");
    }
    v
}

/// The values of cookie `name` in the request's `Cookie` fields, in order (RFC 6265 5.4:
/// `name=value` pairs separated by `;`, spaces around them ignored; HTTP/2's crumbs are joined
/// into one field by `h2_rules` before this runs, and several fields are read all the same).
/// The name matches exactly (case counts); a value in double quotes is taken without them.
pub(crate) fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    super::hash_key::cookie_values(headers, name).map(|v| {
        v.strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use std::time::Duration;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn all<'a>(h: &'a HeaderMap, name: &'a str) -> Vec<&'a str> {
        values(h, name)
            .map(|v| std::str::from_utf8(v).unwrap())
            .collect()
    }

    #[test]
    fn values_among_other_cookies_and_whitespace() {
        let h = headers(&[
            "a=1; SY=one;b=2",
            "  SY =  two  ;c=3",
            "SY=\"three\"; SYX=no; xSY=no",
        ]);
        assert_eq!(all(&h, "SY"), ["one", "two", "three"]);
        // Case counts in a cookie's name.
        assert!(all(&h, "sy").is_empty());
        assert_eq!(all(&h, "c"), ["3"]);
        // No `=`, empty pairs, an empty value.
        let h = headers(&["SY; ;=x; SY="]);
        assert_eq!(all(&h, "SY"), [""]);
        assert!(all(&HeaderMap::new(), "SY").is_empty());
    }

    #[test]
    fn the_same_name_twice_first_valid_wins() {
        let id = server_id("b", "127.0.0.1:1");
        let v = render(id);
        let h = headers(&[&format!("SY=garbage; SY={v}; SY=0000000000000000")]);
        let ids: Vec<u64> = values(&h, "SY").filter_map(parse).collect();
        assert_eq!(ids, [id, 0]);
    }

    #[test]
    fn set_cookie_attributes() {
        let mut cfg = Sticky {
            cookie: "SY_SERVER".into(),
            max_age: None,
            secure: false,
            http_only: true,
        };
        assert_eq!(
            set_cookie_value(&cfg, 0xab),
            "SY_SERVER=00000000000000ab; Path=/; HttpOnly"
        );
        cfg.max_age = Some(Duration::from_secs(86400));
        cfg.secure = true;
        cfg.http_only = false;
        assert_eq!(
            set_cookie_value(&cfg, 1),
            "SY_SERVER=0000000000000001; Path=/; Max-Age=86400; Secure"
        );
    }
}
