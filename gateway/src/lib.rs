//! isthmus-gateway: the Isthmus data plane. One binary, two roles: the
//! sidecar beside each workload and the east-west gateway at the cluster
//! edge. See ARCHITECTURE.md for the map of modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod eastwest;
pub mod explain;
pub mod health;
pub mod iptables;
pub mod jwt;
pub mod launch;
pub mod liveness;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod route;
pub mod sidecar;
pub mod splice;
pub mod telemetry;
pub mod transport;
