//! The control plane: its namespaces, the cluster's Mesh (name, trust
//! domain, locality) and settings, and `isthmus-federation` itself: a
//! Deployment (every replica serves discovery, federation and the
//! injection webhook; the Lease holder writes), its Service, the
//! MutatingWebhookConfiguration of the injector and, with more than one
//! replica, a PodDisruptionBudget.

use serde_json::{Value, json};

use super::rbac::SERVICE_ACCOUNT;
use super::{
    ADMIN_PORT, DISCOVERY_PORT, FEDERATION_PORT, INJECTOR_PORT, LOCAL_ENTRY_PORT, NAMESPACE,
    Options, labels, meta,
};
use isthmus_federation::inject::webhook as injector;
use isthmus_federation::store::LINK_SECRETS_NAMESPACE;

pub const NAME: &str = "isthmus-federation";
/// The cluster's name and locality, read by the gateway (and injected
/// sidecars) through their environment.
pub const CLUSTER_CONFIG: &str = "isthmus-cluster";
/// The ClusterIP Service of the gateway's local entry.
pub const LOCAL_ENTRY_SERVICE: &str = "isthmus-eastwest-local";

/// `isthmus-system`, and `isthmus-links` (link Secrets, nothing else).
pub fn namespaces() -> Vec<Value> {
    [NAMESPACE, LINK_SECRETS_NAMESPACE]
        .into_iter()
        .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None)}))
        .collect()
}

/// The address every proxy in the cluster dials for discovery and the CA.
pub fn discovery_address() -> String {
    format!("{NAME}.{NAMESPACE}.svc:{DISCOVERY_PORT}")
}

/// The container hardening every Isthmus container shares, as `uid`
/// (the image's own user).
pub fn container_security(uid: u32) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// A PodDisruptionBudget keeping one of `app`'s pods up (none for one
/// replica: it would block every node drain).
pub fn disruption_budget(app: &str, replicas: u16) -> Option<Value> {
    (replicas > 1).then(|| {
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(app, Some(NAMESPACE)),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
        })
    })
}

/// The control plane's arguments (a test checks each is a flag of
/// `isthmus-federation run`).
pub fn args(o: &Options) -> Vec<String> {
    vec![
        "run".into(),
        "--kube".into(),
        format!("--discovery=0.0.0.0:{DISCOVERY_PORT}"),
        format!("--admin=0.0.0.0:{ADMIN_PORT}"),
        format!("--federation=0.0.0.0:{FEDERATION_PORT}"),
        format!("--gateway-entry={LOCAL_ENTRY_SERVICE}.{NAMESPACE}.svc:{LOCAL_ENTRY_PORT}"),
        format!("--lease-name={NAME}"),
        format!("--injector=0.0.0.0:{INJECTOR_PORT}"),
        format!("--proxy-image={}", o.image("isthmus-gateway")),
        format!("--proxy-pull-policy={}", o.pull_policy),
    ]
}

/// The injection webhook: pods created in namespaces labelled
/// `isthmus.dev/inject=enabled` (and not labelled out themselves) go to
/// the control plane's Service; the control plane writes the caBundle.
fn webhook_configuration(o: &Options) -> Value {
    let inject = isthmus_federation::writers::ca_root::INJECT_LABEL;
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": meta(injector::CONFIGURATION, None),
        "webhooks": [{
            "name": injector::WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": o.injector_failure_policy,
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
            "clientConfig": {"service": {
                "name": NAME, "namespace": NAMESPACE, "path": injector::PATH, "port": 443,
            }},
            "rules": [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchLabels": {inject: "enabled"}},
            "objectSelector": {"matchExpressions": [
                {"key": inject, "operator": "NotIn", "values": ["false", "disabled"]},
            ]},
        }],
    })
}

fn mesh(o: &Options) -> Value {
    let mut locality = json!({"region": o.region});
    if let Some(z) = &o.zone {
        locality["zone"] = json!(z);
    }
    json!({
        "apiVersion": "isthmus.dev/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "default", "labels": labels("isthmus")},
        "spec": {"clusterName": o.cluster, "trustDomain": o.trust_domain, "locality": locality},
    })
}

/// The cluster's settings for the gateway's (and sidecars') environment.
fn cluster_config(o: &Options) -> Value {
    let mut data = json!({"cluster": o.cluster, "region": o.region});
    if let Some(z) = &o.zone {
        data["zone"] = json!(z);
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(CLUSTER_CONFIG, Some(NAMESPACE)),
        "data": data,
    })
}

fn deployment(o: &Options) -> Value {
    let pod = json!({"serviceAccountName": SERVICE_ACCOUNT});
    let container = json!({
        "name": "federation",
        "image": o.image("isthmus-federation"),
        "imagePullPolicy": o.pull_policy,
        "args": args(o),
        "env": [
            // The Lease holder's identity and the Lease's (and its
            // Secrets') namespace.
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "grpc-discovery", "containerPort": DISCOVERY_PORT},
            {"name": "tcp-federation", "containerPort": FEDERATION_PORT},
            {"name": "https-webhook", "containerPort": INJECTOR_PORT},
            {"name": "http-admin", "containerPort": ADMIN_PORT},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        // distroless nonroot's user.
        "securityContext": container_security(65532),
    });
    one_container_deployment(NAME, o.replicas, pod, container)
}

/// A Deployment of one Isthmus `container` as `app`: `replicas` of it,
/// spread over nodes, probed (startup, liveness, readiness) and scraped on
/// the admin port; `pod` is the rest of the pod spec (service account,
/// volumes).
pub fn one_container_deployment(
    app: &str,
    replicas: u16,
    mut pod: Value,
    mut container: Value,
) -> Value {
    let get = |path: &str| json!({"path": path, "port": ADMIN_PORT});
    // A first list of the cluster can take a while: started within 3 min.
    container["startupProbe"] =
        json!({"httpGet": get("/healthz"), "periodSeconds": 5, "failureThreshold": 36});
    container["livenessProbe"] =
        json!({"httpGet": get("/healthz"), "periodSeconds": 10, "failureThreshold": 3});
    container["readinessProbe"] =
        json!({"httpGet": get("/readyz"), "periodSeconds": 5, "failureThreshold": 2});
    pod["securityContext"] = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    pod["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": app}},
        },
    }]}});
    pod["containers"] = json!([container]);
    let mut labels = labels(app);
    labels["app"] = json!(app);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(app, Some(NAMESPACE)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": ADMIN_PORT.to_string(),
                    },
                },
                "spec": pod,
            },
        },
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(NAME, Some(NAMESPACE)),
        "spec": {
            "selector": {"app": NAME},
            "ports": [
                {"name": "grpc-discovery", "port": DISCOVERY_PORT, "targetPort": DISCOVERY_PORT, "appProtocol": "grpc"},
                // Linked clusters' control planes, through our gateway
                // (it routes to this Service by name).
                {"name": "tcp-federation", "port": FEDERATION_PORT, "targetPort": FEDERATION_PORT},
                // The API server calls the injection webhook here.
                {"name": "https-webhook", "port": 443, "targetPort": INJECTOR_PORT},
            ],
        },
    })
}

/// What differs between clusters: the Mesh and the cluster settings.
pub fn cluster_objects(o: &Options) -> Vec<Value> {
    vec![mesh(o), cluster_config(o)]
}

/// The control plane.
pub fn objects(o: &Options) -> Vec<Value> {
    let mut out = vec![service(), deployment(o), webhook_configuration(o)];
    out.extend(disruption_budget(NAME, o.replicas));
    out
}
