//! `[backend.sticky]`: cookie persistence (README, "Sticky sessions"). This file owns the table
//! as the file spells it ([`FileSticky`], unknown keys refused with a did-you-mean by
//! `unknown.rs`), its validated form ([`Sticky`]) and its checks; the cookie itself is read and
//! written by `http/sticky.rs`, and the server it names is found by `balancer/sticky.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::{
    Backend, ConfigError, DEFAULT_STICKY_HTTP_ONLY, DEFAULT_STICKY_SECURE, Frontend, Mode,
    file::bounded, invalid,
};

/// `[backend.sticky]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSticky {
    pub(super) cookie: Option<String>,
    #[serde(default, deserialize_with = "bounded::deserialize")]
    pub(super) max_age: Option<Duration>,
    pub(super) secure: Option<bool>,
    pub(super) http_only: Option<bool>,
}

/// Cookie persistence: the cookie `cookie` names the server that served the client (opaquely),
/// and the client's next requests go there while it is up and not draining.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sticky {
    /// The cookie's name (an RFC 6265 token).
    pub cookie: String,
    /// The cookie's `Max-Age`; `None`: a session cookie (HAProxy's `cookie ... insert` without
    /// `maxlife`, which the browser drops when it closes).
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The `Secure` attribute: sent back over HTTPS only.
    pub secure: bool,
    /// The `HttpOnly` attribute: not readable by the page's scripts.
    pub http_only: bool,
}

/// Validates `[backend.sticky]` of the backend whose key is `key` (`backend "cache"`).
pub(super) fn sticky(key: &str, s: FileSticky) -> Result<Sticky, ConfigError> {
    let at = format!("{key}.sticky.cookie");
    let cookie = match s.cookie {
        None => {
            return Err(invalid(
                at,
                "is required: the cookie's name, as in \"SY_SERVER\"",
            ));
        }
        Some(c) if !is_token(&c) => {
            return Err(invalid(
                at,
                format!(
                    "{c:?} is not a cookie name (RFC 6265: letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        Some(c) => c,
    };
    if s.max_age.is_some_and(|d| d.as_secs() == 0) {
        return Err(invalid(
            format!("{key}.sticky.max_age"),
            "must be at least 1s (Max-Age counts whole seconds; leave it out for a session cookie)",
        ));
    }
    Ok(Sticky {
        cookie,
        max_age: s.max_age,
        secure: s.secure.unwrap_or(DEFAULT_STICKY_SECURE),
        http_only: s.http_only.unwrap_or(DEFAULT_STICKY_HTTP_ONLY),
    })
}

/// A backend that a tcp-mode frontend uses cannot be sticky: that frontend sees no cookies
/// (refused as `hash_key` other than "source" is, rather than ignored).
pub(super) fn tcp_frontends(frontends: &[Frontend], backends: &[Backend]) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for f in frontends.iter().filter(|f| f.mode == Mode::Tcp) {
        for name in f.backend.iter().chain(f.routes.iter().map(|r| &r.backend)) {
            if backends
                .iter()
                .any(|b| &b.name == name && b.sticky.is_some())
            {
                out.push(invalid(
                    format!("backend {name:?}.sticky"),
                    format!(
                        "cookie persistence needs HTTP, but tcp-mode frontend {:?} uses this backend",
                        f.name
                    ),
                ));
            }
        }
    }
    out
}

/// An RFC 7230 `token` (which RFC 6265 4.1.1 takes for a cookie name): one or more visible
/// ASCII characters other than separators.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn cfg(sticky: &str) -> Result<Config, String> {
        Config::from_toml(&format!(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"cache\"\n\
             [[backend]]\nname = \"cache\"\nservers = [\"127.0.0.1:1\"]\n[backend.sticky]\n{sticky}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn read_with_defaults() {
        let c = cfg("cookie = \"SY_SERVER\"").unwrap();
        let s = c.backends[0].sticky.as_ref().unwrap();
        assert_eq!(s.cookie, "SY_SERVER");
        assert_eq!(s.max_age, None);
        assert!(!s.secure);
        assert!(s.http_only);
        let c = cfg("cookie = \"s\"\nmax_age = \"1h\"\nsecure = true\nhttp_only = false").unwrap();
        let s = c.backends[0].sticky.as_ref().unwrap();
        assert_eq!(s.max_age, Some(std::time::Duration::from_secs(3600)));
        assert!(s.secure && !s.http_only);
        // No [backend.sticky]: none.
        let c = Config::from_toml(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert_eq!(c.backends[0].sticky, None);
    }

    #[test]
    fn bad_names_and_keys_are_named() {
        for bad in ["", "a b", "a;b", "a=b", "é", "a,b", "(x)"] {
            let e = cfg(&format!("cookie = {bad:?}")).unwrap_err();
            assert!(
                e.starts_with("backend \"cache\".sticky.cookie: ")
                    && e.contains("not a cookie name"),
                "{bad:?}: {e}"
            );
        }
        let e = cfg("").unwrap_err();
        assert!(
            e.starts_with("backend \"cache\".sticky.cookie: is required"),
            "{e}"
        );
        let e = cfg("cookie = \"s\"\nmax_age = \"0s\"").unwrap_err();
        assert!(e.starts_with("backend \"cache\".sticky.max_age: "), "{e}");
        let e = cfg("cookie = \"s\"\ncokie = \"t\"").unwrap_err();
        assert!(
            e.starts_with("backend.sticky.cokie: unknown key; did you mean `cookie`?"),
            "{e}"
        );
        let e = cfg("cookie = \"s\"\nhttponly = true").unwrap_err();
        assert!(e.contains("did you mean `http_only`?"), "{e}");
        let e = Config::from_toml(
            "[[frontend]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nbackend = \"cache\"\n\
             [[backend]]\nname = \"cache\"\nservers = [\"127.0.0.1:1\"]\n[backend.sticky]\ncookie = \"s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("backend \"cache\".sticky: ") && e.contains("tcp-mode frontend \"raw\""),
            "{e}"
        );
    }
}
