//! QUIC endpoints for the east-west tunnels, from the workload's mesh TLS:
//! ALPN `h3`, TLS 1.3 with client certificates, SPIFFE verification of the
//! peer against the trust bundle of its own trust domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::tls::MeshTls;

pub const ALPN_H3: &[u8] = b"h3";
/// Keep-alive well inside the idle timeout, so a quiet tunnel stays up.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// A path that answers nothing for this long is dead: the link closes and
/// the next stream races QUIC and the fallback again. Short, for fast
/// failover, yet many PTOs even at a 300 ms RTT (RFC 9000 §10.1).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The QUIC congestion controller of the tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Loss-based (RFC 9438), quinn's default.
    Cubic,
    /// Model-based: paces to the measured bottleneck rate and does not
    /// back off on random loss, which WAN links between regions have.
    #[default]
    Bbr,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            _ => Err(format!("congestion control {s:?}: use cubic or bbr")),
        }
    }
}

fn transport(cc: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    match cc {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("10 s is a valid idle timeout"),
    ));
    // Bulk streams need room in flight (STACK.md: 8 MiB / 64 MiB).
    t.stream_receive_window((8u32 * 1024 * 1024).into());
    t.receive_window((64u32 * 1024 * 1024).into());
    t.send_window(64 * 1024 * 1024);
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

pub fn server_config(tls: &MeshTls, cc: Congestion) -> Result<quinn::ServerConfig, QuicError> {
    let (_, server) = tls.configs_for(ALPN_H3);
    let crypto = QuicServerConfig::try_from(server).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(transport(cc));
    Ok(c)
}

pub fn client_config(tls: &MeshTls, cc: Congestion) -> Result<quinn::ClientConfig, QuicError> {
    let (client, _) = tls.configs_for(ALPN_H3);
    let crypto = QuicClientConfig::try_from(client).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport(cc));
    Ok(c)
}

/// A QUIC endpoint that serves peers on `addr` and connects to them
/// (BBR congestion control).
pub fn endpoint(tls: &MeshTls, addr: SocketAddr) -> Result<quinn::Endpoint, QuicError> {
    endpoint_with(tls, addr, Congestion::default())
}

/// `endpoint` with the congestion controller `cc`.
pub fn endpoint_with(
    tls: &MeshTls,
    addr: SocketAddr,
    cc: Congestion,
) -> Result<quinn::Endpoint, QuicError> {
    let mut e = quinn::Endpoint::server(server_config(tls, cc)?, addr)
        .map_err(|source| QuicError::Bind { addr, source })?;
    e.set_default_client_config(client_config(tls, cc)?);
    Ok(e)
}

/// The SPIFFE ID a QUIC peer proved in its handshake.
pub fn peer_id(conn: &quinn::Connection) -> Option<crate::tls::SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    crate::tls::SpiffeId::from_cert(certs.first()?).ok()
}
