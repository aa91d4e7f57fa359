//! Listeners: bound from the snapshot's listener list and reconciled on
//! every config change (a listener whose spec is unchanged keeps its
//! socket; a removed one stops accepting while its connections finish).
//! Each accepted connection is served as HTTP (HTTP/1.1 and h2c on the same
//! port) or proxied as opaque TCP, by the listener's kind and, for captured
//! connections, their original destination.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::downstream::{Park, serve_http};
use super::{ConnInfo, Proxy, Target, tcp};
use crate::config::snapshot::MtlsMode;
use crate::config::snapshot::inbound_service_name;
use crate::config::{ListenerKind, ListenerSpec, Protocol, Snapshot};
use crate::telemetry::metrics::{Direction, InboundConnLabels};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "cannot listen on {addr} for listener {name}: {source} (is another process using the port?)"
    )]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Active {
    spec: ListenerSpec,
    bound: SocketAddr,
    stop: CancellationToken,
}

pub struct Listeners {
    proxy: Arc<Proxy>,
    active: Mutex<HashMap<String, Active>>,
    /// Sockets bound by whoever started us (socket activation, tests),
    /// taken by the listener whose address they are bound to.
    prebound: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
}

impl Listeners {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self::with_prebound(proxy, Vec::new())
    }

    /// With listening sockets already bound: a listener whose configured
    /// address is one of theirs serves it instead of binding anew.
    pub fn with_prebound(proxy: Arc<Proxy>, prebound: Vec<std::net::TcpListener>) -> Self {
        let prebound = prebound
            .into_iter()
            .filter_map(|l| Some((l.local_addr().ok()?, l)))
            .collect();
        Self {
            proxy,
            active: Mutex::new(HashMap::new()),
            prebound: Mutex::new(prebound),
        }
    }

    /// The prebound socket for `addr`, or a new one bound there.
    async fn bind(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let held = self.prebound.lock().remove(&addr);
        match held {
            Some(l) => {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }
            None => bind(addr).await,
        }
    }

    /// The address a listener is bound to (resolves port 0).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.active.lock().get(name).map(|a| a.bound)
    }

    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self
            .active
            .lock()
            .iter()
            .map(|(n, a)| (n.clone(), a.bound))
            .collect();
        v.sort();
        v
    }

    /// Brings listeners in line with `snap`. Listeners that fail to bind are
    /// reported; the others are served.
    pub async fn reconcile(&self, snap: &Snapshot) -> Vec<ListenerError> {
        let mut errors = Vec::new();
        let wanted: HashMap<&str, &ListenerSpec> = snap
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        {
            let mut active = self.active.lock();
            active.retain(|name, a| {
                let keep = wanted.get(name.as_str()).is_some_and(|w| **w == a.spec);
                if !keep {
                    a.stop.cancel();
                }
                keep
            });
        }
        for spec in &snap.listeners {
            if self.active.lock().contains_key(&spec.name) {
                continue;
            }
            let listener = match self.bind(spec.address).await {
                Ok(l) => l,
                Err(source) => {
                    errors.push(ListenerError::Bind {
                        name: spec.name.clone(),
                        addr: spec.address,
                        source,
                    });
                    continue;
                }
            };
            let bound = listener.local_addr().unwrap_or(spec.address);
            let stop = self.proxy.drain.child_token();
            tracing::info!(listener = %spec.name, address = %bound, "listening");
            self.proxy.tracker.spawn(accept_loop(
                self.proxy.clone(),
                Arc::new(spec.clone()),
                listener,
                stop.clone(),
            ));
            self.active.lock().insert(
                spec.name.clone(),
                Active {
                    spec: spec.clone(),
                    bound,
                    stop,
                },
            );
        }
        errors
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    spec: Arc<ListenerSpec>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let name: Arc<str> = spec.name.as_str().into();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                proxy.tracker.spawn(handle_connection(
                    proxy.clone(),
                    spec.clone(),
                    name.clone(),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep going.
                proxy.metrics.error("accept");
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The destination a connection had before iptables redirected it, if it
/// was redirected.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    }
    .ok()?
    .as_socket()?;
    (dst != local).then_some(dst)
}

/// A connection's task. Its future is as large as its largest branch's,
/// for as long as the connection lives: the branches other than plain
/// HTTP (the common long-lived idle connection) are boxed, so a parked
/// HTTP/1.1 connection's task stays small (issue 24).
async fn handle_connection(
    proxy: Arc<Proxy>,
    spec: Arc<ListenerSpec>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let info = |direction, target| {
        Arc::new(ConnInfo {
            listener: listener.clone(),
            peer,
            direction,
            target,
            peer_id: None,
        })
    };
    match &spec.kind {
        ListenerKind::Http => {
            serve_http(proxy, info(Direction::Outbound, Target::Host), stream).await
        }
        ListenerKind::Tcp { service, port } => {
            let snap = proxy.store.load();
            let Some(s) = snap.services.get(service).cloned() else {
                proxy.metrics.error("no_service");
                return;
            };
            let Some(p) = s.port(*port).copied() else {
                proxy.metrics.error("no_port");
                return;
            };
            Box::pin(tcp::proxy_to_service(
                proxy,
                info(Direction::Outbound, Target::Host),
                stream,
                s,
                p,
            ))
            .await
        }
        ListenerKind::Transparent { passthrough } => {
            let Some(dst) = original_dst(&stream) else {
                proxy.metrics.error("no_original_dst");
                tracing::debug!(%peer, "connection on the transparent listener was not redirected; closing");
                return;
            };
            let snap = proxy.store.load();
            match snap.service_for_vip(dst).cloned() {
                Some(s) => {
                    let p = *s
                        .port(Some(dst.port()))
                        .expect("VIP index holds only service ports");
                    let target = Target::Service {
                        name: s.name.to_string(),
                        port: p.port,
                    };
                    let conn = info(Direction::Outbound, target);
                    if p.protocol.is_http() {
                        serve_http(proxy, conn, stream).await
                    } else {
                        Box::pin(tcp::proxy_to_service(proxy, conn, stream, s, p)).await
                    }
                }
                None if *passthrough => {
                    Box::pin(tcp::passthrough(
                        proxy,
                        info(Direction::Outbound, Target::Host),
                        stream,
                        dst,
                    ))
                    .await
                }
                None => {
                    proxy.metrics.error("unmatched_destination");
                    tracing::debug!(%dst, "no service for captured destination; closing (unmatched: REJECT)");
                }
            }
        }
        ListenerKind::Inbound { ports } => {
            let wanted = original_dst(&stream).map(|d| d.port());
            let chosen = match wanted {
                Some(p) => ports.iter().find(|(port, _)| *port == p).copied(),
                None => ports.first().copied(),
            };
            let Some((port, protocol)) = chosen else {
                proxy.metrics.error("inbound_port_unknown");
                tracing::debug!(
                    ?wanted,
                    "inbound connection for a port the application does not declare"
                );
                return;
            };
            let conn = info(
                Direction::Inbound,
                Target::Service {
                    name: inbound_service_name(port),
                    port,
                },
            );
            if !plaintext_allowed(&proxy, &conn) {
                return;
            }
            Box::pin(serve_inbound(proxy, conn, stream, port, protocol)).await
        }
        ListenerKind::Tunnel { ports } => {
            Box::pin(crate::transport::server::serve(
                proxy,
                listener,
                stream,
                peer,
                Arc::new(ports.clone()),
            ))
            .await
        }
    }
}

/// Plaintext inbound is refused when the workload's mode is STRICT.
fn plaintext_allowed(proxy: &Proxy, conn: &ConnInfo) -> bool {
    let snap = proxy.store.load();
    let strict = snap.security.mode == MtlsMode::Strict;
    let result = if strict { "strict_mode" } else { "accepted" };
    proxy
        .metrics
        .inbound_connections
        .get_or_create(&InboundConnLabels {
            transport: "plaintext",
            result,
        })
        .inc();
    if strict {
        tracing::debug!(peer = %conn.peer, policy = %snap.security.mode_source, "plaintext inbound connection refused: mTLS mode is STRICT");
        super::log_refused(
            proxy,
            conn,
            "MT",
            format!(
                "plaintext refused: mTLS mode STRICT (from {})",
                snap.security.mode_source
            ),
            None,
        );
    }
    !strict
}

/// Serves one inbound connection (plaintext, or a mesh transport stream)
/// for the application port `port`.
pub async fn serve_inbound<S>(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    stream: S,
    port: u16,
    protocol: Protocol,
) where
    S: Park + isthmus_mesh::h2connect::Abort + crate::splice::Halves,
{
    if protocol == Protocol::Tcp {
        if conn.peer_id.is_none() && !crate::transport::server::authorize_tcp(&proxy, &conn, port) {
            return;
        }
        let snap = proxy.store.load();
        let Some(s) = snap.services.get(&inbound_service_name(port)).cloned() else {
            return;
        };
        let p = s.ports[0];
        tcp::proxy_to_service(proxy, conn, stream, s, p).await
    } else {
        serve_http(proxy, conn, stream).await
    }
}
