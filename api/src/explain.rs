//! `isthmusctl explain`: the JSON answers the proxies' and the control
//! plane's admin ports give (`/explain`), shared by the side that decides
//! and the command that prints them. Each step names the object that
//! decided it. Data only; the deciding is done where the state lives.

use serde::{Deserialize, Serialize};

/// A sidecar's answer for an outbound request: what it would do with it
/// now (`/explain?url=...&method=...&header=name:value`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    /// `<namespace>/<name>` of the proxy that answered.
    pub proxy: String,
    pub cluster: String,
    /// The configuration version it holds.
    pub version: String,
    pub method: String,
    pub url: String,
    /// The service the host names; None with `error` saying why.
    pub service: Option<ServiceStep>,
    /// Each route of the service in order: matched or why not.
    #[serde(default)]
    pub routes: Vec<RouteStep>,
    /// The route taken (the first that matched, or the service's default).
    pub route: Option<ChosenRoute>,
    /// Why the request would not be sent (no service, no port, ...).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStep {
    /// The service's name in the proxy (`name.ns`, or a clusterset name).
    pub name: String,
    pub port: u16,
    pub protocol: String,
    /// How the host resolved: `host` (a name or alias) or `vip`.
    pub resolved_by: String,
    /// The service's virtual addresses (ClusterIP, ClusterSet IP).
    #[serde(default)]
    pub vips: Vec<String>,
    /// Every name that resolves to it.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStep {
    /// `<kind>/<ns>/<name>#<rule>` as the control plane names routes.
    pub name: String,
    pub matched: bool,
    /// Why it did not match (the first condition of each match that
    /// failed), or what matched.
    pub why: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChosenRoute {
    pub name: String,
    /// No route matched: the service's default route.
    pub default: bool,
    pub timeout: Option<String>,
    pub retries: Option<String>,
    pub fault: Option<String>,
    pub redirect: Option<String>,
    pub backends: Vec<BackendStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStep {
    pub service: String,
    pub weight: u32,
    /// Its share of the route's requests, in percent.
    pub share: f64,
    /// Whether the proxy knows the service (a backend it was not sent
    /// answers 503).
    pub known: bool,
    pub policy: String,
    pub endpoints: Vec<EndpointStep>,
    /// The share of this backend's requests each locality priority takes
    /// now (index = priority, 0 best), after health and spill-over.
    #[serde(default)]
    pub priority_shares: Vec<f64>,
    /// The endpoint a request would go to now: its address, and its index
    /// in `endpoints` (two clusters behind our gateway share one address).
    pub chosen: Option<String>,
    pub chosen_index: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStep {
    pub address: String,
    /// The cluster it runs in (ours, or the linked one its gateway stands
    /// for).
    pub cluster: String,
    /// `region/zone`.
    pub locality: String,
    /// Locality priority, 0 best.
    pub priority: usize,
    pub weight: u32,
    /// Healthy as the control plane says (readiness, health checks).
    pub healthy: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Its cluster's gateway is down (peer liveness).
    pub cluster_down: bool,
    pub in_flight: usize,
    /// Takes traffic now (healthy, not ejected, its cluster up).
    pub available: bool,
    /// Reached through our east-west gateway: the service's name there.
    pub via: Option<String>,
}

/// A destination sidecar's answer for an inbound request from a given
/// caller (`/explain?inbound=PORT&source=SPIFFE&url=...`): its mTLS mode,
/// the JWT requirement and the authorization decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    pub proxy: String,
    pub cluster: String,
    pub port: u16,
    pub source: Option<String>,
    /// STRICT, PERMISSIVE or DISABLE, and the PeerAuthentication that set it.
    pub mtls_mode: String,
    pub mtls_mode_from: String,
    /// `not required`, `verified <principal>`, or why it was refused (401).
    pub authentication: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// `<policy>#<rule>`, `default-deny` (ALLOW policies exist and none
    /// matched) or `none` (no policy).
    pub rule: String,
    /// The status the caller would get: 200 (passed on), 401 or 403.
    pub status: u16,
}

/// The control plane's view of a service (`/explain?service=NAME`): where
/// it comes from, its addresses, and, for an imported one, which clusters
/// export it and how their links fare.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOrigin {
    pub service: String,
    pub cluster: String,
    /// `Service <ns>/<name>`, `ServiceImport <ns>/<name>` (clusterset), or
    /// `ServiceExport`'s per-cluster name.
    pub source: String,
    pub vips: Vec<String>,
    pub hosts: Vec<String>,
    /// The clusters exporting it, ours included when we export it too.
    pub exporters: Vec<Exporter>,
    /// Routing and security objects that apply, by kind and name, with
    /// the cluster that authored a received one.
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exporter {
    pub cluster: String,
    /// Ready endpoints it reports.
    pub endpoints: u32,
    /// The link's state (Connected, Disconnected, ...); `local` for ours.
    pub link: String,
    /// Seconds since its last sync (None: never / ours).
    pub last_sync_seconds: Option<u64>,
    /// Its export is kept past its link's loss (fail-static) and ages.
    pub stale: bool,
}
