//! Fuzz target: etcd v3 JSON gateway answers (`etcd::v3`): one line of the watch stream
//! (`decode_message`: events with base64 keys and values, created, progress, compaction, errors)
//! and a range answer (`decode_range`), then the events or listing applied to a discovery mirror.
//! Oracle: no panic, errors are errors; a listing has no more servers than leaves, and every
//! server the mirror publishes has a valid address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::discovery::{Mirror, parse_addr};
use switchyard::etcd::v3::{self, Event, Message};

fn check(mirror: &Mirror) {
    for s in mirror.specs() {
        assert!(parse_addr(&s.addr).is_ok(), "{s:?}");
        assert!(!s.name.contains('/'), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut mirror = Mirror::new("b", "/v3svc/backend");
    if let Ok(Message::Events(events)) = v3::decode_message(data) {
        assert!(!events.is_empty());
        for ev in &events {
            match ev {
                Event::Put { key, value, .. } => mirror.put(key, value),
                Event::Delete { key, .. } => mirror.delete(key),
            };
        }
        check(&mirror);
    }
    if let Ok(listing) = v3::decode_range("e", 200, data) {
        mirror.replace(&listing.leaves);
        assert!(mirror.len() <= listing.leaves.len());
        check(&mirror);
    }
});
