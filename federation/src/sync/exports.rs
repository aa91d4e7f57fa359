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
        let Some(Resource::Service(k8s)) = snap.get("Service", key) else {
            continue; // MCS: an export of a missing Service exports nothing
        };
        let headless = crate::translate::services::is_headless(k8s);
        let name = service_name(&key.name, ns);
        let Some(svc) = service(&name) else {
            continue;
        };
        let hostnames = if headless {
            hostnames(&svc)
        } else {
            Vec::new()
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
                headless,
                hostnames,
            },
        );
    }
    out
}

/// The hostnames of the ready endpoints of `svc` (sorted, once each).
fn hostnames(svc: &model::Service) -> Vec<String> {
    let mut out: Vec<String> = svc
        .endpoints
        .iter()
        .filter(|e| !e.unhealthy && !e.hostname.is_empty())
        .map(|e| e.hostname.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What changed from `sent` to `now`: entries added or changed, and the
/// keys of those withdrawn (services here, shared policies too).
pub fn delta<V: Clone + PartialEq>(
    sent: &BTreeMap<String, V>,
    now: &BTreeMap<String, V>,
) -> (Vec<V>, Vec<String>) {
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
    fn a_headless_export_names_its_ready_pods() {
        let text = format!(
            "{STORE}---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\n\
             spec: {{clusterIP: None, ports: [{{port: 5432}}]}}\n---\n\
             apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\n\
             metadata: {{name: db, namespace: shop}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: db-a, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}\n\
             addressType: IPv4\nports: [{{port: 5432}}]\nendpoints:\n\
             \x20 - {{addresses: [10.0.0.2], hostname: db-1}}\n\
             \x20 - {{addresses: [10.0.0.1], hostname: db-0}}\n\
             \x20 - {{addresses: [10.0.0.3], hostname: db-2, conditions: {{ready: false}}}}\n\
             \x20 - {{addresses: [10.0.0.4]}}\n"
        );
        let (loaded, errors) = parse_file("s.yaml".as_ref(), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        // The hostnames come with the translated endpoints.
        let c = crate::translate::translate(&crate::translate::Inputs::new(&snap)).filled();
        let e = exports(&snap, |name| c.services.get(name).cloned());
        assert!(e["db.shop"].headless);
        assert_eq!(
            e["db.shop"].hostnames,
            ["db-0", "db-1"],
            "ready ones, sorted"
        );
        assert!(!e["catalog.shop"].headless);
        assert!(e["catalog.shop"].hostnames.is_empty());
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
