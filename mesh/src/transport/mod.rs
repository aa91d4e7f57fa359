//! The mesh transport between sidecars (the HBONE idea): mTLS HTTP/2 to the
//! destination's sidecar on port 15008, where each upstream connection the
//! proxy would have opened (an HTTP/1.1 keep-alive connection, an HTTP/2
//! connection, an opaque TCP connection) is one CONNECT stream whose
//! authority is the endpoint's `ip:port`.
//!
//! This is the client side (`client`): one pooled, multiplexed HTTP/2
//! connection per destination sidecar and expected identity, made with the
//! workload's current certificate; after a rotation new streams go to a new
//! connection while the old one finishes its streams. It also opens mTLS
//! sessions with services of linked clusters through this cluster's
//! east-west entry (`Connector::connect_remote`), which the control planes'
//! federation channel rides. The 15008 listener is the proxy's
//! (`isthmus_gateway::transport::server`).

pub mod client;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h2connect::{Abort, Client, H2Stream};

/// AsyncRead + AsyncWrite for a type by its `io` field.
macro_rules! delegate_io {
    ($t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

pub use client::{Connector, Expect, Handshake, HandshakeObserver, TunnelError};

/// One CONNECT stream of the client side, as a byte stream. It holds its
/// HTTP/2 connection open: a connection retired from the pool (after a
/// certificate rotation) lives until its last stream ends.
pub struct TunnelStream {
    io: H2Stream,
    _conn: Client,
}

/// An mTLS session with a service in a linked cluster, inside a CONNECT
/// stream through this cluster's east-west gateway (`Connector::connect_remote`).
/// It holds the connection to the gateway open.
pub struct RemoteSession {
    /// Who answered, as its certificate proved.
    pub peer: crate::spiffe::SpiffeId,
    /// What carries it between the gateways (`quic`, `h2`), as our
    /// gateway said.
    pub transport: Option<String>,
    /// The application port behind the remote sidecar the peer gateway
    /// joined us to, when it said.
    pub target_port: Option<u16>,
    io: tokio_rustls::client::TlsStream<H2Stream>,
    _outer: Client,
}

delegate_io!(RemoteSession);

impl TunnelStream {
    /// The CONNECT stream itself (to drive its halves apart).
    pub fn stream(&mut self) -> &mut H2Stream {
        &mut self.io
    }
}

/// An abort resets the stream (the destination's connection is reset).
impl Abort for TunnelStream {
    fn abort(&mut self) {
        self.io.abort();
    }
}

delegate_io!(TunnelStream);
