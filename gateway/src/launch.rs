//! From the binary's settings to a running proxy: where its configuration
//! comes from (a file, or the control plane with a bootstrap of node and
//! listeners), who it runs for (node and workload registration from flags
//! over the bootstrap), its identity (a CA with a token, certificate
//! files, or none), the sidecar, and the east-west role on top. The binary
//! (`main.rs`) only parses flags into `Settings`, calls `launch`, prints
//! where it listens and waits for a signal; tests start a proxy the same
//! way.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::discovery::v1::{Workload, WorkloadPort};
use isthmus_api::model::{self, Listener, Node};
use isthmus_mesh::identity::{Identity, IdentityError};
use isthmus_mesh::tls::control::ControlPlaneConnector;
use isthmus_mesh::tls::{MeshTls, Trust, TrustError};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::eastwest::config::EastWestConfig;
use crate::eastwest::role::{self, EastWest};
use crate::pool::SocketOptions;
use crate::sidecar::{self, ConfigSource, Options, Sidecar};
use crate::telemetry::accesslog::Sink;

/// Who the proxy runs for (with a control plane). In a pod these come from
/// the downward API; they win over the bootstrap file's `node`.
#[derive(Debug, Clone, Default)]
pub struct NodeFlags {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    /// Workload labels, `key=value`.
    pub labels: Vec<String>,
    /// Services outside its namespace the workload calls (`name.namespace`).
    pub calls: Vec<String>,
    /// Register the workload as an endpoint at this address.
    pub workload_address: Option<IpAddr>,
    /// The workload's ports, `[name=]port`.
    pub workload_ports: Vec<String>,
    /// Health checks of the workload's app.
    pub health: HealthFlags,
}

/// `--health-check PORT[=tcp|http:/PATH|grpc[:SERVICE]]` (a port not named
/// gets a TCP check), the timing, or `--no-health-checks`.
#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    pub checks: Vec<String>,
    pub settings: crate::health::Settings,
    pub off: bool,
}

/// Everything the proxy is started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file; with `control_plane`, the bootstrap (node
    /// and listeners only).
    pub config: Option<PathBuf>,
    /// The control plane's discovery address (`host:port`).
    pub control_plane: Option<String>,
    pub node: NodeFlags,
    pub admin: SocketAddr,
    /// A CA credential (bootstrap or ServiceAccount token), or a file
    /// holding one.
    pub ca_token: Option<SecretString>,
    pub ca_token_file: Option<PathBuf>,
    /// The CA's address; the control plane's by default.
    pub ca: Option<String>,
    /// The control plane's CA roots (PEM): TLS to it.
    pub ca_roots: Option<PathBuf>,
    pub control_plane_id: Option<String>,
    /// The workload certificate and key from files (instead of the CA).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub cert_ttl: Duration,
    /// The mesh transport listener's port with the pod's default listeners.
    pub tunnel_port: u16,
    /// "stdout", "off" or a file path.
    pub access_log: String,
    pub drain_timeout: Duration,
    pub reload_interval: Duration,
    pub mark: Option<u32>,
    /// TCP_USER_TIMEOUT of upstream connections inside the cluster (None:
    /// the kernel's).
    pub tcp_user_timeout: Option<Duration>,
    /// Follow the local gateway's verdicts on linked clusters.
    pub peer_liveness: bool,
    /// The app's probes served at /app-health (JSON, `--app-probes`).
    pub app_probes: Option<String>,
    /// The east-west role on top of the proxy.
    pub eastwest: Option<EastWestConfig>,
    /// The DNS proxy (`--dns`).
    pub dns: Option<crate::dns::DnsSettings>,
    /// Where spans go (an OTLP/gRPC collector), if anywhere.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0 to 1.
    pub trace_sampling: f64,
}

impl Settings {
    /// The binary's defaults, configured from `config`.
    pub fn from_file(config: impl Into<PathBuf>) -> Self {
        Self {
            config: Some(config.into()),
            control_plane: None,
            node: NodeFlags::default(),
            admin: SocketAddr::from(([127, 0, 0, 1], 15020)),
            ca_token: None,
            ca_token_file: None,
            ca: None,
            ca_roots: None,
            control_plane_id: None,
            cert_file: None,
            key_file: None,
            cert_ttl: Duration::from_secs(24 * 3600),
            tunnel_port: 15008,
            access_log: "stdout".into(),
            drain_timeout: Duration::from_secs(5),
            reload_interval: Duration::from_millis(500),
            mark: None,
            tcp_user_timeout: Some(SocketOptions::USER_TIMEOUT),
            peer_liveness: true,
            app_probes: None,
            eastwest: None,
            dns: None,
            otlp_endpoint: None,
            trace_sampling: crate::telemetry::otlp::DEFAULT_RATE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot listen on {at} for DNS (udp and tcp): {source}")]
    Dns {
        at: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Otlp(#[from] crate::telemetry::otlp::OtlpError),
    #[error("bootstrap {path}: {reason}")]
    Bootstrap { path: String, reason: String },
    #[error("bootstrap {0}: services come from the control plane; keep only node and listeners")]
    BootstrapServices(String),
    #[error("{0}")]
    Flag(String),
    #[error("give --config FILE or --control-plane ADDR")]
    NoConfig,
    #[error("a CA token needs the CA's address: give --ca or --control-plane")]
    NoCaAddress,
    #[error("--ca-roots {path}: {source}")]
    Roots { path: String, source: TrustError },
    #[error("--ca-roots {0} has no root")]
    NoRoot(String),
    #[error("--cert-file needs --key-file and --ca-roots")]
    CertFiles,
    #[error("workload certificate files: {0}")]
    Identity(#[from] IdentityError),
    #[error("opening access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sidecar(#[from] sidecar::StartError),
    #[error(transparent)]
    EastWest(#[from] role::StartError),
    #[error("cannot watch for SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
}

impl NodeFlags {
    /// The node (the bootstrap's, overridden by flags) and the workload's
    /// registration.
    pub fn resolve(&self, base: Node) -> Result<(Node, Option<Workload>), LaunchError> {
        let mut node = base;
        let set = |field: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                *field = v.clone();
            }
        };
        set(&mut node.name, &self.name);
        set(&mut node.namespace, &self.namespace);
        set(&mut node.service_account, &self.service_account);
        set(&mut node.cluster, &self.cluster);
        let mut locality = node.locality.take().unwrap_or_default();
        set(&mut locality.region, &self.region);
        set(&mut locality.zone, &self.zone);
        node.locality = Some(locality);
        for kv in &self.labels {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| LaunchError::Flag(format!("--label {kv:?}: write key=value")))?;
            node.labels.insert(k.trim().into(), v.trim().into());
        }
        if !self.calls.is_empty() {
            node.labels
                .insert("isthmus.dev/calls".into(), self.calls.join(","));
        }
        if node.name.is_empty() || node.namespace.is_empty() {
            return Err(LaunchError::Flag(
                "with --control-plane the proxy must say who it runs for: --name and --namespace (or POD_NAME and POD_NAMESPACE, or node in the bootstrap file)".into(),
            ));
        }
        let mut ports = Vec::new();
        for p in &self.workload_ports {
            let (name, port) = match p.split_once('=') {
                Some((n, p)) => (n.trim().to_string(), p.trim()),
                None => (String::new(), p.trim()),
            };
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                LaunchError::Flag(format!(
                    "--workload-port {p:?}: write [name=]port, port 1-65535"
                ))
            })?;
            ports.push(WorkloadPort {
                name,
                port: port.into(),
            });
        }
        let workload = match self.workload_address {
            Some(a) => Some(Workload {
                address: a.to_string(),
                ports,
                tunnel_port: 0,
            }),
            None if !ports.is_empty() => {
                return Err(LaunchError::Flag(
                    "--workload-port needs --workload-address (the address to register)".into(),
                ));
            }
            None => None,
        };
        Ok((node, workload))
    }

    /// What the sidecar checks of its app at `app` (health at the source):
    /// every registered port, by TCP unless `--health-check` says how.
    pub fn health_plan(
        &self,
        workload: Option<&Workload>,
        app: IpAddr,
    ) -> Result<Option<crate::health::Plan>, LaunchError> {
        let h = &self.health;
        let Some(w) = workload.filter(|w| !h.off && !w.ports.is_empty()) else {
            return Ok(None);
        };
        h.settings
            .validate()
            .map_err(|e| LaunchError::Flag(e.to_string()))?;
        let mut checks: Vec<crate::health::Check> = Vec::new();
        for text in &h.checks {
            let c =
                crate::health::Check::parse(text).map_err(|e| LaunchError::Flag(e.to_string()))?;
            if !w.ports.iter().any(|p| p.port == u32::from(c.port)) {
                return Err(LaunchError::Flag(format!(
                    "--health-check {text:?}: port {} is not one of the --workload-port ports",
                    c.port
                )));
            }
            checks.retain(|k| k.port != c.port);
            checks.push(c);
        }
        for p in &w.ports {
            let port = u16::try_from(p.port).unwrap_or_default();
            if !checks.iter().any(|c| c.port == port) {
                checks.push(crate::health::Check {
                    port,
                    probe: crate::health::Probe::Tcp,
                });
            }
        }
        Ok(Some(crate::health::Plan {
            app,
            checks,
            settings: h.settings,
        }))
    }
}

/// Where the inbound listeners reach the app (their `app_address`),
/// 127.0.0.1 when none says.
fn app_address_of(listeners: &[Listener]) -> IpAddr {
    use model::listener::Kind;
    listeners
        .iter()
        .find_map(|l| match &l.kind {
            Some(Kind::Inbound(i) | Kind::Tunnel(i)) => i.app_address.parse().ok(),
            _ => None,
        })
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The port of a mesh transport listener among `listeners` (0: none).
pub fn tunnel_port_of(listeners: &[Listener]) -> u32 {
    use model::listener::Kind;
    listeners
        .iter()
        .filter(|l| matches!(l.kind, Some(Kind::Tunnel(_))))
        .find_map(|l| l.address.parse::<SocketAddr>().ok())
        .map_or(0, |a| u32::from(a.port()))
}

/// A pod's usual listeners when no bootstrap file names them: transparent
/// outbound on 15001 and, with workload ports, inbound on 15006 (and the
/// mesh transport on `tunnel_port`, with an identity).
pub fn default_listeners(workload: Option<&Workload>, tunnel_port: Option<u16>) -> Vec<Listener> {
    use model::{Inbound, InboundPort, TransparentOutbound, listener::Kind};
    let mut out = vec![Listener {
        name: "outbound".into(),
        address: "0.0.0.0:15001".into(),
        kind: Some(Kind::Transparent(TransparentOutbound::default())),
    }];
    if let Some(w) = workload.filter(|w| !w.ports.is_empty()) {
        let inbound = Inbound {
            app_address: "127.0.0.1".into(),
            ports: w
                .ports
                .iter()
                .map(|p| InboundPort {
                    port: p.port,
                    // A named port says its protocol as a Service port's
                    // name does (`grpc`, `http2-api`); an unnamed one is
                    // HTTP, called in the version the caller's sidecar
                    // chose from the Service.
                    protocol: isthmus_api::protocol::of_port_name(&p.name)
                        .unwrap_or(model::Protocol::Http) as i32,
                })
                .collect(),
        };
        if let Some(port) = tunnel_port {
            out.push(Listener {
                name: "tunnel".into(),
                address: format!("0.0.0.0:{port}"),
                kind: Some(Kind::Tunnel(inbound.clone())),
            });
        }
        out.push(Listener {
            name: "inbound".into(),
            address: "0.0.0.0:15006".into(),
            kind: Some(Kind::Inbound(inbound)),
        });
    }
    out
}

fn read(what: &'static str, path: &Path) -> Result<String, LaunchError> {
    std::fs::read_to_string(path).map_err(|source| LaunchError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Where the services come from.
fn config_source(s: &Settings) -> Result<ConfigSource, LaunchError> {
    let (cp, bootstrap) = match (&s.control_plane, &s.config) {
        (Some(cp), bootstrap) => (cp, bootstrap),
        (None, Some(path)) => {
            return Ok(ConfigSource::File {
                path: path.clone(),
                poll: s.reload_interval,
            });
        }
        (None, None) => return Err(LaunchError::NoConfig),
    };
    let base = match bootstrap {
        Some(path) => {
            let text = read("bootstrap", path)?;
            let cfg =
                isthmus_api::parse_bootstrap_yaml(&text).map_err(|e| LaunchError::Bootstrap {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if !cfg.services.is_empty() {
                return Err(LaunchError::BootstrapServices(path.display().to_string()));
            }
            cfg
        }
        None => Default::default(),
    };
    let (node, mut workload) = s.node.resolve(base.node.unwrap_or_default())?;
    let listeners = if bootstrap.is_some() {
        base.listeners
    } else {
        let tunnel = (s.ca_token.is_some() || s.ca_token_file.is_some()).then_some(s.tunnel_port);
        default_listeners(workload.as_ref(), tunnel)
    };
    let mut d = crate::discovery::Options::new(cp.clone(), node);
    d.health = s
        .node
        .health_plan(workload.as_ref(), app_address_of(&listeners))?;
    // Peers reach the workload through our mesh transport, if any.
    if let Some(w) = workload.as_mut() {
        w.tunnel_port = tunnel_port_of(&listeners);
    }
    d.workload = workload;
    d.listeners = listeners;
    Ok(ConfigSource::ControlPlane(Box::new(d)))
}

/// The connector to the control plane, verifying it against `--ca-roots`
/// (its trust becomes the mesh's bootstrap trust).
fn control_plane_tls(
    s: &Settings,
    mesh: &Arc<MeshTls>,
) -> Result<Option<ControlPlaneConnector>, LaunchError> {
    let Some(path) = &s.ca_roots else {
        return Ok(None);
    };
    let pem = read("--ca-roots", path)?;
    let fallback = s
        .control_plane_id
        .as_deref()
        .and_then(|id| isthmus_mesh::SpiffeId::parse(id).ok())
        .map(|id| id.trust_domain().to_string());
    let trust =
        Trust::from_pem_for(&pem, fallback.as_deref()).map_err(|source| LaunchError::Roots {
            path: path.display().to_string(),
            source,
        })?;
    let expected = match &s.control_plane_id {
        Some(id) => id.clone(),
        None => {
            let mut domains: Vec<&str> = trust.domains().collect();
            domains.sort();
            let td = domains
                .first()
                .ok_or_else(|| LaunchError::NoRoot(path.display().to_string()))?;
            format!("spiffe://{td}/ns/isthmus-system/sa/isthmus-federation")
        }
    };
    mesh.set_bootstrap_trust(trust);
    Ok(Some(ControlPlaneConnector::new(mesh.clone(), expected)))
}

/// A running proxy: the sidecar and, for an east-west gateway, its role.
pub struct Launched {
    pub sidecar: Sidecar,
    pub eastwest: Option<EastWest>,
    /// The DNS proxy, serving until dropped.
    pub dns: Option<crate::dns::DnsProxy>,
    drain_timeout: Duration,
    stop_eastwest: CancellationToken,
    stop_identity: CancellationToken,
    /// Fetching and renewing the SVID from the CA, or re-reading its files.
    identity_task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the proxy `s` describes.
pub async fn launch(s: Settings) -> Result<Launched, LaunchError> {
    let mut config = config_source(&s)?;
    let token = match (&s.ca_token, &s.ca_token_file) {
        (Some(t), _) => Some(isthmus_mesh::identity::Bearer::Value(SecretString::from(
            t.expose_secret().trim(),
        ))),
        // Read now (a missing file is a start error), and again for every
        // renewal: the kubelet rotates projected tokens.
        (None, Some(path)) => {
            read("the CA token", path)?;
            Some(isthmus_mesh::identity::Bearer::File(path.clone()))
        }
        (None, None) => None,
    };
    let stop_identity = CancellationToken::new();
    let identity = Identity::empty();
    let mesh = Arc::new(MeshTls::new(identity.clone()));
    let tls = control_plane_tls(&s, &mesh)?;
    let mut identity_task = None;
    if let ConfigSource::ControlPlane(d) = &mut config {
        d.tls = tls.clone();
    }
    let mesh = match token {
        None if s.cert_file.is_some() => {
            let (Some(cert), Some(key), Some(roots)) =
                (s.cert_file.clone(), s.key_file.clone(), s.ca_roots.clone())
            else {
                return Err(LaunchError::CertFiles);
            };
            let (files, task) = Identity::watch_files(
                cert,
                key,
                roots,
                Duration::from_secs(10),
                stop_identity.clone(),
            )?;
            identity_task = Some(task);
            let mesh = Arc::new(MeshTls::new(files));
            if let Some(t) = tls.as_ref() {
                // The control plane connection presents the same identity.
                let expected = t.expected().to_string();
                if let ConfigSource::ControlPlane(d) = &mut config {
                    d.tls = Some(ControlPlaneConnector::new(mesh.clone(), expected));
                }
            }
            Some(mesh)
        }
        Some(token) => {
            let address =
                s.ca.clone()
                    .or_else(|| s.control_plane.clone())
                    .ok_or(LaunchError::NoCaAddress)?;
            identity_task = Some(tokio::spawn(identity.clone().run(
                isthmus_mesh::identity::Options {
                    address,
                    token,
                    ttl: s.cert_ttl,
                    renew_at: 0.5,
                    tls,
                },
                stop_identity.clone(),
            )));
            Some(mesh)
        }
        None => None,
    };
    // The app is reached on loopback, as the inbound listeners reach it.
    let app_probes = s
        .app_probes
        .as_deref()
        .map(|json| crate::health::AppProbes::parse(std::net::Ipv4Addr::LOCALHOST.into(), json))
        .transpose()
        .map_err(|e| LaunchError::Flag(e.to_string()))?;
    let access_log = Sink::from_arg(&s.access_log).map_err(|source| LaunchError::AccessLog {
        path: s.access_log.clone(),
        source,
    })?;
    let sidecar = Sidecar::start(Options {
        config,
        admin: s.admin,
        access_log,
        socket: SocketOptions {
            mark: s.mark,
            user_timeout: s.tcp_user_timeout,
        },
        mesh,
        prebound: Vec::new(),
        peer_liveness: s.peer_liveness,
    })
    .await?;
    if let Some(p) = app_probes {
        sidecar.set_app_probes(p);
    }
    sidecar.proxy.set_tracing(tracing_of(&s)?);
    let dns = match s.dns {
        Some(d) => {
            let at = d.address;
            Some(
                crate::dns::DnsProxy::start(
                    d,
                    sidecar.store().clone(),
                    sidecar.proxy.metrics.clone(),
                )
                .await
                .map_err(|source| LaunchError::Dns { at, source })?,
            )
        }
        None => None,
    };
    let stop_eastwest = CancellationToken::new();
    let eastwest = match s.eastwest {
        Some(ew) => Some(role::start(&sidecar, ew, stop_eastwest.clone()).await?),
        None => None,
    };
    Ok(Launched {
        sidecar,
        eastwest,
        dns,
        drain_timeout: s.drain_timeout,
        stop_eastwest,
        stop_identity,
        identity_task,
    })
}

/// Runs the proxy `s` describes on `runtime` until SIGTERM or SIGINT,
/// then shuts it down (a drain). `started` is told where it listens once
/// it does.
///
/// The binary's whole life, synchronous and not generic on purpose: every
/// future of the data plane is polled from here, so its code is generated
/// once, in this crate. Polled from an `async fn` of the binary instead,
/// the binary generated most of it a second time (a million lines of LLVM
/// IR, 40 s of a cold release build; BENCHMARKS.md, "Build time").
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    s: Settings,
    started: &dyn Fn(&Launched),
) -> Result<(), LaunchError> {
    runtime.block_on(async {
        // Before the start lines: a SIGTERM right after them is a drain,
        // not the default action.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(LaunchError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(LaunchError::Signals)?;
        let running = launch(s).await?;
        started(&running);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        running.shutdown().await;
        Ok(())
    })
}

impl Launched {
    /// Stops the east-west role, drains the sidecar (in-flight requests
    /// get the drain timeout), then stops renewing the identity.
    pub async fn shutdown(self) {
        self.stop_eastwest.cancel();
        if let Some(ew) = &self.eastwest {
            ew.drained(self.drain_timeout).await;
        }
        self.sidecar.shutdown(self.drain_timeout).await;
        self.stop_identity.cancel();
        if let Some(task) = self.identity_task {
            let _ = task.await;
        }
    }
}

/// The proxy's tracing from its flags: the sampling rate, and spans to the
/// OTLP collector when one is given (the resource named after the
/// workload, `<name>.<namespace>`, as Istio names its proxies' spans).
fn tracing_of(s: &Settings) -> Result<crate::telemetry::otlp::Tracing, LaunchError> {
    use opentelemetry::KeyValue;
    let spans = match &s.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let n = &s.node;
            let name = n.name.clone().unwrap_or_else(|| "isthmus-gateway".into());
            let namespace = n.namespace.clone().unwrap_or_default();
            let mut attributes = vec![KeyValue::new("k8s.pod.name", name.clone())];
            if !namespace.is_empty() {
                attributes.push(KeyValue::new("k8s.namespace.name", namespace.clone()));
            }
            if let Some(c) = &n.cluster {
                attributes.push(KeyValue::new("isthmus.cluster", c.clone()));
            }
            let service = if namespace.is_empty() {
                name
            } else {
                format!("{name}.{namespace}")
            };
            Some(crate::telemetry::otlp::Spans::start(
                endpoint, service, attributes,
            )?)
        }
    };
    Ok(crate::telemetry::otlp::Tracing {
        rate: s.trace_sampling,
        spans,
    })
}
