//! ClusterSet IPs (issue 21): a virtual IP for every clusterset service
//! and per-cluster name, so that transparent capture can route a
//! connection to one as it routes one to a local Service's ClusterIP.
//!
//! `allocate` is pure and deterministic, so that every replica of a
//! control plane, and a restarted one, gives a name the same address:
//! - an address a name already has (`kept`: read back from where it was
//!   written — ServiceImport `spec.ips` in kube mode, a state file in
//!   files mode) stays its own while it is in the range, not reserved and
//!   not claimed twice;
//! - a new name starts from a slot derived from a hash of the name, and
//!   takes the first free address from there (names are placed in sorted
//!   order, so the same inputs always give the same outputs).
//!
//! The range defaults to 240.240.0.0/16, as Istio's auto-allocated VIPs
//! (class E: never a real destination), and addresses inside `reserved`
//! (the cluster's Service and Pod ranges) are never handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// An IPv4 range: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VipError {
    #[error("{0:?} is not an IPv4 range like 240.240.0.0/16")]
    Syntax(String),
    #[error(
        "the ClusterSet IP range {range} has {free} free addresses for {wanted} names: give a larger range"
    )]
    Exhausted {
        range: String,
        free: u64,
        wanted: usize,
    },
}

impl Range {
    pub const DEFAULT: Range = Range {
        base: Ipv4Addr::new(240, 240, 0, 0),
        prefix: 16,
    };

    /// `a.b.c.d/n`; the base is masked to the prefix.
    pub fn parse(s: &str) -> Result<Self, VipError> {
        let bad = || VipError::Syntax(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let mask = Self::mask(prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.base)
    }

    /// The address `offset` into the range (modulo its size).
    fn at(&self, offset: u64) -> Ipv4Addr {
        let o = (offset % self.size()) as u32;
        Ipv4Addr::from(u32::from(self.base).wrapping_add(o))
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The part of `a` that `b` covers: all of one or the other, or nothing
/// (CIDR ranges nest or do not meet).
fn overlap(a: Range, b: Range) -> Option<Range> {
    if a.prefix <= b.prefix && a.contains(b.base) {
        Some(b)
    } else if b.prefix <= a.prefix && b.contains(a.base) {
        Some(a)
    } else {
        None
    }
}

/// How many addresses of `range` the `reserved` ranges cover (counted
/// once where they nest).
fn reserved_size(range: Range, reserved: &[Range]) -> u64 {
    let parts: Vec<Range> = reserved.iter().filter_map(|r| overlap(range, *r)).collect();
    parts
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            !parts.iter().enumerate().any(|(j, o)| {
                j != *i
                    && o.prefix <= r.prefix
                    && o.contains(r.base)
                    && (o.prefix < r.prefix || j < *i)
            })
        })
        .map(|(_, r)| r.size())
        .sum()
}

/// Where a new name starts looking: a hash of the name.
fn slot(name: &str) -> u64 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The address of each of `names` in `range` (none in `reserved`),
/// keeping the ones in `kept` that are still valid. Deterministic.
pub fn allocate(
    range: Range,
    reserved: &[Range],
    names: &BTreeSet<String>,
    kept: &BTreeMap<String, Ipv4Addr>,
) -> Result<BTreeMap<String, Ipv4Addr>, VipError> {
    let usable = |ip: Ipv4Addr| range.contains(ip) && !reserved.iter().any(|r| r.contains(ip));
    let mut out = BTreeMap::new();
    let mut taken = BTreeSet::new();
    // Kept addresses first, in name order: on a clash the first name wins.
    for name in names {
        if let Some(&ip) = kept.get(name)
            && usable(ip)
            && taken.insert(ip)
        {
            out.insert(name.clone(), ip);
        }
    }
    let reserved_in_range = reserved_size(range, reserved);
    let free = range
        .size()
        .saturating_sub(reserved_in_range + taken.len() as u64);
    let wanted = names.len() - out.len();
    if (wanted as u64) > free {
        return Err(VipError::Exhausted {
            range: range.to_string(),
            free,
            wanted,
        });
    }
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        let start = slot(name);
        let ip = (0..range.size())
            .map(|i| range.at(start.wrapping_add(i)))
            .find(|ip| usable(*ip) && !taken.contains(ip))
            .expect("counted free above");
        taken.insert(ip);
        out.insert(name.clone(), ip);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ranges_parse_and_say_what_is_wrong() {
        let r = Range::parse("240.240.7.9/16").unwrap();
        assert_eq!(r, Range::DEFAULT);
        assert_eq!(r.size(), 65_536);
        assert!(r.contains("240.240.255.255".parse().unwrap()));
        assert!(!r.contains("240.241.0.0".parse().unwrap()));
        for bad in ["240.240.0.0", "240.240.0.0/33", "x/16", "240.240.0.0/a"] {
            assert_eq!(Range::parse(bad), Err(VipError::Syntax(bad.into())));
        }
    }

    #[test]
    fn the_same_names_get_the_same_addresses_and_kept_ones_stay() {
        let all = names(&[
            "catalog.shop.svc.clusterset.local",
            "catalog-eu-west.shop",
            "reviews-us-east.shop",
        ]);
        let a = allocate(Range::DEFAULT, &[], &all, &BTreeMap::new()).unwrap();
        let b = allocate(Range::DEFAULT, &[], &all, &BTreeMap::new()).unwrap();
        assert_eq!(a, b, "deterministic: every replica agrees");
        assert_eq!(a.len(), 3);
        // A kept address wins over the hash, as long as it is usable.
        let mut kept = a.clone();
        kept.insert(
            "catalog-eu-west.shop".into(),
            "240.240.0.9".parse().unwrap(),
        );
        let c = allocate(Range::DEFAULT, &[], &all, &kept).unwrap();
        assert_eq!(
            c["catalog-eu-west.shop"],
            "240.240.0.9".parse::<Ipv4Addr>().unwrap()
        );
        // Out of range or reserved: given a new one.
        kept.insert("catalog-eu-west.shop".into(), "10.0.0.1".parse().unwrap());
        let d = allocate(Range::DEFAULT, &[], &all, &kept).unwrap();
        assert!(Range::DEFAULT.contains(d["catalog-eu-west.shop"]));
    }

    #[test]
    fn reserved_addresses_are_counted_once() {
        let r = |s: &str| Range::parse(s).unwrap();
        let range = r("10.0.0.0/24");
        assert_eq!(reserved_size(range, &[]), 0);
        assert_eq!(reserved_size(range, &[r("10.0.0.0/26")]), 64);
        // Nested and repeated: once.
        assert_eq!(
            reserved_size(
                range,
                &[r("10.0.0.0/26"), r("10.0.0.0/28"), r("10.0.0.0/26")]
            ),
            64
        );
        // Larger than the range: all of it. Elsewhere: nothing.
        assert_eq!(reserved_size(range, &[r("10.0.0.0/8")]), 256);
        assert_eq!(reserved_size(range, &[r("10.1.0.0/16")]), 0);
    }

    #[test]
    fn reserved_ranges_are_never_handed_out_and_a_full_range_is_named() {
        let tiny = Range::parse("10.0.0.0/30").unwrap();
        let reserved = [Range::parse("10.0.0.0/31").unwrap()];
        let got = allocate(tiny, &reserved, &names(&["a", "b"]), &BTreeMap::new()).unwrap();
        let ips: BTreeSet<Ipv4Addr> = got.values().copied().collect();
        assert_eq!(
            ips,
            BTreeSet::from(["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()])
        );
        let e = allocate(tiny, &reserved, &names(&["a", "b", "c"]), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the ClusterSet IP range 10.0.0.0/30 has 2 free addresses for 3 names: give a larger range"
        );
    }

    proptest! {
        /// Unique, in range, never reserved; and adding names never moves
        /// an address already handed out (given it is kept).
        #[test]
        fn addresses_are_unique_usable_and_stable(
            first in proptest::collection::btree_set("[a-z]{1,8}", 0..40),
            more in proptest::collection::btree_set("[a-z]{1,8}", 0..40),
            prefix in 20u8..25,
        ) {
            let range = Range { base: Ipv4Addr::new(240, 240, 0, 0), prefix };
            let reserved = [Range { base: Ipv4Addr::new(240, 240, 0, 0), prefix: prefix + 2 }];
            let a = allocate(range, &reserved, &first, &BTreeMap::new()).unwrap();
            let ips: BTreeSet<_> = a.values().collect();
            prop_assert_eq!(ips.len(), a.len());
            for ip in a.values() {
                prop_assert!(range.contains(*ip) && !reserved[0].contains(*ip));
            }
            let all: BTreeSet<String> = first.union(&more).cloned().collect();
            let b = allocate(range, &reserved, &all, &a).unwrap();
            for (name, ip) in &a {
                prop_assert_eq!(b[name], *ip);
            }
            let ips: BTreeSet<_> = b.values().collect();
            prop_assert_eq!(ips.len(), b.len());
        }
    }
}
