//! Mesh TLS: rustls configurations for the mesh transport, built once and
//! reading the workload's credentials and the trust bundles per handshake
//! (so a certificate rotation or a new bundle applies to the next handshake
//! and never touches live connections).
//!
//! Peers are verified the SPIFFE way: the peer certificate's one SPIFFE ID
//! names a trust domain, and the chain must end at that domain's roots (a
//! certificate for domain A signed by domain B's CA is refused even though
//! B is trusted). The stock rustls verifiers match DNS names only, hence
//! our own, built on webpki.

pub mod control;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};

use crate::spiffe::{SpiffeId, SpiffeIdError};

use crate::identity::{Credentials, Identity};

/// ALPN of the mesh transport.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust bundle of {domain:?}: {reason}")]
    Bundle { domain: String, reason: String },
    #[error("peer identity: {0}")]
    Spiffe(#[from] SpiffeIdError),
    #[error(
        "the peer's trust domain {0:?} has no trust bundle here (not this mesh, or not federated yet)"
    )]
    UnknownTrustDomain(String),
    #[error("this proxy has no certificate yet (waiting for the CA)")]
    NoIdentity,
}

/// Splits PEM roots by the trust domain each names (`spiffe://<td>` URI
/// SAN; `fallback` for those naming none): a root serves only its domain.
pub fn split_by_domain(
    pem: &str,
    fallback: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, TrustError> {
    let bad = |reason: String| TrustError::Bundle {
        domain: "(bootstrap)".into(),
        reason,
    };
    let mut by_domain = std::collections::BTreeMap::<String, String>::new();
    for block in pem
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
    {
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("not a certificate: {e}")))?;
        let domain = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u
                        .strip_prefix("spiffe://")
                        .map(|td| td.split('/').next().unwrap_or(td).to_string()),
                    _ => None,
                })
            })
            .or_else(|| fallback.map(str::to_string))
            .ok_or_else(|| {
                bad("a root names no trust domain (no spiffe:// URI SAN): give the trust domain (--control-plane-id names it)".into())
            })?;
        by_domain
            .entry(domain)
            .or_default()
            .push_str(block.trim_start_matches('\n'));
    }
    if by_domain.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(by_domain)
}

/// One trust domain's roots.
#[derive(Clone)]
pub struct DomainTrust {
    pub anchors: Vec<TrustAnchor<'static>>,
    /// The cluster whose workloads the domain names ("" when unknown).
    pub cluster: Arc<str>,
}

/// Trust bundles by trust domain.
#[derive(Clone, Default)]
pub struct Trust {
    domains: HashMap<String, DomainTrust>,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.domains.keys().collect();
        names.sort();
        f.debug_struct("Trust").field("domains", &names).finish()
    }
}

impl Trust {
    /// Roots whose certificates name their trust domain (`spiffe://<td>`
    /// URI SAN, as Isthmus CAs do): a bootstrap bundle read from a file.
    pub fn from_self_describing_pem(pem: &str) -> Result<Self, TrustError> {
        Self::from_pem_for(pem, None)
    }

    /// The same; roots naming no trust domain (an operator's plugged-in
    /// root) belong to `fallback`.
    pub fn from_pem_for(pem: &str, fallback: Option<&str>) -> Result<Self, TrustError> {
        let by_domain = split_by_domain(pem, fallback)?;
        Self::from_pem(by_domain.iter().map(|(d, p)| (d.as_str(), p.as_str(), "")))
    }

    /// Parses `(trust domain, PEM roots, cluster)` entries.
    pub fn from_pem<'a>(
        bundles: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Self, TrustError> {
        let mut domains = HashMap::new();
        for (domain, pem, cluster) in bundles {
            let bad = |reason: String| TrustError::Bundle {
                domain: domain.to_string(),
                reason,
            };
            let mut anchors = Vec::new();
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let der = der.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
                let anchor = webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| bad(format!("not a usable root certificate: {e}")))?;
                anchors.push(anchor.to_owned());
            }
            if anchors.is_empty() {
                return Err(bad("no certificate in the bundle".into()));
            }
            domains.insert(
                domain.to_string(),
                DomainTrust {
                    anchors,
                    cluster: cluster.into(),
                },
            );
        }
        Ok(Self { domains })
    }

    pub fn get(&self, domain: &str) -> Option<&DomainTrust> {
        self.domains.get(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// `self` with `over`'s domains replacing or adding to its own.
    fn overlaid(&self, over: &Trust) -> Trust {
        let mut domains = self.domains.clone();
        for (k, v) in &over.domains {
            domains.insert(k.clone(), v.clone());
        }
        Trust { domains }
    }
}

/// What a handshake uses, derived from one credentials + bundles pair.
struct Current {
    creds: Arc<Credentials>,
    config_trust: Arc<Trust>,
    bootstrap: Arc<Trust>,
    key: Option<Arc<CertifiedKey>>,
    trust: Arc<Trust>,
    own: Option<SpiffeId>,
}

struct State {
    identity: Arc<Identity>,
    /// Bundles from the configuration (the control plane's set, peers
    /// included); they win over the ones the CA returned with the cert.
    config_trust: ArcSwap<Trust>,
    /// Roots given at start (`--ca-roots`): how the control plane is
    /// verified before the first certificate brings the bundles.
    bootstrap: ArcSwap<Trust>,
    current: ArcSwapOption<Current>,
    provider: Arc<CryptoProvider>,
}

impl State {
    fn current(&self) -> Option<Arc<Current>> {
        let creds = self.identity.current()?;
        let config_trust = self.config_trust.load_full();
        let bootstrap = self.bootstrap.load_full();
        if let Some(c) = self.current.load_full()
            && Arc::ptr_eq(&c.creds, &creds)
            && Arc::ptr_eq(&c.config_trust, &config_trust)
            && Arc::ptr_eq(&c.bootstrap, &bootstrap)
        {
            return Some(c);
        }
        let key = match certified_key(&creds, &self.provider) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                tracing::error!("cannot use the workload certificate: {e}");
                None
            }
        };
        let from_ca = Trust::from_pem(
            creds
                .trust_bundles
                .iter()
                .map(|(d, p)| (d.as_str(), p.as_str(), "")),
        )
        .unwrap_or_else(|e| {
            tracing::error!("trust bundle from the CA unusable: {e}");
            Trust::default()
        });
        let next = Arc::new(Current {
            trust: Arc::new(bootstrap.overlaid(&from_ca).overlaid(&config_trust)),
            own: SpiffeId::parse(&creds.spiffe_id).ok(),
            creds,
            config_trust,
            bootstrap,
            key,
        });
        self.current.store(Some(next.clone()));
        Some(next)
    }

    /// Chain to the roots of the domain the certificate's SPIFFE ID names.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        let other = |e: TrustError| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        };
        let peer = SpiffeId::from_cert(end_entity).map_err(|e| other(e.into()))?;
        let trust = match self.current() {
            Some(c) => c.trust.clone(),
            None => self.bootstrap.load_full(),
        };
        let domain = trust
            .get(peer.trust_domain())
            .ok_or_else(|| other(TrustError::UnknownTrustDomain(peer.trust_domain().into())))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &domain.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(webpki_error(e)))?;
        Ok(peer)
    }
}

fn webpki_error(e: webpki::Error) -> CertificateError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    }
}

fn certified_key(creds: &Credentials, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let mut chain = Vec::new();
    for pem in [&creds.cert_pem, &creds.chain_pem] {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(der.map_err(|e| format!("certificate PEM: {e}"))?);
        }
    }
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| format!("private key PEM: {e}"))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The mesh transport's TLS: one client and one server configuration.
pub struct MeshTls {
    state: Arc<State>,
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
}

impl MeshTls {
    pub fn new(identity: Arc<Identity>) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let state = Arc::new(State {
            identity,
            config_trust: ArcSwap::from_pointee(Trust::default()),
            bootstrap: ArcSwap::from_pointee(Trust::default()),
            current: ArcSwapOption::empty(),
            provider: provider.clone(),
        });
        let (client, server) = configs(&state, ALPN_H2, None);
        Self {
            state,
            client: Arc::new(client),
            server: Arc::new(server),
        }
    }

    /// Configurations for another ALPN (`h3` for the east-west tunnels)
    /// sharing this identity and trust.
    pub fn configs_for(&self, alpn: &[u8]) -> (rustls::ClientConfig, rustls::ServerConfig) {
        configs(&self.state, alpn, None)
    }

    /// `configs_for`, with a server that also refuses, in the handshake, a
    /// client whose verified identity `admit` does not accept: TLS alert
    /// `access_denied` (QUIC CRYPTO_ERROR 0x131), so the peer learns why at
    /// once instead of seeing its connection dropped after the handshake.
    pub fn configs_admitting(
        &self,
        alpn: &[u8],
        admit: Admit,
    ) -> (rustls::ClientConfig, rustls::ServerConfig) {
        configs(&self.state, alpn, Some(admit))
    }

    /// Installs the configuration's trust bundles (on every config change;
    /// a no-op when they are the same `Arc`).
    pub fn set_config_trust(&self, trust: Arc<Trust>) {
        if !Arc::ptr_eq(&self.state.config_trust.load(), &trust) {
            self.state.config_trust.store(trust);
        }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.state.identity
    }

    /// Installs the bootstrap roots (the control plane's CA, read from a
    /// file at start).
    pub fn set_bootstrap_trust(&self, trust: Trust) {
        self.state.bootstrap.store(Arc::new(trust));
    }

    /// Our own SPIFFE ID, once a certificate is held.
    pub fn own_id(&self) -> Option<SpiffeId> {
        self.state.current()?.own.clone()
    }

    /// The bundles in force (the CA's overlaid with the configuration's).
    pub fn trust(&self) -> Option<Arc<Trust>> {
        Some(self.state.current()?.trust.clone())
    }

    /// Whether a certificate is held (readiness of the mesh transport).
    pub fn ready(&self) -> bool {
        self.state.current().is_some_and(|c| c.key.is_some())
    }

    /// Counts certificate rotations (pooled connections made before one
    /// are retired).
    pub fn generation(&self) -> u64 {
        *self.state.identity.rotations().borrow()
    }
}

/// Client and server configurations over `state` for one ALPN. TLS 1.3
/// only (QUIC needs it anyway); no resumption: every connection proves a
/// certificate held now (a resumed session would carry the identity, or
/// the absence of one for a first CSR, of the connection that made the
/// ticket).
fn configs(
    state: &Arc<State>,
    alpn: &[u8],
    admit: Option<Admit>,
) -> (rustls::ClientConfig, rustls::ServerConfig) {
    let provider = state.provider.clone();
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier(state.clone(), None)))
        .with_client_cert_resolver(Arc::new(Resolver(state.clone())));
    client.alpn_protocols = vec![alpn.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(Verifier(state.clone(), admit)))
        .with_cert_resolver(Arc::new(Resolver(state.clone())));
    server.alpn_protocols = vec![alpn.to_vec()];
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    (client, server)
}

/// The peer identity of an established session (verified in the handshake).
pub fn peer_id(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let certs = conn.peer_certificates()?;
    SpiffeId::from_cert(certs.first()?).ok()
}

/// SPIFFE verification against the trust in force; for clients, then
/// admission of the identity when there is an `Admit`.
struct Verifier(Arc<State>, Option<Admit>);
struct Resolver(Arc<State>);

/// Whether a verified peer identity may connect (east-west admission).
pub type Admit = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeVerifier")
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidResolver")
    }
}

impl Verifier {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name to expect is a SPIFFE ID, checked by the caller after
        // the handshake (`peer_id`); here: the chain to its domain's roots.
        self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        match &self.1 {
            Some(admit) if !SpiffeId::from_cert(end_entity).is_ok_and(|id| admit(&id)) => {
                // rustls answers this with the alert access_denied.
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ClientCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()?.key.clone()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current()?.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(td: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{td}").try_into().unwrap(),
        )];
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_roots_file_is_split_so_each_root_serves_only_its_domain() {
        let (a, b) = (root("a.example"), root("b.example"));
        let split = split_by_domain(&format!("{a}{b}"), None).unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split["a.example"].trim(), a.trim());
        assert_eq!(split["b.example"].trim(), b.trim());
        let t = Trust::from_self_describing_pem(&format!("{a}{b}")).unwrap();
        assert_eq!(t.get("a.example").unwrap().anchors.len(), 1);
        // A root naming no domain needs one given.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let plain = p.self_signed(&key).unwrap().pem();
        assert!(split_by_domain(&plain, None).is_err());
        assert!(
            split_by_domain(&plain, Some("c.example"))
                .unwrap()
                .contains_key("c.example")
        );
    }
}
