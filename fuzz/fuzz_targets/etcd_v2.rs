//! Fuzz target: etcd v2 keys API answers (`etcd::v2`): the body of a `wait=true` long-poll
//! (an event, or errorCode 401 as HTTP 400) and of a recursive GET listing (HTTP 200, or a
//! 404 "key not found"), then the event or listing applied to a discovery mirror.
//! Oracle: no panic, errors are errors; a listing has no more servers than leaves, and every
//! server the mirror publishes has a valid address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::discovery::{Mirror, parse_addr};
use switchyard::etcd::v2::{self, Wait};

fn check(mirror: &Mirror) {
    for s in mirror.specs() {
        assert!(parse_addr(&s.addr).is_ok(), "{s:?}");
        assert!(!s.name.contains('/'), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut mirror = Mirror::new("b", "/testservice/backend");
    for status in [200, 400] {
        if let Ok(Wait::Event(ev)) = v2::decode_wait("e", status, data) {
            mirror.apply(&ev);
            check(&mirror);
        }
    }
    for (status, index) in [(200, Some(7)), (404, Some(7)), (404, None)] {
        if let Ok(listing) = v2::decode_listing("e", status, index, data) {
            mirror.replace(&listing.leaves);
            assert!(mirror.len() <= listing.leaves.len());
            check(&mirror);
        }
    }
});
