//! Workload identity: SPIFFE IDs (`spiffe`) and the cluster's CA (`ca`),
//! which issues short-lived X.509 SVIDs for CSRs whose private keys never
//! leave the sidecar. The gRPC CA service, CSR authentication (TokenReview
//! or bootstrap tokens) and trust-bundle distribution build on these;
//! `tls` is the API port's TLS (the control plane's own certificate,
//! client certificates verified when presented).

pub mod ca;
pub mod service;
pub mod tls;
pub mod token;

pub use ca::{Ca, CaError, Svid};
pub use isthmus_mesh::spiffe::{SpiffeId, SpiffeIdError};

/// The cluster name the store's Mesh declares.
pub fn mesh_cluster_name(snap: &crate::store::Snapshot) -> Option<String> {
    snap.of_kind("Mesh").find_map(|(_, r)| match r {
        crate::store::Resource::Mesh(m) => Some(m.spec.cluster_name.clone()),
        _ => None,
    })
}

/// The trust domain the store's Mesh declares.
pub fn mesh_trust_domain(snap: &crate::store::Snapshot) -> Option<String> {
    snap.of_kind("Mesh").find_map(|(_, r)| match r {
        crate::store::Resource::Mesh(m) => Some(m.spec.trust_domain.clone()),
        _ => None,
    })
}
