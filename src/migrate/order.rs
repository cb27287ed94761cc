//! Whether a frontend's routes pick what its HAProxy rules picked. HAProxy takes the first
//! `use_backend` rule that matches; Switchyard the most specific route (`src/route.rs`: exact
//! host, then longer wildcard, then shorter, then any host; then the longest path prefix; the
//! file order breaks ties). The two are compared on one request of each class that the routes
//! tell apart, which is all of them: a host either is one of the exact names, or is matched by
//! the same wildcards as `probe.<its longest matching suffix>`, or by none (as a request without
//! Host); a path is matched by the same prefixes as its longest matching prefix, or by none (as
//! `/`). So silence here is a proof that the order does not matter, and each warning names a
//! request that goes elsewhere.

use std::collections::HashSet;
use std::sync::Arc;

use super::Warn;
use super::rules::RouteOut;
use crate::route::{HostMatch, Route, Source, Table};

/// One route in HAProxy's order; `tree`: rendered from a confd `lsdir` loop, which Switchyard
/// has as a service tree's route (after the configured routes).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) route: RouteOut,
    pub(super) tree: bool,
}

/// A label no host pattern holds, for the wildcards' probe hosts.
const PROBE: &str = "probe";

/// One host of each class the routes' host (or SNI) patterns tell apart; `None`: matched by
/// no pattern.
fn probe_hosts(patterns: &[&HostMatch]) -> Vec<Option<String>> {
    let exact: HashSet<&str> = patterns
        .iter()
        .filter_map(|h| match h {
            HostMatch::Exact(e) => Some(e.as_str()),
            _ => None,
        })
        .collect();
    let mut out: Vec<Option<String>> = vec![None];
    for h in patterns {
        let host = match h {
            HostMatch::Exact(e) => e.clone(),
            HostMatch::Wildcard(s) => {
                let mut label = PROBE.to_string();
                while exact.contains(format!("{label}.{s}").as_str()) {
                    label.push('z');
                }
                format!("{label}.{s}")
            }
            HostMatch::Any => continue,
        };
        if !out.iter().any(|o| o.as_deref() == Some(host.as_str())) {
            out.push(Some(host));
        }
    }
    out
}

/// Compares HAProxy's first match with Switchyard's pick on a request of each class, and warns
/// (at the line of the rule Switchyard picks) once for each pair of rule lines that disagree.
pub(super) fn check(entries: &[Entry], fallback: Option<&str>, tcp: bool, w: &mut Warn) {
    if entries.is_empty() {
        return;
    }
    // Switchyard's table: configured routes in file order, then the tree's. Each route's
    // "backend" is its index in `entries`, so a pick says which route it was.
    let none = entries.len();
    let mut order: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].tree).collect();
    order.extend((0..entries.len()).filter(|&i| entries[i].tree));
    let routes: Vec<Route> = order
        .iter()
        .map(|&i| {
            let m = &entries[i].route.m;
            Route {
                host: m.host.clone(),
                path_prefix: m.path.clone(),
                strip_prefix: false,
                sni: m.sni.clone(),
                backend: i,
                backend_name: Arc::from(entries[i].route.backend.as_str()),
                split: None,
                source: Source::Config,
                policy: (),
            }
        })
        .collect();
    let table = Table::new(routes, Some((none, Arc::from(fallback.unwrap_or("")))), ());
    let patterns: Vec<&HostMatch> = entries
        .iter()
        .map(|e| e.route.m.sni.as_ref().unwrap_or(&e.route.m.host))
        .collect();
    let hosts = probe_hosts(&patterns);
    let mut paths: Vec<&str> = vec!["/"];
    if !tcp {
        for e in entries {
            if !paths.contains(&e.route.m.path.as_str()) {
                paths.push(&e.route.m.path);
            }
        }
    }
    let backend = |i: usize| -> Option<&str> {
        match entries.get(i) {
            Some(e) => Some(e.route.backend.as_str()),
            None => fallback,
        }
    };
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    for host in &hosts {
        for path in &paths {
            let first = entries
                .iter()
                .position(|e| {
                    let m = &e.route.m;
                    match (&m.sni, host) {
                        (Some(s), Some(h)) => s.matches(h),
                        (Some(_), None) => false,
                        (None, Some(h)) => m.host.matches(h) && path.starts_with(m.path.as_str()),
                        (None, None) => {
                            m.host == HostMatch::Any && path.starts_with(m.path.as_str())
                        }
                    }
                })
                .unwrap_or(none);
            let picked = if tcp {
                table.pick_sni(host.as_deref()).unwrap_or(none)
            } else {
                table
                    .pick(host.as_deref(), path)
                    .map_or(none, |r| r.backend)
            };
            let line = |i: usize| entries.get(i).map_or(0, |e| e.route.line);
            if backend(first) == backend(picked) || !seen.insert((line(first), line(picked))) {
                continue;
            }
            let request = match (tcp, host) {
                (true, Some(h)) => format!("a connection with SNI {h}"),
                (true, None) => "a connection without SNI".to_string(),
                (false, Some(h)) => format!("Host {h} path {path}"),
                (false, None) => format!("any other host, path {path}"),
            };
            let name = |i: usize| match backend(i) {
                Some(b) => format!("{b:?}"),
                None => "no backend".to_string(),
            };
            let haproxy = match entries.get(first) {
                Some(e) => format!("its first matching rule (line {})", e.route.line),
                None => "no rule".to_string(),
            };
            let at = entries
                .get(picked)
                .or(entries.get(first))
                .expect("one is a route");
            w.at(
                at.route.line,
                at.route.text.clone(),
                format!(
                    "rule order matters here and Switchyard routes by specificity, not order: {request} went to {} by {haproxy}, and now goes to {}; routes written as they are, check them",
                    name(first),
                    name(picked)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::Warning;
    use crate::migrate::rules::Match;

    fn entry(host: Option<&str>, path: &str, backend: &str, line: usize) -> Entry {
        Entry {
            route: RouteOut {
                m: Match {
                    host: HostMatch::parse(host).unwrap(),
                    path: path.to_string(),
                    sni: None,
                },
                backend: backend.to_string(),
                line,
                text: format!("use_backend {backend}"),
            },
            tree: false,
        }
    }

    fn run(entries: &[Entry], fallback: Option<&str>) -> Vec<Warning> {
        let mut out = Vec::new();
        let mut w = Warn {
            file: "haproxy.cfg",
            out: &mut out,
        };
        check(entries, fallback, false, &mut w);
        out
    }

    #[test]
    fn specific_rules_first_is_the_same_in_both() {
        // The usual layout: exact hosts, then a wildcard, then a path: nothing to say.
        let e = [
            entry(Some("api.example.com"), "/", "api", 10),
            entry(Some("*.example.com"), "/", "web", 11),
            entry(None, "/static/", "static", 12),
        ];
        assert!(run(&e, Some("default")).is_empty());
        // Two overlapping rules to the same backend: order cannot matter.
        let e = [
            entry(None, "/", "app", 10),
            entry(Some("a.example.com"), "/", "app", 11),
        ];
        assert!(run(&e, None).is_empty());
    }

    #[test]
    fn a_general_rule_first_shadows_a_specific_one_in_haproxy_only() {
        let e = [
            entry(None, "/api/", "api", 20),
            entry(Some("www.example.com"), "/", "www", 21),
        ];
        let w = run(&e, Some("default"));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].line, 21, "warned at the rule Switchyard prefers");
        assert!(
            w[0].why
                .contains("Host www.example.com path /api/ went to \"api\""),
            "{}",
            w[0].why
        );
        assert!(w[0].why.contains("now goes to \"www\""), "{}", w[0].why);
        // A wildcard before an exact host of its domain.
        let e = [
            entry(Some("*.example.com"), "/", "wild", 5),
            entry(Some("a.example.com"), "/", "a", 6),
        ];
        let w = run(&e, None);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].why.contains("Host a.example.com"), "{}", w[0].why);
        // A short path prefix before a longer one on the same host.
        let e = [
            entry(Some("a.com"), "/v", "v", 5),
            entry(Some("a.com"), "/v1/", "v1", 6),
        ];
        assert_eq!(run(&e, None).len(), 1);
    }

    #[test]
    fn a_masked_conflict_is_not_reported() {
        // Rules 2 and 3 conflict on www.example.com/api/, but rule 1 takes those requests
        // first in HAProxy and is the most specific route in Switchyard as well.
        let e = [
            entry(Some("www.example.com"), "/api/", "x", 1),
            entry(None, "/api/", "api", 2),
            entry(Some("www.example.com"), "/", "www", 3),
        ];
        let w = run(&e, None);
        assert!(w.is_empty(), "{w:#?}");
    }

    #[test]
    fn probe_hosts_cover_each_class() {
        let p = [
            HostMatch::parse(Some("a.com")).unwrap(),
            HostMatch::parse(Some("*.com")).unwrap(),
            HostMatch::parse(Some("*.b.com")).unwrap(),
            HostMatch::parse(Some("probe.b.com")).unwrap(),
        ];
        let refs: Vec<&HostMatch> = p.iter().collect();
        assert_eq!(
            probe_hosts(&refs),
            [
                None,
                Some("a.com".to_string()),
                Some("probe.com".to_string()),
                Some("probez.b.com".to_string()),
                Some("probe.b.com".to_string()),
            ]
        );
    }
}
