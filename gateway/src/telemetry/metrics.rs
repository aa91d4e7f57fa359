//! The proxy's Prometheus metrics, served at /metrics on the admin port.
//! Ours are prefixed `isthmus_`. Istio's standard request metrics
//! (`istio_requests_total`, `istio_request_duration_milliseconds`) are
//! kept too, with the labels Istio's dashboards and Kiali query, so those
//! work unchanged (`IstioLabels`).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(self.as_str())
    }
}

/// Label values are shared strings: building a label set on the request
/// path clones pointers, it does not allocate.
pub type Label = Arc<str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub source_workload: Label,
    pub source_namespace: Label,
    pub destination_service: Label,
    pub route: Label,
    pub response_code: u16,
    /// gRPC status name or "" for non-gRPC.
    pub grpc_status: &'static str,
    /// Envoy-style response flags, "-" when none.
    pub response_flags: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: Direction,
    pub destination_service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub direction: Direction,
    pub destination_service: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub destination_service: Label,
    pub route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// A peer gateway (east-west).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerTransportLabels {
    pub peer: String,
    /// "quic" or "h2".
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerResultLabels {
    pub peer: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirectionLabels {
    pub peer: String,
    /// "sent" (to the peer) or "received".
    pub direction: &'static str,
}

/// An authorization decision made by a policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// "allow" or "deny".
    pub decision: &'static str,
    /// The deciding policy, or "default-deny".
    pub policy: Label,
    /// "HTTP" or "TCP".
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthnLabels {
    pub policy: Label,
    pub reason: &'static str,
}

/// Inbound connections by transport and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundConnLabels {
    /// "mtls" or "plaintext".
    pub transport: &'static str,
    /// "accepted", or why not: "strict_mode", "handshake", "no_identity".
    pub result: &'static str,
}

/// One side of a request as Istio's labels name it: the workload (its
/// service account, the name both sides of a call know it by), its
/// namespace, SPIFFE ID and cluster. "unknown" where not known.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Workload {
    pub name: Label,
    pub namespace: Label,
    pub principal: Label,
    pub cluster: Label,
}

impl Workload {
    pub fn unknown(cluster: Label) -> Self {
        Self {
            name: UNKNOWN_LABEL.clone(),
            namespace: UNKNOWN_LABEL.clone(),
            principal: UNKNOWN_LABEL.clone(),
            cluster,
        }
    }

    /// From a workload's SPIFFE ID (`spiffe://td/ns/N/sa/S`); a bare trust
    /// domain (a linked cluster's gateway stands for the workload) or
    /// anything else is unknown.
    pub fn of_spiffe(id: &str, cluster: Label) -> Self {
        match isthmus_mesh::SpiffeId::parse_workload(id) {
            Ok(w) => Self {
                name: w
                    .service_account()
                    .map_or_else(|| UNKNOWN_LABEL.clone(), Label::from),
                namespace: w
                    .namespace()
                    .map_or_else(|| UNKNOWN_LABEL.clone(), Label::from),
                principal: Label::from(w.as_str()),
                cluster,
            },
            Err(_) => Self::unknown(cluster),
        }
    }
}

pub static UNKNOWN_LABEL: std::sync::LazyLock<Label> =
    std::sync::LazyLock::new(|| "unknown".into());

/// Istio's standard labels on `istio_requests_total` and
/// `istio_request_duration_milliseconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    /// "source" (the caller's sidecar) or "destination".
    pub reporter: &'static str,
    pub source_workload: Label,
    pub source_workload_namespace: Label,
    pub source_principal: Label,
    pub source_cluster: Label,
    pub destination_workload: Label,
    pub destination_workload_namespace: Label,
    pub destination_principal: Label,
    pub destination_cluster: Label,
    /// The service as the proxy names it (`name.ns`, or a clusterset name).
    pub destination_service: Label,
    pub destination_service_name: Label,
    pub destination_service_namespace: Label,
    /// "http" or "grpc".
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status code, "" for HTTP.
    pub grpc_response_status: &'static str,
    pub response_flags: &'static str,
    /// "mutual_tls" when the call crossed the mesh transport, else "none".
    pub connection_security_policy: &'static str,
}

/// Istio's request duration buckets, in milliseconds.
fn istio_duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
}

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

/// Every metric the proxy exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<ServiceLabels, Counter>,
    pub tcp_closed: Family<ServiceLabels, Counter>,
    pub tcp_sent_bytes: Family<ServiceLabels, Counter>,
    pub tcp_received_bytes: Family<ServiceLabels, Counter>,
    pub retries: Family<RouteLabels, Counter>,
    pub moves: Family<RouteLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    pub circuit_breaker_sheds: Family<ServiceLabels, Counter>,
    pub rate_limited: Family<RouteLabels, Counter>,
    pub mirrored: Family<ServiceLabels, Counter>,
    pub errors: Family<KindLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub upstream_connections: Family<ServiceLabels, Gauge>,
    /// 1 while a discovery stream to the control plane is up.
    pub control_plane_connected: Gauge,
    /// Idle downstream HTTP/1.1 connections waiting with no buffers.
    pub parked_connections: Gauge,
    pub authz_decisions: Family<AuthzLabels, Counter>,
    pub authn_failures: Family<AuthnLabels, Counter>,
    pub inbound_connections: Family<InboundConnLabels, Counter>,
    /// Mesh transport connections opened by this proxy (TLS handshakes as
    /// the client), by result.
    pub tunnel_handshakes: Family<ResultLabels, Counter>,
    /// Certificate rotations seen.
    pub certificate_rotations: Counter,
    /// East-west links: 1 on the transport in use per peer.
    pub eastwest_transport: Family<PeerTransportLabels, Gauge>,
    pub eastwest_links: Family<PeerResultLabels, Counter>,
    pub eastwest_fallbacks: Family<PeerLabels, Counter>,
    /// QUIC round-trip time per peer, in seconds (base units).
    pub eastwest_rtt_seconds: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub eastwest_cwnd_bytes: Family<PeerLabels, Gauge>,
    pub eastwest_lost_packets: Family<PeerLabels, Gauge>,
    pub eastwest_open_streams: Family<PeerLabels, Gauge>,
    pub eastwest_bytes: Family<PeerDirectionLabels, Counter>,
    /// CONNECT answers from each peer gateway, by status.
    pub eastwest_connects: Family<PeerResultLabels, Counter>,
    /// Queries to the DNS proxy, by what became of them: answered,
    /// nxdomain, formerr, notimp (answered here), forwarded, servfail (no
    /// upstream answered), dropped (not a query).
    pub dns_queries: Family<ResultLabels, Counter>,
    /// Istio's standard request count and duration (ms), unprefixed.
    pub istio_requests: Family<IstioLabels, Counter>,
    pub istio_request_duration: Family<IstioLabels, Histogram, fn() -> Histogram>,
    /// The name of every family (in the exposition once it has a sample).
    pub families: Vec<String>,
    /// Outbound requests by destination cluster (`/stats/edges`).
    pub edges: super::edges::Edges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts the mesh transport's handshakes in `tunnel_handshakes`.
    pub fn handshake_observer(&self) -> isthmus_mesh::transport::HandshakeObserver {
        let counter = self.tunnel_handshakes.clone();
        std::sync::Arc::new(move |h: isthmus_mesh::transport::Handshake| {
            counter
                .get_or_create(&ResultLabels {
                    result: h.label().into(),
                })
                .inc();
        })
    }

    pub fn new() -> Self {
        let mut root = Registry::default();
        let mut names = Vec::new();
        let mut top = Named {
            registry: &mut root,
            prefix: "",
            names: &mut names,
        };
        let istio_requests = Family::<IstioLabels, Counter>::default();
        top.register(
            "istio_requests",
            "Requests, with Istio's standard labels (for Istio's dashboards and Kiali)",
            istio_requests.clone(),
        );
        let istio_request_duration =
            Family::<IstioLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                istio_duration_histogram,
            );
        top.register(
            "istio_request_duration_milliseconds",
            "Request duration, with Istio's standard labels and buckets",
            istio_request_duration.clone(),
        );
        let mut registry = Named {
            registry: top.registry.sub_registry_with_prefix("isthmus"),
            prefix: "isthmus",
            names: top.names,
        };
        let requests = Family::default();
        registry.register("requests", "HTTP and gRPC requests", requests.clone());
        let request_duration =
            Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response complete",
            request_duration.clone(),
        );
        macro_rules! reg {
            ($name:literal, $help:literal) => {{
                let f = Family::default();
                registry.register($name, $help, f.clone());
                f
            }};
        }
        Self {
            requests,
            request_duration,
            tcp_opened: reg!("tcp_connections_opened", "TCP connections proxied"),
            tcp_closed: reg!("tcp_connections_closed", "TCP connections closed"),
            tcp_sent_bytes: reg!(
                "tcp_sent_bytes",
                "Bytes sent to the downstream client on TCP connections"
            ),
            tcp_received_bytes: reg!(
                "tcp_received_bytes",
                "Bytes received from the downstream client on TCP connections"
            ),
            retries: reg!("retries", "Retried attempts"),
            moves: reg!(
                "moves",
                "Requests no application saw (connect failure, unprocessed) sent at once to another endpoint"
            ),
            retry_budget_exhausted: reg!(
                "retry_budget_exhausted",
                "Retries not made because the retry budget was spent"
            ),
            ejections: reg!(
                "outlier_ejections",
                "Endpoints ejected by outlier detection"
            ),
            circuit_breaker_sheds: reg!(
                "circuit_breaker_sheds",
                "Requests shed by connection-pool limits (503)"
            ),
            rate_limited: reg!(
                "rate_limited",
                "Requests refused by the local rate limit (429)"
            ),
            mirrored: reg!("mirrored_requests", "Requests copied to a mirror service"),
            errors: reg!("errors", "Proxy errors by kind"),
            config_reloads: reg!("config_reloads", "Configuration updates by result"),
            upstream_connections: reg!(
                "upstream_connections",
                "Open upstream connections by destination service"
            ),
            authz_decisions: reg!(
                "authorization_decisions",
                "Inbound connections and requests decided by an AuthorizationPolicy"
            ),
            authn_failures: reg!(
                "authentication_failures",
                "Inbound requests refused by request authentication (401)"
            ),
            inbound_connections: reg!(
                "inbound_connections",
                "Inbound connections by transport (mtls, plaintext) and result"
            ),
            tunnel_handshakes: reg!(
                "tunnel_handshakes",
                "Mesh transport (mTLS HTTP/2) connections opened, by result"
            ),
            certificate_rotations: {
                let c = Counter::default();
                registry.register(
                    "certificate_rotations",
                    "Workload certificates put in force after the first",
                    c.clone(),
                );
                c
            },
            eastwest_transport: reg!(
                "eastwest_link_transport",
                "1 for the transport each peer link uses (quic, or the h2 fallback)"
            ),
            eastwest_links: reg!(
                "eastwest_link_attempts",
                "Links made to peer gateways, by result (quic, h2, error)"
            ),
            eastwest_fallbacks: reg!(
                "eastwest_fallbacks",
                "Links that fell back to HTTP/2 over TLS because QUIC did not get through"
            ),
            eastwest_rtt_seconds: reg!("eastwest_rtt_seconds", "QUIC round-trip time per peer"),
            eastwest_cwnd_bytes: reg!(
                "eastwest_congestion_window_bytes",
                "QUIC congestion window per peer"
            ),
            eastwest_lost_packets: reg!(
                "eastwest_lost_packets",
                "QUIC packets lost on the current link per peer"
            ),
            eastwest_open_streams: reg!(
                "eastwest_open_streams",
                "Cross-cluster streams open per peer"
            ),
            eastwest_bytes: reg!(
                "eastwest_bytes",
                "Bytes carried to and from each peer gateway"
            ),
            eastwest_connects: reg!(
                "eastwest_connect_responses",
                "CONNECT responses from each peer gateway, by status"
            ),
            dns_queries: reg!(
                "dns_queries",
                "DNS queries to the sidecar's DNS proxy, by result"
            ),
            control_plane_connected: {
                #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
                struct BuildLabels {
                    component: String,
                    version: String,
                }
                let build: Family<BuildLabels, Gauge> = Family::default();
                build
                    .get_or_create(&BuildLabels {
                        component: "gateway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    })
                    .set(1);
                registry.register("build_info", "The build running, always 1", build);
                let g = Gauge::default();
                registry.register(
                    "control_plane_connected",
                    "1 while the discovery stream to the control plane is up",
                    g.clone(),
                );
                g
            },
            parked_connections: {
                let g = Gauge::default();
                registry.register(
                    "downstream_connections_parked",
                    "Idle downstream HTTP/1.1 keep-alive connections, parked: holding no buffers until their next request",
                    g.clone(),
                );
                g
            },
            istio_requests,
            istio_request_duration,
            registry: root,
            families: names,
            edges: Default::default(),
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
