//! A one-shot signal (shutdown, a server's drain timeout) that the data plane can poll on every
//! wake-up for the price of an atomic load.
//!
//! NOTE: written here rather than using `CancellationToken::cancelled()`, because that future
//! takes two mutexes each time it is polled (the token's tree node and its `Notify`'s waiter
//! list), and the data plane polls it on every read and write of every connection: it was 3% of
//! the instructions per proxied request. Registering one boxed `cancelled` future per watch
//! instead was still an allocation and both locks per client connection (about 700
//! instructions, 2% of a one-request connection). A [`Watch`] puts its waker in the signal's
//! slab once per waker, under one uncontended lock, and otherwise only reads the atomic flag.
//!
//! A shutdown signal may be fired as a handoff ([`Signal::fire_handoff`]): another process now
//! accepts on the same listening sockets (a takeover, `takeover.rs`), so a connection that
//! waits for a request answers one more, with a close, instead of closing under a client that
//! may be sending it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Fired once, seen by every [`Watch`]. Clones share the signal.
#[derive(Clone, Debug, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    fired: AtomicBool,
    /// Set before `fired` by `fire_handoff`.
    handoff: AtomicBool,
    /// The wakers of the watches that wait, each under the key its watch holds. Drained when
    /// the signal fires; nothing is added after that.
    waiting: Mutex<Slab<Waker>>,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Fires the signal: every watch resolves (and wakes its task).
    pub fn fire(&self) {
        // The flag first: a watch that takes the lock after us sees it and adds no waker.
        self.0.fired.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.waiting().drain().collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Fires the signal as a handoff: another process serves the same sockets from now on.
    pub fn fire_handoff(&self) {
        self.0.handoff.store(true, Ordering::Release);
        self.fire();
    }

    /// Whether the signal fired as a handoff.
    pub fn is_handoff(&self) -> bool {
        self.0.handoff.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal fires.
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.clone(),
            key: None,
            waker: None,
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Slab<Waker>> {
        // Nothing panics while holding it (slab operations and clones of wakers).
        self.0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves once its [`Signal`] fires. Polling it again with the same waker costs one atomic
/// load; a new waker is stored (under the signal's lock) once.
pub struct Watch {
    signal: Signal,
    /// Where our waker sits in the signal's slab, once stored.
    key: Option<usize>,
    /// The waker the signal holds for us.
    waker: Option<Waker>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("fired", &self.signal.is_fired())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Whether the signal fired, without registering for a wake-up.
    pub fn is_fired(&self) -> bool {
        self.signal.is_fired()
    }

    /// Whether the signal fired as a handoff (`Signal::fire_handoff`).
    pub fn is_handoff(&self) -> bool {
        self.signal.is_handoff()
    }

    /// Whether the signal fired; if not, the task of `cx` is woken when it does.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.signal.is_fired() {
            return true;
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        let mut waiting = self.signal.waiting();
        // Under the lock: either `fire` has not drained the slab yet (and will wake the waker
        // stored here, and our key is still ours), or the flag is set.
        if self.signal.is_fired() {
            return true;
        }
        let waker = cx.waker().clone();
        match self.key {
            Some(k) => waiting[k] = waker.clone(),
            None => self.key = Some(waiting.insert(waker.clone())),
        }
        drop(waiting);
        self.waker = Some(waker);
        false
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let mut waiting = self.signal.waiting();
            // Once fired, the slab was drained and the key may not be ours any more.
            if !self.signal.is_fired() {
                waiting.try_remove(k);
            }
        }
    }
}

impl Future for Watch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.poll_fired(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_watch_resolves_when_fired_later_or_before() {
        let s = Signal::new();
        let mut w = s.watch();
        // Registers, then stays pending on repeated polls.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut w)
                .await
                .is_err()
        );
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            s2.fire();
        });
        tokio::time::timeout(Duration::from_secs(5), &mut w)
            .await
            .expect("woken by fire");
        assert!(s.is_fired());
        // A watch made after the fact resolves at once.
        tokio::time::timeout(Duration::from_millis(1), s.watch())
            .await
            .expect("already fired");
    }

    #[tokio::test]
    async fn a_watch_moved_to_another_task_is_still_woken() {
        let s = Signal::new();
        let mut w = s.watch();
        assert!(
            tokio::time::timeout(Duration::from_millis(5), &mut w)
                .await
                .is_err()
        );
        // Another task (another waker) takes it over.
        let t = tokio::spawn(w);
        tokio::time::sleep(Duration::from_millis(10)).await;
        s.fire();
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("the new task was woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_handoff_fires_and_says_so() {
        let s = Signal::new();
        let w = s.watch();
        assert!(!w.is_handoff());
        s.fire_handoff();
        assert!(w.is_fired() && w.is_handoff());
        tokio::time::timeout(Duration::from_millis(1), w)
            .await
            .expect("fired");
        let plain = Signal::new();
        plain.fire();
        assert!(!plain.is_handoff());
    }

    #[tokio::test]
    async fn dropped_watches_leave_no_waker_behind() {
        let s = Signal::new();
        for _ in 0..3 {
            let mut w = s.watch();
            assert!(
                tokio::time::timeout(Duration::from_millis(1), &mut w)
                    .await
                    .is_err()
            );
        }
        assert!(s.waiting().is_empty());
        // One still waiting is woken, and the slab is empty after.
        let mut kept = s.watch();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut kept)
                .await
                .is_err()
        );
        assert_eq!(s.waiting().len(), 1);
        s.fire();
        tokio::time::timeout(Duration::from_secs(5), &mut kept)
            .await
            .expect("woken by fire");
        assert!(s.waiting().is_empty());
    }
}
