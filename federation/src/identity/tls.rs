//! TLS of the control plane's API port (discovery and CA): the control
//! plane's own certificate, issued by its CA for
//! `spiffe://<td>/ns/<namespace>/sa/isthmus-federation` and renewed at half
//! its lifetime; client certificates optional (a proxy's first CSR comes
//! with a token, before it has one) and verified against the CA's root when
//! presented. The verified identity reaches the gRPC services as the
//! connection's `TlsConnectInfo` (a request extension): discovery checks a
//! subscription against it, the CA renews for it without a token.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::SpiffeId;
use super::ca::{Ca, CaError};

/// The control plane's service account (its SPIFFE ID's last segment).
pub const SERVICE_ACCOUNT: &str = "isthmus-federation";
/// Lifetime of the control plane's own certificate.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the services learn about a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub remote: SocketAddr,
    /// The client's verified SPIFFE ID, when it presented a certificate.
    pub peer: Option<SpiffeId>,
}

/// The identity a request came with: `Some(None)` over TLS without a
/// client certificate, `None` when the port is plaintext.
pub fn peer_of<T>(req: &tonic::Request<T>) -> Option<Option<&SpiffeId>> {
    req.extensions()
        .get::<TlsConnectInfo>()
        .map(|i| i.peer.as_ref())
}

struct Resolver(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlPlaneCert")
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The API port's TLS.
pub struct ApiTls {
    ca: Arc<Ca>,
    id: SpiffeId,
    resolver: Arc<Resolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub config: Arc<rustls::ServerConfig>,
}

impl ApiTls {
    /// Issues the control plane's certificate (namespace `namespace`) and
    /// builds the server configuration.
    pub fn new(ca: Arc<Ca>, namespace: &str) -> Result<Self, CaError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let id = SpiffeId::workload(ca.trust_domain(), namespace, SERVICE_ACCOUNT)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let key = issue(&ca, &id, &provider)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
            let der = der.map_err(|e| CaError::Sign(format!("CA bundle: {e}")))?;
            roots
                .add(der)
                .map_err(|e| CaError::Sign(format!("CA bundle: {e}")))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| CaError::Sign(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CaError::Sign(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: a proxy's first connection (its CSR) has no client
        // certificate, and a resumed session would keep it anonymous.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            ca,
            id,
            resolver,
            provider,
            config: Arc::new(config),
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Re-issues the certificate at half its lifetime until `stop`.
    pub fn spawn_renewal(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        every(SERVING_TTL / 2, stop, move || {
            match issue(&me.ca, &me.id, &me.provider) {
                Ok(k) => me.resolver.0.store(Arc::new(k)),
                Err(e) => tracing::error!("cannot renew the control plane's certificate: {e}"),
            }
        })
    }

    /// Accepts TLS connections on `listener` until `stop`: handshakes run
    /// concurrently, failures are logged and dropped.
    pub fn incoming(self: &Arc<Self>, listener: TcpListener, stop: CancellationToken) -> Incoming {
        incoming(self.config.clone(), listener, stop)
    }
}

/// The injection webhook's TLS: a certificate from the CA naming the
/// control plane's Service by its DNS names (the API server checks them
/// against the webhook's caBundle, the CA's root), no client
/// certificates, HTTP/2 or HTTP/1.1.
pub struct ServingTls {
    ca: Arc<Ca>,
    id: SpiffeId,
    dns: Vec<String>,
    resolver: Arc<Resolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub config: Arc<rustls::ServerConfig>,
}

impl ServingTls {
    pub fn new(ca: Arc<Ca>, namespace: &str, dns: Vec<String>) -> Result<Self, CaError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let id = SpiffeId::workload(ca.trust_domain(), namespace, SERVICE_ACCOUNT)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let key = issue_with_dns(&ca, &id, &dns, &provider)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(key)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Sign(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            ca,
            id,
            dns,
            resolver,
            provider,
            config: Arc::new(config),
        })
    }

    /// Re-issues the certificate at half its lifetime until `stop`.
    pub fn spawn_renewal(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        every(SERVING_TTL / 2, stop, move || {
            match issue_with_dns(&me.ca, &me.id, &me.dns, &me.provider) {
                Ok(k) => me.resolver.0.store(Arc::new(k)),
                Err(e) => tracing::error!("cannot renew the webhook's certificate: {e}"),
            }
        })
    }

    pub fn incoming(self: &Arc<Self>, listener: TcpListener, stop: CancellationToken) -> Incoming {
        incoming(self.config.clone(), listener, stop)
    }
}

/// Accepts TLS connections with `config` on `listener` until `stop`:
/// handshakes run concurrently, failures are logged and dropped; each
/// connection carries the client's verified SPIFFE ID, if it presented one.
/// The accepting task and its handshakes belong to the returned stream:
/// dropping it (the server shutting down) stops them.
pub fn incoming(
    config: Arc<rustls::ServerConfig>,
    listener: TcpListener,
    stop: CancellationToken,
) -> Incoming {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                // Finished handshakes are reaped as they end.
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            handshakes.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| spiffe_of(c));
                let info = TlsConnectInfo { remote, peer };
                let _ = tx.send(Ok(TlsConn { io: tls, info })).await;
            });
        }
    });
    Incoming {
        rx: tokio_stream::wrappers::ReceiverStream::new(rx),
        _task: tokio_util::task::AbortOnDropHandle::new(task),
    }
}

/// The accepted connections of `incoming`, as a stream for tonic.
pub struct Incoming {
    rx: tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<TlsConn>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.rx).poll_next(cx)
    }
}

fn issue(
    ca: &Ca,
    id: &SpiffeId,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, CaError> {
    issue_with_dns(ca, id, &[], provider)
}

/// A serving key and certificate from `ca` for `id` and the `dns` names.
pub fn issue_with_dns(
    ca: &Ca,
    id: &SpiffeId,
    dns: &[String],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, CaError> {
    let key = rcgen::KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let svid = ca.sign_with_dns(&csr, id, dns, SERVING_TTL)?;
    let mut chain = Vec::new();
    for pem in [&svid.cert_pem, &svid.chain_pem] {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(der.map_err(|e| CaError::Sign(e.to_string()))?);
        }
    }
    let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The workload SPIFFE ID of a (verified) certificate.
fn spiffe_of(der: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => SpiffeId::parse_workload(u).ok(),
        _ => None,
    })
}

/// An accepted TLS connection with what tonic hands to the services.
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Runs `renew` every `period` until `stop` (certificate renewal).
pub fn every(
    period: std::time::Duration,
    stop: CancellationToken,
    renew: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => renew(),
            }
        }
    })
}
