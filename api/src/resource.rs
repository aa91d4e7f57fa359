//! Resources on the discovery stream: how a piece of configuration is
//! named, encoded and versioned, so the control plane and the proxies agree.
//! A resource's name says its type (`service/<name>.<namespace>`,
//! `security/mesh`, `security/ns/<namespace>`); its
//! version is a hash of its encoding (prost with ordered maps is
//! deterministic), so every replica gives the same content the same
//! version and a proxy that reconnects elsewhere resyncs only what differs.

use bytes::Bytes;
use prost::Message;

use crate::discovery::v1::Resource;
use crate::model;

/// Prefix of resources carrying an `isthmus.config.v1.Service`.
pub const SERVICE: &str = "service/";

/// Prefix of resources carrying an `isthmus.config.v1.Security`: the
/// mesh-wide part (`security/mesh`: trust bundles, default mTLS mode) and
/// each namespace's policies (`security/ns/<namespace>`).
pub const SECURITY: &str = "security/";

/// The resource carrying an `isthmus.config.v1.EastWest` (an east-west
/// gateway's peers).
pub const EAST_WEST: &str = "eastwest/peers";

/// Encodes an east-west section.
pub fn east_west(e: &model::EastWest) -> Resource {
    let body = Bytes::from(e.encode_to_vec());
    Resource {
        name: EAST_WEST.into(),
        version: version_of(&body),
        body,
    }
}

/// The mesh-wide security resource's name.
pub const SECURITY_MESH: &str = "security/mesh";

/// The name of a namespace's security resource.
pub fn security_ns_name(namespace: &str) -> String {
    format!("{SECURITY}ns/{namespace}")
}

/// Encodes a security section under `name` (`SECURITY_MESH` or
/// `security_ns_name`).
pub fn security(name: String, s: &model::Security) -> Resource {
    let body = Bytes::from(s.encode_to_vec());
    Resource {
        name,
        version: version_of(&body),
        body,
    }
}

/// The resource name of a service.
pub fn service_name(service: &str) -> String {
    format!("{SERVICE}{service}")
}

/// Encodes a service as a resource.
pub fn service(s: &model::Service) -> Resource {
    let body = Bytes::from(s.encode_to_vec());
    Resource {
        name: service_name(&s.name),
        version: version_of(&body),
        body,
    }
}

/// The version of an encoded body: FNV-1a 64 in hex. Stable across builds
/// and machines (unlike std's hasher), cheap (one pass over the bytes).
pub fn version_of(body: &[u8]) -> String {
    format!("{:016x}", fnv1a(body))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A resource the proxy understands.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Service(Box<model::Service>),
    Security(model::Security),
    EastWest(model::EastWest),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error(
        "resource {0:?} is of a type this proxy does not know (is the control plane newer than the proxy?)"
    )]
    UnknownType(String),
    #[error("resource {name:?} does not decode: {reason}")]
    Decode { name: String, reason: String },
    #[error("resource {name:?} carries a service named {inner:?}: name and content disagree")]
    NameMismatch { name: String, inner: String },
}

/// Decodes a resource by the type its name says.
pub fn decode(r: &Resource) -> Result<Decoded, ResourceError> {
    if r.name == EAST_WEST {
        return model::EastWest::decode(r.body.clone())
            .map(Decoded::EastWest)
            .map_err(|e| ResourceError::Decode {
                name: r.name.clone(),
                reason: e.to_string(),
            });
    }
    if r.name == SECURITY_MESH || r.name.starts_with(&security_ns_name("")) {
        return model::Security::decode(r.body.clone())
            .map(Decoded::Security)
            .map_err(|e| ResourceError::Decode {
                name: r.name.clone(),
                reason: e.to_string(),
            });
    }
    let Some(svc) = r.name.strip_prefix(SERVICE) else {
        return Err(ResourceError::UnknownType(r.name.clone()));
    };
    let s = model::Service::decode(r.body.clone()).map_err(|e| ResourceError::Decode {
        name: r.name.clone(),
        reason: e.to_string(),
    })?;
    if s.name != svc {
        return Err(ResourceError::NameMismatch {
            name: r.name.clone(),
            inner: s.name,
        });
    }
    Ok(Decoded::Service(Box::new(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, labels: &[(&str, &str)]) -> model::Service {
        model::Service {
            name: name.into(),
            endpoints: vec![model::Endpoint {
                address: "10.0.0.1".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn versions_follow_content_not_insertion_order() {
        let a = service(&svc("catalog.shop", &[("a", "1"), ("b", "2"), ("c", "3")]));
        let b = service(&svc("catalog.shop", &[("c", "3"), ("b", "2"), ("a", "1")]));
        assert_eq!(a.version, b.version, "maps are ordered: same bytes");
        let c = service(&svc("catalog.shop", &[("a", "1"), ("b", "2"), ("c", "4")]));
        assert_ne!(a.version, c.version);
        assert_eq!(a.name, "service/catalog.shop");
        // Known FNV-1a test vector, so the version never silently changes.
        assert_eq!(version_of(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn decode_round_trips_and_names_what_is_wrong() {
        let s = svc("catalog.shop", &[("app", "catalog")]);
        assert_eq!(
            decode(&service(&s)),
            Ok(Decoded::Service(Box::new(s.clone())))
        );
        let mut r = service(&s);
        r.name = "listener/x".into();
        assert!(matches!(decode(&r), Err(ResourceError::UnknownType(_))));
        let mut r = service(&s);
        r.name = "service/other.shop".into();
        assert!(matches!(
            decode(&r),
            Err(ResourceError::NameMismatch { .. })
        ));
        let mut r = service(&s);
        r.body = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let e = decode(&r).unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
        let ew = model::EastWest {
            peers: vec![model::PeerGateway {
                cluster: "us-east".into(),
                udp: "10.0.2.1:15443".into(),
                tcp: "10.0.2.1:15443".into(),
                identity: "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest"
                    .into(),
            }],
            exports: vec!["catalog.shop".into()],
        };
        let r = east_west(&ew);
        assert_eq!(r.name, EAST_WEST);
        assert_eq!(decode(&r), Ok(Decoded::EastWest(ew)));
    }
}
