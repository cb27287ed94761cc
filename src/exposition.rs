//! Metric families that describe the running snapshot, written at each scrape straight from it:
//! `switchyard_server_up`, `switchyard_server_admin_state`, `switchyard_backend_servers` and
//! `switchyard_queue_depth` (backends with `max_conns_per_server`); and
//! the zero series of the counters that alerts and the dashboard divide or compare, registered
//! for every backend before the recorder renders ([`register_zeros`]).
//!
//! They are not kept in the metrics recorder, because the recorder cannot forget a series: a
//! server removed from etcd would report `switchyard_server_up 0` until the process restarts, and
//! a dashboard that averages the gauge would count it as down. Written from the snapshot, a
//! removed server's series and a removed backend's series are simply absent from the next scrape
//! (Prometheus marks them stale), and an empty backend still has its zeros, so the "no server up"
//! alert can fire for it.

use std::fmt::Write;

use crate::metrics::{
    BACKEND_SERVERS, DISCOVERY_INVALID_VALUES, DISCOVERY_RESYNCS, QUEUE_DEPTH, QUEUE_WAIT,
    REQUESTS_REFUSED, RETRIES, SERVER_ADMIN_STATE, SERVER_UP,
};
use crate::snapshot::{AdminState, Server, Snapshot};
use crate::stats::Refusal;

/// The states of `switchyard_backend_servers`, in the order written.
const SERVER_STATES: [&str; 4] = ["up", "down", "draining", "maint"];
/// The states of `switchyard_server_admin_state`, as the runtime API names them.
const ADMIN_STATES: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

/// Resync reasons of `switchyard_discovery_resyncs_total` (`discovery/watch.rs`).
const RESYNC_REASONS: [&str; 4] = ["start", "index_cleared", "compacted", "reconnect"];

/// Registers at 0 the counters that would otherwise appear only on their first increment:
/// `switchyard_retries_total{backend}` for every backend, `switchyard_queue_wait_seconds{backend}`
/// for those with `max_conns_per_server`, and for backends fed by etcd
/// `switchyard_discovery_invalid_values_total{backend}` and the resync reasons. A series that
/// exists from the start lets `rate()` and `increase()` see its first increment. Registering an
/// existing series changes nothing, so this runs before each rendering.
pub fn register_zeros(snap: &Snapshot) {
    let mut etcd = false;
    for b in &snap.backends {
        metrics::counter!(RETRIES, "backend" => b.name().to_string()).increment(0);
        if b.config.max_conns_per_server > 0 {
            // A histogram handle registers its (empty) series.
            drop(metrics::histogram!(QUEUE_WAIT, "backend" => b.name().to_string()));
        }
        if b.config.etcd_prefix.is_some() {
            etcd = true;
            metrics::counter!(DISCOVERY_INVALID_VALUES, "backend" => b.name().to_string())
                .increment(0);
        }
    }
    // Each frontend's policy refusals, for the reasons its policies can give.
    for (frontend, table) in &snap.routes {
        let policies =
            std::iter::once(table.policy()).chain(table.routes().iter().map(|r| &r.policy));
        let (mut denied, mut limited, mut large) = (false, false, false);
        for p in policies {
            denied |= p.allow.is_some() || p.deny.is_some();
            limited |= p.rate_limit.is_some();
            large |= p.max_body_size.is_some();
        }
        for (on, reason) in [
            (denied, Refusal::Denied),
            (limited, Refusal::RateLimited),
            (large, Refusal::BodyTooLarge),
        ] {
            if on {
                metrics::counter!(REQUESTS_REFUSED,
                    "frontend" => frontend.clone(), "reason" => reason.as_str())
                .increment(0);
            }
        }
    }
    if etcd {
        for reason in RESYNC_REASONS {
            metrics::counter!(DISCOVERY_RESYNCS, "reason" => reason).increment(0);
        }
    }
}

/// Appends the three families, HELP and TYPE lines included, to `out` (the recorder's rendering).
pub fn append(snap: &Snapshot, out: &mut String) {
    // `write!` into a String cannot fail.
    let _ = write_families(snap, out);
}

fn write_families(snap: &Snapshot, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "# HELP {SERVER_UP} 1 while the server passes its health checks, else 0; servers of the running configuration only (a removed server's series ends)."
    )?;
    writeln!(out, "# TYPE {SERVER_UP} gauge")?;
    for b in &snap.backends {
        for s in &b.servers {
            let up = u8::from(s.is_up());
            writeln!(
                out,
                "{SERVER_UP}{{backend=\"{}\",server=\"{}\"}} {up}",
                Escaped(b.name()),
                Escaped(&s.addr)
            )?;
        }
    }
    writeln!(
        out,
        "# HELP {SERVER_ADMIN_STATE} 1 for the server's administrative state (ready, drain, maint: the runtime API's and the etcd value's), 0 for the others."
    )?;
    writeln!(out, "# TYPE {SERVER_ADMIN_STATE} gauge")?;
    for b in &snap.backends {
        for s in &b.servers {
            let current = s.admin();
            for state in ADMIN_STATES {
                writeln!(
                    out,
                    "{SERVER_ADMIN_STATE}{{backend=\"{}\",server=\"{}\",state=\"{}\"}} {}",
                    Escaped(b.name()),
                    Escaped(&s.addr),
                    state.as_str(),
                    u8::from(state == current)
                )?;
            }
        }
    }
    writeln!(
        out,
        "# HELP {BACKEND_SERVERS} Servers of each backend by state (up, down, draining, maint), from the running snapshot; every state of every backend, zeros included."
    )?;
    writeln!(out, "# TYPE {BACKEND_SERVERS} gauge")?;
    for b in &snap.backends {
        let mut counts = [0usize; 4];
        for s in &b.servers {
            counts[state_index(s)] += 1;
        }
        // Removed servers still finishing requests.
        counts[2] += b.draining.len();
        for (state, n) in SERVER_STATES.iter().zip(counts) {
            writeln!(
                out,
                "{BACKEND_SERVERS}{{backend=\"{}\",state=\"{state}\"}} {n}",
                Escaped(b.name())
            )?;
        }
    }
    let limited = || {
        snap.backends
            .iter()
            .filter(|b| b.config.max_conns_per_server > 0)
    };
    if limited().next().is_some() {
        writeln!(
            out,
            "# HELP {QUEUE_DEPTH} Requests waiting now for a server slot (max_conns_per_server), by backend; backends with a limit only."
        )?;
        writeln!(out, "# TYPE {QUEUE_DEPTH} gauge")?;
        for b in limited() {
            writeln!(
                out,
                "{QUEUE_DEPTH}{{backend=\"{}\"}} {}",
                Escaped(b.name()),
                b.runtime.queue.depth()
            )?;
        }
    }
    Ok(())
}

/// A server's place in [`SERVER_STATES`]: maintenance counts as `maint` only, whatever its
/// checks last said.
fn state_index(s: &Server) -> usize {
    if s.is_draining() {
        2
    } else if s.admin() == AdminState::Maint {
        3
    } else if s.is_up() {
        0
    } else {
        1
    }
}

/// A label value escaped as the text exposition format requires: backslash, double quote and
/// line feed.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            Escaped("a\\b\"c\nd").to_string(),
            "a\\\\b\\\"c\\nd",
            "backslash, quote and newline"
        );
        assert_eq!(Escaped("svc-1.example").to_string(), "svc-1.example");
    }
}
