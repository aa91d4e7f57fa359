//! The east-west gateway: a Deployment of `isthmus-gateway eastwest`
//! (ServiceAccount `isthmus-eastwest`, whose SPIFFE ID linked clusters
//! admit), its settings (one ConfigMap, the same for every cluster: the
//! cluster's name comes from `isthmus-cluster`), the `LoadBalancer`
//! Service linked clusters reach (QUIC on UDP and the fallback on TCP,
//! both 15443) and the ClusterIP Service of its local entry (15009).
//! Its certificate comes from the control plane's CA, proved with a
//! projected ServiceAccount token (audience `isthmus`, rotated by the
//! kubelet); the CA root it verifies the control plane with is the
//! ConfigMap the control plane writes (`isthmus-ca-root`).

use serde_json::{Value, json};

use super::control_plane::{
    CLUSTER_CONFIG, LOCAL_ENTRY_SERVICE, container_security, discovery_address, disruption_budget,
    one_container_deployment,
};
use super::rbac::GATEWAY_SERVICE_ACCOUNT;
use super::{ADMIN_PORT, LOCAL_ENTRY_PORT, NAMESPACE, Options, TUNNEL_PORT, meta};
use isthmus_federation::writers::ca_root;

pub const NAME: &str = "isthmus-eastwest";
const CONFIG_DIR: &str = "/etc/isthmus";
const CA_ROOT_DIR: &str = "/var/run/isthmus/ca-root";
const TOKEN_DIR: &str = "/var/run/secrets/isthmus";
/// How long a projected token lives (the kubelet renews it at 80 %).
const TOKEN_SECONDS: u32 = 3600;

/// `--eastwest-config`: listeners on every address; peers come from the
/// control plane, the cluster's name from `--cluster`.
pub fn eastwest_yaml() -> String {
    format!(
        "quic: 0.0.0.0:{TUNNEL_PORT}\ntcp: 0.0.0.0:{TUNNEL_PORT}\nlocal: 0.0.0.0:{LOCAL_ENTRY_PORT}\n"
    )
}

/// The bootstrap: no sidecar listeners (the gateway's are its own).
pub const BOOTSTRAP_YAML: &str = "listeners: []\n";

fn config_map() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(NAME, Some(NAMESPACE)),
        "data": {"eastwest.yaml": eastwest_yaml(), "bootstrap.yaml": BOOTSTRAP_YAML},
    })
}

/// The gateway's arguments (a test checks each is a flag of
/// `isthmus-gateway eastwest`); the rest comes from the environment.
pub fn args() -> Vec<String> {
    vec![
        "eastwest".into(),
        format!("--eastwest-config={CONFIG_DIR}/eastwest.yaml"),
        format!("--config={CONFIG_DIR}/bootstrap.yaml"),
    ]
}

/// The environment: who it is, where the control plane is, its trust.
pub fn env() -> Vec<Value> {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let setting = |name: &str, key: &str, optional: bool| json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": CLUSTER_CONFIG, "key": key, "optional": optional}}});
    let value = |name: &str, value: String| json!({"name": name, "value": value});
    vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        setting("ISTHMUS_CLUSTER", "cluster", false),
        setting("ISTHMUS_REGION", "region", false),
        setting("ISTHMUS_ZONE", "zone", true),
        value("ISTHMUS_CONTROL_PLANE", discovery_address()),
        value(
            "ISTHMUS_CA_ROOTS",
            format!("{CA_ROOT_DIR}/{}", ca_root::KEY),
        ),
        value("ISTHMUS_CA_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        value("ISTHMUS_ADMIN", format!("0.0.0.0:{ADMIN_PORT}")),
        value("ISTHMUS_ACCESS_LOG", "off".into()),
    ]
}

fn deployment(o: &Options) -> Value {
    let pod = json!({
        "serviceAccountName": GATEWAY_SERVICE_ACCOUNT,
        // It never calls the API: no API token in the pod.
        "automountServiceAccountToken": false,
        "volumes": [
            {"name": "config", "configMap": {"name": NAME}},
            // Written by the control plane once it runs: the pod waits for it.
            {"name": "ca-root", "configMap": {"name": ca_root::CONFIG_MAP}},
            {"name": "isthmus-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": isthmus_federation::identity::service::AUDIENCE,
                "expirationSeconds": TOKEN_SECONDS,
                "path": "token",
            }}]}},
        ],
    });
    let container = json!({
        "name": "eastwest",
        "image": o.image("isthmus-gateway"),
        "imagePullPolicy": o.pull_policy,
        "args": args(),
        "env": env(),
        "ports": [
            {"name": "quic", "containerPort": TUNNEL_PORT, "protocol": "UDP"},
            {"name": "tls", "containerPort": TUNNEL_PORT, "protocol": "TCP"},
            {"name": "tcp-local", "containerPort": LOCAL_ENTRY_PORT},
            {"name": "http-admin", "containerPort": ADMIN_PORT},
        ],
        "resources": {
            "requests": {"cpu": "200m", "memory": "64Mi"},
            "limits": {"memory": "512Mi"},
        },
        // uid 1337: the one transparent capture exempts (the image's user).
        "securityContext": container_security(1337),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": "ca-root", "mountPath": CA_ROOT_DIR, "readOnly": true},
            {"name": "isthmus-token", "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    });
    one_container_deployment(NAME, o.gateway_replicas, pod, container)
}

fn services(o: &Options) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(NAME, Some(NAMESPACE)),
            "spec": {
                "type": o.gateway_service_type,
                "selector": {"app": NAME},
                "ports": [
                    {"name": "quic", "port": TUNNEL_PORT, "targetPort": TUNNEL_PORT, "protocol": "UDP"},
                    {"name": "tls", "port": TUNNEL_PORT, "targetPort": TUNNEL_PORT, "protocol": "TCP"},
                ],
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(LOCAL_ENTRY_SERVICE, Some(NAMESPACE)),
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": NAME},
                "ports": [{"name": "tcp-local", "port": LOCAL_ENTRY_PORT, "targetPort": LOCAL_ENTRY_PORT}],
            },
        }),
    ]
}

/// The gateway's settings, Services and Deployment.
pub fn objects(o: &Options) -> Vec<Value> {
    let mut out = vec![config_map()];
    out.extend(services(o));
    out.push(deployment(o));
    out.extend(disruption_budget(NAME, o.gateway_replicas));
    out
}
