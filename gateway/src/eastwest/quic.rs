//! QUIC endpoints for the east-west tunnels, from the workload's mesh TLS:
//! ALPN `h3`, TLS 1.3 with client certificates, SPIFFE verification of the
//! peer against the trust bundle of its own trust domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use isthmus_mesh::tls::MeshTls;

pub const ALPN_H3: &[u8] = b"h3";
/// Keep-alive: a quiet tunnel stays up, and a live peer is heard from
/// several times within `gateway::DEAD_AFTER` (peer liveness), at the cost
/// of a PING and its ACK five times a second per peer.
pub const KEEP_ALIVE: Duration = Duration::from_millis(200);
/// A path that answers nothing for this long is dead: the link closes and
/// the next stream races QUIC and the fallback again. Short, for fast
/// failover, yet many PTOs even at a 300 ms RTT (RFC 9000 §10.1).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest UDP payload MTU discovery probes for (and that we accept):
/// ten of them, quinn's segmentation-offload batch, fit in one 64 KiB send.
pub const MTU_UPPER_BOUND: u16 = 6144;

/// The TCP fallback's HTTP/2: the mesh transport's windows, pinged as
/// often as QUIC's keep-alive and given up after its idle timeout.
pub fn fallback_settings() -> isthmus_mesh::h2connect::Settings {
    isthmus_mesh::h2connect::Settings::MESH.pinging(KEEP_ALIVE, IDLE_TIMEOUT)
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The QUIC congestion controller of the tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Loss-based (RFC 9438), quinn's default.
    Cubic,
    /// Model-based: paces to the measured bottleneck rate and does not
    /// back off on random loss, which WAN links between regions have.
    #[default]
    Bbr,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            _ => Err(format!("congestion control {s:?}: use cubic or bbr")),
        }
    }
}

fn transport(cc: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    match cc {
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("10 s is a valid idle timeout"),
    ));
    // Bulk streams need room in flight (STACK.md: 8 MiB / 64 MiB).
    t.stream_receive_window((8u32 * 1024 * 1024).into());
    t.receive_window((64u32 * 1024 * 1024).into());
    t.send_window(64 * 1024 * 1024);
    t.max_concurrent_bidi_streams(4096u32.into());
    // Search above Ethernet's 1452 (RFC 8899: probes are padded PINGs
    // whose loss only ends the search, so a 1500-byte path keeps 1452),
    // up to 6144: on a jumbo-frame network or loopback a packet then
    // carries 4.2 times the bytes for the same per-packet crypto and
    // system calls. Not more: quinn hands the kernel up to 10 datagrams
    // in one segmentation-offload send, which must stay within 64 KiB
    // (10 x 8192 is refused with EMSGSIZE, which quinn counts as loss, and
    // its black-hole detection then drops the path to 1200 bytes: measured
    // in BENCHMARKS.md).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// How long a session ticket a gateway issued stays good: a resumed (and
/// 0-RTT) connection relies on the identities proven in the handshake that
/// made it, so it may not outlive them by much (workload certificates
/// last an hour and more).
pub const TICKET_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The mesh TLS configurations for the tunnels, with resumption and 0-RTT
/// (the mesh transport itself has neither). Replay is harmless here: the
/// only thing sent early is a CONNECT, whose payload is the client
/// sidecar's own TLS session, which a replay cannot complete; and each
/// ticket is good once (the server's cache hands it out by `take`).
fn tunnel_tls(
    tls: &MeshTls,
    admit: Option<isthmus_mesh::tls::Admit>,
) -> (rustls::ClientConfig, rustls::ServerConfig) {
    let (mut client, mut server) = match admit {
        Some(admit) => tls.configs_admitting(ALPN_H3, admit),
        None => tls.configs_for(ALPN_H3),
    };
    client.resumption = rustls::client::Resumption::in_memory_sessions(256);
    client.enable_early_data = true;
    server.session_storage = Arc::new(SessionCache::new(4096, TICKET_MAX_AGE));
    // One ticket per connection: a link is long-lived and each new one
    // brings a fresh ticket; a second would only be spent on a second
    // refused 0-RTT after the peer lost its cache (a restart).
    server.send_tls13_tickets = 1;
    server.max_early_data_size = u32::MAX; // what QUIC requires to allow 0-RTT
    (client, server)
}

/// Session id -> (stored at, session).
type Sessions = std::collections::HashMap<Vec<u8>, (std::time::Instant, Vec<u8>)>;

/// A server session cache whose entries expire after `ttl` and are taken
/// once: resumption within the ticket's age, and no 0-RTT replay.
#[derive(Debug)]
pub struct SessionCache {
    max: usize,
    ttl: Duration,
    map: parking_lot::Mutex<Sessions>,
}

impl SessionCache {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            max,
            ttl,
            map: Default::default(),
        }
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut map = self.map.lock();
        let now = std::time::Instant::now();
        map.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if map.len() >= self.max
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key, (now, value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let map = self.map.lock();
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut map = self.map.lock();
        map.remove(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The QUIC server and client configurations of an endpoint, over one
/// pair of tunnel TLS configurations and one transport configuration.
fn configs(
    tls: &MeshTls,
    cc: Congestion,
    admit: Option<isthmus_mesh::tls::Admit>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), QuicError> {
    let (client, server) = tunnel_tls(tls, admit);
    let unusable = |e: &dyn std::fmt::Display| QuicError::Tls(e.to_string());
    let server = QuicServerConfig::try_from(server).map_err(|e| unusable(&e))?;
    let client = QuicClientConfig::try_from(client).map_err(|e| unusable(&e))?;
    let transport = transport(cc);
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(server));
    s.transport_config(transport.clone());
    let mut c = quinn::ClientConfig::new(Arc::new(client));
    c.transport_config(transport);
    Ok((s, c))
}

/// A QUIC endpoint that serves peers on `addr` and connects to them
/// (BBR congestion control).
pub fn endpoint(tls: &MeshTls, addr: SocketAddr) -> Result<quinn::Endpoint, QuicError> {
    endpoint_with(tls, addr, Congestion::default())
}

/// `endpoint` with the congestion controller `cc`.
pub fn endpoint_with(
    tls: &MeshTls,
    addr: SocketAddr,
    cc: Congestion,
) -> Result<quinn::Endpoint, QuicError> {
    endpoint_admitting(tls, addr, cc, None)
}

/// `endpoint_with`, refusing in the handshake the peers `admit` does not
/// accept (`MeshTls::configs_admitting`).
pub fn endpoint_admitting(
    tls: &MeshTls,
    addr: SocketAddr,
    cc: Congestion,
    admit: Option<isthmus_mesh::tls::Admit>,
) -> Result<quinn::Endpoint, QuicError> {
    let bind = |source| QuicError::Bind { addr, source };
    let socket = udp_socket(addr).map_err(bind)?;
    let (server, client) = configs(tls, cc, admit)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind(std::io::Error::other("no async runtime for QUIC")))?;
    // Accept datagrams as large as MTU discovery may find (the peer's
    // discovery stops at what we advertise here).
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MTU_UPPER_BOUND)
        .expect("MTU_UPPER_BOUND is a valid UDP payload size");
    let mut e = quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind)?;
    e.set_default_client_config(client);
    Ok(e)
}

/// Socket buffers of the tunnels' UDP socket: the kernel's 208 KiB default
/// holds well under a millisecond of a busy tunnel, and a receive burst
/// while the endpoint task waits for a core is dropped, which congestion
/// control reads as loss. (Capped by net.core.rmem_max / wmem_max.)
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with `UDP_BUFFER`-sized buffers.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller cap still works, only less well.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The SPIFFE ID a QUIC peer proved in its handshake.
pub fn peer_id(conn: &quinn::Connection) -> Option<isthmus_mesh::SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    isthmus_mesh::SpiffeId::from_cert(certs.first()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::StoresServerSessions;

    #[test]
    fn session_cache_takes_once_expires_and_evicts_the_oldest() {
        let c = SessionCache::new(2, Duration::from_secs(3600));
        assert!(c.put(b"a".to_vec(), b"1".to_vec()));
        assert_eq!(c.get(b"a"), Some(b"1".to_vec()));
        assert_eq!(c.take(b"a"), Some(b"1".to_vec()));
        assert_eq!(c.take(b"a"), None, "a ticket is good once");
        c.put(b"x".to_vec(), b"1".to_vec());
        c.put(b"y".to_vec(), b"2".to_vec());
        c.put(b"z".to_vec(), b"3".to_vec());
        assert_eq!(c.get(b"x"), None, "the oldest made room");
        assert_eq!(c.get(b"z"), Some(b"3".to_vec()));
        let stale = SessionCache::new(2, Duration::ZERO);
        stale.put(b"a".to_vec(), b"1".to_vec());
        assert_eq!(stale.get(b"a"), None);
        assert_eq!(stale.take(b"a"), None, "an expired ticket resumes nothing");
    }

    /// The tunnels' HTTP/3 stack as carried in `patches/` (h3 hands a DATA
    /// frame's payload over as it is and reads past an empty one, h3-quinn
    /// writes a frame's header and payload in one call and reads many
    /// chunks at once): frames of every size, empty ones included, come
    /// back whole and in order while flow control windows far smaller than
    /// a frame take them a part at a time.
    #[tokio::test]
    async fn frames_of_any_size_cross_h3_whole_and_in_order_under_tight_flow_control() {
        use bytes::{Buf, Bytes};
        let ca = isthmus_testkit::pki::Ca::new("eu-west.isthmus.local");
        let mut creds = ca.issue("isthmus-system", "isthmus-eastwest");
        creds
            .trust_bundles
            .insert(ca.trust_domain.clone(), ca.pem.clone());
        let tls = MeshTls::new(isthmus_mesh::identity::Identity::fixed(creds));
        let mut tight = quinn::TransportConfig::default();
        tight.stream_receive_window(8192u32.into());
        tight.receive_window(16384u32.into());
        tight.send_window(16384);
        let tight = Arc::new(tight);
        let (mut server, mut client) = configs(&tls, Congestion::Cubic, None).unwrap();
        server.transport_config(tight.clone());
        client.transport_config(tight);
        let server = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        // The far end echoes each DATA chunk as a DATA frame.
        let echo = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut h3 = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn))
                .await
                .unwrap();
            let (_req, stream) = h3
                .accept()
                .await
                .unwrap()
                .unwrap()
                .resolve_request()
                .await
                .unwrap();
            let (mut send, mut recv) = stream.split();
            send.send_response(http::Response::new(())).await.unwrap();
            while let Some(mut b) = recv.recv_data().await.unwrap() {
                send.send_data(b.copy_to_bytes(b.remaining()))
                    .await
                    .unwrap();
            }
            send.finish().await.unwrap();
            h3 // open until the client has read everything
        });
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(client);
        let conn = ep.connect(addr, "peer.isthmus").unwrap().await.unwrap();
        let (mut driver, mut open) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { driver.wait_idle().await });
        let req = http::Request::post("https://peer.isthmus/echo")
            .body(())
            .unwrap();
        let (mut send, mut recv) = open.send_request(req).await.unwrap().split();
        // Empty DATA frames too: h3 0.0.8 read one as the body's end
        // (patches/README.md), and h3-quinn must not wait on flow control
        // to write a frame whose payload is empty.
        let sizes = [0usize, 1, 3, 70_000, 0, 200_000, 17, 8192, 1 << 20, 0, 5];
        let sent: Vec<u8> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..n).map(move |k| (i * 31 + k) as u8))
            .collect();
        let frames: Vec<Bytes> = {
            let mut at = 0;
            let all = Bytes::from(sent.clone());
            sizes
                .iter()
                .map(|&n| {
                    at += n;
                    all.slice(at - n..at)
                })
                .collect()
        };
        let writer = tokio::spawn(async move {
            for f in frames {
                send.send_data(f).await.unwrap();
            }
            send.finish().await.unwrap();
        });
        assert_eq!(recv.recv_response().await.unwrap().status(), 200);
        let mut got = Vec::new();
        while let Some(mut b) = recv.recv_data().await.unwrap() {
            got.extend_from_slice(&b.copy_to_bytes(b.remaining()));
        }
        writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "every byte back, in order");
        drop(echo.await.unwrap());
    }
}
