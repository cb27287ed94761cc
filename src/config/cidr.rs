//! CIDR lists (`allow`, `deny`): parsed with `ipnet` and kept as sorted, merged address
//! ranges, so a lookup is one binary search however long the list is. IPv4 networks are
//! stored in the IPv4-mapped IPv6 space (`::ffff:0:0/96`), so an IPv4-mapped IPv6 client
//! (`::ffff:10.1.2.3`, a dual-stack socket's view of an IPv4 peer) matches IPv4 CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of networks, as written (for the admin API) and as sorted inclusive ranges.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    written: Vec<IpNet>,
    /// Sorted by start, merged: no two overlap or touch.
    ranges: Vec<(u128, u128)>,
}

/// The address as a 128-bit number, IPv4 (and IPv4-mapped IPv6) in `::ffff:0:0/96`.
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => 0xffff_0000_0000 | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => number(IpAddr::V4(v4)),
            None => u128::from(v6),
        },
    }
}

impl CidrSet {
    /// Parses each entry (`10.0.0.0/8`, `2001:db8::/32`, or a bare address: one host);
    /// `Err((index, message))` names the first entry that is not one.
    pub fn parse(entries: &[String]) -> Result<CidrSet, (usize, String)> {
        let mut written = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let net = match e.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match e.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err((
                            i,
                            format!(
                                "{e:?} is not a CIDR (write 10.0.0.0/8, 2001:db8::/32 or one address)"
                            ),
                        ));
                    }
                },
            };
            if net.trunc() != net {
                return Err((
                    i,
                    format!(
                        "{e:?} has host bits set past its prefix length; did you mean {}?",
                        net.trunc()
                    ),
                ));
            }
            written.push(net);
        }
        let mut ranges: Vec<(u128, u128)> = written
            .iter()
            .map(|n| (number(n.network()), number(n.broadcast())))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(CidrSet {
            written,
            ranges: merged,
        })
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let n = number(ip);
        // The first range that starts after `n`; the one before it is the only candidate.
        let after = self.ranges.partition_point(|&(lo, _)| lo <= n);
        after > 0 && n <= self.ranges[after - 1].1
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The networks as written (after parsing).
    pub fn networks(&self) -> &[IpNet] {
        &self.written
    }
}

impl PartialEq for CidrSet {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

impl serde::Serialize for CidrSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.written.iter().map(|n| n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> CidrSet {
        CidrSet::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_v6_and_mapped_clients_match_their_networks() {
        let s = set(&["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"]);
        assert!(s.contains(ip("10.0.0.0")));
        assert!(s.contains(ip("10.255.255.255")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
        assert!(s.contains(ip("192.168.1.7")));
        assert!(!s.contains(ip("192.168.1.8")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        // An IPv4-mapped IPv6 client matches the IPv4 network, and only it.
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
        // An IPv6 address whose low bits look like 10.x is not in 10.0.0.0/8.
        assert!(!s.contains(ip("::10.1.2.3")));
        assert!(!s.contains(ip("::a01:203")));
        let everything = set(&["0.0.0.0/0", "::/0"]);
        assert!(everything.contains(ip("1.2.3.4")) && everything.contains(ip("fe80::1")));
        let v4_only = set(&["0.0.0.0/0"]);
        assert!(v4_only.contains(ip("::ffff:1.2.3.4")));
        assert!(!v4_only.contains(ip("fe80::1")));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&["10.0.1.0/24", "10.0.0.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.ranges.len(), 2);
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        assert!(s.contains(ip("10.0.3.1")));
    }

    #[test]
    fn a_few_hundred_entries_match_like_a_linear_scan() {
        let list: Vec<String> = (0..300u32)
            .map(|i| format!("{}.{}.0.0/16", 10 + i % 200, (i * 7) % 256))
            .collect();
        let s = CidrSet::parse(&list).unwrap();
        let nets: Vec<IpNet> = list.iter().map(|l| l.parse().unwrap()).collect();
        for a in (0..=255u8).step_by(3) {
            for b in (0..=255u8).step_by(5) {
                let c = ip(&format!("{a}.{b}.1.2"));
                assert_eq!(s.contains(c), nets.iter().any(|n| n.contains(&c)), "{c}");
            }
        }
    }

    #[test]
    fn bad_entries_are_named_by_index() {
        let bad = |l: &[&str]| {
            CidrSet::parse(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert_eq!(bad(&["10.0.0.0/8", "10.0.0.0/33"]).0, 1);
        assert_eq!(bad(&["banana"]).0, 0);
        let (i, m) = bad(&["10.0.0.0/8", "::/0", "10.1.2.3/8"]);
        assert_eq!(i, 2);
        assert!(m.contains("did you mean 10.0.0.0/8"), "{m}");
    }
}
