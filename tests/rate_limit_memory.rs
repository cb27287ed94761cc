//! A rate limit's memory under a flood of distinct client addresses (README, "Rate limits"):
//! 1,000,000 distinct sources through one limit leave at most `MAX_RATE_LIMIT_KEYS` keys, and
//! the process's RSS grows by less than the documented cap. A test binary of its own, with one
//! test, so that nothing else in the process moves its RSS.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use switchyard::config::{LimitKey, Limiter, MAX_RATE_LIMIT_KEYS};

/// The cap the README states for one limit's store, whatever the number of sources.
const RSS_CAP_KIB: u64 = 24 * 1024;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_million_distinct_sources_stay_under_the_key_and_memory_caps() {
    let before = rss_kib();
    let l = Limiter::new(100, Duration::from_secs(1), 200, MAX_RATE_LIMIT_KEYS).unwrap();
    for i in 0..1_000_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let _ = l.check(&LimitKey::source(ip));
    }
    let grown = rss_kib().saturating_sub(before);
    println!(
        "1,000,000 distinct sources: {} keys held (cap {MAX_RATE_LIMIT_KEYS}), RSS +{grown} KiB",
        l.keys()
    );
    // Racing adders may overshoot the key cap by a few; this test adds from one thread.
    assert!(l.keys() <= MAX_RATE_LIMIT_KEYS, "{} keys", l.keys());
    assert!(grown < RSS_CAP_KIB, "RSS grew by {grown} KiB");
}
