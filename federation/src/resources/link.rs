//! `ClusterLink`: a peer cluster this one is linked with (cluster-scoped).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Conditions;
use super::duration::Duration;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "ClusterLink",
    status = "ClusterLinkStatus",
    shortname = "link",
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.peer"}"#,
    printcolumn = r#"{"name":"Connected","type":"boolean","jsonPath":".status.connected"}"#,
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".status.transport"}"#,
    printcolumn = r#"{"name":"RTT ms","type":"number","jsonPath":".status.rttMillis"}"#,
    printcolumn = r#"{"name":"Last sync","type":"date","jsonPath":".status.lastSync"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLinkSpec {
    /// The peer's cluster name (its `Mesh` clusterName).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub peer: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// How to reach the peer's east-west gateway.
    pub gateway: GatewayAddresses,
    /// The peer's SPIFFE trust domain and its CA bundle (PEM).
    pub trust_domain: String,
    pub trust_bundle: String,
    /// Secret holding this link's join token (`token`). Once the peer
    /// admitted it, the link uses the credential the peer issued instead
    /// (`status.credentialExpiry`), and the join token may expire.
    pub credentials_secret_ref: SecretRef,
    #[serde(default)]
    pub partition: PartitionPolicy,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddresses {
    /// The QUIC listener (UDP 15443): `ip:port`, or `host:port` (a cloud
    /// load balancer's name), looked up by the control plane and again
    /// every 30 s.
    pub quic: String,
    /// `host:port` of the HTTP/2-over-TLS fallback (TCP 15443); the QUIC
    /// address is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
    /// Defaults to `isthmus-links`, the only namespace whose Secrets a
    /// control plane on Kubernetes reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What happens to the peer's imports when the link is down.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionPolicy {
    #[serde(default)]
    pub mode: PartitionMode,
    /// How long imports stay after the last sync (FailStatic).
    #[serde(default = "default_ttl")]
    pub staleness_ttl: Duration,
}

impl Default for PartitionPolicy {
    fn default() -> Self {
        Self {
            mode: PartitionMode::default(),
            staleness_ttl: default_ttl(),
        }
    }
}

fn default_ttl() -> Duration {
    "5m".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PartitionMode {
    /// Keep the last known imports until the TTL, marked stale.
    #[default]
    FailStatic,
    /// Withdraw the imports as soon as the link drops.
    FailClosed,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterLinkStatus {
    #[serde(default)]
    pub connected: bool,
    /// `quic` or `h2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_millis: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imported_services: Vec<String>,
    /// When the link credential the peer issued this cluster expires: until
    /// then the link comes back after any restart or outage without its
    /// join token. Renewed while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expiry: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The peer's trust bundle this cluster uses now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<TrustBundleStatus>,
    /// While disconnected and the imports are still used (fail-static):
    /// seconds since the peer was last heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

/// Which trust bundle a link uses for its peer's domain.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleStatus {
    /// `ClusterLink` (`spec.trustBundle`, as linked) or `Peer` (as the
    /// peer last sent it over the federation channel: its CA's current
    /// roots, old and new during a rotation).
    pub source: String,
    /// SHA-256 fingerprints of its root certificates (hex, of the DER).
    pub roots: Vec<String>,
    /// When the peer sent it (source `Peer`; absent when it was read back
    /// from where it was kept across a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
