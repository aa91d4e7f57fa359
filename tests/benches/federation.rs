//! Propagation across clusters (issue 6): how long from a change in one
//! cluster to its use by a proxy in another.
//!
//! 1. Two clusters, each a real control plane (files store polled every
//!    20 ms, 20 ms debounce) and a real east-west gateway, linked over
//!    QUIC on loopback; a real frontend sidecar in eu-west. Per round:
//!    - baseline: a new Service in eu-west's own store → in the sidecar;
//!    - export: a new Service + ServiceExport in eu-central → its
//!      `<svc>-eu-central.shop` in eu-west's sidecar;
//!    - endpoint: one more endpoint in eu-central → the weight in the
//!      eu-west sidecar.
//!      The link's RTT (from its status) is printed beside them.
//! 2. One control plane with 255 linked clusters (4 exported services
//!    each), simulated where the sync streams deliver: their exports are
//!    applied to the control plane's peers as the link tasks do. Per round
//!    one cluster's healthy count changes (a delta) → the weight in a real
//!    subscribed sidecar. Baseline in the same run: the same with 1 link.
//!
//! 3. A policy shared with the cluster set (issue 22): three real clusters
//!    linked every way, a frontend sidecar in each of eu-central and
//!    us-east. Per round eu-west rewrites its shared HTTPRoute with a new
//!    weight → the weight in both sidecars; baseline in the same run: the
//!    same route rewritten in eu-central's own store → its sidecar.
//! 4. One control plane, N linked clusters each sharing a route (on a
//!    Service of its own), simulated where the sync streams deliver; per
//!    round one cluster's route changes weight (a delta) → the sidecar.
//!    Baseline in the same run: 1 link.
//!
//! `cargo bench -p isthmus-tests --bench federation` (BENCH_ROUNDS).

use std::time::{Duration, Instant, SystemTime};

use isthmus_api::federation::v1 as wire;
use isthmus_api::model;
use isthmus_gateway::config::snapshot::Snapshot;
use isthmus_gateway::config::store::Store;

use isthmus_tests::cluster::{Cluster, link};

fn service(name: &str, endpoints: usize, export: bool) -> String {
    let eps: Vec<String> = (0..endpoints)
        .map(|i| {
            format!(
                "  - {{addresses: [10.1.{}.{}], zone: z}}",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{}\n",
        eps.join("\n")
    );
    if export {
        y.push_str(&format!(
            "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
             metadata: {{name: {name}, namespace: shop}}\n"
        ));
    }
    y
}

/// When `pred` first holds for the sidecar's configuration.
async fn until(store: &Store, pred: impl Fn(&Snapshot) -> bool) -> Instant {
    let mut rx = store.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if pred(&store.load()) {
            return Instant::now();
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("the change reached the sidecar within 30 s")
            .expect("sidecar store alive");
    }
}

fn weight(s: &Snapshot, name: &str) -> Option<u32> {
    s.services.get(name)?.endpoints.first().map(|e| e.weight)
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn row(what: &str, v: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {what} | {:.1} | {:.1} | {:.1} |",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(*v.iter().max().unwrap())
    );
}

async fn two_clusters(rounds: usize) {
    let mut west = Cluster::new("bench", "eu-west");
    let mut central = Cluster::new("bench", "eu-central");
    for c in [&mut west, &mut central] {
        c.start_control_plane();
        c.start_gateway().await;
    }
    link(&west, &central, Duration::from_secs(600), "5m");
    link(&central, &west, Duration::from_secs(600), "5m");
    let sidecar = west.start_frontend(Vec::new()).await;
    let store = sidecar.store().clone();
    let (mut local, mut export, mut endpoint, mut rtts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let t0 = Instant::now();
        west.write(
            &format!("local-{i}.yaml"),
            &service(&format!("local-{i}"), 2, false),
        );
        let name = format!("local-{i}.shop");
        local.push(until(&store, |s| s.services.contains_key(&name)).await - t0);

        let t0 = Instant::now();
        central.write(
            &format!("svc-{i}.yaml"),
            &service(&format!("svc-{i}"), 2, true),
        );
        let name = format!("svc-{i}-eu-central.shop");
        export.push(until(&store, |s| weight(s, &name) == Some(2)).await - t0);

        let t0 = Instant::now();
        central.write(
            &format!("svc-{i}.yaml"),
            &service(&format!("svc-{i}"), 3, true),
        );
        endpoint.push(until(&store, |s| weight(s, &name) == Some(3)).await - t0);
        if let Some(ms) = west.status("eu-central").rtt_millis {
            rtts.push(ms);
        }
    }
    println!(
        "\n## 1. Two clusters over QUIC, {rounds} rounds (file write → a sidecar in eu-west)\n"
    );
    println!("| change | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|");
    row("baseline: a Service in eu-west itself", &local);
    row("a ServiceExport in eu-central", &export);
    row("an endpoint more in eu-central", &endpoint);
    println!(
        "\nlink RTT (status, max over the rounds): {:.2} ms; the files store is polled every 20 ms (+20 ms debounce) on both sides",
        rtts.iter().copied().fold(0.0f64, f64::max)
    );
    sidecar.shutdown(Duration::from_millis(100)).await;
    for c in [&mut west, &mut central] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

fn exports(cluster: &str, version: u64, full: bool, healthy: u32) -> wire::Exports {
    wire::Exports {
        version,
        full,
        cluster: cluster.into(),
        trust_domain: format!("{cluster}.isthmus.local"),
        trust_bundle: String::new(),
        services: ["catalog", "cart", "orders", "payments"]
            .iter()
            .map(|n| wire::ExportedService {
                name: (*n).into(),
                namespace: "shop".into(),
                ports: vec![model::ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: 8080,
                    protocol: model::Protocol::Http as i32,
                }],
                healthy,
                locality: Some(model::Locality {
                    region: cluster.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        removed: Vec::new(),
        ..Default::default()
    }
}

/// Rounds of one linked cluster's delta → the sidecar, with `links` peers.
async fn deltas(c: &Cluster, store: &Store, links: usize, rounds: usize) -> Vec<Duration> {
    let cp = c.cp.as_ref().expect("control plane");
    let name = |k: usize| format!("c{k:03}");
    for k in 0..links {
        cp.peers
            .update(&name(k), |p| {
                p.apply(&exports(&name(k), 1, true, 2), SystemTime::now())
            })
            .expect("a full state applies");
    }
    let last = format!("catalog-{}.shop", name(links - 1));
    until(store, |s| weight(s, &last) == Some(2)).await;
    let mut out = Vec::new();
    for r in 0..rounds {
        let k = r % links;
        let (version, healthy) = (2 + (r / links) as u64, 3 + (r / links) as u32);
        let svc = format!("catalog-{}.shop", name(k));
        let t0 = Instant::now();
        cp.peers
            .update(&name(k), |p| {
                p.apply(
                    &exports(&name(k), version, false, healthy),
                    SystemTime::now(),
                )
            })
            .expect("a delta in order applies");
        out.push(until(store, |s| weight(s, &svc) == Some(healthy)).await - t0);
    }
    out
}

async fn many_links(rounds: usize) {
    let mut results = Vec::new();
    for links in [1usize, 255] {
        let mut c = Cluster::new(&format!("bench-{links}"), "eu-west");
        c.start_control_plane();
        let sidecar = c.start_frontend(Vec::new()).await;
        let store = sidecar.store().clone();
        let t0 = Instant::now();
        let d = deltas(&c, &store, links, rounds).await;
        let services = store.load().services.len();
        results.push((links, d, services, t0.elapsed()));
        sidecar.shutdown(Duration::from_millis(100)).await;
        c.stop.cancel();
        c.stop_control_plane().await;
    }
    println!(
        "\n## 2. One control plane, N linked clusters × 4 exported services, {rounds} rounds (a delta applied → a sidecar)\n"
    );
    println!(
        "| linked clusters (sidecar's services) | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|"
    );
    for (links, d, services, _) in &results {
        row(&format!("{links} ({services})"), d);
    }
}

/// An HTTPRoute on Service `parent` sending `weight` to it and the rest
/// to `other` (shared with the cluster set when `shared`).
fn route(name: &str, parent: &str, other: &str, weight: u32, shared: bool) -> String {
    let labels = if shared {
        "{isthmus.dev/clusterset: \"true\"}"
    } else {
        "{}"
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: shop, labels: {labels}}}\n\
         spec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}}}]\n\
         \x20 rules:\n  - backendRefs:\n\
         \x20   - {{name: {parent}, port: 80, weight: {weight}}}\n\
         \x20   - {{name: {other}, port: 80, weight: {}}}\n",
        1000 - weight
    )
}

/// The weight the sidecar's route `name` on `service` gives `service`.
fn route_weight(s: &Snapshot, service: &str, name: &str) -> Option<u32> {
    let svc = s.services.get(service)?;
    let r = svc.routes.iter().find(|r| r.name.contains(name))?;
    r.backends
        .iter()
        .find(|b| b.service == service)
        .map(|b| b.weight)
}

async fn shared_policy(rounds: usize) {
    let mut clusters = [
        Cluster::new("bench-policy", "eu-west"),
        Cluster::new("bench-policy", "eu-central"),
        Cluster::new("bench-policy", "us-east"),
    ];
    for c in &mut clusters {
        c.start_control_plane();
        c.start_gateway().await;
        c.write("reviews.yaml", &service("reviews", 2, true));
        c.write("ratings.yaml", &service("ratings", 2, false));
    }
    let [west, central, east] = &clusters;
    for (a, b) in [(west, central), (west, east), (central, east)] {
        link(a, b, Duration::from_secs(600), "5m");
        link(b, a, Duration::from_secs(600), "5m");
    }
    let (sc, se) = (
        central.start_frontend(Vec::new()).await,
        east.start_frontend(Vec::new()).await,
    );
    let (store_c, store_e) = (sc.store().clone(), se.store().clone());
    let (mut local, mut to_central, mut to_east, mut rtts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let w = 100 + i as u32;
        // Baseline: eu-central's own route (not shared).
        let t0 = Instant::now();
        central.write("own.yaml", &route("own", "ratings", "reviews", w, false));
        local.push(
            until(&store_c, |s| {
                route_weight(s, "ratings.shop", "own") == Some(w)
            })
            .await
                - t0,
        );
        // eu-west's shared route, in both other clusters' sidecars.
        let t0 = Instant::now();
        west.write(
            "shared.yaml",
            &route("canary", "reviews", "ratings", w, true),
        );
        let (a, b) = tokio::join!(
            until(&store_c, |s| route_weight(s, "reviews.shop", "canary")
                == Some(w)),
            until(&store_e, |s| route_weight(s, "reviews.shop", "canary")
                == Some(w)),
        );
        to_central.push(a - t0);
        to_east.push(b - t0);
        for peer in ["eu-central", "us-east"] {
            if let Some(ms) = west.status(peer).rtt_millis {
                rtts.push(ms);
            }
        }
        if let Some(ms) = central.status("eu-west").rtt_millis {
            rtts.push(ms);
        }
    }
    println!(
        "\n## 3. A route shared with the cluster set, three clusters over QUIC, {rounds} rounds (file write → sidecars)\n"
    );
    println!("| change | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|");
    row("baseline: eu-central's own route → its sidecar", &local);
    row("eu-west's shared route → eu-central's sidecar", &to_central);
    row("eu-west's shared route → us-east's sidecar", &to_east);
    println!(
        "\nlink RTT (status, max over the rounds): {:.2} ms",
        rtts.iter().copied().fold(0.0f64, f64::max)
    );
    for s in [sc, se] {
        s.shutdown(Duration::from_millis(100)).await;
    }
    for c in &mut clusters {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

/// Link `k`'s state: its exports, and a route on its own Service
/// `svc-<k>` giving it `weight` (of 1000; the rest to reviews).
fn shared_by(cluster: &str, k: usize, version: u64, full: bool, weight: u32) -> wire::Exports {
    let name = format!("svc-{k}");
    let object = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": format!("route-{k}"), "namespace": "shop",
                     "labels": {"isthmus.dev/clusterset": "true"}},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": name}],
            "rules": [{"backendRefs": [
                {"name": name, "port": 80, "weight": weight},
                {"name": "reviews", "port": 80, "weight": 1000 - weight},
            ]}],
        },
    });
    wire::Exports {
        policies: vec![wire::SharedPolicy {
            kind: "HTTPRoute".into(),
            namespace: "shop".into(),
            name: format!("route-{k}"),
            generation: version as i64,
            object: object.to_string(),
            ..Default::default()
        }],
        ..exports(cluster, version, full, 2)
    }
}

/// Rounds of one linked cluster's route change → the sidecar.
async fn policy_deltas(c: &Cluster, store: &Store, links: usize, rounds: usize) -> Vec<Duration> {
    let cp = c.cp.as_ref().expect("control plane");
    let name = |k: usize| format!("c{k:03}");
    // A local Service for each route's parent, and reviews.
    let mut yaml = service("reviews", 1, false);
    for k in 0..links {
        yaml.push_str("---\n");
        yaml.push_str(&service(&format!("svc-{k}"), 1, false));
    }
    c.write("services.yaml", &yaml);
    let last = format!("svc-{}.shop", links - 1);
    until(store, |s| s.services.contains_key(&last)).await;
    for k in 0..links {
        cp.peers
            .update(&name(k), |p| {
                p.apply(&shared_by(&name(k), k, 1, true, 100), SystemTime::now())
            })
            .expect("a full state applies");
    }
    until(store, |s| route_weight(s, &last, "route-") == Some(100)).await;
    let mut out = Vec::new();
    for r in 0..rounds {
        let k = r % links;
        let version = 2 + (r / links) as u64;
        let w = 100 + version as u32;
        let svc = format!("svc-{k}.shop");
        let t0 = Instant::now();
        cp.peers
            .update(&name(k), |p| {
                p.apply(
                    &shared_by(&name(k), k, version, false, w),
                    SystemTime::now(),
                )
            })
            .expect("a delta in order applies");
        out.push(until(store, |s| route_weight(s, &svc, "route-") == Some(w)).await - t0);
    }
    out
}

async fn many_sharing(rounds: usize) {
    let mut results = Vec::new();
    for links in [1usize, 255] {
        let mut c = Cluster::new(&format!("bench-share-{links}"), "eu-west");
        c.start_control_plane();
        let sidecar = c.start_frontend(Vec::new()).await;
        let store = sidecar.store().clone();
        let d = policy_deltas(&c, &store, links, rounds).await;
        let routes: usize = store.load().services.values().map(|s| s.routes.len()).sum();
        results.push((links, d, routes));
        sidecar.shutdown(Duration::from_millis(100)).await;
        c.stop.cancel();
        c.stop_control_plane().await;
    }
    println!(
        "\n## 4. One control plane, N linked clusters each sharing a route, {rounds} rounds (a route delta applied → a sidecar)\n"
    );
    println!(
        "| linked clusters (routes in the sidecar) | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|"
    );
    for (links, d, routes) in &results {
        row(&format!("{links} ({routes})"), d);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let only = std::env::var("BENCH_PARTS").unwrap_or_default();
        let run = |p: &str| only.is_empty() || only.split(',').any(|x| x == p);
        if run("1") {
            two_clusters(rounds).await;
        }
        if run("2") {
            many_links(rounds).await;
        }
        if run("3") {
            shared_policy(rounds).await;
        }
        if run("4") {
            many_sharing(rounds).await;
        }
    });
}
