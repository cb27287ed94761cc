//! A haproxy.cfg frontend's `http-request` and `http-response` rules that Switchyard's traffic
//! policy can say (README, "Traffic policy"): `http-request redirect scheme https` (alone, `if
//! !{ ssl_fc }` or `unless { ssl_fc }`; also the older `redirect scheme https`) becomes `redirect`, `set-header`, `add-header` and
//! `del-header` become `request_headers` and `response_headers`. A rule with another condition,
//! a log-format value (`%[...]`) or on a field `switchyard check` refuses is one warning.

use std::collections::BTreeMap;

use super::Warn;
use super::haproxy::Line;
use super::write::q;
use crate::config::PROTECTED_HEADERS;

/// Whether `l` is a rule this module reads (the others keep the generic warning).
pub(super) fn maps(l: &Line) -> bool {
    match (l.word(0), l.word(1)) {
        ("http-request", "redirect") => l.word(2) == "scheme" && l.word(3) == "https",
        ("redirect", "scheme") => l.word(2) == "https",
        ("http-request" | "http-response", "set-header" | "add-header" | "del-header") => true,
        _ => false,
    }
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
}

/// Reads a frontend's policy lines (those [`maps`] takes); what cannot be said is warned.
pub(super) fn read(lines: &[Line], w: &mut Warn) -> PolicyOut {
    let mut out = PolicyOut::default();
    for l in lines {
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
    if !p.request.is_empty() {
        s.push_str(&format!("request_headers = {}\n", p.request.toml()));
    }
    if !p.response.is_empty() {
        s.push_str(&format!("response_headers = {}\n", p.response.toml()));
    }
    s
}
