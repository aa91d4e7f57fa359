//! The tonic service: a task per stream. Each task waits on the published
//! generation, the proxy's answers and shutdown; every new generation wakes
//! every task at once, so a push fans out concurrently, and a stream with a
//! response in flight simply picks up the newest generation after its
//! answer (coalescing). Streams never block each other: a slow proxy only
//! delays itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_api::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use isthmus_api::discovery::v1::{
    DiscoveryRequest, DiscoveryResponse, Subscription, WorkloadHealth,
};
use isthmus_api::model;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::stream::{Answer, StreamState};
use super::subscribers::{RefusalView, Subscriber, Subscribers};
use crate::server::Published;
use crate::store::registry::{self, Workload};

/// How long a new stream may take to send its subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The discovery service of one control-plane replica.
#[derive(Clone)]
pub struct DiscoveryService {
    inner: Arc<Inner>,
}

struct Inner {
    published: watch::Receiver<Arc<Published>>,
    registry: Arc<registry::Shared>,
    subscribers: Arc<Subscribers>,
    /// This replica's name, sent in every response.
    replica: String,
    tasks: TaskTracker,
    stop: CancellationToken,
    metrics: Arc<crate::server::metrics::Metrics>,
}

impl DiscoveryService {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        registry: Arc<registry::Shared>,
        subscribers: Arc<Subscribers>,
        replica: String,
        tasks: TaskTracker,
        stop: CancellationToken,
        // Pushes and answers are counted there.
        metrics: Arc<crate::server::metrics::Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                published,
                registry,
                subscribers,
                replica,
                tasks,
                stop,
                metrics,
            }),
        }
    }
}

/// Serves discovery (and the CA, when given) on `listener` until `stop`.
pub async fn serve(
    svc: DiscoveryService,
    ca: Option<crate::identity::service::CaService>,
    listener: TcpListener,
    tls: Option<Arc<crate::identity::tls::ApiTls>>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let api = Api {
        discovery: DiscoveryServer::new(svc)
            .max_decoding_message_size(1 << 20)
            .max_encoding_message_size(256 << 20),
        ca: ca.map(isthmus_api::ca::v1::certificates_server::CertificatesServer::new),
    };
    let server = tonic::transport::Server::builder()
        // Dead proxies are noticed (and their workloads start their grace
        // period) even when nothing is sent.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match tls {
        Some(tls) => {
            let incoming = tls.incoming(listener, stop.clone());
            server
                .serve_with_incoming_shutdown(api, incoming, stop.cancelled_owned())
                .await
        }
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            server
                .serve_with_incoming_shutdown(api, incoming, stop.cancelled_owned())
                .await
        }
    }
}

/// The control plane's gRPC services on one port, routed by path (tonic's
/// router would bring axum in for two services).
#[derive(Clone)]
struct Api {
    discovery: DiscoveryServer<DiscoveryService>,
    ca: Option<
        isthmus_api::ca::v1::certificates_server::CertificatesServer<
            crate::identity::service::CaService,
        >,
    >,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Api {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both generated servers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use tonic::server::NamedService;
        type Ca = isthmus_api::ca::v1::certificates_server::CertificatesServer<
            crate::identity::service::CaService,
        >;
        let ca_path = format!("/{}/", <Ca as NamedService>::NAME);
        match &mut self.ca {
            Some(ca) if req.uri().path().starts_with(&ca_path) => Box::pin(ca.call(req)),
            _ => Box::pin(self.discovery.call(req)),
        }
    }
}

/// The ports a health report names (ports out of range cannot be any of
/// the workload's, and are dropped).
fn unhealthy_ports(h: &WorkloadHealth) -> std::collections::BTreeSet<u16> {
    h.unhealthy_ports
        .iter()
        .filter_map(|p| u16::try_from(*p).ok())
        .collect()
}

/// What was wrong with a subscription, as the proxy is told.
fn check(sub: &Subscription) -> Result<(model::Node, Option<Workload>), Status> {
    let node = sub.node.clone().unwrap_or_default();
    if node.name.is_empty() || node.namespace.is_empty() {
        return Err(Status::invalid_argument(
            "subscribe.node needs name and namespace: say which workload this proxy runs for \
             (isthmus-gateway --name/--namespace, or POD_NAME/POD_NAMESPACE)",
        ));
    }
    let Some(w) = &sub.workload else {
        return Ok((node, None));
    };
    let address: IpAddr = w.address.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "subscribe.workload.address {:?} is not an IP address",
            w.address
        ))
    })?;
    let mut ports = Vec::new();
    for p in &w.ports {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "subscribe.workload.ports: {} is not a port (1-65535)",
                    p.port
                ))
            })?;
        ports.push((p.name.clone(), port));
    }
    let locality = node.locality.clone().unwrap_or_default();
    let workload = Workload {
        name: node.name.clone(),
        namespace: node.namespace.clone(),
        service_account: node.service_account.clone(),
        labels: node.labels.clone(),
        address,
        ports,
        region: locality.region,
        zone: locality.zone,
        tunnel_port: u16::try_from(w.tunnel_port).ok().filter(|p| *p != 0),
        unhealthy_ports: Default::default(),
    };
    Ok((node, Some(workload)))
}

/// Over TLS a proxy subscribes as the workload its certificate names: the
/// node's namespace and service account must be the certificate's (so a
/// workload cannot register itself as another's endpoint).
pub fn authorize_subscription(
    node: &model::Node,
    peer: Option<&crate::identity::SpiffeId>,
) -> Result<(), Status> {
    let Some(id) = peer else {
        return Err(Status::unauthenticated(
            "discovery needs a workload certificate: give the sidecar a CA token (--ca-token) so it gets one first",
        ));
    };
    if Some(node.namespace.as_str()) != id.namespace()
        || Some(node.service_account.as_str()) != id.service_account()
    {
        return Err(Status::permission_denied(format!(
            "the subscription names namespace {:?}, service account {:?}, but the certificate is {id}",
            node.namespace, node.service_account
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type SubscribeStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let tls = request
            .extensions()
            .get::<crate::identity::tls::TlsConnectInfo>()
            .cloned();
        let peer = request.remote_addr().or(tls.as_ref().map(|t| t.remote));
        let mut requests = request.into_inner();
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no subscription within 10s"))??
            .ok_or_else(|| Status::cancelled("stream closed before subscribing"))?;
        let Some(sub) = first.subscribe else {
            return Err(Status::invalid_argument(
                "the first request of a stream must carry `subscribe`",
            ));
        };
        let (node, mut workload) = check(&sub)?;
        if let (Some(w), Some(h)) = (workload.as_mut(), &first.health) {
            w.unhealthy_ports = unhealthy_ports(h);
        }
        if let Some(tls) = &tls {
            authorize_subscription(&node, tls.peer.as_ref())?;
        }
        let inner = self.inner.clone();
        if let Some(w) = workload.clone() {
            inner.registry.register(w);
        }
        let id = inner.subscribers.add(Subscriber {
            proxy: format!("{}/{}", node.namespace, node.name),
            cluster: node.cluster.clone(),
            peer: peer.map(|p| p.to_string()),
            identity: tls
                .as_ref()
                .and_then(|t| t.peer.as_ref())
                .map(|p| p.to_string()),
            address: workload
                .as_ref()
                .map(|w| w.address)
                .or(peer.map(|p| p.ip()))
                .map(|a| a.to_string()),
            // An admin port on every address (0.0.0.0:15020 in a pod) is
            // reached on the address the stream comes from.
            admin: sub
                .admin_address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|mut a| {
                    if let (true, Some(p)) = (a.ip().is_unspecified(), peer) {
                        a.set_ip(p.ip());
                    }
                    a.to_string()
                }),
            connected_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            synced_generation: None,
            in_flight: None,
            resources: sub.initial_resource_versions.len(),
            acks: 0,
            nacks: 0,
            refused: BTreeMap::new(),
        });
        tracing::info!(
            proxy = %format!("{}/{}", node.namespace, node.name),
            peer = ?peer,
            holds = sub.initial_resource_versions.len(),
            registers = workload.is_some(),
            "proxy subscribed"
        );
        let (tx, rx) = mpsc::channel(2);
        let state = StreamState::new(sub.initial_resource_versions.into_iter().collect());
        let task = run(
            inner.clone(),
            id,
            node,
            workload.is_some(),
            state,
            requests,
            tx,
        );
        inner.tasks.spawn(task);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One stream, until the proxy goes or the control plane stops.
async fn run(
    inner: Arc<Inner>,
    id: u64,
    node: model::Node,
    registered: bool,
    mut state: StreamState,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let proxy = format!("{}/{}", node.namespace, node.name);
    let mut published = inner.published.clone();
    let mut counts = (0u64, 0u64);
    // The generation last looked at, and whether a NACK asks for another
    // look at the same one: an ACK of the current generation needs no
    // recomputation (half the work of a push).
    let mut computed_for = 0u64;
    let mut again = true;
    // When the response awaiting its answer was sent.
    let mut sent_at: Option<std::time::Instant> = None;
    loop {
        let response = {
            let p = published.borrow_and_update().clone();
            // Warming up: the proxy keeps what it has (or waits for its
            // first configuration) until its peers had time to register.
            if p.warm && (again || p.generation != computed_for) && state.in_flight().is_none() {
                computed_for = p.generation;
                again = false;
                let wanted = p.offer.wanted(&p.catalog, &node);
                state.next(&p.offer, &wanted, &inner.replica)
            } else {
                None
            }
        };
        if let Some(r) = response {
            tracing::debug!(%proxy, nonce = r.nonce, changed = r.resources.len(), removed = r.removed_resources.len(), "push");
            if tx.send(Ok(r)).await.is_err() {
                break;
            }
            inner.metrics.pushes.inc();
            sent_at = Some(std::time::Instant::now());
        }
        inner.subscribers.update(id, |s| {
            s.synced_generation = state.synced();
            s.in_flight = state.in_flight().map(|(n, g)| (n.to_string(), g));
            s.resources = state.held().len();
            s.acks = counts.0;
            s.nacks = counts.1;
            s.refused = state
                .refused()
                .iter()
                .map(|(n, r)| (n.clone(), RefusalView::from(r)))
                .collect();
        });
        let waiting = state.in_flight().is_some();
        tokio::select! {
            _ = inner.stop.cancelled() => break,
            r = published.changed(), if !waiting => if r.is_err() { break },
            m = requests.message() => match m {
                Ok(Some(req)) => {
                    if req.subscribe.is_some() {
                        tracing::warn!(%proxy, "ignoring a second subscription on one stream");
                    }
                    if let Some(h) = &req.health {
                        if registered {
                            let ports = unhealthy_ports(h);
                            tracing::info!(%proxy, unhealthy = ?ports, "workload health");
                            inner.registry.set_health(&node.namespace, &node.name, ports);
                        } else {
                            tracing::warn!(%proxy, "health from a proxy that registers no workload: ignored");
                        }
                    }
                    if req.response_nonce.is_empty() && req.error.is_none() {
                        continue; // health alone
                    }
                    let answer = state.answer(&req.response_nonce, req.error.as_ref());
                    let result = match &answer {
                        Answer::Acked { .. } => Some("ack"),
                        Answer::Nacked { .. } => Some("nack"),
                        Answer::Stale => None,
                    };
                    if let Some(result) = result {
                        let m = &inner.metrics;
                        m.answers
                            .get_or_create(&crate::server::metrics::ResultLabels { result: result.into() })
                            .inc();
                        if let Some(at) = sent_at.take() {
                            m.push_seconds.observe(at.elapsed().as_secs_f64());
                        }
                    }
                    match answer {
                        Answer::Acked { .. } => counts.0 += 1,
                        Answer::Nacked { generation, refused } => {
                            counts.1 += 1;
                            again = true;
                            tracing::warn!(
                                %proxy, generation, ?refused,
                                reason = req.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
                                "proxy refused configuration (it stays on its last good)"
                            );
                        }
                        Answer::Stale => tracing::debug!(%proxy, nonce = req.response_nonce, "stale answer ignored"),
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%proxy, %status, "stream ended");
                    break;
                }
            },
        }
    }
    inner.subscribers.remove(id);
    if registered {
        inner.registry.disconnected(&node.namespace, &node.name);
    }
    tracing::info!(%proxy, "proxy unsubscribed");
}
