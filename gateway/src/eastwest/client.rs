//! The sending side: one QUIC connection to a peer gateway, checked to be
//! that peer's identity, carrying CONNECT streams.

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use h3_quinn::OpenStreams;
use http::{Method, Request, StatusCode};

use super::quic::peer_id;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach peer gateway {addr} over QUIC: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("peer gateway {addr} is {got}, expected {expected}")]
    WrongPeer {
        addr: SocketAddr,
        got: String,
        expected: String,
    },
    #[error("HTTP/3 with peer gateway {addr} failed: {reason}")]
    Http3 { addr: SocketAddr, reason: String },
    #[error("peer gateway {addr} refused CONNECT {authority}: {status} {reason}")]
    Refused {
        addr: SocketAddr,
        authority: String,
        status: StatusCode,
        reason: String,
    },
}

/// A live HTTP/3 connection to one peer gateway.
pub struct PeerLink {
    addr: SocketAddr,
    send: h3::client::SendRequest<OpenStreams, Bytes>,
    conn: quinn::Connection,
}

/// One CONNECT stream to the peer, as send and receive halves.
pub struct TunnelStream {
    pub stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
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
    /// Connects to the peer gateway at `addr`, which must prove `expected`.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        expected: &str,
    ) -> Result<Self, LinkError> {
        let fail = |reason: String| LinkError::Connect { addr, reason };
        let conn = endpoint
            .connect(addr, &addr.ip().to_string())
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        let got = peer_id(&conn).map(|i| i.to_string()).unwrap_or_default();
        if got != expected {
            conn.close(0x0101u32.into(), b"wrong peer");
            return Err(LinkError::WrongPeer {
                addr,
                got,
                expected: expected.into(),
            });
        }
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| LinkError::Http3 {
                addr,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let e = driver.wait_idle().await;
            tracing::debug!(%addr, "peer gateway connection closed: {e}");
        });
        Ok(Self { addr, send, conn })
    }

    /// Opens a CONNECT stream to `authority` (`<service>.<ns>:<port>`).
    ///
    /// h3 0.0.8 adds `:scheme` and `:path` to CONNECT, which RFC 9114
    /// §4.4 forbids; its server accepts both forms, so our gateways
    /// interoperate (the upstream fix is not released; STACK.md).
    pub async fn open(&self, authority: &str) -> Result<TunnelStream, LinkError> {
        let h3err = |e: h3::error::StreamError| LinkError::Http3 {
            addr: self.addr,
            reason: e.to_string(),
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|e| LinkError::Refused {
                addr: self.addr,
                authority: authority.into(),
                status: StatusCode::BAD_REQUEST,
                reason: e.to_string(),
            })?;
        let mut stream = self.send.clone().send_request(req).await.map_err(h3err)?;
        let resp = stream.recv_response().await.map_err(h3err)?;
        if resp.status() != StatusCode::OK {
            return Err(LinkError::Refused {
                addr: self.addr,
                authority: authority.into(),
                status: resp.status(),
                reason: resp
                    .headers()
                    .get("isthmus-refusal")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        Ok(TunnelStream { stream })
    }

    pub fn rtt(&self) -> std::time::Duration {
        self.conn.rtt()
    }
}
