//! Telemetry: Prometheus metrics, the JSON access log and W3C trace context.
//! Recording only; nothing here decides how a request is handled.

pub mod accesslog;
pub mod edges;
pub mod metrics;
pub mod trace;
