//! `Link::race`: QUIC with a head start, the fallback racing it; a wrong
//! peer identity is decisive; a refused fallback gives QUIC only a grace.

use super::*;

impl Link {
    /// Connects to the peer at `udp` (QUIC) and `tcp` (fallback): QUIC
    /// first; if it is not up within `head_start`, TCP races it and the
    /// first to succeed wins (QUIC when both are ready).
    pub async fn race(
        endpoint: &quinn::Endpoint,
        tls: &isthmus_mesh::tls::MeshTls,
        udp: SocketAddr,
        tcp: SocketAddr,
        expected: &str,
        head_start: std::time::Duration,
    ) -> Result<Link, LinkError> {
        let tasks = TaskTracker::new();
        Self::race_with(endpoint, tls, udp, tcp, expected, head_start, false, &tasks).await
    }

    /// `race`, letting QUIC resume in 0-RTT (`PeerLink::connect_with`),
    /// the connections' tasks in `tasks`.
    #[allow(clippy::too_many_arguments)] // the peer's addresses and identity, and the race's knobs
    pub async fn race_with(
        endpoint: &quinn::Endpoint,
        tls: &isthmus_mesh::tls::MeshTls,
        udp: SocketAddr,
        tcp: SocketAddr,
        expected: &str,
        head_start: std::time::Duration,
        allow_early: bool,
        tasks: &TaskTracker,
    ) -> Result<Link, LinkError> {
        let mut quic = Box::pin(PeerLink::connect_with(
            endpoint,
            udp,
            expected,
            allow_early,
            tasks,
        ));
        let mut quic_failed = false;
        tokio::select! {
            biased;
            r = &mut quic => match r {
                Ok(l) => return Ok(Link::Quic(l)),
                // UDP got through and the certificates did not: the
                // fallback cannot help.
                Err(e) if e.is_refusal() => return Err(e),
                Err(e) => {
                    tracing::info!(%udp, "QUIC to the peer failed, trying the TCP fallback: {e}");
                    quic_failed = true;
                }
            },
            _ = tokio::time::sleep(head_start) => {}
        }
        let mut h2 = Box::pin(H2Link::connect_with(tls, tcp, expected, tasks));
        if quic_failed {
            return h2.await.map(Link::H2);
        }
        tokio::select! {
            biased;
            r = &mut quic => match r {
                Ok(l) => Ok(Link::Quic(l)),
                Err(e) if e.is_refusal() => Err(e),
                Err(_) => h2.await.map(Link::H2),
            },
            r = &mut h2 => match r {
                Ok(l) => Ok(Link::H2(l)),
                // The peer is not who we link with, or not trusted:
                // decisive, whatever QUIC would say.
                Err(e) if e.is_refusal() || matches!(e, LinkError::WrongPeer { .. }) => Err(e),
                // Refused: the peer's gateway is most likely down; QUIC
                // gets a little longer (the fallback may just not be
                // exposed), not its whole handshake timeout.
                Err(e @ LinkError::NotListening { .. }) => {
                    match tokio::time::timeout(REFUSED_GRACE, quic).await {
                        Ok(Ok(l)) => Ok(Link::Quic(l)),
                        _ => Err(e),
                    }
                }
                Err(e) => quic.await.map(Link::Quic).map_err(|_| e),
            },
        }
    }

    pub fn transport(&self) -> Transport {
        match self {
            Link::Quic(_) => Transport::Quic,
            Link::H2(_) => Transport::H2,
        }
    }

    /// Datagrams heard from the peer (QUIC); None on the TCP fallback,
    /// where TCP itself tells a dead peer.
    pub fn heard(&self) -> Option<u64> {
        match self {
            Link::Quic(q) => Some(q.heard()),
            Link::H2(_) => None,
        }
    }

    /// Closes a QUIC link whose peer went silent: its streams end, the
    /// next open links anew. (The fallback's TCP connection ends by itself
    /// when the peer dies.)
    pub fn close_silent(&self) {
        if let Link::Quic(q) = self {
            q.close_silent();
        }
    }

    pub async fn open(&self, authority: &str) -> Result<(LinkSend, LinkRecv), LinkError> {
        self.open_from(authority, &crate::eastwest::Source::default())
            .await
    }

    /// `open`, with headers naming the stream's source.
    pub async fn open_from(
        &self,
        authority: &str,
        source: &crate::eastwest::Source,
    ) -> Result<(LinkSend, LinkRecv), LinkError> {
        self.open_target(authority, source)
            .await
            .map(|o| (o.send, o.recv))
    }

    /// `open_from`, with the application port the peer joined the stream
    /// to, when it said.
    pub async fn open_target(
        &self,
        authority: &str,
        source: &crate::eastwest::Source,
    ) -> Result<Opened, LinkError> {
        match self {
            Link::Quic(l) => {
                let t = l.open_from(authority, source).await?;
                let (s, r) = t.stream.split();
                Ok(Opened {
                    send: LinkSend::Quic(Box::new(s)),
                    recv: LinkRecv::Quic(Box::new(r)),
                    transport: Transport::Quic,
                    target_port: t.target_port,
                })
            }
            Link::H2(l) => {
                let (s, target_port) = l.open_target(authority, source).await?;
                let (w, r) = s.into_split();
                Ok(Opened {
                    send: LinkSend::H2(w, l.conn.clone()),
                    recv: LinkRecv::H2(r),
                    transport: Transport::H2,
                    target_port,
                })
            }
        }
    }
}
