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
//! (the cluster's Service and Pod ranges, and every local Service's
//! ClusterIP) are never handed out.
//!
//! `assign` gives the imported names of a catalog their addresses (the
//! proxies index them as VIPs, like a local Service's ClusterIP);
//! `persisted` reads back what the ServiceImports hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::Problem;
use super::services::Catalog;
use crate::store::{ObjectKey, Resource, Snapshot};

/// On a ServiceImport: the ClusterSet IPs of its per-cluster names and of
/// a headless service's pods, as JSON `{"<cluster>": "<ip>",
/// "<cluster>/<pod>": "<ip>"}` (its clusterset name's is `spec.ips`).
pub const CLUSTER_IPS_ANNOTATION: &str = "isthmus.dev/cluster-ips";

/// A name that gets a ClusterSet IP: a clusterset service
/// (`cluster: None`), one cluster's export of it, or one pod of a
/// headless service in one cluster (`pod`, with `cluster`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Imported {
    pub namespace: String,
    pub service: String,
    pub cluster: Option<String>,
    pub pod: Option<String>,
}

impl Imported {
    /// Its name in the proxies' configuration.
    pub fn proxy_name(&self) -> String {
        match (&self.cluster, &self.pod) {
            (Some(c), Some(pod)) => {
                super::headless::clusterset_pod_name(pod, c, &self.service, &self.namespace)
            }
            (Some(c), None) => super::imports::per_cluster_name(&self.service, &self.namespace, c),
            (None, _) => super::imports::clusterset_name(&self.service, &self.namespace),
        }
    }

    /// Its key in the ServiceImport's annotation (`CLUSTER_IPS_ANNOTATION`);
    /// None for the clusterset name (`spec.ips`).
    pub fn annotation_key(&self) -> Option<String> {
        match (&self.cluster, &self.pod) {
            (Some(c), Some(pod)) => Some(format!("{c}/{pod}")),
            (Some(c), None) => Some(c.clone()),
            (None, _) => None,
        }
    }
}

/// Where ClusterSet IPs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub range: Range,
    /// Never handed out (the cluster's Service and Pod CIDRs).
    pub reserved: Vec<Range>,
    /// Addresses names had before (this process's last translation, or the
    /// files mode's state file), by proxy name; what the store's
    /// ServiceImports say wins over these.
    pub kept: BTreeMap<String, Ipv4Addr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            range: Range::DEFAULT,
            reserved: Vec::new(),
            kept: BTreeMap::new(),
        }
    }
}

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

/// The ClusterSet IPs the store's ServiceImports hold, by proxy name:
/// `spec.ips` for the clusterset name, the annotation for per-cluster ones.
pub fn persisted(snap: &Snapshot) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for (key, r) in snap.of_kind("ServiceImport") {
        let (Resource::ServiceImport(si), Some(ns)) = (r, &key.namespace) else {
            continue;
        };
        if let Some(ip) = si.spec.ips.iter().find_map(|i| i.parse::<Ipv4Addr>().ok()) {
            out.insert(super::imports::clusterset_name(&key.name, ns), ip);
        }
        let per_cluster = si
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLUSTER_IPS_ANNOTATION))
            .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok())
            .unwrap_or_default();
        for (k, ip) in per_cluster {
            let Ok(ip) = ip.parse() else { continue };
            let name = match k.split_once('/') {
                Some((cluster, pod)) => {
                    super::headless::clusterset_pod_name(pod, cluster, &key.name, ns)
                }
                None => super::imports::per_cluster_name(&key.name, ns, &k),
            };
            out.insert(name, ip);
        }
    }
    out
}

/// Gives every imported name of `catalog` its ClusterSet IP as the
/// service's VIP. Local Services' ClusterIPs are reserved too. A range
/// too small is a problem on the Mesh; the names then have no VIP (they
/// are still reachable by Host header).
pub fn assign(catalog: &mut Catalog, snap: &Snapshot, settings: &Settings) {
    if catalog.imported.is_empty() {
        return;
    }
    let mut kept = settings.kept.clone();
    kept.extend(persisted(snap));
    let mut reserved = settings.reserved.clone();
    for (name, s) in &catalog.services {
        if catalog.imported.contains_key(name) {
            continue;
        }
        reserved.extend(
            s.vips
                .iter()
                .filter_map(|v| v.parse::<Ipv4Addr>().ok())
                .map(|base| Range { base, prefix: 32 }),
        );
    }
    let names: BTreeSet<String> = catalog.imported.keys().cloned().collect();
    match allocate(settings.range, &reserved, &names, &kept) {
        Ok(ips) => {
            for (name, ip) in ips {
                if let Some(s) = catalog.services.get_mut(&name) {
                    s.vips = vec![ip.to_string()];
                }
            }
        }
        Err(e) => {
            let key = snap
                .of_kind("Mesh")
                .map(|(k, _)| k.clone())
                .next()
                .unwrap_or(ObjectKey {
                    namespace: None,
                    name: "default".into(),
                });
            catalog.problems.push(Problem {
                kind: "Mesh",
                key,
                reason: "ClusterSetIPsExhausted",
                message: format!(
                    "{e}; imported services have no ClusterSet IP (reachable by Host header only)"
                ),
            });
        }
    }
}

/// The ClusterSet IP of each imported name of `catalog`, by proxy name.
pub fn assigned(catalog: &Catalog) -> BTreeMap<String, Ipv4Addr> {
    catalog
        .imported
        .keys()
        .filter_map(|n| {
            let ip = catalog.services.get(n)?.vips.first()?.parse().ok()?;
            Some((n.clone(), ip))
        })
        .collect()
}

/// What to keep for the next allocation: the addresses handed out now,
/// and the ones names absent now had, while no present name holds them.
pub fn remember(
    before: &BTreeMap<String, Ipv4Addr>,
    now: &BTreeMap<String, Ipv4Addr>,
) -> BTreeMap<String, Ipv4Addr> {
    let held: BTreeSet<Ipv4Addr> = now.values().copied().collect();
    let mut out = now.clone();
    for (name, ip) in before {
        if !now.contains_key(name) && !held.contains(ip) {
            out.insert(name.clone(), *ip);
        }
    }
    out
}

/// Where a new name starts looking: a hash of the name.
fn slot(name: &str) -> u64 {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The address of each of `names` in `range` (none in `reserved`),
/// keeping the ones in `kept` that are still valid, and giving new names
/// addresses kept for absent names only when nothing else is free.
/// Deterministic.
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
    // Addresses kept for names not here now (a link down for a while)
    // are not handed to new names while others are free: the name may
    // come back, and clients may still have the address cached.
    let absent: BTreeSet<Ipv4Addr> = kept
        .iter()
        .filter(|(n, ip)| !names.contains(*n) && usable(**ip))
        .map(|(_, ip)| *ip)
        .collect();
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        let start = slot(name);
        let free = |avoid_absent: bool| {
            (0..range.size())
                .map(|i| range.at(start.wrapping_add(i)))
                .find(|ip| {
                    usable(*ip) && !taken.contains(ip) && !(avoid_absent && absent.contains(ip))
                })
        };
        let ip = free(true)
            .or_else(|| free(false))
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

    #[test]
    fn an_absent_names_address_waits_for_it() {
        let tiny = Range::parse("10.0.0.0/30").unwrap();
        let first = allocate(tiny, &[], &names(&["a", "b"]), &BTreeMap::new()).unwrap();
        // "a" goes away; "c" and "d" come: they take the two addresses
        // nobody had, not a's.
        let kept = remember(
            &first,
            &allocate(tiny, &[], &names(&["b"]), &first).unwrap(),
        );
        assert_eq!(kept, first, "a is remembered while away");
        let later = allocate(tiny, &[], &names(&["b", "c", "d"]), &kept).unwrap();
        assert!(!later.values().any(|ip| *ip == first["a"]), "{later:?}");
        // "a" comes back: its address again.
        let kept = remember(&kept, &later);
        let back = allocate(tiny, &[], &names(&["a", "b", "c"]), &kept).unwrap();
        assert_eq!(back["a"], first["a"]);
        assert_eq!(back["b"], first["b"]);
        // When nothing else is free, an absent name's address is used, and
        // forgotten for it.
        let full = allocate(tiny, &[], &names(&["b", "c", "d", "e"]), &kept).unwrap();
        assert_eq!(full.len(), 4);
        let kept = remember(&kept, &full);
        assert!(!kept.contains_key("a"), "{kept:?}");
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
