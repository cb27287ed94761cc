//! Rate limiting for log lines that repeat: at most one line per key (e.g. per upstream server)
//! per interval, and the next line that is let through says how many were held back. An
//! unreachable server fails every request sent to it; a line for each would drown the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most; past this, keys whose interval has run out are forgotten, so a
/// stream of ever-new keys (servers that come and go) cannot grow the map without bound.
const MAX_KEYS: usize = 4096;

/// One key's window: when its last line was let through, and the lines held back since.
struct Window {
    since: Instant,
    held: u64,
}

/// Per-key limiter: [`LogLimit::admit`] says whether a line may be written now.
pub struct LogLimit {
    interval: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held)`: write the line, and say `held` lines were suppressed since the last one
    /// for `key`; `None`: suppress it (it is counted for the next one).
    pub fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = keys.get_mut(key) {
            if now.saturating_duration_since(w.since) < self.interval {
                w.held += 1;
                return None;
            }
            let held = w.held;
            *w = Window {
                since: now,
                held: 0,
            };
            return Some(held);
        }
        if keys.len() >= MAX_KEYS {
            let interval = self.interval;
            keys.retain(|_, w| now.saturating_duration_since(w.since) < interval);
        }
        keys.insert(
            key.to_string(),
            Window {
                since: now,
                held: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_then_the_count_of_held_ones() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit("a", t0), Some(0));
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(9)), None);
        // Another key has its own window.
        assert_eq!(limit.admit("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.admit("a", t0 + Duration::from_secs(30)), Some(1));
    }

    #[test]
    fn expired_keys_are_forgotten_when_the_map_is_full() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            limit.admit(&i.to_string(), t0);
        }
        limit.admit("new", t0 + Duration::from_secs(2));
        assert_eq!(limit.keys.lock().unwrap().len(), 1);
    }
}
