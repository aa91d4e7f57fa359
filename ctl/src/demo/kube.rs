//! The demo's sample mesh for a Kubernetes cluster (`isthmusctl sample
//! --cluster NAME`): the same apps per cluster as the local demo
//! (`mesh::Cluster::apps`), as Deployments of `isthmus-sample` in the
//! namespace `shop`, labelled for injection, each Service exported; and
//! `frontend`, a pod running only a proxy with an explicit HTTP listener
//! on 127.0.0.1:15080 — what the kind walkthrough's scenarios send their
//! requests to (`kubectl port-forward`), as the local demo does to each
//! frontend sidecar.

use serde_json::{Value, json};

use super::mesh::{APP_PORT, App, Cluster};
use isthmus_ctl::install::{Options, control_plane};
use isthmus_federation::inject::{self, Template};
use isthmus_federation::writers::ca_root::INJECT_LABEL;

pub const NAMESPACE: &str = "shop";
/// The frontend proxy's explicit HTTP listener (port-forwarded to).
pub const FRONTEND_PORT: u16 = 15080;

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "isthmus-sample"}})
}

fn port_of(app: &App) -> (&'static str, u16) {
    if app.grpc {
        ("grpc", 9090)
    } else {
        ("http", 80)
    }
}

fn app_objects(c: &Cluster, app: &App, o: &Options) -> Vec<Value> {
    let (port_name, port) = port_of(app);
    let name = format!("{}-{}", app.service, app.version);
    let labels = json!({"app": app.service, "version": app.version});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(app.service)}),
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta(app.service),
            "spec": {"selector": {"app": app.service},
                     "ports": [{"name": port_name, "port": port, "targetPort": port_name}]},
        }),
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": meta(app.service)}),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(&name),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": app.service,
                        "containers": [{
                            "name": "app",
                            "image": o.image("isthmus-sample"),
                            "imagePullPolicy": o.pull_policy,
                            "args": ["--listen", format!("0.0.0.0:{APP_PORT}"), "--service", app.service,
                                     "--cluster", c.name, "--version", app.version],
                            "ports": [{"name": port_name, "containerPort": APP_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/status/200", "port": APP_PORT}, "periodSeconds": 2},
                            "resources": {"requests": {"cpu": "20m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                            "securityContext": control_plane::container_security(65532),
                        }],
                    },
                },
            },
        }),
    ]
}

/// The frontend: a proxy alone (no app, not injected), its explicit
/// listener from a bootstrap ConfigMap, its identity and trust as an
/// injected sidecar's.
fn frontend(c: &Cluster, o: &Options) -> Vec<Value> {
    let t = Template {
        image: o.image("isthmus-gateway"),
        pull_policy: o.pull_policy.clone(),
        control_plane: control_plane::discovery_address(),
        cluster: c.name.into(),
        region: c.name.into(),
        zone: c.zone(),
        ..Default::default()
    };
    let mut pod = k8s_openapi::api::core::v1::Pod::default();
    pod.metadata.labels = Some([("app".to_string(), "frontend".to_string())].into());
    let mut proxy = inject::proxy_container(&t, &pod, &Default::default());
    proxy["name"] = json!("proxy");
    proxy
        .as_object_mut()
        .expect("a container")
        .remove("restartPolicy");
    proxy["args"] = json!(["sidecar", "--config", "/etc/isthmus/bootstrap.yaml"]);
    proxy["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"name": "bootstrap", "mountPath": "/etc/isthmus", "readOnly": true}));
    let mut volumes = inject::volumes();
    volumes.push(json!({"name": "bootstrap", "configMap": {"name": "frontend-bootstrap"}}));
    let labels = json!({"app": "frontend", INJECT_LABEL: "false"});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("frontend")}),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("frontend-bootstrap"),
            "data": {"bootstrap.yaml": format!(
                "listeners:\n  - {{name: outbound-http, address: \"127.0.0.1:{FRONTEND_PORT}\", http: {{}}}}\n"
            )},
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("frontend"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "frontend"}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "frontend",
                        "containers": [proxy],
                        "volumes": volumes,
                    },
                },
            },
        }),
    ]
}

/// Everything the sample mesh runs in cluster `c`.
pub fn objects(c: &Cluster, o: &Options) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {INJECT_LABEL: "enabled"}},
    })];
    out.extend(frontend(c, o));
    let mut seen = std::collections::BTreeSet::new();
    for app in c.apps() {
        let objs = app_objects(c, &app, o);
        // One Service, account and export per service.
        for obj in objs {
            let key = (
                obj["kind"].as_str().unwrap_or_default().to_string(),
                obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            if seen.insert(key) {
                out.push(obj);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cluster_runs_its_demo_apps_and_a_frontend() {
        let o = Options::new("eu-west");
        let west = objects(&Cluster::by_name("eu-west").unwrap(), &o);
        let deployments: Vec<&str> = west
            .iter()
            .filter(|x| x["kind"] == "Deployment")
            .map(|x| x["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(deployments, ["frontend", "catalog-v1", "reviews-v1"]);
        assert_eq!(west[0]["metadata"]["labels"][INJECT_LABEL], "enabled");
        let central = objects(&Cluster::by_name("eu-central").unwrap(), &o);
        let grpc = central
            .iter()
            .find(|x| x["kind"] == "Service" && x["metadata"]["name"] == "inventory")
            .unwrap();
        assert_eq!(grpc["spec"]["ports"][0]["name"], "grpc");
        // Every Service is exported.
        for objs in [&west, &central] {
            let services = objs.iter().filter(|x| x["kind"] == "Service").count();
            let exports = objs.iter().filter(|x| x["kind"] == "ServiceExport").count();
            assert_eq!(services, exports);
        }
        let fe = west
            .iter()
            .find(|x| x["kind"] == "Deployment" && x["metadata"]["name"] == "frontend")
            .unwrap();
        let pod = &fe["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][INJECT_LABEL], "false");
        assert!(pod["spec"]["containers"][0].get("restartPolicy").is_none());
    }
}
