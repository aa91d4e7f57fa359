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
/// the other controllers' kept, guarded by the resourceVersion read.
async fn merge_route(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parent_refs: &[ParentReference],
    current: &[RouteParentStatus],
    conditions: &[Condition],
) -> Result<(), kube::Error> {
    let mut parents: Vec<RouteParentStatus> = current
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent in parent_refs
        .iter()
        .filter(|p| p.kind.as_deref() == Some("Service"))
    {
        let old = current
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && &p.parent_ref == parent)
            .map_or(&[][..], |p| &p.conditions[..]);
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions: keep_times(conditions.to_vec(), old),
        });
    }
    let patch = json!({
        "metadata": {"resourceVersion": meta.resource_version},
        "status": {"parents": parents},
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}
