//! Policies linked clusters share with this one (issue 22; the sending
//! side is `sync::policies`) → the snapshot the translation reads.
//!
//! A received policy is translated like one made here, with this
//! cluster's own services and imports: a backend `reviews-us-east`
//! resolves in each cluster, and one that does not exist here is reported
//! as it would be for a local route (to its origin, not here). For each
//! kind, namespace and name:
//! - a resource made in this cluster wins over any received one
//!   (`Overridden`);
//! - between clusters, the oldest wins (creation time, unknown counting as
//!   newest, then the cluster name), so every cluster picks the same one;
//!   the others are `Conflicted`, naming it;
//! - one this cluster cannot read is `Refused`, with the reason.
//!
//! Received policies are never written into this cluster's API; they are
//! only in what the translation reads. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::federation::v1 as wire;
use wire::PolicyState;

use super::Problem;
use crate::store::{ObjectKey, Resource, Snapshot};
use crate::sync::policies::{ReadError, read, wire_key};

/// A policy a linked cluster shares with us, as sent and as read on
/// arrival (once, not per translation).
#[derive(Debug, Clone)]
pub struct Received {
    pub cluster: String,
    pub policy: wire::SharedPolicy,
    pub read: Result<(&'static str, ObjectKey, Arc<Resource>), ReadError>,
}

impl PartialEq for Received {
    /// What was sent decides; what we read of it follows from that.
    fn eq(&self, other: &Self) -> bool {
        self.cluster == other.cluster && self.policy == other.policy
    }
}

impl Received {
    pub fn read(cluster: &str, policy: wire::SharedPolicy) -> Self {
        Self {
            cluster: cluster.to_string(),
            read: read(&policy, cluster),
            policy,
        }
    }

    fn wire_key(&self) -> String {
        wire_key(&self.policy.kind, &self.policy.namespace, &self.policy.name)
    }
}

/// What became of the received policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// By origin cluster, then wire key: what each cluster is told.
    pub results: BTreeMap<String, BTreeMap<String, wire::PolicyResult>>,
    /// The received policies in effect: (kind, key) → origin cluster.
    pub applied: BTreeMap<(&'static str, ObjectKey), String>,
}

impl Outcome {
    /// What `cluster` is told about the policies it shares with us.
    pub fn for_cluster(&self, cluster: &str) -> Vec<wire::PolicyResult> {
        self.results
            .get(cluster)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn result(
    p: &wire::SharedPolicy,
    state: PolicyState,
    reason: &str,
    message: String,
) -> wire::PolicyResult {
    wire::PolicyResult {
        kind: p.kind.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        generation: p.generation,
        state: state as i32,
        reason: reason.to_string(),
        message,
    }
}

/// Oldest first: a known creation time before an unknown one, then the
/// cluster name.
fn age(r: &Received) -> (i64, &str) {
    let at = r.policy.created_at;
    (if at <= 0 { i64::MAX } else { at }, &r.cluster)
}

/// `local` with the received policies that apply (None: none does, read
/// `local` as it is), and what became of each.
pub fn overlay(local: &Snapshot, received: &[Received]) -> (Option<Snapshot>, Outcome) {
    let mut outcome = Outcome::default();
    let mut tell = |r: &Received, res: wire::PolicyResult| {
        outcome
            .results
            .entry(r.cluster.clone())
            .or_default()
            .insert(r.wire_key(), res);
    };
    // Readable ones by what they would be here.
    let mut by_object: BTreeMap<(&'static str, ObjectKey), Vec<&Received>> = BTreeMap::new();
    for r in received {
        match &r.read {
            Ok((kind, key, _)) => by_object.entry((kind, key.clone())).or_default().push(r),
            Err(e) => tell(
                r,
                result(&r.policy, PolicyState::Refused, "Invalid", e.to_string()),
            ),
        }
    }
    let mut winners = Vec::new();
    for ((kind, key), mut shares) in by_object {
        shares.sort_by(|a, b| age(a).cmp(&age(b)));
        if local.get(kind, &key).is_some() {
            for r in shares {
                let m = format!(
                    "{kind} {key} made in this cluster applies here instead of {}'s",
                    r.cluster
                );
                tell(
                    r,
                    result(&r.policy, PolicyState::Overridden, "LocalOverride", m),
                );
            }
            continue;
        }
        let (winner, older) = (shares[0], &shares[1..]);
        for r in older {
            let m = format!(
                "{}'s {kind} {key} is older (created {}) and applies here instead",
                winner.cluster, winner.policy.created_at
            );
            tell(
                r,
                result(&r.policy, PolicyState::Conflicted, "OlderPolicy", m),
            );
        }
        let m = match older {
            [] => String::new(),
            _ => {
                let others: Vec<&str> = older.iter().map(|r| r.cluster.as_str()).collect();
                format!(
                    "also shared by {} (newer): this one applies",
                    others.join(", ")
                )
            }
        };
        tell(winner, result(&winner.policy, PolicyState::Accepted, "", m));
        outcome.applied.insert((kind, key), winner.cluster.clone());
        winners.push(winner);
    }
    if winners.is_empty() {
        return (None, outcome);
    }
    let mut snap = local.clone();
    for w in winners {
        if let Ok((kind, key, r)) = &w.read {
            snap.objects.insert((kind, key.clone()), r.clone());
        }
    }
    (Some(snap), outcome)
}

/// Moves the problems the translation found on the received policies in
/// effect into what their origin is told (they are not this cluster's to
/// report: its API does not hold them).
pub fn settle(outcome: &mut Outcome, problems: &mut Vec<Problem>) {
    if outcome.applied.is_empty() {
        return;
    }
    problems.retain(|p| {
        let Some(cluster) = outcome.applied.get(&(p.kind, p.key.clone())) else {
            return true;
        };
        let ns = p.key.namespace.as_deref().unwrap_or_default();
        let entry = outcome
            .results
            .get_mut(cluster)
            .and_then(|r| r.get_mut(&wire_key(p.kind, ns, &p.key.name)));
        if let Some(res) = entry {
            if res.reason.is_empty() {
                res.reason = p.reason.to_string();
            }
            if !res.message.is_empty() {
                res.message.push_str("; ");
            }
            res.message.push_str(&p.message);
        }
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-central, trustDomain: eu-central.isthmus.local, locality: {region: eu-central}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 80}]}]
"#;

    fn snap(text: &str) -> Snapshot {
        crate::store::files::snapshot_of(text)
    }

    /// An HTTPRoute `name` shared by `cluster`, made at `at`, sending
    /// to `backend`.
    fn route(cluster: &str, name: &str, at: i64, backend: &str) -> Received {
        let object = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
            },
        });
        Received::read(
            cluster,
            wire::SharedPolicy {
                kind: "HTTPRoute".into(),
                namespace: "shop".into(),
                name: name.into(),
                created_at: at,
                generation: 1,
                object: object.to_string(),
            },
        )
    }

    fn state(o: &Outcome, cluster: &str, name: &str) -> (PolicyState, String) {
        let r = &o.results[cluster][&wire_key("HTTPRoute", "shop", name)];
        (PolicyState::try_from(r.state).unwrap(), r.reason.clone())
    }

    #[test]
    fn local_wins_then_the_oldest_then_the_cluster_name() {
        let local = snap(LOCAL);
        let received = [
            route("us-east", "mine", 100, "reviews"),
            route("us-east", "canary", 300, "reviews"),
            route("eu-west", "canary", 200, "reviews"),
            route("ap-south", "canary", 0, "reviews"),
            route("b-cluster", "tie", 50, "reviews"),
            route("a-cluster", "tie", 50, "reviews"),
        ];
        let (snap, o) = overlay(&local, &received);
        let snap = snap.expect("some apply");
        use PolicyState::*;
        assert_eq!(
            state(&o, "us-east", "mine"),
            (Overridden, "LocalOverride".into())
        );
        assert_eq!(state(&o, "eu-west", "canary"), (Accepted, String::new()));
        assert_eq!(
            state(&o, "us-east", "canary"),
            (Conflicted, "OlderPolicy".into())
        );
        assert_eq!(
            state(&o, "ap-south", "canary"),
            (Conflicted, "OlderPolicy".into()),
            "unknown age: newest"
        );
        assert_eq!(state(&o, "a-cluster", "tie"), (Accepted, String::new()));
        assert_eq!(
            state(&o, "b-cluster", "tie"),
            (Conflicted, "OlderPolicy".into())
        );
        let winner = &o.results["eu-west"][&wire_key("HTTPRoute", "shop", "canary")];
        assert!(
            winner.message.contains("us-east, ap-south"),
            "{}",
            winner.message
        );
        let key = |n: &str| ObjectKey {
            namespace: Some("shop".into()),
            name: n.into(),
        };
        assert_eq!(o.applied[&("HTTPRoute", key("canary"))], "eu-west");
        assert!(!o.applied.contains_key(&("HTTPRoute", key("mine"))));
        // The overlay holds the winners; the local one is untouched.
        assert!(snap.get("HTTPRoute", &key("canary")).is_some());
        assert!(Arc::ptr_eq(
            &snap.objects[&("HTTPRoute", key("mine"))],
            &local.objects[&("HTTPRoute", key("mine"))]
        ));
        // Nothing received: the local snapshot as it is.
        assert!(overlay(&local, &[]).0.is_none());
    }

    #[test]
    fn what_the_translation_finds_goes_to_the_origin_not_here() {
        let local = snap(LOCAL);
        let received = [
            route("eu-west", "canary", 1, "reviews-nowhere"),
            route("eu-west", "fine", 1, "reviews"),
        ];
        let (snap, mut o) = overlay(&local, &received);
        let snap = snap.unwrap();
        let mut catalog =
            crate::translate::translate(&crate::translate::Inputs::new(&snap)).filled();
        assert!(
            catalog.problems.iter().any(|p| p.key.name == "canary"),
            "{:?}",
            catalog.problems
        );
        settle(&mut o, &mut catalog.problems);
        assert!(catalog.problems.iter().all(|p| p.key.name != "canary"));
        let r = &o.results["eu-west"][&wire_key("HTTPRoute", "shop", "canary")];
        assert_eq!(PolicyState::try_from(r.state), Ok(PolicyState::Accepted));
        assert_eq!(r.reason, "BackendNotFound");
        assert!(r.message.contains("reviews-nowhere"), "{}", r.message);
        assert_eq!(
            state(&o, "eu-west", "fine"),
            (PolicyState::Accepted, String::new())
        );
        // Applied as if made here: the route sends to reviews.
        assert_eq!(o.for_cluster("eu-west").len(), 2);
    }

    #[test]
    fn what_cannot_be_read_is_refused() {
        let mut bad = route("eu-west", "canary", 1, "reviews");
        bad.policy.object = bad.policy.object.replace("\"port\":80", "\"port\":\"x\"");
        let bad = Received::read("eu-west", bad.policy);
        let (snap, o) = overlay(&snap(LOCAL), &[bad]);
        assert!(snap.is_none());
        let r = &o.results["eu-west"][&wire_key("HTTPRoute", "shop", "canary")];
        assert_eq!(PolicyState::try_from(r.state), Ok(PolicyState::Refused));
        assert_eq!(r.reason, "Invalid");
        assert!(!r.message.is_empty());
    }
}
