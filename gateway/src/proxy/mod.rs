//! The request path. `listener` accepts connections and hands them to the
//! HTTP (`http`) or opaque TCP (`tcp`) proxy; both resolve the destination
//! service from the snapshot in effect, choose an endpoint through
//! `cluster` state and `balance`, and connect through `pool`.

pub mod body;
pub mod cluster;
pub mod errors;
pub mod headers;
pub mod http;
pub mod listener;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Store;
use crate::pool::SocketOptions;
use crate::telemetry::accesslog::Sink;
use crate::telemetry::metrics::{Direction, Metrics};

/// Shared by every connection of a proxy.
pub struct Proxy {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub access_log: Sink,
    pub clusters: cluster::Clusters,
    /// Every connection and background task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when draining starts: stop accepting, finish in-flight work.
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passes: close everything.
    pub hard_stop: CancellationToken,
    pub socket: SocketOptions,
}

impl Proxy {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        access_log: Sink,
        socket: SocketOptions,
    ) -> Self {
        let tracker = TaskTracker::new();
        // Upstream connection drivers live as long as pooled connections,
        // so they are not tracked with the downstream work drain waits on.
        let clusters = cluster::Clusters::new(TaskTracker::new(), socket, metrics.clone());
        Self {
            store,
            metrics,
            access_log,
            clusters,
            tracker,
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            socket,
        }
    }
}

/// Where a connection's requests go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Explicit outbound: the Host header / :authority names the service.
    Host,
    /// A service decided by the connection (transparent VIP, inbound port).
    Service { name: String, port: u16 },
}

/// What is known about a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub direction: Direction,
    pub target: Target,
}
