//! Semantic checks of a [`ProxyConfig`] beyond what its schema enforces:
//! references between objects, address syntax, ranges, regular expressions.
//! Pure: the same checks run on a YAML file the sidecar loads and on every
//! configuration a proxy receives from the control plane.
//!
//! One module of ~850 lines on purpose: it walks the model once, top to
//! bottom, in the model's own order (listeners, services, ports,
//! endpoints, routes, security), keeping the field path as it goes; split
//! by object, each piece would need the walker's state and the path
//! building, and a reader checking "is X validated" would look in several
//! places. Its tests are `api/tests/yaml.rs`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::config::v1::{
    Endpoint, FaultInjection, HttpRoute, Listener, ProxyConfig, Security, Service, fault_injection,
    hash_key, header_match, listener, path_match, path_rewrite, query_param_match,
};

/// One problem, located by the field path as written in YAML
/// (`services[0].routes[1].timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

/// Retry conditions a route may name in `retryOn`.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-4xx",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Longest duration accepted anywhere (keeps deadline arithmetic finite).
pub const MAX_DURATION_SECONDS: i64 = 365 * 86_400;

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Checks the whole configuration and returns every problem found (empty
/// when the configuration is valid).
pub fn validate(config: &ProxyConfig) -> Vec<Issue> {
    let mut c = Checker { issues: Vec::new() };
    let mut ports_by_service: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        let path = format!("services[{i}]");
        if s.name.is_empty() {
            c.fail(
                format!("{path}.name"),
                "a service needs a name, e.g. catalog.shop",
            );
        } else if ports_by_service.contains_key(s.name.as_str()) {
            c.fail(
                format!("{path}.name"),
                format!("duplicate service name {:?}", s.name),
            );
        }
        ports_by_service.insert(&s.name, s.ports.iter().map(|p| p.port).collect());
    }
    for (i, s) in config.services.iter().enumerate() {
        check_service(&mut c, &format!("services[{i}]"), s, &ports_by_service);
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if l.name.is_empty() {
            c.fail(format!("{path}.name"), "a listener needs a name");
        } else if !names.insert(l.name.as_str()) {
            c.fail(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        match l.address.parse::<SocketAddr>() {
            Err(_) => c.fail(
                format!("{path}.address"),
                format!("{:?} is not ip:port, e.g. 127.0.0.1:15001", l.address),
            ),
            Ok(a) if a.port() != 0 && !addresses.insert(a) => c.fail(
                format!("{path}.address"),
                format!("{a} is used by another listener"),
            ),
            Ok(_) => {}
        }
        check_listener(&mut c, &path, l, &ports_by_service);
    }
    if let Some(sec) = &config.security {
        check_security(&mut c, sec);
    }
    if let Some(ew) = &config.east_west {
        check_east_west(&mut c, ew);
    }
    c.issues
}

/// A cluster name: a DNS label.
fn is_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_east_west(c: &mut Checker, ew: &crate::model::EastWest) {
    let mut seen = HashSet::new();
    for (i, p) in ew.peers.iter().enumerate() {
        let path = format!("eastWest.peers[{i}]");
        if !is_cluster_name(&p.cluster) {
            c.fail(
                format!("{path}.cluster"),
                format!(
                    "{:?} is not a cluster name (lowercase letters, digits, -)",
                    p.cluster
                ),
            );
        } else if !seen.insert(p.cluster.as_str()) {
            c.fail(
                format!("{path}.cluster"),
                format!("peer {} is listed twice", p.cluster),
            );
        }
        for (field, a) in [("udp", &p.udp), ("tcp", &p.tcp)] {
            if a.parse::<SocketAddr>().is_err() {
                c.fail(
                    format!("{path}.{field}"),
                    format!("{a:?} is not ip:port, e.g. 10.0.2.1:15443"),
                );
            }
        }
        if !p.identity.starts_with("spiffe://") || p.identity.len() <= "spiffe://".len() {
            c.fail(
                format!("{path}.identity"),
                format!("{:?} is not the peer gateway's SPIFFE ID", p.identity),
            );
        }
    }
}

/// Checks a security section alone (the control plane validates each
/// policy before sending it).
pub fn validate_security(sec: &Security) -> Vec<Issue> {
    let mut c = Checker { issues: Vec::new() };
    check_security(&mut c, sec);
    c.issues
}

fn check_security(c: &mut Checker, sec: &Security) {
    let mut domains = HashSet::new();
    for (i, b) in sec.trust_bundles.iter().enumerate() {
        let path = format!("security.trustBundles[{i}]");
        if !is_trust_domain(&b.trust_domain) {
            c.fail(
                format!("{path}.trustDomain"),
                format!(
                    "{:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')",
                    b.trust_domain
                ),
            );
        } else if !domains.insert(b.trust_domain.as_str()) {
            c.fail(
                format!("{path}.trustDomain"),
                format!("duplicate trust domain {:?}", b.trust_domain),
            );
        }
        if !b.roots_pem.contains("-----BEGIN CERTIFICATE-----") {
            c.fail(
                format!("{path}.rootsPem"),
                "give the domain's root certificates in PEM",
            );
        }
    }
    for (i, p) in sec.authorization_policies.iter().enumerate() {
        for (j, r) in p.rules.iter().enumerate() {
            let path = format!("security.authorizationPolicies[{i}].rules[{j}]");
            for (k, f) in r.from.iter().enumerate() {
                for (l, w) in f.principals.iter().enumerate() {
                    check_wildcard(c, format!("{path}.from[{k}].principals[{l}]"), w);
                }
                for (l, w) in f.request_principals.iter().enumerate() {
                    check_wildcard(c, format!("{path}.from[{k}].requestPrincipals[{l}]"), w);
                }
            }
            for (k, t) in r.to.iter().enumerate() {
                for (l, port) in t.ports.iter().enumerate() {
                    if *port == 0 || *port > 65535 {
                        c.fail(format!("{path}.to[{k}].ports[{l}]"), "port must be 1-65535");
                    }
                }
                for (l, w) in t.paths.iter().enumerate() {
                    check_wildcard(c, format!("{path}.to[{k}].paths[{l}]"), w);
                }
            }
            for (k, w) in r.when.iter().enumerate() {
                let known = ["request.headers[", "request.auth.claims["]
                    .iter()
                    .any(|p| {
                        w.key.starts_with(p) && w.key.ends_with(']') && w.key.len() > p.len() + 1
                    });
                if !known {
                    c.fail(
                        format!("{path}.when[{k}].key"),
                        format!(
                            "{:?} is not request.headers[<name>] or request.auth.claims[<claim>]",
                            w.key
                        ),
                    );
                }
            }
        }
    }
    for (i, p) in sec.jwt_policies.iter().enumerate() {
        let path = format!("security.jwtPolicies[{i}]");
        if p.rules.is_empty() {
            c.fail(format!("{path}.rules"), "name at least one issuer");
        }
        for (j, r) in p.rules.iter().enumerate() {
            if r.issuer.is_empty() {
                c.fail(format!("{path}.rules[{j}].issuer"), "an issuer is required");
            }
            if r.jwks.is_empty() == r.jwks_file.is_empty() {
                c.fail(
                    format!("{path}.rules[{j}]"),
                    "give exactly one of jwks (inline JSON) and jwksFile",
                );
            }
        }
        for (j, w) in p.excluded_paths.iter().enumerate() {
            check_wildcard(c, format!("{path}.excludedPaths[{j}]"), w);
        }
    }
}

/// SPIFFE trust domain characters (lowercase, digits, '.', '-', '_').
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// `*`, or a value with at most one `*`, at its start or its end.
fn check_wildcard(c: &mut Checker, path: String, w: &str) {
    let stars = w.matches('*').count();
    let ok =
        !w.is_empty() && (stars == 0 || (stars == 1 && (w.starts_with('*') || w.ends_with('*'))));
    if !ok {
        c.fail(
            path,
            format!("{w:?}: use an exact value, \"*\", or one '*' at the start or the end"),
        );
    }
}

fn check_listener(c: &mut Checker, path: &str, l: &Listener, services: &HashMap<&str, Vec<u32>>) {
    match &l.kind {
        None => c.fail(
            path,
            "a listener needs one of http, tcp, transparent or inbound",
        ),
        Some(listener::Kind::Tcp(t)) => {
            check_service_ref(c, &format!("{path}.tcp"), &t.service, t.port, services)
        }
        Some(listener::Kind::Inbound(inb) | listener::Kind::Tunnel(inb)) => {
            let field = if matches!(l.kind, Some(listener::Kind::Tunnel(_))) {
                "tunnel"
            } else {
                "inbound"
            };
            let path = &format!("{path}.{field}");
            if !inb.app_address.is_empty() && inb.app_address.parse::<IpAddr>().is_err() {
                c.fail(
                    format!("{path}.appAddress"),
                    format!("{:?} is not an IP address", inb.app_address),
                );
            }
            if inb.ports.is_empty() {
                c.fail(
                    format!("{path}.ports"),
                    "list the application's ports (port and protocol)",
                );
            }
            for (j, p) in inb.ports.iter().enumerate() {
                if p.port == 0 || p.port > 65535 {
                    c.fail(format!("{path}.ports[{j}].port"), "port must be 1-65535");
                }
            }
        }
        Some(listener::Kind::Http(_) | listener::Kind::Transparent(_)) => {}
    }
}

/// A reference to `service` (and `port`, 0 meaning "the only port or the
/// port asked for") must name an existing service and one of its ports.
fn check_service_ref(
    c: &mut Checker,
    path: &str,
    service: &str,
    port: u32,
    services: &HashMap<&str, Vec<u32>>,
) {
    match services.get(service) {
        None => c.fail(
            format!("{path}.service"),
            format!("no service named {service:?} in services"),
        ),
        Some(ports) if port != 0 && !ports.contains(&port) => c.fail(
            format!("{path}.port"),
            format!("service {service:?} has no port {port} (ports: {ports:?})"),
        ),
        Some(_) => {}
    }
}

fn check_service(c: &mut Checker, path: &str, s: &Service, services: &HashMap<&str, Vec<u32>>) {
    for (j, h) in s.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if bare.is_empty() || bare.contains(['*', '/', ' ', ':']) {
            c.fail(
                format!("{path}.hosts[{j}]"),
                format!("{h:?} is not a host name (a leading \"*.\" is the only wildcard)"),
            );
        }
    }
    for (j, v) in s.vips.iter().enumerate() {
        if v.parse::<IpAddr>().is_err() {
            c.fail(
                format!("{path}.vips[{j}]"),
                format!("{v:?} is not an IP address"),
            );
        }
    }
    if s.ports.is_empty() {
        c.fail(format!("{path}.ports"), "a service needs at least one port");
    }
    let mut seen = HashSet::new();
    for (j, p) in s.ports.iter().enumerate() {
        if p.port == 0 || p.port > 65535 {
            c.fail(format!("{path}.ports[{j}].port"), "port must be 1-65535");
        } else if !seen.insert(p.port) {
            c.fail(
                format!("{path}.ports[{j}].port"),
                format!("duplicate port {}", p.port),
            );
        }
        if p.target_port > 65535 {
            c.fail(
                format!("{path}.ports[{j}].targetPort"),
                "port must be 1-65535",
            );
        }
    }
    for (j, e) in s.endpoints.iter().enumerate() {
        check_endpoint(c, &format!("{path}.endpoints[{j}]"), e, s);
    }
    let mut route_names = HashSet::new();
    for (j, r) in s.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{j}]");
        if !r.name.is_empty() && !route_names.insert(r.name.as_str()) {
            c.fail(
                format!("{rpath}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        check_route(c, &rpath, r, services);
    }
    if let Some(lb) = &s.load_balancer
        && let Some(hk) = &lb.hash_key
    {
        match &hk.kind {
            Some(hash_key::Kind::Header(h))
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() =>
            {
                c.fail(
                    format!("{path}.loadBalancer.hashKey.header"),
                    format!("{h:?} is not a header name"),
                )
            }
            Some(hash_key::Kind::Cookie(k)) if k.is_empty() => c.fail(
                format!("{path}.loadBalancer.hashKey.cookie"),
                "name the cookie",
            ),
            _ => {}
        }
        if let Some(loc) = &lb.locality
            && (loc.overprovisioning_factor < 0.0 || loc.overprovisioning_factor.is_nan())
        {
            c.fail(
                format!("{path}.loadBalancer.locality.overprovisioningFactor"),
                "must be a positive number (1.4 is Envoy's default)",
            );
        }
    }
    if let Some(od) = &s.outlier_detection
        && od.max_ejection_percent > 100
    {
        c.fail(
            format!("{path}.outlierDetection.maxEjectionPercent"),
            "must be 0-100",
        );
    }
    for (name, d) in [
        (
            "outlierDetection.baseEjectionTime",
            s.outlier_detection
                .as_ref()
                .and_then(|o| o.base_ejection_time.as_ref()),
        ),
        (
            "outlierDetection.maxEjectionTime",
            s.outlier_detection
                .as_ref()
                .and_then(|o| o.max_ejection_time.as_ref()),
        ),
        (
            "connectionPool.connectTimeout",
            s.connection_pool
                .as_ref()
                .and_then(|o| o.connect_timeout.as_ref()),
        ),
        (
            "connectionPool.idleTimeout",
            s.connection_pool
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref()),
        ),
    ] {
        check_duration(c, &format!("{path}.{name}"), d);
    }
}

fn check_endpoint(c: &mut Checker, path: &str, e: &Endpoint, s: &Service) {
    let with_port = e.address.parse::<SocketAddr>().is_ok();
    if !with_port && e.address.parse::<IpAddr>().is_err() {
        c.fail(
            format!("{path}.address"),
            format!("{:?} is not ip or ip:port", e.address),
        );
    }
    if with_port && s.ports.len() > 1 {
        c.fail(
            format!("{path}.address"),
            "the service has several ports: give the endpoint's port per service port in `ports`",
        );
    }
    for (k, p) in e.ports.iter().enumerate() {
        if !s.ports.iter().any(|sp| sp.port == p.port) {
            c.fail(
                format!("{path}.ports[{k}].port"),
                format!("the service has no port {}", p.port),
            );
        }
        if p.target_port == 0 || p.target_port > 65535 {
            c.fail(
                format!("{path}.ports[{k}].targetPort"),
                "port must be 1-65535",
            );
        }
    }
    if e.tunnel_port > 65535 {
        c.fail(format!("{path}.tunnelPort"), "port must be 1-65535");
    }
    if e.via_cluster.is_empty() && !e.via_service.is_empty() {
        c.fail(
            format!("{path}.viaService"),
            "viaService names a service in another cluster: set viaCluster too",
        );
    }
    if !e.via_cluster.is_empty() {
        if !is_dns_label(&e.via_cluster) {
            c.fail(
                format!("{path}.viaCluster"),
                format!(
                    "{:?} is not a cluster name (lowercase letters, digits, -)",
                    e.via_cluster
                ),
            );
        }
        if e.tunnel_port == 0 {
            c.fail(
                format!("{path}.tunnelPort"),
                "an endpoint via another cluster needs its gateway's local entry port (15009)",
            );
        }
        if e.identity.is_empty() {
            c.fail(
                format!("{path}.identity"),
                "an endpoint via another cluster needs the remote sidecars' identity \
                 (spiffe://<their trust domain>[/ns/<ns>/sa/<sa>])",
            );
        }
        if !e.via_service.is_empty() {
            // `<name>.<namespace>`, or `<pod>.<name>.<namespace>`: one pod
            // of a headless service there.
            let labels: Vec<&str> = e.via_service.split('.').collect();
            let ok = (2..=3).contains(&labels.len()) && labels.iter().all(|l| is_dns_label(l));
            if !ok {
                c.fail(
                    format!("{path}.viaService"),
                    format!(
                        "{:?} is not a service name in the other cluster (<name>.<namespace>, or <pod>.<name>.<namespace>)",
                        e.via_service
                    ),
                );
            }
        }
        if e.address.parse::<std::net::SocketAddr>().is_ok() {
            c.fail(
                format!("{path}.address"),
                "an endpoint via another cluster is its gateway's IP, without a port \
                 (the service's ports, or `ports` for that cluster's target ports)",
            );
        }
        // Target ports name the service port in the CONNECT: one each.
        let mut targets = std::collections::HashSet::new();
        if e.ports.iter().any(|p| !targets.insert(p.target_port)) {
            c.fail(
                format!("{path}.ports"),
                "an endpoint via another cluster needs a distinct target port per service port",
            );
        }
    }
    if !e.identity.is_empty() && !e.identity.starts_with("spiffe://") {
        c.fail(
            format!("{path}.identity"),
            format!(
                "{:?} is not a SPIFFE ID (spiffe://<trust-domain>/...)",
                e.identity
            ),
        );
    }
}

fn check_duration(c: &mut Checker, path: &str, d: Option<&pbjson_types::Duration>) {
    if let Some(d) = d {
        if d.seconds < 0 || d.nanos < 0 {
            c.fail(path, "a duration cannot be negative");
        } else if d.seconds > MAX_DURATION_SECONDS {
            c.fail(
                path,
                "a duration cannot exceed 365 days (omit it, or use 0, for no limit)",
            );
        }
    }
}

/// An HTTP status code as a retry condition: three digits, 100-599.
fn is_status_code(s: &str) -> bool {
    s.len() == 3 && s.parse::<u16>().is_ok_and(|c| (100..600).contains(&c))
}

fn check_percentage(c: &mut Checker, path: &str, p: f64) {
    if !(0.0..=100.0).contains(&p) {
        c.fail(path, format!("{p} is not a percentage (0-100)"));
    }
}

fn check_route(c: &mut Checker, path: &str, r: &HttpRoute, services: &HashMap<&str, Vec<u32>>) {
    for (k, m) in r.matches.iter().enumerate() {
        let mpath = format!("{path}.matches[{k}]");
        if let Some(pm) = &m.path {
            match &pm.kind {
                Some(path_match::Kind::Exact(p) | path_match::Kind::Prefix(p))
                    if !p.starts_with('/') =>
                {
                    c.fail(format!("{mpath}.path"), format!("{p:?} must start with /"))
                }
                Some(path_match::Kind::Regex(re)) => {
                    if let Err(e) = regex::Regex::new(re) {
                        c.fail(format!("{mpath}.path.regex"), format!("invalid regex: {e}"));
                    }
                }
                None => c.fail(
                    format!("{mpath}.path"),
                    "give one of exact, prefix or regex",
                ),
                _ => {}
            }
        }
        for (h, hm) in m.headers.iter().enumerate() {
            let hpath = format!("{mpath}.headers[{h}]");
            if http::HeaderName::from_bytes(hm.name.as_bytes()).is_err() {
                c.fail(
                    format!("{hpath}.name"),
                    format!("{:?} is not a header name", hm.name),
                );
            }
            match &hm.kind {
                Some(header_match::Kind::Regex(re)) => {
                    if let Err(e) = regex::Regex::new(re) {
                        c.fail(format!("{hpath}.regex"), format!("invalid regex: {e}"));
                    }
                }
                None => c.fail(&hpath, "give one of exact, regex or present"),
                _ => {}
            }
        }
        for (q, qm) in m.query_params.iter().enumerate() {
            let qpath = format!("{mpath}.queryParams[{q}]");
            if qm.name.is_empty() {
                c.fail(format!("{qpath}.name"), "give the parameter's name");
            }
            match &qm.kind {
                Some(query_param_match::Kind::Regex(re)) => {
                    if let Err(e) = regex::Regex::new(re) {
                        c.fail(format!("{qpath}.regex"), format!("invalid regex: {e}"));
                    }
                }
                None => c.fail(&qpath, "give one of exact or regex"),
                _ => {}
            }
        }
        if !m.method.is_empty() && !HTTP_METHODS.contains(&m.method.as_str()) {
            c.fail(
                format!("{mpath}.method"),
                format!(
                    "{:?} is not an HTTP method (upper case, e.g. GET)",
                    m.method
                ),
            );
        }
    }
    for (k, b) in r.backends.iter().enumerate() {
        check_service_ref(
            c,
            &format!("{path}.backends[{k}]"),
            &b.service,
            b.port,
            services,
        );
    }
    if !r.backends.is_empty() && r.backends.iter().all(|b| b.weight == 0) {
        c.fail(
            format!("{path}.backends"),
            "every backend has weight 0: give at least one a weight",
        );
    }
    check_duration(c, &format!("{path}.timeout"), r.timeout.as_ref());
    let prefix_matched = !r.matches.is_empty()
        && r.matches.iter().all(|m| {
            matches!(
                m.path.as_ref().and_then(|p| p.kind.as_ref()),
                Some(path_match::Kind::Prefix(_))
            )
        });
    let paths = [
        (
            "redirect.path",
            r.redirect.as_ref().and_then(|x| x.path.as_ref()),
        ),
        (
            "rewrite.path",
            r.rewrite.as_ref().and_then(|x| x.path.as_ref()),
        ),
    ];
    for (what, p) in paths {
        match p.and_then(|p| p.kind.as_ref()) {
            Some(path_rewrite::Kind::Full(v) | path_rewrite::Kind::Prefix(v))
                if !v.starts_with('/') =>
            {
                c.fail(format!("{path}.{what}"), format!("{v:?} must start with /"));
            }
            Some(path_rewrite::Kind::Prefix(_)) if !prefix_matched => c.fail(
                format!("{path}.{what}.prefix"),
                "replacing the matched prefix needs a route whose matches are all path prefixes",
            ),
            _ => {}
        }
    }
    if let Some(rd) = &r.redirect {
        if !["", "http", "https"].contains(&rd.scheme.as_str()) {
            c.fail(
                format!("{path}.redirect.scheme"),
                format!("{:?}: give http or https", rd.scheme),
            );
        }
        if ![0, 301, 302, 303, 307, 308].contains(&rd.status_code) {
            c.fail(
                format!("{path}.redirect.statusCode"),
                format!(
                    "{} is not a redirect status (301, 302, 303, 307, 308)",
                    rd.status_code
                ),
            );
        }
        if rd.port > 65535 {
            c.fail(
                format!("{path}.redirect.port"),
                format!("{} is not a port", rd.port),
            );
        }
    }
    for (what, host) in [
        (
            "redirect.hostname",
            r.redirect.as_ref().map(|x| &x.hostname),
        ),
        ("rewrite.hostname", r.rewrite.as_ref().map(|x| &x.hostname)),
    ] {
        if let Some(h) = host
            && !h.is_empty()
            && http::uri::Authority::try_from(h.as_str()).is_err()
        {
            c.fail(
                format!("{path}.{what}"),
                format!("{h:?} is not a host name"),
            );
        }
    }
    for (k, p) in r.ports.iter().enumerate() {
        if !(1..=65535).contains(p) {
            c.fail(format!("{path}.ports[{k}]"), format!("{p} is not a port"));
        }
    }
    for (which, hm) in [
        ("requestHeaders", &r.request_headers),
        ("responseHeaders", &r.response_headers),
    ] {
        let Some(hm) = hm else { continue };
        let names = hm
            .set
            .iter()
            .chain(&hm.add)
            .map(|h| (h.name.as_str(), Some(h.value.as_str())))
            .chain(hm.remove.iter().map(|n| (n.as_str(), None)));
        for (name, value) in names {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.fail(
                    format!("{path}.{which}"),
                    format!("{name:?} is not a header name"),
                );
            }
            if let Some(v) = value
                && http::HeaderValue::from_str(v).is_err()
            {
                c.fail(
                    format!("{path}.{which}"),
                    format!("the value of {name} is not a header value"),
                );
            }
        }
    }
    if let Some(retry) = &r.retry {
        for (k, cond) in retry.retry_on.iter().enumerate() {
            if !RETRY_ON.contains(&cond.as_str()) && !is_status_code(cond) {
                c.fail(
                    format!("{path}.retry.retryOn[{k}]"),
                    format!(
                        "unknown retry condition {cond:?}; known: {}, or an HTTP status code (\"503\")",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
        check_duration(
            c,
            &format!("{path}.retry.perTryTimeout"),
            retry.per_try_timeout.as_ref(),
        );
        check_duration(
            c,
            &format!("{path}.retry.backoffBase"),
            retry.backoff_base.as_ref(),
        );
        check_duration(
            c,
            &format!("{path}.retry.backoffMax"),
            retry.backoff_max.as_ref(),
        );
        if let Some(b) = &retry.budget
            && !(b.retry_ratio >= 0.0 && b.retry_ratio <= 1000.0)
        {
            c.fail(
                format!("{path}.retry.budget.retryRatio"),
                "must be 0 or more (e.g. 0.2)",
            );
        }
    }
    if let Some(f) = &r.fault {
        check_fault(c, &format!("{path}.fault"), f);
    }
    if let Some(m) = &r.mirror {
        check_service_ref(c, &format!("{path}.mirror"), &m.service, m.port, services);
        check_percentage(c, &format!("{path}.mirror.percentage"), m.percentage);
    }
    if let Some(rl) = &r.rate_limit
        && (rl.requests_per_second.is_nan() || rl.requests_per_second <= 0.0)
    {
        c.fail(
            format!("{path}.rateLimit.requestsPerSecond"),
            "must be more than 0",
        );
    }
}

fn check_fault(c: &mut Checker, path: &str, f: &FaultInjection) {
    if let Some(d) = &f.delay {
        check_percentage(c, &format!("{path}.delay.percentage"), d.percentage);
        check_duration(
            c,
            &format!("{path}.delay.fixedDelay"),
            d.fixed_delay.as_ref(),
        );
    }
    if let Some(a) = &f.abort {
        check_percentage(c, &format!("{path}.abort.percentage"), a.percentage);
        match a.status {
            Some(fault_injection::abort::Status::HttpStatus(s)) if !(200..=599).contains(&s) => c
                .fail(
                    format!("{path}.abort.httpStatus"),
                    "must be an HTTP status 200-599",
                ),
            Some(fault_injection::abort::Status::GrpcStatus(s)) if s > 16 => c.fail(
                format!("{path}.abort.grpcStatus"),
                "must be a gRPC status code 0-16 (e.g. 14, UNAVAILABLE)",
            ),
            None => c.fail(format!("{path}.abort"), "give httpStatus or grpcStatus"),
            _ => {}
        }
    }
}

/// A DNS label as Kubernetes names use it (cluster names, namespaces):
/// 1-63 lowercase letters, digits and '-', starting and ending with a
/// letter or digit.
pub fn is_dns_label(l: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&l.len())
        && l.bytes().all(|b| alnum(b) || b == b'-')
        && l.bytes().next().is_some_and(alnum)
        && l.bytes().last().is_some_and(alnum)
}
