//! The proxy's Prometheus metrics, served at /metrics on the admin port.
//! Names follow Istio's standard metrics where one exists, prefixed
//! `isthmus_`.

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

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
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
        let mut registry = Registry::with_prefix("isthmus");
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
            registry,
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
