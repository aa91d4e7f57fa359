//! The east-west role started on top of a running sidecar (its store,
//! identity and metrics): the QUIC and TCP-fallback tunnel servers, the
//! local entry, and the links to the peers (from `--eastwest-config` and
//! from the control plane's ClusterLinks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::EastWestConfig;
use super::gateway::Gateway;
use super::{quic, server};
use crate::sidecar::Sidecar;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the east-west gateway needs an identity: give it --ca-token or --cert-file (its peers verify its SPIFFE certificate)"
    )]
    NoIdentity,
    #[error(transparent)]
    Quic(#[from] quic::QuicError),
    #[error("cannot listen on TCP {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started east-west role: where it listens, and the gateway (links,
/// status).
pub struct EastWest {
    pub quic: SocketAddr,
    pub tcp: SocketAddr,
    pub local: SocketAddr,
    pub gateway: Arc<Gateway>,
}

impl EastWest {
    /// After its `stop`: waits up to `deadline` for the role's tasks (the
    /// servers close their connections; streams still open are cut when
    /// the deadline passes and the runtime ends).
    pub async fn drained(&self, deadline: Duration) {
        self.gateway.tasks.close();
        if tokio::time::timeout(deadline, self.gateway.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.gateway.tasks.len(),
                "east-west streams still open after the drain deadline"
            );
        }
    }
}

/// Starts the role on `sidecar` until `stop`.
pub async fn start(
    sidecar: &Sidecar,
    ew: EastWestConfig,
    stop: CancellationToken,
) -> Result<EastWest, StartError> {
    start_with(sidecar, ew, None, stop).await
}

/// `start`, with the local entry's socket bound beforehand (`local`, at
/// `ew.local`'s address) when given.
pub async fn start_with(
    sidecar: &Sidecar,
    ew: EastWestConfig,
    local: Option<std::net::TcpListener>,
    stop: CancellationToken,
) -> Result<EastWest, StartError> {
    let proxy = sidecar.proxy.clone();
    let tls = proxy.mesh.clone().ok_or(StartError::NoIdentity)?;
    let peers = Arc::new(server::Peers {
        allowed: ew.admit.clone(),
        exports: ew.exports.clone(),
    });
    let admit = server::admission(&peers, &proxy);
    let endpoint = quic::endpoint_admitting(&tls, ew.quic, ew.congestion, Some(admit))?;
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let tcp = bind("HTTP/2 fallback", ew.tcp).await?;
    let local = match local {
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(|source| StartError::Bind {
                what: "local entry",
                addr: ew.local,
                source,
            })?,
        None => bind("local entry", ew.local).await?,
    };
    let addr = |r: std::io::Result<SocketAddr>, what, addr| {
        r.map_err(|source| StartError::Bind { what, addr, source })
    };
    let started = (
        addr(endpoint.local_addr(), "QUIC", ew.quic)?,
        addr(tcp.local_addr(), "HTTP/2 fallback", ew.tcp)?,
        addr(local.local_addr(), "local entry", ew.local)?,
    );
    let mut gw = Gateway::new(
        tls,
        endpoint.clone(),
        ew.peer_configs(),
        proxy.metrics.clone(),
    );
    gw.cluster = ew.cluster.clone();
    let gw = Arc::new(gw);
    gw.tasks.spawn(server::serve_tcp(
        tcp,
        proxy.clone(),
        peers.clone(),
        stop.clone(),
    ));
    gw.tasks
        .spawn(server::serve(endpoint, proxy.clone(), peers, stop.clone()));
    gw.clone()
        .follow_config(proxy.store.clone(), ew.peer_configs(), stop.clone());
    gw.clone().watch_peers(stop.clone());
    let view = gw.clone();
    sidecar.add_admin_view("/eastwest", Arc::new(move || view.status()));
    gw.spawn_stats(Duration::from_secs(1), stop.clone());
    gw.tasks.spawn(gw.clone().serve_local(local, stop));
    Ok(EastWest {
        quic: started.0,
        tcp: started.1,
        local: started.2,
        gateway: gw,
    })
}
