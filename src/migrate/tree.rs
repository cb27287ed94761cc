//! confd templates that range over `lsdir`: one backend and one `use_backend` rule per
//! directory under a prefix (`{{range $svc := lsdir "/services"}} backend {{$svc}} ...
//! {{range gets (printf "/services/%s/backend/*" $svc)}} server ...{{end}}{{end}}`) become one
//! `[[service_tree]]`: its `etcd_prefix` the directory listed, `servers_dir` from the `gets`
//! key, `frontends` the frontends whose `use_backend` rules range over the same directory, the
//! route template from the acl in the loop (`{{$svc}}` is `{service}`), and a `template`
//! backend holding the templated backend block's settings.
//!
//! The template is read, not rendered: [`scan`] walks its actions (`range`, assignments,
//! `printf`, `gets`/`getvs`, the loop's variable, `base`), keeping the template line for line
//! with each action replaced by its text ([`SERVICE`] for the service, nothing for control
//! actions, `@TEMPLATE@` for anything else), so the templated backend's settings are read by
//! `haproxy.rs` and its rules by `rules.rs`. [`plan`] then checks what it found against the
//! rendered haproxy.cfg: the backends named like the templated one are the tree's services
//! (`write.rs` leaves them out, `mod.rs` drops the warnings about their lines).

use std::collections::{HashMap, HashSet};

use super::confd::{Confd, Seg, segments};
use super::haproxy::{self, Kind, Line, Proxy, section_kind, words};
use super::rules::{self, RouteOut};
use super::{Source, Warn, Warning};
use crate::config::DEFAULT_SERVERS_DIR;
use crate::route::HostMatch;

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
struct Block {
    /// Its name, the service written as [`SERVICE`].
    name: String,
    header: usize,
    end: usize,
}

/// What the lsdir loops over one directory hold.
#[derive(Debug)]
struct Found {
    /// The directory as written in the template, without a trailing `/`.
    written: String,
    /// With the confd resource's prefix: the tree's `etcd_prefix`.
    dir: String,
    line: usize,
    backend: Option<Block>,
    /// `servers_dir` from the `gets` loop (or why not), and that loop's line.
    servers: Option<(Result<String, String>, usize)>,
    /// A loop over one directory per server (`lsdir` of a computed key), its line.
    nested: Option<usize>,
    /// The literal backend (or listen) section the loop is in, when it is in one: all the
    /// services' servers in one backend, a recursive `etcd_prefix`.
    in_backend: Option<String>,
    /// That backend's `server` line inside the loop.
    server: Option<Line>,
    /// `acl` and `use_backend` lines in the loop, with their frontend.
    rules: Vec<(String, Line)>,
}

/// What [`scan`] found in a template.
#[derive(Debug, Default)]
pub(super) struct Scan {
    found: Vec<Found>,
    /// The template line for line, each action replaced by its text.
    flat: String,
    /// Lines that open, close or lie inside an lsdir loop (`confd.rs` leaves them alone).
    pub(super) lines: HashSet<usize>,
    /// Sections named outside any lsdir loop (no service has their name).
    literal: HashSet<String>,
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

/// A `[[service_tree]]` to write.
#[derive(Debug)]
pub(super) struct Tree {
    pub(super) etcd_prefix: String,
    pub(super) servers_dir: String,
    /// haproxy.cfg's frontends (`write.rs` lists the names it gave them).
    pub(super) frontends: Vec<String>,
    pub(super) host: Option<String>,
    pub(super) path_prefix: Option<String>,
    /// The templated backend block's settings (read from the template).
    pub(super) settings: Proxy,
    /// Rendered backend names: what comes before and after the service.
    affix: (String, String),
    /// Sections the template names literally (never a service).
    literal: HashSet<String>,
}

impl Tree {
    /// Whether haproxy.cfg's backend `name` was rendered by the tree's loop (is a service).
    pub(super) fn is_service(&self, name: &str) -> bool {
        let (pre, post) = &self.affix;
        !self.literal.contains(name)
            && name.len() > pre.len() + post.len()
            && name.starts_with(pre.as_str())
            && name.ends_with(post.as_str())
            && !name[pre.len()..name.len() - post.len()].contains('/')
    }
}

/// Template text for a warning or a route template: the service as `{service}`, another
/// action as `{{...}}`.
fn template_text(s: &str) -> String {
    s.replace(SERVICE, "{service}")
        .replace("@TEMPLATE@", "{{...}}")
}

/// Turns what [`scan`] found into trees, checked against haproxy.cfg's `proxies` and the
/// etcd prefixes of the template's other backends (`taken`). Warnings about the template go to
/// `w`; a loop that cannot be a tree is one warning, and its rendered backends stay ordinary
/// ones.
pub(super) fn plan(
    scan: &Scan,
    proxies: &[Proxy],
    taken: &[String],
    tname: &str,
    w: &mut Vec<Warning>,
) -> Vec<Tree> {
    let mut tw = Warn {
        file: tname,
        out: w,
    };
    let mut trees: Vec<Tree> = Vec::new();
    let mut parsed: Option<Vec<Proxy>> = None;
    let mut scratch: Vec<Warning> = Vec::new();
    for f in &scan.found {
        let loop_at = format!("lsdir {:?}", f.written);
        let Some(block) = &f.backend else {
            if f.in_backend.is_some() {
                // `recursive` maps it.
                continue;
            }
            tw.at(
                f.line,
                loop_at,
                "this lsdir loop renders no backend named after the service, so no [[service_tree]]; its rendered lines are migrated as they are",
            );
            continue;
        };
        let (pre, post) = match block.name.split_once(SERVICE) {
            Some((a, b)) if !b.contains(SERVICE) => (a.to_string(), b.to_string()),
            _ => {
                tw.at(
                    block.header,
                    template_text(&format!("backend {}", block.name)),
                    "the service appears more than once in the name; not migrated as a [[service_tree]]",
                );
                continue;
            }
        };
        let dir = f.dir.trim_end_matches('/').to_string();
        let clash = trees
            .iter()
            .map(|t| t.etcd_prefix.as_str())
            .chain(taken.iter().map(String::as_str))
            .find(|o| {
                let (a, b) = (format!("{o}/"), format!("{dir}/"));
                a.starts_with(&b) || b.starts_with(&a)
            });
        if !dir.starts_with('/') || dir.len() < 2 || clash.is_some() {
            let why = match clash {
                Some(o) => format!(
                    "the directory overlaps {o:?}, read by another tree or backend; not migrated as a [[service_tree]]"
                ),
                None => "a service tree needs a directory below the root; not migrated as a [[service_tree]]".to_string(),
            };
            tw.at(f.line, loop_at, why);
            continue;
        }

        // Frontends and the route template.
        let mut by_frontend: Vec<(String, Vec<Line>)> = Vec::new();
        for (fe, l) in &f.rules {
            match by_frontend.iter_mut().find(|(n, _)| n == fe) {
                Some((_, ls)) => ls.push(l.clone()),
                None => by_frontend.push((fe.clone(), vec![l.clone()])),
            }
        }
        let mut frontends = Vec::new();
        let mut route: Option<(Option<String>, Option<String>)> = None;
        for (fe, lines) in &by_frontend {
            let first = lines[0].no;
            let at = format!("frontend {fe}");
            match proxies
                .iter()
                .find(|p| p.name == *fe && matches!(p.kind, Kind::Frontend | Kind::Listen))
            {
                None => {
                    tw.at(first, at, "no such frontend in haproxy.cfg; its rules in the lsdir loop are not migrated");
                    continue;
                }
                Some(p) if p.c.mode == Some("tcp") => {
                    tw.at(first, at, "a tcp-mode frontend: service trees route by host and path; its rules in the lsdir loop are not migrated");
                    continue;
                }
                Some(_) => {}
            }
            // What rules.rs says about the loop's lines, with the service as {service}.
            let mut said = Vec::new();
            let routes = rules::template_routes(
                lines,
                &block.name,
                &mut Warn {
                    file: tname,
                    out: &mut said,
                },
            );
            tw.out.extend(said.into_iter().map(|x| Warning {
                directive: template_text(&x.directive),
                why: template_text(&x.why),
                ..x
            }));
            let mut picked = None;
            for r in &routes {
                match tree_route(r) {
                    Ok(t) if picked.is_none() => picked = Some(t),
                    Ok(_) => tw.at(
                        r.line,
                        template_text(&r.text),
                        format!(
                            "a service tree has one route per service in each frontend; {} is not migrated",
                            describe(r)
                        ),
                    ),
                    Err(why) => tw.at(r.line, template_text(&r.text), why),
                }
            }
            let Some(t) = picked else {
                if !routes.is_empty() || lines.iter().any(|l| l.word(0) == "use_backend") {
                    tw.at(
                        first,
                        at,
                        "no route template from its rules in the lsdir loop; not a frontend of the [[service_tree]]",
                    );
                }
                continue;
            };
            match &route {
                Some(r) if *r != t => tw.at(
                    first,
                    at,
                    "its route differs from the first frontend's; a service tree has one route template for all its frontends, the first is used",
                ),
                Some(_) => {}
                None => route = Some(t),
            }
            frontends.push(fe.clone());
        }
        let Some((host, path_prefix)) = route else {
            tw.at(
                f.line,
                loop_at,
                "no frontend routes to the services of this lsdir loop (a use_backend rule naming the loop's backend is expected); not migrated as a [[service_tree]]",
            );
            continue;
        };

        let servers_dir = match (&f.servers, f.nested) {
            (Some((Ok(d), _)), _) => d.clone(),
            (Some((Err(why), line)), _) => {
                tw.at(
                    *line,
                    "servers",
                    format!("{why}; the tree reads servers as {dir}/<service>/{DEFAULT_SERVERS_DIR}/<server> = \"host:port\""),
                );
                DEFAULT_SERVERS_DIR.to_string()
            }
            (None, nested) => {
                let why = match nested {
                    Some(_) => {
                        "servers are read from a directory per server (an lsdir or ls of a computed key, with keys such as ip and port below it)"
                    }
                    None => "no gets/getvs loop reads the servers",
                };
                tw.at(
                    nested.unwrap_or(block.header),
                    format!("backend {}", template_text(&block.name)),
                    format!("{why}; Switchyard reads one key per server whose value is \"host:port\": register them as {dir}/<service>/{DEFAULT_SERVERS_DIR}/<server>"),
                );
                DEFAULT_SERVERS_DIR.to_string()
            }
        };

        // The templated backend's settings: haproxy.rs reads the template's text once.
        let proxies_t = parsed.get_or_insert_with(|| {
            let mut sw = Warn {
                file: tname,
                out: &mut scratch,
            };
            haproxy::read(&scan.flat, &mut sw)
        });
        let Some(settings) = proxies_t
            .iter()
            .position(|p| p.name == block.name && p.kind == Kind::Backend)
            .map(|i| proxies_t.swap_remove(i))
        else {
            continue;
        };
        let body = block.header + 1..=block.end;
        tw.out.extend(
            scratch
                .iter()
                .filter(|x| body.contains(&x.line))
                .map(|x| Warning {
                    directive: template_text(&x.directive),
                    ..x.clone()
                }),
        );
        if !pre.is_empty() || !post.is_empty() {
            tw.at(
                block.header,
                format!("backend {}", template_text(&block.name)),
                format!(
                    "each service's backend is named after its directory under {dir} (api, not {pre}api{post}), in metrics and the admin API too"
                ),
            );
        }
        trees.push(Tree {
            etcd_prefix: dir,
            servers_dir,
            frontends,
            host,
            path_prefix,
            settings,
            affix: (pre, post),
            literal: scan.literal.clone(),
        });
    }
    trees
}

/// An lsdir loop inside one literal backend (all the services' servers in that backend): the
/// backend's `etcd_prefix`.
#[derive(Debug)]
pub(super) struct Recursive {
    pub(super) backend: String,
    /// The directory listed, with the confd prefix: every key below it, at any depth, is a
    /// server.
    pub(super) etcd_prefix: String,
    pub(super) line: usize,
    /// The server line inside the loop: the backend's server settings.
    pub(super) server: Option<Line>,
}

/// The lsdir loops inside a literal backend, as recursive `etcd_prefix`es. A loop that reads
/// something other than the keys below the directory is warned about (those keys would be read
/// as servers too, and skipped as invalid when their value is not an address).
pub(super) fn recursive(scan: &Scan, tname: &str, w: &mut Vec<Warning>) -> Vec<Recursive> {
    let mut tw = Warn {
        file: tname,
        out: w,
    };
    let mut out = Vec::new();
    for f in scan.found.iter().filter(|f| f.backend.is_none()) {
        let Some(backend) = &f.in_backend else {
            continue;
        };
        let dir = f.dir.trim_end_matches('/').to_string();
        let at = format!("lsdir {:?}", f.written);
        if !dir.starts_with('/') || dir.len() < 2 {
            tw.at(
                f.line,
                at,
                "an etcd_prefix needs a directory below the root; not migrated",
            );
            continue;
        }
        match (&f.servers, f.nested) {
            (Some((Ok(d), _)), _) if d.is_empty() => {}
            (Some((Ok(d), line)), _) => tw.at(
                *line,
                "servers",
                format!(
                    "backend {backend} watches every key below {dir} (etcd_prefix is recursive), not only those in {dir}/<dir>/{d}/: another key below {dir} is read as a server too (one whose value is not an address is skipped and counted as invalid)"
                ),
            ),
            (Some((Err(why), line)), _) => tw.at(
                *line,
                "servers",
                format!(
                    "{why}; backend {backend} watches every key below {dir} (etcd_prefix is recursive), each a server"
                ),
            ),
            (None, nested) => tw.at(
                nested.unwrap_or(f.line),
                at.clone(),
                format!(
                    "servers are read from a directory per server (keys such as ip and port below it); backend {backend} watches every key below {dir}, each a server whose value is \"host:port\""
                ),
            ),
        }
        out.push(Recursive {
            backend: backend.clone(),
            etcd_prefix: dir,
            line: f.line,
            server: f.server.clone(),
        });
    }
    out
}

/// A route as its host and path, for warnings.
fn describe(r: &RouteOut) -> String {
    let mut s = template_text(&format!("host {}", r.m.host));
    if r.m.path != "/" {
        s.push_str(&template_text(&format!(" path {}", r.m.path)));
    }
    s
}

/// A tree's route template (`host`, `path_prefix`) from a route of the loop, or why not.
fn tree_route(r: &RouteOut) -> Result<(Option<String>, Option<String>), String> {
    let host = match &r.m.host {
        HostMatch::Any => None,
        h => Some(template_text(&h.to_string())),
    };
    let path = (r.m.path != "/").then(|| template_text(&r.m.path));
    let has = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains("{service}"));
    if host.as_deref().is_some_and(|h| !h.contains("{service}")) && !has(&path) {
        return Err(format!(
            "{}: the host does not name the service; every service would get the same route",
            describe(r)
        ));
    }
    if host.is_some() && !has(&host) {
        return Err(format!(
            "{}: a service tree's host template must name the service",
            describe(r)
        ));
    }
    if host.is_none() && !has(&path) {
        return Err(format!(
            "{}: the route does not name the service; every service would get the same route",
            describe(r)
        ));
    }
    Ok((host, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tmpl: &str, prefix: &str) -> (Scan, Vec<Warning>) {
        let confd = Confd {
            prefix: prefix.to_string(),
            ..Confd::default()
        };
        let mut out = Vec::new();
        let mut w = Warn {
            file: "t.tmpl",
            out: &mut out,
        };
        let s = scan(
            &Source {
                name: "t.tmpl",
                text: tmpl,
            },
            &confd,
            &mut w,
        );
        (s, out)
    }

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

    #[test]
    fn the_common_loop_is_found() {
        let t = r#"frontend web
    bind :80
{{range $svc := lsdir "/services"}}
    acl host_{{$svc}} hdr(host) -i {{$svc}}.example.com
    use_backend {{$svc}} if host_{{$svc}}
{{end}}
{{range $svc := lsdir "/services"}}
backend {{$svc}}
    balance leastconn
    {{range gets (printf "/services/%s/backend/*" $svc)}}
    server {{base .Key}} {{.Value}} check
    {{end}}
{{end}}
"#;
        let (s, w) = run(t, "/prod");
        assert!(w.is_empty(), "{w:#?}");
        assert_eq!(s.found.len(), 1, "two loops over one directory are one");
        let f = &s.found[0];
        assert_eq!(f.dir, "/prod/services");
        assert_eq!(f.servers.as_ref().unwrap().0.as_deref(), Ok("backend"));
        assert_eq!(f.backend.as_ref().unwrap().name, SERVICE);
        assert_eq!(
            (
                f.backend.as_ref().unwrap().header,
                f.backend.as_ref().unwrap().end
            ),
            (8, 11)
        );
        assert_eq!(f.rules.len(), 2);
        assert_eq!(
            f.rules[0].1.words,
            [
                "acl",
                &format!("host_{SERVICE}"),
                "hdr(host)",
                "-i",
                &format!("{SERVICE}.example.com")
            ]
        );
        assert!(s.literal.contains("web"));
        assert!(s.lines.contains(&3) && s.lines.contains(&11) && !s.lines.contains(&2));
        assert!(s.flat.contains("server @TEMPLATE@ @TEMPLATE@ check"));
    }

    #[test]
    fn variables_dot_and_base_name_the_service() {
        let t = r#"{{$apps := lsdir "/apps/"}}
frontend f
{{range $app := $apps}}    use_backend be-{{ . }} if { path_beg /{{base $app}}/ }
{{end}}
{{range $apps}}
backend be-{{.}}
{{$d := printf "/apps/%s/*" .}}{{range getvs $d}}  server s {{.}}{{end}}
{{end}}"#;
        let (s, w) = run(t, "");
        assert!(w.is_empty(), "{w:#?}");
        let f = &s.found[0];
        assert_eq!(f.written, "/apps");
        assert_eq!(f.servers.as_ref().unwrap().0.as_deref(), Ok(""));
        assert_eq!(f.backend.as_ref().unwrap().name, format!("be-{SERVICE}"));
        assert_eq!(f.rules[0].1.word(1), format!("be-{SERVICE}"));
        assert_eq!(f.rules[0].1.word(5), format!("/{SERVICE}/"));
    }

    #[test]
    fn ls_of_each_service_is_its_servers_dir() {
        // `ls` of the service's directory: its keys are the servers.
        let t =
            r#"{{range $s := lsdir "/svc"}}{{range $k := ls (printf "/svc/%s" $s)}}{{end}}{{end}}"#;
        let (s, w) = run(t, "");
        assert!(w.is_empty(), "{w:#?}");
        assert_eq!(s.found[0].servers.as_ref().unwrap().0.as_deref(), Ok(""));
        let t = r#"{{range $s := lsdir "/svc"}}{{range ls (printf "/svc/%s/nodes/" $s)}}{{end}}{{end}}"#;
        let (s, _) = run(t, "");
        assert_eq!(
            s.found[0].servers.as_ref().unwrap().0.as_deref(),
            Ok("nodes")
        );
        assert_eq!(s.found[0].nested, None);
        // Inside one literal backend: the loop belongs to it, with its server line.
        let t = "backend app\n{{range $d := lsdir \"/app\"}}{{range $k := ls (printf \"/app/%s\" $d)}}\n  server {{$k}} {{getv (printf \"/app/%s/%s\" $d $k)}} check inter 2s\n{{end}}{{end}}\n";
        let (s, _) = run(t, "/p");
        let f = &s.found[0];
        assert_eq!(f.in_backend.as_deref(), Some("app"));
        assert!(f.backend.is_none());
        assert_eq!(f.server.as_ref().unwrap().word(3), "check");
        let mut w = Vec::new();
        let r = recursive(&s, "t.tmpl", &mut w);
        assert!(w.is_empty(), "{w:#?}");
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].backend.as_str(), r[0].etcd_prefix.as_str()),
            ("app", "/p/app")
        );
    }

    #[test]
    fn server_layouts_the_tree_cannot_read() {
        // A directory per server, with ip and port keys.
        let t = r#"{{range $d := lsdir "/services/web"}}
backend {{$d}}_cluster
{{$dd := printf "/services/web/%s" $d}}{{range $h := lsdir $dd}}
server {{base $h}} {{getv (printf "/services/web/%s/%s/ip" $d $h)}}:80
{{end}}{{end}}"#;
        let (s, _) = run(t, "");
        assert_eq!(s.found[0].nested, Some(3));
        assert!(s.found[0].servers.is_none());
        // A gets key two directories down, and a fixed key.
        let t =
            r#"{{range $d := lsdir "/s"}}{{range gets (printf "/s/%s/a/b/*" $d)}}{{end}}{{end}}"#;
        let (s, _) = run(t, "");
        assert!(s.found[0].servers.as_ref().unwrap().0.is_err());
        let t = r#"{{range $d := lsdir "/s"}}{{range gets "/s/x/*"}}{{end}}{{end}}"#;
        let (s, _) = run(t, "");
        assert!(
            s.found[0]
                .servers
                .as_ref()
                .unwrap()
                .0
                .as_ref()
                .unwrap_err()
                .contains("same servers")
        );
    }
}
