//! The live discovery streams, for /config_dump, /proxies (each proxy
//! synced, stale or refused: `isthmusctl proxy-status`) and for waiting
//! on ACKs,
//! and the conditions their refusals put on resources: a NACK of
//! `service/<name>.<ns>` marks the Service and every route and policy that
//! shapes it `Programmed=False` (reason `RejectedByProxy`) with the proxy's
//! message, until a later version is accepted.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;
use tokio::sync::watch;

use super::stream::Refusal;
use crate::resources::condition::{PROGRAMMED, REJECTED_BY_PROXY};
use crate::store::{ObjectKey, Resource, Snapshot};

/// One stream as /config_dump shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Subscriber {
    /// `<namespace>/<name>` of the proxy's workload.
    pub proxy: String,
    pub cluster: String,
    pub peer: Option<String>,
    /// Its verified SPIFFE ID (over TLS with a client certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The workload's address: the one it registered, else where its
    /// stream comes from (a pod's IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where its admin port listens, as it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    /// The last generation the proxy is known to be up to date with.
    pub synced_generation: Option<u64>,
    /// Nonce and generation of the response awaiting its answer.
    pub in_flight: Option<(String, u64)>,
    /// Resources the proxy holds.
    pub resources: usize,
    pub acks: u64,
    pub nacks: u64,
    /// Resources it refused (name -> version and message).
    pub refused: BTreeMap<String, RefusalView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefusalView {
    pub version: String,
    pub message: String,
}

impl From<&Refusal> for RefusalView {
    fn from(r: &Refusal) -> Self {
        Self {
            version: r.version.clone(),
            message: r.message.clone(),
        }
    }
}

/// All live streams, by stream id.
#[derive(Debug)]
pub struct Subscribers {
    streams: Mutex<BTreeMap<u64, Subscriber>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Bumped on every change, so tests and benchmarks can wait for ACKs.
    changes: watch::Sender<u64>,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            streams: Mutex::default(),
            next_id: Default::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Subscribers {
    pub fn add(&self, s: Subscriber) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.streams.lock().insert(id, s);
        self.changes.send_modify(|c| *c += 1);
        id
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut Subscriber)) {
        if let Some(s) = self.streams.lock().get_mut(&id) {
            f(s);
        }
        self.changes.send_modify(|c| *c += 1);
    }

    pub fn remove(&self, id: u64) {
        self.streams.lock().remove(&id);
        self.changes.send_modify(|c| *c += 1);
    }

    pub fn list(&self) -> Vec<(u64, Subscriber)> {
        self.streams
            .lock()
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many streams are up to date with `generation` or later.
    pub fn synced_at_least(&self, generation: u64) -> usize {
        self.streams
            .lock()
            .values()
            .filter(|s| s.synced_generation.is_some_and(|g| g >= generation))
            .count()
    }

    /// Changes to the table (a counter).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Refused resources: name -> (proxy, message), over all streams.
    pub fn refusals(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for s in self.streams.lock().values() {
            for (name, r) in &s.refused {
                out.entry(name.clone())
                    .or_default()
                    .push((s.proxy.clone(), r.message.clone()));
            }
        }
        out
    }
}

/// Where one proxy stands against the control plane's current
/// generation (`/proxies`, what `isthmusctl proxy-status` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub proxy: String,
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// `Synced`: up to date with the current generation; `Stale`: behind
    /// (an answer awaited, or never synced); `Refused`: it NACKed a
    /// resource and keeps its last good one.
    pub state: String,
    pub synced_generation: Option<u64>,
    pub acks: u64,
    pub nacks: u64,
    /// Why, when not Synced: the refusals (`<resource> <version>:
    /// <message>`) or what it is behind on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

/// The proxies as of `generation` (pure), by proxy name.
pub fn proxy_status(generation: u64, streams: &[(u64, Subscriber)]) -> Vec<ProxyStatus> {
    let mut out: Vec<ProxyStatus> = streams
        .iter()
        .map(|(_, s)| {
            let (state, why) = if !s.refused.is_empty() {
                let why = s
                    .refused
                    .iter()
                    .map(|(name, r)| format!("{name} {}: {}", r.version, r.message))
                    .collect();
                ("Refused", why)
            } else if s.synced_generation == Some(generation) && s.in_flight.is_none() {
                ("Synced", Vec::new())
            } else {
                let why = match (&s.in_flight, s.synced_generation) {
                    (Some((_, g)), _) => format!("awaiting its answer to generation {g}"),
                    (None, Some(g)) => format!("at generation {g} of {generation}"),
                    (None, None) => "never synced".to_string(),
                };
                ("Stale", vec![why])
            };
            ProxyStatus {
                proxy: s.proxy.clone(),
                cluster: s.cluster.clone(),
                identity: s.identity.clone(),
                address: s.address.clone(),
                admin: s.admin.clone(),
                state: state.into(),
                synced_generation: s.synced_generation,
                acks: s.acks,
                nacks: s.nacks,
                why,
            }
        })
        .collect();
    out.sort_by(|a, b| a.proxy.cmp(&b.proxy));
    out
}

/// `Programmed=False` conditions for the objects behind refused resources.
pub fn programmed_conditions(
    snap: &Snapshot,
    refusals: &BTreeMap<String, Vec<(String, String)>>,
    now: &Time,
) -> BTreeMap<(&'static str, ObjectKey), Condition> {
    let mut out = BTreeMap::new();
    for (name, by) in refusals {
        let Some((svc, ns)) = name
            .strip_prefix(isthmus_api::resource::SERVICE)
            .and_then(|s| s.split_once('.'))
        else {
            continue;
        };
        let proxies: BTreeSet<&str> = by.iter().map(|(p, _)| p.as_str()).collect();
        let messages: BTreeSet<&str> = by.iter().map(|(_, m)| m.as_str()).collect();
        let message = format!(
            "{} prox{} refused service {svc}.{ns} ({}): {}",
            proxies.len(),
            if proxies.len() == 1 { "y" } else { "ies" },
            proxies.into_iter().collect::<Vec<_>>().join(", "),
            messages.into_iter().collect::<Vec<_>>().join("; "),
        );
        for (kind, key, generation) in shaping(snap, svc, ns) {
            out.insert(
                (kind, key),
                Condition {
                    type_: PROGRAMMED.into(),
                    status: "False".into(),
                    reason: REJECTED_BY_PROXY.into(),
                    message: message.clone(),
                    observed_generation: generation,
                    last_transition_time: now.clone(),
                },
            );
        }
    }
    out
}

/// The objects that shape service `svc` in namespace `ns`: the Service,
/// routes attached to it, and DestinationPolicies targeting it.
fn shaping(snap: &Snapshot, svc: &str, ns: &str) -> Vec<(&'static str, ObjectKey, Option<i64>)> {
    let mut out = Vec::new();
    let key = ObjectKey {
        namespace: Some(ns.to_string()),
        name: svc.to_string(),
    };
    if let Some(Resource::Service(s)) = snap.get("Service", &key) {
        out.push(("Service", key, s.metadata.generation));
    }
    let attached = |route_ns: Option<&str>,
                    parents: &[crate::resources::gateway_api::ParentReference]| {
        parents.iter().any(|p| {
            p.kind.as_deref() == Some("Service")
                && p.name == svc
                && p.namespace.as_deref().or(route_ns).unwrap_or("default") == ns
        })
    };
    for kind in ["HTTPRoute", "GRPCRoute", "DestinationPolicy"] {
        for (k, r) in snap.of_kind(kind) {
            let (meta, hit) = match r {
                Resource::HttpRoute(h) => (
                    &h.metadata,
                    attached(k.namespace.as_deref(), &h.spec.parent_refs),
                ),
                Resource::GrpcRoute(g) => (
                    &g.metadata,
                    attached(k.namespace.as_deref(), &g.spec.parent_refs),
                ),
                Resource::DestinationPolicy(p) => (
                    &p.metadata,
                    k.namespace.as_deref() == Some(ns) && p.spec.target_ref.name == svc,
                ),
                _ => continue,
            };
            if hit {
                out.push((r.kind(), k.clone(), meta.generation));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(proxy: &str, synced: Option<u64>, in_flight: Option<u64>) -> (u64, Subscriber) {
        (
            0,
            Subscriber {
                proxy: proxy.into(),
                cluster: "eu-west".into(),
                peer: None,
                identity: None,
                address: None,
                admin: None,
                connected_at: 0,
                synced_generation: synced,
                in_flight: in_flight.map(|g| ("n".to_string(), g)),
                resources: 3,
                acks: 4,
                nacks: 0,
                refused: BTreeMap::new(),
            },
        )
    }

    #[test]
    fn each_proxy_is_synced_stale_or_refused_and_says_why() {
        let mut nacked = stream("shop/a", Some(6), None);
        nacked.1.nacks = 1;
        nacked.1.refused.insert(
            "service/catalog.shop".into(),
            RefusalView {
                version: "v7".into(),
                message: "port 80 is gone".into(),
            },
        );
        let all = [
            stream("shop/d", Some(7), None),
            stream("shop/c", Some(6), None),
            stream("shop/b", Some(6), Some(7)),
            nacked,
            stream("shop/e", None, None),
        ];
        let seen: Vec<(String, String, Vec<String>)> = proxy_status(7, &all)
            .into_iter()
            .map(|p| (p.proxy, p.state, p.why))
            .collect();
        let row = |p: &str, s: &str, why: &[&str]| {
            (
                p.to_string(),
                s.to_string(),
                why.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            seen,
            [
                row(
                    "shop/a",
                    "Refused",
                    &["service/catalog.shop v7: port 80 is gone"]
                ),
                row("shop/b", "Stale", &["awaiting its answer to generation 7"]),
                row("shop/c", "Stale", &["at generation 6 of 7"]),
                row("shop/d", "Synced", &[]),
                row("shop/e", "Stale", &["never synced"]),
            ]
        );
    }
}
