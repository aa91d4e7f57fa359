//! The QUIC link: one connection to a peer gateway, its identity checked
//! when the handshake completes, 0-RTT resumption when the last link to
//! the peer did not time out, CONNECT streams on HTTP/3.

use super::*;

/// A live HTTP/3 connection to one peer gateway.
pub struct PeerLink {
    addr: SocketAddr,
    send: h3::client::SendRequest<OpenStreams, Bytes>,
    conn: quinn::Connection,
    early: Arc<std::sync::atomic::AtomicU8>,
    /// Closed because the peer went silent (`close_silent`).
    silent: Arc<std::sync::atomic::AtomicBool>,
}

/// What became of a link's 0-RTT (`PeerLink::early`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    /// A full handshake: no ticket from this peer yet (or it expired).
    None,
    /// Resumed with 0-RTT; the handshake has not completed yet.
    Pending,
    /// The peer took the early data.
    Accepted,
    /// The peer refused it (it lost the ticket, e.g. restarted): the link
    /// is closed and the next stream makes a new one.
    Rejected,
}

impl Early {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Early::Pending,
            2 => Early::Accepted,
            3 => Early::Rejected,
            _ => Early::None,
        }
    }
}

/// One CONNECT stream to the peer, as send and receive halves.
pub struct TunnelStream {
    pub stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    /// The application port the peer joined the stream to, when it said.
    pub target_port: Option<u16>,
}

impl TunnelStream {
    pub async fn send(&mut self, data: Bytes) -> Result<(), h3::error::StreamError> {
        self.stream.send_data(data).await
    }

    /// The next received bytes; None at the end of the stream.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, h3::error::StreamError> {
        Ok(self
            .stream
            .recv_data()
            .await?
            .map(|mut b| b.copy_to_bytes(b.remaining())))
    }

    pub async fn finish(&mut self) -> Result<(), h3::error::StreamError> {
        self.stream.finish().await
    }
}

impl PeerLink {
    /// Connects to the peer gateway at `addr`, which must prove `expected`
    /// (a full handshake).
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: &str,
    ) -> Result<Self, LinkError> {
        Self::connect_with(endpoint, addr, expected, false, &TaskTracker::new()).await
    }

    /// `connect`, resuming in 0-RTT when `allow_early` and a ticket from
    /// this peer (this address and identity) is at hand: the link is
    /// returned at once and its first streams go before the handshake
    /// completes. Only when the path is known good (the last link did not
    /// time out), since a 0-RTT link cannot tell the race that UDP is
    /// blocked until its handshake fails. The connection's tasks (its
    /// HTTP/3 driver, the 0-RTT check) go to `tasks`: they end when the
    /// connection closes.
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: &str,
        allow_early: bool,
        tasks: &TaskTracker,
    ) -> Result<Self, LinkError> {
        let mut went_early = false;
        match Self::connect_once(
            endpoint,
            addr,
            expected,
            allow_early,
            tasks,
            &mut went_early,
        )
        .await
        {
            // The peer refused the 0-RTT data before HTTP/3 was set up
            // (it restarted and lost its ticket keys): the path is good,
            // the ticket is not; a full handshake, at once, rather than
            // failing the link and falling back to TCP.
            Err(e @ LinkError::Http3 { .. }) if went_early => {
                tracing::info!(%addr, "0-RTT refused while setting up HTTP/3 ({e}); full handshake");
                Self::connect_once(endpoint, addr, expected, false, tasks, &mut went_early).await
            }
            r => r,
        }
    }

    /// One attempt of `connect_with`; `went_early` says whether it
    /// resumed in 0-RTT.
    async fn connect_once(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: &str,
        allow_early: bool,
        tasks: &TaskTracker,
        went_early: &mut bool,
    ) -> Result<Self, LinkError> {
        let fail = |reason: String| LinkError::Connect {
            addr,
            transport: "QUIC (UDP)",
            reason,
        };
        let connecting = endpoint
            .connect(addr, &session_name(addr, expected))
            .map_err(|e| fail(e.to_string()))?;
        let early = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let zero_rtt = if allow_early {
            connecting.into_0rtt()
        } else {
            Err(connecting)
        };
        let conn = match zero_rtt {
            // A ticket from this peer: streams can go now, in 0-RTT. Only
            // the gateway that issued the ticket can read them, and it was
            // verified as `expected` when it did; the handshake is checked
            // again when it completes, and a refusal closes the link.
            Ok((conn, accepted)) => {
                *went_early = true;
                early.store(1, std::sync::atomic::Ordering::Release);
                let (c, e, expected) = (conn.clone(), early.clone(), expected.to_string());
                tasks.spawn(async move {
                    let ok = tokio::time::timeout(HANDSHAKE_TIMEOUT, accepted)
                        .await
                        .unwrap_or(false);
                    let who = peer_id(&c).map(|i| i.to_string()).unwrap_or_default();
                    if !ok {
                        e.store(3, std::sync::atomic::Ordering::Release);
                        tracing::info!(%addr, "0-RTT refused by the peer gateway; relinking");
                        c.close(0x0102u32.into(), b"0-RTT refused");
                    } else if who != expected {
                        e.store(3, std::sync::atomic::Ordering::Release);
                        tracing::warn!(%addr, got = %who, %expected, "resumed peer is not who we link with");
                        c.close(0x0101u32.into(), b"wrong peer");
                    } else {
                        e.store(2, std::sync::atomic::Ordering::Release);
                    }
                });
                conn
            }
            Err(connecting) => {
                let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                    .await
                    .map_err(|_| {
                        fail(format!(
                            "no QUIC handshake within {HANDSHAKE_TIMEOUT:?} (UDP blocked?)"
                        ))
                    })?
                    .map_err(|e| quic_refusal(addr, &e).unwrap_or_else(|| fail(e.to_string())))?;
                let got = peer_id(&conn).map(|i| i.to_string()).unwrap_or_default();
                if got != expected {
                    conn.close(0x0101u32.into(), b"wrong peer");
                    return Err(LinkError::WrongPeer {
                        addr,
                        got,
                        expected: expected.into(),
                    });
                }
                conn
            }
        };
        // The peer verifies our certificate after our side of the
        // handshake is done: its refusal closes the connection here.
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| {
                conn.close_reason()
                    .and_then(|r| quic_refusal(addr, &r))
                    .unwrap_or_else(|| LinkError::Http3 {
                        addr,
                        reason: e.to_string(),
                    })
            })?;
        tasks.spawn(async move {
            let e = driver.wait_idle().await;
            tracing::debug!(%addr, "peer gateway connection closed: {e}");
        });
        Ok(Self {
            addr,
            send,
            conn,
            early,
            silent: Default::default(),
        })
    }

    /// Whether the connection ended because the path went silent (idle
    /// timeout): the next link should not assume UDP gets through.
    pub fn timed_out(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::Acquire)
            || matches!(
                self.conn.close_reason(),
                Some(quinn::ConnectionError::TimedOut)
            )
    }

    /// Closes the connection because the peer stopped answering: like an
    /// idle timeout, the next link will not try 0-RTT.
    pub fn close_silent(&self) {
        self.silent
            .store(true, std::sync::atomic::Ordering::Release);
        self.close();
    }

    /// Closes the connection (its streams end).
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"closed");
    }

    /// Whether this link started in 0-RTT, and how that went.
    pub fn early(&self) -> Early {
        Early::from_u8(self.early.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Opens a CONNECT stream to `authority` (`<service>.<ns>:<port>`).
    ///
    /// h3 0.0.8 adds `:scheme` and `:path` to CONNECT, which RFC 9114
    /// §4.4 forbids; its server accepts both forms, so our gateways
    /// interoperate (the upstream fix is not released; STACK.md).
    pub async fn open(&self, authority: &str) -> Result<TunnelStream, LinkError> {
        self.open_from(authority, &crate::eastwest::Source::default())
            .await
    }

    /// `open`, with headers naming the stream's source.
    pub async fn open_from(
        &self,
        authority: &str,
        source: &crate::eastwest::Source,
    ) -> Result<TunnelStream, LinkError> {
        // A refusal that closed the connection says why by name.
        let h3err = |e: h3::error::StreamError| {
            self.conn
                .close_reason()
                .and_then(|r| quic_refusal(self.addr, &r))
                .unwrap_or_else(|| LinkError::Http3 {
                    addr: self.addr,
                    reason: e.to_string(),
                })
        };
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|e| LinkError::Refused {
                addr: self.addr,
                authority: authority.into(),
                status: StatusCode::BAD_REQUEST,
                reason: e.to_string(),
            })?;
        source.write(req.headers_mut());
        let mut stream = self.send.clone().send_request(req).await.map_err(h3err)?;
        let resp = stream.recv_response().await.map_err(h3err)?;
        if resp.status() != StatusCode::OK {
            return Err(LinkError::Refused {
                addr: self.addr,
                authority: authority.into(),
                status: resp.status(),
                reason: crate::eastwest::refusal_reason(resp.headers()),
            });
        }
        Ok(TunnelStream {
            stream,
            target_port: crate::eastwest::target_port(resp.headers()),
        })
    }

    pub fn rtt(&self) -> std::time::Duration {
        self.conn.rtt()
    }

    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// QUIC path statistics (RTT, congestion window, losses).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Datagrams received so far: unchanged while the peer is silent.
    pub fn heard(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }
}
