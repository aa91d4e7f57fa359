//! Peer liveness: the gateway keeps a link to every peer (made at once,
//! not on first use) and judges each peer up while its link is heard from.
//! A QUIC link keeps the path busy (keep-alive every `quic::KEEP_ALIVE`),
//! so silence for `DEAD_AFTER` is a dead gateway or a black-holed path:
//! the link is closed and the peer is down until a new link is made. The
//! verdicts go to this cluster's sidecars on the local entry's liveness
//! stream (`PEERS_AUTHORITY`), which stop choosing a down cluster at once.

use super::*;
use isthmus_api::eastwest::v1::{PeerLiveness, PeerState as WirePeer};

/// Silence that makes a QUIC peer down. With keep-alives every 200 ms,
/// four in a row (and QUIC's retransmissions) must go unanswered: on a
/// path with 1 % loss each way that is about one in 10^7 windows.
pub const DEAD_AFTER: Duration = Duration::from_millis(800);

/// How often each link is looked at.
pub const TICK: Duration = Duration::from_millis(50);

/// What one look at a link says (pure): `heard` datagrams now against
/// `last` (the count and when it last grew).
pub fn judge(heard: Option<u64>, last: (u64, Instant), now: Instant) -> Verdict {
    match heard {
        // The TCP fallback: TCP itself says when its peer is gone.
        None => Verdict::Up,
        Some(h) if h != last.0 => Verdict::Heard(h),
        Some(_) if now.saturating_duration_since(last.1) >= DEAD_AFTER => Verdict::Silent,
        Some(_) => Verdict::Up,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Up,
    /// New datagrams: up, and the count to remember.
    Heard(u64),
    /// Nothing for `DEAD_AFTER`: down.
    Silent,
}

impl Gateway {
    /// Records `cluster`'s liveness; subscribers hear of a change only.
    fn set_live(&self, cluster: &str, up: bool, reason: &str) {
        self.liveness.send_if_modified(|l| {
            if l.peers.get(cluster).is_some_and(|p| p.up == up) {
                return false;
            }
            if up {
                tracing::info!(cluster, "peer gateway up");
            } else {
                tracing::warn!(cluster, "peer gateway down: {reason}");
            }
            l.peers.insert(
                cluster.to_string(),
                WirePeer {
                    up,
                    reason: reason.to_string(),
                    since_unix_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                },
            );
            true
        });
    }

    /// The peers' liveness now, and its changes.
    pub fn liveness(&self) -> tokio::sync::watch::Receiver<PeerLiveness> {
        self.liveness.subscribe()
    }

    /// Keeps one watcher per configured peer until `stop` (peers come and
    /// go with the configuration: woken by `set_peers`).
    pub fn watch_peers(self: Arc<Self>, stop: CancellationToken) {
        let tasks = self.tasks.clone();
        tasks.spawn(async move {
            let mut watchers: HashMap<String, CancellationToken> = HashMap::new();
            loop {
                // Armed before the peers are read: a change meanwhile is
                // not missed.
                let changed = self.peers_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let configured: Vec<String> = self.peers.lock().keys().cloned().collect();
                watchers.retain(|cluster, token| {
                    let keep = configured.contains(cluster);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                self.liveness.send_if_modified(|l| {
                    let before = l.peers.len();
                    l.peers.retain(|c, _| configured.contains(c));
                    l.peers.len() != before
                });
                for cluster in configured {
                    if !watchers.contains_key(&cluster) {
                        let token = stop.child_token();
                        watchers.insert(cluster.clone(), token.clone());
                        let me = self.clone();
                        self.tasks
                            .spawn(async move { me.watch_peer(cluster, token).await });
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed => {}
                }
            }
        });
    }

    /// Links with `cluster` and watches the link until `stop`.
    async fn watch_peer(&self, cluster: String, stop: CancellationToken) {
        loop {
            // The peer as configured now: a changed address is another
            // peer, and its link the one to watch.
            let Some(peer) = self.peers.lock().get(&cluster).cloned() else {
                return;
            };
            let link = tokio::select! {
                _ = stop.cancelled() => return,
                l = self.link(&cluster) => l,
            };
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    self.set_live(&cluster, false, &e.to_string());
                    let wait = match &e {
                        GatewayError::Backoff { retry_in, .. } => (*retry_in).max(TICK),
                        _ => TICK,
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            self.set_live(&cluster, true, "");
            let mut last = (link.heard().unwrap_or_default(), Instant::now());
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(TICK) => {}
                }
                let current = self.peers.lock().get(&cluster).cloned();
                if link.is_closed() || !current.is_some_and(|p| Arc::ptr_eq(&p, &peer)) {
                    // A re-probe may have put QUIC in its place, or the
                    // peer's configuration changed: the next `link` says.
                    break;
                }
                let now = Instant::now();
                match judge(link.heard(), last, now) {
                    Verdict::Up => {}
                    Verdict::Heard(h) => last = (h, now),
                    Verdict::Silent => {
                        let why = format!("silent for {DEAD_AFTER:?}");
                        link.close_silent();
                        if let Some(peer) = self.peers.lock().get(&cluster) {
                            Self::failed(peer, why.clone(), false);
                        }
                        self.set_live(&cluster, false, &why);
                        break;
                    }
                }
            }
        }
    }

    /// The local entry's liveness stream for one sidecar: the whole state,
    /// then every change, until the sidecar goes or the gateway stops.
    pub(super) async fn serve_liveness(&self, inc: isthmus_mesh::h2connect::Incoming) {
        use prost::Message;
        use tokio::io::AsyncWriteExt;
        let mut stream = match inc.accept() {
            Ok(s) => s,
            Err(e) => return tracing::debug!("liveness stream not established: {e}"),
        };
        let mut states = self.liveness.subscribe();
        loop {
            let bytes = states.borrow_and_update().encode_length_delimited_to_vec();
            if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_for_dead_after_is_down_and_any_datagram_is_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(judge(None, (0, t0), at(10_000)), Verdict::Up, "fallback");
        assert_eq!(judge(Some(5), (5, t0), at(799)), Verdict::Up);
        assert_eq!(judge(Some(5), (5, t0), at(800)), Verdict::Silent);
        assert_eq!(judge(Some(6), (5, t0), at(5_000)), Verdict::Heard(6));
        assert_eq!(
            judge(Some(5), (5, t0), t0),
            Verdict::Up,
            "a clock that did not move"
        );
    }
}
