//! `Mesh`: the cluster's own identity in the mesh (a cluster-scoped
//! singleton named `default`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Conditions, Locality};

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "Mesh",
    status = "MeshStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName"}"#,
    printcolumn = r#"{"name":"Trust domain","type":"string","jsonPath":".spec.trustDomain"}"#,
    printcolumn = r#"{"name":"mTLS","type":"string","jsonPath":".spec.mtls.mode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// This cluster's name among linked clusters (`eu-west`); used in
    /// per-cluster service names and metrics.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub cluster_name: String,
    /// SPIFFE trust domain of this cluster's workloads (`eu-west.isthmus.local`).
    #[schemars(regex(pattern = r"^[a-z0-9._-]{1,255}$"))]
    pub trust_domain: String,
    /// Where this cluster runs; endpoints without topology labels get it.
    pub locality: Locality,
    #[serde(default)]
    pub mtls: MtlsSettings,
    /// Spans from every injected sidecar (one per request), and how many
    /// new traces are sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
}

/// Tracing for the cluster's sidecars (Istio's MeshConfig tracing).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// The OTLP/gRPC collector spans go to
    /// (`http://otel-collector.observability:4317`); none: no spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub otlp_endpoint: Option<String>,
    /// Percent of new traces sampled (requests without `traceparent`); a
    /// caller's decision is always kept. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling_percent: Option<f64>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSettings {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// STRICT accepts only mesh mTLS on inbound; PERMISSIVE also plaintext.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Strict,
    #[default]
    Permissive,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}
