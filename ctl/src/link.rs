//! `isthmusctl link create --from A --to B`: what cluster A needs to link
//! with cluster B, read from B's `files` store directory — B's name,
//! locality and trust domain (its Mesh), its CA bundle (`<dir>/ca/`, made
//! by B's control plane on first start) and a join token B's control plane
//! issued for A (short-lived; B checks it when A's control plane connects) —
//! written as the manifests to apply in A: a Secret holding the token and
//! the ClusterLink naming it.
//!
//! In `kube` mode the same comes from B's API server (`--to-context`): its
//! Mesh and the CA root in the Secret `isthmus-ca` (made by B's control
//! plane on first start in its namespace), and a join token B's control
//! plane issues on request (`join`): the key that signs them is never read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::resources::link::{
    ClusterLink, ClusterLinkSpec, GatewayAddresses, PartitionPolicy, SecretRef,
};
use isthmus_federation::resources::mesh::Mesh;
use isthmus_federation::store::{Resource, Snapshot};
use isthmus_federation::translate::links::GATEWAY_NAMESPACE;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "{dir}: no Mesh resource: a linked cluster needs a name and a trust domain (kind: Mesh)"
    )]
    NoMesh { dir: PathBuf },
    #[error(
        "{dir}/ca/root-cert.pem is missing: start that cluster's control plane once (it makes its CA there), then link"
    )]
    NoCa { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("both directories are cluster {0}: link two different clusters")]
    SameCluster(String),
    #[error(
        "clusters {a} and {b} share the trust domain {td}: each cluster needs its own (a linked domain is trusted for that cluster's workloads only)"
    )]
    SameTrustDomain { a: String, b: String, td: String },
    #[error("the join token lifetime must be between 1 minute and 24 hours, not {0:?}")]
    Ttl(Duration),
    #[error(
        "cluster {context}: no Mesh resource (kubectl get meshes): a linked cluster needs a name and a trust domain"
    )]
    NoMeshInCluster { context: String },
    #[error(
        "cluster {context}: no Secret {namespace}/{name} with {field}: start that cluster's control plane (with --federation) once, it makes it"
    )]
    NoSecret {
        context: String,
        namespace: String,
        name: String,
        field: String,
    },
    #[error("cluster {context}: asking its control plane for a join token: {source}")]
    Join {
        context: String,
        source: isthmus_federation::join::JoinError,
    },
    #[error("give --gateway: the address (ip:port or host:port) of {cluster}'s east-west gateway")]
    NoGateway { cluster: String },
    #[error(
        "--gateway {0:?} is neither ip:port nor host:port: give the address or DNS name of the peer's east-west gateway service"
    )]
    BadGateway(String),
    #[error(
        "cluster {context}: the Service {namespace}/{service} has no load balancer address yet ({reason}): wait for it (kubectl --context {context} -n {namespace} get svc {service} -w), or give --gateway"
    )]
    NoLoadBalancer {
        context: String,
        namespace: String,
        service: String,
        reason: String,
    },
    #[error("cluster {context}: reading {what} from the API server: {reason}")]
    Kube {
        context: String,
        what: String,
        reason: String,
    },
}

/// What to write, besides what the two directories say.
#[derive(Debug, Clone)]
pub struct Options {
    /// B's east-west gateway: QUIC (UDP) and the TCP fallback, each
    /// `ip:port` or `host:port`. Needed with store directories; with
    /// contexts the default is what B's LoadBalancer Service says.
    pub gateway: Option<String>,
    pub gateway_tcp: Option<String>,
    /// How long the join token is good for.
    pub ttl: Duration,
    /// `kube` mode: how long to wait for the peer's control plane to issue
    /// the join token.
    pub join_wait: Duration,
    pub partition: PartitionPolicy,
}

/// The east-west gateway's Service (`isthmusctl install` makes it).
pub const GATEWAY_SERVICE: &str = "isthmus-eastwest";

fn valid_gateway(v: &str) -> Result<String, LinkError> {
    if v.parse::<SocketAddr>().is_ok() || isthmus_federation::translate::links::is_name(v) {
        Ok(v.to_string())
    } else {
        Err(LinkError::BadGateway(v.to_string()))
    }
}

/// Where linked clusters reach `context`'s gateway, as its LoadBalancer
/// Service `namespace/isthmus-eastwest` says: the first ingress address
/// (an IP, or the hostname a cloud load balancer gives) and the port of
/// its QUIC (UDP) port.
pub async fn gateway_of(
    client: &kube::Client,
    context: &str,
    namespace: &str,
) -> Result<String, LinkError> {
    use k8s_openapi::api::core::v1::Service;
    let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), namespace);
    let svc = api
        .get_opt(GATEWAY_SERVICE)
        .await
        .map_err(|e| LinkError::Kube {
            context: context.into(),
            what: format!("Service {namespace}/{GATEWAY_SERVICE}"),
            reason: e.to_string(),
        })?;
    let none = |reason: &str| LinkError::NoLoadBalancer {
        context: context.into(),
        namespace: namespace.into(),
        service: GATEWAY_SERVICE.into(),
        reason: reason.into(),
    };
    let svc =
        svc.ok_or_else(|| none("no such Service: install Isthmus there (isthmusctl install)"))?;
    let port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.protocol.as_deref() == Some("UDP"))
                .map(|p| p.port)
        })
        .ok_or_else(|| none("it has no UDP port for QUIC"))?;
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .ok_or_else(|| none("status.loadBalancer.ingress is empty"))?;
    let host = ingress
        .ip
        .clone()
        .or_else(|| ingress.hostname.clone())
        .ok_or_else(|| none("its ingress has neither ip nor hostname"))?;
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, u16::try_from(port).unwrap_or(15443)).to_string(),
        Err(_) => format!("{host}:{port}"),
    })
}

/// One cluster as its store directory (or API server) describes it.
struct Cluster {
    name: String,
    trust_domain: String,
    region: String,
    zone: String,
}

fn of_mesh(mesh: &Mesh) -> Cluster {
    Cluster {
        name: mesh.spec.cluster_name.clone(),
        trust_domain: mesh.spec.trust_domain.clone(),
        region: mesh.spec.locality.region.clone(),
        zone: mesh.spec.locality.zone.clone(),
    }
}

fn cluster(dir: &Path) -> Result<Cluster, LinkError> {
    let (loaded, errors) = isthmus_federation::store::files::load_dir(dir);
    let (snap, _) = isthmus_federation::store::files::merge(&Snapshot::default(), loaded, errors);
    let mesh: &Mesh = snap
        .of_kind("Mesh")
        .find_map(|(_, r)| match r {
            Resource::Mesh(m) => Some(&**m),
            _ => None,
        })
        .ok_or_else(|| LinkError::NoMesh { dir: dir.into() })?;
    Ok(of_mesh(mesh))
}

/// One cluster as its API server describes it (`context` names it in
/// errors): its Mesh, and what `secret` finds in its control plane's
/// namespace.
async fn cluster_kube(client: &kube::Client, context: &str) -> Result<Cluster, LinkError> {
    let err = |what: &str, e: kube::Error| LinkError::Kube {
        context: context.into(),
        what: what.into(),
        reason: e.to_string(),
    };
    let meshes: kube::Api<Mesh> = kube::Api::all(client.clone());
    let list = meshes
        .list(&Default::default())
        .await
        .map_err(|e| err("meshes.isthmus.dev", e))?;
    let mesh = list
        .items
        .first()
        .ok_or_else(|| LinkError::NoMeshInCluster {
            context: context.into(),
        })?;
    Ok(of_mesh(mesh))
}

/// A field of a Secret in cluster `context`, or why not.
async fn secret_field(
    client: &kube::Client,
    context: &str,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<Vec<u8>, LinkError> {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let missing = || LinkError::NoSecret {
        context: context.into(),
        namespace: namespace.into(),
        name: name.into(),
        field: field.into(),
    };
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| LinkError::Kube {
            context: context.into(),
            what: format!("Secret {namespace}/{name}"),
            reason: e.to_string(),
        })?
        .ok_or_else(missing)?;
    secret
        .data
        .and_then(|mut d| d.remove(field))
        .map(|b| b.0)
        .filter(|b| !b.is_empty())
        .ok_or_else(missing)
}

/// `create` with both clusters read from their API servers (`from` and
/// `to` clients, their kubeconfig contexts named for errors); `namespace`
/// is the control planes' (isthmus-system).
pub async fn create_kube(
    from: (&kube::Client, &str),
    to: (&kube::Client, &str),
    namespace: &str,
    o: &Options,
    now: SystemTime,
) -> Result<String, LinkError> {
    let a = cluster_kube(from.0, from.1).await?;
    let b = cluster_kube(to.0, to.1).await?;
    check(&a, &b, o)?;
    let mut o = o.clone();
    if o.gateway.is_none() {
        o.gateway = Some(gateway_of(to.0, to.1, namespace).await?);
    }
    let o = &o;
    let bundle = secret_field(to.0, to.1, namespace, "isthmus-ca", "ca.crt").await?;
    let token = isthmus_federation::join::request(
        to.0,
        namespace,
        &a.name,
        o.ttl,
        o.join_wait,
        Duration::from_millis(200),
    )
    .await
    .map_err(|source| LinkError::Join {
        context: to.1.into(),
        source,
    })?;
    manifests(
        a,
        b,
        String::from_utf8_lossy(&bundle).into_owned(),
        &token,
        o,
        now,
    )
}

/// The manifests (YAML) to apply in cluster `from` to link it with `to`.
pub fn create(from: &Path, to: &Path, o: &Options, now: SystemTime) -> Result<String, LinkError> {
    let (a, b) = (cluster(from)?, cluster(to)?);
    check(&a, &b, o)?;
    if o.gateway.is_none() {
        return Err(LinkError::NoGateway { cluster: b.name });
    }
    let bundle_path = to.join("ca").join("root-cert.pem");
    let bundle = match std::fs::read_to_string(&bundle_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LinkError::NoCa { dir: to.into() });
        }
        Err(source) => {
            return Err(LinkError::Read {
                path: bundle_path,
                source,
            });
        }
    };
    let key = TokenKey::load_or_create(to, &b.trust_domain).map_err(|source| LinkError::Read {
        path: to.join("ca").join("token-key"),
        source,
    })?;
    let token = key.issue(
        GATEWAY_NAMESPACE,
        &isthmus_federation::join::token_subject(&a.name),
        now,
        o.ttl,
    );
    manifests(a, b, bundle, &token, o, now)
}

/// What makes a link impossible whatever B's CA and key say: checked
/// before anything is read from B (or made there).
fn check(a: &Cluster, b: &Cluster, o: &Options) -> Result<(), LinkError> {
    if o.ttl < Duration::from_secs(60) || o.ttl > Duration::from_secs(24 * 3600) {
        return Err(LinkError::Ttl(o.ttl));
    }
    if a.name == b.name {
        return Err(LinkError::SameCluster(a.name.clone()));
    }
    if a.trust_domain == b.trust_domain {
        return Err(LinkError::SameTrustDomain {
            a: a.name.clone(),
            b: b.name.clone(),
            td: b.trust_domain.clone(),
        });
    }
    Ok(())
}

/// The manifests to apply in `a` to link it with `b`: a Secret with the
/// join token `b` issued, and the ClusterLink carrying `b`'s `bundle`.
fn manifests(
    a: Cluster,
    b: Cluster,
    bundle: String,
    token: &str,
    o: &Options,
    now: SystemTime,
) -> Result<String, LinkError> {
    let secret_name = format!("isthmus-link-{}", b.name);
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": isthmus_federation::store::LINK_SECRETS_NAMESPACE,
            "labels": {isthmus_federation::store::LINK_CREDENTIALS_LABEL: b.name},
        },
        "type": "Opaque",
        "stringData": {"token": token},
    });
    let mut link = ClusterLink::new(
        &b.name,
        ClusterLinkSpec {
            peer: b.name.clone(),
            region: b.region,
            zone: b.zone,
            gateway: GatewayAddresses {
                quic: valid_gateway(o.gateway.as_deref().unwrap_or_default())?,
                tcp: o.gateway_tcp.as_deref().map(valid_gateway).transpose()?,
            },
            trust_domain: b.trust_domain,
            trust_bundle: bundle,
            credentials_secret_ref: SecretRef {
                name: secret_name,
                namespace: Some(isthmus_federation::store::LINK_SECRETS_NAMESPACE.into()),
            },
            partition: o.partition.clone(),
        },
    );
    let a_name = a.name;
    link.metadata.labels = Some([("isthmus.dev/linked-from".to_string(), a_name.clone())].into());
    let until = (now + o.ttl)
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok())
        .map_or_else(String::new, |t| t.to_string());
    let mut out = format!(
        "# Apply in cluster {}: links it with cluster {} (the join token is good until {until}).\n",
        a_name, b.name,
    );
    for doc in [
        secret,
        serde_json::to_value(&link).expect("a ClusterLink serializes"),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&doc).expect("JSON values serialize as YAML"));
    }
    Ok(out)
}

/// One ClusterLink as `link list` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkRow {
    pub name: String,
    pub peer: String,
    pub gateway: String,
    pub connected: bool,
    pub transport: Option<String>,
    pub rtt_millis: Option<f64>,
    pub last_sync: Option<String>,
    pub imported_services: usize,
    /// Why it is not accepted or not connected (a False condition's
    /// message), empty when all is well.
    pub problem: String,
}

/// A row per ClusterLink (pure).
pub fn rows(links: &[ClusterLink]) -> Vec<LinkRow> {
    let mut out: Vec<LinkRow> = links
        .iter()
        .map(|l| {
            let status = l.status.clone().unwrap_or_default();
            let problem = status
                .conditions
                .iter()
                .find(|c| c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            LinkRow {
                name: l.metadata.name.clone().unwrap_or_default(),
                peer: l.spec.peer.clone(),
                gateway: l.spec.gateway.quic.clone(),
                connected: status.connected,
                transport: status.transport.clone(),
                rtt_millis: status.rtt_millis,
                last_sync: status.last_sync.as_ref().map(|t| t.0.to_string()),
                imported_services: status.imported_services.len(),
                problem,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `link list` as a table.
pub fn table(rows: &[LinkRow]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<28} {:<10} {:<9} {:>8} {:>7}  {}\n",
        "NAME", "PEER", "GATEWAY", "CONNECTED", "TRANSPORT", "RTT", "IMPORTS", "PROBLEM"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:<16} {:<28} {:<10} {:<9} {:>8} {:>7}  {}\n",
            r.name,
            r.peer,
            r.gateway,
            if r.connected { "yes" } else { "no" },
            r.transport.as_deref().unwrap_or("-"),
            r.rtt_millis
                .map(|m| format!("{m:.1}ms"))
                .unwrap_or_else(|| "-".into()),
            r.imported_services,
            r.problem
        ));
    }
    out
}

/// The ClusterLinks of the cluster behind `client`.
pub async fn list(client: &kube::Client, context: &str) -> Result<Vec<LinkRow>, LinkError> {
    let api: kube::Api<ClusterLink> = kube::Api::all(client.clone());
    let links = api
        .list(&Default::default())
        .await
        .map_err(|e| LinkError::Kube {
            context: context.into(),
            what: "ClusterLinks".into(),
            reason: e.to_string(),
        })?;
    Ok(rows(&links.items))
}

/// Deletes the link to `peer` in the cluster behind `client`: its
/// ClusterLink and the Secret holding its join token. Returns what was
/// deleted; a link that is not there is an error that says so.
pub async fn delete(
    client: &kube::Client,
    context: &str,
    peer: &str,
) -> Result<Vec<String>, LinkError> {
    let kube_err = |what: String| {
        let context = context.to_string();
        move |e: kube::Error| LinkError::Kube {
            context,
            what,
            reason: e.to_string(),
        }
    };
    let api: kube::Api<ClusterLink> = kube::Api::all(client.clone());
    let links = api
        .list(&Default::default())
        .await
        .map_err(kube_err("ClusterLinks".into()))?;
    let Some(link) = links.items.into_iter().find(|l| l.spec.peer == peer) else {
        return Err(LinkError::Kube {
            context: context.into(),
            what: format!("the ClusterLink to {peer}"),
            reason: "there is none (isthmusctl link list)".into(),
        });
    };
    let name = link.metadata.name.clone().unwrap_or_default();
    api.delete(&name, &Default::default())
        .await
        .map_err(kube_err(format!("ClusterLink {name}")))?;
    let mut done = vec![format!("ClusterLink {name}")];
    let secret = &link.spec.credentials_secret_ref;
    let ns = secret
        .namespace
        .clone()
        .unwrap_or_else(|| isthmus_federation::store::LINK_SECRETS_NAMESPACE.into());
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ns);
    match secrets.delete(&secret.name, &Default::default()).await {
        Ok(_) => done.push(format!("Secret {ns}/{}", secret.name)),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(kube_err(format!("Secret {ns}/{}", secret.name))(e)),
    }
    Ok(done)
}
