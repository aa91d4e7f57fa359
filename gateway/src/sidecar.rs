//! Assembles and runs the sidecar role: the state store fed by a config
//! file, the control plane (discovery) or a config given directly, the
//! listeners reconciled on every change, the admin server, and an orderly
//! drain on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::model::ProxyConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{Store, file};
use crate::pool::SocketOptions;
use crate::proxy::Proxy;
use crate::proxy::listener::{ListenerError, Listeners};
use crate::telemetry::accesslog::Sink;
use crate::telemetry::metrics::Metrics;
use isthmus_mesh::tls::MeshTls;

pub enum ConfigSource {
    /// A YAML file, watched for changes.
    File { path: PathBuf, poll: Duration },
    /// A fixed configuration (tests, embedding).
    Static(Box<ProxyConfig>),
    /// The control plane's discovery stream; listeners are bound once the
    /// first configuration arrives (readiness waits for it).
    ControlPlane(Box<crate::discovery::Options>),
}

pub struct Options {
    pub config: ConfigSource,
    pub admin: SocketAddr,
    pub access_log: Sink,
    pub socket: SocketOptions,
    /// The workload's identity and trust: enables the mesh transport (mTLS
    /// on 15008 inbound, to endpoints with a tunnel port outbound).
    pub mesh: Option<Arc<MeshTls>>,
    /// Listening sockets bound beforehand: a configured listener at one of
    /// their addresses serves it (nothing else can take the port between
    /// choosing it and listening on it).
    pub prebound: Vec<std::net::TcpListener>,
    /// Follow this cluster's east-west gateway's peer liveness (stop
    /// choosing a linked cluster whose gateway is down). On in production;
    /// off only to measure what it brings.
    pub peer_liveness: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] file::FileError),
    #[error("invalid configuration: {0}")]
    Compile(#[from] crate::config::compile::CompileError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Listeners(Vec<ListenerError>),
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Sidecar {
    pub proxy: Arc<Proxy>,
    pub listeners: Arc<Listeners>,
    admin: Arc<Admin>,
    admin_addr: SocketAddr,
    background: TaskTracker,
    admin_tasks: TaskTracker,
    stop_background: CancellationToken,
}

impl Sidecar {
    pub async fn start(opts: Options) -> Result<Self, StartError> {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(Metrics::new());
        let watch_from = match &opts.config {
            ConfigSource::File { path, poll } => {
                let text = file::load_into(path, &store)?;
                Some((path.clone(), *poll, text))
            }
            ConfigSource::Static(cfg) => {
                store.apply(cfg)?;
                None
            }
            ConfigSource::ControlPlane(_) => None,
        };
        let mesh = opts.mesh.clone();
        if let Some(m) = &mesh {
            m.set_config_trust(store.load().security.trust.clone());
        }
        let proxy = Arc::new(Proxy::new(
            store.clone(),
            metrics.clone(),
            opts.access_log,
            opts.socket,
            mesh,
        ));
        let listeners = Arc::new(Listeners::with_prebound(proxy.clone(), opts.prebound));
        let errors = listeners.reconcile(&store.load()).await;
        if !errors.is_empty() {
            proxy.drain.cancel();
            return Err(StartError::Listeners(errors));
        }
        let admin_listener =
            TcpListener::bind(opts.admin)
                .await
                .map_err(|source| StartError::Admin {
                    addr: opts.admin,
                    source,
                })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(opts.admin);
        let background = TaskTracker::new();
        let admin_tasks = TaskTracker::new();
        let stop_background = CancellationToken::new();
        let admin = Arc::new(Admin {
            proxy: proxy.clone(),
            listeners: listeners.clone(),
            tasks: admin_tasks.clone(),
            views: Default::default(),
            app_probes: Default::default(),
        });
        background.spawn(admin.clone().serve(admin_listener));
        if let Some((path, poll, text)) = watch_from {
            background.spawn(file::watch(
                path,
                text,
                store.clone(),
                metrics.clone(),
                poll,
                stop_background.clone(),
            ));
        }
        // Every accepted change: reconcile listeners and per-service state.
        // (Subscribed before any source can apply, so no change is missed.)
        let mut changes = proxy.store.subscribe();
        let (p, l, stop) = (proxy.clone(), listeners.clone(), stop_background.clone());
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                let snap = p.store.load();
                if let Some(m) = &p.mesh {
                    m.set_config_trust(snap.security.trust.clone());
                }
                p.services.refresh(&snap);
                for e in l.reconcile(&snap).await {
                    p.metrics.error("listener_bind");
                    tracing::error!("{e}");
                }
            }
        });
        if let Some(mesh) = &opts.mesh {
            let mut rotations = mesh.identity().rotations();
            let (m, stop) = (metrics.clone(), stop_background.clone());
            background.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = rotations.changed() => if r.is_err() { return },
                    }
                    m.certificate_rotations.inc();
                }
            });
        }
        // Which linked clusters' gateways answer, from our own gateway.
        if let Some(connector) = proxy.services.connector().filter(|_| opts.peer_liveness) {
            background.spawn(crate::liveness::follow(
                store.clone(),
                connector.clone(),
                proxy.services.liveness.clone(),
                stop_background.clone(),
            ));
        }
        if let ConfigSource::ControlPlane(mut d) = opts.config {
            d.admin = Some(admin_addr);
            background.spawn(crate::discovery::run(
                *d,
                store.clone(),
                metrics.clone(),
                stop_background.clone(),
            ));
        }
        tracing::info!(admin = %admin_addr, "sidecar started");
        Ok(Self {
            proxy,
            listeners,
            admin,
            admin_addr,
            background,
            admin_tasks,
            stop_background,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves the app's probes at /app-health on the admin port.
    pub fn set_app_probes(&self, probes: crate::health::AppProbes) {
        *self.admin.app_probes.write() = Some(Arc::new(probes));
    }

    /// Adds a JSON view at `path` on the admin port (a role's status).
    pub fn add_admin_view(&self, path: &'static str, view: crate::admin::View) {
        self.admin.views.write().push((path, view));
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.addr(name)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.proxy.store
    }

    /// Drains: stops accepting, lets in-flight requests and connections
    /// finish for up to `deadline`, then closes what is left.
    pub async fn shutdown(self, deadline: Duration) {
        tracing::info!(?deadline, "draining");
        self.proxy.drain.cancel();
        self.proxy.tracker.close();
        if tokio::time::timeout(deadline, self.proxy.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; closing remaining connections");
        }
        self.proxy.hard_stop.cancel();
        self.stop_background.cancel();
        self.background.close();
        self.admin_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.proxy.tracker.wait().await;
            self.background.wait().await;
            self.admin_tasks.wait().await;
        })
        .await;
        // Spans still queued go to the collector (the SDK waits on a
        // channel: off the runtime's workers).
        let proxy = self.proxy.clone();
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(spans) = &proxy.tracing().spans {
                spans.shutdown();
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
        tracing::info!("stopped");
    }
}
