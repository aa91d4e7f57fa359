//! Sidecar injection: what a pod becomes when it is created in a
//! namespace labelled `isthmus.dev/inject=enabled` (`mutate`, pure), and
//! the mutating admission webhook that answers the API server with it as
//! a JSON Patch (`webhook`).
//!
//! A pod gets:
//! - `isthmus-init`, an init container running `isthmus-gateway
//!   init-iptables` (NET_ADMIN and NET_RAW only), with the exclusions its
//!   annotations ask for;
//! - `isthmus-proxy`, the sidecar as a native sidecar (an init container
//!   with `restartPolicy: Always`, Kubernetes 1.29+): it starts before the
//!   app and stops after it; its CA credential is a projected
//!   ServiceAccount token (audience `isthmus`) and its trust the CA root
//!   ConfigMap the control plane writes into the namespace;
//! - its HTTP, TCP and gRPC probes rewritten to the sidecar's admin port
//!   (`/app-health/<container>/<probe>`), which runs them against the app:
//!   the kubelet's plaintext probes would otherwise be captured and, with
//!   STRICT mTLS, refused. A probe that cannot be carried over (HTTPS, a
//!   host, headers) is left as it is, with a warning.
//!
//! Not injected: hostNetwork pods (capture would rewrite the node's
//! rules), pods annotated `isthmus.dev/inject: "false"`, and pods already
//! injected (a second pass changes nothing).

pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde_json::{Value, json};

pub const INIT_CONTAINER: &str = "isthmus-init";
pub const PROXY_CONTAINER: &str = "isthmus-proxy";
/// Set on injected pods (and opting out: `isthmus.dev/inject: "false"`).
pub const STATUS_ANNOTATION: &str = "isthmus.dev/status";
pub const INJECT_ANNOTATION: &str = "isthmus.dev/inject";
pub const REWRITE_PROBES_ANNOTATION: &str = "isthmus.dev/rewrite-app-probes";
/// `"false"`: the pod's DNS is not sent to the sidecar (clusterset names
/// then need CoreDNS's multicluster plugin).
pub const DNS_CAPTURE_ANNOTATION: &str = "isthmus.dev/dns-capture";
/// The sidecar's DNS proxy (UDP and TCP, on loopback).
pub const DNS_PORT: u16 = 15053;
/// The proxy's uid: exempt from capture.
pub const PROXY_UID: i64 = 1337;
/// The sidecar's admin port: probes, metrics; never captured.
pub const ADMIN_PORT: i32 = 15020;
/// Inbound ports capture leaves alone: the mesh transport, admin, health.
pub const DEFAULT_EXCLUDED_INBOUND: &str = "15008,15020,15021";
const CA_ROOT_DIR: &str = "/var/run/isthmus/ca-root";
const TOKEN_DIR: &str = "/var/run/secrets/isthmus";
const TOKEN_SECONDS: i64 = 3600;

/// Annotations that tune capture: (annotation, init-iptables flag, kind).
pub const CAPTURE_ANNOTATIONS: &[(&str, &str, ListKind)] = &[
    (
        "isthmus.dev/include-inbound-ports",
        "--include-inbound-ports",
        ListKind::Ports,
    ),
    (
        "isthmus.dev/exclude-inbound-ports",
        "--exclude-inbound-ports",
        ListKind::Ports,
    ),
    (
        "isthmus.dev/exclude-outbound-ports",
        "--exclude-outbound-ports",
        ListKind::Ports,
    ),
    (
        "isthmus.dev/include-outbound-cidrs",
        "--include-outbound-cidrs",
        ListKind::Cidrs,
    ),
    (
        "isthmus.dev/exclude-outbound-cidrs",
        "--exclude-outbound-cidrs",
        ListKind::Cidrs,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Ports,
    Cidrs,
}

/// What the injector puts in: the proxy image and where the control plane
/// is, and this cluster's name and locality (from the Mesh).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    pub image: String,
    pub pull_policy: String,
    /// `host:port` of discovery and the CA.
    pub control_plane: String,
    pub cluster: String,
    pub region: String,
    pub zone: String,
    /// The Mesh's tracing: the OTLP collector ("" none) and the percent of
    /// new traces sampled (None: the sidecar's default).
    pub otlp_endpoint: String,
    pub trace_sampling: Option<f64>,
}

/// Why a pod is let through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    OptedOut,
    AlreadyInjected,
}

/// A pod the webhook refuses, and why (the API server shows the message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error(
        "annotation {annotation}: {value:?} is not a comma-separated list of {what} (fix the annotation, or remove it)"
    )]
    Annotation {
        annotation: String,
        value: String,
        what: &'static str,
    },
    #[error("the pod has a container named {0}, which the injector adds: rename it")]
    NameTaken(String),
    #[error("annotation {annotation}: {value:?} is neither \"true\" nor \"false\"")]
    NotABool { annotation: String, value: String },
}

/// Whether the pod's DNS goes to the sidecar (the default).
fn dns_capture(pod: &Pod) -> Result<bool, InjectError> {
    match annotation(pod, DNS_CAPTURE_ANNOTATION) {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(InjectError::NotABool {
            annotation: DNS_CAPTURE_ANNOTATION.into(),
            value: v.into(),
        }),
    }
}

/// The injected pod and what the user should know.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub pod: Pod,
    pub warnings: Vec<String>,
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn check_list(annotation: &str, value: &str, kind: ListKind) -> Result<String, InjectError> {
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let ok = items.iter().all(|i| match kind {
        ListKind::Ports => i.parse::<u16>().is_ok_and(|p| p != 0),
        ListKind::Cidrs => cidr(i),
    });
    if !ok || items.is_empty() {
        return Err(InjectError::Annotation {
            annotation: annotation.into(),
            value: value.into(),
            what: match kind {
                ListKind::Ports => "ports",
                ListKind::Cidrs => "CIDRs",
            },
        });
    }
    Ok(items.join(","))
}

fn cidr(s: &str) -> bool {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= 32),
        Ok(std::net::IpAddr::V6(_)) => len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= 128),
        Err(_) => false,
    }
}

/// The init container's arguments, with the pod's capture annotations.
pub fn iptables_args(pod: &Pod) -> Result<Vec<String>, InjectError> {
    let mut args = vec![
        "init-iptables".to_string(),
        format!("--proxy-uid={PROXY_UID}"),
    ];
    let mut excluded_inbound = DEFAULT_EXCLUDED_INBOUND.to_string();
    for (key, flag, kind) in CAPTURE_ANNOTATIONS {
        let Some(value) = annotation(pod, key) else {
            continue;
        };
        let list = check_list(key, value, *kind)?;
        if *flag == "--exclude-inbound-ports" {
            excluded_inbound = format!("{excluded_inbound},{list}");
        } else {
            args.push(format!("{flag}={list}"));
        }
    }
    args.push(format!("--exclude-inbound-ports={excluded_inbound}"));
    if dns_capture(pod)? {
        args.push(format!("--dns-port={DNS_PORT}"));
    }
    Ok(args)
}

fn security(uid: i64, caps: &[&str]) -> Value {
    let mut s = json!({
        "allowPrivilegeEscalation": false,
        // iptables takes its lock under /run: the init container writes.
        "readOnlyRootFilesystem": uid != 0,
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": uid != 0,
        "capabilities": {"drop": ["ALL"]},
    });
    if !caps.is_empty() {
        s["capabilities"]["add"] = json!(caps);
    }
    s
}

/// `8080=http:/healthz`, `8080=tcp`, `9090=grpc:svc` for the sidecar's
/// `/app-health`, or why a probe is not carried over.
fn probe_check(c: &Container, p: &Probe) -> Result<Option<String>, String> {
    let port_of =
        |port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| -> Result<i32, String> {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            match port {
                IntOrString::Int(n) => Ok(*n),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .map(|p| p.container_port)
                    .ok_or_else(|| format!("port {name:?} is no port of the container")),
            }
        };
    if let Some(h) = &p.http_get {
        if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err("HTTPS probes are not carried over".into());
        }
        if h.host.is_some() {
            return Err("a probe with a host is not carried over".into());
        }
        if h.http_headers.as_ref().is_some_and(|h| !h.is_empty()) {
            return Err("probe headers are not carried over".into());
        }
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        return Ok(Some(format!("{}=http:{path}", port_of(&h.port)?)));
    }
    if let Some(t) = &p.tcp_socket {
        if t.host.is_some() {
            return Err("a probe with a host is not carried over".into());
        }
        return Ok(Some(format!("{}=tcp", port_of(&t.port)?)));
    }
    if let Some(g) = &p.grpc {
        return Ok(Some(match g.service.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => format!("{}=grpc:{s}", g.port),
            None => format!("{}=grpc", g.port),
        }));
    }
    Ok(None) // exec: runs in the container, nothing to rewrite
}

/// Rewrites the app containers' probes to the sidecar; returns the
/// sidecar's `/app-health` table (`container/probe` → check) and warnings.
fn rewrite_probes(pod: &mut Pod) -> (BTreeMap<String, String>, Vec<String>) {
    let mut table = BTreeMap::new();
    let mut warnings = Vec::new();
    let Some(spec) = pod.spec.as_mut() else {
        return (table, warnings);
    };
    for c in &mut spec.containers {
        let snapshot = c.clone();
        for (kind, probe) in [
            ("livez", &mut c.liveness_probe),
            ("readyz", &mut c.readiness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(p) = probe.as_mut() else {
                continue;
            };
            match probe_check(&snapshot, p) {
                Ok(Some(check)) => {
                    let key = format!("{}/{kind}", snapshot.name);
                    let path = format!("/app-health/{key}");
                    table.insert(key, check);
                    p.http_get = Some(k8s_openapi::api::core::v1::HTTPGetAction {
                        path: Some(path),
                        port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                            ADMIN_PORT,
                        ),
                        ..Default::default()
                    });
                    p.tcp_socket = None;
                    p.grpc = None;
                }
                Ok(None) => {}
                Err(why) => warnings.push(format!(
                    "isthmus: container {}: {kind} probe left as it is ({why}); with STRICT mTLS the kubelet cannot reach it",
                    snapshot.name
                )),
            }
        }
    }
    (table, warnings)
}

/// The TCP ports the app containers declare, `name=port` (the sidecar
/// registers them and checks each).
fn workload_ports(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            out.push(match &p.name {
                Some(n) => format!("{n}={}", p.container_port),
                None => p.container_port.to_string(),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The sidecar container for `pod` (its labels and ports), with the
/// app probes it serves; also the base of a pod that runs only a proxy
/// (the kind walkthrough's traffic client).
pub fn proxy_container(t: &Template, pod: &Pod, probes: &BTreeMap<String, String>) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, v: &str| json!({"name": name, "value": v});
    let labels: Vec<String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("INSTANCE_IP", "status.podIP"),
        value("ISTHMUS_CONTROL_PLANE", &t.control_plane),
        value(
            "ISTHMUS_CA_ROOTS",
            &format!("{CA_ROOT_DIR}/{}", crate::writers::ca_root::KEY),
        ),
        value("ISTHMUS_CA_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
        value("ISTHMUS_ADMIN", &format!("0.0.0.0:{ADMIN_PORT}")),
        value("ISTHMUS_WORKER_THREADS", "1"),
        value("ISTHMUS_LABELS", &labels.join(",")),
    ];
    // The cluster's name and locality, from its Mesh (none without one).
    for (name, v) in [
        ("ISTHMUS_CLUSTER", &t.cluster),
        ("ISTHMUS_REGION", &t.region),
        ("ISTHMUS_ZONE", &t.zone),
    ] {
        if !v.is_empty() {
            env.push(value(name, v));
        }
    }
    if !t.otlp_endpoint.is_empty() {
        env.push(value("OTEL_EXPORTER_OTLP_ENDPOINT", &t.otlp_endpoint));
    }
    if let Some(p) = t.trace_sampling {
        env.push(value("ISTHMUS_TRACE_SAMPLING", &p.to_string()));
    }
    if !probes.is_empty() {
        env.push(value(
            "ISTHMUS_APP_PROBES",
            &serde_json::to_string(probes).unwrap_or_default(),
        ));
    }
    if dns_capture(pod).unwrap_or(false) {
        env.push(value("ISTHMUS_DNS", &format!("127.0.0.1:{DNS_PORT}")));
    }
    let ports = workload_ports(pod);
    let mut args = vec!["sidecar".to_string()];
    if !ports.is_empty() {
        args.push(format!("--workload-port={}", ports.join(",")));
    }
    let get = |path: &str| json!({"path": path, "port": ADMIN_PORT});
    json!({
        "name": PROXY_CONTAINER,
        "image": t.image,
        "imagePullPolicy": t.pull_policy,
        "restartPolicy": "Always",
        "args": args,
        "env": env,
        "ports": [{"name": "http-isthmus", "containerPort": ADMIN_PORT}],
        "startupProbe": {"httpGet": get("/healthz"), "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {"httpGet": get("/readyz"), "periodSeconds": 2, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": security(PROXY_UID, &[]),
        "volumeMounts": [
            {"name": "isthmus-ca-root", "mountPath": CA_ROOT_DIR, "readOnly": true},
            {"name": "isthmus-token", "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    })
}

fn init_container(t: &Template, args: Vec<String>) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": t.image,
        "imagePullPolicy": t.pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        // Root inside the pod's network namespace, for iptables; nothing else.
        "securityContext": security(0, &["NET_ADMIN", "NET_RAW"]),
    })
}

/// The volumes the sidecar mounts: the CA root and its CA token.
pub fn volumes() -> Vec<Value> {
    vec![
        json!({"name": "isthmus-ca-root", "configMap": {"name": crate::writers::ca_root::CONFIG_MAP}}),
        json!({"name": "isthmus-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": crate::identity::service::AUDIENCE,
            "expirationSeconds": TOKEN_SECONDS,
            "path": "token",
        }}]}}),
    ]
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("the injector's own objects are well formed")
}

/// The pod with the sidecar injected, or why not.
pub fn mutate(pod: &Pod, t: &Template) -> Result<Result<Injected, Skip>, InjectError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Err(Skip::OptedOut));
    };
    if spec.host_network == Some(true) {
        return Ok(Err(Skip::HostNetwork));
    }
    if annotation(pod, INJECT_ANNOTATION) == Some("false") {
        return Ok(Err(Skip::OptedOut));
    }
    let names = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    if annotation(pod, STATUS_ANNOTATION).is_some() {
        return Ok(Err(Skip::AlreadyInjected));
    }
    if let Some(n) = names
        .into_iter()
        .find(|n| *n == PROXY_CONTAINER || *n == INIT_CONTAINER)
    {
        return Err(InjectError::NameTaken(n.to_string()));
    }
    let args = iptables_args(pod)?;
    let mut out = pod.clone();
    let (probes, warnings) = if annotation(pod, REWRITE_PROBES_ANNOTATION) == Some("false") {
        (BTreeMap::new(), Vec::new())
    } else {
        rewrite_probes(&mut out)
    };
    let proxy = proxy_container(t, pod, &probes);
    let first_app = spec.containers.first().map(|c| c.name.clone());
    let spec = out.spec.as_mut().expect("checked above");
    let mut init: Vec<Container> = vec![from_value(init_container(t, args)), from_value(proxy)];
    init.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init);
    let mut vols: Vec<_> = volumes().into_iter().map(from_value).collect();
    vols.extend(spec.volumes.take().unwrap_or_default());
    spec.volumes = Some(vols);
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(STATUS_ANNOTATION.into(), "injected".into());
    if let Some(app) = first_app {
        annotations
            .entry("kubectl.kubernetes.io/default-container".into())
            .or_insert(app);
    }
    Ok(Ok(Injected { pod: out, warnings }))
}

/// The JSON Patch from `before` to `after`.
pub fn patch(before: &Pod, after: &Pod) -> json_patch::Patch {
    let a = serde_json::to_value(before).unwrap_or_default();
    let b = serde_json::to_value(after).unwrap_or_default();
    json_patch::diff(&a, &b)
}

#[cfg(test)]
mod tests;
