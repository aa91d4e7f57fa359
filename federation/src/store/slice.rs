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
    /// Endpoints with a `hostname` (StatefulSet pods behind a headless
    /// Service: their per-pod clusterset names), by index into
    /// `endpoints`; kept aside so the common endpoint stays small.
    pub hostnames: Box<[(u32, Box<str>)]>,
}

impl Slice {
    /// An endpoint's hostname.
    pub fn hostname(&self, index: usize) -> Option<&str> {
        self.hostnames
            .iter()
            .find(|(i, _)| *i as usize == index)
            .map(|(_, h)| &**h)
    }
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
        let mut endpoints = Vec::new();
        let mut hostnames = Vec::new();
        // The first address is the endpoint's (the API allows one per
        // endpoint for IP slices); one that is not an IP is not an
        // address we can proxy to.
        for e in s.endpoints.iter() {
            let Some(address) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            if let Some(h) = e.hostname.as_deref() {
                hostnames.push((endpoints.len() as u32, Box::from(h)));
            }
            let c = e.conditions.clone().unwrap_or_default();
            endpoints.push(SliceEndpoint {
                address,
                zone: e.zone.as_deref().map(&mut zone),
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(false),
                terminating: c.terminating.unwrap_or(false),
            });
        }
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
            endpoints: endpoints.into(),
            hostnames: hostnames.into(),
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
  - {addresses: [not-an-ip], zone: b, hostname: skipped}
  - {addresses: [], zone: b}
  - {addresses: ["fd00::1"], hostname: pod-2}
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
        // Hostnames aside, by index among the kept endpoints.
        assert_eq!(s.hostname(2), Some("pod-2"));
        assert_eq!(s.hostname(0), None);
        assert_eq!(s.hostnames.len(), 1);
        assert!(
            std::mem::size_of::<SliceEndpoint>() <= 40,
            "{}",
            std::mem::size_of::<SliceEndpoint>()
        );
    }
}
