//! A local cluster for the federation tests and benchmarks: a real
//! control plane (files store, CA, discovery over TLS, federation port)
//! and a real east-west gateway (its SVID from the CA, its peers and
//! services from discovery, QUIC tunnels), on loopback sockets it holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use isthmus_api::model;
use isthmus_federation::identity::Ca;
use isthmus_federation::identity::service::Authenticator;
use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::resources::link::{ClusterLinkStatus, PartitionMode, PartitionPolicy};
use isthmus_federation::server::{ControlPlane, Options};
use isthmus_gateway::eastwest::config::EastWestConfig;
use isthmus_gateway::sidecar::Sidecar;
use tokio_util::sync::CancellationToken;

use crate::mesh::{MeshSidecar, MeshedApp};
use isthmus_testkit::{eventually, temp_dir};

pub fn mesh(name: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\n\
         spec: {{clusterName: {name}, trustDomain: {name}.isthmus.local, locality: {{region: {name}, zone: {name}-a}}}}\n"
    )
}

/// One cluster: its directory and fixed addresses (so a restarted control
/// plane is found where it was).
pub struct Cluster {
    pub name: &'static str,
    pub dir: PathBuf,
    pub discovery: SocketAddr,
    pub federation: SocketAddr,
    pub entry: SocketAddr,
    /// The sockets of those addresses, bound once and held: each (re)start
    /// serves a duplicate, so nothing else can take the ports meanwhile.
    sockets: [std::net::TcpListener; 3],
    pub cp: Option<ControlPlane>,
    pub gateway: Option<(Sidecar, isthmus_gateway::eastwest::role::EastWest)>,
    /// Stops the gateway alone.
    gateway_stop: CancellationToken,
    /// How far this cluster's control plane clock is ahead (seconds):
    /// tokens and credentials are checked and issued against it.
    clock_ahead: Arc<AtomicU64>,
    /// The CA the control plane runs with, when not the one in `dir/ca/`
    /// (a rotation: new roots, a new signer).
    pub ca: Option<Arc<Ca>>,
    pub stop: CancellationToken,
    /// Sidecars started from now on follow the gateway's peer liveness,
    /// and the meshed catalog's sidecar checks its app (both on by
    /// default; off to measure what they bring).
    pub peer_liveness: bool,
    pub health_checks: bool,
}

impl Cluster {
    pub fn new(test: &str, name: &'static str) -> Self {
        Self::new_at(test, name, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// A cluster whose discovery, federation port and gateway entry listen
    /// on `ip` (an address in a network namespace, for pods in another).
    pub fn new_at(test: &str, name: &'static str, ip: std::net::IpAddr) -> Self {
        let dir = temp_dir(&format!("federation-{test}-{name}"));
        std::fs::write(dir.join("mesh.yaml"), mesh(name)).unwrap();
        let td = format!("{name}.isthmus.local");
        Ca::load_or_create(&dir, &td).unwrap();
        let bound = || std::net::TcpListener::bind((ip, 0)).unwrap();
        let sockets = [bound(), bound(), bound()];
        let at = |i: usize| sockets[i].local_addr().unwrap();
        Self {
            name,
            dir,
            discovery: at(0),
            federation: at(1),
            entry: at(2),
            sockets,
            cp: None,
            gateway: None,
            gateway_stop: CancellationToken::new(),
            clock_ahead: Arc::new(AtomicU64::new(0)),
            ca: None,
            stop: CancellationToken::new(),
            peer_liveness: true,
            health_checks: true,
        }
    }

    /// Moves this cluster's control plane clock `by` ahead.
    pub fn advance_clock(&self, by: Duration) {
        self.clock_ahead.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    /// A duplicate of socket `i` (0 discovery, 1 federation, 2 entry).
    fn socket(&self, i: usize) -> std::net::TcpListener {
        let s = self.sockets[i].try_clone().unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    pub fn td(&self) -> String {
        format!("{}.isthmus.local", self.name)
    }

    pub fn start_control_plane(&mut self) {
        let mut opts = Options::new(&self.dir);
        opts.poll = Duration::from_millis(20);
        opts.debounce = Duration::from_millis(20);
        opts.gateway_entry = Some(self.entry);
        opts.federation_address = Some(self.federation);
        let cp = ControlPlane::start(opts);
        let td = self.td();
        let ca = self
            .ca
            .clone()
            .unwrap_or_else(|| Arc::new(Ca::load_or_create(&self.dir, &td).unwrap()));
        let tokens = || TokenKey::load_or_create(&self.dir, &td).unwrap();
        cp.serve_secure(
            tokio::net::TcpListener::from_std(self.socket(0)).unwrap(),
            ca.clone(),
            Authenticator::Bootstrap(Box::new(tokens())),
            "isthmus-system",
        )
        .unwrap();
        cp.serve_federation(
            tokio::net::TcpListener::from_std(self.socket(1)).unwrap(),
            ca,
            Some(Arc::new(tokens())),
            isthmus_federation::sync::client::Settings {
                entry: Some(self.entry),
                ping: Duration::from_millis(200),
                backoff_max: Duration::from_millis(300),
                clock: {
                    let ahead = self.clock_ahead.clone();
                    Arc::new(move || {
                        SystemTime::now() + Duration::from_secs(ahead.load(Ordering::SeqCst))
                    })
                },
                ..Default::default()
            },
        )
        .unwrap();
        self.cp = Some(cp);
    }

    /// Restarts the control plane with `ca` (a CA rotation's step).
    pub async fn restart_control_plane_with(&mut self, ca: Ca) {
        self.ca = Some(Arc::new(ca));
        self.stop_control_plane().await;
        self.start_control_plane();
    }

    pub async fn stop_control_plane(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
    }

    /// A pod's sidecar of this cluster as `namespace/service_account`:
    /// identity from its CA, configuration from its discovery; no
    /// listeners, workload or checks (set what the pod has), following
    /// peer liveness as the cluster says.
    fn pod<'a>(
        &'a self,
        trust_domain: &'a str,
        namespace: &'a str,
        service_account: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> MeshSidecar<'a> {
        MeshSidecar {
            discovery: self.discovery,
            dir: &self.dir,
            trust_domain,
            cluster: self.name,
            namespace,
            service_account,
            labels,
            name: None,
            listeners: Vec::new(),
            workload: None,
            prebound: Vec::new(),
            health: None,
            peer_liveness: self.peer_liveness,
        }
    }

    /// The catalog of namespace `shop`: a sample app behind a sidecar of
    /// this cluster (`shop/catalog`, labelled `app: catalog`) with the mesh
    /// transport, registered as its workload, its app health-checked.
    /// Returns the sidecar, its
    /// mesh TLS and the app.
    pub async fn start_meshed_catalog(
        &self,
    ) -> (Sidecar, Arc<isthmus_mesh::tls::MeshTls>, MeshedApp) {
        let mut meshed = MeshedApp::start("catalog", self.name).await;
        let td = self.td();
        let (sidecar, tls) = MeshSidecar {
            listeners: vec![meshed.tunnel_listener()],
            workload: Some(meshed.workload.clone()),
            prebound: vec![meshed.take_tunnel_socket()],
            health: self.health_checks.then(|| meshed.health_plan()),
            ..self.pod(&td, "shop", "catalog", &[("app", "catalog")])
        }
        .start(&self.stop)
        .await;
        (sidecar, tls, meshed)
    }

    /// The east-west gateway: an `isthmus-eastwest` proxy of this cluster
    /// (identity from its CA, configuration from discovery) with the role.
    pub async fn start_gateway(&mut self) {
        self.gateway_stop = self.stop.child_token();
        let td = self.td();
        let (sidecar, mesh) = MeshSidecar {
            peer_liveness: false,
            ..self.pod(&td, "isthmus-system", "isthmus-eastwest", &[])
        }
        .start(&self.gateway_stop)
        .await;
        eventually("the gateway's certificate", || {
            let m = mesh.clone();
            async move { m.ready().then_some(()) }
        })
        .await;
        let ew = EastWestConfig::parse(
            "ew.yaml",
            &format!(
                "quic: 127.0.0.1:0\ntcp: 127.0.0.1:0\nlocal: {}\ncluster: {}\n",
                self.entry, self.name
            ),
        )
        .unwrap();
        let entry = Some(self.socket(2));
        let role = isthmus_gateway::eastwest::role::start_with(
            &sidecar,
            ew,
            entry,
            self.gateway_stop.clone(),
        )
        .await
        .expect("east-west role starts");
        self.gateway = Some((sidecar, role));
    }

    /// Stops the east-west gateway (its listeners close).
    pub async fn stop_gateway(&mut self) {
        self.gateway_stop.cancel();
        if let Some((sidecar, _)) = self.gateway.take() {
            sidecar.shutdown(Duration::from_millis(100)).await;
        }
    }

    /// A frontend sidecar of this cluster (`shop/frontend`) with
    /// `listeners`; `listener_addr(name)` says where each is bound.
    pub async fn start_frontend(&self, listeners: Vec<model::Listener>) -> Sidecar {
        let td = self.td();
        MeshSidecar {
            listeners,
            ..self.pod(&td, "shop", "frontend", &[("app", "frontend")])
        }
        .start(&self.stop)
        .await
        .0
    }

    pub fn quic(&self) -> SocketAddr {
        self.gateway.as_ref().expect("gateway started").1.quic
    }

    pub fn statuses(&self) -> std::collections::BTreeMap<String, ClusterLinkStatus> {
        self.cp.as_ref().expect("control plane").link_statuses()
    }

    pub fn status(&self, peer: &str) -> ClusterLinkStatus {
        self.statuses().remove(peer).unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> Option<model::Service> {
        let cp = self.cp.as_ref()?;
        cp.published.borrow().offer.service(name)
    }

    pub fn write(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.join(file)).unwrap();
    }
}

/// `a`'s link to `b` pointed at `b`'s gateway's current QUIC address (a
/// restarted gateway listens on a new port; in a real cluster its Service
/// keeps the address).
pub fn repoint_link(a: &Cluster, b: &Cluster, from: SocketAddr) {
    let file = format!("link-{}.yaml", b.name);
    let yaml = std::fs::read_to_string(a.dir.join(&file)).unwrap();
    assert!(yaml.contains(&from.to_string()), "{yaml}");
    a.write(
        &file,
        &yaml.replace(&from.to_string(), &b.quic().to_string()),
    );
}

/// `isthmusctl link create --from a --to b`, dropped in a's directory.
pub fn link(a: &Cluster, b: &Cluster, ttl: Duration, staleness: &str) {
    let yaml = isthmus_ctl::link::create(
        &a.dir,
        &b.dir,
        &isthmus_ctl::link::Options {
            gateway: Some(b.quic().to_string()),
            gateway_tcp: None,
            ttl,
            join_wait: Duration::from_secs(30),
            partition: PartitionPolicy {
                mode: PartitionMode::FailStatic,
                staleness_ttl: staleness.into(),
            },
        },
        SystemTime::now(),
    )
    .unwrap();
    a.write(&format!("link-{}.yaml", b.name), &yaml);
}

/// eu-west and eu-central, each with its control plane and gateway,
/// `files` written into eu-central's store, linked both ways (join tokens
/// good for `ttl`, imports kept `staleness` after a partition).
pub async fn linked_pair(
    test: &str,
    files: &[(&str, &str)],
    ttl: Duration,
    staleness: &str,
) -> (Cluster, Cluster) {
    let mut west = Cluster::new(test, "eu-west");
    let mut central = Cluster::new(test, "eu-central");
    for c in [&mut west, &mut central] {
        c.start_control_plane();
        c.start_gateway().await;
    }
    for (file, text) in files {
        central.write(file, text);
    }
    link(&west, &central, ttl, staleness);
    link(&central, &west, ttl, staleness);
    (west, central)
}
