//! What the gateway says about its peers: the transport gauges, /status
//! (per peer: state, transport, RTT, failures) and the periodic stats.

use super::*;

/// Marks `transport` as the one in use for `peer`.
pub(super) fn set_transport(metrics: &Metrics, peer: &str, transport: Transport) {
    for t in [Transport::Quic, Transport::H2] {
        metrics
            .eastwest_transport
            .get_or_create(&PeerTransportLabels {
                peer: peer.to_string(),
                transport: t.as_str(),
            })
            .set(i64::from(t == transport));
    }
}

impl Gateway {
    /// The peers now configured (a snapshot; the lock is not held).
    fn peer_states(&self) -> Vec<Arc<PeerState>> {
        self.peers.lock().values().cloned().collect()
    }

    /// Each peer's state for the admin port's /eastwest view: transport in
    /// use (or none yet), path figures on QUIC, open streams, the last
    /// failure to link.
    pub fn status(&self) -> serde_json::Value {
        let mut peers = self.peer_states();
        peers.sort_by(|a, b| a.cfg.cluster.cmp(&b.cfg.cluster));
        let live = self.liveness.borrow().clone();
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                let c = &p.cfg;
                let link = match p.link.try_lock() {
                    Ok(l) => l.clone().filter(|l| !l.is_closed()),
                    Err(_) => None, // being made right now
                };
                let open = self
                    .metrics
                    .eastwest_open_streams
                    .get_or_create(&PeerLabels {
                        peer: c.cluster.clone(),
                    })
                    .get();
                let mut v = serde_json::json!({
                    "cluster": c.cluster,
                    "identity": c.identity,
                    "udp": c.udp.to_string(),
                    "tcp": c.tcp.to_string(),
                    "transport": link.as_ref().map(|l| l.transport().as_str()),
                    "openStreams": open,
                    "linkedAt": p.linked_at.lock()
                        .filter(|_| link.is_some())
                        .map(crate::telemetry::accesslog::rfc3339),
                    "lastError": *p.last_error.lock(),
                });
                // What this cluster's sidecars are told (not yet judged:
                // absent).
                if let Some(l) = live.peers.get(&c.cluster) {
                    v["liveness"] = serde_json::json!({
                        "up": l.up,
                        "reason": l.reason,
                        "sinceUnixMs": l.since_unix_ms,
                    });
                }
                if let Some(l) = &link
                    && let Link::Quic(q) = &**l
                {
                    let s = q.stats();
                    v["rttMs"] = serde_json::json!(s.path.rtt.as_secs_f64() * 1e3);
                    v["congestionWindowBytes"] = serde_json::json!(s.path.cwnd);
                    v["lostPackets"] = serde_json::json!(s.path.lost_packets);
                    v["sentPackets"] = serde_json::json!(s.path.sent_packets);
                    v["zeroRtt"] = serde_json::json!(format!("{:?}", q.early()).to_lowercase());
                }
                v
            })
            .collect();
        serde_json::json!({ "cluster": self.cluster, "peers": peers })
    }

    /// Samples each QUIC link's RTT, congestion window and losses into the
    /// metrics every `every`, until `stop`.
    pub fn spawn_stats(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let me = self.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                for p in me.peer_states() {
                    let Some(link) = p.link.lock().await.clone() else {
                        continue;
                    };
                    if let Link::Quic(q) = &*link {
                        let s = q.stats();
                        let l = PeerLabels {
                            peer: p.cfg.cluster.clone(),
                        };
                        let m = &me.metrics;
                        m.eastwest_rtt_seconds
                            .get_or_create(&l)
                            .set(s.path.rtt.as_secs_f64());
                        m.eastwest_cwnd_bytes
                            .get_or_create(&l)
                            .set(i64::try_from(s.path.cwnd).unwrap_or(i64::MAX));
                        m.eastwest_lost_packets
                            .get_or_create(&l)
                            .set(i64::try_from(s.path.lost_packets).unwrap_or(i64::MAX));
                    }
                }
            }
        });
    }
}
