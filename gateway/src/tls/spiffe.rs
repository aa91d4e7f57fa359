//! SPIFFE IDs as the data plane reads them from certificates: exactly one
//! `spiffe://` URI SAN (X509-SVID §2), its trust domain, and the Kubernetes
//! namespace and service account of the `/ns/<ns>/sa/<sa>` form.

use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("the certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("the certificate carries no spiffe:// URI SAN: it is not a SPIFFE SVID")]
    NoSpiffeId,
    #[error("the certificate carries {0} spiffe:// URI SANs; an SVID has exactly one")]
    Several(usize),
    #[error("{0:?} is not a SPIFFE ID (spiffe://<trust-domain>/<path>)")]
    Malformed(String),
}

/// A verified peer's (or our own) SPIFFE ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: Arc<str>,
    /// Length of `spiffe://<trust domain>`.
    domain_end: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        let bad = || SpiffeError::Malformed(s.to_string());
        let rest = s.strip_prefix(SCHEME).ok_or_else(bad)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_len];
        let path = &rest[td_len..];
        if !isthmus_api::validate::is_trust_domain(td)
            || path.ends_with('/')
            || path.contains("//")
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        {
            return Err(bad());
        }
        Ok(Self {
            id: s.into(),
            domain_end: SCHEME.len() + td_len,
        })
    }

    /// Reads the one SPIFFE ID of a DER certificate.
    pub fn from_cert(der: &[u8]) -> Result<Self, SpiffeError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SpiffeError::Certificate(e.to_string()))?
            .ok_or(SpiffeError::NoSpiffeId)?;
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
            [] => Err(SpiffeError::NoSpiffeId),
            [one] => Self::parse(one),
            many => Err(SpiffeError::Several(many.len())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.domain_end]
    }

    fn segment(&self, key: &str) -> Option<&str> {
        let path = &self.id[self.domain_end..];
        let mut parts = path.split('/').skip(1);
        while let Some(k) = parts.next() {
            let v = parts.next()?;
            if k == key {
                return Some(v);
            }
        }
        None
    }

    /// The namespace of a `/ns/<ns>/sa/<sa>` ID.
    pub fn namespace(&self) -> Option<&str> {
        self.segment("ns")
    }

    pub fn service_account(&self) -> Option<&str> {
        self.segment("sa")
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
        let bare = SpiffeId::parse("spiffe://td").unwrap();
        assert_eq!(bare.trust_domain(), "td");
        assert_eq!(bare.namespace(), None);
    }

    #[test]
    fn refuses_malformed_ids() {
        for bad in [
            "http://td/ns/a",
            "spiffe://",
            "spiffe://TD/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
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
            Err(SpiffeError::NoSpiffeId)
        );
    }
}
