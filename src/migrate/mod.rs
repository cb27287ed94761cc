//! `switchyard migrate`: translates a confd + HAProxy setup into an equivalent `switchyard.toml`.
//! It reads the rendered `haproxy.cfg` (sections `global`, `defaults`, `frontend`, `backend`,
//! `listen`), and optionally the confd template resource (`keys`, `prefix`, `src`) and the confd
//! template itself, whose `{{range gets "/prefix/*"}}` / `{{range getvs ...}}` loop inside a
//! backend section turns that backend into an etcd-discovered one (`etcd_prefix`), with the loop's
//! `server` line options as its `[backend.check]`, and whose `{{range $svc := lsdir "/dir"}}`
//! loops (a backend and a `use_backend` rule per directory) become a `[[service_tree]]`, and an
//! `lsdir` loop inside one backend that backend's recursive `etcd_prefix`. A frontend's `acl` /
//! `use_backend` rules become `[[frontend.route]]` entries. Everything it cannot map becomes one
//! [`Warning`] naming the file, the line and the reason: nothing is dropped silently. The output
//! is validated with [`Config::from_toml`] before it is printed, and one without a frontend is
//! an error ([`MigrateError::NoFrontend`]): it would listen on nothing.
//!
//! This module holds the public types, the command line ([`main`]) and the translation as a
//! whole ([`migrate`]). The haproxy.cfg reader is `haproxy.rs` (its bind lines `bind.rs`, its
//! server options `server.rs`, its routing rules `rules.rs` with their acls `acl.rs`, whose
//! order `order.rs` checks), the confd resource and template scanner `confd.rs` (its lsdir loops
//! `tree.rs`), the TOML writer `write.rs`.

mod acl;
mod bind;
mod confd;
mod haproxy;
mod order;
mod policy;
mod rules;
mod scan;
mod server;
mod sticky;
mod tree;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_ADMIN_LISTEN, DEFAULT_ETCD_ENDPOINT};
use confd::{Confd, confd_resource, scan_template};
use haproxy::Line;

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
    /// Nothing would listen: a config without a frontend serves nothing. `warnings` are the
    /// migration's, which say why each frontend was left out.
    #[error("{file}: {why}, so the result would listen on nothing")]
    NoFrontend {
        file: String,
        why: String,
        warnings: Vec<Warning>,
    },
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
/// produced (even with warnings), 1 on unreadable input, bad arguments, an invalid result or a
/// result without a frontend (its warnings are printed first).
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
            if let CliError::Migrate(MigrateError::NoFrontend { warnings, .. }) = &e {
                for w in warnings {
                    eprintln!("{w}");
                }
            }
            eprintln!("switchyard migrate: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Args(String),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Args(s)
    }
}

fn run_cli(opts: &Options) -> Result<Migration, CliError> {
    let endpoints: Vec<String> = opts
        .etcd
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--etcd: needs at least one URL".to_string().into());
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!("--etcd: {e:?} must start with http:// or https://").into());
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
    Ok(migrate(&input)?)
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
    let mut lsdir = scan::Scan::default();
    match (&input.confd_template, &input.confd_toml) {
        (Some(src), _) => {
            let mut w = Warn {
                file: src.name,
                out: &mut warnings,
            };
            let cname = input.confd_toml.map(|s| s.name).unwrap_or(src.name);
            lsdir = scan::scan(src, &confd, &mut w);
            template = scan_template(src, &confd, cname, &lsdir.lines, &lsdir.dirs(), &mut w);
        }
        (None, Some(src)) => warnings.push(Warning {
            file: src.name.to_string(),
            line: confd.keys_line,
            directive: "keys".to_string(),
            why: "without the template (--confd-template) it is unknown which backend these keys feed; the servers rendered into haproxy.cfg are kept as static servers".to_string(),
        }),
        (None, None) => {}
    }
    // lsdir loops inside one backend: that backend's recursive etcd_prefix.
    let tname = input.confd_template.map(|s| s.name).unwrap_or("");
    for r in tree::recursive(&lsdir, tname, &mut warnings) {
        let b = template.entry(r.backend.clone()).or_default();
        if b.prefix.is_some() {
            warnings.push(Warning {
                file: tname.to_string(),
                line: r.line,
                directive: format!("lsdir {:?}", r.etcd_prefix),
                why: "a second loop in one backend: Switchyard watches one etcd_prefix per backend; only the first is used".to_string(),
            });
            continue;
        }
        b.prefix = Some((r.etcd_prefix, r.line));
        if b.server.is_none() {
            b.server = r.server;
        }
    }

    // haproxy.cfg, then the TOML.
    let mut w = Warn {
        file: hfile,
        out: &mut warnings,
    };
    let proxies = haproxy::read(input.haproxy.text, &mut w);
    // The etcd prefixes of the template's backends that haproxy.cfg has.
    let taken: Vec<String> = template
        .iter()
        .filter(|(name, _)| proxies.iter().any(|p| p.name == **name))
        .filter_map(|(_, b)| b.prefix.as_ref().map(|(p, _)| p.clone()))
        .collect();
    let trees = tree::plan(&lsdir, &proxies, &taken, tname, &mut warnings);
    let mut w = Warn {
        file: hfile,
        out: &mut warnings,
    };
    let out = write::render(&proxies, &template, &trees, input, &mut w);
    // The backends a tree stands for were rendered once per service: the template said what
    // there is to say about them, once.
    let rendered: Vec<(usize, usize)> = proxies
        .iter()
        .filter(|p| p.kind == haproxy::Kind::Backend && trees.iter().any(|t| t.is_service(&p.name)))
        .map(|p| (p.line, p.end))
        .collect();
    warnings
        .retain(|w| w.file != hfile || !rendered.iter().any(|(a, b)| (*a..=*b).contains(&w.line)));

    // In file order, then line order (backend-level warnings are found late).
    let order: Vec<String> = [Some(input.haproxy), input.confd_toml, input.confd_template]
        .into_iter()
        .flatten()
        .map(|s| s.name.to_string())
        .collect();
    warnings.sort_by_key(|w| (order.iter().position(|f| *f == w.file), w.line));
    // Asked of the TOML itself: validation refuses a config without a frontend, with a message
    // that would hide the warnings saying why none was migrated.
    let frontends = toml::from_str::<toml::Table>(&out)
        .ok()
        .and_then(|t| t.get("frontend").and_then(|f| f.as_array()).map(Vec::len))
        .unwrap_or(0);
    if frontends == 0 {
        let sections = proxies
            .iter()
            .filter(|p| matches!(p.kind, haproxy::Kind::Frontend | haproxy::Kind::Listen))
            .count();
        let why = match sections {
            0 => "no frontend or listen section".to_string(),
            n => format!(
                "none of its {n} frontend or listen section(s) could be migrated (the warnings say why)"
            ),
        };
        return Err(MigrateError::NoFrontend {
            file: hfile.to_string(),
            why,
            warnings,
        });
    }
    Config::from_toml(&out)?;
    Ok(Migration {
        toml: out,
        warnings,
    })
}
