//! What this cluster exports, as its linked clusters see it (pure): for
//! every `ServiceExport` whose Service exists here, a summary — service
//! ports with our target ports, ready endpoint count, our locality, when
//! it was exported — and the delta between two such states.

use std::collections::BTreeMap;

use isthmus_api::federation::v1 as wire;
use isthmus_api::model;

use crate::store::{Resource, Snapshot};
use crate::translate::services::service_name;

/// Exported services by `<name>.<namespace>`.
pub type ExportMap = BTreeMap<String, wire::ExportedService>;

/// The exports of `snap`. `service` gives a local service with its
/// endpoints (the discovery offer's encoding), by model name.
pub fn exports(snap: &Snapshot, service: impl Fn(&str) -> Option<model::Service>) -> ExportMap {
    let locality = snap
        .of_kind("Mesh")
        .find_map(|(_, r)| match r {
            Resource::Mesh(m) => Some(model::Locality {
                region: m.spec.locality.region.clone(),
                zone: m.spec.locality.zone.clone(),
            }),
            _ => None,
        })
        .unwrap_or_default();
    let mut out = ExportMap::new();
    for (key, r) in snap.of_kind("ServiceExport") {
        let Resource::ServiceExport(_) = r else {
            continue;
        };
        let Some(ns) = key.namespace.as_deref() else {
            continue;
        };
        if snap.get("Service", key).is_none() {
            continue; // MCS: an export of a missing Service exports nothing
        }
        let name = service_name(&key.name, ns);
        let Some(svc) = service(&name) else {
            continue;
        };
        let healthy = svc.endpoints.iter().filter(|e| !e.unhealthy).count();
        let exported_at = crate::translate::imports::export_age(r);
        out.insert(
            name,
            wire::ExportedService {
                name: key.name.clone(),
                namespace: ns.to_string(),
                ports: svc.ports,
                healthy: u32::try_from(healthy).unwrap_or(u32::MAX),
                locality: Some(locality.clone()),
                exported_at,
            },
        );
    }
    out
}

/// What changed from `sent` to `now`: services added or changed, and the
/// names of those withdrawn.
pub fn delta(sent: &ExportMap, now: &ExportMap) -> (Vec<wire::ExportedService>, Vec<String>) {
    let changed = now
        .iter()
        .filter(|(k, v)| sent.get(*k) != Some(v))
        .map(|(_, v)| v.clone())
        .collect();
    let removed = sent
        .keys()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::{merge, parse_file};

    const STORE: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-central, trustDomain: eu-central.isthmus.local, locality: {region: eu-central, zone: eu-central-a}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop, creationTimestamp: "2026-01-02T03:04:05Z"}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: ghost, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: private, namespace: shop}
spec: {ports: [{port: 80}]}
"#;

    fn snap() -> Snapshot {
        let (loaded, errors) = parse_file("s.yaml".as_ref(), STORE);
        assert!(errors.is_empty(), "{errors:?}");
        merge(&Snapshot::default(), loaded, Vec::new()).0
    }

    fn catalog(healthy: usize, unhealthy: usize) -> impl Fn(&str) -> Option<model::Service> {
        move |name| {
            (name == "catalog.shop" || name == "private.shop").then(|| model::Service {
                name: name.into(),
                ports: vec![model::ServicePort {
                    port: 80,
                    target_port: 8080,
                    name: "http".into(),
                    ..Default::default()
                }],
                endpoints: (0..healthy + unhealthy)
                    .map(|i| model::Endpoint {
                        address: format!("10.0.0.{i}"),
                        unhealthy: i >= healthy,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
    }

    #[test]
    fn only_exported_services_that_exist_are_summarised() {
        let e = exports(&snap(), catalog(2, 1));
        assert_eq!(e.keys().collect::<Vec<_>>(), ["catalog.shop"]);
        let c = &e["catalog.shop"];
        assert_eq!(c.healthy, 2, "ready endpoints only");
        assert_eq!(c.ports[0].target_port, 8080, "our target port");
        assert_eq!(
            c.locality,
            Some(model::Locality {
                region: "eu-central".into(),
                zone: "eu-central-a".into()
            })
        );
        assert_eq!(c.exported_at, 1_767_323_045);
    }

    #[test]
    fn deltas_name_what_changed_and_what_went() {
        let before = exports(&snap(), catalog(2, 0));
        assert_eq!(delta(&before, &before), (vec![], vec![]));
        let after = exports(&snap(), catalog(3, 0));
        let (changed, removed) = delta(&before, &after);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].healthy, 3);
        assert!(removed.is_empty());
        let (changed, removed) = delta(&before, &ExportMap::new());
        assert!(changed.is_empty());
        assert_eq!(removed, ["catalog.shop"]);
        let (changed, removed) = delta(&ExportMap::new(), &before);
        assert_eq!((changed.len(), removed.len()), (1, 0));
    }
}
