//! ClusterLink → what this cluster's east-west gateway links to (its
//! `eastWest.peers`, the `eastwest/peers` resource) and the trust bundles
//! of the linked clusters' domains (SPIFFE federation: a sidecar here then
//! verifies a caller from a linked cluster, and authorization names its
//! principals with their cluster).
//!
//! A link the gateway could not use (an address that is not `ip:port`, no
//! trust domain, a bundle without a certificate, a second link to the same
//! peer) is left out with a `Problem` on it; the other links are kept.

use isthmus_api::model;
use std::collections::BTreeMap;

use super::Problem;
use crate::resources::ClusterLink;
use crate::store::{Resource, Snapshot};

/// Where the peer's east-west gateway runs, and as whom: its SPIFFE ID is
/// `spiffe://<trustDomain>/ns/isthmus-system/sa/isthmus-eastwest`.
pub const GATEWAY_NAMESPACE: &str = "isthmus-system";
pub const GATEWAY_SERVICE_ACCOUNT: &str = "isthmus-eastwest";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    /// The peer gateways, by peer name.
    pub east_west: model::EastWest,
    /// The linked clusters' trust bundles.
    pub trust: Vec<model::TrustBundle>,
}

/// The SPIFFE ID of the east-west gateway of trust domain `td`.
pub fn gateway_identity(td: &str) -> String {
    format!("spiffe://{td}/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT}")
}

/// The federation channel's service, for our gateway to route linked
/// clusters' control planes to (`isthmus-federation.<ns>:15012`): the
/// control plane at `addr`, unless the store has a Service of that name
/// (`kube` mode: the Deployment's Service).
pub fn federation_service(
    catalog: &mut super::services::Catalog,
    namespace: &str,
    addr: std::net::SocketAddr,
) {
    let name = super::services::service_name(crate::sync::SERVICE, namespace);
    catalog
        .services
        .entry(name.clone())
        .or_insert_with(|| model::Service {
            name,
            ports: vec![model::ServicePort {
                port: u32::from(crate::sync::SYNC_PORT),
                protocol: model::Protocol::Tcp as i32,
                target_port: u32::from(addr.port()),
                name: "federation".into(),
            }],
            endpoints: vec![model::Endpoint {
                address: addr.ip().to_string(),
                ..Default::default()
            }],
            ..Default::default()
        });
    catalog.exported.insert(super::services::service_name(
        crate::sync::SERVICE,
        namespace,
    ));
}

/// Whether a proxy is an east-west gateway (it gets the peers).
pub fn is_gateway(node: &model::Node) -> bool {
    node.service_account == GATEWAY_SERVICE_ACCOUNT
}

/// ClusterLink gateway names (`host:port`) → the address they resolved
/// to, or why not (`server::resolver` keeps it fresh).
pub type Resolved = BTreeMap<String, Result<std::net::SocketAddr, String>>;

/// Whether `v` is `host:port` with a DNS name for a host (not an address).
pub fn is_name(v: &str) -> bool {
    if v.parse::<std::net::SocketAddr>().is_ok() {
        return false;
    }
    let Some((host, port)) = v.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0)
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The gateway names every ClusterLink of `snap` gives (to resolve).
pub fn names(snap: &Snapshot) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (_, r) in snap.of_kind("ClusterLink") {
        if let Resource::ClusterLink(l) = r {
            for v in std::iter::once(&l.spec.gateway.quic).chain(&l.spec.gateway.tcp) {
                if is_name(v) {
                    out.insert(v.clone());
                }
            }
        }
    }
    out
}

pub fn translate(
    snap: &Snapshot,
    resolved: Option<&Resolved>,
    problems: &mut Vec<Problem>,
) -> Links {
    let mut links = Links::default();
    for (key, r) in snap.of_kind("ClusterLink") {
        let Resource::ClusterLink(link) = r else {
            continue;
        };
        let mut problem = |reason: &'static str, message: String| {
            problems.push(Problem {
                kind: "ClusterLink",
                key: key.clone(),
                reason,
                message,
            })
        };
        match peer(link, resolved) {
            Err((reason, message)) => problem(reason, message),
            Ok(_)
                if links
                    .east_west
                    .peers
                    .iter()
                    .any(|p| p.cluster == link.spec.peer) =>
            {
                problem(
                    "Conflict",
                    format!(
                        "another ClusterLink already links to {}; this one is ignored (one link per peer)",
                        link.spec.peer
                    ),
                )
            }
            Ok((gateway, bundle)) => {
                links.east_west.peers.push(gateway);
                links.trust.push(bundle);
            }
        }
    }
    links
}

type Refusal = (&'static str, String);

/// One link as the gateway's peer and the trust of its domain.
fn peer(
    link: &ClusterLink,
    resolved: Option<&Resolved>,
) -> Result<(model::PeerGateway, model::TrustBundle), Refusal> {
    let s = &link.spec;
    let addr = |field: &str, v: &str| {
        if let Ok(a) = v.parse::<std::net::SocketAddr>() {
            return Ok(a.to_string());
        }
        if !is_name(v) {
            return Err((
                "InvalidGatewayAddress",
                format!(
                    "gateway.{field} {v:?} is neither ip:port nor host:port: give the address or DNS name of the peer's east-west gateway service (its LoadBalancer)"
                ),
            ));
        }
        match resolved.and_then(|r| r.get(v)) {
            Some(Ok(a)) => Ok(a.to_string()),
            Some(Err(why)) => Err((
                "GatewayUnresolved",
                format!("gateway.{field} {v}: {why} (it is looked up again every 30 s)"),
            )),
            None => Err((
                "GatewayUnresolved",
                format!("gateway.{field} {v}: not resolved yet"),
            )),
        }
    };
    let udp = addr("quic", &s.gateway.quic)?;
    let tcp = match &s.gateway.tcp {
        Some(t) => addr("tcp", t)?,
        None => udp.clone(),
    };
    let td = s.trust_domain.trim();
    if !isthmus_api::validate::is_trust_domain(td) {
        return Err((
            "InvalidTrustDomain",
            format!(
                "trustDomain {:?} is not a SPIFFE trust domain (lowercase letters, digits, '-', '.', '_')",
                s.trust_domain
            ),
        ));
    }
    // Proxies would refuse the whole mesh security resource over a bad
    // bundle: check it here, on the link.
    if let Err(why) = check_bundle(&s.trust_bundle) {
        return Err((
            "InvalidTrustBundle",
            format!(
                "trustBundle: {why}; give the peer's CA bundle (isthmusctl link create writes it)"
            ),
        ));
    }
    Ok((
        model::PeerGateway {
            cluster: s.peer.clone(),
            udp,
            tcp,
            identity: gateway_identity(td),
        },
        model::TrustBundle {
            trust_domain: td.to_string(),
            roots_pem: s.trust_bundle.clone(),
            cluster: s.peer.clone(),
        },
    ))
}

/// Puts each linked cluster's bundle as it sent it over the federation
/// channel (`synced`, by cluster) in place of its ClusterLink's, when it
/// is a valid bundle; the ClusterLink's is the trust the link starts from.
pub fn use_synced(trust: &mut [model::TrustBundle], synced: &BTreeMap<String, String>) {
    for t in trust {
        if let Some(pem) = synced.get(&t.cluster)
            && check_bundle(pem).is_ok()
        {
            t.roots_pem = pem.clone();
        }
    }
}

/// SHA-256 fingerprints (hex) of the certificates of a PEM bundle.
pub fn fingerprints(pem: &str) -> Vec<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

/// PEM certificates, at least one, each a parsable X.509 certificate.
pub fn check_bundle(pem: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0;
    for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("not PEM certificates ({e})"))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate {} does not parse ({e})", n + 1))?;
        n += 1;
    }
    if n == 0 {
        return Err("no PEM certificate in it".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::{merge, parse_file};

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn link(
        name: &str,
        peer: &str,
        quic: &str,
        tcp: Option<&str>,
        td: &str,
        bundle: &str,
    ) -> String {
        let tcp = tcp
            .map(|t| format!("\n    tcp: \"{t}\""))
            .unwrap_or_default();
        let bundle = bundle.replace('\n', "\\n");
        format!(
            "apiVersion: isthmus.dev/v1alpha1\nkind: ClusterLink\nmetadata: {{name: {name}}}\nspec:\n  peer: {peer}\n  region: us-east1\n  gateway:\n    quic: \"{quic}\"{tcp}\n  trustDomain: \"{td}\"\n  trustBundle: \"{bundle}\"\n  credentialsSecretRef: {{name: link-{peer}}}\n---\n"
        )
    }

    fn translated(yaml: &str) -> (Links, Vec<Problem>) {
        translated_with(yaml, None)
    }

    fn translated_with(yaml: &str, resolved: Option<&Resolved>) -> (Links, Vec<Problem>) {
        let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let mut problems = Vec::new();
        (translate(&snap, resolved, &mut problems), problems)
    }

    #[test]
    fn a_gateway_named_by_host_goes_to_the_address_it_resolved_to() {
        let pem = ca_pem();
        let yaml = link(
            "us-east",
            "us-east",
            "gw-1234.elb.example.com:15443",
            Some("10.0.2.9:15443"),
            "us-east.isthmus.local",
            &pem,
        );
        let (loaded, _) = parse_file(std::path::Path::new("t.yaml"), &yaml);
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        assert_eq!(
            names(&snap).into_iter().collect::<Vec<_>>(),
            ["gw-1234.elb.example.com:15443"]
        );
        // Not looked up yet, or not resolving: a named condition, no peer.
        for resolved in [
            None,
            Some(Resolved::from([(
                "gw-1234.elb.example.com:15443".to_string(),
                Err("does not resolve (NXDOMAIN)".to_string()),
            )])),
        ] {
            let (links, problems) = translated_with(&yaml, resolved.as_ref());
            assert!(links.east_west.peers.is_empty());
            assert_eq!(problems[0].reason, "GatewayUnresolved");
            assert!(
                problems[0]
                    .message
                    .contains("gw-1234.elb.example.com:15443")
            );
        }
        let resolved = Resolved::from([(
            "gw-1234.elb.example.com:15443".to_string(),
            Ok("203.0.113.7:15443".parse().unwrap()),
        )]);
        let (links, problems) = translated_with(&yaml, Some(&resolved));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(links.east_west.peers[0].udp, "203.0.113.7:15443");
        assert_eq!(links.east_west.peers[0].tcp, "10.0.2.9:15443");
    }

    #[test]
    fn gateway_names_are_host_and_port() {
        for ok in ["gw.example.com:15443", "a-b.c:1", "localhost:15443"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in [
            "10.0.0.1:15443",
            "[::1]:15443",
            "gw.example.com",
            "gw.example.com:0",
            "gw.example.com:http",
            "-gw.example.com:1",
            "gw..example.com:1",
            "gw_x.example.com:1",
            ":15443",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_link_is_a_peer_gateway_and_a_trusted_domain() {
        let pem = ca_pem();
        let (links, problems) = translated(&link(
            "us-east",
            "us-east",
            "10.0.2.1:15443",
            None,
            "us-east.isthmus.local",
            &pem,
        ));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            links.east_west.peers,
            vec![model::PeerGateway {
                cluster: "us-east".into(),
                udp: "10.0.2.1:15443".into(),
                tcp: "10.0.2.1:15443".into(),
                identity: "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest"
                    .into(),
            }]
        );
        assert_eq!(links.trust.len(), 1);
        assert_eq!(links.trust[0].trust_domain, "us-east.isthmus.local");
        assert_eq!(links.trust[0].cluster, "us-east");
        assert_eq!(links.trust[0].roots_pem, pem);
    }

    #[test]
    fn unusable_links_are_left_out_with_a_reason_and_the_rest_kept() {
        let pem = &ca_pem();
        let junk = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let yaml = [
            link("a", "a", "gw.example.com", None, "a.local", pem),
            link("b", "b", "10.0.0.2:15443", Some("nope"), "b.local", pem),
            link("c", "c", "10.0.0.3:15443", None, "C Domain", pem),
            link("d", "d", "10.0.0.4:15443", None, "d.local", "not a pem"),
            link("d2", "d2", "10.0.0.4:15443", None, "d2.local", junk),
            link(
                "e",
                "e",
                "10.0.0.5:15443",
                Some("10.0.0.5:443"),
                "e.local",
                pem,
            ),
            link("e-again", "e", "10.0.0.6:15443", None, "e.local", pem),
        ]
        .concat();
        let (links, problems) = translated(&yaml);
        let reasons: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.key.name.as_str(), p.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("a", "InvalidGatewayAddress"),
                ("b", "InvalidGatewayAddress"),
                ("c", "InvalidTrustDomain"),
                ("d", "InvalidTrustBundle"),
                ("d2", "InvalidTrustBundle"),
                ("e-again", "Conflict"),
            ]
        );
        assert!(
            problems[0].message.contains("gw.example.com"),
            "{}",
            problems[0].message
        );
        let peers: Vec<(&str, &str)> = links
            .east_west
            .peers
            .iter()
            .map(|p| (p.cluster.as_str(), p.tcp.as_str()))
            .collect();
        assert_eq!(peers, [("e", "10.0.0.5:443")]);
        assert_eq!(links.trust.len(), 1);
    }

    #[test]
    fn only_the_east_west_gateway_is_a_gateway() {
        let mut node = model::Node {
            service_account: GATEWAY_SERVICE_ACCOUNT.into(),
            ..Default::default()
        };
        assert!(is_gateway(&node));
        node.service_account = "frontend".into();
        assert!(!is_gateway(&node));
    }

    #[test]
    fn a_peers_synced_bundle_replaces_its_links_when_valid() {
        let (linked, rotated) = (ca_pem(), format!("{}{}", ca_pem(), ca_pem()));
        let bundle = |cluster: &str, pem: &str| model::TrustBundle {
            trust_domain: format!("{cluster}.isthmus.local"),
            roots_pem: pem.into(),
            cluster: cluster.into(),
        };
        let mut trust = vec![bundle("eu-central", &linked), bundle("us-east", &linked)];
        let synced = BTreeMap::from([
            ("eu-central".to_string(), rotated.clone()),
            ("us-east".to_string(), "not a bundle".to_string()),
            ("ap-south".to_string(), rotated.clone()),
        ]);
        use_synced(&mut trust, &synced);
        assert_eq!(
            trust[0].roots_pem, rotated,
            "the peer's own, old and new roots"
        );
        assert_eq!(trust[1].roots_pem, linked, "an invalid one is not used");
        assert_eq!(trust.len(), 2, "no trust for a cluster without a link");
        assert_eq!(fingerprints(&rotated).len(), 2);
        assert_eq!(fingerprints(&linked)[0].len(), 64);
    }
}
