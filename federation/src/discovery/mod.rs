//! The discovery stream (`isthmus.discovery.v1.Discovery`): every proxy and
//! gateway subscribes with its identity and gets its slice of the catalog
//! as versioned, incremental responses it ACKs or NACKs (modelled on delta
//! xDS; the protocol is documented in api/proto/isthmus/discovery/v1).
//!
//! - `offer`: one translated generation, encoded once as shared resources,
//!   and which of them a proxy wants.
//! - `stream`: one stream's state as plain data (what the proxy holds, what
//!   it refused, the response in flight): decides what to send.
//! - `subscribers`: the table of live streams for /config_dump, and the
//!   `Programmed` conditions NACKs put on the resources at fault.
//! - `service`: the tonic service: a task per stream, woken by every new
//!   generation, so a change fans out to all subscribers concurrently.

pub mod offer;
pub mod service;
pub mod stream;
pub mod subscribers;

pub use offer::Offer;
pub use service::{DiscoveryService, serve};
pub use subscribers::Subscribers;
