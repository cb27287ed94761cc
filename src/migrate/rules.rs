//! The routing half of a haproxy.cfg frontend: its `acl`, `use_backend` and `tcp-request` lines
//! become `[[frontend.route]]` entries (host, path_prefix, sni) and its fallback. An acl is read
//! by `acl.rs` into the alternatives it matches (a value each: an exact host, a `*.suffix`, a
//! path prefix or an SNI name); a rule's condition (`A B` is AND, `||` and `or` are OR, `{ ... }` an anonymous
//! acl) is expanded into one route per alternative. What no route can say (a negation,
//! `unless`, `hdr_beg`, a header other than Host) drops that alternative with one warning on the
//! rule's line; what maps only approximately (a dropped port, case-sensitivity, an exact path
//! taken as a prefix) is one warning on the acl's line. Whether HAProxy's first-match order and
//! Switchyard's precedence agree is `order.rs`'s question.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::Warn;
use super::acl::{Atom, Term, criterion};
use super::haproxy::{Line, Proxy, time_arg};
use super::order;
use crate::route::HostMatch;

/// At most this many routes from one rule (alternatives multiply across an AND).
const MAX_ALTERNATIVES: usize = 256;

/// The hosts and paths one route matches (one alternative of a rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Match {
    pub(super) host: HostMatch,
    pub(super) path: String,
    pub(super) sni: Option<HostMatch>,
}

impl Match {
    fn any() -> Match {
        Match {
            host: HostMatch::Any,
            path: "/".to_string(),
            sni: None,
        }
    }
}

/// One route to write, with the `use_backend` line it comes from.
#[derive(Debug, Clone)]
pub(super) struct RouteOut {
    pub(super) m: Match,
    pub(super) backend: String,
    pub(super) line: usize,
    pub(super) text: String,
}

/// How a frontend picks its backend.
#[derive(Debug, Default)]
pub(super) struct Routing {
    pub(super) fallback: Option<String>,
    pub(super) routes: Vec<RouteOut>,
    /// `tcp-request inspect-delay` of a tcp-mode frontend: its `header_timeout`.
    pub(super) inspect_delay: Option<Duration>,
}

/// The backends a frontend's rules may name.
pub(super) struct Names<'a> {
    /// Written to the output.
    pub(super) emitted: &'a HashSet<String>,
    /// Rendered from a confd `lsdir` loop: a `[[service_tree]]` stands for them and their rules.
    pub(super) tree: &'a dyn Fn(&str) -> bool,
}

// ---------------------------------------------------------------------------------------------
// Conditions.

/// One operand of a condition: a named acl or an anonymous one, maybe negated.
#[derive(Debug)]
enum Lit {
    Named { name: String, neg: bool },
    Anon { words: Vec<String>, neg: bool },
}

/// A condition (the words after `if`) as OR groups of AND-ed operands.
fn condition(words: &[String]) -> Result<Vec<Vec<Lit>>, String> {
    let mut groups: Vec<Vec<Lit>> = vec![Vec::new()];
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        match w {
            "||" | "or" => groups.push(Vec::new()),
            _ => {
                let (neg, rest) = match w.strip_prefix('!') {
                    Some(r) => (true, r),
                    None => (false, w),
                };
                let rest = if rest.is_empty() {
                    i += 1;
                    words.get(i).map(String::as_str).unwrap_or("")
                } else {
                    rest
                };
                if rest == "{" {
                    let start = i + 1;
                    let end = words[start..]
                        .iter()
                        .position(|w| w == "}")
                        .map(|p| start + p)
                        .ok_or("an anonymous acl `{ ...` without its `}`")?;
                    groups
                        .last_mut()
                        .expect("one group at least")
                        .push(Lit::Anon {
                            words: words[start..end].to_vec(),
                            neg,
                        });
                    i = end;
                } else if rest.is_empty() {
                    return Err("`!` without an acl".to_string());
                } else {
                    groups
                        .last_mut()
                        .expect("one group at least")
                        .push(Lit::Named {
                            name: rest.to_string(),
                            neg,
                        });
                }
            }
        }
        i += 1;
    }
    if groups.iter().any(Vec::is_empty) {
        return Err("an empty condition (or an `||` with nothing on one side)".to_string());
    }
    Ok(groups)
}

/// Who uses an acl.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Use {
    #[default]
    None,
    /// Only rules a service tree stands for.
    Tree,
    /// A rule that is written (or warned about).
    Config,
}

#[derive(Debug, Default)]
struct Acl {
    terms: Vec<Term>,
    /// Each line declaring it, with what to say about it when used.
    lines: Vec<(Line, Vec<String>)>,
    used: Use,
}

/// The acls of a section, by name (several lines with one name are OR-ed, as in HAProxy).
fn read_acls(lines: &[Line], tcp: bool) -> HashMap<String, Acl> {
    let mut acls: HashMap<String, Acl> = HashMap::new();
    for l in lines.iter().filter(|l| l.word(0) == "acl") {
        let c = criterion(&l.words[2.min(l.words.len())..], tcp);
        let a = acls.entry(l.word(1).to_string()).or_default();
        a.terms.extend(c.terms);
        a.lines.push((l.clone(), c.notes));
    }
    acls
}

/// Warns about the acl lines: the notes of those a written rule uses, and the ones nothing
/// uses. Acls only the rules of a service tree use say nothing (the template does).
fn acl_warnings(acls: &HashMap<String, Acl>, w: &mut Warn) {
    let mut lines: Vec<(&Line, &Vec<String>, Use)> = acls
        .values()
        .flat_map(|a| a.lines.iter().map(move |(l, n)| (l, n, a.used)))
        .collect();
    lines.sort_by_key(|(l, _, _)| l.no);
    for (l, notes, used) in lines {
        match used {
            Use::Config => {
                for n in notes {
                    w.line(l, n.clone());
                }
            }
            Use::None => w.line(
                l,
                "used by no use_backend rule; not migrated (Switchyard has no other rules)",
            ),
            Use::Tree => {}
        }
    }
}

/// The alternatives of one `use_backend` (or `tcp-request`) condition.
#[derive(Debug, Default)]
struct Alternatives {
    matches: Vec<Match>,
    /// Alternatives that cannot be routes, and why.
    dropped: Vec<String>,
    /// Every operand is a ClientHello test.
    hello_only: bool,
    /// What to say about anonymous acls (their notes), for the rule's line.
    notes: Vec<String>,
}

/// Expands a condition into its alternatives, marking the acls it names as used by `used`.
fn alternatives(
    groups: &[Vec<Lit>],
    acls: &mut HashMap<String, Acl>,
    tcp: bool,
    used: Use,
) -> Alternatives {
    let mut out = Alternatives {
        hello_only: true,
        ..Alternatives::default()
    };
    for group in groups {
        // Each operand's alternatives (a negation is one that cannot be mapped).
        let mut operands: Vec<Vec<Term>> = Vec::new();
        for lit in group {
            let (terms, neg, label) = match lit {
                Lit::Named { name, neg } => match acls.get_mut(name) {
                    Some(a) => {
                        a.used = a.used.max(used);
                        let at = a.lines.first().map(|(l, _)| l.no).unwrap_or(0);
                        let terms = a
                            .terms
                            .iter()
                            .map(|t| match t {
                                Term::Bad(why) => Term::Bad(format!("{name} (line {at}): {why}")),
                                t => t.clone(),
                            })
                            .collect();
                        (terms, *neg, name.clone())
                    }
                    None => (
                        vec![Term::Bad(format!(
                            "{name}: no such acl in this section (HAProxy's predefined acls are not mapped)"
                        ))],
                        *neg,
                        name.clone(),
                    ),
                },
                Lit::Anon { words, neg } => {
                    let c = criterion(words, tcp);
                    let label = format!("{{ {} }}", words.join(" "));
                    out.notes
                        .extend(c.notes.into_iter().map(|n| format!("{label}: {n}")));
                    (c.terms, *neg, label)
                }
            };
            let terms = if terms.is_empty() {
                vec![Term::Bad(format!(
                    "{label}: no value the migration can read"
                ))]
            } else {
                terms
            };
            out.hello_only &= !neg && terms.iter().all(|t| matches!(t, Term::Hello));
            if neg {
                operands.push(vec![Term::Bad(format!(
                    "!{label}: a negation cannot be expressed (a route names what it takes, not what it leaves)"
                ))]);
            } else {
                operands.push(terms);
            }
        }
        let count: usize = operands
            .iter()
            .map(Vec::len)
            .try_fold(1usize, |a, n| a.checked_mul(n))
            .unwrap_or(usize::MAX);
        if count > MAX_ALTERNATIVES {
            out.dropped.push(format!(
                "{count} combinations of values (more than {MAX_ALTERNATIVES}); write these routes by hand"
            ));
            continue;
        }
        // The cartesian product: one pick per operand.
        let mut picks: Vec<Vec<&Term>> = vec![Vec::new()];
        for op in &operands {
            picks = picks
                .into_iter()
                .flat_map(|p| {
                    op.iter().map(move |t| {
                        let mut p = p.clone();
                        p.push(t);
                        p
                    })
                })
                .collect();
        }
        for pick in picks {
            match conjunction(&pick, tcp) {
                Ok(Some(m)) => {
                    if !out.matches.contains(&m) {
                        out.matches.push(m);
                    }
                }
                // Contradictory (two different hosts): HAProxy never matched it either.
                Ok(None) => {}
                Err(why) => out.dropped.push(why),
            }
        }
    }
    out
}

/// The route for an AND of terms: `Ok(None)` when no request can match them all.
fn conjunction(terms: &[&Term], tcp: bool) -> Result<Option<Match>, String> {
    let mut m = Match::any();
    for t in terms {
        match t {
            Term::Bad(why) => return Err(why.clone()),
            Term::Hello => {}
            Term::Atom(Atom::Host(h)) => match and_host(&m.host, h) {
                Some(h) => m.host = h,
                None => return Ok(None),
            },
            Term::Atom(Atom::Sni(h)) => {
                match and_host(m.sni.as_ref().unwrap_or(&HostMatch::Any), h) {
                    Some(h) => m.sni = Some(h),
                    None => return Ok(None),
                }
            }
            Term::Atom(Atom::Path(p)) => {
                if p.starts_with(m.path.as_str()) {
                    m.path = p.clone();
                } else if !m.path.starts_with(p.as_str()) {
                    return Ok(None);
                }
            }
        }
    }
    if tcp && m.sni.is_none() {
        return Err(
            "matches every connection (no SNI test): a tcp-mode route needs an SNI name"
                .to_string(),
        );
    }
    Ok(Some(m))
}

/// The hosts both match, if that is one matcher (or none).
fn and_host(a: &HostMatch, b: &HostMatch) -> Option<HostMatch> {
    use HostMatch::*;
    match (a, b) {
        (Any, x) | (x, Any) => Some(x.clone()),
        (Exact(x), Exact(y)) => (x == y).then(|| a.clone()),
        (Exact(e), w @ Wildcard(_)) | (w @ Wildcard(_), Exact(e)) => {
            w.matches(e).then(|| Exact(e.clone()))
        }
        (Wildcard(x), Wildcard(y)) => {
            let (long, short) = if x.len() >= y.len() { (x, y) } else { (y, x) };
            (long == short || long.ends_with(&format!(".{short}"))).then(|| Wildcard(long.clone()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A frontend's rules.

/// What one `use_backend` line says.
enum Rule {
    /// `use_backend B` without a condition: everything that reaches it.
    Always(String),
    /// Its alternatives.
    When(String, Alternatives),
    /// Not migrated (warned about).
    Skip,
}

fn use_backend(
    l: &Line,
    acls: &mut HashMap<String, Acl>,
    tcp: bool,
    tree: &dyn Fn(&str) -> bool,
    w: &mut Warn,
) -> Rule {
    let backend = l.word(1).to_string();
    let used = if tree(&backend) {
        Use::Tree
    } else {
        Use::Config
    };
    let mark_all = |acls: &mut HashMap<String, Acl>| {
        for word in &l.words[2.min(l.words.len())..] {
            if let Some(a) = acls.get_mut(word.trim_start_matches('!')) {
                a.used = a.used.max(used);
            }
        }
    };
    if backend.is_empty() {
        w.line(l, "needs a backend; ignored");
        return Rule::Skip;
    }
    if backend.contains("%[") {
        mark_all(acls);
        w.line(
            l,
            "a backend name computed per request cannot be mapped; write one route per backend",
        );
        return Rule::Skip;
    }
    match l.word(2) {
        "" => Rule::Always(backend),
        "if" => match condition(&l.words[3..]) {
            Ok(groups) => Rule::When(backend, alternatives(&groups, acls, tcp, used)),
            Err(why) => {
                mark_all(acls);
                w.line(l, format!("{why}; not migrated"));
                Rule::Skip
            }
        },
        "unless" => {
            mark_all(acls);
            if used == Use::Config {
                w.line(
                    l,
                    "`unless` cannot be expressed (a route names what it takes, not what it leaves); not migrated",
                );
            }
            Rule::Skip
        }
        _ => {
            w.line(
                l,
                "expected `if` or `unless` after the backend; not migrated",
            );
            Rule::Skip
        }
    }
}

/// Maps a frontend's `acl`, `use_backend` and `tcp-request` lines. `fallback` is the backend
/// the frontend had without rules (its `default_backend`, or a listen section's own).
pub(super) fn frontend(
    p: &Proxy,
    fallback: Option<String>,
    names: &Names,
    w: &mut Warn,
) -> Routing {
    let tcp = p.c.mode == Some("tcp");
    let mut acls = read_acls(&p.rules, tcp);
    let mut out = Routing {
        fallback,
        ..Routing::default()
    };
    let mut entries: Vec<order::Entry> = Vec::new();
    let mut always: Option<(String, usize)> = None;
    let mut delay_line: Option<&Line> = None;
    for l in &p.rules {
        match l.word(0) {
            "use_backend" => {
                if let Some((b, at)) = &always {
                    w.line(
                        l,
                        format!(
                            "never reached in HAProxy: `use_backend {b}` on line {at} takes everything first; not migrated"
                        ),
                    );
                    continue;
                }
                match use_backend(l, &mut acls, tcp, names.tree, w) {
                    Rule::Skip => {}
                    Rule::Always(b) => always = Some((b, l.no)),
                    Rule::When(b, alts) => {
                        let tree = (names.tree)(&b);
                        if !tree && !names.emitted.contains(&b) {
                            w.line(
                                l,
                                format!("its backend {b:?} was not migrated; rule not migrated"),
                            );
                            continue;
                        }
                        if !tree {
                            for n in &alts.notes {
                                w.line(l, n.clone());
                            }
                        }
                        if !tree && !alts.dropped.is_empty() {
                            let mut why: Vec<&str> = Vec::new();
                            for d in &alts.dropped {
                                if !why.contains(&d.as_str()) {
                                    why.push(d);
                                }
                            }
                            let total = alts.matches.len() + alts.dropped.len();
                            let head = if alts.matches.is_empty() {
                                "not migrated".to_string()
                            } else {
                                format!(
                                    "{} of its {total} alternatives not migrated (the others are routes)",
                                    alts.dropped.len()
                                )
                            };
                            w.line(l, format!("{head}: {}", why.join("; ")));
                        }
                        for m in alts.matches {
                            if entries.iter().any(|e| e.route.m == m) {
                                // An earlier rule takes these requests in HAProxy too.
                                continue;
                            }
                            entries.push(order::Entry {
                                route: RouteOut {
                                    m,
                                    backend: b.clone(),
                                    line: l.no,
                                    text: l.text(),
                                },
                                tree,
                            });
                        }
                    }
                }
            }
            "tcp-request" => match (l.word(1), l.word(2)) {
                ("inspect-delay", _) if tcp => {
                    out.inspect_delay = time_arg(l, 2, w);
                    delay_line = Some(l);
                }
                ("content", "accept") if l.word(3) == "if" => {
                    let hello = condition(&l.words[4..])
                        .map(|g| alternatives(&g, &mut acls, tcp, Use::Config).hello_only);
                    if hello != Ok(true) {
                        w.line(
                            l,
                            "only `tcp-request content accept if { req_ssl_hello_type 1 }` maps (Switchyard waits for the ClientHello itself); not migrated",
                        );
                    }
                }
                _ => w.line(
                    l,
                    "no request rules in Switchyard (tcp mode: only `inspect-delay` and accepting a ClientHello map)",
                ),
            },
            _ => {}
        }
    }
    acl_warnings(&acls, w);

    if let Some((b, at)) = always {
        if let Some(d) = &out.fallback
            && *d != b
        {
            w.at(
                at,
                format!("use_backend {b}"),
                format!(
                    "takes everything no earlier rule takes, so it is the fallback (backend = {b:?}); default_backend {d} was never used"
                ),
            );
        }
        out.fallback = Some(b);
    }
    if let Some(f) = &out.fallback
        && !names.emitted.contains(f)
    {
        if !entries.is_empty() {
            w.at(
                p.line,
                format!("frontend {}", p.name),
                format!("its fallback backend {f:?} was not migrated; the frontend keeps its routes only"),
            );
        }
        out.fallback = None;
    }
    let any_config = entries.iter().any(|e| !e.tree);
    if any_config || entries.iter().any(|e| e.tree) {
        order::check(&entries, out.fallback.as_deref(), tcp, w);
    }
    if out.fallback.is_none() && !entries.is_empty() && !tcp {
        w.at(
            p.line,
            format!("frontend {}", p.name),
            "no default_backend: a request no route matches gets 404 from Switchyard (HAProxy answered 503)",
        );
    }
    if let Some(l) = delay_line
        && out.fallback.is_some()
        && entries.iter().any(|e| e.route.m.sni.is_some())
    {
        w.line(
            l,
            "mapped to header_timeout; a connection that sends no ClientHello within it is closed (HAProxy passed it on to default_backend)",
        );
    }
    out.routes = entries
        .into_iter()
        .filter(|e| !e.tree)
        .map(|e| e.route)
        .collect();
    out
}

/// The routes of the `acl` and `use_backend` lines inside a confd template's `lsdir` loop (the
/// service written as [`super::scan::SERVICE`]) whose backend is `backend`; warnings go to the
/// template.
pub(super) fn template_routes(lines: &[Line], backend: &str, w: &mut Warn) -> Vec<RouteOut> {
    let mut acls = read_acls(lines, false);
    let mut out: Vec<RouteOut> = Vec::new();
    for l in lines.iter().filter(|l| l.word(0) == "use_backend") {
        if l.word(1) != backend {
            w.line(
                l,
                "inside the lsdir loop but not naming the loop's backend; not migrated",
            );
            continue;
        }
        match use_backend(l, &mut acls, false, &|_| false, w) {
            Rule::Skip => {}
            Rule::Always(_) => w.line(
                l,
                "without a condition every service would take every request; not migrated",
            ),
            Rule::When(_, alts) => {
                for n in &alts.notes {
                    w.line(l, n.clone());
                }
                if !alts.dropped.is_empty() {
                    w.line(
                        l,
                        format!("alternatives not migrated: {}", alts.dropped.join("; ")),
                    );
                }
                for m in alts.matches {
                    out.push(RouteOut {
                        m,
                        backend: backend.to_string(),
                        line: l.no,
                        text: l.text(),
                    });
                }
            }
        }
    }
    acl_warnings(&acls, w);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::haproxy::words;

    #[test]
    fn conditions_parse_into_or_groups() {
        let g = condition(&words("a b || c or !d { path_beg /x }")).unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].len(), 2);
        assert!(matches!(&g[2][0], Lit::Named { name, neg: true } if name == "d"));
        assert!(matches!(&g[2][1], Lit::Anon { words, neg: false } if words.len() == 2));
        assert!(condition(&words("a ||")).is_err());
        assert!(condition(&words("{ path_beg /x")).is_err());
    }

    #[test]
    fn conjunctions_intersect_hosts_and_paths() {
        let h = |s: &str| HostMatch::parse(Some(s)).unwrap();
        assert_eq!(
            and_host(&h("a.example.com"), &h("*.example.com")),
            Some(h("a.example.com"))
        );
        assert_eq!(and_host(&h("a.other.com"), &h("*.example.com")), None);
        assert_eq!(
            and_host(&h("*.a.example.com"), &h("*.example.com")),
            Some(h("*.a.example.com"))
        );
        assert_eq!(and_host(&h("*.a.com"), &h("*.b.com")), None);
        let host = Term::Atom(Atom::Host(h("a.com")));
        let path = Term::Atom(Atom::Path("/v1/".into()));
        let shorter = Term::Atom(Atom::Path("/v1".into()));
        let m = conjunction(&[&host, &path, &shorter], false)
            .unwrap()
            .unwrap();
        assert_eq!((m.host, m.path.as_str()), (h("a.com"), "/v1/"));
        let other = Term::Atom(Atom::Path("/v2".into()));
        assert_eq!(conjunction(&[&path, &other], false), Ok(None));
        assert!(
            conjunction(&[&Term::Hello], true).is_err(),
            "tcp needs an SNI"
        );
    }
}
