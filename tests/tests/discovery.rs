//! The discovery stream end to end: a control plane on a `files` store and
//! two real sidecars (the gateway crate's) that get their services from it.
//! One run covers: readiness only after the first config (the sidecar
//! starts before the control plane), workload self-registration, a route
//! file edit shifting traffic, a broken file reported while traffic stays,
//! a NACK that keeps the proxy's last good config and marks the resource,
//! the control plane stopped (traffic flows) and restarted (resync).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use isthmus_api::discovery::v1::{Workload, WorkloadPort};
use isthmus_api::model;
use isthmus_federation::server::{ControlPlane, Options};
use isthmus_gateway::sidecar::{self, ConfigSource, Sidecar};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_sample::{self as sample, SampleApp};

use isthmus_testkit::{eventually, http, temp_dir};

async fn dump(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http(admin, "cp", "/config_dump")
        .await
        .expect("admin answers");
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// The version of `catalog` that answered (the sample app says).
async fn version_via(outbound: SocketAddr) -> Option<String> {
    let (status, body) = http(outbound, "catalog", "/").await?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["version"].as_str()?.to_string())
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename: the watcher never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn route(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: catalog-split, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: catalog}}]
  rules:
    - backendRefs:
        - {{name: catalog-v1, port: 80, weight: {v1}}}
        - {{name: catalog-v2, port: 80, weight: {v2}}}
"#
    )
}

fn services(catalog_port: u16, v2_port: u16) -> String {
    format!(
        r#"apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {{name: mesh}}
spec: {{clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {{region: eu-west}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: catalog, namespace: shop}}
spec:
  selector: {{app: catalog}}
  ports: [{{name: http, port: {catalog_port}, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: catalog-v1, namespace: shop}}
spec:
  selector: {{app: catalog, version: v1}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
# v2 has no sidecar registering it: its endpoint is an EndpointSlice.
apiVersion: v1
kind: Service
metadata: {{name: catalog-v2, namespace: shop}}
spec:
  ports: [{{name: http, port: 80, targetPort: {v2_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: catalog-v2-abc
  namespace: shop
  labels: {{kubernetes.io/service-name: catalog-v2}}
addressType: IPv4
ports: [{{name: http, port: {v2_port}}}]
endpoints:
  - {{addresses: [127.0.0.1], zone: eu-west-a, conditions: {{ready: true}}}}
"#
    )
}

fn start_cp(dir: &Path) -> ControlPlane {
    let mut opts = Options::new(dir.to_path_buf());
    opts.poll = Duration::from_millis(20);
    opts.debounce = Duration::from_millis(20);
    ControlPlane::start(opts)
}

async fn sidecar(
    cp: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    listeners: Vec<model::Listener>,
    workload: Option<Workload>,
) -> Sidecar {
    let node = model::Node {
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
        cluster: "eu-west".into(),
        locality: Some(model::Locality {
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut d = isthmus_gateway::discovery::Options::new(cp.to_string(), node);
    d.listeners = listeners;
    d.workload = workload;
    d.backoff_initial = Duration::from_millis(50);
    d.backoff_max = Duration::from_millis(300);
    Sidecar::start(sidecar::Options {
        config: ConfigSource::ControlPlane(Box::new(d)),
        admin: "127.0.0.1:0".parse().unwrap(),
        access_log: Sink::Off,
        socket: Default::default(),
        mesh: None,
        prebound: Vec::new(),
        peer_liveness: true,
    })
    .await
    .expect("sidecar starts")
}

/// catalog v1's sidecar, registering the app on 127.0.0.1:`port`.
async fn catalog_v1_sidecar(cp: SocketAddr, port: u16) -> Sidecar {
    use model::listener::Kind;
    sidecar(
        cp,
        "catalog-v1-0",
        &[("app", "catalog"), ("version", "v1")],
        vec![listener("http", Kind::Http(model::HttpOutbound {}))],
        Some(Workload {
            address: "127.0.0.1".into(),
            ports: vec![WorkloadPort {
                name: "http".into(),
                port: port.into(),
            }],
            tunnel_port: 0,
        }),
    )
    .await
}

fn listener(name: &str, kind: model::listener::Kind) -> model::Listener {
    model::Listener {
        name: name.into(),
        address: "127.0.0.1:0".into(),
        kind: Some(kind),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_follow_the_control_plane_and_survive_its_absence() {
    // The apps: catalog v1 (with a sidecar that registers it) and v2.
    let v1 = sample::serve(
        SampleApp::new("catalog", "eu-west", "v1"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let v2 = sample::serve(
        SampleApp::new("catalog", "eu-west", "v2"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();

    let dir = temp_dir("discovery");
    write(&dir, "services.yaml", &services(80, v2.addr.port()));
    write(&dir, "route.yaml", &route(100, 0));

    // Discovery's socket, bound (and held) first, so the sidecar can start
    // before the control plane; each control plane serves a duplicate.
    let discovery_socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let discovery_addr = discovery_socket.local_addr().unwrap();

    // Sidecar A (frontend): explicit HTTP outbound, and a TCP listener of
    // its own that needs catalog port 80 (what makes it NACK later).
    use model::listener::Kind;
    let a = sidecar(
        discovery_addr,
        "frontend",
        &[("app", "frontend")],
        vec![
            listener("http", Kind::Http(model::HttpOutbound {})),
            listener(
                "catalog-tcp",
                Kind::Tcp(model::TcpOutbound {
                    service: "catalog.shop".into(),
                    port: 80,
                }),
            ),
        ],
        None,
    )
    .await;
    let a_admin = a.admin_addr();
    let (status, body) = http(a_admin, "a", "/readyz").await.unwrap();
    assert_eq!(status, 503, "not ready before any configuration: {body}");
    assert!(body.contains("no configuration"), "{body}");

    // The control plane comes up on that port.
    let cp = start_cp(&dir);
    let cp_admin = serve(&cp, &discovery_socket).await;

    // Sidecar B beside catalog v1 registers it (no EndpointSlice for v1).
    let b = catalog_v1_sidecar(discovery_addr, v1.addr.port()).await;

    eventually("sidecar A ready", || async {
        (http(a_admin, "a", "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let outbound = a
        .listener_addr("http")
        .expect("bound after the first config");
    // Traffic reaches v1 once B's registration made it an endpoint.
    eventually("v1 reachable through A", || async {
        (version_via(outbound).await? == "v1").then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(version_via(outbound).await.as_deref(), Some("v1"));
    }
    let d = dump(cp_admin).await;
    assert_eq!(d["workloads"], 1, "B's workload registered: {d}");
    let proxies = d["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{d}");
    assert!(
        proxies.iter().all(|p| p["syncedGeneration"].is_u64()),
        "{d}"
    );

    // Editing the route file shifts traffic.
    write(&dir, "route.yaml", &route(0, 100));
    eventually("traffic shifted to v2", || async {
        (version_via(outbound).await? == "v2").then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(version_via(outbound).await.as_deref(), Some("v2"));
    }

    // A broken file is reported (file, line, kind, name) and changes nothing.
    let a_version = a.store().load().version.clone();
    let generation = cp.published.borrow().generation;
    write(
        &dir,
        "route.yaml",
        &route(0, 100).replace("weight: 100", "weight: lots"),
    );
    let d = eventually("the broken file reported", || async {
        let d = dump(cp_admin).await;
        let errors = d["storeErrors"].as_array()?;
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("route.yaml:")))
            .then_some(d)
    })
    .await;
    let err = d["storeErrors"][0].as_str().unwrap();
    assert!(err.contains("HTTPRoute shop/catalog-split"), "{err}");
    for _ in 0..10 {
        assert_eq!(version_via(outbound).await.as_deref(), Some("v2"));
    }
    assert_eq!(
        a.store().load().version,
        a_version,
        "the proxy's configuration is untouched (store generation {generation} -> {})",
        cp.published.borrow().generation
    );
    write(&dir, "route.yaml", &route(0, 100));

    // A NACK: catalog's port 80 goes away, which A's own TCP listener
    // needs. A refuses and keeps routing; B (no such listener) accepts.
    write(&dir, "services.yaml", &services(8080, v2.addr.port()));
    let d = eventually("A's refusal shown on the control plane", || async {
        let d = dump(cp_admin).await;
        let refused = d["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["proxy"] == "shop/frontend")?["refused"]
            .get("service/catalog.shop")?
            .clone();
        Some((d, refused))
    })
    .await;
    let (d, refused) = d;
    assert!(
        refused["message"].as_str().unwrap().contains("port 80"),
        "the proxy's reason travels: {refused}"
    );
    // As an operator sees it: `isthmusctl proxy-status` names A refused,
    // with its message, and B in sync.
    let table = eventually("proxy-status shows A refused and B in sync", || async {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(isthmus_testkit::workspace_bin("isthmusctl"))
                .args(["proxy-status", "--admin", &cp_admin.to_string()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        let refused = lines
            .iter()
            .position(|l| l.starts_with("shop/frontend ") && l.contains(" Refused "))?;
        let why = lines.get(refused + 1)?;
        let synced = lines
            .iter()
            .any(|l| l.starts_with("shop/catalog-v1-0 ") && l.contains(" Synced "));
        (out.status.success()
            && why.contains("service/catalog.shop")
            && why.contains("port 80")
            && synced)
            .then_some(text)
    })
    .await;
    eprintln!("{table}");
    // The control plane's /metrics, read by Prometheus' own parser: the
    // pushes, the NACK among the answers, the proxies by state, the build.
    let (status, text) = http(cp_admin, "cp", "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    if let Some(m) = isthmus_testkit::prometheus::parse(&text) {
        let value = |family: &str, sample: &str, label: Option<(&str, &str)>| -> f64 {
            let f = m
                .get(family)
                .unwrap_or_else(|| panic!("{family} missing:\n{text}"));
            f.samples
                .iter()
                .filter(|(n, l, _)| {
                    n == sample
                        && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
                })
                .map(|(_, _, v)| *v)
                .sum()
        };
        assert_eq!(m["isthmus_control_plane_pushes"].kind, "counter");
        assert!(
            value(
                "isthmus_control_plane_pushes",
                "isthmus_control_plane_pushes_total",
                None
            ) >= 3.0
        );
        assert!(
            value(
                "isthmus_control_plane_answers",
                "isthmus_control_plane_answers_total",
                Some(("result", "nack"))
            ) >= 1.0
        );
        assert!(
            value(
                "isthmus_control_plane_answers",
                "isthmus_control_plane_answers_total",
                Some(("result", "ack"))
            ) >= 2.0
        );
        assert_eq!(m["isthmus_control_plane_push_seconds"].kind, "histogram");
        assert!(
            value(
                "isthmus_control_plane_push_seconds",
                "isthmus_control_plane_push_seconds_count",
                None
            ) >= 3.0
        );
        assert_eq!(
            value(
                "isthmus_control_plane_proxies",
                "isthmus_control_plane_proxies",
                Some(("state", "refused"))
            ),
            1.0
        );
        assert_eq!(m["isthmus_build_info"].kind, "gauge");
        assert_eq!(
            value(
                "isthmus_build_info",
                "isthmus_build_info",
                Some(("component", "control-plane"))
            ),
            1.0
        );
    }
    let condition = &d["conditions"]["Service shop/catalog"][0];
    assert_eq!(condition["type"], "Programmed", "{d}");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "RejectedByProxy");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("shop/frontend"),
        "{condition}"
    );
    let route_condition = d["conditions"]["HTTPRoute shop/catalog-split"]
        .as_array()
        .unwrap();
    assert!(
        route_condition.iter().any(|c| c["type"] == "Programmed"),
        "the route shaping the service is marked too: {d}"
    );
    let a_config = a.store().load();
    let catalog = a_config
        .services
        .get("catalog.shop")
        .expect("A still has catalog");
    assert!(
        catalog.ports.iter().any(|p| p.port == 80),
        "A kept its last good catalog (port 80)"
    );
    assert!(a.store().last_error().unwrap().contains("port 80"));
    for _ in 0..10 {
        assert_eq!(version_via(outbound).await.as_deref(), Some("v2"));
    }
    eventually("B accepted the new catalog", || async {
        let snap = b.store().load();
        let s = snap.services.get("catalog.shop")?;
        s.ports.iter().any(|p| p.port == 8080).then_some(())
    })
    .await;
    // Reverting clears the refusal.
    write(&dir, "services.yaml", &services(80, v2.addr.port()));
    eventually("refusal cleared", || async {
        let d = dump(cp_admin).await;
        let clean = d["proxies"]
            .as_array()?
            .iter()
            .all(|p| p["refused"].as_object().is_some_and(|r| r.is_empty()));
        (clean && d["conditions"].get("Service shop/catalog").is_none()).then_some(())
    })
    .await;

    // The control plane stops: traffic keeps flowing on the last good config.
    let a_metrics = a.admin_addr();
    cp.shutdown().await;
    eventually("A notices the control plane is gone", || async {
        let (_, m) = http(a_metrics, "a", "/metrics").await?;
        m.contains("isthmus_control_plane_connected 0")
            .then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(version_via(outbound).await.as_deref(), Some("v2"));
    }
    // The sidecar's /metrics, read by the same parser: its requests are a
    // counter with the labels dashboards group by.
    let (_, text) = http(a_metrics, "a", "/metrics").await.expect("metrics");
    if let Some(m) = isthmus_testkit::prometheus::parse(&text) {
        let requests = &m["isthmus_requests"];
        assert_eq!(requests.kind, "counter", "{text}");
        let (name, labels, n) = requests
            .samples
            .iter()
            // The answered ones (a 503 while the service moved may sit
            // beside them, in either order).
            .find(|(_, l, _)| {
                l.get("destination_service").map(String::as_str) == Some("catalog.shop")
                    && l.get("response_code").map(String::as_str) == Some("200")
            })
            .unwrap_or_else(|| panic!("no answered catalog.shop requests:\n{text}"));
        assert_eq!(name, "isthmus_requests_total");
        assert!(
            *n >= 20.0 && labels.contains_key("response_code"),
            "{labels:?} {n}"
        );
        assert_eq!(m["isthmus_request_duration_seconds"].kind, "histogram");
        let build = &m["isthmus_build_info"];
        assert_eq!(build.kind, "gauge");
        assert_eq!(build.samples[0].1["component"], "gateway");
        assert_eq!(build.samples[0].2, 1.0);
    }
    assert_eq!(http(a_admin, "a", "/readyz").await.unwrap().0, 200);

    // While it is down the route changes; the restarted control plane
    // resyncs both sidecars (B registers again) and traffic follows.
    write(&dir, "route.yaml", &route(100, 0));
    let cp = start_cp(&dir);
    let cp_admin = serve(&cp, &discovery_socket).await;
    eventually("traffic back on v1 after the resync", || async {
        (version_via(outbound).await? == "v1").then_some(())
    })
    .await;
    let d = eventually("both sidecars resubscribed", || async {
        let d = dump(cp_admin).await;
        (d["proxies"].as_array()?.len() == 2 && d["workloads"] == 1).then_some(d)
    })
    .await;
    let a_entry = d["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["proxy"] == "shop/frontend")
        .unwrap()
        .clone();
    assert!(a_entry["resources"].as_u64().unwrap() >= 3, "{a_entry}");

    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    cp.shutdown().await;
    v1.stop().await;
    v2.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GAMMA route in the Gateway API's field layout, through the control
/// plane to a sidecar: the opt-in canary takes only requests with its
/// query parameter (never all of /api), edits headers both ways; a rule
/// asking what is not supported is left out and the route says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gamma_route_reaches_the_sidecar_as_written_or_refused_by_name() {
    let v1_app = SampleApp::new("catalog", "eu-west", "v1");
    let v2_app = SampleApp::new("catalog", "eu-west", "v2");
    let v1 = sample::serve(v1_app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let v2 = sample::serve(v2_app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = temp_dir("discovery-gamma");
    // catalog-v1 by EndpointSlice as well: no registering sidecar here.
    let slice = |name: &str, port: u16| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n  namespace: shop\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n  - {{addresses: [127.0.0.1], conditions: {{ready: true}}}}\n"
        )
    };
    let svcs = services(80, v2.addr.port())
        .replace(
            "  selector: {app: catalog, version: v1}\n  ports: [{name: http, port: 80, targetPort: http}]",
            &format!("  ports: [{{name: http, port: 80, targetPort: {}}}]", v1.addr.port()),
        );
    write(
        &dir,
        "services.yaml",
        &(svcs + &slice("catalog-v1", v1.addr.port())),
    );
    write(
        &dir,
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-opt-in, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 80}]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          queryParams: [{type: Exact, name: canary, value: "true"}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-env, value: canary}]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: x-served-by, value: v2}]}
      backendRefs: [{name: catalog-v2, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /ui}}]
      filters: [{type: CORS, cors: {allowOrigins: ["*"]}}]
      backendRefs: [{name: catalog-v2, port: 80}]
    - backendRefs: [{name: catalog-v1, port: 80}]
"#,
    );
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cp = start_cp(&dir);
    let cp_admin = serve(&cp, &socket).await;
    use model::listener::Kind;
    let a = sidecar(
        socket.local_addr().unwrap(),
        "frontend",
        &[("app", "frontend")],
        vec![listener("http", Kind::Http(model::HttpOutbound {}))],
        None,
    )
    .await;
    let out = eventually("the sidecar's listener", || async {
        a.listener_addr("http")
    })
    .await;
    let raw = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(out).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let version = text
            .split("\"version\":\"")
            .nth(1)?
            .split('"')
            .next()?
            .to_string();
        Some((
            version,
            text.to_ascii_lowercase().contains("x-served-by: v2"),
        ))
    };
    eventually("the route in force", || async {
        raw("/api/items?canary=true")
            .await
            .filter(|(v, _)| v == "v2")
    })
    .await;
    assert_eq!(
        raw("/api/items?canary=true").await,
        Some(("v2".into(), true))
    );
    assert_eq!(v2_app.last_header("x-env").as_deref(), Some("canary"));
    assert_eq!(
        raw("/api/items").await,
        Some(("v1".into(), false)),
        "the query condition is kept: /api without it is not the canary's"
    );
    assert_eq!(
        raw("/ui/").await,
        Some(("v1".into(), false)),
        "the refused rule is left out, not widened"
    );
    let d = dump(cp_admin).await;
    let accepted = &d["conditions"]["HTTPRoute shop/catalog-opt-in"];
    let text = accepted.to_string();
    assert!(
        text.contains("UnsupportedValue") && text.contains("filters[0].type CORS"),
        "{text}"
    );
    a.shutdown(Duration::from_millis(200)).await;
    cp.shutdown().await;
}

/// Serves discovery on a duplicate of `socket` and admin on port 0.
async fn serve(cp: &ControlPlane, socket: &std::net::TcpListener) -> SocketAddr {
    let dup = socket.try_clone().unwrap();
    dup.set_nonblocking(true).unwrap();
    cp.serve_discovery(tokio::net::TcpListener::from_std(dup).unwrap());
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    cp.serve_admin(admin);
    admin_addr
}

/// Two replicas on the same resources give the same versions, so a proxy
/// that moves from one to the other (a replica restarts, the Service
/// balances it elsewhere) is sent nothing it already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_and_a_proxy_moving_between_them_resyncs_nothing() {
    use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
    use isthmus_api::discovery::v1::{DiscoveryRequest, Subscription};
    let dir = temp_dir("replicas");
    write(&dir, "services.yaml", &services(80, 18080));
    write(&dir, "route.yaml", &route(90, 10));
    let a = start_cp(&dir);
    let b = start_cp(&dir);
    let (pa, pb) = (a.published.borrow().clone(), b.published.borrow().clone());
    assert_eq!(pa.offer.versions(), pb.offer.versions());
    assert!(pa.offer.versions().len() >= 3);
    let la = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let lb = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (da, db) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    a.serve_discovery(la);
    b.serve_discovery(lb);

    let subscribe = |addr: SocketAddr, held: std::collections::BTreeMap<String, String>| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DiscoveryRequest {
            subscribe: Some(Subscription {
                node: Some(model::Node {
                    name: "frontend".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }),
                workload: None,
                initial_resource_versions: held,
                admin_address: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        (first, tx, responses)
    };
    let (first, tx, _r) = subscribe(da, Default::default()).await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names.len(),
        4,
        "catalog, catalog-v1, catalog-v2 and security/mesh: {names:?}"
    );
    assert!(names.contains(&"security/mesh"));
    let held: std::collections::BTreeMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(tx);
    let (again, _tx, _r) = subscribe(db, held).await;
    assert!(
        again.resources.is_empty() && again.removed_resources.is_empty(),
        "the other replica sends nothing the proxy holds: {again:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad subscriptions are refused with a status that says what is wrong,
/// and the control plane keeps serving.
#[tokio::test]
async fn bad_subscriptions_are_refused_by_name() {
    use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
    use isthmus_api::discovery::v1::{DiscoveryRequest, Subscription};
    let dir = temp_dir("bad-subscriptions");
    write(&dir, "services.yaml", &services(80, 18080));
    let cp = start_cp(&dir);
    let l = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    cp.serve_discovery(l);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let attempt = |first: DiscoveryRequest| {
        let mut client = DiscoveryClient::new(channel.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(first).await.unwrap();
            let r = client
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            drop(tx);
            r.map(|_| ()).unwrap_err()
        }
    };
    let node = |name: &str| model::Node {
        name: name.into(),
        namespace: "shop".into(),
        ..Default::default()
    };
    let e = attempt(DiscoveryRequest {
        response_nonce: "1".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("must carry `subscribe`"), "{e}");
    let e = attempt(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(node("")),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("name and namespace"), "{e}");
    let e = attempt(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(node("p")),
            workload: Some(isthmus_api::discovery::v1::Workload {
                address: "not-an-ip".into(),
                ports: Vec::new(),
                tunnel_port: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    assert!(
        e.message().contains("\"not-an-ip\" is not an IP address"),
        "{e}"
    );
    let e = attempt(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(node("p")),
            workload: Some(isthmus_api::discovery::v1::Workload {
                address: "10.0.0.1".into(),
                ports: vec![WorkloadPort {
                    name: "http".into(),
                    port: 70000,
                }],
                tunnel_port: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    assert!(e.message().contains("70000 is not a port"), "{e}");
    assert_eq!(cp.published.borrow().workloads, 0, "nothing registered");
    assert!(cp.subscribers.is_empty());
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A self-signed CA certificate (PEM), as a linked cluster's bundle.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn cluster_link(quic: &str, bundle: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1\nkind: ClusterLink\nmetadata: {{name: us-east}}\nspec:\n  peer: us-east\n  region: us-east1\n  gateway: {{quic: \"{quic}\"}}\n  trustDomain: us-east.isthmus.local\n  trustBundle: \"{}\"\n  credentialsSecretRef: {{name: link-us-east}}\n",
        bundle.replace('\n', "\\n")
    )
}

/// A ClusterLink reaches the east-west gateway (a proxy running as
/// `isthmus-eastwest`) as its peer, over the discovery stream, and every
/// proxy trusts the linked domain; the gateway follows the link's edits
/// and its removal; an ordinary sidecar gets no peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_links_become_the_gateways_peers_and_trusted_domains() {
    let dir = temp_dir("links");
    write(&dir, "services.yaml", &services(80, 18080));
    let bundle = ca_pem();
    write(&dir, "link.yaml", &cluster_link("10.0.2.1:15443", &bundle));
    let cp = start_cp(&dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    cp.serve_discovery(listener);
    let gateway = sidecar(addr, "isthmus-eastwest", &[], Vec::new(), None).await;
    let frontend = sidecar(addr, "frontend", &[], Vec::new(), None).await;

    let peers = |s: &Sidecar| {
        s.store()
            .load()
            .source
            .east_west
            .as_ref()
            .map(|e| e.peers.clone())
    };
    let got = eventually("the link reaches the gateway", || async {
        peers(&gateway).filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(
        got,
        vec![model::PeerGateway {
            cluster: "us-east".into(),
            udp: "10.0.2.1:15443".into(),
            tcp: "10.0.2.1:15443".into(),
            identity: "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest".into(),
        }]
    );
    let trusts = |s: &Sidecar| {
        s.store()
            .load()
            .source
            .security
            .as_ref()
            .is_some_and(|sec| {
                sec.trust_bundles
                    .iter()
                    .any(|b| b.trust_domain == "us-east.isthmus.local" && b.cluster == "us-east")
            })
    };
    eventually("the linked domain is trusted", || async {
        trusts(&frontend).then_some(())
    })
    .await;
    assert!(trusts(&gateway));
    assert_eq!(peers(&frontend), None, "a sidecar is not a gateway");

    // The peer's gateway moved: followed.
    write(&dir, "link.yaml", &cluster_link("10.0.2.9:15443", &bundle));
    eventually("the new address reaches the gateway", || async {
        peers(&gateway).filter(|p| p.first().is_some_and(|p| p.udp == "10.0.2.9:15443"))
    })
    .await;
    // Unlinked: no peers, the domain no longer trusted.
    std::fs::remove_file(dir.join("link.yaml")).unwrap();
    eventually("the link is withdrawn", || async {
        peers(&gateway).filter(|p| p.is_empty())
    })
    .await;
    eventually("the domain is no longer trusted", || async {
        (!trusts(&frontend)).then_some(())
    })
    .await;
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A control plane that (re)starts pushes nothing during its warm-up:
/// the proxies that come back meanwhile register first, so the first
/// configuration a caller gets already has their endpoints. Without it,
/// a caller connecting first would be told catalog v1 has no endpoint
/// (and a restarted control plane would take every endpoint away from
/// its proxies and its linked clusters until their sidecars returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_control_plane_waits_for_its_workloads_before_pushing() {
    let v1 = sample::serve(
        SampleApp::new("catalog", "eu-west", "v1"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = temp_dir("warm-up");
    write(&dir, "services.yaml", &services(80, 1));
    write(&dir, "route.yaml", &route(100, 0));
    let discovery_socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let discovery_addr = discovery_socket.local_addr().unwrap();
    let mut opts = Options::new(dir.to_path_buf());
    opts.poll = Duration::from_millis(20);
    opts.debounce = Duration::from_millis(20);
    opts.warm_up = Duration::from_secs(5);
    let cp = ControlPlane::start(opts);
    assert!(!cp.published.borrow().warm, "warming up at the start");
    serve(&cp, &discovery_socket).await;

    // The caller subscribes first, then catalog v1's sidecar registers.
    use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
    use isthmus_api::discovery::v1::{DiscoveryRequest, Subscription};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{discovery_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(model::Node {
                name: "frontend".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = DiscoveryClient::new(channel)
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let b = catalog_v1_sidecar(discovery_addr, v1.addr.port()).await;
    // The caller's first configuration already has v1's endpoint.
    let first = responses.message().await.unwrap().unwrap();
    assert!(cp.published.borrow().warm);
    let v1_subset = first
        .resources
        .iter()
        .find(|r| r.name.contains("catalog-v1"))
        .unwrap_or_else(|| panic!("no catalog-v1 in {:?}", first.resources));
    let service = <model::Service as prost::Message>::decode(&*v1_subset.body).unwrap();
    assert_eq!(
        service.endpoints.len(),
        1,
        "the first configuration has the endpoint registered during the warm-up: {service:?}"
    );
    drop(tx);
    b.shutdown(Duration::from_millis(100)).await;
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Grafana dashboard in deploy/ queries only metrics our sidecars,
/// gateways and control planes export (a renamed metric fails here, not
/// on an operator's empty panel), and every panel has a query.
#[test]
fn the_grafana_dashboard_queries_only_metrics_we_export() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/isthmus-multicluster.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .expect("the dashboard is JSON");
    let (gateway, control_plane) = (
        isthmus_gateway::telemetry::metrics::Metrics::new(),
        isthmus_federation::server::metrics::Metrics::new(),
    );
    let families: std::collections::BTreeSet<&str> = gateway
        .families
        .iter()
        .chain(&control_plane.families)
        .map(String::as_str)
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for w in words.filter(|w| w.starts_with("istio_") || w.starts_with("isthmus_")) {
                let base = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .find_map(|s| w.strip_suffix(s))
                    .unwrap_or(w);
                assert!(
                    families.contains(w) || families.contains(base),
                    "panel {}: {w} is not a metric we export ({families:?})",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "the dashboard queries {queried} metrics");
}
