//! East-west helpers shared by tests and benchmarks: gateway identities,
//! services to put behind a receiving gateway, and the receiving gateway
//! itself (QUIC and the TCP fallback).

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_api::model;
use isthmus_gateway::config::Store;
use isthmus_gateway::eastwest::quic::{self, Congestion};
use isthmus_gateway::eastwest::server;
use isthmus_gateway::proxy::Proxy;
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_gateway::telemetry::metrics::Metrics;
use isthmus_mesh::identity::Identity;
use isthmus_mesh::tls::MeshTls;
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki::Ca;

/// A one-worker runtime (for a gateway on a thread of its own, e.g. inside
/// a network namespace).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// `ca`'s east-west gateway identity, trusting every CA in `trusted`.
pub fn gateway_identity(ca: &Ca, trusted: &[&Ca]) -> Arc<MeshTls> {
    let mut creds = ca.issue("isthmus-system", "isthmus-eastwest");
    for t in trusted {
        creds
            .trust_bundles
            .insert(t.trust_domain.clone(), t.pem.clone());
    }
    Arc::new(MeshTls::new(Identity::fixed(creds)))
}

/// A TCP service `name` with port `port` served at `target`.
pub fn tcp_service(name: &str, port: u32, target: SocketAddr) -> model::Service {
    model::Service {
        name: name.into(),
        ports: vec![model::ServicePort {
            port,
            target_port: target.port().into(),
            protocol: model::Protocol::Tcp as i32,
            ..Default::default()
        }],
        endpoints: vec![model::Endpoint {
            address: target.ip().to_string(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A receiving gateway's addresses and parts.
pub struct Receiving {
    /// QUIC (UDP).
    pub udp: SocketAddr,
    /// The HTTP/2-over-TLS fallback (TCP).
    pub tcp: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub peers: Arc<server::Peers>,
}

/// Serves `services` to admitted `peers` on `addr` (UDP and TCP; port 0
/// picks one for each) until `stop`.
pub async fn receiving_gateway(
    tls: Arc<MeshTls>,
    services: Vec<model::Service>,
    addr: SocketAddr,
    peers: server::Peers,
    sink: Sink,
    cc: Congestion,
    stop: &CancellationToken,
) -> Receiving {
    let store = Arc::new(Store::new());
    store
        .apply(&model::ProxyConfig {
            services,
            ..Default::default()
        })
        .unwrap();
    let proxy = Arc::new(Proxy::new(
        store,
        Arc::new(Metrics::new()),
        sink,
        Default::default(),
        Some(tls.clone()),
    ));
    let peers = Arc::new(peers);
    let admit = server::admission(&peers, &proxy);
    let endpoint = quic::endpoint_admitting(&tls, addr, cc, Some(admit)).unwrap();
    let udp = endpoint.local_addr().unwrap();
    tokio::spawn(server::serve(
        endpoint,
        proxy.clone(),
        peers.clone(),
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let tcp = listener.local_addr().unwrap();
    tokio::spawn(server::serve_tcp(
        listener,
        proxy.clone(),
        peers.clone(),
        stop.clone(),
    ));
    Receiving {
        udp,
        tcp,
        proxy,
        peers,
    }
}

/// How an endpoint's connection ended: `Ok` for a clean end (FIN), the
/// error kind for a reset.
pub type Ended = Result<(), std::io::ErrorKind>;

/// A TCP echo that reports how each connection ended, and resets a
/// connection (RST, zero linger) when it reads "reset me".
pub async fn reporting_echo() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Ended>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => {
                            let _ = s.shutdown().await;
                            return tx.send(Ok(())).unwrap();
                        }
                        Ok(n) if buf[..n].ends_with(b"reset me") => {
                            s.set_zero_linger().unwrap();
                            return drop(s);
                        }
                        Ok(n) => {
                            if let Err(e) = s.write_all(&buf[..n]).await {
                                return tx.send(Err(e.kind())).unwrap();
                            }
                        }
                        Err(e) => return tx.send(Err(e.kind())).unwrap(),
                    }
                }
            });
        }
    });
    (addr, ended)
}

/// A UDP relay in front of `to` that can go silent (drop everything both
/// ways, as a dead host or a black-holed path would), unlike a stopped
/// peer whose kernel or QUIC stack still answers.
pub async fn udp_relay(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let client = Arc::new(std::sync::Mutex::new(None::<std::net::SocketAddr>));
    {
        let (front, back, silent, client) =
            (front.clone(), back.clone(), silent.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if !silent.load(Ordering::Relaxed) {
                    let _ = back.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    {
        let silent = silent.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let dest = *client.lock().unwrap();
                if let Some(c) = dest
                    && !silent.load(Ordering::Relaxed)
                {
                    let _ = front.send_to(&buf[..n], c).await;
                }
            }
        });
    }
    (addr, silent)
}
