//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`,
//! the form Istio and Linkerd use. Parsing is strict (SPIFFE ID spec: a
//! lowercase trust domain of letters, digits, `.`, `-`, `_`; path segments
//! of letters, digits, `.`, `-`, `_`, none empty, `.` or `..`), so a
//! certificate can only name what this mesh can mean.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

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
    #[error("path segment {0:?} is not valid: use letters, digits, '.', '-' and '_'")]
    Segment(String),
}

fn trust_domain_ok(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl SpiffeId {
    pub fn new(
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
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
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
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.into()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !trust_domain_ok(td) {
            return Err(SpiffeIdError::TrustDomain(td.into()));
        }
        match path.split('/').collect::<Vec<_>>()[..] {
            ["ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(SpiffeIdError::Path(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses_by_name() {
        let id: SpiffeId = "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            SpiffeId::new("eu-west.isthmus.local", "shop", "catalog").unwrap()
        );
        assert_eq!(
            id.to_string(),
            "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
        );
        let bad = [
            ("http://td/ns/a/sa/b", "must start with spiffe://"),
            ("spiffe://TD/ns/a/sa/b", "trust domain"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://td", "/ns/<namespace>"),
            ("spiffe://td/ns/a/sa", "/ns/<namespace>"),
            ("spiffe://td/ns/a/sa/b/c", "/ns/<namespace>"),
            ("spiffe://td/sa/a/ns/b", "/ns/<namespace>"),
            ("spiffe://td/ns//sa/b", "segment"),
            ("spiffe://td/ns/../sa/b", "segment"),
            ("spiffe://td/ns/a b/sa/b", "segment"),
            ("spiffe://td:8080/ns/a/sa/b", "trust domain"),
        ];
        for (s, why) in bad {
            let e = s.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
