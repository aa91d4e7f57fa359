//! Upstream connections of one service: HTTP/1.1 keep-alive connections
//! (our own client, `h1`) reused per endpoint, one multiplexed HTTP/2 connection per endpoint, and
//! the service's circuit breakers: a cap on connections, on requests
//! waiting for one (pending), and on requests per connection. Limits are
//! per service across its endpoints, as in Envoy; a request beyond them is
//! refused at once with `PoolError::Overflow` (the caller sheds with 503).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod h1;
pub mod io;

pub use io::Io;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::config::snapshot::Tunnel;
use crate::config::{EndpointKey, EndpointSpec, PoolLimits};
use crate::proxy::body::ReqBody;
pub use isthmus_mesh::dial::{DialError, SocketOptions, dial};
use isthmus_mesh::transport::{Connector, TunnelError};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error(
        "circuit breaker open: {what} limit reached ({limit}); raise connectionPool limits if this is expected load"
    )]
    Overflow { what: &'static str, limit: usize },
    #[error("mesh transport: {0}")]
    Tunnel(Box<TunnelError>),
    #[error(
        "{addr} is reached over mesh mTLS but this proxy has no identity (start it with a CA and token)"
    )]
    NoIdentity { addr: SocketAddr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

struct IdleH1 {
    conn: h1::H1Conn,
    since: Instant,
    uses: u32,
}

struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    uses: u32,
}

#[derive(Default)]
struct EndpointConns {
    idle: Mutex<Vec<IdleH1>>,
    h2: tokio::sync::Mutex<Option<H2Conn>>,
}

pub struct Pool {
    limits: Mutex<PoolLimits>,
    connections: Arc<AtomicUsize>,
    pending: AtomicUsize,
    released: Arc<Notify>,
    /// By endpoint at a port (`EndpointKey::at`): endpoints of several
    /// linked clusters share our gateway's address and may share a target
    /// port; their connections must not.
    endpoints: Mutex<HashMap<EndpointKey, Arc<EndpointConns>>>,
    tracker: TaskTracker,
    socket: SocketOptions,
    /// isthmus_upstream_connections of this service.
    gauge: Gauge,
    /// The mesh transport, for endpoints reached through their sidecar.
    connector: Option<Arc<Connector>>,
}

/// A connection checked out for one request.
pub enum Sender {
    H1(h1::H1Conn),
    H2(http2::SendRequest<ReqBody>),
}

pub struct Lease {
    sender: Option<Sender>,
    uses: u32,
    ep: Arc<EndpointConns>,
    released: Arc<Notify>,
    max_uses: Option<u32>,
}

impl Lease {
    pub fn sender(&mut self) -> &mut Sender {
        self.sender
            .as_mut()
            .expect("lease holds a sender until released")
    }

    /// The HTTP/1.1 connection, unless an upgrade took it.
    pub fn h1_mut(&mut self) -> Option<&mut h1::H1Conn> {
        match self.sender.as_mut()? {
            Sender::H1(c) => Some(c),
            Sender::H2(_) => None,
        }
    }

    /// Takes the HTTP/1.1 connection out (101 Switching Protocols).
    pub fn take_h1(&mut self) -> Option<h1::H1Conn> {
        match self.sender.take()? {
            Sender::H1(c) => Some(c),
            other => {
                self.sender = Some(other);
                None
            }
        }
    }

    /// Returns an HTTP/1.1 connection to the idle list; call only after the
    /// response was read to its end. Dropping a lease instead closes it.
    pub fn release(mut self) {
        if let Some(Sender::H1(conn)) = self.sender.take()
            && self.max_uses.is_none_or(|m| self.uses < m)
        {
            self.ep.idle.lock().push(IdleH1 {
                conn,
                since: Instant::now(),
                uses: self.uses,
            });
            self.released.notify_waiters();
        }
    }
}

/// Holds one slot of the service's connection limit until dropped.
pub struct ConnGuard {
    count: Arc<AtomicUsize>,
    released: Arc<Notify>,
    gauge: Gauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
        self.released.notify_waiters();
    }
}

impl Pool {
    pub fn new(
        limits: PoolLimits,
        tracker: TaskTracker,
        socket: SocketOptions,
        gauge: Gauge,
        connector: Option<Arc<Connector>>,
    ) -> Self {
        Self {
            connector,
            limits: Mutex::new(limits),
            connections: Arc::new(AtomicUsize::new(0)),
            pending: AtomicUsize::new(0),
            released: Arc::new(Notify::new()),
            endpoints: Mutex::new(HashMap::new()),
            tracker,
            socket,
            gauge,
        }
    }

    pub fn set_limits(&self, limits: PoolLimits) {
        *self.limits.lock() = limits;
    }

    pub fn limits(&self) -> PoolLimits {
        *self.limits.lock()
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Drops idle state of endpoints (at a port) no longer in the service.
    pub fn retain(&self, live: &HashSet<EndpointKey>) {
        self.endpoints.lock().retain(|k, _| live.contains(k));
    }

    fn endpoint(&self, key: EndpointKey) -> Arc<EndpointConns> {
        self.endpoints.lock().entry(key).or_default().clone()
    }

    fn try_reserve(&self) -> Option<ConnGuard> {
        let max = self.limits().max_connections;
        let mut cur = self.connections.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self.connections.compare_exchange(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.gauge.inc();
                    return Some(ConnGuard {
                        count: self.connections.clone(),
                        released: self.released.clone(),
                        gauge: self.gauge.clone(),
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves a connection slot, waiting as a pending request when all
    /// are taken (refused beyond max_pending). Also returns early when an
    /// idle connection to `ep` appears (`Ok(None)`).
    async fn reserve(&self, ep: &EndpointConns) -> Result<Option<ConnGuard>, PoolError> {
        let mut counted = false;
        let result = loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_reserve() {
                break Ok(Some(g));
            }
            if counted && !ep.idle.lock().is_empty() {
                break Ok(None);
            }
            if !counted {
                let limit = self.limits().max_pending;
                if self.pending.fetch_add(1, Ordering::AcqRel) >= limit {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(PoolError::Overflow {
                        what: "max pending requests",
                        limit,
                    });
                }
                counted = true;
            }
            notified.await;
        };
        if counted {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// Opens a TCP connection counted against the service's connection
    /// limit (for opaque TCP proxying). The guard is released when the
    /// returned stream's owner drops the guard.
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        tunnel: Option<&Tunnel>,
    ) -> Result<(Io, ConnGuard), PoolError> {
        let guard = self.try_reserve().ok_or_else(|| PoolError::Overflow {
            what: "max connections",
            limit: self.limits().max_connections,
        })?;
        let stream = self.dial(addr, tunnel).await?;
        Ok((stream, guard))
    }

    /// A plain TCP connection, or a CONNECT stream through the endpoint's
    /// sidecar when it has one.
    async fn dial(&self, addr: SocketAddr, tunnel: Option<&Tunnel>) -> Result<Io, PoolError> {
        let timeout = self.limits().connect_timeout;
        let Some(t) = tunnel else {
            return Ok(Io::Tcp(dial(addr, timeout, self.socket).await?));
        };
        let connector = self
            .connector
            .as_ref()
            .ok_or(PoolError::NoIdentity { addr })?;
        let sidecar = SocketAddr::new(addr.ip(), t.port);
        let tunnel_err = |e: TunnelError| match e {
            TunnelError::Connect(e) => PoolError::Dial(e),
            e => PoolError::Tunnel(Box::new(e)),
        };
        let expect = connector
            .expect(t.identity.as_ref(), sidecar)
            .map_err(tunnel_err)?;
        let stream = match &t.via {
            // `sidecar` is then our east-west gateway's local entry; the
            // timeout covers the whole way (both gateways, the remote
            // gateway's dials of its endpoints, the inner handshake).
            Some(via) => {
                let timeout = timeout.max(VIA_CONNECT_TIMEOUT);
                let target_port = addr.port();
                let authority = via
                    .authority(target_port)
                    .ok_or_else(|| TunnelError::ViaPort {
                        cluster: via.cluster.to_string(),
                        service: via.service.to_string(),
                        target_port,
                    })
                    .map_err(tunnel_err)?;
                connector
                    .connect_via(
                        sidecar,
                        &via.cluster,
                        &authority,
                        target_port,
                        expect,
                        timeout,
                    )
                    .await
                    .map_err(tunnel_err)?
            }
            None => connector
                .connect(sidecar, expect, addr, timeout)
                .await
                .map_err(tunnel_err)?,
        };
        Ok(Io::Tunnel(Box::new(stream)))
    }

    /// Checks out a connection to `endpoint` at `addr` (its address for
    /// the request's port) speaking `version`.
    pub async fn acquire(
        &self,
        endpoint: &EndpointSpec,
        addr: SocketAddr,
        version: Version,
    ) -> Result<Lease, PoolError> {
        let tunnel = endpoint.tunnel.as_ref();
        let ep = self.endpoint(endpoint.key().at(addr.port()));
        let limits = self.limits();
        match version {
            Version::Http1 => loop {
                if let Some(lease) = self.take_idle(&ep, &limits) {
                    return Ok(lease);
                }
                let Some(guard) = self.reserve(&ep).await? else {
                    continue;
                };
                let stream = self.dial(addr, tunnel).await?;
                return Ok(Lease {
                    sender: Some(Sender::H1(h1::H1Conn::new(stream, guard))),
                    uses: 1,
                    ep,
                    released: self.released.clone(),
                    max_uses: limits.max_requests_per_connection,
                });
            },
            Version::Http2 => {
                let mut slot = ep.h2.lock().await;
                if let Some(c) = slot.as_mut()
                    && !c.sender.is_closed()
                    && limits
                        .max_requests_per_connection
                        .is_none_or(|m| c.uses < m)
                {
                    c.uses += 1;
                    return Ok(Lease {
                        sender: Some(Sender::H2(c.sender.clone())),
                        uses: c.uses,
                        ep: ep.clone(),
                        released: self.released.clone(),
                        max_uses: None,
                    });
                }
                // Retire the old connection (in-flight streams finish on it).
                *slot = None;
                let guard = loop {
                    if let Some(g) = self.reserve(&ep).await? {
                        break g;
                    }
                };
                let stream = self.dial(addr, tunnel).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(4 * 1024 * 1024)
                    .initial_connection_window_size(8 * 1024 * 1024)
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|source| PoolError::Handshake { addr, source })?;
                self.tracker.spawn(async move {
                    let _guard = guard;
                    let _ = conn.await;
                });
                *slot = Some(H2Conn {
                    sender: sender.clone(),
                    uses: 1,
                });
                Ok(Lease {
                    sender: Some(Sender::H2(sender)),
                    uses: 1,
                    ep: ep.clone(),
                    released: self.released.clone(),
                    max_uses: None,
                })
            }
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self, ep: &Arc<EndpointConns>, limits: &PoolLimits) -> Option<Lease> {
        loop {
            let mut c = ep.idle.lock().pop()?;
            if c.since.elapsed() > limits.idle_timeout || c.conn.is_stale() {
                continue; // dropping it closes the connection
            }
            return Some(Lease {
                sender: Some(Sender::H1(c.conn)),
                uses: c.uses + 1,
                ep: ep.clone(),
                released: self.released.clone(),
                max_uses: limits.max_requests_per_connection,
            });
        }
    }
}

/// The least connect timeout through a linked cluster's gateway: the
/// remote gateway may try several endpoints, each within its own connect
/// timeout, before it answers.
pub const VIA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with a timeout, TCP_NODELAY and the proxy's socket options.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::Via;

    #[test]
    fn endpoints_via_different_clusters_never_share_connections() {
        let pool = Pool::new(
            PoolLimits::default(),
            TaskTracker::new(),
            SocketOptions::default(),
            Gauge::default(),
            None,
        );
        // Two clusters' catalog behind our gateway entry: same address,
        // same target port; only the cluster tells them apart.
        let addr: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let via = |cluster: &str| Tunnel {
            port: 15009,
            identity: None,
            via: Some(Arc::new(Via {
                cluster: cluster.into(),
                service: "catalog.shop".into(),
                ports: vec![(8080, 80)],
            })),
        };
        let ep = |tunnel: Option<Tunnel>| EndpointSpec {
            tunnel,
            ..EndpointSpec::at(addr)
        };
        let key = |tunnel: Option<Tunnel>| ep(tunnel).key().at(addr.port());
        let a = pool.endpoint(key(Some(via("eu-west"))));
        let b = pool.endpoint(key(Some(via("eu-central"))));
        assert!(!Arc::ptr_eq(&a, &b), "one pool per cluster");
        assert!(Arc::ptr_eq(&a, &pool.endpoint(key(Some(via("eu-west"))))));
        assert!(
            !Arc::ptr_eq(&a, &pool.endpoint(key(None))),
            "a local endpoint is another"
        );
        pool.retain(&HashSet::from([key(Some(via("eu-central")))]));
        assert!(
            Arc::ptr_eq(&b, &pool.endpoint(key(Some(via("eu-central"))))),
            "kept while live"
        );
        assert!(
            !Arc::ptr_eq(&a, &pool.endpoint(key(Some(via("eu-west"))))),
            "the other cluster's dropped"
        );
        pool.retain(&HashSet::new());
        assert!(
            !Arc::ptr_eq(&b, &pool.endpoint(key(Some(via("eu-central"))))),
            "dropped when gone"
        );
    }
}
