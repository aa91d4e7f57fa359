//! Three clusters for failover tests and benchmarks, in-process (control
//! plane, east-west gateway, sidecars and sample apps each): eu-west's
//! frontend calls `catalog.shop.svc.clusterset.local`, served by
//! eu-central and us-east; all linked both ways. eu-west may reach
//! eu-central's gateway through a UDP relay that drops everything on
//! demand (a partition), and health checks and peer liveness may be off
//! (the baseline of the failover benchmark).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use isthmus_api::model;
use isthmus_gateway::sidecar::Sidecar;
use isthmus_testkit::eventually;

use crate::cluster::{Cluster, link};
use crate::load::{self, Load, Spec};

pub const SHOP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
"#;

pub const CLUSTERSET: &str = "catalog.shop.svc.clusterset.local";

/// A serving cluster's catalog: the app and its sidecar, while they run.
pub struct Catalog {
    pub sidecar: Option<Sidecar>,
    pub running: Option<isthmus_sample::Running>,
}

/// eu-west calling, eu-central and us-east serving the catalog; all
/// linked both ways.
pub struct Bed {
    pub clusters: Vec<Cluster>,
    pub frontend: Sidecar,
    pub catalogs: Vec<Catalog>,
    /// Set: eu-west reaches eu-central's gateway through a UDP relay that
    /// can drop everything (a partition, not a stopped process).
    pub partition: Option<Arc<AtomicBool>>,
}

impl Bed {
    /// `west` is written into eu-west's store (its policies).
    pub async fn start(test: &str, west: &str) -> Self {
        Self::start_with(test, west, false, true).await
    }

    /// `start`, eu-west's link to eu-central through a UDP relay when
    /// `relay`, with `features` (health checks, peer liveness).
    pub async fn start_with(test: &str, west: &str, relay: bool, features: bool) -> Self {
        let mut clusters = vec![
            Cluster::new(test, "eu-west"),
            Cluster::new(test, "eu-central"),
            Cluster::new(test, "us-east"),
        ];
        for c in clusters.iter_mut() {
            c.health_checks = features;
            c.peer_liveness = features;
            c.start_control_plane();
            c.start_gateway().await;
        }
        if !west.is_empty() {
            clusters[0].write("policy.yaml", west);
        }
        let mut catalogs = Vec::new();
        for c in &clusters[1..] {
            c.write("shop.yaml", SHOP);
            link(&clusters[0], c, Duration::from_secs(600), "5m");
            link(c, &clusters[0], Duration::from_secs(600), "5m");
            let (sidecar, _, meshed) = c.start_meshed_catalog().await;
            catalogs.push(Catalog {
                sidecar: Some(sidecar),
                running: Some(meshed.running),
            });
        }
        let mut partition = None;
        if relay {
            let central = clusters[1].quic();
            let (addr, silent) = crate::eastwest::udp_relay(central).await;
            let file = clusters[0].dir.join("link-eu-central.yaml");
            let yaml = std::fs::read_to_string(&file).unwrap();
            assert!(yaml.contains(&central.to_string()), "{yaml}");
            clusters[0].write(
                "link-eu-central.yaml",
                &yaml.replace(&central.to_string(), &addr.to_string()),
            );
            partition = Some(silent);
        }
        let frontend = clusters[0]
            .start_frontend(vec![model::Listener {
                name: "out".into(),
                address: "127.0.0.1:0".into(),
                kind: Some(model::listener::Kind::Http(model::HttpOutbound {})),
            }])
            .await;
        let bed = Self {
            clusters,
            frontend,
            catalogs,
            partition,
        };
        // Both clusters answer before the load starts.
        let out = bed.out().await;
        for cluster in ["eu-central", "us-east"] {
            until_answered_by(out, cluster).await;
        }
        bed
    }

    pub async fn out(&self) -> std::net::SocketAddr {
        eventually("the frontend's listener", || async {
            self.frontend.listener_addr("out")
        })
        .await
    }

    pub async fn frontend_dump(&self) -> serde_json::Value {
        let admin = self.frontend.admin_addr();
        let (_, body) = isthmus_testkit::http(admin, "admin", "/config_dump")
            .await
            .expect("the frontend's /config_dump");
        serde_json::from_str(&body).unwrap()
    }

    pub async fn stop(self) {
        self.frontend.shutdown(Duration::from_millis(200)).await;
        for c in self.catalogs {
            if let Some(s) = c.sidecar {
                s.shutdown(Duration::from_millis(200)).await;
            }
            if let Some(r) = c.running {
                r.stop().await;
            }
        }
        for mut c in self.clusters {
            c.stop.cancel();
            c.stop_control_plane().await;
        }
    }
}

pub fn spec(out: std::net::SocketAddr, rate: u32) -> Spec {
    Spec {
        addr: out,
        host: CLUSTERSET.into(),
        path: "/items".into(),
        rate,
        workers: 4,
        post_every: 3,
    }
}

/// A short burst of requests (for waiting on the set-up).
pub async fn one_burst(out: std::net::SocketAddr) -> Vec<load::Sample> {
    let l = Load::start(spec(out, 200));
    tokio::time::sleep(Duration::from_millis(100)).await;
    l.stop().await
}

/// Waits until a burst of requests gets an answer from `cluster`.
pub async fn until_answered_by(out: std::net::SocketAddr, cluster: &str) {
    eventually(&format!("answers from {cluster}"), || async {
        one_burst(out)
            .await
            .iter()
            .any(|s| s.cluster.as_deref() == Some(cluster))
            .then_some(())
    })
    .await;
}
