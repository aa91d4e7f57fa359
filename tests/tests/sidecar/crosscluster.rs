//! Across clusters, sidecar to sidecar through both east-west gateways:
//! a us-east client sidecar reaches catalog and echo in eu-west through
//! its gateway's local entry, the QUIC link, and eu-west's gateway, which
//! joins the stream to the server sidecar's mesh transport. The client
//! sidecar's own mTLS session runs end to end inside the tunnel, so the
//! server sidecar (and the app) see the us-east caller's verified
//! identity, and the gateways never hold plaintext.

use std::sync::Arc;
use std::time::Duration;

use isthmus_api::model;
use isthmus_gateway::eastwest::client::Transport;
use isthmus_gateway::eastwest::gateway::{Gateway, PeerConfig};
use isthmus_gateway::eastwest::{quic, server};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_gateway::telemetry::metrics::Metrics;
use isthmus_mesh::identity::{Credentials, Identity};
use isthmus_sample::{self as sample, SampleApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki::Ca;
use isthmus_tests::eastwest::{gateway_identity, receiving_gateway, reporting_echo};
use isthmus_tests::sidecar::*;

const EU: &str = "eu-west.isthmus.local";
const US: &str = "us-east.isthmus.local";
const EU_GW: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
const CATALOG: &str = "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog";
const FRONTEND: &str = "spiffe://us-east.isthmus.local/ns/shop/sa/frontend";

/// `ca`'s credentials for `ns/sa`, trusting `other` too.
fn creds(ca: &Ca, other: &Ca, ns: &str, sa: &str) -> Credentials {
    let mut c = ca.issue(ns, sa);
    c.trust_bundles
        .insert(other.trust_domain.clone(), other.pem.clone());
    c
}

fn service(
    name: &str,
    port: u32,
    target: u16,
    protocol: model::Protocol,
    tunnel: u16,
) -> model::Service {
    model::Service {
        name: name.into(),
        ports: vec![model::ServicePort {
            port,
            target_port: target.into(),
            protocol: protocol as i32,
            ..Default::default()
        }],
        endpoints: vec![model::Endpoint {
            address: "127.0.0.1".into(),
            tunnel_port: tunnel.into(),
            identity: CATALOG.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_a_tcp_stream_cross_clusters_with_the_caller_identity() {
    let (eu, us) = (Ca::new(EU), Ca::new(US));
    // eu-west: the app and a TCP echo behind a sidecar with the mesh
    // transport, trusting us-east's bundle.
    let app = SampleApp::new("catalog", "eu-west", "v1");
    let running = sample::serve(app.clone(), LOCAL).await.unwrap();
    let (echo, mut ended) = reporting_echo().await;
    let (app_port, echo_port) = (running.addr.port(), echo.port());
    let mut server = start_with_identity(
        &format!(
            "node: {{name: catalog-0, namespace: shop, cluster: eu-west, labels: {{app: catalog}}}}\n\
             listeners:\n\
             \x20 - {{name: tunnel, address: \"127.0.0.1:0\", tunnel: {{ports: [{{port: {app_port}, protocol: HTTP}}, {{port: {echo_port}, protocol: TCP}}]}}}}\n\
             services: []\n"
        ),
        Some(Identity::fixed(creds(&eu, &us, "shop", "catalog"))),
    )
    .await;
    let tunnel = server.addr("tunnel").port();

    // eu-west's east-west gateway: catalog and echo behind it.
    let services = vec![
        service("catalog.shop", 80, app_port, model::Protocol::Http, tunnel),
        service("echo.shop", 9000, echo_port, model::Protocol::Tcp, tunnel),
        service(
            "echo-fallback.shop",
            9000,
            echo_port,
            model::Protocol::Tcp,
            tunnel,
        ),
    ];
    let peers = server::Peers {
        allowed: vec!["spiffe://us-east.isthmus.local/ns/isthmus-system/sa/*".into()],
        exports: vec![],
    };
    let stop = CancellationToken::new();
    let eu_gw = receiving_gateway(
        gateway_identity(&eu, &[&us]),
        services,
        LOCAL,
        peers,
        Sink::Off,
        Default::default(),
        &stop,
    )
    .await;

    // us-east's east-west gateways, each with a link to eu-west and a
    // local entry: one links over QUIC; the other finds eu-west's UDP
    // black-holed and takes the TCP fallback.
    let us_tls = gateway_identity(&us, &[&eu]);
    let hole = std::net::UdpSocket::bind(LOCAL).unwrap();
    let mut gateways = Vec::new();
    for udp in [eu_gw.udp, hole.local_addr().unwrap()] {
        let mut gw = Gateway::new(
            us_tls.clone(),
            quic::endpoint(&us_tls, LOCAL).unwrap(),
            vec![PeerConfig {
                cluster: "eu-west".into(),
                udp,
                tcp: eu_gw.tcp,
                identity: EU_GW.into(),
            }],
            Arc::new(Metrics::new()),
        );
        gw.cluster = Some("us-east".into());
        let gw = Arc::new(gw);
        let entry = tokio::net::TcpListener::bind(LOCAL).await.unwrap();
        let entry_port = entry.local_addr().unwrap().port();
        tokio::spawn(gw.clone().serve_local(entry, stop.clone()));
        gateways.push((gw, entry_port));
    }
    let (entry_port, fallback_entry_port) = (gateways[0].1, gateways[1].1);

    // us-east's client sidecar: catalog and echo are endpoints via eu-west;
    // so is `echo-eu-west`, a per-cluster name for eu-west's `echo`
    // (viaService), through the gateway on the fallback.
    let client = start_with_identity(
        &format!(
            "node: {{name: frontend-0, namespace: shop, cluster: us-east}}\n\
             listeners:\n\
             \x20 - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
             \x20 - {{name: echo, address: \"127.0.0.1:0\", tcp: {{service: echo.shop}}}}\n\
             \x20 - {{name: echo-fallback, address: \"127.0.0.1:0\", tcp: {{service: echo-eu-west.shop}}}}\n\
             services:\n\
             \x20 - name: catalog.shop\n\
             \x20   hosts: [catalog]\n\
             \x20   ports: [{{port: 80, targetPort: {app_port}, protocol: HTTP}}]\n\
             \x20   endpoints: [{{address: \"127.0.0.1\", tunnelPort: {entry_port}, viaCluster: eu-west, identity: \"{CATALOG}\"}}]\n\
             \x20 - name: echo.shop\n\
             \x20   ports: [{{port: 9000, targetPort: {echo_port}, protocol: TCP}}]\n\
             \x20   endpoints: [{{address: \"127.0.0.1\", tunnelPort: {entry_port}, viaCluster: eu-west, identity: \"spiffe://{EU}\"}}]\n\
             \x20 - name: echo-eu-west.shop\n\
             \x20   ports: [{{port: 9000, targetPort: {echo_port}, protocol: TCP}}]\n\
             \x20   endpoints: [{{address: \"127.0.0.1\", tunnelPort: {fallback_entry_port}, viaCluster: eu-west, viaService: echo.shop, identity: \"spiffe://{EU}\"}}]\n"
        ),
        Some(Identity::fixed(creds(&us, &eu, "shop", "frontend"))),
    )
    .await;

    // A request: the app in eu-west learns the us-east caller.
    let (st, _, body) = get(client.addr("out"), "catalog", "/items", &[]).await;
    assert_eq!(st, 200, "{body}");
    let j = json(&body);
    assert_eq!(
        j["caller"], FRONTEND,
        "the verified caller crosses clusters"
    );
    assert_eq!(j["cluster"], "eu-west");
    let e = server
        .log_entry(|e| e.direction == "inbound" && e.path.as_deref() == Some("/items"))
        .await;
    assert_eq!(e.source_principal.as_deref(), Some(FRONTEND));
    assert_eq!(e.listener, "tunnel");

    // A raw TCP stream the same way.
    let mut s = tokio::net::TcpStream::connect(client.addr("echo"))
        .await
        .unwrap();
    s.write_all(b"across the isthmus").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, b"across the isthmus");
    let e = server
        .log_entry(|e| e.direction == "inbound" && e.protocol == "TCP")
        .await;
    assert_eq!(e.source_principal.as_deref(), Some(FRONTEND));
    assert_eq!(app.hits(), 1);

    // Aborts cross as aborts, over QUIC and over the TCP fallback: every
    // leg (sidecar, entry, link, receiving gateway, sidecar) turns a reset
    // into a reset.
    let within = Duration::from_secs(10);
    assert_eq!(
        tokio::time::timeout(within, ended.recv()).await.unwrap(),
        Some(Ok(()))
    );
    for listener in ["echo", "echo-fallback"] {
        // The client resets: the server app's connection is reset.
        let mut s = tokio::net::TcpStream::connect(client.addr(listener))
            .await
            .unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(within, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        let how = tokio::time::timeout(within, ended.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                how,
                Err(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            ),
            "{listener}: the client's reset reached the server app as {how:?}"
        );
        // The server app resets: the client's connection is reset.
        let mut s = tokio::net::TcpStream::connect(client.addr(listener))
            .await
            .unwrap();
        s.write_all(b"reset me").await.unwrap();
        let mut out = Vec::new();
        let got = tokio::time::timeout(within, s.read_to_end(&mut out))
            .await
            .unwrap();
        assert_eq!(
            got.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{listener}: the server's reset reached the client"
        );
    }
    for ((gw, _), transport) in gateways.iter().zip([Transport::Quic, Transport::H2]) {
        assert_eq!(gw.link("eu-west").await.unwrap().transport(), transport);
    }
    stop.cancel();
    drop(running);
}
