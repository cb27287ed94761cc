//! When the process hands freed memory back to the OS. The allocator keeps the pages a burst of
//! connections used, for reuse, until something asks it to collect; this module owns the
//! count of open client connections (both data planes) and the rule that says, on a runtime
//! thread about to sleep, that a burst has ended and collecting is worth its cost. The
//! collecting itself is the binary's (`src/main.rs`): it owns the allocator.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Open client connections, all frontends together.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Connections that must have closed since a thread's last collection (and at least half of
/// those it saw open) before it collects again: a quiet process with a few connections coming
/// and going never pays for a collection, and a steady load pays at most once per halving.
pub const RELEASE_MIN_CLOSED: usize = 256;

thread_local! {
    /// The most connections this thread saw open since its last collection.
    static PEAK: Cell<usize> = const { Cell::new(0) };
    /// A collection happened while connections were still closing: one more is due once the
    /// last of them has closed (what they freed after the collection is given back too).
    static TAIL: Cell<bool> = const { Cell::new(false) };
}

/// A client connection was accepted.
pub(crate) fn opened() {
    OPEN.fetch_add(1, Ordering::Relaxed);
}

/// A client connection closed.
pub(crate) fn closed() {
    OPEN.fetch_sub(1, Ordering::Relaxed);
}

/// Open client connections, all frontends together.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Whether the calling thread, about to sleep, should have the allocator give its free memory
/// back: at least [`RELEASE_MIN_CLOSED`] connections, and at least half of those it last saw
/// open, have closed since its last collection; or, after such a collection, the last of them
/// has closed. Costs a load and a thread-local compare.
pub fn should_release() -> bool {
    decide(open_connections())
}

fn decide(open: usize) -> bool {
    PEAK.with(|peak| {
        let seen = peak.get();
        if open >= seen {
            peak.set(open);
            return false;
        }
        let burst = seen - open >= RELEASE_MIN_CLOSED && open <= seen / 2;
        let tail = open == 0 && TAIL.get();
        if burst || tail {
            peak.set(open);
            TAIL.set(open > 0);
        }
        burst || tail
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_once_a_burst_has_mostly_closed() {
        // Each test runs on its own thread: a fresh peak.
        assert!(!decide(10));
        assert!(!decide(2_000), "a burst opening");
        assert!(!decide(1_500), "a quarter closed");
        assert!(decide(900), "more than half closed");
        assert!(!decide(900), "once per drop");
        assert!(!decide(700), "fewer than RELEASE_MIN_CLOSED since");
        assert!(decide(300), "half again");
        assert!(!decide(100), "fewer than RELEASE_MIN_CLOSED since");
        assert!(decide(0), "the last of the burst closed");
        assert!(!decide(0), "once");
    }

    #[test]
    fn a_small_process_never_collects() {
        for open in [0, 200, 10, 255, 0] {
            assert!(!decide(open), "{open}");
        }
    }
}
