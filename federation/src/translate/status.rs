//! Status conditions from translation: what the `kube` store writes back
//! (server-side apply) and what `files` mode shows in /config_dump. Policies
//! and routes get `Accepted`; routes also `ResolvedRefs`, as the Gateway API
//! defines them. A problem makes the condition False with the problem's
//! reason and message; no problem makes it True.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

use super::Problem;
use crate::store::{ObjectKey, Resource, Snapshot};

/// Reasons that concern references rather than the resource itself.
pub(crate) const REF_REASONS: &[&str] = &["BackendNotFound", "RefNotPermitted", "InvalidKind"];

/// Conditions for every policy and route in the snapshot, by kind and key.
/// `now` becomes lastTransitionTime; a writer keeps the old time when a
/// condition's status did not change.
pub fn conditions(
    snap: &Snapshot,
    problems: &[Problem],
    now: &Time,
) -> BTreeMap<(&'static str, ObjectKey), Vec<Condition>> {
    let mut by_object: BTreeMap<(&str, &ObjectKey), Vec<&Problem>> = BTreeMap::new();
    for p in problems {
        by_object.entry((p.kind, &p.key)).or_default().push(p);
    }
    let mut out = BTreeMap::new();
    for (kind, key) in snap.objects.keys() {
        let Some(r) = snap.get(kind, key) else {
            continue;
        };
        if let Resource::ServiceExport(e) = r {
            let mine = by_object.get(&(*kind, key)).map_or(&[][..], Vec::as_slice);
            out.insert(
                (*kind, key.clone()),
                export_conditions(snap, key, &e.metadata, mine, now),
            );
            continue;
        }
        let (meta, is_route): (&ObjectMeta, bool) = match r {
            Resource::HttpRoute(x) => (&x.metadata, true),
            Resource::GrpcRoute(x) => (&x.metadata, true),
            Resource::DestinationPolicy(x) => (&x.metadata, false),
            Resource::AuthorizationPolicy(x) => (&x.metadata, false),
            Resource::PeerAuthentication(x) => (&x.metadata, false),
            Resource::RequestAuthentication(x) => (&x.metadata, false),
            Resource::FaultInjection(x) => (&x.metadata, false),
            Resource::ClusterLink(x) => (&x.metadata, false),
            _ => continue,
        };
        let mine = by_object.get(&(*kind, key)).map_or(&[][..], Vec::as_slice);
        let condition = |type_: &str, failed: Vec<&&Problem>, ok_reason: &str| {
            let (status, reason, message) = match failed.first() {
                None => ("True", ok_reason.to_string(), String::new()),
                Some(p) => (
                    "False",
                    p.reason.to_string(),
                    failed
                        .iter()
                        .map(|p| p.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            };
            Condition {
                type_: type_.into(),
                status: status.into(),
                reason,
                message,
                observed_generation: meta.generation,
                last_transition_time: now.clone(),
            }
        };
        let accepted_problems: Vec<&&Problem> = mine
            .iter()
            .filter(|p| !REF_REASONS.contains(&p.reason))
            .collect();
        let mut list = vec![condition(
            crate::resources::condition::ACCEPTED,
            accepted_problems,
            "Accepted",
        )];
        if is_route {
            let refs: Vec<&&Problem> = mine
                .iter()
                .filter(|p| REF_REASONS.contains(&p.reason))
                .collect();
            list.push(condition("ResolvedRefs", refs, "ResolvedRefs"));
        }
        out.insert((*kind, key.clone()), list);
    }
    out
}

/// A ServiceExport's conditions as MCS (KEP-1645) names them: `Valid`
/// (its Service exists) and `Conflict` (True when this export disagrees
/// with the oldest export of the service in the clusterset, which wins).
fn export_conditions(
    snap: &Snapshot,
    key: &ObjectKey,
    meta: &ObjectMeta,
    problems: &[&Problem],
    now: &Time,
) -> Vec<Condition> {
    let condition = |type_: &str, status: &str, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: meta.generation,
        last_transition_time: now.clone(),
    };
    let valid = if snap.get("Service", key).is_some() {
        condition("Valid", "True", "Valid", String::new())
    } else {
        condition(
            "Valid",
            "False",
            "NoService",
            format!("there is no Service {key} to export"),
        )
    };
    let conflicts: Vec<&str> = problems
        .iter()
        .filter(|p| p.reason.ends_with("Conflict"))
        .map(|p| p.message.as_str())
        .collect();
    let conflict = match problems.iter().find(|p| p.reason.ends_with("Conflict")) {
        Some(p) => condition("Conflict", "True", p.reason, conflicts.join("; ")),
        None => condition("Conflict", "False", "NoConflicts", String::new()),
    };
    vec![valid, conflict]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::files::{merge, parse_file};
    use crate::translate::{Inputs, translate};

    #[test]
    fn problems_become_false_conditions_and_the_rest_true() {
        let yaml = r#"apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop, generation: 3}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{backendRefs: [{name: reviews}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: dangling, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{matches: [{path: {type: Exact, value: /x}}], backendRefs: [{name: gone}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: ghost, namespace: shop}
spec: {targetRef: {name: nowhere}}
---
apiVersion: isthmus.dev/v1alpha1
kind: ClusterLink
metadata: {name: us-east}
spec:
  peer: us-east
  region: us-east1
  gateway: {quic: "gw.example.com"}
  trustDomain: us-east.isthmus.local
  trustBundle: ""
  credentialsSecretRef: {name: link-us-east}
---
apiVersion: v1
kind: Service
metadata: {name: not-a-policy, namespace: shop}
spec: {ports: [{port: 80}]}
"#;
        let (loaded, errors) = parse_file(Path::new("t.yaml"), yaml);
        assert!(errors.is_empty());
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let catalog = translate(&Inputs::new(&snap)).filled();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let all = conditions(&snap, &catalog.problems, &now);
        let show = |kind: &'static str, name: &str| -> Vec<String> {
            let key = ObjectKey {
                namespace: Some("shop".into()),
                name: name.into(),
            };
            all[&(kind, key)]
                .iter()
                .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
                .collect()
        };
        assert_eq!(
            show("HTTPRoute", "good"),
            ["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"]
        );
        assert_eq!(
            show("HTTPRoute", "dangling"),
            [
                "Accepted=True/Accepted",
                "ResolvedRefs=False/BackendNotFound"
            ]
        );
        assert_eq!(
            show("DestinationPolicy", "ghost"),
            ["Accepted=False/TargetNotFound"]
        );
        let good = ObjectKey {
            namespace: Some("shop".into()),
            name: "good".into(),
        };
        assert_eq!(all[&("HTTPRoute", good)][0].observed_generation, Some(3));
        let link = ObjectKey {
            namespace: None,
            name: "us-east".into(),
        };
        let c = &all[&("ClusterLink", link)][0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidGatewayAddress")
        );
        assert!(c.message.contains("gw.example.com"), "{}", c.message);
        assert_eq!(all.len(), 4, "Services get no conditions from us");
    }

    #[test]
    fn service_exports_say_valid_and_conflict_as_mcs_names_them() {
        let yaml = r#"apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: ghost, namespace: shop}
"#;
        let (loaded, errors) = parse_file(Path::new("t.yaml"), yaml);
        assert!(errors.is_empty());
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let key = |name: &str| ObjectKey {
            namespace: Some("shop".into()),
            name: name.into(),
        };
        let problems = [Problem {
            kind: "ServiceExport",
            key: key("catalog"),
            reason: "PortConflict",
            message: "ports differ from the oldest export's".into(),
        }];
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        let c = conditions(&snap, &problems, &now);
        let of = |name: &str| -> Vec<(String, String, String)> {
            c[&("ServiceExport", key(name))]
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        };
        let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            of("catalog"),
            [
                t("Valid", "True", "Valid"),
                t("Conflict", "True", "PortConflict")
            ]
        );
        assert_eq!(
            of("ghost"),
            [
                t("Valid", "False", "NoService"),
                t("Conflict", "False", "NoConflicts")
            ]
        );
    }
}
