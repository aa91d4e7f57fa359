//! East-west links across the packet-level WAN emulator (isthmus-e2e):
//! the receiving gateway in one network namespace, the sending gateway in
//! another, 20 ms RTT between them. With UDP black-holed on the path the
//! link falls back to HTTP/2 over TLS; when UDP gets through again the
//! re-probe takes QUIC back; QUIC measures the emulated RTT; when UDP dies
//! under a live QUIC link, the idle timeout closes it and the next link is
//! the fallback. Peer liveness: no false "down" at 50 ms RTT and 1 % loss,
//! and a path that drops everything is seen.
//!
//! Needs root and /dev/net/tun; skipped without them unless
//! ISTHMUS_REQUIRE_NETNS=1 (CI), where it fails instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use isthmus_e2e::wan::{self, Direction, Impairment, Wan};
use isthmus_gateway::eastwest::client::{Link, Transport};
use isthmus_gateway::eastwest::gateway::{Gateway, PeerConfig};
use isthmus_gateway::eastwest::{quic, server};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_gateway::telemetry::metrics::Metrics;
use isthmus_mesh::tls::MeshTls;
use isthmus_sample as sample;
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki;
use isthmus_tests::eastwest::{gateway_identity, receiving_gateway, runtime, tcp_service};

const EU_GW: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";

/// The eu-west gateway on `wan::ADDR_B:15443` (UDP and TCP), echo.shop
/// behind it; runs until `stop`.
async fn eu_gateway(tls: Arc<MeshTls>, stop: CancellationToken) -> SocketAddr {
    let echo = sample::serve_tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = SocketAddr::new(wan::ADDR_B.into(), 15443);
    let peers = server::Peers {
        allowed: vec!["spiffe://us-east.isthmus.local/*".into()],
        exports: vec![],
    };
    let services = vec![tcp_service("echo.shop", 9000, echo.addr)];
    receiving_gateway(
        tls,
        services,
        addr,
        peers,
        Sink::Off,
        Default::default(),
        &stop,
    )
    .await;
    tokio::spawn(async move {
        stop.cancelled().await;
        drop(echo);
    });
    addr
}

/// Runs `us` in namespace A (the us-east gateway's side, with its
/// identity, on its own runtime) against the eu-west gateway in namespace
/// B (at the address given), across a WAN emulator with `impairment`
/// (named `prefix` + pid). A panic in `us` fails the test.
fn across_wan<F, Fut>(prefix: &str, impairment: Impairment, us: F)
where
    F: FnOnce(Arc<Wan>, Arc<MeshTls>, SocketAddr, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let w = Arc::new(Wan::new(&format!("{prefix}{}", std::process::id()), impairment).unwrap());
    let (eu, us_ca) = (
        pki::Ca::new("eu-west.isthmus.local"),
        pki::Ca::new("us-east.isthmus.local"),
    );
    let (eu_tls, us_tls) = (
        gateway_identity(&eu, &[&us_ca]),
        gateway_identity(&us_ca, &[&eu]),
    );
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stop.clone();
    let b = w
        .b()
        .spawn("eu-gateway", move || {
            runtime().block_on(async move {
                tx.send(eu_gateway(eu_tls, st.clone()).await).unwrap();
                st.cancelled().await;
            })
        })
        .unwrap();
    let gw_addr = rx.recv().unwrap();
    let (wan, st) = (w.clone(), stop.clone());
    let a = w
        .a()
        .spawn("us-gateway", move || {
            runtime().block_on(us(wan, us_tls, gw_addr, st))
        })
        .unwrap();
    let r = a.join();
    stop.cancel();
    let _ = b.join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// The us-east sending gateway (in namespace A) with eu-west's at
/// `eu` as its one peer.
fn us_gateway(tls: Arc<MeshTls>, eu: SocketAddr) -> Gateway {
    let ep = quic::endpoint(&tls, SocketAddr::new(wan::ADDR_A.into(), 0)).unwrap();
    Gateway::new(
        tls,
        ep,
        vec![PeerConfig {
            cluster: "eu-west".into(),
            udp: eu,
            tcp: eu,
            identity: EU_GW.into(),
        }],
        Arc::new(Metrics::new()),
    )
}

async fn echo(link: &Link, payload: &'static [u8]) -> Vec<u8> {
    let (mut w, mut r) = link.open("echo.shop:9000").await.expect("CONNECT accepted");
    w.send(Bytes::from_static(payload)).await.unwrap();
    w.finish().await.unwrap();
    let mut got = Vec::new();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(10), r.recv())
        .await
        .expect("echo within 10 s")
        .unwrap()
    {
        got.extend_from_slice(&b);
    }
    got
}

#[test]
fn udp_black_holed_on_the_path_falls_back_to_tcp_and_quic_comes_back() {
    if !isthmus_e2e::netns_available() {
        return;
    }
    let blocked = Impairment {
        blackhole_udp: true,
        ..Impairment::wan(Duration::from_millis(20), 0.0)
    };
    across_wan("ew", blocked, |wan, us_tls, gw_addr, _stop| async move {
        let blocked = wan.impairment(Direction::AtoB);
        let mut gw = us_gateway(us_tls, gw_addr);
        gw.reprobe = Duration::from_millis(200);
        // UDP black-holed: the race settles on the fallback.
        let link = gw.link("eu-west").await.unwrap();
        assert_eq!(link.transport(), Transport::H2);
        assert_eq!(echo(&link, b"over tcp").await, b"over tcp");
        assert!(
            wan.counts(Direction::AtoB).black_holed > 0,
            "QUIC's packets met the black-hole"
        );
        // UDP gets through again: the re-probe takes QUIC back.
        wan.set(Impairment::wan(Duration::from_millis(20), 0.0));
        let deadline = Instant::now() + Duration::from_secs(30);
        let quic = loop {
            let l = gw.link("eu-west").await.unwrap();
            if l.transport() == Transport::Quic {
                break l;
            }
            assert!(Instant::now() < deadline, "QUIC never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(echo(&quic, b"over quic").await, b"over quic");
        let Link::Quic(q) = &*quic else {
            unreachable!()
        };
        assert!(
            q.rtt() >= Duration::from_millis(20),
            "QUIC measures the emulated RTT: {:?}",
            q.rtt()
        );
        // UDP dies under a live QUIC link: the idle timeout notices
        // (10 s), and the next link is the fallback.
        wan.set(blocked);
        let deadline = Instant::now() + Duration::from_secs(40);
        let h2 = loop {
            if let Ok(l) = gw.link("eu-west").await
                && l.transport() == Transport::H2
            {
                break l;
            }
            assert!(
                Instant::now() < deadline,
                "never fell back under a live link"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(echo(&h2, b"over tcp again").await, b"over tcp again");
    });
}

/// Peer liveness across the WAN emulator: on a path with 50 ms RTT and 1 %
/// loss each way the peer is never judged down (30 s of keep-alives and
/// nothing else), and when the path drops everything it is judged down,
/// within `DEAD_AFTER` plus a look (printed), and stays down.
#[test]
fn liveness_has_no_false_positive_at_1_percent_loss_and_sees_a_partition() {
    use isthmus_gateway::eastwest::gateway::DEAD_AFTER;
    if !isthmus_e2e::netns_available() {
        return;
    }
    let lossy = Impairment::wan(Duration::from_millis(50), 0.01);
    across_wan("lv", lossy, |wan, us_tls, gw_addr, stop| async move {
        let gw = Arc::new(us_gateway(us_tls, gw_addr));
        gw.clone().watch_peers(stop.clone());
        let mut live = gw.liveness();
        let up = |l: &isthmus_api::eastwest::v1::PeerLiveness| l.peers.get("eu-west").map(|p| p.up);
        tokio::time::timeout(
            Duration::from_secs(30),
            live.wait_for(|l| up(l) == Some(true)),
        )
        .await
        .expect("linked across the lossy path")
        .unwrap();
        // 30 s of a lossy, idle path: never down.
        let went_down = tokio::time::timeout(
            Duration::from_secs(30),
            live.wait_for(|l| up(l) != Some(true)),
        )
        .await
        .is_ok();
        let losses = wan.counts(Direction::AtoB).lost + wan.counts(Direction::BtoA).lost;
        assert!(
            !went_down,
            "judged down on a live path: {:?}",
            live.borrow().peers.get("eu-west")
        );
        assert!(losses > 0, "the path lost packets meanwhile");
        // The path drops everything: down, and stays down.
        let cut = Instant::now();
        wan.set(Impairment {
            loss: 1.0,
            ..Impairment::wan(Duration::from_millis(50), 0.0)
        });
        tokio::time::timeout(
            Duration::from_secs(30),
            live.wait_for(|l| up(l) == Some(false)),
        )
        .await
        .expect("a partition is seen")
        .unwrap();
        eprintln!(
            "partition seen after {:?} (DEAD_AFTER {DEAD_AFTER:?}); {losses} packets lost before it, none judged a partition",
            cut.elapsed()
        );
        let relinked = tokio::time::timeout(
            Duration::from_secs(3),
            live.wait_for(|l| up(l) == Some(true)),
        )
        .await
        .is_ok();
        assert!(!relinked, "up again while the path drops everything");
    });
}
