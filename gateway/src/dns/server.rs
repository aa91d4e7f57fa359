//! The DNS proxy's listeners: UDP and TCP on one address, the answer
//! table rebuilt whenever the configuration changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::table::{self, Reply, Table};
use super::upstream::{self, ResolvConf, Upstream, UpstreamError};
use crate::config::store::Store;
use crate::telemetry::metrics::{Metrics, ResultLabels};

#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Where to listen (UDP and TCP); 127.0.0.1:15053 in a pod.
    pub address: SocketAddr,
    /// The resolvers to forward to, and the search list.
    pub resolv_conf: PathBuf,
    /// Forward to these instead of resolv.conf's servers (a node-local
    /// cache, say); the search list still comes from resolv.conf.
    pub upstream: Option<Vec<SocketAddr>>,
    /// The proxy's SO_MARK (`--mark`), put on forwarded queries.
    pub mark: Option<u32>,
}

/// Queries answered or forwarded at once over UDP; more wait.
const UDP_IN_FLIGHT: usize = 1024;
/// TCP connections at once; more wait.
const TCP_CONNECTIONS: usize = 256;
/// A TCP client silent this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// A running DNS proxy.
pub struct DnsProxy {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    stop: CancellationToken,
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    table: ArcSwap<Table>,
    upstream: Result<Upstream, UpstreamError>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn count(&self, result: &str) {
        self.metrics
            .dns_queries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }
}

/// What an answer made here says, for the metrics.
fn outcome(reply: &[u8]) -> &'static str {
    match reply.get(3).map(|b| b & 0x0f) {
        Some(0) => "answered",
        Some(1) => "formerr",
        Some(3) => "nxdomain",
        Some(4) => "notimp",
        _ => "answered",
    }
}

impl DnsProxy {
    /// Binds both listeners and serves until dropped. A resolv.conf that
    /// cannot be read is reported; names the proxy knows are still
    /// answered, others get SERVFAIL.
    pub async fn start(
        settings: DnsSettings,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        // The same port for TCP. Port 0: the UDP bind chooses, and if that
        // port's TCP twin is taken by someone else, another is chosen (a
        // few times); a fixed port is what it is.
        let mut tries = if settings.address.port() == 0 { 16 } else { 1 };
        let (udp, at, tcp) = loop {
            let udp = UdpSocket::bind(settings.address).await?;
            let at = udp.local_addr()?;
            match TcpListener::bind(at).await {
                Ok(tcp) => break (udp, at, tcp),
                Err(e) if tries > 1 && e.kind() == std::io::ErrorKind::AddrInUse => tries -= 1,
                Err(e) => return Err(e),
            }
        };
        let conf = ResolvConf::read(&settings.resolv_conf);
        let domain = match &conf {
            Ok(c) => c.cluster_domain(),
            Err(e) => {
                tracing::warn!("DNS proxy: {e}; only the mesh's names are answered");
                "cluster.local".to_string()
            }
        };
        let upstream = match settings.upstream {
            Some(servers) if !servers.is_empty() => {
                Ok(Upstream::new(servers, Duration::from_secs(2), 2))
            }
            _ => conf.map(|c| c.upstream),
        }
        .map(|u| u.with_mark(settings.mark));
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(Table::build(&store.load().source, &domain)),
            upstream,
            metrics,
        });
        let stop = CancellationToken::new();
        tokio::spawn(keep_table(store, shared.clone(), domain, stop.clone()));
        tokio::spawn(serve_udp(Arc::new(udp), shared.clone(), stop.clone()));
        tokio::spawn(serve_tcp(tcp, shared, stop.clone()));
        Ok(Self {
            udp: at,
            tcp: at,
            stop,
        })
    }
}

async fn keep_table(
    store: Arc<Store>,
    shared: Arc<Shared>,
    domain: String,
    stop: CancellationToken,
) {
    let mut generations = store.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = generations.changed() => if r.is_err() { return },
        }
        let t = Table::build(&store.load().source, &domain);
        tracing::debug!(names = t.len(), "DNS names updated");
        shared.table.store(Arc::new(t));
    }
}

/// The reply to one query, forwarding over UDP or TCP as it came.
async fn resolve(shared: &Shared, query: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    let table = shared.table.load();
    match table::answer(&table, query) {
        Reply::Answer(b) => {
            shared.count(outcome(&b));
            Some(b)
        }
        Reply::Drop => {
            shared.count("dropped");
            None
        }
        Reply::Forward { max_udp } => {
            drop(table);
            let forwarded = match &shared.upstream {
                Ok(up) if over_tcp => up.tcp(query).await,
                Ok(up) => up.udp(query, max_udp).await,
                Err(e) => Err(UpstreamError::Unanswered(e.to_string())),
            };
            match forwarded {
                Ok(b) => {
                    shared.count("forwarded");
                    Some(b)
                }
                Err(e) => {
                    shared.count("servfail");
                    tracing::warn!("DNS proxy: {e}");
                    table::servfail(query)
                }
            }
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(UDP_IN_FLIGHT));
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier replies surface here; go on.
                    tracing::debug!("DNS proxy: udp receive: {e}");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (query, socket, shared) = (buf[..n].to_vec(), socket.clone(), shared.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(reply) = resolve(&shared, &query, false).await
                && let Err(e) = socket.send_to(&reply, from).await
            {
                tracing::debug!(%from, "DNS proxy: udp send: {e}");
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("DNS proxy: tcp accept: {e}");
                    continue;
                }
            },
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, &shared) => {}
            }
        });
    }
}

/// Queries one after another on one connection, until the client ends
/// it or stays silent for `TCP_IDLE`.
async fn connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, upstream::read_frame(&mut stream)).await {
            Ok(Ok(Some(q))) => q,
            _ => return,
        };
        let Some(reply) = resolve(shared, &query, true).await else {
            return;
        };
        if upstream::write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}
