//! Validation: turns what serde read ([`super::file`]) into the typed [`Config`], filling in the
//! defaults of [`super::defaults`], one function per section. Each check fails with a
//! [`ConfigError::Invalid`] naming the key. Validation goes on past a failed section, backend or
//! frontend, so that `check` reports every problem at once ([`ConfigError::Several`]), in
//! file-contract order (global, admin, etcd, backends, frontends, binds, service trees, log).
//! Within a backend, a frontend or `[etcd]` every key's problem is reported too; within a
//! frontend's routes, `[global]`, `[admin]` or one service tree, the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::defaults::*;
use super::file::{
    FileAdmin, FileBackend, FileBackendTls, FileCheck, FileConfig, FileEtcd, FileFrontend,
    FileFrontendTls, FileGlobal, FilePassive,
};
use super::{
    Backend, BackendTls, Balance, CertPair, Check, Config, ConfigError, EtcdConfig, Frontend,
    FrontendTls, HashKey, LogConfig, Mode, Passive, invalid,
};

/// `[global] threads` above this is refused.
const MAX_THREADS: usize = 1024;
/// `[global] upgrade_socket` longer than this cannot be a Unix socket's address (`sun_path` is
/// 108 bytes with its terminating NUL).
const MAX_UNIX_PATH: usize = 107;
/// `[admin] token` shorter than this is refused.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// `[[frontend]] max_header_size` below this is refused.
const MIN_MAX_HEADER_SIZE: usize = 1024;
/// Statuses an `http` check may expect.
const HTTP_STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// The problems found so far; a check that fails is recorded and validation goes on.
#[derive(Default)]
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(super) fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    /// Records `e`; the problems of a [`ConfigError::Several`] are recorded one by one.
    pub(super) fn push(&mut self, e: ConfigError) {
        match e {
            ConfigError::Several(list) => self.0.extend(list),
            e => self.0.push(e),
        }
    }

    /// `key = v` must be above zero; when it is not, the problem is recorded and `v` returned
    /// anyway (the config is refused, so the value is never used).
    fn positive(&mut self, key: String, v: Duration) -> Duration {
        self.take(positive(&key, v));
        v
    }

    /// `key = v` must be a percentage; as [`Errors::positive`].
    fn percent(&mut self, key: String, v: u32) -> u32 {
        self.take(percent(&key, v));
        v
    }

    /// `v`, or every problem recorded.
    pub(super) fn finish<T>(self, v: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(ConfigError::from_list(self.0))
        }
    }
}

pub(super) fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();
    let global = errs.take(global(file.global));
    let admin = errs.take(admin(file.admin));
    let has_etcd = file.etcd.is_some();
    let etcd = file.etcd.map(|e| errs.take(etcd(e)));
    let templates: HashSet<String> = file
        .service_tree
        .iter()
        .filter_map(|t| t.template.clone())
        .collect();
    let backends = backends(&mut errs, file.backend, has_etcd, &templates);
    if let Some(Some(e)) = &etcd {
        errs.take(endpoints_for_prefixes(
            e,
            &backends,
            !file.service_tree.is_empty(),
        ));
    }
    let tree_frontends: HashSet<String> = file
        .service_tree
        .iter()
        .flat_map(|t| t.frontends.iter().cloned())
        .collect();
    if file.frontend.is_empty() {
        errs.push(invalid(
            "frontend",
            "no [[frontend]]: the configuration would listen on nothing",
        ));
    }
    let before = errs.0.len();
    let (frontends, mut bound) = frontends(&mut errs, file.frontend, &backends, &tree_frontends);
    if let Some((listen, _)) = &admin {
        bound.insert(0, ("admin.listen".to_string(), *listen));
    }
    binds(&mut errs, &bound);
    tcp_hash_keys(&mut errs, &frontends, &backends);
    for e in super::sticky::tcp_frontends(&frontends, &backends) {
        errs.push(e);
    }
    // A tree names frontends: after a frontend failed, its errors would only echo that one.
    let service_trees = if errs.0.len() == before {
        errs.take(super::routing::service_trees(
            file.service_tree,
            &backends,
            &frontends,
            has_etcd,
        ))
    } else {
        None
    };
    let etcd_cfg = etcd.as_ref().and_then(|e| e.as_ref());
    for e in super::acme::cross_checks(&frontends, etcd_cfg) {
        errs.push(e);
    }
    errs.take(log(&file.log));
    match (global, admin, etcd, service_trees) {
        (
            Some(Global {
                shutdown_grace,
                threads,
                work_stealing,
                upgrade_socket,
            }),
            Some((admin_listen, admin_token)),
            etcd,
            Some(trees),
        ) if errs.0.is_empty() => Ok(Config {
            shutdown_grace,
            threads,
            work_stealing,
            upgrade_socket,
            admin_listen,
            admin_token,
            path: None,
            log: file.log,
            etcd: etcd.flatten(),
            frontends,
            backends,
            service_trees: trees,
        }),
        _ => Err(ConfigError::from_list(errs.0)),
    }
}

fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("{value:?} is not an ip:port address")))
}

fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn percent(key: &str, v: u32) -> Result<u32, ConfigError> {
    if v > 100 {
        return Err(invalid(key, format!("{v} is not a percentage (0-100)")));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// [global], [admin], [log]

/// `[global]`, validated.
struct Global {
    shutdown_grace: Duration,
    threads: Option<usize>,
    work_stealing: bool,
    upgrade_socket: PathBuf,
}

fn global(g: FileGlobal) -> Result<Global, ConfigError> {
    let mut errs = Errors::default();
    let shutdown_grace = g.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    if g.threads.is_some_and(|t| t == 0 || t > MAX_THREADS) {
        errs.push(invalid(
            "global.threads",
            format!("must be between 1 and {MAX_THREADS}"),
        ));
    }
    let upgrade_socket = g
        .upgrade_socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_UPGRADE_SOCKET));
    if upgrade_socket.as_os_str().is_empty() {
        errs.push(invalid("global.upgrade_socket", "must not be empty"));
    }
    if upgrade_socket.as_os_str().len() > MAX_UNIX_PATH {
        errs.push(invalid(
            "global.upgrade_socket",
            format!("a Unix socket path has at most {MAX_UNIX_PATH} bytes"),
        ));
    }
    errs.finish(Global {
        shutdown_grace,
        threads: g.threads,
        work_stealing: g.work_stealing.unwrap_or(DEFAULT_WORK_STEALING),
        upgrade_socket,
    })
}

fn admin(a: FileAdmin) -> Result<(SocketAddr, Option<String>), ConfigError> {
    let listen = parse_listen(
        "admin.listen",
        a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    let token = match (a.token, a.token_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "admin.token_env",
                "give [admin] token or token_env, not both",
            ));
        }
        (token, None) => token,
        (None, Some(var)) => match std::env::var(&var) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                return Err(invalid(
                    "admin.token_env",
                    format!("the environment variable {var:?} is not set (or is empty)"),
                ));
            }
        },
    };
    if token
        .as_deref()
        .is_some_and(|t| t.len() < MIN_ADMIN_TOKEN_LEN)
    {
        return Err(invalid(
            "admin.token",
            format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        ));
    }
    // Off loopback, anyone who reaches the port could drain, maintain or reload.
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(invalid(
            "admin.token",
            format!(
                "is required when admin.listen ({listen}) is not a loopback address: set \
                 [admin] token (or token_env), which guards drain, maint, ready, reload and \
                 reading the config"
            ),
        ));
    }
    Ok((listen, token))
}

fn log(l: &LogConfig) -> Result<(), ConfigError> {
    if let Some(path) = &l.access_file {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(invalid(
                "log.access_file",
                format!("{}: its directory does not exist", path.display()),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// [etcd]

/// `endpoints` left out is a local member; `endpoints = []` is kept empty, and refused by
/// [`endpoints_for_prefixes`] when anything is discovered from etcd.
fn etcd(e: FileEtcd) -> Result<EtcdConfig, ConfigError> {
    let mut errs = Errors::default();
    let endpoints = e
        .endpoints
        .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINT.to_string()]);
    let mut clean = Vec::with_capacity(endpoints.len());
    for (i, ep) in endpoints.iter().enumerate() {
        let key = format!("etcd.endpoints[{i}]");
        match reqwest::Url::parse(ep) {
            Err(err) => errs.push(invalid(&key, format!("{ep:?} is not a URL: {err}"))),
            Ok(url) if url.scheme() != "http" && url.scheme() != "https" => {
                errs.push(invalid(&key, format!("{ep:?} must start with http://")));
            }
            Ok(_) => clean.push(ep.trim_end_matches('/').to_string()),
        }
    }
    let backoff_min = errs.positive(
        "etcd.backoff_min".to_string(),
        e.backoff_min.unwrap_or(DEFAULT_ETCD_BACKOFF_MIN),
    );
    let backoff_max = e.backoff_max.unwrap_or(DEFAULT_ETCD_BACKOFF_MAX);
    if backoff_max < backoff_min {
        errs.push(invalid(
            "etcd.backoff_max",
            "must not be smaller than etcd.backoff_min",
        ));
    }
    if e.cert.is_some() != e.key.is_some() {
        errs.push(invalid("etcd.cert", "cert and key go together"));
    }
    if e.username.is_some() != e.password.is_some() {
        errs.push(invalid(
            "etcd.username",
            "username and password go together",
        ));
    }
    let etcd = EtcdConfig {
        endpoints: clean,
        api: e.api.unwrap_or(DEFAULT_ETCD_API),
        poll_timeout: errs.positive(
            "etcd.poll_timeout".to_string(),
            e.poll_timeout.unwrap_or(DEFAULT_ETCD_POLL_TIMEOUT),
        ),
        request_timeout: errs.positive(
            "etcd.request_timeout".to_string(),
            e.request_timeout.unwrap_or(DEFAULT_ETCD_REQUEST_TIMEOUT),
        ),
        backoff_min,
        backoff_max,
        snapshot_file: e.snapshot_file,
        ca: e.ca,
        cert: e.cert,
        key: e.key,
        username: e.username,
        password: e.password,
    };
    errs.finish(etcd)
}

/// An `[etcd]` with `endpoints = []` cannot serve a backend's `etcd_prefix` or a service tree.
fn endpoints_for_prefixes(
    e: &EtcdConfig,
    backends: &[Backend],
    has_trees: bool,
) -> Result<(), ConfigError> {
    if !e.endpoints.is_empty() {
        return Ok(());
    }
    let user = match backends.iter().find(|b| b.etcd_prefix.is_some()) {
        Some(b) => format!("backend {:?} has an etcd_prefix", b.name),
        None if has_trees => "a [[service_tree]] reads etcd".to_string(),
        None => return Ok(()),
    };
    Err(invalid(
        "etcd.endpoints",
        format!("is empty, but {user}: list at least one etcd member"),
    ))
}

// ---------------------------------------------------------------------------------------------
// [[backend]], [backend.check], [backend.passive], [backend.tls]

/// The valid backends and, for each one refused, a stand-in with its name and the defaults,
/// so that frontends naming it are not refused too (the config as a whole is refused anyway).
fn backends(
    errs: &mut Errors,
    file: Vec<FileBackend>,
    has_etcd: bool,
    templates: &HashSet<String>,
) -> Vec<Backend> {
    let mut backends = Vec::with_capacity(file.len());
    let mut names = HashSet::new();
    for (i, b) in file.into_iter().enumerate() {
        if b.name.is_empty() {
            errs.push(invalid(format!("backend[{i}].name"), "must not be empty"));
            continue;
        }
        let key = format!("backend {:?}", b.name);
        if !names.insert(b.name.clone()) {
            errs.push(invalid(format!("{key}.name"), "duplicate backend name"));
            continue;
        }
        let name = b.name.clone();
        let template = templates.contains(&b.name);
        if let Some(ok) = errs.take(backend(&key, b, has_etcd, template)) {
            backends.push(ok);
        } else if let Ok(stand_in) = default_backend(&key) {
            backends.push(Backend { name, ..stand_in });
        }
    }
    backends
}

/// One `[[backend]]`; `key` is how errors name it (`backend "NAME"`).
/// The settings of a `[[backend]]` that sets none: what a service tree without a `template`
/// gives each service.
pub(super) fn default_backend(key: &str) -> Result<Backend, ConfigError> {
    let b = FileBackend {
        name: String::new(),
        ..FileBackend::default()
    };
    backend(key, b, true, true)
}

/// A service tree's `template` has neither servers nor `etcd_prefix`: each service fills them.
/// Every problem of the backend is reported, not only the first.
fn backend(
    key: &str,
    b: FileBackend,
    has_etcd: bool,
    template: bool,
) -> Result<Backend, ConfigError> {
    let mut e = Errors::default();
    if let Some(p) = &b.etcd_prefix {
        if !p.starts_with('/') {
            e.push(invalid(
                format!("{key}.etcd_prefix"),
                format!("{p:?} must start with '/'"),
            ));
        }
        if !has_etcd {
            e.push(invalid(
                format!("{key}.etcd_prefix"),
                "needs an [etcd] section with endpoints",
            ));
        }
    }
    if template && (b.etcd_prefix.is_some() || !b.servers.is_empty()) {
        e.push(invalid(
            key,
            "is a [[service_tree]] template: it takes no etcd_prefix and no servers (each service brings its own)",
        ));
    }
    if !template && b.etcd_prefix.is_none() && b.servers.is_empty() {
        e.push(invalid(
            key,
            "needs etcd_prefix, servers, or both (it has neither)",
        ));
    }
    for (j, s) in b.servers.iter().enumerate() {
        if let Err(err) = crate::value::parse_addr(s) {
            e.push(invalid(format!("{key}.servers[{j}]"), err.to_string()));
        }
    }
    let check = match b.check {
        None => Check::default(),
        Some(c) => e.take(check(key, c)).unwrap_or_default(),
    };
    let passive = match b.passive {
        None => Passive::default(),
        Some(p) => e.take(passive(key, p)).unwrap_or_default(),
    };
    if let Some(d) = b.slowstart {
        e.positive(format!("{key}.slowstart"), d);
    }
    let tls = b.tls.and_then(|t| e.take(backend_tls(key, t)));
    let sticky = b.sticky.and_then(|s| e.take(super::sticky::sticky(key, s)));
    let balance = b.balance.unwrap_or(DEFAULT_BALANCE);
    let hash_key = match (&b.hash_key, balance) {
        (Some(k), Balance::Hash) => HashKey::parse(k)
            .map_err(|m| e.push(invalid(format!("{key}.hash_key"), m)))
            .ok(),
        (None, Balance::Hash) => {
            e.push(invalid(
                format!("{key}.hash_key"),
                "is required with balance = \"hash\": \"source\", \"uri\", \"header:NAME\" or \"cookie:NAME\"",
            ));
            None
        }
        (Some(_), other) => {
            e.push(invalid(
                format!("{key}.hash_key"),
                format!(
                    "only applies to balance = \"hash\" (this backend balances {:?})",
                    other.as_str()
                ),
            ));
            None
        }
        (None, _) => None,
    };
    let backend = Backend {
        protocol: b.protocol.unwrap_or(DEFAULT_PROTOCOL),
        send_proxy: b.send_proxy.unwrap_or(DEFAULT_SEND_PROXY),
        tls,
        passive,
        slowstart: b.slowstart,
        panic_threshold: e.percent(
            format!("{key}.panic_threshold"),
            b.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD),
        ),
        retry_budget_percent: e.percent(
            format!("{key}.retry_budget_percent"),
            b.retry_budget_percent
                .unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT),
        ),
        retry_budget_min: b.retry_budget_min.unwrap_or(DEFAULT_RETRY_BUDGET_MIN),
        connect_timeout: e.positive(
            format!("{key}.connect_timeout"),
            b.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        ),
        response_timeout: e.positive(
            format!("{key}.response_timeout"),
            b.response_timeout.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
        ),
        retries: b.retries.unwrap_or(DEFAULT_RETRIES),
        drain_timeout: b.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        pool_idle_timeout: e.positive(
            format!("{key}.pool_idle_timeout"),
            b.pool_idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
        ),
        max_conns_per_server: b
            .max_conns_per_server
            .unwrap_or(DEFAULT_MAX_CONNS_PER_SERVER),
        queue_timeout: b
            .queue_timeout
            .map(|d| e.positive(format!("{key}.queue_timeout"), d)),
        name: b.name,
        etcd_prefix: b.etcd_prefix.map(|p| p.trim_end_matches('/').to_string()),
        servers: b.servers,
        balance,
        hash_key,
        check,
        sticky,
    };
    e.finish(backend)
}

/// A tcp-mode frontend sees no request: a backend it reaches can hash only the client's
/// address (`hash_key = "source"`).
fn tcp_hash_keys(errs: &mut Errors, frontends: &[Frontend], backends: &[Backend]) {
    for f in frontends.iter().filter(|f| f.mode == Mode::Tcp) {
        let used = f.backend.iter().chain(f.routes.iter().map(|r| &r.backend));
        for name in used {
            let Some(b) = backends.iter().find(|b| &b.name == name) else {
                continue;
            };
            if let Some(k) = b.hash_key.as_ref().filter(|k| **k != HashKey::Source) {
                errs.push(invalid(
                    format!("backend {:?}.hash_key", b.name),
                    format!(
                        "hash_key = \"{k}\" needs a request, but tcp-mode frontend {:?} uses this backend; tcp mode hashes only \"source\"",
                        f.name
                    ),
                ));
            }
        }
    }
}

/// `[backend.check]`; `fastinter` and `downinter` default to the backend's `inter`. Every
/// problem is reported.
fn check(key: &str, c: FileCheck) -> Result<Check, ConfigError> {
    let mut e = Errors::default();
    let inter = e.positive(
        format!("{key}.check.inter"),
        c.inter.unwrap_or(DEFAULT_CHECK_INTER),
    );
    let check = Check {
        kind: c.kind.unwrap_or(DEFAULT_CHECK_TYPE),
        path: c.path.unwrap_or_else(|| DEFAULT_CHECK_PATH.to_string()),
        inter,
        // Left out, they are `inter`, whose problem is reported once, under its own key.
        fastinter: c
            .fastinter
            .map_or(inter, |v| e.positive(format!("{key}.check.fastinter"), v)),
        downinter: c
            .downinter
            .map_or(inter, |v| e.positive(format!("{key}.check.downinter"), v)),
        timeout: e.positive(
            format!("{key}.check.timeout"),
            c.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT),
        ),
        rise: c.rise.unwrap_or(DEFAULT_CHECK_RISE),
        fall: c.fall.unwrap_or(DEFAULT_CHECK_FALL),
        expect_status: c.expect_status.unwrap_or_default(),
        host: c.host,
    };
    if let Some(bad) = check
        .expect_status
        .iter()
        .find(|s| !HTTP_STATUSES.contains(*s))
    {
        e.push(invalid(
            format!("{key}.check.expect_status"),
            format!("{bad} is not an HTTP status"),
        ));
    }
    if check
        .host
        .as_deref()
        .is_some_and(|h| h.is_empty() || http::HeaderValue::from_str(h).is_err())
    {
        e.push(invalid(
            format!("{key}.check.host"),
            "not a valid Host header",
        ));
    }
    if check.rise == 0 {
        e.push(invalid(format!("{key}.check.rise"), "must be at least 1"));
    }
    if check.fall == 0 {
        e.push(invalid(format!("{key}.check.fall"), "must be at least 1"));
    }
    if !check.path.starts_with('/') {
        e.push(invalid(
            format!("{key}.check.path"),
            format!("{:?} must start with '/'", check.path),
        ));
    }
    e.finish(check)
}

fn passive(key: &str, p: FilePassive) -> Result<Passive, ConfigError> {
    Ok(Passive {
        error_limit: p.error_limit.unwrap_or(DEFAULT_PASSIVE_ERROR_LIMIT),
        consecutive_5xx: p.consecutive_5xx.unwrap_or(DEFAULT_PASSIVE_CONSECUTIVE_5XX),
        max_ejected_percent: percent(
            &format!("{key}.passive.max_ejected_percent"),
            p.max_ejected_percent
                .unwrap_or(DEFAULT_PASSIVE_MAX_EJECTED_PERCENT),
        )?,
    })
}

fn backend_tls(key: &str, t: FileBackendTls) -> Result<BackendTls, ConfigError> {
    if t.cert.is_some() != t.key.is_some() {
        return Err(invalid(
            format!("{key}.tls.cert"),
            "cert and key go together",
        ));
    }
    Ok(BackendTls {
        ca: t.ca,
        sni: t.sni,
        client: t.cert.zip(t.key).map(|(cert, key)| CertPair { cert, key }),
        verify: t.verify.unwrap_or(DEFAULT_BACKEND_TLS_VERIFY),
    })
}

// ---------------------------------------------------------------------------------------------
// [[frontend]], [frontend.tls]

/// The valid frontends, and every bind address read (`(key, address)`), for [`binds`].
fn frontends(
    errs: &mut Errors,
    file: Vec<FileFrontend>,
    backends: &[Backend],
    tree_frontends: &HashSet<String>,
) -> (Vec<Frontend>, Vec<(String, SocketAddr)>) {
    let mut frontends = Vec::with_capacity(file.len());
    let mut bound = Vec::with_capacity(file.len());
    let mut names = HashSet::new();
    for (i, f) in file.into_iter().enumerate() {
        if f.name.is_empty() {
            errs.push(invalid(format!("frontend[{i}].name"), "must not be empty"));
            continue;
        }
        let key = format!("frontend {:?}", f.name);
        if !names.insert(f.name.clone()) {
            errs.push(invalid(format!("{key}.name"), "duplicate frontend name"));
            continue;
        }
        let Some(bind) = errs.take(parse_listen(&format!("{key}.bind"), &f.bind)) else {
            continue;
        };
        bound.push((format!("{key}.bind"), bind));
        let in_tree = tree_frontends.contains(&f.name);
        if let Some(ok) = errs.take(frontend(&key, f, bind, backends, in_tree)) {
            frontends.push(ok);
        }
    }
    (frontends, bound)
}

/// Refuses two listeners that cannot both bind: the same address and port, or a wildcard and
/// anything else on its port. `0.0.0.0:P` takes P on every IPv4 address, and `[::]:P` on every
/// address of both families (Linux's default `net.ipv6.bindv6only = 0`). Port 0 (tests) asks
/// the OS for a fresh port each time, so it never collides.
fn binds(errs: &mut Errors, bound: &[(String, SocketAddr)]) {
    for (i, (key, addr)) in bound.iter().enumerate() {
        if let Some((other_key, other)) = bound[..i].iter().find(|(_, o)| overlap(*o, *addr)) {
            let why = if other == addr {
                String::new()
            } else {
                " (a wildcard address takes its port on every address)".to_string()
            };
            errs.push(invalid(
                key.as_str(),
                format!("{addr} overlaps {other_key} = {other}{why}"),
            ));
        }
    }
}

fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: SocketAddr, o: SocketAddr| match w.ip() {
        std::net::IpAddr::V6(ip) => ip.is_unspecified(),
        std::net::IpAddr::V4(ip) => ip.is_unspecified() && o.is_ipv4(),
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// One `[[frontend]]` whose name and bind address were checked; `key` is how errors name it.
/// Every problem is reported (the routes: the first of theirs).
fn frontend(
    key: &str,
    f: FileFrontend,
    bind: SocketAddr,
    backends: &[Backend],
    in_tree: bool,
) -> Result<Frontend, ConfigError> {
    let mut e = Errors::default();
    let mode = f.mode.unwrap_or(DEFAULT_MODE);
    let tls_given = f.tls.is_some();
    let mut f = f;
    let file_acme = f.tls.as_mut().and_then(|t| t.acme.take());
    let has_acme = file_acme.is_some();
    let tls = f
        .tls
        .and_then(|t| e.take(frontend_tls(key, t, mode, has_acme)));
    let given = f.backend.is_some() || f.backends.is_some();
    let (backend, split) = match (f.backend, f.backends) {
        (None, None) => (None, Vec::new()),
        (b, s) => e
            .take(super::routing::route_backends(key, b, s, backends))
            .map_or((None, Vec::new()), |(b, s)| (Some(b), s)),
    };
    if mode == Mode::Tcp && !split.is_empty() {
        e.push(invalid(
            format!("{key}.backends"),
            "a weighted split is for mode = \"http\" frontends; a tcp frontend names one backend",
        ));
    }
    if !given && f.route.is_empty() && !in_tree {
        e.push(invalid(
            key,
            "needs a backend, routes ([[frontend.route]]) or a [[service_tree]] that lists it",
        ));
    }
    let policy = e
        .take(super::policy::policy(
            key,
            super::policy::FilePolicy {
                allow: f.allow,
                deny: f.deny,
                rate_limit: f.rate_limit,
                redirect: f.redirect,
                request_headers: f.request_headers,
                response_headers: f.response_headers,
                max_body_size: f.max_body_size,
            },
        ))
        .unwrap_or_default();
    if mode == Mode::Tcp && !policy.is_empty() {
        e.push(invalid(
            key,
            "redirect, header rules, allow, deny, rate_limit and max_body_size are for mode = \"http\" frontends",
        ));
    }
    let routes = e
        .take(super::routing::routes(
            key,
            f.route,
            mode,
            tls_given,
            backend.as_deref(),
            backends,
            &policy,
        ))
        .unwrap_or_default();
    let acme = file_acme.and_then(|a| e.take(super::acme::acme(key, a, &routes)));
    let max_header_size = f.max_header_size.unwrap_or(DEFAULT_MAX_HEADER_SIZE);
    if max_header_size < MIN_MAX_HEADER_SIZE {
        e.push(invalid(
            format!("{key}.max_header_size"),
            format!("must be at least {MIN_MAX_HEADER_SIZE} bytes"),
        ));
    }
    let maxconn = f.maxconn.unwrap_or(DEFAULT_MAXCONN);
    if maxconn == 0 {
        e.push(invalid(format!("{key}.maxconn"), "must be at least 1"));
    }
    if f.allow_connect == Some(true) && mode == Mode::Tcp {
        e.push(invalid(
            format!("{key}.allow_connect"),
            "is for mode = \"http\" frontends",
        ));
    }
    let frontend = Frontend {
        header_timeout: e.positive(
            format!("{key}.header_timeout"),
            f.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT),
        ),
        idle_timeout: e.positive(
            format!("{key}.idle_timeout"),
            f.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        ),
        max_header_size,
        maxconn,
        accept_proxy: f.accept_proxy.unwrap_or(DEFAULT_ACCEPT_PROXY),
        allow_connect: f.allow_connect.unwrap_or(DEFAULT_ALLOW_CONNECT),
        tls,
        acme,
        name: f.name,
        bind,
        mode,
        backend,
        backends: split,
        routes,
        policy,
    };
    e.finish(frontend)
}

/// `has_acme`: `[frontend.tls.acme]` supplies certificates, so `certs` may be empty.
fn frontend_tls(
    key: &str,
    t: FileFrontendTls,
    mode: Mode,
    has_acme: bool,
) -> Result<FrontendTls, ConfigError> {
    if t.certs.is_empty() && !has_acme {
        return Err(invalid(
            format!("{key}.tls.certs"),
            "needs at least one { cert, key } pair (or [frontend.tls.acme])",
        ));
    }
    let alpn = t.alpn.unwrap_or_else(|| {
        let default = match mode {
            Mode::Http => DEFAULT_HTTP_ALPN,
            Mode::Tcp => DEFAULT_TCP_ALPN,
        };
        default.iter().map(|p| p.to_string()).collect()
    });
    if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(invalid(
            format!("{key}.tls.alpn"),
            format!("{bad:?} is not a protocol name"),
        ));
    }
    Ok(FrontendTls {
        certs: t
            .certs
            .into_iter()
            .map(|c| CertPair {
                cert: c.cert,
                key: c.key,
            })
            .collect(),
        alpn,
        handshake_timeout: positive(
            &format!("{key}.tls.handshake_timeout"),
            t.handshake_timeout.unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
        )?,
    })
}
