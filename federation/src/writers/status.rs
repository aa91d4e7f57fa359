//! Status conditions written back to the resources they are about (`kube`
//! mode, by the leader): `Accepted` and `ResolvedRefs` from translation,
//! `Programmed` from proxies' NACKs. Only what changed since the last write
//! is written, and a condition whose status did not change keeps its
//! `lastTransitionTime`.
//!
//! - Our policies (`isthmus.dev`) own their status: server-side apply of
//!   `status.conditions` with our field manager.
//! - Routes share `status.parents` with every other controller (the list
//!   is atomic in the Gateway API CRDs): we replace only the entries with
//!   our `controllerName`, keep the others, and send the object's
//!   resourceVersion so a concurrent writer makes ours a 409, retried on
//!   the next round, never a lost update.
//! - ClusterLinks get their whole status: the sync's (connected, transport,
//!   RTT, last sync, imports, staleness, `Connected`) with translation's
//!   conditions; the RTT is rewritten when it moves by a millisecond.
//! - Other kinds (core Services) are not written: their conditions show in
//!   /config_dump.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;

use crate::resources::gateway_api::{ParentReference, RouteParentStatus};
use crate::resources::link::ClusterLinkStatus;
use crate::store::{ObjectKey, Resource, Snapshot};

pub const FIELD_MANAGER: &str = "isthmus-federation";
/// Our `controllerName` in route status.
pub const CONTROLLER_NAME: &str = "isthmus.dev/mesh";

/// What decides whether a condition changed (everything but the time).
type Seen = Vec<(String, String, String, String, Option<i64>)>;

fn seen(c: &[Condition]) -> Seen {
    c.iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
                c.observed_generation,
            )
        })
        .collect()
}

/// Keeps `lastTransitionTime` of conditions whose type and status are what
/// the object already says.
fn keep_times(mut new: Vec<Condition>, old: &[Condition]) -> Vec<Condition> {
    for c in &mut new {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    new
}

pub struct StatusWriter {
    client: Client,
    written: HashMap<(&'static str, ObjectKey), Seen>,
    /// Each ClusterLink's runtime status (the sync's), by name.
    links: BTreeMap<String, ClusterLinkStatus>,
    mcs: crate::store::kube::Mcs,
}

/// What of a link's runtime status is worth a write: its state, imports
/// and conditions, the RTT to the millisecond, the last sync to 30 s and
/// staleness to 10 s (an RTT that moves by microseconds is not news).
fn link_seen(l: &ClusterLinkStatus) -> (String, String, String, String, Option<i64>) {
    (
        "link".into(),
        format!("{} {:?}", l.connected, l.transport),
        format!("{:?}", l.imported_services),
        format!(
            "{:?} {:?} {:?}",
            l.rtt_millis.map(|r| r.round() as i64),
            l.last_sync.as_ref().map(|t| t.0.as_second() / 30),
            l.stale_seconds.map(|s| s / 10),
        ),
        None,
    )
}

impl StatusWriter {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: HashMap::new(),
            links: BTreeMap::new(),
            mcs: Default::default(),
        }
    }

    /// Writes MCS kinds' status in this version (`Mcs::discover`).
    pub fn with_mcs(mut self, mcs: crate::store::kube::Mcs) -> Self {
        self.mcs = mcs;
        self
    }

    /// The links' runtime status for the next `write`: ClusterLinks get it
    /// with their conditions (`Connected` beside `Accepted`).
    pub fn set_links(&mut self, links: BTreeMap<String, ClusterLinkStatus>) {
        self.links = links;
    }

    /// Forgets what was written (after losing and regaining leadership,
    /// another replica may have written since).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Writes every object's conditions that differ from the last write.
    /// Returns how many objects were written and what failed.
    pub async fn write(
        &mut self,
        snap: &Snapshot,
        conditions: &BTreeMap<(&'static str, ObjectKey), Vec<Condition>>,
    ) -> (usize, Vec<String>) {
        let (mut written, mut errors) = (0, Vec::new());
        for ((kind, key), conds) in conditions {
            let link = (*kind == "ClusterLink")
                .then(|| self.links.get(&key.name).cloned())
                .flatten();
            let mut s = seen(conds);
            if let Some(l) = &link {
                s.extend(seen(&l.conditions));
                s.push(link_seen(l));
            }
            if self.written.get(&(*kind, key.clone())) == Some(&s) {
                continue;
            }
            let Some(obj) = snap.get(kind, key) else {
                continue;
            };
            let policy = |status: Option<&crate::resources::destination::PolicyStatus>| {
                keep_times(conds.clone(), status.map_or(&[][..], |s| &s.conditions[..]))
            };
            let api = self.api(kind, key);
            let result = match obj {
                Resource::DestinationPolicy(p) => {
                    apply_policy(&api, self.mcs, kind, key, policy(p.status.as_ref())).await
                }
                Resource::AuthorizationPolicy(p) => {
                    apply_policy(&api, self.mcs, kind, key, policy(p.status.as_ref())).await
                }
                Resource::PeerAuthentication(p) => {
                    apply_policy(&api, self.mcs, kind, key, policy(p.status.as_ref())).await
                }
                Resource::RequestAuthentication(p) => {
                    apply_policy(&api, self.mcs, kind, key, policy(p.status.as_ref())).await
                }
                Resource::FaultInjection(p) => {
                    apply_policy(&api, self.mcs, kind, key, policy(p.status.as_ref())).await
                }
                Resource::ServiceExport(e) => {
                    let current = e.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
                    apply_policy(
                        &api,
                        self.mcs,
                        kind,
                        key,
                        keep_times(conds.clone(), current),
                    )
                    .await
                }
                Resource::ClusterLink(l) => {
                    let current = l.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
                    let mut all = conds.clone();
                    let mut status = link.clone().unwrap_or_default();
                    all.append(&mut status.conditions);
                    status.conditions = keep_times(all, current);
                    apply_status(&api, self.mcs, kind, key, json!(status)).await
                }
                Resource::HttpRoute(r) => {
                    let current = r.status.as_ref().map_or(&[][..], |s| &s.parents[..]);
                    merge_route(&api, key, &r.metadata, &r.spec.parent_refs, current, conds).await
                }
                Resource::GrpcRoute(r) => {
                    let current = r.status.as_ref().map_or(&[][..], |s| &s.parents[..]);
                    merge_route(&api, key, &r.metadata, &r.spec.parent_refs, current, conds).await
                }
                _ => continue,
            };
            match result {
                Ok(()) => {
                    written += 1;
                    self.written.insert((*kind, key.clone()), s);
                }
                Err(e) => errors.push(format!("status of {kind} {key}: {e}")),
            }
        }
        (written, errors)
    }

    /// The status API of `kind` in the object's namespace.
    fn api(&self, kind: &str, key: &ObjectKey) -> Api<DynamicObject> {
        let ar = crate::store::kube::api_resource_in(kind, self.mcs);
        match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }
}

/// The controllerName of a linked cluster's entries in a shared route's
/// `status.parents`.
pub const CLUSTER_CONTROLLER_PREFIX: &str = "isthmus.dev/cluster/";

/// A route's `status.parents` with ours replaced (pure): ours, then each
/// cluster's, for every Service parent.
fn route_parents(
    parent_refs: &[ParentReference],
    current: &[RouteParentStatus],
    conditions: &[Condition],
) -> Vec<RouteParentStatus> {
    let ours = |c: &str| c == CONTROLLER_NAME || c.starts_with(CLUSTER_CONTROLLER_PREFIX);
    let mut by_controller: BTreeMap<String, Vec<Condition>> = BTreeMap::new();
    for c in conditions {
        match crate::sync::policies::cluster_condition(&c.type_) {
            Some((cluster, t)) => by_controller
                .entry(format!("{CLUSTER_CONTROLLER_PREFIX}{cluster}"))
                .or_default()
                .push(Condition {
                    type_: t.to_string(),
                    ..c.clone()
                }),
            None => by_controller
                .entry(CONTROLLER_NAME.to_string())
                .or_default()
                .push(c.clone()),
        }
    }
    let mut parents: Vec<RouteParentStatus> = current
        .iter()
        .filter(|p| !ours(&p.controller_name))
        .cloned()
        .collect();
    for (controller, conds) in &by_controller {
        for parent in parent_refs
            .iter()
            .filter(|p| matches!(p.kind.as_deref(), Some("Service" | "ServiceImport")))
        {
            let old = current
                .iter()
                .find(|p| &p.controller_name == controller && &p.parent_ref == parent)
                .map_or(&[][..], |p| &p.conditions[..]);
            parents.push(RouteParentStatus {
                parent_ref: parent.clone(),
                controller_name: controller.clone(),
                conditions: keep_times(conds.clone(), old),
            });
        }
    }
    // The Gateway API allows 32 entries: ours first, then clusters in name
    // order; a cluster set larger than that is seen in /config_dump.
    parents.truncate(MAX_PARENTS);
    parents
}

/// `status.parents` holds at most this many entries (Gateway API).
const MAX_PARENTS: usize = 32;

/// Server-side apply of a policy's `status.conditions`, forced, as ours.
async fn apply_policy(
    api: &Api<DynamicObject>,
    mcs: crate::store::kube::Mcs,
    kind: &str,
    key: &ObjectKey,
    conditions: Vec<Condition>,
) -> Result<(), kube::Error> {
    apply_status(api, mcs, kind, key, json!({"conditions": conditions})).await
}

/// Server-side apply of an object's whole `status`, forced, as ours.
async fn apply_status(
    api: &Api<DynamicObject>,
    mcs: crate::store::kube::Mcs,
    kind: &str,
    key: &ObjectKey,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let ar = crate::store::kube::api_resource_in(kind, mcs);
    let patch = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    });
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| ())
}

/// Our entries in a route's `status.parents` (one per Service parent),
/// and, for a route shared with the cluster set, one per Service parent
/// and linked cluster with that cluster's verdict (controllerName
/// `isthmus.dev/cluster/<cluster>`); the other controllers' kept, guarded
/// by the resourceVersion read.
async fn merge_route(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parent_refs: &[ParentReference],
    current: &[RouteParentStatus],
    conditions: &[Condition],
) -> Result<(), kube::Error> {
    let parents = route_parents(parent_refs, current, conditions);
    let patch = json!({
        "metadata": {"resourceVersion": meta.resource_version},
        "status": {"parents": parents},
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn a_shared_route_gets_an_entry_per_cluster_beside_ours_and_others() {
        let service = ParentReference {
            group: Some(String::new()),
            kind: Some("Service".into()),
            name: "reviews".into(),
            ..Default::default()
        };
        let entry = |controller: &str| RouteParentStatus {
            parent_ref: service.clone(),
            controller_name: controller.into(),
            conditions: vec![],
        };
        // Another controller's entry stays; a cluster no longer reporting
        // loses its entry.
        let current = [
            entry("example.com/gateway"),
            entry("isthmus.dev/cluster/ap-south"),
        ];
        let conditions = [
            condition("Accepted", "True"),
            condition("ResolvedRefs", "True"),
            condition("us-east.clusters.isthmus.dev/Accepted", "True"),
            condition("us-east.clusters.isthmus.dev/ResolvedRefs", "False"),
            condition("eu-central.clusters.isthmus.dev/Accepted", "False"),
        ];
        let parents = route_parents(std::slice::from_ref(&service), &current, &conditions);
        let seen: Vec<(&str, Vec<(&str, &str)>)> = parents
            .iter()
            .map(|p| {
                let c = p
                    .conditions
                    .iter()
                    .map(|c| (c.type_.as_str(), c.status.as_str()))
                    .collect();
                (p.controller_name.as_str(), c)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("example.com/gateway", vec![]),
                (
                    "isthmus.dev/cluster/eu-central",
                    vec![("Accepted", "False")]
                ),
                (
                    "isthmus.dev/cluster/us-east",
                    vec![("Accepted", "True"), ("ResolvedRefs", "False")]
                ),
                (
                    "isthmus.dev/mesh",
                    vec![("Accepted", "True"), ("ResolvedRefs", "True")]
                ),
            ]
        );
        // At most 32 entries.
        let many: Vec<Condition> = (0..40)
            .map(|i| condition(&format!("c{i:02}.clusters.isthmus.dev/Accepted"), "True"))
            .collect();
        assert_eq!(route_parents(&[service], &[], &many).len(), MAX_PARENTS);
    }
}
