//! The control plane process (`isthmus-federation run`): watches the store
//! and the registered workloads, translates every change into a new
//! `Published` generation, serves it to proxies on the discovery stream
//! (`discovery`), and shows its state on the admin port (`/config_dump`,
//! `/proxy_config?namespace=NS`, `/healthz`, `/readyz`).

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
}

impl Options {
    pub fn new(store_dir: impl Into<PathBuf>) -> Self {
        Self {
            store_dir: store_dir.into(),
            poll: Duration::from_millis(200),
            debounce: Duration::from_millis(100),
            registration_grace: Duration::from_secs(30),
            replica: format!("isthmus-federation-{}", std::process::id()),
            trust_bundles: Vec::new(),
            gateway_entry: None,
            federation_address: None,
            namespace: "isthmus-system".into(),
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
    /// This cluster's own trust bundles (its CA's roots), as proxies get
    /// them and linked clusters are sent them.
    pub own_trust: Vec<model::TrustBundle>,
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
        let (states, task) = crate::store::kube::KubeStore {
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
        cp.write_status(client, elector);
        Ok(cp)
    }

    /// Writes status while leading: on every new generation, on changes of
    /// proxies' refusals and of the links' state, at most once a second.
    fn write_status(&self, client: kube::Client, elector: crate::writers::leader::Elector) {
        let stop = self.stop.clone();
        let mut published = self.published.clone();
        let subscribers = self.subscribers.clone();
        let peers = self.peers.clone();
        self.tasks.spawn(async move {
            // The elector's task ends with `stop`, like this one.
            let (mut leading, _elector) = elector.run(stop.clone());
            let mut changes = subscribers.watch();
            let mut links = peers.watch_status();
            let mut writer = crate::writers::status::StatusWriter::new(client.clone());
            let mut imports = crate::writers::imports::ImportWriter::new(client);
            loop {
                if *leading.borrow_and_update() {
                    let p = published.borrow_and_update().clone();
                    links.borrow_and_update();
                    writer.set_links(link_statuses(&p, &peers));
                    let conditions = all_conditions(&p, &subscribers);
                    let (n, errors) = writer.write(&p.store.snapshot, &conditions).await;
                    if n > 0 {
                        tracing::info!(objects = n, "status written");
                    }
                    let own =
                        crate::identity::mesh_cluster_name(&p.store.snapshot).unwrap_or_default();
                    let wanted = crate::writers::imports::desired(&p.catalog, &own);
                    let (m, more) = imports.write(&wanted, &p.store.snapshot).await;
                    if m > 0 {
                        tracing::info!(objects = m, "ServiceImports written");
                    }
                    for e in errors.into_iter().chain(more) {
                        tracing::warn!("{e}");
                    }
                } else {
                    writer.forget();
                    imports.forget();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = leading.changed() => {}
                    _ = published.changed() => {}
                    _ = changes.changed() => {}
                    _ = links.changed() => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    fn run(
        mut states: watch::Receiver<State>,
        watcher: tokio::task::JoinHandle<()>,
        opts: Options,
        stop: CancellationToken,
    ) -> Self {
        let tasks = TaskTracker::new();
        let registry = Arc::new(registry::Shared::new(opts.registration_grace));
        let peers = Arc::new(crate::sync::peers::Peers::default());
        let mut generation = 1;
        let (trust_tx, mut trust) = watch::channel(opts.trust_bundles.clone());
        let inputs = Inputs {
            registry: &registry,
            peers: &peers,
            opts: &opts,
        };
        let first = publish(
            generation,
            &states.borrow_and_update(),
            &inputs,
            &trust.borrow_and_update(),
        );
        let (tx, published) = watch::channel(first);
        let (reg, stop2, debounce) = (registry.clone(), stop.clone(), opts.debounce);
        let (imports, loop_opts) = (peers.clone(), opts.clone());
        let mut imported = imports.watch_imports();
        tasks.spawn(async move {
            let _watcher = watcher;
            loop {
                let expiry = reg.next_expiry();
                let withdrawal = imports.next_expiry();
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = states.changed() => if r.is_err() { return },
                    r = trust.changed() => if r.is_err() { return },
                    r = imported.changed() => if r.is_err() { return },
                    _ = sleep_until_wall(withdrawal) => {
                        if !imports.expire(std::time::SystemTime::now()) { continue; }
                    }
                    _ = reg.changed() => {
                        if !reg.take_dirty() {
                            continue; // a disconnect: only the expiry timer moves
                        }
                        // Registrations come in bursts (a deployment
                        // scaling up): let the burst finish.
                        tokio::select! {
                            _ = stop2.cancelled() => return,
                            _ = tokio::time::sleep(debounce) => {}
                        }
                        reg.take_dirty();
                    }
                    _ = sleep_until(expiry) => {
                        if !reg.expire() { continue; }
                    }
                }
                generation += 1;
                imported.borrow_and_update();
                let inputs = Inputs {
                    registry: &reg,
                    peers: &imports,
                    opts: &loop_opts,
                };
                let next = publish(
                    generation,
                    &states.borrow_and_update(),
                    &inputs,
                    &trust.borrow_and_update(),
                );
                tx.send_replace(next);
            }
        });
        Self {
            published,
            subscribers: Arc::new(Subscribers::default()),
            registry,
            replica: opts.replica.clone(),
            tasks,
            stop,
            trust: trust_tx,
            peers,
            opts,
        }
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
        );
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
        .with_credentials(settings.credential_policy, settings.clock.clone());
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

    /// Serves the admin endpoints on `listener` until `shutdown`.
    pub fn serve_admin(&self, listener: TcpListener) {
        let published = self.published.clone();
        let subscribers = self.subscribers.clone();
        let peers = self.peers.clone();
        let stop = self.stop.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let published = published.clone();
                let subscribers = subscribers.clone();
                let peers = peers.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let r = admin(&req, &published.borrow(), &subscribers, &peers);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Each ClusterLink of `p`'s store, by name, with its status from `peers`.
pub fn link_statuses(
    p: &Published,
    peers: &crate::sync::peers::Peers,
) -> std::collections::BTreeMap<String, crate::resources::link::ClusterLinkStatus> {
    let now = std::time::SystemTime::now();
    p.store
        .snapshot
        .of_kind("ClusterLink")
        .filter_map(|(key, r)| match r {
            crate::store::Resource::ClusterLink(l) => {
                let generation = l.metadata.generation.unwrap_or(0);
                let trust = p
                    .catalog
                    .links
                    .trust
                    .iter()
                    .find(|t| t.cluster == l.spec.peer)
                    .map(|t| t.roots_pem.as_str());
                let status = crate::sync::status::link_status(
                    peers.get(&l.spec.peer).as_ref(),
                    trust,
                    generation,
                    now,
                );
                Some((key.name.clone(), status))
            }
            _ => None,
        })
        .collect()
}

/// Every status condition of the generation: translation's (`Accepted`,
/// `ResolvedRefs`) and the proxies' refusals (`Programmed`).
pub fn all_conditions(
    p: &Published,
    subscribers: &Subscribers,
) -> std::collections::BTreeMap<
    (&'static str, crate::store::ObjectKey),
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
> {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut conditions =
        crate::translate::status::conditions(&p.store.snapshot, &p.catalog.problems, &now);
    let refusals = subscribers.refusals();
    for (k, c) in discovery::subscribers::programmed_conditions(&p.store.snapshot, &refusals, &now)
    {
        conditions.entry(k).or_default().push(c);
    }
    conditions
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

/// Sleeps until the wall-clock time `at`, or forever.
async fn sleep_until_wall(at: Option<std::time::SystemTime>) {
    match at {
        Some(at) => {
            let wait = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a publication reads besides the store.
struct Inputs<'a> {
    registry: &'a registry::Shared,
    peers: &'a crate::sync::peers::Peers,
    opts: &'a Options,
}

fn publish(
    generation: u64,
    state: &State,
    inputs: &Inputs<'_>,
    trust: &[model::TrustBundle],
) -> Arc<Published> {
    let workloads = inputs.registry.workloads();
    let refs: Vec<&registry::Workload> = workloads.iter().collect();
    let entry = inputs
        .opts
        .gateway_entry
        .map(|a| crate::translate::imports::Entry {
            ip: a.ip(),
            port: a.port(),
        });
    let summaries = inputs.peers.summaries();
    let synced = inputs.peers.trust_bundles();
    let crate::translate::Output {
        mut catalog,
        endpoints,
    } = crate::translate::translate(&crate::translate::Inputs {
        snapshot: &state.snapshot,
        workloads: &refs,
        imports: &summaries,
        gateway_entry: entry,
        synced_trust: Some(&synced),
        federation: inputs
            .opts
            .federation_address
            .map(|addr| (inputs.opts.namespace.as_str(), addr)),
    });
    for p in &catalog.problems {
        tracing::warn!(kind = p.kind, object = %p.key, reason = p.reason, "{}", p.message);
    }
    tracing::info!(
        generation,
        store_generation = state.generation,
        services = catalog.services.len(),
        workloads = workloads.len(),
        problems = catalog.problems.len(),
        "configuration translated"
    );
    let offer = Offer::build(generation, &mut catalog, trust, |s| endpoints.fill(s));
    drop(endpoints);
    Arc::new(Published {
        generation,
        offer,
        catalog,
        store: state.clone(),
        workloads: workloads.len(),
        own_trust: trust.to_vec(),
    })
}

fn admin(
    req: &Request<hyper::body::Incoming>,
    p: &Published,
    subscribers: &Subscribers,
    peers: &crate::sync::peers::Peers,
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Ready once a store generation was translated (always, after start).
        "/readyz" => (
            StatusCode::OK,
            "text/plain",
            format!("generation {}\n", p.generation),
        ),
        // What a proxy in a namespace would be sent: /proxy_config?namespace=shop
        "/proxy_config" => proxy_config(req.uri().query().unwrap_or(""), p),
        // Each ClusterLink's status (what `isthmusctl status` shows).
        "/links" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&link_statuses(p, peers)).unwrap_or_default() + "\n",
        ),
        "/config_dump" => {
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for (kind, _) in p.store.snapshot.objects.keys() {
                *kinds.entry(kind).or_default() += 1;
            }
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            );
            let mut conditions: std::collections::BTreeMap<String, Vec<_>> =
                crate::translate::status::conditions(&p.store.snapshot, &p.catalog.problems, &now)
                    .into_iter()
                    .map(|((kind, key), c)| (format!("{kind} {key}"), c))
                    .collect();
            let refusals = subscribers.refusals();
            for ((kind, key), c) in
                discovery::subscribers::programmed_conditions(&p.store.snapshot, &refusals, &now)
            {
                conditions
                    .entry(format!("{kind} {key}"))
                    .or_default()
                    .push(c);
            }
            let proxies: Vec<serde_json::Value> = subscribers
                .list()
                .into_iter()
                .map(|(id, s)| {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["stream"] = id.into();
                    v
                })
                .collect();
            let dump = serde_json::json!({
                "generation": p.generation,
                "storeGeneration": p.store.generation,
                "objects": kinds,
                "workloads": p.workloads,
                "storeErrors": p.store.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "problems": p.catalog.problems.iter().map(|x| serde_json::json!({
                    "kind": x.kind,
                    "object": x.key.to_string(),
                    "reason": x.reason,
                    "message": x.message,
                })).collect::<Vec<_>>(),
                "conditions": conditions,
                "links": link_statuses(p, peers),
                "proxies": proxies,
                "endpoints": p.offer.endpoints(),
                "services": p.catalog.services.keys()
                    .filter_map(|n| Some((n.clone(), p.offer.service(n)?)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            });
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n",
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /config_dump, /links, /proxy_config?namespace=NS, /healthz, /readyz\n"
                .to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn proxy_config(query: &str, p: &Published) -> (StatusCode, &'static str, String) {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let Some(namespace) = param("namespace") else {
        return (
            StatusCode::BAD_REQUEST,
            "text/plain",
            "say which proxy: /proxy_config?namespace=NS[&name=N][&calls=svc.ns,...]\n".into(),
        );
    };
    let mut node = isthmus_api::model::Node {
        name: param("name").unwrap_or_else(|| "preview".into()),
        namespace,
        ..Default::default()
    };
    if let Some(calls) = param("calls") {
        node.labels.insert(
            crate::translate::proxy::CALLS.into(),
            calls.replace("%2C", ","),
        );
    }
    let index = crate::translate::proxy::NamespaceIndex::new(&p.catalog);
    let cfg = isthmus_api::model::ProxyConfig {
        node: Some(node.clone()),
        services: crate::translate::proxy::wanted(&p.catalog, &index, &node)
            .into_iter()
            .filter_map(|n| p.offer.service(n))
            .collect(),
        ..Default::default()
    };
    (
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n",
    )
}
