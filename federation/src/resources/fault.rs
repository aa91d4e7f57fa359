//! `FaultInjection`: delays and aborts, referenced from an HTTPRoute rule
//! by an `ExtensionRef` filter (group isthmus.dev, kind FaultInjection).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::destination::PolicyStatus;
use super::duration::Duration;

#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "isthmus.dev",
    version = "v1alpha1",
    kind = "FaultInjection",
    namespaced,
    status = "PolicyStatus",
    shortname = "fault"
)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0-100.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}

/// Exactly one of httpStatus or grpcStatus.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub grpc_status: Option<u32>,
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}
