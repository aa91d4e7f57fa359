//! Authentication policies: `PeerAuthentication` says whether the selected
//! workloads accept plaintext besides mesh mTLS (STRICT / PERMISSIVE, over
//! the Mesh default); `RequestAuthentication` says which JWT issuers their
//! requests must present a token from (origin authentication). Istio's
//! names and shapes, so the habits carry over.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::authorization::LabelSelector;
use super::destination::PolicyStatus;
use super::mesh::MtlsSettings;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    status = "PolicyStatus",
    shortname = "peerauthn",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads (pod labels) in the policy's namespace; all when absent.
    /// A policy with a selector wins over a namespace-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    pub mtls: MtlsSettings,
}

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    namespaced,
    status = "PolicyStatus",
    shortname = "requestauthn"
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Requests on covered paths need a valid token from one of these.
    pub jwt_rules: Vec<JwtRule>,
    /// Paths needing no token: exact, or a prefix ending in `*` (`/healthz`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    pub issuer: String,
    /// The token's `aud` must name one of these; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The issuer's JWKS document, inline (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Or a JWKS file on the proxy's filesystem (mounted from a ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
}
