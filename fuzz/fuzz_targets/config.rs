//! Fuzz target: the config parser (`Config::from_toml`: TOML text to a validated `Config`).
//! Oracle: it returns errors, never panics; and what it accepts is safe to use: the snapshot
//! publisher builds from it, the running config serializes (as `/api/v1/config` does), and the
//! etcd endpoints and reconnect backoff work with the validated values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::Config;
use switchyard::etcd::{Backoff, Endpoints};
use switchyard::snapshot::Publisher;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    let p = Publisher::new(&cfg);
    assert_eq!(p.load().backends.len(), cfg.backends.len());
    for f in &cfg.frontends {
        assert!(p.load().route(&f.name).is_some(), "{f:?}");
    }
    serde_json::to_string(&cfg).expect("a validated config serializes");
    if let Some(etcd) = &cfg.etcd {
        let mut e = Endpoints::new(etcd.endpoints.clone());
        e.rotate();
        let mut b = Backoff::new(etcd.backoff_min, etcd.backoff_max);
        for _ in 0..70 {
            assert!(b.next_delay() <= etcd.backoff_max);
        }
    }
});
