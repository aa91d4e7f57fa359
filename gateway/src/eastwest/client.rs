//! The sending side: one QUIC connection to a peer gateway, checked to be
//! that peer's identity, carrying CONNECT streams.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use h3_quinn::OpenStreams;
use http::{Method, Request, StatusCode};

use super::quic::peer_id;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "cannot reach peer gateway {addr} over {transport}: {reason} (check its address in the peer list and that the path lets it through)"
    )]
    Connect {
        addr: SocketAddr,
        transport: &'static str,
        reason: String,
    },
    /// The handshake got through but one side does not trust the other's
    /// certificate: the link's trust bundle is not the peer's (or ours is
    /// not in the peer's). Decisive: the fallback would fail the same way.
    #[error(
        "peer gateway {addr} and this one do not trust each other over {transport}: {reason} (check the trust bundle of the link on both sides)"
    )]
    Untrusted {
        addr: SocketAddr,
        transport: &'static str,
        reason: String,
    },
    /// The peer trusts our certificate but does not admit our identity
    /// (TLS alert access_denied). Decisive, like `Untrusted`.
    #[error(
        "peer gateway {addr} does not admit this gateway over {transport} (TLS alert access_denied): that cluster needs a ClusterLink to this one, or this gateway's identity in its admit list"
    )]
    NotAdmitted {
        addr: SocketAddr,
        transport: &'static str,
    },
    /// Nothing listens on the peer's TCP fallback port (connection
    /// refused): its gateway is most likely down.
    #[error(
        "nothing listens at peer gateway {addr} (TCP fallback: connection refused): is that cluster's gateway running?"
    )]
    NotListening { addr: SocketAddr },
    #[error("peer gateway {addr} is {got}, expected {expected}")]
    WrongPeer {
        addr: SocketAddr,
        got: String,
        expected: String,
    },
    #[error(
        "HTTP/3 with peer gateway {addr} failed: {reason} (the link is remade for the next stream)"
    )]
    Http3 { addr: SocketAddr, reason: String },
    #[error(
        "HTTP/2 on the TCP fallback with peer gateway {addr} failed: {reason} (the link is remade for the next stream)"
    )]
    Http2 { addr: SocketAddr, reason: String },
    #[error("peer gateway {addr} refused CONNECT {authority}: {status} {reason}")]
    Refused {
        addr: SocketAddr,
        authority: String,
        status: StatusCode,
        reason: String,
    },
}

impl LinkError {
    /// The peers' certificates or identities were refused, one side or
    /// the other: decisive, the other transport would fail the same way.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LinkError::Untrusted { .. } | LinkError::NotAdmitted { .. }
        )
    }
}

/// How much longer QUIC may take once the peer's TCP fallback refused
/// the connection (`Link::race_with`).
pub const REFUSED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// TLS alerts that say a certificate was not accepted (RFC 8446 6.2).
const CERTIFICATE_ALERTS: [u8; 6] = [42, 43, 44, 45, 46, 48];

/// The TLS alert of a peer that verified our certificate and does not
/// admit its identity (RFC 8446 6.2: access_denied).
const ACCESS_DENIED: u8 = 49;

/// Whether a QUIC connection was closed because the peer does not admit us.
fn quic_not_admitted(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(ACCESS_DENIED)
}

/// Whether a TLS (TCP) connection failed because the peer does not admit us.
fn tls_not_admitted(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(
            |e| matches!(e, rustls::Error::AlertReceived(a) if u8::from(*a) == ACCESS_DENIED),
        )
}

/// Whether a QUIC handshake failed on trust: our verifier refused the
/// peer's certificate, or the peer sent a certificate alert.
pub fn quic_trust_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    CERTIFICATE_ALERTS
        .iter()
        .any(|a| code == quinn::TransportErrorCode::crypto(*a))
}

/// A refusal of trust or admission over `transport`, if the error is one.
fn refusal(
    addr: SocketAddr,
    transport: &'static str,
    (not_admitted, untrusted): (bool, bool),
    e: &dyn std::fmt::Display,
) -> Option<LinkError> {
    if not_admitted {
        Some(LinkError::NotAdmitted { addr, transport })
    } else if untrusted {
        Some(LinkError::Untrusted {
            addr,
            transport,
            reason: e.to_string(),
        })
    } else {
        None
    }
}

fn quic_refusal(addr: SocketAddr, e: &quinn::ConnectionError) -> Option<LinkError> {
    let kind = (quic_not_admitted(e), quic_trust_failure(e));
    refusal(addr, "QUIC (UDP)", kind, e)
}

fn tls_refusal(addr: SocketAddr, e: &std::io::Error) -> Option<LinkError> {
    refusal(
        addr,
        "the TCP fallback",
        (tls_not_admitted(e), tls_trust_failure(e)),
        e,
    )
}

/// Whether a TLS (TCP) handshake failed on trust, either side.
pub fn tls_trust_failure(e: &std::io::Error) -> bool {
    let Some(e) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    match e {
        rustls::Error::InvalidCertificate(_) => true,
        rustls::Error::AlertReceived(a) => CERTIFICATE_ALERTS.contains(&u8::from(*a)),
        _ => false,
    }
}

/// The TLS server name for a peer: our verifier checks SPIFFE IDs, not
/// names, so the name only keys the session cache — per address and
/// expected identity, so a ticket is never spent (early data never sent)
/// on another peer than the one it came from.
fn session_name(addr: SocketAddr, expected: &str) -> String {
    let key = format!("{addr}\0{expected}");
    format!(
        "p{}.peer.isthmus",
        isthmus_api::resource::version_of(key.as_bytes())
    )
}

/// How long a QUIC handshake may take before the peer counts as
/// unreachable over UDP.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
        Self::connect_with(endpoint, addr, expected, false).await
    }

    /// `connect`, resuming in 0-RTT when `allow_early` and a ticket from
    /// this peer (this address and identity) is at hand: the link is
    /// returned at once and its first streams go before the handshake
    /// completes. Only when the path is known good (the last link did not
    /// time out), since a 0-RTT link cannot tell the race that UDP is
    /// blocked until its handshake fails.
    pub async fn connect_with(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: &str,
        allow_early: bool,
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
                early.store(1, std::sync::atomic::Ordering::Release);
                let (c, e, expected) = (conn.clone(), early.clone(), expected.to_string());
                tokio::spawn(async move {
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
        tokio::spawn(async move {
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
        self.open_from(authority, &super::Source::default()).await
    }

    /// `open`, with headers naming the stream's source.
    pub async fn open_from(
        &self,
        authority: &str,
        source: &super::Source,
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
                reason: super::refusal_reason(resp.headers()),
            });
        }
        Ok(TunnelStream {
            stream,
            target_port: super::target_port(resp.headers()),
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

/// Which transport a link runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/3 over QUIC (UDP).
    Quic,
    /// The fallback: HTTP/2 over TLS on TCP.
    H2,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::H2 => "h2",
        }
    }
}

/// The HTTP/2-over-TLS fallback connection to a peer gateway.
pub struct H2Link {
    addr: SocketAddr,
    conn: isthmus_mesh::h2connect::Client,
}

impl H2Link {
    pub async fn connect(
        tls: &isthmus_mesh::tls::MeshTls,
        addr: SocketAddr,
        expected: &str,
    ) -> Result<Self, LinkError> {
        let fail = |reason: String| LinkError::Connect {
            addr,
            transport: "the TCP fallback",
            reason,
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                LinkError::NotListening { addr }
            } else {
                fail(e.to_string())
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let s = tokio_rustls::TlsConnector::from(tls.client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| tls_refusal(addr, &e).unwrap_or_else(|| fail(e.to_string())))?;
        let got = isthmus_mesh::tls::peer_id(s.get_ref().1)
            .map(|i| i.to_string())
            .unwrap_or_default();
        if got != expected {
            return Err(LinkError::WrongPeer {
                addr,
                got,
                expected: expected.into(),
            });
        }
        // TLS 1.3: the peer verifies our certificate after our side of the
        // handshake is done. Its first bytes (HTTP/2 SETTINGS) say it
        // accepted us; an alert says why not, here rather than on a stream.
        let s = first_bytes(s, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| tls_refusal(addr, &e).unwrap_or_else(|| fail(e.to_string())))?;
        let (conn, driver) =
            isthmus_mesh::h2connect::Client::handshake(s, &super::quic::fallback_settings())
                .await
                .map_err(|e| LinkError::Http2 {
                    addr,
                    reason: e.to_string(),
                })?;
        tokio::spawn(driver);
        Ok(Self { addr, conn })
    }

    pub async fn open(
        &self,
        authority: &str,
        source: &super::Source,
    ) -> Result<isthmus_mesh::h2connect::H2Stream, LinkError> {
        self.open_target(authority, source).await.map(|(s, _)| s)
    }

    /// `open`, with the application port the peer said it joined.
    pub async fn open_target(
        &self,
        authority: &str,
        source: &super::Source,
    ) -> Result<(isthmus_mesh::h2connect::H2Stream, Option<u16>), LinkError> {
        let failed = |status: StatusCode, reason: String| LinkError::Refused {
            addr: self.addr,
            authority: authority.into(),
            status,
            reason,
        };
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| failed(StatusCode::BAD_REQUEST, e.to_string()))?;
        source.write(req.headers_mut());
        let (resp, stream) = self.conn.open(req).await.map_err(|e| LinkError::Http2 {
            addr: self.addr,
            reason: e.to_string(),
        })?;
        if resp.status() != StatusCode::OK {
            return Err(failed(resp.status(), super::refusal_reason(resp.headers())));
        }
        Ok((stream, super::target_port(resp.headers())))
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// A stream opened on a link.
pub struct Opened {
    pub send: LinkSend,
    pub recv: LinkRecv,
    pub transport: Transport,
    /// The application port the peer joined the stream to, when it said.
    pub target_port: Option<u16>,
}

/// A link to a peer gateway on whichever transport got through.
pub enum Link {
    Quic(PeerLink),
    H2(H2Link),
}

/// One CONNECT stream on a link, as a byte stream's two halves.
pub enum LinkSend {
    Quic(Box<h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>>),
    /// The connection is kept while a stream of it lives (a link replaced
    /// by a QUIC one after a re-probe finishes its streams).
    H2(
        isthmus_mesh::h2connect::H2Send,
        isthmus_mesh::h2connect::Client,
    ),
}

pub enum LinkRecv {
    Quic(Box<h3::client::RequestStream<h3_quinn::RecvStream, Bytes>>),
    H2(isthmus_mesh::h2connect::H2Recv),
}

impl LinkSend {
    pub async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        match self {
            LinkSend::Quic(s) => s.send_data(data).await.map_err(std::io::Error::other),
            LinkSend::H2(w, _) => w.send(data).await,
        }
    }

    /// Half-closes: the peer reads the end of the stream.
    pub async fn finish(&mut self) -> std::io::Result<()> {
        match self {
            LinkSend::Quic(s) => s.finish().await.map_err(std::io::Error::other),
            LinkSend::H2(w, _) => w.finish(),
        }
    }

    /// Aborts the stream (H3_CONNECT_ERROR, or RST_STREAM with
    /// CONNECT_ERROR on the fallback): the peer gateway resets the
    /// connection to its endpoint.
    pub fn reset(&mut self) {
        match self {
            LinkSend::Quic(s) => s.stop_stream(h3::error::Code::H3_CONNECT_ERROR),
            LinkSend::H2(s, _) => s.reset(),
        }
    }
}

/// Dropping a `LinkRecv` before the end stops the peer's sending (quinn
/// sends STOP_SENDING; h3-quinn 0.0.10's own `stop_sending` panics while a
/// read is in flight, so there is no method for it here).
impl LinkRecv {
    /// The next bytes; None at the end of the stream.
    pub async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        match self {
            LinkRecv::Quic(r) => Ok(r
                .recv_data()
                .await
                .map_err(std::io::Error::other)?
                .map(|mut b| b.copy_to_bytes(b.remaining()))),
            LinkRecv::H2(r) => r.recv().await,
        }
    }
}

impl super::transport::StreamSend for LinkSend {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        LinkSend::send(self, data).await
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        LinkSend::finish(self).await
    }
    fn reset(&mut self) {
        LinkSend::reset(self)
    }
}

impl super::transport::StreamRecv for LinkRecv {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        LinkRecv::recv(self).await
    }
}

impl super::transport::LinkTransport for Link {
    type Send = LinkSend;
    type Recv = LinkRecv;

    async fn open(
        &self,
        authority: &str,
        source: &super::Source,
    ) -> Result<(LinkSend, LinkRecv), LinkError> {
        self.open_from(authority, source).await
    }

    fn kind(&self) -> Transport {
        self.transport()
    }

    fn is_closed(&self) -> bool {
        match self {
            Link::Quic(l) => l.is_closed(),
            Link::H2(l) => l.is_closed(),
        }
    }
}

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
        Self::race_with(endpoint, tls, udp, tcp, expected, head_start, false).await
    }

    /// `race`, letting QUIC resume in 0-RTT (`PeerLink::connect_with`).
    pub async fn race_with(
        endpoint: &quinn::Endpoint,
        tls: &isthmus_mesh::tls::MeshTls,
        udp: SocketAddr,
        tcp: SocketAddr,
        expected: &str,
        head_start: std::time::Duration,
        allow_early: bool,
    ) -> Result<Link, LinkError> {
        let mut quic = Box::pin(PeerLink::connect_with(endpoint, udp, expected, allow_early));
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
        let mut h2 = Box::pin(H2Link::connect(tls, tcp, expected));
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
        self.open_from(authority, &super::Source::default()).await
    }

    /// `open`, with headers naming the stream's source.
    pub async fn open_from(
        &self,
        authority: &str,
        source: &super::Source,
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
        source: &super::Source,
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

/// Reads the peer's first bytes from `io` (within `wait`) and gives them
/// back ahead of the rest: whether the peer accepted the connection is
/// known once they arrive.
async fn first_bytes<IO>(mut io: IO, wait: std::time::Duration) -> std::io::Result<Prefixed<IO>>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(wait, io.read(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer sent nothing")
        })??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ));
    }
    buf.truncate(n);
    Ok(Prefixed {
        head: Bytes::from(buf),
        io,
    })
}

/// `io` with bytes already read from it put back in front.
struct Prefixed<IO> {
    head: Bytes,
    io: IO,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            let head = self.head.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_told_from_outages() {
        let closed = |code| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: Default::default(),
            })
        };
        // unknown_ca, bad_certificate: trust.
        assert!(quic_trust_failure(&closed(
            quinn::TransportErrorCode::crypto(48)
        )));
        assert!(quic_trust_failure(&closed(
            quinn::TransportErrorCode::crypto(42)
        )));
        // handshake_failure (no common cipher), a protocol error, a timeout: not.
        assert!(!quic_trust_failure(&closed(
            quinn::TransportErrorCode::crypto(40)
        )));
        assert!(!quic_trust_failure(&closed(
            quinn::TransportErrorCode::PROTOCOL_VIOLATION
        )));
        assert!(!quic_trust_failure(&quinn::ConnectionError::TimedOut));

        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(tls_trust_failure(&io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))));
        assert!(tls_trust_failure(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
        ))));
        assert!(!tls_trust_failure(&io(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        ))));
        assert!(!tls_trust_failure(&std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )));
    }
}
