//! A pod's sidecar subscribed to a control plane (`MeshSidecar`) and a
//! sample app behind one (`MeshedApp`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A pod's sidecar in `files` mode: it verifies the control plane with
/// the bootstrap root in `dir`, proves `namespace/service_account` with a
/// bootstrap token, and subscribes over TLS.
pub struct MeshSidecar<'a> {
    pub discovery: SocketAddr,
    pub dir: &'a Path,
    pub trust_domain: &'a str,
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    /// The workload's name (None: `<service account>-0`).
    pub name: Option<&'a str>,
    pub listeners: Vec<isthmus_api::model::Listener>,
    pub workload: Option<isthmus_api::discovery::v1::Workload>,
    /// Sockets bound beforehand for some of `listeners`.
    pub prebound: Vec<std::net::TcpListener>,
    /// Health checks of the registered workload's app.
    pub health: Option<isthmus_gateway::health::Plan>,
    /// Follow the cluster's gateway's peer liveness.
    pub peer_liveness: bool,
}

impl MeshSidecar<'_> {
    pub async fn start(
        self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> (
        isthmus_gateway::sidecar::Sidecar,
        std::sync::Arc<isthmus_mesh::tls::MeshTls>,
    ) {
        use isthmus_gateway::sidecar::{self, ConfigSource, Sidecar};
        use isthmus_mesh::identity::{Identity, Options as IdOptions};
        use isthmus_mesh::tls::control::ControlPlaneConnector;
        use isthmus_mesh::tls::{MeshTls, Trust};
        let identity = Identity::empty();
        let mesh = std::sync::Arc::new(MeshTls::new(identity.clone()));
        let pem = std::fs::read_to_string(self.dir.join("ca/root-cert.pem")).unwrap();
        mesh.set_bootstrap_trust(Trust::from_self_describing_pem(&pem).unwrap());
        let connector = ControlPlaneConnector::new(
            mesh.clone(),
            format!(
                "spiffe://{}/ns/isthmus-system/sa/isthmus-federation",
                self.trust_domain
            ),
        );
        let tokens = isthmus_federation::identity::token::TokenKey::load_or_create(
            self.dir,
            self.trust_domain,
        )
        .unwrap();
        tokio::spawn(
            identity.run(
                IdOptions {
                    address: self.discovery.to_string(),
                    token: tokens
                        .issue(
                            self.namespace,
                            self.service_account,
                            std::time::SystemTime::now(),
                            Duration::from_secs(600),
                        )
                        .into(),
                    ttl: Duration::from_secs(3600),
                    renew_at: 0.5,
                    tls: Some(connector.clone()),
                },
                stop.clone(),
            ),
        );
        let node = isthmus_api::model::Node {
            name: self
                .name
                .map_or_else(|| format!("{}-0", self.service_account), str::to_string),
            namespace: self.namespace.into(),
            service_account: self.service_account.into(),
            cluster: self.cluster.into(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let mut d = isthmus_gateway::discovery::Options::new(self.discovery.to_string(), node);
        d.listeners = self.listeners;
        d.workload = self.workload;
        d.tls = Some(connector);
        d.health = self.health;
        d.backoff_initial = Duration::from_millis(50);
        d.backoff_max = Duration::from_millis(300);
        let sidecar = Sidecar::start(sidecar::Options {
            config: ConfigSource::ControlPlane(Box::new(d)),
            admin: "127.0.0.1:0".parse().unwrap(),
            access_log: isthmus_gateway::telemetry::accesslog::Sink::Off,
            socket: Default::default(),
            mesh: Some(mesh.clone()),
            prebound: self.prebound,
            peer_liveness: self.peer_liveness,
        })
        .await
        .expect("sidecar starts");
        (sidecar, mesh)
    }
}

/// A sample app on a free loopback port, and what a sidecar in front of
/// it needs: the mesh transport's inbound, its port and the registration.
pub struct MeshedApp {
    pub app: std::sync::Arc<isthmus_sample::SampleApp>,
    pub running: isthmus_sample::Running,
    pub inbound: isthmus_api::model::Inbound,
    pub tunnel_port: u16,
    /// The tunnel listener's socket, bound here (its port registered with
    /// the workload) and handed to the sidecar (`take_tunnel_socket`).
    tunnel_socket: Option<std::net::TcpListener>,
    pub workload: isthmus_api::discovery::v1::Workload,
}

impl MeshedApp {
    pub async fn start(service: &str, cluster: &str) -> Self {
        use isthmus_api::discovery::v1::{Workload, WorkloadPort};
        use isthmus_sample::{self as sample, SampleApp};
        let app = SampleApp::new(service, cluster, "v1");
        let running = sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let app_port = running.addr.port();
        let tunnel_socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tunnel_port = tunnel_socket.local_addr().unwrap().port();
        let inbound = isthmus_api::model::Inbound {
            app_address: "127.0.0.1".into(),
            ports: vec![isthmus_api::model::InboundPort {
                port: app_port.into(),
                ..Default::default()
            }],
        };
        let workload = Workload {
            address: "127.0.0.1".into(),
            ports: vec![WorkloadPort {
                name: "http".into(),
                port: app_port.into(),
            }],
            tunnel_port: tunnel_port.into(),
        };
        Self {
            app,
            running,
            inbound,
            tunnel_port,
            tunnel_socket: Some(tunnel_socket),
            workload,
        }
    }

    /// The bound socket of `tunnel_listener()`, for the sidecar (once).
    pub fn take_tunnel_socket(&mut self) -> std::net::TcpListener {
        self.tunnel_socket
            .take()
            .expect("the tunnel socket is taken once")
    }

    /// The sidecar's mesh transport listener in front of the app.
    pub fn tunnel_listener(&self) -> isthmus_api::model::Listener {
        Self::tunnel_listener_of(self.tunnel_port, &self.inbound)
    }

    /// Health at the source for this app: a TCP check of its port, at
    /// the default timing.
    pub fn health_plan(&self) -> isthmus_gateway::health::Plan {
        isthmus_gateway::health::Plan {
            app: "127.0.0.1".parse().unwrap(),
            checks: vec![isthmus_gateway::health::Check {
                port: self.running.addr.port(),
                probe: isthmus_gateway::health::Probe::Tcp,
            }],
            settings: Default::default(),
        }
    }

    pub fn tunnel_listener_of(
        port: u16,
        inbound: &isthmus_api::model::Inbound,
    ) -> isthmus_api::model::Listener {
        isthmus_api::model::Listener {
            name: "tunnel".into(),
            // On the pod's address (the app's).
            address: format!("{}:{port}", inbound.app_address),
            kind: Some(isthmus_api::model::listener::Kind::Tunnel(inbound.clone())),
        }
    }
}
