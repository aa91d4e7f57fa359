//! Translation: pure functions from a store snapshot to the proxies'
//! configuration (the `isthmus-api` model). No I/O, no clocks: the same
//! snapshot always gives the same configuration, which is what the
//! discovery stream diffs and versions.
//!
//! - `services`: Kubernetes Services + EndpointSlices + DestinationPolicy
//!   → the cluster's service catalog.
//! - `routes`: HTTPRoute / GRPCRoute → each service's route table, with
//!   DestinationPolicy's default timeout and retries.
//! - `security`: Mesh mTLS default, PeerAuthentication,
//!   AuthorizationPolicy and RequestAuthentication → per-namespace
//!   security resources.
//! - `imports`: services linked clusters export → per-cluster and
//!   clusterset services via this cluster's east-west gateway.
//! - `links`: ClusterLink → the east-west gateway's peers and the linked
//!   clusters' trust bundles.
//! - Problems found on the way (a policy naming a missing service, two
//!   policies for one service) are returned as `Problem`s, which become
//!   status conditions (`kube`) or log lines (`files`); the rest of the
//!   configuration is unaffected.

pub mod imports;
pub mod links;
pub mod proxy;
pub mod routes;
pub mod security;
pub mod services;
pub mod status;

use crate::store::ObjectKey;

/// Something wrong with one resource, to report on that resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// A condition reason in CamelCase (`TargetNotFound`, `Conflict`).
    pub reason: &'static str,
    pub message: String,
}

/// A GEP-2257 duration as a protobuf Duration (already validated by the
/// store; an unparsable one is dropped).
pub(crate) fn proto_duration(
    d: &crate::resources::duration::Duration,
) -> Option<pbjson_types::Duration> {
    let d = d.parse().ok()?;
    Some(pbjson_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// The whole cluster's configuration from a snapshot: the service catalog
/// with route tables and policy defaults, and the problems found.
pub fn translate(snap: &crate::store::Snapshot) -> services::Catalog {
    translate_with(snap, &[])
}

/// The catalog with routes and policies but no endpoints yet, and where
/// to get each service's endpoints (see `services::Endpoints`).
pub fn translate_shells<'a>(
    snap: &'a crate::store::Snapshot,
    workloads: &'a [&'a crate::store::registry::Workload],
) -> (services::Catalog, services::Endpoints<'a>) {
    translate_shells_importing(snap, workloads, |_, _| {})
}

/// `translate_shells`, with `import` adding services from elsewhere
/// (linked clusters) before routes and policies are attached, so an
/// HTTPRoute or a DestinationPolicy can name an imported service.
pub fn translate_shells_importing<'a>(
    snap: &'a crate::store::Snapshot,
    workloads: &'a [&'a crate::store::registry::Workload],
    import: impl FnOnce(&mut services::Catalog, &mut services::Endpoints<'a>),
) -> (services::Catalog, services::Endpoints<'a>) {
    let (mut catalog, mut endpoints) = services::catalog_shells(snap, workloads);
    import(&mut catalog, &mut endpoints);
    attach_policies(&mut catalog, snap);
    (catalog, endpoints)
}

/// `translate`, with registered workloads as endpoints of the Services
/// that select them.
pub fn translate_with(
    snap: &crate::store::Snapshot,
    workloads: &[&crate::store::registry::Workload],
) -> services::Catalog {
    let mut catalog = services::catalog_with(snap, workloads);
    attach_policies(&mut catalog, snap);
    catalog
}

/// Routes, security and links on top of the services, the same for both.
fn attach_policies(catalog: &mut services::Catalog, snap: &crate::store::Snapshot) {
    services::apply_policies_beyond_services(catalog, snap);
    routes::attach(catalog, snap);
    catalog.security = security::translate(snap, &mut catalog.problems);
    catalog.links = links::translate(snap, &mut catalog.problems);
    for (key, _) in snap.of_kind("ServiceExport") {
        if let Some(ns) = &key.namespace
            && snap.get("Service", key).is_some()
        {
            catalog
                .exported
                .insert(services::service_name(&key.name, ns));
        }
    }
}
