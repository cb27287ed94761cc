//! HAProxy's cookie persistence (`cookie NAME insert ...` in a backend, listen or defaults
//! section) as `[backend.sticky]`. This file owns reading that line and writing the table.
//!
//! Only `insert` maps: Switchyard sets its own cookie, whose values it derives from each
//! server's address (`balancer/sticky.rs`), so the servers' `cookie VALUE` options cannot be
//! kept; the cookie line says once that clients are re-pinned once after the move, and the
//! server options are passed over without a warning each. `indirect` and `nocache` need nothing
//! (the cookie is passed on to the servers; Switchyard's answers carrying it are not cached by
//! a shared cache any more than the server's own), `httponly` is Switchyard's default (so it
//! stays on without it too: no page script has a use for the value) and `secure` is
//! `secure = true`. `rewrite` and `prefix` (and the passive mode without any of the three)
//! change the server's own cookie, which Switchyard does not do: one warning line each.

use super::Warn;
use super::haproxy::{Line, Proxy};

/// The `[backend.sticky]` a backend gets.
#[derive(Debug, Clone, Default)]
pub(super) struct StickyOpts {
    pub(super) cookie: String,
    pub(super) secure: bool,
}

/// `cookie NAME [rewrite|insert|prefix] [options]`.
pub(super) fn cookie(p: &mut Proxy, l: &Line, w: &mut Warn) {
    let name = l.word(1);
    if !crate::config::is_cookie_name(name) {
        w.line(l, "needs a cookie name; not migrated");
        return;
    }
    if p.c.mode == Some("tcp") {
        w.line(l, "tcp mode has no cookies (HAProxy ignores the line too)");
        return;
    }
    let opts = &l.words[2..];
    let mode = opts
        .iter()
        .map(String::as_str)
        .find(|o| matches!(*o, "insert" | "rewrite" | "prefix"));
    match mode {
        Some("insert") => {}
        Some(m) => {
            w.line(
                l,
                format!(
                    "`{m}` changes the servers' own cookie, which Switchyard does not do; not migrated (Switchyard inserts a cookie of its own: [backend.sticky] cookie = NAME)"
                ),
            );
            return;
        }
        None => {
            w.line(
                l,
                "without `insert` HAProxy only reads a cookie the servers set, which Switchyard does not do; not migrated (Switchyard inserts a cookie of its own: [backend.sticky] cookie = NAME)",
            );
            return;
        }
    }
    let mut secure = false;
    let mut dropped = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i].as_str() {
            "insert" | "indirect" | "nocache" | "httponly" => {}
            "secure" => secure = true,
            o @ ("domain" | "maxidle" | "maxlife" | "attr") => {
                dropped.push(format!(
                    "{o} {}",
                    opts.get(i + 1).map_or("", String::as_str)
                ));
                i += 1;
            }
            o => dropped.push(o.to_string()),
        }
        i += 1;
    }
    let mut why = format!(
        "[backend.sticky] cookie = \"{name}\"; the servers' `cookie` values are not kept (Switchyard derives each server's from its address), so every client is re-pinned once after the move"
    );
    if !dropped.is_empty() {
        why.push_str(&format!("; not migrated: {}", dropped.join(", ")));
    }
    w.line(l, why);
    p.c.sticky = Some(StickyOpts {
        cookie: name.to_string(),
        secure,
    });
}

/// The backend's `[backend.sticky]` table, if it has one.
pub(super) fn write(out: &mut String, p: &Proxy) {
    let Some(s) = &p.c.sticky else {
        return;
    };
    out.push_str(&format!("[backend.sticky]\ncookie = \"{}\"\n", s.cookie));
    if s.secure {
        out.push_str("secure = true\n");
    }
}
