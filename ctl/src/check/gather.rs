//! What `isthmusctl check` reads of a cluster through its API: every read
//! that fails becomes the reason in the fact it was for, never a crash.

use std::time::SystemTime;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::api::{Api, ListParams};
use serde_json::json;

use super::Facts;
use crate::install::NAMESPACE;

/// The CRDs of the APIs Isthmus reads but does not own.
pub const THIRD_PARTY_CRDS: &[&str] = &[
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
    "serviceexports.multicluster.x-k8s.io",
    "serviceimports.multicluster.x-k8s.io",
];

/// What `install` does that needs rights: (group, resource, namespace).
const INSTALL_NEEDS: &[(&str, &str, Option<&str>)] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions", None),
    ("rbac.authorization.k8s.io", "clusterroles", None),
    ("rbac.authorization.k8s.io", "clusterrolebindings", None),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
    ),
    ("", "namespaces", None),
    ("apps", "deployments", Some(NAMESPACE)),
    ("", "services", Some(NAMESPACE)),
];

fn minor(info: &k8s_openapi::apimachinery::pkg::version::Info) -> u32 {
    info.minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

/// The API server's clock minus ours, from the Date header of /version.
async fn clock_offset(client: &kube::Client) -> Option<f64> {
    let req = http::Request::get("/version")
        .body(kube::client::Body::empty())
        .ok()?;
    let sent = SystemTime::now();
    let resp = client.send(req).await.ok()?;
    let date = resp.headers().get(http::header::DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    // The header has whole seconds: compare with the middle of the call.
    let ours = sent + SystemTime::now().duration_since(sent).unwrap_or_default() / 2;
    Some(match theirs.duration_since(ours) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

async fn denied(client: &kube::Client) -> Vec<String> {
    let api: Api<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview> =
        Api::all(client.clone());
    let mut out = Vec::new();
    for (group, resource, ns) in INSTALL_NEEDS {
        let review = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": "create", "namespace": ns}},
        }))
        .expect("a review");
        let allowed = api
            .create(&Default::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        if !allowed {
            out.push(format!("create {resource}"));
        }
    }
    out
}

async fn crds(client: &kube::Client) -> Vec<(String, Option<String>)> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for name in THIRD_PARTY_CRDS {
        let found = api.get_opt(name).await.ok().flatten().map(|crd| {
            crd.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("gateway.networking.k8s.io/bundle-version"))
                .cloned()
                .unwrap_or_else(|| {
                    crd.spec
                        .versions
                        .iter()
                        .filter(|v| v.served)
                        .map(|v| v.name.clone())
                        .collect::<Vec<_>>()
                        .join("/")
                })
        });
        out.push((name.to_string(), found));
    }
    out
}

async fn provider(client: &kube::Client) -> Option<String> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = api.list(&ListParams::default().limit(1)).await.ok()?;
    let id = nodes.items.first()?.spec.as_ref()?.provider_id.clone()?;
    id.split_once("://").map(|(scheme, _)| scheme.to_string())
}

async fn deployments(client: &kube::Client) -> Vec<(String, Option<(i32, i32)>)> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let mut out = Vec::new();
    for name in [
        crate::install::control_plane::NAME,
        crate::install::eastwest::NAME,
    ] {
        let state = api.get_opt(name).await.ok().flatten().map(|d| {
            let want = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (want, ready)
        });
        out.push((name.to_string(), state));
    }
    out
}

/// The injector tried: a pod created with dryRun in the first namespace
/// labelled for injection, and whether it came back with its sidecar.
async fn dry_run(client: &kube::Client) -> Option<Result<bool, String>> {
    let label = isthmus_federation::writers::ca_root::INJECT_LABEL;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .list(&ListParams::default().labels(&format!("{label}=enabled")))
        .await
        .ok()?
        .items
        .into_iter()
        .next()?
        .metadata
        .name?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "isthmus-check-", "namespace": ns},
        "spec": {"containers": [{"name": "check", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .expect("a pod");
    let params = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    Some(match pods.create(&params, &pod).await {
        Ok(p) => Ok(p.spec.and_then(|s| s.init_containers).is_some_and(|c| {
            c.iter()
                .any(|c| c.name == isthmus_federation::inject::PROXY_CONTAINER)
        })),
        Err(e) => Err(format!("in namespace {ns}: {e}")),
    })
}

async fn ca_not_after(client: &kube::Client) -> Result<SystemTime, String> {
    use isthmus_federation::writers::ca_root::{CONFIG_MAP, KEY};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let cm = api
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| format!("reading ConfigMap {NAMESPACE}/{CONFIG_MAP}: {e}"))?
        .ok_or_else(|| format!("no ConfigMap {NAMESPACE}/{CONFIG_MAP} yet"))?;
    let pem = cm
        .data
        .and_then(|d| d.get(KEY).cloned())
        .ok_or_else(|| format!("ConfigMap {CONFIG_MAP} has no {KEY}"))?;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or("no certificate in the CA root")?
        .map_err(|e| format!("the CA root is no PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the CA root does not parse: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Everything `check` judges of the cluster behind `client`.
pub async fn gather(client: &kube::Client, context: &str, pre: bool) -> Facts {
    let mut f = Facts {
        context: context.into(),
        now: Some(SystemTime::now()),
        ..Default::default()
    };
    f.version = Some(
        client
            .apiserver_version()
            .await
            .map(|v| (minor(&v), v.git_version.clone()))
            .map_err(|e| e.to_string()),
    );
    if matches!(f.version, Some(Err(_))) {
        return f;
    }
    f.clock_offset = clock_offset(client).await;
    if pre {
        f.denied = denied(client).await;
        f.crds = crds(client).await;
        f.provider = provider(client).await;
        return f;
    }
    f.deployments = deployments(client).await;
    let hooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let config = hooks
        .get_opt(isthmus_federation::inject::webhook::CONFIGURATION)
        .await
        .ok()
        .flatten();
    f.webhook_configured = Some(config.is_some());
    f.webhook_ca_bundle = config
        .and_then(|c| c.webhooks)
        .and_then(|w| w.into_iter().next())
        .and_then(|w| w.client_config.ca_bundle)
        .is_some_and(|b| !b.0.is_empty());
    f.webhook_dry_run = dry_run(client).await;
    f.ca_not_after = Some(ca_not_after(client).await);
    f.links = crate::link::list(client, context).await.ok();
    f
}
