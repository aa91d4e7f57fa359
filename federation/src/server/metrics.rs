//! The control plane's `/metrics` (Prometheus text, base units): what it
//! pushes to proxies and how fast they take it, the proxies connected and
//! where they stand, its links to other clusters, the certificates its CA
//! issues, and its build. Counters are counted where things happen;
//! gauges are read from the current state at each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::Published;
use crate::discovery::subscribers::Subscribers;
use crate::sync::peers::Peers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub component: String,
    pub version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A registry that remembers the full name of each family registered, so
/// `families` can list them (an empty family is not in the exposition).
struct Named<'a> {
    registry: &'a mut Registry,
    prefix: &'static str,
    names: &'a mut Vec<String>,
}

impl Named<'_> {
    fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.names.push(if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}_{name}", self.prefix)
        });
        self.registry.register(name, help, metric);
    }
}

/// Every metric of the control plane.
pub struct Metrics {
    registry: Registry,
    /// Configuration responses sent to proxies.
    pub pushes: Counter,
    /// From a response sent to the proxy's answer (ACK or NACK).
    pub push_seconds: Histogram,
    /// The proxies' answers, by result (`ack`, `nack`).
    pub answers: Family<ResultLabels, Counter>,
    /// Certificates the CA signed.
    pub certificates: Counter,
    generation: Gauge,
    proxies: Family<StateLabels, Gauge>,
    link_up: Family<PeerLabels, Gauge>,
    link_rtt: Family<PeerLabels, FloatGauge>,
    link_last_sync_age: Family<PeerLabels, FloatGauge>,
    link_imported: Family<PeerLabels, Gauge>,
    /// The name of every family (in the exposition once it has a sample).
    pub families: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("isthmus");
        let mut names = Vec::new();
        let mut registry = Named {
            registry: &mut root,
            prefix: "isthmus",
            names: &mut names,
        };
        let pushes = Counter::default();
        registry.register(
            "control_plane_pushes",
            "Configuration responses sent to proxies",
            pushes.clone(),
        );
        let push_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "control_plane_push_seconds",
            "Time from a response sent to a proxy to its answer (ACK or NACK)",
            push_seconds.clone(),
        );
        let answers = Family::default();
        registry.register(
            "control_plane_answers",
            "Proxies' answers to responses, by result (ack, nack)",
            answers.clone(),
        );
        let certificates = Counter::default();
        registry.register(
            "ca_certificates_issued",
            "Workload certificates the control plane's CA signed",
            certificates.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "control_plane_generation",
            "The configuration generation published now",
            generation.clone(),
        );
        let proxies = Family::default();
        registry.register(
            "control_plane_proxies",
            "Proxies connected, by state (synced, stale, refused)",
            proxies.clone(),
        );
        let link_up = Family::default();
        registry.register(
            "link_up",
            "1 while the sync stream to a linked cluster is connected",
            link_up.clone(),
        );
        let link_rtt = Family::default();
        registry.register(
            "link_rtt_seconds",
            "Round-trip time of the sync stream to a linked cluster",
            link_rtt.clone(),
        );
        let link_last_sync_age = Family::default();
        registry.register(
            "link_last_sync_age_seconds",
            "Seconds since a linked cluster was last heard (sync lag)",
            link_last_sync_age.clone(),
        );
        let link_imported = Family::default();
        registry.register(
            "link_imported_services",
            "Services imported from a linked cluster and in use",
            link_imported.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                component: "control-plane".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("build_info", "The build running, always 1", build);
        Self {
            registry: root,
            families: names,
            pushes,
            push_seconds,
            answers,
            certificates,
            generation,
            proxies,
            link_up,
            link_rtt,
            link_last_sync_age,
            link_imported,
        }
    }

    /// The text exposition, gauges read from `p`, `subscribers` and
    /// `peers` now.
    pub fn encode(&self, p: &Published, subscribers: &Subscribers, peers: &Peers) -> String {
        self.generation
            .set(i64::try_from(p.generation).unwrap_or(i64::MAX));
        for state in ["Synced", "Stale", "Refused"] {
            self.proxies
                .get_or_create(&StateLabels {
                    state: state.to_lowercase(),
                })
                .set(0);
        }
        for s in crate::discovery::subscribers::proxy_status(p.generation, &subscribers.list()) {
            self.proxies
                .get_or_create(&StateLabels {
                    state: s.state.to_lowercase(),
                })
                .inc();
        }
        // Links that went away leave the exposition with them.
        self.link_up.clear();
        self.link_rtt.clear();
        self.link_last_sync_age.clear();
        self.link_imported.clear();
        let now = std::time::SystemTime::now();
        for peer in peers.all() {
            let l = PeerLabels {
                peer: peer.cluster.clone(),
            };
            self.link_up
                .get_or_create(&l)
                .set(i64::from(peer.connected));
            if let Some(rtt) = peer.rtt {
                self.link_rtt.get_or_create(&l).set(rtt.as_secs_f64());
            }
            if let Some(age) = peer.last_sync.and_then(|t| now.duration_since(t).ok()) {
                self.link_last_sync_age
                    .get_or_create(&l)
                    .set(age.as_secs_f64());
            }
            self.link_imported
                .get_or_create(&l)
                .set(i64::try_from(peer.summaries().len()).unwrap_or(i64::MAX));
        }
        self.text()
    }

    /// The text exposition as the metrics stand (every family, even one
    /// without samples yet).
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics encoding failed: {e}");
        }
        out
    }
}
