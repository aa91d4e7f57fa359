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
