//! The Kubernetes Multi-Cluster Services API (`multicluster.x-k8s.io/v1alpha1`,
//! KEP-1645): `ServiceExport` marks a Service for export to linked clusters;
//! `ServiceImport` is what an importing cluster sees. Users install the
//! upstream CRDs; these types only read and write them, so they are not in
//! `crds/`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Conditions;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus"
)]
pub struct ServiceExportSpec {}

/// A ServiceExport as users write it: usually no `spec` at all (it has no
/// fields), which the derived type would refuse. Read through this.
#[derive(Deserialize)]
pub struct ServiceExportDoc {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    pub status: Option<ServiceExportStatus>,
}

impl From<ServiceExportDoc> for ServiceExport {
    fn from(d: ServiceExportDoc) -> Self {
        let mut e = ServiceExport::new(
            d.metadata.name.as_deref().unwrap_or_default(),
            ServiceExportSpec {},
        );
        e.metadata = d.metadata;
        e.status = d.status;
        e
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ServiceExportStatus {
    /// `Valid`, `Conflict` (MCS: the oldest export wins), `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
}

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(rename = "type")]
    pub import_type: ImportType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: u16,
}

fn tcp() -> String {
    "TCP".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportType {
    #[default]
    ClusterSetIP,
    Headless,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ServiceImportStatus {
    /// The clusters that export the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ClusterStatus {
    pub cluster: String,
}
