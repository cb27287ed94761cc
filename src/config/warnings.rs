//! What a valid configuration may still get wrong: a backend nothing sends traffic to, a
//! `queue_timeout` without the `max_conns_per_server` that makes a queue, and a
//! static server whose host name does not resolve now. `check` prints these on stderr and still
//! succeeds; `run` logs the first kind at WARN. Each line names the key.

use std::net::ToSocketAddrs;

use super::Config;

/// Backends that no frontend (as its `backend` or a route's) and no `[[service_tree]]` (as its
/// `template`) uses: they would be discovered and checked, and serve nothing.
pub fn unused_backends(c: &Config) -> Vec<String> {
    c.backends
        .iter()
        .filter(|b| {
            let name = Some(b.name.as_str());
            !c.frontends.iter().any(|f| {
                f.fallback_names().any(|n| Some(n) == name)
                    || f.routes
                        .iter()
                        .any(|r| r.backend_names().any(|n| n == b.name))
            }) && !c.is_template(&b.name)
        })
        .map(|b| {
            format!(
                "backend {:?}: no frontend, route or service tree uses it; it serves nothing",
                b.name
            )
        })
        .collect()
}

/// Backends with a `queue_timeout` but no `max_conns_per_server`: without a limit nothing ever
/// waits, so the timeout does nothing (HAProxy accepts `timeout queue` without `maxconn` too).
pub fn idle_queue_timeouts(c: &Config) -> Vec<String> {
    c.backends
        .iter()
        .filter(|b| b.queue_timeout.is_some() && b.max_conns_per_server == 0)
        .map(|b| {
            format!(
                "backend {:?}.queue_timeout: has no effect without max_conns_per_server (no request ever waits)",
                b.name
            )
        })
        .collect()
}

/// Static servers (`servers = [...]`) given by a host name that does not resolve now. Not an
/// error: the name is looked up again at every connect, and DNS may know it by then. This asks
/// the system resolver, so it blocks (and is for `check`, not for a running proxy).
pub fn unresolved_servers(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for b in &c.backends {
        for (j, s) in b.servers.iter().enumerate() {
            if s.parse::<std::net::SocketAddr>().is_ok() {
                continue;
            }
            match s.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(_)) => {}
                Ok(None) => out.push(format!(
                    "backend {:?}.servers[{j}]: {s:?} resolves to no address",
                    b.name
                )),
                Err(e) => out.push(format!(
                    "backend {:?}.servers[{j}]: {s:?} does not resolve ({e}); it is looked up again at every connect",
                    b.name
                )),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRONTEND: &str =
        "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\nbackend = \"used\"\n";

    fn config(backends: &str) -> Config {
        Config::from_toml(&format!("{FRONTEND}{backends}")).unwrap()
    }

    #[test]
    fn a_queue_timeout_without_a_limit_is_named() {
        let c = config(
            "[[backend]]\nname = \"used\"\nservers = [\"127.0.0.1:1\"]\nqueue_timeout = \"3s\"\n",
        );
        let w = idle_queue_timeouts(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("backend \"used\".queue_timeout"), "{w:?}");
        let c = config(
            "[[backend]]\nname = \"used\"\nservers = [\"127.0.0.1:1\"]\nqueue_timeout = \"3s\"\nmax_conns_per_server = 2\n",
        );
        assert!(idle_queue_timeouts(&c).is_empty());
    }

    #[test]
    fn a_backend_nothing_uses_is_named() {
        let c = config(
            "[[backend]]\nname = \"used\"\nservers = [\"127.0.0.1:1\"]\n\
             [[backend]]\nname = \"spare\"\nservers = [\"127.0.0.1:2\"]\n",
        );
        let w = unused_backends(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("backend \"spare\""), "{w:?}");
    }

    #[test]
    fn a_backend_used_only_by_a_route_is_used() {
        let c = Config::from_toml(
            "[[frontend]]\nname = \"f\"\nbind = \"127.0.0.1:0\"\n\
             [[frontend.route]]\npath_prefix = \"/a/\"\nbackend = \"a\"\n\
             [[backend]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        assert!(unused_backends(&c).is_empty());
    }

    #[test]
    fn an_unresolvable_host_is_named_and_addresses_are_not_looked_up() {
        // `.invalid` never resolves (RFC 6761).
        let c = config(
            "[[backend]]\nname = \"used\"\nservers = [\"127.0.0.1:1\", \"nowhere.invalid:80\", \"localhost:80\"]\n",
        );
        let w = unresolved_servers(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("backend \"used\".servers[1]: \"nowhere.invalid:80\""),
            "{w:?}"
        );
    }
}
