//! The report: one `Row` per scenario run (its counts, details and problems), the table and
//! details `main` prints (and a full run writes to `benches/results/chaos.txt`).

use super::*;

#[derive(Default)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) label: String,
    /// Every failure counts against the scenario (else they are documented, not judged).
    pub(crate) expect_zero: bool,
    pub(crate) secs: f64,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    /// Faults applied (count) for the reliability table.
    pub(crate) cases: usize,
    /// After the faults: routed set == etcd (time to get there), or the difference.
    pub(crate) set_after: Option<Result<Duration, String>>,
    pub(crate) details: Vec<String>,
    pub(crate) problems: Vec<String>,
}

impl Row {
    pub(crate) fn take_load(&mut self, l: &LoadResult) {
        self.secs = l.elapsed.as_secs_f64();
        self.requests = l.requests;
        self.failed = l.failed;
        self.failures = l.failures.clone();
        if self.expect_zero && l.failed > 0 {
            self.problems.push(format!(
                "{}: {} of {} requests failed (expected 0)",
                self.id, l.failed, l.requests
            ));
        }
    }

    pub(crate) fn take_set(&mut self, r: Result<Duration, String>) {
        if let Err(e) = &r {
            self.problems
                .push(format!("{}: routed set != etcd: {e}", self.id));
        }
        self.set_after = Some(r);
    }

    pub(crate) fn detail(&mut self, s: impl Into<String>) {
        self.details.push(s.into());
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

pub(crate) fn render(rows: &[Row], p: &Params, took: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", common::heading("chaos", p.full));
    let _ = writeln!(
        out,
        "load: {} keep-alive clients, GET / back to back; a failure is any non-200 answer or transport error. \
         checks inter 1s fastinter 200ms downinter 1s rise 2 fall 3 timeout 300ms (tcp; http in d)",
        p.clients
    );
    let _ = writeln!(
        out,
        "cases: a member actions (kill, restart, STOP, CONT); b whole-cluster restarts; c resyncs the \
         storm caused; d one fault; e etcd changes; f reloads; g one shutdown. \
         set after: time until the routed set equalled a quorum read of etcd once the faults stopped"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>9} {:>7} {:>7}  {:<26} failure reasons",
        "scenario", "cases", "requests", "failed", "req/s", "set after (== etcd)"
    );
    for r in rows {
        let reasons = if r.failures.is_empty() {
            "-".to_string()
        } else {
            r.failures
                .iter()
                .map(|(k, n)| format!("{n}x {}", short(k)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let set = match &r.set_after {
            None => "-".to_string(),
            Some(Ok(d)) => format!("ok ({} ms)", d.as_millis()),
            Some(Err(_)) => "MISMATCH".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>9} {:>7} {:>7.0}  {:<26} {reasons}",
            r.id,
            r.cases,
            r.requests,
            r.failed,
            r.requests as f64 / r.secs.max(1e-9),
            set
        );
    }
    for r in rows {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} {}: {} requests, {} failed{}",
            r.id,
            r.label,
            r.requests,
            r.failed,
            if r.expect_zero {
                " (expected 0)"
            } else {
                " (failures documented, not judged)"
            }
        );
        for d in &r.details {
            let _ = writeln!(out, "  {d}");
        }
        if let Some(Err(e)) = &r.set_after {
            let _ = writeln!(out, "  set after: {e}");
        }
        for pr in &r.problems {
            let _ = writeln!(out, "  PROBLEM: {pr}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "bench wall time {:.1} s", took.as_secs_f64());
    out
}

/// A failure reason cut for the table (the full text is in the scenario's details): an HTTP
/// status with its first words, or what the client was doing and the root cause.
pub(crate) fn short(s: &str) -> String {
    let parts: Vec<&str> = s.split(": ").collect();
    let cut = match parts
        .iter()
        .position(|p| p.starts_with("error sending request"))
    {
        // Transport errors: the context before reqwest's wrapper, then the innermost cause.
        Some(i) => {
            let mut v = parts[..i].to_vec();
            v.push(parts[parts.len() - 1]);
            v.join(": ")
        }
        None if parts[0].contains("body failed") => {
            format!("{}: {}", parts[0], parts[parts.len() - 1])
        }
        None => parts[..parts.len().min(2)].join(": "),
    };
    cut.chars().take(90).collect()
}
