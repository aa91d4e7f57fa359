//! Integration tests of the sidecar: real upstream servers on 127.0.0.1:0,
//! the sidecar started in-process through its production path (YAML file
//! → store → listeners), real HTTP/1.1, h2c, gRPC-style and TCP clients.

mod common;

mod balancing;
mod crosscluster;
#[path = "../support/eastwest.rs"]
mod ew;
mod lifecycle;
mod mtls;
#[path = "../support/pki.rs"]
mod pki;
mod protocols;
mod resilience;
mod routing;

use std::net::SocketAddr;

/// YAML of a service named `name` with one port and the given endpoints
/// (each "ip:port", optionally followed by a locality), plus `extra` YAML
/// lines already indented for the service.
pub fn service(name: &str, protocol: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let mut s = format!(
        "  - name: {name}\n    ports: [{{port: 80, protocol: {protocol}}}]\n    endpoints:\n"
    );
    for e in endpoints {
        s.push_str(&format!("      - {{address: \"{e}\"}}\n"));
    }
    if endpoints.is_empty() {
        s = s.replace("    endpoints:\n", "    endpoints: []\n");
    }
    s.push_str(extra);
    s
}

/// A config with an explicit HTTP listener "out" and these services.
pub fn config(services: &[String]) -> String {
    format!(
        "node: {{name: tester, namespace: shop, locality: {{region: eu-west, zone: eu-west-a}}}}\n\
         listeners:\n  - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
         services:\n{}",
        services.concat()
    )
}
