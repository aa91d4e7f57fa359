//! The access record of one request: what the access log line and the
//! metrics need, filled in as the request goes and written once when it
//! ends (cheap clones; text is formatted only when a line is written).

use super::*;

/// What the access log and metrics need, filled in as the request goes.
/// Kept as cheap clones; text is only formatted when a log line is written.
pub(super) struct Record {
    pub(super) proxy: Arc<Proxy>,
    pub(super) conn: Arc<ConnInfo>,
    pub(super) source: (Label, Label),
    pub(super) start: Instant,
    pub(super) start_wall: SystemTime,
    pub(super) method: http::Method,
    pub(super) uri: http::Uri,
    pub(super) version: http::Version,
    pub(super) authority: Option<String>,
    pub(super) grpc: bool,
    pub(super) trace: TraceParent,
    /// The caller's span, from its `traceparent`.
    pub(super) parent_span: Option<u64>,
    pub(super) request_id: Option<HeaderValue>,
    pub(super) service: Option<Arc<str>>,
    pub(super) route: Option<Arc<str>>,
    pub(super) upstream: Option<SocketAddr>,
    pub(super) attempts: u32,
    /// Request body bytes, when the body was read whole (streamed bodies
    /// are not counted).
    pub(super) bytes_received: u64,
    pub(super) request_principal: Option<String>,
    /// The authorization rule that decided, when a policy applied.
    pub(super) authz: Option<String>,
    /// The other side for Istio's labels: the caller (inbound), or the
    /// endpoint chosen (outbound; None until one is).
    pub(super) peer: Option<Arc<Workload>>,
    /// The call crossed the mesh transport (mTLS).
    pub(super) mtls: bool,
    /// The endpoint chosen is our east-west gateway, standing for another
    /// cluster.
    pub(super) via_gateway: bool,
}

/// gRPC status codes as label values.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

pub(super) static UNKNOWN: LazyLock<Label> = LazyLock::new(|| "unknown".into());
pub(super) static NO_ROUTE: LazyLock<Label> = LazyLock::new(|| "-".into());

impl Record {
    /// An endpoint was chosen: outbound, it is the other side of the call
    /// (inbound, the other side is the caller, whatever local app serves).
    pub(super) fn chose(&mut self, e: &crate::config::EndpointSpec) {
        if self.conn.direction == Direction::Outbound {
            self.peer = Some(e.workload.clone());
            self.mtls = e.tunnel.is_some();
            self.via_gateway = e.tunnel.as_ref().is_some_and(|t| t.via.is_some());
        }
    }

    pub(super) fn finish(
        self,
        status: StatusCode,
        grpc_status: Option<u32>,
        bytes_sent: u64,
        flags: &'static str,
        reason: Option<String>,
    ) {
        let service = self.service.clone().unwrap_or_else(|| UNKNOWN.clone());
        let route = self.route.clone().unwrap_or_else(|| NO_ROUTE.clone());
        let grpc_label = match (self.grpc, grpc_status) {
            (true, Some(s)) => grpc_status_name(s),
            _ => "",
        };
        let m = &self.proxy.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                direction: self.conn.direction,
                source_workload: self.source.0.clone(),
                source_namespace: self.source.1.clone(),
                destination_service: service.clone(),
                route: route.clone(),
                response_code: status.as_u16(),
                grpc_status: grpc_label,
                response_flags: flags,
            })
            .inc();
        m.request_duration
            .get_or_create(&DurationLabels {
                direction: self.conn.direction,
                destination_service: service,
                route,
            })
            .observe(self.start.elapsed().as_secs_f64());
        self.istio(status, grpc_status, flags);
        if self.trace.sampled()
            && let Some(spans) = &self.proxy.tracing().spans
        {
            spans.record(self.hop(status, flags, reason.as_deref()));
        }
        if !self.proxy.access_log.enabled() {
            return;
        }
        self.proxy.access_log.write(Entry {
            start_time: rfc3339(self.start_wall),
            direction: self.conn.direction.as_str(),
            listener: self.conn.listener.to_string(),
            protocol: format!("{:?}", self.version),
            method: Some(self.method.to_string()),
            authority: self.authority,
            path: Some(
                self.uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.to_string()),
            ),
            response_code: status.as_u16(),
            grpc_status,
            response_flags: flags.to_string(),
            reason,
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            source_address: self.conn.peer.to_string(),
            upstream_host: self.upstream.map(|u| u.to_string()),
            destination_service: self.service.map(|s| s.to_string()),
            route: self.route.map(|r| r.to_string()),
            attempts: self.attempts,
            bytes_received: self.bytes_received,
            bytes_sent,
            source_principal: self.conn.peer_id.as_ref().map(|p| p.to_string()),
            request_principal: self.request_principal,
            authz: self.authz,
            trace_id: Some(self.trace.trace_id_hex()),
            request_id: self
                .request_id
                .and_then(|v| v.to_str().ok().map(str::to_string)),
            source_cluster: None,
            peer_gateway: None,
        });
    }

    /// This hop's span: ids from `traceparent`, the request, the answer,
    /// and the other side (its cluster, whether our east-west gateway
    /// carried it).
    fn hop(
        &self,
        status: StatusCode,
        flags: &'static str,
        reason: Option<&str>,
    ) -> crate::telemetry::otlp::Hop {
        use opentelemetry::KeyValue;
        let snap = self.proxy.store.load();
        let own = self.proxy.own_workload(&snap);
        let service = self.service.as_deref().unwrap_or("unknown");
        let mut a = vec![
            KeyValue::new("http.request.method", self.method.to_string()),
            KeyValue::new("url.path", self.uri.path().to_string()),
            KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
            KeyValue::new(
                "network.protocol.version",
                match self.version {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
            ),
            KeyValue::new("isthmus.direction", self.conn.direction.as_str()),
            KeyValue::new("isthmus.cluster", own.cluster.to_string()),
            KeyValue::new("isthmus.service", service.to_string()),
            KeyValue::new("isthmus.response_flags", flags),
            KeyValue::new("isthmus.attempts", i64::from(self.attempts)),
            KeyValue::new(
                "isthmus.connection_security_policy",
                if self.mtls { "mutual_tls" } else { "none" },
            ),
        ];
        if let Some(host) = &self.authority {
            a.push(KeyValue::new(
                "server.address",
                split_host_port(host).0.to_string(),
            ));
        }
        if let Some(r) = &self.route {
            a.push(KeyValue::new("isthmus.route", r.to_string()));
        }
        if let Some(u) = self.upstream {
            a.push(KeyValue::new("isthmus.upstream", u.to_string()));
        }
        if let Some(p) = &self.peer {
            a.push(KeyValue::new("isthmus.peer_cluster", p.cluster.to_string()));
            a.push(KeyValue::new("isthmus.peer_workload", p.name.to_string()));
            a.push(KeyValue::new(
                "isthmus.peer_principal",
                p.principal.to_string(),
            ));
        }
        if self.conn.direction == Direction::Outbound {
            a.push(KeyValue::new(
                "isthmus.via_eastwest_gateway",
                self.via_gateway,
            ));
        }
        if let Some(id) = self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            a.push(KeyValue::new("isthmus.request_id", id.to_string()));
        }
        crate::telemetry::otlp::Hop {
            trace_id: self.trace.trace_id,
            span_id: self.trace.parent_id,
            parent_id: self.parent_span,
            kind: match self.conn.direction {
                Direction::Outbound => opentelemetry::trace::SpanKind::Client,
                Direction::Inbound => opentelemetry::trace::SpanKind::Server,
            },
            name: format!("{} {service}", self.method),
            start: self.start_wall,
            duration: self.start.elapsed(),
            attributes: a,
            error: (status.is_server_error() || reason.is_some() && status.as_u16() >= 400)
                .then(|| reason.map_or_else(|| status.to_string(), str::to_string)),
        }
    }

    /// `istio_requests_total` and `istio_request_duration_milliseconds`.
    fn istio(&self, status: StatusCode, grpc_status: Option<u32>, flags: &'static str) {
        let snap = self.proxy.store.load();
        let own = self.proxy.own_workload(&snap);
        let unknown = || Arc::new(Workload::unknown(UNKNOWN.clone()));
        let peer = self.peer.clone().unwrap_or_else(unknown);
        let (reporter, source, destination) = match self.conn.direction {
            Direction::Outbound => ("source", &own, &peer),
            Direction::Inbound => ("destination", &peer, &own),
        };
        // Inbound, the service is the one the caller named (the Host it
        // sent), as Istio reports it; ours is the synthetic `inbound|PORT`.
        let service = match (self.conn.direction, &self.authority) {
            (Direction::Inbound, Some(a)) => Label::from(split_host_port(a).0),
            (Direction::Inbound, None) => UNKNOWN.clone(),
            (Direction::Outbound, _) => self.service.clone().unwrap_or_else(|| UNKNOWN.clone()),
        };
        let mut parts = service.splitn(3, '.');
        let (name, ns) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let labels = IstioLabels {
            reporter,
            source_workload: source.name.clone(),
            source_workload_namespace: source.namespace.clone(),
            source_principal: source.principal.clone(),
            source_cluster: source.cluster.clone(),
            destination_workload: destination.name.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.principal.clone(),
            destination_cluster: destination.cluster.clone(),
            destination_service_name: name.into(),
            destination_service_namespace: if ns.is_empty() {
                UNKNOWN.clone()
            } else {
                ns.into()
            },
            destination_service: service,
            request_protocol: if self.grpc { "grpc" } else { "http" },
            response_code: status.as_u16(),
            grpc_response_status: match (self.grpc, grpc_status) {
                (true, Some(s)) => GRPC_CODES.get(s as usize).copied().unwrap_or("2"),
                _ => "",
            },
            response_flags: flags,
            connection_security_policy: if self.mtls { "mutual_tls" } else { "none" },
        };
        let m = &self.proxy.metrics;
        m.istio_request_duration
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64() * 1000.0);
        m.istio_requests.get_or_create(&labels).inc();
        if self.conn.direction == Direction::Outbound && self.peer.is_some() {
            // A gRPC call fails in its status, whatever its HTTP one.
            let failed =
                status.is_server_error() || (self.grpc && grpc_status.is_some_and(|g| g != 0));
            m.edges
                .observe(&labels.destination_cluster, failed, self.start.elapsed());
        }
    }

    /// Answers the request locally (an error, a fault, a rate limit): plain
    /// text for HTTP clients, a trailers-only response for gRPC clients.
    pub(super) fn local_reply(self, err: &ProxyError) -> Response<RespBody> {
        // A caller's sidecar (over the mesh transport) may send a request
        // no application saw elsewhere: say so.
        let unprocessed = self.conn.direction == Direction::Inbound
            && self.conn.peer_id.is_some()
            && err.reached_no_application();
        let mut resp = self.local_reply_with(
            err.status(),
            err.grpc_status(),
            err.flag(),
            err.to_string(),
            err.kind(),
        );
        if unprocessed {
            resp.headers_mut().insert(
                isthmus_mesh::headers::UNPROCESSED_HEADER,
                HeaderValue::from_static(err.flag()),
            );
        }
        resp
    }

    pub(super) fn local_reply_with(
        self,
        status: StatusCode,
        grpc_status: u32,
        flag: &'static str,
        reason: String,
        kind: &str,
    ) -> Response<RespBody> {
        self.proxy.metrics.error(kind);
        let grpc = self.grpc;
        let mut resp = if grpc {
            let msg: String = reason
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            let mut r = Response::new(crate::proxy::body::empty());
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(grpc_status));
            if let Ok(v) = HeaderValue::from_str(&msg) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(crate::proxy::body::full(format!("{reason}\n")));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        if let Ok(v) = HeaderValue::from_str(flag) {
            resp.headers_mut().insert("x-isthmus-flags", v);
        }
        let (code, gs) = if grpc {
            (StatusCode::OK, Some(grpc_status))
        } else {
            (status, None)
        };
        let len = if grpc { 0 } else { reason.len() as u64 + 1 };
        self.finish(code, gs, len, flag, Some(reason));
        resp
    }
}
