//! Identity and mTLS end to end, in `files` mode: a control plane serving
//! discovery and its CA over TLS, and real sidecars that verify it with the
//! bootstrap root, get their SVIDs with bootstrap tokens, subscribe as the
//! identity their certificate names, and then talk to each other over the
//! mTLS transport only (the Mesh says STRICT), with an AuthorizationPolicy
//! from the store deciding who may call.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
use isthmus_api::discovery::v1::{DiscoveryRequest, Subscription, Workload};
use isthmus_api::model;
use isthmus_federation::identity::Ca;
use isthmus_federation::identity::service::Authenticator;
use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::server::{ControlPlane, Options};
use isthmus_gateway::sidecar::Sidecar;
use isthmus_mesh::identity::Identity;
use isthmus_mesh::tls::control::{ControlPlaneConnector, channel};
use isthmus_mesh::tls::{MeshTls, Trust};

use isthmus_testkit::{eventually, http, temp_dir};
use isthmus_tests::mesh::{MeshSidecar, MeshedApp};

const TD: &str = "eu-west.isthmus.local";
const CP_ID: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-federation";

const STORE: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}, mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-reads, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  action: ALLOW
  rules:
    - from: [{principals: ["spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"]}]
      to: [{methods: [GET], paths: ["/items*"]}]
"#;

/// The mesh TLS of a sidecar that knows only the bootstrap root.
fn bootstrap_mesh(dir: &Path) -> (Arc<Identity>, Arc<MeshTls>) {
    let identity = Identity::empty();
    let mesh = Arc::new(MeshTls::new(identity.clone()));
    let pem = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    mesh.set_bootstrap_trust(Trust::from_self_describing_pem(&pem).unwrap());
    (identity, mesh)
}

struct Proxy {
    sidecar: Sidecar,
    mesh: Arc<MeshTls>,
}

#[allow(clippy::too_many_arguments)] // a test helper: each is one field of the pod
async fn secure_sidecar(
    cp: SocketAddr,
    dir: &Path,
    name: &str,
    labels: &[(&str, &str)],
    listeners: Vec<model::Listener>,
    workload: Option<Workload>,
    prebound: Vec<std::net::TcpListener>,
    stop: &tokio_util::sync::CancellationToken,
) -> Proxy {
    let (sidecar, mesh) = MeshSidecar {
        discovery: cp,
        dir,
        trust_domain: TD,
        cluster: "eu-west",
        namespace: "shop",
        service_account: name,
        labels,
        name: None,
        listeners,
        workload,
        prebound,
        health: None,
        peer_liveness: true,
    }
    .start(stop)
    .await;
    Proxy { sidecar, mesh }
}

fn listener(name: &str, address: &str, kind: model::listener::Kind) -> model::Listener {
    model::Listener {
        name: name.into(),
        address: address.into(),
        kind: Some(kind),
    }
}

async fn subscribe_as(
    cp: SocketAddr,
    connector: &ControlPlaneConnector,
    sa: &str,
) -> tonic::Status {
    let ch = channel(&cp.to_string(), Some(connector), Duration::from_secs(5))
        .await
        .expect("TLS to the control plane");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(model::Node {
                name: "x".into(),
                namespace: "shop".into(),
                service_account: sa.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    match DiscoveryClient::new(ch)
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(mut s) => match s.get_mut().message().await {
            Err(e) => e,
            Ok(_) => tonic::Status::ok("subscribed"),
        },
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_get_identities_over_tls_and_talk_mtls_under_policy() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let dir = temp_dir("mesh-security");
    std::fs::write(dir.join("mesh.yaml"), STORE).unwrap();
    let mut opts = Options::new(&dir);
    opts.poll = Duration::from_millis(20);
    opts.debounce = Duration::from_millis(20);
    let cp = ControlPlane::start(opts);
    let ca = Arc::new(Ca::load_or_create(&dir, TD).unwrap());
    let l = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let cp_addr = l.local_addr().unwrap();
    let tls = cp
        .serve_secure(
            l,
            ca,
            Authenticator::Bootstrap(Box::new(TokenKey::load_or_create(&dir, TD).unwrap())),
            "isthmus-system",
        )
        .unwrap();
    assert_eq!(tls.id().to_string(), CP_ID);
    let stop = tokio_util::sync::CancellationToken::new();

    // catalog: app + sidecar with the mesh transport, registered.
    let mut meshed = MeshedApp::start("catalog", "eu-west").await;
    let tunnel_socket = meshed.take_tunnel_socket();
    let (app, running) = (meshed.app.clone(), meshed.running);
    use model::listener::Kind;
    let catalog = secure_sidecar(
        cp_addr,
        &dir,
        "catalog",
        &[("app", "catalog")],
        vec![
            MeshedApp::tunnel_listener_of(meshed.tunnel_port, &meshed.inbound),
            listener("inbound", "127.0.0.1:0", Kind::Inbound(meshed.inbound)),
        ],
        Some(meshed.workload),
        vec![tunnel_socket],
        &stop,
    )
    .await;
    let out = || listener("out", "127.0.0.1:0", Kind::Http(model::HttpOutbound {}));
    let frontend = secure_sidecar(
        cp_addr,
        &dir,
        "frontend",
        &[("app", "frontend")],
        vec![out()],
        None,
        Vec::new(),
        &stop,
    )
    .await;
    let ops = secure_sidecar(
        cp_addr,
        &dir,
        "ops",
        &[("app", "ops")],
        vec![out()],
        None,
        Vec::new(),
        &stop,
    )
    .await;

    // The frontend's request crosses the mTLS transport: the app learns
    // the verified caller.
    let f_out = eventually("frontend listener bound", || async {
        frontend.sidecar.listener_addr("out")
    })
    .await;
    let (status, body) = eventually("frontend reaches catalog over mTLS", || async {
        http(f_out, "catalog", "/items")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        j["caller"],
        "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"
    );
    // Policy from the store: ops may not call, nor frontend write.
    let o_out = eventually("ops listener bound", || async {
        ops.sidecar.listener_addr("out")
    })
    .await;
    let (status, body) = eventually("ops configured", || async {
        http(o_out, "catalog", "/items")
            .await
            .filter(|(s, _)| *s != 404)
    })
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(http(f_out, "catalog", "/orders").await.unwrap().0, 403);
    // STRICT from the Mesh: plaintext to the catalog's inbound is refused.
    let plain = catalog.sidecar.listener_addr("inbound").unwrap();
    assert!(http(plain, "catalog", "/items").await.is_none());
    assert_eq!(app.hits(), 1, "only the allowed request reached the app");

    // The catalog proxy's view: identity, trust from the stream, mode.
    let admin = catalog.sidecar.admin_addr();
    let (_, dump) = http(admin, "admin", "/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["security"]["identity"],
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
    );
    assert_eq!(dump["security"]["mtlsMode"], "STRICT");
    assert_eq!(dump["security"]["trustDomains"], serde_json::json!([TD]));
    assert!(dump["security"]["authorization"].as_bool().unwrap());

    // The control plane takes identity from the certificate: subscribing
    // as another service account is refused, and so is no certificate.
    let with_ops_cert = ControlPlaneConnector::new(ops.mesh.clone(), CP_ID);
    let e = subscribe_as(cp_addr, &with_ops_cert, "catalog").await;
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message()
            .contains("spiffe://eu-west.isthmus.local/ns/shop/sa/ops"),
        "{e}"
    );
    let (_, anonymous) = bootstrap_mesh(&dir);
    let e = subscribe_as(
        cp_addr,
        &ControlPlaneConnector::new(anonymous.clone(), CP_ID),
        "catalog",
    )
    .await;
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // The proxy checks the control plane's identity.
    let wrong = ControlPlaneConnector::new(
        anonymous,
        "spiffe://eu-west.isthmus.local/ns/other/sa/isthmus-federation",
    );
    let e = channel(&cp_addr.to_string(), Some(&wrong), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        e.contains("expected spiffe://eu-west.isthmus.local/ns/other"),
        "{e}"
    );
    // Plaintext gRPC to the TLS port does not get through.
    let refused = match channel(&cp_addr.to_string(), None, Duration::from_secs(5)).await {
        Err(_) => true,
        Ok(ch) => DiscoveryClient::new(ch)
            .subscribe(tokio_stream::iter(vec![DiscoveryRequest::default()]))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext gRPC must not reach discovery");

    stop.cancel();
    for p in [catalog, frontend, ops] {
        p.sidecar.shutdown(Duration::from_millis(200)).await;
    }
    running.stop().await;
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
