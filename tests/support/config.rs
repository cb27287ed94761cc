//! `Cfg`: Switchyard's TOML config built for a test, so that a test says only what it is about:
//!
//! ```ignore
//! let toml = Cfg::http("web")
//!     .frontend_lines("idle_timeout = \"1s\"")
//!     .backend("b")
//!     .servers(&[up.addr()])
//!     .check_none()
//!     .toml();
//! ```
//!
//! Always an `[admin]` listener on `127.0.0.1:0`; frontends bind `127.0.0.1:0` unless told. A
//! frontend with no backend named gets the next backend declared. `*_lines` take TOML text for
//! the last frontend or backend (or `[etcd]`, `[admin]`): its keys, then any of its sections
//! (`[frontend.tls]`, `[backend.passive]`, ...), which are kept after every key however the calls
//! are ordered. `route` adds a `[[frontend.route]]` to the last frontend, and `no_fallback` leaves
//! its `backend` key out (a frontend served by its routes alone). Parsing is Switchyard's: a
//! mistake shows when `Lb::start` reads the result.

use std::fmt::Display;

/// Which etcd API a config's `[etcd] api` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    V2,
    V3,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Cfg {
    admin: Vec<String>,
    tables: Vec<String>,
    etcd: Option<Vec<String>>,
    frontends: Vec<Frontend>,
    backends: Vec<Backend>,
}

#[derive(Clone, Debug)]
struct Frontend {
    name: String,
    bind: String,
    tcp: bool,
    backend: Option<String>,
    /// No `backend` key: routes only (`no_fallback`).
    no_fallback: bool,
    keys: Vec<String>,
    sections: Vec<String>,
    /// `[[frontend.route]]` tables, in file order.
    routes: Vec<String>,
}

#[derive(Clone, Debug)]
struct Backend {
    name: String,
    keys: Vec<String>,
    sections: Vec<String>,
}

impl Default for Cfg {
    fn default() -> Cfg {
        Cfg::new()
    }
}

impl Cfg {
    /// Only `[admin]` on `127.0.0.1:0`.
    pub fn new() -> Cfg {
        Cfg {
            admin: vec![format!("listen = {}", quoted("127.0.0.1:0"))],
            tables: Vec::new(),
            etcd: None,
            frontends: Vec::new(),
            backends: Vec::new(),
        }
    }

    /// An HTTP frontend `name`.
    pub fn http(name: &str) -> Cfg {
        Cfg::new().frontend(name)
    }

    /// A TCP (`mode = "tcp"`) frontend `name`.
    pub fn tcp(name: &str) -> Cfg {
        Cfg::new().tcp_frontend(name)
    }

    /// Adds an HTTP frontend `name` on `127.0.0.1:0`.
    pub fn frontend(mut self, name: &str) -> Cfg {
        self.frontends.push(Frontend {
            name: name.to_string(),
            bind: "127.0.0.1:0".to_string(),
            tcp: false,
            backend: None,
            no_fallback: false,
            keys: Vec::new(),
            sections: Vec::new(),
            routes: Vec::new(),
        });
        self
    }

    /// Adds a TCP frontend `name` on `127.0.0.1:0`.
    pub fn tcp_frontend(mut self, name: &str) -> Cfg {
        self = self.frontend(name);
        self.last_frontend().tcp = true;
        self
    }

    /// Where the last frontend binds.
    pub fn bind(mut self, addr: impl Display) -> Cfg {
        self.last_frontend().bind = addr.to_string();
        self
    }

    /// Points the last frontend at `backend` (declared here or not).
    pub fn to(mut self, backend: &str) -> Cfg {
        self.last_frontend().backend = Some(backend.to_string());
        self
    }

    /// The last frontend has no `backend` key (no fallback: a request no route takes gets
    /// `404`, a tcp connection is closed); `backend` no longer gives it one.
    pub fn no_fallback(mut self) -> Cfg {
        let f = self.last_frontend();
        f.no_fallback = true;
        f.backend = None;
        self
    }

    /// A `[[frontend.route]]` of the last frontend with these keys (`host = "..."`,
    /// `path_prefix`, `strip_prefix`, `sni`, `backend`), after the earlier ones.
    pub fn route(mut self, keys: &str) -> Cfg {
        self.last_frontend().routes.push(keys.trim().to_string());
        self
    }

    /// A `[[service_tree]]` with these lines (`etcd_prefix = ...`, `frontends = [...]`, ...).
    pub fn service_tree(self, lines: &str) -> Cfg {
        self.table(&format!("[[service_tree]]\n{lines}"))
    }

    /// Keys and then sections of the last frontend.
    pub fn frontend_lines(mut self, text: &str) -> Cfg {
        let (keys, sections) = split(text);
        let f = self.last_frontend();
        f.keys.extend(keys);
        f.sections.extend(sections);
        self
    }

    /// Adds backend `name`; every frontend still without one routes to it.
    pub fn backend(mut self, name: &str) -> Cfg {
        for f in self
            .frontends
            .iter_mut()
            .filter(|f| f.backend.is_none() && !f.no_fallback)
        {
            f.backend = Some(name.to_string());
        }
        self.backends.push(Backend {
            name: name.to_string(),
            keys: Vec::new(),
            sections: Vec::new(),
        });
        self
    }

    /// `backend(name)` discovering its servers under `etcd_prefix = "/{name}/backend"`.
    pub fn etcd_backend(self, name: &str) -> Cfg {
        self.backend(name).prefix(&format!("/{name}/backend"))
    }

    /// Static `servers` of the last backend (addresses, or anything that prints as one).
    pub fn servers<S: Display>(self, servers: &[S]) -> Cfg {
        let list: Vec<String> = servers.iter().map(|s| quoted(&s.to_string())).collect();
        self.backend_lines(&format!("servers = [{}]", list.join(", ")))
    }

    /// `etcd_prefix` of the last backend.
    pub fn prefix(self, prefix: &str) -> Cfg {
        self.backend_lines(&format!("etcd_prefix = {}", quoted(prefix)))
    }

    /// Keys and then sections of the last backend.
    pub fn backend_lines(mut self, text: &str) -> Cfg {
        let (keys, sections) = split(text);
        let b = self.last_backend();
        b.keys.extend(keys);
        b.sections.extend(sections);
        self
    }

    /// `[backend.check]` of the last backend with these lines.
    pub fn check(self, lines: &str) -> Cfg {
        self.backend_lines(&format!("[backend.check]\n{lines}"))
    }

    /// No health checks on the last backend: only the proxy connects to its servers.
    pub fn check_none(self) -> Cfg {
        self.check("type = \"none\"")
    }

    /// `[etcd]` with one endpoint.
    pub fn etcd(self, url: &str) -> Cfg {
        self.etcd_endpoints(&[url])
    }

    /// `[etcd]` with these endpoints.
    pub fn etcd_endpoints<S: Display>(mut self, urls: &[S]) -> Cfg {
        let list: Vec<String> = urls.iter().map(|u| quoted(&u.to_string())).collect();
        self.etcd = Some(vec![format!("endpoints = [{}]", list.join(", "))]);
        self
    }

    /// `api` under `[etcd]`.
    pub fn api(self, api: Api) -> Cfg {
        self.etcd_lines(&format!("api = \"{}\"", api.as_str()))
    }

    /// More lines under `[etcd]` (`poll_timeout = ...`).
    pub fn etcd_lines(mut self, text: &str) -> Cfg {
        self.etcd
            .as_mut()
            .expect("etcd_lines before etcd()")
            .push(text.to_string());
        self
    }

    /// Where `[admin]` listens (`127.0.0.1:0` unless told).
    pub fn admin_listen(mut self, addr: impl Display) -> Cfg {
        self.admin[0] = format!("listen = {}", quoted(&addr.to_string()));
        self
    }

    /// More lines under `[admin]` (a token, the stats page).
    pub fn admin_lines(mut self, text: &str) -> Cfg {
        self.admin.push(text.to_string());
        self
    }

    /// Another top-level table, as TOML text (`[log]`, ...).
    pub fn table(mut self, text: &str) -> Cfg {
        self.tables.push(text.to_string());
        self
    }

    /// The config as TOML.
    pub fn toml(&self) -> String {
        let mut out = String::from("[admin]\n");
        push_lines(&mut out, &self.admin);
        push_lines(&mut out, &self.tables);
        if let Some(etcd) = &self.etcd {
            out.push_str("[etcd]\n");
            push_lines(&mut out, etcd);
        }
        for f in &self.frontends {
            let backend = match (&f.backend, f.no_fallback) {
                (_, true) => None,
                (Some(b), false) => Some(b.as_str()),
                (None, false) => panic!("frontend {:?} has no backend", f.name),
            };
            out.push_str("[[frontend]]\n");
            out.push_str(&format!("name = {}\n", quoted(&f.name)));
            out.push_str(&format!("bind = {}\n", quoted(&f.bind)));
            if f.tcp {
                out.push_str("mode = \"tcp\"\n");
            }
            if let Some(backend) = backend {
                out.push_str(&format!("backend = {}\n", quoted(backend)));
            }
            push_lines(&mut out, &f.keys);
            push_lines(&mut out, &f.sections);
            for r in &f.routes {
                out.push_str("[[frontend.route]]\n");
                out.push_str(r);
                out.push('\n');
            }
        }
        for b in &self.backends {
            out.push_str("[[backend]]\n");
            out.push_str(&format!("name = {}\n", quoted(&b.name)));
            push_lines(&mut out, &b.keys);
            push_lines(&mut out, &b.sections);
        }
        out
    }

    fn last_frontend(&mut self) -> &mut Frontend {
        self.frontends.last_mut().expect("no frontend yet")
    }

    fn last_backend(&mut self) -> &mut Backend {
        self.backends.last_mut().expect("no backend yet")
    }
}

/// One HTTP frontend `web` in front of backend `name` with static `servers`, then `frontend` and
/// `backend` lines (keys, then sections) for each.
pub fn static_config(name: &str, servers: &[String], frontend: &str, backend: &str) -> String {
    Cfg::http("web")
        .frontend_lines(frontend)
        .backend(name)
        .servers(servers)
        .backend_lines(backend)
        .toml()
}

/// `s` as a TOML basic string (quotes and backslashes escaped), e.g. a temp file's path.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `path` as a TOML string.
pub fn path(p: &std::path::Path) -> String {
    quoted(&p.display().to_string())
}

/// TOML text cut where its first table header (`[...]`) starts: the keys before it, and the rest.
fn split(text: &str) -> (Option<String>, Option<String>) {
    let mut at = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') && !t.contains('=') {
            at = Some(pos);
            break;
        }
        pos += line.len();
    }
    let (keys, sections) = text.split_at(at.unwrap_or(text.len()));
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim_end().to_string());
    (some(keys), some(sections))
}

fn push_lines(out: &mut String, lines: &[String]) {
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
}
