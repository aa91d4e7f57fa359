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

pub mod headless;
pub mod imports;
pub mod links;
pub mod proxy;
pub mod received;
pub mod routes;
pub mod security;
pub mod services;
pub mod status;
pub mod vips;

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

/// Everything a translation reads. `Inputs::new(snapshot)` is a cluster
/// on its own; the running control plane adds its registered workloads,
/// what linked clusters export and their trust bundles as they last sent
/// them, its east-west entry and its federation port.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub snapshot: &'a crate::store::Snapshot,
    /// Self-registered workloads, endpoints of the Services that select
    /// them (files mode). In kube mode a pod its sidecar registers keeps
    /// its EndpointSlice endpoint, unhealthy too when the sidecar's checks
    /// fail (health at the source).
    pub workloads: &'a [&'a crate::store::registry::Workload],
    /// What linked clusters export, as the sync holds it.
    pub imports: &'a [imports::Summary],
    /// This cluster's east-west gateway entry: imported services are
    /// reached through it (none: imports are reported, not sent).
    pub gateway_entry: Option<imports::Entry>,
    /// Linked clusters' trust bundles as they last sent them (replacing
    /// the ones their ClusterLinks were made with).
    pub synced_trust: Option<&'a std::collections::BTreeMap<String, String>>,
    /// The control plane's federation service: its namespace and address.
    pub federation: Option<(&'a str, std::net::SocketAddr)>,
    /// ClusterLink gateway names (`host:port`) as last resolved.
    pub resolved: Option<&'a links::Resolved>,
    /// The ClusterSet IP range and what names had (none: the default
    /// range, and only what the store's ServiceImports hold).
    pub clusterset_ips: Option<&'a vips::Settings>,
}

impl<'a> Inputs<'a> {
    /// A snapshot and nothing else.
    pub fn new(snapshot: &'a crate::store::Snapshot) -> Self {
        Self {
            snapshot,
            workloads: &[],
            imports: &[],
            gateway_entry: None,
            synced_trust: None,
            federation: None,
            resolved: None,
            clusterset_ips: None,
        }
    }
}

/// A translation: the catalog with routes and policies but no endpoints
/// yet, and where to get each service's endpoints (the discovery offer
/// fills, encodes and drops them one service at a time).
pub struct Output<'a> {
    pub catalog: services::Catalog,
    pub endpoints: services::Endpoints<'a>,
}

impl Output<'_> {
    /// The catalog with every service's endpoints filled in.
    pub fn filled(self) -> services::Catalog {
        let Output {
            mut catalog,
            endpoints,
        } = self;
        for s in catalog.services.values_mut() {
            endpoints.fill(s);
        }
        catalog
    }
}

/// The one translation, for the running control plane and for tests:
/// services (local, then imported, so routes and policies may name an
/// imported service), routes, security, links, exports.
pub fn translate<'a>(inputs: &Inputs<'a>) -> Output<'a> {
    let snap = inputs.snapshot;
    let (mut catalog, mut endpoints) = services::catalog_shells(snap, inputs.workloads);
    imports::attach(
        &mut catalog,
        &mut endpoints,
        snap,
        inputs.imports,
        inputs.gateway_entry,
    );
    let default_ips = vips::Settings::default();
    vips::assign(
        &mut catalog,
        snap,
        inputs.clusterset_ips.unwrap_or(&default_ips),
    );
    attach_policies(&mut catalog, snap, inputs.resolved);
    if let Some(synced) = inputs.synced_trust {
        links::use_synced(&mut catalog.links.trust, synced);
    }
    if let Some((namespace, addr)) = inputs.federation {
        links::federation_service(&mut catalog, namespace, addr);
    }
    Output { catalog, endpoints }
}

/// Routes, security and links on top of the services, the same for both.
fn attach_policies(
    catalog: &mut services::Catalog,
    snap: &crate::store::Snapshot,
    resolved: Option<&links::Resolved>,
) {
    services::apply_policies_beyond_services(catalog, snap);
    routes::attach(catalog, snap);
    catalog.security = security::translate(snap, &mut catalog.problems);
    catalog.links = links::translate(snap, resolved, &mut catalog.problems);
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
