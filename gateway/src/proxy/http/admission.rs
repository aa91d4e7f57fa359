//! Inbound admission: JWT request authentication (401), then
//! AuthorizationPolicy (403), before the local application sees a request.

use super::*;

/// Inbound request security: JWT authentication (401), then authorization
/// (403). A verified token's principal goes to the access log; the token
/// itself is passed on to the application.
pub(super) fn admit_inbound(
    proxy: &Proxy,
    conn: &ConnInfo,
    snap: &Snapshot,
    req: &mut Request<Incoming>,
    port: u16,
    rec: &mut Record,
) -> Result<(), ProxyError> {
    let sec = &snap.security;
    if sec.jwt.is_empty() && sec.authz.is_empty() {
        return Ok(());
    }
    let path = req.uri().path().to_string();
    let claims = match sec
        .jwt
        .authenticate(&path, req.headers(), SystemTime::now())
    {
        Authn::NotRequired => None,
        Authn::Verified(c) => {
            rec.request_principal = Some(c.principal.clone());
            Some(c)
        }
        Authn::Rejected { policy, error } => {
            proxy
                .metrics
                .authn_failures
                .get_or_create(&AuthnLabels {
                    policy: policy.as_str().into(),
                    reason: jwt_reason(&error),
                })
                .inc();
            return Err(ProxyError::Unauthenticated {
                policy,
                reason: error.to_string(),
            });
        }
    };
    if sec.authz.is_empty() {
        return Ok(());
    }
    let source_cluster = crate::proxy::source_cluster(proxy, snap, conn.peer_id.as_deref());
    let decision = sec.authz.decide(&crate::authz::Attributes {
        principal: conn.peer_id.as_deref(),
        source_cluster: source_cluster.as_deref(),
        port,
        http: Some(crate::authz::HttpAttrs {
            method: req.method().as_str(),
            path: &path,
            headers: req.headers(),
        }),
        jwt: claims.as_ref(),
    });
    crate::proxy::count_decision(proxy, &decision, "HTTP");
    rec.authz = Some(decision.rule());
    if decision.allowed() {
        Ok(())
    } else {
        Err(ProxyError::Denied(decision.rule()))
    }
}

pub(super) fn jwt_reason(e: &crate::jwt::JwtError) -> &'static str {
    use crate::jwt::JwtError as E;
    match e {
        E::Missing => "missing",
        E::Malformed => "malformed",
        E::Algorithm(_) => "algorithm",
        E::Issuer(_) => "issuer",
        E::UnknownKey { .. } => "unknown_key",
        E::Signature => "signature",
        E::Expired => "expired",
        E::NotYetValid => "not_yet_valid",
        E::Audience(_) => "audience",
    }
}
