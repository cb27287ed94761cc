//! A haproxy.cfg frontend's `http-request` and `http-response` rules that Switchyard's traffic
//! policy can say (README, "Traffic policy"): `http-request redirect scheme https` (alone, `if
//! !{ ssl_fc }` or `unless { ssl_fc }`; also the older `redirect scheme https`) becomes `redirect`, `set-header`, `add-header` and
//! `del-header` become `request_headers` and `response_headers`. `http-request deny` and
//! `tcp-request connection reject` on a client address (`if !{ src CIDR... }` or `if !NAME` with
//! `acl NAME src CIDR...`: `allow`; `if { src ... }` or `if NAME`: `deny`; `unless` the reverse)
//! become `allow` and `deny`. A rule with another condition, a log-format value (`%[...]`) or on
//! a field `switchyard check` refuses is one warning.

use std::collections::BTreeMap;

use super::Warn;
use super::haproxy::{Line, Proxy};
use super::write::q;
use crate::config::PROTECTED_HEADERS;

/// Whether `l` is a rule this module reads (the others keep the generic warning).
pub(super) fn maps(l: &Line) -> bool {
    match (l.word(0), l.word(1)) {
        ("http-request", "redirect") => l.word(2) == "scheme" && l.word(3) == "https",
        ("redirect", "scheme") => l.word(2) == "https",
        ("http-request" | "http-response", "set-header" | "add-header" | "del-header") => true,
        ("http-request", "deny") | ("tcp-request", "connection") => src_rule(l).is_some(),
        _ => false,
    }
}

/// The client-address condition of a deny rule.
#[derive(Debug)]
enum Src {
    /// `{ src 10.0.0.0/8 ... }`
    Inline(Vec<String>),
    /// An acl's name.
    Named(String),
}

/// `http-request deny [deny_status 403] if|unless COND` or `tcp-request connection reject
/// if|unless COND`, COND one client-address test: whether it refuses clients *outside* the
/// addresses (then it is an `allow` list), and the addresses.
fn src_rule(l: &Line) -> Option<(bool, Src)> {
    let w: Vec<&str> = l.words.iter().map(String::as_str).collect();
    let rest = match w.as_slice() {
        ["http-request", "deny", "deny_status", "403", rest @ ..] => rest,
        ["http-request", "deny", rest @ ..] => rest,
        ["tcp-request", "connection", "reject", rest @ ..] => rest,
        _ => return None,
    };
    let (unless, cond) = match rest {
        ["if", c @ ..] => (false, c),
        ["unless", c @ ..] => (true, c),
        _ => return None,
    };
    let (neg, src) = match cond {
        ["{", "src", v @ .., "}"] | ["!{", "src", v @ .., "}"] | ["!", "{", "src", v @ .., "}"]
            if !v.is_empty() =>
        {
            let neg = cond[0] != "{";
            (neg, Src::Inline(v.iter().map(|s| s.to_string()).collect()))
        }
        ["!", name] => (true, Src::Named(name.to_string())),
        [name] if !name.starts_with('{') => match name.strip_prefix('!') {
            Some(n) if !n.is_empty() => (true, Src::Named(n.to_string())),
            Some(_) => return None,
            None => (false, Src::Named(name.to_string())),
        },
        _ => return None,
    };
    Some((neg != unless, src))
}

/// Moves the `acl NAME src ...` lines the section's deny rules name from its routing lines
/// (where they would be warned as used by no `use_backend`) to its policy lines.
pub(super) fn take_src_acls(p: &mut Proxy) {
    let names: Vec<String> = p
        .policy
        .iter()
        .filter_map(|l| match src_rule(l) {
            Some((_, Src::Named(n))) => Some(n),
            _ => None,
        })
        .collect();
    for name in names {
        let is = |l: &Line| l.word(0) == "acl" && l.word(1) == name;
        let all_src = p.rules.iter().filter(|l| is(l)).all(|l| l.word(2) == "src");
        if !all_src {
            continue;
        }
        let (moved, kept): (Vec<Line>, Vec<Line>) = std::mem::take(&mut p.rules)
            .into_iter()
            .partition(|l| is(l));
        p.rules = kept;
        p.policy.extend(moved);
    }
    p.policy.sort_by_key(|l| l.no);
}

#[derive(Debug, Default)]
struct Rules {
    set: BTreeMap<String, String>,
    add: BTreeMap<String, String>,
    remove: Vec<String>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// `{ set = { ... }, add = { ... }, remove = [...] }`, leaving out what is empty.
    fn toml(&self) -> String {
        let map = |m: &BTreeMap<String, String>| {
            let kv: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", q(k), q(v)))
                .collect();
            format!("{{ {} }}", kv.join(", "))
        };
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("set = {}", map(&self.set)));
        }
        if !self.add.is_empty() {
            parts.push(format!("add = {}", map(&self.add)));
        }
        if !self.remove.is_empty() {
            let r: Vec<String> = self.remove.iter().map(|n| q(n)).collect();
            parts.push(format!("remove = [{}]", r.join(", ")));
        }
        format!("{{ {} }}", parts.join(", "))
    }
}

/// What a frontend's policy lines become.
#[derive(Debug, Default)]
pub(super) struct PolicyOut {
    /// `redirect scheme https`: `Some(code)` (`None`: no code given).
    redirect: Option<Option<u16>>,
    /// Whether the redirect is only for plain-HTTP listeners (`if !{ ssl_fc }`).
    redirect_plain_only: bool,
    request: Rules,
    response: Rules,
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

/// Reads a frontend's policy lines (those [`maps`] takes); what cannot be said is warned.
pub(super) fn read(lines: &[Line], w: &mut Warn) -> PolicyOut {
    let mut out = PolicyOut::default();
    // `acl NAME src ...` (moved here by `take_src_acls`); several lines with one name are OR-ed.
    let mut acls: BTreeMap<&str, Result<Vec<String>, String>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.word(0) == "acl") {
        let values = &l.words[3.min(l.words.len())..];
        let entry = acls.entry(l.word(1)).or_insert(Ok(Vec::new()));
        if let Some(flag) = values.iter().find(|v| v.starts_with('-')) {
            *entry = Err(format!("acl {} (line {}) has flag {flag}", l.word(1), l.no));
        } else if let Ok(v) = entry {
            v.extend(values.iter().cloned());
        }
    }
    for l in lines {
        if l.word(0) == "acl" {
            continue;
        }
        if let Some((allow, src)) = src_rule(l) {
            let values = match src {
                Src::Inline(v) => v,
                Src::Named(n) => match acls.get(n.as_str()) {
                    Some(Ok(v)) if !v.is_empty() => v.clone(),
                    Some(Err(why)) => {
                        w.line(l, format!("{why}, which does not map; not migrated"));
                        continue;
                    }
                    _ => {
                        w.line(
                            l,
                            format!("acl {n} is not a `src` acl of this section; not migrated"),
                        );
                        continue;
                    }
                },
            };
            if let Err((i, why)) = crate::config::CidrSet::parse(&values) {
                w.line(l, format!("value {}: {why}; not migrated", i + 1));
                continue;
            }
            if !allow {
                out.deny.extend(values);
            } else if out.allow.is_some() {
                w.line(
                    l,
                    "a second allow list (HAProxy requires a client in both; Switchyard has one list); not migrated",
                );
            } else {
                out.allow = Some(values);
            }
            continue;
        }
        let (args, cond) = match l.words.iter().position(|x| x == "if" || x == "unless") {
            Some(i) => (&l.words[..i], &l.words[i..]),
            None => (&l.words[..], &l.words[l.words.len()..]),
        };
        let cond: Vec<&str> = cond.iter().map(String::as_str).collect();
        if l.word(0) == "redirect" || l.word(1) == "redirect" {
            // After `scheme https`: `code N`, if any.
            let after = if l.word(0) == "redirect" { 3 } else { 4 };
            let plain_only = match cond.as_slice() {
                [] => false,
                ["if", "!{", "ssl_fc", "}"] | ["unless", "{", "ssl_fc", "}"] => true,
                _ => {
                    w.line(l, "only `if !{ ssl_fc }` (or no condition) maps to redirect = \"https\"; not migrated");
                    continue;
                }
            };
            let code = match args.get(after).map(String::as_str) {
                None => None,
                Some("code") => match args.get(after + 1).and_then(|c| c.parse::<u16>().ok()) {
                    Some(c) if crate::config::REDIRECT_CODES.contains(&c) => Some(c),
                    _ => {
                        w.line(
                            l,
                            "a code other than 301, 302, 303, 307 or 308; not migrated",
                        );
                        continue;
                    }
                },
                Some(_) => {
                    w.line(l, "only `code N` may follow `scheme https`; not migrated");
                    continue;
                }
            };
            if code.is_none() {
                w.line(
                    l,
                    "HAProxy answers 302 without a code; redirect = \"https\" answers 308 (keeps the method and body)",
                );
            }
            out.redirect = Some(code);
            out.redirect_plain_only = plain_only;
            continue;
        }
        if !cond.is_empty() {
            w.line(
                l,
                "header rules in Switchyard have no condition; not migrated",
            );
            continue;
        }
        let rules = if l.word(0) == "http-request" {
            &mut out.request
        } else {
            &mut out.response
        };
        let name = l.word(2);
        if name.is_empty() {
            w.line(l, "no header name; not migrated");
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if PROTECTED_HEADERS.contains(&lower.as_str())
            || (l.word(1) == "del-header" && lower == "host")
        {
            w.line(
                l,
                "a hop-by-hop or framing field, which Switchyard writes itself; not migrated",
            );
            continue;
        }
        match l.word(1) {
            "del-header" if args.len() == 3 => rules.remove.push(name.to_string()),
            "del-header" => w.line(l, "only `del-header NAME` maps (no -m); not migrated"),
            op => {
                let value = args[3..].join(" ");
                if args.len() < 4 || value.contains("%[") || value.contains("%{") {
                    w.line(
                        l,
                        "only a constant value maps (no log-format expression); not migrated",
                    );
                    continue;
                }
                let map = if op == "set-header" {
                    &mut rules.set
                } else {
                    &mut rules.add
                };
                map.insert(name.to_string(), value);
            }
        }
    }
    out
}

/// The frontend keys for one listener (`ssl`: it terminates TLS, where a redirect taken only
/// without TLS is left out).
pub(super) fn keys(p: &PolicyOut, ssl: bool) -> String {
    let mut s = String::new();
    match p.redirect {
        Some(_) if ssl && p.redirect_plain_only => {}
        Some(None) | Some(Some(308)) => s.push_str("redirect = \"https\"\n"),
        Some(Some(code)) => s.push_str(&format!(
            "redirect = {{ location = \"https://{{host}}{{path}}\", code = {code} }}\n"
        )),
        None => {}
    }
    let list = |v: &[String]| v.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    if let Some(a) = &p.allow {
        s.push_str(&format!("allow = [{}]\n", list(a)));
    }
    if !p.deny.is_empty() {
        s.push_str(&format!("deny = [{}]\n", list(&p.deny)));
    }
    if !p.request.is_empty() {
        s.push_str(&format!("request_headers = {}\n", p.request.toml()));
    }
    if !p.response.is_empty() {
        s.push_str(&format!("response_headers = {}\n", p.response.toml()));
    }
    s
}
