//! Workloads that announced themselves. A sidecar that connects to the
//! control plane registers its workload (name, namespace, service account,
//! labels, address, ports, locality); in `files` mode this is how endpoints
//! exist. When its stream drops, the workload stays for a grace period (a
//! restart or a control-plane blip must not empty a service), then goes.
//! Its sidecar also says which of its ports fail their health check
//! (health at the source): the workload stays, unhealthy in the Services
//! that target those ports. Time is passed in: the registry is plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a sidecar says about its workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub address: IpAddr,
    /// Container ports by name ("" when unnamed).
    pub ports: Vec<(String, u16)>,
    pub region: String,
    pub zone: String,
    /// The sidecar's mesh transport port, when it has one.
    pub tunnel_port: Option<u16>,
    /// Ports whose health check fails (its sidecar says so).
    pub unhealthy_ports: BTreeSet<u16>,
}

#[derive(Debug, Clone)]
struct Entry {
    workload: Workload,
    /// When its last stream dropped; None while connected.
    lost_at: Option<Instant>,
    /// Streams currently open for it (a reconnect may overlap the old one).
    streams: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: BTreeMap<(String, String), Entry>,
}

impl Registry {
    /// A stream for this workload opened; returns true if what the mesh
    /// sees changed (new workload, or new address, labels or ports).
    pub fn register(&mut self, w: Workload) -> bool {
        let key = (w.namespace.clone(), w.name.clone());
        match self.entries.get_mut(&key) {
            Some(e) => {
                e.streams += 1;
                e.lost_at = None;
                let changed = e.workload != w;
                e.workload = w;
                changed
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        workload: w,
                        lost_at: None,
                        streams: 1,
                    },
                );
                true
            }
        }
    }

    /// Its sidecar says which ports fail their health check now; true if
    /// that changed what the mesh sees. Unknown workloads are ignored (a
    /// stream registers before it reports).
    pub fn set_health(&mut self, namespace: &str, name: &str, unhealthy: BTreeSet<u16>) -> bool {
        match self
            .entries
            .get_mut(&(namespace.to_string(), name.to_string()))
        {
            Some(e) if e.workload.unhealthy_ports != unhealthy => {
                e.workload.unhealthy_ports = unhealthy;
                true
            }
            _ => false,
        }
    }

    /// A stream for this workload closed at `now`.
    pub fn disconnected(&mut self, namespace: &str, name: &str, now: Instant) {
        if let Some(e) = self
            .entries
            .get_mut(&(namespace.to_string(), name.to_string()))
        {
            e.streams = e.streams.saturating_sub(1);
            if e.streams == 0 {
                e.lost_at = Some(now);
            }
        }
    }

    /// Drops workloads disconnected for longer than `grace`; true if any went.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> bool {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            e.lost_at
                .is_none_or(|at| now.saturating_duration_since(at) < grace)
        });
        self.entries.len() != before
    }

    /// When the next workload would expire, if one is disconnected.
    pub fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.lost_at)
            .min()
            .map(|at| at + grace)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.entries.values().map(|e| &e.workload)
    }
}

/// The registry as the control plane shares it: streams register and
/// leave; the publisher is told when what the mesh sees changed.
#[derive(Debug)]
pub struct Shared {
    registry: parking_lot::Mutex<Registry>,
    changed: tokio::sync::Notify,
    /// Set when what the mesh sees changed since the last `take_dirty`.
    dirty: std::sync::atomic::AtomicBool,
    pub grace: Duration,
}

impl Shared {
    pub fn new(grace: Duration) -> Self {
        Self {
            registry: Default::default(),
            changed: Default::default(),
            dirty: Default::default(),
            grace,
        }
    }

    pub fn register(&self, w: Workload) {
        if self.lock().register(w) {
            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    pub fn set_health(&self, namespace: &str, name: &str, unhealthy: BTreeSet<u16>) {
        if self.lock().set_health(namespace, name, unhealthy) {
            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    pub fn disconnected(&self, namespace: &str, name: &str) {
        self.lock().disconnected(namespace, name, Instant::now());
        // Nothing changes yet; the publisher re-arms its expiry timer.
        self.changed.notify_one();
    }

    /// Drops what outlived the grace period; true if anything went.
    pub fn expire(&self) -> bool {
        self.lock().expire(Instant::now(), self.grace)
    }

    pub fn next_expiry(&self) -> Option<Instant> {
        self.lock().next_expiry(self.grace)
    }

    /// Whether registrations changed what the mesh sees since last asked.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when the registry may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn workloads(&self) -> Vec<Workload> {
        self.lock().workloads().cloned().collect()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Registry> {
        self.registry.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, ip: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: "catalog".into(),
            labels: [("app".to_string(), "catalog".to_string())].into(),
            address: ip.parse().unwrap(),
            ports: vec![("http".into(), 8080)],
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            tunnel_port: None,
            unhealthy_ports: BTreeSet::new(),
        }
    }

    #[test]
    fn workloads_stay_for_the_grace_period_after_their_stream_drops() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut r = Registry::default();
        assert!(r.register(w("catalog-1", "10.0.0.1")));
        assert!(r.register(w("catalog-2", "10.0.0.2")));
        assert!(
            !r.register(w("catalog-1", "10.0.0.1")),
            "same again: no change"
        );
        // catalog-1 has two streams now (a reconnect overlapping); one closes.
        r.disconnected("shop", "catalog-1", t0);
        assert_eq!(
            r.next_expiry(grace),
            None,
            "still connected by the other stream"
        );
        r.disconnected("shop", "catalog-1", t0);
        r.disconnected("shop", "catalog-2", t0 + Duration::from_secs(10));
        assert_eq!(r.next_expiry(grace), Some(t0 + grace));
        assert!(!r.expire(t0 + Duration::from_secs(29), grace));
        assert_eq!(r.workloads().count(), 2);
        assert!(r.expire(t0 + grace, grace));
        let left: Vec<&str> = r.workloads().map(|w| w.name.as_str()).collect();
        assert_eq!(left, ["catalog-2"]);
        // Coming back within the grace period keeps it, and a new address
        // is a change.
        assert!(r.register(w("catalog-2", "10.0.0.9")));
        assert!(!r.expire(t0 + Duration::from_secs(3600), grace));
        assert_eq!(r.next_expiry(grace), None);
    }

    #[test]
    fn health_changes_are_changes_and_a_reregistration_carries_its_own() {
        let mut r = Registry::default();
        assert!(
            !r.set_health("shop", "catalog-1", [8080].into()),
            "unknown: ignored"
        );
        assert!(r.register(w("catalog-1", "10.0.0.1")));
        assert!(r.set_health("shop", "catalog-1", [8080].into()));
        assert!(!r.set_health("shop", "catalog-1", [8080].into()), "same");
        assert_eq!(
            r.workloads().next().unwrap().unhealthy_ports,
            BTreeSet::from([8080])
        );
        assert!(r.set_health("shop", "catalog-1", BTreeSet::new()));
        // A reconnecting sidecar registers with what it checks now.
        let mut sick = w("catalog-1", "10.0.0.1");
        sick.unhealthy_ports = [8080].into();
        assert!(r.register(sick));
        assert!(!r.workloads().next().unwrap().unhealthy_ports.is_empty());
    }
}
