//! The haproxy.cfg reader: the tokenizer (HAProxy's quoting and escapes), sections, HAProxy
//! times, what the global section passes on (`maxconn`, `crt-base`, `ca-base`), and each proxy's
//! directives (`bind` lines are `bind.rs`'s), folded into [`Proxy`] values with what their
//! `defaults` section passed on. What cannot be mapped is one warning each. A frontend's `acl`,
//! `use_backend` and `tcp-request` lines are kept as they are for `rules.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use super::Warn;
use super::bind::bind;
use super::server::{ServerOpts, server_opts};

// ---------------------------------------------------------------------------------------------
// Tokenizing haproxy.cfg.

#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) no: usize,
    pub(super) words: Vec<String>,
}

impl Line {
    pub(super) fn text(&self) -> String {
        self.words.join(" ")
    }
    pub(super) fn word(&self, i: usize) -> &str {
        self.words.get(i).map(String::as_str).unwrap_or("")
    }
}

/// Splits one line into words: quotes group, `\` escapes, `#` starts a comment.
pub(super) fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                in_word = true;
                match chars.next() {
                    Some(n @ (' ' | '"' | '\'' | '#' | '\\')) => cur.push(n),
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => cur.push('\\'),
                }
            }
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

pub(super) fn tokenize(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .map(|(i, l)| Line {
            no: i + 1,
            words: words(l),
        })
        .filter(|l| !l.words.is_empty())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    Other,
}

pub(super) const SECTION_WORDS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "cache",
    "program",
    "http-errors",
    "ring",
    "fcgi-app",
    "crt-store",
    "traces",
];

pub(super) fn section_kind(word: &str) -> Option<Kind> {
    Some(match word {
        "global" => Kind::Global,
        "defaults" => Kind::Defaults,
        "frontend" => Kind::Frontend,
        "backend" => Kind::Backend,
        "listen" => Kind::Listen,
        w if SECTION_WORDS.contains(&w) => Kind::Other,
        _ => return None,
    })
}

#[derive(Debug)]
pub(super) struct Section {
    pub(super) kind: Kind,
    pub(super) header: Line,
    pub(super) body: Vec<Line>,
}

impl Section {
    fn name(&self) -> &str {
        self.header.word(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

/// HAProxy time: a number with an optional unit (us, ms, s, m, h, d; default ms).
pub(super) fn haproxy_time(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    // A number of minutes, hours or days too large for u64 seconds is not a time (it overflowed).
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
    Some(match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86400)?,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Proxies.

#[derive(Debug, Clone, Default)]
pub(super) struct HttpChk {
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
}

/// Settings a `defaults` section passes on, and each proxy's own.
#[derive(Debug, Clone, Default)]
pub(super) struct Common {
    pub(super) mode: Option<&'static str>,
    pub(super) balance: Option<&'static str>,
    /// With `balance = "hash"`: its `hash_key`.
    pub(super) hash_key: Option<String>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) response_timeout: Option<Duration>,
    pub(super) client_timeout: Option<Duration>,
    pub(super) keepalive_timeout: Option<Duration>,
    pub(super) header_timeout: Option<Duration>,
    pub(super) check_timeout: Option<Duration>,
    /// `timeout queue`: the backend's `queue_timeout`.
    pub(super) queue_timeout: Option<Duration>,
    pub(super) retries: Option<u32>,
    pub(super) httpchk: Option<HttpChk>,
    pub(super) expect_status: Option<Vec<u16>>,
    pub(super) server_defaults: ServerOpts,
    /// `maxconn` of a defaults, frontend or listen section, and its line.
    pub(super) maxconn: Option<(usize, usize)>,
    /// `option httplog` / `option tcplog` (or `httpslog`): the access log is on.
    pub(super) access_log: bool,
    /// `cookie NAME insert`: `[backend.sticky]`.
    pub(super) sticky: Option<super::sticky::StickyOpts>,
}

#[derive(Debug, Clone)]
pub(super) struct Bind {
    pub(super) line: usize,
    pub(super) addr: SocketAddr,
    pub(super) crt: Vec<String>,
    pub(super) ssl: bool,
    pub(super) alpn: Option<Vec<String>>,
    pub(super) accept_proxy: bool,
}

#[derive(Debug, Clone)]
pub(super) struct ServerLine {
    pub(super) line: usize,
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) opts: ServerOpts,
}

#[derive(Debug, Clone)]
pub(super) struct Proxy {
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) c: Common,
    pub(super) binds: Vec<Bind>,
    pub(super) default_backend: Option<String>,
    /// `acl`, `use_backend` and `tcp-request` lines of a frontend or listen section, in order.
    pub(super) rules: Vec<Line>,
    /// `http-request`/`http-response` lines of a frontend or listen section that map to its
    /// traffic policy (`policy.rs`), in order.
    pub(super) policy: Vec<Line>,
    pub(super) servers: Vec<ServerLine>,
    pub(super) stats: bool,
    /// The section's last line.
    pub(super) end: usize,
}

impl Proxy {
    fn new(kind: Kind, name: &str, header: &Line, c: Common) -> Proxy {
        Proxy {
            kind,
            name: name.to_string(),
            line: header.no,
            c,
            binds: Vec::new(),
            default_backend: None,
            rules: Vec::new(),
            policy: Vec::new(),
            servers: Vec::new(),
            stats: false,
            end: header.no,
        }
    }
}

/// Which side of a proxy a directive belongs to.
#[derive(PartialEq)]
pub(super) enum Side {
    Front,
    Back,
    Both,
}

pub(super) fn side_ok(kind: Kind, side: Side) -> bool {
    !matches!(
        (kind, side),
        (Kind::Frontend, Side::Back) | (Kind::Backend, Side::Front)
    )
}

pub(super) const ADMIN_HINT: &str = "use Switchyard's admin server instead ([admin] listen): the stats page at /, /metrics and /api/v1/backends";
pub(super) const LOG_HINT: &str = "no syslog in Switchyard: its own log goes to stderr (level set by RUST_LOG), the access log (`option httplog`/`tcplog`, as [log] access) to stdout or [log] access_file";
pub(super) const LOG_FORMAT_HINT: &str = "Switchyard's access log has fixed fields ([log] access = \"logfmt\" or \"json\": one line per request or tcp connection); not configurable";

pub(super) fn time_arg(l: &Line, idx: usize, w: &mut Warn) -> Option<Duration> {
    match haproxy_time(l.word(idx)) {
        Some(d) if !d.is_zero() => Some(d),
        Some(_) => {
            w.line(
                l,
                "a zero (infinite) timeout cannot be expressed; the default stays",
            );
            None
        }
        None => {
            w.line(l, "not a HAProxy time");
            None
        }
    }
}

pub(super) fn parse_status(s: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 100 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out).filter(|v| v.iter().all(|s| (100..=599).contains(s)))
}

/// Where `timeout NAME` goes, or why it cannot be migrated.
fn timeout_slot<'c>(
    c: &'c mut Common,
    name: &str,
) -> Result<&'c mut Option<Duration>, &'static str> {
    Ok(match name {
        "connect" => &mut c.connect_timeout,
        "server" => &mut c.response_timeout,
        "client" => &mut c.client_timeout,
        "http-keep-alive" => &mut c.keepalive_timeout,
        "http-request" => &mut c.header_timeout,
        "check" => &mut c.check_timeout,
        "tunnel" | "client-fin" | "server-fin" => {
            return Err("no tunnel (websocket) or half-closed timeouts in Switchyard");
        }
        "queue" => &mut c.queue_timeout,
        _ => return Err("unknown timeout"),
    })
}

/// `balance`: roundrobin, leastconn and random as they are; `source`, `uri` and `hdr(NAME)` as
/// `balance = "hash"` with that `hash_key`. In tcp mode only `source` has a key to hash.
fn balance(p: &mut Proxy, l: &Line, w: &mut Warn) {
    let a1 = l.word(1);
    let (balance, key) = match a1 {
        "roundrobin" => ("roundrobin", None),
        "leastconn" => ("leastconn", None),
        "random" | "random(2)" => ("random2", None),
        "source" => ("hash", Some("source".to_string())),
        "uri" => ("hash", Some("uri".to_string())),
        _ => match a1.strip_prefix("hdr(").and_then(|r| r.strip_suffix(')')) {
            Some(name) if crate::config::HashKey::parse(&format!("header:{name}")).is_ok() => {
                ("hash", Some(format!("header:{name}")))
            }
            _ => {
                w.line(
                    l,
                    "only roundrobin, leastconn, random (as random2), source, uri and hdr(NAME) (as hash) exist in Switchyard; roundrobin is used",
                );
                p.c.balance = Some("roundrobin");
                p.c.hash_key = None;
                return;
            }
        },
    };
    if key.as_deref().is_some_and(|k| k != "source") && p.c.mode == Some("tcp") {
        w.line(
            l,
            "tcp mode can hash only the client's address (balance source); roundrobin is used",
        );
        p.c.balance = Some("roundrobin");
        p.c.hash_key = None;
        return;
    }
    if l.words.len() > 2 {
        w.line(
            l,
            "its options are not migrated: Switchyard hashes the whole value (for uri: the path and query)",
        );
    }
    p.c.balance = Some(balance);
    p.c.hash_key = key;
}

/// Applies one directive of a defaults, frontend, backend or listen section.
pub(super) fn directive(kind: Kind, p: &mut Proxy, l: &Line, w: &mut Warn) {
    let d = l.word(0);
    let a1 = l.word(1);
    let side = match d {
        "bind" | "default_backend" | "use_backend" | "acl" | "capture" | "monitor-uri"
        | "maxconn" | "clitimeout" => Side::Front,
        "server" | "balance" | "http-check" | "default-server" | "retries" | "fullconn"
        | "hash-type" | "cookie" | "http-reuse" | "contimeout" | "srvtimeout" => Side::Back,
        "option" => match a1 {
            "httpchk" | "redispatch" | "tcp-check" | "ssl-hello-chk" | "mysql-check"
            | "pgsql-check" | "redis-check" | "smtpchk" | "ldap-check" | "allbackups"
            | "persist" => Side::Back,
            "forwardfor" | "http-server-close" | "httpclose" | "http-keep-alive" => Side::Both,
            _ => Side::Both,
        },
        "timeout" => match a1 {
            "connect" | "server" | "check" | "queue" => Side::Back,
            "client" | "http-request" | "http-keep-alive" => Side::Both,
            _ => Side::Both,
        },
        _ => Side::Both,
    };
    if !side_ok(kind, side) {
        let what = if kind == Kind::Frontend {
            "frontend"
        } else {
            "backend"
        };
        w.line(
            l,
            format!("not valid in a {what} section; ignored (HAProxy ignores it too)"),
        );
        return;
    }
    match d {
        "mode" => match a1 {
            "http" => p.c.mode = Some("http"),
            "tcp" => p.c.mode = Some("tcp"),
            _ => w.line(l, "only `mode http` and `mode tcp` exist in Switchyard"),
        },
        "bind" => bind(p, l, w),
        "default_backend" => p.default_backend = Some(a1.to_string()),
        "use_backend" | "acl" | "tcp-request" if kind == Kind::Defaults => w.line(
            l,
            "routing rules in a defaults section are not migrated; write them in the frontend",
        ),
        "use_backend" | "acl" => p.rules.push(l.clone()),
        "tcp-request"
            if matches!(kind, Kind::Frontend | Kind::Listen) && super::policy::maps(l) =>
        {
            p.policy.push(l.clone())
        }
        "tcp-request" if kind != Kind::Backend => p.rules.push(l.clone()),
        "http-request" | "http-response" | "redirect"
            if matches!(kind, Kind::Frontend | Kind::Listen) && super::policy::maps(l) =>
        {
            p.policy.push(l.clone())
        }
        "balance" => balance(p, l, w),
        "server" => {
            if l.words.len() < 3 {
                w.line(l, "needs a name and an address");
                return;
            }
            let mut opts = p.c.server_defaults.clone();
            let who = format!("server {}", l.word(1));
            server_opts(&l.words[3..], &mut opts, l.no, &who, w);
            p.servers.push(ServerLine {
                line: l.no,
                name: l.word(1).to_string(),
                addr: l.word(2).to_string(),
                opts,
            });
        }
        "default-server" => {
            let mut opts = std::mem::take(&mut p.c.server_defaults);
            server_opts(&l.words[1..], &mut opts, l.no, "default-server", w);
            p.c.server_defaults = opts;
        }
        "retries" => match a1.parse::<u32>() {
            Ok(n) => p.c.retries = Some(n),
            Err(_) => w.line(l, "not a number"),
        },
        "timeout" => match timeout_slot(&mut p.c, a1) {
            Ok(slot) => {
                if let Some(t) = time_arg(l, 2, w) {
                    *slot = Some(t);
                }
            }
            Err(why) => w.line(l, why),
        },
        // HAProxy 1.x's names for `timeout connect`, `timeout client` and `timeout server`.
        "contimeout" | "clitimeout" | "srvtimeout" => {
            let name = match d {
                "contimeout" => "connect",
                "clitimeout" => "client",
                _ => "server",
            };
            if let (Ok(slot), Some(t)) = (timeout_slot(&mut p.c, name), time_arg(l, 1, w)) {
                *slot = Some(t);
            }
        }
        "option" => option(p, l, w),
        "no" if a1 == "option" => {
            w.line(l, "`no option` is not migrated; check the result by hand")
        }
        "http-check" => http_check(p, l, w),
        "stats" => {
            p.stats = true;
            w.line(l, ADMIN_HINT);
        }
        "maxconn" => match a1.parse::<u32>().map(|n| n as usize) {
            Ok(n) if n > 0 => p.c.maxconn = Some((n, l.no)),
            _ => w.line(l, "not a positive number; Switchyard's default stays"),
        },
        // The proxy logs to the global section's targets: that line says what becomes of them.
        "log" if a1 == "global" => {}
        "log" | "log-tag" => w.line(l, LOG_HINT),
        "log-format" | "error-log-format" | "capture" => w.line(l, LOG_FORMAT_HINT),
        "cookie" => super::sticky::cookie(p, l, w),
        "http-request"
        | "http-response"
        | "http-after-response"
        | "tcp-request"
        | "tcp-response"
        | "reqadd"
        | "rspadd"
        | "reqrep"
        | "rsprep"
        | "reqdel"
        | "rspdel"
        | "redirect" => w.line(
            l,
            "no request/response rules in Switchyard (it sets X-Forwarded-For/-Proto/-Host itself)",
        ),
        "errorfile" | "errorfiles" => w.line(l, "no custom error pages in Switchyard"),
        _ => w.line(l, "not supported by Switchyard"),
    }
}

pub(super) fn option(p: &mut Proxy, l: &Line, w: &mut Warn) {
    match l.word(1) {
        // Switchyard always does these.
        "redispatch" | "forwardfor" | "http-keep-alive" | "tcp-check" | "splice-auto"
        | "splice-request" | "splice-response" => {}
        "httpchk" => {
            let rest: Vec<&str> = l.words[2..].iter().map(String::as_str).collect();
            let (method, path, version) = match rest.as_slice() {
                [] => (None, None, None),
                [path] => (None, Some(*path), None),
                [m, path] => (Some(*m), Some(*path), None),
                [m, path, v, ..] => (Some(*m), Some(*path), Some(*v)),
            };
            if let Some(m) = method.filter(|m| *m != "GET") {
                w.line(
                    l,
                    format!("Switchyard's HTTP checks use GET, not {m}; the path is kept"),
                );
            }
            let host = version
                .and_then(|v| v.split_once("Host:"))
                .map(|(_, h)| h.split("\\r").next().unwrap_or("").trim().to_string())
                .filter(|h| !h.is_empty());
            if version.is_some_and(|v| v.contains("\\r\\n") && host.is_none()) {
                w.line(l, "extra check request headers are not supported (only Host)");
            }
            if path.is_some_and(|p| !p.starts_with('/')) {
                w.line(l, "the check path must start with '/'; `/` is used");
            }
            p.c.httpchk = Some(HttpChk {
                path: path.filter(|p| p.starts_with('/')).map(ToString::to_string),
                host,
            });
        }
        "httplog" | "tcplog" | "httpslog" => p.c.access_log = true,
        "dontlognull" | "log-separate-errors" | "dontlog-normal" | "log-health-checks" => {
            w.line(l, LOG_FORMAT_HINT)
        }
        "http-server-close" | "httpclose" | "http-pretend-keepalive" | "nolinger" => w.line(
            l,
            "Switchyard manages connection reuse itself (pooled upstream connections, client keep-alive)",
        ),
        "ssl-hello-chk" | "mysql-check" | "pgsql-check" | "redis-check" | "smtpchk"
        | "ldap-check" | "ldap-chk" => w.line(
            l,
            "only tcp and http health checks exist in Switchyard; a tcp check is used",
        ),
        "abortonclose" => w.line(
            l,
            "Switchyard cancels the upstream request when the client goes away; nothing to set",
        ),
        _ => w.line(l, "not supported by Switchyard"),
    }
}

pub(super) fn http_check(p: &mut Proxy, l: &Line, w: &mut Warn) {
    match l.word(1) {
        "expect" => {
            let (neg, kw, arg) = if l.word(2) == "!" {
                (true, l.word(3), l.word(4))
            } else {
                (false, l.word(2), l.word(3))
            };
            match (neg, kw, parse_status(arg)) {
                (false, "status", Some(s)) => p.c.expect_status = Some(s),
                _ => w.line(
                    l,
                    "only `http-check expect status N[,N...]` maps (expect_status); body and regex matches are not supported",
                ),
            }
        }
        "send" => {
            let mut i = 2;
            while i < l.words.len() {
                let (k, v) = (l.word(i), l.word(i + 1));
                match k {
                    "meth" if v != "GET" => w.at(
                        l.no,
                        format!("http-check send meth {v}"),
                        "Switchyard's HTTP checks use GET",
                    ),
                    "meth" | "ver" => {}
                    "uri" => p.c.httpchk.get_or_insert_with(Default::default).path = Some(v.into()),
                    "hdr" if v.eq_ignore_ascii_case("host") => {
                        p.c.httpchk.get_or_insert_with(Default::default).host =
                            Some(l.word(i + 2).into());
                        i += 1;
                    }
                    "hdr" => {
                        w.at(
                            l.no,
                            format!("http-check send hdr {v}"),
                            "extra check request headers are not supported (only Host)",
                        );
                        i += 1;
                    }
                    _ => w.at(
                        l.no,
                        format!("http-check send {k} {v}"),
                        "not supported by Switchyard",
                    ),
                }
                i += 2;
            }
        }
        _ => w.line(l, "not supported by Switchyard"),
    }
}

// ---------------------------------------------------------------------------------------------
// Sections to proxies.

/// Reads haproxy.cfg into its proxies (frontends, backends, listens; each with what its
/// `defaults` passed on), warning about everything else.
pub(super) fn read(text: &str, w: &mut Warn) -> Vec<Proxy> {
    let mut sections: Vec<Section> = Vec::new();
    for l in tokenize(text) {
        if let Some(kind) = section_kind(l.word(0)) {
            sections.push(Section {
                kind,
                header: l,
                body: Vec::new(),
            });
        } else if let Some(s) = sections.last_mut() {
            s.body.push(l);
        } else {
            w.line(&l, "outside any section; ignored");
        }
    }

    let mut defaults = Common::default();
    let mut proxies: Vec<Proxy> = Vec::new();
    let mut global = Global::default();
    for s in &sections {
        match s.kind {
            Kind::Global => {
                for l in &s.body {
                    let why = match l.word(0) {
                        "maxconn" => match l.word(1).parse::<u32>().map(|n| n as usize) {
                            Ok(n) if n > 0 => {
                                global.maxconn = Some((n, l.no));
                                continue;
                            }
                            _ => "not a positive number; Switchyard's default stays",
                        },
                        "crt-base" if !l.word(1).is_empty() => {
                            global.crt_base = Some(l.word(1).to_string());
                            continue;
                        }
                        "ca-base" if !l.word(1).is_empty() => {
                            global.ca_base = Some(l.word(1).to_string());
                            continue;
                        }
                        "daemon" | "pidfile" | "user" | "group" | "uid" | "gid" | "chroot"
                        | "master-worker" => {
                            "process management is left to the service manager (systemd, a container runtime)"
                        }
                        "log" if matches!(l.word(1), "stdout" | "stderr") => {
                            "Switchyard writes the access log to stdout ([log] access) and its own log to stderr, in its own format"
                        }
                        "log" | "log-tag" | "log-send-hostname" => LOG_HINT,
                        "stats" => ADMIN_HINT,
                        "nbproc" | "nbthread" | "cpu-map" => {
                            "Switchyard uses one thread per CPU (tokio); not configurable"
                        }
                        w if w.starts_with("ssl-default") || w.starts_with("tune.ssl") => {
                            "TLS versions and ciphers are rustls's safe defaults; not configurable"
                        }
                        _ => "global setting not supported by Switchyard",
                    };
                    w.line(l, why);
                }
            }
            Kind::Other => w.at(
                s.header.no,
                s.header.text(),
                format!(
                    "section not supported by Switchyard; it and its {} line(s) are not migrated",
                    s.body.len()
                ),
            ),
            Kind::Defaults => {
                let mut p = Proxy::new(Kind::Defaults, "", &s.header, Common::default());
                for l in &s.body {
                    directive(Kind::Defaults, &mut p, l, w);
                }
                defaults = p.c;
            }
            Kind::Frontend | Kind::Backend | Kind::Listen => {
                let mut p = Proxy::new(s.kind, s.name(), &s.header, defaults.clone());
                p.end = s.body.last().map_or(s.header.no, |l| l.no);
                if p.name.is_empty() {
                    w.line(&s.header, "a section without a name; not migrated");
                    continue;
                }
                // HAProxy 1.x: `listen NAME ADDR:PORT` (and `frontend NAME ADDR:PORT`) binds
                // the address on the section line.
                let from = s.header.word(2) == "from";
                if from {
                    w.line(
                        &s.header,
                        "`from` (named defaults) is not followed: the defaults section above this one applies",
                    );
                }
                let on_header = s.header.words.len() > 2 && !from;
                if on_header && s.kind == Kind::Backend {
                    w.line(
                        &s.header,
                        "a backend has no address; the address is ignored",
                    );
                }
                if s.kind == Kind::Listen
                    && s.body.iter().any(|l| l.word(0) == "stats")
                    && !s.body.iter().any(|l| l.word(0) == "server")
                {
                    let last = s.body.last().map(|l| l.no).unwrap_or(s.header.no);
                    w.line(
                        &s.header,
                        format!(
                            "HAProxy's stats listener (lines {}-{last}) is not migrated; {ADMIN_HINT}",
                            s.header.no
                        ),
                    );
                    continue;
                }
                if on_header && s.kind != Kind::Backend {
                    let mut words = vec!["bind".to_string()];
                    words.extend(s.header.words[2..].iter().cloned());
                    bind(
                        &mut p,
                        &Line {
                            no: s.header.no,
                            words,
                        },
                        w,
                    );
                }
                for l in &s.body {
                    directive(s.kind, &mut p, l, w);
                }
                proxies.push(p);
            }
        }
    }
    for p in &mut proxies {
        super::policy::take_src_acls(p);
    }
    global.apply(&mut proxies, w);
    proxies
}

/// What the global section passes on to the proxies.
#[derive(Debug, Default)]
struct Global {
    /// `maxconn N` and its line.
    maxconn: Option<(usize, usize)>,
    /// `crt-base DIR`: where relative `crt` files are.
    crt_base: Option<String>,
    /// `ca-base DIR`: where relative `ca-file` files are.
    ca_base: Option<String>,
}

impl Global {
    /// Global `maxconn` is the limit of every frontend without its own (HAProxy's default for a
    /// frontend) or with a higher one; the bases are prefixed to relative file names.
    fn apply(&self, proxies: &mut [Proxy], w: &mut Warn) {
        let listeners =
            |p: &&mut Proxy| matches!(p.kind, Kind::Frontend | Kind::Listen) && !p.binds.is_empty();
        if let Some((n, line)) = self.maxconn {
            let mut inherit = 0;
            for p in proxies.iter_mut().filter(listeners) {
                // The global limit binds a frontend whose own is higher, too.
                if p.c.maxconn.is_none_or(|(own, _)| own > n) {
                    p.c.maxconn = Some((n, line));
                    inherit += 1;
                }
            }
            if inherit > 1 {
                w.at(
                    line,
                    format!("maxconn {n}"),
                    format!("HAProxy's limit is process-wide; Switchyard's is per frontend, so each of the {inherit} frontends it limits gets maxconn = {n}"),
                );
            }
        }
        let base = |b: &Option<String>, f: &mut String| {
            if let Some(b) = b
                && !f.starts_with('/')
            {
                *f = format!("{}/{f}", b.trim_end_matches('/'));
            }
        };
        for p in proxies.iter_mut() {
            for b in &mut p.binds {
                b.crt.iter_mut().for_each(|f| base(&self.crt_base, f));
            }
            let mut opts: Vec<&mut ServerOpts> =
                p.servers.iter_mut().map(|s| &mut s.opts).collect();
            opts.push(&mut p.c.server_defaults);
            for o in opts {
                if let Some(t) = o.conn.tls.as_mut() {
                    if let Some(f) = t.crt.as_mut() {
                        base(&self.crt_base, f);
                    }
                    if let Some(f) = t.ca.as_mut() {
                        base(&self.ca_base, f);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::write::human;

    #[test]
    fn haproxy_times_become_humantime() {
        for (h, want) in [
            ("5000", "5s"),
            ("500ms", "500ms"),
            ("2s", "2s"),
            ("90s", "90s"),
            ("1m", "1m"),
            ("2h", "2h"),
            ("1d", "1d"),
            ("1500", "1500ms"),
            ("10us", "10us"),
        ] {
            let d = haproxy_time(h).unwrap();
            assert_eq!(human(d), want, "{h}");
            assert_eq!(humantime::parse_duration(want).unwrap(), d, "{want}");
        }
        assert!(haproxy_time("5x").is_none());
        assert!(haproxy_time("s").is_none());
        // Regression (fuzz target `migrate`): the unit multiplication overflowed u64.
        assert!(haproxy_time("999999999999999999d").is_none());
        assert!(haproxy_time("307445734561825861m").is_none());
        assert_eq!(
            haproxy_time("213503982334601d"),
            Some(Duration::from_secs(213_503_982_334_601 * 86_400))
        );
    }

    #[test]
    fn words_handle_comments_quotes_and_escapes() {
        assert_eq!(
            words(r#"  option httpchk GET /h HTTP/1.1\r\nHost:\ www  # comment"#),
            ["option", "httpchk", "GET", "/h", r"HTTP/1.1\r\nHost: www"]
        );
        assert_eq!(
            words(r#"acl a hdr(host) -i "a b""#),
            ["acl", "a", "hdr(host)", "-i", "a b"]
        );
    }
}
