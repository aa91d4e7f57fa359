//! East-west tunnels (issue 5, first part): two gateways of clusters with
//! different trust domains, over real QUIC on loopback. A CONNECT stream
//! reaches a service behind the peer gateway; malformed or unroutable
//! CONNECTs get a status naming why, and the connection keeps working;
//! an unknown or impersonated peer is refused.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use isthmus_api::model;
use isthmus_gateway::config::Store;
use isthmus_gateway::eastwest::client::{Link, LinkError, PeerLink, Transport};
use isthmus_gateway::eastwest::{quic, server};
use isthmus_gateway::proxy::Proxy;
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_gateway::telemetry::metrics::Metrics;
use isthmus_mesh::identity::Identity;
use isthmus_sample as sample;

/// Sum of a metric's samples whose labels contain every `labels`.
fn metric(m: &Metrics, name: &str, labels: &[&str]) -> f64 {
    m.encode()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
use isthmus_mesh::tls::MeshTls;
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki;
use isthmus_tests::eastwest::{
    gateway_identity, receiving_gateway, reporting_echo, tcp_service, udp_relay,
};

const EU: &str = "eu-west.isthmus.local";
const US: &str = "us-east.isthmus.local";
const EU_GW: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const US_GW: &str = "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";

struct Peer {
    addr: std::net::SocketAddr,
    /// The HTTP/2-over-TLS fallback on TCP.
    tcp: std::net::SocketAddr,
    proxy: Arc<Proxy>,
    tls: Arc<MeshTls>,
    peers: Arc<server::Peers>,
    stop: CancellationToken,
    _echo: sample::Running,
}

/// The eu-west gateway: service echo.shop:9000 behind it, admitting `admit`.
async fn eu_gateway(eu: &pki::Ca, us: &pki::Ca, admit: &[&str]) -> Peer {
    eu_gateway_with(eu, us, admit, vec![], Sink::Off, vec![]).await
}

/// `eu_gateway` with export rules and an access log.
async fn eu_gateway_with(
    eu: &pki::Ca,
    us: &pki::Ca,
    admit: &[&str],
    exports: Vec<isthmus_gateway::eastwest::ExportRule>,
    sink: Sink,
    extra: Vec<model::Service>,
) -> Peer {
    let echo = sample::serve_tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tls = gateway_identity(eu, &[us]);
    let stop = CancellationToken::new();
    let services = std::iter::once(tcp_service("echo.shop", 9000, echo.addr))
        .chain(extra)
        .collect();
    let peers = server::Peers {
        allowed: admit.iter().map(|s| s.to_string()).collect(),
        exports,
    };
    let r = receiving_gateway(
        tls.clone(),
        services,
        "127.0.0.1:0".parse().unwrap(),
        peers,
        sink,
        Default::default(),
        &stop,
    )
    .await;
    let (addr, tcp_addr, proxy, peers) = (r.udp, r.tcp, r.proxy, r.peers);
    Peer {
        addr,
        tcp: tcp_addr,
        proxy,
        tls,
        peers,
        stop,
        _echo: echo,
    }
}

fn us_endpoint(tls: &MeshTls) -> quinn::Endpoint {
    quic::endpoint(tls, "127.0.0.1:0".parse().unwrap()).unwrap()
}

async fn echo_through(link: &PeerLink, payload: Bytes) -> Bytes {
    // The same exchange as on any link, over this QUIC one.
    let (s, r) = link
        .open("echo.shop:9000")
        .await
        .expect("CONNECT accepted")
        .stream
        .split();
    echo_halves(
        isthmus_gateway::eastwest::client::LinkSend::Quic(Box::new(s)),
        isthmus_gateway::eastwest::client::LinkRecv::Quic(Box::new(r)),
        payload,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_stream_reaches_a_service_behind_the_peer_gateway() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let link = PeerLink::connect(&endpoint, peer.addr, EU_GW)
        .await
        .unwrap();
    assert_eq!(
        echo_through(&link, Bytes::from_static(b"hello across clusters")).await,
        Bytes::from_static(b"hello across clusters")
    );
    // A megabyte both ways through one stream, coalesced on receipt.
    let big = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    assert_eq!(echo_through(&link, big.clone()).await, big);
    // Many streams on the one connection at once.
    let link = Arc::new(link);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let link = link.clone();
        tasks.push(tokio::spawn(async move {
            let msg = Bytes::from(format!("stream {i}"));
            assert_eq!(echo_through(&link, msg.clone()).await, msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(link.rtt() < Duration::from_secs(1));
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connects_get_a_status_and_the_connection_survives() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let link = PeerLink::connect(&endpoint, peer.addr, EU_GW)
        .await
        .unwrap();
    for (authority, status) in [
        ("nope.shop:9000", 404),
        ("echo.shop:9001", 404),
        ("echo:9000", 400),
        ("echo.shop:0", 400),
    ] {
        match link.open(authority).await {
            Err(LinkError::Refused {
                status: s, reason, ..
            }) => {
                assert_eq!(s.as_u16(), status, "{authority}: {reason}");
                assert!(!reason.is_empty(), "the refusal says why");
            }
            Err(e) => panic!("{authority}: {e}"),
            Ok(_) => panic!("{authority} accepted"),
        }
    }
    // Still serving on the same connection.
    assert_eq!(
        echo_through(&link, Bytes::from_static(b"still here")).await,
        Bytes::from_static(b"still here")
    );
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_impersonated_and_untrusted_peers_are_refused() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    // The eu gateway admits only a different us identity.
    let peer = eu_gateway(&eu, &us, &["spiffe://us-east.isthmus.local/ns/other/sa/*"]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let refused = match PeerLink::connect(&endpoint, peer.addr, EU_GW).await {
        Ok(link) => link.open("echo.shop:9000").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "an unknown peer gets nothing through");
    // The client checks the server is the peer it means.
    let err = PeerLink::connect(&endpoint, peer.addr, US_GW)
        .await
        .err()
        .expect("wrong peer identity refused");
    assert!(matches!(err, LinkError::WrongPeer { .. }), "{err}");
    // A gateway whose trust domain the eu side has no bundle for.
    let stranger = pki::Ca::new("evil.example");
    let tls = gateway_identity(&stranger, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let refused = match PeerLink::connect(&endpoint, peer.addr, EU_GW).await {
        Ok(link) => link.open("echo.shop:9000").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "untrusted trust domain refused");
    peer.stop.cancel();
}

/// Echo through any link: send and receive at once.
async fn echo_link(link: &Link, payload: Bytes) -> Bytes {
    let (w, r) = link.open("echo.shop:9000").await.expect("CONNECT accepted");
    echo_halves(w, r, payload).await
}

/// Sends `payload` and reads the echo at the same time.
async fn echo_halves(
    mut w: isthmus_gateway::eastwest::client::LinkSend,
    mut r: isthmus_gateway::eastwest::client::LinkRecv,
    payload: Bytes,
) -> Bytes {
    let total = payload.len();
    let write = async move {
        for chunk in payload.chunks(16 * 1024) {
            w.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.finish().await.unwrap();
    };
    let mut got = Vec::new();
    let read = async {
        while let Some(b) = r.recv().await.unwrap() {
            got.extend_from_slice(&b);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
        .await
        .expect("echo completes");
    assert_eq!(got.len(), total);
    Bytes::from(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_takes_quic_and_falls_back_to_h2_when_udp_is_black_holed() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let head_start = Duration::from_millis(200);
    // Both get through: QUIC.
    let link = Link::race(&endpoint, &tls, peer.addr, peer.tcp, EU_GW, head_start)
        .await
        .unwrap();
    assert_eq!(link.transport(), Transport::Quic);
    assert_eq!(
        echo_link(&link, Bytes::from_static(b"q")).await,
        Bytes::from_static(b"q")
    );
    // UDP black-holed: a socket that swallows every datagram.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let link = Link::race(
        &endpoint,
        &tls,
        hole.local_addr().unwrap(),
        peer.tcp,
        EU_GW,
        head_start,
    )
    .await
    .unwrap();
    assert_eq!(
        link.transport(),
        Transport::H2,
        "fallback to HTTP/2 over TLS"
    );
    let big = Bytes::from(
        (0..512 * 1024)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<u8>>(),
    );
    assert_eq!(echo_link(&link, big.clone()).await, big);
    // Refusals read the same on the fallback.
    match link.open("nope.shop:9000").await {
        Err(LinkError::Refused { status, reason, .. }) => {
            assert_eq!(status.as_u16(), 404);
            assert!(reason.contains("nope.shop"), "{reason}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("unknown service accepted"),
    }
    // And the fallback checks the peer's identity too.
    let err = Link::race(
        &endpoint,
        &tls,
        hole.local_addr().unwrap(),
        peer.tcp,
        US_GW,
        head_start,
    )
    .await
    .err()
    .expect("wrong identity refused on the fallback");
    assert!(matches!(err, LinkError::WrongPeer { .. }), "{err}");
    peer.stop.cancel();
}

/// A workload's CONNECT to its gateway's local entry: the upgraded stream,
/// or the status it got.
async fn via_local_gateway(
    tls: &MeshTls,
    gateway: std::net::SocketAddr,
    authority: &str,
    cluster: &str,
) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, u16> {
    let tcp = tokio::net::TcpStream::connect(gateway)
        .await
        .map_err(|_| 0u16)?;
    let name = rustls_pki_types::ServerName::IpAddress(gateway.ip().into());
    let s = tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(name, tcp)
        .await
        .map_err(|_| 1u16)?;
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(|_| 2u16)?;
    tokio::spawn(conn);
    let req = http::Request::connect(authority)
        .header("isthmus-cluster", cluster)
        .header("traceparent", TRACEPARENT)
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut resp = send.send_request(req).await.map_err(|_| 3u16)?;
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let up = hyper::upgrade::on(&mut resp).await.map_err(|_| 4u16)?;
    Ok(hyper_util::rt::TokioIo::new(up))
}

/// A gateway, its local entry's address, its metrics and its stop.
type UsGateway = (
    Arc<isthmus_gateway::eastwest::gateway::Gateway>,
    std::net::SocketAddr,
    Arc<Metrics>,
    CancellationToken,
);

/// The us-east gateway linked to `peer` (eu-west), serving its local entry:
/// (gateway, entry address, metrics, stop).
async fn us_gateway(peer: &Peer, us: &pki::Ca, eu: &pki::Ca, cluster: Option<&str>) -> UsGateway {
    us_gateway_as(peer, gateway_identity(us, &[eu]), cluster).await
}

/// `us_gateway` with the identity `tls` (held or not yet).
async fn us_gateway_as(peer: &Peer, tls: Arc<MeshTls>, cluster: Option<&str>) -> UsGateway {
    use isthmus_gateway::eastwest::gateway::{Gateway, PeerConfig};
    let metrics = Arc::new(Metrics::new());
    let mut gw = Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp: peer.addr,
            tcp: peer.tcp,
            identity: EU_GW.into(),
        }],
        metrics.clone(),
    );
    gw.cluster = cluster.map(str::to_string);
    let gw = Arc::new(gw);
    let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(gw.clone().serve_local(local, stop.clone()));
    (gw, local_addr, metrics, stop)
}

/// us-east's frontend workload, trusting eu-west.
fn frontend(us: &pki::Ca, eu: &pki::Ca) -> MeshTls {
    let mut creds = us.issue("shop", "frontend");
    creds
        .trust_bundles
        .insert(eu.trust_domain.clone(), eu.pem.clone());
    MeshTls::new(Identity::fixed(creds))
}

/// Sends `msg` to echo.shop in eu-west through the local entry; the echo.
async fn workload_exchange(workload: &MeshTls, entry: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = via_local_gateway(workload, entry, "echo.shop:9000", "eu-west")
        .await
        .expect("the gateway tunnels to eu-west");
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// A gateway that starts before it holds its certificate (it is still
/// asking the CA) does not handshake on its local entry meanwhile: a
/// workload that calls then waits, and is served once the certificate
/// comes (it used to be refused with the alert access_denied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_entry_waits_for_the_gateways_certificate() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let identity = Identity::empty();
    let tls = Arc::new(MeshTls::new(identity.clone()));
    let (_gw, local_addr, _metrics, stop) = us_gateway_as(&peer, tls, None).await;
    let workload = Arc::new(frontend(&us, &eu));
    let w = workload.clone();
    let mut call = tokio::spawn(async move {
        via_local_gateway(&w, local_addr, "echo.shop:9000", "eu-west")
            .await
            .map(|_| ())
    });
    // Refused at once before; now it waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut call)
            .await
            .is_err(),
        "the call ended before the gateway had a certificate"
    );
    let mut creds = us.issue("isthmus-system", "isthmus-eastwest");
    creds
        .trust_bundles
        .insert(eu.trust_domain.clone(), eu.pem.clone());
    identity.install(creds);
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("served once the certificate came")
        .unwrap()
        .expect("tunnelled to eu-west");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reaches_the_peer_cluster_through_both_gateways() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    // The us-east gateway with a link to eu-west, and its local entry.
    let (gw, local_addr, metrics, stop) = us_gateway(&peer, &us, &eu, None).await;
    // A workload of us-east.
    let workload = frontend(&us, &eu);
    let got = workload_exchange(&workload, local_addr, b"from us-east with love").await;
    assert_eq!(got, b"from us-east with love");
    assert_eq!(
        gw.link("eu-west").await.unwrap().transport(),
        isthmus_gateway::eastwest::client::Transport::Quic
    );
    // Statuses come back to the workload.
    assert_eq!(
        via_local_gateway(&workload, local_addr, "echo.shop:9000", "mars")
            .await
            .err(),
        Some(404),
        "no link to that cluster"
    );
    assert_eq!(
        via_local_gateway(&workload, local_addr, "nope.shop:9000", "eu-west")
            .await
            .err(),
        Some(404),
        "the peer has no such service"
    );
    // Per-peer metrics: transport, CONNECT answers, bytes, open streams.
    let m = |name: &str, labels: &[&str]| metric(&metrics, name, labels);
    assert_eq!(
        m(
            "isthmus_eastwest_link_transport",
            &["peer=\"eu-west\"", "transport=\"quic\""]
        ),
        1.0
    );
    assert_eq!(
        m(
            "isthmus_eastwest_connect_responses_total",
            &["result=\"200\""]
        ),
        1.0
    );
    assert_eq!(
        m(
            "isthmus_eastwest_connect_responses_total",
            &["result=\"404\""]
        ),
        1.0
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m("isthmus_eastwest_bytes_total", &["direction=\"received\""]) < 22.0 {
        assert!(std::time::Instant::now() < deadline, "bytes not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        m("isthmus_eastwest_bytes_total", &["direction=\"sent\""]),
        22.0
    );
    assert_eq!(m("isthmus_eastwest_open_streams", &[]), 0.0);
    // A caller from another mesh does not get in.
    let stranger = pki::Ca::new("evil.example");
    let mut creds = stranger.issue("x", "y");
    creds.trust_bundles.insert(US.into(), us.pem.clone());
    let outsider = MeshTls::new(Identity::fixed(creds));
    assert!(
        via_local_gateway(&outsider, local_addr, "echo.shop:9000", "eu-west")
            .await
            .is_err()
    );
    stop.cancel();
    peer.stop.cancel();
}

/// Serves QUIC for `peer` on `addr` (retrying the bind while a previous
/// endpoint lets the port go).
async fn quic_server_on(peer: &Peer, addr: std::net::SocketAddr, stop: &CancellationToken) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let endpoint = loop {
        match quic::endpoint(&peer.tls, addr) {
            Ok(e) => break e,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cannot bind {addr}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::spawn(server::serve(
        endpoint,
        peer.proxy.clone(),
        peer.peers.clone(),
        stop.clone(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_reprobe_quic_from_the_fallback_and_reconnect_after_a_peer_restart() {
    use isthmus_gateway::eastwest::gateway::{Gateway, PeerConfig};
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    // UDP to the peer is black-holed at first.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = hole.local_addr().unwrap();
    let tls = gateway_identity(&us, &[&eu]);
    let metrics = Arc::new(Metrics::new());
    let mut gw = Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp,
            tcp: peer.tcp,
            identity: EU_GW.into(),
        }],
        metrics.clone(),
    );
    gw.reprobe = Duration::from_millis(100);
    let gw = Arc::new(gw);
    let link = gw.link("eu-west").await.unwrap();
    assert_eq!(link.transport(), Transport::H2);
    assert_eq!(
        metric(&metrics, "isthmus_eastwest_fallbacks_total", &[]),
        1.0
    );
    let status = gw.status();
    assert_eq!(status["peers"][0]["transport"], "h2", "{status}");
    assert!(
        status["peers"][0]["rttMs"].is_null(),
        "no QUIC path figures on h2"
    );
    assert_eq!(
        metric(
            &metrics,
            "isthmus_eastwest_link_transport",
            &["transport=\"h2\""]
        ),
        1.0
    );
    assert_eq!(
        echo_link(&link, Bytes::from_static(b"a")).await,
        Bytes::from_static(b"a")
    );
    // A stream open on the fallback while QUIC comes back.
    let (mut w, mut r) = link.open("echo.shop:9000").await.unwrap();
    // UDP gets through now: the peer serves QUIC on that port.
    drop(hole);
    let quic_stop = CancellationToken::new();
    quic_server_on(&peer, udp, &quic_stop).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = gw.link("eu-west").await.unwrap();
        if l.transport() == Transport::Quic {
            assert_eq!(
                echo_link(&l, Bytes::from_static(b"b")).await,
                Bytes::from_static(b"b")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never switched back to QUIC"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stream opened on the fallback still works.
    w.send(Bytes::from_static(b"old stream")).await.unwrap();
    w.finish().await.unwrap();
    let mut got = Vec::new();
    while let Some(b) = r.recv().await.unwrap() {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, b"old stream");
    // The peer's QUIC side goes away: the closed link is noticed and remade
    // (on the fallback while UDP has no server), then QUIC comes back.
    quic_stop.cancel();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gw
        .link("eu-west")
        .await
        .is_ok_and(|l| l.transport() == Transport::H2)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "link not remade after the peer stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = CancellationToken::new();
    quic_server_on(&peer, udp, &restarted).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(l) = gw.link("eu-west").await
            && l.transport() == Transport::Quic
            && tokio::time::timeout(
                Duration::from_secs(5),
                echo_link(&l, Bytes::from_static(b"c")),
            )
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no QUIC link after the peer came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarted.cancel();
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_survives_the_client_changing_address() {
    // QUIC connection migration: the sending gateway's UDP socket is
    // replaced (a NAT rebinding, a new node address); the connection and
    // a stream open on it carry on, and new streams open.
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let link = PeerLink::connect(&endpoint, peer.addr, EU_GW)
        .await
        .unwrap();
    let (s, r) = link.open("echo.shop:9000").await.unwrap().stream.split();
    let (mut w, mut r) = (
        isthmus_gateway::eastwest::client::LinkSend::Quic(Box::new(s)),
        isthmus_gateway::eastwest::client::LinkRecv::Quic(Box::new(r)),
    );
    w.send(Bytes::from_static(b"before ")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 7 {
        got.extend_from_slice(&r.recv().await.unwrap().expect("echo"));
    }
    let old = endpoint.local_addr().unwrap();
    endpoint
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let new = endpoint.local_addr().unwrap();
    assert_ne!(old.port(), new.port(), "the client moved");
    // The open stream goes on from the new address...
    w.send(Bytes::from_static(b"after")).await.unwrap();
    w.finish().await.unwrap();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(10), r.recv())
        .await
        .expect("the stream carries on after the move")
        .unwrap()
    {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, b"before after");
    // ... and so does the connection.
    assert!(!link.is_closed());
    assert_eq!(
        echo_through(&link, Bytes::from_static(b"new stream")).await,
        Bytes::from_static(b"new stream")
    );
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_sees_who_a_stream_is_from_and_serves_only_what_it_exports() {
    use isthmus_gateway::eastwest::ExportRule;
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let (tx, mut log) = tokio::sync::mpsc::unbounded_channel();
    // Any us-east gateway identity is admitted; echo.shop is exported to
    // the main one only.
    let peer = eu_gateway_with(
        &eu,
        &us,
        &["spiffe://us-east.isthmus.local/ns/isthmus-system/sa/*"],
        vec![ExportRule {
            peers: vec![US_GW.into()],
            services: vec!["echo.shop".into()],
        }],
        Sink::Channel(tx),
        vec![],
    )
    .await;
    let (_gw, local_addr, _, stop) = us_gateway(&peer, &us, &eu, Some("us-east")).await;
    let got = workload_exchange(&frontend(&us, &eu), local_addr, b"who am i").await;
    assert_eq!(got, b"who am i");
    // The receiving gateway's access log names the source.
    let e = tokio::time::timeout(Duration::from_secs(10), log.recv())
        .await
        .expect("an access-log entry")
        .unwrap();
    assert_eq!(e.direction, "eastwest");
    assert_eq!(e.listener, "quic");
    assert_eq!(e.response_code, 200);
    assert_eq!(e.authority.as_deref(), Some("echo.shop:9000"));
    assert_eq!(e.source_cluster.as_deref(), Some("us-east"));
    assert_eq!(
        e.source_principal.as_deref(),
        Some("spiffe://us-east.isthmus.local/ns/shop/sa/frontend")
    );
    assert_eq!(e.peer_gateway.as_deref(), Some(US_GW));
    assert_eq!(
        e.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!((e.bytes_received, e.bytes_sent), (8, 8));

    // Another us-east gateway identity: admitted, but nothing is exported
    // to it: 403 naming why, on QUIC and on the fallback alike.
    let mut other = us.issue("isthmus-system", "other-gateway");
    other.trust_bundles.insert(EU.into(), eu.pem.clone());
    let other = Arc::new(MeshTls::new(Identity::fixed(other)));
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for udp in [peer.addr, hole.local_addr().unwrap()] {
        let link = Link::race(
            &us_endpoint(&other),
            &other,
            udp,
            peer.tcp,
            EU_GW,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        match link.open("echo.shop:9000").await {
            Err(LinkError::Refused { status, reason, .. }) => {
                assert_eq!(status.as_u16(), 403, "{reason}");
                assert!(reason.contains("not exported"), "{reason}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a service not exported to this peer was served"),
        }
        let e = tokio::time::timeout(Duration::from_secs(10), log.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.response_code, 403);
        assert!(e.reason.unwrap_or_default().contains("not exported"));
    }
    stop.cancel();
    peer.stop.cancel();
}

/// Links to the eu-west gateway on QUIC and on the fallback.
async fn both_links(peer: &Peer, us: &pki::Ca, eu: &pki::Ca) -> Vec<Link> {
    let tls = gateway_identity(us, &[eu]);
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut links = Vec::new();
    for udp in [peer.addr, hole.local_addr().unwrap()] {
        let l = Link::race(
            &us_endpoint(&tls),
            &tls,
            udp,
            peer.tcp,
            EU_GW,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        links.push(l);
    }
    assert_eq!(links[0].transport(), Transport::Quic);
    assert_eq!(links[1].transport(), Transport::H2);
    links
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_cross_the_tunnel_both_ways() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let (ends_addr, mut ended) = reporting_echo().await;
    let peer = eu_gateway_with(
        &eu,
        &us,
        &[US_GW],
        vec![],
        Sink::Off,
        vec![tcp_service("ends.shop", 9000, ends_addr)],
    )
    .await;
    for link in both_links(&peer, &us, &eu).await {
        let t = link.transport();
        // The sending side aborts: the endpoint's connection is reset, not
        // ended cleanly.
        let (mut w, r) = link.open("ends.shop:9000").await.unwrap();
        w.send(Bytes::from_static(b"hello")).await.unwrap();
        w.reset();
        drop((w, r));
        let how = tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .expect("the endpoint's connection ended")
            .unwrap();
        assert!(
            matches!(
                how,
                Err(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            ),
            "{t:?}: the abort reached the endpoint as a reset: {how:?}"
        );
        // A clean finish stays clean.
        let (mut w, mut r) = link.open("ends.shop:9000").await.unwrap();
        w.send(Bytes::from_static(b"bye")).await.unwrap();
        w.finish().await.unwrap();
        let how = tokio::time::timeout(Duration::from_secs(10), ended.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(how, Ok(()), "{t:?}: a finish is a FIN");
        let mut back = Vec::new();
        while let Some(b) = tokio::time::timeout(Duration::from_secs(10), r.recv())
            .await
            .unwrap()
            .unwrap()
        {
            back.extend_from_slice(&b);
        }
        assert_eq!(back, b"bye", "{t:?}: the echo, then a clean end");
        // The endpoint resets: the sender sees an error, not an end.
        let (mut w, mut r) = link.open("ends.shop:9000").await.unwrap();
        w.send(Bytes::from_static(b"reset me")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), r.recv())
            .await
            .expect("the reset arrives");
        assert!(
            got.is_err(),
            "{t:?}: an endpoint reset must not read as a clean end: {got:?}"
        );
    }
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_sender_back_instead_of_filling_memory() {
    use tokio::io::AsyncWriteExt;
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    // A firehose: writes up to 1 GiB as fast as it is let, counting.
    let hose = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hose_addr = hose.local_addr().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w2 = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hose.accept().await {
            let written = w2.clone();
            written.store(0, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let chunk = vec![0x42u8; 64 * 1024];
                for _ in 0..(1 << 30) / chunk.len() {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    written.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let peer = eu_gateway_with(
        &eu,
        &us,
        &[US_GW],
        vec![],
        Sink::Off,
        vec![tcp_service("hose.shop", 9000, hose_addr)],
    )
    .await;
    for link in both_links(&peer, &us, &eu).await {
        let t = link.transport();
        let (_w, mut r) = link.open("hose.shop:9000").await.unwrap();
        // Read a little, then stop reading: the firehose must stall.
        let mut got = 0usize;
        while got < 1024 * 1024 {
            got += r.recv().await.unwrap().expect("data").len();
        }
        // Wait until it has stalled (no progress across a few polls).
        let load = || written.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last = load();
        let mut still = 0;
        while still < 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = load();
            still = if now == last { still + 1 } else { 0 };
            last = now;
            assert!(
                std::time::Instant::now() < deadline,
                "{t:?}: the firehose never stalled ({now} bytes written): nothing holds it back"
            );
        }
        // What was written is held by flow-control windows and socket
        // buffers, bounded, not by the gateways buffering without end.
        assert!(
            last < 64 * 1024 * 1024,
            "{t:?}: {last} bytes went in while the reader stopped at 1 MiB"
        );
        // Reading again resumes the flow.
        let mut more = 0usize;
        while more < 32 * 1024 * 1024 {
            more += r.recv().await.unwrap().expect("data").len();
        }
        assert!(load() > last, "{t:?}: the firehose resumed");
    }
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_is_retried_with_backoff_not_on_every_stream() {
    use isthmus_gateway::eastwest::gateway::{Gateway, GatewayError, PeerConfig};
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    // Addresses where nothing listens yet.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tls = gateway_identity(&us, &[&eu]);
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp,
            tcp,
            identity: EU_GW.into(),
        }],
        metrics.clone(),
    );
    let attempts = || metric(&metrics, "isthmus_eastwest_link_attempts_total", &[]);
    assert!(matches!(
        gw.link("eu-west").await,
        Err(GatewayError::Link(_))
    ));
    assert_eq!(attempts(), 1.0);
    // Streams arriving meanwhile fail fast, without a new attempt.
    for _ in 0..5 {
        match gw.link("eu-west").await {
            Err(e @ GatewayError::Backoff { .. }) => {
                assert_eq!(e.status().as_u16(), 503);
                assert!(e.to_string().contains("next attempt in"), "{e}");
            }
            other => panic!("expected a backoff, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(attempts(), 1.0, "no attempt during the backoff");
    assert!(gw.status()["peers"][0]["lastError"].is_string());
    // The peer comes up there; after the backoff the link is made.
    let stop = CancellationToken::new();
    quic_server_on(&peer, udp, &stop).await;
    let tcp_l = tokio::net::TcpListener::bind(tcp).await.unwrap();
    tokio::spawn(server::serve_tcp(
        tcp_l,
        peer.proxy.clone(),
        peer.peers.clone(),
        stop.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let link = loop {
        match gw.link("eu-west").await {
            Ok(l) => break l,
            Err(GatewayError::Backoff { retry_in, .. }) => {
                assert!(retry_in <= Duration::from_millis(500), "{retry_in:?}");
                tokio::time::sleep(retry_in).await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < deadline, "never linked");
    };
    assert_eq!(link.transport(), Transport::Quic);
    assert_eq!(attempts(), 2.0);
    stop.cancel();
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_come_and_go_with_the_configuration() {
    use isthmus_gateway::eastwest::gateway::{Gateway, GatewayError};
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let gw = Arc::new(Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![],
        Arc::new(Metrics::new()),
    ));
    let store = Arc::new(Store::new());
    let stop = CancellationToken::new();
    gw.clone()
        .follow_config(store.clone(), vec![], stop.clone());
    assert!(matches!(
        gw.link("eu-west").await,
        Err(GatewayError::NoPeer(_))
    ));
    // The config stream (here: the store it feeds) names the peer.
    let with = |peers: Vec<model::PeerGateway>| model::ProxyConfig {
        east_west: Some(model::EastWest {
            peers,
            exports: Vec::new(),
        }),
        ..Default::default()
    };
    store
        .apply(&with(vec![model::PeerGateway {
            cluster: "eu-west".into(),
            udp: peer.addr.to_string(),
            tcp: peer.tcp.to_string(),
            identity: EU_GW.into(),
        }]))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let link = loop {
        if let Ok(l) = gw.link("eu-west").await {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "the peer never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        echo_link(&link, Bytes::from_static(b"configured")).await,
        Bytes::from_static(b"configured")
    );
    // Removed from the config: no longer a peer.
    store.apply(&with(vec![])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(gw.link("eu-west").await, Err(GatewayError::NoPeer(_))) {
        assert!(std::time::Instant::now() < deadline, "the peer never went");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    peer.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relink_resumes_in_0rtt_and_a_refused_0rtt_costs_no_stream() {
    use isthmus_gateway::eastwest::client::Early;
    use isthmus_gateway::eastwest::gateway::{Gateway, PeerConfig};
    use isthmus_gateway::eastwest::transport::LinkTransport;
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    // First link: a full handshake, which leaves a ticket.
    let first = PeerLink::connect(&endpoint, peer.addr, EU_GW)
        .await
        .unwrap();
    assert_eq!(first.early(), Early::None);
    assert_eq!(
        echo_through(&first, Bytes::from_static(b"one")).await,
        Bytes::from_static(b"one")
    );
    first.close();
    // Relinking resumes: the first CONNECT goes in 0-RTT, and is taken.
    let tasks = tokio_util::task::TaskTracker::new();
    let again = PeerLink::connect_with(&endpoint, peer.addr, EU_GW, true, &tasks)
        .await
        .unwrap();
    // Pending, or already Accepted if the handshake beat this line.
    assert!(
        matches!(again.early(), Early::Pending | Early::Accepted),
        "resumed with 0-RTT: {:?}",
        again.early()
    );
    assert_eq!(
        echo_through(&again, Bytes::from_static(b"early")).await,
        Bytes::from_static(b"early")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while again.early() != Early::Accepted {
        assert!(
            std::time::Instant::now() < deadline,
            "0-RTT not confirmed: {:?}",
            again.early()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    again.close();
    // A ticket is good for its peer only: expecting another identity at
    // the same address is a full handshake, and refused.
    let other = PeerLink::connect_with(&endpoint, peer.addr, US_GW, true, &tasks).await;
    assert!(matches!(other, Err(LinkError::WrongPeer { .. })));

    // Through a gateway: the peer restarts (its tickets are gone), the
    // gateway's 0-RTT attempt is refused, and the stream still gets
    // through on a new link.
    let udp = peer.addr;
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp,
            tcp: peer.tcp,
            identity: EU_GW.into(),
        }],
        metrics.clone(),
    );
    let src = isthmus_gateway::eastwest::Source::default();
    let (w, r) = gw.open("eu-west", "echo.shop:9000", &src).await.unwrap();
    assert_eq!(
        echo_halves(w, r, Bytes::from_static(b"a")).await,
        Bytes::from_static(b"a")
    );
    let old = gw.link("eu-west").await.unwrap();
    peer.stop.cancel(); // the QUIC server goes, closing its connections
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !old.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old link never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let restarted = CancellationToken::new();
    quic_server_on(&peer, udp, &restarted).await;
    let (w, r) = gw
        .open("eu-west", "echo.shop:9000", &src)
        .await
        .expect("the first stream after the restart gets through");
    assert_eq!(
        echo_halves(w, r, Bytes::from_static(b"b")).await,
        Bytes::from_static(b"b")
    );
    restarted.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_given_up_on_and_then_fails_streams_at_once() {
    use isthmus_gateway::eastwest::client::LinkError;
    use isthmus_gateway::eastwest::gateway::{Gateway, GatewayError, PeerConfig};
    use isthmus_gateway::eastwest::transport::LinkTransport;
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &[US_GW]).await;
    let (relay, silent) = udp_relay(peer.addr).await;
    // Nothing listens on the fallback port: the peer's gateway is "down"
    // as far as TCP can tell once UDP goes silent too.
    // A socket bound and held but not listening: connections to its port
    // are refused, and nothing else can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let tcp = closed.local_addr().unwrap();
    let tls = gateway_identity(&us, &[&eu]);
    let gw = Gateway::new(
        tls.clone(),
        us_endpoint(&tls),
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp: relay,
            tcp,
            identity: EU_GW.into(),
        }],
        Arc::new(Metrics::new()),
    );
    let link = gw.link("eu-west").await.unwrap();
    assert_eq!(link.transport(), Transport::Quic);
    assert_eq!(
        echo_link(&link, Bytes::from_static(b"up")).await,
        Bytes::from_static(b"up")
    );

    // The path goes silent: the next CONNECT hears nothing back, and the
    // link is given up on long before QUIC's idle timeout.
    silent.store(true, std::sync::atomic::Ordering::Relaxed);
    let source = isthmus_gateway::eastwest::Source::default();
    let err = gw
        .open_on("eu-west", "echo.shop:9000", &source)
        .await
        .err()
        .expect("no stream over a silent path");
    assert!(matches!(err, GatewayError::Silent { .. }), "{err}");
    assert!(link.is_closed(), "the silent link is closed");
    assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);

    // Then the peer counts as unreachable: a stream fails at once (in
    // backoff) or after one relink attempt that names the dead fallback,
    // never by hanging on the dead link.
    let err = gw
        .open_on("eu-west", "echo.shop:9000", &source)
        .await
        .err()
        .expect("still unreachable");
    assert!(
        matches!(
            err,
            GatewayError::Backoff { .. } | GatewayError::Link(LinkError::NotListening { .. })
        ),
        "{err}"
    );
    peer.stop.cancel();
}

/// A peer refused for its certificate or identity learns why from the
/// handshake (TLS alert / QUIC CRYPTO_ERROR), over either transport,
/// instead of a connection dropped after it; the gateway counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_peers_learn_why_in_the_handshake_and_are_counted() {
    use isthmus_gateway::eastwest::client::H2Link;
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    let peer = eu_gateway(&eu, &us, &["spiffe://us-east.isthmus.local/ns/other/sa/*"]).await;
    let source = isthmus_gateway::eastwest::Source::default();
    for (case, tls) in [
        ("not admitted", gateway_identity(&us, &[&eu])),
        (
            "untrusted",
            gateway_identity(&pki::Ca::new("evil.example"), &[&eu]),
        ),
    ] {
        // The refusal surfaces when the link is made or, at the latest,
        // on its first stream; never as a timeout.
        let quic = match PeerLink::connect(&us_endpoint(&tls), peer.addr, EU_GW).await {
            Ok(link) => link.open("echo.shop:9000").await.err(),
            Err(e) => Some(e),
        };
        let tcp = match H2Link::connect(&tls, peer.tcp, EU_GW).await {
            Ok(link) => link.open("echo.shop:9000", &source).await.err(),
            Err(e) => Some(e),
        };
        for (transport, e) in [("QUIC", quic), ("TCP", tcp)] {
            let e = e.unwrap_or_else(|| panic!("{case} over {transport}: let through"));
            match case {
                "not admitted" => assert!(
                    matches!(e, LinkError::NotAdmitted { .. }),
                    "{case} over {transport}: {e}"
                ),
                _ => assert!(
                    matches!(e, LinkError::Untrusted { .. }),
                    "{case} over {transport}: {e}"
                ),
            }
            assert!(e.is_refusal());
        }
    }
    for kind in ["eastwest_unknown_peer", "eastwest_untrusted_peer"] {
        assert_eq!(
            metric(
                &peer.proxy.metrics,
                "isthmus_errors_total",
                &[&format!("kind=\"{kind}\"")]
            ),
            2.0,
            "{kind}: one per transport"
        );
    }
    peer.stop.cancel();
}

/// The receiving gateway joins a CONNECT to a local endpoint the way a
/// sidecar connects TCP: a refused endpoint is told to outlier detection
/// and another is tried, so the stream still succeeds and the dead
/// endpoint is ejected (before issue 18 it was retried blindly, never
/// ejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_local_endpoint_is_skipped_and_ejected() {
    let (eu, us) = (pki::Ca::new(EU), pki::Ca::new(US));
    // The echo listens on 127.0.0.1 only: 127.0.0.2 at its port refuses.
    let echo = sample::serve_tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut flaky = tcp_service("flaky.shop", 9000, echo.addr);
    flaky.endpoints.insert(
        0,
        model::Endpoint {
            address: "127.0.0.2".into(),
            ..Default::default()
        },
    );
    flaky.outlier_detection = Some(model::OutlierDetection {
        consecutive_gateway_errors: 1,
        max_ejection_percent: 100,
        ..Default::default()
    });
    let peer = eu_gateway_with(&eu, &us, &[US_GW], vec![], Sink::Off, vec![flaky]).await;
    let tls = gateway_identity(&us, &[&eu]);
    let endpoint = us_endpoint(&tls);
    let link = PeerLink::connect(&endpoint, peer.addr, EU_GW)
        .await
        .unwrap();
    for i in 0..8 {
        let (s, r) = link
            .open("flaky.shop:9000")
            .await
            .expect("CONNECT accepted: the live endpoint is tried next")
            .stream
            .split();
        let msg = Bytes::from(format!("try {i}"));
        let got = echo_halves(
            isthmus_gateway::eastwest::client::LinkSend::Quic(Box::new(s)),
            isthmus_gateway::eastwest::client::LinkRecv::Quic(Box::new(r)),
            msg.clone(),
        )
        .await;
        assert_eq!(got, msg);
    }
    let text = peer.proxy.metrics.encode();
    let ejections = isthmus_tests::sidecar::metric_value(
        &text,
        "isthmus_outlier_ejections_total",
        &["flaky.shop"],
    );
    assert!(ejections >= 1.0, "the dead endpoint was ejected:\n{text}");
    peer.stop.cancel();
}
