//! The dependency rules between Switchyard's top-level modules (`docs/architecture.md`),
//! checked on the source: every `crate::NAME` path in `src/NAME.rs` or `src/NAME/` is an edge
//! from that module to `NAME`. Dependencies point one way: the only cycle allowed is the
//! snapshot with its balancer and health state (a server's health lives on the snapshot's
//! server object, which the balancer reads), and the leaf modules import no other module but
//! leaves. A new cycle, or a leaf that reaches up, fails here with the edges that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that depend on no runtime module: only on each other.
const LEAVES: &[&str] = &[
    "config",
    "memory",
    "metrics",
    "proxy_protocol",
    "route",
    "signal",
    "sni",
    "split",
    "value",
];

/// The one cycle allowed: the snapshot, the balancer over its servers, and their health.
const ALLOWED_CYCLE: &[&str] = &["balancer", "health", "snapshot"];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

/// The crate's module graph, by top-level module.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| module_of(p))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g = Graph::new();
    for f in &files {
        let from = module_of(f);
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let entry = g.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a, b::c, d as e};`
                    let group = group.split('}').next().unwrap_or("");
                    group
                        .split(',')
                        .filter_map(|item| item.split([':', ' ']).find(|s| !s.is_empty()))
                        .collect()
                } else {
                    vec![
                        rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or(""),
                    ]
                };
                for n in names {
                    if n != from && modules.contains(n) {
                        entry.insert(n.to_string());
                    }
                }
            }
        }
    }
    g
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<BTreeSet<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn edges_within(g: &Graph, comp: &BTreeSet<String>) -> String {
    let mut out = Vec::new();
    for a in comp {
        for b in g.get(a).into_iter().flatten() {
            if comp.contains(b) {
                out.push(format!("{a} -> {b}"));
            }
        }
    }
    out.join(", ")
}

#[test]
fn no_module_cycle_but_the_snapshot_with_its_balancer_and_health() {
    let g = graph();
    assert!(
        g.contains_key("http") && g.contains_key("snapshot"),
        "{g:?}"
    );
    let allowed: BTreeSet<String> = ALLOWED_CYCLE.iter().map(|s| s.to_string()).collect();
    for comp in cycles(&g) {
        assert!(
            comp.is_subset(&allowed),
            "a module cycle: {comp:?}, through {}",
            edges_within(&g, &comp)
        );
    }
}

#[test]
fn leaf_modules_import_only_leaves() {
    let g = graph();
    for leaf in LEAVES {
        for to in g.get(*leaf).into_iter().flatten() {
            assert!(
                LEAVES.contains(&to.as_str()),
                "leaf module {leaf} imports {to}"
            );
        }
    }
}

/// The HTTP/1 codec, the body types and the connection pool work for the data plane without
/// knowing it: they name nothing from the snapshot or the modules over it, nor its types.
#[test]
fn codec_bodies_and_pool_know_nothing_of_the_snapshot() {
    const ABOVE: &[&str] = &[
        "crate::snapshot",
        "crate::balancer",
        "crate::health",
        "crate::discovery",
        "crate::admin",
        "crate::access_log",
        "crate::tcp",
    ];
    const TYPES: &[&str] = &["Snapshot", "BackendSet", "ActiveGuard", "HttpFrontend"];
    let http = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = vec![http.join("body.rs"), http.join("pool.rs")];
    collect(&http.join("h1"), &mut files);
    assert!(files.len() >= 6, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let words: Vec<&str> = code
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .collect();
            for bad in ABOVE {
                assert!(!code.contains(bad), "{}:{}: {line}", f.display(), n + 1);
            }
            for bad in TYPES {
                assert!(!words.contains(bad), "{}:{}: {line}", f.display(), n + 1);
            }
        }
    }
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}
