//! What this cluster holds from each linked cluster it imports from: the
//! services the peer exports (replaced whole by a full state, patched by
//! versioned deltas), the link's health, and the partition policy's verdict
//! on whether the imports are still used. The decisions are pure (`Peer`,
//! times passed in); `Peers` shares them between the link tasks and the
//! translation loop.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_api::federation::v1 as wire;
use isthmus_api::model;
use tokio::sync::watch;

use super::exports::ExportMap;
use crate::resources::link::PartitionMode;
use crate::translate::imports::Summary;
use crate::translate::received::Received;
use crate::translate::services::service_name;

/// A delta that does not follow the last version: something was lost, and
/// only a full resync (a new stream) can repair it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the peer sent version {got} after {held}: an update was lost; resyncing with a new stream"
)]
pub struct Gap {
    pub held: u64,
    pub got: u64,
}

/// The partition policy of a link, as the ClusterLink says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub mode: PartitionMode,
    pub ttl: Duration,
}

impl Partition {
    /// The ClusterLink's defaults: fail-static, 5 minutes.
    pub const DEFAULT: Partition = Partition {
        mode: PartitionMode::FailStatic,
        ttl: Duration::from_secs(300),
    };
}

/// Why a link is not connected, as the ClusterLink's condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason (`TokenExpired`, `TrustMismatch`, `Unreachable`).
    pub reason: String,
    pub message: String,
}

/// The link credential a peer issued us (`sync::credentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub expires: SystemTime,
    /// Why it could not be kept (a restart then needs the join token).
    pub not_kept: Option<String>,
}

/// A linked cluster's trust bundle as it sent it (or as we kept it from
/// an earlier stream): trusted for its domain instead of the ClusterLink's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedBundle {
    pub pem: String,
    /// When it was received; None: read back from where it was kept.
    pub received: Option<SystemTime>,
}

/// One linked cluster, as this one imports from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peer {
    pub cluster: String,
    pub trust_domain: String,
    pub services: ExportMap,
    /// Version of the stream's last update (0: no stream yet).
    pub version: u64,
    pub connected: bool,
    /// `quic` or `h2`, as our gateway reported.
    pub transport: Option<String>,
    pub rtt: Option<Duration>,
    /// The last time the peer was heard (an update or a pong).
    pub last_sync: Option<SystemTime>,
    /// The last full state received.
    pub last_resync: Option<SystemTime>,
    /// Why the last attempt failed, while not connected.
    pub refusal: Option<Refusal>,
    /// Set once the partition policy withdrew the imports.
    pub withdrawn: bool,
    pub partition: Option<Partition>,
    /// The last link credential the peer sent.
    pub credential: Option<Credential>,
    /// The peer's trust bundle as it last sent it.
    pub trust_bundle: Option<SyncedBundle>,
    /// The policies it shares with us, by wire key, as read on arrival.
    pub policies: BTreeMap<String, Received>,
}

impl Peer {
    /// Applies one `exports` message: a full state replaces everything
    /// held (anti-entropy: nothing duplicated, nothing left over), a delta
    /// must follow the held version.
    pub fn apply(&mut self, e: &wire::Exports, now: SystemTime) -> Result<(), Gap> {
        if e.full {
            self.services.clear();
            self.policies.clear();
            self.last_resync = Some(now);
        } else if e.version != self.version + 1 {
            return Err(Gap {
                held: self.version,
                got: e.version,
            });
        }
        self.version = e.version;
        if !e.trust_domain.is_empty() {
            self.trust_domain = e.trust_domain.clone();
        }
        for s in &e.services {
            self.services
                .insert(service_name(&s.name, &s.namespace), s.clone());
        }
        for r in &e.removed {
            self.services.remove(r);
        }
        for p in &e.policies {
            let key = super::policies::wire_key(&p.kind, &p.namespace, &p.name);
            self.policies
                .insert(key, Received::read(&self.cluster, p.clone()));
        }
        for r in &e.removed_policies {
            self.policies.remove(r);
        }
        if !e.trust_bundle.is_empty() {
            self.trust_bundle = Some(SyncedBundle {
                pem: e.trust_bundle.clone(),
                received: Some(now),
            });
        }
        self.connected = true;
        self.withdrawn = false;
        self.refusal = None;
        self.last_sync = Some(now);
        Ok(())
    }

    /// The link dropped (or could not be made) at `now`: fail-closed
    /// withdraws at once; fail-static keeps the imports until the TTL has
    /// passed since the peer was last heard.
    pub fn lost(&mut self, refusal: Option<Refusal>, now: SystemTime) {
        self.connected = false;
        self.refusal = refusal;
        self.rtt = None;
        self.version = 0;
        if self.withdraw_at().is_some_and(|at| at <= now) {
            self.withdrawn = true;
        }
    }

    /// When the imports stop being used, while disconnected.
    pub fn withdraw_at(&self) -> Option<SystemTime> {
        if self.connected || self.withdrawn {
            return None;
        }
        let p = self.partition.unwrap_or(Partition::DEFAULT);
        let heard = self.last_sync?;
        Some(match p.mode {
            // Already due: `lost` withdraws them.
            PartitionMode::FailClosed => heard,
            PartitionMode::FailStatic => heard + p.ttl,
        })
    }

    /// Whether proxies use the imports now.
    pub fn usable(&self) -> bool {
        !self.withdrawn && (self.connected || self.withdraw_at().is_some())
    }

    /// How long the imports have been held without hearing the peer (while
    /// disconnected and still used).
    pub fn stale_for(&self, now: SystemTime) -> Option<Duration> {
        if self.connected || !self.usable() {
            return None;
        }
        now.duration_since(self.last_sync?).ok()
    }

    /// The policies the translation applies: all while the imports are
    /// used; once they are withdrawn (fail-closed at once, fail-static
    /// after the TTL) only the security ones, until the peer is heard again
    /// or its link is deleted (`policies::is_security`).
    pub fn received(&self) -> Vec<Received> {
        let usable = self.usable();
        self.policies
            .values()
            .filter(|r| usable || super::policies::is_security(&r.policy.kind))
            .cloned()
            .collect()
    }

    /// The imports as the translation takes them (none once withdrawn).
    pub fn summaries(&self) -> Vec<Summary> {
        if !self.usable() {
            return Vec::new();
        }
        self.services
            .values()
            .map(|s| Summary {
                cluster: self.cluster.clone(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                ports: s.ports.clone(),
                healthy: s.healthy,
                locality: s.locality.clone().unwrap_or_else(model::Locality::default),
                trust_domain: self.trust_domain.clone(),
                exported_at: s.exported_at,
                headless: s.headless,
                hostnames: s.hostnames.clone(),
            })
            .collect()
    }
}

/// Every peer, shared: link tasks write, the translation loop reads.
#[derive(Debug)]
pub struct Peers {
    peers: Mutex<BTreeMap<String, Peer>>,
    /// Bumped when what proxies get changes (imports, withdrawal), or when
    /// it will next (a withdrawal time set).
    imports: watch::Sender<u64>,
    /// Bumped on any change (status: RTT, connection, refusals).
    status: watch::Sender<u64>,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            peers: Mutex::new(BTreeMap::new()),
            imports: watch::channel(0).0,
            status: watch::channel(0).0,
        }
    }
}

impl Peers {
    /// Changes one peer (made on first use); wakes the translation when
    /// its imports as used changed.
    pub fn update<R>(&self, cluster: &str, f: impl FnOnce(&mut Peer) -> R) -> R {
        let mut peers = self.peers.lock();
        let peer = peers.entry(cluster.to_string()).or_insert_with(|| Peer {
            cluster: cluster.to_string(),
            ..Default::default()
        });
        let pem = |p: &Peer| p.trust_bundle.as_ref().map(|b| b.pem.clone());
        // What proxies get, and when that changes next (a link that just
        // dropped arms the translation loop's withdrawal timer).
        let used = |p: &Peer| {
            let when = p.withdraw_at();
            (p.summaries(), p.usable(), pem(p), p.received(), when)
        };
        let before = used(peer);
        let r = f(peer);
        let changed = used(peer) != before;
        drop(peers);
        if changed {
            self.imports.send_modify(|v| *v += 1);
        }
        self.status.send_modify(|v| *v += 1);
        r
    }

    /// Forgets a peer (its ClusterLink is gone): its imports go at once.
    pub fn remove(&self, cluster: &str) {
        if self.peers.lock().remove(cluster).is_some() {
            self.imports.send_modify(|v| *v += 1);
            self.status.send_modify(|v| *v += 1);
        }
    }

    /// Withdraws the imports whose time has come; whether any was.
    pub fn expire(&self, now: SystemTime) -> bool {
        let mut any = false;
        for p in self.peers.lock().values_mut() {
            if p.withdraw_at().is_some_and(|at| at <= now) {
                p.withdrawn = true;
                any = true;
            }
        }
        if any {
            self.imports.send_modify(|v| *v += 1);
            self.status.send_modify(|v| *v += 1);
        }
        any
    }

    /// The next time `expire` has something to do.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.peers
            .lock()
            .values()
            .filter_map(Peer::withdraw_at)
            .min()
    }

    /// Each peer's trust bundle as it sent it (partitioned or not: a
    /// silent peer's roots do not revert to its ClusterLink's).
    pub fn trust_bundles(&self) -> BTreeMap<String, String> {
        self.peers
            .lock()
            .values()
            .filter_map(|p| Some((p.cluster.clone(), p.trust_bundle.as_ref()?.pem.clone())))
            .collect()
    }

    pub fn get(&self, cluster: &str) -> Option<Peer> {
        self.peers.lock().get(cluster).cloned()
    }

    pub fn all(&self) -> Vec<Peer> {
        self.peers.lock().values().cloned().collect()
    }

    /// The policies of every peer, as the translation takes them.
    pub fn received(&self) -> Vec<Received> {
        self.peers
            .lock()
            .values()
            .flat_map(Peer::received)
            .collect()
    }

    /// The imports of every peer, as the translation takes them.
    pub fn summaries(&self) -> Vec<Summary> {
        self.peers
            .lock()
            .values()
            .flat_map(Peer::summaries)
            .collect()
    }

    pub fn watch_imports(&self) -> watch::Receiver<u64> {
        self.imports.subscribe()
    }

    pub fn watch_status(&self) -> watch::Receiver<u64> {
        self.status.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, healthy: u32) -> wire::ExportedService {
        wire::ExportedService {
            name: name.into(),
            namespace: "shop".into(),
            ports: vec![model::ServicePort {
                port: 80,
                ..Default::default()
            }],
            healthy,
            locality: Some(model::Locality {
                region: "eu-central".into(),
                zone: String::new(),
            }),
            ..Default::default()
        }
    }

    fn full(services: Vec<wire::ExportedService>) -> wire::Exports {
        wire::Exports {
            version: 1,
            full: true,
            cluster: "eu-central".into(),
            trust_domain: "eu-central.isthmus.local".into(),
            services,
            removed: vec![],
            trust_bundle: "ROOTS".into(),
            ..Default::default()
        }
    }

    fn delta(
        version: u64,
        services: Vec<wire::ExportedService>,
        removed: &[&str],
    ) -> wire::Exports {
        wire::Exports {
            version,
            full: false,
            services,
            removed: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn peer(mode: PartitionMode) -> Peer {
        Peer {
            cluster: "eu-central".into(),
            partition: Some(Partition {
                mode,
                ttl: Duration::from_secs(60),
            }),
            ..Default::default()
        }
    }

    fn names(p: &Peer) -> Vec<String> {
        p.summaries()
            .iter()
            .map(|s| format!("{}:{}", s.name, s.healthy))
            .collect()
    }

    #[test]
    fn a_full_state_replaces_and_deltas_patch_in_order() {
        let mut p = peer(PartitionMode::FailStatic);
        p.apply(&full(vec![svc("catalog", 2), svc("reviews", 1)]), t(0))
            .unwrap();
        assert_eq!(names(&p), ["catalog:2", "reviews:1"]);
        assert_eq!(p.summaries()[0].trust_domain, "eu-central.isthmus.local");
        p.apply(&delta(2, vec![svc("catalog", 3)], &["reviews.shop"]), t(1))
            .unwrap();
        assert_eq!(names(&p), ["catalog:3"]);
        // A lost delta is noticed, and nothing of the late one is applied.
        let gap = p.apply(&delta(4, vec![svc("cart", 1)], &[]), t(2));
        assert_eq!(gap, Err(Gap { held: 2, got: 4 }));
        assert_eq!(names(&p), ["catalog:3"]);
        // Resync: exactly the new full state, nothing left over or doubled.
        p.lost(None, t(3));
        p.apply(&full(vec![svc("inventory", 1)]), t(4)).unwrap();
        assert_eq!(names(&p), ["inventory:1"]);
        assert_eq!(p.version, 1);
    }

    #[test]
    fn the_peers_bundle_is_kept_through_deltas_and_partitions() {
        let shared = Peers::default();
        let woken = shared.watch_imports();
        shared.update("eu-central", |p| {
            p.partition = Some(Partition::DEFAULT);
            p.apply(&full(vec![svc("catalog", 2)]), t(0)).unwrap();
        });
        assert!(woken.has_changed().unwrap());
        assert_eq!(shared.trust_bundles()["eu-central"], "ROOTS");
        // A delta without a bundle leaves it; one with a bundle (a CA
        // rotation) replaces it and wakes the translation.
        shared.update("eu-central", |p| {
            p.apply(&delta(2, vec![], &[]), t(1)).unwrap()
        });
        assert_eq!(shared.trust_bundles()["eu-central"], "ROOTS");
        let mut woken = shared.watch_imports();
        woken.borrow_and_update();
        shared.update("eu-central", |p| {
            let rotated = wire::Exports {
                trust_bundle: "ROOTS+NEW".into(),
                ..delta(3, vec![], &[])
            };
            p.apply(&rotated, t(2)).unwrap()
        });
        assert!(woken.has_changed().unwrap(), "a new bundle is republished");
        let b = shared.get("eu-central").unwrap().trust_bundle.unwrap();
        assert_eq!((b.pem.as_str(), b.received), ("ROOTS+NEW", Some(t(2))));
        // Partitioned: the imports go in time, the bundle stays.
        shared.update("eu-central", |p| p.lost(None, t(1000)));
        shared.expire(t(1000));
        assert_eq!(shared.trust_bundles()["eu-central"], "ROOTS+NEW");
    }

    #[test]
    fn fail_static_keeps_imports_until_the_ttl_then_withdraws_them() {
        let mut p = peer(PartitionMode::FailStatic);
        p.apply(&full(vec![svc("catalog", 2)]), t(0)).unwrap();
        assert_eq!(p.stale_for(t(5)), None, "connected: not stale");
        p.lost(
            Some(Refusal {
                reason: "Unreachable".into(),
                message: "x".into(),
            }),
            t(10),
        );
        assert!(p.usable());
        assert_eq!(names(&p), ["catalog:2"]);
        assert_eq!(p.stale_for(t(30)), Some(Duration::from_secs(30)));
        assert_eq!(p.withdraw_at(), Some(t(60)), "TTL from the last contact");
        // A reconnect before the TTL resyncs, nothing withdrawn.
        let mut q = p.clone();
        q.apply(&full(vec![svc("catalog", 4)]), t(20)).unwrap();
        assert_eq!(names(&q), ["catalog:4"]);
        assert_eq!(q.withdraw_at(), None);

        let shared = Peers::default();
        shared.update("eu-central", |x| {
            *x = p.clone();
            x.connected = true;
        });
        // The drop alone wakes the translation loop: it arms its timer.
        let mut imports = shared.watch_imports();
        imports.borrow_and_update();
        shared.update("eu-central", |x| x.lost(None, t(10)));
        assert!(
            imports.has_changed().unwrap(),
            "the withdrawal timer is armed"
        );
        assert_eq!(shared.next_expiry(), Some(t(60)));
        assert!(!shared.expire(t(59)));
        assert_eq!(shared.summaries().len(), 1);
        imports.borrow_and_update();
        assert!(shared.expire(t(60)));
        assert!(imports.has_changed().unwrap(), "the translation is woken");
        assert!(shared.summaries().is_empty(), "withdrawn after the TTL");
        assert_eq!(shared.next_expiry(), None);
        assert_eq!(shared.get("eu-central").unwrap().stale_for(t(61)), None);
        // And back: the full state brings them again.
        shared.update("eu-central", |x| {
            x.apply(&full(vec![svc("catalog", 1)]), t(90)).unwrap()
        });
        assert_eq!(shared.summaries().len(), 1);
    }

    #[test]
    fn fail_closed_withdraws_at_once() {
        let mut p = peer(PartitionMode::FailClosed);
        p.apply(&full(vec![svc("catalog", 2)]), t(0)).unwrap();
        p.lost(None, t(1));
        assert!(!p.usable());
        assert!(p.summaries().is_empty());
        assert_eq!(p.withdraw_at(), None);
    }

    /// A full state sharing a route and a DENY policy.
    fn with_policies() -> wire::Exports {
        let policy = |kind: &str, name: &str, object: serde_json::Value| wire::SharedPolicy {
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
            object: object.to_string(),
            ..Default::default()
        };
        wire::Exports {
            policies: vec![
                policy(
                    "HTTPRoute",
                    "canary",
                    serde_json::json!({
                        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "metadata": {"name": "canary", "namespace": "shop"},
                        "spec": {"rules": [{"backendRefs": [{"name": "reviews", "port": 80}]}]},
                    }),
                ),
                policy(
                    "AuthorizationPolicy",
                    "deny-batch",
                    serde_json::json!({
                        "apiVersion": "isthmus.dev/v1alpha1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "deny-batch", "namespace": "shop"},
                        "spec": {"action": "DENY", "rules": [{"from": [{"namespaces": ["batch"]}]}]},
                    }),
                ),
            ],
            ..full(vec![svc("catalog", 1)])
        }
    }

    fn kinds(p: &Peer) -> Vec<String> {
        p.received().iter().map(|r| r.policy.kind.clone()).collect()
    }

    #[test]
    fn received_policies_follow_the_partition_but_security_ones_stay() {
        // Fail-closed: routing goes at once, the DENY stays.
        let mut p = peer(PartitionMode::FailClosed);
        p.apply(&with_policies(), t(0)).unwrap();
        assert!(
            p.received().iter().all(|r| r.read.is_ok()),
            "{:?}",
            p.received()
        );
        assert_eq!(kinds(&p), ["AuthorizationPolicy", "HTTPRoute"]);
        p.lost(None, t(1));
        assert_eq!(kinds(&p), ["AuthorizationPolicy"]);
        // Fail-static: everything until the TTL, then the DENY alone, and
        // it stays past it, until the peer is heard again.
        let shared = Peers::default();
        shared.update("eu-central", |x| {
            *x = peer(PartitionMode::FailStatic);
            x.apply(&with_policies(), t(0)).unwrap();
            x.lost(None, t(1));
        });
        assert_eq!(shared.received().len(), 2);
        let mut imports = shared.watch_imports();
        imports.borrow_and_update();
        assert!(shared.expire(t(60)));
        assert!(imports.has_changed().unwrap());
        let left: Vec<String> = shared
            .received()
            .iter()
            .map(|r| r.policy.name.clone())
            .collect();
        assert_eq!(left, ["deny-batch"]);
        // Heard again: its full state decides (here: no policy at all).
        shared.update("eu-central", |x| x.apply(&full(vec![]), t(500)).unwrap());
        assert!(shared.received().is_empty());
        // A deleted link takes its security policies with it.
        shared.update("eu-central", |x| {
            x.apply(&with_policies(), t(600)).unwrap();
            x.lost(None, t(601));
        });
        shared.remove("eu-central");
        assert!(shared.received().is_empty());
    }

    #[test]
    fn policy_deltas_patch_what_is_held() {
        let mut p = peer(PartitionMode::FailStatic);
        p.apply(&with_policies(), t(0)).unwrap();
        let mut d = delta(2, vec![], &[]);
        d.removed_policies = vec!["HTTPRoute/shop/canary".into()];
        p.apply(&d, t(1)).unwrap();
        assert_eq!(kinds(&p), ["AuthorizationPolicy"]);
    }

    #[test]
    fn a_peer_never_heard_imports_nothing_and_a_removed_one_goes() {
        let shared = Peers::default();
        shared.update("us-east", |p| {
            p.lost(
                Some(Refusal {
                    reason: "TokenExpired".into(),
                    message: "m".into(),
                }),
                t(0),
            )
        });
        assert!(shared.summaries().is_empty());
        assert_eq!(shared.next_expiry(), None);
        assert_eq!(
            shared.get("us-east").unwrap().refusal.unwrap().reason,
            "TokenExpired"
        );
        shared.update("eu-central", |p| {
            p.partition = Some(Partition {
                mode: PartitionMode::FailStatic,
                ttl: Duration::from_secs(60),
            });
            p.apply(&full(vec![svc("catalog", 2)]), t(0)).unwrap()
        });
        let mut imports = shared.watch_imports();
        imports.borrow_and_update();
        shared.remove("eu-central");
        assert!(imports.has_changed().unwrap());
        assert!(shared.summaries().is_empty());
    }
}
