//! EndpointSlices as the control plane keeps them. The Kubernetes type
//! spends ~350 bytes inline per endpoint (target references, hints,
//! topology maps, all optional) before any of its strings; a store of
//! 100 000 endpoints would hold tens of megabytes of empty options. Both
//! stores convert each slice on arrival to this form: what translation
//! reads (address, zone, conditions, port names), ~40 bytes an endpoint,
//! zones shared within a slice.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label EndpointSlices carry naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<String>,
    /// `addressType` IPv4 or IPv6 (FQDN slices are not proxied).
    pub ip: bool,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// "" when unnamed.
    pub name: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: IpAddr,
    pub zone: Option<Arc<str>>,
    /// `conditions.ready`; unset means ready.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hostname` (a StatefulSet pod's name, behind a headless Service):
    /// its per-pod clusterset name when exported.
    pub hostname: Option<Box<str>>,
}

impl From<&EndpointSlice> for Slice {
    fn from(s: &EndpointSlice) -> Self {
        let mut zones: Vec<Arc<str>> = Vec::new();
        let mut zone = |z: &str| -> Arc<str> {
            match zones.iter().find(|x| &***x == z) {
                Some(x) => x.clone(),
                None => {
                    let x: Arc<str> = Arc::from(z);
                    zones.push(x.clone());
                    x
                }
            }
        };
        Slice {
            service: s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            ip: matches!(s.address_type.as_str(), "IPv4" | "IPv6"),
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port.and_then(|p| u16::try_from(p).ok()),
                })
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                // The first address is the endpoint's (the API allows one
                // per endpoint for IP slices); one that is not an IP is
                // not an address we can proxy to.
                .filter_map(|e| {
                    let address = e.addresses.first()?.parse().ok()?;
                    let c = e.conditions.clone().unwrap_or_default();
                    Some(SliceEndpoint {
                        address,
                        zone: e.zone.as_deref().map(&mut zone),
                        ready: c.ready.unwrap_or(true),
                        serving: c.serving.unwrap_or(false),
                        terminating: c.terminating.unwrap_or(false),
                        hostname: e.hostname.as_deref().map(Box::from),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_what_translation_reads_and_shares_zones() {
        let k: EndpointSlice = serde_saphyr::from_str(
            r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: catalog}}
addressType: IPv4
ports: [{name: http, port: 8080}, {port: 70000}]
endpoints:
  - {addresses: [10.0.0.1], zone: a}
  - {addresses: [10.0.0.2], zone: a, conditions: {ready: false, serving: true, terminating: true}}
  - {addresses: [not-an-ip], zone: b}
  - {addresses: [], zone: b}
  - {addresses: ["fd00::1"]}
"#,
        )
        .unwrap();
        let s = Slice::from(&k);
        assert_eq!(s.service.as_deref(), Some("catalog"));
        assert!(s.ip);
        assert_eq!(
            &*s.ports,
            [
                SlicePort {
                    name: "http".into(),
                    port: Some(8080)
                },
                SlicePort {
                    name: String::new(),
                    port: None
                }
            ]
        );
        let addrs: Vec<String> = s.endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "fd00::1"]);
        assert!(s.endpoints[0].ready && !s.endpoints[1].ready);
        assert!(s.endpoints[1].serving && s.endpoints[1].terminating);
        let (z0, z1) = (
            s.endpoints[0].zone.as_ref().unwrap(),
            s.endpoints[1].zone.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(z0, z1), "one zone string per slice");
        assert_eq!(s.endpoints[2].zone, None);
        assert!(
            std::mem::size_of::<SliceEndpoint>() <= 40,
            "{}",
            std::mem::size_of::<SliceEndpoint>()
        );
    }
}
