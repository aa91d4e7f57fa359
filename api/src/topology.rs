//! The topology page's data: what a sidecar counts of the requests it sent
//! by destination cluster (`/stats/edges`), and the cluster set as a
//! control plane sees it (`/topology`). Data only.

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in milliseconds (one more bucket
/// takes the rest).
pub const BOUNDS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];

/// A sidecar's counters for the requests it sent to one cluster, since it
/// started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeCounters {
    pub requests: u64,
    /// Failed: answered 5xx (by the destination or the mesh), or a gRPC
    /// error status.
    pub errors: u64,
    /// Per bucket of `BOUNDS_MS`, not cumulative; `BOUNDS_MS.len() + 1`.
    pub buckets: Vec<u64>,
}

/// The cluster set as one control plane sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// The cluster whose control plane answers.
    pub cluster: String,
    pub generation: u64,
    pub clusters: Vec<ClusterNode>,
    pub links: Vec<LinkEdge>,
    /// Requests between clusters over the last seconds (ours as callers).
    pub traffic: Vec<TrafficEdge>,
    /// Services exported across the set, with the clusters exporting each.
    pub services: Vec<ServiceRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    pub name: String,
    /// `local`, `up` (its link is connected) or `down`.
    pub state: String,
    pub region: String,
    /// Proxies connected (ours only; linked clusters' are theirs).
    pub proxies: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkEdge {
    pub from: String,
    pub to: String,
    /// Connected, Disconnected, ...
    pub state: String,
    /// quic or h2, as our gateway reports.
    pub transport: Option<String>,
    pub rtt_ms: Option<f64>,
    pub last_sync_seconds: Option<u64>,
    /// Services imported over it.
    pub imports: Vec<String>,
    /// Why it is not connected.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficEdge {
    pub from: String,
    pub to: String,
    pub requests_per_second: f64,
    /// Failed share (5xx or a gRPC error), 0 to 1.
    pub error_rate: f64,
    /// Upper bound of the bucket holding the 99th percentile (None: no
    /// request in the window).
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    /// `name.ns`.
    pub name: String,
    pub clusters: Vec<String>,
}
