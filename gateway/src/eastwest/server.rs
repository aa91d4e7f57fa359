//! The receiving side: QUIC connections from peer gateways, authenticated
//! by their SPIFFE certificates (the handshake checks the chain against the
//! peer's own trust domain; `Peers` says which identities may connect),
//! then every CONNECT stream answered: 200 and joined to a local endpoint,
//! or a status naming why not (`ConnectRefusal`). A malformed or hostile
//! request costs its stream, never the connection or the process.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ConnectRefusal, Source, parse_authority, quic::peer_id};
use crate::balance::outlier::Observation;
use crate::policy::attempts::{Attempts, CONNECT_TRIES, Plan};
use crate::pool::dial;
use crate::splice::{Side, splice_tcp};
use crate::telemetry::metrics::Direction;

use crate::proxy::Proxy;
use isthmus_mesh::SpiffeId;

/// Which peer gateways may connect: their SPIFFE IDs (`*` suffix allowed,
/// e.g. `spiffe://us-east.isthmus.local/ns/isthmus-system/sa/*`).
#[derive(Debug, Clone, Default)]
pub struct Peers {
    pub allowed: Vec<String>,
    /// Which services each peer may reach (none: all).
    pub exports: Vec<super::ExportRule>,
}

impl Peers {
    /// Whether `id` may connect: listed here (`--eastwest-config`), or the
    /// gateway of a cluster we link with (the control plane's peers, from
    /// ClusterLinks), as the configuration in force says now.
    pub fn admits(&self, id: &SpiffeId, config: &crate::config::snapshot::Snapshot) -> bool {
        self.allowed
            .iter()
            .any(|a| crate::authz::Pattern::new(a).matches(id.as_str()))
            || config
                .source
                .east_west
                .as_ref()
                .is_some_and(|ew| ew.peers.iter().any(|p| p.identity == id.as_str()))
    }
}

/// The handshake-time admission of peer gateways (`Peers::admits` against
/// the configuration in force at each handshake): a refused peer gets the
/// TLS alert access_denied, QUIC CRYPTO_ERROR 0x131 (`MeshTls::configs_admitting`).
pub fn admission(peers: &Arc<Peers>, proxy: &Arc<Proxy>) -> isthmus_mesh::tls::Admit {
    let (peers, proxy) = (peers.clone(), proxy.clone());
    Arc::new(move |id| peers.admits(id, &proxy.store.load()))
}

/// Why a peer's handshake failed, as the error metric counts it.
fn handshake_failure(e: &impl std::fmt::Display) -> &'static str {
    let e = e.to_string();
    if e.contains("AccessDenied") || e.contains("ApplicationVerificationFailure") {
        "eastwest_unknown_peer"
    } else if e.contains("certificate") || e.contains("Certificate") {
        "eastwest_untrusted_peer"
    } else {
        "eastwest_handshake"
    }
}

/// Serves peers on `endpoint` until `stop`, then closes the endpoint and
/// waits for its connections' tasks (closing it ends their streams).
pub async fn serve(
    endpoint: quinn::Endpoint,
    proxy: Arc<Proxy>,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let (proxy, peers, stop, streams) =
            (proxy.clone(), peers.clone(), stop.clone(), tasks.clone());
        tasks.spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    proxy.metrics.error(handshake_failure(&e));
                    tracing::info!(%remote, "peer gateway handshake refused: {e}");
                    return;
                }
            };
            let Some(id) = peer_id(&conn).filter(|id| peers.admits(id, &proxy.store.load())) else {
                proxy.metrics.error("eastwest_unknown_peer");
                tracing::warn!(%remote, peer = ?peer_id(&conn), "peer gateway is not one we link with; closing");
                conn.close(0x0101u32.into(), b"unknown peer");
                return;
            };
            tracing::info!(%remote, peer = %id, "peer gateway connected");
            serve_connection(conn, remote, proxy, peers, Arc::new(id), stop, &streams).await;
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection(
    conn: quinn::Connection,
    remote: std::net::SocketAddr,
    proxy: Arc<Proxy>,
    peers: Arc<Peers>,
    peer: Arc<SpiffeId>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let mut h3 = match h3::server::builder()
        .max_field_section_size(16 * 1024)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, "HTTP/3 setup with the peer failed: {e}");
            return;
        }
    };
    loop {
        let resolver = tokio::select! {
            _ = stop.cancelled() => return,
            r = h3.accept() => match r {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, "peer connection ended: {e}");
                    return;
                }
            },
        };
        let (proxy, peer, peers) = (proxy.clone(), peer.clone(), peers.clone());
        tasks.spawn(async move {
            let (req, mut stream) = match resolver.resolve_request().await {
                Ok(x) => x,
                Err(e) => {
                    // Oversized or malformed headers: this stream only.
                    proxy.metrics.error("eastwest_bad_request");
                    tracing::debug!(%peer, "unreadable request: {e}");
                    return;
                }
            };
            let log = StreamLog::new("quic", remote, peer.clone(), &req);
            let (target, app_port) = match route(
                &proxy,
                &peers,
                &peer,
                req.method(),
                log.authority.as_deref(),
                &log.source,
            )
            .await
            {
                Ok(t) => t,
                Err(refusal) => {
                    proxy.metrics.error("eastwest_refused");
                    tracing::debug!(%peer, "CONNECT refused: {refusal}");
                    log.write(&proxy, refusal.status(), Some(&refusal), None, (0, 0));
                    let _ = stream.send_response(refusal.response()).await;
                    let _ = stream.finish().await;
                    return;
                }
            };
            let mut ok = Response::builder()
                .status(200)
                .body(())
                .expect("a status makes a response");
            super::set_target_port(ok.headers_mut(), app_port);
            if stream.send_response(ok).await.is_err() {
                return;
            }
            let upstream = target.peer_addr().ok();
            let bytes = spliced(splice_tcp(stream.split(), target).await, &peer);
            log.write(&proxy, http::StatusCode::OK, None, upstream, bytes);
        });
    }
}

/// Validates the CONNECT and opens the connection to a healthy endpoint of
/// the named service: its sidecar's mesh transport port when it has one
/// (the payload is then the client sidecar's own mTLS session, and the
/// application port behind that sidecar is returned for the caller to
/// ask it for), else the endpoint's port.
async fn route(
    proxy: &Proxy,
    peers: &Peers,
    peer: &SpiffeId,
    method: &Method,
    authority: Option<&str>,
    source: &Source,
) -> Result<(tokio::net::TcpStream, Option<u16>), ConnectRefusal> {
    if method != Method::CONNECT {
        return Err(ConnectRefusal::NotConnect(method.to_string()));
    }
    let (name, port) = parse_authority(authority)?;
    tracing::debug!(
        %peer,
        service = %name,
        source_cluster = source.cluster.as_deref().unwrap_or("-"),
        source_identity = source.identity.as_deref().unwrap_or("-"),
        traceparent = source.traceparent.as_deref().unwrap_or("-"),
        "cross-cluster CONNECT"
    );
    let snap = proxy.store.load();
    if !super::may_reach(
        &peers.exports,
        snap.source.east_west.as_ref(),
        &name,
        peer.as_str(),
    ) {
        return Err(ConnectRefusal::NotExported {
            service: name,
            peer: peer.to_string(),
        });
    }
    let service = snap
        .services
        .get(&name)
        .filter(|s| !s.inbound)
        .cloned()
        .ok_or_else(|| ConnectRefusal::NoService(name.clone()))?;
    let p = *service.port(Some(port)).ok_or(ConnectRefusal::NoPort {
        service: name.clone(),
        port,
    })?;
    let state = proxy.services.get(&service);
    let mut tried = Vec::new();
    let mut last = None;
    // Like the sidecar's TCP connects: other endpoints after a failed
    // connect, and every result told to outlier detection.
    let mut plan = Attempts::new(Plan::Connect {
        tries: CONNECT_TRIES,
    });
    loop {
        let idx = {
            let mut rng = rand::rng();
            state.pick(&service, &tried, None, &mut rng)
        };
        let Some(idx) = idx else { break };
        tried.push(idx);
        let ep = &service.endpoints[idx];
        let (addr, app_port) = match &ep.tunnel {
            Some(t) => (
                std::net::SocketAddr::new(ep.ip, t.port),
                Some(ep.addr(&p).port()),
            ),
            None => (ep.addr(&p), None),
        };
        match dial(addr, service.pool.connect_timeout, proxy.socket).await {
            Ok(s) => {
                state.observe(
                    &service,
                    idx,
                    Observation::Success,
                    &proxy.metrics,
                    Direction::Outbound,
                );
                return Ok((s, app_port));
            }
            Err(e) => {
                state.observe(
                    &service,
                    idx,
                    Observation::GatewayError,
                    &proxy.metrics,
                    Direction::Outbound,
                );
                last = Some(ConnectRefusal::EndpointFailed {
                    service: name.clone(),
                    addr,
                    reason: e.to_string(),
                });
                if !plan.retry_connect() {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or(ConnectRefusal::NoHealthyEndpoint(name)))
}

/// The fallback: the same CONNECT streams as HTTP/2 over TLS on TCP, for
/// peers whose UDP does not get through. Same authentication and routing.
/// On `stop` its connections drain (GOAWAY) and are waited for.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    peers: Arc<Peers>,
    stop: CancellationToken,
) {
    let Some(tls) = proxy.mesh.clone() else {
        tracing::error!("the TCP fallback needs the gateway's identity");
        return;
    };
    let (_, server) = tls.configs_admitting(isthmus_mesh::tls::ALPN_H2, admission(&peers, &proxy));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let tasks = TaskTracker::new();
    // No handshake before the gateway holds its certificate (it would
    // fail with a misleading alert); callers wait in the backlog.
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tls.identity().wait_held() => {}
    }
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, proxy, peers, stop, streams) = (
            acceptor.clone(),
            proxy.clone(),
            peers.clone(),
            stop.clone(),
            tasks.clone(),
        );
        tasks.spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    proxy.metrics.error(handshake_failure(&e));
                    tracing::info!(%remote, "peer gateway (TCP fallback) handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    proxy.metrics.error("eastwest_handshake");
                    return;
                }
            };
            let Some(id) = isthmus_mesh::tls::peer_id(tls.get_ref().1)
                .filter(|id| peers.admits(id, &proxy.store.load()))
            else {
                proxy.metrics.error("eastwest_unknown_peer");
                tracing::warn!(%remote, "peer gateway (TCP fallback) is not one we link with");
                return;
            };
            let peer = Arc::new(id);
            let settings = super::quic::fallback_settings();
            let served = isthmus_mesh::h2connect::server::serve(tls, &settings, &stop, |inc| {
                let (proxy, peer, peers) = (proxy.clone(), peer.clone(), peers.clone());
                streams.spawn(async move {
                    let log = StreamLog::new("h2-fallback", remote, peer.clone(), inc.request());
                    let authority = log.authority.as_deref();
                    let method = inc.request().method().clone();
                    match route(&proxy, &peers, &peer, &method, authority, &log.source).await {
                        Err(refusal) => {
                            proxy.metrics.error("eastwest_refused");
                            log.write(&proxy, refusal.status(), Some(&refusal), None, (0, 0));
                            inc.refuse(refusal.response());
                        }
                        Ok((target, app_port)) => {
                            let mut headers = http::HeaderMap::new();
                            super::set_target_port(&mut headers, app_port);
                            let Ok(stream) = inc.accept_with(headers) else {
                                return;
                            };
                            let upstream = target.peer_addr().ok();
                            let bytes =
                                spliced(splice_tcp(stream.into_split(), target).await, &peer);
                            log.write(&proxy, http::StatusCode::OK, None, upstream, bytes);
                        }
                    }
                });
            });
            if let Err(e) = served.await {
                tracing::debug!(%remote, "fallback connection ended: {e}");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// The bytes a splice moved, or none when it was aborted (logged).
fn spliced(r: Result<(u64, u64), (Side, std::io::Error)>, peer: &SpiffeId) -> (u64, u64) {
    r.unwrap_or_else(|(side, e)| {
        let by = match side {
            Side::A => "the peer's stream",
            Side::B => "the endpoint",
        };
        tracing::debug!(%peer, "tunnelled connection aborted by {by}: {e}");
        (0, 0)
    })
}

/// One access-log entry per cross-cluster stream at the receiving
/// gateway: who sent it (peer gateway, source cluster and workload, trace),
/// where it went, its status and bytes.
pub(crate) struct StreamLog {
    pub transport: &'static str,
    pub remote: std::net::SocketAddr,
    pub peer: Arc<SpiffeId>,
    pub source: Source,
    pub authority: Option<String>,
    pub started: std::time::SystemTime,
    pub clock: std::time::Instant,
}

impl StreamLog {
    pub fn new<B>(
        transport: &'static str,
        remote: std::net::SocketAddr,
        peer: Arc<SpiffeId>,
        req: &http::Request<B>,
    ) -> Self {
        Self {
            transport,
            remote,
            peer,
            source: Source::read(req.headers()),
            authority: req.uri().authority().map(|a| a.to_string()),
            started: std::time::SystemTime::now(),
            clock: std::time::Instant::now(),
        }
    }

    /// Writes the entry: `status`, the refusal if any, the upstream and
    /// the bytes (from the peer, to the peer).
    pub fn write(
        self,
        proxy: &Proxy,
        status: http::StatusCode,
        refusal: Option<&ConnectRefusal>,
        upstream: Option<std::net::SocketAddr>,
        bytes: (u64, u64),
    ) {
        if !proxy.access_log.enabled() {
            return;
        }
        use crate::telemetry::accesslog::{Entry, rfc3339};
        proxy.access_log.write(Entry {
            start_time: rfc3339(self.started),
            direction: "eastwest",
            listener: self.transport.into(),
            protocol: "CONNECT".into(),
            method: Some("CONNECT".into()),
            authority: self.authority,
            response_code: status.as_u16(),
            response_flags: if refusal.is_some() { "NR" } else { "-" }.into(),
            reason: refusal.map(|r| r.to_string()),
            duration_ms: self.clock.elapsed().as_secs_f64() * 1e3,
            source_address: self.remote.to_string(),
            upstream_host: upstream.map(|u| u.to_string()),
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            source_principal: self.source.identity,
            trace_id: self
                .source
                .traceparent
                .as_deref()
                .and_then(crate::telemetry::trace::TraceParent::parse)
                .map(|t| t.trace_id_hex()),
            source_cluster: self.source.cluster,
            peer_gateway: Some(self.peer.to_string()),
            attempts: 1,
            ..Default::default()
        });
    }
}
