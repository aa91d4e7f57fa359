//! `isthmusctl install`: everything a cluster runs, as Kubernetes objects,
//! from one source. `render` is pure (options in, objects out); the
//! command prints them for `kubectl apply -f -` or applies them itself
//! (`apply`), `deploy/` keeps them as kustomize bases (`kustomize`), and
//! `uninstall` removes them. Tests read the rendered objects against the
//! code: the RBAC against the API calls the control plane makes, the
//! flags against the binaries, the ports against what they listen on.
//!
//! - `crds`: ours (from the Rust types) and the pinned Gateway API and
//!   MCS CRDs (`crds/third-party/`);
//! - `control_plane`: namespaces, the Mesh, the control plane's
//!   Deployment, Service and PodDisruptionBudget;
//! - `rbac`: its ServiceAccount and least-privilege roles;
//! - `eastwest`: the east-west gateway;
//! - `apply`: server-side apply and delete through the API.

pub mod apply;
pub mod control_plane;
pub mod crds;
pub mod eastwest;
pub mod kustomize;
pub mod rbac;

use serde_json::{Value, json};

/// The control plane's and the east-west gateway's namespace.
pub const NAMESPACE: &str = isthmus_federation::translate::links::GATEWAY_NAMESPACE;
/// Discovery and the CA (gRPC, TLS): every proxy's `--control-plane`.
pub const DISCOVERY_PORT: u16 = 15010;
/// Federation: linked control planes' sync channels, through the gateway.
pub const FEDERATION_PORT: u16 = isthmus_federation::sync::SYNC_PORT;
/// The sidecar injection webhook (TLS), behind the Service's 443.
pub const INJECTOR_PORT: u16 = isthmus_federation::inject::webhook::PORT;
/// Admin: /healthz, /readyz, /metrics (control plane and gateway).
pub const ADMIN_PORT: u16 = 15020;
/// The east-west gateway's tunnels: QUIC (UDP) and the HTTP/2-over-TLS
/// fallback (TCP), on the same port.
pub const TUNNEL_PORT: u16 = 15443;
/// The east-west gateway's local entry (this cluster's sidecars).
pub const LOCAL_ENTRY_PORT: u16 = 15009;
/// The label every installed object carries (`uninstall` finds them by it).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "isthmus");

/// What `install` renders for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// This cluster's name among linked clusters.
    pub cluster: String,
    pub region: String,
    pub zone: Option<String>,
    /// The SPIFFE trust domain written into the Mesh: the cluster's own,
    /// so that two clusters never share one by default.
    pub trust_domain: String,
    /// Images are `<registry>/isthmus-federation:<tag>` and
    /// `<registry>/isthmus-gateway:<tag>`.
    pub registry: String,
    pub tag: String,
    pub pull_policy: String,
    /// Control plane replicas (all serve; the Lease holder writes).
    pub replicas: u16,
    pub gateway_replicas: u16,
    /// How linked clusters reach the gateway: `LoadBalancer` or `NodePort`.
    pub gateway_service_type: String,
    /// When the injector cannot be reached: `Fail` (pods in injected
    /// namespaces are not created without their sidecar) or `Ignore`
    /// (they are, without it).
    pub injector_failure_policy: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "--cluster {0:?} is not a valid cluster name: lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit"
    )]
    ClusterName(String),
    #[error("--trust-domain {0:?}: lowercase letters, digits, '.', '_' and '-' only")]
    TrustDomain(String),
    #[error("--gateway-service-type {0:?}: LoadBalancer or NodePort")]
    ServiceType(String),
    #[error("--injector-failure-policy {0:?}: Fail or Ignore")]
    FailurePolicy(String),
    #[error("--replicas and --gateway-replicas must be at least 1")]
    Replicas,
    #[error("cannot render {what} as YAML: {reason}")]
    Yaml { what: String, reason: String },
}

impl Options {
    /// The defaults for cluster `name`: region = name, trust domain
    /// `<name>.isthmus.local`, images of this isthmusctl's version.
    pub fn new(name: &str) -> Self {
        Self {
            cluster: name.into(),
            region: name.into(),
            zone: None,
            trust_domain: format!("{name}.isthmus.local"),
            registry: "ghcr.io/isthmus-mesh".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            pull_policy: "IfNotPresent".into(),
            replicas: 2,
            gateway_replicas: 2,
            gateway_service_type: "LoadBalancer".into(),
            injector_failure_policy: "Fail".into(),
        }
    }

    pub fn validate(&self) -> Result<(), InstallError> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !n.starts_with('-')
                && !n.ends_with('-')
        };
        if !name_ok(&self.cluster) {
            return Err(InstallError::ClusterName(self.cluster.clone()));
        }
        let td_ok = !self.trust_domain.is_empty()
            && self.trust_domain.len() <= 255
            && self.trust_domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !td_ok {
            return Err(InstallError::TrustDomain(self.trust_domain.clone()));
        }
        if !matches!(
            self.gateway_service_type.as_str(),
            "LoadBalancer" | "NodePort"
        ) {
            return Err(InstallError::ServiceType(self.gateway_service_type.clone()));
        }
        if !matches!(self.injector_failure_policy.as_str(), "Fail" | "Ignore") {
            return Err(InstallError::FailurePolicy(
                self.injector_failure_policy.clone(),
            ));
        }
        if self.replicas == 0 || self.gateway_replicas == 0 {
            return Err(InstallError::Replicas);
        }
        Ok(())
    }

    pub fn image(&self, name: &str) -> String {
        format!(
            "{}/{name}:{}",
            self.registry.trim_end_matches('/'),
            self.tag
        )
    }
}

/// The labels of every object of component `name`.
pub fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": name,
        PART_OF.0: PART_OF.1,
        "app.kubernetes.io/managed-by": "isthmusctl",
    })
}

/// Object metadata: `name`, in `namespace` when given, labelled.
pub fn meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "labels": labels(name)});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// Everything but the CRDs, in the order it is applied.
pub fn render(opts: &Options) -> Result<Vec<Value>, InstallError> {
    opts.validate()?;
    let mut out = control_plane::namespaces();
    out.extend(rbac::objects());
    out.extend(control_plane::cluster_objects(opts));
    out.extend(control_plane::objects(opts));
    out.extend(eastwest::objects(opts));
    Ok(out)
}

/// Objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, InstallError> {
    let mut out = String::new();
    for o in objects {
        let y = serde_saphyr::to_string(o).map_err(|e| InstallError::Yaml {
            what: describe(o),
            reason: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&y);
    }
    Ok(out)
}

/// `Kind namespace/name`, for messages.
pub fn describe(o: &Value) -> String {
    let kind = o["kind"].as_str().unwrap_or("?");
    let name = o["metadata"]["name"].as_str().unwrap_or("?");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_with_messages_that_say_what_to_change() {
        assert!(Options::new("eu-west").validate().is_ok());
        for bad in ["", "EU", "-a", "a-", "a_b", &"x".repeat(64)] {
            let e = Options::new(bad).validate().unwrap_err().to_string();
            assert!(e.contains("--cluster"), "{bad}: {e}");
        }
        let mut o = Options::new("eu-west");
        o.trust_domain = "Bad Domain".into();
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("--trust-domain")
        );
        let mut o = Options::new("eu-west");
        o.gateway_service_type = "ClusterIP".into();
        assert!(o.validate().unwrap_err().to_string().contains("NodePort"));
        let mut o = Options::new("eu-west");
        o.replicas = 0;
        assert!(render(&o).is_err());
    }

    #[test]
    fn two_clusters_get_two_trust_domains_by_default() {
        let a = Options::new("eu-west");
        let b = Options::new("us-east");
        assert_ne!(a.trust_domain, b.trust_domain);
        let mesh = |o: &Options| {
            render(o)
                .unwrap()
                .into_iter()
                .find(|x| x["kind"] == "Mesh")
                .expect("a Mesh")
        };
        assert_eq!(mesh(&a)["spec"]["trustDomain"], "eu-west.isthmus.local");
        assert_eq!(mesh(&b)["spec"]["trustDomain"], "us-east.isthmus.local");
        assert_eq!(mesh(&b)["spec"]["clusterName"], "us-east");
    }

    #[test]
    fn every_object_is_labelled_and_namespaced_where_it_must_be() {
        let objects = render(&Options::new("eu-west")).unwrap();
        for o in &objects {
            assert_eq!(
                o["metadata"]["labels"][PART_OF.0],
                PART_OF.1,
                "{}",
                describe(o)
            );
            let cluster_scoped = matches!(
                o["kind"].as_str(),
                Some(
                    "Namespace"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Mesh"
                        | "MutatingWebhookConfiguration"
                )
            );
            assert_eq!(
                o["metadata"]["namespace"].is_string(),
                !cluster_scoped,
                "{}",
                describe(o)
            );
        }
        let yaml = to_yaml(&objects).unwrap();
        assert!(yaml.starts_with("---\n"));
        assert_eq!(yaml.matches("\n---\n").count() + 1, objects.len());
    }
}
