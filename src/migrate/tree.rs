//! confd templates that range over `lsdir`: one backend and one `use_backend` rule per
//! directory under a prefix (`{{range $svc := lsdir "/services"}} backend {{$svc}} ...
//! {{range gets (printf "/services/%s/backend/*" $svc)}} server ...{{end}}{{end}}`) become one
//! `[[service_tree]]`: its `etcd_prefix` the directory listed, `servers_dir` from the `gets`
//! key, `frontends` the frontends whose `use_backend` rules range over the same directory, the
//! route template from the acl in the loop (`{{$svc}}` is `{service}`), and a `template`
//! backend holding the templated backend block's settings.
//!
//! The template is read, not rendered (`scan.rs`). [`plan`] checks what the scan found against
//! the rendered haproxy.cfg: the backends named like the templated one are the tree's services
//! (`write.rs` leaves them out, `mod.rs` drops the warnings about their lines).

use std::collections::HashSet;

use super::haproxy::{self, Kind, Line, Proxy};
use super::rules::{self, RouteOut};
use super::scan::{SERVICE, Scan, template_text};
use super::{Warn, Warning};
use crate::config::DEFAULT_SERVERS_DIR;
use crate::route::HostMatch;

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

/// Turns what `scan.rs` found into trees, checked against haproxy.cfg's `proxies` and the
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
    use super::super::Source;
    use super::super::confd::Confd;
    use super::super::scan::scan;
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
