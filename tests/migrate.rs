//! `switchyard migrate`: the classic confd + HAProxy example becomes an etcd-discovered backend
//! that `switchyard check` accepts; a larger haproxy.cfg maps what it can and warns once per line
//! it cannot, naming the line; bad input exits 1. Host, path and SNI acls with their
//! `use_backend` rules become routes, with a warning where HAProxy's rule order and Switchyard's
//! precedence pick different backends. A confd template that ranges over `lsdir` becomes a
//! `[[service_tree]]`. HAProxy 1.x's `listen NAME ADDR:PORT` and old timeout names, `maxconn`,
//! `option httplog` and combined PEM files map without warnings, and a result without a
//! frontend is refused. A corpus of real-world-shaped setups (`fixtures/migrate/corpus`) is
//! compared with its expected output, each passing `switchyard check`. Runs the binary and
//! calls the library directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use switchyard::config::{Balance, CheckType, Config, HashKey, Mode, ProxyVersion};
use switchyard::migrate::{Input, Source, migrate};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stderr.clone())
        .unwrap()
        .lines()
        .map(ToString::to_string)
        .collect()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("switchyard-migrate-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_classic(c: &Config) {
    assert_eq!(c.frontends.len(), 1);
    let f = &c.frontends[0];
    assert_eq!(f.name, "testloadbalancer");
    assert_eq!(f.bind, "0.0.0.0:80".parse().unwrap());
    assert_eq!(f.mode, Mode::Http);
    assert_eq!(f.backend.as_deref(), Some("testservice"));
    let b = c.backend("testservice").unwrap();
    assert_eq!(b.etcd_prefix.as_deref(), Some("/testservice/backend"));
    assert!(
        b.servers.is_empty(),
        "rendered servers come from etcd: {:?}",
        b.servers
    );
    assert_eq!(b.balance, Balance::Roundrobin);
    assert_eq!(b.check.kind, CheckType::Tcp);
    assert_eq!(b.check.inter, Duration::from_secs(2));
    assert_eq!(b.check.rise, 2);
    assert_eq!(b.check.fall, 3);
    assert_eq!(b.connect_timeout, Duration::from_secs(5));
    assert_eq!(b.response_timeout, Duration::from_secs(50));
    let e = c.etcd.as_ref().expect("[etcd] is emitted for a prefix");
    assert_eq!(e.endpoints, ["http://127.0.0.1:2379"]);
}

#[test]
fn classic_confd_example_becomes_an_etcd_backend() {
    let cfg = fixture("classic/haproxy.cfg");
    let res = fixture("classic/conf.d/haproxy.toml");
    let tpl = fixture("classic/templates/haproxy.cfg.tmpl");
    let o = run(&[
        "--haproxy",
        cfg.to_str().unwrap(),
        "--confd-toml",
        res.to_str().unwrap(),
        "--confd-template",
        tpl.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    assert_classic(&Config::from_toml(&text).unwrap());
    // Only `global`'s daemon cannot be mapped (maxconn is the one frontend's); the template's
    // copy of it is not warned about twice (warnings come from the rendered haproxy.cfg).
    let warnings = stderr_lines(&o);
    let want = [format!("warning: {}:2: daemon: ", cfg.display())];
    assert_eq!(warnings.len(), want.len(), "{warnings:#?}");
    for (w, want) in warnings.iter().zip(&want) {
        assert!(w.starts_with(want.as_str()), "{w:?} vs {want:?}");
    }

    // `switchyard check` accepts what migrate printed.
    let dir = tempdir("classic");
    let out = dir.join("switchyard.toml");
    std::fs::write(&out, &text).unwrap();
    let c = Command::new(BIN)
        .args(["check", "-c", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(c.status.success(), "{c:?}");
    assert_eq!(
        String::from_utf8_lossy(&c.stdout).trim(),
        "configuration valid"
    );

    // Without --confd-template the template is found where confd keeps it (<confdir>/templates),
    // and --etcd sets the endpoints.
    let o = run(&[
        "--haproxy",
        cfg.to_str().unwrap(),
        "--confd-toml",
        res.to_str().unwrap(),
        "--etcd",
        "http://10.0.0.1:2379,http://10.0.0.2:2379",
    ]);
    assert!(o.status.success(), "{o:?}");
    let c = Config::from_toml(&String::from_utf8(o.stdout.clone()).unwrap()).unwrap();
    assert_eq!(
        c.backend("testservice").unwrap().etcd_prefix.as_deref(),
        Some("/testservice/backend")
    );
    assert_eq!(
        c.etcd.unwrap().endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
}

#[test]
fn classic_example_through_the_library() {
    let read = |p: &str| std::fs::read_to_string(fixture(p)).unwrap();
    let (cfg, res, tpl) = (
        read("classic/haproxy.cfg"),
        read("classic/conf.d/haproxy.toml"),
        read("classic/templates/haproxy.cfg.tmpl"),
    );
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: &cfg,
        },
        confd_toml: Some(Source {
            name: "haproxy.toml",
            text: &res,
        }),
        confd_template: Some(Source {
            name: "haproxy.cfg.tmpl",
            text: &tpl,
        }),
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    assert_classic(&Config::from_toml(&m.toml).unwrap());
    assert_eq!(
        m.warnings[0].to_string(),
        "warning: haproxy.cfg:2: daemon: process management is left to the service manager (systemd, a container runtime)"
    );

    // Only haproxy.cfg: the rendered server lines become static servers, no [etcd].
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: &cfg,
        },
        confd_toml: None,
        confd_template: None,
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    let c = Config::from_toml(&m.toml).unwrap();
    assert!(c.etcd.is_none());
    let b = c.backend("testservice").unwrap();
    assert_eq!(b.etcd_prefix, None);
    assert_eq!(b.servers, ["172.17.8.101:55555", "172.17.8.102:55555"]);
    assert_eq!(b.check.rise, 2);

    // A template loop over getvs with a prefix in the resource and a weight on the loop's line.
    let tpl = "backend web\n  {{range getvs \"/web/*\"}}\n  server x {{.}} check inter 500ms fall 5 weight 3\n  {{end}}\n";
    let res = "[template]\nprefix = \"/prod\"\nkeys = [\"/web\"]\nsrc = \"x\"\n";
    let cfg = "frontend f\n  bind :8000\n  default_backend web\nbackend web\n  server 1 10.0.0.1:80 check\n";
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: cfg,
        },
        confd_toml: Some(Source {
            name: "r.toml",
            text: res,
        }),
        confd_template: Some(Source {
            name: "t.tmpl",
            text: tpl,
        }),
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    let c = Config::from_toml(&m.toml).unwrap();
    let b = c.backend("web").unwrap();
    assert_eq!(b.etcd_prefix.as_deref(), Some("/prod/web"));
    assert!(b.servers.is_empty());
    assert_eq!(b.check.inter, Duration::from_millis(500));
    assert_eq!(b.check.fall, 5);
    let w: Vec<String> = m.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("warning: t.tmpl:3: server weight 3"),
        "{w:#?}"
    );
}

#[test]
fn larger_haproxy_cfg_maps_what_it_can_and_warns_per_line() {
    let cfg = fixture("full/haproxy.cfg");
    let o = run(&["--haproxy", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let c = Config::from_toml(&String::from_utf8(o.stdout.clone()).unwrap()).unwrap();

    // Frontends: www (http), db (tcp, accept-proxy), the listen section; not `listen stats`.
    let names: Vec<&str> = c.frontends.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["www", "db", "admin_api"]);
    let www = &c.frontends[0];
    assert_eq!(www.bind, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(www.mode, Mode::Http);
    assert_eq!(www.backend.as_deref(), Some("app"));
    // `acl is_api path_beg /api` + `use_backend api if is_api`: a route, the rest to app.
    assert_eq!(www.routes.len(), 1);
    assert_eq!(www.routes[0].path_prefix, "/api");
    assert_eq!(www.routes[0].host, None);
    assert_eq!(www.routes[0].backend, "api");
    assert_eq!(www.header_timeout, Duration::from_secs(10));
    assert_eq!(www.idle_timeout, Duration::from_secs(30));
    let db = &c.frontends[1];
    assert_eq!(db.mode, Mode::Tcp);
    assert_eq!(db.backend.as_deref(), Some("postgres"));
    assert!(db.accept_proxy);
    assert_eq!(db.idle_timeout, Duration::from_secs(3600));
    let listen = &c.frontends[2];
    assert_eq!(listen.bind, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(listen.backend.as_deref(), Some("admin_api"));

    // Backends, with defaults' timeouts and retries inherited.
    let app = c.backend("app").unwrap();
    assert_eq!(
        app.servers,
        ["10.0.0.11:8080", "10.0.0.12:8080"],
        "no backup"
    );
    assert_eq!(app.check.kind, CheckType::Http);
    assert_eq!(app.check.path, "/health");
    assert_eq!(app.check.expect_status, [200]);
    assert_eq!(app.check.inter, Duration::from_secs(3));
    assert_eq!((app.check.rise, app.check.fall), (3, 2));
    assert_eq!(app.check.timeout, Duration::from_secs(2));
    assert_eq!(app.connect_timeout, Duration::from_secs(5));
    assert_eq!(app.response_timeout, Duration::from_secs(60));
    assert_eq!(app.retries, 3);
    let api = c.backend("api").unwrap();
    assert_eq!(api.balance, Balance::Random2);
    assert_eq!(api.servers.len(), 2);
    let pg = c.backend("postgres").unwrap();
    assert_eq!(pg.balance, Balance::Hash, "balance source");
    assert_eq!(pg.hash_key, Some(HashKey::Source));
    assert_eq!(pg.response_timeout, Duration::from_secs(7200));
    assert_eq!(pg.check.inter, Duration::from_secs(5));
    assert_eq!(pg.max_conns_per_server, 100, "server pg1 maxconn 100");
    assert_eq!(app.max_conns_per_server, 0, "no maxconn, no limit");
    let adm = c.backend("admin_api").unwrap();
    assert_eq!(adm.balance, Balance::Leastconn);
    assert_eq!(adm.send_proxy, ProxyVersion::V2);
    assert_eq!(adm.servers, ["10.0.0.21:9000", "10.0.0.22:9000"]);
    assert!(c.etcd.is_none());

    // One warning per unmappable line, each naming its line, in line order.
    let warnings = stderr_lines(&o);
    let expected = [
        (4, "log /dev/log local0"),
        (5, "maxconn 4096"),
        (6, "daemon"),
        (37, "listen stats"),
        (46, "server web1 weight 10"),
        (47, "server web2 weight 20"),
        (48, "server sorry backup"),
    ];
    assert_eq!(warnings.len(), expected.len(), "{warnings:#?}");
    for (w, (line, directive)) in warnings.iter().zip(expected) {
        let want = format!("warning: {}:{line}: {directive}: ", cfg.display());
        assert!(w.starts_with(&want), "{w:?} should start with {want:?}");
    }
}

#[test]
fn tls_and_proxy_options_map_to_their_keys() {
    let cfg = "\
frontend https
    bind :443 ssl crt /etc/ssl/site.pem alpn h2,http/1.1 ciphers HIGH
    bind :80
    default_backend up
backend up
    server s1 10.0.0.1:443 check ssl verify none sni str(api.internal) send-proxy
";
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: cfg,
        },
        confd_toml: None,
        confd_template: None,
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    let c = Config::from_toml(&m.toml).unwrap();
    assert_eq!(c.frontends.len(), 2);
    let tls = c.frontends[0].tls.as_ref().unwrap();
    assert_eq!(tls.certs[0].cert, Path::new("/etc/ssl/site.pem"));
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(c.frontends[1].name, "https-80");
    assert!(c.frontends[1].tls.is_none());
    let b = c.backend("up").unwrap();
    assert_eq!(b.send_proxy, ProxyVersion::V1);
    let t = b.tls.as_ref().unwrap();
    assert!(!t.verify);
    assert_eq!(t.sni.as_deref(), Some("api.internal"));
    let w: Vec<String> = m.warnings.iter().map(ToString::to_string).collect();
    // The crt file (a combined PEM) is both cert and key, with no warning.
    assert_eq!(tls.certs[0].key, Path::new("/etc/ssl/site.pem"));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].starts_with("warning: haproxy.cfg:2: bind :443 ciphers HIGH: "));
}

#[test]
fn bad_input_exits_1() {
    let o = run(&["--haproxy", "/nonexistent/haproxy.cfg"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    let cfg = fixture("full/haproxy.cfg");
    let o = run(&[
        "--haproxy",
        cfg.to_str().unwrap(),
        "--etcd",
        "127.0.0.1:2379",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "--haproxy is required");
    // No frontend left is an error (it would listen on nothing): the warnings that say why,
    // then the error, exit 1, nothing on stdout.
    let dir = tempdir("empty");
    let empty = dir.join("haproxy.cfg");
    std::fs::write(&empty, "global\n    daemon\nfrontend f\n    bind :80\n").unwrap();
    let o = run(&["--haproxy", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    let w = stderr_lines(&o);
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w[1].contains(":3: frontend f: has no default_backend"),
        "{w:#?}"
    );
    assert!(
        w[2].starts_with("switchyard migrate: ")
            && w[2].contains("none of its 1 frontend or listen section(s) could be migrated"),
        "{w:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes: acl / use_backend, SNI, and confd lsdir templates as service trees.

/// Migrates haproxy.cfg text alone through the library.
fn lib(cfg: &str) -> (Config, Vec<String>) {
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: cfg,
        },
        confd_toml: None,
        confd_template: None,
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    let w = m.warnings.iter().map(ToString::to_string).collect();
    (Config::from_toml(&m.toml).unwrap(), w)
}

/// Migrates a fixture directory (haproxy.cfg, and conf.d/haproxy.toml with its template when
/// there): the config, its text and the warnings.
fn lib_fixture(dir: &str) -> (Config, String, Vec<String>) {
    let read = |p: &str| std::fs::read_to_string(fixture(&format!("{dir}/{p}"))).ok();
    let cfg = read("haproxy.cfg").unwrap();
    let res = read("conf.d/haproxy.toml");
    let tpl = read("templates/haproxy.cfg.tmpl");
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text: &cfg,
        },
        confd_toml: res.as_deref().map(|text| Source {
            name: "haproxy.toml",
            text,
        }),
        confd_template: tpl.as_deref().map(|text| Source {
            name: "haproxy.cfg.tmpl",
            text,
        }),
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
    })
    .unwrap();
    let w = m.warnings.iter().map(ToString::to_string).collect();
    (Config::from_toml(&m.toml).unwrap(), m.toml, w)
}

/// `switchyard check` accepts the text.
fn assert_check_passes(tag: &str, text: &str) {
    let dir = tempdir(tag);
    let out = dir.join("switchyard.toml");
    std::fs::write(&out, text).unwrap();
    let c = Command::new(BIN)
        .args(["check", "-c", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(c.status.success(), "{tag}: {c:?}\n{text}");
}

/// Each warning starts with `warning: FILE:LINE: DIRECTIVE: ` and contains WHAT, in order.
fn assert_warnings(got: &[String], want: &[(&str, usize, &str, &str)]) {
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, (file, line, directive, what)) in got.iter().zip(want) {
        let head = format!("warning: {file}:{line}: {directive}: ");
        assert!(g.starts_with(&head), "{g:?} should start with {head:?}");
        assert!(g.contains(what), "{g:?} should say {what:?}");
        assert!(!g.contains('\n'), "one line each: {g:?}");
    }
}

/// (host, path_prefix, backend) of a frontend's routes.
fn routes(c: &Config, frontend: usize) -> Vec<(Option<&str>, &str, &str)> {
    c.frontends[frontend]
        .routes
        .iter()
        .map(|r| {
            (
                r.host.as_deref(),
                r.path_prefix.as_str(),
                r.backend.as_str(),
            )
        })
        .collect()
}

#[test]
fn host_and_path_acls_become_routes_and_the_rest_warns() {
    let (c, text, w) = lib_fixture("routes");
    assert_eq!(c.frontends.len(), 2);
    assert_eq!(
        c.frontends[0].backend.as_deref(),
        Some("web"),
        "default_backend"
    );
    assert_eq!(
        routes(&c, 0),
        [
            // `path /healthz`: an exact path, as a prefix (warned).
            (None, "/healthz", "health"),
            // Two values: a route each; the port of the second dropped (warned).
            (Some("api.example.com"), "/", "api"),
            (Some("api.example.org"), "/", "api"),
            // `host_shop path_v1`: one route with both.
            (Some("shop.example.com"), "/v1/", "api_v1"),
            (Some("shop.example.com"), "/", "shop"),
            // `hdr_dom` is the domain and its subdomains; `||` a route per side;
            // `hdr_end .cdn.example.com` a wildcard.
            (Some("blog.example.com"), "/", "blog"),
            (Some("*.blog.example.com"), "/", "blog"),
            (Some("*.cdn.example.com"), "/", "blog"),
            // Two anonymous acls joined by `or`.
            (None, "/static/", "static"),
            (None, "/assets/", "static"),
        ]
    );
    // Without default_backend: routes only, no fallback.
    assert_eq!(c.frontends[1].backend, None);
    assert_eq!(routes(&c, 1), [(None, "/metrics", "metrics")]);
    let f = "haproxy.cfg";
    assert_warnings(
        &w,
        &[
            (f, 4, "daemon", "service manager"),
            (f, 14, "acl path_health path /healthz", "an exact path"),
            (
                f,
                15,
                "acl host_api hdr(host) -i api.example.com api.example.org:8080",
                "api.example.org:8080: the port is dropped",
            ),
            (
                f,
                16,
                "acl host_shop hdr(Host) shop.example.com",
                "without -i HAProxy compared case-sensitively",
            ),
            (
                f,
                22,
                "acl php path_end .php",
                "used by no use_backend rule",
            ),
            // `use_backend health if path_health` comes first in HAProxy; in Switchyard an
            // exact host beats a host-less path: one warning per pair of rules, with a request
            // that changes backend.
            (
                f,
                24,
                "use_backend api if host_api",
                "Host api.example.com path /healthz went to \"health\" by its first matching rule (line 23), and now goes to \"api\"",
            ),
            (
                f,
                26,
                "use_backend shop if host_shop",
                "Host shop.example.com path /healthz went to \"health\"",
            ),
            (
                f,
                27,
                "use_backend blog if dom_blog || end_cdn",
                "Host blog.example.com path /healthz went to \"health\"",
            ),
            (
                f,
                28,
                "use_backend admin if beg_admin",
                "not migrated: beg_admin (line 19): hdr_beg(host) admin.: the beginning of a host cannot be expressed",
            ),
            (
                f,
                29,
                "use_backend api if path_v1 !internal",
                "not migrated: !internal: a negation cannot be expressed",
            ),
            (
                f,
                31,
                "use_backend static unless host_api",
                "`unless` cannot be expressed",
            ),
            (
                f,
                34,
                "frontend internal",
                "no default_backend: a request no route matches gets 404 from Switchyard (HAProxy answered 503)",
            ),
        ],
    );
    assert_check_passes("routes", &text);
}

#[test]
fn sni_acls_in_a_tcp_frontend_become_sni_routes() {
    let (c, text, w) = lib_fixture("sni");
    let f = &c.frontends[0];
    assert_eq!(f.mode, Mode::Tcp);
    assert_eq!(f.backend.as_deref(), Some("tls_default"));
    // `tcp-request inspect-delay 5s`: the wait for the ClientHello.
    assert_eq!(f.header_timeout, Duration::from_secs(5));
    let sni: Vec<(Option<&str>, &str)> = f
        .routes
        .iter()
        .map(|r| (r.sni.as_deref(), r.backend.as_str()))
        .collect();
    assert_eq!(
        sni,
        [
            (Some("db.example.com"), "db"),
            (Some("mq.example.com"), "mq"),
            (Some("*.apps.example.com"), "apps"),
            (Some("legacy.example.com"), "legacy"),
        ]
    );
    assert!(
        f.routes
            .iter()
            .all(|r| r.host.is_none() && r.path_prefix == "/")
    );
    // The ClientHello accept rule maps to nothing to say; the rest is one line each.
    let h = "haproxy.cfg";
    assert_warnings(
        &w,
        &[
            (
                h,
                11,
                "tcp-request inspect-delay 5s",
                "no ClientHello within it is closed (HAProxy passed it on to default_backend)",
            ),
            (
                h,
                15,
                "acl sni_apps req.ssl_sni -m end .apps.example.com",
                "without -i",
            ),
        ],
    );
    assert_check_passes("sni", &text);
}

#[test]
fn each_acl_form_maps_or_warns() {
    let cfg = |acls: &str| {
        format!(
            "frontend f\n  bind :8000\n{acls}  default_backend d\nbackend d\n  server d 127.0.0.1:1\nbackend b\n  server b 127.0.0.1:2\nbackend c\n  server c 127.0.0.1:3\n"
        )
    };
    let hosts = |c: &Config| -> Vec<String> {
        c.frontends[0]
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix,
                    r.backend
                )
            })
            .collect()
    };
    // Spellings of the Host header.
    for fetch in ["hdr(host)", "hdr(Host)", "req.hdr(host)", "req.hdr(HOST)"] {
        let (c, w) = lib(&cfg(&format!(
            "  acl a {fetch} -i A.example.com\n  use_backend b if a\n"
        )));
        assert_eq!(hosts(&c), ["a.example.com / b"], "{fetch}");
        assert!(w.is_empty(), "{fetch}: {w:#?}");
    }
    // hdr_end without the leading dot: both, and a warning saying what changed.
    let (c, w) = lib(&cfg(
        "  acl a hdr_end(host) -i example.com\n  use_backend b if a\n",
    ));
    assert_eq!(hosts(&c), ["example.com / b", "*.example.com / b"]);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("myexample.com"), "{w:#?}");
    // AND of two host acls: their intersection; of disjoint ones: nothing (never matched).
    let (c, w) = lib(&cfg(
        "  acl x hdr(host) -i a.example.com\n  acl y hdr_end(host) -i .example.com\n  acl z hdr(host) -i b.other.com\n  use_backend b if x y\n  use_backend c if x z\n",
    ));
    assert_eq!(hosts(&c), ["a.example.com / b"]);
    assert!(w.is_empty(), "{w:#?}");
    // `or` and `||` alike; a negation drops its alternative only.
    let (c, w) = lib(&cfg(
        "  acl x hdr(host) -i x.com\n  acl y path_beg /y\n  acl n src 10.0.0.1\n  use_backend b if x or y || y !n\n",
    ));
    assert_eq!(hosts(&c), ["x.com / b", "* /y b"]);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains(":6: use_backend b if x or y || y !n: 1 of its 3 alternatives not migrated (the others are routes): !n: a negation"), "{w:#?}");
    // A use_backend without a condition is the fallback; rules after it were never reached.
    let (c, w) = lib(&cfg(
        "  acl x path_beg /x\n  use_backend b if x\n  use_backend c\n  use_backend b if x\n",
    ));
    assert_eq!(c.frontends[0].backend.as_deref(), Some("c"));
    assert_eq!(hosts(&c), ["* /x b"]);
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].contains(":5: use_backend c: takes everything no earlier rule takes"),
        "{w:#?}"
    );
    assert!(
        w[1].contains(":6: use_backend b if x: never reached in HAProxy"),
        "{w:#?}"
    );
    // An acl naming an unknown acl, and SNI in http mode, are not migrated.
    let (c, w) = lib(&cfg(
        "  acl s req.ssl_sni -i a.com\n  use_backend b if s\n  use_backend c if nope\n",
    ));
    assert!(c.frontends[0].routes.is_empty());
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].contains("http-mode frontend (use hdr(host))"),
        "{w:#?}"
    );
    assert!(w[1].contains("nope: no such acl"), "{w:#?}");
}

#[test]
fn an_order_dependent_rule_set_warns_and_an_equivalent_one_does_not() {
    let cfg = |rules: &str| {
        format!(
            "frontend f\n  bind :8000\n  acl wild hdr_end(host) -i .example.com\n  acl www hdr(host) -i www.example.com\n  acl api path_beg /api/\n{rules}  default_backend d\nbackend d\n  server d 127.0.0.1:1\nbackend w\n  server w 127.0.0.1:2\nbackend x\n  server x 127.0.0.1:3\nbackend a\n  server a 127.0.0.1:4\n"
        )
    };
    // Most specific first: HAProxy's order and Switchyard's precedence agree.
    let (c, w) = lib(&cfg(
        "  use_backend x if www\n  use_backend w if wild\n  use_backend a if api\n",
    ));
    assert_eq!(c.frontends[0].routes.len(), 3);
    assert!(w.is_empty(), "{w:#?}");
    // The wildcard first: www.example.com went to w in HAProxy and now goes to x.
    let (c, w) = lib(&cfg(
        "  use_backend w if wild\n  use_backend x if www\n  use_backend a if api\n",
    ));
    let names: Vec<&str> = c.frontends[0]
        .routes
        .iter()
        .map(|r| r.backend.as_str())
        .collect();
    assert_eq!(
        names,
        ["w", "x", "a"],
        "the routes are written all the same"
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("warning: haproxy.cfg:7: use_backend x if www: rule order matters here")
            && w[0].contains("Host www.example.com path / went to \"w\" by its first matching rule (line 6), and now goes to \"x\""),
        "{w:#?}"
    );
    // A path rule first: HAProxy sent /api/ on any host to a; Switchyard prefers the hosts.
    let (_, w) = lib(&cfg(
        "  use_backend a if api\n  use_backend x if www\n  use_backend w if wild\n",
    ));
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].contains(":7: use_backend x if www:") && w[0].contains("path /api/ went to \"a\""),
        "{w:#?}"
    );
    assert!(
        w[1].contains(":8: use_backend w if wild:")
            && w[1].contains("Host probe.example.com path /api/"),
        "{w:#?}"
    );
}

#[test]
fn tcp_rules_without_a_mapping_warn() {
    let (c, w) = lib(
        "frontend t\n  mode tcp\n  bind :8443\n  tcp-request inspect-delay 3s\n  acl hello req_ssl_hello_type 1\n  tcp-request content accept if hello\n  tcp-request content reject if { src 10.0.0.1 }\n  acl web hdr(host) -i a.com\n  use_backend b if web\n  use_backend b if { req.ssl_sni -i B.com }\nbackend b\n  mode tcp\n  server b 127.0.0.1:1\n",
    );
    let f = &c.frontends[0];
    assert_eq!(
        f.backend, None,
        "no default_backend: closed, as HAProxy does"
    );
    assert_eq!(f.header_timeout, Duration::from_secs(3));
    assert_eq!(f.routes.len(), 1);
    assert_eq!(f.routes[0].sni.as_deref(), Some("b.com"));
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains(":7: tcp-request content reject"), "{w:#?}");
    assert!(w[1].contains(":9: use_backend b if web: not migrated: web (line 8): hdr(host): reads HTTP requests, and this is a tcp-mode frontend"), "{w:#?}");
}

#[test]
fn an_lsdir_template_with_host_acls_becomes_a_service_tree() {
    let (c, text, w) = lib_fixture("lsdir-host");
    assert_eq!(c.service_trees.len(), 1, "{text}");
    let t = &c.service_trees[0];
    assert_eq!(t.etcd_prefix, "/services");
    assert_eq!(
        t.servers_dir, "backend",
        "from gets (printf \"/services/%s/backend/*\" ...)"
    );
    assert_eq!(t.frontends, ["http-in"]);
    assert_eq!(t.host.as_deref(), Some("{service}.example.com"));
    assert_eq!(t.path_prefix, None);
    assert_eq!(t.template.as_deref(), Some("services-defaults"));
    // The templated backend block's settings, read once from the template.
    assert_eq!(t.backend.balance, Balance::Leastconn);
    assert_eq!(t.backend.check.kind, CheckType::Http);
    assert_eq!(t.backend.check.path, "/health");
    assert_eq!(t.backend.check.inter, Duration::from_secs(2));
    assert_eq!((t.backend.check.rise, t.backend.check.fall), (2, 3));
    assert_eq!(t.backend.response_timeout, Duration::from_secs(30));
    assert_eq!(t.backend.connect_timeout, Duration::from_secs(5));
    // The rendered services are the tree's now: no backend-api, no host routes; the static
    // backend and the fallback stay.
    let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["www", "services-defaults"]);
    assert!(c.frontends[0].routes.is_empty());
    assert_eq!(c.frontends[0].backend.as_deref(), Some("www"));
    assert_eq!(c.frontends[0].maxconn, 256, "global maxconn, one frontend");
    assert!(c.etcd.is_some());
    assert_warnings(
        &w,
        &[
            ("haproxy.cfg", 37, "listen stats :1936", "stats listener"),
            (
                "haproxy.cfg.tmpl",
                17,
                "backend backend-{service}",
                "named after its directory under /services",
            ),
        ],
    );
    assert_check_passes("lsdir-host", &text);
}

#[test]
fn an_lsdir_template_with_path_acls_and_a_prefix_becomes_a_service_tree() {
    let (c, text, w) = lib_fixture("lsdir-path");
    let t = &c.service_trees[0];
    assert_eq!(
        t.etcd_prefix, "/prod/apps",
        "the resource's prefix comes first, as in confd"
    );
    assert_eq!(
        t.servers_dir, "",
        "gets (printf \"/apps/%s/*\" ...): servers right under the service"
    );
    assert_eq!(t.frontends, ["public"]);
    assert_eq!(t.host, None);
    assert_eq!(t.path_prefix.as_deref(), Some("/{service}/"));
    assert!(!t.strip_prefix);
    assert_eq!(t.backend.check.inter, Duration::from_secs(5));
    assert_eq!(t.backend.retries, 3);
    let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["bootstrap", "apps-defaults"]);
    // The template's `cookie ... insert`: every service's backend is sticky.
    let sticky = t
        .backend
        .sticky
        .as_ref()
        .expect("the template's cookie line");
    assert_eq!(sticky.cookie, "SERVERID");
    // The cookie line is warned about once, from the template, not once per rendered service.
    let t = "haproxy.cfg.tmpl";
    assert_warnings(
        &w,
        &[
            ("haproxy.cfg", 2, "daemon", "service manager"),
            (t, 23, "backend {service}_cluster", "not api_cluster"),
            (
                t,
                25,
                "cookie SERVERID insert indirect nocache",
                "[backend.sticky] cookie = \"SERVERID\"; the servers' `cookie` values are not kept (Switchyard derives each server's from its address), so every client is re-pinned once after the move",
            ),
        ],
    );
    assert_check_passes("lsdir-path", &text);
}

#[test]
fn an_lsdir_template_with_ip_and_port_keys_warns_about_the_server_layout() {
    let (c, text, w) = lib_fixture("lsdir-ipport");
    let t = &c.service_trees[0];
    assert_eq!(t.etcd_prefix, "/services/web");
    assert_eq!(
        t.host.as_deref(),
        Some("{service}"),
        "the directory is the host name"
    );
    assert_eq!(t.servers_dir, "backend");
    assert_eq!(c.frontends[0].backend, None);
    let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["web-defaults"]);
    let t = "haproxy.cfg.tmpl";
    assert_warnings(
        &w,
        &[
            ("haproxy.cfg", 7, "frontend webin", "no default_backend"),
            (
                t,
                20,
                "backend {service}_cluster",
                "named after its directory",
            ),
            (
                t,
                21,
                "cookie SERVERID insert indirect nocache",
                "re-pinned once after the move",
            ),
            (
                t,
                22,
                "backend {service}_cluster",
                "servers are read from a directory per server (an lsdir or ls of a computed key, with keys such as ip and port below it); Switchyard reads one key per server whose value is \"host:port\": register them as /services/web/<service>/backend/<server>",
            ),
        ],
    );
    assert_check_passes("lsdir-ipport", &text);
}

#[test]
fn route_and_lsdir_fixtures_through_the_command_line() {
    // The template is found next to the resource, as confd keeps it; stdout passes check.
    for dir in ["lsdir-host", "lsdir-path", "lsdir-ipport", "routes", "sni"] {
        let cfg = fixture(&format!("{dir}/haproxy.cfg"));
        let res = fixture(&format!("{dir}/conf.d/haproxy.toml"));
        let mut args = vec!["--haproxy", cfg.to_str().unwrap()];
        if res.exists() {
            args.extend(["--confd-toml", res.to_str().unwrap()]);
        }
        let o = run(&args);
        assert!(o.status.success(), "{dir}: {o:?}");
        let text = String::from_utf8(o.stdout.clone()).unwrap();
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(
            c.service_trees.len(),
            usize::from(dir.starts_with("lsdir")),
            "{dir}"
        );
        assert!(
            stderr_lines(&o).iter().all(|l| l.starts_with("warning: ")),
            "{dir}"
        );
        assert_check_passes(dir, &text);
    }
}

#[test]
fn malformed_rules_are_one_warning_each() {
    let (c, w) = lib(
        "frontend f\n  bind :8000\n  acl a hdr(host) -i a.com\n  acl e hdr_dom(host) -i .\n  use_backend\n  use_backend b if\n  use_backend b if { }\n  use_backend b if !\n  use_backend b if { path_beg /x\n  use_backend b if a || || a\n  use_backend b if e\n  use_backend %[req.hdr(host)] if a\n  use_backend b foo\n  use_backend nope if a\n  default_backend b\nfrontend t\n  mode tcp\n  bind :8001 ssl crt /x.pem\n  acl s req.ssl_sni -i a.com\n  use_backend b if s\nbackend b\n  server b 127.0.0.1:1\n",
    );
    assert_eq!(c.frontends.len(), 1, "t has nothing left to route by");
    assert!(c.frontends[0].routes.is_empty());
    let lines: Vec<usize> = w
        .iter()
        .map(|w| w.split(':').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 18], "{w:#?}");
    assert!(
        w[9].contains("its backend \"nope\" was not migrated"),
        "{w:#?}"
    );
    assert!(
        w[10].contains("without a default_backend neither is the listener"),
        "{w:#?}"
    );
}

#[test]
fn listen_with_an_address_old_timeouts_maxconn_and_httplog_map() {
    let (c, w) = lib("\
global
    maxconn 4096
    log 127.0.0.1 local0
defaults
    log global
    mode http
    option httplog
    maxconn 2000
    contimeout 5000
    clitimeout 50s
    srvtimeout 1m
listen app 0.0.0.0:8080
    balance roundrobin
    server a 127.0.0.1:9001 check
    server b 127.0.0.2:9001 check
frontend www 127.0.0.1:8081
    maxconn 8000
    default_backend app
");
    let names: Vec<&str> = c.frontends.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["app", "www"]);
    let app = &c.frontends[0];
    assert_eq!(app.bind, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        app.backend.as_deref(),
        Some("app"),
        "a listen is its own backend"
    );
    assert_eq!(app.maxconn, 2000, "defaults' maxconn");
    assert_eq!(app.idle_timeout, Duration::from_secs(50), "clitimeout");
    let www = &c.frontends[1];
    assert_eq!(www.bind, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(www.maxconn, 4096, "its own 8000 is above the global limit");
    let b = c.backend("app").unwrap();
    assert_eq!(b.connect_timeout, Duration::from_secs(5), "contimeout, ms");
    assert_eq!(b.response_timeout, Duration::from_secs(60), "srvtimeout");
    assert_eq!(b.servers, ["127.0.0.1:9001", "127.0.0.2:9001"]);
    assert_eq!(
        c.log.access,
        switchyard::config::AccessFormat::Logfmt,
        "option httplog"
    );
    // Only syslog has no equivalent; httplog, maxconn and the old timeouts are not warned about.
    assert_warnings(
        &w,
        &[("haproxy.cfg", 3, "log 127.0.0.1 local0", "no syslog")],
    );
}

#[test]
fn cookie_insert_becomes_sticky_and_the_other_modes_warn() {
    let text = "\
defaults
    mode http
frontend www
    bind 127.0.0.1:8080
    default_backend app
    use_backend secure_app if { path_beg /s }
    use_backend rewritten if { path_beg /r }
    use_backend prefixed if { path_beg /p }
    use_backend passive if { path_beg /q }
backend app
    cookie SERVERID insert indirect nocache httponly
    server a 127.0.0.1:9001 cookie a check
    server b 127.0.0.1:9002 cookie b check
    server c 127.0.0.1:9003 check cookie c
backend secure_app
    cookie SID insert secure domain .example.com maxidle 30m
    server a 127.0.0.1:9001 cookie a
backend rewritten
    cookie JSESSIONID rewrite
    server a 127.0.0.1:9001 cookie a
backend prefixed
    cookie JSESSIONID prefix nocache
    server a 127.0.0.1:9001 cookie a
backend passive
    cookie JSESSIONID
    server a 127.0.0.1:9001 cookie a
";
    let (c, w) = lib(text);
    let sticky = |name: &str| {
        c.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap()
            .sticky
            .clone()
    };
    let app = sticky("app").expect("insert maps");
    assert_eq!(app.cookie, "SERVERID");
    assert!(app.http_only && !app.secure);
    let s = sticky("secure_app").expect("insert maps");
    assert_eq!(s.cookie, "SID");
    assert!(s.secure);
    for other in ["rewritten", "prefixed", "passive"] {
        assert_eq!(sticky(other), None, "{other}");
    }
    // One line per cookie line; none for the servers' cookie values.
    let f = "haproxy.cfg";
    assert_warnings(
        &w,
        &[
            (
                f,
                11,
                "cookie SERVERID insert indirect nocache httponly",
                "[backend.sticky] cookie = \"SERVERID\"; the servers' `cookie` values are not kept (Switchyard derives each server's from its address), so every client is re-pinned once after the move",
            ),
            (
                f,
                16,
                "cookie SID insert secure domain .example.com maxidle 30m",
                "re-pinned once after the move; not migrated: domain .example.com, maxidle 30m",
            ),
            (
                f,
                19,
                "cookie JSESSIONID rewrite",
                "`rewrite` changes the servers' own cookie",
            ),
            (
                f,
                22,
                "cookie JSESSIONID prefix nocache",
                "`prefix` changes the servers' own cookie",
            ),
            (f, 25, "cookie JSESSIONID", "without `insert`"),
        ],
    );
}

#[test]
fn balance_source_uri_and_hdr_become_consistent_hashing() {
    let text = "\
defaults
    mode http
    balance source
frontend www
    bind 127.0.0.1:8080
    default_backend by_source
    use_backend by_uri if { path_beg /static }
    use_backend by_hdr if { path_beg /api }
backend by_source
    server a 127.0.0.1:9001
backend by_uri
    balance uri
    server a 127.0.0.1:9001
backend by_hdr
    balance hdr(X-User)
    server a 127.0.0.1:9001
backend by_rr
    balance roundrobin
    server a 127.0.0.1:9001
backend by_uri_len
    balance uri len 10
    server a 127.0.0.1:9001
backend by_url_param
    balance url_param userid
    server a 127.0.0.1:9001
frontend raw
    mode tcp
    bind 127.0.0.1:5432
    default_backend pg
backend pg
    mode tcp
    balance hdr(X-User)
    server a 127.0.0.1:5433
";
    let (c, w) = lib(text);
    let hash = |name: &str| {
        let b = c.backend(name).unwrap();
        (b.balance, b.hash_key.clone())
    };
    assert_eq!(
        hash("by_source"),
        (Balance::Hash, Some(HashKey::Source)),
        "from defaults"
    );
    assert_eq!(hash("by_uri"), (Balance::Hash, Some(HashKey::Uri)));
    assert_eq!(
        hash("by_hdr"),
        (Balance::Hash, Some(HashKey::Header("x-user".into())))
    );
    assert_eq!(
        hash("by_rr"),
        (Balance::Roundrobin, None),
        "overrides defaults"
    );
    assert_eq!(hash("by_uri_len"), (Balance::Hash, Some(HashKey::Uri)));
    assert_eq!(hash("by_url_param"), (Balance::Roundrobin, None));
    assert_eq!(hash("pg"), (Balance::Roundrobin, None));
    assert_warnings(
        &w,
        &[
            (
                "haproxy.cfg",
                21,
                "balance uri len 10",
                "options are not migrated",
            ),
            (
                "haproxy.cfg",
                24,
                "balance url_param userid",
                "roundrobin is used",
            ),
            (
                "haproxy.cfg",
                32,
                "balance hdr(X-User)",
                "tcp mode can hash only",
            ),
        ],
    );
    let m = migrate(&Input {
        haproxy: Source {
            name: "haproxy.cfg",
            text,
        },
        confd_toml: None,
        confd_template: None,
        etcd_endpoints: vec![],
    })
    .unwrap();
    assert!(
        m.toml.contains("hash_key = \"header:X-User\""),
        "{}",
        m.toml
    );
    assert_check_passes("hash", &m.toml);
}

// ---------------------------------------------------------------------------------------------
// The corpus: real-world-shaped setups with their expected output.

/// The warnings that were wrong on real configs: none may come back.
const WRONG_WARNINGS: &[&str] = &[
    "combined PEM",
    "split it",
    "no connection limit",
    "no global connection limit",
    "no syslog or access-log format",
    "contimeout: not supported",
    "clitimeout: not supported",
    "srvtimeout: not supported",
];

/// Writes a combined PEM (certificate, then key) at `path`.
fn combined_pem(path: &Path) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem()),
    )
    .unwrap();
}

/// Each directory of tests/fixtures/migrate/corpus holds a haproxy.cfg (and a confd resource
/// and template when confd rendered it) and what `switchyard migrate` prints for it:
/// `expected.toml` (stdout, exit 0) and `expected.stderr` (the warnings; without
/// `expected.toml`, the warnings and the error, exit 1). Every output passes `switchyard
/// check`, with the certificate files it names in place. `SWITCHYARD_BLESS=1` rewrites the
/// expected files (review the diff).
#[test]
fn the_corpus_migrates_as_expected_and_passes_check() {
    const ADMIN: &str = switchyard::config::DEFAULT_ADMIN_LISTEN;
    let corpus = fixture("corpus");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "{dirs:?}");
    let bless = std::env::var_os("SWITCHYARD_BLESS").is_some();
    let (mut ok, mut refused) = (0, 0);
    for dir in &dirs {
        let tag = dir.file_name().unwrap().to_str().unwrap();
        let mut args = vec!["migrate", "--haproxy", "haproxy.cfg"];
        if dir.join("conf.d/haproxy.toml").exists() {
            args.extend(["--confd-toml", "conf.d/haproxy.toml"]);
            args.extend(["--confd-template", "templates/haproxy.cfg.tmpl"]);
        }
        let o = Command::new(BIN)
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        // The admin address is Switchyard's default, whatever it is.
        let stdout = String::from_utf8(o.stdout.clone())
            .unwrap()
            .replace(&format!("listen = \"{ADMIN}\""), "listen = \"<default>\"");
        let stderr = String::from_utf8(o.stderr.clone()).unwrap();
        let (want_toml, want_err) = (dir.join("expected.toml"), dir.join("expected.stderr"));
        if bless {
            if o.status.success() {
                std::fs::write(&want_toml, &stdout).unwrap();
            } else {
                std::fs::remove_file(&want_toml).ok();
            }
            std::fs::write(&want_err, &stderr).unwrap();
        }
        let expected_err = std::fs::read_to_string(&want_err)
            .unwrap_or_else(|e| panic!("{tag}: {}: {e}", want_err.display()));
        assert_eq!(stderr, expected_err, "{tag}: stderr");
        for wrong in WRONG_WARNINGS {
            assert!(!stderr.contains(wrong), "{tag}: {wrong:?} in\n{stderr}");
        }
        let Ok(expected_toml) = std::fs::read_to_string(&want_toml) else {
            assert_eq!(o.status.code(), Some(1), "{tag}: {o:?}");
            assert!(stdout.is_empty(), "{tag}: nothing on stdout");
            assert!(
                stderr.contains("so the result would listen on nothing"),
                "{tag}: {stderr}"
            );
            refused += 1;
            continue;
        };
        assert!(o.status.success(), "{tag}: {o:?}");
        assert_eq!(stdout, expected_toml, "{tag}: stdout");

        // `switchyard check` accepts the output as printed, its certificates in place.
        let text = String::from_utf8(o.stdout.clone()).unwrap();
        let c = Config::from_toml(&text).unwrap();
        assert!(!c.frontends.is_empty(), "{tag}");
        let work = tempdir(&format!("corpus-{tag}"));
        for f in &c.frontends {
            for pair in f.tls.iter().flat_map(|t| &t.certs) {
                assert!(pair.cert.is_relative(), "{tag}: {pair:?}");
                combined_pem(&work.join(&pair.cert));
            }
        }
        std::fs::write(work.join("switchyard.toml"), &text).unwrap();
        let chk = Command::new(BIN)
            .args(["check", "-c", "switchyard.toml"])
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(chk.status.success(), "{tag}: {chk:?}\n{text}");
        std::fs::remove_dir_all(&work).ok();
        ok += 1;
    }
    assert_eq!(refused, 1, "only-backends is the one refused");
    assert!(ok >= 10, "{ok}");
}

#[test]
fn a_frontend_on_the_admin_port_moves_the_admin_server_and_overlapping_binds_warn() {
    let admin: std::net::SocketAddr = switchyard::config::DEFAULT_ADMIN_LISTEN.parse().unwrap();
    let port = admin.port();
    let (c, w) = lib(&format!(
        "frontend stats_like\n  bind *:{port}\n  default_backend b\nfrontend www\n  bind 0.0.0.0:8000\n  bind 127.0.0.1:8000\n  default_backend b\nbackend b\n  server s 127.0.0.1:9000\n"
    ));
    // The frontend keeps its address; the admin server takes the next free port.
    assert_eq!(c.frontends[0].bind.port(), port);
    assert_eq!(c.admin_listen.port(), port + 1);
    assert_eq!(c.admin_listen.ip(), admin.ip());
    // 127.0.0.1:8000 cannot be bound next to 0.0.0.0:8000.
    let binds: Vec<String> = c.frontends.iter().map(|f| f.bind.to_string()).collect();
    assert_eq!(
        binds,
        [format!("0.0.0.0:{port}"), "0.0.0.0:8000".to_string()]
    );
    assert_warnings(
        &w,
        &[
            (
                "haproxy.cfg",
                1,
                &format!("frontend stats_like bind 0.0.0.0:{port}"),
                &format!("it is moved to {}:{}", admin.ip(), port + 1),
            ),
            (
                "haproxy.cfg",
                6,
                "bind 127.0.0.1:8000",
                "0.0.0.0:8000 is taken by frontend www",
            ),
        ],
    );
}

#[test]
fn section_line_addresses_that_are_not_addresses_warn() {
    let (c, w) = lib("\
defaults base
    mode http
frontend a from base
    bind :8000
    default_backend b
frontend c /run/haproxy.sock
    bind :8001
    default_backend b
backend b 127.0.0.1:80
    server s 127.0.0.1:9000
");
    let binds: Vec<String> = c.frontends.iter().map(|f| f.bind.to_string()).collect();
    assert_eq!(binds, ["0.0.0.0:8000", "0.0.0.0:8001"]);
    assert_warnings(
        &w,
        &[
            ("haproxy.cfg", 3, "frontend a from base", "named defaults"),
            (
                "haproxy.cfg",
                6,
                "bind /run/haproxy.sock",
                "only TCP addresses can be migrated",
            ),
            (
                "haproxy.cfg",
                9,
                "backend b 127.0.0.1:80",
                "a backend has no address",
            ),
        ],
    );
}

#[test]
fn httplog_on_one_frontend_turns_the_access_log_on_for_all_and_says_so() {
    let (c, w) = lib("\
frontend a
    bind :8000
    option httplog
    default_backend b
frontend quiet
    bind :8001
    default_backend b
backend b
    server s 127.0.0.1:9000
");
    assert_eq!(c.log.access, switchyard::config::AccessFormat::Logfmt);
    assert_warnings(
        &w,
        &[(
            "haproxy.cfg",
            5,
            "frontend quiet",
            "Switchyard's access log covers every frontend (it is on for a)",
        )],
    );
    // Without httplog/tcplog anywhere, the access log stays off and nothing is said.
    let (c, w) = lib(
        "frontend a\n  bind :8000\n  default_backend b\nbackend b\n  server s 127.0.0.1:9000\n",
    );
    assert_eq!(c.log.access, switchyard::config::AccessFormat::Off);
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn an_lsdir_loop_inside_one_backend_is_its_recursive_etcd_prefix() {
    let cfg = "frontend f\n  bind :8000\n  default_backend pool\nbackend pool\n  server a 127.0.0.1:9000 check\n  server b 127.0.0.2:9000 check\n";
    let res = "[template]\nsrc = \"t\"\nprefix = \"/prod\"\nkeys = [\"/pool\"]\n";
    let migrate_with = |tpl: &str| {
        let m = migrate(&Input {
            haproxy: Source {
                name: "haproxy.cfg",
                text: cfg,
            },
            confd_toml: Some(Source {
                name: "haproxy.toml",
                text: res,
            }),
            confd_template: Some(Source {
                name: "t.tmpl",
                text: tpl,
            }),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
        })
        .unwrap();
        let w: Vec<String> = m.warnings.iter().map(ToString::to_string).collect();
        (Config::from_toml(&m.toml).unwrap(), w)
    };
    // Servers directly in each directory: no warning.
    let (c, w) = migrate_with(
        "frontend f\n  bind :8000\n  default_backend pool\nbackend pool\n{{range $z := lsdir \"/pool\"}}{{range $k := ls (printf \"/pool/%s\" $z)}}\n  server {{$k}} {{getv (printf \"/pool/%s/%s\" $z $k)}} check inter 4s\n{{end}}{{end}}\n",
    );
    let b = c.backend("pool").unwrap();
    assert_eq!(b.etcd_prefix.as_deref(), Some("/prod/pool"));
    assert!(b.servers.is_empty(), "rendered servers are discovered");
    assert_eq!(
        b.check.inter,
        Duration::from_secs(4),
        "the loop's server line"
    );
    assert!(w.is_empty(), "{w:#?}");
    // Servers in a subdirectory of each: the recursion reads more than the template did.
    let (c, w) = migrate_with(
        "frontend f\n  bind :8000\n  default_backend pool\nbackend pool\n{{range $z := lsdir \"/pool\"}}{{range gets (printf \"/pool/%s/backend/*\" $z)}}\n  server {{base .Key}} {{.Value}} check\n{{end}}{{end}}\n",
    );
    assert_eq!(
        c.backend("pool").unwrap().etcd_prefix.as_deref(),
        Some("/prod/pool")
    );
    assert_warnings(
        &w,
        &[(
            "t.tmpl",
            5,
            "servers",
            "not only those in /prod/pool/<dir>/backend/",
        )],
    );
}

#[test]
fn a_maxconn_that_is_not_a_count_warns_and_the_default_stays() {
    let (c, w) = lib(
        "global\n  maxconn 99999999999999999999\nfrontend f\n  bind :8000\n  maxconn 0\n  default_backend b\nbackend b\n  server s 127.0.0.1:9000\n",
    );
    assert_eq!(c.frontends[0].maxconn, switchyard::config::DEFAULT_MAXCONN);
    assert_warnings(
        &w,
        &[
            (
                "haproxy.cfg",
                2,
                "maxconn 99999999999999999999",
                "not a positive number",
            ),
            ("haproxy.cfg", 5, "maxconn 0", "not a positive number"),
        ],
    );
}

#[test]
fn redirects_and_header_rules_map_to_the_traffic_policy() {
    let cfg = "\
frontend web
    bind :80
    bind :443 ssl crt /etc/ssl/site.pem
    http-request redirect scheme https if !{ ssl_fc }
    http-request set-header X-Env prod
    http-request del-header X-Debug
    http-request set-header X-Client %[src]
    http-request set-header X-Maybe 1 if { path_beg /a }
    http-response set-header Strict-Transport-Security \"max-age=31536000\"
    http-response del-header Server
    http-response del-header Connection
    http-request deny
    default_backend app
backend app
    server s1 10.0.0.1:80
";
    let (c, w) = lib(cfg);
    assert_warnings(
        &w,
        &[
            (
                "haproxy.cfg",
                4,
                "http-request redirect scheme https if !{ ssl_fc }",
                "answers 308",
            ),
            (
                "haproxy.cfg",
                7,
                "http-request set-header X-Client %[src]",
                "constant value",
            ),
            (
                "haproxy.cfg",
                8,
                "http-request set-header X-Maybe 1 if { path_beg /a }",
                "no condition",
            ),
            (
                "haproxy.cfg",
                11,
                "http-response del-header Connection",
                "hop-by-hop",
            ),
            (
                "haproxy.cfg",
                12,
                "http-request deny",
                "no request/response rules",
            ),
        ],
    );
    let plain = &c.frontends[0];
    assert_eq!(plain.bind.port(), 80);
    let r = plain.policy.redirect.as_ref().expect("redirect on :80");
    assert_eq!((r.location.as_str(), r.code), ("https://{host}{path}", 308));
    let req = plain.policy.request_headers.as_ref().unwrap();
    assert_eq!(req.set.len(), 1);
    assert_eq!(
        (req.set[0].0.as_str(), req.set[0].1.to_str().unwrap()),
        ("x-env", "prod")
    );
    assert_eq!(req.remove, [http::HeaderName::from_static("x-debug")]);
    let resp = plain.policy.response_headers.as_ref().unwrap();
    assert_eq!(resp.set[0].0.as_str(), "strict-transport-security");
    assert_eq!(resp.set[0].1, "max-age=31536000");
    assert_eq!(resp.remove, [http::header::SERVER]);
    // The TLS listener: `!{ ssl_fc }` never holds there, so no redirect; the header rules stay.
    let tls = &c.frontends[1];
    assert!(tls.tls.is_some());
    assert!(tls.policy.redirect.is_none());
    assert_eq!(tls.policy.request_headers, plain.policy.request_headers);
}

/// `http-request deny` / `tcp-request connection reject` on client addresses (inline
/// `{ src ... }` or a named `src` acl, `if`, `if !`, `unless`) become `allow` and `deny`; the
/// acls they use are not warned as unused; other deny rules and bad values warn, one line each.
#[test]
fn src_deny_rules_map_to_allow_and_deny_lists() {
    let (c, text, w) = lib_fixture("access");
    assert_warnings(
        &w,
        &[
            (
                "haproxy.cfg",
                21,
                "http-request deny if { path_beg /admin }",
                "no request/response rules",
            ),
            (
                "haproxy.cfg",
                22,
                "http-request deny if !{ src 10.0.0.0/33 }",
                "is not a CIDR",
            ),
            (
                "haproxy.cfg",
                24,
                "http-request deny if badflag",
                "has flag -f",
            ),
            (
                "haproxy.cfg",
                33,
                "tcp-request connection reject if !{ src 10.0.0.0/8 }",
                "for mode = \"http\" frontends",
            ),
        ],
    );
    let internal = &c.frontends[0];
    let nets = |s: &Option<switchyard::config::CidrSet>| -> Vec<String> {
        s.as_ref()
            .map(|s| s.networks().iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        nets(&internal.policy.allow),
        ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]
    );
    assert_eq!(nets(&internal.policy.deny), ["10.66.0.0/16"]);
    let public = &c.frontends[1];
    assert_eq!(nets(&public.policy.deny), ["203.0.113.0/24"]);
    assert_eq!(nets(&public.policy.allow), ["0.0.0.0/0", "::/0"]);
    assert!(
        text.contains("allow = [\"10.0.0.0/8\", \"192.168.0.0/16\", \"2001:db8::/32\"]"),
        "{text}"
    );
    assert_check_passes("access", &text);
}
