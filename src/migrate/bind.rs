//! `bind` lines of haproxy.cfg (and the address on a HAProxy 1.x `listen NAME ADDR:PORT` line):
//! the addresses Switchyard can listen on, and the options that map (`ssl`, `crt`, `alpn`,
//! `accept-proxy`); one warning for each other option or address.

use std::net::SocketAddr;

use super::Warn;
use super::haproxy::{Bind, Line, Proxy};

/// A bind address as Switchyard wants it, or why not.
pub(super) fn bind_addr(raw: &str) -> Result<SocketAddr, String> {
    let mut a = raw;
    for p in ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"] {
        if let Some(rest) = a.strip_prefix(p) {
            a = rest;
        }
    }
    if a.starts_with('/') || a.contains('@') {
        return Err("only TCP addresses can be migrated".to_string());
    }
    if a.contains('$') {
        return Err("environment variables are not expanded; write the address".to_string());
    }
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| "no port (HAProxy binds to the client's port range)".to_string())?;
    if port.contains('-') {
        return Err("port ranges are not supported; one frontend per port".to_string());
    }
    let host = match host {
        "" | "*" | "0.0.0.0" => "0.0.0.0".to_string(),
        "::" | "[::]" => "[::]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("{host}:{port}")
        .parse()
        .map_err(|_| "not an ip:port address (host names are not allowed in bind)".to_string())
}

pub(super) fn bind(p: &mut Proxy, l: &Line, w: &mut Warn) {
    let mut crt = Vec::new();
    let mut ssl = false;
    let mut alpn = None;
    let mut accept_proxy = false;
    let opts = &l.words[2.min(l.words.len())..];
    let mut i = 0;
    while i < opts.len() {
        let o = opts[i].as_str();
        let arg = opts.get(i + 1).cloned();
        let mut used = 1;
        match o {
            "ssl" => ssl = true,
            "accept-proxy" => accept_proxy = true,
            "crt" => {
                used = 2;
                match arg {
                    // A combined PEM (chain and key in one file): Switchyard reads the
                    // certificates and the key out of the same file, so it is both.
                    Some(f) => crt.push(f),
                    None => w.at(l.no, format!("bind {} crt", l.word(1)), "needs a file"),
                }
            }
            "alpn" => {
                used = 2;
                alpn = arg.map(|a| a.split(',').map(ToString::to_string).collect());
            }
            _ => {
                const ARG: &[&str] = &[
                    "backlog",
                    "ca-file",
                    "ciphers",
                    "ciphersuites",
                    "crl-file",
                    "crt-list",
                    "curves",
                    "ecdhe",
                    "gid",
                    "group",
                    "id",
                    "interface",
                    "level",
                    "maxconn",
                    "mode",
                    "mss",
                    "name",
                    "namespace",
                    "nice",
                    "npn",
                    "process",
                    "proto",
                    "severity-output",
                    "sigalgs",
                    "client-sigalgs",
                    "ssl-max-ver",
                    "ssl-min-ver",
                    "tcp-ut",
                    "thread",
                    "uid",
                    "user",
                    "verify",
                ];
                if ARG.contains(&o) {
                    used = 2;
                }
                let d = opts[i..(i + used).min(opts.len())].join(" ");
                w.at(
                    l.no,
                    format!("bind {} {d}", l.word(1)),
                    "bind option not supported by Switchyard",
                );
            }
        }
        i += used;
    }
    if ssl && crt.is_empty() {
        w.line(
            l,
            "`ssl` without `crt`: no certificate to serve; bind not migrated",
        );
        return;
    }
    if !ssl && !crt.is_empty() {
        w.line(
            l,
            "`crt` without `ssl`: TLS is off in HAProxy too; the certificate is ignored",
        );
        crt.clear();
    }
    for raw in l.word(1).split(',') {
        match bind_addr(raw) {
            Ok(addr) => p.binds.push(Bind {
                line: l.no,
                addr,
                crt: crt.clone(),
                ssl,
                alpn: alpn.clone(),
                accept_proxy,
            }),
            Err(why) => w.at(
                l.no,
                format!("bind {raw}"),
                format!("{why}; bind not migrated"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(bind_addr("*:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(bind_addr(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(bind_addr(":::443").unwrap().to_string(), "[::]:443");
        assert_eq!(
            bind_addr("ipv4@10.0.0.1:80").unwrap().to_string(),
            "10.0.0.1:80"
        );
        assert!(bind_addr("/var/run/x.sock").is_err());
        assert!(bind_addr(":8000-8010").is_err());
    }
}
