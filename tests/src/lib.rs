//! isthmus-tests: the tests that span crates and the harnesses they use.
//!
//! - `sidecar`: an in-process sidecar from YAML, clients, metrics.
//! - `eastwest`: an east-west gateway receiving from a peer, gateway
//!   identities, echo servers that report how a stream ended.
//! - `mesh`: a pod's sidecar subscribed to a control plane (`MeshSidecar`)
//!   and a sample app behind one (`MeshedApp`).
//! - `cluster`: a whole cluster in-process (control plane, east-west
//!   gateway, apps), and linking two.
//! - `load`: steady open-loop traffic over keep-alive connections, every
//!   result recorded with the cluster that answered; failover reports.
//! - `workspace`: the workspace root and `cargo metadata`'s packages.
//!
//! Tests (`tests/`): the sidecar suite, east-west gateways and the WAN,
//! control planes with sidecars, federation between clusters, mesh
//! security end to end, and `isthmusctl demo` as processes. Benchmarks
//! (`benches/`): east-west tunnels, the WAN, federation.
//! Support needing none of the crates under test is `isthmus-testkit`.
#![forbid(unsafe_code)]

pub mod bed;
pub mod cluster;
pub mod eastwest;
pub mod load;
pub mod mesh;
pub mod pod;
pub mod sidecar;
pub mod workspace;
