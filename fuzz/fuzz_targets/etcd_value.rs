//! Fuzz target: the etcd value decoder (`discovery::parse_value`: `host:port`, or JSON
//! `{"addr":..,"weight":..,"drain":..}`), and the mirror that stores what it accepts.
//! Oracle: no panic; an accepted value has a valid address and a weight of at most 256, and
//! round-trips (its address alone, and the value written back as JSON, decode to the same value);
//! the mirror holds the key exactly when the value is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::discovery::{Mirror, Value, parse_addr, parse_value};

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let parsed = parse_value(&raw);

    let mut mirror = Mirror::new("b", "/svc");
    mirror.put("/svc/1", &raw);
    let specs: Vec<_> = mirror.specs().collect();
    assert_eq!(specs.len(), parsed.is_ok() as usize, "{raw:?}: {parsed:?}");

    let Ok(v) = parsed else { return };
    assert!(v.weight <= 256, "{raw:?}: {v:?}");
    assert!(parse_addr(&v.addr).is_ok(), "{raw:?}: {v:?}");
    assert_eq!(
        parse_value(&v.addr),
        Ok(Value {
            addr: v.addr.clone(),
            weight: 1,
            drain: false
        }),
        "{raw:?}"
    );
    let json = serde_json::json!({"addr": v.addr, "weight": v.weight, "drain": v.drain});
    assert_eq!(parse_value(&json.to_string()).as_ref(), Ok(&v), "{raw:?}");
    assert_eq!((specs[0].name.as_str(), &specs[0].addr), ("1", &v.addr));
});
