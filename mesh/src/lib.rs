//! isthmus-mesh: what the data plane and the control plane share to be one
//! mesh. Both sides verify peers with the same rules and reach linked
//! clusters the same way, so this lives once, here:
//!
//! - `spiffe`: SPIFFE IDs, one type and one set of rules.
//! - `tls`: trust bundles per trust domain, the rustls client and server
//!   configs reading the current SVID per handshake, SPIFFE verifiers,
//!   handshake admission; `tls::control`, the connector for tonic channels
//!   to a control plane.
//! - `identity`: the workload's SVID, from the CA (CSR + token, renewal) or
//!   from files.
//! - `h2connect`: CONNECT streams on HTTP/2 (the `h2` crate directly),
//!   where an abort is a reset: the primitive under the mesh transport,
//!   the east-west entry and its TCP fallback.
//! - `transport`: the mesh transport client (sidecar to sidecar, 15008),
//!   and mTLS sessions with services of linked clusters through this
//!   cluster's east-west entry.
//! - `headers`: the headers those CONNECT protocols carry.
//! - `dial`: outbound TCP with the proxy's socket options.
#![forbid(unsafe_code)]

pub mod dial;
pub mod h2connect;
pub mod headers;
pub mod identity;
pub mod spiffe;
pub mod tls;
pub mod transport;

pub use spiffe::{SpiffeId, SpiffeIdError};
