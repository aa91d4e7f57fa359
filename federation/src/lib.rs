//! Isthmus control plane. Reads resources (Kubernetes API or a watched
//! directory of the same YAML), translates them to proxy configuration and
//! streams it to every proxy and gateway.
//!
//! - `resources`: the resource types it reads: our CRDs (`isthmus.dev`),
//!   and the standard APIs we have no maintained types for at our kube
//!   version (MCS, Gateway API routes).
//! - `crdgen`: our CRDs as YAML, generated from those types (`crds/`).
//! - `store`: where resources come from (`files`, `kube`), as snapshots.
//! - `translate`: snapshots to proxy configuration, pure.
//! - `discovery`: the gRPC stream that sends each proxy its configuration.
//! - `identity`: SPIFFE IDs and the cluster's CA (SVIDs from CSRs).
//! - `join`: join tokens asked of a control plane through a Secret
//!   mailbox (`isthmusctl link create --to-context`), never minted from
//!   its key. The CLI is its own crate (`ctl/`, `isthmus-ctl`).
//! - `sync`: federation with linked clusters' control planes (exports,
//!   imports, partitions) through the east-west gateways.
//! - `writers`: status conditions written back to Kubernetes, by the Lease
//!   holder only.
//! - `server`: the running control plane: store → translation → discovery
//!   and admin.
#![forbid(unsafe_code)]

pub mod crdgen;
pub mod discovery;
pub mod identity;
pub mod inject;
pub mod join;
pub mod resources;
pub mod server;
pub mod store;
pub mod sync;
pub mod translate;
pub mod writers;
