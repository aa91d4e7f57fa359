//! The protocol of a port from what Kubernetes says of it, read as Istio
//! reads it: the Service port's `appProtocol`, else the port name's prefix.
//! Shared by the control plane (Service ports) and the proxy (its
//! workload's named ports).

use crate::model::Protocol;

/// The protocol one `appProtocol` value or port-name prefix names, if any.
pub fn named(p: &str) -> Option<Protocol> {
    match p.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/http" | "http1" => Some(Protocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" | "grpc-web" => Some(Protocol::Grpc),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
        _ => None,
    }
}

/// The protocol a port name's prefix says (`http-web`, `grpc`, `h2c-api`).
pub fn of_port_name(name: &str) -> Option<Protocol> {
    named(name.split('-').next().unwrap_or(name))
}

/// The protocol of a Service port: `appProtocol` first, then the port
/// name's prefix, else opaque TCP.
pub fn protocol_of(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    app_protocol
        .and_then(named)
        .or_else(|| name.and_then(of_port_name))
        .unwrap_or(Protocol::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_say_their_protocol_by_prefix() {
        assert_eq!(of_port_name("grpc"), Some(Protocol::Grpc));
        assert_eq!(of_port_name("h2c-api"), Some(Protocol::Http2));
        assert_eq!(of_port_name("HTTP-web"), Some(Protocol::Http));
        assert_eq!(of_port_name("redis-main"), Some(Protocol::Tcp));
        assert_eq!(of_port_name("web"), None);
        assert_eq!(of_port_name(""), None);
    }
}
