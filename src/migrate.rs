//! `switchyard migrate`: translates a confd + HAProxy setup into an equivalent `switchyard.toml`.
//! It reads the rendered `haproxy.cfg` (sections `global`, `defaults`, `frontend`, `backend`,
//! `listen`), and optionally the confd template resource (`keys`, `prefix`, `src`) and the confd
//! template itself, whose `{{range gets "/prefix/*"}}` / `{{range getvs ...}}` loop inside a
//! backend section turns that backend into an etcd-discovered one (`etcd_prefix`), with the loop's
//! `server` line options as its `[backend.check]`. Everything it cannot map becomes one
//! [`Warning`] naming the file, the line and the reason: nothing is dropped silently. The output
//! is validated with [`Config::from_toml`] before it is printed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{
    Config, DEFAULT_ADMIN_LISTEN, DEFAULT_BALANCE, DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTER,
    DEFAULT_CHECK_PATH, DEFAULT_CHECK_RISE, DEFAULT_ETCD_API, DEFAULT_ETCD_ENDPOINT, DEFAULT_MODE,
};

/// The default `--etcd` endpoint (confd's and etcd's default, as `[etcd] endpoints`).
pub const DEFAULT_ETCD: &str = DEFAULT_ETCD_ENDPOINT;
/// `[admin] listen` of the generated config: Switchyard's default, written out.
const ADMIN_LISTEN: &str = DEFAULT_ADMIN_LISTEN;

/// One input file: the name used in warnings and its text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// What `migrate` reads.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The rendered haproxy.cfg.
    pub haproxy: Source<'a>,
    /// The confd template resource (`/etc/confd/conf.d/haproxy.toml`).
    pub confd_toml: Option<Source<'a>>,
    /// The confd template (`/etc/confd/templates/haproxy.cfg.tmpl`).
    pub confd_template: Option<Source<'a>>,
    /// `[etcd] endpoints`, emitted only when a backend has an `etcd_prefix`.
    pub etcd_endpoints: Vec<String>,
}

/// Something that could not be mapped (or was mapped only approximately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub directive: String,
    pub why: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warning: {}:{}: {}: {}",
            self.file, self.line, self.directive, self.why
        )
    }
}

/// The generated config and the warnings about what it leaves out.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The `switchyard.toml` text (already validated by [`Config::from_toml`]).
    pub toml: String,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    #[error("the generated configuration is invalid: {0}")]
    Invalid(#[from] crate::config::ConfigError),
}

// ---------------------------------------------------------------------------------------------
// Command line.

/// The `migrate` subcommand's arguments, as parsed by the binary.
#[derive(Debug, Clone)]
pub struct Options {
    pub haproxy: PathBuf,
    pub confd_toml: Option<PathBuf>,
    pub confd_template: Option<PathBuf>,
    /// Comma-separated etcd endpoint URLs.
    pub etcd: String,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Runs `switchyard migrate`: the config on stdout, warnings on stderr. Exit 0 when a config was
/// produced (even with warnings), 1 on unreadable input, bad arguments or an invalid result.
pub fn main(opts: Options) -> ExitCode {
    match run_cli(&opts) {
        Ok(m) => {
            for w in &m.warnings {
                eprintln!("{w}");
            }
            print!("{}", m.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard migrate: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_cli(opts: &Options) -> Result<Migration, String> {
    let endpoints: Vec<String> = opts
        .etcd
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--etcd: needs at least one URL".to_string());
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!("--etcd: {e:?} must start with http:// or https://"));
        }
    }
    let haproxy = read(&opts.haproxy)?;
    let confd_toml = opts.confd_toml.as_deref().map(read).transpose()?;
    // Without --confd-template, look where confd would: <confdir>/templates/<src>.
    let template_path = opts.confd_template.clone().or_else(|| {
        let toml_path = opts.confd_toml.as_deref()?;
        let src = confd_template_src(confd_toml.as_deref()?)?;
        let p = Path::new(&src);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            toml_path.parent()?.parent()?.join("templates").join(p)
        };
        p.is_file().then_some(p)
    });
    let template = template_path.as_deref().map(read).transpose()?;
    let (hname, tname, cname) = (
        opts.haproxy.display().to_string(),
        template_path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        opts.confd_toml
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    let input = Input {
        haproxy: Source {
            name: &hname,
            text: &haproxy,
        },
        confd_toml: confd_toml
            .as_deref()
            .map(|text| Source { name: &cname, text }),
        confd_template: template
            .as_deref()
            .map(|text| Source { name: &tname, text }),
        etcd_endpoints: endpoints,
    };
    migrate(&input).map_err(|e| e.to_string())
}

/// The `[template] src` of a confd template resource, if it has one.
pub fn confd_template_src(text: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(text).ok()?;
    t.get("template")?
        .get("src")?
        .as_str()
        .map(ToString::to_string)
}

// ---------------------------------------------------------------------------------------------
// Tokenizing haproxy.cfg.

#[derive(Debug, Clone)]
struct Line {
    no: usize,
    words: Vec<String>,
}

impl Line {
    fn text(&self) -> String {
        self.words.join(" ")
    }
    fn word(&self, i: usize) -> &str {
        self.words.get(i).map(String::as_str).unwrap_or("")
    }
}

/// Splits one line into words: quotes group, `\` escapes, `#` starts a comment.
fn words(line: &str) -> Vec<String> {
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

fn tokenize(text: &str) -> Vec<Line> {
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
enum Kind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    Other,
}

const SECTION_WORDS: &[&str] = &[
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

fn section_kind(word: &str) -> Option<Kind> {
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
struct Section {
    kind: Kind,
    header: Line,
    body: Vec<Line>,
}

impl Section {
    fn name(&self) -> &str {
        self.header.word(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Warnings.

struct Warn<'a> {
    file: &'a str,
    out: &'a mut Vec<Warning>,
}

impl Warn<'_> {
    fn at(&mut self, line: usize, directive: impl Into<String>, why: impl Into<String>) {
        self.out.push(Warning {
            file: self.file.to_string(),
            line,
            directive: directive.into(),
            why: why.into(),
        });
    }
    fn line(&mut self, l: &Line, why: impl Into<String>) {
        self.at(l.no, l.text(), why);
    }
}

// ---------------------------------------------------------------------------------------------
// Values.

/// HAProxy time: a number with an optional unit (us, ms, s, m, h, d; default ms).
fn haproxy_time(s: &str) -> Option<Duration> {
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

/// A humantime string in the largest unit that divides the duration.
fn human(d: Duration) -> String {
    let us = d.as_micros();
    for (unit, size) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if us >= size && us.is_multiple_of(size) {
            return format!("{}{unit}", us / size);
        }
    }
    format!("{us}us")
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A bind address as Switchyard wants it, or why not.
fn bind_addr(raw: &str) -> Result<SocketAddr, String> {
    let mut a = raw;
    for p in ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"] {
        if let Some(rest) = a.strip_prefix(p) {
            a = rest;
        }
    }
    if a.starts_with('/') || a.contains('@') {
        return Err("only TCP addresses can be migrated".to_string());
    }
    if a.contains('$') {
        return Err("environment variables are not expanded; write the address".to_string());
    }
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| "no port (HAProxy binds to the client's port range)".to_string())?;
    if port.contains('-') {
        return Err("port ranges are not supported; one frontend per port".to_string());
    }
    let host = match host {
        "" | "*" | "0.0.0.0" => "0.0.0.0".to_string(),
        "::" | "[::]" => "[::]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("{host}:{port}")
        .parse()
        .map_err(|_| "not an ip:port address (host names are not allowed in bind)".to_string())
}

// ---------------------------------------------------------------------------------------------
// Server options (server, default-server and the confd template's server line).

#[derive(Debug, Clone, Default, PartialEq)]
struct CheckOpts {
    inter: Option<Duration>,
    fastinter: Option<Duration>,
    downinter: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct TlsOpts {
    ca: Option<String>,
    sni: Option<String>,
    crt: Option<String>,
    verify_none: bool,
}

/// Settings Switchyard has per backend, not per server.
#[derive(Debug, Clone, Default, PartialEq)]
struct ConnOpts {
    send_proxy: Option<&'static str>,
    tls: Option<TlsOpts>,
    h2: bool,
    slowstart: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
struct ServerOpts {
    check: bool,
    checks: CheckOpts,
    conn: ConnOpts,
    weight: Option<u32>,
    backup: bool,
    disabled: bool,
}

const SERVER_ARG_OPTS: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "cookie",
    "crl-file",
    "error-limit",
    "id",
    "init-addr",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "redir",
    "resolve-net",
    "resolve-prefer",
    "resolvers",
    "shard",
    "source",
    "ssl-max-ver",
    "ssl-min-ver",
    "track",
    "verifyhost",
    "ws",
];

/// Applies server options (`words` after name and address) to `o`, warning about the rest.
fn server_opts(words: &[String], o: &mut ServerOpts, line: usize, who: &str, w: &mut Warn) {
    let mut i = 0;
    while i < words.len() {
        let opt = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        let mut used = 1;
        let bad = |w: &mut Warn, used: usize, why: &str| {
            let d = words[i..(i + used).min(words.len())].join(" ");
            w.at(line, format!("{who} {d}"), why);
        };
        let time = |a: Option<&str>| a.and_then(haproxy_time).filter(|d| !d.is_zero());
        match opt {
            "check" => o.check = true,
            "no-check" => o.check = false,
            "inter" | "fastinter" | "downinter" => {
                used = 2;
                match time(arg) {
                    Some(d) => match opt {
                        "inter" => o.checks.inter = Some(d),
                        "fastinter" => o.checks.fastinter = Some(d),
                        _ => o.checks.downinter = Some(d),
                    },
                    None => bad(w, 2, "not a positive HAProxy time"),
                }
            }
            "rise" | "fall" => {
                used = 2;
                match arg.and_then(|a| a.parse::<u32>().ok()).filter(|n| *n > 0) {
                    Some(n) if opt == "rise" => o.checks.rise = Some(n),
                    Some(n) => o.checks.fall = Some(n),
                    None => bad(w, 2, "not a positive number"),
                }
            }
            "weight" => {
                used = 2;
                match arg.and_then(|a| a.parse::<u32>().ok()) {
                    Some(n) => o.weight = Some(n),
                    None => bad(w, 2, "not a number"),
                }
            }
            "backup" => o.backup = true,
            "disabled" => o.disabled = true,
            "enabled" => o.disabled = false,
            "send-proxy" => o.conn.send_proxy = Some("v1"),
            "send-proxy-v2" => o.conn.send_proxy = Some("v2"),
            "no-send-proxy" | "no-send-proxy-v2" => o.conn.send_proxy = None,
            "ssl" => {
                o.conn.tls.get_or_insert_with(TlsOpts::default);
            }
            "no-ssl" => o.conn.tls = None,
            "check-ssl" => {}
            "verify" => {
                used = 2;
                match arg {
                    Some("none") => {
                        o.conn.tls.get_or_insert_with(Default::default).verify_none = true
                    }
                    Some("required") => {
                        o.conn.tls.get_or_insert_with(Default::default).verify_none = false
                    }
                    _ => bad(w, 2, "expected `none` or `required`"),
                }
            }
            "ca-file" => {
                used = 2;
                match arg {
                    Some(p) => o.conn.tls.get_or_insert_with(Default::default).ca = Some(p.into()),
                    None => bad(w, 1, "needs a file"),
                }
            }
            "sni" => {
                used = 2;
                let lit = arg
                    .and_then(|a| a.strip_prefix("str("))
                    .and_then(|a| a.strip_suffix(')'));
                match lit {
                    Some(s) => o.conn.tls.get_or_insert_with(Default::default).sni = Some(s.into()),
                    None => bad(
                        w,
                        2,
                        "only a literal `sni str(NAME)` maps to [backend.tls] sni; Switchyard sends the server's host by default",
                    ),
                }
            }
            "crt" => {
                used = 2;
                match arg {
                    Some(p) => {
                        o.conn.tls.get_or_insert_with(Default::default).crt = Some(p.into());
                        bad(
                            w,
                            2,
                            "a crt file is a combined PEM; it is set as both [backend.tls] cert and key, but Switchyard wants separate cert and key files: split it and update `key`",
                        );
                    }
                    None => bad(w, 1, "needs a file"),
                }
            }
            "proto" => {
                used = 2;
                match arg {
                    Some("h2") => o.conn.h2 = true,
                    _ => bad(w, 2, "only `proto h2` maps (protocol = \"h2\")"),
                }
            }
            "slowstart" => {
                used = 2;
                match time(arg) {
                    Some(d) => o.conn.slowstart = Some(d),
                    None => bad(w, 2, "not a positive HAProxy time"),
                }
            }
            _ => {
                used = if SERVER_ARG_OPTS.contains(&opt) { 2 } else { 1 };
                let why = match opt {
                    "cookie" => "no cookie persistence (sticky sessions) in Switchyard",
                    "maxconn" | "maxqueue" | "minconn" => {
                        "no per-server connection limits or queues in Switchyard"
                    }
                    "port" | "addr" => {
                        "health checks go to the server's own address; no separate check port"
                    }
                    "observe" | "error-limit" | "on-error" => {
                        "passive checks are set per backend: [backend.passive] error_limit"
                    }
                    o if o.starts_with("agent") => "no agent checks in Switchyard",
                    "resolvers" | "init-addr" | "resolve-prefer" | "resolve-net" => {
                        "host names are resolved by the system resolver at connect time"
                    }
                    _ => "not supported by Switchyard",
                };
                bad(w, used, why);
            }
        }
        i += used;
    }
}

// ---------------------------------------------------------------------------------------------
// Proxies.

#[derive(Debug, Clone, Default)]
struct HttpChk {
    path: Option<String>,
    host: Option<String>,
}

/// Settings a `defaults` section passes on, and each proxy's own.
#[derive(Debug, Clone, Default)]
struct Common {
    mode: Option<&'static str>,
    balance: Option<&'static str>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    client_timeout: Option<Duration>,
    keepalive_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
    check_timeout: Option<Duration>,
    retries: Option<u32>,
    httpchk: Option<HttpChk>,
    expect_status: Option<Vec<u16>>,
    server_defaults: ServerOpts,
}

#[derive(Debug, Clone)]
struct Bind {
    line: usize,
    addr: SocketAddr,
    crt: Vec<String>,
    ssl: bool,
    alpn: Option<Vec<String>>,
    accept_proxy: bool,
}

#[derive(Debug, Clone)]
struct ServerLine {
    line: usize,
    name: String,
    addr: String,
    opts: ServerOpts,
}

#[derive(Debug)]
struct Proxy {
    kind: Kind,
    name: String,
    line: usize,
    c: Common,
    binds: Vec<Bind>,
    default_backend: Option<String>,
    use_backend: Option<String>,
    servers: Vec<ServerLine>,
    stats: bool,
}

/// Which side of a proxy a directive belongs to.
#[derive(PartialEq)]
enum Side {
    Front,
    Back,
    Both,
}

fn side_ok(kind: Kind, side: Side) -> bool {
    !matches!(
        (kind, side),
        (Kind::Frontend, Side::Back) | (Kind::Backend, Side::Front)
    )
}

const ADMIN_HINT: &str = "use Switchyard's admin server instead ([admin] listen): the stats page at /, /metrics and /api/v1/backends";
const LOG_HINT: &str = "Switchyard logs to stderr (level set by RUST_LOG) and exports Prometheus metrics; no syslog or access-log format";

fn time_arg(l: &Line, idx: usize, w: &mut Warn) -> Option<Duration> {
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

fn parse_status(s: &str) -> Option<Vec<u16>> {
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

/// Applies one directive of a defaults, frontend, backend or listen section.
fn directive(kind: Kind, p: &mut Proxy, l: &Line, w: &mut Warn) {
    let d = l.word(0);
    let a1 = l.word(1);
    let side = match d {
        "bind" | "default_backend" | "use_backend" | "acl" | "capture" | "monitor-uri" => {
            Side::Front
        }
        "server" | "balance" | "http-check" | "default-server" | "retries" | "fullconn"
        | "hash-type" | "cookie" | "http-reuse" => Side::Back,
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
        "use_backend" => {
            let why = if p.use_backend.is_none() && p.default_backend.is_none() {
                p.use_backend = Some(a1.to_string());
                "no ACL routing in Switchyard; a frontend has one backend. This frontend has no default_backend (yet), so this backend is used for all its traffic unless one follows"
            } else {
                "no ACL routing in Switchyard; a frontend has one backend (its default_backend). Give this traffic a frontend of its own"
            };
            w.line(l, why);
        }
        "acl" => w.line(l, "no ACLs in Switchyard"),
        "balance" => match a1 {
            "roundrobin" => p.c.balance = Some("roundrobin"),
            "leastconn" => p.c.balance = Some("leastconn"),
            "random" | "random(2)" => p.c.balance = Some("random2"),
            _ => w.line(
                l,
                "only roundrobin, leastconn and random (as random2) exist in Switchyard; roundrobin is used",
            ),
        },
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
        "timeout" => {
            let slot = match a1 {
                "connect" => &mut p.c.connect_timeout,
                "server" => &mut p.c.response_timeout,
                "client" => &mut p.c.client_timeout,
                "http-keep-alive" => &mut p.c.keepalive_timeout,
                "http-request" => &mut p.c.header_timeout,
                "check" => &mut p.c.check_timeout,
                "tunnel" | "client-fin" | "server-fin" => {
                    w.line(l, "no tunnel (websocket) or half-closed timeouts in Switchyard");
                    return;
                }
                "queue" => {
                    w.line(l, "Switchyard has no request queue");
                    return;
                }
                _ => {
                    w.line(l, "unknown timeout");
                    return;
                }
            };
            if let Some(t) = time_arg(l, 2, w) {
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
        "maxconn" => w.line(
            l,
            "no connection limit in Switchyard (header_timeout and max_header_size protect it)",
        ),
        "log" | "log-format" | "capture" | "log-tag" | "error-log-format" => {
            w.line(l, LOG_HINT)
        }
        "cookie" => w.line(l, "no cookie persistence (sticky sessions) in Switchyard"),
        "http-request" | "http-response" | "http-after-response" | "tcp-request"
        | "tcp-response" | "reqadd" | "rspadd" | "reqrep" | "rsprep" | "reqdel" | "rspdel"
        | "redirect" => w.line(
            l,
            "no request/response rules in Switchyard (it sets X-Forwarded-For/-Proto/-Host itself)",
        ),
        "errorfile" | "errorfiles" => w.line(l, "no custom error pages in Switchyard"),
        _ => w.line(l, "not supported by Switchyard"),
    }
}

fn bind(p: &mut Proxy, l: &Line, w: &mut Warn) {
    let mut crt = Vec::new();
    let mut ssl = false;
    let mut alpn = None;
    let mut accept_proxy = false;
    let opts = &l.words[2.min(l.words.len())..];
    let mut i = 0;
    while i < opts.len() {
        let o = opts[i].as_str();
        let arg = opts.get(i + 1).cloned();
        let mut used = 1;
        match o {
            "ssl" => ssl = true,
            "accept-proxy" => accept_proxy = true,
            "crt" => {
                used = 2;
                match arg {
                    Some(f) => {
                        w.at(
                            l.no,
                            format!("bind {} crt {f}", l.word(1)),
                            "a crt file is a combined PEM; it is set as both cert and key in [frontend.tls] certs, but Switchyard wants separate cert and key files: split it and update `key`",
                        );
                        crt.push(f);
                    }
                    None => w.at(l.no, format!("bind {} crt", l.word(1)), "needs a file"),
                }
            }
            "alpn" => {
                used = 2;
                alpn = arg.map(|a| a.split(',').map(ToString::to_string).collect());
            }
            _ => {
                const ARG: &[&str] = &[
                    "backlog",
                    "ca-file",
                    "ciphers",
                    "ciphersuites",
                    "crl-file",
                    "crt-list",
                    "curves",
                    "ecdhe",
                    "gid",
                    "group",
                    "id",
                    "interface",
                    "level",
                    "maxconn",
                    "mode",
                    "mss",
                    "name",
                    "namespace",
                    "nice",
                    "npn",
                    "process",
                    "proto",
                    "severity-output",
                    "sigalgs",
                    "client-sigalgs",
                    "ssl-max-ver",
                    "ssl-min-ver",
                    "tcp-ut",
                    "thread",
                    "uid",
                    "user",
                    "verify",
                ];
                if ARG.contains(&o) {
                    used = 2;
                }
                let d = opts[i..(i + used).min(opts.len())].join(" ");
                w.at(
                    l.no,
                    format!("bind {} {d}", l.word(1)),
                    "bind option not supported by Switchyard",
                );
            }
        }
        i += used;
    }
    if ssl && crt.is_empty() {
        w.line(
            l,
            "`ssl` without `crt`: no certificate to serve; bind not migrated",
        );
        return;
    }
    if !ssl && !crt.is_empty() {
        w.line(
            l,
            "`crt` without `ssl`: TLS is off in HAProxy too; the certificate is ignored",
        );
        crt.clear();
    }
    for raw in l.word(1).split(',') {
        match bind_addr(raw) {
            Ok(addr) => p.binds.push(Bind {
                line: l.no,
                addr,
                crt: crt.clone(),
                ssl,
                alpn: alpn.clone(),
                accept_proxy,
            }),
            Err(why) => w.at(
                l.no,
                format!("bind {raw}"),
                format!("{why}; bind not migrated"),
            ),
        }
    }
}

fn option(p: &mut Proxy, l: &Line, w: &mut Warn) {
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
        "httplog" | "tcplog" | "dontlognull" | "log-separate-errors" | "dontlog-normal"
        | "httpslog" | "log-health-checks" => w.line(l, LOG_HINT),
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

fn http_check(p: &mut Proxy, l: &Line, w: &mut Warn) {
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
// The confd side.

#[derive(Debug, Default)]
struct Confd {
    /// `[template] prefix` (prepended to keys, as confd does).
    prefix: String,
    keys: Vec<(String, usize)>,
    keys_line: usize,
}

fn toml_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
        .unwrap_or(1)
}

fn confd_resource(src: &Source, w: &mut Warn) -> Result<Confd, MigrateError> {
    let err = |message: String| MigrateError::Input {
        file: src.name.to_string(),
        message,
    };
    let t: toml::Table = toml::from_str(src.text).map_err(|e| err(e.to_string()))?;
    let tpl = t
        .get("template")
        .and_then(|v| v.as_table())
        .ok_or_else(|| err("no [template] table (not a confd template resource?)".into()))?;
    for k in t.keys().filter(|k| *k != "template") {
        w.at(
            toml_line(src.text, k),
            k.clone(),
            "not a confd template resource key; ignored",
        );
    }
    let mut c = Confd {
        keys_line: toml_line(src.text, "keys"),
        ..Confd::default()
    };
    for (k, v) in tpl {
        match k.as_str() {
            // Replaced by Switchyard itself: no file to write, no reload, `switchyard check`.
            "src" | "dest" | "reload_cmd" | "check_cmd" | "owner" | "mode" | "uid" | "gid" => {}
            "prefix" => c.prefix = v.as_str().unwrap_or("").trim_end_matches('/').to_string(),
            "keys" => {
                let keys = v
                    .as_array()
                    .ok_or_else(|| err("[template] keys must be an array".into()))?;
                for key in keys {
                    let key = key
                        .as_str()
                        .ok_or_else(|| err("[template] keys must be strings".into()))?;
                    c.keys.push((key.to_string(), c.keys_line));
                }
            }
            _ => w.at(
                toml_line(src.text, k),
                format!("[template] {k}"),
                "not supported by Switchyard; ignored",
            ),
        }
    }
    Ok(c)
}

/// What a confd template says about one backend section.
#[derive(Debug, Default)]
struct TemplateBackend {
    /// The etcd prefix of the range loop, and the line of the loop.
    prefix: Option<(String, usize)>,
    /// The server line inside the loop: its line and its words.
    server: Option<Line>,
    /// Names of literal server lines outside any loop (static servers).
    static_names: HashSet<String>,
}

/// One `{{ ... }}` action or a run of text.
enum Seg {
    Text(String),
    Action(String),
}

fn segments(line: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push(Seg::Text(rest[..start].to_string()));
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(Seg::Text(rest[start..].to_string()));
            return out;
        };
        let inner = after[..end]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push(Seg::Action(inner.to_string()));
        rest = &after[end + 2..];
    }
    out.push(Seg::Text(rest.to_string()));
    out
}

/// The quoted key after `gets`/`getvs` in a range action.
fn range_key(action: &str) -> Option<String> {
    let pos = action
        .find("getvs \"")
        .map(|p| p + 7)
        .or_else(|| action.find("gets \"").map(|p| p + 6))?;
    let rest = &action[pos..];
    Some(rest[..rest.find('"')?].to_string())
}

fn scan_template(
    src: &Source,
    confd: &Confd,
    confd_file: &str,
    w: &mut Warn,
) -> HashMap<String, TemplateBackend> {
    let mut out: HashMap<String, TemplateBackend> = HashMap::new();
    // Open blocks: Some(prefix) for a gets/getvs range.
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut section: Option<(Kind, String)> = None;
    for (i, raw) in src.text.lines().enumerate() {
        let no = i + 1;
        let mut text = String::new();
        let mut range_at_text: Option<Option<String>> = None;
        for seg in segments(raw) {
            match seg {
                Seg::Text(t) => {
                    if range_at_text.is_none() && !t.trim().is_empty() {
                        range_at_text = Some(stack.iter().rev().flatten().next().cloned());
                    }
                    text.push_str(&t);
                }
                Seg::Action(a) => {
                    let first = a.split_whitespace().next().unwrap_or("");
                    match first {
                        "range" => {
                            let key = range_key(&a);
                            let prefix = key.as_ref().map(|k| {
                                let k = k.trim_end_matches('*').trim_end_matches('/');
                                format!("{}{k}", confd.prefix)
                            });
                            match (&prefix, &section) {
                                (Some(p), Some((Kind::Backend | Kind::Listen, name))) => {
                                    let b = out.entry(name.clone()).or_default();
                                    if b.prefix.is_some() {
                                        w.at(no, format!("{{{{{a}}}}}"), "a second range loop in one backend: Switchyard watches one etcd_prefix per backend; only the first is used");
                                    } else {
                                        b.prefix = Some((p.clone(), no));
                                    }
                                    if !confd.keys.is_empty()
                                        && !confd.keys.iter().any(|(k, _)| {
                                            p.starts_with(&format!("{}{k}", confd.prefix))
                                        })
                                    {
                                        w.at(no, format!("{{{{{a}}}}}"), "this key is not below any of the confd resource's keys; used anyway");
                                    }
                                }
                                (Some(_), _) => w.at(
                                    no,
                                    format!("{{{{{a}}}}}"),
                                    "range loop outside a backend section; not migrated",
                                ),
                                (None, _) => w.at(
                                    no,
                                    format!("{{{{{a}}}}}"),
                                    "only `range gets \"/prefix/*\"` and `range getvs \"/prefix/*\"` loops map to etcd_prefix; not migrated",
                                ),
                            }
                            stack.push(prefix);
                        }
                        "if" | "with" | "block" | "define" => stack.push(None),
                        "end" => {
                            stack.pop();
                        }
                        "else" => {}
                        _ => {
                            if range_at_text.is_none() {
                                range_at_text = Some(stack.iter().rev().flatten().next().cloned());
                            }
                            text.push_str("@TEMPLATE@");
                        }
                    }
                }
            }
        }
        let l = Line {
            no,
            words: words(&text),
        };
        let Some(first) = l.words.first() else {
            continue;
        };
        if let Some(kind) = section_kind(first) {
            section = Some((kind, l.word(1).to_string()));
            continue;
        }
        if first != "server" {
            continue;
        }
        let Some((Kind::Backend | Kind::Listen, name)) = &section else {
            continue;
        };
        let b = out.entry(name.clone()).or_default();
        match range_at_text.flatten() {
            Some(_) if b.server.is_none() => b.server = Some(l),
            Some(_) => {}
            None => {
                b.static_names.insert(l.word(1).to_string());
            }
        }
    }
    for (key, line) in &confd.keys {
        let full = format!("{}{key}", confd.prefix);
        let used = out.values().any(|b| {
            b.prefix
                .as_ref()
                .is_some_and(|(p, _)| p.starts_with(&full) || full.starts_with(p.as_str()))
        });
        if !used {
            w.out.push(Warning {
                file: confd_file.to_string(),
                line: *line,
                directive: format!("keys {key:?}"),
                why: "no range loop over this key inside a backend of the template; not migrated"
                    .to_string(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Putting it together.

/// Translates the inputs into a validated `switchyard.toml` and the warnings about what it
/// could not map.
pub fn migrate(input: &Input) -> Result<Migration, MigrateError> {
    let mut warnings = Vec::new();
    let hfile = input.haproxy.name;

    // confd: resource, then template.
    let mut confd = Confd::default();
    if let Some(src) = &input.confd_toml {
        let mut w = Warn {
            file: src.name,
            out: &mut warnings,
        };
        confd = confd_resource(src, &mut w)?;
    }
    let mut template = HashMap::new();
    match (&input.confd_template, &input.confd_toml) {
        (Some(src), _) => {
            let mut w = Warn {
                file: src.name,
                out: &mut warnings,
            };
            let cname = input.confd_toml.map(|s| s.name).unwrap_or(src.name);
            template = scan_template(src, &confd, cname, &mut w);
        }
        (None, Some(src)) => warnings.push(Warning {
            file: src.name.to_string(),
            line: confd.keys_line,
            directive: "keys".to_string(),
            why: "without the template (--confd-template) it is unknown which backend these keys feed; the servers rendered into haproxy.cfg are kept as static servers".to_string(),
        }),
        (None, None) => {}
    }

    // haproxy.cfg: sections.
    let mut sections: Vec<Section> = Vec::new();
    let mut w = Warn {
        file: hfile,
        out: &mut warnings,
    };
    for l in tokenize(input.haproxy.text) {
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
    for s in &sections {
        match s.kind {
            Kind::Global => {
                for l in &s.body {
                    let why = match l.word(0) {
                        "daemon" | "pidfile" | "user" | "group" | "uid" | "gid" | "chroot"
                        | "master-worker" => {
                            "process management is left to the service manager (systemd, a container runtime)"
                        }
                        "log" | "log-tag" | "log-send-hostname" => LOG_HINT,
                        "stats" => ADMIN_HINT,
                        "maxconn" => "no global connection limit in Switchyard",
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
                let mut p = Proxy {
                    kind: Kind::Defaults,
                    name: String::new(),
                    line: s.header.no,
                    c: Common::default(),
                    binds: Vec::new(),
                    default_backend: None,
                    use_backend: None,
                    servers: Vec::new(),
                    stats: false,
                };
                for l in &s.body {
                    directive(Kind::Defaults, &mut p, l, &mut w);
                }
                defaults = p.c;
            }
            Kind::Frontend | Kind::Backend | Kind::Listen => {
                let mut p = Proxy {
                    kind: s.kind,
                    name: s.name().to_string(),
                    line: s.header.no,
                    c: defaults.clone(),
                    binds: Vec::new(),
                    default_backend: None,
                    use_backend: None,
                    servers: Vec::new(),
                    stats: false,
                };
                if p.name.is_empty() {
                    w.line(&s.header, "a section without a name; not migrated");
                    continue;
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
                for l in &s.body {
                    directive(s.kind, &mut p, l, &mut w);
                }
                proxies.push(p);
            }
        }
    }

    let mut out = String::new();
    out.push_str(&format!(
        "# Generated by `switchyard migrate` from {hfile}.\n# Review the warnings it printed.\n\n[admin]\nlisten = {}\n",
        q(ADMIN_LISTEN)
    ));

    // Backends first (frontends need to know which ones exist).
    let mut backend_text = String::new();
    let mut emitted: HashSet<String> = HashSet::new();
    let mut any_prefix = false;
    for p in proxies
        .iter()
        .filter(|p| matches!(p.kind, Kind::Backend | Kind::Listen))
    {
        if p.kind == Kind::Listen && p.servers.is_empty() && !template.contains_key(&p.name) {
            // A listen without servers is only a frontend (e.g. with default_backend).
            continue;
        }
        let tb = template.get(&p.name);
        let tname = input.confd_template.map(|s| s.name).unwrap_or("");
        if let Some(t) = backend(p, tb, tname, &mut backend_text, &mut w) {
            any_prefix |= t;
            emitted.insert(p.name.clone());
        }
    }
    if any_prefix {
        let eps: Vec<String> = input.etcd_endpoints.iter().map(|e| q(e)).collect();
        out.push_str(&format!(
            "\n[etcd]\nendpoints = [{}]\napi = {}\n",
            eps.join(", "),
            q(DEFAULT_ETCD_API.as_str())
        ));
    }

    let mut binds_seen: HashSet<SocketAddr> = HashSet::new();
    binds_seen.insert(ADMIN_LISTEN.parse().expect("valid admin address"));
    let mut fe_names: HashSet<String> = HashSet::new();
    for p in proxies
        .iter()
        .filter(|p| matches!(p.kind, Kind::Frontend | Kind::Listen))
    {
        if p.kind == Kind::Listen && p.binds.is_empty() {
            continue;
        }
        let target = p
            .default_backend
            .clone()
            .or_else(|| {
                (p.kind == Kind::Listen && emitted.contains(&p.name)).then(|| p.name.clone())
            })
            .or_else(|| p.use_backend.clone());
        let Some(target) = target else {
            w.at(
                p.line,
                format!("frontend {}", p.name),
                "has no default_backend; not migrated",
            );
            continue;
        };
        if !emitted.contains(&target) {
            w.at(
                p.line,
                format!("frontend {}", p.name),
                format!("its backend {target:?} was not migrated; frontend not migrated"),
            );
            continue;
        }
        if p.binds.is_empty() {
            w.at(
                p.line,
                format!("frontend {}", p.name),
                "no bind address that could be migrated; frontend not migrated",
            );
            continue;
        }
        for (i, b) in p.binds.iter().enumerate() {
            if !binds_seen.insert(b.addr) {
                w.at(
                    b.line,
                    format!("bind {}", b.addr),
                    "address already used by another listener (or the admin server); not migrated",
                );
                continue;
            }
            let mut name = if i == 0 {
                p.name.clone()
            } else {
                format!("{}-{}", p.name, b.addr.port())
            };
            while !fe_names.insert(name.clone()) {
                name.push('_');
            }
            out.push_str(&format!(
                "\n[[frontend]]\nname = {}\nbind = {}\nmode = {}\nbackend = {}\n",
                q(&name),
                q(&b.addr.to_string()),
                q(p.c.mode.unwrap_or(DEFAULT_MODE.as_str())),
                q(&target)
            ));
            if let Some(t) = p.c.header_timeout.filter(|_| p.c.mode != Some("tcp")) {
                out.push_str(&format!("header_timeout = {}\n", q(&human(t))));
            }
            if let Some(t) = p.c.keepalive_timeout.or(p.c.client_timeout) {
                out.push_str(&format!("idle_timeout = {}\n", q(&human(t))));
            }
            if b.accept_proxy {
                out.push_str("accept_proxy = true\n");
            }
            if b.ssl {
                let certs: Vec<String> = b
                    .crt
                    .iter()
                    .map(|c| format!("{{ cert = {}, key = {} }}", q(c), q(c)))
                    .collect();
                out.push_str(&format!("[frontend.tls]\ncerts = [{}]\n", certs.join(", ")));
                if let Some(a) = &b.alpn {
                    let a: Vec<String> = a.iter().map(|s| q(s)).collect();
                    out.push_str(&format!("alpn = [{}]\n", a.join(", ")));
                }
            } else if b.alpn.is_some() {
                w.at(b.line, "alpn", "ALPN without ssl has no effect; ignored");
            }
        }
    }
    out.push_str(&backend_text);

    Config::from_toml(&out)?;
    // In file order, then line order (backend-level warnings are found late).
    let order: Vec<String> = [Some(input.haproxy), input.confd_toml, input.confd_template]
        .into_iter()
        .flatten()
        .map(|s| s.name.to_string())
        .collect();
    warnings.sort_by_key(|w| (order.iter().position(|f| *f == w.file), w.line));
    Ok(Migration {
        toml: out,
        warnings,
    })
}

/// Renders one backend; `Some(has_prefix)` when it was emitted.
fn backend(
    p: &Proxy,
    tb: Option<&TemplateBackend>,
    tname: &str,
    out: &mut String,
    w: &mut Warn,
) -> Option<bool> {
    let prefix = tb.and_then(|t| t.prefix.as_ref());
    // Servers: those rendered from the etcd loop are discovered, the rest stay static.
    let mut statics: Vec<&ServerLine> = Vec::new();
    for s in &p.servers {
        let from_etcd = prefix.is_some() && !tb.is_some_and(|t| t.static_names.contains(&s.name));
        if from_etcd {
            continue;
        }
        if s.opts.disabled {
            w.at(
                s.line,
                format!("server {} disabled", s.name),
                "disabled server not migrated (add it to servers when it should take traffic)",
            );
            continue;
        }
        if s.opts.backup {
            w.at(
                s.line,
                format!("server {} backup", s.name),
                "Switchyard has no backup servers; not migrated (add it to servers to make it a regular server)",
            );
            continue;
        }
        if crate::value::parse_addr(&s.addr).is_err() {
            w.at(
                s.line,
                format!("server {} {}", s.name, s.addr),
                "not a host:port address Switchyard accepts (a port is required); not migrated",
            );
            continue;
        }
        statics.push(s);
    }
    // The server line that stands for the backend's settings: the template loop's, else the
    // first static one.
    let (reference, ref_file_line): (Option<ServerOpts>, Option<usize>) = match tb
        .and_then(|t| t.server.as_ref())
        .filter(|_| prefix.is_some())
    {
        Some(l) => {
            let mut o = p.c.server_defaults.clone();
            let who = format!("server {} (template)", l.word(1));
            let mut tw = Warn {
                file: tname,
                out: &mut *w.out,
            };
            server_opts(
                &l.words[3.min(l.words.len())..],
                &mut o,
                l.no,
                &who,
                &mut tw,
            );
            (Some(o), None)
        }
        None => (
            statics.first().map(|s| s.opts.clone()),
            statics.first().map(|s| s.line),
        ),
    };
    if prefix.is_none() && statics.is_empty() {
        w.at(
            p.line,
            format!("backend {}", p.name),
            "no servers that could be migrated (and no etcd range loop in a confd template); backend not migrated",
        );
        return None;
    }
    let reference = reference.unwrap_or_else(|| p.c.server_defaults.clone());
    // Per-server differences Switchyard cannot express.
    let weights: HashSet<u32> = statics.iter().map(|s| s.opts.weight.unwrap_or(1)).collect();
    for s in &statics {
        if Some(s.line) == ref_file_line && weights.len() <= 1 {
            continue;
        }
        if weights.len() > 1
            && let Some(n) = s.opts.weight
        {
            w.at(
                s.line,
                format!("server {} weight {n}", s.name),
                format!(
                    "static servers have no weight in Switchyard; register it in etcd as {{\"addr\":\"{}\",\"weight\":{n}}} to keep it",
                    s.addr
                ),
            );
        }
        if Some(s.line) == ref_file_line {
            continue;
        }
        if s.opts.check != reference.check || s.opts.checks != reference.checks {
            w.at(
                s.line,
                format!("server {} check settings", s.name),
                "Switchyard has one [backend.check] per backend; the first server's settings are used",
            );
        }
        if s.opts.conn != reference.conn {
            w.at(
                s.line,
                format!("server {} ssl/send-proxy/proto/slowstart", s.name),
                "Switchyard sets these per backend; the first server's settings are used",
            );
        }
    }
    if prefix.is_some() {
        if let (Some(n), Some(l)) = (reference.weight, tb.and_then(|t| t.server.as_ref())) {
            Warn { file: tname, out: &mut *w.out }.at(
                l.no,
                format!("server weight {n} (template)"),
                "weights of discovered servers come from the etcd value: write {\"addr\":\"host:port\",\"weight\":N}",
            );
        }
        if reference.backup
            && let Some(l) = tb.and_then(|t| t.server.as_ref())
        {
            Warn {
                file: tname,
                out: &mut *w.out,
            }
            .at(
                l.no,
                "server backup (template)",
                "Switchyard has no backup servers; discovered servers take traffic",
            );
        }
    }

    out.push_str(&format!("\n[[backend]]\nname = {}\n", q(&p.name)));
    if let Some((pf, _)) = prefix {
        out.push_str(&format!("etcd_prefix = {}\n", q(pf)));
    }
    let servers: Vec<String> = statics.iter().map(|s| q(&s.addr)).collect();
    out.push_str(&format!("servers = [{}]\n", servers.join(", ")));
    out.push_str(&format!(
        "balance = {}\n",
        q(p.c.balance.unwrap_or(DEFAULT_BALANCE.as_str()))
    ));
    if let Some(t) = p.c.connect_timeout {
        out.push_str(&format!("connect_timeout = {}\n", q(&human(t))));
    }
    if let Some(t) = p.c.response_timeout {
        out.push_str(&format!("response_timeout = {}\n", q(&human(t))));
    }
    if let Some(n) = p.c.retries {
        out.push_str(&format!("retries = {n}\n"));
    }
    if let Some(t) = reference.conn.slowstart {
        out.push_str(&format!("slowstart = {}\n", q(&human(t))));
    }
    if reference.conn.h2 {
        out.push_str("protocol = \"h2\"\n");
    }
    if let Some(v) = reference.conn.send_proxy {
        out.push_str(&format!("send_proxy = {}\n", q(v)));
    }
    out.push_str("[backend.check]\n");
    if !reference.check {
        out.push_str("type = \"none\"\n");
    } else {
        let c = &reference.checks;
        match &p.c.httpchk {
            Some(h) => {
                out.push_str("type = \"http\"\n");
                out.push_str(&format!(
                    "path = {}\n",
                    q(h.path.as_deref().unwrap_or(DEFAULT_CHECK_PATH))
                ));
                if let Some(host) = &h.host {
                    out.push_str(&format!("host = {}\n", q(host)));
                }
                if let Some(s) = &p.c.expect_status {
                    let s: Vec<String> = s.iter().map(ToString::to_string).collect();
                    out.push_str(&format!("expect_status = [{}]\n", s.join(", ")));
                }
            }
            None => out.push_str("type = \"tcp\"\n"),
        }
        out.push_str(&format!(
            "inter = {}\n",
            q(&human(c.inter.unwrap_or(DEFAULT_CHECK_INTER)))
        ));
        if let Some(t) = c.fastinter {
            out.push_str(&format!("fastinter = {}\n", q(&human(t))));
        }
        if let Some(t) = c.downinter {
            out.push_str(&format!("downinter = {}\n", q(&human(t))));
        }
        if let Some(t) = p.c.check_timeout {
            out.push_str(&format!("timeout = {}\n", q(&human(t))));
        }
        out.push_str(&format!(
            "rise = {}\nfall = {}\n",
            c.rise.unwrap_or(DEFAULT_CHECK_RISE),
            c.fall.unwrap_or(DEFAULT_CHECK_FALL)
        ));
    }
    if let Some(t) = &reference.conn.tls {
        out.push_str("[backend.tls]\n");
        if let Some(ca) = &t.ca {
            out.push_str(&format!("ca = {}\n", q(ca)));
        }
        if let Some(sni) = &t.sni {
            out.push_str(&format!("sni = {}\n", q(sni)));
        }
        if let Some(crt) = &t.crt {
            out.push_str(&format!("cert = {}\nkey = {}\n", q(crt), q(crt)));
        }
        if t.verify_none {
            out.push_str("verify = false\n");
        }
    }
    Some(prefix.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bind_addresses() {
        assert_eq!(bind_addr("*:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(bind_addr(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(bind_addr(":::443").unwrap().to_string(), "[::]:443");
        assert_eq!(
            bind_addr("ipv4@10.0.0.1:80").unwrap().to_string(),
            "10.0.0.1:80"
        );
        assert!(bind_addr("/var/run/x.sock").is_err());
        assert!(bind_addr(":8000-8010").is_err());
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

    #[test]
    fn template_segments_and_range_keys() {
        assert_eq!(
            range_key(r#"range gets "/testservice/backend/*""#).as_deref(),
            Some("/testservice/backend/*")
        );
        assert_eq!(
            range_key(r#"range $i, $v := getvs "/app/servers/*""#).as_deref(),
            Some("/app/servers/*")
        );
        assert!(range_key(r#"range lsdir "/services""#).is_none());
        assert_eq!(segments("a {{- .Key -}} b").len(), 3);
    }
}
