//! Why the proxy answered a request itself, and how: status code, response
//! flag (Envoy's vocabulary, so operators can grep familiar codes) and the
//! gRPC status used when the client speaks gRPC.

use http::StatusCode;

use crate::pool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host header or :authority: send Host naming the service")]
    NoHost,
    #[error("no service for host {0:?}: check the service's hosts in the config")]
    NoService(String),
    #[error(
        "service {service} has no port {port}: address one of the ports listed for it in the config"
    )]
    NoPort { service: String, port: String },
    #[error("route {route} has no backend to send to: {why}")]
    NoBackend { route: String, why: String },
    #[error("no healthy endpoint for {0}: all endpoints are down, ejected or absent")]
    NoHealthy(String),
    #[error("{0}")]
    Overflow(PoolError),
    #[error("{0}")]
    Connect(PoolError),
    #[error("upstream reset before response headers: {0}")]
    Reset(String),
    /// The upstream did not process the request: an HTTP/2 stream refused
    /// (REFUSED_STREAM), or an HTTP/1.1 connection that failed before any
    /// byte of the request was written.
    #[error("upstream did not process the request: {0}")]
    Refused(String),
    #[error("upstream did not answer within the per-try timeout of {0:?}")]
    PerTryTimeout(std::time::Duration),
    #[error("request timed out after {0:?} (route timeout)")]
    Timeout(std::time::Duration),
    #[error("rate limited by the route's local rate limit")]
    RateLimited,
    #[error("fault injected")]
    Fault,
    #[error("proxy is shutting down")]
    Draining,
    #[error("the client's request body failed: {0}")]
    DownstreamBody(String),
    #[error("RBAC: access denied by authorization policy ({0})")]
    Denied(String),
    #[error("request authentication failed ({policy}): {reason}")]
    Unauthenticated { policy: String, reason: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoHost | Self::DownstreamBody(_) => StatusCode::BAD_REQUEST,
            Self::NoService(_) | Self::NoPort { .. } => StatusCode::NOT_FOUND,
            Self::NoBackend { .. }
            | Self::NoHealthy(_)
            | Self::Overflow(_)
            | Self::Connect(_)
            | Self::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Reset(_) => StatusCode::BAD_GATEWAY,
            Self::PerTryTimeout(_) | Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Fault => StatusCode::SERVICE_UNAVAILABLE,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    /// The request reached no application: the upstream could not be
    /// connected, had no healthy endpoint, or this proxy is draining.
    pub fn reached_no_application(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::NoHealthy(_) | Self::Draining | Self::Refused(_)
        )
    }

    /// Envoy response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::NoHost | Self::NoService(_) | Self::NoPort { .. } | Self::NoBackend { .. } => {
                "NR"
            }
            Self::NoHealthy(_) => "UH",
            Self::Overflow(_) => "UO",
            Self::Connect(_) => "UF",
            Self::Reset(_) | Self::Refused(_) => "UR",
            Self::PerTryTimeout(_) | Self::Timeout(_) => "UT",
            Self::RateLimited => "RL",
            Self::Fault => "FI",
            Self::Draining => "SI",
            Self::DownstreamBody(_) => "DC",
            Self::Denied(_) => "AD",
            Self::Unauthenticated { .. } => "UA",
        }
    }

    /// Metric label for `isthmus_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoHost => "no_host",
            Self::NoService(_) => "no_service",
            Self::NoPort { .. } => "no_port",
            Self::NoBackend { .. } => "no_backend",
            Self::NoHealthy(_) => "no_healthy_upstream",
            Self::Overflow(_) => "circuit_breaker_overflow",
            Self::Connect(_) => "upstream_connect_failure",
            Self::Reset(_) => "upstream_reset",
            Self::Refused(_) => "upstream_unprocessed",
            Self::PerTryTimeout(_) => "upstream_per_try_timeout",
            Self::Timeout(_) => "upstream_timeout",
            Self::RateLimited => "rate_limited",
            Self::Fault => "fault_injected",
            Self::Draining => "draining",
            Self::DownstreamBody(_) => "downstream_body",
            Self::Denied(_) => "authz_denied",
            Self::Unauthenticated { .. } => "authn_failed",
        }
    }

    /// gRPC status for a local reply to a gRPC client (the HTTP to gRPC
    /// mapping of grpc/doc/http-grpc-status-mapping.md, with timeouts as
    /// DEADLINE_EXCEEDED).
    pub fn grpc_status(&self) -> u32 {
        match self {
            Self::PerTryTimeout(_) | Self::Timeout(_) => 4,
            Self::NoService(_) | Self::NoPort { .. } => 12,
            Self::NoHost => 13,
            Self::Denied(_) => 7,
            Self::Unauthenticated { .. } => 16,
            _ => 14,
        }
    }
}

/// gRPC status for an HTTP status (used for fault aborts given as HTTP).
pub fn grpc_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

pub fn grpc_status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}
