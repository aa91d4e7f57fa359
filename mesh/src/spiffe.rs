//! SPIFFE IDs, one type for the whole mesh: the control plane signs them,
//! the data plane reads them from certificates, both with the same rules.
//!
//! Rules (SPIFFE ID spec §2): `spiffe://<trust-domain>[/<segment>...]`; a
//! trust domain of lowercase letters, digits, `.`, `-`, `_` (at most 255
//! bytes, no port, no userinfo); path segments of letters, digits, `.`,
//! `-`, `_`, none empty, `.` or `..`; no trailing `/`. A *workload* ID is
//! the Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<service-account>`
//! that Istio and Linkerd use; only that form has a namespace and a
//! service account. An X.509 SVID carries exactly one `spiffe://` URI SAN
//! (X509-SVID §2).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error(
        "trust domain {0:?} is not valid: use lowercase letters, digits, '.', '-' and '_' (e.g. eu-west.isthmus.local)"
    )]
    TrustDomain(String),
    #[error("{0:?} is not a workload ID: the path must be /ns/<namespace>/sa/<service-account>")]
    Path(String),
    #[error(
        "path segment {0:?} is not valid: use letters, digits, '.', '-' and '_' (not empty, '.' or '..')"
    )]
    Segment(String),
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate carries no spiffe:// URI SAN: it is not a SPIFFE SVID")]
    NoSpiffeId,
    #[error("the certificate carries {0} spiffe:// URI SANs; an SVID has exactly one")]
    Several(usize),
}

/// A SPIFFE ID: ours, a verified peer's, or one the CA signs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    /// Length of `spiffe://<trust domain>`.
    domain_end: usize,
}

const SCHEME: &str = "spiffe://";

fn trust_domain_ok(td: &str) -> bool {
    isthmus_api::validate::is_trust_domain(td)
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl SpiffeId {
    /// Any SPIFFE ID: a trust domain and zero or more path segments.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::Scheme(s.into()))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_len];
        if !trust_domain_ok(td) {
            return Err(SpiffeIdError::TrustDomain(td.into()));
        }
        let path = &rest[td_len..];
        if !path.is_empty()
            && let Some(bad) = path[1..].split('/').find(|s| !segment_ok(s))
        {
            return Err(SpiffeIdError::Segment(bad.into()));
        }
        Ok(Self {
            id: s.into(),
            domain_end: SCHEME.len() + td_len,
        })
    }

    /// A workload ID (`/ns/<namespace>/sa/<service-account>`), refusing
    /// every other path.
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.workload_parts().is_none() {
            return Err(SpiffeIdError::Path(s.into()));
        }
        Ok(id)
    }

    /// The workload ID of a service account.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if !trust_domain_ok(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(trust_domain.into()));
        }
        for s in [namespace, service_account] {
            if !segment_ok(s) {
                return Err(SpiffeIdError::Segment(s.into()));
            }
        }
        Ok(Self {
            id: format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").into(),
            domain_end: SCHEME.len() + trust_domain.len(),
        })
    }

    /// Checks a trust domain on its own (e.g. a Mesh's).
    pub fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
        if trust_domain_ok(td) {
            Ok(())
        } else {
            Err(SpiffeIdError::TrustDomain(td.into()))
        }
    }

    /// Reads the one SPIFFE ID of a DER certificate.
    pub fn from_cert(der: &[u8]) -> Result<Self, SpiffeIdError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SpiffeIdError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeIdError::Certificate(e.to_string()))?
            .ok_or(SpiffeIdError::NoSpiffeId)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with(SCHEME) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(SpiffeIdError::NoSpiffeId),
            [one] => Self::parse(one),
            many => Err(SpiffeIdError::Several(many.len())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.domain_end]
    }

    /// The namespace and service account of a workload ID.
    fn workload_parts(&self) -> Option<(&str, &str)> {
        match self.id[self.domain_end..].split('/').collect::<Vec<_>>()[..] {
            ["", "ns", ns, "sa", sa] => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of a workload ID.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The service account of a workload ID.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_ids() {
        let id = SpiffeId::parse("spiffe://eu-west.isthmus.local/ns/shop/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), "eu-west.isthmus.local");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("frontend"));
        assert_eq!(
            id,
            SpiffeId::workload("eu-west.isthmus.local", "shop", "frontend").unwrap()
        );
        assert_eq!(
            id.to_string(),
            "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"
        );
        let bare = SpiffeId::parse("spiffe://td").unwrap();
        assert_eq!(bare.trust_domain(), "td");
        assert_eq!(bare.namespace(), None);
        let other = SpiffeId::parse("spiffe://td/isthmus/federation").unwrap();
        assert_eq!(other.namespace(), None);
        assert!(SpiffeId::parse_workload(other.as_str()).is_err());
    }

    #[test]
    fn refuses_malformed_ids_by_name() {
        let bad = [
            ("http://td/ns/a/sa/b", "must start with spiffe://"),
            ("spiffe://", "trust domain"),
            ("spiffe://TD/ns/a/sa/b", "trust domain"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://td:8080/ns/a/sa/b", "trust domain"),
            ("spiffe://td/", "segment"),
            ("spiffe://td//x", "segment"),
            ("spiffe://td/ns//sa/b", "segment"),
            ("spiffe://td/ns/../sa/b", "segment"),
            ("spiffe://td/ns/./sa/b", "segment"),
            ("spiffe://td/ns/a b/sa/b", "segment"),
        ];
        for (s, why) in bad {
            let e = SpiffeId::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        let workload_bad = [
            "spiffe://td",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/sa/a/ns/b",
        ];
        for s in workload_bad {
            let e = SpiffeId::parse_workload(s).unwrap_err().to_string();
            assert!(e.contains("/ns/<namespace>"), "{s}: {e}");
        }
        assert!(SpiffeId::workload("td", "..", "b").is_err());
        assert!(SpiffeId::workload("TD", "a", "b").is_err());
    }

    #[test]
    fn reads_the_uri_san_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://td/ns/a/sa/b".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let id = SpiffeId::from_cert(cert.der()).unwrap();
        assert_eq!(id.as_str(), "spiffe://td/ns/a/sa/b");

        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("https://x.example".try_into().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            SpiffeId::from_cert(cert.der()),
            Err(SpiffeIdError::NoSpiffeId)
        );
    }
}
