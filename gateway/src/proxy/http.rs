//! The HTTP request path, one readable sequence: resolve the service
//! (Host or the connection's target) → trace context → route → rate limit
//! → fault injection → weighted split → mirror → attempts (pick endpoint,
//! circuit breakers, per-try timeout, outlier feedback, retry with backoff
//! within the budget) under the route timeout → response streamed back,
//! observed for metrics and the access log when it ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;

use super::body::{
    ObservedBody, ReqBody, RespBody, UpBody, grpc_status_of, read_all, read_whole,
    small_known_length,
};
use super::errors::{ProxyError, grpc_for_http, grpc_status_name};
use super::headers::{
    authority, frame_response, is_upgrade, shape_for_upstream, split_host_port, strip_hop_by_hop,
};
use super::service_state::{EndpointState, ServiceState};
use super::{ConnInfo, Proxy, Target};
use crate::balance::hash_str;
use crate::balance::outlier::Observation;
use crate::config::{HashKeySpec, PortSpec, Protocol, ServiceSpec, Snapshot};
use crate::jwt::Outcome as Authn;
use crate::policy::attempts::{Action, Attempts, Plan, Stop};
use crate::policy::fault::AbortStatus;
use crate::policy::retry::Outcome;
use crate::pool::h1::H1Body;
use crate::pool::{Lease, Sender, Version};
use crate::route::{self, RequestView, Route};
use crate::telemetry::accesslog::{Entry, rfc3339};
use crate::telemetry::metrics::{
    AuthnLabels, Direction, DurationLabels, Label, RequestLabels, RouteLabels, ServiceLabels,
};
use crate::telemetry::trace::TraceParent;
use tokio::io::AsyncWriteExt;

const TRACEPARENT: &str = "traceparent";
const REQUEST_ID: &str = "x-request-id";
/// The verified SPIFFE ID of the caller, set on inbound requests that came
/// over the mesh transport (removed from all others).
pub const PEER_IDENTITY: &str = "x-isthmus-peer-identity";

/// What the access log and metrics need, filled in as the request goes.
/// Kept as cheap clones; text is only formatted when a log line is written.
struct Record {
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    source: (Label, Label),
    start: Instant,
    start_wall: SystemTime,
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    authority: Option<String>,
    grpc: bool,
    trace: TraceParent,
    request_id: Option<HeaderValue>,
    service: Option<Arc<str>>,
    route: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    attempts: u32,
    /// Request body bytes, when the body was read whole (streamed bodies
    /// are not counted).
    bytes_received: u64,
    request_principal: Option<String>,
    /// The authorization rule that decided, when a policy applied.
    authz: Option<String>,
}

static UNKNOWN: LazyLock<Label> = LazyLock::new(|| "unknown".into());
static NO_ROUTE: LazyLock<Label> = LazyLock::new(|| "-".into());

impl Record {
    fn finish(
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

    /// Answers the request locally (an error, a fault, a rate limit): plain
    /// text for HTTP clients, a trailers-only response for gRPC clients.
    fn local_reply(self, err: &ProxyError) -> Response<RespBody> {
        self.local_reply_with(
            err.status(),
            err.grpc_status(),
            err.flag(),
            err.to_string(),
            err.kind(),
        )
    }

    fn local_reply_with(
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
            let mut r = Response::new(super::body::empty());
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
            let mut r = Response::new(super::body::full(format!("{reason}\n")));
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

/// Decrements outstanding-request counters when the response is done.
struct InFlight {
    endpoint: Arc<EndpointState>,
    state: Arc<ServiceState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A successful attempt: the upstream response and what must live until
/// its body ends (an HTTP/1.1 body holds its own connection; an HTTP/2
/// stream's lease is kept here).
struct Upstream {
    response: Response<UpBody>,
    lease: Option<Lease>,
    in_flight: InFlight,
}

/// Entry point for one request on a downstream connection.
pub async fn serve(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let snap = proxy.store.load();
    let incoming_tp = req
        .headers()
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let tp = TraceParent::next_hop(incoming_tp.as_deref(), &mut rand::rng());
    req.headers_mut().insert(TRACEPARENT, tp.header_value());
    if !req.headers().contains_key(REQUEST_ID) {
        let mut id = [0u8; 32];
        crate::telemetry::trace::hex(rand::rng().random::<u128>(), &mut id);
        req.headers_mut().insert(
            REQUEST_ID,
            HeaderValue::from_bytes(&id).expect("hex digits are valid header bytes"),
        );
    }
    let source = match (conn.direction, &conn.peer_id) {
        (Direction::Outbound, _) => (snap.node.name.clone(), snap.node.namespace.clone()),
        (Direction::Inbound, Some(id)) => (
            id.service_account()
                .map_or_else(|| UNKNOWN.clone(), Label::from),
            id.namespace().map_or_else(|| UNKNOWN.clone(), Label::from),
        ),
        (Direction::Inbound, None) => (UNKNOWN.clone(), UNKNOWN.clone()),
    };
    let rec = Record {
        proxy: proxy.clone(),
        conn: conn.clone(),
        source,
        start: Instant::now(),
        start_wall: SystemTime::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        authority: authority(&req),
        grpc: req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc")),
        trace: tp,
        request_id: req.headers().get(REQUEST_ID).cloned(),
        service: None,
        route: None,
        upstream: None,
        attempts: 0,
        bytes_received: 0,
        request_principal: None,
        authz: None,
    };
    Ok(handle(proxy, conn, snap, req, rec).await)
}

fn resolve(
    snap: &Snapshot,
    conn: &ConnInfo,
    authority: Option<&str>,
) -> Result<(Arc<ServiceSpec>, PortSpec), ProxyError> {
    match &conn.target {
        Target::Service { name, port } => {
            let s = snap
                .services
                .get(name)
                .ok_or_else(|| ProxyError::NoService(name.clone()))?;
            let p = *s.port(Some(*port)).ok_or_else(|| ProxyError::NoPort {
                service: name.clone(),
                port: port.to_string(),
            })?;
            Ok((s.clone(), p))
        }
        Target::Host => {
            let authority = authority.ok_or(ProxyError::NoHost)?;
            let (host, port) = split_host_port(authority);
            let s = snap
                .service_for_host(host)
                .ok_or_else(|| ProxyError::NoService(host.to_string()))?;
            let p = *s.port(port).ok_or_else(|| ProxyError::NoPort {
                service: s.name.to_string(),
                port: port.map_or_else(|| "(none given, and no port 80)".into(), |p| p.to_string()),
            })?;
            Ok((s.clone(), p))
        }
    }
}

/// Inbound request security: JWT authentication (401), then authorization
/// (403). A verified token's principal goes to the access log; the token
/// itself is passed on to the application.
fn admit_inbound(
    proxy: &Proxy,
    conn: &ConnInfo,
    snap: &Snapshot,
    req: &mut Request<Incoming>,
    port: u16,
    rec: &mut Record,
) -> Result<(), ProxyError> {
    let sec = &snap.security;
    if sec.jwt.is_empty() && sec.authz.is_empty() {
        return Ok(());
    }
    let path = req.uri().path().to_string();
    let claims = match sec
        .jwt
        .authenticate(&path, req.headers(), SystemTime::now())
    {
        Authn::NotRequired => None,
        Authn::Verified(c) => {
            rec.request_principal = Some(c.principal.clone());
            Some(c)
        }
        Authn::Rejected { policy, error } => {
            proxy
                .metrics
                .authn_failures
                .get_or_create(&AuthnLabels {
                    policy: policy.as_str().into(),
                    reason: jwt_reason(&error),
                })
                .inc();
            return Err(ProxyError::Unauthenticated {
                policy,
                reason: error.to_string(),
            });
        }
    };
    if sec.authz.is_empty() {
        return Ok(());
    }
    let source_cluster = super::source_cluster(proxy, snap, conn.peer_id.as_deref());
    let decision = sec.authz.decide(&crate::authz::Attributes {
        principal: conn.peer_id.as_deref(),
        source_cluster: source_cluster.as_deref(),
        port,
        http: Some(crate::authz::HttpAttrs {
            method: req.method().as_str(),
            path: &path,
            headers: req.headers(),
        }),
        jwt: claims.as_ref(),
    });
    super::count_decision(proxy, &decision, "HTTP");
    rec.authz = Some(decision.rule());
    if decision.allowed() {
        Ok(())
    } else {
        Err(ProxyError::Denied(decision.rule()))
    }
}

fn jwt_reason(e: &crate::jwt::JwtError) -> &'static str {
    use crate::jwt::JwtError as E;
    match e {
        E::Missing => "missing",
        E::Malformed => "malformed",
        E::Algorithm(_) => "algorithm",
        E::Issuer(_) => "issuer",
        E::UnknownKey { .. } => "unknown_key",
        E::Signature => "signature",
        E::Expired => "expired",
        E::NotYetValid => "not_yet_valid",
        E::Audience(_) => "audience",
    }
}

fn hash_key(spec: &ServiceSpec, req: &Request<Incoming>, peer: SocketAddr) -> Option<u64> {
    if spec.lb.policy != crate::balance::Policy::RingHash {
        return None;
    }
    match &spec.lb.hash_key {
        HashKeySpec::SourceIp => Some(hash_str(&peer.ip().to_string())),
        HashKeySpec::Header(h) => req
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(hash_str),
        HashKeySpec::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_str(v)),
    }
}

/// The protocol a service port is called in, whatever the client spoke (as
/// Istio does): HTTP/2 only where the Service says so (`HTTP2`, `GRPC`,
/// from `appProtocol` or the port name); plain `HTTP` is HTTP/1.1, which
/// every HTTP server speaks. An h2c client of an HTTP/1.1 service is
/// translated (`shape_for_upstream`, `frame_response`).
///
/// The local application behind an inbound port of protocol `HTTP` (an
/// unnamed workload port) is called in the version the request came in:
/// the caller's sidecar chose it from the Service's declared protocol.
pub(crate) fn upstream_version(
    protocol: Protocol,
    inbound: bool,
    came_in: http::Version,
) -> Version {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => Version::Http2,
        Protocol::Http if inbound && came_in == http::Version::HTTP_2 => Version::Http2,
        Protocol::Http | Protocol::Tcp => Version::Http1,
    }
}

async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    snap: Arc<Snapshot>,
    mut req: Request<Incoming>,
    mut rec: Record,
) -> Response<RespBody> {
    let (service, port) = match resolve(&snap, &conn, rec.authority.as_deref()) {
        Ok(x) => x,
        Err(e) => return rec.local_reply(&e),
    };
    rec.service = Some(service.name.clone());
    if conn.direction == Direction::Inbound {
        // The application learns the caller from us, never from the caller.
        let h = req.headers_mut();
        h.remove(PEER_IDENTITY);
        if let Some(id) = &conn.peer_id
            && let Ok(v) = HeaderValue::from_str(id.as_str())
        {
            h.insert(PEER_IDENTITY, v);
        }
        if let Err(e) = admit_inbound(&proxy, &conn, &snap, &mut req, port.port, &mut rec) {
            return rec.local_reply(&e);
        }
    }
    let view = RequestView {
        port: port.port,
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let route = route::select(&service.routes, &view).unwrap_or(&service.default_route);
    rec.route = Some(route.name.clone());
    if let Some(m) = &route.request_headers {
        m.apply(req.headers_mut());
    }
    let mut authority = rec
        .authority
        .clone()
        .unwrap_or_else(|| format!("{}:{}", service.name, port.port));
    if let Some(r) = &route.redirect {
        return redirect(r, route, &req, &authority, port.port, rec);
    }
    if let Some(rw) = &route.rewrite {
        match rewrite(rw, route, &mut req) {
            Ok(Some(host)) => authority = host,
            Ok(None) => {}
            Err(e) => return rec.local_reply(&ProxyError::Reset(e)),
        }
    }
    let home = proxy.services.get(&service);
    let rstate = home.route_state(route);
    if !rstate.admit(route, rec.start) {
        proxy
            .metrics
            .rate_limited
            .get_or_create(&RouteLabels {
                destination_service: service.name.clone(),
                route: route.name.clone(),
            })
            .inc();
        return rec.local_reply(&ProxyError::RateLimited);
    }
    if let Some(fault) = &route.fault {
        let d = {
            let mut rng = rand::rng();
            fault.decide(rng.random(), rng.random())
        };
        if let Some(delay) = d.delay {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = proxy.hard_stop.cancelled() => return rec.local_reply(&ProxyError::Draining),
            }
        }
        if let Some(abort) = d.abort {
            let (status, grpc) = match abort {
                AbortStatus::Http(s) => {
                    let s = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    (s, grpc_for_http(s))
                }
                AbortStatus::Grpc(g) => (StatusCode::OK, g),
            };
            return rec.local_reply_with(
                status,
                grpc,
                "FI",
                "fault injected".into(),
                "fault_injected",
            );
        }
    }
    let hash = hash_key(&service, &req, conn.peer);
    let backend = {
        let r: f64 = rand::rng().random();
        route::split(&route.backends, r).cloned()
    };
    let Some(backend) = backend else {
        return rec.local_reply(&ProxyError::NoBackend {
            route: route.name.to_string(),
            why: "every backend has weight 0".into(),
        });
    };
    let Some(bspec) = snap.services.get(&backend.service).cloned() else {
        return rec.local_reply(&ProxyError::NoBackend {
            route: route.name.to_string(),
            why: format!("service {} is not configured", backend.service),
        });
    };
    let bport = match backend.port {
        Some(p) => bspec.port(Some(p)),
        None => bspec.port(Some(port.port)).or_else(|| bspec.port(None)),
    };
    let Some(bport) = bport.copied() else {
        return rec.local_reply(&ProxyError::NoPort {
            service: bspec.name.to_string(),
            port: port.port.to_string(),
        });
    };
    let version = upstream_version(bport.protocol, bspec.inbound, req.version());
    // HTTP/2 has no Upgrade; an HTTP/2 service gets the request without it.
    if version == Version::Http1 && is_upgrade(&req) {
        return forward_upgrade(proxy, bspec, bport, authority, hash, req, rec).await;
    }

    let (parts, body) = req.into_parts();
    let head_request = parts.method == http::Method::HEAD;
    let (body, recording) = if small_known_length(&http_body::Body::size_hint(&body)) {
        match read_whole(body).await {
            Ok((b, r)) => {
                rec.bytes_received = http_body::Body::size_hint(&b).exact().unwrap_or(0);
                (b, Some(r))
            }
            Err(e) => return rec.local_reply(&ProxyError::DownstreamBody(e.to_string())),
        }
    } else {
        ReqBody::from_incoming(body, route.retry.is_some() || route.mirror.is_some())
    };
    if let Some(m) = &route.mirror
        && rand::rng().random::<f64>() * 100.0 < m.percentage
        && let Some(recording) = recording.clone()
    {
        let task = mirror(
            proxy.clone(),
            snap.clone(),
            m.clone(),
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
            authority.clone(),
            recording,
        );
        proxy.tracker.spawn(task);
    }

    let state = if Arc::ptr_eq(&bspec, &service) {
        home.clone()
    } else {
        proxy.services.get(&bspec)
    };
    if let Some(retry) = &route.retry {
        rstate.deposit(retry.budget, rec.start);
    }
    let attempts = attempts(
        &proxy,
        &state,
        &bspec,
        &bport,
        route,
        &rstate,
        parts,
        body,
        recording.as_ref(),
        &authority,
        version,
        hash,
        &mut rec,
        conn.direction,
    );
    let result = match route.timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::Timeout(t)),
        },
        None => attempts.await,
    };
    match result {
        Ok(up) => {
            let mut resp = respond(up, head_request, rec).await;
            if let Some(m) = &route.response_headers {
                m.apply(resp.headers_mut());
            }
            resp
        }
        Err(e) => rec.local_reply(&e),
    }
}

/// Answers a redirect route (Gateway API RequestRedirect): the Location
/// keeps what the route does not change.
fn redirect(
    r: &route::Redirect,
    route: &Route,
    req: &Request<Incoming>,
    authority: &str,
    port: u16,
    rec: Record,
) -> Response<RespBody> {
    let (host, asked_port) = split_host_port(authority);
    let path = req.uri().path();
    let location = route::redirect_location(
        r,
        "http",
        host,
        asked_port.or(Some(port)),
        path,
        req.uri().query(),
        route.matched_prefix(path),
    );
    let mut resp = Response::new(super::body::empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    rec.finish(r.status, None, 0, "-", None);
    resp
}

/// Rewrites the request for a URLRewrite route: its path (the query kept),
/// and its Host; the new authority when the host changed.
fn rewrite(
    rw: &route::Rewrite,
    route: &Route,
    req: &mut Request<Incoming>,
) -> Result<Option<String>, String> {
    if let Some(p) = &rw.path {
        let path = req.uri().path();
        let mut new = route::rewrite_path(path, route.matched_prefix(path), p);
        if let Some(q) = req.uri().query() {
            new.push('?');
            new.push_str(q);
        }
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            new.parse()
                .map_err(|e| format!("the rewritten path {new:?}: {e}"))?,
        );
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|e| e.to_string())?;
    }
    let Some(host) = &rw.hostname else {
        return Ok(None);
    };
    req.headers_mut().insert(header::HOST, host.clone());
    Ok(host.to_str().ok().map(str::to_string))
}

/// Forwards an upstream response. Its framing downstream comes from its
/// body, never from a length header copied from upstream (`frame_response`).
async fn respond(up: Upstream, head_request: bool, rec: Record) -> Response<RespBody> {
    let Upstream {
        response,
        lease,
        in_flight,
    } = up;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let size = http_body::Body::size_hint(&body);
    frame_response(&mut parts.headers, parts.status, &size, head_request);
    let status = parts.status;
    let header_grpc = grpc_status_of(&parts.headers);
    let (body, held) = if small_known_length(&size) {
        // Small body: read it whole, give the connection back at once, and
        // answer head and body in one write.
        let whole = match read_all(body).await {
            Ok((data, trailers)) => ReqBody::Replay {
                chunks: [data].into_iter().collect(),
                trailers,
            },
            Err(e) => {
                drop((lease, in_flight));
                return rec.local_reply(&ProxyError::Reset(format!("upstream body: {e}")));
            }
        };
        if let Some(lease) = lease {
            lease.release();
        }
        drop(in_flight);
        (whole.boxed_unsync(), None)
    } else {
        (body.boxed_unsync(), Some((lease, in_flight)))
    };
    let body = ObservedBody::new(body, move |end| {
        // A streamed body holds its connection until it ends; reuse it only
        // if it ended cleanly.
        if let Some((lease, in_flight)) = held {
            if let Some(lease) = lease
                && end.error.is_none()
            {
                lease.release();
            }
            drop(in_flight);
        }
        let flags = match &end.error {
            None => "-",
            Some(e) if e.starts_with("downstream") => "DC",
            Some(_) => "UR",
        };
        rec.finish(
            status,
            end.grpc_status.or(header_grpc),
            end.bytes,
            flags,
            end.error,
        );
    });
    Response::from_parts(parts, body.boxed_unsync())
}

#[allow(clippy::too_many_arguments)] // the request's whole context, passed once
async fn attempts(
    proxy: &Arc<Proxy>,
    state: &Arc<ServiceState>,
    spec: &Arc<ServiceSpec>,
    port: &PortSpec,
    route: &Route,
    rstate: &super::service_state::RouteState,
    mut parts: http::request::Parts,
    body: ReqBody,
    recording: Option<&super::body::Recording>,
    authority: &str,
    version: Version,
    hash: Option<u64>,
    rec: &mut Record,
    direction: Direction,
) -> Result<Upstream, ProxyError> {
    // The upstream head is shaped once; each attempt writes it as it is
    // (HTTP/1.1) or clones it (HTTP/2).
    parts.uri = shape_for_upstream(
        &parts.uri,
        &mut parts.headers,
        authority,
        version == Version::Http2,
        false,
    )
    .map_err(|e| ProxyError::Reset(format!("cannot build upstream request: {e}")))?;
    parts.version = match version {
        Version::Http1 => http::Version::HTTP_11,
        Version::Http2 => http::Version::HTTP_2,
    };
    let mut next_body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    let mut plan = Attempts::new(Plan::Http(route.retry.as_ref()));
    while let Some(body) = next_body.take() {
        let idx = {
            let mut rng = rand::rng();
            state.pick(spec, &tried, hash, &mut rng)
        };
        let Some(idx) = idx else {
            return Err(ProxyError::NoHealthy(spec.name.to_string()));
        };
        tried.push(idx);
        let addr = spec.endpoints[idx].addr(port);
        rec.upstream = Some(addr);
        rec.attempts += 1;
        if rec.attempts > 1 {
            parts
                .headers
                .insert("x-isthmus-attempt", HeaderValue::from(rec.attempts));
        }
        let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
        let once = attempt_once(state, spec, idx, addr, version, &parts, body);
        let result = match per_try {
            Some(t) => match tokio::time::timeout(t, once).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::PerTryTimeout(t)),
            },
            None => once.await,
        };
        let outcome = match &result {
            Ok(up) => Outcome::Response {
                status: up.response.status(),
                grpc_status: grpc_status_of(up.response.headers()),
            },
            Err(ProxyError::Connect(_)) => Outcome::ConnectFailure,
            Err(ProxyError::PerTryTimeout(_)) => Outcome::Timeout,
            Err(ProxyError::Reset(_)) => Outcome::Reset,
            // Shedding is not the endpoint's fault, nor worth a retry.
            Err(_) => return result,
        };
        let observation = match outcome {
            Outcome::Response { status, .. } => Observation::from_status(status.as_u16()),
            _ => Observation::GatewayError,
        };
        state.observe(spec, idx, observation, &proxy.metrics, direction);
        // A body too large to keep, or not yet fully sent, cannot be replayed.
        let mut replay = None;
        let action = plan.next(
            outcome,
            || {
                replay = recording.and_then(|r| r.replay());
                replay.is_some()
            },
            || rstate.withdraw(Instant::now()),
            || rand::rng().random(),
        );
        let labels = || RouteLabels {
            destination_service: spec.name.clone(),
            route: route.name.clone(),
        };
        match action {
            Action::Stop(Stop::BudgetExhausted) => {
                proxy
                    .metrics
                    .retry_budget_exhausted
                    .get_or_create(&labels())
                    .inc();
                return result;
            }
            Action::Stop(_) => return result,
            Action::Retry { backoff } => {
                proxy.metrics.retries.get_or_create(&labels()).inc();
                drop(result);
                tokio::time::sleep(backoff).await;
                next_body = replay;
            }
        }
    }
    Err(ProxyError::NoHealthy(spec.name.to_string()))
}

async fn attempt_once(
    state: &Arc<ServiceState>,
    spec: &Arc<ServiceSpec>,
    idx: usize,
    addr: SocketAddr,
    version: Version,
    head: &http::request::Parts,
    body: ReqBody,
) -> Result<Upstream, ProxyError> {
    let limit = spec.pool.max_requests;
    if state.active_requests.fetch_add(1, Ordering::AcqRel) >= limit {
        state.active_requests.fetch_sub(1, Ordering::AcqRel);
        state.sheds.inc();
        return Err(ProxyError::Overflow(crate::pool::PoolError::Overflow {
            what: "max requests",
            limit,
        }));
    }
    let endpoint = state.states(spec)[idx].clone();
    endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight {
        endpoint,
        state: state.clone(),
    };
    let mut lease = state
        .pool
        .acquire(addr, spec.endpoints[idx].tunnel.as_ref(), version)
        .await
        .map_err(|e| match e {
            e @ crate::pool::PoolError::Overflow { .. } => {
                state.sheds.inc();
                ProxyError::Overflow(e)
            }
            e => ProxyError::Connect(e),
        })?;
    match lease.sender() {
        Sender::H1(conn) => match conn.send(head, body).await {
            Ok(mut exchange) => Ok(Upstream {
                response: {
                    let response = std::mem::take(&mut exchange.head.response);
                    let body = if exchange.head.upgraded {
                        H1Body::upgraded(lease, exchange)
                    } else {
                        H1Body::new(lease, exchange)
                    };
                    response.map(|()| UpBody::H1(body))
                },
                lease: None,
                in_flight,
            }),
            // The client's body failing is not the endpoint's fault: no
            // retry, no outlier mark.
            Err(e) if e.is_downstream() => Err(ProxyError::DownstreamBody(e.to_string())),
            Err(e) => Err(ProxyError::Reset(e.to_string())),
        },
        Sender::H2(s) => match s.send_request(clone_request(head, body)).await {
            Ok(response) => Ok(Upstream {
                response: response.map(UpBody::H2),
                lease: Some(lease),
                in_flight,
            }),
            Err(e) => Err(ProxyError::Reset(e.to_string())),
        },
    }
}

/// An owned copy of a request head with `body`, for hyper's HTTP/2 client.
fn clone_request(head: &http::request::Parts, body: ReqBody) -> Request<ReqBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

/// HTTP/1.1 upgrade (WebSocket): forwarded once, then the two upgraded
/// connections are spliced together byte for byte.
async fn forward_upgrade(
    proxy: Arc<Proxy>,
    spec: Arc<ServiceSpec>,
    port: PortSpec,
    authority: String,
    hash: Option<u64>,
    mut req: Request<Incoming>,
    mut rec: Record,
) -> Response<RespBody> {
    let downstream = hyper::upgrade::on(&mut req);
    let state = proxy.services.get(&spec);
    let idx = {
        let mut rng = rand::rng();
        state.pick(&spec, &[], hash, &mut rng)
    };
    let Some(idx) = idx else {
        return rec.local_reply(&ProxyError::NoHealthy(spec.name.to_string()));
    };
    let addr = spec.endpoints[idx].addr(&port);
    rec.upstream = Some(addr);
    rec.attempts = 1;
    let (mut parts, body) = req.into_parts();
    let uri = match shape_for_upstream(&parts.uri, &mut parts.headers, &authority, false, true) {
        Ok(u) => u,
        Err(e) => return rec.local_reply(&ProxyError::Reset(e.to_string())),
    };
    parts.uri = uri;
    let (body, _) = ReqBody::from_incoming(body, false);
    let up = match attempt_once(&state, &spec, idx, addr, Version::Http1, &parts, body).await {
        Ok(up) => up,
        Err(e) => return rec.local_reply(&e),
    };
    if up.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return respond(up, false, rec).await;
    }
    let Upstream {
        response,
        in_flight,
        ..
    } = up;
    let (parts, body) = response.into_parts();
    let upstream = match body {
        UpBody::H1(b) => b.into_conn(),
        UpBody::H2(_) => None,
    };
    let hard_stop = proxy.hard_stop.clone();
    proxy.tracker.spawn(async move {
        let _keep = in_flight;
        let (Ok(d), Some(u)) = (downstream.await, upstream) else {
            rec.finish(
                StatusCode::SWITCHING_PROTOCOLS,
                None,
                0,
                "UR",
                Some("upgrade failed".into()),
            );
            return;
        };
        // Bytes the upstream sent right after its 101 go first.
        let (mut u, early, _guard) = u.into_parts();
        let mut d = TokioIo::new(d);
        let splice = async {
            d.write_all(&early).await?;
            let (_, to_client) = tokio::io::copy_bidirectional(&mut d, &mut u).await?;
            Ok::<_, std::io::Error>(to_client + early.len() as u64)
        };
        let copied = tokio::select! {
            r = splice => r.ok(),
            _ = hard_stop.cancelled() => None,
        };
        let sent = copied.unwrap_or(0);
        rec.finish(StatusCode::SWITCHING_PROTOCOLS, None, sent, "-", None);
    });
    Response::from_parts(parts, super::body::empty())
}

/// Sends a copy of the request to the mirror service once the original
/// body has been read; the response is drained and discarded. Runs on its
/// own task, so it never delays the original request.
#[allow(clippy::too_many_arguments)] // a detached copy of the request's context
async fn mirror(
    proxy: Arc<Proxy>,
    snap: Arc<Snapshot>,
    m: route::MirrorSettings,
    method: http::Method,
    uri: http::Uri,
    mut headers: http::HeaderMap,
    authority: String,
    recording: super::body::Recording,
) {
    let result: Result<(), String> = async {
        let body = tokio::time::timeout(Duration::from_secs(30), recording.replay_when_complete())
            .await
            .ok()
            .flatten()
            .ok_or("request body not replayable")?;
        let spec = snap
            .services
            .get(&m.service)
            .ok_or("mirror service not configured")?
            .clone();
        let port = *m
            .port
            .and_then(|p| spec.port(Some(p)))
            .or_else(|| spec.port(None))
            .ok_or("mirror service has no matching port")?;
        let state = proxy.services.get(&spec);
        let idx = {
            let mut rng = rand::rng();
            state.pick(&spec, &[], None, &mut rng)
        }
        .ok_or("no mirror endpoint")?;
        let addr = spec.endpoints[idx].addr(&port);
        let (host, p) = split_host_port(&authority);
        let shadow = match p {
            Some(p) => format!("{host}-shadow:{p}"),
            None => format!("{host}-shadow"),
        };
        headers.remove(header::HOST);
        let version = upstream_version(port.protocol, spec.inbound, http::Version::HTTP_11);
        let uri = shape_for_upstream(
            &uri,
            &mut headers,
            &shadow,
            version == Version::Http2,
            false,
        )
        .map_err(|e| e.to_string())?;
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = method;
        head.uri = uri;
        head.headers = headers;
        if version == Version::Http2 {
            head.version = http::Version::HTTP_2;
        }
        let once = attempt_once(&state, &spec, idx, addr, version, &head, body);
        let up = tokio::time::timeout(Duration::from_secs(30), once)
            .await
            .map_err(|_| "mirror timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let Upstream {
            response,
            lease,
            in_flight,
        } = up;
        let drained = response.into_body().collect().await.is_ok();
        drop(in_flight);
        if let Some(lease) = lease
            && drained
        {
            lease.release();
        }
        Ok(())
    }
    .await;
    let labels = ServiceLabels {
        direction: Direction::Outbound,
        destination_service: m.service.as_str().into(),
    };
    proxy.metrics.mirrored.get_or_create(&labels).inc();
    if let Err(e) = result {
        tracing::debug!(service = %m.service, "mirror request failed: {e}");
        proxy.metrics.error("mirror_failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_protocol_picks_the_upstream_version() {
        use http::Version as V;
        let cases = [
            // (protocol, inbound, came in) → upstream
            (Protocol::Http, false, V::HTTP_11, Version::Http1),
            (Protocol::Http, false, V::HTTP_2, Version::Http1),
            (Protocol::Http2, false, V::HTTP_11, Version::Http2),
            (Protocol::Grpc, false, V::HTTP_11, Version::Http2),
            (Protocol::Http, true, V::HTTP_11, Version::Http1),
            (Protocol::Http, true, V::HTTP_2, Version::Http2),
            (Protocol::Http2, true, V::HTTP_11, Version::Http2),
            (Protocol::Grpc, true, V::HTTP_2, Version::Http2),
            (Protocol::Tcp, false, V::HTTP_2, Version::Http1),
        ];
        for (protocol, inbound, came_in, want) in cases {
            assert_eq!(
                upstream_version(protocol, inbound, came_in),
                want,
                "{protocol:?} inbound={inbound} {came_in:?}"
            );
        }
    }
}
