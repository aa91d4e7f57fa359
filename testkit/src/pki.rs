//! Test PKI: CAs per trust domain issuing SPIFFE certificates, with any
//! validity window (expired ones included) and any SPIFFE ID (including
//! ones naming another CA's trust domain).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_mesh::identity::Credentials;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Ca {
    pub trust_domain: String,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(86400)).into();
        let cert = params.self_signed(&key).unwrap();
        Self {
            trust_domain: trust_domain.into(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// `spiffe://<domain>/ns/<ns>/sa/<sa>` valid from an hour ago for a day.
    pub fn issue(&self, ns: &str, sa: &str) -> Credentials {
        let id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        let now = SystemTime::now();
        self.issue_raw(
            &id,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86400),
        )
    }

    /// Any ID, any validity window. The credentials trust this CA.
    pub fn issue_raw(
        &self,
        id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Credentials {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Credentials {
            spiffe_id: id.into(),
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
            trust_bundles: BTreeMap::from([(self.trust_domain.clone(), self.pem.clone())]),
        }
    }

    /// Writes `creds` as cert, key and roots files in `dir` (as a SPIRE
    /// agent would) and returns their paths.
    pub fn write_files(
        &self,
        creds: &Credentials,
        dir: &std::path::Path,
        name: &str,
    ) -> [std::path::PathBuf; 3] {
        let paths = [
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
            dir.join(format!("{name}-roots.pem")),
        ];
        std::fs::write(&paths[0], &creds.cert_pem).unwrap();
        std::fs::write(&paths[1], &creds.key_pem).unwrap();
        std::fs::write(&paths[2], &self.pem).unwrap();
        paths
    }
}
