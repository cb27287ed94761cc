//! The backend queue behind `max_conns_per_server` (HAProxy's server `maxconn` with its backend
//! queue): taking a slot on a server for one request ([`BackendSet::acquire`]), and when every
//! eligible server is at its limit, waiting in the backend's FIFO [`Queue`] for the first slot
//! that frees on ANY eligible server, up to `queue_timeout`.
//!
//! A slot is one request in flight on a server: the server's own in-flight count
//! (`Server::active`), held by the `ActiveGuard` that the response body (`http::guarded`), a
//! tunnel or a tcp relay keeps until it ends. With a limit the count is taken by compare-and-swap
//! below the limit (`Server::try_track`), and the guard tells the queue when it drops
//! ([`Queue::released`]), which wakes the first waiter not yet woken. A waiter is a
//! `tokio::sync::Notify` in a `VecDeque` under a mutex: a `Semaphore` per server cannot wait for
//! "whichever server frees first", and one per backend cannot follow the balance's choice.
//!
//! Fairness: while anyone waits, a new request queues behind them instead of trying a server
//! (HAProxy does the same), so slots go in arrival order. A woken waiter that finds its slot
//! taken by a request that never queued (a race at the moment the queue emptied) goes back to
//! sleep at its place. A waiter dropped while queued (its client left) or timed out leaves the
//! queue, and if it had been woken, passes the wake-up on: no slot is lost.
//!
//! Capacity that comes without a slot being freed (a new server, one back up or out of
//! maintenance, a higher cap after a reload) is found by the first waiter in line, which looks
//! again every [`RECHECK`]; a waiter that gets a slot that way wakes the next one, and so on
//! until one finds none, so the queue moves onto the new capacity in order. A woken waiter picks
//! among the servers published now (not those of the snapshot it arrived in).
//!
//! Without a limit (`max_conns_per_server = 0`) none of this runs: `acquire` is a pick and a
//! plain `Server::track`, one branch more than before.
//!
//! With `balance = "hash"`, a key whose server is full goes to the next server of its Maglev
//! table that has a free slot, or waits for the first slot anywhere (the contract's "first free
//! slot on any eligible server"; HAProxy would queue on the key's own server instead).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::snapshot::{ActiveGuard, BackendSet, Server, Snapshot};

/// How many times a pick may lose the race for a slot it saw free before the request queues
/// (each loss means another request took a slot; the queue then serves them in turn).
const RACE_RETRIES: usize = 4;

/// How often the first waiter in line looks for capacity that came without a release.
pub const RECHECK: Duration = Duration::from_millis(100);

/// One backend's waiters, in arrival order; lives in its `BackendRuntime` (carried from snapshot
/// to snapshot).
#[derive(Debug, Default)]
pub struct Queue {
    waiters: Mutex<Waiters>,
    /// Waiters plus arrivals checking for a slot: read by [`Queue::released`] without the lock
    /// (sequentially consistent with the slot counts, so a release and an arrival always see
    /// each other: see [`Queue::wait`]).
    interest: AtomicUsize,
    /// Requests waiting now, and the most ever seen at once (the stats page's Queue Cur/Max).
    depth: AtomicUsize,
    max_depth: AtomicUsize,
    /// Requests that waited (and were served or timed out), for the stats page.
    queued_total: AtomicU64,
    /// `switchyard_queue_wait_seconds{backend}`, looked up on first use.
    wait_histogram: OnceLock<metrics::Histogram>,
}

#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    list: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// Told to try (a slot freed); cleared when it tries and finds none.
    woken: bool,
    /// Woken by a waiter that found capacity without a release: on success, wakes the next.
    chained: bool,
    notify: Arc<Notify>,
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// No eligible server at all (down, draining, in maintenance, or tried): a quick `503`.
    NoServer,
    /// Servers are there but full, and none freed within `queue_timeout`.
    Timeout(Duration),
}

impl Queue {
    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(SeqCst)
    }

    /// The most requests that ever waited at once.
    pub fn max_depth(&self) -> usize {
        self.max_depth.load(SeqCst)
    }

    /// Requests that had to wait, since start.
    pub fn queued_total(&self) -> u64 {
        self.queued_total.load(SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot of this backend freed (an `ActiveGuard` dropped): the first waiter not yet woken
    /// is told to try. Costs one atomic read while nobody waits.
    pub fn released(&self) {
        if self.interest.load(SeqCst) == 0 {
            return;
        }
        wake_next(&mut self.lock(), false);
    }

    /// `take` when nobody waits and it succeeds; else in line until `take` succeeds after a
    /// wake-up, or `timeout` passes (`None`). `take` runs under the queue's lock, so it must be
    /// quick (a pick and a compare-and-swap); its argument says whether the request waited.
    /// `name` labels the wait histogram.
    pub async fn wait<T>(
        &self,
        name: &str,
        timeout: Duration,
        mut take: impl FnMut(bool) -> Option<T>,
    ) -> Option<T> {
        let (id, notify) = {
            let mut w = self.lock();
            // Counted before `take` reads the slot counts, and a release frees its slot before
            // reading this: one of the two sees the other, so no wake-up is lost.
            self.interest.fetch_add(1, SeqCst);
            if w.list.is_empty()
                && let Some(t) = take(false)
            {
                self.interest.fetch_sub(1, SeqCst);
                return Some(t);
            }
            let id = w.next_id;
            w.next_id += 1;
            let notify = Arc::new(Notify::new());
            w.list.push_back(Entry {
                id,
                woken: false,
                chained: false,
                notify: Arc::clone(&notify),
            });
            let depth = self.depth.fetch_add(1, SeqCst) + 1;
            self.max_depth.fetch_max(depth, SeqCst);
            (id, notify)
        };
        self.queued_total.fetch_add(1, SeqCst);
        let start = Instant::now();
        // Leaves the queue however this future ends: served, timed out, or dropped.
        let mut ticket = Ticket {
            queue: self,
            id,
            served: false,
        };
        let deadline = tokio::time::Instant::from_std(start) + timeout;
        let got = loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break None;
            }
            let woken = tokio::time::timeout_at(deadline.min(now + RECHECK), notify.notified())
                .await
                .is_ok();
            let mut w = self.lock();
            let Some(pos) = w.list.iter().position(|e| e.id == id) else {
                break None; // not reached: only the ticket removes its entry
            };
            // Without a wake-up, only the first in line looks (for capacity without a release).
            if !woken && pos != 0 {
                continue;
            }
            if let Some(t) = take(true) {
                ticket.served = true;
                let e = w.list.remove(pos).expect("the position was just found");
                self.depth.fetch_sub(1, SeqCst);
                if !woken || e.chained {
                    wake_next(&mut w, true);
                }
                break Some(t);
            }
            // Someone outside the queue took the slot: back to sleep at the same place.
            let e = &mut w.list[pos];
            e.woken = false;
            e.chained = false;
        };
        drop(ticket);
        self.wait_histogram
            .get_or_init(
                || metrics::histogram!(crate::metrics::QUEUE_WAIT, "backend" => name.to_string()),
            )
            .record(start.elapsed().as_secs_f64());
        got
    }
}

/// Wakes the first waiter not woken yet, if any; `chained`: it passes its success on.
fn wake_next(w: &mut Waiters, chained: bool) {
    if let Some(e) = w.list.iter_mut().find(|e| !e.woken) {
        e.woken = true;
        e.chained = chained;
        e.notify.notify_one();
    }
}

/// A place in the queue; dropping it leaves the queue. A waiter that was woken and did not take
/// the slot (it timed out or its client left at that moment) hands the wake-up to the next one.
struct Ticket<'a> {
    queue: &'a Queue,
    id: u64,
    served: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut w = self.queue.lock();
        if let Some(i) = w.list.iter().position(|e| e.id == self.id) {
            let e = w.list.remove(i).expect("the position was just found");
            self.queue.depth.fetch_sub(1, SeqCst);
            if e.woken && !self.served {
                wake_next(&mut w, e.chained);
            }
        }
        self.queue.interest.fetch_sub(1, SeqCst);
    }
}

impl BackendSet {
    /// A server for a request and its slot there: the balance's pick among the eligible servers
    /// (untried, available) with a free slot, waiting in the backend's queue while all of them
    /// are full. Without `max_conns_per_server` this is `pick_keyed` and `Server::track`.
    ///
    /// `current` is where the running snapshot is published: a request that waited picks among
    /// the servers of this backend as published when it is woken.
    pub async fn acquire(
        &self,
        key: Option<u64>,
        tried: &[Arc<Server>],
        current: &ArcSwap<Snapshot>,
    ) -> Result<(Arc<Server>, ActiveGuard), NoSlot> {
        let limit = self.config.max_conns_per_server;
        if limit == 0 {
            return match self.pick_keyed(key, tried) {
                Some(s) => Ok((Arc::clone(s), s.track())),
                None => Err(NoSlot::NoServer),
            };
        }
        // Boxed: a request to an unlimited backend does not carry the waiting future's state.
        Box::pin(self.acquire_limited(key, tried, current)).await
    }

    /// A slot on `server` itself, if it has one free (for a request pinned to it by its
    /// sticky cookie; a pinned server at its cap leaves the request to `acquire`, which may
    /// re-pin it, since one server's own queue is not kept).
    pub fn try_slot(&self, server: &Arc<Server>) -> Option<(Arc<Server>, ActiveGuard)> {
        let limit = self.config.max_conns_per_server as usize;
        if limit == 0 {
            return Some((Arc::clone(server), server.track()));
        }
        let guard = server.try_track(limit, &self.runtime)?;
        Some((Arc::clone(server), guard))
    }

    async fn acquire_limited(
        &self,
        key: Option<u64>,
        tried: &[Arc<Server>],
        current: &ArcSwap<Snapshot>,
    ) -> Result<(Arc<Server>, ActiveGuard), NoSlot> {
        let queue = &self.runtime.queue;
        let timeout = self.config.queue_timeout();
        let take = |waited: bool| {
            if !waited {
                return self.take_slot(key, tried);
            }
            // This backend as published now (the same runtime), else as it was.
            let snap = current.load();
            let set = snap
                .backends
                .iter()
                .find(|b| Arc::ptr_eq(&b.runtime, &self.runtime))
                .unwrap_or(self);
            set.take_slot(key, tried)
        };
        match queue.wait(self.name(), timeout, take).await {
            Some(r) => r,
            None => Err(NoSlot::Timeout(timeout)),
        }
    }

    /// A free slot now: `Some(Ok)`; `Some(Err)`: nobody eligible at all, a `503` now (also for
    /// a waiter woken after its servers went down); `None`: all full, so wait.
    fn take_slot(
        &self,
        key: Option<u64>,
        tried: &[Arc<Server>],
    ) -> Option<Result<(Arc<Server>, ActiveGuard), NoSlot>> {
        let limit = self.config.max_conns_per_server as usize;
        if limit == 0 {
            // A reload lifted the cap while this request waited.
            return Some(match self.pick_keyed(key, tried) {
                Some(s) => Ok((Arc::clone(s), s.track())),
                None => Err(NoSlot::NoServer),
            });
        }
        for _ in 0..RACE_RETRIES {
            let Some(s) = self.pick_keyed(key, tried) else {
                return (!self.any_eligible(tried)).then_some(Err(NoSlot::NoServer));
            };
            if let Some(guard) = s.try_track(limit, &self.runtime) {
                return Some(Ok((Arc::clone(s), guard)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A toy slot pool of `n` slots for the queue alone.
    struct Pool {
        used: AtomicUsize,
        n: AtomicUsize,
    }

    impl Pool {
        fn take(&self) -> Option<()> {
            self.used
                .fetch_update(SeqCst, SeqCst, |u| {
                    (u < self.n.load(SeqCst)).then_some(u + 1)
                })
                .ok()
                .map(|_| ())
        }
        fn give(&self, q: &Queue) {
            self.used.fetch_sub(1, SeqCst);
            q.released();
        }
    }

    fn pool(n: usize) -> Arc<Pool> {
        Arc::new(Pool {
            used: AtomicUsize::new(0),
            n: AtomicUsize::new(n),
        })
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_as_slots_free() {
        let q = Arc::new(Queue::default());
        let p = pool(1);
        assert!(
            q.wait("b", Duration::from_secs(5), |_| p.take())
                .await
                .is_some()
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4 {
            let (q, p, tx) = (Arc::clone(&q), Arc::clone(&p), tx.clone());
            tokio::spawn(async move {
                let got = q.wait("b", Duration::from_secs(5), |_| p.take()).await;
                tx.send((i, got.is_some())).unwrap();
            });
            settle().await; // each one queued before the next arrives
        }
        assert_eq!(q.depth(), 4);
        assert_eq!(q.max_depth(), 4);
        for want in 0..4 {
            p.give(&q);
            let (i, ok) = rx.recv().await.unwrap();
            assert_eq!((i, ok), (want, true), "FIFO");
            settle().await;
            assert_eq!(q.depth(), 3 - want);
        }
        assert_eq!(q.queued_total(), 4);
        assert_eq!(q.interest.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn capacity_without_a_release_is_found_and_filled_in_order() {
        let q = Arc::new(Queue::default());
        let p = pool(1);
        p.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (q, p, tx) = (Arc::clone(&q), Arc::clone(&p), tx.clone());
            tokio::spawn(async move {
                let got = q.wait("b", Duration::from_secs(5), |_| p.take()).await;
                tx.send((i, got.is_some())).unwrap();
            });
            settle().await;
        }
        // Two more slots, as a new server would bring: no release tells anyone.
        p.n.store(3, SeqCst);
        let start = Instant::now();
        assert_eq!(rx.recv().await.unwrap(), (0, true));
        assert_eq!(rx.recv().await.unwrap(), (1, true));
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "found by the recheck"
        );
        tokio::time::sleep(RECHECK * 3).await;
        assert!(rx.try_recv().is_err(), "the third has no slot");
        assert_eq!(q.depth(), 1);
        p.give(&q);
        assert_eq!(rx.recv().await.unwrap(), (2, true));
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_and_passes_its_wake_up_on() {
        let q = Arc::new(Queue::default());
        let p = pool(1);
        p.take().unwrap();
        let first = {
            let (q, p) = (Arc::clone(&q), Arc::clone(&p));
            tokio::spawn(async move { q.wait("b", Duration::from_secs(5), |_| p.take()).await })
        };
        settle().await;
        let second = {
            let (q, p) = (Arc::clone(&q), Arc::clone(&p));
            tokio::spawn(async move { q.wait("b", Duration::from_secs(5), |_| p.take()).await })
        };
        settle().await;
        assert_eq!(q.depth(), 2);
        // The first is woken and dropped before it runs: the second gets the slot.
        p.used.fetch_sub(1, SeqCst);
        {
            let mut w = q.lock();
            wake_next(&mut w, false);
        }
        first.abort();
        assert!(first.await.is_err());
        assert_eq!(second.await.unwrap(), Some(()));
        assert_eq!(q.depth(), 0);
        assert_eq!(p.used.load(SeqCst), 1, "one slot, taken once");
        assert_eq!(q.interest.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn a_waiter_times_out_and_a_stolen_slot_puts_it_back_to_sleep() {
        let q = Arc::new(Queue::default());
        let p = pool(1);
        p.take().unwrap();
        let start = Instant::now();
        let waiter = {
            let (q, p) = (Arc::clone(&q), Arc::clone(&p));
            tokio::spawn(async move { q.wait("b", Duration::from_millis(300), |_| p.take()).await })
        };
        settle().await;
        // A slot frees and is taken at once by someone outside the queue.
        p.used.fetch_sub(1, SeqCst);
        p.take().unwrap();
        q.released();
        settle().await;
        assert_eq!(q.depth(), 1, "still waiting");
        assert_eq!(waiter.await.unwrap(), None);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(q.depth(), 0);
        assert_eq!(q.interest.load(SeqCst), 0);
    }
}
