//! The service catalog: one `model::Service` per Kubernetes Service, named
//! `<name>.<namespace>`, with its cluster IPs, ports (protocol from
//! `appProtocol` or the port name, as Istio reads them), endpoints from its
//! EndpointSlices (ready or not, zone → locality, named target ports
//! resolved per endpoint) and its DestinationPolicy.

use std::collections::BTreeMap;

use isthmus_api::model;
use k8s_openapi::api::core::v1::Service;

use super::{Problem, proto_duration};
use crate::resources::destination::{DestinationPolicy, LbPolicy};
use crate::store::registry::Workload;
use crate::store::{ObjectKey, Resource, Snapshot};

pub use crate::store::slice::SERVICE_NAME_LABEL;
use crate::store::slice::Slice;

/// The service catalog and the problems met building it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// By model name (`<name>.<namespace>`).
    pub services: BTreeMap<String, model::Service>,
    pub problems: Vec<Problem>,
    /// Timeouts and retries from DestinationPolicy, for routes that set
    /// none (applied by `routes::attach`).
    pub route_defaults: BTreeMap<String, RouteDefaults>,
    /// Mesh-wide and per-namespace security (`translate::security`).
    pub security: super::security::SecurityCatalog,
    /// Linked clusters: the east-west gateway's peers, their trust
    /// (`translate::links`).
    pub links: super::links::Links,
    /// Local services linked clusters may reach through our east-west
    /// gateway (ServiceExports of existing Services, and the federation
    /// channel): what the gateway is sent.
    pub exported: std::collections::BTreeSet<String>,
    /// The names `imports::attach` made (clusterset and per-cluster), by
    /// proxy name: they get ClusterSet IPs (`vips::assign`).
    pub imported: BTreeMap<String, super::vips::Imported>,
    /// Clusterset names of headless services: no ClusterSet IP of their
    /// own (their pods' names have them, `headless`).
    pub headless: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDefaults {
    pub timeout: Option<pbjson_types::Duration>,
    pub retry: Option<model::RetryPolicy>,
}

/// The model name of a Service.
pub fn service_name(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// The services step alone, endpoints filled (unit tests of the later
/// steps start from it; everything else calls `translate::translate`).
#[cfg(test)]
pub(crate) fn catalog(snap: &Snapshot) -> Catalog {
    catalog_with(snap, &[])
}

/// The catalog with registered workloads as endpoints too: a Service with
/// a selector gets every workload of its namespace whose labels match (how
/// endpoints exist in `files` mode, where no EndpointSlice controller runs).
#[cfg(test)]
pub(crate) fn catalog_with(snap: &Snapshot, workloads: &[&Workload]) -> Catalog {
    let (mut out, endpoints) = catalog_shells(snap, workloads);
    for s in out.services.values_mut() {
        endpoints.fill(s);
    }
    out
}

/// Where each service's endpoints come from, resolved when asked: the
/// discovery offer fills, encodes and drops them one service at a time, so
/// a large cluster's endpoints never exist twice in full.
pub struct Endpoints<'a> {
    region: String,
    slices_of: BTreeMap<(&'a str, &'a str), Vec<&'a Slice>>,
    /// By model name: the namespace and the Kubernetes Service.
    services: std::collections::HashMap<String, (&'a str, &'a Service)>,
    workloads: &'a [&'a Workload],
    /// The Mesh's trust domain: endpoints with a sidecar are expected to
    /// present `spiffe://<td>/ns/<ns>/sa/<service account>`.
    trust_domain: String,
    /// Pods whose sidecar has a mesh transport (annotation
    /// `isthmus.dev/tunnel-port`), by pod IP: (port, identity).
    meshed_pods: std::collections::HashMap<std::net::IpAddr, (u32, String)>,
    /// Services that also get another's local endpoints: a clusterset
    /// service → the exported local Service (`imports`).
    also: std::collections::HashMap<String, String>,
    /// One pod of a headless Service (`headless`): its service → the
    /// local Service and the pod's hostname.
    pods: std::collections::HashMap<String, (String, String)>,
}

/// The annotation (set by the sidecar injector) saying a pod's sidecar
/// accepts the mesh transport, and on which port.
pub const TUNNEL_PORT_ANNOTATION: &str = "isthmus.dev/tunnel-port";

/// The SPIFFE ID of a service account ("" without a trust domain).
pub fn workload_identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    if trust_domain.is_empty() || service_account.is_empty() {
        return String::new();
    }
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

impl Endpoints<'_> {
    /// `service` (a clusterset service) also gets `local`'s endpoints.
    pub fn include(&mut self, service: &str, local: &str) {
        self.also.insert(service.to_string(), local.to_string());
    }

    /// `service` gets the endpoint of `local` whose hostname is `hostname`
    /// (one pod of a headless Service).
    pub fn pod(&mut self, service: &str, local: &str, hostname: &str) {
        self.pods.insert(
            service.to_string(),
            (local.to_string(), hostname.to_string()),
        );
    }

    /// The hostnames of `local`'s endpoints (sorted, once each), and
    /// whether that endpoint is healthy.
    pub fn hostnames(&self, local: &str) -> Vec<(String, bool)> {
        let mut s = model::Service {
            name: local.to_string(),
            ..Default::default()
        };
        self.fill(&mut s);
        let mut out: Vec<(String, bool)> = s
            .endpoints
            .into_iter()
            .filter(|e| !e.hostname.is_empty())
            .map(|e| (e.hostname, !e.unhealthy))
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Sets `service.endpoints` from its EndpointSlices and workloads,
    /// before the endpoints it already has (other clusters' gateways).
    pub fn fill(&self, service: &mut model::Service) {
        let pod = self.pods.get(&service.name);
        let base = match pod {
            Some((local, _)) => local,
            None => self.also.get(&service.name).unwrap_or(&service.name),
        };
        let Some((ns, svc)) = self.services.get(base) else {
            return;
        };
        let name = base.strip_suffix(&format!(".{ns}")).unwrap_or(base);
        let slices = self
            .slices_of
            .get(&(*ns, name))
            .map_or(&[][..], Vec::as_slice);
        // One pod's service builds that pod's endpoint only (a StatefulSet
        // of N pods: N endpoints, not N²).
        let only = pod.map(|(_, hostname)| hostname.as_str());
        let mut endpoints = slice_endpoints(svc, slices, &self.region, only);
        for e in &mut endpoints {
            if let Ok(ip) = e.address.parse()
                && let Some((port, id)) = self.meshed_pods.get(&ip)
            {
                e.tunnel_port = *port;
                e.identity = id.clone();
            }
        }
        // A slice may repeat an address (a pod moving between slices):
        // once, unhealthy if either says so.
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.dedup_by(|later, kept| {
            let same = later.address == kept.address;
            if same {
                kept.unhealthy |= later.unhealthy;
            }
            same
        });
        let mut registered = Vec::new();
        add_workloads(
            &mut registered,
            ns,
            svc,
            self.workloads,
            (&self.region, &self.trust_domain),
            only,
        );
        // A pod both in a slice and registered by its sidecar (kube mode)
        // keeps the slice's view, and is unhealthy if either says so (its
        // conditions, or its sidecar's checks). Registered workloads are
        // distinct however they are addressed (files mode: several on one
        // host's loopback).
        if !registered.is_empty() {
            let sliced: std::collections::HashMap<String, usize> = endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.address.clone(), i))
                .collect();
            for w in registered {
                match sliced.get(&w.address) {
                    Some(&i) => endpoints[i].unhealthy |= w.unhealthy,
                    None => endpoints.push(w),
                }
            }
            endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        }
        endpoints.append(&mut service.endpoints);
        endpoints.shrink_to_fit();
        service.endpoints = endpoints;
    }
}

/// The catalog without endpoints, and how to get them.
pub fn catalog_shells<'a>(
    snap: &'a Snapshot,
    workloads: &'a [&'a Workload],
) -> (Catalog, Endpoints<'a>) {
    let (region, trust_domain) = snap
        .of_kind("Mesh")
        .find_map(|(_, r)| match r {
            Resource::Mesh(m) => {
                Some((m.spec.locality.region.clone(), m.spec.trust_domain.clone()))
            }
            _ => None,
        })
        .unwrap_or_default();
    let mut meshed_pods = std::collections::HashMap::new();
    for (key, r) in snap.of_kind("Pod") {
        let Resource::Pod(pod) = r else { continue };
        let port = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TUNNEL_PORT_ANNOTATION))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0);
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        if let (Some(port), Some(ip)) = (port, ip) {
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default");
            let ns = key.namespace.as_deref().unwrap_or("default");
            meshed_pods.insert(
                ip,
                (u32::from(port), workload_identity(&trust_domain, ns, sa)),
            );
        }
    }
    let mut out = Catalog::default();
    let policies = policies_by_service(snap, &mut out.problems);
    // EndpointSlices by (namespace, service), once.
    let mut slices_of: BTreeMap<(&str, &str), Vec<&Slice>> = BTreeMap::new();
    for (k, r) in snap.of_kind("EndpointSlice") {
        let Resource::EndpointSlice(s) = r else {
            continue;
        };
        if let (Some(ns), Some(service)) = (k.namespace.as_deref(), s.service.as_deref()) {
            slices_of.entry((ns, service)).or_default().push(s);
        }
    }
    let mut services = std::collections::HashMap::new();
    for (key, r) in snap.of_kind("Service") {
        let Resource::Service(svc) = r else { continue };
        let ns = key.namespace.as_deref().unwrap_or("default");
        let mut service = translate_service(&key.name, ns, svc);
        services.insert(service.name.clone(), (ns, &**svc));
        if let Some(p) = policies.get(&(ns.to_string(), key.name.clone())) {
            apply_policy(&mut service, p);
            let defaults = route_defaults(p, &mut out.problems);
            if defaults != RouteDefaults::default() {
                out.route_defaults.insert(service.name.clone(), defaults);
            }
        }
        out.services.insert(service.name.clone(), service);
    }
    let endpoints = Endpoints {
        region,
        slices_of,
        services,
        workloads,
        trust_domain,
        meshed_pods,
        also: Default::default(),
        pods: Default::default(),
    };
    (out, endpoints)
}

/// DestinationPolicies beyond the local Services (once imports are in the
/// catalog): a policy on `catalog` also governs
/// `catalog.<ns>.svc.clusterset.local` (the same service, clusterset-wide:
/// its locality failover can name other clusters' regions), and one may
/// target an imported name such as `reviews-us-east`. A policy whose target
/// is neither is reported.
pub fn apply_policies_beyond_services(catalog: &mut Catalog, snap: &Snapshot) {
    let mut ignored = Vec::new(); // conflicts: reported by `catalog_shells`
    for ((ns, name), p) in policies_by_service(snap, &mut ignored) {
        let local = service_name(&name, &ns);
        let local_service = snap.objects.contains_key(&(
            "Service",
            ObjectKey {
                namespace: Some(ns.clone()),
                name: name.clone(),
            },
        ));
        // The local Service got it in `catalog_shells`; an imported name
        // (no such Service here) gets it now.
        let mut targets = vec![super::imports::clusterset_name(&name, &ns)];
        if !local_service {
            targets.push(local);
        }
        let mut found = local_service;
        for t in targets {
            let Some(s) = catalog.services.get_mut(&t) else {
                continue;
            };
            found = true;
            apply_policy(s, p);
            let defaults = route_defaults(p, &mut ignored);
            if defaults != RouteDefaults::default() {
                catalog.route_defaults.insert(t, defaults);
            }
        }
        if !found {
            catalog.problems.push(Problem {
                kind: "DestinationPolicy",
                key: key_of(p),
                reason: "TargetNotFound",
                message: format!(
                    "Service {ns}/{name} does not exist (here or imported); the policy applies when it does"
                ),
            });
        }
    }
}

fn key_of(p: &DestinationPolicy) -> ObjectKey {
    ObjectKey {
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone().unwrap_or_default(),
    }
}

/// One policy per service: the oldest wins (then the first by name), as
/// Gateway API policy attachment resolves conflicts.
fn policies_by_service<'a>(
    snap: &'a Snapshot,
    problems: &mut Vec<Problem>,
) -> BTreeMap<(String, String), &'a DestinationPolicy> {
    let mut all: Vec<&DestinationPolicy> = snap
        .of_kind("DestinationPolicy")
        .filter_map(|(_, r)| match r {
            Resource::DestinationPolicy(p) => Some(&**p),
            _ => None,
        })
        .collect();
    all.sort_by(|a, b| {
        let created = |p: &DestinationPolicy| p.metadata.creation_timestamp.clone().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut out: BTreeMap<(String, String), &DestinationPolicy> = BTreeMap::new();
    for p in all {
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let target = (ns, p.spec.target_ref.name.clone());
        if let Some(winner) = out.get(&target) {
            problems.push(Problem {
                kind: "DestinationPolicy",
                key: key_of(p),
                reason: "Conflict",
                message: format!(
                    "Service {}/{} already has DestinationPolicy {} (older); this one is ignored",
                    target.0,
                    target.1,
                    winner.metadata.name.as_deref().unwrap_or_default()
                ),
            });
            continue;
        }
        out.insert(target, p);
    }
    out
}

pub use isthmus_api::protocol::protocol_of;

fn translate_service(name: &str, ns: &str, svc: &Service) -> model::Service {
    let spec = svc.spec.as_ref();
    let vips = match spec.and_then(|s| s.cluster_ips.as_ref()) {
        Some(ips) => ips.as_slice(),
        None => spec
            .and_then(|s| s.cluster_ip.as_ref())
            .map_or(&[][..], std::slice::from_ref),
    }
    .iter()
    .filter(|ip| !ip.is_empty() && *ip != "None")
    .cloned()
    .collect();
    let kports = tcp_ports(svc);
    let ports = kports
        .iter()
        .map(|p| model::ServicePort {
            port: p.port as u32,
            protocol: protocol_of(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
            target_port: match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    *n as u32
                }
                _ => 0, // named: resolved per endpoint from its slice
            },
            name: p.name.clone().unwrap_or_default(),
        })
        .collect();
    model::Service {
        name: service_name(name, ns),
        hosts: vec![format!("{name}.{ns}.svc")],
        vips,
        ports,
        endpoints: Vec::new(),
        routes: Vec::new(),
        load_balancer: None,
        outlier_detection: None,
        connection_pool: None,
    }
}

/// A Service's endpoints from its EndpointSlices (`only`: the one with
/// that hostname).
fn slice_endpoints(
    svc: &Service,
    slices: &[&Slice],
    region: &str,
    only: Option<&str>,
) -> Vec<model::Endpoint> {
    let kports = tcp_ports(svc);
    let mut endpoints = Vec::new();
    for slice in slices {
        if !slice.ip {
            continue;
        }
        // Service port → the port this slice's endpoints listen on, by name.
        let overrides: Vec<model::EndpointPort> = kports
            .iter()
            .filter_map(|sp| {
                let target = slice
                    .ports
                    .iter()
                    .find(|ep| ep.name == sp.name.as_deref().unwrap_or(""))?;
                Some(model::EndpointPort {
                    port: sp.port as u32,
                    target_port: u32::from(target.port?),
                })
            })
            .collect();
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let hostname = slice.hostname(i).unwrap_or_default();
            if only.is_some_and(|h| h != hostname) {
                continue;
            }
            // Ready unset means ready (EndpointSlice semantics); a
            // terminating endpoint still serving is kept, unhealthy.
            if !ep.ready && !ep.serving && ep.terminating {
                continue;
            }
            endpoints.push(model::Endpoint {
                address: ep.address.to_string(),
                ports: overrides.clone(),
                locality: Some(model::Locality {
                    region: region.to_string(),
                    zone: ep.zone.as_deref().unwrap_or_default().to_string(),
                }),
                labels: Default::default(),
                weight: 1,
                unhealthy: !ep.ready,
                hostname: hostname.to_string(),
                ..Default::default()
            });
        }
    }
    endpoints
}

/// The registered workloads `svc` selects as endpoints (`only`: the one
/// with that hostname); `(region, trust domain)` of the cluster.
fn add_workloads(
    endpoints: &mut Vec<model::Endpoint>,
    ns: &str,
    svc: &Service,
    workloads: &[&Workload],
    (region, trust_domain): (&str, &str),
    only: Option<&str>,
) {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    let kports = tcp_ports(svc);
    // Behind a headless Service a workload is named by its own name, as
    // a StatefulSet's pods are (their hostname is the pod's name).
    let headless = is_headless(svc);
    for w in workloads {
        let selected =
            w.namespace == ns && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v));
        let hostname = if headless { w.name.as_str() } else { "" };
        if !selected || only.is_some_and(|h| h != hostname) {
            continue;
        }
        // Each service port → the workload's port: numeric target, or the
        // container port of that name.
        let ports: Vec<model::EndpointPort> = kports
            .iter()
            .filter_map(|sp| {
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                let target = match &sp.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
                    Some(IntOrString::String(name)) => {
                        w.ports.iter().find(|(n, _)| n == name).map(|(_, p)| *p)?
                    }
                    None => u16::try_from(sp.port).ok()?,
                };
                Some(model::EndpointPort {
                    port: sp.port as u32,
                    target_port: u32::from(target),
                })
            })
            .collect();
        // Health at the source: one of the ports this Service reaches
        // fails its sidecar's check.
        let unhealthy = ports
            .iter()
            .any(|p| u16::try_from(p.target_port).is_ok_and(|t| w.unhealthy_ports.contains(&t)));
        endpoints.push(model::Endpoint {
            address: w.address.to_string(),
            ports,
            locality: Some(model::Locality {
                region: if w.region.is_empty() {
                    region.to_string()
                } else {
                    w.region.clone()
                },
                zone: w.zone.clone(),
            }),
            labels: w.labels.clone().into_iter().collect(),
            weight: 1,
            unhealthy,
            tunnel_port: w.tunnel_port.map_or(0, u32::from),
            identity: if w.tunnel_port.is_some() {
                workload_identity(trust_domain, &w.namespace, &w.service_account)
            } else {
                String::new()
            },
            // Local endpoints; imported ones come with federation.
            via_cluster: String::new(),
            via_service: String::new(),
            hostname: hostname.to_string(),
        });
    }
}

/// A headless Service (`clusterIP: None`): no virtual IP, its pods are
/// named (StatefulSets).
pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// The Service's TCP ports (UDP and SCTP are not proxied).
fn tcp_ports(svc: &Service) -> Vec<&k8s_openapi::api::core::v1::ServicePort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect()
}

fn route_defaults(p: &DestinationPolicy, problems: &mut Vec<Problem>) -> RouteDefaults {
    let retry = p.spec.retry.as_ref().map(|r| {
        let (known, unknown): (Vec<String>, Vec<String>) = r
            .retry_on
            .iter()
            .cloned()
            .partition(|c| isthmus_api::validate::RETRY_ON.contains(&c.as_str()));
        if !unknown.is_empty() {
            problems.push(Problem {
                kind: "DestinationPolicy",
                key: key_of(p),
                reason: "UnsupportedValue",
                message: format!(
                    "retryOn {unknown:?} ignored; known conditions: {}",
                    isthmus_api::validate::RETRY_ON.join(", ")
                ),
            });
        }
        model::RetryPolicy {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.as_ref().and_then(proto_duration),
            retry_on: known,
            backoff_base: None,
            backoff_max: None,
            budget: r.budget_percent.map(|pct| model::RetryBudget {
                retry_ratio: f64::from(pct) / 100.0,
                min_retries_per_second: 0,
                ttl: None,
            }),
        }
    });
    RouteDefaults {
        timeout: p.spec.timeout.as_ref().and_then(proto_duration),
        retry,
    }
}

fn apply_policy(s: &mut model::Service, p: &DestinationPolicy) {
    let spec = &p.spec;
    if spec.load_balancer.is_some() || spec.locality.is_some() {
        let lb = spec.load_balancer.clone().unwrap_or_default();
        s.load_balancer = Some(model::LoadBalancer {
            policy: match lb.policy {
                LbPolicy::LeastRequest => model::load_balancer::Policy::LeastRequest,
                LbPolicy::RoundRobin => model::load_balancer::Policy::RoundRobin,
                LbPolicy::RingHash => model::load_balancer::Policy::RingHash,
            } as i32,
            hash_key: lb.hash_key.map(|h| model::HashKey {
                kind: Some(if let Some(header) = h.header {
                    model::hash_key::Kind::Header(header)
                } else if let Some(cookie) = h.cookie {
                    model::hash_key::Kind::Cookie(cookie)
                } else {
                    model::hash_key::Kind::SourceIp(true)
                }),
            }),
            locality: spec.locality.as_ref().map(|l| model::LocalityBalancing {
                disabled: l.disabled,
                overprovisioning_factor: l
                    .overprovisioning_percent
                    .map_or(0.0, |p| f64::from(p) / 100.0),
                failover_regions: l.failover.clone(),
            }),
        });
    }
    if let Some(o) = &spec.outlier_detection {
        s.outlier_detection = Some(model::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
            base_ejection_time: o.base_ejection_time.as_ref().and_then(proto_duration),
            max_ejection_time: None,
            max_ejection_percent: o.max_ejection_percent.unwrap_or(0),
            disabled: o.disabled,
        });
    }
    if let Some(c) = &spec.connection_pool {
        s.connection_pool = Some(model::ConnectionPool {
            max_connections: c.max_connections.unwrap_or(0),
            max_pending_requests: c.max_pending_requests.unwrap_or(0),
            max_requests_per_connection: c.max_requests_per_connection.unwrap_or(0),
            max_requests: c.max_requests.unwrap_or(0),
            connect_timeout: c.connect_timeout.as_ref().and_then(proto_duration),
            idle_timeout: c.idle_timeout.as_ref().and_then(proto_duration),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(text: &str) -> Snapshot {
        crate::store::files::snapshot_of(text)
    }

    const CATALOG: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west, zone: eu-west-a}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports:
    - {name: http-web, port: 80, targetPort: web}
    - {name: rpc, port: 9090, targetPort: 9090, appProtocol: grpc}
    - {name: metrics, port: 9100, targetPort: 9100}
    - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: catalog-abc
  namespace: shop
  labels: {kubernetes.io/service-name: catalog}
addressType: IPv4
ports:
  - {name: http-web, port: 8080}
  - {name: rpc, port: 9090}
  - {name: metrics, port: 9100}
endpoints:
  - addresses: [10.0.1.7]
    zone: eu-west-b
    conditions: {ready: true}
  - addresses: [10.0.1.5]
    zone: eu-west-a
  - addresses: [10.0.1.9]
    conditions: {ready: false}
  - addresses: [10.0.1.11]
    conditions: {ready: false, serving: false, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other
  namespace: shop
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
endpoints: [{addresses: [10.0.9.9]}]
"#;

    #[test]
    fn services_endpoints_ports_and_localities() {
        let c = catalog(&snapshot(CATALOG));
        assert!(c.problems.is_empty());
        let s = &c.services["catalog.shop"];
        assert_eq!(s.hosts, ["catalog.shop.svc"]);
        assert_eq!(s.vips, ["10.96.0.10", "fd00::10"]);
        let ports: Vec<(u32, model::Protocol, u32)> = s
            .ports
            .iter()
            .map(|p| (p.port, p.protocol(), p.target_port))
            .collect();
        assert_eq!(
            ports,
            [
                (80, model::Protocol::Http, 0),
                (9090, model::Protocol::Grpc, 9090),
                (9100, model::Protocol::Tcp, 9100),
            ],
            "UDP ports are left out; a named target port is resolved per endpoint"
        );
        let eps: Vec<(&str, &str, bool)> = s
            .endpoints
            .iter()
            .map(|e| {
                let l = e.locality.as_ref().unwrap();
                assert_eq!(l.region, "eu-west");
                (e.address.as_str(), l.zone.as_str(), e.unhealthy)
            })
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.1.5", "eu-west-a", false),
                ("10.0.1.7", "eu-west-b", false),
                ("10.0.1.9", "", true),
            ],
            "sorted; not ready is unhealthy; terminating and not serving is gone"
        );
        assert!(s.endpoints[0].ports.contains(&model::EndpointPort {
            port: 80,
            target_port: 8080
        }));
        assert!(
            !c.services.contains_key("reviews.shop"),
            "a slice alone is no service"
        );
    }

    #[test]
    fn protocols_follow_app_protocol_then_the_port_name() {
        use model::Protocol::*;
        for (app, name, want) in [
            (Some("kubernetes.io/h2c"), None, Http2),
            (Some("grpc"), Some("tcp-x"), Grpc),
            (None, Some("http"), Http),
            (None, Some("grpc-inventory"), Grpc),
            (None, Some("http2-api"), Http2),
            (None, Some("web"), Tcp),
            (None, None, Tcp),
            (Some("unknown"), Some("http-x"), Http),
        ] {
            assert_eq!(protocol_of(app, name), want, "{app:?} {name:?}");
        }
    }

    #[test]
    fn destination_policies_apply_oldest_wins_and_missing_targets_are_reported() {
        let yaml = format!(
            "{CATALOG}---\n\
apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\n\
metadata: {{name: a-newer, namespace: shop, creationTimestamp: \"2026-11-02T00:00:00Z\"}}\n\
spec: {{targetRef: {{name: catalog}}, loadBalancer: {{policy: RoundRobin}}}}\n---\n\
apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\n\
metadata: {{name: z-older, namespace: shop, creationTimestamp: \"2026-11-01T00:00:00Z\"}}\n\
spec:\n  targetRef: {{name: catalog}}\n  loadBalancer: {{policy: RingHash, hashKey: {{header: x-user}}}}\n\
\x20 locality: {{failover: [eu-central, us-east], overprovisioningPercent: 200}}\n\
\x20 outlierDetection: {{consecutive5xx: 3, baseEjectionTime: 10s}}\n\
\x20 connectionPool: {{maxConnections: 64, connectTimeout: 250ms}}\n---\n\
apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\n\
metadata: {{name: ghost, namespace: shop}}\nspec: {{targetRef: {{name: nowhere}}}}\n"
        );
        // The whole translation: a target may also be an imported name,
        // so missing targets are known once imports are in.
        let c =
            crate::translate::translate(&crate::translate::Inputs::new(&snapshot(&yaml))).filled();
        let s = &c.services["catalog.shop"];
        let lb = s.load_balancer.as_ref().unwrap();
        assert_eq!(
            lb.policy(),
            model::load_balancer::Policy::RingHash,
            "the older policy wins"
        );
        assert_eq!(
            lb.hash_key.as_ref().unwrap().kind,
            Some(model::hash_key::Kind::Header("x-user".into()))
        );
        let loc = lb.locality.as_ref().unwrap();
        assert_eq!(loc.failover_regions, ["eu-central", "us-east"]);
        assert_eq!(loc.overprovisioning_factor, 2.0);
        let o = s.outlier_detection.as_ref().unwrap();
        assert_eq!(
            (o.consecutive_5xx, o.base_ejection_time.unwrap().seconds),
            (3, 10)
        );
        let p = s.connection_pool.as_ref().unwrap();
        assert_eq!(p.max_connections, 64);
        assert_eq!(p.connect_timeout.unwrap().nanos, 250_000_000);
        let problems: Vec<(&str, &str)> = c
            .problems
            .iter()
            .map(|p| (p.key.name.as_str(), p.reason))
            .collect();
        assert_eq!(
            problems,
            [("a-newer", "Conflict"), ("ghost", "TargetNotFound")]
        );
        assert!(c.problems[0].message.contains("z-older"));
    }

    #[test]
    fn the_catalog_is_valid_sidecar_configuration() {
        let c = catalog(&snapshot(CATALOG));
        let cfg = model::ProxyConfig {
            services: c.services.into_values().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate(&cfg);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn registered_workloads_are_endpoints_of_the_services_selecting_them() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: catalog, namespace: shop}\n\
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9000, targetPort: 9901}]}\n";
        let w = |name: &str, ns: &str, app: &str, ip: &str| Workload {
            name: name.into(),
            namespace: ns.into(),
            service_account: "catalog".into(),
            labels: [
                ("app".to_string(), app.to_string()),
                ("version".to_string(), "v1".to_string()),
            ]
            .into(),
            address: ip.parse().unwrap(),
            ports: vec![("http".into(), 8080)],
            region: String::new(),
            zone: "eu-west-b".into(),
            tunnel_port: (ns == "shop").then_some(15008),
            unhealthy_ports: Default::default(),
        };
        let ws = [
            w("catalog-1", "shop", "catalog", "10.0.0.2"),
            w("catalog-2", "shop", "catalog", "10.0.0.1"),
            w("reviews-1", "shop", "reviews", "10.0.0.3"),
            w("catalog-x", "other", "catalog", "10.0.0.4"),
        ];
        let refs: Vec<&Workload> = ws.iter().collect();
        let mesh = "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}}\n";
        let c = catalog_with(&snapshot(&format!("{mesh}---\n{yaml}")), &refs);
        let s = &c.services["catalog.shop"];
        let eps: Vec<(&str, Vec<(u32, u32)>)> = s
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.as_str(),
                    e.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                )
            })
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.1", vec![(80, 8080), (9000, 9901)]),
                ("10.0.0.2", vec![(80, 8080), (9000, 9901)])
            ],
            "same namespace, matching labels; named target port from the workload's ports"
        );
        assert_eq!(
            s.endpoints[0].tunnel_port, 15008,
            "reached through its sidecar"
        );
        assert_eq!(
            s.endpoints[0].identity,
            "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
        );
        let l = s.endpoints[0].locality.as_ref().unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str()),
            ("eu-west", "eu-west-b"),
            "region from the Mesh"
        );
        assert_eq!(s.endpoints[0].labels["version"], "v1");
        assert!(s.endpoints.iter().all(|e| !e.unhealthy));

        // Health at the source: catalog-2's sidecar says 9901 fails. The
        // Service reaches it there, so catalog-2 is unhealthy in it; a
        // failing port no Service reaches changes nothing.
        let mut sick = ws.clone();
        sick[1].unhealthy_ports = [9901].into();
        sick[0].unhealthy_ports = [7777].into();
        let refs: Vec<&Workload> = sick.iter().collect();
        let c = catalog_with(&snapshot(&format!("{mesh}---\n{yaml}")), &refs);
        let health: Vec<(&str, bool)> = c.services["catalog.shop"]
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.unhealthy))
            .collect();
        assert_eq!(health, [("10.0.0.1", true), ("10.0.0.2", false)]);
    }

    /// Kube mode: a pod is in its Service's EndpointSlice and its sidecar
    /// registers it too. One endpoint, as the slice has it; unhealthy when
    /// its conditions say not ready or when its sidecar's check fails.
    #[test]
    fn a_sliced_pod_is_unhealthy_when_its_sidecar_says_so() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: catalog, namespace: shop}\n\
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: catalog-1, namespace: shop, labels: {kubernetes.io/service-name: catalog}}\n\
addressType: IPv4\nports: [{name: http, port: 8080}]\n\
endpoints: [{addresses: [10.0.0.1], zone: a}, {addresses: [10.0.0.2], zone: a}]\n";
        let pod = |ip: &str, unhealthy: &[u16]| Workload {
            name: format!("catalog-{ip}"),
            namespace: "shop".into(),
            service_account: "catalog".into(),
            labels: [("app".to_string(), "catalog".to_string())].into(),
            address: ip.parse().unwrap(),
            ports: vec![("http".into(), 8080)],
            region: String::new(),
            zone: "b".into(),
            tunnel_port: None,
            unhealthy_ports: unhealthy.iter().copied().collect(),
        };
        let ws = [pod("10.0.0.1", &[8080]), pod("10.0.0.2", &[])];
        let refs: Vec<&Workload> = ws.iter().collect();
        let c = catalog_with(&snapshot(yaml), &refs);
        let eps: Vec<(&str, bool, &str)> = c.services["catalog.shop"]
            .endpoints
            .iter()
            .map(|e| {
                let zone = e.locality.as_ref().map_or("", |l| l.zone.as_str());
                (e.address.as_str(), e.unhealthy, zone)
            })
            .collect();
        assert_eq!(
            eps,
            [("10.0.0.1", true, "a"), ("10.0.0.2", false, "a")],
            "one endpoint per pod, the slice's; its sidecar's failing check counts"
        );
    }

    /// Files mode: a registered workload behind a headless Service is
    /// named by its own name, as a StatefulSet's pod is; not elsewhere.
    #[test]
    fn workloads_behind_a_headless_service_are_named() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\n\
spec: {clusterIP: None, selector: {app: db}, ports: [{port: 5432}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: db-read, namespace: shop}\n\
spec: {selector: {app: db}, ports: [{port: 5432}]}\n";
        let w = Workload {
            name: "db-0".into(),
            namespace: "shop".into(),
            service_account: "db".into(),
            labels: [("app".to_string(), "db".to_string())].into(),
            address: "10.0.0.1".parse().unwrap(),
            ports: vec![],
            region: String::new(),
            zone: String::new(),
            tunnel_port: None,
            unhealthy_ports: Default::default(),
        };
        // A second one on the same address (files mode: one host's
        // loopback) is an endpoint of its own.
        let w1 = Workload {
            name: "db-1".into(),
            ports: vec![("tcp".into(), 5433)],
            ..w.clone()
        };
        let c = catalog_with(&snapshot(yaml), &[&w, &w1]);
        let named: Vec<&str> = c.services["db.shop"]
            .endpoints
            .iter()
            .map(|e| e.hostname.as_str())
            .collect();
        assert_eq!(named, ["db-0", "db-1"]);
        assert_eq!(c.services["db-read.shop"].endpoints[0].hostname, "");
    }
}
