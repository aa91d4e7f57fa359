//! The control plane's identity on the federation channel: an SVID from
//! its own CA for `spiffe://<td>/ns/<ns>/sa/isthmus-federation` (renewed at
//! half its lifetime), held the way a sidecar holds one (the gateway
//! crate's `MeshTls`), so the same SPIFFE verification applies: a peer's
//! certificate must chain to the bundle of the trust domain its ID names —
//! ours, or a linked cluster's from its ClusterLink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_api::model;
use isthmus_mesh::identity::{Credentials, Identity};
use isthmus_mesh::tls::{MeshTls, Trust};
use tokio_util::sync::CancellationToken;

use crate::identity::tls::SERVICE_ACCOUNT;
use crate::identity::{Ca, CaError, SpiffeId};

/// Lifetime of the federation certificate.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

pub struct FederationTls {
    pub mesh: Arc<MeshTls>,
    pub id: SpiffeId,
    identity: Arc<Identity>,
    ca: Arc<Ca>,
    linked: parking_lot::Mutex<Vec<model::TrustBundle>>,
}

impl FederationTls {
    /// Issues the certificate (namespace `namespace`).
    pub fn new(ca: Arc<Ca>, namespace: &str) -> Result<Self, CaError> {
        let id = SpiffeId::workload(ca.trust_domain(), namespace, SERVICE_ACCOUNT)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let identity = Identity::fixed(issue(&ca, &id)?);
        Ok(Self {
            mesh: Arc::new(MeshTls::new(identity.clone())),
            id,
            identity,
            ca,
            linked: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Trusts the linked clusters' bundles (besides our own), as the
    /// ClusterLinks say now.
    pub fn set_linked(&self, bundles: &[model::TrustBundle]) {
        let mut held = self.linked.lock();
        if *held == bundles {
            return;
        }
        let trust = Trust::from_pem(
            bundles
                .iter()
                .map(|b| (b.trust_domain.as_str(), b.roots_pem.as_str(), "")),
        );
        match trust {
            Ok(t) => {
                self.mesh.set_config_trust(Arc::new(t));
                *held = bundles.to_vec();
            }
            Err(e) => tracing::warn!("a linked trust bundle is unusable: {e}"),
        }
    }

    /// Re-issues the certificate at half its lifetime until `stop`.
    pub fn spawn_renewal(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        crate::identity::tls::every(TTL / 2, stop, move || match issue(&me.ca, &me.id) {
            Ok(c) => me.identity.install(c),
            Err(e) => tracing::error!("cannot renew the federation certificate: {e}"),
        })
    }
}

fn issue(ca: &Ca, id: &SpiffeId) -> Result<Credentials, CaError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let svid = ca.sign(&csr, id, TTL)?;
    Ok(Credentials {
        spiffe_id: id.to_string(),
        cert_pem: svid.cert_pem,
        chain_pem: svid.chain_pem,
        key_pem: key.serialize_pem(),
        not_before: SystemTime::now(),
        not_after: svid.not_after,
        trust_bundles: BTreeMap::from([(
            ca.trust_domain().to_string(),
            ca.bundle_pem().to_string(),
        )]),
    })
}
