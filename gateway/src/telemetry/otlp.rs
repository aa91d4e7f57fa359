//! Spans over OTLP: one span per hop (a request through this proxy), with
//! the trace and span ids the request path already put in `traceparent`
//! (`telemetry::trace`), so the spans of every hop join one trace in the
//! collector. Only sampled traces are recorded: the caller's decision, or
//! for a new trace the configured rate (`Tracing::rate`).
//!
//! The OpenTelemetry SDK's batch processor and OTLP/gRPC exporter do the
//! batching and sending (on the proxy's tokio runtime); this module only
//! turns a finished request into their span data.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};

/// How this proxy traces: the sampling rate of new traces, and where spans
/// go (None: nowhere; `traceparent` still carries the decision).
pub struct Tracing {
    /// 0 to 1: the share of new traces (no incoming `traceparent`) sampled.
    pub rate: f64,
    pub spans: Option<Spans>,
}

/// Istio's default: 1 % of new traces.
pub const DEFAULT_RATE: f64 = 0.01;

pub static DEFAULT: Tracing = Tracing {
    rate: DEFAULT_RATE,
    spans: None,
};

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "OTLP endpoint {endpoint:?}: {reason} (give the collector's gRPC address, e.g. http://otel-collector.observability:4317)"
    )]
    Exporter { endpoint: String, reason: String },
}

/// Spans going to an OTLP collector.
pub struct Spans {
    processor: BatchSpanProcessor<opentelemetry_sdk::runtime::Tokio>,
    scope: InstrumentationScope,
}

/// One hop of a request, finished.
#[derive(Debug, Clone)]
pub struct Hop {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller's span (from its `traceparent`), None for a new trace.
    pub parent_id: Option<u64>,
    /// Outbound: Client; inbound: Server.
    pub kind: SpanKind,
    pub name: String,
    pub start: SystemTime,
    pub duration: Duration,
    pub attributes: Vec<KeyValue>,
    /// A 5xx or a proxy error: the span's status is Error with this.
    pub error: Option<String>,
}

impl Spans {
    /// Exports to the OTLP/gRPC collector at `endpoint`, the resource named
    /// `service` with `attributes`. Call within the tokio runtime.
    pub fn start(
        endpoint: &str,
        service: String,
        attributes: Vec<KeyValue>,
    ) -> Result<Self, OtlpError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OtlpError::Exporter {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let mut processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(service)
                .with_attributes(attributes)
                .build(),
        );
        Ok(Self {
            processor,
            scope: InstrumentationScope::builder("isthmus-gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues a finished hop's span (dropped, not waited for, when the
    /// queue is full).
    pub fn record(&self, hop: Hop) {
        self.processor.on_end(span_data(hop, self.scope.clone()));
    }

    /// Sends what is queued and stops (blocking: call off the runtime's
    /// worker threads).
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!("spans not all sent at shutdown: {e}");
        }
    }
}

/// The SDK's span data for one hop (pure).
pub fn span_data(hop: Hop, scope: InstrumentationScope) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(hop.trace_id),
            SpanId::from(hop.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: hop.parent_id.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: hop.parent_id.is_some(),
        span_kind: hop.kind,
        name: Cow::Owned(hop.name),
        start_time: hop.start,
        end_time: hop.start + hop.duration,
        attributes: hop.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match hop.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope,
    }
}
