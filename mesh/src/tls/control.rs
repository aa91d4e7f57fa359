//! The connection to the control plane (discovery and CA) over TLS: the
//! control plane's certificate must chain to the trust bundle of its
//! domain (the bootstrap roots until the first certificate brings the
//! bundles) and carry the expected SPIFFE ID; once the proxy holds a
//! certificate it presents it, and the control plane takes the proxy's
//! identity from it (no token needed for renewal, none trusted from the
//! subscription).
//!
//! A `tower` connector for tonic's channel: TCP, then TLS with ALPN h2,
//! then the identity check.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{MeshTls, peer_id};

/// Connects tonic channels to the control plane.
#[derive(Clone)]
pub struct ControlPlaneConnector {
    tls: Arc<MeshTls>,
    /// The control plane's SPIFFE ID.
    expected: Arc<str>,
}

impl std::fmt::Debug for ControlPlaneConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConnector")
            .field("expected", &self.expected)
            .finish()
    }
}

impl ControlPlaneConnector {
    pub fn new(tls: Arc<MeshTls>, expected: impl Into<Arc<str>>) -> Self {
        Self {
            tls,
            expected: expected.into(),
        }
    }

    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// Waits until the proxy holds a certificate to present (discovery is
    /// refused without one).
    pub async fn wait_for_certificate(&self) {
        self.tls.identity().wait_held().await
    }

    async fn connect(self, uri: Uri) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::other(format!("{uri}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(15010);
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| io::Error::other(format!("{host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.client.clone())
            .connect(name, tcp)
            .await?;
        let got = peer_id(tls.get_ref().1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the control plane presented no SPIFFE certificate",
            )
        })?;
        if got.as_str() != &*self.expected {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the control plane at {host}:{port} is {got}, expected {} (check --control-plane-id)",
                    self.expected
                ),
            ));
        }
        Ok(TokioIo::new(tls))
    }
}

impl tower_service::Service<Uri> for ControlPlaneConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A tonic channel to `address` (`host:port`), over TLS when `connector`
/// is given, plaintext otherwise (development only).
pub async fn channel(
    address: &str,
    connector: Option<&ControlPlaneConnector>,
    connect_timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, String> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    match connector {
        Some(c) => endpoint.connect_with_connector(c.clone()).await,
        None => endpoint.connect().await,
    }
    .map_err(|e| {
        // tonic's transport error hides the cause one level down.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })
}
