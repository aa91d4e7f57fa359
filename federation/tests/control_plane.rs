//! The control plane process over a real store directory: it translates
//! what is there, retranslates on change, and shows it on /config_dump.

use std::time::Duration;

use isthmus_federation::server::{ControlPlane, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn translates_the_store_and_follows_changes() {
    let dir = std::env::temp_dir().join(format!("isthmus-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eu-west");
    for f in ["mesh.yaml", "services.yaml", "policy.yaml"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    let mut opts = Options::new(dir.clone());
    opts.poll = Duration::from_millis(20);
    opts.debounce = Duration::from_millis(50);
    let cp = ControlPlane::start(opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    cp.serve_admin(listener);

    let (status, body) = get(addr, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["generation"], 1);
    assert_eq!(dump["objects"]["Service"], 4);
    assert_eq!(
        dump["services"]["reviews.shop"]["routes"][1]["backends"][1]["weight"],
        10
    );
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (status, body) = get(addr, "/proxy_config?namespace=shop&name=frontend").await;
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cfg["node"]["name"], "frontend");
    assert_eq!(cfg["services"].as_array().unwrap().len(), 4);
    assert_eq!(cfg["services"][0]["name"], "catalog.shop");
    let other: serde_json::Value =
        serde_json::from_str(&get(addr, "/proxy_config?namespace=other").await.1).unwrap();
    assert!(
        other.get("services").is_none(),
        "nothing in namespace other: {other}"
    );
    assert_eq!(get(addr, "/proxy_config").await.0, 400);

    // A policy for a service that does not exist: a problem, shown.
    std::fs::write(
        dir.join("ghost.yaml"),
        "apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: ghost, namespace: shop}\nspec: {targetRef: {name: nowhere}}\n",
    )
    .unwrap();
    let mut published = cp.published.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while published.borrow_and_update().generation < 2 {
            published.changed().await.unwrap();
        }
    })
    .await
    .expect("the change was never translated");
    let dump: serde_json::Value = serde_json::from_str(&get(addr, "/config_dump").await.1).unwrap();
    assert_eq!(dump["problems"][0]["reason"], "TargetNotFound");
    assert_eq!(dump["problems"][0]["object"], "shop/ghost");
    let ghost = &dump["conditions"]["DestinationPolicy shop/ghost"][0];
    assert_eq!(
        (ghost["type"].as_str(), ghost["status"].as_str()),
        (Some("Accepted"), Some("False"))
    );

    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// ClusterSet IPs outlive a restart in `files` mode: what the state file
/// holds is used (even where a name's hash would give another address),
/// and what was handed out is there for the next start.
#[tokio::test]
async fn clusterset_ips_survive_a_restart() {
    use isthmus_api::federation::v1 as wire;
    use isthmus_api::model;
    let dir = isthmus_testkit::temp_dir("cp-vips");
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eu-west");
    for f in ["mesh.yaml", "services.yaml"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    let state = isthmus_federation::store::vip_state::path(&dir);
    let chosen: std::net::Ipv4Addr = "240.240.77.1".parse().unwrap();
    isthmus_federation::store::vip_state::save(
        &state,
        &[("reviews-eu-central.shop".to_string(), chosen)].into(),
    )
    .unwrap();
    let exports = wire::Exports {
        version: 1,
        full: true,
        cluster: "eu-central".into(),
        trust_domain: "eu-central.isthmus.local".into(),
        services: ["catalog", "reviews"]
            .map(|name| wire::ExportedService {
                name: name.into(),
                namespace: "shop".into(),
                ports: vec![model::ServicePort {
                    port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                healthy: 1,
                locality: Some(model::Locality {
                    region: "eu-central".into(),
                    zone: "eu-central-a".into(),
                }),
                ..Default::default()
            })
            .to_vec(),
        ..Default::default()
    };
    // Starts a control plane, imports, and returns every imported name's
    // VIP once they are all there.
    let run = |dir: std::path::PathBuf| {
        let exports = exports.clone();
        async move {
            let mut opts = Options::new(dir);
            opts.poll = Duration::from_millis(20);
            opts.debounce = Duration::from_millis(20);
            opts.gateway_entry = Some("10.0.0.2:15009".parse().unwrap());
            let cp = ControlPlane::start(opts);
            cp.peers.update("eu-central", |p| {
                p.apply(&exports, std::time::SystemTime::now()).unwrap()
            });
            let mut published = cp.published.clone();
            let names = [
                "catalog.shop.svc.clusterset.local",
                "catalog-eu-central.shop",
                "reviews.shop.svc.clusterset.local",
                "reviews-eu-central.shop",
            ];
            let vips = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let p = published.borrow_and_update().clone();
                    let got: std::collections::BTreeMap<&str, Vec<String>> = names
                        .iter()
                        .filter_map(|n| Some((*n, p.catalog.services.get(*n)?.vips.clone())))
                        .filter(|(_, v)| !v.is_empty())
                        .collect();
                    if got.len() == names.len() {
                        return got;
                    }
                    published.changed().await.unwrap();
                }
            })
            .await
            .expect("imported names with VIPs");
            cp.shutdown().await;
            vips
        }
    };
    let first = run(dir.clone()).await;
    assert_eq!(first["reviews-eu-central.shop"], [chosen.to_string()]);
    let kept = isthmus_federation::store::vip_state::load(&state).unwrap();
    assert_eq!(kept.len(), 4, "every name written: {kept:?}");
    let again = run(dir.clone()).await;
    assert_eq!(first, again, "the same addresses after a restart");
}
