//! The control-plane demo: a control plane on a `files` store directory,
//! serving discovery and its CA over TLS; catalog v1 and v2 each with a
//! sidecar that registers it, and a frontend sidecar that gets its routes
//! from the control plane. Every sidecar gets a SPIFFE certificate from
//! the CA (bootstrap tokens); the Mesh is STRICT, so the frontend reaches
//! catalog only over the mTLS transport, and an AuthorizationPolicy says
//! who may call. Traffic to `catalog` runs continuously; every second a
//! line shows how it splits and how much of it arrived with the frontend's
//! verified identity. Edit the printed store directory (route weights, the
//! policy, a broken file) and watch it follow. Ctrl-C stops everything.
//!
//!     cargo run --release -p isthmus-federation --example control-plane-demo
//!
//! ISTHMUS_DEMO_SECONDS=N stops after N seconds (for scripts).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use isthmus_api::discovery::v1::{Workload, WorkloadPort};
use isthmus_api::model;
use isthmus_federation::server::{ControlPlane, Options};
use isthmus_gateway::sidecar::{self, ConfigSource, Sidecar};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_sample::{self as sample, SampleApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICES: &str = r#"apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}, mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec:
  selector: {app: catalog}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog-v1, namespace: shop}
spec:
  selector: {app: catalog, version: v1}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: catalog-v2, namespace: shop}
spec:
  selector: {app: catalog, version: v2}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

const ROUTE: &str = r#"# Change the weights and save: the split follows within a second.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog}]
  rules:
    - backendRefs:
        - {name: catalog-v1, port: 80, weight: 90}
        - {name: catalog-v2, port: 80, weight: 10}
"#;

const AUTHZ: &str = r#"# Who may call catalog. Remove the frontend's principal (or make this a
# DENY) and save: its requests get 403 within a second.
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: catalog-callers, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  action: ALLOW
  rules:
    - from: [{principals: ["spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"]}]
"#;

const TD: &str = "eu-west.isthmus.local";
const FRONTEND_ID: &str = "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend";

fn node(name: &str, labels: &[(&str, &str)]) -> model::Node {
    model::Node {
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.split('-').next().unwrap_or(name).into(),
        cluster: "eu-west".into(),
        locality: Some(model::Locality {
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// What a sidecar needs to join the mesh: the CA's root and a token.
struct Bootstrap {
    root_pem: String,
    tokens: isthmus_federation::identity::token::TokenKey,
    stop: tokio_util::sync::CancellationToken,
}

async fn sidecar(
    boot: &Bootstrap,
    name: &str,
    labels: &[(&str, &str)],
    admin: u16,
    listeners: Vec<model::Listener>,
    workload: Option<Workload>,
) -> anyhow::Result<Sidecar> {
    use isthmus_mesh::tls::{MeshTls, Trust, control::ControlPlaneConnector};
    let node = node(name, labels);
    // The identity: a key made here, a certificate from the CA over TLS.
    let identity = isthmus_mesh::identity::Identity::empty();
    let mesh = std::sync::Arc::new(MeshTls::new(identity.clone()));
    mesh.set_bootstrap_trust(Trust::from_self_describing_pem(&boot.root_pem)?);
    let tls = ControlPlaneConnector::new(
        mesh.clone(),
        format!("spiffe://{TD}/ns/isthmus-system/sa/isthmus-federation"),
    );
    tokio::spawn(
        identity.run(
            isthmus_mesh::identity::Options {
                address: "127.0.0.1:15010".into(),
                token: boot
                    .tokens
                    .issue(
                        &node.namespace,
                        &node.service_account,
                        std::time::SystemTime::now(),
                        Duration::from_secs(600),
                    )
                    .into(),
                ttl: Duration::from_secs(3600),
                renew_at: 0.5,
                tls: Some(tls.clone()),
            },
            boot.stop.clone(),
        ),
    );
    let mut d = isthmus_gateway::discovery::Options::new("127.0.0.1:15010", node);
    d.listeners = listeners;
    d.workload = workload;
    d.tls = Some(tls);
    Ok(Sidecar::start(sidecar::Options {
        config: ConfigSource::ControlPlane(Box::new(d)),
        admin: ([127, 0, 0, 1], admin).into(),
        access_log: Sink::Off,
        socket: Default::default(),
        mesh: Some(mesh),
        prebound: Vec::new(),
        peer_liveness: true,
    })
    .await?)
}

/// One request through the frontend's sidecar: the version that answered,
/// and whether the app saw the frontend's verified identity (mTLS).
async fn call(outbound: SocketAddr) -> Option<(String, bool)> {
    let mut s = tokio::net::TcpStream::connect(outbound).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    if !out.starts_with("HTTP/1.1 200") {
        return Some((format!("HTTP {}", out.get(9..12).unwrap_or("?")), false));
    }
    let body = out.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((
        v["version"].as_str()?.to_string(),
        v["caller"].as_str() == Some(FRONTEND_ID),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("isthmus-demo-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [
        ("services.yaml", SERVICES),
        ("route.yaml", ROUTE),
        ("authz.yaml", AUTHZ),
    ] {
        if !dir.join(name).exists() {
            std::fs::write(dir.join(name), text)?;
        }
    }

    let mut opts = Options::new(dir.clone());
    opts.debounce = Duration::from_millis(50);
    let cp = ControlPlane::start(opts);
    let ca = std::sync::Arc::new(isthmus_federation::identity::Ca::load_or_create(&dir, TD)?);
    let tokens = || isthmus_federation::identity::token::TokenKey::load_or_create(&dir, TD);
    let boot = Bootstrap {
        root_pem: ca.bundle_pem().to_string(),
        tokens: tokens()?,
        stop: tokio_util::sync::CancellationToken::new(),
    };
    cp.serve_secure(
        isthmus_federation::server::bind(([127, 0, 0, 1], 15010).into())?,
        ca,
        isthmus_federation::identity::service::Authenticator::Bootstrap(Box::new(tokens()?)),
        "isthmus-system",
    )?;
    cp.serve_admin(tokio::net::TcpListener::bind("127.0.0.1:15030").await?);

    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for (version, port, admin, tunnel) in [
        ("v1", 18201u16, 15021u16, 15108u16),
        ("v2", 18202, 15022, 15208),
    ] {
        apps.push(
            sample::serve(
                SampleApp::new("catalog", "eu-west", version),
                ([127, 0, 0, 1], port).into(),
            )
            .await?,
        );
        sidecars.push(
            sidecar(
                &boot,
                &format!("catalog-{version}-0"),
                &[("app", "catalog"), ("version", version)],
                admin,
                // The mesh transport (mTLS) in front of the app.
                vec![model::Listener {
                    name: "tunnel".into(),
                    address: format!("127.0.0.1:{tunnel}"),
                    kind: Some(model::listener::Kind::Tunnel(model::Inbound {
                        app_address: "127.0.0.1".into(),
                        ports: vec![model::InboundPort {
                            port: port.into(),
                            ..Default::default()
                        }],
                    })),
                }],
                Some(Workload {
                    address: "127.0.0.1".into(),
                    ports: vec![WorkloadPort {
                        name: "http".into(),
                        port: port.into(),
                    }],
                    tunnel_port: tunnel.into(),
                }),
            )
            .await?,
        );
    }
    let frontend = sidecar(
        &boot,
        "frontend-0",
        &[("app", "frontend")],
        15020,
        vec![model::Listener {
            name: "outbound-http".into(),
            address: "127.0.0.1:15001".into(),
            kind: Some(model::listener::Kind::Http(model::HttpOutbound {})),
        }],
        None,
    )
    .await?;
    eprintln!(
        "\nIsthmus control plane demo\n\
         \x20 store directory (edit it live):  {dir}\n\
         \x20 control plane admin:             curl -s 127.0.0.1:15030/config_dump\n\
         \x20 frontend sidecar admin:          curl -s 127.0.0.1:15020/config_dump\n\
         \x20 send your own requests:          curl -s -H 'Host: catalog' 127.0.0.1:15001/\n\
         \x20 try: set the weights in {dir}/route.yaml to 0 and 100, edit\n\
         \x20      {dir}/authz.yaml (who may call catalog), or break a file\n",
        dir = dir.display()
    );

    // Ready once the frontend has its first configuration (listeners bound).
    let ready = tokio::time::Instant::now() + Duration::from_secs(10);
    while frontend.listener_addr("outbound-http").is_none() {
        anyhow::ensure!(
            tokio::time::Instant::now() < ready,
            "the frontend sidecar got no configuration from the control plane within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outbound: SocketAddr = "127.0.0.1:15001".parse()?;
    // ...and catalog answers (certificates issued, endpoints registered).
    while !call(outbound).await.is_some_and(|(_, mtls)| mtls) {
        anyhow::ensure!(
            tokio::time::Instant::now() < ready + Duration::from_secs(10),
            "catalog did not answer over mTLS within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds: Option<u64> = std::env::var("ISTHMUS_DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        let mut split: BTreeMap<String, u32> = BTreeMap::new();
        let mut mtls = 0;
        for _ in 0..50 {
            let (who, verified) = call(outbound)
                .await
                .unwrap_or_else(|| ("no answer".into(), false));
            *split.entry(who).or_default() += 1;
            mtls += u32::from(verified);
        }
        let p = cp.published.borrow().clone();
        let synced = cp.subscribers.synced_at_least(p.generation);
        let line: Vec<String> = split.iter().map(|(k, n)| format!("{k} {n:>2}")).collect();
        println!(
            "catalog <- 50 requests: {:<28} | mTLS as frontend {mtls:>2}/50 | generation {} ({} of {} proxies in sync), store errors {}",
            line.join("  "),
            p.generation,
            synced,
            cp.subscribers.len(),
            p.store.errors.len()
        );
    }
    eprintln!("stopping");
    boot.stop.cancel();
    frontend.shutdown(Duration::from_secs(1)).await;
    for s in sidecars {
        s.shutdown(Duration::from_secs(1)).await;
    }
    cp.shutdown().await;
    for a in apps {
        a.stop().await;
    }
    Ok(())
}
