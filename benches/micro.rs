//! Criterion micro-benchmarks of the in-process hot paths (README "Micro-benchmarks"), no etcd
//! and no sockets: the balancer's pick over 3, 100 and 10,000 servers (roundrobin, leastconn, random2,
//! and roundrobin with 10% of the servers down), publishing a snapshot after one change at 10,000
//! servers, the initial load of 10,000 servers (publish from empty, and the whole in-process
//! path from an etcd v2/v3 listing body to a published snapshot), and the decoders: one etcd v2
//! long-poll event, one v3 watch message (JSON gateway, base64 keys and values) and the etcd
//! value format (`host:port` or JSON), and a request's route (`route::Table::route`) among 1, 100
//! and 10,000 exact-host, wildcard and path-prefix routes; and `balance = "hash"`: a pick over
//! 10,000 servers and the build of its Maglev table; and the traffic policy's refusals: an
//! `allow` list of 300 CIDRs looked up (against a linear scan of the same networks), and a
//! `rate_limit` bucket taken for one of 1,024 known clients.
//!
//! `cargo bench --bench micro` (about 2 minutes on 2 cores); the medians of the last run are in
//! `benches/results/micro.txt`. Targets: one change published at 10,000 servers <= 1 ms, initial
//! load of 10,000 servers <= 1 s (through etcd; here only the in-process part).

use std::hint::black_box;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::sync::Arc;
use switchyard::config::Config;
use switchyard::discovery::{Mirror, parse_value};
use switchyard::etcd::{v2, v3};
use switchyard::route::{HostMatch, Route, Source as RouteSource, Table};
use switchyard::snapshot::{Publisher, ServerSpec, Source};

const BACKEND: &str = "b";
const PREFIX: &str = "/svc/backend";

fn config(balance: &str) -> Config {
    let hash_key = if balance == "hash" {
        "hash_key = \"uri\""
    } else {
        ""
    };
    Config::from_toml(&format!(
        r#"
[etcd]
[[frontend]]
name = "f"
bind = "127.0.0.1:0"
backend = "{BACKEND}"
[[backend]]
name = "{BACKEND}"
etcd_prefix = "{PREFIX}"
balance = "{balance}"
{hash_key}
"#
    ))
    .expect("bench config is valid")
}

/// Server `i`: key `{PREFIX}/web-NNNNN`, address `10.x.y.z:8080`.
fn name(i: usize) -> String {
    format!("web-{i:05}")
}

fn addr(i: usize) -> String {
    format!(
        "10.{}.{}.{}:8080",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn spec(i: usize) -> ServerSpec {
    ServerSpec {
        name: name(i),
        addr: addr(i),
        weight: 1,
        drain: false,
        source: Source::Etcd,
    }
}

fn specs(n: usize) -> Vec<ServerSpec> {
    (0..n).map(spec).collect()
}

fn publisher(balance: &str, n: usize) -> Publisher {
    let p = Publisher::new(&config(balance));
    assert!(p.publish_discovered(BACKEND, &specs(n)) || n == 0);
    p
}

/// A v2 recursive GET body listing `n` servers, as etcd 3.4 sends it.
fn v2_listing(n: usize) -> String {
    let nodes: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"key":"{PREFIX}/{}","value":"{}","expiration":"2026-11-23T21:05:20.218810547Z","ttl":30,"modifiedIndex":{},"createdIndex":{}}}"#,
                name(i),
                addr(i),
                i + 5,
                i + 5
            )
        })
        .collect();
    format!(
        r#"{{"action":"get","node":{{"key":"{PREFIX}","dir":true,"nodes":[{}],"modifiedIndex":4,"createdIndex":4}}}}"#,
        nodes.join(",")
    )
}

/// A v3 range body (JSON gateway) listing `n` servers.
fn v3_range(n: usize) -> String {
    let kvs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"key":"{}","create_revision":"{}","mod_revision":"{}","version":"1","value":"{}","lease":"7587891234567"}}"#,
                B64.encode(format!("{PREFIX}/{}", name(i))),
                i + 2,
                i + 2,
                B64.encode(addr(i))
            )
        })
        .collect();
    format!(
        r#"{{"header":{{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"{}","raft_term":"2"}},"kvs":[{}],"count":"{n}"}}"#,
        n + 2,
        kvs.join(",")
    )
}

fn v3_put(key: &str, value: &str, rev: i64) -> String {
    format!(
        r#"{{"result":{{"header":{{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"{rev}","raft_term":"2"}},"events":[{{"kv":{{"key":"{}","create_revision":"{rev}","mod_revision":"{rev}","version":"1","value":"{}","lease":"7587891234567"}}}}]}}}}"#,
        B64.encode(key),
        B64.encode(value)
    )
}

fn v3_delete(key: &str, rev: i64) -> String {
    format!(
        r#"{{"result":{{"header":{{"cluster_id":"14443903163313418560","member_id":"11417610130673999598","revision":"{rev}","raft_term":"2"}},"events":[{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"{rev}"}}}}]}}}}"#,
        B64.encode(key)
    )
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for balance in ["roundrobin", "leastconn", "random2"] {
        for n in [3usize, 100, 10_000] {
            let p = publisher(balance, n);
            let snap = p.load();
            let b = &snap.backends[0];
            g.bench_with_input(BenchmarkId::new(balance, n), &n, |bch, _| {
                bch.iter(|| black_box(b.pick()).is_some())
            });
        }
    }
    // Round-robin falls back to a weighted scan when the server under the cursor is down.
    for n in [100usize, 10_000] {
        let p = publisher("roundrobin", n);
        let snap = p.load();
        let b = &snap.backends[0];
        for s in b.servers.iter().step_by(10) {
            s.set_up(false);
        }
        g.bench_with_input(
            BenchmarkId::new("roundrobin_10pct_down", n),
            &n,
            |bch, _| bch.iter(|| black_box(b.pick()).is_some()),
        );
    }
    // What the data plane does per request before the pick.
    let p = publisher("roundrobin", 100);
    let shared = p.shared();
    g.bench_function("snapshot_load_and_route", |bch| {
        bch.iter(|| {
            let snap = shared.load();
            black_box(snap.route("f").map(|b| b.servers.len()))
        })
    });
    g.finish();
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    g.sample_size(10);
    const N: usize = 10_000;

    // One server added, then removed again, alternately: every publish is one change against
    // the previous set of 10,000. The spec lists are built outside the timing (discovery keeps
    // them in its mirror; see `discovery_event_10k` for that path).
    let p = publisher("roundrobin", N);
    let base = specs(N);
    let mut plus_one = base.clone();
    plus_one.push(spec(N));
    let mut add = false;
    g.bench_function("one_change_10k", |bch| {
        bch.iter(|| {
            add = !add;
            assert!(p.publish_discovered(BACKEND, if add { &plus_one } else { &base }));
        })
    });

    // The whole in-process path of one v3 watch event at 10,000 servers: decode the message,
    // apply it to the mirror, build the spec list, publish (PUT and DELETE of one key, in turn).
    let p = publisher("roundrobin", N);
    let mut mirror = Mirror::new(BACKEND, PREFIX);
    let listing = v3::decode_range("e", 200, v3_range(N).as_bytes()).expect("range decodes");
    mirror.replace(&listing.leaves);
    let key = format!("{PREFIX}/{}", name(N));
    let put = v3_put(&key, &addr(N), 20_000);
    let del = v3_delete(&key, 20_001);
    let mut add = false;
    g.bench_function("discovery_event_10k", |bch| {
        bch.iter(|| {
            add = !add;
            let msg = v3::decode_message(if add { put.as_bytes() } else { del.as_bytes() })
                .expect("watch message decodes");
            let v3::Message::Events(events) = msg else {
                panic!("not an event")
            };
            for ev in &events {
                match ev {
                    v3::Event::Put { key, value, .. } => mirror.put(key, value),
                    v3::Event::Delete { key, .. } => mirror.delete(key),
                };
            }
            assert!(p.publish_discovered(BACKEND, mirror.specs()));
        })
    });

    // Initial load: 10,000 servers published into an empty snapshot.
    let cfg = config("roundrobin");
    let all = specs(N);
    g.bench_function("initial_load_10k", |bch| {
        bch.iter_batched(
            || Publisher::new(&cfg),
            |p| {
                assert!(p.publish_discovered(BACKEND, &all));
                p
            },
            BatchSize::LargeInput,
        )
    });

    // Initial load, whole in-process path: the listing body -> decode -> mirror -> publish.
    let body2 = v2_listing(N);
    g.bench_function("initial_load_10k_from_v2_listing", |bch| {
        bch.iter_batched(
            || Publisher::new(&cfg),
            |p| {
                let l = v2::decode_listing("e", 200, Some(N as u64 + 5), body2.as_bytes())
                    .expect("listing decodes");
                let mut m = Mirror::new(BACKEND, PREFIX);
                m.replace(&l.leaves);
                assert!(p.publish_discovered(BACKEND, m.specs()));
                (p, m)
            },
            BatchSize::LargeInput,
        )
    });
    let body3 = v3_range(N);
    g.bench_function("initial_load_10k_from_v3_range", |bch| {
        bch.iter_batched(
            || Publisher::new(&cfg),
            |p| {
                let l = v3::decode_range("e", 200, body3.as_bytes()).expect("range decodes");
                let mut m = Mirror::new(BACKEND, PREFIX);
                m.replace(&l.leaves);
                assert!(p.publish_discovered(BACKEND, m.specs()));
                (p, m)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    // etcd 3.4's answer to a `wait=true` long-poll: one set with its previous node.
    let set = br#"{"action":"set","node":{"key":"/testservice/backend/1","value":"172.17.8.101:55555","expiration":"2026-11-23T21:05:20.218810547Z","ttl":30,"modifiedIndex":1234,"createdIndex":1234},"prevNode":{"key":"/testservice/backend/1","value":"172.17.8.101:55555","expiration":"2026-11-23T21:05:10.118810547Z","ttl":20,"modifiedIndex":1200,"createdIndex":1200}}"#;
    g.bench_function("v2_event_set", |bch| {
        bch.iter(|| v2::decode_wait("e", 200, black_box(set)).expect("event decodes"))
    });
    let expire = br#"{"action":"expire","node":{"key":"/testservice/backend/6","modifiedIndex":21,"createdIndex":19},"prevNode":{"key":"/testservice/backend/6","value":"127.0.0.1:8086","expiration":"2026-11-23T21:04:39.901240555Z","modifiedIndex":20,"createdIndex":19}}"#;
    g.bench_function("v2_event_expire", |bch| {
        bch.iter(|| v2::decode_wait("e", 200, black_box(expire)).expect("event decodes"))
    });
    let put = v3_put("/testservice/backend/1", "172.17.8.101:55555", 1234);
    g.bench_function("v3_watch_put", |bch| {
        bch.iter(|| v3::decode_message(black_box(put.as_bytes())).expect("message decodes"))
    });
    let del = v3_delete("/testservice/backend/1", 1235);
    g.bench_function("v3_watch_delete", |bch| {
        bch.iter(|| v3::decode_message(black_box(del.as_bytes())).expect("message decodes"))
    });
    for (label, raw) in [
        ("value_ipv4", "172.17.8.101:55555"),
        ("value_hostname", "web-3.internal.example:80"),
        ("value_ipv6", "[2001:db8::17]:8080"),
        (
            "value_json",
            r#"{"addr":"172.17.8.101:55555","weight":2,"drain":false}"#,
        ),
    ] {
        g.bench_function(label, |bch| {
            bch.iter(|| parse_value(black_box(raw)).expect("valid value"))
        });
    }
    g.finish();
}

/// `n` routes of one kind: exact hosts (`svc{i}.example.com`), wildcards (`*.svc{i}.example.com`)
/// or path prefixes on one host (`/svc{i}/`), each to its own backend index.
fn routes(kind: &str, n: usize) -> Table {
    let routes = (0..n)
        .map(|i| {
            let (host, prefix) = match kind {
                "exact" => (Some(format!("svc{i}.example.com")), "/".to_string()),
                "wildcard" => (Some(format!("*.svc{i}.example.com")), "/".to_string()),
                _ => (Some("api.example.com".to_string()), format!("/svc{i}/")),
            };
            Route {
                host: HostMatch::parse(host.as_deref()).expect("valid host"),
                path_prefix: prefix,
                strip_prefix: false,
                sni: None,
                backend: i,
                backend_name: Arc::from(format!("svc{i}").as_str()),
                split: None,
                source: RouteSource::Config,
                policy: (),
            }
        })
        .collect();
    Table::new(routes, None, ())
}

/// One request's route: host and path in, backend and forwarded path out (`Table::route`, what
/// the data plane calls), at 1, 100 and 10,000 routes; the request matches the last route
/// added. Target: under 200 ns at 10,000 routes.
fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for kind in ["exact", "wildcard", "prefix"] {
        for n in [1usize, 100, 10_000] {
            let table = routes(kind, n);
            let last = n - 1;
            let (host, path) = match kind {
                "exact" => (format!("svc{last}.example.com"), "/a/b?q=1".to_string()),
                "wildcard" => (format!("www.svc{last}.example.com"), "/a/b".to_string()),
                _ => ("api.example.com".to_string(), format!("/svc{last}/a/b")),
            };
            let path = path.split('?').next().unwrap_or("/").to_string();
            g.bench_with_input(BenchmarkId::new(kind, n), &n, |bch, _| {
                bch.iter(|| {
                    let r = table
                        .route(Some(black_box(host.as_str())), black_box(path.as_str()))
                        .expect("routable");
                    assert_eq!(r.backend, Some(last));
                    r.backend
                })
            });
        }
    }
    // A path that needs normalizing: `..`, an escaped unreserved character, a double slash.
    let table = routes("prefix", 100);
    g.bench_function("prefix_normalized/100", |bch| {
        bch.iter(|| {
            let r = table
                .route(Some("api.example.com"), black_box("/x/../svc99//%61/b"))
                .expect("routable");
            r.backend
        })
    });
    g.finish();
}

/// `balance = "hash"` over 10,000 servers: a request's pick, hashing its key (a 20-byte path)
/// included, with all servers up and with every 10th down (then a key of a down server walks
/// the table to the next one); and the Maglev table's build at publish time (one change at
/// 10,000 servers, as `publish/one_change_10k`). Target: a pick under 100 ns.
fn hash(c: &mut Criterion) {
    use switchyard::balancer::maglev::key_hash;
    let mut g = c.benchmark_group("hash");
    const N: usize = 10_000;
    let keys: Vec<String> = (0..1024)
        .map(|i| format!("/static/img/{i:05}.png"))
        .collect();
    for down in [false, true] {
        let p = publisher("hash", N);
        let snap = p.load();
        let b = &snap.backends[0];
        if down {
            for s in b.servers.iter().step_by(10) {
                s.set_up(false);
            }
        }
        let label = if down { "pick_10pct_down" } else { "pick" };
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new(label, N), &N, |bch, _| {
            bch.iter(|| {
                i = (i + 1) & 1023;
                let h = key_hash(black_box(keys[i].as_str()));
                black_box(b.pick_keyed(Some(h), &[])).is_some()
            })
        });
    }
    g.sample_size(10);
    let p = publisher("hash", N);
    let base = specs(N);
    let mut plus_one = base.clone();
    plus_one.push(spec(N));
    let mut add = false;
    g.bench_function("publish_one_change_10k", |bch| {
        bch.iter(|| {
            add = !add;
            assert!(p.publish_discovered(BACKEND, if add { &plus_one } else { &base }));
        })
    });
    g.finish();
}

/// `allow`/`deny`: a lookup in 300 networks (sorted merged ranges, one binary search) for
/// clients in and out of them, against `ipnet`'s `contains` over the same list one by one; and
/// `rate_limit`: one token from the bucket of one of 1,024 known source addresses (governor's
/// keyed GCRA in our capped store). Target: each well under a microsecond.
fn guard(c: &mut Criterion) {
    use std::net::{IpAddr, Ipv4Addr};
    use switchyard::config::{CidrSet, LimitKey, Limiter};
    let mut g = c.benchmark_group("guard");
    let list: Vec<String> = (0..300u32)
        .map(|i| format!("{}.{}.0.0/16", 10 + i % 200, (i * 7) % 256))
        .collect();
    let set = CidrSet::parse(&list).unwrap();
    let nets: Vec<ipnet::IpNet> = list.iter().map(|l| l.parse().unwrap()).collect();
    let clients: Vec<IpAddr> = (0..1024u32)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)),
            ))
        })
        .collect();
    let mut i = 0usize;
    g.bench_function("cidr_contains/300", |bch| {
        bch.iter(|| {
            i = (i + 1) & 1023;
            set.contains(black_box(clients[i]))
        })
    });
    g.bench_function("cidr_linear_scan/300", |bch| {
        bch.iter(|| {
            i = (i + 1) & 1023;
            let ip = black_box(clients[i]);
            nets.iter().any(|n| n.contains(&ip))
        })
    });
    let limiter = Limiter::new(1_000_000, Duration::from_secs(1), 1_000, 100_000).unwrap();
    let keys: Vec<LimitKey> = clients.iter().map(|&ip| LimitKey::source(ip)).collect();
    g.bench_function("rate_limit_check/1024_sources", |bch| {
        bch.iter(|| {
            i = (i + 1) & 1023;
            limiter.check(black_box(&keys[i])).is_ok()
        })
    });
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = micro;
    config = short();
    targets = pick, publish, decode, route, hash, guard
}
criterion_main!(micro);
