//! Workload identity: SPIFFE IDs (`spiffe`) and the cluster's CA (`ca`),
//! which issues short-lived X.509 SVIDs for CSRs whose private keys never
//! leave the sidecar. The gRPC CA service, CSR authentication (TokenReview
//! or bootstrap tokens) and trust-bundle distribution build on these.

pub mod ca;
pub mod spiffe;

pub use ca::{Ca, CaError, Svid};
pub use spiffe::{SpiffeId, SpiffeIdError};
