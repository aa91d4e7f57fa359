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
use crate::config::{HashKeySpec, LbSpec, PortSpec, Protocol, ServiceSpec, Snapshot};
use crate::jwt::Outcome as Authn;
use crate::policy::attempts::{Action, Ask, Attempts, Plan, Stop};
use crate::policy::fault::AbortStatus;
use crate::policy::retry::Outcome;
use crate::pool::h1::H1Body;
use crate::pool::{Lease, Sender, Version};
use crate::route::{self, RequestView, Route};
use crate::telemetry::accesslog::{Entry, rfc3339};
use crate::telemetry::metrics::{
    AuthnLabels, Direction, DurationLabels, IstioLabels, Label, RequestLabels, RouteLabels,
    ServiceLabels, Workload,
};
use crate::telemetry::trace::TraceParent;
use tokio::io::AsyncWriteExt;

mod admission;
mod attempts;
mod mirror;
mod record;
mod upgrade;

use admission::admit_inbound;
use attempts::{Upstream, attempt_once, attempts};
use mirror::mirror;
use record::{Record, UNKNOWN};
use upgrade::forward_upgrade;

const TRACEPARENT: &str = "traceparent";
const REQUEST_ID: &str = "x-request-id";
/// The verified SPIFFE ID of the caller, set on inbound requests that came
/// over the mesh transport (removed from all others).
pub const PEER_IDENTITY: &str = "x-isthmus-peer-identity";

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
    let tp = TraceParent::next_hop(
        incoming_tp.as_deref(),
        proxy.tracing().rate,
        &mut rand::rng(),
    );
    let parent_span = incoming_tp
        .as_deref()
        .and_then(TraceParent::parse)
        .map(|p| p.parent_id);
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
        parent_span,
        request_id: req.headers().get(REQUEST_ID).cloned(),
        service: None,
        route: None,
        upstream: None,
        attempts: 0,
        bytes_received: 0,
        request_principal: None,
        authz: None,
        peer: match (conn.direction, &conn.peer_id) {
            (Direction::Inbound, Some(id)) => {
                let cluster = crate::proxy::source_cluster(&proxy, &snap, Some(id))
                    .unwrap_or_else(|| UNKNOWN.clone());
                Some(Arc::new(Workload::of_spiffe(id.as_str(), cluster)))
            }
            _ => None,
        },
        mtls: conn.peer_id.is_some(),
        via_gateway: false,
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

/// The ring-hash key of a request: the source IP, a header or a cookie,
/// as the service's load balancer says (none for other policies, or when
/// the request lacks it).
fn hash_key(lb: &LbSpec, headers: &http::HeaderMap, peer: SocketAddr) -> Option<u64> {
    if lb.policy != crate::balance::Policy::RingHash {
        return None;
    }
    match &lb.hash_key {
        HashKeySpec::SourceIp => Some(hash_str(&peer.ip().to_string())),
        HashKeySpec::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).map(hash_str),
        HashKeySpec::Cookie(name) => headers
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
    let hash = hash_key(&service.lb, req.headers(), conn.peer);
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
        // Kept (up to REPLAY_CAP) for retries, mirrors, and moves (any
        // request that reached no application is sent elsewhere).
        ReqBody::from_incoming(body, true)
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
    rstate.deposit(route.retry.as_ref().map(|r| r.budget), rec.start);
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
    // Said by a sidecar to the sidecar that called it, never by an
    // application, and never passed on.
    parts
        .headers
        .remove(isthmus_mesh::headers::UNPROCESSED_HEADER);
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

    #[test]
    fn ring_hash_keys_come_from_the_source_ip_a_header_or_a_cookie() {
        use crate::balance::Policy;
        let lb = |policy, hash_key| LbSpec {
            policy,
            hash_key,
            overprovisioning: 1.4,
        };
        let peer: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; session=s42"));
        let header_key = HashKeySpec::Header(http::HeaderName::from_static("x-user"));
        let cases = [
            (
                lb(Policy::RingHash, HashKeySpec::SourceIp),
                Some(hash_str("10.0.0.7")),
            ),
            (
                lb(Policy::RingHash, header_key.clone()),
                Some(hash_str("alice")),
            ),
            (
                lb(Policy::RingHash, HashKeySpec::Cookie("session".into())),
                Some(hash_str("s42")),
            ),
            (
                lb(Policy::RingHash, HashKeySpec::Cookie("none".into())),
                None,
            ),
            (
                lb(
                    Policy::RingHash,
                    HashKeySpec::Header(http::HeaderName::from_static("x-absent")),
                ),
                None,
            ),
            (lb(Policy::RoundRobin, header_key), None),
        ];
        for (lb, want) in cases {
            assert_eq!(hash_key(&lb, &headers, peer), want, "{:?}", lb.hash_key);
        }
    }
}
