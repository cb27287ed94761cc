//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016): a lookup table of prime size M, filled at publish time by letting
//! each server claim slots in its own pseudo-random permutation of the table, so that a pick is
//! one hash and one slot read, and adding or removing one of N servers moves about 1/N of keys.
//!
//! Weighted as Envoy's Maglev is: in each round of the fill a server claims `weight / max
//! weight` slots (carried over as credit), so its share of the table follows its weight.
//!
//! Written here rather than taken from crates.io: the Maglev crates there (`maglev`,
//! `maglev-hash`, the one in `ketama-hash-ring`) have no weights, and ketama (`pingora-ketama`)
//! is a binary search over 160 points per server, not one slot read.

use std::hash::{BuildHasher, Hash};

/// The smallest table: Maglev's paper and Envoy use 65537 (prime), good for up to ~650 servers
/// at the recommended 100 slots per server.
pub const MIN_TABLE_SIZE: usize = 65_537;

/// Slots per server that the table size aims at: with fewer, the shares of the servers get
/// uneven (the paper measures the imbalance against M / N).
const SLOTS_PER_SERVER: usize = 100;

/// Seeds of the hashes: fixed, so the same servers give the same table in every process, and
/// a key lands on the same server after a restart.
const SEED_OFFSET: u64 = 0x5357_4954_4348_5944; // "SWITCHYD"
const SEED_SKIP: u64 = 0x4d41_474c_4556_3031; // "MAGLEV01"
const SEED_KEY: u64 = 0x4b45_5953_5f5f_3031; // "KEYS__01"

/// The lookup table: slot -> index into the servers it was built from.
#[derive(Debug)]
pub struct Table {
    slots: Vec<u32>,
}

fn hash_with(seed: u64, v: impl Hash) -> u64 {
    foldhash::quality::FixedState::with_seed(seed).hash_one(v)
}

/// The hash of a request's key (a client address, a path, a header or cookie value).
#[inline]
pub fn key_hash(key: impl Hash) -> u64 {
    hash_with(SEED_KEY, key)
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The table size for `n` servers: a prime of at least [`MIN_TABLE_SIZE`] and
/// [`SLOTS_PER_SERVER`] slots per server.
pub fn table_size(n: usize) -> usize {
    let mut m = MIN_TABLE_SIZE.max(n.saturating_mul(SLOTS_PER_SERVER));
    while !is_prime(m) {
        m += 1;
    }
    m
}

impl Table {
    /// Builds the table over servers given as (identity, weight); servers of weight 0 get no
    /// slot. `None` when no server has a weight.
    pub fn build<K: Hash>(servers: &[(K, u32)]) -> Option<Table> {
        let max_w = servers.iter().map(|(_, w)| *w).max().filter(|&w| w > 0)?;
        let m = table_size(servers.len()) as u64;
        let perm: Vec<(u64, u64)> = servers
            .iter()
            .map(|(id, _)| {
                let offset = hash_with(SEED_OFFSET, id) % m;
                let skip = hash_with(SEED_SKIP, id) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        // Each server's place in its permutation, (offset + j * skip) mod m for its j-th
        // claim, kept as a running sum (no division per step: the build is a million steps at
        // 10,000 servers).
        let mut pos: Vec<u64> = perm.iter().map(|&(offset, _)| offset).collect();
        let mut credit = vec![0u64; servers.len()];
        let mut slots = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for (i, (_, w)) in servers.iter().enumerate() {
                credit[i] += u64::from(*w);
                if credit[i] < u64::from(max_w) {
                    continue;
                }
                credit[i] -= u64::from(max_w);
                let skip = perm[i].1;
                // m is prime and 1 <= skip < m: the walk visits every slot, so it ends.
                loop {
                    let c = pos[i] as usize;
                    pos[i] += skip;
                    if pos[i] >= m {
                        pos[i] -= m;
                    }
                    if slots[c] == u32::MAX {
                        slots[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Some(Table { slots })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The key's slot.
    #[inline]
    pub fn slot(&self, hash: u64) -> usize {
        (hash % self.slots.len() as u64) as usize
    }

    /// The server in slot `i` (wrapping).
    #[inline]
    pub fn at(&self, i: usize) -> usize {
        self.slots[i % self.slots.len()] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(t: &Table, names: &[String], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| names[t.at(t.slot(key_hash(format!("/key/{k}"))))].clone())
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("server-{i}")).collect()
    }

    #[test]
    fn removing_one_of_ten_moves_at_most_12_percent_and_adding_it_back_restores_all() {
        let all = names(10);
        let t10 = Table::build(&all.iter().map(|n| (n, 1)).collect::<Vec<_>>()).unwrap();
        let before = owners(&t10, &all, 10_000);
        let nine: Vec<String> = all.iter().filter(|n| *n != "server-3").cloned().collect();
        let t9 = Table::build(&nine.iter().map(|n| (n, 1)).collect::<Vec<_>>()).unwrap();
        let after = owners(&t9, &nine, 10_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // The removed server's own keys (about 10%) must move; few others may.
        let own = before.iter().filter(|n| *n == "server-3").count();
        assert!(moved >= own, "{moved} < {own}");
        assert!(moved <= 1_200, "{moved} of 10000 keys moved");
        let back = Table::build(&all.iter().map(|n| (n, 1)).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            owners(&back, &all, 10_000),
            before,
            "adding it back restores every key"
        );
    }

    #[test]
    fn weights_two_to_one_give_about_two_to_one_of_keys() {
        let all = names(2);
        let t = Table::build(&[(&all[0], 2), (&all[1], 1)]).unwrap();
        let o = owners(&t, &all, 10_000);
        let heavy = o.iter().filter(|n| *n == "server-0").count() as f64;
        let light = 10_000.0 - heavy;
        assert!((heavy / light - 2.0).abs() < 0.2, "{heavy}:{light}");
        // And the table itself is split 2:1 to within a slot per round.
        let slots0 = (0..t.len()).filter(|&i| t.at(i) == 0).count() as f64;
        assert!(
            (slots0 / t.len() as f64 - 2.0 / 3.0).abs() < 0.001,
            "{slots0}"
        );
    }

    #[test]
    fn zero_weights_get_no_slot_and_all_zero_is_none() {
        let all = names(3);
        let t = Table::build(&[(&all[0], 1), (&all[1], 0), (&all[2], 1)]).unwrap();
        assert!((0..t.len()).all(|i| t.at(i) != 1));
        assert!(Table::build(&[(&all[0], 0)]).is_none());
        assert!(Table::build::<String>(&[]).is_none());
    }

    /// The paper's fill, written as plainly as it reads: server i's j-th choice is
    /// (offset + j * skip) mod M.
    fn reference(servers: &[(&String, u32)]) -> Vec<u32> {
        let max_w = servers.iter().map(|s| s.1).max().unwrap() as u64;
        let m = table_size(servers.len()) as u64;
        let mut next = vec![0u64; servers.len()];
        let mut credit = vec![0u64; servers.len()];
        let mut slots = vec![u32::MAX; m as usize];
        let mut filled = 0;
        while filled < m {
            for (i, (id, w)) in servers.iter().enumerate() {
                credit[i] += *w as u64;
                if credit[i] < max_w || filled == m {
                    continue;
                }
                credit[i] -= max_w;
                let offset = hash_with(SEED_OFFSET, id) % m;
                let skip = hash_with(SEED_SKIP, id) % (m - 1) + 1;
                loop {
                    let c = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if slots[c] == u32::MAX {
                        slots[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        slots
    }

    #[test]
    fn the_build_is_the_papers_permutation_fill() {
        let all = names(7);
        let servers: Vec<(&String, u32)> = all.iter().zip([3, 1, 2, 1, 5, 1, 4]).collect();
        let t = Table::build(&servers).unwrap();
        assert_eq!(t.slots, reference(&servers));
    }

    #[test]
    fn table_size_is_prime_and_grows_with_servers() {
        assert_eq!(table_size(10), 65_537);
        let big = table_size(10_000);
        assert!(big >= 1_000_000 && is_prime(big), "{big}");
    }
}
