//! Fuzz target: `switchyard migrate`'s readers (`migrate::migrate`): the haproxy.cfg parser,
//! and with it the confd template resource and template. The input is split at NUL bytes:
//! haproxy.cfg, then optionally the confd resource TOML, then optionally the template.
//! Oracle: no panic; a migration that succeeds produces a config that `Config::from_toml`
//! accepts, and every warning names one of the input files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::Config;
use switchyard::migrate::{DEFAULT_ETCD, Input, Source, confd_template_src, migrate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let haproxy = parts.next().unwrap_or("");
    let confd_toml = parts.next();
    let template = parts.next();
    if let Some(t) = confd_toml {
        let _ = confd_template_src(t);
    }
    let names = ["haproxy.cfg", "haproxy.toml", "haproxy.cfg.tmpl"];
    let input = Input {
        haproxy: Source {
            name: names[0],
            text: haproxy,
        },
        confd_toml: confd_toml.map(|text| Source {
            name: names[1],
            text,
        }),
        confd_template: template.map(|text| Source {
            name: names[2],
            text,
        }),
        etcd_endpoints: vec![DEFAULT_ETCD.to_string()],
    };
    if let Ok(m) = migrate(&input) {
        if let Err(e) = Config::from_toml(&m.toml) {
            panic!("migrate produced an invalid config: {e}\n{}", m.toml);
        }
        for w in &m.warnings {
            assert!(names.contains(&w.file.as_str()), "{w}");
        }
    }
});
