//! `switchyard migrate`: the classic confd + HAProxy example becomes an etcd-discovered backend
//! that `switchyard check` accepts; a larger haproxy.cfg maps what it can and warns once per line
//! it cannot, naming the line; bad input exits 1. Runs the binary and calls the library directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use switchyard::config::{Balance, CheckType, Config, Mode, ProxyVersion};
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
    // Only `global` (daemon, maxconn) cannot be mapped; the template's copy of it is not warned
    // about twice (warnings come from the rendered haproxy.cfg).
    let warnings = stderr_lines(&o);
    let want = [
        format!("warning: {}:2: daemon: ", cfg.display()),
        format!("warning: {}:3: maxconn 256: ", cfg.display()),
    ];
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
    assert_eq!(pg.balance, Balance::Roundrobin);
    assert_eq!(pg.response_timeout, Duration::from_secs(7200));
    assert_eq!(pg.check.inter, Duration::from_secs(5));
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
        (22, "acl is_api path_beg /api"),
        (23, "use_backend api if is_api"),
        (37, "listen stats"),
        (46, "server web1 weight 10"),
        (47, "server web2 weight 20"),
        (48, "server sorry backup"),
        (57, "balance source"),
        (59, "server pg1 maxconn 100"),
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
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].starts_with(
        "warning: haproxy.cfg:2: bind :443 crt /etc/ssl/site.pem: a crt file is a combined PEM"
    ));
    assert!(w[1].starts_with("warning: haproxy.cfg:2: bind :443 ciphers HIGH: "));
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
    // Nothing migratable is not an error: a config (admin only) and the warnings, exit 0.
    let dir = tempdir("empty");
    let empty = dir.join("haproxy.cfg");
    std::fs::write(&empty, "global\n    daemon\nfrontend f\n    bind :80\n").unwrap();
    let o = run(&["--haproxy", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let c = Config::from_toml(&String::from_utf8(o.stdout.clone()).unwrap()).unwrap();
    assert!(c.frontends.is_empty());
    let w = stderr_lines(&o);
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[1].contains(":3: frontend f: has no default_backend"),
        "{w:#?}"
    );
}
