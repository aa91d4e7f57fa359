//! `/explain` on the admin port: what this proxy would do with a request
//! now, step by step, each step naming what decided it (`isthmusctl
//! explain` puts it together with the control plane's view). Outbound:
//! the service the host names, each route matched or why not, the split,
//! every endpoint's locality priority, health, outlier state, peer
//! liveness and in-flight requests, and the endpoint a request would go to
//! now. Inbound (`inbound=PORT&source=SPIFFE`): the mTLS mode, the JWT
//! requirement and the authorization decision for that caller.
//!
//! Read-only: it runs the same route, split and balancing functions as the
//! request path over the live state, and changes nothing (no counter, no
//! rate-limit token, no round-robin turn).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use isthmus_api::explain::{
    BackendStep, ChosenRoute, EndpointStep, Inbound, Outbound, RouteStep, ServiceStep,
};
use isthmus_mesh::SpiffeId;

use crate::balance::{self, EndpointView, PickInput};
use crate::config::{PortSpec, Protocol, ServiceSpec, Snapshot};
use crate::proxy::service_state::ServiceStates;
use crate::route::{
    HeaderValueMatch, PathMatch, QueryValueMatch, RequestView, Route, RouteMatch, query_param,
};

/// Why a question could not be asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AskError {
    #[error(
        "say which request: /explain?url=http://host[:port]/path[&method=GET][&header=name:value]..."
    )]
    NoUrl,
    #[error("url {0:?} is not an absolute http URL (http://host[:port]/path)")]
    BadUrl(String),
    #[error("method {0:?} is not an HTTP method")]
    BadMethod(String),
    #[error("header {0:?} is not `name:value` with a valid name and value")]
    BadHeader(String),
    #[error("inbound={0:?} is not a port")]
    BadPort(String),
    #[error("source={0:?} is not a SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>)")]
    BadSource(String),
}

/// The request asked about.
#[derive(Debug)]
pub struct Ask {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// Set: explain the inbound side of this app port.
    pub inbound: Option<u16>,
    /// The caller, for the inbound side.
    pub source: Option<SpiffeId>,
}

impl Ask {
    /// Reads `/explain`'s query: `url`, `method`, repeated `header`
    /// (`name:value`), `inbound` (a port) and `source` (a SPIFFE ID), each
    /// form-encoded.
    pub fn parse(query: &str) -> Result<Self, AskError> {
        let mut url = None;
        let mut method = Method::GET;
        let mut headers = HeaderMap::new();
        let mut inbound = None;
        let mut source = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "url" => url = Some(v.into_owned()),
                "method" => {
                    method = Method::from_bytes(v.as_bytes())
                        .map_err(|_| AskError::BadMethod(v.to_string()))?
                }
                "header" => {
                    let (name, value) = v
                        .split_once(':')
                        .ok_or_else(|| AskError::BadHeader(v.to_string()))?;
                    let name = HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| AskError::BadHeader(v.to_string()))?;
                    let value = HeaderValue::from_str(value.trim())
                        .map_err(|_| AskError::BadHeader(v.to_string()))?;
                    headers.append(name, value);
                }
                "inbound" => {
                    inbound = Some(
                        v.parse::<u16>()
                            .map_err(|_| AskError::BadPort(v.to_string()))?,
                    )
                }
                "source" if !v.is_empty() => {
                    source =
                        Some(SpiffeId::parse(&v).map_err(|_| AskError::BadSource(v.to_string()))?)
                }
                _ => {}
            }
        }
        let url = url.ok_or(AskError::NoUrl)?;
        let uri: Uri = url.parse().map_err(|_| AskError::BadUrl(url.clone()))?;
        if uri.host().is_none() {
            return Err(AskError::BadUrl(url));
        }
        Ok(Self {
            method,
            uri,
            headers,
            inbound,
            source,
        })
    }

    fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tcp => "TCP",
    }
}

/// The service and port a request for `ask` resolves to, as the request
/// path does: by name, else by virtual address.
fn resolve<'s>(
    snap: &'s Snapshot,
    ask: &Ask,
) -> Result<(&'s Arc<ServiceSpec>, PortSpec, &'static str), String> {
    let port = ask.uri.port_u16();
    let (service, by) = match snap.service_for_host(ask.host()) {
        Some(s) => (s, "host"),
        None => {
            let vip = ask
                .host()
                .parse::<std::net::IpAddr>()
                .ok()
                .and_then(|ip| snap.service_for_vip(SocketAddr::new(ip, port.unwrap_or(80))));
            match vip {
                Some(s) => (s, "vip"),
                None => {
                    return Err(format!(
                        "no service named {:?} in this proxy's configuration: not a service, \
                         not exported to this cluster, or not in this proxy's namespace's view \
                         (isthmus.dev/calls)",
                        ask.host()
                    ));
                }
            }
        }
    };
    let p = service.port(port).copied().ok_or_else(|| {
        format!(
            "service {} has no port {}",
            service.name,
            port.map_or_else(|| "80 (none given)".to_string(), |p| p.to_string())
        )
    })?;
    Ok((service, p, by))
}

/// Why one match of a route does not take the request (None: it does).
pub fn why_not(m: &RouteMatch, req: &RequestView<'_>) -> Option<String> {
    if let Some(want) = &m.method
        && want != req.method
    {
        return Some(format!("method {} is not {want}", req.method));
    }
    if let Some(p) = &m.path
        && !p.matches(req.path)
    {
        let want = match p {
            PathMatch::Exact(x) => format!("exactly {x}"),
            PathMatch::Prefix(x) => format!("under the prefix {x}"),
            PathMatch::Regex(r) => format!("matching /{}/", r.as_str()),
        };
        return Some(format!("path {} is not {want}", req.path));
    }
    for h in &m.headers {
        if h.matches(req.headers) {
            continue;
        }
        let got = req
            .headers
            .get(&h.name)
            .map_or_else(|| "absent".to_string(), |v| format!("{v:?}"));
        let want = match &h.value {
            HeaderValueMatch::Exact(v) => format!("{v:?}"),
            HeaderValueMatch::Regex(r) => format!("matching /{}/", r.as_str()),
            HeaderValueMatch::Present(true) => "present".into(),
            HeaderValueMatch::Present(false) => "absent".into(),
        };
        let not = if h.invert { "not " } else { "" };
        return Some(format!("header {} is {got}, wanted {not}{want}", h.name));
    }
    for q in &m.query {
        if q.matches(req.query) {
            continue;
        }
        let got = req
            .query
            .and_then(|s| query_param(s, &q.name))
            .map_or_else(|| "absent".to_string(), |v| format!("{v:?}"));
        let want = match &q.value {
            QueryValueMatch::Exact(v) => format!("{v:?}"),
            QueryValueMatch::Regex(r) => format!("matching /{}/", r.as_str()),
        };
        return Some(format!(
            "query parameter {} is {got}, wanted {want}",
            q.name
        ));
    }
    None
}

/// A route's verdict on the request: matched (and by what) or why not.
pub fn route_step(route: &Route, req: &RequestView<'_>) -> RouteStep {
    let name = route.name.to_string();
    if !route.ports.is_empty() && !route.ports.contains(&req.port) {
        return RouteStep {
            name,
            matched: false,
            why: vec![format!(
                "it applies to port{} {:?}, the request is for {}",
                if route.ports.len() == 1 { "" } else { "s" },
                route.ports,
                req.port
            )],
        };
    }
    if route.matches.is_empty() {
        return RouteStep {
            name,
            matched: true,
            why: vec!["it matches every request".into()],
        };
    }
    let mut why = Vec::new();
    for (i, m) in route.matches.iter().enumerate() {
        match why_not(m, req) {
            None => {
                return RouteStep {
                    name,
                    matched: true,
                    why: vec![format!("match {} holds: {}", i + 1, describe(m))],
                };
            }
            Some(w) => why.push(format!("match {}: {w}", i + 1)),
        }
    }
    RouteStep {
        name,
        matched: false,
        why,
    }
}

/// A match's conditions in words.
fn describe(m: &RouteMatch) -> String {
    let mut parts = Vec::new();
    if let Some(x) = &m.method {
        parts.push(format!("method {x}"));
    }
    match &m.path {
        Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
        Some(PathMatch::Prefix(p)) => parts.push(format!("path under {p}")),
        Some(PathMatch::Regex(r)) => parts.push(format!("path ~ /{}/", r.as_str())),
        None => {}
    }
    for h in &m.headers {
        let not = if h.invert { "!" } else { "" };
        parts.push(match &h.value {
            HeaderValueMatch::Exact(v) => format!("{}{not}={v:?}", h.name),
            HeaderValueMatch::Regex(r) => format!("{}{not}~/{}/", h.name, r.as_str()),
            HeaderValueMatch::Present(p) => {
                format!("{} {}", h.name, if *p { "present" } else { "absent" })
            }
        });
    }
    for q in &m.query {
        parts.push(match &q.value {
            QueryValueMatch::Exact(v) => format!("?{}={v:?}", q.name),
            QueryValueMatch::Regex(r) => format!("?{}~/{}/", q.name, r.as_str()),
        });
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(", ")
    }
}

/// The share of a service's requests each locality priority takes, as
/// `balance::pick` decides it: healthy shares with spill-over, or, when
/// nothing is available anywhere, health ignored (panic mode).
pub fn priority_shares(eps: &[EndpointView], overprovisioning: f64) -> Vec<f64> {
    let levels = eps.iter().map(|e| e.priority + 1).max().unwrap_or(0);
    let mut counts = vec![(0usize, 0usize); levels];
    for e in eps.iter().filter(|e| e.weight > 0) {
        counts[e.priority].1 += 1;
        if e.available {
            counts[e.priority].0 += 1;
        }
    }
    let loads = balance::locality::priority_loads(&counts, overprovisioning);
    if loads.iter().any(|l| *l > 0.0) {
        return loads;
    }
    let all: Vec<(usize, usize)> = counts.iter().map(|c| (c.1, c.1)).collect();
    balance::locality::priority_loads(&all, overprovisioning)
}

/// Outbound: what this proxy would do with `ask` now.
pub fn outbound(snap: &Snapshot, states: &ServiceStates, ask: &Ask) -> Outbound {
    let mut out = Outbound {
        proxy: format!("{}/{}", snap.node.namespace, snap.node.name),
        cluster: snap.node.cluster.clone(),
        version: snap.version.clone(),
        method: ask.method.to_string(),
        url: ask.uri.to_string(),
        ..Default::default()
    };
    let (service, port, by) = match resolve(snap, ask) {
        Ok(x) => x,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let (hosts, vips) = snap.names_of(&service.name);
    out.service = Some(ServiceStep {
        name: service.name.to_string(),
        port: port.port,
        protocol: protocol_name(port.protocol).into(),
        resolved_by: by.into(),
        vips: vips.iter().map(ToString::to_string).collect(),
        hosts,
    });
    let view = RequestView {
        port: port.port,
        method: &ask.method,
        path: ask.uri.path(),
        query: ask.uri.query(),
        headers: &ask.headers,
    };
    out.routes = service
        .routes
        .iter()
        .map(|r| route_step(r, &view))
        .collect();
    let (route, default) = match crate::route::select(&service.routes, &view) {
        Some(r) => (r, false),
        None => (&service.default_route, true),
    };
    let total: u64 = route.backends.iter().map(|b| u64::from(b.weight)).sum();
    let backends = route
        .backends
        .iter()
        .map(|b| {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(b.weight) / total as f64
            };
            let mut step = BackendStep {
                service: b.service.clone(),
                weight: b.weight,
                share,
                ..Default::default()
            };
            if let Some(spec) = snap.services.get(&b.service) {
                let bport = spec
                    .port(b.port.or(Some(port.port)))
                    .copied()
                    .unwrap_or(port);
                fill_backend(&mut step, spec, &bport, states);
            }
            step
        })
        .collect();
    out.route = Some(ChosenRoute {
        name: route.name.to_string(),
        default,
        timeout: route.timeout.map(|t| format!("{t:?}")),
        retries: route.retry.as_ref().map(|r| {
            format!(
                "{} retr{} on {:?}{}",
                r.attempts,
                if r.attempts == 1 { "y" } else { "ies" },
                r.retry_on,
                r.per_try_timeout
                    .map(|t| format!(", {t:?} per try"))
                    .unwrap_or_default()
            )
        }),
        fault: route.fault.as_ref().map(|f| format!("{f:?}")),
        redirect: route
            .redirect
            .as_ref()
            .map(|r| format!("{} to {:?}{:?}", r.status, r.hostname, r.path)),
        backends,
    });
    out
}

fn fill_backend(
    step: &mut BackendStep,
    spec: &Arc<ServiceSpec>,
    port: &PortSpec,
    states: &ServiceStates,
) {
    step.known = true;
    step.policy = format!("{:?}", spec.lb.policy);
    let live = states.get(spec).live(spec);
    let views: Vec<EndpointView> = live.iter().map(|l| l.view).collect();
    step.priority_shares = priority_shares(&views, spec.lb.overprovisioning);
    step.endpoints = spec
        .endpoints
        .iter()
        .zip(&live)
        .map(|(e, l)| {
            let via = e.tunnel.as_ref().and_then(|t| t.via.as_ref());
            EndpointStep {
                address: e.addr(port).to_string(),
                cluster: via.map_or_else(String::new, |v| v.cluster.to_string()),
                locality: format!("{}/{}", e.locality.region, e.locality.zone),
                priority: l.view.priority,
                weight: e.weight,
                healthy: e.healthy,
                ejected: l.ejected,
                cluster_down: l.cluster_down,
                in_flight: l.view.in_flight,
                available: l.view.available,
                via: via.map(|v| v.service.to_string()),
            }
        })
        .collect();
    // The choice now, with the request path's function (one draw; no
    // round-robin turn taken).
    let mut rng = rand::rng();
    step.chosen_index = balance::pick(
        &PickInput {
            endpoints: &views,
            exclude: &[],
            policy: spec.lb.policy,
            overprovisioning: spec.lb.overprovisioning,
            hash: None,
            ring: spec.ring.as_ref(),
            rr_counter: 0,
        },
        &mut rng,
    );
    step.chosen = step
        .chosen_index
        .and_then(|i| step.endpoints.get(i))
        .map(|e| e.address.clone());
}

/// Inbound: what this proxy's admission would make of `ask` on app port
/// `port` from `source` (`source_cluster`: the cluster its trust domain
/// belongs to).
pub fn inbound(
    snap: &Snapshot,
    ask: &Ask,
    port: u16,
    source_cluster: Option<&str>,
    now: SystemTime,
) -> Inbound {
    let sec = &snap.security;
    let mut out = Inbound {
        proxy: format!("{}/{}", snap.node.namespace, snap.node.name),
        cluster: snap.node.cluster.clone(),
        port,
        source: ask.source.as_ref().map(ToString::to_string),
        mtls_mode: format!("{:?}", sec.mode).to_uppercase(),
        mtls_mode_from: sec.mode_source.clone(),
        ..Default::default()
    };
    let path = ask.uri.path();
    let claims = match sec.jwt.authenticate(path, &ask.headers, now) {
        crate::jwt::Outcome::NotRequired => {
            out.authentication = "not required (no RequestAuthentication covers it)".into();
            None
        }
        crate::jwt::Outcome::Verified(c) => {
            out.authentication = format!("verified {}", c.principal);
            Some(c)
        }
        crate::jwt::Outcome::Rejected { policy, error } => {
            out.authentication = format!("refused by {policy}: {error}");
            out.decision = "deny".into();
            out.rule = policy;
            out.status = 401;
            return out;
        }
    };
    let decision = sec.authz.decide(&crate::authz::Attributes {
        principal: ask.source.as_ref(),
        source_cluster,
        port,
        http: Some(crate::authz::HttpAttrs {
            method: ask.method.as_str(),
            path,
            headers: &ask.headers,
        }),
        jwt: claims.as_ref(),
    });
    out.decision = if decision.allowed() { "allow" } else { "deny" }.into();
    out.rule = decision.rule();
    out.status = if decision.allowed() { 200 } else { 403 };
    out
}

#[cfg(test)]
mod tests;
