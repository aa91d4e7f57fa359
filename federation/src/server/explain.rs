//! `/explain?service=NAME` on the admin port: the control plane's part of
//! `isthmusctl explain`. Where a service of the proxies' configuration
//! comes from (a Service, a ServiceImport's clusterset name, a linked
//! cluster's per-cluster name), its addresses, which clusters export it
//! with their links' state and staleness, and the routing objects that
//! shape it (a received one with the cluster that authored it). Pure over
//! the published state and the peers.

use std::collections::BTreeSet;
use std::time::SystemTime;

use isthmus_api::explain::{Exporter, ServiceOrigin};

use super::Published;
use crate::sync::peers::Peer;
use crate::translate::imports::clusterset_name;
use crate::translate::services::service_name;

/// The object a route rule came from: `ns/name/rule` → `ns/name`.
fn route_object(rule: &str) -> &str {
    rule.rsplit_once('/').map_or(rule, |(o, _)| o)
}

/// What the control plane knows of service `name` (None: it has no such
/// service).
pub fn service_origin(
    p: &Published,
    peers: &[Peer],
    own: &str,
    name: &str,
    now: SystemTime,
) -> Option<ServiceOrigin> {
    let svc = p.offer.service(name)?;
    let imported = p.catalog.imported.get(name);
    // (namespace, service) of what it stands for.
    let (ns, base) = match imported {
        Some(i) => (i.namespace.clone(), i.service.clone()),
        None => {
            let (b, n) = name.split_once('.').unwrap_or((name, ""));
            (n.to_string(), b.to_string())
        }
    };
    let source = match imported {
        Some(i) => match (&i.cluster, &i.pod) {
            (Some(c), Some(pod)) => format!("pod {pod} of {c}'s headless export of {ns}/{base}"),
            (Some(c), None) => format!("{c}'s export of {ns}/{base} (per-cluster name)"),
            (None, _) => format!(
                "ServiceImport {ns}/{base} (clusterset name {})",
                clusterset_name(&base, &ns)
            ),
        },
        None => format!("Service {ns}/{base}"),
    };
    let only = imported.and_then(|i| i.cluster.clone());
    let key = service_name(&base, &ns);
    let mut exporters = Vec::new();
    if p.catalog.exported.contains(&key) && only.as_ref().is_none_or(|c| c == own) {
        let local = p
            .offer
            .service(&key)
            .map_or(0, |s| s.endpoints.iter().filter(|e| !e.unhealthy).count());
        exporters.push(Exporter {
            cluster: own.to_string(),
            endpoints: u32::try_from(local).unwrap_or(u32::MAX),
            link: "local".into(),
            last_sync_seconds: None,
            stale: false,
        });
    }
    for peer in peers {
        if only.as_ref().is_some_and(|c| *c != peer.cluster) {
            continue;
        }
        let Some(e) = peer.services.get(&key) else {
            continue;
        };
        let link = match (&peer.refusal, peer.connected, peer.withdrawn) {
            (_, true, _) => "Connected".to_string(),
            (_, false, true) => "Disconnected (imports withdrawn)".to_string(),
            (Some(r), false, false) => format!("Disconnected ({}: {})", r.reason, r.message),
            (None, false, false) => "Disconnected".to_string(),
        };
        exporters.push(Exporter {
            cluster: peer.cluster.clone(),
            endpoints: e.healthy,
            link,
            last_sync_seconds: peer
                .last_sync
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs()),
            stale: !peer.connected && !peer.withdrawn,
        });
    }
    let mut policies = BTreeSet::new();
    for r in &svc.routes {
        let object = route_object(&r.name);
        if object == "default" || object.is_empty() {
            continue;
        }
        let from = p
            .received
            .applied
            .iter()
            .find(|((_, k), _)| k.to_string() == object)
            .map(|((kind, _), origin)| format!("{kind} {object} (received from {origin})"));
        policies.insert(from.unwrap_or_else(|| format!("route {object}")));
    }
    Some(ServiceOrigin {
        service: name.to_string(),
        cluster: own.to_string(),
        source,
        vips: svc.vips.clone(),
        hosts: svc.hosts.clone(),
        exporters,
        policies: policies.into_iter().collect(),
    })
}
