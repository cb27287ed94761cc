//! A weighted split between backends (`backends = [{ name, weight }, ...]` on a route or as a
//! frontend's fallback: a canary): which one of them each request goes to. It owns the schedule
//! ([`Split::pick`]): lock-free (one atomic counter per split, rebuilt with the routing table on
//! every snapshot) and exact
//! over each cycle of the weights' sum, spread evenly within it. A pure leaf: it imports nothing
//! from the crate; `route` carries a split in its routes and picks with it.
//!
//! The schedule: request number `n` takes the position `(n * stride) mod total` on the line
//! `0..total` that the backends' weights divide (in order, one interval per backend, a weight
//! of 0 an empty interval). `stride` is coprime with `total`, so each run of `total` requests
//! visits every position once: every backend gets exactly its weight per cycle. `stride` near
//! `total / φ` (Fibonacci hashing) spreads each backend's positions over the cycle, so a 90/10
//! split sends a request to the 10 about every tenth request, not ten in a row. Like Envoy's
//! `weighted_clusters`, a chosen backend with no server up answers `503`: the weights are not
//! shifted to the others (the split is the operator's, health is each backend's own).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One backend of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    /// The index of the backend in the snapshot's backends.
    pub backend: usize,
    /// Its name, for logs and the admin listing.
    pub name: Arc<str>,
    /// Its weight (0: it takes nothing).
    pub weight: u32,
}

/// The backends of a route's split, with the counter its schedule runs on.
#[derive(Debug)]
pub struct Split {
    backends: Vec<Weighted>,
    /// The running sum of the weights (divided by their greatest common divisor): backend `i`
    /// takes the positions `ends[i - 1]..ends[i]`.
    ends: Vec<u64>,
    /// The last of `ends`: the length of one cycle.
    total: u64,
    /// Coprime with `total`.
    stride: u64,
    /// Requests picked so far.
    next: AtomicU64,
}

/// Two splits are the same when their backends and weights are (the counter is no part of it).
impl PartialEq for Split {
    fn eq(&self, other: &Split) -> bool {
        self.backends == other.backends
    }
}

impl Split {
    /// A split over `backends`, in the order given; `None` when the weights sum to 0 (config
    /// validation refuses that).
    pub fn new(backends: Vec<Weighted>) -> Option<Split> {
        let g = backends.iter().fold(0u64, |g, b| gcd(g, b.weight.into()));
        if g == 0 {
            return None;
        }
        let mut sum = 0;
        let ends = backends
            .iter()
            .map(|b| {
                sum += u64::from(b.weight) / g;
                sum
            })
            .collect();
        Some(Split {
            backends,
            ends,
            total: sum,
            stride: stride(sum),
            next: AtomicU64::new(0),
        })
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> &[Weighted] {
        &self.backends
    }

    /// The heaviest backend (the first of the heaviest): what a listing that names one backend
    /// per route shows.
    pub fn heaviest(&self) -> &Weighted {
        self.backends
            .iter()
            .reduce(|a, b| if b.weight > a.weight { b } else { a })
            .expect("a split has a backend")
    }

    /// The backend for the next request.
    pub fn pick(&self) -> &Weighted {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        let pos = ((u128::from(n) * u128::from(self.stride)) % u128::from(self.total)) as u64;
        // The first interval that ends past `pos` (a weight-0 backend's is empty: never taken).
        let i = self.ends.partition_point(|&end| end <= pos);
        &self.backends[i]
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A step coprime with `total`, near `total / φ` (1 when `total` is 1 or 2).
fn stride(total: u64) -> u64 {
    // 1/φ = 0.618...; the integer arithmetic keeps it exact for any u64 total.
    let mut s = ((u128::from(total) * 618_034 / 1_000_000) as u64).max(1);
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Split {
        Split::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Weighted {
                    backend: i,
                    name: format!("b{i}").into(),
                    weight,
                })
                .collect(),
        )
        .unwrap()
    }

    fn counts(s: &Split, n: usize) -> Vec<usize> {
        let mut c = vec![0; s.backends().len()];
        for _ in 0..n {
            c[s.pick().backend] += 1;
        }
        c
    }

    #[test]
    fn each_cycle_gives_each_backend_exactly_its_weight() {
        for weights in [
            &[90, 10][..],
            &[1, 1],
            &[3, 0, 7],
            &[5],
            &[7, 11, 13],
            &[0, 4],
        ] {
            let s = split(weights);
            let cycle: u32 = weights.iter().sum();
            let got = counts(&s, cycle as usize * 3);
            let want: Vec<usize> = weights.iter().map(|&w| w as usize * 3).collect();
            assert_eq!(got, want, "{weights:?}");
        }
    }

    #[test]
    fn the_small_share_is_spread_over_the_cycle() {
        let s = split(&[90, 10]);
        // Reduced to 9:1: within every 10 requests, exactly one goes to the 10.
        for _ in 0..50 {
            assert_eq!(counts(&s, 10), vec![9, 1]);
        }
        // Large coprime weights: no long run of the small one either.
        let s = split(&[999_983, 17]);
        let mut run = 0;
        for _ in 0..100_000 {
            if s.pick().backend == 1 {
                run += 1;
                assert!(run < 2, "two in a row");
            } else {
                run = 0;
            }
        }
    }

    #[test]
    fn zero_weights_take_nothing_and_an_all_zero_split_is_none() {
        let s = split(&[0, 1, 0]);
        assert_eq!(counts(&s, 100), vec![0, 100, 0]);
        assert!(
            Split::new(vec![Weighted {
                backend: 0,
                name: "a".into(),
                weight: 0
            }])
            .is_none()
        );
        assert_eq!(split(&[10, 90, 90]).heaviest().backend, 1);
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let s = split(&[u32::MAX, u32::MAX - 1, 1]);
        let c = counts(&s, 1000);
        assert_eq!(c.iter().sum::<usize>(), 1000);
        assert!(c[0] > 400 && c[1] > 400, "{c:?}");
    }

    #[test]
    fn stride_is_coprime_with_the_total() {
        for total in 1..2000 {
            let s = stride(total);
            assert_eq!(gcd(s, total), 1, "{total}");
            assert!(s < total || total <= 2, "{total}: {s}");
        }
    }
}
