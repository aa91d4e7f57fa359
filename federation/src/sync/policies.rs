//! Policies shared with the cluster set (issue 22): routing and security
//! resources labelled `isthmus.dev/clusterset: "true"` travel to every
//! linked cluster that imports from us — or, with the annotation
//! `isthmus.dev/clusterset-clusters: "eu-central,us-east"`, to the named
//! ones — in the sync's `exports` messages, beside the services and
//! versioned with them. Each cluster applies what it receives with its own
//! services (`translate::received`).
//!
//! Why a label, and not a resource selecting kinds and namespaces: it
//! travels with the object, so the author sees in one file (and GitOps in
//! one diff) whether a policy is the cluster set's; `kubectl get httproute
//! -A -l isthmus.dev/clusterset=true` lists them; and no second object has
//! to be kept in step with the first.
//!
//! Pure: selection, the wire form (the object as JSON, status and managed
//! fields left out), reading it back, deltas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isthmus_api::federation::v1 as wire;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::store::{ObjectKey, Resource, Snapshot};

/// The label that shares a policy with the cluster set.
pub const CLUSTERSET_LABEL: &str = "isthmus.dev/clusterset";

/// With the label: the clusters it goes to (comma separated), not all.
pub const CLUSTERS_ANNOTATION: &str = "isthmus.dev/clusterset-clusters";

/// The kinds that can be shared: routing first, then security.
pub const KINDS: [&str; 7] = [
    "HTTPRoute",
    "GRPCRoute",
    "DestinationPolicy",
    "FaultInjection",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "RequestAuthentication",
];

/// Security kinds: a cluster keeps the ones it received from a linked
/// cluster that went silent until that cluster is heard again or its link
/// is deleted, whatever the partition mode (withdrawing a DENY, the only
/// ALLOW of a workload, a STRICT mTLS mode or a JWT requirement would widen
/// access because a peer is unreachable).
pub fn is_security(kind: &str) -> bool {
    matches!(
        kind,
        "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication"
    )
}

/// A shared policy's name on the wire: `<Kind>/<namespace>/<name>`.
pub fn wire_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// One policy we share, and where to.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    pub policy: wire::SharedPolicy,
    /// None: every linked cluster.
    pub clusters: Option<BTreeSet<String>>,
}

/// What we share, by wire key.
pub type PolicyMap = BTreeMap<String, Shared>;

fn meta(r: &Resource) -> Option<&ObjectMeta> {
    Some(match r {
        Resource::HttpRoute(x) => &x.metadata,
        Resource::GrpcRoute(x) => &x.metadata,
        Resource::DestinationPolicy(x) => &x.metadata,
        Resource::FaultInjection(x) => &x.metadata,
        Resource::AuthorizationPolicy(x) => &x.metadata,
        Resource::PeerAuthentication(x) => &x.metadata,
        Resource::RequestAuthentication(x) => &x.metadata,
        _ => return None,
    })
}

fn to_json(r: &Resource) -> Option<Value> {
    let v = match r {
        Resource::HttpRoute(x) => serde_json::to_value(x),
        Resource::GrpcRoute(x) => serde_json::to_value(x),
        Resource::DestinationPolicy(x) => serde_json::to_value(x),
        Resource::FaultInjection(x) => serde_json::to_value(x),
        Resource::AuthorizationPolicy(x) => serde_json::to_value(x),
        Resource::PeerAuthentication(x) => serde_json::to_value(x),
        Resource::RequestAuthentication(x) => serde_json::to_value(x),
        _ => return None,
    };
    v.ok()
}

/// The object as it travels: apiVersion, kind, the metadata another
/// cluster reads (name, namespace, labels, annotations, creation time,
/// generation) and the spec; no status, no managed fields, no uid.
fn wire_object(kind: &str, r: &Resource) -> Option<String> {
    let mut v = to_json(r)?;
    let api_version = crate::store::KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .map(|(v, _, _)| *v)?;
    let o = v.as_object_mut()?;
    o.remove("status");
    o.insert("apiVersion".into(), Value::from(api_version));
    o.insert("kind".into(), Value::from(kind));
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        const KEEP: [&str; 6] = [
            "name",
            "namespace",
            "labels",
            "annotations",
            "creationTimestamp",
            "generation",
        ];
        m.retain(|k, _| KEEP.contains(&k.as_str()));
    }
    serde_json::to_string(&v).ok()
}

/// The policies of `snap` shared with the cluster set.
pub fn shared(snap: &Snapshot) -> PolicyMap {
    let mut out = PolicyMap::new();
    for kind in KINDS {
        for (key, r) in snap.of_kind(kind) {
            let (Some(m), Some(ns)) = (meta(r), &key.namespace) else {
                continue;
            };
            let labelled = m
                .labels
                .as_ref()
                .and_then(|l| l.get(CLUSTERSET_LABEL))
                .is_some_and(|v| v == "true");
            if !labelled {
                continue;
            }
            let Some(object) = wire_object(kind, r) else {
                continue;
            };
            let clusters = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLUSTERS_ANNOTATION))
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                });
            out.insert(
                wire_key(kind, ns, &key.name),
                Shared {
                    policy: wire::SharedPolicy {
                        kind: kind.to_string(),
                        namespace: ns.clone(),
                        name: key.name.clone(),
                        created_at: m.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
                        generation: m.generation.unwrap_or(0),
                        object,
                    },
                    clusters,
                },
            );
        }
    }
    out
}

/// What `peer` gets of `shared`.
pub fn for_peer(shared: &PolicyMap, peer: &str) -> BTreeMap<String, wire::SharedPolicy> {
    shared
        .iter()
        .filter(|(_, s)| s.clusters.as_ref().is_none_or(|c| c.contains(peer)))
        .map(|(k, s)| (k.clone(), s.policy.clone()))
        .collect()
}

/// Why a received policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{0} is not a kind a cluster set shares (it shares {kinds})", kinds = KINDS.join(", "))]
    Kind(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the object is {got}, not the {claimed} it was sent as")]
    Mismatch { got: String, claimed: String },
}

/// Reads a received policy as the store reads a resource (the same
/// validation): its kind, key and object.
pub fn read(
    p: &wire::SharedPolicy,
    from: &str,
) -> Result<(&'static str, ObjectKey, Arc<Resource>), ReadError> {
    if !KINDS.contains(&p.kind.as_str()) {
        return Err(ReadError::Kind(p.kind.clone()));
    }
    let path = std::path::PathBuf::from(format!(
        "{from}:{}",
        wire_key(&p.kind, &p.namespace, &p.name)
    ));
    let (mut loaded, errors) = crate::store::files::parse_file(&path, &p.object);
    if let Some(e) = errors.first() {
        return Err(ReadError::Invalid(e.message.clone()));
    }
    let count = loaded.len();
    let (1, Some(l)) = (count, loaded.pop()) else {
        return Err(ReadError::Invalid(format!(
            "{count} objects where one was sent: the origin's control plane sent a malformed policy (run the same Isthmus version on both)"
        )));
    };
    let claimed = wire_key(&p.kind, &p.namespace, &p.name);
    let got = wire_key(
        l.kind,
        l.key.namespace.as_deref().unwrap_or_default(),
        &l.key.name,
    );
    if got != claimed {
        return Err(ReadError::Mismatch { got, claimed });
    }
    Ok((l.kind, l.key, l.resource))
}

/// The domain of the per-cluster condition types on a shared policy:
/// `<cluster>.clusters.isthmus.dev/Accepted` (and `/ResolvedRefs` on
/// routes), so the author sees every cluster's verdict on the object.
pub const CLUSTER_CONDITION_DOMAIN: &str = "clusters.isthmus.dev";

/// The cluster a per-cluster condition type names, and the type within
/// (`eu-central.clusters.isthmus.dev/Accepted` → (`eu-central`, `Accepted`)).
pub fn cluster_condition(type_: &str) -> Option<(&str, &str)> {
    let (prefix, t) = type_.split_once('/')?;
    let cluster = prefix
        .strip_suffix(CLUSTER_CONDITION_DOMAIN)?
        .strip_suffix('.')?;
    Some((cluster, t))
}

/// Reasons of an accepted policy that concern its references (a backend
/// missing in that cluster): `ResolvedRefs` False, `Accepted` True, as
/// translation's own conditions say them.
use crate::translate::status::REF_REASONS;

/// Per-cluster conditions on the policies of `snap` that `reports` speak
/// of (what each linked cluster made of them), by kind and key.
pub fn conditions(
    snap: &Snapshot,
    reports: &BTreeMap<String, Vec<wire::PolicyResult>>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> BTreeMap<
    (&'static str, ObjectKey),
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    let mut out: BTreeMap<(&'static str, ObjectKey), Vec<Condition>> = BTreeMap::new();
    for (cluster, results) in reports {
        for r in results {
            let Some(kind) = KINDS.iter().find(|k| **k == r.kind) else {
                continue;
            };
            let key = ObjectKey {
                namespace: Some(r.namespace.clone()),
                name: r.name.clone(),
            };
            // Ours still, and still shared (a report outlives a delete
            // until the cluster sends the next).
            let shared = snap
                .get(kind, &key)
                .and_then(meta)
                .and_then(|m| m.labels.as_ref()?.get(CLUSTERSET_LABEL))
                .is_some_and(|v| v == "true");
            if !shared {
                continue;
            }
            let state = wire::PolicyState::try_from(r.state).unwrap_or(wire::PolicyState::Refused);
            let by_ref = REF_REASONS.contains(&r.reason.as_str());
            let (accepted, reason) = match state {
                wire::PolicyState::Accepted if by_ref || r.reason.is_empty() => (true, "Accepted"),
                wire::PolicyState::Accepted => (false, r.reason.as_str()),
                wire::PolicyState::Overridden => (false, "Overridden"),
                wire::PolicyState::Conflicted => (false, "Conflicted"),
                wire::PolicyState::Refused => (false, "Refused"),
            };
            let condition = |t: &str, ok: bool, reason: &str| Condition {
                type_: format!("{cluster}.{CLUSTER_CONDITION_DOMAIN}/{t}"),
                status: if ok { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: r.message.clone(),
                observed_generation: Some(r.generation),
                last_transition_time: now.clone(),
            };
            let list = out.entry((*kind, key)).or_default();
            list.push(condition("Accepted", accepted, reason));
            if matches!(*kind, "HTTPRoute" | "GRPCRoute") {
                let (ok, why) = if by_ref {
                    (false, r.reason.as_str())
                } else {
                    (true, "ResolvedRefs")
                };
                list.push(condition("ResolvedRefs", ok, why));
            }
        }
    }
    out
}

/// One cluster's verdict on one policy, as `/policies` serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Accepted, Overridden, Conflicted, Refused (or Pending: not heard yet).
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl From<&wire::PolicyResult> for Verdict {
    fn from(r: &wire::PolicyResult) -> Self {
        let state = wire::PolicyState::try_from(r.state).map_or("Unknown", |s| match s {
            wire::PolicyState::Accepted => "Accepted",
            wire::PolicyState::Overridden => "Overridden",
            wire::PolicyState::Conflicted => "Conflicted",
            wire::PolicyState::Refused => "Refused",
        });
        Self {
            state: state.into(),
            reason: r.reason.clone(),
            message: r.message.clone(),
        }
    }
}

/// The policies a control plane shares and receives (`/policies`, what
/// `isthmusctl status` shows): by `<Kind> <ns>/<name>`, each cluster's
/// verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    /// Ours, shared: by linked cluster, what it made of it.
    pub shared: BTreeMap<String, BTreeMap<String, Verdict>>,
    /// Theirs: by origin cluster, what we made of it.
    pub received: BTreeMap<String, BTreeMap<String, Verdict>>,
}

/// The view of what we share (`ours`, with `reports` from the clusters)
/// and what we received (`received`, by origin then wire key).
pub fn view(
    ours: &PolicyMap,
    reports: &BTreeMap<String, Vec<wire::PolicyResult>>,
    received: &BTreeMap<String, BTreeMap<String, wire::PolicyResult>>,
) -> View {
    let label = |kind: &str, ns: &str, name: &str| format!("{kind} {ns}/{name}");
    let mut out = View::default();
    for s in ours.values() {
        let p = &s.policy;
        out.shared
            .entry(label(&p.kind, &p.namespace, &p.name))
            .or_default();
    }
    for (cluster, results) in reports {
        for r in results {
            if let Some(v) = out.shared.get_mut(&label(&r.kind, &r.namespace, &r.name)) {
                v.insert(cluster.clone(), r.into());
            }
        }
    }
    for (cluster, results) in received {
        for r in results.values() {
            out.received
                .entry(label(&r.kind, &r.namespace, &r.name))
                .or_default()
                .insert(cluster.clone(), r.into());
        }
    }
    out
}

/// What each linked cluster said it made of the policies we share with
/// it (its `PolicyStatus`, the last one each sent), shared between the
/// sync server, the status writers and the admin port.
#[derive(Debug)]
pub struct Reports {
    by_cluster: parking_lot::Mutex<BTreeMap<String, Vec<wire::PolicyResult>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            by_cluster: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Reports {
    /// `cluster`'s report replaces the one before it.
    pub fn set(&self, cluster: &str, results: Vec<wire::PolicyResult>) {
        let mut all = self.by_cluster.lock();
        if all.get(cluster) == Some(&results) {
            return;
        }
        all.insert(cluster.to_string(), results);
        drop(all);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The last reports of the clusters `snap` still has a ClusterLink to
    /// (a deleted link's verdicts leave the objects with it).
    pub fn linked(&self, snap: &Snapshot) -> BTreeMap<String, Vec<wire::PolicyResult>> {
        let peers: BTreeSet<&str> = snap
            .of_kind("ClusterLink")
            .filter_map(|(_, r)| match r {
                Resource::ClusterLink(l) => Some(l.spec.peer.as_str()),
                _ => None,
            })
            .collect();
        self.by_cluster
            .lock()
            .iter()
            .filter(|(c, _)| peers.contains(c.as_str()))
            .map(|(c, r)| (c.clone(), r.clone()))
            .collect()
    }

    /// What the clusters said of one of our policies, by cluster.
    pub fn of(&self, kind: &str, key: &ObjectKey) -> BTreeMap<String, wire::PolicyResult> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        self.by_cluster
            .lock()
            .iter()
            .filter_map(|(c, rs)| {
                let r = rs
                    .iter()
                    .find(|r| r.kind == kind && r.namespace == ns && r.name == key.name)?;
                Some((c.clone(), r.clone()))
            })
            .collect()
    }

    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: shop
  labels: {isthmus.dev/clusterset: "true", team: shop}
  creationTimestamp: "2026-01-02T03:04:05Z"
  generation: 3
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs:
        - {name: reviews, port: 80, weight: 90}
        - {name: reviews-us-east, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: local-only, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 80}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-batch
  namespace: shop
  labels: {isthmus.dev/clusterset: "true"}
  annotations: {isthmus.dev/clusterset-clusters: "eu-central, us-east"}
spec:
  action: DENY
  rules: [{from: [{principals: ["*/ns/batch/*"]}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: labelled-false
  namespace: shop
  labels: {isthmus.dev/clusterset: "false"}
spec:
  action: DENY
  rules: [{from: [{principals: ["*/ns/batch/*"]}]}]
"#;

    fn snap(text: &str) -> Snapshot {
        crate::store::files::snapshot_of(text)
    }

    #[test]
    fn labelled_policies_are_shared_with_the_clusters_named() {
        let s = shared(&snap(STORE));
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "AuthorizationPolicy/shop/deny-batch",
                "HTTPRoute/shop/reviews-canary"
            ]
        );
        let route = &s["HTTPRoute/shop/reviews-canary"].policy;
        assert_eq!((route.created_at, route.generation), (1_767_323_045, 3));
        let deny = &s["AuthorizationPolicy/shop/deny-batch"];
        let named: Vec<&str> = deny.clusters.iter().flatten().map(String::as_str).collect();
        assert_eq!(named, ["eu-central", "us-east"]);
        let to = |peer: &str| -> Vec<String> { for_peer(&s, peer).into_keys().collect() };
        assert_eq!(to("eu-central").len(), 2);
        assert_eq!(to("ap-south"), ["HTTPRoute/shop/reviews-canary"]);
    }

    #[test]
    fn a_shared_policy_reads_back_as_it_was_written() {
        let local = snap(STORE);
        let s = shared(&local);
        for (k, sh) in &s {
            let (kind, key, r) = read(&sh.policy, "eu-west").unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(kind, sh.policy.kind);
            let original = local.get(kind, &key).unwrap();
            // The same object, but for what does not travel.
            assert_eq!(
                to_json(&r).unwrap()["spec"],
                to_json(original).unwrap()["spec"],
                "{k}"
            );
            assert_eq!(meta(&r).unwrap().labels, meta(original).unwrap().labels);
        }
        let o: Value =
            serde_json::from_str(&s["HTTPRoute/shop/reviews-canary"].policy.object).unwrap();
        assert!(o.get("status").is_none());
        let m: Vec<&str> = o["metadata"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            m,
            [
                "creationTimestamp",
                "generation",
                "labels",
                "name",
                "namespace"
            ]
        );
    }

    #[test]
    fn what_cannot_be_read_is_refused_by_name() {
        let good = shared(&snap(STORE))["HTTPRoute/shop/reviews-canary"]
            .policy
            .clone();
        let bad = |f: &dyn Fn(&mut wire::SharedPolicy)| {
            let mut p = good.clone();
            f(&mut p);
            read(&p, "eu-west").unwrap_err()
        };
        assert!(matches!(
            bad(&|p| p.kind = "Secret".into()),
            ReadError::Kind(_)
        ));
        assert!(matches!(
            bad(&|p| p.name = "other".into()),
            ReadError::Mismatch { .. }
        ));
        assert!(matches!(
            bad(&|p| p.object = "{not yaml".into()),
            ReadError::Invalid(_)
        ));
        let e = bad(&|p| {
            p.object = p.object.replace("\"weight\":10", "\"weight\":-5");
        });
        assert!(matches!(e, ReadError::Invalid(_)), "{e:?}");
    }

    #[test]
    fn each_clusters_verdict_is_a_condition_on_the_shared_policy() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let result =
            |kind: &str, name: &str, state: wire::PolicyState, reason: &str| wire::PolicyResult {
                kind: kind.into(),
                namespace: "shop".into(),
                name: name.into(),
                generation: 3,
                state: state as i32,
                reason: reason.into(),
                message: "m".into(),
            };
        use wire::PolicyState::*;
        let reports: BTreeMap<String, Vec<wire::PolicyResult>> = [
            (
                "us-east".to_string(),
                vec![
                    result("HTTPRoute", "reviews-canary", Accepted, "BackendNotFound"),
                    result("AuthorizationPolicy", "deny-batch", Refused, "Invalid"),
                    // Not shared (any more): no condition.
                    result("HTTPRoute", "local-only", Accepted, ""),
                ],
            ),
            (
                "eu-central".to_string(),
                vec![
                    result("HTTPRoute", "reviews-canary", Overridden, "LocalOverride"),
                    result("AuthorizationPolicy", "deny-batch", Accepted, ""),
                ],
            ),
        ]
        .into();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let c = conditions(&snap(STORE), &reports, &now);
        let of = |kind: &'static str, name: &str| -> Vec<(String, String, String)> {
            let key = ObjectKey {
                namespace: Some("shop".into()),
                name: name.into(),
            };
            c.get(&(kind, key))
                .into_iter()
                .flatten()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        };
        let t = |a: &str, b: &str, d: &str| (a.to_string(), b.to_string(), d.to_string());
        assert_eq!(
            of("HTTPRoute", "reviews-canary"),
            [
                t(
                    "eu-central.clusters.isthmus.dev/Accepted",
                    "False",
                    "Overridden"
                ),
                t(
                    "eu-central.clusters.isthmus.dev/ResolvedRefs",
                    "True",
                    "ResolvedRefs"
                ),
                t("us-east.clusters.isthmus.dev/Accepted", "True", "Accepted"),
                t(
                    "us-east.clusters.isthmus.dev/ResolvedRefs",
                    "False",
                    "BackendNotFound"
                ),
            ]
        );
        assert_eq!(
            of("AuthorizationPolicy", "deny-batch"),
            [
                t(
                    "eu-central.clusters.isthmus.dev/Accepted",
                    "True",
                    "Accepted"
                ),
                t("us-east.clusters.isthmus.dev/Accepted", "False", "Refused"),
            ]
        );
        assert!(of("HTTPRoute", "local-only").is_empty());
        assert_eq!(
            cluster_condition("us-east.clusters.isthmus.dev/Accepted"),
            Some(("us-east", "Accepted"))
        );
        assert_eq!(cluster_condition("Accepted"), None);
        assert_eq!(cluster_condition("example.com/Accepted"), None);
    }

    #[test]
    fn reports_count_while_their_cluster_is_linked() {
        let reports = Reports::default();
        let mut changed = reports.watch();
        reports.set("eu-central", vec![wire::PolicyResult::default()]);
        reports.set("gone", vec![wire::PolicyResult::default()]);
        assert!(changed.has_changed().unwrap());
        changed.borrow_and_update();
        reports.set("gone", vec![wire::PolicyResult::default()]);
        assert!(
            !changed.has_changed().unwrap(),
            "the same report again: no change"
        );
        let links = snap(
            "apiVersion: isthmus.dev/v1alpha1\nkind: ClusterLink\nmetadata: {name: eu-central}\n\
             spec: {peer: eu-central, region: eu-central, gateway: {quic: \"127.0.0.1:15443\"}, \
             trustDomain: eu-central.isthmus.local, trustBundle: \"\", credentialsSecretRef: {name: l}}\n",
        );
        let linked: Vec<String> = reports.linked(&links).into_keys().collect();
        assert_eq!(linked, ["eu-central"]);
    }

    #[test]
    fn deltas_name_what_changed_and_what_went() {
        let s = for_peer(&shared(&snap(STORE)), "eu-central");
        let delta = super::super::exports::delta::<wire::SharedPolicy>;
        assert_eq!(delta(&s, &s), (vec![], vec![]));
        let mut changed = s.clone();
        changed
            .get_mut("HTTPRoute/shop/reviews-canary")
            .unwrap()
            .generation = 4;
        changed.remove("AuthorizationPolicy/shop/deny-batch");
        let (c, r) = delta(&s, &changed);
        assert_eq!(c.len(), 1);
        assert_eq!(r, ["AuthorizationPolicy/shop/deny-batch"]);
    }
}
