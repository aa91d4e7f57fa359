//! Workload identity: SPIFFE IDs (`spiffe`) and the cluster's CA (`ca`),
//! which issues short-lived X.509 SVIDs for CSRs whose private keys never
//! leave the sidecar. The gRPC CA service, CSR authentication (TokenReview
//! or bootstrap tokens) and trust-bundle distribution build on these.

pub mod ca;
pub mod service;
pub mod spiffe;
pub mod token;

pub use ca::{Ca, CaError, Svid};
pub use spiffe::{SpiffeId, SpiffeIdError};

/// The trust domain the store's Mesh declares.
pub fn mesh_trust_domain(snap: &crate::store::Snapshot) -> Option<String> {
    snap.of_kind("Mesh").find_map(|(_, r)| match r {
        crate::store::Resource::Mesh(m) => Some(m.spec.trust_domain.clone()),
        _ => None,
    })
}
