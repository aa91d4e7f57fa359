//! The east-west gateway (issue 5, first part): HTTP/3 over QUIC between
//! the gateways of linked clusters. Each cross-cluster connection is one
//! HTTP/3 CONNECT stream (RFC 9114 §4.4) whose authority names the target
//! service and port in the peer cluster (`<name>.<namespace>:<port>`); the
//! receiving gateway picks a healthy local endpoint and joins the stream to
//! a TCP connection to it — the endpoint's sidecar mesh transport when it
//! has one, so the payload stays the client sidecar's own mTLS session and
//! the gateways never see plaintext.
//!
//! - `quic`: QUIC endpoints and configuration from the workload's mesh TLS
//!   (ALPN `h3`, SPIFFE verification of both ends), keep-alive, idle
//!   timeout, large receive windows.
//! - `server`: accepts peers, authenticates them, answers CONNECT.
//! - `client`: one long-lived QUIC connection per peer gateway; opens
//!   CONNECT streams on it; the HTTP/2-over-TLS fallback and the race
//!   between them.
//! - `gateway`: the local entry for this cluster's workloads and the links
//!   to peers, made on first use and remade when closed.
//! - `splice`: copies between a CONNECT stream and a TCP connection,
//!   coalescing the ~1 packet per `recv_data` that h3 yields.

pub mod client;
pub mod config;
pub mod gateway;
pub mod quic;
pub mod server;
pub mod splice;

/// The status a CONNECT gets, and why (for the client to act on: retry
/// elsewhere, fail over, give up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefusal {
    #[error("the CONNECT has no authority (send <service>.<namespace>:<port>)")]
    NoAuthority,
    #[error("{0:?} is not <service>.<namespace>:<port> with a port 1-65535")]
    BadAuthority(String),
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("no service {0} here")]
    NoService(String),
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("service {0} has no healthy endpoint")]
    NoHealthyEndpoint(String),
    #[error("the endpoint {addr} of {service} refused the connection: {reason}")]
    EndpointFailed {
        service: String,
        addr: std::net::SocketAddr,
        reason: String,
    },
}

impl ConnectRefusal {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::NoAuthority | Self::BadAuthority(_) => S::BAD_REQUEST,
            Self::NotConnect(_) => S::METHOD_NOT_ALLOWED,
            Self::NoService(_) | Self::NoPort { .. } => S::NOT_FOUND,
            Self::NoHealthyEndpoint(_) => S::SERVICE_UNAVAILABLE,
            Self::EndpointFailed { .. } => S::BAD_GATEWAY,
        }
    }
}

/// Parses a CONNECT authority `<service>.<namespace>:<port>` (pure).
pub fn parse_authority(authority: Option<&str>) -> Result<(String, u16), ConnectRefusal> {
    let a = authority.ok_or(ConnectRefusal::NoAuthority)?;
    let bad = || ConnectRefusal::BadAuthority(a.to_string());
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let ok = host.contains('.')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    if !ok {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_name_a_service_and_a_port() {
        assert_eq!(
            parse_authority(Some("catalog.shop:80")),
            Ok(("catalog.shop".into(), 80))
        );
        assert_eq!(parse_authority(None), Err(ConnectRefusal::NoAuthority));
        for bad in [
            "catalog.shop",
            "catalog.shop:0",
            "catalog.shop:70000",
            "catalog:80",
            ".shop:80",
            "Catalog.shop:80",
            "catalog.shop:http",
            "",
        ] {
            assert!(
                matches!(
                    parse_authority(Some(bad)),
                    Err(ConnectRefusal::BadAuthority(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            ConnectRefusal::NoService("x.y".into()).status(),
            http::StatusCode::NOT_FOUND
        );
    }
}
