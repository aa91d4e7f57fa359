//! Services imported from linked clusters → what this cluster's proxies
//! call (MCS, KEP-1645): for each service a linked cluster exports,
//!
//! - `<svc>-<cluster>.<ns>`: that cluster only (canaries, pinning), one
//!   endpoint — this cluster's east-west gateway entry, `viaCluster`, and
//!   `viaService: <svc>.<ns>` since it is named `<svc>` there;
//! - `<svc>.<ns>.svc.clusterset.local`: every cluster — the local
//!   endpoints when the local Service is exported too (filled with the
//!   other endpoints, `Endpoints::fill`), then one gateway endpoint per
//!   exporting cluster, weighted by its healthy count, in its locality, so
//!   locality-aware balancing keeps traffic local and fails over by region.
//!
//! A headless service's pods get names of their own (`headless`).
//!
//! The input is what the links report (`Summary`: the sync's unit, held in
//! memory like registered workloads, not a resource). Problems land on the
//! ClusterLink of the cluster they came from.

use std::collections::BTreeSet;
use std::net::IpAddr;

use isthmus_api::model;

use super::Problem;
use super::services::{Catalog, Endpoints, service_name};
use super::vips::Imported;
use crate::store::{ObjectKey, Snapshot};

/// The DNS suffix of clusterset names (`<svc>.<ns>.svc.clusterset.local`).
pub const CLUSTERSET: &str = ".svc.clusterset.local";

/// What one linked cluster reports about one service it exports.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// Its service ports, with that cluster's target ports.
    pub ports: Vec<model::ServicePort>,
    /// Endpoints there that are ready.
    pub healthy: u32,
    pub locality: model::Locality,
    /// Its workloads' trust domain (their sidecars must prove it).
    pub trust_domain: String,
    /// When its ServiceExport was made (unix seconds; 0: unknown): the
    /// oldest export decides the clusterset service's ports (MCS).
    pub exported_at: i64,
    /// A headless Service there, and its ready pods' hostnames.
    pub headless: bool,
    pub hostnames: Vec<String>,
}

/// Whether two exports of a service agree on what MCS compares: the
/// service ports and their protocols (target ports are each cluster's).
fn same_ports(a: &[model::ServicePort], b: &[model::ServicePort]) -> bool {
    let shape = |ports: &[model::ServicePort]| {
        let mut v: Vec<(u32, i32)> = ports.iter().map(|p| (p.port, p.protocol)).collect();
        v.sort_unstable();
        v
    };
    shape(a) == shape(b)
}

/// The oldest export of one service across the clusterset: its cluster
/// (None: this one), when, and its ports. Unknown ages count as newest;
/// ties go to the cluster name, so every cluster picks the same.
struct Oldest<'a> {
    cluster: Option<&'a str>,
    at: i64,
    ports: &'a [model::ServicePort],
    headless: bool,
}

/// Our own export of a service: when, our cluster's name, its ports, and
/// whether it is headless.
type Ours<'a> = (i64, &'a str, &'a [model::ServicePort], bool);

fn age_key(at: i64, cluster: &str) -> (i64, &str) {
    (if at <= 0 { i64::MAX } else { at }, cluster)
}

/// `local`: our own export (when, our cluster's name, its ports).
fn oldest<'a>(local: Option<Ours<'a>>, summaries: &[&'a Summary]) -> Option<Oldest<'a>> {
    let ours = local.map(|(at, name, ports, headless)| {
        let o = Oldest {
            cluster: None,
            at,
            ports,
            headless,
        };
        (age_key(at, name), o)
    });
    let theirs = summaries.iter().map(|s| {
        let o = Oldest {
            cluster: Some(&s.cluster),
            at: s.exported_at,
            ports: &s.ports,
            headless: s.headless,
        };
        (age_key(s.exported_at, &s.cluster), o)
    });
    ours.into_iter()
        .chain(theirs)
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, o)| o)
}

/// This cluster's east-west gateway, where sidecars send cross-cluster
/// streams (its local entry, 15009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub port: u16,
}

/// When a ServiceExport was made (unix seconds; 0: unknown).
pub fn export_age(export: &crate::store::Resource) -> i64 {
    match export {
        crate::store::Resource::ServiceExport(e) => e
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        _ => 0,
    }
}

pub fn per_cluster_name(name: &str, ns: &str, cluster: &str) -> String {
    format!("{name}-{cluster}.{ns}")
}

pub fn clusterset_name(name: &str, ns: &str) -> String {
    format!("{name}.{ns}{CLUSTERSET}")
}

/// Adds the imported services to `catalog`; `endpoints` learns which
/// clusterset services include local endpoints.
pub fn attach(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    snap: &Snapshot,
    summaries: &[Summary],
    entry: Option<Entry>,
) {
    let mut sorted: Vec<&Summary> = summaries.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.cluster).cmp(&(&b.namespace, &b.name, &b.cluster))
    });
    match entry {
        Some(entry) => {
            let own = crate::identity::mesh_cluster_name(snap).unwrap_or_default();
            for service in
                sorted.chunk_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name))
            {
                attach_service(catalog, endpoints, snap, service, entry, &own);
            }
        }
        None => {
            let clusters: BTreeSet<&str> = sorted.iter().map(|s| s.cluster.as_str()).collect();
            for cluster in clusters {
                catalog.problems.push(link_problem(
                    cluster,
                    "NoGateway",
                    format!(
                        "services imported from {cluster} are not usable: this cluster has no east-west gateway entry"
                    ),
                ));
            }
        }
    }
    // An exported Service has its clusterset name here too, even while no
    // linked cluster exports it: then it is the local endpoints alone.
    let own = crate::identity::mesh_cluster_name(snap).unwrap_or_default();
    for (key, _) in snap.of_kind("ServiceExport") {
        let Some(ns) = &key.namespace else { continue };
        let (local, all) = (service_name(&key.name, ns), clusterset_name(&key.name, ns));
        let headless = local_headless(snap, &key.name, ns);
        if headless == Some(true) {
            super::headless::export_pods(catalog, endpoints, &key.name, ns);
        }
        own_name(catalog, endpoints, &key.name, ns, &own);
        if catalog.services.contains_key(&all) {
            continue;
        }
        let Some(ports) = catalog.services.get(&local).map(|s| s.ports.clone()) else {
            continue;
        };
        catalog.services.insert(
            all.clone(),
            model::Service {
                name: all.clone(),
                ports,
                ..Default::default()
            },
        );
        set_name(catalog, &all, &key.name, ns, headless == Some(true));
        endpoints.include(&all, &local);
        if headless == Some(true) {
            super::headless::own_pods(catalog, endpoints, &key.name, ns, &own);
        }
    }
}

/// Our own export under its per-cluster name, `<svc>-<own>.<ns>`: the
/// local endpoints. So that a name such as `reviews-us-east` means the
/// same everywhere, us-east included (a route shared with the cluster set
/// names it in every cluster). A local Service of that name keeps it.
fn own_name(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    service: &str,
    ns: &str,
    own: &str,
) {
    let local = service_name(service, ns);
    let Some(ports) = catalog.services.get(&local).map(|s| s.ports.clone()) else {
        return;
    };
    if own.is_empty() {
        return;
    }
    let name = per_cluster_name(service, ns, own);
    if catalog.services.contains_key(&name) {
        catalog.problems.push(Problem {
            kind: "ServiceExport",
            key: ObjectKey {
                namespace: Some(ns.to_string()),
                name: service.to_string(),
            },
            reason: "NameTaken",
            message: format!(
                "a local Service is named {name}: this export is not offered under that name here (linked clusters still have it)"
            ),
        });
        return;
    }
    catalog.services.insert(
        name.clone(),
        model::Service {
            name: name.clone(),
            ports,
            ..Default::default()
        },
    );
    catalog
        .imported
        .insert(name.clone(), imported(service, ns, Some(own)));
    endpoints.include(&name, &local);
}

/// Whether the local Service `ns/name` is headless (None: there is none).
fn local_headless(snap: &Snapshot, name: &str, ns: &str) -> Option<bool> {
    let key = ObjectKey {
        namespace: Some(ns.to_string()),
        name: name.to_string(),
    };
    match snap.get("Service", &key) {
        Some(crate::store::Resource::Service(svc)) => Some(super::services::is_headless(svc)),
        _ => None,
    }
}

/// Records the clusterset name `all` of `ns/service`: it gets a ClusterSet
/// IP, unless the service is headless (its pods' names have them).
fn set_name(catalog: &mut Catalog, all: &str, service: &str, ns: &str, headless: bool) {
    if headless {
        catalog.headless.insert(all.to_string());
    } else {
        catalog
            .imported
            .insert(all.to_string(), imported(service, ns, None));
    }
}

fn imported(service: &str, namespace: &str, cluster: Option<&str>) -> Imported {
    Imported {
        namespace: namespace.to_string(),
        service: service.to_string(),
        cluster: cluster.map(str::to_string),
        pod: None,
    }
}

/// The endpoint standing for `s`'s cluster: our gateway `entry`, in its
/// locality, weighted by its ready endpoints, CONNECTing to `via_service`
/// there.
pub(super) fn gateway_endpoint(
    s: &Summary,
    entry: Entry,
    via_service: String,
    ports: Vec<model::EndpointPort>,
) -> model::Endpoint {
    model::Endpoint {
        address: entry.ip.to_string(),
        ports,
        locality: Some(s.locality.clone()),
        weight: s.healthy.max(1),
        unhealthy: s.healthy == 0,
        tunnel_port: u32::from(entry.port),
        identity: format!("spiffe://{}", s.trust_domain),
        via_cluster: s.cluster.clone(),
        via_service,
        ..Default::default()
    }
}

/// A problem with what `cluster` exports, reported on its ClusterLink.
pub(super) fn link_problem(cluster: &str, reason: &'static str, message: String) -> Problem {
    Problem {
        kind: "ClusterLink",
        key: ObjectKey {
            namespace: None,
            name: cluster.to_string(),
        },
        reason,
        message,
    }
}

fn port_list(ports: &[model::ServicePort]) -> String {
    let v: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
    v.join(", ")
}

/// One service as the linked clusters in `exports` (sorted by cluster)
/// export it: a per-cluster name for each, and the clusterset service with
/// the oldest export's ports, ours included when we export it too.
fn attach_service(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    snap: &Snapshot,
    exports: &[&Summary],
    entry: Entry,
    own: &str,
) {
    let (name, ns) = (&exports[0].name, &exports[0].namespace);
    let (local, all) = (service_name(name, ns), clusterset_name(name, ns));
    let key = ObjectKey {
        namespace: Some(ns.clone()),
        name: name.clone(),
    };
    // Our export: when, our Service's ports, whether it is headless.
    let ours: Option<(i64, Vec<model::ServicePort>, bool)> = match (
        catalog.services.get(&local),
        snap.get("ServiceExport", &key),
    ) {
        (Some(svc), Some(export)) => Some((
            export_age(export),
            svc.ports.clone(),
            local_headless(snap, name, ns) == Some(true),
        )),
        _ => None,
    };
    let Some(oldest) = oldest(
        ours.as_ref().map(|(at, p, h)| (*at, own, &p[..], *h)),
        exports,
    ) else {
        return;
    };
    let winner = oldest.cluster.unwrap_or("this cluster");
    let (winner_at, ports, headless) = (oldest.at, oldest.ports.to_vec(), oldest.headless);
    let kind = |h: bool| {
        if h {
            "headless"
        } else {
            "a ClusterSetIP service"
        }
    };

    // Every cluster: the oldest export's ports (ours when they agree: our
    // endpoints need our target ports) and type (MCS: headless or not); a
    // disagreeing export stays out.
    let ours_fit = ours
        .as_ref()
        .map(|(_, mine, h)| same_ports(mine, &ports) && *h == headless);
    let set_ports = match (&ours, ours_fit) {
        (Some((_, mine, _)), Some(true)) => mine.clone(),
        _ => ports.clone(),
    };
    catalog.services.insert(
        all.clone(),
        model::Service {
            name: all.clone(),
            ports: set_ports,
            ..Default::default()
        },
    );
    set_name(catalog, &all, name, ns, headless);
    match (&ours, ours_fit) {
        (Some(_), Some(true)) => {
            endpoints.include(&all, &local);
            if headless {
                super::headless::own_pods(catalog, endpoints, name, ns, own);
            }
        }
        (Some((_, _, h)), _) if *h != headless => catalog.problems.push(Problem {
            kind: "ServiceExport",
            key: key.clone(),
            reason: "TypeConflict",
            message: format!(
                "this export is {} but the oldest export, in {winner} (exported at {winner_at}), is {}: {all} is that type, so this cluster's endpoints are left out of it (still reachable as {local})",
                kind(*h),
                kind(headless),
            ),
        }),
        (Some((_, mine, _)), _) => catalog.problems.push(Problem {
            kind: "ServiceExport",
            key: key.clone(),
            reason: "PortConflict",
            message: format!(
                "this export's ports ({}) differ from those of the oldest export, in {winner} (exported at {winner_at}): {all} has that one's ports ({}), so this cluster's endpoints are left out of it (still reachable as {local})",
                port_list(mine),
                port_list(&ports),
            ),
        }),
        (None, _) => {}
    }

    for s in exports {
        let gateway = |ports| gateway_endpoint(s, entry, local.clone(), ports);
        // That cluster only.
        let one = per_cluster_name(name, ns, &s.cluster);
        if catalog.services.contains_key(&one) {
            catalog.problems.push(link_problem(
                &s.cluster,
                "Conflict",
                format!(
                    "a local Service is named {one}: {}'s {local} is not offered under that name",
                    s.cluster
                ),
            ));
        } else {
            catalog.services.insert(
                one.clone(),
                model::Service {
                    name: one.clone(),
                    ports: s.ports.clone(),
                    endpoints: vec![gateway(Vec::new())],
                    ..Default::default()
                },
            );
            catalog
                .imported
                .insert(one.clone(), imported(name, ns, Some(&s.cluster)));
        }
        // In the set when it agrees: their target port for each of the
        // set's ports goes on their gateway endpoint.
        if s.headless != headless {
            catalog.problems.push(link_problem(
                &s.cluster,
                "TypeConflict",
                format!(
                    "{}'s {local} is {} but {all} is {} (the oldest export, in {winner}): it is left out of it (reachable as {one})",
                    s.cluster,
                    kind(s.headless),
                    kind(headless),
                ),
            ));
            continue;
        }
        if !same_ports(&s.ports, &ports) {
            catalog.problems.push(link_problem(
                &s.cluster,
                "PortConflict",
                format!(
                    "{}'s {local} does not have the ports of {all} ({}, from the oldest export, in {winner}): it is left out of it (reachable as {one})",
                    s.cluster,
                    port_list(&ports),
                ),
            ));
            continue;
        }
        let over = ports
            .iter()
            .filter_map(|p| {
                let q = s.ports.iter().find(|q| q.port == p.port)?;
                let target_port = if q.target_port == 0 {
                    q.port
                } else {
                    q.target_port
                };
                Some(model::EndpointPort {
                    port: p.port,
                    target_port,
                })
            })
            .collect();
        if let Some(set) = catalog.services.get_mut(&all) {
            set.endpoints.push(gateway(over));
        }
        if headless {
            super::headless::imported_pods(catalog, s, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::{merge, parse_file};

    const LOCAL: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west, zone: eu-west-a}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: catalog-1, namespace: shop, labels: {kubernetes.io/service-name: catalog}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.1.7], zone: eu-west-a}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart-us-east, namespace: shop}
spec: {ports: [{port: 80}]}
"#;

    fn summary(cluster: &str, name: &str, port: u32, target: u32, healthy: u32) -> Summary {
        Summary {
            cluster: cluster.into(),
            namespace: "shop".into(),
            name: name.into(),
            ports: vec![model::ServicePort {
                port,
                target_port: target,
                ..Default::default()
            }],
            healthy,
            locality: model::Locality {
                region: cluster.into(),
                zone: format!("{cluster}-a"),
            },
            trust_domain: format!("{cluster}.isthmus.local"),
            exported_at: 0,
            headless: false,
            hostnames: Vec::new(),
        }
    }

    const ENTRY: Entry = Entry {
        ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        port: 15009,
    };

    /// The catalog as the offer sends it: shells, imports, then endpoints.
    fn imported(summaries: &[Summary], entry: Option<Entry>) -> Catalog {
        imported_with("", summaries, entry)
    }

    /// `imported`, with more local YAML (routes, policies) beside LOCAL.
    fn imported_with(extra: &str, summaries: &[Summary], entry: Option<Entry>) -> Catalog {
        let text = format!("{LOCAL}---\n{extra}");
        let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        crate::translate::translate(&crate::translate::Inputs {
            imports: summaries,
            gateway_entry: entry,
            ..crate::translate::Inputs::new(&snap)
        })
        .filled()
    }

    #[test]
    fn an_export_nobody_else_has_keeps_its_clusterset_name_here() {
        let c = imported(&[], Some(ENTRY));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let all = &c.services["catalog.shop.svc.clusterset.local"];
        let addrs: Vec<&str> = all.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.1.7"], "the local endpoints");
        assert_eq!(all.ports, c.services["catalog.shop"].ports);
        // Not exported: no clusterset name.
        assert!(!c.services.contains_key("reviews.shop.svc.clusterset.local"));
    }

    #[test]
    fn destination_policies_govern_clusterset_and_imported_names() {
        let c = imported_with(
            r#"apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: catalog, namespace: shop}
spec:
  targetRef: {name: catalog}
  locality: {failover: [eu-central, us-east]}
---
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews-us-east, namespace: shop}
spec:
  targetRef: {name: reviews-us-east}
  retry: {attempts: 3}
"#,
            &[
                summary("eu-central", "catalog", 80, 9080, 1),
                summary("us-east", "reviews", 80, 8080, 3),
            ],
            Some(ENTRY),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let failover = |name: &str| {
            c.services[name]
                .load_balancer
                .as_ref()
                .and_then(|lb| lb.locality.as_ref())
                .map(|l| l.failover_regions.clone())
        };
        let order = Some(vec!["eu-central".to_string(), "us-east".to_string()]);
        assert_eq!(failover("catalog.shop"), order);
        assert_eq!(failover("catalog.shop.svc.clusterset.local"), order);
        let imported = &c.services["reviews-us-east.shop"];
        assert_eq!(imported.routes[0].retry.as_ref().unwrap().attempts, 3);
    }

    #[test]
    fn routes_can_name_imported_services() {
        // SCENARIOS.md 3: eu-west's canary to reviews v2 in us-east.
        let c = imported_with(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs:
        - {name: reviews, port: 80, weight: 90}
        - {name: reviews-us-east, port: 80, weight: 10}
"#,
            &[summary("us-east", "reviews", 80, 8080, 3)],
            Some(ENTRY),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let split: Vec<(&str, u32)> = c.services["reviews.shop"].routes[0]
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect();
        assert_eq!(split, [("reviews.shop", 90), ("reviews-us-east.shop", 10)]);
    }

    #[test]
    fn a_route_on_the_service_import_splits_the_clusterset_by_cluster() {
        // What a cluster set's canary looks like (GEP-1748 parent): the
        // same names in every cluster, ours included.
        let c = imported_with(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-canary, namespace: shop}
spec:
  parentRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: catalog}]
  rules:
    - backendRefs:
        - {name: catalog-eu-west, port: 80, weight: 90}
        - {name: catalog-eu-central, port: 80, weight: 10}
"#,
            &[summary("eu-central", "catalog", 80, 9080, 1)],
            Some(ENTRY),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let split: Vec<(&str, u32)> = c.services["catalog.shop.svc.clusterset.local"].routes[0]
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect();
        assert_eq!(
            split,
            [
                ("catalog-eu-west.shop", 90),
                ("catalog-eu-central.shop", 10)
            ]
        );
        assert!(
            c.services["catalog.shop"].routes.is_empty(),
            "the local name is not the parent"
        );
    }

    #[test]
    fn each_cluster_and_the_clusterset_get_a_name_and_local_endpoints_come_first() {
        let c = imported(
            &[
                summary("eu-central", "catalog", 80, 9080, 2),
                summary("us-east", "reviews", 80, 8080, 3),
            ],
            Some(ENTRY),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        // One cluster: its gateway endpoint, named as it is there.
        let one = &c.services["catalog-eu-central.shop"];
        let e = &one.endpoints[0];
        assert_eq!(one.endpoints.len(), 1);
        assert_eq!((e.address.as_str(), e.tunnel_port), ("10.0.0.2", 15009));
        assert_eq!(
            (e.via_cluster.as_str(), e.via_service.as_str()),
            ("eu-central", "catalog.shop")
        );
        assert_eq!(e.identity, "spiffe://eu-central.isthmus.local");
        assert_eq!(e.weight, 2);
        assert_eq!(one.ports[0].target_port, 9080);
        // Every cluster: the exported local endpoints, then eu-central's
        // gateway on its own target port, in its own region.
        let all = &c.services["catalog.shop.svc.clusterset.local"];
        assert_eq!(all.ports[0].target_port, 8080, "the local Service's ports");
        let addrs: Vec<&str> = all.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.1.7", "10.0.0.2"]);
        assert_eq!(all.endpoints[1].ports[0].target_port, 9080);
        assert_eq!(
            all.endpoints[1].locality.as_ref().unwrap().region,
            "eu-central"
        );
        // reviews is not exported here: its clusterset is us-east only.
        let reviews = &c.services["reviews.shop.svc.clusterset.local"];
        assert_eq!(reviews.endpoints.len(), 1);
        assert_eq!(reviews.endpoints[0].via_cluster, "us-east");
        // Our own export has its per-cluster name too (the same meaning
        // everywhere): our endpoints.
        let ours = &c.services["catalog-eu-west.shop"];
        let addrs: Vec<&str> = ours.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.1.7"]);
        assert_eq!(ours.vips.len(), 1);
        assert!(
            !c.services.contains_key("reviews-eu-west.shop"),
            "not exported"
        );
        // The local services are untouched.
        assert_eq!(c.services["catalog.shop"].endpoints.len(), 1);
        assert!(c.services["reviews.shop"].endpoints.is_empty());
        // A proxy in shop is sent the clusterset services.
        let wanted = wanted_in_shop(&c);
        assert!(
            wanted.contains("catalog.shop.svc.clusterset.local"),
            "{wanted:?}"
        );
        assert!(wanted.contains("catalog-eu-central.shop"));
        // And a proxy takes them as they are.
        let config = model::ProxyConfig {
            services: c.services.values().cloned().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate::validate(&config);
        assert!(issues.is_empty(), "{issues:?}");
    }

    /// The services a proxy in namespace shop is sent.
    fn wanted_in_shop(c: &Catalog) -> BTreeSet<&str> {
        let index = crate::translate::proxy::NamespaceIndex::new(c);
        let node = model::Node {
            name: "frontend".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        crate::translate::proxy::wanted(c, &index, &node)
    }

    /// (kind, object, reason) of each problem.
    fn problems(c: &Catalog) -> Vec<(&str, &str, &str)> {
        c.problems
            .iter()
            .map(|p| (p.kind, p.key.name.as_str(), p.reason))
            .collect()
    }

    /// The cluster of each endpoint of `service` ("" for ours).
    fn via<'a>(c: &'a Catalog, service: &str) -> Vec<&'a str> {
        c.services[service]
            .endpoints
            .iter()
            .map(|e| e.via_cluster.as_str())
            .collect()
    }

    #[test]
    fn the_oldest_export_decides_the_clusterset_ports() {
        let at = |mut s: Summary, t: i64| {
            s.exported_at = t;
            s
        };
        // eu-central exported first (port 80, as ours): us-east's 8080 is
        // the conflict, though it comes before ours too.
        let c = imported(
            &[
                at(summary("us-east", "catalog", 8080, 8080, 1), 200),
                at(summary("eu-central", "catalog", 80, 9080, 1), 100),
            ],
            Some(ENTRY),
        );
        assert_eq!(problems(&c), [("ClusterLink", "us-east", "PortConflict")]);
        assert!(
            c.problems[0]
                .message
                .contains("oldest export, in eu-central")
        );
        let all = "catalog.shop.svc.clusterset.local";
        assert_eq!(c.services[all].ports[0].port, 80);
        assert_eq!(via(&c, all), ["", "eu-central"], "ours and eu-central's");

        // The oldest export has other ports than ours (whose age is not
        // known, so it counts as newest): ours is the conflict, named on
        // our ServiceExport, and our endpoints leave the set.
        let c = imported(
            &[at(summary("eu-central", "catalog", 9999, 9999, 2), 100)],
            Some(ENTRY),
        );
        assert_eq!(problems(&c), [("ServiceExport", "catalog", "PortConflict")]);
        assert!(
            c.problems[0]
                .message
                .contains("in eu-central (exported at 100)")
        );
        let all = "catalog.shop.svc.clusterset.local";
        assert_eq!(c.services[all].ports[0].port, 9999);
        assert_eq!(via(&c, all), ["eu-central"]);
        assert_eq!(
            c.services["catalog.shop"].endpoints.len(),
            1,
            "ours, by its own name"
        );
    }

    #[test]
    fn oldest_known_age_wins_then_the_cluster_name() {
        let ports = [model::ServicePort {
            port: 80,
            ..Default::default()
        }];
        let s = |cluster: &str, at: i64| {
            let mut s = summary(cluster, "catalog", 80, 80, 1);
            s.exported_at = at;
            s
        };
        let (a, b, z) = (s("a", 300), s("b", 100), s("z", 0));
        let pick = |local: Option<i64>, peers: &[&Summary]| {
            oldest(local.map(|at| (at, "m", &ports[..], false)), peers)
                .map(|o| o.cluster.map(str::to_string))
        };
        assert_eq!(pick(None, &[&a, &b, &z]), Some(Some("b".into())));
        assert_eq!(pick(Some(50), &[&a, &b]), Some(None), "ours is older");
        assert_eq!(pick(Some(0), &[&z]), Some(None), "both unknown: m < z");
        assert_eq!(
            pick(Some(0), &[&a]),
            Some(Some("a".into())),
            "a known age wins"
        );
        let (b2, a2) = (s("b", 100), s("a", 100));
        assert_eq!(
            pick(None, &[&b2, &a2]),
            Some(Some("a".into())),
            "a tie: by name"
        );
        assert_eq!(pick(None, &[]), None);
    }

    #[test]
    fn conflicts_and_a_missing_gateway_are_reported_on_the_link() {
        let c = imported(
            &[
                summary("us-east", "cart", 80, 80, 1),
                summary("us-east", "catalog", 81, 81, 1),
                summary("eu-central", "catalog", 80, 9080, 0),
            ],
            Some(ENTRY),
        );
        let got: Vec<(&str, &str)> = c
            .problems
            .iter()
            .map(|p| (p.key.name.as_str(), p.reason))
            .collect();
        assert_eq!(got, [("us-east", "Conflict"), ("us-east", "PortConflict")]);
        assert!(
            c.problems[1].message.contains("catalog-us-east.shop"),
            "{}",
            c.problems[1].message
        );
        // The local cart-us-east stays ours; us-east's catalog keeps its
        // own name but stays out of the clusterset; eu-central's gateway,
        // with nothing healthy there, is in it but marked unhealthy.
        assert!(c.services["cart-us-east.shop"].endpoints.is_empty());
        assert_eq!(c.services["catalog-us-east.shop"].ports[0].port, 81);
        let all = &c.services["catalog.shop.svc.clusterset.local"];
        let clusters: Vec<&str> = all
            .endpoints
            .iter()
            .map(|e| e.via_cluster.as_str())
            .collect();
        assert_eq!(clusters, ["", "eu-central"]);
        assert!(all.endpoints[1].unhealthy);

        let c = imported(
            &[
                summary("us-east", "cart", 80, 80, 1),
                summary("us-east", "reviews", 80, 80, 1),
            ],
            None,
        );
        let got: Vec<&str> = c.problems.iter().map(|p| p.reason).collect();
        assert_eq!(got, ["NoGateway"], "once per cluster");
        assert!(!c.services.contains_key("reviews-us-east.shop"));
    }

    #[test]
    fn imported_names_get_clusterset_ips_that_what_the_store_keeps_decides() {
        let exports = [
            summary("eu-central", "catalog", 80, 9080, 1),
            summary("us-east", "catalog", 80, 9080, 1),
            summary("us-east", "reviews", 80, 8080, 1),
        ];
        let c = imported(&exports, Some(ENTRY));
        let vip = |c: &Catalog, n: &str| -> std::net::Ipv4Addr {
            let s = &c.services[n];
            assert_eq!(s.vips.len(), 1, "{n}: {:?}", s.vips);
            s.vips[0].parse().unwrap()
        };
        let names = [
            "catalog.shop.svc.clusterset.local",
            "catalog-eu-central.shop",
            "catalog-us-east.shop",
            "reviews.shop.svc.clusterset.local",
            "reviews-us-east.shop",
        ];
        let ips: BTreeSet<_> = names.iter().map(|n| vip(&c, n)).collect();
        assert_eq!(ips.len(), names.len(), "one address each");
        assert!(
            ips.iter()
                .all(|ip| super::super::vips::Range::DEFAULT.contains(*ip))
        );
        // Local Services keep their own (none here); same inputs, same
        // addresses.
        assert!(c.services["catalog.shop"].vips.is_empty());
        assert_eq!(imported(&exports, Some(ENTRY)).services, c.services);

        // What a ServiceImport holds wins, and a local ClusterIP is never
        // handed out.
        let taken = vip(&c, "reviews-us-east.shop");
        let c2 = imported_with(
            &format!(
                r#"apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata:
  name: catalog
  namespace: shop
  annotations: {{isthmus.dev/cluster-ips: '{{"eu-central": "240.240.7.7"}}'}}
spec: {{type: ClusterSetIP, ips: [240.240.7.6], ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: local-one, namespace: shop}}
spec: {{clusterIP: {taken}, ports: [{{port: 80}}]}}
"#
            ),
            &exports,
            Some(ENTRY),
        );
        assert!(c2.problems.is_empty(), "{:?}", c2.problems);
        assert_eq!(
            vip(&c2, "catalog.shop.svc.clusterset.local").to_string(),
            "240.240.7.6"
        );
        assert_eq!(
            vip(&c2, "catalog-eu-central.shop").to_string(),
            "240.240.7.7"
        );
        assert_ne!(vip(&c2, "reviews-us-east.shop"), taken);
        assert_eq!(c2.services["local-one.shop"].vips, [taken.to_string()]);
    }

    fn headless_summary(cluster: &str, at: i64, hostnames: &[&str]) -> Summary {
        let mut s = summary(cluster, "db", 5432, 5432, hostnames.len() as u32);
        s.ports[0].protocol = model::Protocol::Tcp as i32; // as ours: unnamed
        s.headless = true;
        s.exported_at = at;
        s.hostnames = hostnames.iter().map(|h| h.to_string()).collect();
        s
    }

    /// Our own headless `db` (two pods, one not ready), exported.
    const OWN_DB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{port: 5432}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: db, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{port: 5432}]
endpoints:
  - {addresses: [10.0.2.1], hostname: db-0}
  - {addresses: [10.0.2.2], hostname: db-1, conditions: {ready: false}}
  - {addresses: [10.0.2.3]}
"#;

    #[test]
    fn a_headless_service_names_each_pod_in_each_cluster() {
        let c = imported_with(
            OWN_DB,
            &[headless_summary("eu-central", 0, &["db-0", "db-1"])],
            Some(ENTRY),
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        // The set: no ClusterSet IP of its own, marked headless.
        let set = "db.shop.svc.clusterset.local";
        assert!(c.services[set].vips.is_empty());
        assert!(c.headless.contains(set) && !c.imported.contains_key(set));
        // eu-central's pods: through our gateway, each CONNECT naming the
        // pod's own service there.
        let pod = &c.services["db-1.eu-central.db.shop.svc.clusterset.local"];
        assert_eq!(pod.endpoints.len(), 1);
        let e = &pod.endpoints[0];
        assert_eq!((e.address.as_str(), e.tunnel_port), ("10.0.0.2", 15009));
        assert_eq!(
            (e.via_cluster.as_str(), e.via_service.as_str()),
            ("eu-central", "db-1.db.shop")
        );
        assert_eq!(e.identity, "spiffe://eu-central.isthmus.local");
        // Our pods: their own endpoint (the unready one too, unhealthy);
        // the endpoint without a hostname has no name.
        let ours = |h: &str| &c.services[&format!("{h}.eu-west.db.shop.svc.clusterset.local")];
        let addrs = |s: &model::Service| -> Vec<(String, bool)> {
            s.endpoints
                .iter()
                .map(|e| (e.address.clone(), e.unhealthy))
                .collect()
        };
        assert_eq!(addrs(ours("db-0")), [("10.0.2.1".to_string(), false)]);
        assert_eq!(addrs(ours("db-1")), [("10.0.2.2".to_string(), true)]);
        // Every pod's name has an address, each its own.
        let names: Vec<&String> = c
            .services
            .keys()
            .filter(|n| n.ends_with(".db.shop.svc.clusterset.local"))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        let ips: BTreeSet<&String> = names
            .iter()
            .map(|n| {
                assert_eq!(c.services[*n].vips.len(), 1, "{n}");
                &c.services[*n].vips[0]
            })
            .collect();
        assert_eq!(ips.len(), 4);
        // What our east-west gateway admits for linked clusters: each of
        // our pods by its own service.
        for h in ["db-0", "db-1"] {
            let name = format!("{h}.db.shop");
            assert!(c.exported.contains(&name), "{name}");
            assert_eq!(c.services[&name].endpoints.len(), 1, "{name}");
        }
        // The per-cluster name stays one service, balanced there.
        assert_eq!(c.services["db-eu-central.shop"].vips.len(), 1);
        // A proxy in shop is sent the pods' clusterset names, not our
        // pods' own services (the gateway's).
        let wanted = wanted_in_shop(&c);
        assert!(wanted.contains("db-1.eu-central.db.shop.svc.clusterset.local"));
        assert!(wanted.contains("db-0.eu-west.db.shop.svc.clusterset.local"));
        assert!(wanted.contains("db.shop.svc.clusterset.local"));
        assert!(!wanted.contains("db-0.db.shop"), "{wanted:?}");
        // A proxy takes them as they are.
        let config = model::ProxyConfig {
            services: c.services.values().cloned().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate::validate(&config);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn the_oldest_export_decides_whether_a_service_is_headless() {
        // Ours (headless, 2026-01-01) is older than us-east's ClusterSetIP
        // db: us-east is left out of the set and of the pods' names.
        let mut plain = summary("us-east", "db", 5432, 5432, 1);
        plain.ports[0].protocol = model::Protocol::Tcp as i32;
        plain.exported_at = 1_800_000_000;
        let c = imported_with(OWN_DB, std::slice::from_ref(&plain), Some(ENTRY));
        assert_eq!(problems(&c), [("ClusterLink", "us-east", "TypeConflict")]);
        assert!(
            c.problems[0]
                .message
                .contains("oldest export, in this cluster")
        );
        assert!(c.headless.contains("db.shop.svc.clusterset.local"));
        assert_eq!(via(&c, "db.shop.svc.clusterset.local"), ["", "", ""]);
        assert!(
            c.services.contains_key("db-us-east.shop"),
            "still by its own name"
        );

        // An older ClusterSetIP export: ours is the conflict, named on our
        // ServiceExport; the set has a ClusterSet IP and no pods' names.
        plain.exported_at = 1_000;
        let c = imported_with(OWN_DB, &[plain], Some(ENTRY));
        assert_eq!(problems(&c), [("ServiceExport", "db", "TypeConflict")]);
        let set = "db.shop.svc.clusterset.local";
        assert_eq!(c.services[set].vips.len(), 1);
        assert_eq!(via(&c, set), ["us-east"]);
        assert!(
            !c.services
                .keys()
                .any(|n| n.ends_with(".db.shop.svc.clusterset.local"))
        );
        // Our gateway still admits our pods: the export is ours to make.
        assert!(c.exported.contains("db-0.db.shop"));
    }

    #[test]
    fn a_pod_name_that_is_not_a_dns_label_is_refused() {
        let c = imported(
            &[headless_summary("eu-central", 0, &["db-0", "Bad.Name", ""])],
            Some(ENTRY),
        );
        assert_eq!(
            problems(&c),
            [
                ("ClusterLink", "eu-central", "BadHostname"),
                ("ClusterLink", "eu-central", "BadHostname")
            ]
        );
        assert!(
            c.services
                .contains_key("db-0.eu-central.db.shop.svc.clusterset.local")
        );
        assert_eq!(
            c.services
                .keys()
                .filter(|n| n.ends_with(".db.shop.svc.clusterset.local"))
                .count(),
            1
        );
    }

    #[test]
    fn a_headless_service_import_keeps_its_pods_addresses() {
        let exports = [headless_summary("eu-central", 0, &["db-0", "db-1"])];
        let c = imported_with(OWN_DB, &exports, Some(ENTRY));
        let d = crate::writers::imports::desired(&c, "eu-west");
        let si = &d[&ObjectKey {
            namespace: Some("shop".into()),
            name: "db".into(),
        }];
        assert_eq!(si["spec"]["type"], "Headless");
        assert!(si["spec"].get("ips").is_none(), "{si}");
        assert_eq!(
            si["status"]["clusters"],
            serde_json::json!([{"cluster": "eu-central"}, {"cluster": "eu-west"}])
        );
        let annotation = si["metadata"]["annotations"][super::super::vips::CLUSTER_IPS_ANNOTATION]
            .as_str()
            .unwrap();
        let held: std::collections::BTreeMap<String, String> =
            serde_json::from_str(annotation).unwrap();
        let keys: Vec<&str> = held.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "eu-central",
                "eu-central/db-0",
                "eu-central/db-1",
                "eu-west",
                "eu-west/db-0",
                "eu-west/db-1"
            ]
        );
        // Read back as the store holds it after the write: every name's
        // address, as assigned.
        let text = serde_json::to_string(si).unwrap();
        let (loaded, errors) = parse_file(std::path::Path::new("si.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let assigned = super::super::vips::assigned(&c);
        let back = super::super::vips::persisted(&snap);
        assert_eq!(back.len(), 6);
        for (name, ip) in &back {
            assert_eq!(assigned.get(name), Some(ip), "{name}");
        }
    }
}
