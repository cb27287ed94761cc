//! HAProxy server options (`server`, `default-server` and the confd template's server line):
//! what Switchyard can take over (checks, TLS, PROXY protocol, h2, slowstart, weight, maxconn),
//! and one warning for each of the rest.

use std::time::Duration;

use super::Warn;
use super::haproxy::haproxy_time;

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct CheckOpts {
    pub(super) inter: Option<Duration>,
    pub(super) fastinter: Option<Duration>,
    pub(super) downinter: Option<Duration>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TlsOpts {
    pub(super) ca: Option<String>,
    pub(super) sni: Option<String>,
    pub(super) crt: Option<String>,
    pub(super) verify_none: bool,
}

/// Settings Switchyard has per backend, not per server.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ConnOpts {
    pub(super) send_proxy: Option<&'static str>,
    pub(super) tls: Option<TlsOpts>,
    pub(super) h2: bool,
    pub(super) slowstart: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct ServerOpts {
    pub(super) check: bool,
    pub(super) checks: CheckOpts,
    pub(super) conn: ConnOpts,
    pub(super) weight: Option<u32>,
    /// `maxconn N` (N > 0): the backend's `max_conns_per_server` (the smallest of its servers').
    pub(super) maxconn: Option<u32>,
    pub(super) backup: bool,
    pub(super) disabled: bool,
}

pub(super) const SERVER_ARG_OPTS: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "cookie",
    "crl-file",
    "error-limit",
    "id",
    "init-addr",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "redir",
    "resolve-net",
    "resolve-prefer",
    "resolvers",
    "shard",
    "source",
    "ssl-max-ver",
    "ssl-min-ver",
    "track",
    "verifyhost",
    "ws",
];

/// Applies server options (`words` after name and address) to `o`, warning about the rest.
pub(super) fn server_opts(
    words: &[String],
    o: &mut ServerOpts,
    line: usize,
    who: &str,
    w: &mut Warn,
) {
    let mut i = 0;
    while i < words.len() {
        let opt = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        let mut used = 1;
        let bad = |w: &mut Warn, used: usize, why: &str| {
            let d = words[i..(i + used).min(words.len())].join(" ");
            w.at(line, format!("{who} {d}"), why);
        };
        let time = |a: Option<&str>| a.and_then(haproxy_time).filter(|d| !d.is_zero());
        match opt {
            "check" => o.check = true,
            "no-check" => o.check = false,
            "inter" | "fastinter" | "downinter" => {
                used = 2;
                match time(arg) {
                    Some(d) => match opt {
                        "inter" => o.checks.inter = Some(d),
                        "fastinter" => o.checks.fastinter = Some(d),
                        _ => o.checks.downinter = Some(d),
                    },
                    None => bad(w, 2, "not a positive HAProxy time"),
                }
            }
            "rise" | "fall" => {
                used = 2;
                match arg.and_then(|a| a.parse::<u32>().ok()).filter(|n| *n > 0) {
                    Some(n) if opt == "rise" => o.checks.rise = Some(n),
                    Some(n) => o.checks.fall = Some(n),
                    None => bad(w, 2, "not a positive number"),
                }
            }
            "weight" => {
                used = 2;
                match arg.and_then(|a| a.parse::<u32>().ok()) {
                    Some(n) => o.weight = Some(n),
                    None => bad(w, 2, "not a number"),
                }
            }
            "maxconn" => {
                used = 2;
                match arg.and_then(|a| a.parse::<u32>().ok()) {
                    // HAProxy's `maxconn 0` is no limit.
                    Some(n) => o.maxconn = (n > 0).then_some(n),
                    None => bad(w, 2, "not a number"),
                }
            }
            "backup" => o.backup = true,
            "disabled" => o.disabled = true,
            "enabled" => o.disabled = false,
            "send-proxy" => o.conn.send_proxy = Some("v1"),
            "send-proxy-v2" => o.conn.send_proxy = Some("v2"),
            "no-send-proxy" | "no-send-proxy-v2" => o.conn.send_proxy = None,
            "ssl" => {
                o.conn.tls.get_or_insert_with(TlsOpts::default);
            }
            "no-ssl" => o.conn.tls = None,
            "check-ssl" => {}
            "verify" => {
                used = 2;
                match arg {
                    Some("none") => {
                        o.conn.tls.get_or_insert_with(Default::default).verify_none = true
                    }
                    Some("required") => {
                        o.conn.tls.get_or_insert_with(Default::default).verify_none = false
                    }
                    _ => bad(w, 2, "expected `none` or `required`"),
                }
            }
            "ca-file" => {
                used = 2;
                match arg {
                    Some(p) => o.conn.tls.get_or_insert_with(Default::default).ca = Some(p.into()),
                    None => bad(w, 1, "needs a file"),
                }
            }
            "sni" => {
                used = 2;
                let lit = arg
                    .and_then(|a| a.strip_prefix("str("))
                    .and_then(|a| a.strip_suffix(')'));
                match lit {
                    Some(s) => o.conn.tls.get_or_insert_with(Default::default).sni = Some(s.into()),
                    None => bad(
                        w,
                        2,
                        "only a literal `sni str(NAME)` maps to [backend.tls] sni; Switchyard sends the server's host by default",
                    ),
                }
            }
            "crt" => {
                used = 2;
                match arg {
                    // A combined PEM: Switchyard reads the certificates and the key out of the
                    // same file, so it is both [backend.tls] cert and key.
                    Some(p) => o.conn.tls.get_or_insert_with(Default::default).crt = Some(p.into()),
                    None => bad(w, 1, "needs a file"),
                }
            }
            "proto" => {
                used = 2;
                match arg {
                    Some("h2") => o.conn.h2 = true,
                    _ => bad(w, 2, "only `proto h2` maps (protocol = \"h2\")"),
                }
            }
            "slowstart" => {
                used = 2;
                match time(arg) {
                    Some(d) => o.conn.slowstart = Some(d),
                    None => bad(w, 2, "not a positive HAProxy time"),
                }
            }
            // Switchyard derives each server's cookie value: the backend's `cookie` line says
            // so once (`sticky.rs`), not each server's.
            "cookie" => used = 2,
            _ => {
                used = if SERVER_ARG_OPTS.contains(&opt) { 2 } else { 1 };
                let why = match opt {
                    "maxqueue" => {
                        "the backend's queue has no length limit in Switchyard, only queue_timeout"
                    }
                    "minconn" => {
                        "no dynamic limits in Switchyard; maxconn maps to max_conns_per_server"
                    }
                    "port" | "addr" => {
                        "health checks go to the server's own address; no separate check port"
                    }
                    "observe" | "error-limit" | "on-error" => {
                        "passive checks are set per backend: [backend.passive] error_limit"
                    }
                    o if o.starts_with("agent") => "no agent checks in Switchyard",
                    "resolvers" | "init-addr" | "resolve-prefer" | "resolve-net" => {
                        "host names are resolved by the system resolver at connect time"
                    }
                    _ => "not supported by Switchyard",
                };
                bad(w, used, why);
            }
        }
        i += used;
    }
}
