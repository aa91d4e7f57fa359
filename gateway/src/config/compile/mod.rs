//! Compiles a validated `ProxyConfig` into a `Snapshot`: regexes compiled,
//! defaults applied, host/VIP indexes built, locality priorities computed
//! against the proxy's own locality. Pure; a failure here names the field.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::model as m;
use regex::Regex;

use crate::authz::{Policies, selects};
use crate::balance::locality::{self, Locality};
use crate::balance::outlier::OutlierSettings;
use crate::balance::{Policy, Ring};
use crate::policy::fault::{AbortStatus, Fault};
use crate::policy::retry::{BudgetSettings, RetryOn, RetrySettings};
use crate::route::{
    Backend, HeaderMatch, HeaderModifier, HeaderValueMatch, MirrorSettings, PathMatch, PathRewrite,
    QueryParamMatch, QueryValueMatch, RateLimitSettings, Redirect, Rewrite, Route, RouteMatch,
};
use crate::telemetry::metrics::{Label, Workload};
use isthmus_mesh::tls::Trust;

use super::snapshot::{
    EndpointSpec, HashKeySpec, LbSpec, ListenerKind, ListenerSpec, MtlsMode, NodeInfo, PoolLimits,
    PortSpec, Protocol, SecuritySpec, ServiceSpec, Snapshot, Tunnel, Via, inbound_service_name,
};

mod routes;
use routes::compile_route;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn dur(d: Option<&pbjson_types::Duration>) -> Option<Duration> {
    let d = d?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    (!d.is_zero()).then_some(d)
}

fn port16(p: u32, what: &str) -> Result<u16, CompileError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| CompileError::Invalid(format!("{what}: port {p} is not 1-65535")))
}

fn opt_port(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Compiles a configuration. Call `isthmus_api::validate` first: this only
/// reports the problems it cannot avoid meeting.
pub fn compile(cfg: &m::ProxyConfig) -> Result<Snapshot, CompileError> {
    let issues = isthmus_api::validate(cfg);
    if let Some(i) = issues.first() {
        return Err(CompileError::Invalid(format!("{}: {}", i.path, i.message)));
    }
    let node = cfg.node.clone().unwrap_or_default();
    let node = NodeInfo {
        locality: node
            .locality
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
            })
            .unwrap_or_default(),
        name: node.name.into(),
        namespace: node.namespace.into(),
        service_account: node.service_account,
        cluster: node.cluster,
        labels: node.labels.into_iter().collect(),
    };
    let mut services = HashMap::new();
    let mut hosts = HashMap::new();
    let mut wildcard_hosts = Vec::new();
    let mut vips = HashMap::new();
    for s in &cfg.services {
        let spec = compile_service(s, &node)?;
        let mut names: Vec<String> = s.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let lower = s.name.to_ascii_lowercase();
        names.push(format!("{lower}.svc.cluster.local"));
        names.push(format!("{lower}.svc"));
        if let Some((short, ns)) = lower.split_once('.')
            && ns == &*node.namespace
            && !ns.contains('.')
        {
            names.push(short.to_string());
        }
        names.push(lower);
        for h in names {
            match h.strip_prefix('*') {
                Some(suffix) => wildcard_hosts.push((suffix.to_string(), s.name.clone())),
                None => {
                    hosts.entry(h).or_insert_with(|| s.name.clone());
                }
            }
        }
        for v in &s.vips {
            let ip: IpAddr = v
                .parse()
                .map_err(|_| CompileError::Invalid(format!("{}: vip {v:?}", s.name)))?;
            for p in &spec.ports {
                vips.insert(SocketAddr::new(ip, p.port), s.name.clone());
            }
        }
        services.insert(s.name.clone(), Arc::new(spec));
    }
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let address: SocketAddr = l
            .address
            .parse()
            .map_err(|_| CompileError::Invalid(format!("listener {}: address", l.name)))?;
        let kind = match &l.kind {
            Some(m::listener::Kind::Http(_)) => ListenerKind::Http,
            Some(m::listener::Kind::Tcp(t)) => ListenerKind::Tcp {
                service: t.service.clone(),
                port: opt_port(t.port),
            },
            Some(m::listener::Kind::Transparent(t)) => ListenerKind::Transparent {
                passthrough: t.unmatched() == m::transparent_outbound::Unmatched::Passthrough,
            },
            Some(m::listener::Kind::Inbound(inb) | m::listener::Kind::Tunnel(inb)) => {
                let app: IpAddr = if inb.app_address.is_empty() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    inb.app_address.parse().map_err(|_| {
                        CompileError::Invalid(format!("listener {}: appAddress", l.name))
                    })?
                };
                let mut ports = Vec::new();
                for p in &inb.ports {
                    let port = port16(p.port, &l.name)?;
                    let protocol = Protocol::from_model(p.protocol);
                    ports.push((port, protocol));
                    let name = inbound_service_name(port);
                    services
                        .entry(name.clone())
                        .or_insert_with(|| Arc::new(inbound_service(&name, app, port, protocol)));
                }
                if matches!(l.kind, Some(m::listener::Kind::Tunnel(_))) {
                    ListenerKind::Tunnel { ports }
                } else {
                    ListenerKind::Inbound { ports }
                }
            }
            None => {
                return Err(CompileError::Invalid(format!(
                    "listener {}: no kind",
                    l.name
                )));
            }
        };
        listeners.push(ListenerSpec {
            name: l.name.clone(),
            address,
            kind,
        });
    }
    let security = compile_security(cfg.security.as_ref(), &node)?;
    Ok(Snapshot {
        version: cfg.version.clone(),
        source: cfg.clone(),
        node,
        services,
        hosts,
        wildcard_hosts,
        vips,
        listeners,
        security,
    })
}

fn compile_security(
    sec: Option<&m::Security>,
    node: &NodeInfo,
) -> Result<SecuritySpec, CompileError> {
    let Some(sec) = sec else {
        return Ok(SecuritySpec {
            mode_source: "default".into(),
            ..Default::default()
        });
    };
    let trust = Trust::from_pem(sec.trust_bundles.iter().map(|b| {
        (
            b.trust_domain.as_str(),
            b.roots_pem.as_str(),
            b.cluster.as_str(),
        )
    }))
    .map_err(|e| CompileError::Invalid(format!("security.trustBundles: {e}")))?;
    let mode_of = |m: i32| match m::MtlsMode::try_from(m) {
        Ok(m::MtlsMode::Strict) => MtlsMode::Strict,
        _ => MtlsMode::Permissive,
    };
    // A workload selector beats a namespace-wide policy beats the default.
    let chosen = sec
        .mtls_policies
        .iter()
        .filter(|p| !p.selector.is_empty() && selects(&p.selector, &node.labels))
        .chain(sec.mtls_policies.iter().filter(|p| p.selector.is_empty()))
        .next();
    let (mode, mode_source) = match chosen {
        Some(p) => (mode_of(p.mode), p.name.clone()),
        None => (mode_of(sec.default_mtls_mode), "default".to_string()),
    };
    Ok(SecuritySpec {
        trust: Arc::new(trust),
        mode,
        mode_source,
        authz: Policies::compile(&sec.authorization_policies, &node.labels),
        jwt: crate::jwt::Authenticator::compile(&sec.jwt_policies, &node.labels)
            .map_err(|e| CompileError::Invalid(format!("security.jwtPolicies: {e}")))?,
    })
}

fn inbound_service(name: &str, app: IpAddr, port: u16, protocol: Protocol) -> ServiceSpec {
    let name: Arc<str> = name.into();
    ServiceSpec {
        default_route: default_route(&name),
        name,
        ports: vec![PortSpec {
            port,
            protocol,
            target_port: port,
        }],
        endpoints: vec![EndpointSpec::at(SocketAddr::new(app, port))],
        priorities: vec![0],
        routes: vec![],
        lb: LbSpec {
            policy: Policy::RoundRobin,
            hash_key: HashKeySpec::SourceIp,
            overprovisioning: 1.4,
        },
        ring: None,
        outlier: OutlierSettings {
            enabled: false,
            ..Default::default()
        },
        pool: PoolLimits::default(),
        inbound: true,
    }
}

fn default_retry() -> RetrySettings {
    RetrySettings {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetrySettings::DEFAULT_RETRY_ON.to_vec(),
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
        budget: BudgetSettings::default(),
    }
}

fn default_route(service: &Arc<str>) -> Route {
    Route {
        name: "default".into(),
        matches: vec![],
        backends: vec![Backend {
            service: service.to_string(),
            port: None,
            weight: 1,
        }],
        timeout: None,
        retry: Some(default_retry()),
        fault: None,
        mirror: None,
        rate_limit: None,
        request_headers: None,
        response_headers: None,
        ports: vec![],
        redirect: None,
        rewrite: None,
    }
}

fn compile_service(s: &m::Service, node: &NodeInfo) -> Result<ServiceSpec, CompileError> {
    let name: Arc<str> = s.name.as_str().into();
    let mut ports = Vec::new();
    for p in &s.ports {
        let port = port16(p.port, &s.name)?;
        ports.push(PortSpec {
            port,
            protocol: Protocol::from_model(p.protocol),
            target_port: opt_port(p.target_port).unwrap_or(port),
        });
    }
    let lb_model = s.load_balancer.clone().unwrap_or_default();
    let loc_model = lb_model.locality.clone().unwrap_or_default();
    let failover = loc_model.failover_regions.clone();
    let own_cluster: Label = node.cluster.as_str().into();
    let mut endpoints = Vec::new();
    let mut priorities = Vec::new();
    for e in &s.endpoints {
        let (ip, fixed_port) = match e.address.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => (
                e.address.parse::<IpAddr>().map_err(|_| {
                    CompileError::Invalid(format!("{}: endpoint {:?}", s.name, e.address))
                })?,
                None,
            ),
        };
        let mut over = HashMap::new();
        for p in &e.ports {
            over.insert(port16(p.port, &s.name)?, port16(p.target_port, &s.name)?);
        }
        let locality = e
            .locality
            .clone()
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
            })
            .unwrap_or_default();
        priorities.push(if loc_model.disabled {
            0
        } else {
            locality::priority(&node.locality, &locality, &failover)
        });
        let tunnel = opt_port(e.tunnel_port).map(|port| Tunnel {
            port,
            identity: (!e.identity.is_empty()).then(|| e.identity.as_str().into()),
            via: (!e.via_cluster.is_empty()).then(|| {
                Arc::new(Via {
                    cluster: e.via_cluster.as_str().into(),
                    service: if e.via_service.is_empty() {
                        name.clone()
                    } else {
                        e.via_service.as_str().into()
                    },
                    // This endpoint's target ports (the cluster behind it
                    // may run the service on other target ports).
                    ports: ports
                        .iter()
                        .map(|p| (over.get(&p.port).copied().unwrap_or(p.target_port), p.port))
                        .collect(),
                })
            }),
        });
        let cluster: Label = tunnel
            .as_ref()
            .and_then(|t| t.via.as_ref())
            .map_or_else(|| own_cluster.clone(), |v| v.cluster.clone());
        let workload = Arc::new(match tunnel.as_ref().and_then(|t| t.identity.as_deref()) {
            Some(id) => Workload::of_spiffe(id, cluster),
            None => Workload::unknown(cluster),
        });
        endpoints.push(EndpointSpec {
            ip,
            fixed_port,
            ports: over,
            locality,
            weight: if e.weight == 0 { 1 } else { e.weight },
            healthy: !e.unhealthy,
            tunnel,
            workload,
        });
    }
    let policy = match lb_model.policy() {
        m::load_balancer::Policy::LeastRequest => Policy::LeastRequest,
        m::load_balancer::Policy::RoundRobin => Policy::RoundRobin,
        m::load_balancer::Policy::RingHash => Policy::RingHash,
    };
    let hash_key = match lb_model.hash_key.and_then(|h| h.kind) {
        Some(m::hash_key::Kind::Header(h)) => HashKeySpec::Header(
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| CompileError::Invalid(format!("{}: hash header", s.name)))?,
        ),
        Some(m::hash_key::Kind::Cookie(c)) => HashKeySpec::Cookie(c),
        _ => HashKeySpec::SourceIp,
    };
    let ring = (policy == Policy::RingHash).then(|| {
        let keys: Vec<String> = endpoints.iter().map(|e| e.key().to_string()).collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        Ring::build(&keys, &weights)
    });
    let od = s.outlier_detection.unwrap_or_default();
    let def = OutlierSettings::default();
    let outlier = OutlierSettings {
        consecutive_5xx: if s.outlier_detection.is_some() {
            od.consecutive_5xx
        } else {
            def.consecutive_5xx
        },
        consecutive_gateway_errors: if s.outlier_detection.is_some() {
            od.consecutive_gateway_errors
        } else {
            def.consecutive_gateway_errors
        },
        base_ejection_time: dur(od.base_ejection_time.as_ref()).unwrap_or(def.base_ejection_time),
        max_ejection_time: dur(od.max_ejection_time.as_ref()).unwrap_or(def.max_ejection_time),
        max_ejection_percent: if od.max_ejection_percent == 0 {
            def.max_ejection_percent
        } else {
            od.max_ejection_percent
        },
        enabled: !od.disabled,
    };
    let cp = s.connection_pool.unwrap_or_default();
    let d = PoolLimits::default();
    let nz = |v: u32, dflt: usize| if v == 0 { dflt } else { v as usize };
    let pool = PoolLimits {
        max_connections: nz(cp.max_connections, d.max_connections),
        max_pending: nz(cp.max_pending_requests, d.max_pending),
        max_requests_per_connection: (cp.max_requests_per_connection != 0)
            .then_some(cp.max_requests_per_connection),
        max_requests: nz(cp.max_requests, d.max_requests),
        connect_timeout: dur(cp.connect_timeout.as_ref()).unwrap_or(d.connect_timeout),
        idle_timeout: dur(cp.idle_timeout.as_ref()).unwrap_or(d.idle_timeout),
    };
    let mut routes = Vec::new();
    for (i, r) in s.routes.iter().enumerate() {
        routes.push(compile_route(r, i, &name)?);
    }
    Ok(ServiceSpec {
        default_route: default_route(&name),
        name,
        ports,
        endpoints,
        priorities,
        routes,
        lb: LbSpec {
            policy,
            hash_key,
            overprovisioning: if loc_model.overprovisioning_factor > 0.0 {
                loc_model.overprovisioning_factor
            } else {
                1.4
            },
        },
        ring,
        outlier,
        pool,
        inbound: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Snapshot {
        compile(&isthmus_api::parse_yaml(yaml).unwrap()).unwrap()
    }

    const Y: &str = r#"
node: {name: fe, namespace: shop, locality: {region: eu-west, zone: eu-west-a}}
listeners:
  - {name: out, address: "127.0.0.1:0", http: {}}
  - {name: in, address: "127.0.0.1:0", inbound: {ports: [{port: 8080}]}}
services:
  - name: catalog.shop
    hosts: ["*.catalog.example", "cat.example"]
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}, {port: 9090, protocol: GRPC}]
    endpoints:
      - {address: 127.0.0.1, locality: {region: eu-west, zone: eu-west-a}}
      - {address: 127.0.0.2, ports: [{port: 80, targetPort: 18080}], locality: {region: eu-west, zone: eu-west-b}}
      - {address: 127.0.0.3, locality: {region: us-east}}
    routes:
      - name: canary
        matches: [{headers: [{name: x-canary, exact: always}]}]
        backends: [{service: catalog.shop, weight: 1}]
        retry: {attempts: 0}
      - matches: [{path: {prefix: /api}}]
        timeout: 2s
        retry: {attempts: 3, retryOn: [5xx, unavailable], perTryTimeout: 0.5s}
"#;

    #[test]
    fn hosts_vips_ports_and_priorities() {
        let s = cfg(Y);
        for h in [
            "catalog.shop",
            "catalog",
            "CATALOG.shop.svc.cluster.local",
            "catalog.shop.svc",
            "cat.example",
            "a.b.catalog.example",
        ] {
            assert!(s.service_for_host(h).is_some(), "{h}");
        }
        assert!(s.service_for_host("catalog.example").is_none());
        assert!(s.service_for_host("other").is_none());
        let c = s
            .service_for_vip("10.96.0.10:9090".parse().unwrap())
            .unwrap();
        assert_eq!(&*c.name, "catalog.shop");
        assert!(
            s.service_for_vip("10.96.0.10:81".parse().unwrap())
                .is_none()
        );
        assert_eq!(c.priorities, vec![0, 1, 2]);
        let p80 = *c.port(None).unwrap();
        assert_eq!(c.endpoints[0].addr(&p80), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            c.endpoints[1].addr(&p80),
            "127.0.0.2:18080".parse().unwrap()
        );
        let grpc = *c.port(Some(9090)).unwrap();
        assert_eq!(grpc.protocol, Protocol::Grpc);
        assert_eq!(
            c.endpoints[1].addr(&grpc),
            "127.0.0.2:9090".parse().unwrap()
        );
        assert!(c.port(Some(1)).is_none());
        assert!(s.services.contains_key("inbound|8080"));
    }

    #[test]
    fn endpoints_via_other_clusters_carry_that_clusters_name_and_target_ports() {
        let s = cfg(r#"
node: {name: fe, namespace: shop, locality: {region: eu-west}}
services:
  - name: catalog.shop.svc.clusterset.local
    ports: [{port: 80, targetPort: 8080}, {port: 9090, protocol: GRPC}]
    endpoints:
      - {address: 127.0.0.1, locality: {region: eu-west}}
      - {address: 10.0.0.9, tunnelPort: 15009, viaCluster: eu-central, viaService: catalog.shop,
         identity: "spiffe://eu-central.isthmus.local", ports: [{port: 80, targetPort: 9080}],
         locality: {region: eu-central}}
"#);
        let c = &s.services["catalog.shop.svc.clusterset.local"];
        let (http, grpc) = (*c.port(Some(80)).unwrap(), *c.port(Some(9090)).unwrap());
        // The local endpoint on the local target port, the gateway on the
        // other cluster's.
        assert_eq!(
            c.endpoints[0].addr(&http),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(c.endpoints[1].addr(&http), "10.0.0.9:9080".parse().unwrap());
        let via = c.endpoints[1]
            .tunnel
            .as_ref()
            .unwrap()
            .via
            .as_ref()
            .unwrap();
        assert_eq!(&*via.cluster, "eu-central");
        // The CONNECT names the service there, with the service port.
        assert_eq!(via.authority(9080).as_deref(), Some("catalog.shop:80"));
        assert_eq!(
            via.authority(c.endpoints[1].addr(&grpc).port()).as_deref(),
            Some("catalog.shop:9090")
        );
        assert_eq!(c.priorities, vec![0, 2], "another region comes after ours");
    }

    #[test]
    fn route_defaults_and_overrides() {
        let s = cfg(Y);
        let c = &s.services["catalog.shop"];
        assert!(c.routes[0].retry.is_none(), "attempts: 0 disables retries");
        let r1 = &c.routes[1];
        assert_eq!(&*r1.name, "route-1");
        assert_eq!(r1.timeout, Some(Duration::from_secs(2)));
        let retry = r1.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, 3);
        assert_eq!(
            retry.retry_on,
            vec![RetryOn::ServerError, RetryOn::Grpc(14)]
        );
        assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            r1.backends[0].service, "catalog.shop",
            "no backends: the service"
        );
        assert_eq!(c.default_route.retry.as_ref().unwrap().attempts, 2);
        assert_eq!(c.lb.policy, Policy::LeastRequest);
        assert!(c.outlier.enabled);
        assert_eq!(c.pool, PoolLimits::default());
    }

    #[test]
    fn invalid_config_is_refused_with_the_field() {
        let mut c = isthmus_api::parse_yaml(Y).unwrap();
        c.services[0].routes[0].backends[0].service = "nope".into();
        let e = compile(&c).unwrap_err().to_string();
        assert!(
            e.contains("services[0].routes[0].backends[0].service"),
            "{e}"
        );
    }
}
