//! Headless Services across the cluster set (MCS, KEP-1645): a
//! StatefulSet's pods named one by one.
//!
//! - The exporting cluster gives each pod of an exported headless Service
//!   a service of its own, `<hostname>.<svc>.<ns>` (that one endpoint),
//!   which its east-west gateway admits: the CONNECT linked clusters open
//!   for that pod names it.
//! - An importing cluster names each pod
//!   `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local`, one endpoint
//!   (its gateway entry, `viaService: <hostname>.<svc>.<ns>`) and a
//!   ClusterSet IP of its own; its own pods too when it exports the
//!   Service as well (their local endpoint). The clusterset name of a
//!   headless service has no ClusterSet IP (`Catalog::headless`): the
//!   sidecars' DNS answers it with every pod's address, as MCS's DNS does.
//!
//! Pods come from the endpoints' hostnames (EndpointSlice `hostname`, or a
//! registered workload's name behind a headless Service); a linked
//! cluster sends the hostnames of its ready pods with its export.

use isthmus_api::model;

use super::imports::{CLUSTERSET, Entry, Summary};
use super::services::{Catalog, Endpoints, service_name};
use super::vips::Imported;

/// A pod's service in its own cluster: `<hostname>.<svc>.<ns>`.
pub fn local_pod_name(hostname: &str, service: &str, namespace: &str) -> String {
    format!("{hostname}.{}", service_name(service, namespace))
}

/// A pod's clusterset name:
/// `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local`.
pub fn clusterset_pod_name(
    hostname: &str,
    cluster: &str,
    service: &str,
    namespace: &str,
) -> String {
    format!("{hostname}.{cluster}.{service}.{namespace}{CLUSTERSET}")
}

fn pod_service(name: &str, ports: &[model::ServicePort]) -> model::Service {
    model::Service {
        name: name.to_string(),
        ports: ports.to_vec(),
        ..Default::default()
    }
}

/// A service named `name_of(hostname)` for each pod of our Service
/// `service.namespace`, with that pod's endpoint; their names and
/// hostnames.
fn local_pods(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    service: &str,
    namespace: &str,
    name_of: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let local = service_name(service, namespace);
    let Some(ports) = catalog.services.get(&local).map(|s| s.ports.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (hostname, _) in endpoints.hostnames(&local) {
        let name = name_of(&hostname);
        catalog
            .services
            .insert(name.clone(), pod_service(&name, &ports));
        endpoints.pod(&name, &local, &hostname);
        out.push((name, hostname));
    }
    out
}

/// The exporting side: a service for each pod of the exported headless
/// Service `service.namespace`, admitted by our east-west gateway.
pub fn export_pods(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    service: &str,
    namespace: &str,
) {
    let pods = local_pods(catalog, endpoints, service, namespace, |h| {
        local_pod_name(h, service, namespace)
    });
    catalog
        .exported
        .extend(pods.into_iter().map(|(name, _)| name));
}

/// Our own pods of the headless `service.namespace` under their
/// clusterset names (`own`: this cluster's name), when our export is in
/// the cluster set.
pub fn own_pods(
    catalog: &mut Catalog,
    endpoints: &mut Endpoints<'_>,
    service: &str,
    namespace: &str,
    own: &str,
) {
    if own.is_empty() {
        return;
    }
    let pods = local_pods(catalog, endpoints, service, namespace, |h| {
        clusterset_pod_name(h, own, service, namespace)
    });
    for (name, hostname) in pods {
        catalog
            .imported
            .insert(name, imported(service, namespace, own, &hostname));
    }
}

/// A linked cluster's pods of the headless service it exports (`s`),
/// through our gateway `entry`.
pub fn imported_pods(catalog: &mut Catalog, s: &Summary, entry: Entry) {
    for hostname in &s.hostnames {
        // An RFC 1123 label, as Kubernetes requires of a hostname.
        if !isthmus_api::validate::is_dns_label(hostname) {
            catalog.problems.push(super::imports::link_problem(
                &s.cluster,
                "BadHostname",
                format!(
                    "{}'s {}.{} names a pod {hostname:?}, which is not a DNS label: that pod has no clusterset name",
                    s.cluster, s.name, s.namespace
                ),
            ));
            continue;
        }
        let name = clusterset_pod_name(hostname, &s.cluster, &s.name, &s.namespace);
        let endpoint = super::imports::gateway_endpoint(
            s,
            entry,
            local_pod_name(hostname, &s.name, &s.namespace),
            Vec::new(),
        );
        let mut service = pod_service(&name, &s.ports);
        service.endpoints.push(endpoint);
        catalog.services.insert(name.clone(), service);
        catalog
            .imported
            .insert(name, imported(&s.name, &s.namespace, &s.cluster, hostname));
    }
}

fn imported(service: &str, namespace: &str, cluster: &str, pod: &str) -> Imported {
    Imported {
        namespace: namespace.to_string(),
        service: service.to_string(),
        cluster: Some(cluster.to_string()),
        pod: Some(pod.to_string()),
    }
}
