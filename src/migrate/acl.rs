//! haproxy.cfg acl criteria (`hdr(host) -i a.com b.com`, `hdr_dom`, `hdr_end`, `path_beg`,
//! `path`, `req.ssl_sni`, `req_ssl_hello_type`, with `-i` and `-m`), read into the alternatives
//! a route can match: one per value, an exact host, a `*.suffix`, a path prefix or an SNI name.
//! What no route can match is an alternative that cannot be mapped, with the reason; what maps
//! only approximately (a dropped port, case, an exact path taken as a prefix) is a note for the
//! acl's line. `rules.rs` combines them into routes.

use crate::route::{HostMatch, parse_path_prefix};

/// What one acl value (or anonymous acl) matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Atom {
    Host(HostMatch),
    Path(String),
    Sni(HostMatch),
}

/// One alternative of an acl.
#[derive(Debug, Clone)]
pub(super) enum Term {
    Atom(Atom),
    /// `req_ssl_hello_type 1`: the connection starts with a ClientHello (Switchyard waits for
    /// one on a frontend with SNI routes anyway).
    Hello,
    /// Cannot be mapped, and why.
    Bad(String),
}

/// An acl criterion as read: its alternatives, and what to say about its line when used.
#[derive(Debug, Default)]
pub(super) struct Criterion {
    pub(super) terms: Vec<Term>,
    pub(super) notes: Vec<String>,
}

impl Criterion {
    fn bad(&mut self, why: impl Into<String>) {
        self.terms.push(Term::Bad(why.into()));
    }
    fn host(&mut self, sni: bool, h: HostMatch) {
        self.terms
            .push(Term::Atom(if sni { Atom::Sni(h) } else { Atom::Host(h) }));
    }
}

/// What a fetch reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fetch {
    Host,
    Path,
    Sni,
    Hello,
}

/// `hdr(Host)` -> (`hdr`, `Host`).
fn split_fetch(f: &str) -> (&str, Option<&str>) {
    match f.split_once('(') {
        Some((name, rest)) => (name, Some(rest.strip_suffix(')').unwrap_or(rest))),
        None => (f, None),
    }
}

/// The fetch a criterion reads and the match method its name implies, or why it maps to no
/// route.
fn fetch(criterion: &str) -> Result<(Fetch, &'static str), String> {
    let (name, arg) = split_fetch(criterion);
    let host_arg = || arg.is_some_and(|a| a.trim().eq_ignore_ascii_case("host"));
    let hdr = |method| {
        if host_arg() {
            Ok((Fetch::Host, method))
        } else {
            Err(format!(
                "{criterion}: routes match the Host header only, not other headers"
            ))
        }
    };
    match name {
        "hdr" | "req.hdr" | "req.fhdr" | "hdr_str" => hdr("str"),
        "hdr_dom" => hdr("dom"),
        "hdr_end" => hdr("end"),
        "hdr_beg" => hdr("beg"),
        "hdr_sub" => hdr("sub"),
        "hdr_reg" | "hdr_regex" => hdr("reg"),
        "hdr_len" => hdr("len"),
        "path" | "path_str" => Ok((Fetch::Path, "str")),
        "path_beg" => Ok((Fetch::Path, "beg")),
        "path_end" => Ok((Fetch::Path, "end")),
        "path_sub" => Ok((Fetch::Path, "sub")),
        "path_reg" | "path_regex" => Ok((Fetch::Path, "reg")),
        "path_dir" => Ok((Fetch::Path, "dir")),
        "path_dom" => Ok((Fetch::Path, "dom")),
        "path_len" => Ok((Fetch::Path, "len")),
        "req.ssl_sni" | "req_ssl_sni" => Ok((Fetch::Sni, "str")),
        "req.ssl_hello_type" | "req_ssl_hello_type" => Ok((Fetch::Hello, "int")),
        "ssl_fc_sni" | "ssl_fc_sni_end" | "ssl_fc_sni_reg" => Err(format!(
            "{criterion}: the SNI of TLS that HAProxy terminates; Switchyard routes terminated TLS by Host (hdr(host))"
        )),
        _ => Err(format!(
            "{criterion}: routes match only the Host header, a path prefix or (tcp mode) the ClientHello's SNI"
        )),
    }
}

/// Reads a criterion (`hdr(host) -i a.com b.com`, from the fetch on) of a frontend in `tcp`
/// mode or not.
pub(super) fn criterion(words: &[String], tcp: bool) -> Criterion {
    let mut c = Criterion::default();
    let Some(first) = words.first() else {
        c.bad("no criterion");
        return c;
    };
    let (what, implied) = match fetch(first) {
        Ok(f) => f,
        Err(why) => {
            c.bad(why);
            return c;
        }
    };
    let mut icase = false;
    let mut method = implied;
    let mut i = 1;
    while let Some(flag) = words.get(i).filter(|w| w.starts_with('-')) {
        match flag.as_str() {
            "-i" => icase = true,
            "-n" => {}
            "-m" => {
                i += 1;
                method = match words.get(i).map(String::as_str) {
                    Some("str") => "str",
                    Some("beg") => "beg",
                    Some("end") => "end",
                    Some("dom") => "dom",
                    Some("sub") => "sub",
                    Some("reg") => "reg",
                    Some("dir") => "dir",
                    Some("len") => "len",
                    Some("found") => "found",
                    Some("int") => "int",
                    _ => "other",
                };
            }
            "-u" => i += 1,
            "--" => {
                i += 1;
                break;
            }
            "-f" | "-M" => {
                c.bad(format!(
                    "{first} {flag}: patterns from a file are not read; write them as routes"
                ));
                return c;
            }
            other => {
                c.bad(format!("{first}: the flag {other} is not supported"));
                return c;
            }
        }
        i += 1;
    }
    let values = &words[i.min(words.len())..];
    if values.is_empty() && method != "found" {
        c.bad(format!("{first}: no value to match"));
        return c;
    }
    match what {
        Fetch::Host | Fetch::Path if tcp => c.bad(format!(
            "{first}: reads HTTP requests, and this is a tcp-mode frontend (use req.ssl_sni)"
        )),
        Fetch::Sni if !tcp => c.bad(format!(
            "{first}: reads the ClientHello of TLS passed through in tcp mode, and this is an http-mode frontend (use hdr(host))"
        )),
        Fetch::Hello => {
            if method == "int" && values.iter().all(|v| v == "1") {
                c.terms.push(Term::Hello);
            } else {
                c.bad(format!("{first}: only `{first} 1` (a ClientHello) maps"));
            }
        }
        Fetch::Host | Fetch::Sni => {
            let sni = what == Fetch::Sni;
            if !icase {
                c.notes.push(
                    "without -i HAProxy compared case-sensitively; Switchyard matches host names case-insensitively".to_string(),
                );
            }
            for v in values {
                host_values(&mut c, first, method, v, sni);
            }
            if values.is_empty() {
                c.bad(format!(
                    "{first} -m {method}: a test of the header's presence cannot be expressed"
                ));
            }
        }
        Fetch::Path => {
            if icase {
                c.notes.push(
                    "-i: Switchyard matches path prefixes case-sensitively; the values are taken as written".to_string(),
                );
            }
            for v in values {
                match method {
                    "beg" | "str" => match parse_path_prefix(Some(v)) {
                        Ok(p) => {
                            if method == "str" {
                                c.notes.push(format!(
                                    "{v}: an exact path; Switchyard matches path prefixes, so the route also takes {v}/... and longer paths that start with {v}"
                                ));
                            }
                            c.terms.push(Term::Atom(Atom::Path(p)));
                        }
                        Err(why) => c.bad(format!("path_prefix {why}")),
                    },
                    "dir" => c.bad(format!(
                        "{first} {v}: a path segment anywhere in the path; routes match a path prefix"
                    )),
                    m => c.bad(format!(
                        "{first} {v}: `{m}` matching of the path cannot be expressed; routes match a path prefix (path_beg)"
                    )),
                }
            }
        }
    }
    c
}

/// One host or SNI value of a criterion matched with `method`.
fn host_values(c: &mut Criterion, first: &str, method: &str, raw: &str, sni: bool) {
    let v = match raw.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            c.notes.push(format!(
                "{raw}: the port is dropped (routes match a host on any port)"
            ));
            h
        }
        _ => raw,
    };
    if v.starts_with('-') {
        c.bad(format!(
            "{first} {raw}: not a host name (flags go before the values)"
        ));
        return;
    }
    if v.contains('*') {
        c.bad(format!(
            "{first} {raw}: HAProxy compares `*` literally; routes read it as a wildcard"
        ));
        return;
    }
    let exact = |c: &mut Criterion, v: &str| match HostMatch::parse(Some(v)) {
        Ok(h) => c.host(sni, h),
        Err(why) => c.bad(format!("{first}: {why}")),
    };
    let wildcard =
        |c: &mut Criterion, suffix: &str| match HostMatch::parse(Some(&format!("*.{suffix}"))) {
            Ok(h) => c.host(sni, h),
            Err(why) => c.bad(format!("{first}: {why}")),
        };
    match method {
        "str" => exact(c, v),
        "dom" => {
            let d = v.trim_matches('.');
            if d.is_empty() {
                c.bad(format!("{first} {raw}: no domain"));
                return;
            }
            if !d.contains('.') {
                c.notes.push(format!(
                    "{raw}: HAProxy's dom match took it as any dot-separated label of the host; routed: {d} and *.{d}"
                ));
            }
            exact(c, d);
            wildcard(c, d);
        }
        "end" => match v.strip_prefix('.') {
            Some(suffix) => wildcard(c, suffix),
            None => {
                c.notes.push(format!(
                    "{raw}: without a leading dot HAProxy's end match also took hosts that merely end in it (such as my{v}); routed: {v} and *.{v}"
                ));
                exact(c, v);
                wildcard(c, v);
            }
        },
        "beg" => c.bad(format!(
            "{first} {raw}: the beginning of a host cannot be expressed; routes match a whole host or *.suffix"
        )),
        m => c.bad(format!(
            "{first} {raw}: `{m}` matching of the host cannot be expressed; routes match a whole host or *.suffix"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::haproxy::words;

    fn crit(s: &str, tcp: bool) -> Criterion {
        criterion(&words(s), tcp)
    }

    fn atoms(c: &Criterion) -> Vec<String> {
        c.terms
            .iter()
            .map(|t| match t {
                Term::Atom(Atom::Host(h)) => format!("host {h}"),
                Term::Atom(Atom::Sni(h)) => format!("sni {h}"),
                Term::Atom(Atom::Path(p)) => format!("path {p}"),
                Term::Hello => "hello".to_string(),
                Term::Bad(_) => "bad".to_string(),
            })
            .collect()
    }

    #[test]
    fn host_criteria_map_to_exact_and_wildcard_hosts() {
        let c = crit("hdr(host) -i a.com B.com", false);
        assert_eq!(atoms(&c), ["host a.com", "host b.com"]);
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        for spelling in ["hdr(Host)", "req.hdr(host)", "hdr_str(host)"] {
            let c = crit(&format!("{spelling} -i a.com"), false);
            assert_eq!(atoms(&c), ["host a.com"], "{spelling}");
        }
        let c = crit("hdr_dom(host) -i example.com", false);
        assert_eq!(atoms(&c), ["host example.com", "host *.example.com"]);
        let c = crit("hdr_end(host) -i .example.com", false);
        assert_eq!(atoms(&c), ["host *.example.com"]);
        assert!(c.notes.is_empty());
        // Without the leading dot: both, and a note saying what changed.
        let c = crit("hdr_end(host) -i example.com", false);
        assert_eq!(atoms(&c), ["host example.com", "host *.example.com"]);
        assert!(c.notes[0].contains("myexample.com"), "{:?}", c.notes);
        // -m spells the method too.
        let c = crit("hdr(host) -i -m end .example.com", false);
        assert_eq!(atoms(&c), ["host *.example.com"]);
    }

    #[test]
    fn what_host_criteria_cannot_say() {
        assert_eq!(atoms(&crit("hdr_beg(host) -i api.", false)), ["bad"]);
        assert_eq!(atoms(&crit("hdr_reg(host) -i ^a", false)), ["bad"]);
        assert_eq!(atoms(&crit("hdr(x-tenant) -i a", false)), ["bad"]);
        assert_eq!(atoms(&crit("hdr(host) -f /etc/hosts.lst", false)), ["bad"]);
        assert_eq!(atoms(&crit("src 10.0.0.0/8", false)), ["bad"]);
        // A port is dropped with a note; no -i is a note.
        let c = crit("hdr(host) a.com:8080", false);
        assert_eq!(atoms(&c), ["host a.com"]);
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(c.notes[0].contains("case-insensitively"));
        assert!(c.notes[1].contains("port is dropped"));
        // Host criteria in tcp mode, SNI in http mode.
        assert_eq!(atoms(&crit("hdr(host) -i a.com", true)), ["bad"]);
        assert_eq!(atoms(&crit("req.ssl_sni -i a.com", false)), ["bad"]);
    }

    #[test]
    fn path_and_sni_criteria() {
        let c = crit("path_beg /api/ /v2", false);
        assert_eq!(atoms(&c), ["path /api/", "path /v2"]);
        assert!(c.notes.is_empty());
        let c = crit("path /health", false);
        assert_eq!(atoms(&c), ["path /health"]);
        assert!(c.notes[0].contains("exact path"), "{:?}", c.notes);
        assert_eq!(
            atoms(&crit("path_beg //a", false)),
            ["bad"],
            "not in normal form"
        );
        assert_eq!(atoms(&crit("path_end .php", false)), ["bad"]);
        assert!(crit("path_beg -i /API", false).notes[0].contains("case-sensitively"));
        assert_eq!(
            atoms(&crit("req.ssl_sni -i db.example.com", true)),
            ["sni db.example.com"]
        );
        assert_eq!(
            atoms(&crit("req_ssl_sni -i db.example.com", true)),
            ["sni db.example.com"]
        );
        assert_eq!(
            atoms(&crit("req.ssl_sni -m end .example.com", true)),
            ["sni *.example.com"]
        );
        assert_eq!(atoms(&crit("req_ssl_hello_type 1", true)), ["hello"]);
    }
}
