//! The CA's gRPC service (`isthmus.ca.v1.Certificates`), served next to
//! discovery on the control plane's port. The caller's identity comes
//! from its credential (`authorization: Bearer <token>`), never from the
//! CSR; in `files` mode the credential is a bootstrap token (`token`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use isthmus_api::ca::v1::certificates_server::Certificates;
use isthmus_api::ca::v1::{SignRequest, SignResponse};
use tonic::{Request, Response, Status};

use super::SpiffeId;
use super::ca::{Ca, CaError};
use super::token::TokenKey;

/// Default SVID lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How callers prove who they are.
pub enum Authenticator {
    /// `files` mode: bootstrap tokens signed by the control plane.
    Bootstrap(Box<TokenKey>),
    /// `kube` mode: the pod's ServiceAccount token, checked by the API
    /// server (TokenReview), for these audiences.
    TokenReview {
        client: kube::Client,
        trust_domain: String,
        audiences: Vec<String>,
    },
}

/// The audience sidecars request for their projected token.
pub const AUDIENCE: &str = "isthmus";

impl Authenticator {
    pub async fn authenticate(&self, bearer: &str) -> Result<SpiffeId, Status> {
        match self {
            Authenticator::Bootstrap(k) => k
                .verify(bearer, std::time::SystemTime::now())
                .map_err(|e| Status::unauthenticated(e.to_string())),
            Authenticator::TokenReview {
                client,
                trust_domain,
                audiences,
            } => {
                use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(bearer.to_string()),
                        audiences: Some(audiences.clone()),
                    },
                    ..Default::default()
                };
                let api: kube::Api<TokenReview> = kube::Api::all(client.clone());
                let done = api
                    .create(&kube::api::PostParams::default(), &review)
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "cannot review the token with the API server: {e}"
                        ))
                    })?;
                identity_from_review(done.status.as_ref(), trust_domain)
                    .map_err(Status::unauthenticated)
            }
        }
    }
}

/// The workload identity a TokenReview's status proves: an authenticated
/// `system:serviceaccount:<namespace>:<name>`.
pub fn identity_from_review(
    status: Option<&k8s_openapi::api::authentication::v1::TokenReviewStatus>,
    trust_domain: &str,
) -> Result<SpiffeId, String> {
    let Some(s) = status.filter(|s| s.authenticated == Some(true)) else {
        let why = status
            .and_then(|s| s.error.clone())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(format!("the API server refused the token: {why}"));
    };
    let user = s
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or("");
    let Some(rest) = user.strip_prefix("system:serviceaccount:") else {
        return Err(format!(
            "the token belongs to {user:?}, not to a ServiceAccount: send the pod's projected ServiceAccount token"
        ));
    };
    let (ns, sa) = rest
        .split_once(':')
        .ok_or_else(|| format!("unexpected ServiceAccount user name {user:?}"))?;
    SpiffeId::workload(trust_domain, ns, sa).map_err(|e| e.to_string())
}

#[derive(Clone)]
pub struct CaService {
    ca: Arc<Ca>,
    auth: Arc<Authenticator>,
    default_ttl: Duration,
    /// Counts the certificates signed (the control plane's /metrics).
    issued: prometheus_client::metrics::counter::Counter,
}

impl CaService {
    pub fn new(ca: Arc<Ca>, auth: Authenticator, default_ttl: Duration) -> Self {
        Self {
            ca,
            auth: Arc::new(auth),
            default_ttl,
            issued: Default::default(),
        }
    }

    /// Counts the certificates it signs in `issued`.
    pub fn with_issued(mut self, issued: prometheus_client::metrics::counter::Counter) -> Self {
        self.issued = issued;
        self
    }
}

#[tonic::async_trait]
impl Certificates for CaService {
    async fn sign(&self, req: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        // Renewal over mTLS: the certificate in force says who it is.
        if let Some(Some(id)) = super::tls::peer_of(&req) {
            let id = id.clone();
            return self.issue(id, req.into_inner());
        }
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "send a credential: `authorization: Bearer <token>` (a bootstrap token from `isthmus-federation token`, or the pod's ServiceAccount token)",
                )
            })?
            .to_string();
        let id = self.auth.authenticate(&bearer).await?;
        self.issue(id, req.into_inner())
    }
}

impl CaService {
    fn issue(&self, id: SpiffeId, r: SignRequest) -> Result<Response<SignResponse>, Status> {
        let ttl = match r.ttl {
            // Negative parts become zero, which the CA refuses by name.
            Some(d) => Duration::new(
                u64::try_from(d.seconds).unwrap_or(0),
                u32::try_from(d.nanos).unwrap_or(0),
            ),
            None => self.default_ttl,
        };
        let svid = self.ca.sign(&r.csr_pem, &id, ttl).map_err(|e| match e {
            CaError::Csr(_) | CaError::Ttl(_) | CaError::Foreign { .. } => {
                Status::invalid_argument(e.to_string())
            }
            other => Status::internal(other.to_string()),
        })?;
        self.issued.inc();
        tracing::info!(identity = %id, ?ttl, "certificate issued");
        Ok(Response::new(SignResponse {
            spiffe_id: id.to_string(),
            cert_pem: svid.cert_pem,
            chain_pem: svid.chain_pem,
            not_after: svid
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            trust_bundles: [(
                self.ca.trust_domain().to_string(),
                self.ca.bundle_pem().to_string(),
            )]
            .into(),
        }))
    }
}
