//! Telemetry: Prometheus metrics (ours and Istio's), the JSON access log,
//! W3C trace context and spans over OTLP.
//! Recording only; nothing here decides how a request is handled.

pub mod accesslog;
pub mod edges;
pub mod metrics;
pub mod otlp;
pub mod trace;
