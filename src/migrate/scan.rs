//! Reading a confd template without rendering it, for `tree.rs`: [`scan`] walks its actions
//! (`range`, assignments, `printf`, `gets`/`getvs`, the loop's variable, `base`), keeping the
//! template line for line with each action replaced by its text ([`SERVICE`] for the service,
//! nothing for control actions, `@TEMPLATE@` for anything else), so the templated backend's
//! settings are read by `haproxy.rs` and its rules by `rules.rs`, and records what each
//! `lsdir` loop holds ([`Scan`]).

use std::collections::{HashMap, HashSet};

use super::confd::{Confd, Seg, segments};
use super::haproxy::{Kind, Line, section_kind, words};
use super::{Source, Warn};

/// Stands for the service (the lsdir loop's variable) in the template's text: a valid host
/// label and path segment, so the acls that name it read as hosts and paths.
pub(super) const SERVICE: &str = "sy-service-placeholder";

/// What an action or variable holds.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    /// `lsdir "/dir"`.
    Lsdir(String),
    /// `printf "FMT" ARGS...` (the arguments as written).
    Printf(String, Vec<String>),
    /// `gets KEY` / `getvs KEY`.
    Gets(Box<Val>),
    /// `ls KEY`: the keys in a directory, one server each.
    Ls(Box<Val>),
    /// `lsdir`/`ls` of a computed key: one directory per server.
    Nested,
    Other,
}

/// The backend block inside an lsdir loop.
#[derive(Debug, Clone)]
pub(super) struct Block {
    /// Its name, the service written as [`SERVICE`].
    pub(super) name: String,
    pub(super) header: usize,
    pub(super) end: usize,
}

/// What the lsdir loops over one directory hold.
#[derive(Debug)]
pub(super) struct Found {
    /// The directory as written in the template, without a trailing `/`.
    pub(super) written: String,
    /// With the confd resource's prefix: the tree's `etcd_prefix`.
    pub(super) dir: String,
    pub(super) line: usize,
    pub(super) backend: Option<Block>,
    /// `servers_dir` from the `gets` loop (or why not), and that loop's line.
    pub(super) servers: Option<(Result<String, String>, usize)>,
    /// A loop over one directory per server (`lsdir` of a computed key), its line.
    pub(super) nested: Option<usize>,
    /// The literal backend (or listen) section the loop is in, when it is in one: all the
    /// services' servers in one backend, a recursive `etcd_prefix`.
    pub(super) in_backend: Option<String>,
    /// That backend's `server` line inside the loop.
    pub(super) server: Option<Line>,
    /// `acl` and `use_backend` lines in the loop, with their frontend.
    pub(super) rules: Vec<(String, Line)>,
}

/// What [`scan`] found in a template.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) found: Vec<Found>,
    /// The template line for line, each action replaced by its text.
    pub(super) flat: String,
    /// Lines that open, close or lie inside an lsdir loop (`confd.rs` leaves them alone).
    pub(super) lines: HashSet<usize>,
    /// Sections named outside any lsdir loop (no service has their name).
    pub(super) literal: HashSet<String>,
}

impl Scan {
    /// The tree directories found, with their confd prefix (for `confd.rs`'s keys check).
    pub(super) fn dirs(&self) -> Vec<String> {
        self.found.iter().map(|f| f.dir.clone()).collect()
    }
}

/// An action's words: quoted strings whole, `(`, `)` and `,` apart.
fn toks(action: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = action.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                let mut s = String::from(c);
                for n in chars.by_ref() {
                    s.push(n);
                    if n == c {
                        break;
                    }
                }
                out.push(s);
            }
            '(' | ')' | ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(t: &str) -> Option<&str> {
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| t.strip_prefix('`').and_then(|t| t.strip_suffix('`')))
}

/// Splits `$i, $v := EXPR` into the variables and the expression.
fn binding(t: &[String]) -> (Vec<&str>, &[String]) {
    match t.iter().position(|w| w == ":=" || w == "=") {
        Some(p) => (
            t[..p]
                .iter()
                .filter(|w| *w != ",")
                .map(String::as_str)
                .collect(),
            &t[p + 1..],
        ),
        None => (Vec::new(), t),
    }
}

fn value(expr: &[String], vars: &HashMap<String, Val>) -> Val {
    let first = expr.first().map(String::as_str).unwrap_or("");
    if first == "(" && expr.last().is_some_and(|l| l == ")") {
        return value(&expr[1..expr.len() - 1], vars);
    }
    match (first, expr.len()) {
        (t, 1) if unquote(t).is_some() => Val::Str(unquote(t).unwrap_or("").to_string()),
        (t, 1) if t.starts_with('$') => vars.get(t).cloned().unwrap_or(Val::Other),
        ("lsdir", _) => match value(&expr[1..], vars) {
            Val::Str(p) => Val::Lsdir(p),
            _ => Val::Nested,
        },
        ("ls", _) => Val::Ls(Box::new(value(&expr[1..], vars))),
        ("gets" | "getvs", _) => Val::Gets(Box::new(value(&expr[1..], vars))),
        ("printf", _) => match expr.get(1).and_then(|f| unquote(f)) {
            Some(fmt) => Val::Printf(fmt.to_string(), expr[2..].to_vec()),
            None => Val::Other,
        },
        _ => Val::Other,
    }
}

/// One open block of the template.
struct Frame {
    /// Index in `found` of an lsdir loop.
    lsdir: Option<usize>,
    /// The variables that hold the service (an lsdir loop's).
    service_vars: Vec<String>,
    /// `Some(true)`: `.` is the service in it; `Some(false)`: something else; `None`: as outside.
    dot: Option<bool>,
}

struct Walk<'a> {
    confd: &'a Confd,
    stack: Vec<Frame>,
    vars: HashMap<String, Val>,
    found: Vec<Found>,
}

impl Walk<'_> {
    fn lsdir(&self) -> Option<usize> {
        self.stack.iter().rev().find_map(|f| f.lsdir)
    }
    fn is_service(&self, t: &str) -> bool {
        if t == "." {
            return self.stack.iter().rev().find_map(|f| f.dot) == Some(true);
        }
        self.stack
            .iter()
            .any(|f| f.service_vars.iter().any(|v| v == t))
    }
    /// `$svc`, `.`, `base $svc`, `base .` (lsdir lists names, so `base` changes nothing).
    fn service_ref(&self, t: &[String]) -> bool {
        match t {
            [v] => self.is_service(v),
            [b, v] if b == "base" => self.is_service(v),
            _ => false,
        }
    }

    /// The loop for a directory (loops over one directory are merged).
    fn found_for(&mut self, written: &str, line: usize) -> usize {
        let written = written.trim_end_matches('/').to_string();
        if let Some(i) = self.found.iter().position(|f| f.written == written) {
            return i;
        }
        self.found.push(Found {
            dir: format!("{}{written}", self.confd.prefix),
            written,
            line,
            backend: None,
            servers: None,
            nested: None,
            in_backend: None,
            server: None,
            rules: Vec::new(),
        });
        self.found.len() - 1
    }

    /// `servers_dir` for an `ls` key inside the loop over `written`: the directory listed is
    /// `written/<service>[/DIR]`, its keys the servers.
    fn ls_servers_dir(&self, key: &Val, written: &str) -> Result<String, String> {
        match key {
            Val::Printf(fmt, args) if !fmt.ends_with('*') => {
                let pattern = format!("{}/*", fmt.trim_end_matches('/'));
                self.servers_dir(&Val::Printf(pattern, args.clone()), written)
            }
            _ => self.servers_dir(key, written),
        }
    }

    /// `servers_dir` for a `gets`/`getvs` key inside the loop over `written`.
    fn servers_dir(&self, key: &Val, written: &str) -> Result<String, String> {
        let Val::Printf(fmt, args) = key else {
            return Err(match key {
                Val::Str(k) => format!(
                    "the fixed key {k:?} inside the loop would give every service the same servers"
                ),
                _ => "a key the migration cannot read".to_string(),
            });
        };
        if fmt.matches('%').count() != 1 || !fmt.contains("%s") || args.len() != 1 {
            return Err(format!("printf {fmt:?}: one %s, the service, is expected"));
        }
        if !self.is_service(&args[0]) {
            return Err(format!(
                "printf {fmt:?} {}: not the loop's service",
                args[0]
            ));
        }
        let key = fmt.replace("%s", SERVICE);
        let rest = key
            .strip_prefix(&format!("{written}/{SERVICE}/"))
            .ok_or_else(|| format!("{fmt:?} is not below {written}/<service>/"))?;
        let dir = rest
            .strip_suffix('*')
            .ok_or_else(|| format!("{fmt:?}: a `gets` pattern ending in /* is expected"))?
            .trim_end_matches('/');
        if dir.contains('/') {
            return Err(format!(
                "{fmt:?}: servers_dir is one directory under the service, not {dir:?}"
            ));
        }
        Ok(dir.to_string())
    }

    /// One action: what it prints (the service, nothing, or `@TEMPLATE@`), after updating
    /// the block stack and the variables.
    fn action(&mut self, a: &str, no: usize, w: &mut Warn) -> &'static str {
        let t = toks(a);
        let first = t.first().map(String::as_str).unwrap_or("");
        match first {
            "range" => {
                let (bound, expr) = binding(&t[1..]);
                let elem = bound.last().map(|v| v.to_string());
                let mut frame = Frame {
                    lsdir: None,
                    service_vars: Vec::new(),
                    dot: Some(false),
                };
                match value(expr, &self.vars) {
                    Val::Lsdir(p) => {
                        if let Some(outer) = self.lsdir() {
                            w.at(no, format!("{{{{{a}}}}}"), format!("an lsdir loop inside the lsdir loop over {}; only the outer one is read", self.found[outer].written));
                        } else {
                            frame.lsdir = Some(self.found_for(&p, no));
                            frame.service_vars.extend(elem);
                            frame.dot = Some(true);
                        }
                    }
                    Val::Gets(key) => {
                        if let Some(i) = self.lsdir() {
                            let written = self.found[i].written.clone();
                            let dir = self.servers_dir(&key, &written);
                            let f = &mut self.found[i];
                            if f.servers.is_none() {
                                f.servers = Some((dir, no));
                            }
                        }
                    }
                    Val::Ls(key) => {
                        if let Some(i) = self.lsdir() {
                            let written = self.found[i].written.clone();
                            let dir = self.ls_servers_dir(&key, &written);
                            let f = &mut self.found[i];
                            if f.servers.is_none() {
                                f.servers = Some((dir, no));
                            }
                        }
                    }
                    Val::Nested => {
                        if let Some(i) = self.lsdir() {
                            self.found[i].nested.get_or_insert(no);
                        }
                    }
                    _ => {}
                }
                self.stack.push(frame);
                ""
            }
            "if" | "define" | "block" => {
                self.stack.push(Frame {
                    lsdir: None,
                    service_vars: Vec::new(),
                    dot: None,
                });
                ""
            }
            "with" => {
                self.stack.push(Frame {
                    lsdir: None,
                    service_vars: Vec::new(),
                    dot: Some(false),
                });
                ""
            }
            "end" => {
                self.stack.pop();
                ""
            }
            "else" | "" => "",
            _ if a.starts_with("/*") => "",
            _ => {
                let (bound, expr) = binding(&t);
                if !bound.is_empty() {
                    let v = value(expr, &self.vars);
                    for b in bound {
                        self.vars.insert(b.to_string(), v.clone());
                    }
                    ""
                } else if self.service_ref(&t) {
                    SERVICE
                } else {
                    "@TEMPLATE@"
                }
            }
        }
    }
}

/// Walks a confd template for lsdir loops. Warnings about loops it cannot read go to `w`.
pub(super) fn scan(src: &Source, confd: &Confd, w: &mut Warn) -> Scan {
    let mut walk = Walk {
        confd,
        stack: Vec::new(),
        vars: HashMap::new(),
        found: Vec::new(),
    };
    let mut scan = Scan::default();
    // The section the text is in: kind, name, and the lsdir loop its header was in.
    let mut section: Option<(Kind, String, Option<usize>)> = None;
    for (i, raw) in src.text.lines().enumerate() {
        let no = i + 1;
        let mut text = String::new();
        let mut touched = walk.lsdir().is_some();
        let known = walk.found.len();
        // The lsdir loop the line's first text is in.
        let mut at_text: Option<Option<usize>> = None;
        for seg in segments(raw) {
            match seg {
                Seg::Text(t) => {
                    if at_text.is_none() && !t.trim().is_empty() {
                        at_text = Some(walk.lsdir());
                    }
                    text.push_str(&t);
                }
                Seg::Action(a) => {
                    let printed = walk.action(&a, no, w);
                    if !printed.is_empty() && at_text.is_none() {
                        at_text = Some(walk.lsdir());
                    }
                    text.push_str(printed);
                    touched |= walk.lsdir().is_some();
                }
            }
        }
        touched |= walk.lsdir().is_some();
        if touched {
            scan.lines.insert(no);
        }
        // A loop that opens in a literal backend's body.
        if let Some((Kind::Backend | Kind::Listen, name, None)) = &section {
            for f in &mut walk.found[known..] {
                f.in_backend = Some(name.clone());
            }
        }
        scan.flat.push_str(&text);
        scan.flat.push('\n');
        let l = Line {
            no,
            words: words(&text),
        };
        let Some(first) = l.words.first() else {
            continue;
        };
        let in_loop = at_text.flatten();
        if let Some(kind) = section_kind(first) {
            let name = l.word(1).to_string();
            match in_loop {
                None => {
                    scan.literal.insert(name.clone());
                }
                Some(f) => {
                    if matches!(kind, Kind::Backend) && name.contains(SERVICE) {
                        let found = &mut walk.found[f];
                        if found.backend.is_none() {
                            found.backend = Some(Block {
                                name: name.clone(),
                                header: no,
                                end: no,
                            });
                        }
                    } else {
                        w.at(
                            no,
                            template_text(&l.text()),
                            "a section inside an lsdir loop: only a backend named after the service maps (to a [[service_tree]]); not migrated",
                        );
                    }
                }
            }
            section = Some((kind, name, in_loop));
            continue;
        }
        let Some((kind, name, header_loop)) = &section else {
            continue;
        };
        match (header_loop, in_loop) {
            // A literal backend's server line inside a loop.
            (None, Some(f))
                if first == "server"
                    && walk.found[f].in_backend.as_ref() == Some(name)
                    && walk.found[f].server.is_none() =>
            {
                walk.found[f].server = Some(l);
            }
            // The templated backend's body.
            (Some(f), Some(g)) if *f == g => {
                if let Some(b) = walk.found[*f].backend.as_mut().filter(|b| b.name == *name) {
                    b.end = no;
                }
            }
            // A frontend's rules inside a loop.
            (None, Some(f)) if matches!(kind, Kind::Frontend | Kind::Listen) => {
                if matches!(first.as_str(), "acl" | "use_backend") {
                    walk.found[f].rules.push((name.clone(), l));
                }
            }
            _ => {}
        }
    }
    scan.found = walk.found;
    scan
}

/// Template text for a warning or a route template: the service as `{service}`, another
/// action as `{{...}}`.
pub(super) fn template_text(s: &str) -> String {
    s.replace(SERVICE, "{service}")
        .replace("@TEMPLATE@", "{{...}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_tokenize_and_bind() {
        assert_eq!(
            toks(r#"range $i, $s := gets (printf "/a/%s/*" $svc)"#),
            [
                "range",
                "$i",
                ",",
                "$s",
                ":=",
                "gets",
                "(",
                "printf",
                "\"/a/%s/*\"",
                "$svc",
                ")"
            ]
        );
        let t = toks(r#"$x := lsdir "/services/""#);
        let (b, e) = binding(&t);
        assert_eq!(b, ["$x"]);
        assert!(matches!(value(e, &HashMap::new()), Val::Lsdir(p) if p == "/services/"));
    }
}
