//! The control plane process (`isthmus-federation run`): watches the store
//! and the registered workloads, translates every change into a new
//! `Published` generation, serves it to proxies on the discovery stream
//! (`discovery`), and shows its state on the admin port (`/config_dump`,
//! `/proxy_config?namespace=NS`, `/healthz`, `/readyz`).
//!
//! Here: the process's lifecycle and its servers (discovery + CA, the
//! API port's TLS, the federation port, the join mailbox, status writing
//! under the Lease). `translate_loop`: store and peers → `Published`.
//! `admin`: the admin port.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use isthmus_api::model;

use crate::discovery::{self, Offer, Subscribers};
use crate::store::files::{FileWatcher, State};
use crate::store::registry;
use crate::translate::services::Catalog;

mod admin;
pub mod explain;
pub mod metrics;
pub mod resolver;
pub mod topology;
mod translate_loop;

pub use admin::{all_conditions, link_statuses, policies};

#[derive(Debug, Clone)]
pub struct Options {
    /// The `files` store directory.
    pub store_dir: PathBuf,
    pub poll: Duration,
    /// Quiet time after a change (file or workload registration) before
    /// it is translated and pushed: bursts coalesce into one push.
    pub debounce: Duration,
    /// How long a registered workload outlives its dropped stream.
    pub registration_grace: Duration,
    /// After a start, how long proxies get to come back and register
    /// before anything is pushed: a control plane that just (re)started
    /// has heard from none of its workloads, and its first view would
    /// take their endpoints away from its own proxies and from every
    /// linked cluster. Until then everyone keeps what they had. Zero
    /// here; the binary's `--warm-up` is 3 s.
    pub warm_up: Duration,
    /// This replica's name (in responses and logs).
    pub replica: String,
    /// Trust bundles sent to every proxy (`security/mesh`): this cluster's
    /// CA root, and with federation the linked clusters' roots.
    pub trust_bundles: Vec<model::TrustBundle>,
    /// This cluster's east-west gateway entry (its 15009): where sidecars
    /// send streams for imported services, and the federation channel's
    /// way out. None: nothing is imported (ClusterLinks say NoGateway).
    pub gateway_entry: Option<std::net::SocketAddr>,
    /// Where our gateway reaches this control plane's federation port (the
    /// `isthmus-federation.isthmus-system:15012` service it routes peers'
    /// channels to), when no Service of that name is in the store.
    pub federation_address: Option<std::net::SocketAddr>,
    /// The control plane's namespace.
    pub namespace: String,
    /// The injection webhook runs: the leader writes the CA's root into
    /// its configuration's caBundle.
    pub injector: bool,
    /// The ClusterSet IP range and the ranges never handed out (`kept` is
    /// filled from `vip_state` and as the control plane runs).
    pub clusterset_ips: crate::translate::vips::Settings,
    /// `files` mode: the ClusterSet IP state file (`store::vip_state`).
    /// None: addresses live in ServiceImports (`kube`) or in memory.
    pub vip_state: Option<PathBuf>,
}

impl Options {
    pub fn new(store_dir: impl Into<PathBuf>) -> Self {
        let store_dir = store_dir.into();
        Self {
            vip_state: (!store_dir.as_os_str().is_empty())
                .then(|| crate::store::vip_state::path(&store_dir)),
            store_dir,
            poll: Duration::from_millis(200),
            debounce: Duration::from_millis(100),
            registration_grace: Duration::from_secs(30),
            warm_up: Duration::ZERO,
            replica: format!("isthmus-federation-{}", std::process::id()),
            trust_bundles: Vec::new(),
            gateway_entry: None,
            federation_address: None,
            namespace: "isthmus-system".into(),
            injector: false,
            clusterset_ips: Default::default(),
        }
    }
}

/// One translated generation: the store it came from, the catalog, and
/// the catalog encoded for the discovery stream.
#[derive(Debug, Default)]
pub struct Published {
    /// Counts publications (store changes and registry changes).
    pub generation: u64,
    /// Services, routes and policies, without endpoints: those live
    /// encoded in `offer` only (see `Offer::build`).
    pub catalog: Catalog,
    pub store: State,
    pub offer: Offer,
    pub workloads: usize,
    /// The warm-up after the start is over (`Options::warm_up`): until
    /// then nothing is pushed to proxies or linked clusters.
    pub warm: bool,
    /// This cluster's own trust bundles (its CA's roots), as proxies get
    /// them and linked clusters are sent them.
    pub own_trust: Vec<model::TrustBundle>,
    /// The policies linked clusters share with us: which apply, and what
    /// each origin is told (`translate::received`).
    pub received: crate::translate::received::Outcome,
}

/// A running control plane.
pub struct ControlPlane {
    pub published: watch::Receiver<Arc<Published>>,
    pub subscribers: Arc<Subscribers>,
    registry: Arc<registry::Shared>,
    replica: String,
    tasks: TaskTracker,
    stop: CancellationToken,
    trust: watch::Sender<Vec<model::TrustBundle>>,
    /// What linked clusters export to us, as the link tasks hold it.
    pub peers: Arc<crate::sync::peers::Peers>,
    /// What linked clusters say of the policies we share with them.
    pub reports: Arc<crate::sync::policies::Reports>,
    /// `/metrics` on the admin port.
    pub metrics: Arc<metrics::Metrics>,
    /// Our proxies' traffic by destination cluster, for the topology page.
    pub traffic: Arc<topology::Traffic>,
    /// How linked clusters see the set, as they last said.
    pub views: Arc<topology::Views>,
    opts: Options,
}

impl ControlPlane {
    /// Replaces the trust bundles sent to every proxy (the CA's root once
    /// it is loaded; linked clusters' roots with federation) and pushes them.
    pub fn set_trust_bundles(&self, bundles: Vec<model::TrustBundle>) {
        self.trust.send_if_modified(|t| {
            let changed = *t != bundles;
            *t = bundles;
            changed
        });
    }

    /// Cancelled when the control plane shuts down (for tasks started
    /// beside it).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Loads the store, translates, and keeps doing so on every change of
    /// the store or of the registered workloads.
    pub fn start(opts: Options) -> Self {
        let stop = CancellationToken::new();
        let (states, watcher) = FileWatcher {
            dir: opts.store_dir.clone(),
            poll: opts.poll,
            debounce: opts.debounce,
        }
        .start(stop.clone());
        Self::run(states, watcher, opts, stop)
    }

    /// The same on a cluster (`kube` store): waits for the first list of
    /// every kind, and writes status conditions back while it holds the
    /// Lease `lease` in `lease_namespace` (every replica serves discovery).
    pub async fn start_kube(
        client: kube::Client,
        opts: Options,
        lease_namespace: &str,
        lease: &str,
    ) -> Result<Self, crate::store::kube::KubeStoreError> {
        let stop = CancellationToken::new();
        let mcs = crate::store::kube::Mcs::discover(&client).await;
        tracing::info!(version = mcs.version(), "Multi-Cluster Services API");
        let (states, task) = crate::store::kube::KubeStore {
            mcs,
            client: client.clone(),
            debounce: opts.debounce,
            sync_timeout: Duration::from_secs(120),
            link_secrets_namespace: crate::store::LINK_SECRETS_NAMESPACE.to_string(),
        }
        .start(stop.clone())
        .await?;
        let cp = Self::run(states, task, opts, stop);
        let elector = crate::writers::leader::Elector {
            api: kube::Api::namespaced(client.clone(), lease_namespace),
            lease: lease.to_string(),
            identity: cp.replica.clone(),
            duration: Duration::from_secs(15),
        };
        cp.write_status(client, elector, mcs);
        Ok(cp)
    }

    /// Writes status while leading: on every new generation, on changes of
    /// proxies' refusals and of the links' state, at most once a second.
    fn write_status(
        &self,
        client: kube::Client,
        elector: crate::writers::leader::Elector,
        mcs: crate::store::kube::Mcs,
    ) {
        let stop = self.stop.clone();
        let mut published = self.published.clone();
        let subscribers = self.subscribers.clone();
        let peers = self.peers.clone();
        let reports = self.reports.clone();
        let namespace = self.opts.namespace.clone();
        let injector = self.opts.injector;
        self.tasks.spawn(async move {
            // The elector's task ends with `stop`, like this one.
            let (mut leading, _elector) = elector.run(stop.clone());
            let mut changes = subscribers.watch();
            let mut links = peers.watch_status();
            let mut told = reports.watch();
            let mut writer =
                crate::writers::status::StatusWriter::new(client.clone()).with_mcs(mcs);
            let mut imports =
                crate::writers::imports::ImportWriter::new(client.clone()).with_mcs(mcs);
            let mut roots = crate::writers::ca_root::RootWriter::new(client.clone());
            let mut bundle = crate::inject::webhook::BundleWriter::new(client);
            loop {
                if *leading.borrow_and_update() {
                    let p = published.borrow_and_update().clone();
                    links.borrow_and_update();
                    told.borrow_and_update();
                    writer.set_links(link_statuses(&p, &peers));
                    let conditions = all_conditions(&p, &subscribers, &reports);
                    let (n, errors) = writer.write(&p.store.snapshot, &conditions).await;
                    if n > 0 {
                        tracing::info!(objects = n, "status written");
                    }
                    let own =
                        crate::identity::mesh_cluster_name(&p.store.snapshot).unwrap_or_default();
                    // Not before the warm-up is over: a control plane that
                    // just started has not heard from its links yet, and
                    // would delete every ServiceImport (and the ClusterSet
                    // IPs they keep).
                    let (m, more) = if p.warm {
                        let wanted = crate::writers::imports::desired(&p.catalog, &own);
                        imports.write(&wanted, &p.store.snapshot).await
                    } else {
                        (0, Vec::new())
                    };
                    if m > 0 {
                        tracing::info!(objects = m, "ServiceImports written");
                    }
                    let pem: String = p.own_trust.iter().map(|b| b.roots_pem.as_str()).collect();
                    let namespaces =
                        crate::writers::ca_root::namespaces(&p.store.snapshot, &namespace);
                    let (r, mut failed) = roots.write(&pem, &namespaces).await;
                    if r > 0 {
                        tracing::info!(namespaces = r, "CA root ConfigMaps written");
                    }
                    if injector {
                        match bundle.write(&pem).await {
                            Ok(true) => tracing::info!("injection webhook caBundle written"),
                            Ok(false) => {}
                            Err(e) => failed.push(e),
                        }
                    }
                    for e in errors.into_iter().chain(more).chain(failed) {
                        tracing::warn!("{e}");
                    }
                } else {
                    writer.forget();
                    imports.forget();
                    roots.forget();
                    bundle.forget();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = leading.changed() => {}
                    _ = published.changed() => {}
                    _ = changes.changed() => {}
                    _ = links.changed() => {}
                    _ = told.changed() => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// Serves the discovery stream on `listener`.
    pub fn serve_discovery(&self, listener: TcpListener) {
        self.serve_api(listener, None, None);
    }

    /// Serves discovery and, when given, the CA on `listener`.
    pub fn serve_api(
        &self,
        listener: TcpListener,
        ca: Option<crate::identity::service::CaService>,
        tls: Option<Arc<crate::identity::tls::ApiTls>>,
    ) {
        let svc = discovery::DiscoveryService::new(
            self.published.clone(),
            self.registry.clone(),
            self.subscribers.clone(),
            self.replica.clone(),
            self.tasks.clone(),
            self.stop.clone(),
            self.metrics.clone(),
        );
        let ca = ca.map(|c| c.with_issued(self.metrics.certificates.clone()));
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            if let Err(e) = discovery::serve(svc, ca, listener, tls, stop).await {
                tracing::error!("discovery server failed: {e}");
            }
        });
    }

    /// Serves discovery and the CA on `listener` over TLS, the production
    /// setup: the control plane's certificate from `ca` (namespace
    /// `namespace`), the CA's root sent to every proxy as the trust bundle
    /// of its domain, CSRs authenticated by `auth` or by the client's
    /// certificate, subscriptions by the client's certificate.
    pub fn serve_secure(
        &self,
        listener: TcpListener,
        ca: Arc<crate::identity::Ca>,
        auth: crate::identity::service::Authenticator,
        namespace: &str,
    ) -> Result<Arc<crate::identity::tls::ApiTls>, crate::identity::CaError> {
        let tls = Arc::new(crate::identity::tls::ApiTls::new(ca.clone(), namespace)?);
        self.tasks.spawn({
            let renewal = tls.spawn_renewal(self.stop.clone());
            async move {
                let _ = renewal.await;
            }
        });
        let cluster = crate::identity::mesh_cluster_name(&self.published.borrow().store.snapshot)
            .unwrap_or_default();
        self.set_trust_bundles(vec![model::TrustBundle {
            trust_domain: ca.trust_domain().to_string(),
            roots_pem: ca.bundle_pem().to_string(),
            cluster,
        }]);
        self.serve_api(
            listener,
            Some(crate::identity::service::CaService::new(
                ca,
                auth,
                crate::identity::service::DEFAULT_TTL,
            )),
            Some(tls.clone()),
        );
        Ok(tls)
    }

    /// Federation with linked clusters: serves our exports on `listener`
    /// (the federation port, TLS with the control plane's SVID from `ca`,
    /// client certificates required) to the ClusterLinks' peers holding a
    /// join token from `tokens`, and runs a link task per ClusterLink that
    /// imports from its peer through our gateway entry. Linked trust
    /// bundles follow the ClusterLinks.
    pub fn serve_federation(
        &self,
        listener: TcpListener,
        ca: Arc<crate::identity::Ca>,
        tokens: Option<Arc<crate::identity::token::TokenKey>>,
        settings: crate::sync::client::Settings,
    ) -> Result<Arc<crate::sync::identity::FederationTls>, crate::identity::CaError> {
        let tls = Arc::new(crate::sync::identity::FederationTls::new(
            ca,
            &self.opts.namespace,
        )?);
        let renewal = tls.spawn_renewal(self.stop.clone());
        self.tasks.spawn(async move {
            let _ = renewal.await;
        });
        // Linked domains are trusted as the ClusterLinks say.
        let (mut published, fed, stop) = (self.published.clone(), tls.clone(), self.stop.clone());
        fed.set_linked(&published.borrow_and_update().catalog.links.trust);
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = published.changed() => if r.is_err() { return },
                }
                fed.set_linked(&published.borrow_and_update().catalog.links.trust);
            }
        });
        let svc = crate::sync::server::SyncService::new(
            self.published.clone(),
            tokens,
            self.stop.clone(),
        )
        .with_credentials(settings.credential_policy, settings.clock.clone())
        .with_reports(self.reports.clone())
        .with_views(self.views.clone(), self.traffic.clone());
        let config = Arc::new(tls.mesh.server.as_ref().clone());
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            if let Err(e) = crate::sync::server::serve(svc, listener, config, stop).await {
                tracing::error!("federation server failed: {e}");
            }
        });
        let connector = Arc::new(isthmus_mesh::transport::client::Connector::new(
            tls.mesh.clone(),
            Default::default(),
            self.tasks.clone(),
            // The control plane keeps no per-handshake metrics.
            Arc::new(|_| {}),
        ));
        let credentials = settings.credentials.clone().unwrap_or_else(|| {
            Arc::new(crate::sync::credentials::CredentialStore::dir(
                &self.opts.store_dir,
            ))
        });
        // Each link tells its peer how we see the set.
        let mut settings = settings;
        settings.view = Some({
            let (published, peers, traffic) = (
                self.published.clone(),
                self.peers.clone(),
                self.traffic.clone(),
            );
            Arc::new(move || {
                let own = crate::identity::mesh_cluster_name(&published.borrow().store.snapshot)
                    .unwrap_or_default();
                topology::own_view(&peers.all(), traffic.edges(&own), traffic.watched_here())
            })
        });
        let links = crate::sync::client::run(
            self.published.clone(),
            connector,
            self.peers.clone(),
            credentials,
            settings,
            self.stop.clone(),
        );
        self.tasks.spawn(async move {
            let _ = links.await;
        });
        Ok(tls)
    }

    /// `kube` mode: answers requests for join tokens (`join`) in the
    /// control plane's namespace until shutdown.
    pub fn serve_join_requests(
        &self,
        client: kube::Client,
        tokens: Arc<crate::identity::token::TokenKey>,
    ) {
        self.tasks.spawn(crate::join::serve(
            client,
            self.opts.namespace.clone(),
            tokens,
            self.stop.clone(),
        ));
    }

    /// Each ClusterLink's status as the link tasks see it now.
    pub fn link_statuses(
        &self,
    ) -> std::collections::BTreeMap<String, crate::resources::link::ClusterLinkStatus> {
        link_statuses(&self.published.borrow(), &self.peers)
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Binds a listener for proxies with a deep accept queue: after a control
/// plane restart the whole mesh reconnects within its backoff window, and
/// connections beyond the default queue would wait a SYN retransmission
/// (a second) to get in.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
