//! What the control plane writes back to Kubernetes (`kube` mode): status
//! on the resources it read (`status`) and the MCS ServiceImports of what
//! it imports (`imports`), and the CA root where proxies read it
//! (`ca_root`).
//! Every replica reads and serves discovery; only the holder of the Lease
//! (`leader`) writes, so replicas never fight over a status.

pub mod ca_root;
pub mod imports;
pub mod leader;
pub mod status;
