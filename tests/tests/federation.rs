//! Federation between clusters, each a real control plane (files
//! store, CA, discovery over TLS, federation port) with a real east-west
//! gateway (its SVID from its CA, its peers and services from discovery,
//! QUIC tunnels): linked both ways with `isthmusctl link create`'s
//! manifests, the control planes sync through the gateways. Checked: an
//! export in eu-central becomes services in eu-west's catalog and the link
//! says Connected over QUIC with an RTT; changes arrive as deltas; with
//! the exporter's control plane gone the imports stay (fail-static,
//! marked stale) until the TTL, are withdrawn, and come back when it
//! returns; an expired join token and a mismatched trust bundle are
//! refused with conditions saying so; a frontend sidecar in eu-west calls
//! eu-central's catalog sidecar through both gateways with its identity
//! intact, and us-east's frontend is refused by eu-central's policy.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use isthmus_api::model;
use isthmus_federation::resources::link::PartitionPolicy;
use isthmus_gateway::sidecar::Sidecar;

use isthmus_testkit::{eventually, http};
use isthmus_tests::cluster::{Cluster, link, linked_pair, repoint_link};

const CATALOG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: catalog-1, namespace: shop, labels: {kubernetes.io/service-name: catalog}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.1.0.7], zone: eu-central-a}
  - {addresses: [10.1.0.8], zone: eu-central-a}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
"#;

/// eu-central's catalog: a workload behind a sidecar, exported, with a
/// policy refusing us-east's frontend by its principal.
const SHOP_CENTRAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: not-us-east-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  action: DENY
  rules:
    - from: [{principals: ["spiffe://us-east.isthmus.local/ns/shop/sa/frontend"]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_cluster_calls_keep_the_callers_identity_under_the_servers_policy() {
    init_tracing();
    let mut west = Cluster::new("call", "eu-west");
    let mut central = Cluster::new("call", "eu-central");
    let mut east = Cluster::new("call", "us-east");
    for c in [&mut west, &mut central, &mut east] {
        c.start_control_plane();
        c.start_gateway().await;
    }
    central.write("shop.yaml", SHOP_CENTRAL);
    for c in [&west, &east] {
        link(c, &central, Duration::from_secs(600), "5m");
        link(&central, c, Duration::from_secs(600), "5m");
    }

    // The catalog app in eu-central, its sidecar registering it.
    let (catalog, _, meshed) = central.start_meshed_catalog().await;
    let (app, running) = (meshed.app.clone(), meshed.running);
    use model::listener::Kind;
    let listener = |name: &str, address: String, kind| model::Listener {
        name: name.into(),
        address,
        kind: Some(kind),
    };

    // A frontend in each of the other clusters.
    let mut frontends: Vec<Sidecar> = Vec::new();
    for c in [&west, &east] {
        let f = c
            .start_frontend(vec![listener(
                "out",
                "127.0.0.1:0".into(),
                Kind::Http(model::HttpOutbound {}),
            )])
            .await;
        frontends.push(f);
    }
    let outs: Vec<SocketAddr> = {
        let mut v = Vec::new();
        for f in &frontends {
            v.push(eventually("frontend listener", || async { f.listener_addr("out") }).await);
        }
        v
    };

    // eu-west → its gateway → QUIC → eu-central's gateway → the catalog's
    // sidecar: the app learns the caller eu-west's frontend, verified
    // end to end across trust domains.
    for host in [
        "catalog-eu-central.shop",
        "catalog.shop.svc.clusterset.local",
    ] {
        let (status, body) = eventually(&format!("eu-west reaches {host}"), || async {
            http(outs[0], host, "/items")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
        assert_eq!(status, 200);
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            j["caller"], "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend",
            "{body}"
        );
        assert_eq!(j["cluster"], "eu-central", "{body}");
    }
    // us-east's frontend is named by eu-central's policy: refused there.
    let (status, body) = eventually("us-east gets an answer from eu-central", || async {
        http(outs[1], "catalog-eu-central.shop", "/items")
            .await
            .filter(|(s, _)| *s == 403 || *s == 200)
    })
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(app.hits(), 2, "only eu-west's requests reached the app");

    for f in frontends {
        f.shutdown(Duration::from_millis(200)).await;
    }
    catalog.shutdown(Duration::from_millis(200)).await;
    running.stop().await;
    for c in [&mut west, &mut central, &mut east] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

/// Roots that `sidecar` trusts for `domain` now.
fn roots_of(sidecar: &Sidecar, domain: &str) -> usize {
    sidecar
        .store()
        .load()
        .security
        .trust
        .get(domain)
        .map_or(0, |d| d.anchors.len())
}

/// What eu-west's frontend calls: eu-central's catalog by its per-cluster
/// name, through both gateways.
const HOST: &str = "catalog-eu-central.shop";

/// eu-west and eu-central linked, eu-central's meshed catalog exported,
/// and eu-west's frontend already answered by it through both gateways.
struct Calling {
    west: Cluster,
    central: Cluster,
    catalog: Sidecar,
    catalog_tls: std::sync::Arc<isthmus_mesh::tls::MeshTls>,
    meshed: isthmus_tests::mesh::MeshedApp,
    frontend: Sidecar,
    /// The frontend's explicit HTTP listener.
    out: SocketAddr,
}

impl Calling {
    async fn start(test: &str) -> Self {
        let (west, central) = linked_pair(
            test,
            &[("shop.yaml", SHOP_CENTRAL)],
            Duration::from_secs(600),
            "5m",
        )
        .await;
        let (catalog, catalog_tls, meshed) = central.start_meshed_catalog().await;
        let frontend = west
            .start_frontend(vec![model::Listener {
                name: "out".into(),
                address: "127.0.0.1:0".into(),
                kind: Some(model::listener::Kind::Http(model::HttpOutbound {})),
            }])
            .await;
        let out = eventually("frontend listener", || async {
            frontend.listener_addr("out")
        })
        .await;
        eventually("eu-west reaches eu-central's catalog", || async {
            http(out, HOST, "/items").await.filter(|(s, _)| *s == 200)
        })
        .await;
        Self {
            west,
            central,
            catalog,
            catalog_tls,
            meshed,
            frontend,
            out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_ca_rotation_reaches_linked_clusters_with_no_failed_request() {
    use isthmus_federation::identity::Ca;
    init_tracing();
    let Calling {
        mut west,
        mut central,
        catalog,
        catalog_tls,
        meshed,
        frontend,
        out,
    } = Calling::start("rotate").await;

    // Requests flow the whole time; every answer is counted.
    let stop = tokio_util::sync::CancellationToken::new();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let traffic = {
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut failed = Vec::new();
            while !stop.is_cancelled() {
                match http(out, HOST, "/items").await {
                    Some((200, _)) => {
                        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        })
    };
    // Each step waits for requests answered after it.
    let flowing = |what: &'static str| {
        let answered = answered.clone();
        async move {
            let from = answered.load(std::sync::atomic::Ordering::SeqCst);
            eventually(what, || {
                let n = answered.load(std::sync::atomic::Ordering::SeqCst);
                async move { (n >= from + 5).then_some(()) }
            })
            .await
        }
    };

    let td = central.td();
    let old_cert = std::fs::read_to_string(central.dir.join("ca/root-cert.pem")).unwrap();
    let old_key = std::fs::read_to_string(central.dir.join("ca/root-key.pem")).unwrap();
    let (new, new_key) = Ca::generate(&td).unwrap();
    let new_cert = new.bundle_pem().to_string();
    let both = format!("{old_cert}{new_cert}");
    let fingerprints = |pem: &str| isthmus_federation::translate::links::fingerprints(pem);
    let source = "ca-rotation";
    let ca = |cert: &str, key: &str, roots: Option<&str>| {
        Ca::from_pem(&td, cert, key, roots, std::path::Path::new(source)).unwrap()
    };
    let gateway_tls = |c: &Cluster| {
        c.gateway
            .as_ref()
            .unwrap()
            .0
            .proxy
            .mesh
            .clone()
            .expect("the gateway's identity")
    };

    // 1. eu-central trusts a new root beside the old one, still signing
    //    with the old: eu-west learns both over the link, without relinking.
    central
        .restart_control_plane_with(ca(&old_cert, &old_key, Some(&both)))
        .await;
    let s = eventually("eu-west uses the bundle eu-central sent", || {
        let s = west.status("eu-central");
        async move {
            let b = s.trust_bundle.clone()?;
            (b.source == "Peer" && b.roots.len() == 2).then_some(b)
        }
    })
    .await;
    assert_eq!(s.roots, fingerprints(&both));
    eventually("eu-west's proxies trust both roots", || {
        let n = (
            roots_of(&frontend, &td),
            roots_of(&west.gateway.as_ref().unwrap().0, &td),
        );
        async move { (n == (2, 2)).then_some(()) }
    })
    .await;

    // 2. eu-central signs with the new root; its workloads renew.
    central
        .restart_control_plane_with(ca(&new_cert, &new_key, Some(&both)))
        .await;
    for tls in [gateway_tls(&central), catalog_tls.clone()] {
        let mut rotations = tls.identity().rotations();
        rotations.borrow_and_update();
        tls.identity().renew_now();
        tokio::time::timeout(Duration::from_secs(30), rotations.changed())
            .await
            .expect("renewed under the new root")
            .unwrap();
    }
    for _ in 0..20 {
        let (status, body) = http(out, HOST, "/items").await.unwrap();
        assert_eq!(
            status, 200,
            "a certificate from the new root is trusted: {body}"
        );
    }

    // 3. The old root is retired: eu-west follows.
    central
        .restart_control_plane_with(ca(&new_cert, &new_key, None))
        .await;
    let s = eventually("eu-west drops the old root", || {
        let s = west.status("eu-central");
        async move {
            let b = s.trust_bundle.clone()?;
            (b.roots.len() == 1).then_some(b)
        }
    })
    .await;
    assert_eq!(s.roots, fingerprints(&new_cert));
    eventually("eu-west's proxies trust the new root alone", || {
        let n = (
            roots_of(&frontend, &td),
            roots_of(&west.gateway.as_ref().unwrap().0, &td),
        );
        async move { (n == (1, 1)).then_some(()) }
    })
    .await;
    flowing("requests answered with the old root retired").await;
    // eu-west's control plane keeps the bundle: a restart trusts the new
    // root before it hears from eu-central again.
    assert!(west.dir.join("ca/links/eu-central.bundle").is_file());

    stop.cancel();
    let failed = traffic.await.unwrap();
    let ok = answered.load(std::sync::atomic::Ordering::SeqCst) as usize;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );

    frontend.shutdown(Duration::from_millis(200)).await;
    catalog.shutdown(Duration::from_millis(200)).await;
    meshed.running.stop().await;
    for c in [&mut west, &mut central] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_sync_through_the_gateways_and_survive_a_partition() {
    init_tracing();
    let (mut west, mut central) = linked_pair(
        "sync",
        &[("catalog.yaml", CATALOG)],
        Duration::from_secs(600),
        "3s",
    )
    .await;

    // The export becomes eu-west's services, via eu-west's gateway entry.
    let one = eventually("catalog-eu-central.shop in eu-west", || {
        let s = west.service("catalog-eu-central.shop");
        async move { s }
    })
    .await;
    let ep = &one.endpoints[0];
    assert_eq!(ep.address, "127.0.0.1");
    assert_eq!(ep.tunnel_port, u32::from(west.entry.port()));
    assert_eq!(ep.via_cluster, "eu-central");
    assert_eq!(ep.via_service, "catalog.shop");
    assert_eq!(ep.weight, 2, "eu-central's healthy count");
    assert_eq!(ep.identity, "spiffe://eu-central.isthmus.local");
    assert_eq!(
        ep.locality.as_ref().map(|l| l.region.as_str()),
        Some("eu-central")
    );
    assert!(west.service("catalog.shop.svc.clusterset.local").is_some());
    let s = eventually("the link's RTT", || {
        let s = west.status("eu-central");
        async move { s.rtt_millis.is_some().then_some(s) }
    })
    .await;
    assert!(s.connected, "{s:?}");
    assert_eq!(s.transport.as_deref(), Some("quic"));
    assert_eq!(s.imported_services, ["catalog.shop"]);
    assert_eq!(s.conditions[0].reason, "Connected");
    assert!(s.last_sync.is_some());
    // eu-central imports nothing (eu-west exports nothing) but is linked.
    eventually("eu-central's link to eu-west", || {
        let s = central.status("eu-west");
        async move { s.connected.then_some(()) }
    })
    .await;

    // A change is a delta: a third endpoint raises the weight.
    central.write(
        "catalog.yaml",
        &CATALOG.replace(
            "  - {addresses: [10.1.0.8], zone: eu-central-a}",
            "  - {addresses: [10.1.0.8], zone: eu-central-a}\n  - {addresses: [10.1.0.9], zone: eu-central-a}",
        ),
    );
    eventually("weight 3 in eu-west", || {
        let s = west.service("catalog-eu-central.shop");
        async move { s.filter(|s| s.endpoints[0].weight == 3) }
    })
    .await;

    // Partition: eu-central's control plane goes. Fail-static keeps the
    // imports, marked stale, until the 3 s TTL; then they are withdrawn.
    central.stop_control_plane().await;
    let s = eventually("the link noticed", || {
        let s = west.status("eu-central");
        async move { (!s.connected).then_some(s) }
    })
    .await;
    assert!(s.stale_seconds.is_some(), "{s:?}");
    assert_eq!(s.imported_services, ["catalog.shop"]);
    assert!(west.service("catalog-eu-central.shop").is_some(), "kept");
    eventually("withdrawn after the TTL", || {
        let gone = west.service("catalog-eu-central.shop").is_none();
        async move { gone.then_some(()) }
    })
    .await;
    let s = west.status("eu-central");
    assert!(s.imported_services.is_empty());
    assert!(
        s.conditions[0].message.contains("withdrawn"),
        "{:?}",
        s.conditions
    );

    // It returns: a full resync brings the imports back, exactly once.
    central.start_control_plane();
    let back = eventually("resynced", || {
        let s = west.service("catalog-eu-central.shop");
        async move { s }
    })
    .await;
    assert_eq!(back.endpoints.len(), 1);
    assert_eq!(back.endpoints[0].weight, 3);
    let set = west.service("catalog.shop.svc.clusterset.local").unwrap();
    assert_eq!(set.endpoints.len(), 1, "no duplicates: {set:?}");
    eventually("connected again", || {
        let s = west.status("eu-central");
        async move { s.connected.then_some(()) }
    })
    .await;

    west.stop.cancel();
    central.stop.cancel();
    central.stop_control_plane().await;
    west.stop_control_plane().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_outlives_its_join_token_across_restarts() {
    init_tracing();
    let (mut west, mut central) = linked_pair(
        "outlives",
        &[("catalog.yaml", CATALOG)],
        Duration::from_secs(60),
        "1s",
    )
    .await;
    let s = eventually("eu-west holds a link credential from eu-central", || {
        let s = west.status("eu-central");
        async move { (s.connected && s.credential_expiry.is_some()).then_some(s) }
    })
    .await;
    let expiry = s.credential_expiry.unwrap().0;
    let days = (expiry - k8s_openapi::jiff::Timestamp::now()).get_seconds() / 86400;
    assert!((29..=30).contains(&days), "good for 30 days: {expiry}");
    assert!(
        west.dir.join("ca/links/eu-central").is_file(),
        "kept where a restarted control plane finds it"
    );
    eventually("eu-central holds one from eu-west", || {
        let s = central.status("eu-west");
        async move { s.credential_expiry.is_some().then_some(()) }
    })
    .await;

    // Two hours on, the 60 s join tokens are long expired. Each restart
    // in turn, and the link comes back after each without a new token.
    for c in [&west, &central] {
        c.advance_clock(Duration::from_secs(2 * 3600));
    }
    let down = |c: &Cluster, peer: &'static str| {
        let s = c.status(peer);
        async move { (!s.connected).then_some(()) }
    };
    let up = |c: &Cluster, peer: &'static str| {
        let s = c.status(peer);
        async move {
            let reason = s.conditions.first().map(|c| c.reason.as_str());
            assert_ne!(reason, Some("TokenExpired"), "{s:?}");
            s.connected.then_some(())
        }
    };
    for (who, gateway) in [
        ("eu-central", true),
        ("eu-west", true),
        ("eu-central", false),
        ("eu-west", false),
    ] {
        let (c, other) = if who == "eu-central" {
            (&mut central, "eu-west")
        } else {
            (&mut west, "eu-central")
        };
        let what = if gateway { "gateway" } else { "control plane" };
        if gateway {
            let was = c.quic();
            c.stop_gateway().await;
            eventually(&format!("{who}'s {what} gone"), || down(c, other)).await;
            c.start_gateway().await;
            // The peer's link follows the gateway's new address.
            let (c, peer) = if who == "eu-central" {
                (&central, &west)
            } else {
                (&west, &central)
            };
            repoint_link(peer, c, was);
        } else {
            c.stop_control_plane().await;
            c.start_control_plane();
        }
        eventually(
            &format!("the link back after {who}'s {what} restarted"),
            || up(&west, "eu-central"),
        )
        .await;
        eventually(
            &format!("eu-central's link back after {who}'s {what} restarted"),
            || up(&central, "eu-west"),
        )
        .await;
    }
    assert!(
        eventually("the imports", || {
            let s = west.service("catalog-eu-central.shop");
            async move { s }
        })
        .await
        .endpoints
        .len()
            == 1
    );

    for c in [&mut west, &mut central] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_and_mismatched_trust_are_refused_by_name() {
    init_tracing();
    let mut west = Cluster::new("refused", "eu-west");
    let mut central = Cluster::new("refused", "eu-central");
    let mut east = Cluster::new("refused", "us-east");
    for c in [&mut west, &mut central, &mut east] {
        c.start_control_plane();
        c.start_gateway().await;
    }
    // eu-west → eu-central with a token that is already expired.
    let yaml = isthmus_ctl::link::create(
        &west.dir,
        &central.dir,
        &isthmus_ctl::link::Options {
            gateway: Some(central.quic().to_string()),
            gateway_tcp: None,
            ttl: Duration::from_secs(60),
            join_wait: Duration::from_secs(30),
            partition: PartitionPolicy::default(),
        },
        SystemTime::now() - Duration::from_secs(3600),
    )
    .unwrap();
    west.write("link-eu-central.yaml", &yaml);
    link(&central, &west, Duration::from_secs(600), "5m");
    let s = eventually("TokenExpired", || {
        let s = west.status("eu-central");
        async move { (s.conditions.first()?.reason == "TokenExpired").then_some(s) }
    })
    .await;
    assert!(!s.connected);
    assert!(s.conditions[0].message.contains("expired"), "{s:?}");

    // us-east → eu-central, with us-east's link naming eu-west's bundle
    // for eu-central: eu-central's certificates do not chain to it.
    let wrong = std::fs::read_to_string(west.dir.join("ca/root-cert.pem")).unwrap();
    let mut yaml = isthmus_ctl::link::create(
        &east.dir,
        &central.dir,
        &isthmus_ctl::link::Options {
            gateway: Some(central.quic().to_string()),
            gateway_tcp: None,
            ttl: Duration::from_secs(600),
            join_wait: Duration::from_secs(30),
            partition: PartitionPolicy::default(),
        },
        SystemTime::now(),
    )
    .unwrap();
    let right = std::fs::read_to_string(central.dir.join("ca/root-cert.pem")).unwrap();
    yaml = replace_bundle(&yaml, &right, &wrong);
    east.write("link-eu-central.yaml", &yaml);
    link(&central, &east, Duration::from_secs(600), "5m");
    let s = eventually("TrustMismatch", || {
        let s = east.status("eu-central");
        async move { (s.conditions.first()?.reason == "TrustMismatch").then_some(s) }
    })
    .await;
    assert!(!s.connected, "{s:?}");

    for c in [&mut west, &mut central, &mut east] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

/// The manifests with one PEM bundle swapped for another, however the
/// YAML writer quoted it.
fn replace_bundle(yaml: &str, from: &str, to: &str) -> String {
    let mut docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    for d in &mut docs {
        if d["kind"] == "ClusterLink" {
            assert_eq!(
                d["spec"]["trustBundle"].as_str().map(str::trim),
                Some(from.trim())
            );
            d["spec"]["trustBundle"] = to.into();
        }
    }
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// An OTLP/gRPC receiver: every span exported to it, as a collector gets
/// them (resource service name, span).
struct Collector {
    spans:
        tokio::sync::mpsc::UnboundedSender<(String, opentelemetry_proto::tonic::trace::v1::Span)>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let _ = self.spans.send((service.clone(), s));
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// A span attribute as a string (its value's debug form for non-strings).
fn attr(s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

/// GET through `out` with `traceparent` (if any): the app's JSON.
async fn get_traced(out: SocketAddr, host: &str, traceparent: Option<&str>) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
    let tp = traceparent.map_or_else(String::new, |t| format!("traceparent: {t}\r\n"));
    s.write_all(
        format!("GET /items HTTP/1.1\r\nHost: {host}\r\n{tp}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap()
}

/// Spans over OTLP: a request from eu-west's frontend to eu-central's
/// catalog (through both east-west gateways) gives one span per hop, in
/// one trace, each with the other side's cluster; the caller's sampling
/// decision is kept (not sampled: no span, and `-00` passed on); a new
/// trace is sampled at the configured rate (0 here: none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_every_hop_reach_an_otlp_collector_as_one_trace() {
    use isthmus_gateway::telemetry::otlp::{Spans, Tracing};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    init_tracing();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { spans: tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let c = Calling::start("otlp").await;
    let out = c.out;
    for (sidecar, service) in [(&c.frontend, "frontend.shop"), (&c.catalog, "catalog.shop")] {
        sidecar.proxy.set_tracing(Tracing {
            rate: 0.0,
            spans: Some(Spans::start(&endpoint, service.into(), Vec::new()).unwrap()),
        });
    }

    // Not sampled by the caller: passed on as such, no span.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let app = get_traced(out, HOST, Some(unsampled)).await;
    let seen = app["traceparent"].as_str().unwrap();
    assert!(
        seen.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && seen.ends_with("-00"),
        "{seen}"
    );
    // A new trace at rate 0: not sampled either.
    let app = get_traced(out, HOST, None).await;
    assert!(
        app["traceparent"].as_str().unwrap().ends_with("-00"),
        "{app}"
    );
    // Sampled by the caller: a span at each hop.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{trace}-00f067aa0ba902b7-01");
    let app = get_traced(out, HOST, Some(&sampled)).await;
    let seen = app["traceparent"].as_str().unwrap().to_string();
    assert!(
        seen.starts_with(&format!("00-{trace}-")) && seen.ends_with("-01"),
        "{seen}"
    );

    let mut spans = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spans.len() < 2 {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("both hops' spans within 30 s")
            .unwrap();
        let id = got
            .1
            .trace_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(id, trace, "only the sampled trace has spans: {got:?}");
        spans.push(got);
    }
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (client, server) = {
        let c = spans
            .iter()
            .find(|(_, s)| s.kind == 3)
            .expect("a client span");
        let s = spans
            .iter()
            .find(|(_, s)| s.kind == 2)
            .expect("a server span");
        (c, s)
    };
    assert!(client.0.contains("frontend.shop"), "{:?}", client.0);
    assert!(server.0.contains("catalog.shop"), "{:?}", server.0);
    let (c, s) = (&client.1, &server.1);
    // The chain: caller's span -> frontend's -> catalog's -> the app.
    assert_eq!(hex(&c.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        s.parent_span_id, c.span_id,
        "the server span's parent is the client's"
    );
    assert_eq!(
        &seen[36..52],
        hex(&s.span_id),
        "the app's parent is the server span"
    );
    assert_eq!(
        attr(c, "isthmus.peer_cluster").as_deref(),
        Some("eu-central")
    );
    assert_eq!(
        attr(c, "isthmus.via_eastwest_gateway").as_deref(),
        Some("true")
    );
    assert_eq!(attr(c, "isthmus.cluster").as_deref(), Some("eu-west"));
    assert_eq!(attr(c, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(s, "isthmus.peer_cluster").as_deref(), Some("eu-west"));
    assert_eq!(
        attr(s, "isthmus.peer_principal").as_deref(),
        Some("spiffe://eu-west.isthmus.local/ns/shop/sa/frontend")
    );
    assert_eq!(attr(s, "isthmus.cluster").as_deref(), Some("eu-central"));
    assert_eq!(
        attr(s, "isthmus.connection_security_policy").as_deref(),
        Some("mutual_tls")
    );
    assert!(
        c.end_time_unix_nano >= s.end_time_unix_nano,
        "the client span ends last"
    );
}
