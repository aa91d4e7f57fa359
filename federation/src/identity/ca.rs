//! The cluster's CA. On first start it generates a root (ECDSA P-256, ten
//! years, URI SAN `spiffe://<trust-domain>`) and keeps it in the store
//! directory (`ca/root-cert.pem`, `ca/root-key.pem`, mode 0600); later
//! starts load it. An operator can plug in their own root or intermediate
//! (cert, key and, for an intermediate, the root bundle). It signs CSRs:
//! the CSR's signature must verify (proof of possession), everything it
//! asks for except its public key is ignored, and the certificate names
//! exactly the identity the caller authenticated, for a bounded lifetime.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::SpiffeId;

/// Shortest and longest SVID lifetimes accepted.
pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start a little in the past: clocks across a cluster differ.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read or write the CA at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CA at {path} is not usable: {reason} (fix or remove it; a new root means every workload gets new certificates)"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "the CA at {path} is for trust domain {found:?}, but the mesh's is {wanted:?}: change the Mesh back, or move the old CA away to start a new trust domain"
    )]
    TrustDomain {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("the CSR is not valid: {0} (it must be PEM, signed by the key it carries)")]
    Csr(String),
    #[error("a lifetime of {0:?} is outside {MIN_TTL:?}..={MAX_TTL:?}")]
    Ttl(Duration),
    #[error("identity {id} is not in this CA's trust domain {trust_domain}")]
    Foreign { id: String, trust_domain: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Svid {
    pub id: SpiffeId,
    /// The leaf, PEM.
    pub cert_pem: String,
    /// Intermediates between the leaf and the trust bundle (PEM, may be empty).
    pub chain_pem: String,
    pub not_after: SystemTime,
}

pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The issuer's certificate when it is an intermediate (sent with
    /// every SVID); empty for a root.
    chain_pem: String,
    /// The roots relying parties trust (PEM).
    bundle_pem: String,
}

fn invalid(path: &Path, reason: impl ToString) -> CaError {
    CaError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

/// The trust domains a certificate's URI SANs name (`spiffe://td[/...]`).
fn uri_trust_domains(cert_pem: &str) -> Result<Vec<String>, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name
                && let Some(rest) = u.strip_prefix("spiffe://")
            {
                out.push(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    }
    Ok(out)
}

impl Ca {
    /// A new self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<(Self, String), CaError> {
        SpiffeId::check_trust_domain(trust_domain).map_err(|e| CaError::Sign(e.to_string()))?;
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Isthmus");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Isthmus root {trust_domain}"));
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        let now = SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 24 * 3600));
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok((
            Self {
                trust_domain: trust_domain.into(),
                issuer: Issuer::new(params, key),
                chain_pem: String::new(),
                bundle_pem: cert_pem,
            },
            key_pem,
        ))
    }

    /// A plugged-in CA: its certificate and key, and for an intermediate
    /// the root bundle relying parties trust.
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        root_bundle_pem: Option<&str>,
        source: &Path,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(source, format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| invalid(source, format!("certificate: {e}")))?;
        let found = uri_trust_domains(cert_pem).map_err(|e| invalid(source, e))?;
        if let Some(td) = found.iter().find(|td| *td != trust_domain) {
            return Err(CaError::TrustDomain {
                path: source.to_owned(),
                found: td.clone(),
                wanted: trust_domain.into(),
            });
        }
        let (chain_pem, bundle_pem) = match root_bundle_pem {
            Some(roots) => (cert_pem.to_string(), roots.to_string()),
            None => (String::new(), cert_pem.to_string()),
        };
        Ok(Self {
            trust_domain: trust_domain.into(),
            issuer,
            chain_pem,
            bundle_pem,
        })
    }

    /// The CA kept in `dir/ca/`: loaded if there, generated and written
    /// (key mode 0600) on first start.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let ca_dir = dir.join("ca");
        let (cert_path, key_path) = (ca_dir.join("root-cert.pem"), ca_dir.join("root-key.pem"));
        if cert_path.exists() || key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            return Self::from_pem(trust_domain, &cert, &key, None, &ca_dir);
        }
        let (ca, key_pem) = Self::generate(trust_domain)?;
        std::fs::create_dir_all(&ca_dir).map_err(io(&ca_dir))?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .map_err(io(&key_path))?;
            f.write_all(key_pem.as_bytes()).map_err(io(&key_path))?;
        }
        std::fs::write(&cert_path, &ca.bundle_pem).map_err(io(&cert_path))?;
        tracing::info!(trust_domain, path = %ca_dir.display(), "generated a new root CA");
        Ok(ca)
    }

    /// The CA kept in a Secret (`kube` mode; keys `ca.crt`, `ca.key`):
    /// loaded if there, else generated and created. Creation is
    /// race-safe: when several replicas start at once, one create wins
    /// (the others get 409 Conflict) and everyone loads the winner's.
    pub async fn load_or_create_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        let api: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
        let source = PathBuf::from(format!("secret/{namespace}/{name}"));
        let api_err = |e: kube::Error| CaError::Io {
            path: source.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        for _ in 0..2 {
            if let Some(secret) = api.get_opt(name).await.map_err(api_err)? {
                let data = secret.data.unwrap_or_default();
                let field = |k: &str| {
                    data.get(k)
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                        .ok_or_else(|| invalid(&source, format!("no {k} in the Secret")))
                };
                return Self::from_pem(
                    trust_domain,
                    &field("ca.crt")?,
                    &field("ca.key")?,
                    None,
                    &source,
                );
            }
            let (ca, key_pem) = Self::generate(trust_domain)?;
            let secret = crate::store::kube::opaque_secret(
                namespace,
                name,
                [
                    (
                        "ca.crt".to_string(),
                        ByteString(ca.bundle_pem.clone().into_bytes()),
                    ),
                    ("ca.key".to_string(), ByteString(key_pem.into_bytes())),
                ],
            );
            match api.create(&kube::api::PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(trust_domain, secret = %source.display(), "generated a new root CA");
                    return Ok(ca);
                }
                // Another replica created it first: load theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(invalid(
            &source,
            "created by another replica but not readable",
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots to trust for this trust domain (PEM).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Signs `csr_pem` for `id`, valid from a minute ago for `ttl`.
    pub fn sign(&self, csr_pem: &str, id: &SpiffeId, ttl: Duration) -> Result<Svid, CaError> {
        self.sign_with_dns(csr_pem, id, &[], ttl)
    }

    /// The same, with DNS names beside the SPIFFE ID: the control plane's
    /// own certificate for clients that verify a host name (the API
    /// server calling the injection webhook).
    pub fn sign_with_dns(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        dns: &[String],
        ttl: Duration,
    ) -> Result<Svid, CaError> {
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(CaError::Ttl(ttl));
        }
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::Foreign {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        // Verifies the CSR's signature: the caller holds the key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(format!("{name}: {e}")))?,
            ));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + ttl;
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        params.serial_number = Some(serial());
        let cert = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Svid {
            id: id.clone(),
            cert_pem: cert.pem(),
            chain_pem: self.chain_pem.clone(),
            not_after,
        })
    }
}

/// A random positive 128-bit serial (RFC 5280: unique per issuer, ≤ 20 bytes).
fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}
