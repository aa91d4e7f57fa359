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
    /// B's east-west gateway: QUIC (UDP) and the TCP fallback.
    pub gateway: SocketAddr,
    pub gateway_tcp: Option<SocketAddr>,
    /// How long the join token is good for.
    pub ttl: Duration,
    /// `kube` mode: how long to wait for the peer's control plane to issue
    /// the join token.
    pub join_wait: Duration,
    pub partition: PartitionPolicy,
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
                quic: o.gateway.to_string(),
                tcp: o.gateway_tcp.map(|t| t.to_string()),
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
