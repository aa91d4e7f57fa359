//! What a compiled configuration is: the `Snapshot` the proxy reads per
//! request (services with ports, endpoints, balancing, pool limits and
//! routes; listeners; node; security), indexed by host and VIP.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::model as m;

use crate::authz::Policies;
use crate::balance::locality::Locality;
use crate::balance::outlier::OutlierSettings;
use crate::balance::{Policy, Ring};
use crate::route::Route;
use isthmus_mesh::tls::Trust;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub(crate) fn from_model(p: i32) -> Self {
        match m::Protocol::try_from(p).unwrap_or(m::Protocol::Http) {
            m::Protocol::Http => Self::Http,
            m::Protocol::Http2 => Self::Http2,
            m::Protocol::Grpc => Self::Grpc,
            m::Protocol::Tcp => Self::Tcp,
        }
    }

    pub fn is_http(self) -> bool {
        self != Self::Tcp
    }
}

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub service_account: String,
    pub cluster: String,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
}

/// Inbound mTLS mode of this workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
}

/// Identity and inbound policy of this workload, resolved from the
/// configuration's security section by the node's labels.
#[derive(Debug, Default)]
pub struct SecuritySpec {
    /// Trust bundles from the configuration (the CA's own are added by
    /// `tls::MeshTls`).
    pub trust: Arc<Trust>,
    pub mode: MtlsMode,
    /// The MtlsPolicy that set `mode`, or "default".
    pub mode_source: String,
    pub authz: Policies,
    pub jwt: crate::jwt::Authenticator,
}

#[derive(Debug, Clone, Copy)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
}

#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub ip: IpAddr,
    /// A port given in the address ("ip:port").
    pub fixed_port: Option<u16>,
    /// Per service port overrides.
    pub ports: HashMap<u16, u16>,
    pub locality: Locality,
    pub weight: u32,
    pub healthy: bool,
    /// Reached through its sidecar's mesh transport at this port.
    pub tunnel: Option<Tunnel>,
    /// Who it is, for Istio's `destination_*` labels: from the identity
    /// its sidecar must present, in its cluster.
    pub workload: Arc<crate::telemetry::metrics::Workload>,
}

/// How to reach an endpoint through the mesh transport.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub port: u16,
    /// The SPIFFE ID its sidecar must present (else: any of our domain;
    /// a bare `spiffe://<domain>`: any of that domain).
    pub identity: Option<Arc<str>>,
    /// Set: the endpoint is this cluster's east-west gateway (`port` its
    /// local entry) standing for the service in a linked cluster.
    pub via: Option<Arc<Via>>,
}

/// A service in a linked cluster, reached through our east-west gateway.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Via {
    pub cluster: Arc<str>,
    /// The service's name there (`name.ns`), the CONNECT's host.
    pub service: Arc<str>,
    /// (target port, service port) of each of the service's ports: the
    /// endpoint address carries the target port, the gateway wants the
    /// service port.
    pub ports: Vec<(u16, u16)>,
}

impl Via {
    /// The CONNECT authority for the service port behind `target_port`.
    pub fn authority(&self, target_port: u16) -> Option<String> {
        let (_, port) = self.ports.iter().find(|(t, _)| *t == target_port)?;
        Some(format!("{}:{port}", self.service))
    }
}

/// What an endpoint is, across reloads and in every table that keeps
/// state per endpoint (connection pool, outlier detection, in-flight
/// counts, ring-hash points, `/config_dump`): its address, the port its
/// address names (if any), and for an endpoint standing for a service in
/// a linked cluster, that cluster and service. Every linked cluster's
/// endpoint of a clusterset service is our gateway entry (one address, one
/// port): only `via` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub ip: IpAddr,
    pub port: Option<u16>,
    /// (cluster, `name.ns` there).
    pub via: Option<(Arc<str>, Arc<str>)>,
}

impl EndpointKey {
    /// The same endpoint at one port (connection pools are per port).
    pub fn at(&self, port: u16) -> Self {
        Self {
            port: Some(port),
            ..self.clone()
        }
    }

    /// The linked cluster this endpoint stands for, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.via.as_ref().map(|(c, _)| &**c)
    }
}

/// `10.0.0.7:8080`, `10.0.0.7` (no port in the address), or
/// `127.0.0.1:15009 via catalog.shop@eu-central`.
impl std::fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p))?,
            None => write!(f, "{}", self.ip)?,
        }
        if let Some((cluster, service)) = &self.via {
            write!(f, " via {service}@{cluster}")?;
        }
        Ok(())
    }
}

impl EndpointSpec {
    /// A plain endpoint at `addr`: healthy, weight 1, no locality, no
    /// mesh transport.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip(),
            fixed_port: Some(addr.port()),
            ports: HashMap::new(),
            locality: Locality::default(),
            weight: 1,
            healthy: true,
            tunnel: None,
            workload: Arc::new(crate::telemetry::metrics::Workload::unknown(
                crate::telemetry::metrics::UNKNOWN_LABEL.clone(),
            )),
        }
    }

    /// This endpoint's identity (see `EndpointKey`).
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            ip: self.ip,
            port: self.fixed_port,
            via: self
                .tunnel
                .as_ref()
                .and_then(|t| t.via.as_ref())
                .map(|v| (v.cluster.clone(), v.service.clone())),
        }
    }

    /// The socket address of this endpoint for a service port.
    pub fn addr(&self, port: &PortSpec) -> SocketAddr {
        let p = self
            .ports
            .get(&port.port)
            .copied()
            .or(self.fixed_port)
            .unwrap_or(port.target_port);
        SocketAddr::new(self.ip, p)
    }
}

#[derive(Debug, Clone)]
pub enum HashKeySpec {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone)]
pub struct LbSpec {
    pub policy: Policy,
    pub hash_key: HashKeySpec,
    pub overprovisioning: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests_per_connection: Option<u32>,
    pub max_requests: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending: 1024,
            max_requests_per_connection: None,
            max_requests: 1024,
            // Linkerd's default: inside a cluster a connect takes well under
            // a millisecond; a silent endpoint is given up on in a second.
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
pub struct ServiceSpec {
    pub name: Arc<str>,
    pub ports: Vec<PortSpec>,
    pub endpoints: Vec<EndpointSpec>,
    /// Locality priority of each endpoint, index-aligned with `endpoints`.
    pub priorities: Vec<usize>,
    pub routes: Vec<Route>,
    /// Used when no route matches: to this service, default policies.
    pub default_route: Route,
    pub lb: LbSpec,
    pub ring: Option<Ring>,
    pub outlier: OutlierSettings,
    pub pool: PoolLimits,
    /// True for the synthetic services of inbound listeners.
    pub inbound: bool,
}

impl ServiceSpec {
    /// The port a request for `requested` (None: unspecified) resolves to:
    /// that port, else port 80, else the only port.
    pub fn port(&self, requested: Option<u16>) -> Option<&PortSpec> {
        match requested {
            Some(p) => self.ports.iter().find(|x| x.port == p),
            None => self
                .ports
                .iter()
                .find(|x| x.port == 80)
                .or_else(|| (self.ports.len() == 1).then(|| &self.ports[0])),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Http,
    Tcp {
        service: String,
        port: Option<u16>,
    },
    Transparent {
        passthrough: bool,
    },
    /// Inbound: (app port, protocol) in order; the synthetic service for
    /// port P is named `inbound|P`.
    Inbound {
        ports: Vec<(u16, Protocol)>,
    },
    /// The mesh transport (mTLS HTTP/2 CONNECT) for the same ports.
    Tunnel {
        ports: Vec<(u16, Protocol)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

/// The configuration in effect, as the request path reads it.
#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    /// The configuration as received, for /config_dump.
    pub source: m::ProxyConfig,
    pub node: NodeInfo,
    pub services: HashMap<String, Arc<ServiceSpec>>,
    pub(super) hosts: HashMap<String, String>,
    pub(super) wildcard_hosts: Vec<(String, String)>,
    pub(super) vips: HashMap<SocketAddr, String>,
    pub listeners: Vec<ListenerSpec>,
    pub security: SecuritySpec,
}

impl Snapshot {
    /// The service a Host header or :authority names (port ignored).
    pub fn service_for_host(&self, host: &str) -> Option<&Arc<ServiceSpec>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let name = self.hosts.get(&host).or_else(|| {
            self.wildcard_hosts
                .iter()
                .filter(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
                .max_by_key(|(suffix, _)| suffix.len())
                .map(|(_, s)| s)
        })?;
        self.services.get(name)
    }

    /// The service whose VIP and port are `dst` (transparent capture).
    pub fn service_for_vip(&self, dst: SocketAddr) -> Option<&Arc<ServiceSpec>> {
        self.services.get(self.vips.get(&dst)?)
    }

    /// The names (hosts, sorted) and virtual addresses that resolve to
    /// service `name`.
    pub fn names_of(&self, name: &str) -> (Vec<String>, Vec<SocketAddr>) {
        let mut hosts: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.as_str() == name)
            .map(|(h, _)| h.clone())
            .collect();
        hosts.sort();
        let mut vips: Vec<SocketAddr> = self
            .vips
            .iter()
            .filter(|(_, s)| s.as_str() == name)
            .map(|(a, _)| *a)
            .collect();
        vips.sort();
        (hosts, vips)
    }

    pub fn empty() -> Self {
        super::compile(&m::ProxyConfig::default()).expect("empty config compiles")
    }
}

pub fn inbound_service_name(port: u16) -> String {
    format!("inbound|{port}")
}
