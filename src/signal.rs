//! A one-shot signal (shutdown, a server's drain timeout) that the data plane can poll on every
//! wake-up for the price of an atomic load.
//!
//! NOTE: written here rather than using `CancellationToken::cancelled()` directly, because that
//! future takes two mutexes each time it is polled (the token's tree node and its `Notify`'s
//! waiter list), and the data plane polls it on every read and write of every connection: it
//! was 3% of the instructions per proxied request. [`Watch`] registers with the token once per
//! waker and otherwise only reads the atomic flag that [`Signal::fire`] sets before it cancels.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Fired once, seen by every [`Watch`]. Clones share the signal.
#[derive(Clone, Debug, Default)]
pub struct Signal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    fired: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Fires the signal: every watch resolves (and wakes its task).
    pub fn fire(&self) {
        // The flag first: a watch woken by the token must see it.
        self.0.fired.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal fires.
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.clone(),
            notified: None,
            waker: None,
        }
    }
}

/// Resolves once its [`Signal`] fires. Polling it again with the same waker costs one atomic
/// load; a new waker re-registers (under the token's locks) once.
pub struct Watch {
    signal: Signal,
    notified: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The waker the token holds for us.
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

    /// Whether the signal fired; if not, the task of `cx` is woken when it does.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.signal.is_fired() {
            return true;
        }
        // Still registered for this waker: `fire` sets the flag before it wakes us, so the
        // load above sees it when that happens.
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(self.signal.0.token.clone().cancelled_owned()));
        if notified.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.waker = Some(cx.waker().clone());
        false
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
}
