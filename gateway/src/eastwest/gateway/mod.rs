//! The sending gateway: the local entry for workloads of this cluster and
//! one link per peer gateway. A workload (its sidecar) opens an mTLS HTTP/2
//! CONNECT to the gateway's local listener with the authority
//! `<service>.<ns>:<port>` and the header `isthmus-cluster: <peer>`; the
//! gateway opens the same CONNECT on its link to that peer (QUIC, or the
//! TCP fallback) and joins the two streams. Links are made on first use
//! and remade when they close.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{Link, LinkError, PeerLink, Transport};
use super::transport::LinkTransport;
use super::{CLUSTER_HEADER, LINK_FAILURE_HEADER, TRANSPORT_HEADER, UNTRUSTED};
use crate::telemetry::metrics::{
    Metrics, PeerDirectionLabels, PeerLabels, PeerResultLabels, PeerTransportLabels,
};
use isthmus_mesh::SpiffeId;
use isthmus_mesh::tls::MeshTls;

mod entry;
mod liveness;
mod peers;
mod status;

pub use liveness::{DEAD_AFTER, Verdict, judge};
use peers::PeerState;
pub use peers::{
    BACKOFF_MAX, BACKOFF_MIN, HEAD_START, PeerConfig, REPROBE, SILENCE, backoff, merge_peers,
};
use status::set_transport;

/// The sending side of this cluster's east-west gateway: its identity,
/// QUIC endpoint and peers.
pub struct Gateway {
    metrics: Arc<Metrics>,
    tls: Arc<MeshTls>,
    endpoint: quinn::Endpoint,
    peers: Mutex<HashMap<String, Arc<PeerState>>>,
    /// How often a link on the TCP fallback tries QUIC again.
    pub reprobe: Duration,
    /// This cluster's name, sent as the source of every stream.
    pub cluster: Option<String>,
    /// Every task of the gateway: its servers, the local entry's
    /// connections and streams, re-probes, config and stats loops.
    pub tasks: TaskTracker,
    /// Each peer's liveness, for this cluster's sidecars.
    liveness: tokio::sync::watch::Sender<isthmus_api::eastwest::v1::PeerLiveness>,
    /// Woken when the peers change (`set_peers`).
    peers_changed: tokio::sync::Notify,
}

impl Gateway {
    /// Links with exactly `peers` from now on: new ones are linked on
    /// first use, removed or changed ones are forgotten (streams open on
    /// their links finish there), unchanged ones keep their link.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let mut map = self.peers.lock();
        map.retain(|name, st| peers.iter().any(|p| &p.cluster == name && *p == st.cfg));
        for p in peers {
            if !map.contains_key(&p.cluster) {
                tracing::info!(cluster = %p.cluster, udp = %p.udp, "peer gateway configured");
                map.insert(p.cluster.clone(), PeerState::new(p));
            }
        }
        drop(map);
        self.peers_changed.notify_waiters();
    }

    /// Follows the peers of the proxy's configuration (the config stream
    /// or a `--config` file) on top of `fixed`, until `stop`.
    pub fn follow_config(
        self: Arc<Self>,
        store: Arc<crate::config::Store>,
        fixed: Vec<PeerConfig>,
        stop: CancellationToken,
    ) {
        let mut changes = store.subscribe();
        let tasks = self.tasks.clone();
        tasks.spawn(async move {
            loop {
                let snap = store.load();
                self.set_peers(merge_peers(&fixed, snap.source.east_west.as_ref()));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
            }
        });
    }

    pub fn new(
        tls: Arc<MeshTls>,
        endpoint: quinn::Endpoint,
        peers: Vec<PeerConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let peers = peers
            .into_iter()
            .map(|cfg| (cfg.cluster.clone(), PeerState::new(cfg)))
            .collect();
        Self {
            metrics,
            tls,
            endpoint,
            peers: Mutex::new(peers),
            reprobe: REPROBE,
            cluster: None,
            tasks: TaskTracker::new(),
            liveness: tokio::sync::watch::Sender::new(Default::default()),
            peers_changed: tokio::sync::Notify::new(),
        }
    }

    /// The live link to `cluster`, made (racing QUIC and the fallback)
    /// when there is none or the last one closed.
    pub async fn link(&self, cluster: &str) -> Result<Arc<Link>, GatewayError> {
        let peer = self
            .peers
            .lock()
            .get(cluster)
            .cloned()
            .ok_or_else(|| GatewayError::NoPeer(cluster.to_string()))?;
        let mut slot = match peer.link.try_lock() {
            Ok(slot) => slot,
            // Another stream is linking: wait for it, unless the peer is
            // known unreachable; then fail at once, not queue behind it.
            Err(_) if peer.retry.lock().0 > 0 => {
                return Err(Self::backoff_error(cluster, &peer, Duration::ZERO));
            }
            Err(_) => peer.link.lock().await,
        };
        if let Some(l) = slot.as_ref().filter(|l| !l.is_closed()) {
            if l.transport() == Transport::H2 {
                self.maybe_reprobe(&peer);
            }
            return Ok(l.clone());
        }
        let retry_at = peer.retry.lock().1;
        if let Some(at) = retry_at
            && let Some(wait) = at.checked_duration_since(Instant::now())
        {
            return Err(Self::backoff_error(cluster, &peer, wait));
        }
        *peer.probed.lock() = Instant::now();
        let c = &peer.cfg;
        // 0-RTT only after a QUIC link that did not die of silence.
        let allow_early = matches!(slot.as_deref(), Some(Link::Quic(q)) if !q.timed_out());
        let made = Link::race_with(
            &self.endpoint,
            &self.tls,
            c.udp,
            c.tcp,
            &c.identity,
            HEAD_START,
            allow_early,
            &self.tasks,
        )
        .await;
        let result = match &made {
            Ok(l) => l.transport().as_str(),
            Err(_) => "error",
        };
        self.metrics
            .eastwest_links
            .get_or_create(&PeerResultLabels {
                peer: cluster.to_string(),
                result: result.into(),
            })
            .inc();
        match &made {
            Err(e) => {
                let wait = Self::failed(&peer, e.to_string(), e.is_refusal());
                tracing::info!(cluster, ?wait, "cannot link to the peer gateway: {e}");
            }
            Ok(_) => *peer.retry.lock() = (0, None),
        }
        let link = Arc::new(made?);
        *peer.linked_at.lock() = Some(std::time::SystemTime::now());
        tracing::info!(
            cluster,
            transport = link.transport().as_str(),
            "linked to peer gateway"
        );
        if link.transport() == Transport::H2 {
            self.metrics
                .eastwest_fallbacks
                .get_or_create(&PeerLabels {
                    peer: cluster.to_string(),
                })
                .inc();
        }
        set_transport(&self.metrics, cluster, link.transport());
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Records a failure to reach the peer: the next attempt waits for the
    /// backoff (returned), streams meanwhile fail at once.
    fn failed(peer: &PeerState, error: String, untrusted: bool) -> Duration {
        *peer.last_error.lock() = Some(error);
        peer.last_untrusted
            .store(untrusted, std::sync::atomic::Ordering::Relaxed);
        let mut retry = peer.retry.lock();
        let failures = retry.0.saturating_add(1);
        let wait = backoff(failures, rand::random::<f64>());
        *retry = (failures, Some(Instant::now() + wait));
        wait
    }

    fn backoff_error(cluster: &str, peer: &PeerState, retry_in: Duration) -> GatewayError {
        GatewayError::Backoff {
            cluster: cluster.to_string(),
            retry_in,
            last: peer.last_error.lock().clone().unwrap_or_default(),
            untrusted: peer
                .last_untrusted
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Opens a stream to `authority` in `cluster` on the link to it. A link
    /// that started in 0-RTT and failed before its handshake completed
    /// (the peer lost the ticket, or UDP no longer gets through) is closed
    /// and the stream tried once more on a new link.
    pub async fn open(
        &self,
        cluster: &str,
        authority: &str,
        source: &super::Source,
    ) -> Result<(super::client::LinkSend, super::client::LinkRecv), GatewayError> {
        self.open_on(cluster, authority, source)
            .await
            .map(|o| (o.send, o.recv))
    }

    /// `open`, saying which transport the stream went over and the
    /// application port the peer joined it to.
    pub async fn open_on(
        &self,
        cluster: &str,
        authority: &str,
        source: &super::Source,
    ) -> Result<super::client::Opened, GatewayError> {
        let link = self.link(cluster).await?;
        match self.open_heard(cluster, &link, authority, source).await {
            Err(GatewayError::Link(e @ LinkError::Http3 { .. }))
                if matches!(&*link, Link::Quic(q) if q.early() != super::client::Early::None
                    && q.early() != super::client::Early::Accepted) =>
            {
                tracing::debug!(cluster, "a stream on a 0-RTT link failed ({e}); relinking");
                if let Link::Quic(q) = &*link {
                    q.close();
                }
                let link = self.link(cluster).await?;
                self.open_heard(cluster, &link, authority, source).await
            }
            r => r,
        }
    }

    /// `link.open_target`, unless the peer stays silent: a QUIC link on
    /// which nothing at all is heard for `SILENCE` after a CONNECT went
    /// out is dead (the peer's gateway stopped, or the path is black-holed)
    /// long before the idle timeout says so; it is closed, so the next
    /// stream links anew (or fails fast while the peer is unreachable).
    async fn open_heard(
        &self,
        cluster: &str,
        link: &Link,
        authority: &str,
        source: &super::Source,
    ) -> Result<super::client::Opened, GatewayError> {
        let mut heard = link.heard();
        let open = link.open_target(authority, source);
        tokio::pin!(open);
        if heard.is_none() {
            return Ok(open.await?);
        }
        loop {
            match tokio::time::timeout(SILENCE, &mut open).await {
                Ok(r) => return Ok(r?),
                Err(_) if link.heard() == heard => {
                    let e = GatewayError::Silent {
                        cluster: cluster.to_string(),
                        after: SILENCE,
                    };
                    // Closed once: concurrent streams all saw the silence.
                    if !link.is_closed() {
                        link.close_silent();
                        if let Some(peer) = self.peers.lock().get(cluster) {
                            Self::failed(peer, e.to_string(), false);
                        }
                        tracing::info!(cluster, "the peer gateway is silent: link closed");
                    }
                    return Err(e);
                }
                // Heard from: slow, not dead (its dial to the workload).
                // The next window is judged on its own: a datagram that
                // was in flight when the path died must not make every
                // later window look alive until the idle timeout.
                Err(_) => heard = link.heard(),
            }
        }
    }

    /// On the fallback, tries QUIC again every `reprobe`, in the
    /// background; when it gets through, new streams use it (streams on
    /// the fallback finish there).
    fn maybe_reprobe(&self, peer: &Arc<PeerState>) {
        use std::sync::atomic::Ordering;
        {
            let mut at = peer.probed.lock();
            if at.elapsed() < self.reprobe || peer.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            *at = Instant::now();
        }
        let (peer, endpoint, metrics, tasks) = (
            peer.clone(),
            self.endpoint.clone(),
            self.metrics.clone(),
            self.tasks.clone(),
        );
        self.tasks.spawn(async move {
            let c = &peer.cfg;
            match PeerLink::connect_with(&endpoint, c.udp, &c.identity, false, &tasks).await {
                Ok(l) => {
                    tracing::info!(cluster = %c.cluster, "QUIC gets through again: leaving the TCP fallback");
                    *peer.link.lock().await = Some(Arc::new(Link::Quic(l)));
                    *peer.linked_at.lock() = Some(std::time::SystemTime::now());
                    set_transport(&metrics, &c.cluster, Transport::Quic);
                }
                Err(e) => tracing::debug!(cluster = %c.cluster, "QUIC still unavailable: {e}"),
            }
            peer.probing.store(false, Ordering::Release);
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no link to cluster {0:?} (not a linked peer)")]
    NoPeer(String),
    #[error(
        "the peer gateway of {cluster} is unreachable; next attempt in {retry_in:?} (last: {last})"
    )]
    Backoff {
        cluster: String,
        retry_in: Duration,
        last: String,
        /// The last failure was one of trust.
        untrusted: bool,
    },
    #[error(
        "the peer gateway of {cluster} was silent for {after:?} after a CONNECT: the link is closed and made anew on the next stream"
    )]
    Silent { cluster: String, after: Duration },
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl GatewayError {
    /// Whether the link failed because the gateways do not trust each
    /// other's certificates (now, or on the last attempt).
    pub fn untrusted(&self) -> bool {
        match self {
            GatewayError::Link(e) => e.is_refusal(),
            GatewayError::Backoff { untrusted, .. } => *untrusted,
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoPeer(_) => StatusCode::NOT_FOUND,
            GatewayError::Backoff { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Silent { .. } | GatewayError::Link(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_peers_add_to_and_override_the_static_ones() {
        use isthmus_api::model;
        let peer = |cluster: &str, ip: &str| PeerConfig {
            cluster: cluster.into(),
            udp: format!("{ip}:15443").parse().unwrap(),
            tcp: format!("{ip}:15443").parse().unwrap(),
            identity: format!("spiffe://{cluster}.local/ns/isthmus-system/sa/isthmus-eastwest"),
        };
        let fixed = vec![peer("eu-west", "10.0.0.1"), peer("us-east", "10.0.0.2")];
        assert_eq!(merge_peers(&fixed, None), fixed);
        let wire = |cluster: &str, ip: &str| {
            let p = peer(cluster, ip);
            model::PeerGateway {
                cluster: p.cluster,
                udp: p.udp.to_string(),
                tcp: p.tcp.to_string(),
                identity: p.identity,
            }
        };
        let cfg = model::EastWest {
            peers: vec![
                wire("us-east", "10.9.9.9"),
                wire("ap-south", "10.0.0.3"),
                model::PeerGateway {
                    cluster: "broken".into(),
                    udp: "nowhere".into(),
                    ..Default::default()
                },
            ],
            exports: Vec::new(),
        };
        assert_eq!(
            merge_peers(&fixed, Some(&cfg)),
            vec![
                peer("eu-west", "10.0.0.1"),
                peer("us-east", "10.9.9.9"),
                peer("ap-south", "10.0.0.3")
            ]
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_ceiling() {
        let mid = |n| backoff(n, 0.5);
        assert_eq!(mid(1), BACKOFF_MIN);
        assert_eq!(mid(2), BACKOFF_MIN * 2);
        assert_eq!(mid(3), BACKOFF_MAX.min(BACKOFF_MIN * 4));
        assert_eq!(mid(4), BACKOFF_MAX);
        assert_eq!(mid(20), BACKOFF_MAX);
        assert_eq!(mid(u32::MAX), BACKOFF_MAX);
        assert_eq!(backoff(1, 0.0), BACKOFF_MIN.mul_f64(0.8));
        assert_eq!(backoff(20, 0.999_999), BACKOFF_MAX.mul_f64(1.199_999_6));
        assert_eq!(backoff(1, 7.0), BACKOFF_MIN.mul_f64(1.2), "jitter clamped");
    }
}
