//! The server side of the mesh transport (port 15008): TLS with a verified
//! client certificate, HTTP/2, and each CONNECT stream served as one inbound
//! connection to the application port its authority names.
//!
//! CONNECT answers: 200 (the stream is the connection), 400 (not CONNECT
//! `ip:port`), 404 (the application has no such port), 403 (an
//! AuthorizationPolicy denied the TCP connection; HTTP requests are decided
//! one by one inside the stream).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;

use crate::config::Protocol;
use crate::config::snapshot::inbound_service_name;
use crate::proxy::{ConnInfo, Proxy, Target, listener};
use crate::telemetry::metrics::{Direction, InboundConnLabels};
use isthmus_mesh::SpiffeId;
use isthmus_mesh::h2connect::{Incoming, Settings};
use isthmus_mesh::tls::peer_id;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection on the mesh transport listener.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    ports: Arc<Vec<(u16, Protocol)>>,
) {
    let count = |result: &'static str| {
        proxy
            .metrics
            .inbound_connections
            .get_or_create(&InboundConnLabels {
                transport: "mtls",
                result,
            })
            .inc();
    };
    let Some(mesh) = proxy.mesh.clone().filter(|m| m.ready()) else {
        count("no_identity");
        tracing::warn!(%peer, "mesh transport connection refused: this proxy has no workload certificate");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(mesh.server.clone());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            count("handshake");
            tracing::info!(%peer, "mesh transport handshake refused: {e}");
            return;
        }
        Err(_) => {
            count("handshake");
            tracing::info!(%peer, "mesh transport handshake timed out");
            return;
        }
    };
    let Some(id) = peer_id(tls.get_ref().1) else {
        count("handshake");
        return;
    };
    count("accepted");
    let id = Arc::new(id);
    let served =
        isthmus_mesh::h2connect::server::serve(tls, &Settings::MESH, &proxy.drain, |inc| {
            connect(&proxy, &listener, peer, &id, &ports, inc)
        });
    let result = tokio::select! {
        r = served => r,
        _ = proxy.hard_stop.cancelled() => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "mesh transport connection ended: {e}");
    }
}

fn reply(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

/// Answers one CONNECT stream and serves it as an inbound connection.
fn connect(
    proxy: &Arc<Proxy>,
    listener: &Arc<str>,
    peer: SocketAddr,
    id: &Arc<SpiffeId>,
    ports: &[(u16, Protocol)],
    inc: Incoming,
) {
    let req = inc.request();
    if req.method() != Method::CONNECT {
        proxy.metrics.error("tunnel_not_connect");
        return inc.refuse(reply(StatusCode::METHOD_NOT_ALLOWED));
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        proxy.metrics.error("tunnel_bad_authority");
        return inc.refuse(reply(StatusCode::BAD_REQUEST));
    };
    // The sidecar serves one workload: the port picks the application port
    // (the address is the pod's, which the app may not listen on directly).
    let Some((port, protocol)) = ports.iter().find(|(p, _)| *p == target.port()).copied() else {
        proxy.metrics.error("tunnel_unknown_port");
        return inc.refuse(reply(StatusCode::NOT_FOUND));
    };
    let conn = Arc::new(ConnInfo {
        listener: listener.clone(),
        peer,
        direction: Direction::Inbound,
        target: Target::Service {
            name: inbound_service_name(port),
            port,
        },
        peer_id: Some(id.clone()),
    });
    if protocol == Protocol::Tcp && !authorize_tcp(proxy, &conn, port) {
        return inc.refuse(reply(StatusCode::FORBIDDEN));
    }
    match inc.accept() {
        Ok(stream) => {
            let p = proxy.clone();
            proxy.tracker.spawn(async move {
                listener::serve_inbound(p, conn, stream, port, protocol).await
            });
        }
        Err(e) => tracing::debug!("CONNECT stream not established: {e}"),
    }
}

/// Authorizes an opaque TCP connection (no method, path or token); a
/// denial is counted and logged with the rule that decided.
pub fn authorize_tcp(proxy: &Proxy, conn: &ConnInfo, port: u16) -> bool {
    let snap = proxy.store.load();
    let policies = &snap.security.authz;
    if policies.is_empty() {
        return true;
    }
    let source_cluster = crate::proxy::source_cluster(proxy, &snap, conn.peer_id.as_deref());
    let decision = policies.decide(&crate::authz::Attributes {
        principal: conn.peer_id.as_deref(),
        source_cluster: source_cluster.as_deref(),
        port,
        http: None,
        jwt: None,
    });
    crate::proxy::count_decision(proxy, &decision, "TCP");
    if decision.allowed() {
        return true;
    }
    crate::proxy::log_refused(
        proxy,
        conn,
        "AD",
        "denied by authorization policy".into(),
        Some(decision.rule()),
    );
    false
}
