//! Resource types, as serde + schemars structs: our own CRDs in group
//! `isthmus.dev/v1alpha1`, MCS `ServiceExport`/`ServiceImport` and the
//! Gateway API routes a mesh reads. Types only: reading them is `store/`,
//! meaning is `translate/`.
//!
//! Durations are strings in the Gateway API form (GEP-2257: `250ms`, `1s`,
//! `1h30m`), validated by the schema pattern and parsed by `duration`.

pub mod authentication;
pub mod authorization;
pub mod destination;
pub mod duration;
pub mod fault;
pub mod gateway_api;
pub mod link;
pub mod mcs;
pub mod mesh;

pub use authentication::{PeerAuthentication, RequestAuthentication};
pub use authorization::AuthorizationPolicy;
pub use destination::DestinationPolicy;
pub use fault::FaultInjection;
pub use link::ClusterLink;
pub use mesh::Mesh;

/// Our API group.
pub const GROUP: &str = "isthmus.dev";

/// Condition types and reasons written into our resources' status.
pub mod condition {
    /// The resource was read and applied to the configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// A ClusterLink's tunnel and sync are up.
    pub const CONNECTED: &str = "Connected";
    /// The configuration derived from this resource is in effect on the
    /// proxies that need it (type), or some refused it (False, reason
    /// `RejectedByProxy`).
    pub const PROGRAMMED: &str = "Programmed";
    /// A proxy refused configuration derived from this resource (reason).
    pub const REJECTED_BY_PROXY: &str = "RejectedByProxy";
}

/// Status conditions in the Kubernetes form (`metav1.Condition`).
pub type Conditions = Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;

/// A region and zone, as in `topology.kubernetes.io/{region,zone}`.
#[derive(
    serde::Serialize, serde::Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq,
)]
#[serde(rename_all = "camelCase")]
pub struct Locality {
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

/// A reference to a Service in the resource's namespace.
#[derive(
    serde::Serialize, serde::Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq,
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// `Service` (the default) or `ServiceImport`.
    #[serde(default = "default_service_kind")]
    #[schemars(regex(pattern = r"^(Service|ServiceImport)$"))]
    pub kind: String,
    pub name: String,
    /// One port of the service; all ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_service_kind() -> String {
    "Service".into()
}
