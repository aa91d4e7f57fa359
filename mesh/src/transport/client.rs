//! The client side of the mesh transport: pooled mTLS HTTP/2 connections to
//! destination sidecars, one CONNECT stream per upstream connection.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio_util::task::TaskTracker;

use super::{RemoteSession, TunnelStream};
use crate::dial::{DialError, SocketOptions, dial};
use crate::h2connect::{Client, Settings};
use crate::headers;
use crate::spiffe::SpiffeId;
use crate::tls::{MeshTls, peer_id};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Connect(#[from] DialError),
    #[error("mTLS handshake with the sidecar at {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("the sidecar at {addr} is {got}, expected {expected}")]
    WrongIdentity {
        addr: SocketAddr,
        got: String,
        expected: String,
    },
    #[error("this proxy has no workload certificate yet, so it cannot reach {addr} over mesh mTLS")]
    NoIdentity { addr: SocketAddr },
    #[error("HTTP/2 with the sidecar at {addr} failed: {reason}")]
    Http2 { addr: SocketAddr, reason: String },
    #[error("the sidecar at {addr} refused CONNECT {target}: {status}")]
    Refused {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error(
        "the east-west gateway at {gateway} refused CONNECT {authority} to cluster {cluster}: {status} {reason}"
    )]
    GatewayRefused {
        gateway: SocketAddr,
        cluster: String,
        authority: String,
        status: StatusCode,
        reason: String,
    },
    #[error(
        "the east-west gateway at {gateway} cannot link to cluster {cluster}: the gateways do not trust each other ({reason})"
    )]
    PeerUntrusted {
        gateway: SocketAddr,
        cluster: String,
        reason: String,
    },
    #[error(
        "the east-west gateway at {gateway} did not answer CONNECT {authority} to cluster {cluster} within {after:?} (the connect timeout)"
    )]
    GatewayTimeout {
        gateway: SocketAddr,
        cluster: String,
        authority: String,
        after: Duration,
    },
    #[error(
        "service {service} in cluster {cluster} has no port with target port {target_port} (the endpoint via that cluster does not match the service's ports)"
    )]
    ViaPort {
        cluster: String,
        service: String,
        target_port: u16,
    },
}

impl TunnelError {
    /// The destination refused by policy (403): not the endpoint's fault,
    /// not worth a retry elsewhere in the same cluster.
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            TunnelError::Refused {
                status: StatusCode::FORBIDDEN,
                ..
            } | TunnelError::GatewayRefused {
                status: StatusCode::FORBIDDEN,
                ..
            }
        )
    }
}

/// Which identity the destination sidecar must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Exactly this SPIFFE ID.
    Id(Arc<str>),
    /// Any identity of this trust domain.
    Domain(Arc<str>),
}

impl Expect {
    fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            Expect::Id(want) => id.as_str() == &**want,
            Expect::Domain(td) => id.trust_domain() == &**td,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Id(id) => write!(f, "{id}"),
            Expect::Domain(td) => write!(f, "an identity of trust domain {td}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    expect: Expect,
}

struct Conn {
    sender: Client,
    /// The certificate generation it was made with.
    generation: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// How a handshake with a sidecar went (the proxy counts them by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    ConnectError,
    WrongIdentity,
    TlsError,
}

impl Handshake {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::ConnectError => "connect_error",
            Handshake::WrongIdentity => "wrong_identity",
            Handshake::TlsError => "tls_error",
        }
    }
}

/// Told of every handshake the connector makes.
pub type HandshakeObserver = Arc<dyn Fn(Handshake) + Send + Sync>;

pub struct Connector {
    tls: Arc<MeshTls>,
    connector: tokio_rustls::TlsConnector,
    conns: Mutex<HashMap<Key, Slot>>,
    socket: SocketOptions,
    tracker: TaskTracker,
    observe: HandshakeObserver,
}

impl Connector {
    pub fn new(
        tls: Arc<MeshTls>,
        socket: SocketOptions,
        tracker: TaskTracker,
        observe: HandshakeObserver,
    ) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(tls.client.clone()),
            tls,
            conns: Mutex::new(HashMap::new()),
            socket,
            tracker,
            observe,
        }
    }

    pub fn tls(&self) -> &Arc<MeshTls> {
        &self.tls
    }

    /// What to expect of a destination: its declared identity, or any of
    /// our own trust domain.
    pub fn expect(
        &self,
        identity: Option<&Arc<str>>,
        addr: SocketAddr,
    ) -> Result<Expect, TunnelError> {
        if let Some(id) = identity {
            // A bare `spiffe://<domain>`: any identity of that domain.
            if let Some(td) = id.strip_prefix("spiffe://").filter(|r| !r.contains('/')) {
                return Ok(Expect::Domain(td.into()));
            }
            return Ok(Expect::Id(id.clone()));
        }
        let own = self.tls.own_id().ok_or(TunnelError::NoIdentity { addr })?;
        Ok(Expect::Domain(own.trust_domain().into()))
    }

    /// Opens one CONNECT stream to `target` through the sidecar at `addr`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expect: Expect,
        target: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        let sender = self.sender(addr, expect, connect_timeout).await?;
        let (resp, io) =
            sender
                .open(self.mesh_connect(target))
                .await
                .map_err(|e| TunnelError::Http2 {
                    addr,
                    reason: e.to_string(),
                })?;
        if resp.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr,
                target,
                status: resp.status(),
            });
        }
        Ok(TunnelStream { io, _conn: sender })
    }

    /// Opens a stream to a service in the linked cluster `cluster`: a
    /// CONNECT for its `authority` (`<service>.<ns>:<port>`) to this
    /// cluster's east-west gateway at `gateway` (its local entry, pooled
    /// like any sidecar connection), then, inside it, our own mTLS session
    /// with the remote sidecar, which must prove `expect`, and the mesh
    /// transport's CONNECT to the application port `target_port`. The
    /// gateways see only ciphertext; the remote sidecar sees this
    /// workload's identity.
    pub async fn connect_via(
        &self,
        gateway: SocketAddr,
        cluster: &str,
        authority: &str,
        target_port: u16,
        expect: Expect,
        connect_timeout: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        let tls = self
            .connect_remote(gateway, cluster, authority, expect, connect_timeout)
            .await?;
        // The remote sidecar serves one workload: only the port counts,
        // the one its gateway joined us to (a named target port differs
        // per workload), else the one the import carries.
        let target = SocketAddr::new(gateway.ip(), tls.target_port.unwrap_or(target_port));
        let inner = self.h2_handshake(tls, gateway).await?;
        // The session (and with it the gateway connection) lives in the
        // inner connection's driver for as long as that connection does.
        let (resp, io) =
            inner
                .open(self.mesh_connect(target))
                .await
                .map_err(|e| TunnelError::Http2 {
                    addr: gateway,
                    reason: e.to_string(),
                })?;
        if resp.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr: gateway,
                target,
                status: resp.status(),
            });
        }
        Ok(TunnelStream { io, _conn: inner })
    }

    /// The peer liveness stream of this cluster's east-west gateway entry at
    /// `gateway` (`headers::PEERS_AUTHORITY`): length-delimited
    /// `isthmus.eastwest.v1.PeerLiveness` messages, the whole state and then
    /// every change, for as long as the stream is read.
    pub async fn peer_liveness(
        &self,
        gateway: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        let (_, io, outer) = self
            .entry_connect(gateway, "", headers::PEERS_AUTHORITY, connect_timeout)
            .await?;
        Ok(TunnelStream { io, _conn: outer })
    }

    /// A CONNECT for `authority` (in the linked cluster `cluster`, when
    /// named) to this cluster's east-west gateway entry at `gateway`, on our
    /// pooled connection to it, saying who we are; a refusal is named.
    async fn entry_connect(
        &self,
        gateway: SocketAddr,
        cluster: &str,
        authority: &str,
        connect_timeout: Duration,
    ) -> Result<(http::Response<()>, crate::h2connect::H2Stream, Client), TunnelError> {
        let own = self
            .tls
            .own_id()
            .ok_or(TunnelError::NoIdentity { addr: gateway })?;
        let local = Expect::Domain(own.trust_domain().into());
        let outer = self.sender(gateway, local, connect_timeout).await?;
        let refused = |status: StatusCode, reason: String| TunnelError::GatewayRefused {
            gateway,
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            status,
            reason,
        };
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = authority.parse().map_err(|_| {
            refused(
                StatusCode::BAD_REQUEST,
                "not a valid CONNECT authority".into(),
            )
        })?;
        let headers = req.headers_mut();
        if !cluster.is_empty()
            && let Ok(v) = cluster.parse()
        {
            headers.insert(headers::CLUSTER_HEADER, v);
        }
        if let Ok(v) = own.as_str().parse() {
            headers.insert(headers::SOURCE_ID_HEADER, v);
        }
        // The connect timeout covers the whole way to the remote end: our
        // gateway answers once the peer's has joined the workload.
        let (resp, through) = tokio::time::timeout(connect_timeout, outer.open(req))
            .await
            .map_err(|_| TunnelError::GatewayTimeout {
                gateway,
                cluster: cluster.to_string(),
                authority: authority.to_string(),
                after: connect_timeout,
            })?
            .map_err(|e| TunnelError::Http2 {
                addr: gateway,
                reason: e.to_string(),
            })?;
        if resp.status() != StatusCode::OK {
            let untrusted = resp
                .headers()
                .get(headers::LINK_FAILURE_HEADER)
                .is_some_and(|v| v == headers::UNTRUSTED);
            if untrusted {
                return Err(TunnelError::PeerUntrusted {
                    gateway,
                    cluster: cluster.to_string(),
                    reason: headers::refusal_reason(resp.headers()),
                });
            }
            return Err(refused(
                resp.status(),
                headers::refusal_reason(resp.headers()),
            ));
        }
        Ok((resp, through, outer))
    }

    /// Our own mTLS session with whatever answers `authority` (`name.ns:port`)
    /// in the linked cluster `cluster`: a CONNECT to this cluster's east-west
    /// gateway entry at `gateway` (pooled like any sidecar connection), and
    /// inside that stream a TLS handshake (ALPN h2) with the remote end, which
    /// must prove `expect`. The gateways see only ciphertext. What runs on
    /// the session is the caller's: the mesh transport for a sidecar, gRPC
    /// for the control planes' federation channel.
    pub async fn connect_remote(
        &self,
        gateway: SocketAddr,
        cluster: &str,
        authority: &str,
        expect: Expect,
        connect_timeout: Duration,
    ) -> Result<RemoteSession, TunnelError> {
        let (resp, through, outer) = self
            .entry_connect(gateway, cluster, authority, connect_timeout)
            .await?;
        let transport = resp
            .headers()
            .get(headers::TRANSPORT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let target_port = headers::target_port(resp.headers());
        let tls_failed = |reason: String| TunnelError::Handshake {
            addr: gateway,
            reason: format!("with {authority} in {cluster} behind it: {reason}"),
        };
        let tls = tokio::time::timeout(
            connect_timeout.max(Duration::from_secs(1)),
            self.connector
                .connect(ServerName::IpAddress(gateway.ip().into()), through),
        )
        .await
        .map_err(|_| tls_failed("timed out".into()))?
        .map_err(|e| tls_failed(e.to_string()))?;
        let peer = peer_id(tls.get_ref().1)
            .ok_or_else(|| tls_failed("it presented no SPIFFE certificate".into()))?;
        if !expect.accepts(&peer) {
            return Err(TunnelError::WrongIdentity {
                addr: gateway,
                got: peer.to_string(),
                expected: expect.to_string(),
            });
        }
        Ok(RemoteSession {
            peer,
            transport,
            target_port,
            io: tls,
            _outer: outer,
        })
    }

    /// The mesh transport's CONNECT for `target`, saying who we are.
    fn mesh_connect(&self, target: SocketAddr) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = target
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        if let Some(own) = self.tls.own_id()
            && let Ok(v) = own.as_str().parse()
        {
            req.headers_mut().insert(headers::SOURCE_ID_HEADER, v);
        }
        req
    }

    /// A ready HTTP/2 connection to `addr`, made now if there is none, the
    /// one there is closed, or it predates the current certificate.
    async fn sender(
        &self,
        addr: SocketAddr,
        expect: Expect,
        connect_timeout: Duration,
    ) -> Result<Client, TunnelError> {
        let slot = self
            .conns
            .lock()
            .entry(Key {
                addr,
                expect: expect.clone(),
            })
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let generation = self.tls.generation();
        if let Some(c) = slot.as_ref()
            && !c.sender.is_closed()
            && c.generation == generation
        {
            return Ok(c.sender.clone());
        }
        *slot = None;
        let result = self.handshake(addr, &expect, connect_timeout).await;
        (self.observe)(match &result {
            Ok(_) => Handshake::Ok,
            Err(TunnelError::Connect(_)) => Handshake::ConnectError,
            Err(TunnelError::WrongIdentity { .. }) => Handshake::WrongIdentity,
            Err(_) => Handshake::TlsError,
        });
        let sender = result?;
        *slot = Some(Conn {
            sender: sender.clone(),
            generation,
        });
        Ok(sender)
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
        expect: &Expect,
        connect_timeout: Duration,
    ) -> Result<Client, TunnelError> {
        if !self.tls.ready() {
            return Err(TunnelError::NoIdentity { addr });
        }
        let tcp = dial(addr, connect_timeout, self.socket).await?;
        let tls_failed = |reason: String| TunnelError::Handshake { addr, reason };
        let tls = tokio::time::timeout(
            connect_timeout.max(Duration::from_secs(1)),
            self.connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp),
        )
        .await
        .map_err(|_| tls_failed("timed out".into()))?
        .map_err(|e| tls_failed(e.to_string()))?;
        let peer = peer_id(tls.get_ref().1)
            .ok_or_else(|| tls_failed("the sidecar presented no SPIFFE certificate".into()))?;
        if !expect.accepts(&peer) {
            return Err(TunnelError::WrongIdentity {
                addr,
                got: peer.to_string(),
                expected: expect.to_string(),
            });
        }
        self.h2_handshake(tls, addr).await
    }

    /// HTTP/2 (the mesh transport's settings) over an established session.
    async fn h2_handshake<T>(&self, io: T, addr: SocketAddr) -> Result<Client, TunnelError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, driver) =
            Client::handshake(io, &Settings::MESH)
                .await
                .map_err(|e| TunnelError::Http2 {
                    addr,
                    reason: e.to_string(),
                })?;
        self.tracker.spawn(driver);
        Ok(client)
    }
}
