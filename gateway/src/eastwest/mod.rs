//! The east-west gateway: HTTP/3 over QUIC between
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
//! - `transport`: the traits the tunnel code is written against (a link
//!   opening streams of send and receive halves), implemented by both;
//!   `crate::splice` joins those halves with TCP connections.

pub mod client;
pub mod config;
pub mod gateway;
pub mod quic;
pub mod role;
pub mod server;
pub mod transport;

/// The CONNECT protocol's headers are the mesh's (the sidecars and the
/// control plane speak it to the local entry too).
pub use isthmus_mesh::headers::{
    CLUSTER_HEADER, LINK_FAILURE_HEADER, REFUSAL_HEADER, SOURCE_CLUSTER, SOURCE_IDENTITY,
    TARGET_PORT_HEADER, TRACEPARENT, TRANSPORT_HEADER, UNTRUSTED, parse_port, refusal_reason,
    refused, set_target_port, target_port,
};

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
    #[error(
        "service {service} is not exported to {peer} (add an export rule naming that peer to this gateway's east-west config)"
    )]
    NotExported { service: String, peer: String },
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
            Self::NotExported { .. } => S::FORBIDDEN,
            Self::NoHealthyEndpoint(_) => S::SERVICE_UNAVAILABLE,
            Self::EndpointFailed { .. } => S::BAD_GATEWAY,
        }
    }

    /// The CONNECT response: its status, and why in `REFUSAL_HEADER`.
    pub fn response(&self) -> http::Response<()> {
        refused(self.status(), &self.to_string())
    }
}

/// Who a cross-cluster stream comes from, carried on its CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub cluster: Option<String>,
    pub identity: Option<String>,
    pub traceparent: Option<String>,
}

impl Source {
    fn fields(&self) -> [(&'static str, Option<&String>); 3] {
        [
            (SOURCE_CLUSTER, self.cluster.as_ref()),
            (SOURCE_IDENTITY, self.identity.as_ref()),
            (TRACEPARENT, self.traceparent.as_ref()),
        ]
    }

    /// Adds the headers (values that are not valid header text are left
    /// out, never sent mangled).
    pub fn write(&self, headers: &mut http::HeaderMap) {
        for (name, v) in self.fields() {
            if let Some(v) = v.and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
    }

    pub fn read(headers: &http::HeaderMap) -> Self {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            cluster: get(SOURCE_CLUSTER),
            identity: get(SOURCE_IDENTITY),
            traceparent: get(TRACEPARENT),
        }
    }
}

/// Which services of this cluster a peer gateway may reach: rules of peer
/// identity patterns (`*` suffix) and service patterns (`name.ns`,
/// `*.ns` for a namespace, `*` for all). No rules: every service.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportRule {
    pub peers: Vec<String>,
    pub services: Vec<String>,
}

/// Whether `service` is exported to `peer` under `rules` (pure).
pub fn exported(rules: &[ExportRule], service: &str, peer: &str) -> bool {
    let service_matches = |pattern: &str| match pattern.strip_prefix("*.") {
        _ if pattern == "*" => true,
        Some(ns) => service.rsplit_once('.').is_some_and(|(_, n)| n == ns),
        None => pattern == service,
    };
    rules.is_empty()
        || rules.iter().any(|r| {
            r.peers
                .iter()
                .any(|p| crate::authz::Pattern::new(p).matches(peer))
                && r.services.iter().any(|s| service_matches(s))
        })
}

/// Whether `peer` may reach `service` through this gateway (pure): a
/// linked cluster's gateway the control plane named (`east_west.peers`)
/// reaches what the control plane says is exported, and what the static
/// rules grant it when there are any; other peers what the static rules
/// grant.
pub fn may_reach(
    rules: &[ExportRule],
    control_plane: Option<&isthmus_api::model::EastWest>,
    service: &str,
    peer: &str,
) -> bool {
    let linked = control_plane.filter(|ew| ew.peers.iter().any(|p| p.identity == peer));
    match linked {
        Some(ew) => {
            ew.exports.iter().any(|s| s == service)
                || (!rules.is_empty() && exported(rules, service, peer))
        }
        None => exported(rules, service, peer),
    }
}

/// Parses a CONNECT authority `<service>.<namespace>:<port>` (pure).
pub fn parse_authority(authority: Option<&str>) -> Result<(String, u16), ConnectRefusal> {
    let a = authority.ok_or(ConnectRefusal::NoAuthority)?;
    let bad = || ConnectRefusal::BadAuthority(a.to_string());
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let port = parse_port(port).ok_or_else(bad)?;
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
            "catalog.shop:+80",
            "catalog.shop:080",
            "catalog.shop: 80",
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
        // The target port a peer's 200 says: one spelling (a fuzz finding:
        // `02` was read as 2).
        let said = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(TARGET_PORT_HEADER, http::HeaderValue::from_str(v).unwrap());
            target_port(&h)
        };
        assert_eq!(said("8080"), Some(8080));
        for bad in ["02", "+2", "0", "", "65536", " 80", "8o"] {
            assert_eq!(said(bad), None, "{bad:?}");
        }
        assert_eq!(
            ConnectRefusal::NoService("x.y".into()).status(),
            http::StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn linked_peers_reach_what_the_control_plane_exports() {
        let us = "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
        let other = "spiffe://ap-south.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
        let ew = isthmus_api::model::EastWest {
            peers: vec![isthmus_api::model::PeerGateway {
                cluster: "us-east".into(),
                identity: us.into(),
                ..Default::default()
            }],
            exports: vec!["catalog.shop".into()],
        };
        // A linked peer: only the exports (no static rules means no
        // blanket grant for it).
        assert!(may_reach(&[], Some(&ew), "catalog.shop", us));
        assert!(!may_reach(&[], Some(&ew), "cart.shop", us));
        // Static rules add to it.
        let rules = vec![ExportRule {
            peers: vec![us.into()],
            services: vec!["cart.shop".into()],
        }];
        assert!(may_reach(&rules, Some(&ew), "cart.shop", us));
        assert!(!may_reach(&rules, Some(&ew), "ledger.shop", us));
        // A statically allowed peer the control plane does not name: the
        // static rules, as before (none: everything).
        assert!(may_reach(&[], Some(&ew), "cart.shop", other));
        assert!(!may_reach(&rules, Some(&ew), "cart.shop", other));
        assert!(may_reach(&[], None, "cart.shop", us));
    }

    #[test]
    fn export_rules_name_peers_and_services() {
        let us = "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
        let ap = "spiffe://ap-south.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
        assert!(exported(&[], "catalog.shop", us), "no rules: all");
        let rules = vec![
            ExportRule {
                peers: vec!["spiffe://us-east.isthmus.local/*".into()],
                services: vec!["catalog.shop".into(), "*.payments".into()],
            },
            ExportRule {
                peers: vec![ap.into()],
                services: vec!["*".into()],
            },
        ];
        assert!(exported(&rules, "catalog.shop", us));
        assert!(exported(&rules, "ledger.payments", us));
        assert!(!exported(&rules, "cart.shop", us));
        assert!(!exported(&rules, "payments.shop", us));
        assert!(exported(&rules, "cart.shop", ap));
        assert!(!exported(
            &rules,
            "catalog.shop",
            "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest"
        ));
        let refusal = ConnectRefusal::NotExported {
            service: "cart.shop".into(),
            peer: us.into(),
        };
        assert_eq!(refusal.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn source_headers_round_trip_and_skip_bad_values() {
        let s = Source {
            cluster: Some("us-east".into()),
            identity: Some("spiffe://us-east.isthmus.local/ns/shop/sa/frontend".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let mut h = http::HeaderMap::new();
        s.write(&mut h);
        assert_eq!(Source::read(&h), s);
        let mut h = http::HeaderMap::new();
        Source {
            cluster: Some("bad\nvalue".into()),
            ..Default::default()
        }
        .write(&mut h);
        assert!(h.is_empty());
    }
}
