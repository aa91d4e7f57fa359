//! The request path. `listener` accepts connections and hands them to the
//! HTTP (`http`) or opaque TCP (`tcp`) proxy; both resolve the destination
//! service from the snapshot in effect, choose an endpoint through
//! `service_state` and `balance`, and connect through `pool`.

pub mod body;
pub mod downstream;
pub mod errors;
pub mod headers;
pub mod http;
pub mod listener;
pub mod service_state;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Snapshot, Store};
use crate::pool::SocketOptions;
use crate::telemetry::accesslog::Sink;
use crate::telemetry::metrics::{Direction, Label, Metrics, Workload};
use isthmus_mesh::SpiffeId;
use isthmus_mesh::tls::MeshTls;

/// Shared by every connection of a proxy.
pub struct Proxy {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub access_log: Sink,
    pub services: service_state::ServiceStates,
    /// Every connection and background task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when draining starts: stop accepting, finish in-flight work.
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passes: close everything.
    pub hard_stop: CancellationToken,
    pub socket: SocketOptions,
    /// The workload's mesh TLS, when it has an identity.
    pub mesh: Option<Arc<MeshTls>>,
    /// This workload as Istio's labels name it, once its identity is known.
    own: std::sync::OnceLock<Arc<Workload>>,
    /// Sampling and span export, once set (`set_tracing`); until then
    /// new traces are sampled at Istio's default and no span is sent.
    tracing: std::sync::OnceLock<crate::telemetry::otlp::Tracing>,
}

impl Proxy {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        access_log: Sink,
        socket: SocketOptions,
        mesh: Option<Arc<MeshTls>>,
    ) -> Self {
        let tracker = TaskTracker::new();
        // Upstream connection drivers live as long as pooled connections,
        // so they are not tracked with the downstream work drain waits on.
        let upstream = TaskTracker::new();
        let connector = mesh.as_ref().map(|m| {
            Arc::new(isthmus_mesh::transport::Connector::new(
                m.clone(),
                socket,
                upstream.clone(),
                metrics.handshake_observer(),
            ))
        });
        let services =
            service_state::ServiceStates::new(upstream, socket, metrics.clone(), connector);
        Self {
            mesh,
            store,
            metrics,
            access_log,
            services,
            tracker,
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            socket,
            own: std::sync::OnceLock::new(),
            tracing: std::sync::OnceLock::new(),
        }
    }

    /// How this proxy traces (sampling rate, span export).
    pub fn tracing(&self) -> &crate::telemetry::otlp::Tracing {
        self.tracing
            .get()
            .unwrap_or(&crate::telemetry::otlp::DEFAULT)
    }

    /// Sets how this proxy traces, once (later calls are ignored).
    pub fn set_tracing(&self, t: crate::telemetry::otlp::Tracing) {
        let _ = self.tracing.set(t);
    }

    /// This workload for Istio's labels: its service account (the name a
    /// caller's or callee's sidecar knows it by), namespace, SPIFFE ID and
    /// cluster. Kept once the identity is known.
    pub fn own_workload(&self, snap: &Snapshot) -> Arc<Workload> {
        if let Some(w) = self.own.get() {
            return w.clone();
        }
        let cluster: Label = snap.node.cluster.as_str().into();
        match self.mesh.as_ref().and_then(|m| m.own_id()) {
            Some(id) => self
                .own
                .get_or_init(|| Arc::new(Workload::of_spiffe(id.as_str(), cluster)))
                .clone(),
            None => {
                let name = if snap.node.service_account.is_empty() {
                    snap.node.name.clone()
                } else {
                    snap.node.service_account.as_str().into()
                };
                Arc::new(Workload {
                    name,
                    namespace: snap.node.namespace.clone(),
                    ..Workload::unknown(cluster)
                })
            }
        }
    }
}

/// The cluster a peer belongs to: its trust domain's, as the trust
/// bundles say, or ours for our own domain.
pub fn source_cluster(proxy: &Proxy, snap: &Snapshot, peer: Option<&SpiffeId>) -> Option<Arc<str>> {
    let td = peer?.trust_domain();
    let mesh = proxy.mesh.as_ref()?;
    if let Some(d) = mesh
        .trust()
        .and_then(|t| t.get(td).map(|d| d.cluster.clone()))
        && !d.is_empty()
    {
        return Some(d);
    }
    let own = mesh.own_id()?;
    (own.trust_domain() == td && !snap.node.cluster.is_empty())
        .then(|| snap.node.cluster.as_str().into())
}

/// Writes the access log line of an inbound connection refused before any
/// byte was proxied (plaintext in STRICT, an AuthorizationPolicy denial).
pub fn log_refused(
    proxy: &Proxy,
    conn: &ConnInfo,
    flags: &str,
    reason: String,
    authz: Option<String>,
) {
    if !proxy.access_log.enabled() {
        return;
    }
    let service = match &conn.target {
        Target::Service { name, .. } => Some(name.clone()),
        Target::Host => None,
    };
    proxy.access_log.write(crate::telemetry::accesslog::Entry {
        start_time: crate::telemetry::accesslog::rfc3339(std::time::SystemTime::now()),
        direction: conn.direction.as_str(),
        listener: conn.listener.to_string(),
        protocol: "TCP".into(),
        response_flags: flags.into(),
        reason: Some(reason),
        source_address: conn.peer.to_string(),
        destination_service: service,
        source_principal: conn.peer_id.as_ref().map(|p| p.to_string()),
        authz,
        ..Default::default()
    });
}

/// Counts a decision made by a policy (none: not counted).
pub fn count_decision(proxy: &Proxy, decision: &crate::authz::Decision, protocol: &'static str) {
    proxy
        .metrics
        .authz_decisions
        .get_or_create(&crate::telemetry::metrics::AuthzLabels {
            decision: if decision.allowed() { "allow" } else { "deny" },
            policy: decision.policy().into(),
            protocol,
        })
        .inc();
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
    /// The verified mTLS peer (inbound over the mesh transport).
    pub peer_id: Option<Arc<SpiffeId>>,
}
