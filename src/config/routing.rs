//! Validation of what picks a backend: a frontend's `[[frontend.route]]` entries and the
//! `[[service_tree]]` sections. Host and SNI patterns are checked by the route table's own
//! parser (`route::HostMatch`), so a pattern the config takes is one the table can match.

use super::defaults::*;
use super::file::{FileRoute, FileServiceTree, FileWeighted};
use super::policy::FilePolicy;
use super::{
    Backend, ConfigError, Frontend, Mode, Policy, Route, ServiceTree, WeightedBackend, invalid,
};

/// `key` (a frontend's `backend`, a route's, a tree's `template`) names a configured backend.
pub(super) fn names_backend(
    key: &str,
    name: &str,
    backends: &[Backend],
) -> Result<(), ConfigError> {
    if backends.iter().any(|b| b.name == name) {
        Ok(())
    } else {
        Err(invalid(key, format!("names no backend: {name:?}")))
    }
}

/// Backend `name` (`key`), behind SNI routes, sends the client's bytes as they come: a
/// backend with `[backend.tls]` would wrap the client's TLS in its own, and its servers
/// would get TLS in TLS.
fn passes_tls_through(key: &str, name: &str, backends: &[Backend]) -> Result<(), ConfigError> {
    match backends.iter().find(|b| b.name == name) {
        Some(b) if b.tls.is_some() => Err(invalid(
            key,
            format!(
                "names {name:?}, which has [backend.tls]: SNI routes pass the client's TLS through, and TLS of our own around it would reach the servers as TLS in TLS"
            ),
        )),
        _ => Ok(()),
    }
}

/// A host or SNI pattern, lower-cased: an exact name or `*.suffix`.
fn pattern(key: &str, p: &str) -> Result<String, ConfigError> {
    crate::route::HostMatch::parse(Some(p)).map_err(|e| invalid(key, e))?;
    Ok(p.to_ascii_lowercase())
}

fn path_prefix(key: &str, p: Option<String>) -> Result<String, ConfigError> {
    crate::route::parse_path_prefix(p.as_deref()).map_err(|e| invalid(key, e))
}

/// A frontend's routes; `key` names the frontend, `fallback` is its `backend`. http mode
/// routes by host and path, tcp mode by SNI (TLS passthrough: not on a frontend that
/// terminates TLS, nor to a backend that originates it, the fallback included). Each route's
/// policy keys go over the frontend's `policy`.
pub(super) fn routes(
    frontend: &str,
    file: Vec<FileRoute>,
    mode: Mode,
    terminates_tls: bool,
    fallback: Option<&str>,
    backends: &[Backend],
    policy: &Policy,
) -> Result<Vec<Route>, ConfigError> {
    if mode == Mode::Tcp
        && !file.is_empty()
        && let Some(b) = fallback
    {
        passes_tls_through(&format!("{frontend}.backend"), b, backends)?;
    }
    let mut out = Vec::with_capacity(file.len());
    for (i, r) in file.into_iter().enumerate() {
        let key = format!("{frontend}.route[{i}]");
        let (backend, split) = route_backends(&key, r.backend, r.backends, backends)?;
        if mode == Mode::Tcp {
            if !split.is_empty() {
                return Err(invalid(
                    format!("{key}.backends"),
                    "a weighted split is for mode = \"http\" routes; an SNI route names one backend",
                ));
            }
            passes_tls_through(&format!("{key}.backend"), &backend, backends)?;
        }
        match mode {
            Mode::Http => {
                if r.sni.is_some() {
                    return Err(invalid(
                        format!("{key}.sni"),
                        "routes tcp-mode connections (TLS passthrough); http-mode routes use host and path_prefix",
                    ));
                }
            }
            Mode::Tcp => {
                for (name, set) in [
                    ("host", r.host.is_some()),
                    ("path_prefix", r.path_prefix.is_some()),
                    ("strip_prefix", r.strip_prefix.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            format!("{key}.{name}"),
                            "is for mode = \"http\" frontends; tcp-mode routes use sni",
                        ));
                    }
                }
                if r.sni.is_none() {
                    return Err(invalid(
                        format!("{key}.sni"),
                        "is required in tcp mode (the name to match in the ClientHello)",
                    ));
                }
                if terminates_tls {
                    return Err(invalid(
                        format!("{key}.sni"),
                        "routes TLS through undecrypted; this frontend terminates TLS ([frontend.tls])",
                    ));
                }
            }
        }
        let own = super::policy::policy(
            &key,
            FilePolicy {
                allow: r.allow,
                deny: r.deny,
                rate_limit: r.rate_limit,
                redirect: r.redirect,
                request_headers: r.request_headers,
                response_headers: r.response_headers,
                max_body_size: r.max_body_size,
            },
        )?;
        if mode == Mode::Tcp && !own.is_empty() {
            return Err(invalid(
                key.as_str(),
                "redirect, header rules, allow, deny, rate_limit and max_body_size are for mode = \"http\" routes",
            ));
        }
        let route = Route {
            policy: own.over(policy),
            host: r
                .host
                .as_deref()
                .map(|h| pattern(&format!("{key}.host"), h))
                .transpose()?,
            path_prefix: path_prefix(&format!("{key}.path_prefix"), r.path_prefix)?,
            strip_prefix: r.strip_prefix.unwrap_or(DEFAULT_STRIP_PREFIX),
            sni: r
                .sni
                .as_deref()
                .map(|h| pattern(&format!("{key}.sni"), h))
                .transpose()?,
            backend,
            backends: split,
        };
        // The same match twice: only the first could ever be taken.
        if let Some(j) = out.iter().position(|o: &Route| {
            o.host == route.host && o.path_prefix == route.path_prefix && o.sni == route.sni
        }) {
            let what = if route.sni.is_some() {
                "sni"
            } else {
                "host and path_prefix"
            };
            return Err(invalid(
                key.as_str(),
                format!("repeats route[{j}]'s {what}: only the first could ever be taken"),
            ));
        }
        out.push(route);
    }
    Ok(out)
}

/// A route's `backend` or `backends` (one, not both): its backend (with a split, the
/// heaviest) and its split (empty without one). Each name names a backend, once; each weight is
/// an integer from 0 to `u32::MAX`, and they sum to more than 0.
pub(super) fn route_backends(
    key: &str,
    backend: Option<String>,
    split: Option<Vec<FileWeighted>>,
    backends: &[Backend],
) -> Result<(String, Vec<WeightedBackend>), ConfigError> {
    let split = match (backend, split) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.backends"),
                "set `backend` or `backends` (a weighted split), not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                format!("{key}.backend"),
                "is required (or `backends = [{ name = \"...\", weight = 90 }, ...]` for a weighted split)",
            ));
        }
        (Some(b), None) => {
            names_backend(&format!("{key}.backend"), &b, backends)?;
            return Ok((b, Vec::new()));
        }
        (None, Some(split)) => split,
    };
    if split.is_empty() {
        return Err(invalid(
            format!("{key}.backends"),
            "is empty: name at least one backend, as in [{ name = \"shop\", weight = 1 }]",
        ));
    }
    let mut out: Vec<WeightedBackend> = Vec::with_capacity(split.len());
    for (j, w) in split.into_iter().enumerate() {
        let wkey = format!("{key}.backends[{j}]");
        names_backend(&format!("{wkey}.name"), &w.name, backends)?;
        if let Some(k) = out.iter().position(|o| o.name == w.name) {
            return Err(invalid(
                format!("{wkey}.name"),
                format!(
                    "{:?} repeats backends[{k}]: give each backend one weight",
                    w.name
                ),
            ));
        }
        let weight = u32::try_from(w.weight).map_err(|_| {
            invalid(
                format!("{wkey}.weight"),
                format!("{}: must be an integer from 0 to {}", w.weight, u32::MAX),
            )
        })?;
        out.push(WeightedBackend {
            name: w.name,
            weight,
        });
    }
    if out.iter().all(|w| w.weight == 0) {
        return Err(invalid(
            format!("{key}.backends"),
            "the weights sum to 0: at least one backend must take requests",
        ));
    }
    let heaviest = out
        .iter()
        .reduce(|a, b| if b.weight > a.weight { b } else { a })
        .expect("not empty");
    Ok((heaviest.name.clone(), out))
}

/// No frontend sends requests to `template` (`key`'s template) as its fallback or by a
/// route: a template is not published as a backend (each service gets a copy of it), so a
/// route to it would match nothing and a fallback naming it would answer `404`.
fn serves_no_template(
    key: &str,
    template: &str,
    frontends: &[Frontend],
) -> Result<(), ConfigError> {
    let why = || {
        format!(
            "names {template:?}, the template of {key}: a template is no backend of its own (each service of the tree gets a copy of it)"
        )
    };
    for f in frontends {
        let fkey = format!("frontend {:?}", f.name);
        if f.fallback_names().any(|b| b == template) {
            return Err(invalid(format!("{fkey}.backend"), why()));
        }
        if let Some(i) = f
            .routes
            .iter()
            .position(|r| r.backend_names().any(|b| b == template))
        {
            return Err(invalid(format!("{fkey}.route[{i}].backend"), why()));
        }
    }
    Ok(())
}

/// The `[[service_tree]]` sections; every tree's problem is reported (the first of each).
pub(super) fn service_trees(
    file: Vec<FileServiceTree>,
    backends: &[Backend],
    frontends: &[Frontend],
    has_etcd: bool,
) -> Result<Vec<ServiceTree>, ConfigError> {
    let mut out: Vec<ServiceTree> = Vec::with_capacity(file.len());
    let mut errors = Vec::new();
    for (i, t) in file.into_iter().enumerate() {
        match service_tree(i, t, &out, backends, frontends, has_etcd) {
            Ok(tree) => out.push(tree),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError::from_list(errors))
    }
}

/// `[[service_tree]]` number `i`; `prior` are the valid trees before it.
fn service_tree(
    i: usize,
    t: FileServiceTree,
    prior: &[ServiceTree],
    backends: &[Backend],
    frontends: &[Frontend],
    has_etcd: bool,
) -> Result<ServiceTree, ConfigError> {
    let key = format!("service_tree[{i}]");
    let prefix = t.etcd_prefix.trim_end_matches('/').to_string();
    if !t.etcd_prefix.starts_with('/') || prefix.is_empty() {
        return Err(invalid(
            format!("{key}.etcd_prefix"),
            format!(
                "{:?} must start with '/' and name a directory",
                t.etcd_prefix
            ),
        ));
    }
    if !has_etcd {
        return Err(invalid(
            format!("{key}.etcd_prefix"),
            "needs an [etcd] section with endpoints",
        ));
    }
    if let Some(other) = prior.iter().find(|o| {
        let (a, b) = (format!("{}/", o.etcd_prefix), format!("{prefix}/"));
        a.starts_with(&b) || b.starts_with(&a)
    }) {
        return Err(invalid(
            format!("{key}.etcd_prefix"),
            format!("{prefix:?} overlaps another tree's {:?}", other.etcd_prefix),
        ));
    }
    if let Some(b) = backends
        .iter()
        .filter_map(|b| b.etcd_prefix.as_deref().map(|p| (b, p)))
        .find(|(_, p)| format!("{p}/").starts_with(&format!("{prefix}/")))
    {
        return Err(invalid(
            format!("{key}.etcd_prefix"),
            format!(
                "{prefix:?} holds backend {:?}'s etcd_prefix {:?}: a directory is a service of the tree or a backend, not both",
                b.0.name, b.1
            ),
        ));
    }
    let servers_dir = t
        .servers_dir
        .unwrap_or_else(|| DEFAULT_SERVERS_DIR.to_string())
        .trim_matches('/')
        .to_string();
    if servers_dir.contains('/') {
        return Err(invalid(
            format!("{key}.servers_dir"),
            "is one directory name (or \"\" for servers directly under the service)",
        ));
    }
    if t.frontends.is_empty() {
        return Err(invalid(
            format!("{key}.frontends"),
            "lists no frontend: the services would have no route",
        ));
    }
    for (j, name) in t.frontends.iter().enumerate() {
        match frontends.iter().find(|f| &f.name == name) {
            None => {
                return Err(invalid(
                    format!("{key}.frontends[{j}]"),
                    format!("names no frontend: {name:?}"),
                ));
            }
            Some(f) if f.mode != Mode::Http => {
                return Err(invalid(
                    format!("{key}.frontends[{j}]"),
                    format!(
                        "{name:?} is a tcp-mode frontend; services are routed by host and path"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if t.host.is_none() && t.path_prefix.is_none() {
        return Err(invalid(
            key.as_str(),
            "needs a route template: host = \"{service}.example.com\" or path_prefix = \"/{service}/\"",
        ));
    }
    let host = match t.host {
        Some(h) => {
            if !h.contains("{service}") {
                return Err(invalid(
                    format!("{key}.host"),
                    "must contain {service}: each service needs its own host",
                ));
            }
            pattern(&format!("{key}.host"), &ServiceTree::fill(&h, "service"))?;
            Some(h.to_ascii_lowercase())
        }
        None => None,
    };
    let path_prefix = match t.path_prefix {
        Some(p) => {
            if host.is_none() && !p.contains("{service}") {
                return Err(invalid(
                    format!("{key}.path_prefix"),
                    "must contain {service} (or the tree needs a host template)",
                ));
            }
            path_prefix(
                &format!("{key}.path_prefix"),
                Some(ServiceTree::fill(&p, "service")),
            )?;
            Some(p)
        }
        None => None,
    };
    let backend = match &t.template {
        Some(name) => {
            names_backend(&format!("{key}.template"), name, backends)?;
            serves_no_template(&key, name, frontends)?;
            backends
                .iter()
                .find(|b| &b.name == name)
                .cloned()
                .expect("checked just above")
        }
        None => super::validate::default_backend(&key)?,
    };
    let service_linger = t.service_linger.unwrap_or(DEFAULT_SERVICE_LINGER);
    Ok(ServiceTree {
        etcd_prefix: prefix,
        servers_dir,
        frontends: t.frontends,
        host,
        path_prefix,
        strip_prefix: t.strip_prefix.unwrap_or(DEFAULT_STRIP_PREFIX),
        template: t.template,
        backend,
        service_linger,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BACKENDS: &str = r#"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[[backend]]
name = "api"
servers = ["127.0.0.1:1"]
[[backend]]
name = "db"
servers = ["127.0.0.1:2"]
"#;

    fn config(frontends: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{frontends}\n{BACKENDS}")).map_err(|e| e.to_string())
    }

    fn err(frontends: &str) -> String {
        config(frontends).expect_err("refused")
    }

    const WEB: &str = "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n";
    const TCP: &str = "[[frontend]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\n";

    #[test]
    fn routes_are_read_with_their_defaults() {
        let text = format!(
            "{WEB}[[frontend.route]]\nhost = \"API.example.com\"\nbackend = \"api\"\n\
             [[frontend.route]]\nhost = \"*.example.com\"\npath_prefix = \"/v1/\"\nstrip_prefix = true\nbackend = \"api\"\n\
             {TCP}backend = \"db\"\n[[frontend.route]]\nsni = \"db.example.com\"\nbackend = \"db\"\n\
             [[service_tree]]\netcd_prefix = \"/services/\"\nfrontends = [\"web\"]\nhost = \"{{service}}.example.com\"\ntemplate = \"defaults\"\n\
             [[backend]]\nname = \"defaults\"\nbalance = \"leastconn\"\n"
        );
        let c = config(&text).unwrap();
        let web = &c.frontends[0];
        assert_eq!(web.backend, None);
        assert_eq!(web.routes[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(web.routes[0].path_prefix, "/");
        assert!(!web.routes[0].strip_prefix);
        assert_eq!(web.routes[1].path_prefix, "/v1/");
        assert!(web.routes[1].strip_prefix);
        assert_eq!(
            c.frontends[1].routes[0].sni.as_deref(),
            Some("db.example.com")
        );
        let t = &c.service_trees[0];
        assert_eq!(t.etcd_prefix, "/services");
        assert_eq!(t.servers_dir, "backend");
        assert_eq!(t.service_linger, std::time::Duration::from_secs(60));
        assert_eq!(t.backend.name, "defaults");
        assert!(c.is_template("defaults") && !c.is_template("api"));
    }

    #[test]
    fn route_errors_name_the_key() {
        let cases = [
            (
                format!("{WEB}[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"nope\"\n"),
                "frontend \"web\".route[0].backend",
            ),
            (
                format!("{WEB}[[frontend.route]]\nsni = \"a.example.com\"\nbackend = \"api\"\n"),
                "frontend \"web\".route[0].sni",
            ),
            (
                format!("{TCP}[[frontend.route]]\nhost = \"a.example.com\"\nbackend = \"db\"\n"),
                "frontend \"raw\".route[0].host",
            ),
            (
                format!("{TCP}[[frontend.route]]\nbackend = \"db\"\n"),
                "frontend \"raw\".route[0].sni",
            ),
            (
                format!("{WEB}[[frontend.route]]\nhost = \"a.*.com\"\nbackend = \"api\"\n"),
                "frontend \"web\".route[0].host",
            ),
            (
                format!("{WEB}[[frontend.route]]\npath_prefix = \"/a/../b\"\nbackend = \"api\"\n"),
                "frontend \"web\".route[0].path_prefix",
            ),
            (
                format!(
                    "{WEB}[[frontend.route]]\nhost = \"a.com\"\nbackend = \"api\"\n\
                     [[frontend.route]]\nhost = \"A.com\"\npath_prefix = \"/\"\nbackend = \"db\"\n"
                ),
                "frontend \"web\".route[1]",
            ),
            (WEB.to_string(), "frontend \"web\": needs a backend, routes"),
            (
                format!(
                    "{WEB}backend = \"api\"\n[[service_tree]]\netcd_prefix = \"/s\"\nfrontends = [\"web\"]\nhost = \"static.example.com\"\n"
                ),
                "service_tree[0].host",
            ),
            (
                format!(
                    "{WEB}backend = \"api\"\n[[service_tree]]\netcd_prefix = \"/s\"\nfrontends = [\"nope\"]\nhost = \"{{service}}.a.com\"\n"
                ),
                "service_tree[0].frontends[0]",
            ),
            (
                format!(
                    "{WEB}backend = \"api\"\n[[service_tree]]\netcd_prefix = \"/s\"\nfrontends = [\"web\"]\nhost = \"{{service}}.a.com\"\ntemplate = \"api\"\n"
                ),
                "backend \"api\": is a [[service_tree]] template",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e:?} for\n{text}");
        }
    }

    #[test]
    fn every_trees_problem_is_reported() {
        let text = format!(
            "{WEB}backend = \"api\"\n\
             [[service_tree]]\netcd_prefix = \"services\"\nfrontends = [\"web\"]\nhost = \"{{service}}.a.com\"\n\
             [[service_tree]]\netcd_prefix = \"/other\"\nfrontends = [\"nope\"]\nhost = \"{{service}}.b.com\"\n"
        );
        let e = err(&text);
        assert!(e.starts_with("2 problems:"), "{e}");
        assert!(
            e.contains("service_tree[0].etcd_prefix: \"services\" must start with '/'"),
            "{e}"
        );
        assert!(
            e.contains("service_tree[1].frontends[0]: names no frontend: \"nope\""),
            "{e}"
        );
    }

    #[test]
    fn weighted_splits_are_read_and_their_errors_name_the_key() {
        let route = |b: &str| format!("{WEB}[[frontend.route]]\nhost = \"a.com\"\n{b}\n");
        let c = config(&route(
            "backends = [{ name = \"api\", weight = 10 }, { name = \"db\", weight = 90 }]",
        ))
        .unwrap();
        let r = &c.frontends[0].routes[0];
        // `backend` is the heaviest, for what names one backend per route.
        assert_eq!(r.backend, "db");
        assert_eq!(
            r.backends
                .iter()
                .map(|w| (w.name.as_str(), w.weight))
                .collect::<Vec<_>>(),
            vec![("api", 10), ("db", 90)]
        );
        assert_eq!(r.backend_names().collect::<Vec<_>>(), vec!["api", "db"]);
        // A canary switched off is valid.
        config(&route(
            "backends = [{ name = \"api\", weight = 1 }, { name = \"db\", weight = 0 }]",
        ))
        .unwrap();
        let cases = [
            (
                route("backend = \"api\"\nbackends = [{ name = \"db\", weight = 1 }]"),
                "frontend \"web\".route[0].backends: set `backend` or `backends`",
            ),
            (route(""), "frontend \"web\".route[0].backend: is required"),
            (
                route("backends = []"),
                "frontend \"web\".route[0].backends: is empty",
            ),
            (
                route("backends = [{ name = \"nope\", weight = 1 }]"),
                "frontend \"web\".route[0].backends[0].name: names no backend: \"nope\"",
            ),
            (
                route(
                    "backends = [{ name = \"api\", weight = 1 }, { name = \"api\", weight = 2 }]",
                ),
                "frontend \"web\".route[0].backends[1].name: \"api\" repeats backends[0]",
            ),
            (
                route("backends = [{ name = \"api\", weight = -1 }]"),
                "frontend \"web\".route[0].backends[0].weight: -1",
            ),
            (
                route("backends = [{ name = \"api\", weight = 0 }, { name = \"db\", weight = 0 }]"),
                "frontend \"web\".route[0].backends: the weights sum to 0",
            ),
            (
                route("backends = [{ name = \"api\", wieght = 1 }]"),
                "wieght",
            ),
            (
                format!(
                    "{TCP}[[frontend.route]]\nsni = \"a.com\"\nbackends = [{{ name = \"db\", weight = 1 }}]\n"
                ),
                "frontend \"raw\".route[0].backends: a weighted split is for mode = \"http\"",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
    }

    #[test]
    fn a_frontends_fallback_may_be_a_split() {
        let c = config(&format!(
            "{WEB}backends = [{{ name = \"api\", weight = 1 }}, {{ name = \"db\", weight = 3 }}]\n"
        ))
        .unwrap();
        let f = &c.frontends[0];
        assert_eq!(f.backend.as_deref(), Some("db"));
        assert_eq!(f.fallback_names().collect::<Vec<_>>(), vec!["api", "db"]);
        assert!(crate::config::warnings::unused_backends(&c).is_empty());
        let cases = [
            (
                format!("{WEB}backend = \"api\"\nbackends = [{{ name = \"db\", weight = 1 }}]\n"),
                "frontend \"web\".backends: set `backend` or `backends`",
            ),
            (
                format!("{WEB}backends = [{{ name = \"nope\", weight = 1 }}]\n"),
                "frontend \"web\".backends[0].name: names no backend",
            ),
            (
                format!("{TCP}backends = [{{ name = \"db\", weight = 1 }}]\n"),
                "frontend \"raw\".backends: a weighted split is for mode = \"http\" frontends",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e:?}");
        }
    }
}
