//! The discovery client (`isthmus-gateway sidecar --control-plane ADDR`):
//! subscribes to the control plane with the proxy's identity (and the
//! workload it registers), applies each incremental response to the same
//! state store the file source feeds, and answers ACK or NACK.
//!
//! - The proxy's own listeners come from its bootstrap (flags or a file);
//!   the control plane sends services. Each response is merged with what
//!   the proxy holds, validated and compiled as a whole; a response that
//!   fails is NACKed naming the resources at fault, and nothing changes.
//! - On loss of the control plane the proxy keeps serving its last good
//!   configuration, reconnects with jittered exponential backoff, and
//!   resyncs by telling the new stream what it holds (name -> version), so
//!   only differences travel.
//! - Readiness (the admin /readyz) waits for the first applied response.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
use isthmus_api::discovery::v1::{
    DiscoveryRequest, DiscoveryResponse, Rejection, Subscription, Workload, WorkloadHealth,
};
use isthmus_api::model;
use isthmus_api::resource::{self, Decoded};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::Store;
use crate::telemetry::metrics::{Metrics, ResultLabels};

/// How to reach the control plane and who to say we are.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` or `http://host:port` of the control plane's discovery.
    pub address: String,
    pub node: model::Node,
    /// The workload to register as an endpoint (`files` mode).
    pub workload: Option<Workload>,
    /// The proxy's own listeners (bootstrap).
    pub listeners: Vec<model::Listener>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// TLS to the control plane (verified, with our certificate once held);
    /// None: plaintext, for development.
    pub tls: Option<isthmus_mesh::tls::control::ControlPlaneConnector>,
    /// Health checks of the registered workload's app, reported on the
    /// stream (health at the source); None: no checks.
    pub health: Option<crate::health::Plan>,
    /// Where our admin port listens, told to the control plane (for
    /// `isthmusctl explain`).
    pub admin: Option<std::net::SocketAddr>,
}

impl Options {
    pub fn new(address: impl Into<String>, node: model::Node) -> Self {
        Self {
            address: address.into(),
            node,
            workload: None,
            listeners: Vec::new(),
            backoff_initial: Duration::from_millis(100),
            // A control plane that comes back is rejoined within a second
            // (it waits for its proxies before pushing: `--warm-up`).
            backoff_max: Duration::from_secs(1),
            tls: None,
            health: None,
            admin: None,
        }
    }

    fn uri(&self) -> String {
        if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("control plane address {address:?} is not usable: {reason}")]
    Address { address: String, reason: String },
    #[error(
        "cannot reach the control plane at {address}: {reason} (is isthmus-federation running, and is --control-plane right?)"
    )]
    Connect { address: String, reason: String },
    #[error("the control plane at {address} refused the subscription: {status}")]
    Refused {
        address: String,
        status: tonic::Status,
    },
    #[error("the discovery stream from {address} broke: {status}")]
    Stream {
        address: String,
        status: tonic::Status,
    },
    #[error("the control plane at {address} closed the stream")]
    Closed { address: String },
}

/// What the proxy holds from the control plane: resource name -> version
/// and content.
#[derive(Debug, Default, Clone)]
pub struct Held {
    resources: BTreeMap<String, (String, Decoded)>,
}

impl Held {
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.resources
            .iter()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

/// The configuration that held resources make: services, and security
/// merged in name order (`security/mesh` first, then the namespace's).
fn assemble(
    resources: &BTreeMap<String, (String, Decoded)>,
    version: &str,
    node: &model::Node,
    listeners: &[model::Listener],
) -> model::ProxyConfig {
    let mut services = Vec::new();
    let mut security: Option<model::Security> = None;
    let mut east_west: Option<model::EastWest> = None;
    for (_, r) in resources.values() {
        match r {
            Decoded::EastWest(e) => east_west = Some(e.clone()),
            Decoded::Service(s) => services.push((**s).clone()),
            Decoded::Security(s) => {
                let into = security.get_or_insert_with(Default::default);
                if s.default_mtls_mode != 0 {
                    into.default_mtls_mode = s.default_mtls_mode;
                }
                into.trust_bundles.extend(s.trust_bundles.iter().cloned());
                into.mtls_policies.extend(s.mtls_policies.iter().cloned());
                into.authorization_policies
                    .extend(s.authorization_policies.iter().cloned());
                into.jwt_policies.extend(s.jwt_policies.iter().cloned());
            }
        }
    }
    model::ProxyConfig {
        version: version.to_string(),
        node: Some(node.clone()),
        listeners: listeners.to_vec(),
        services,
        security,
        east_west,
    }
}

/// Applies one response to `held` and the store, and says what to answer.
/// On any problem nothing changes (neither `held` nor the store) and the
/// answer is a NACK naming the resources at fault.
pub fn apply(
    held: &mut Held,
    resp: &DiscoveryResponse,
    node: &model::Node,
    listeners: &[model::Listener],
    store: &Store,
) -> DiscoveryRequest {
    let answer = |error: Option<Rejection>| DiscoveryRequest {
        subscribe: None,
        response_nonce: resp.nonce.clone(),
        error,
        health: None,
    };
    if resp.resources.is_empty() && resp.removed_resources.is_empty() && store.is_loaded() {
        return answer(None);
    }
    let mut next = held.resources.clone();
    for name in &resp.removed_resources {
        next.remove(name);
    }
    for r in &resp.resources {
        match resource::decode(r) {
            Ok(d) => {
                next.insert(r.name.clone(), (r.version.clone(), d));
            }
            Err(e) => {
                return answer(Some(Rejection {
                    message: e.to_string(),
                    resource_names: vec![r.name.clone()],
                }));
            }
        }
    }
    let cfg = assemble(&next, &resp.system_version, node, listeners);
    match store.apply(&cfg) {
        Ok(_) => {
            held.resources = next;
            answer(None)
        }
        Err(e) => {
            let message = e.to_string();
            let changed: BTreeSet<&str> = resp
                .resources
                .iter()
                .map(|r| r.name.as_str())
                .chain(resp.removed_resources.iter().map(String::as_str))
                .collect();
            let resource_names = at_fault(&cfg, &changed, &message);
            store.reject(format!(
                "control plane version {}: {message}",
                resp.system_version
            ));
            answer(Some(Rejection {
                message,
                resource_names,
            }))
        }
    }
}

/// Which of the response's resources a refused configuration is about:
/// the services its validation issues point into, the services a listener
/// of ours needs, or services the compile error names.
fn at_fault(cfg: &model::ProxyConfig, changed: &BTreeSet<&str>, message: &str) -> Vec<String> {
    let index = |path: &str, prefix: &str| -> Option<usize> {
        path.strip_prefix(prefix)?.split(']').next()?.parse().ok()
    };
    let mut out = BTreeSet::new();
    let security_at_fault = |out: &mut BTreeSet<String>| {
        for name in changed.iter().filter(|n| n.starts_with(resource::SECURITY)) {
            out.insert(name.to_string());
        }
    };
    if message.contains("security.") {
        security_at_fault(&mut out);
    }
    for issue in isthmus_api::validate(cfg) {
        if issue.path.starts_with("security.") {
            security_at_fault(&mut out);
        } else if let Some(i) = index(&issue.path, "services[") {
            if let Some(s) = cfg.services.get(i) {
                out.insert(resource::service_name(&s.name));
            }
        } else if let Some(i) = index(&issue.path, "listeners[")
            && let Some(model::listener::Kind::Tcp(t)) =
                cfg.listeners.get(i).and_then(|l| l.kind.as_ref())
        {
            out.insert(resource::service_name(&t.service));
        }
    }
    if out.is_empty() {
        for name in changed {
            if let Some(svc) = name.strip_prefix(resource::SERVICE)
                && message.contains(svc)
            {
                out.insert(name.to_string());
            }
        }
    }
    out.into_iter()
        .filter(|n| changed.contains(n.as_str()))
        .collect()
}

/// Runs the client until `stop`: subscribe, apply, answer; on any failure
/// keep the last good configuration and reconnect with backoff.
pub async fn run(opts: Options, store: Arc<Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut held = Held::default();
    let mut backoff = opts.backoff_initial;
    // The app's health, checked for as long as this client runs.
    let (_checker, mut health) = match (&opts.health, &opts.workload) {
        (Some(plan), Some(_)) => {
            let (tx, rx) = tokio::sync::watch::channel(Default::default());
            let task = tokio::spawn(crate::health::run(
                plan.app,
                plan.checks.clone(),
                plan.settings,
                tx,
            ));
            (
                Some(tokio_util::task::AbortOnDropHandle::new(task)),
                Some(rx),
            )
        }
        _ => (None, None),
    };
    loop {
        let mut progressed = false;
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = stream(&opts, &mut held, &store, &metrics, &mut progressed, health.as_mut()) => r,
        };
        metrics.control_plane_connected.set(0);
        if let Err(e) = result {
            metrics.error("control_plane");
            tracing::warn!(
                "{e}; serving the last good configuration (generation {}), reconnecting",
                store.generation()
            );
        }
        if progressed {
            backoff = opts.backoff_initial;
        }
        // Full jitter: a control plane restart is not met by every proxy
        // of the mesh in the same millisecond.
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

/// One stream, until it fails.
async fn stream(
    opts: &Options,
    held: &mut Held,
    store: &Store,
    metrics: &Metrics,
    progressed: &mut bool,
    mut health: Option<&mut tokio::sync::watch::Receiver<BTreeSet<u16>>>,
) -> Result<(), DiscoveryError> {
    let address = opts.address.clone();
    let channel = match &opts.tls {
        Some(connector) => {
            connector.wait_for_certificate().await;
            isthmus_mesh::tls::control::channel(&address, Some(connector), Duration::from_secs(5))
                .await
                .map_err(|reason| DiscoveryError::Connect {
                    address: address.clone(),
                    reason,
                })?
        }
        None => {
            let endpoint = tonic::transport::Endpoint::from_shared(opts.uri())
                .map_err(|e| DiscoveryError::Address {
                    address: address.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20));
            endpoint
                .connect()
                .await
                .map_err(|e| DiscoveryError::Connect {
                    address: address.clone(),
                    reason: error_chain(&e),
                })?
        }
    };
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    let report = |failing: &BTreeSet<u16>| WorkloadHealth {
        unhealthy_ports: failing.iter().map(|p| u32::from(*p)).collect(),
    };
    let first = DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(opts.node.clone()),
            workload: opts.workload.clone(),
            initial_resource_versions: held.versions().into_iter().collect(),
            admin_address: opts.admin.map(|a| a.to_string()).unwrap_or_default(),
        }),
        response_nonce: String::new(),
        error: None,
        health: health.as_mut().map(|h| report(&h.borrow_and_update())),
    };
    // The channel has room: this cannot wait.
    let _ = tx.try_send(first);
    let mut responses = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(|status| DiscoveryError::Refused {
            address: address.clone(),
            status,
        })?
        .into_inner();
    metrics.control_plane_connected.set(1);
    tracing::info!(%address, holds = held.len(), "subscribed to the control plane");
    loop {
        let health_changed = async {
            match health.as_mut() {
                Some(h) => h.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            m = responses.message() => m,
            alive = health_changed => {
                if alive && let Some(h) = health.as_mut() {
                    let failing = h.borrow_and_update().clone();
                    tracing::info!(unhealthy = ?failing, "reporting the app's health");
                    let update = DiscoveryRequest {
                        health: Some(report(&failing)),
                        ..Default::default()
                    };
                    if tx.send(update).await.is_err() {
                        return Err(DiscoveryError::Closed { address });
                    }
                } else {
                    health = None; // the checker is gone: nothing more to say
                }
                continue;
            }
        };
        let resp = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err(DiscoveryError::Closed { address }),
            Err(status) => return Err(DiscoveryError::Stream { address, status }),
        };
        *progressed = true;
        let answer = apply(held, &resp, &opts.node, &opts.listeners, store);
        let result = if answer.error.is_some() {
            "rejected"
        } else {
            "applied"
        };
        metrics
            .config_reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        match &answer.error {
            None => tracing::info!(
                version = resp.system_version,
                changed = resp.resources.len(),
                removed = resp.removed_resources.len(),
                generation = store.generation(),
                "configuration from the control plane applied"
            ),
            Some(e) => tracing::error!(
                version = resp.system_version,
                resources = ?e.resource_names,
                "configuration from the control plane refused, keeping the last good one: {}",
                e.message
            ),
        }
        if tx.send(answer).await.is_err() {
            return Err(DiscoveryError::Closed { address });
        }
    }
}

/// An error with its causes, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use isthmus_api::discovery::v1::Resource;

    fn svc(name: &str, port: u32) -> model::Service {
        model::Service {
            name: name.into(),
            ports: vec![model::ServicePort {
                port,
                ..Default::default()
            }],
            endpoints: vec![model::Endpoint {
                address: "127.0.0.1".into(),
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn response(nonce: &str, add: &[model::Service], removed: &[&str]) -> DiscoveryResponse {
        DiscoveryResponse {
            system_version: nonce.into(),
            nonce: nonce.into(),
            resources: add.iter().map(resource::service).collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            control_plane: "test".into(),
        }
    }

    fn node() -> model::Node {
        model::Node {
            name: "frontend".into(),
            namespace: "shop".into(),
            ..Default::default()
        }
    }

    fn tcp_listener(service: &str, port: u32) -> model::Listener {
        model::Listener {
            name: "db".into(),
            address: "127.0.0.1:0".into(),
            kind: Some(model::listener::Kind::Tcp(model::TcpOutbound {
                service: service.into(),
                port,
            })),
        }
    }

    #[test]
    fn responses_merge_into_what_is_held_and_are_acked() {
        let store = Store::new();
        let mut held = Held::default();
        let r = apply(&mut held, &response("1", &[], &[]), &node(), &[], &store);
        assert_eq!((r.response_nonce.as_str(), r.error), ("1", None));
        assert!(
            store.is_loaded(),
            "an empty first response still makes us ready"
        );
        let r = apply(
            &mut held,
            &response("2", &[svc("a.shop", 80), svc("b.shop", 80)], &[]),
            &node(),
            &[],
            &store,
        );
        assert_eq!(r.error, None);
        assert_eq!(held.len(), 2);
        let r = apply(
            &mut held,
            &response("3", &[svc("a.shop", 81)], &["service/b.shop"]),
            &node(),
            &[],
            &store,
        );
        assert_eq!(r.error, None);
        let snap = store.load();
        assert_eq!(snap.version, "3");
        assert!(snap.services.contains_key("a.shop") && !snap.services.contains_key("b.shop"));
        assert_eq!(snap.services["a.shop"].ports[0].port, 81);
        let versions = held.versions();
        assert_eq!(
            versions["service/a.shop"],
            resource::service(&svc("a.shop", 81)).version
        );
    }

    #[test]
    fn a_refused_response_changes_nothing_and_names_the_fault() {
        let store = Store::new();
        let mut held = Held::default();
        let listeners = [tcp_listener("db.shop", 5432)];
        let r = apply(
            &mut held,
            &response("1", &[svc("db.shop", 5432), svc("a.shop", 80)], &[]),
            &node(),
            &listeners,
            &store,
        );
        assert_eq!(r.error, None);
        let before = store.generation();
        // db loses the port our own listener needs; a changes too.
        let r = apply(
            &mut held,
            &response("2", &[svc("db.shop", 5433), svc("a.shop", 81)], &[]),
            &node(),
            &listeners,
            &store,
        );
        let e = r.error.expect("a NACK");
        assert_eq!(e.resource_names, ["service/db.shop"], "{}", e.message);
        assert!(e.message.contains("5432"), "{}", e.message);
        assert_eq!(store.generation(), before, "nothing applied");
        assert_eq!(store.load().services["a.shop"].ports[0].port, 80);
        assert!(store.last_error().unwrap().contains("version 2"));
        assert_eq!(
            held.versions()["service/a.shop"],
            resource::service(&svc("a.shop", 80)).version,
            "held is what is in force"
        );
        // Removing what a listener needs is refused the same way.
        let r = apply(
            &mut held,
            &response("3", &[], &["service/db.shop"]),
            &node(),
            &listeners,
            &store,
        );
        assert_eq!(r.error.unwrap().resource_names, ["service/db.shop"]);
        // A body that does not decode is named.
        let mut bad = response("4", &[], &[]);
        bad.resources.push(Resource {
            name: "service/x.shop".into(),
            version: "1".into(),
            body: Bytes::from_static(&[0xff, 0xff]),
        });
        let r = apply(&mut held, &bad, &node(), &listeners, &store);
        assert_eq!(r.error.unwrap().resource_names, ["service/x.shop"]);
        assert_eq!(store.generation(), before);
    }
}
