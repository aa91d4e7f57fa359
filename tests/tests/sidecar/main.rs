//! Integration tests of the sidecar: real upstream servers on 127.0.0.1:0,
//! the sidecar started in-process through its production path (YAML file
//! → store → listeners), real HTTP/1.1, h2c, gRPC-style and TCP clients.

mod balancing;
mod crosscluster;
mod lifecycle;
mod mtls;
mod protocols;
mod resilience;
mod routing;
