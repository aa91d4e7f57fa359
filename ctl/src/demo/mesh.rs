//! The demo's sample mesh (`../shared/SCENARIOS.md`), as data: the three
//! clusters, where each thing listens (one loopback range per cluster, the
//! same ports in each), the YAML of each cluster's store and the arguments
//! of each process. Pure: the orchestration in `mod.rs` does the I/O.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One local cluster: a region with its own trust domain, and the
/// loopback range 127.0.`index`.0/24 for everything it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    pub name: &'static str,
    pub index: u8,
}

pub const CLUSTERS: [Cluster; 3] = [
    Cluster {
        name: "eu-west",
        index: 1,
    },
    Cluster {
        name: "eu-central",
        index: 2,
    },
    Cluster {
        name: "us-east",
        index: 3,
    },
];

/// Host numbers inside a cluster's range.
const CONTROL_PLANE: u8 = 1;
const GATEWAY: u8 = 2;
const FRONTEND: u8 = 10;

/// A sample application with its sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct App {
    pub service: &'static str,
    pub version: &'static str,
    /// Host number in the cluster's range.
    pub host: u8,
    pub grpc: bool,
}

/// With `--netns`: where a cluster namespace's capture rules send the
/// demo's connections (the frontend's transparent listener, on 127.0.0.1)
/// and its DNS queries (the frontend's DNS proxy).
pub const CAPTURE_PORT: u16 = 15001;
pub const DNS_PORT: u16 = 15053;

/// The application port (behind the sidecar) and the sidecar's mesh
/// transport port, the same for every app.
pub const APP_PORT: u16 = 8080;
pub const TUNNEL_PORT: u16 = 15008;

pub const CATALOG: App = App {
    service: "catalog",
    version: "v1",
    host: 11,
    grpc: false,
};

impl Cluster {
    pub fn by_name(name: &str) -> Option<Self> {
        CLUSTERS.iter().copied().find(|c| c.name == name)
    }

    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, self.index, host))
    }

    fn at(&self, host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(host), port)
    }

    pub fn trust_domain(&self) -> String {
        format!("{}.isthmus.local", self.name)
    }

    pub fn zone(&self) -> String {
        format!("{}-a", self.name)
    }

    pub fn discovery(&self) -> SocketAddr {
        self.at(CONTROL_PLANE, 15010)
    }
    pub fn federation(&self) -> SocketAddr {
        self.at(CONTROL_PLANE, 15012)
    }
    pub fn control_plane_admin(&self) -> SocketAddr {
        self.at(CONTROL_PLANE, 15030)
    }
    /// The east-west gateway: QUIC on UDP, the fallback on TCP, same port.
    pub fn gateway(&self) -> SocketAddr {
        self.at(GATEWAY, 15443)
    }
    /// The gateway's entry for this cluster's sidecars.
    pub fn gateway_entry(&self) -> SocketAddr {
        self.at(GATEWAY, 15009)
    }
    pub fn gateway_admin(&self) -> SocketAddr {
        self.at(GATEWAY, 15020)
    }
    /// Where the demo, playing the frontend application, sends requests.
    pub fn frontend(&self) -> SocketAddr {
        self.at(FRONTEND, 15001)
    }
    pub fn frontend_admin(&self) -> SocketAddr {
        self.at(FRONTEND, 15020)
    }

    /// The sample apps running here.
    pub fn apps(&self) -> Vec<App> {
        let reviews = |version| App {
            service: "reviews",
            version,
            host: 12,
            grpc: false,
        };
        let inventory = App {
            service: "inventory",
            version: "v1",
            host: 13,
            grpc: true,
        };
        match self.name {
            "eu-west" => vec![CATALOG, reviews("v1")],
            "eu-central" => vec![CATALOG, inventory],
            _ => vec![reviews("v2")],
        }
    }

    pub fn app(&self, service: &str) -> Option<App> {
        self.apps().into_iter().find(|a| a.service == service)
    }

    /// The store's Mesh: this cluster's name, trust domain and locality.
    pub fn mesh_yaml(&self) -> String {
        format!(
            "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
             spec:\n  clusterName: {name}\n  trustDomain: {td}\n  \
             locality: {{region: {name}, zone: {zone}}}\n  mtls: {{mode: STRICT}}\n",
            name = self.name,
            td = self.trust_domain(),
            zone = self.zone(),
        )
    }

    /// The ClusterIP of an app's Service, as Kubernetes would give it one
    /// (10.96.<cluster>.<host>): what its local name resolves to.
    pub fn cluster_ip(&self, app: &App) -> std::net::Ipv4Addr {
        Ipv4Addr::new(10, 96, self.index, app.host)
    }

    /// The store's Services (one per app here, selecting it by label),
    /// each exported to the linked clusters.
    pub fn services_yaml(&self) -> String {
        let mut out = String::from(
            "# The sample mesh's services in this cluster, all exported.\n\
             # Delete a ServiceExport and save: the other clusters lose it.\n",
        );
        for app in self.apps() {
            let (port, name) = if app.grpc {
                (9090, "grpc")
            } else {
                (80, "http")
            };
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: shop}}\n\
                 spec:\n  selector: {{app: {svc}}}\n  clusterIP: {ip}\n  ports: [{{name: {name}, port: {port}, targetPort: {name}}}]\n\
                 ---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n\
                 metadata: {{name: {svc}, namespace: shop}}\n",
                svc = app.service,
                ip = self.cluster_ip(&app),
            ));
        }
        out
    }

    /// The east-west gateway's listeners (`--eastwest-config`): the
    /// other clusters reach it on `public` (QUIC and TCP).
    pub fn eastwest_yaml(&self, public: SocketAddr) -> String {
        format!(
            "quic: {gw}\ntcp: {gw}\nlocal: {entry}\ncluster: {name}\n",
            gw = public,
            entry = self.gateway_entry(),
            name = self.name
        )
    }

    /// The frontend sidecar's listeners: explicit HTTP (and h2c, gRPC)
    /// outbound, where the demo sends its requests on loopback; with
    /// `capture` (in a namespace) also the transparent outbound listener
    /// the capture rules send the demo's connections to.
    pub fn frontend_bootstrap(&self, capture: bool) -> String {
        let mut b = format!(
            "listeners:\n  - {{name: outbound-http, address: \"{}\", http: {{}}}}\n",
            self.frontend()
        );
        if capture {
            b.push_str(&format!(
                "  - {{name: outbound-transparent, address: \"127.0.0.1:{CAPTURE_PORT}\", transparent: {{}}}}\n"
            ));
        }
        b
    }

    /// An app sidecar's listeners: the mTLS transport in front of the app.
    pub fn app_bootstrap(&self, app: &App) -> String {
        format!(
            "listeners:\n  - name: tunnel\n    address: \"{}\"\n    tunnel: {{appAddress: \"{}\", ports: [{{port: {APP_PORT}}}]}}\n",
            SocketAddr::new(self.ip(app.host), TUNNEL_PORT),
            self.ip(app.host),
        )
    }

    pub fn control_plane_args(&self, store: &str) -> Vec<String> {
        strings(&[
            "run",
            "--store-dir",
            store,
            "--discovery",
            &self.discovery().to_string(),
            "--admin",
            &self.control_plane_admin().to_string(),
            "--federation",
            &self.federation().to_string(),
            "--gateway-entry",
            &self.gateway_entry().to_string(),
            "--poll",
            "50ms",
            "--debounce",
            "50ms",
            // A stopped workload leaves the endpoints soon (the demo's
            // failover stops one): a pod's deletion does it in kube mode.
            "--registration-grace",
            "2s",
            "--replica",
            &format!("isthmus-federation-{}", self.name),
        ])
    }

    /// The flags every proxy of this cluster shares: its control plane,
    /// trust, identity token, locality.
    /// `access_log`: "off", or "stdout" (into the process's log file).
    fn proxy_args(
        &self,
        token: &str,
        roots: &str,
        sa: &str,
        ns: &str,
        access_log: &str,
    ) -> Vec<String> {
        strings(&[
            "--control-plane",
            &self.discovery().to_string(),
            "--ca-roots",
            roots,
            "--ca-token",
            token,
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--cluster",
            self.name,
            "--region",
            self.name,
            "--zone",
            &self.zone(),
            "--access-log",
            access_log,
            "--worker-threads",
            "1",
            "--drain-timeout",
            "1s",
        ])
    }

    pub fn gateway_args(
        &self,
        token: &str,
        roots: &str,
        eastwest: &str,
        bootstrap: &str,
    ) -> Vec<String> {
        let mut a = strings(&[
            "eastwest",
            "--eastwest-config",
            eastwest,
            "--config",
            bootstrap,
            "--name",
            "isthmus-eastwest-0",
            "--admin",
            &self.gateway_admin().to_string(),
        ]);
        a.extend(self.proxy_args(token, roots, "isthmus-eastwest", "isthmus-system", "off"));
        a
    }

    /// The frontend sidecar; with `capture`, its DNS proxy answers the
    /// demo's queries (names it does not know go nowhere: `--dns-upstream`
    /// is a closed port, so this host's resolver is never asked).
    pub fn frontend_args(
        &self,
        token: &str,
        roots: &str,
        bootstrap: &str,
        capture: bool,
    ) -> Vec<String> {
        let mut a = strings(&[
            "sidecar",
            "--config",
            bootstrap,
            "--name",
            "frontend-0",
            "--label",
            "app=frontend",
            "--admin",
            &self.frontend_admin().to_string(),
        ]);
        if capture {
            a.extend(strings(&[
                "--dns",
                &format!("127.0.0.1:{DNS_PORT}"),
                "--dns-upstream",
                "127.0.0.1:9",
            ]));
        }
        // The frontend's requests, each with its attempts, where it went
        // and why it failed: in its log.
        a.extend(self.proxy_args(token, roots, "frontend", "shop", "stdout"));
        a
    }

    pub fn app_args(&self, app: &App) -> Vec<String> {
        strings(&[
            "--listen",
            &SocketAddr::new(self.ip(app.host), APP_PORT).to_string(),
            "--service",
            app.service,
            "--cluster",
            self.name,
            "--version",
            app.version,
        ])
    }

    pub fn app_sidecar_args(
        &self,
        app: &App,
        token: &str,
        roots: &str,
        bootstrap: &str,
    ) -> Vec<String> {
        let port_name = if app.grpc { "grpc" } else { "http" };
        let mut a = strings(&[
            "sidecar",
            "--config",
            bootstrap,
            "--name",
            &format!("{}-{}-0", app.service, app.version),
            "--label",
            &format!("app={},version={}", app.service, app.version),
            "--workload-address",
            &self.ip(app.host).to_string(),
            "--workload-port",
            &format!("{port_name}={APP_PORT}"),
            "--admin",
            &SocketAddr::new(self.ip(app.host), 15020).to_string(),
        ]);
        a.extend(self.proxy_args(token, roots, app.service, "shop", "off"));
        a
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// What the demo's frontends call: (service, host header, gRPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: &'static str,
    pub host: String,
    /// The service port (80 for HTTP, 9090 for gRPC).
    pub port: u16,
    pub grpc: bool,
}

/// Each frontend calls every service by its clusterset name (local
/// endpoints first, then the other regions): reviews too, whose
/// clusterset service is the parent of the cluster set's canary.
pub fn targets(_c: &Cluster) -> Vec<Target> {
    let clusterset = |s: &str| format!("{s}.shop.svc.clusterset.local");
    vec![
        Target {
            service: "catalog",
            host: clusterset("catalog"),
            port: 80,
            grpc: false,
        },
        Target {
            service: "reviews",
            host: clusterset("reviews"),
            port: 80,
            grpc: false,
        },
        Target {
            service: "inventory",
            host: clusterset("inventory"),
            port: 9090,
            grpc: true,
        },
    ]
}

/// The canary of SCENARIOS.md 3, written once in eu-west and shared with
/// the cluster set (issue 22): on reviews' clusterset service, every
/// cluster's frontend sends `weight` percent to v2 in us-east and the rest
/// to v1 in eu-west; `x-canary: always` sends everything to v2.
pub fn canary_route(weight: u32) -> String {
    format!(
        "# isthmusctl demo --scenario canary: reviews' cross-cluster canary,\n\
         # written here once and applied by every linked cluster.\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata:\n  name: reviews-canary\n  namespace: shop\n\
         \x20 labels: {{isthmus.dev/clusterset: \"true\"}}\n\
         spec:\n  parentRefs: [{{group: multicluster.x-k8s.io, kind: ServiceImport, name: reviews}}]\n  rules:\n\
         \x20   - matches: [{{headers: [{{name: x-canary, value: always}}]}}]\n\
         \x20     backendRefs: [{{name: reviews-us-east, port: 80}}]\n\
         \x20   - backendRefs:\n\
         \x20       - {{name: reviews-eu-west, port: 80, weight: {v1}}}\n\
         \x20       - {{name: reviews-us-east, port: 80, weight: {weight}}}\n",
        v1 = 100 - weight.min(100),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_federation::store::files::parse_file;

    #[test]
    fn every_cluster_has_its_own_addresses() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CLUSTERS {
            let mut addrs = vec![
                c.discovery(),
                c.federation(),
                c.control_plane_admin(),
                c.gateway_entry(),
                c.gateway_admin(),
                c.frontend(),
                c.frontend_admin(),
                c.gateway(),
            ];
            for a in c.apps() {
                addrs.push(SocketAddr::new(c.ip(a.host), APP_PORT));
                addrs.push(SocketAddr::new(c.ip(a.host), TUNNEL_PORT));
                addrs.push(SocketAddr::new(c.ip(a.host), 15020));
            }
            for a in addrs {
                assert!(a.ip().is_loopback(), "{a}");
                assert!(seen.insert(a), "{a} used twice");
            }
        }
    }

    #[test]
    fn the_sample_mesh_of_the_scenarios() {
        let runs = |svc: &str| -> Vec<&str> {
            CLUSTERS
                .iter()
                .filter(|c| c.app(svc).is_some())
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(runs("catalog"), ["eu-west", "eu-central"]);
        assert_eq!(runs("reviews"), ["eu-west", "us-east"]);
        assert_eq!(runs("inventory"), ["eu-central"]);
        let west = Cluster::by_name("eu-west").unwrap();
        assert_eq!(west.app("reviews").unwrap().version, "v1");
        let east = Cluster::by_name("us-east").unwrap();
        assert_eq!(east.app("reviews").unwrap().version, "v2");
        for c in CLUSTERS {
            assert_eq!(
                targets(&c)[1].host,
                "reviews.shop.svc.clusterset.local",
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn the_store_yaml_parses_without_errors() {
        for c in CLUSTERS {
            for (file, text) in [
                ("mesh.yaml", c.mesh_yaml()),
                ("services.yaml", c.services_yaml()),
                ("route.yaml", canary_route(10)),
            ] {
                let (loaded, errors) = parse_file(std::path::Path::new(file), &text);
                assert!(errors.is_empty(), "{} {file}: {errors:?}", c.name);
                assert!(!loaded.is_empty(), "{} {file}", c.name);
            }
            let exports = c.services_yaml().matches("kind: ServiceExport").count();
            assert_eq!(exports, c.apps().len());
        }
    }

    #[test]
    fn proxy_bootstraps_parse() {
        for c in CLUSTERS {
            let mut texts = vec![c.frontend_bootstrap(false)];
            texts.extend(c.apps().iter().map(|a| c.app_bootstrap(a)));
            for t in texts {
                let cfg = isthmus_api::parse_bootstrap_yaml(&t).unwrap();
                assert_eq!(cfg.listeners.len(), 1, "{t}");
            }
        }
    }

    #[test]
    fn canary_weights_add_up() {
        assert!(canary_route(10).contains("weight: 90}"));
        assert!(canary_route(100).contains("weight: 0}"));
        assert!(canary_route(250).contains("weight: 0}"));
    }
}
