//! The sending side of a link to a peer gateway: why a link fails
//! (`LinkError`, refusals read from TLS alerts and QUIC close codes), and
//! `Link`, either transport behind one interface (streams as `LinkSend` /
//! `LinkRecv`). `quic_link`: the QUIC connection (`PeerLink`);
//! `h2_link`: the HTTP/2-over-TLS fallback (`H2Link`); `race`: making a
//! link by racing the two.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use h3_quinn::OpenStreams;
use http::{Method, Request, StatusCode};

use super::quic::peer_id;
use tokio_util::task::TaskTracker;

/// How long a QUIC handshake may take before the peer counts as
/// unreachable over UDP.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

mod h2_link;
mod quic_link;
mod race;

pub use h2_link::H2Link;
pub use quic_link::{Early, PeerLink, TunnelStream};

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
