//! HTTPRoutes and GRPCRoutes attached to Services (GAMMA) → each service's
//! route table, then DestinationPolicy's default timeout and retries on the
//! routes that set none.
//!
//! Gateway API evaluates matches across all rules of all routes attached to
//! a service by precedence, not by position: an exact path beats the
//! longest prefix, which beats a method match, which beats more header
//! matches; ties go to the oldest route, then by name, then rule order. The
//! sidecar takes the first matching route, so every (rule, match) becomes
//! one model route and the table is sorted by that precedence here.
//!
//! What the sidecar would refuse is not passed on: a backend that does not
//! exist (or lacks the port) is dropped and reported (ResolvedRefs); a rule
//! left with nothing to forward to answers 500, as the Gateway API asks.

use std::cmp::Reverse;

use isthmus_api::model;

use super::services::{Catalog, service_name};
use super::{Problem, proto_duration};
use crate::resources::gateway_api::{
    BackendRef, GRPCRoute, GrpcRouteMatch, HTTPRoute, HttpPathModifier, HttpRouteFilter,
    HttpRouteMatch, ParentReference, Retry, Timeouts,
};
use crate::store::{ObjectKey, Resource, Snapshot};

mod unsupported;
use unsupported::{unsupported_grpc, unsupported_http};

/// A route of either kind, as far as translation cares.
struct AnyRoute<'a> {
    kind: &'static str,
    key: &'a ObjectKey,
    created: Option<k8s_openapi::jiff::Timestamp>,
    parents: &'a [ParentReference],
    rules: Vec<Rule<'a>>,
}

/// One rule: its matches (None = match everything) with their precedence.
struct Rule<'a> {
    name: Option<&'a str>,
    /// Fields and values this rule uses that Isthmus cannot honour: the
    /// rule is left out (never widened) and the route says so.
    unsupported: Vec<String>,
    matches: Vec<(Precedence, model::RouteMatch)>,
    backend_refs: &'a [BackendRef],
    filters: &'a [HttpRouteFilter],
    timeouts: Option<&'a Timeouts>,
    retry: Option<&'a Retry>,
}

/// A rule's matches, translated; a rule without any matches everything.
fn or_catch_all<M>(
    matches: &[M],
    translate: impl Fn(&M) -> (Precedence, model::RouteMatch),
) -> Vec<(Precedence, model::RouteMatch)> {
    if matches.is_empty() {
        vec![(Precedence::of(None), model::RouteMatch::default())]
    } else {
        matches.iter().map(translate).collect()
    }
}

fn http_route<'a>(key: &'a ObjectKey, h: &'a HTTPRoute) -> AnyRoute<'a> {
    AnyRoute {
        kind: "HTTPRoute",
        key,
        created: h.metadata.creation_timestamp.clone().map(|t| t.0),
        parents: &h.spec.parent_refs,
        rules: h
            .spec
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.as_deref(),
                unsupported: unsupported_http(r),
                matches: or_catch_all(&r.matches, |m| {
                    (Precedence::of(Some(m)), translate_match(m))
                }),
                backend_refs: &r.backend_refs,
                filters: &r.filters,
                timeouts: r.timeouts.as_ref(),
                retry: r.retry.as_ref(),
            })
            .collect(),
    }
}

fn grpc_route<'a>(key: &'a ObjectKey, g: &'a GRPCRoute) -> AnyRoute<'a> {
    AnyRoute {
        kind: "GRPCRoute",
        key,
        created: g.metadata.creation_timestamp.clone().map(|t| t.0),
        parents: &g.spec.parent_refs,
        rules: g
            .spec
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.as_deref(),
                unsupported: unsupported_grpc(r),
                matches: or_catch_all(&r.matches, grpc_match),
                backend_refs: &r.backend_refs,
                filters: &r.filters,
                timeouts: None,
                retry: None,
            })
            .collect(),
    }
}

/// A gRPC method match as a path match: `/<service>/<method>`.
fn grpc_match(m: &GrpcRouteMatch) -> (Precedence, model::RouteMatch) {
    use model::path_match::Kind;
    let method = m.method.as_ref();
    let regex = method.is_some_and(|x| x.match_type.as_deref() == Some("RegularExpression"));
    let service = method.and_then(|x| x.service.as_deref());
    let name = method.and_then(|x| x.method.as_deref());
    let (kind, exact, prefix_len) = match (regex, service, name) {
        (false, Some(s), Some(n)) => (Some(Kind::Exact(format!("/{s}/{n}"))), true, 0),
        (false, Some(s), None) => (Some(Kind::Prefix(format!("/{s}"))), false, s.len() + 1),
        (false, None, Some(n)) => (
            Some(Kind::Regex(format!("/[^/]+/{}", regex_escape(n)))),
            false,
            0,
        ),
        (true, s, n) => (
            Some(Kind::Regex(format!(
                "/{}/{}",
                s.unwrap_or("[^/]+"),
                n.unwrap_or("[^/]+")
            ))),
            false,
            0,
        ),
        (false, None, None) => (None, false, 1),
    };
    let http = HttpRouteMatch {
        headers: m.headers.clone(),
        ..Default::default()
    };
    let mut out = translate_match(&http);
    out.path = kind.map(|k| model::PathMatch { kind: Some(k) });
    let precedence = Precedence {
        not_exact: !exact,
        prefix_len: Reverse(prefix_len),
        no_method: true,
        headers: Reverse(m.headers.len()),
        query: Reverse(0),
    };
    (precedence, out)
}

/// Whether a `route_kind` in namespace `from` may refer to `(group, kind,
/// name)` in namespace `to`: the same namespace, or a ReferenceGrant in
/// `to` that lets it.
fn granted(
    snap: &Snapshot,
    route_kind: &str,
    from: &str,
    (group, kind, name): (&str, &str, &str),
    to: &str,
) -> bool {
    from == to
        || snap.of_kind("ReferenceGrant").any(|(k, r)| {
            let Resource::ReferenceGrant(g) = r else {
                return false;
            };
            k.namespace.as_deref() == Some(to)
                && g.spec.from.iter().any(|f| {
                    f.group == "gateway.networking.k8s.io"
                        && f.kind == route_kind
                        && f.namespace == from
                })
                && g.spec.to.iter().any(|t| {
                    t.group == group
                        && t.kind == kind
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
}

/// Whether a route replaces the prefix its match matched.
fn replaces_prefix(r: &model::HttpRoute) -> bool {
    let prefix = |p: Option<&model::PathRewrite>| {
        matches!(
            p.and_then(|p| p.kind.as_ref()),
            Some(model::path_rewrite::Kind::Prefix(_))
        )
    };
    prefix(r.redirect.as_ref().and_then(|x| x.path.as_ref()))
        || prefix(r.rewrite.as_ref().and_then(|x| x.path.as_ref()))
}

fn path_rewrite(p: &HttpPathModifier) -> Option<model::PathRewrite> {
    use model::path_rewrite::Kind;
    let kind = match p.modifier_type.as_str() {
        "ReplaceFullPath" => Kind::Full(p.replace_full_path.clone()?),
        "ReplacePrefixMatch" => Kind::Prefix(p.replace_prefix_match.clone()?),
        _ => return None,
    };
    Some(model::PathRewrite { kind: Some(kind) })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Attaches every HTTPRoute and GRPCRoute of the snapshot to the catalog's
/// services, then applies DestinationPolicy defaults.
pub fn attach(catalog: &mut Catalog, snap: &Snapshot) {
    let mut routes: Vec<AnyRoute> = snap
        .of_kind("HTTPRoute")
        .filter_map(|(k, r)| match r {
            Resource::HttpRoute(h) => Some(http_route(k, h)),
            _ => None,
        })
        .chain(snap.of_kind("GRPCRoute").filter_map(|(k, r)| match r {
            Resource::GrpcRoute(g) => Some(grpc_route(k, g)),
            _ => None,
        }))
        .collect();
    // Tie-breaks: oldest first, then namespace/name.
    routes.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(b.key)));
    // (service, sort key, route) collected first, sorted per service after.
    let mut tables: std::collections::BTreeMap<String, Vec<(Precedence, usize, model::HttpRoute)>> =
        Default::default();
    let mut seq = 0usize;
    for route in &routes {
        let key = route.key;
        let ns = key.namespace.clone().unwrap_or_else(|| "default".into());
        for parent in route.parents {
            let pns = parent.namespace.clone().unwrap_or_else(|| ns.clone());
            // A Service (GAMMA), or a ServiceImport: the clusterset service,
            // what callers of `<svc>.<ns>.svc.clusterset.local` reach
            // (GEP-1748).
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            let target = match (parent.group.as_deref().unwrap_or(""), kind) {
                ("", "Service") => service_name(&parent.name, &pns),
                ("multicluster.x-k8s.io", "ServiceImport") => {
                    super::imports::clusterset_name(&parent.name, &pns)
                }
                _ => continue, // attached to a Gateway: not the mesh's business
            };
            // A port (or a port's name, sectionName) narrows the route to
            // requests for that port of the Service.
            let ports = match catalog.services.get(&target) {
                None => Err("it does not exist".to_string()),
                Some(service) => parent_ports(service, parent),
            };
            let ports = match ports {
                Ok(p) => p,
                Err(why) => {
                    catalog.problems.push(problem(
                        route.kind,
                        key,
                        "NoMatchingParent",
                        format!("parent {kind} {pns}/{}: {why}", parent.name),
                    ));
                    continue;
                }
            };
            for (i, rule) in route.rules.iter().enumerate() {
                if !rule.unsupported.is_empty() {
                    catalog.problems.push(problem(
                        route.kind,
                        key,
                        "UnsupportedValue",
                        format!(
                            "rule {i}: {} not supported; the rule is left out (its requests go to the other rules, or the Service itself)",
                            rule.unsupported.join(", ")
                        ),
                    ));
                    continue;
                }
                let mut translated = translate_rule(catalog, snap, route.kind, key, &ns, i, rule);
                translated.ports = ports.clone();
                let several = rule.matches.len() > 1;
                for (j, (precedence, m)) in rule.matches.iter().enumerate() {
                    let mut r = translated.clone();
                    if several {
                        // Route names are unique in a table (metrics label).
                        r.name = format!("{}/match-{j}", r.name);
                    }
                    if *m != model::RouteMatch::default() {
                        r.matches = vec![m.clone()];
                    }
                    // A matched prefix to replace: the match without a path
                    // is the spec's default, PathPrefix "/", said outright.
                    if replaces_prefix(&r) {
                        if r.matches.is_empty() {
                            r.matches.push(model::RouteMatch::default());
                        }
                        for m in &mut r.matches {
                            m.path.get_or_insert(model::PathMatch {
                                kind: Some(model::path_match::Kind::Prefix("/".into())),
                            });
                        }
                    }
                    tables
                        .entry(target.clone())
                        .or_default()
                        .push((precedence.clone(), seq, r));
                    seq += 1;
                }
            }
        }
    }
    for (service, mut table) in tables {
        table.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some(s) = catalog.services.get_mut(&service) {
            s.routes = table.into_iter().map(|(_, _, r)| r).collect();
        }
    }
    for (service, d) in &catalog.route_defaults {
        let Some(s) = catalog.services.get_mut(service) else {
            continue;
        };
        if !s
            .routes
            .iter()
            .any(|r| r.matches.is_empty() && r.ports.is_empty())
        {
            // No route takes every request: a last catch-all to the
            // service itself carries the defaults for the rest.
            s.routes.push(model::HttpRoute {
                name: "default".into(),
                ..Default::default()
            });
        }
        for r in &mut s.routes {
            if r.timeout.is_none() {
                r.timeout = d.timeout;
            }
            if r.retry.is_none() {
                r.retry = d.retry.clone();
            }
        }
    }
}

/// The ports of `service` a parentRef names (`port`, or the port named
/// `sectionName`); empty: all of them.
fn parent_ports(service: &model::Service, parent: &ParentReference) -> Result<Vec<u32>, String> {
    let by_name = match parent.section_name.as_deref() {
        Some(section) => Some(
            service
                .ports
                .iter()
                .find(|p| p.name == section)
                .map(|p| p.port)
                .ok_or_else(|| format!("it has no port named {section:?}"))?,
        ),
        None => None,
    };
    let by_number = match parent.port {
        Some(port) => Some(
            service
                .ports
                .iter()
                .find(|p| p.port == u32::from(port))
                .map(|p| p.port)
                .ok_or_else(|| format!("it has no port {port}"))?,
        ),
        None => None,
    };
    match (by_name, by_number) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("sectionName names port {a} and port says {b}"))
        }
        (Some(p), _) | (None, Some(p)) => Ok(vec![p]),
        (None, None) => Ok(Vec::new()),
    }
}

fn problem(kind: &'static str, key: &ObjectKey, reason: &'static str, message: String) -> Problem {
    Problem {
        kind,
        key: key.clone(),
        reason,
        message,
    }
}

/// Gateway API match precedence as a sort key (smaller sorts first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Precedence {
    not_exact: bool,
    prefix_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
}

impl Precedence {
    fn of(m: Option<&HttpRouteMatch>) -> Self {
        let path = m.and_then(|m| m.path.as_ref());
        let exact = path.is_some_and(|p| p.match_type == "Exact");
        let prefix_len = match path {
            Some(p) if p.match_type == "PathPrefix" => p.value.len(),
            None => 1, // the default match is PathPrefix "/"
            _ => 0,
        };
        Self {
            not_exact: !exact,
            prefix_len: Reverse(prefix_len),
            no_method: m.is_none_or(|m| m.method.is_none()),
            headers: Reverse(m.map_or(0, |m| m.headers.len())),
            query: Reverse(m.map_or(0, |m| m.query_params.len())),
        }
    }
}

fn translate_match(m: &HttpRouteMatch) -> model::RouteMatch {
    use model::{header_match, path_match};
    model::RouteMatch {
        path: m.path.as_ref().map(|p| model::PathMatch {
            kind: Some(match p.match_type.as_str() {
                "Exact" => path_match::Kind::Exact(p.value.clone()),
                "RegularExpression" => path_match::Kind::Regex(p.value.clone()),
                _ => path_match::Kind::Prefix(p.value.clone()),
            }),
        }),
        headers: m
            .headers
            .iter()
            .map(|h| model::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                invert: false,
                kind: Some(match h.match_type.as_deref() {
                    Some("RegularExpression") => header_match::Kind::Regex(h.value.clone()),
                    _ => header_match::Kind::Exact(h.value.clone()),
                }),
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
        query_params: m
            .query_params
            .iter()
            .map(|q| model::QueryParamMatch {
                name: q.name.clone(),
                kind: Some(match q.match_type.as_deref() {
                    Some("RegularExpression") => {
                        model::query_param_match::Kind::Regex(q.value.clone())
                    }
                    _ => model::query_param_match::Kind::Exact(q.value.clone()),
                }),
            })
            .collect(),
    }
}

fn translate_rule(
    catalog: &mut Catalog,
    snap: &Snapshot,
    kind: &'static str,
    key: &ObjectKey,
    ns: &str,
    i: usize,
    rule: &Rule,
) -> model::HttpRoute {
    let problem = |key, reason, message| problem(kind, key, reason, message);
    let name = match rule.name {
        Some(n) => format!("{key}/{n}"),
        None => format!("{key}/rule-{i}"),
    };
    let mut backends = Vec::new();
    let mut dropped = 0;
    for b in rule.backend_refs {
        let bns = b.namespace.clone().unwrap_or_else(|| ns.to_string());
        // A Service, or a ServiceImport (GEP-1748): the clusterset service
        // its imports make.
        let (kind_ok, target) = match (b.group.as_deref().unwrap_or(""), b.kind.as_deref()) {
            ("", None | Some("Service")) => (true, service_name(&b.name, &bns)),
            ("multicluster.x-k8s.io", Some("ServiceImport")) => (
                true,
                format!("{}.svc.clusterset.local", service_name(&b.name, &bns)),
            ),
            _ => (false, service_name(&b.name, &bns)),
        };
        let (group, bkind) = (
            b.group.as_deref().unwrap_or(""),
            b.kind.as_deref().unwrap_or("Service"),
        );
        if kind_ok && !granted(snap, kind, ns, (group, bkind, &b.name), &bns) {
            dropped += 1;
            catalog.problems.push(problem(
                key,
                "RefNotPermitted",
                format!(
                    "rule {i}: backend {bns}/{} is in another namespace and no ReferenceGrant there lets {kind}s of {ns} refer to it; its share of traffic gets 500",
                    b.name
                ),
            ));
            continue;
        }
        let svc = catalog.services.get(&target);
        let port_ok = match (svc, b.port) {
            (Some(s), Some(p)) => s.ports.iter().any(|sp| sp.port == u32::from(p)),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !kind_ok || !port_ok {
            dropped += 1;
            catalog.problems.push(problem(
                key,
                "BackendNotFound",
                format!(
                    "rule {i}: backend {bns}/{}{} does not exist; its share of traffic gets 500",
                    b.name,
                    b.port.map(|p| format!(":{p}")).unwrap_or_default()
                ),
            ));
            continue;
        }
        backends.push(model::WeightedBackend {
            service: target,
            port: b.port.map_or(0, u32::from),
            weight: b.weight.unwrap_or(1),
        });
    }
    let mut fault = None;
    let mut mirror = None;
    let (mut request_headers, mut response_headers) = (None, None);
    let (mut redirect, mut rewrite) = (None, None);
    for f in rule.filters {
        match f.filter_type.as_str() {
            "RequestHeaderModifier" => {
                request_headers = f.request_header_modifier.as_ref().map(header_modifier)
            }
            "ResponseHeaderModifier" => {
                response_headers = f.response_header_modifier.as_ref().map(header_modifier)
            }
            "RequestRedirect" => {
                redirect = f.request_redirect.as_ref().map(|r| model::Redirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    port: r.port.map_or(0, u32::from),
                    path: r.path.as_ref().and_then(path_rewrite),
                    status_code: r.status_code.map_or(0, u32::from),
                })
            }
            "URLRewrite" => {
                rewrite = f.url_rewrite.as_ref().map(|r| model::Rewrite {
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r.path.as_ref().and_then(path_rewrite),
                })
            }
            // Another kind of ExtensionRef left the rule out already
            // (`unsupported_filters`).
            "ExtensionRef" => {
                let Some(ext) = &f.extension_ref else {
                    continue;
                };
                let fkey = ObjectKey {
                    namespace: Some(ns.to_string()),
                    name: ext.name.clone(),
                };
                match snap.get("FaultInjection", &fkey) {
                    Some(Resource::FaultInjection(fi)) => fault = Some(translate_fault(fi)),
                    _ => catalog.problems.push(problem(
                        key,
                        "BackendNotFound",
                        format!("rule {i}: FaultInjection {fkey} does not exist"),
                    )),
                }
            }
            "RequestMirror" => {
                let Some(m) = &f.request_mirror else { continue };
                let mns = m
                    .backend_ref
                    .namespace
                    .clone()
                    .unwrap_or_else(|| ns.to_string());
                let target = service_name(&m.backend_ref.name, &mns);
                if !granted(snap, kind, ns, ("", "Service", &m.backend_ref.name), &mns) {
                    catalog.problems.push(problem(
                        key,
                        "RefNotPermitted",
                        format!(
                            "rule {i}: mirror {target} is in another namespace and no ReferenceGrant there lets {kind}s of {ns} refer to it"
                        ),
                    ));
                } else if catalog.services.contains_key(&target) {
                    mirror = Some(model::Mirror {
                        service: target,
                        port: m.backend_ref.port.map_or(0, u32::from),
                        percentage: m.percent.map_or(100.0, f64::from),
                    });
                } else {
                    catalog.problems.push(problem(
                        key,
                        "BackendNotFound",
                        format!("rule {i}: mirror {target} does not exist"),
                    ));
                }
            }
            _ => {} // refused before translation (`unsupported_filters`)
        }
    }
    let nothing_left = (dropped > 0 && backends.is_empty())
        || (!backends.is_empty() && backends.iter().all(|b| b.weight == 0));
    if nothing_left {
        // Nothing to forward to: 500, as the Gateway API specifies.
        backends.clear();
        fault = Some(model::FaultInjection {
            delay: None,
            abort: Some(model::fault_injection::Abort {
                status: Some(model::fault_injection::abort::Status::HttpStatus(500)),
                percentage: 100.0,
            }),
        });
    } else if dropped > 0 {
        // The missing backends' share still answers 500: keep their weight
        // on a 500 for that fraction.
        let total: u32 = rule
            .backend_refs
            .iter()
            .map(|b| b.weight.unwrap_or(1))
            .sum();
        let kept: u32 = backends.iter().map(|b| b.weight).sum();
        if total > 0 && fault.is_none() {
            fault = Some(model::FaultInjection {
                delay: None,
                abort: Some(model::fault_injection::Abort {
                    status: Some(model::fault_injection::abort::Status::HttpStatus(500)),
                    percentage: f64::from(total - kept) * 100.0 / f64::from(total),
                }),
            });
        }
    }
    let retry = rule.retry.map(|r| {
        // GEP-1731: exactly the codes given (none: the gateway errors);
        // connection failures are retried too.
        let mut on: Vec<String> = r.codes.iter().map(|c| c.to_string()).collect();
        if on.is_empty() {
            on.push("gateway-error".to_string());
        }
        on.push("connect-failure".to_string());
        model::RetryPolicy {
            attempts: r.attempts.unwrap_or(1),
            per_try_timeout: rule
                .timeouts
                .and_then(|t| t.backend_request.as_ref())
                .and_then(proto_duration),
            retry_on: on,
            backoff_base: r.backoff.as_ref().and_then(proto_duration),
            backoff_max: None,
            budget: None,
        }
    });
    model::HttpRoute {
        name,
        matches: Vec::new(),
        backends,
        timeout: rule
            .timeouts
            .and_then(|t| t.request.as_ref())
            .and_then(proto_duration),
        retry,
        fault,
        mirror,
        rate_limit: None,
        request_headers,
        response_headers,
        ports: Vec::new(),
        redirect,
        rewrite,
    }
}

fn header_modifier(h: &crate::resources::gateway_api::HeaderModifier) -> model::HeaderModifier {
    let values = |v: &[crate::resources::gateway_api::HeaderValue]| {
        v.iter()
            .map(|h| model::HeaderValue {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect()
    };
    model::HeaderModifier {
        set: values(&h.set),
        add: values(&h.add),
        remove: h.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn translate_fault(fi: &crate::resources::FaultInjection) -> model::FaultInjection {
    use model::fault_injection::{Abort, Delay, abort::Status};
    model::FaultInjection {
        delay: fi.spec.delay.as_ref().map(|d| Delay {
            fixed_delay: proto_duration(&d.fixed_delay),
            percentage: d.percentage,
        }),
        abort: fi.spec.abort.as_ref().map(|a| Abort {
            status: match (a.http_status, a.grpc_status) {
                (_, Some(g)) => Some(Status::GrpcStatus(g)),
                (Some(h), None) => Some(Status::HttpStatus(u32::from(h))),
                (None, None) => Some(Status::HttpStatus(500)),
            },
            percentage: a.percentage,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::files::{merge, parse_file};
    use crate::translate::services::catalog;

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-us-east, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-shadow, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: isthmus.dev/v1alpha1
kind: FaultInjection
metadata: {name: flaky, namespace: shop}
spec: {abort: {httpStatus: 503, percentage: 5}, delay: {fixedDelay: 100ms, percentage: 10}}
"#;

    fn translate(routes: &str) -> Catalog {
        let (loaded, errors) = parse_file(Path::new("t.yaml"), &format!("{SERVICES}---\n{routes}"));
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let mut c = catalog(&snap);
        attach(&mut c, &snap);
        let cfg = model::ProxyConfig {
            services: c.services.values().cloned().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate(&cfg);
        assert!(issues.is_empty(), "the sidecar would refuse: {issues:?}");
        c
    }

    #[test]
    fn the_cross_cluster_canary_of_the_scenarios() {
        let c = translate(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
    - matches: [{headers: [{name: X-Canary, value: always}]}]
      backendRefs: [{name: reviews-us-east, port: 80}]
    - backendRefs:
        - {name: reviews, port: 80, weight: 90}
        - {name: reviews-us-east, port: 80, weight: 10}
      timeouts: {request: 2s, backendRequest: 500ms}
      retry: {codes: [503], attempts: 2, backoff: 25ms}
      filters:
        - {type: ExtensionRef, extensionRef: {group: isthmus.dev, kind: FaultInjection, name: flaky}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-shadow, port: 80}, percent: 5}}
"#,
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let routes = &c.services["reviews.shop"].routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0].name, "shop/reviews/rule-0",
            "more header matches first"
        );
        assert_eq!(routes[0].matches[0].headers[0].name, "x-canary");
        assert_eq!(routes[0].backends[0].service, "reviews-us-east.shop");
        let split = &routes[1];
        let weights: Vec<(&str, u32)> = split
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [("reviews.shop", 90), ("reviews-us-east.shop", 10)]
        );
        assert_eq!(split.timeout.unwrap().seconds, 2);
        let retry = split.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, 2);
        assert_eq!(
            retry.retry_on,
            ["503", "connect-failure"],
            "GEP-1731 codes kept exact (503 does not retry 500)"
        );
        assert_eq!(split.ports, [80], "parentRefs port 80");
        assert_eq!(retry.per_try_timeout.unwrap().nanos, 500_000_000);
        let fault = split.fault.as_ref().unwrap();
        assert_eq!(fault.abort.as_ref().unwrap().percentage, 5.0);
        assert_eq!(
            split.mirror.as_ref().unwrap().service,
            "reviews-shadow.shop"
        );
        assert!(c.services["reviews-us-east.shop"].routes.is_empty());
    }

    #[test]
    fn matches_are_ordered_by_gateway_api_precedence_across_routes() {
        let route = |name: &str, created: &str, rules: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                 metadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\n\
                 spec:\n  parentRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  rules:\n{rules}"
            )
        };
        let yaml = [
            route(
                "b-newer",
                "2026-11-02T00:00:00Z",
                "    - {name: catch-all, backendRefs: [{name: reviews}]}\n\
                 \x20   - {name: api, matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: reviews}]}\n",
            ),
            route(
                "a-older",
                "2026-11-01T00:00:00Z",
                "    - name: mixed\n      matches:\n\
                 \x20       - {path: {type: Exact, value: /api/v1/items}}\n\
                 \x20       - {path: {type: PathPrefix, value: /api}, method: POST}\n\
                 \x20       - {path: {type: PathPrefix, value: /api}, headers: [{name: a, value: b}]}\n\
                 \x20     backendRefs: [{name: reviews-us-east}]\n\
                 \x20   - {name: also-all, backendRefs: [{name: reviews-us-east}]}\n",
            ),
        ]
        .join("---\n");
        let c = translate(&yaml);
        let order: Vec<&str> = c.services["reviews.shop"]
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "shop/a-older/mixed/match-0", // Exact
                "shop/a-older/mixed/match-1", // prefix /api + method
                "shop/a-older/mixed/match-2", // prefix /api + 1 header
                "shop/b-newer/api",           // prefix /api
                "shop/a-older/also-all",      // prefix / (older route first)
                "shop/b-newer/catch-all",
            ]
        );
    }

    #[test]
    fn missing_references_are_reported_and_answer_500() {
        let c = translate(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs:
    - {kind: Service, group: "", name: reviews}
    - {kind: Service, group: "", name: nowhere}
    - {name: some-gateway}
  rules:
    - matches: [{path: {type: Exact, value: /half}}]
      backendRefs: [{name: reviews, weight: 3}, {name: gone, weight: 1}]
    - matches: [{path: {type: Exact, value: /none}}]
      backendRefs: [{name: gone}, {name: reviews, port: 8080}]
    - matches: [{path: {type: Exact, value: /zero}}]
      backendRefs: [{name: reviews, weight: 0}]
"#,
        );
        let reasons: Vec<&str> = c.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                "BackendNotFound",
                "BackendNotFound",
                "BackendNotFound",
                "NoMatchingParent"
            ],
            "{:?}",
            c.problems
        );
        assert!(c.problems[2].message.contains("shop/reviews:8080"));
        let routes = &c.services["reviews.shop"].routes;
        let abort = |i: usize| {
            let a = routes[i].fault.as_ref().unwrap().abort.as_ref().unwrap();
            (a.status, a.percentage)
        };
        let s500 = Some(model::fault_injection::abort::Status::HttpStatus(500));
        assert_eq!(abort(0), (s500, 25.0), "the missing quarter answers 500");
        assert_eq!(routes[0].backends.len(), 1);
        assert_eq!(abort(1), (s500, 100.0));
        assert!(routes[1].backends.is_empty());
        assert_eq!(
            abort(2),
            (s500, 100.0),
            "all weights zero: nothing to forward to"
        );
    }

    #[test]
    fn grpc_routes_match_methods_as_paths() {
        let c = translate(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: inventory, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
    - matches: [{method: {service: shop.Inventory}}]
      backendRefs: [{name: reviews-us-east}]
    - matches: [{method: {service: shop.Inventory, method: Reserve}}]
      backendRefs: [{name: reviews}]
    - matches: [{method: {method: Get.All}}]
      backendRefs: [{name: reviews}]
"#,
        );
        use model::path_match::Kind;
        let paths: Vec<Option<Kind>> = c.services["reviews.shop"]
            .routes
            .iter()
            .map(|r| r.matches[0].path.clone().and_then(|p| p.kind))
            .collect();
        assert_eq!(
            paths,
            [
                Some(Kind::Exact("/shop.Inventory/Reserve".into())),
                Some(Kind::Prefix("/shop.Inventory".into())),
                Some(Kind::Regex("/[^/]+/Get\\.All".into())),
            ]
        );
    }

    #[test]
    fn destination_policy_defaults_fill_routes_that_set_none() {
        let policy = "apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\n\
metadata: {name: p, namespace: shop}\n\
spec: {targetRef: {name: SVC}, timeout: 3s, retry: {attempts: 3, retryOn: [unavailable, teapot], budgetPercent: 10}}\n";
        let route = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
    - {matches: [{path: {type: PathPrefix, value: /slow}}], timeouts: {request: 30s}, backendRefs: [{name: reviews}]}
    - backendRefs: [{name: reviews}]
"#;
        let c = translate(&format!(
            "{}---\n{}---\n{route}",
            policy.replace("SVC", "reviews"),
            policy
                .replace("name: p,", "name: q,")
                .replace("SVC", "reviews-us-east"),
        ));
        let routes = &c.services["reviews.shop"].routes;
        assert_eq!(
            routes[0].timeout.unwrap().seconds,
            30,
            "a route's own timeout stays"
        );
        assert_eq!(routes[1].timeout.unwrap().seconds, 3);
        let retry = routes[1].retry.as_ref().unwrap();
        assert_eq!(
            (retry.attempts, retry.retry_on.as_slice()),
            (3, &["unavailable".to_string()][..])
        );
        assert_eq!(retry.budget.as_ref().unwrap().retry_ratio, 0.1);
        let lone = &c.services["reviews-us-east.shop"].routes;
        assert_eq!(
            lone.len(),
            1,
            "a service without routes gets a default route"
        );
        assert_eq!(
            (lone[0].name.as_str(), lone[0].timeout.unwrap().seconds),
            ("default", 3)
        );
        assert!(
            c.problems
                .iter()
                .any(|p| p.reason == "UnsupportedValue" && p.message.contains("teapot"))
        );
    }

    /// Route YAML in the field layout of the Gateway API spec's HTTPRoute
    /// (v1.2) examples, on a mesh parent.
    const GAMMA: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs:
    - {group: "", kind: Service, name: reviews, port: 80}
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          queryParams:
            - {type: Exact, name: canary, value: "true"}
            - {type: RegularExpression, name: user, value: "[0-9]+"}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Env, value: canary}]
            add: [{name: x-tag, value: gamma}]
            remove: [x-internal]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: x-served-by, value: canary}]
      backendRefs:
        - {group: multicluster.x-k8s.io, kind: ServiceImport, name: reviews, port: 80}
      retry: {codes: [500, 429], attempts: 2}
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, statusCode: 301}
    - matches: [{path: {type: PathPrefix, value: /v1}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - matches: [{path: {type: PathPrefix, value: /future}, cookies: [{name: a, value: b}]}]
    - sessionPersistence: {sessionName: s}
    - matches: [{path: {type: PathPrefix, value: /ok}}]
      backendRefs: [{name: reviews, port: 80}]
    - matches: [{path: {type: Exact, value: /exact}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}
    - filters:
        - type: CORS
          cors: {allowOrigins: ["*"]}
"#;

    #[test]
    fn gamma_fields_are_honoured_or_the_rule_is_refused_by_name() {
        let text = format!("{SERVICES}---\n{GAMMA}");
        let (loaded, errors) = parse_file(Path::new("r.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let mut c = catalog(&snap);
        // What the imports of reviews make (translate::imports).
        c.services.insert(
            "reviews.shop.svc.clusterset.local".into(),
            model::Service {
                name: "reviews.shop.svc.clusterset.local".into(),
                ports: vec![model::ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        attach(&mut c, &snap);
        let routes = &c.services["reviews.shop"].routes;
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop/reviews/rule-0",
                "shop/reviews/rule-1",
                "shop/reviews/rule-2",
                "shop/reviews/rule-5"
            ],
            "the refused rules are left out, not widened"
        );
        let redirect = routes[1].redirect.as_ref().unwrap();
        assert_eq!(
            (redirect.scheme.as_str(), redirect.status_code),
            ("https", 301)
        );
        let rewrite = routes[2].rewrite.as_ref().unwrap();
        assert_eq!(
            rewrite.path.as_ref().unwrap().kind,
            Some(model::path_rewrite::Kind::Prefix("/v2".into()))
        );
        // What the proxies get passes their validation.
        for r in routes {
            let cfg = model::ProxyConfig {
                services: vec![model::Service {
                    name: "reviews.shop".into(),
                    ports: vec![model::ServicePort {
                        port: 80,
                        ..Default::default()
                    }],
                    routes: vec![model::HttpRoute {
                        backends: Vec::new(),
                        ..r.clone()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(isthmus_api::validate(&cfg), vec![], "{}", r.name);
        }
        let canary = &routes[0];
        assert_eq!(canary.ports, [80]);
        let q = &canary.matches[0].query_params;
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].name, "canary");
        assert_eq!(
            q[0].kind,
            Some(model::query_param_match::Kind::Exact("true".into()))
        );
        assert_eq!(
            q[1].kind,
            Some(model::query_param_match::Kind::Regex("[0-9]+".into()))
        );
        let req = canary.request_headers.as_ref().unwrap();
        assert_eq!(
            (req.set[0].name.as_str(), req.set[0].value.as_str()),
            ("x-env", "canary")
        );
        assert_eq!(req.add[0].name, "x-tag");
        assert_eq!(req.remove, ["x-internal"]);
        assert_eq!(
            canary.response_headers.as_ref().unwrap().add[0].name,
            "x-served-by"
        );
        assert_eq!(
            canary.backends[0].service, "reviews.shop.svc.clusterset.local",
            "a ServiceImport backend is the clusterset service (GEP-1748)"
        );
        assert_eq!(
            canary.retry.as_ref().unwrap().retry_on,
            ["500", "429", "connect-failure"]
        );
        let refused: Vec<&str> = c
            .problems
            .iter()
            .filter(|p| p.reason == "UnsupportedValue")
            .map(|p| p.message.as_str())
            .collect();
        for (rule, field) in [
            (3, "matches[0].cookies"),
            (4, "sessionPersistence"),
            (
                6,
                "ReplacePrefixMatch with a path match that is not a PathPrefix",
            ),
            (7, "filters[0].type CORS"),
        ] {
            assert!(
                refused
                    .iter()
                    .any(|m| m.starts_with(&format!("rule {rule}: ")) && m.contains(field)),
                "rule {rule} refused naming {field}: {refused:?}"
            );
        }
        // The route is Accepted=False, with the reason and the fields.
        let conditions = crate::translate::status::conditions(&snap, &c.problems, &now());
        let accepted = &conditions[&(
            "HTTPRoute",
            ObjectKey {
                namespace: Some("shop".into()),
                name: "reviews".into(),
            },
        )][0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str()),
            ("Accepted", "False")
        );
        assert_eq!(accepted.reason, "UnsupportedValue");
    }

    fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
    }

    #[test]
    fn a_parent_port_or_section_narrows_the_route_to_that_port() {
        let svc = |ports: &[(&str, u32)]| model::Service {
            ports: ports
                .iter()
                .map(|(n, p)| model::ServicePort {
                    port: *p,
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let parent = |port: Option<u16>, section: Option<&str>| ParentReference {
            name: "reviews".into(),
            port,
            section_name: section.map(str::to_string),
            ..Default::default()
        };
        let two = svc(&[("http", 80), ("grpc", 9090)]);
        assert_eq!(parent_ports(&two, &parent(None, None)), Ok(vec![]));
        assert_eq!(
            parent_ports(&two, &parent(Some(9090), None)),
            Ok(vec![9090])
        );
        assert_eq!(
            parent_ports(&two, &parent(None, Some("http"))),
            Ok(vec![80])
        );
        assert_eq!(
            parent_ports(&two, &parent(Some(80), Some("http"))),
            Ok(vec![80])
        );
        assert!(parent_ports(&two, &parent(Some(81), None)).is_err());
        assert!(parent_ports(&two, &parent(None, Some("admin"))).is_err());
        assert!(parent_ports(&two, &parent(Some(9090), Some("http"))).is_err());
    }

    #[test]
    fn a_backend_in_another_namespace_needs_a_reference_grant() {
        let route = r#"
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: payments}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs: [{name: ledger, namespace: payments, port: 80}]
"#;
        let grant = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-routes, namespace: payments}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#;
        let translate = |text: String| {
            let (loaded, errors) = parse_file(Path::new("r.yaml"), &text);
            assert!(errors.is_empty(), "{errors:?}");
            let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
            let mut c = catalog(&snap);
            attach(&mut c, &snap);
            c
        };
        let refused = translate(format!("{SERVICES}---{route}"));
        let r = &refused.services["reviews.shop"].routes[0];
        assert!(r.backends.is_empty(), "{r:?}");
        let abort = r.fault.as_ref().unwrap().abort.as_ref().unwrap();
        assert_eq!(abort.percentage, 100.0, "its share answers 500");
        assert!(
            refused
                .problems
                .iter()
                .any(|p| p.reason == "RefNotPermitted"),
            "{:?}",
            refused.problems
        );
        let granted = translate(format!("{SERVICES}---{route}{grant}"));
        let r = &granted.services["reviews.shop"].routes[0];
        assert_eq!(r.backends[0].service, "ledger.payments");
        assert!(granted.problems.is_empty(), "{:?}", granted.problems);
        // A grant for another kind, or to another namespace, does not do.
        let other = grant.replace("kind: HTTPRoute", "kind: GRPCRoute");
        let c = translate(format!("{SERVICES}---{route}{other}"));
        assert!(c.services["reviews.shop"].routes[0].backends.is_empty());
    }
}
