//! What the control plane writes back to Kubernetes (`kube` mode): status
//! conditions on the resources it read (`status`), and, later, the CA root.
//! Every replica reads and serves discovery; only the holder of the Lease
//! (`leader`) writes, so replicas never fight over a status.

pub mod leader;
pub mod status;
