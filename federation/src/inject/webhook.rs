//! The mutating admission webhook (`--injector`, port 15017): the API
//! server POSTs an `AdmissionReview` for each pod created in a namespace
//! labelled for injection (the MutatingWebhookConfiguration
//! `isthmus-injector` says which, `isthmusctl install` writes it) and gets
//! back a JSON Patch (`review`, pure). It is served over TLS with a
//! certificate from the cluster's CA for the control plane's Service
//! names; the leader writes the CA's root into the configuration's
//! `caBundle` (`BundleWriter`), so every replica's certificate verifies.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{InjectError, Skip, Template, mutate, patch};
use crate::server::Published;
use crate::store::{Resource, Snapshot};

/// The MutatingWebhookConfiguration and its one webhook.
pub const CONFIGURATION: &str = "isthmus-injector";
pub const WEBHOOK: &str = "inject.isthmus.dev";
pub const PATH: &str = "/inject";
pub const PORT: u16 = 15017;
/// The largest review accepted (a pod spec is far smaller).
const MAX_BODY: usize = 4 << 20;

/// What the injector knows besides the Mesh: the proxy image and the
/// address proxies reach the control plane at.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub image: String,
    pub pull_policy: String,
    pub control_plane: String,
}

/// The template for this cluster: `settings`, with its name and locality
/// from the Mesh.
pub fn template(snap: &Snapshot, s: &Settings) -> Template {
    let mesh = snap.of_kind("Mesh").find_map(|(_, r)| match r {
        Resource::Mesh(m) => Some(m.spec.clone()),
        _ => None,
    });
    Template {
        image: s.image.clone(),
        pull_policy: s.pull_policy.clone(),
        control_plane: s.control_plane.clone(),
        cluster: mesh
            .as_ref()
            .map(|m| m.cluster_name.clone())
            .unwrap_or_default(),
        region: mesh
            .as_ref()
            .map(|m| m.locality.region.clone())
            .unwrap_or_default(),
        otlp_endpoint: mesh
            .as_ref()
            .and_then(|m| m.tracing.as_ref()?.otlp_endpoint.clone())
            .unwrap_or_default(),
        // The API server holds it to 0-100; a file store does not.
        trace_sampling: mesh
            .as_ref()
            .and_then(|m| m.tracing.as_ref()?.sampling_percent)
            .filter(|p| (0.0..=100.0).contains(p)),
        zone: mesh.map(|m| m.locality.zone).unwrap_or_default(),
    }
}

/// The answer to one AdmissionReview (its JSON), as JSON.
pub fn review(body: &[u8], t: &Template) -> Value {
    let response = match serde_json::from_slice::<AdmissionReview<Pod>>(body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let req: Result<AdmissionRequest<Pod>, _> = r.try_into();
            req.map_err(|e| e.to_string())
        }) {
        Err(e) => AdmissionResponse::invalid(format!("not an AdmissionReview of a Pod: {e}")),
        Ok(req) => answer(&req, t),
    };
    let mut out = serde_json::to_value(response.into_review()).unwrap_or_default();
    // The API's `patch` is bytes, which Kubernetes writes as base64;
    // kube-core writes an array of numbers (also read, but not canonical).
    if let Some(bytes) = out["response"]["patch"].as_array().map(|a| {
        a.iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Vec<u8>>()
    }) {
        use base64::Engine;
        out["response"]["patch"] = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    out
}

fn answer(req: &AdmissionRequest<Pod>, t: &Template) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(pod) = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)
    else {
        return allowed;
    };
    let who = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let ns = req.namespace.clone().unwrap_or_default();
    match mutate(pod, t) {
        Ok(Ok(injected)) => {
            let ops = patch(pod, &injected.pod);
            tracing::info!(pod = %format!("{ns}/{who}"), warnings = injected.warnings.len(), "sidecar injected");
            match allowed.with_patch(ops) {
                Ok(mut r) => {
                    if !injected.warnings.is_empty() {
                        r.warnings = Some(injected.warnings);
                    }
                    r
                }
                Err(e) => AdmissionResponse::from(req).deny(format!("isthmus injector: {e}")),
            }
        }
        Ok(Err(skip)) => {
            let why = match skip {
                Skip::HostNetwork => "hostNetwork",
                Skip::OptedOut => "opted out",
                Skip::AlreadyInjected => "already injected",
            };
            tracing::debug!(pod = %format!("{ns}/{who}"), why, "not injected");
            allowed
        }
        Err(
            e @ (InjectError::Annotation { .. }
            | InjectError::NameTaken(_)
            | InjectError::NotABool { .. }),
        ) => {
            tracing::info!(pod = %format!("{ns}/{who}"), "injection refused: {e}");
            AdmissionResponse::from(req).deny(format!("isthmus injector: {e}"))
        }
    }
}

/// Serves the webhook on `listener` (TLS from `tls`) until `stop`.
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<crate::identity::tls::ServingTls>,
    published: watch::Receiver<Arc<Published>>,
    settings: Settings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use tokio_stream::StreamExt;
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        let mut incoming = tls.incoming(listener, stop.clone());
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => break,
                c = incoming.next() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(_)) => continue,
                    None => break,
                },
            };
            let (published, settings, stop) = (published.clone(), settings.clone(), stop.clone());
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (published, settings) = (published.clone(), settings.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(req, &published, &settings).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                tokio::select! {
                    _ = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), svc) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        conns.close();
        conns.wait().await;
    })
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    published: &watch::Receiver<Arc<Published>>,
    settings: &Settings,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if req.uri().path() != PATH || req.method() != hyper::Method::POST {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("POST AdmissionReviews to {PATH}")}).to_string(),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": e.to_string()}).to_string(),
            );
        }
    };
    let t = template(&published.borrow().store.snapshot, settings);
    reply(StatusCode::OK, review(&body, &t).to_string())
}

/// Writes the CA's root into the webhook configuration's caBundle (the
/// leader only); the configuration itself is `isthmusctl install`'s.
pub struct BundleWriter {
    client: kube::Client,
    written: Option<String>,
}

impl BundleWriter {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            written: None,
        }
    }

    pub fn forget(&mut self) {
        self.written = None;
    }

    /// Applies `pem` as the caBundle when it changed; Ok(true) if written.
    /// A missing configuration (not installed) is an error that says so.
    pub async fn write(&mut self, pem: &str) -> Result<bool, String> {
        if pem.is_empty() || self.written.as_deref() == Some(pem) {
            return Ok(false);
        }
        use base64::Engine;
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
        let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(self.client.clone());
        // Only an existing configuration is patched: the control plane
        // may not create one (and one made here would lack its rules).
        if let Err(e) = api.get(CONFIGURATION).await {
            return Err(format!(
                "MutatingWebhookConfiguration {CONFIGURATION}: {e} (install it: isthmusctl install)"
            ));
        }
        let bundle = base64::engine::general_purpose::STANDARD.encode(pem);
        let object = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION},
            "webhooks": [{"name": WEBHOOK, "clientConfig": {"caBundle": bundle}}],
        });
        let params = kube::api::PatchParams::apply(crate::writers::status::FIELD_MANAGER).force();
        api.patch(CONFIGURATION, &params, &kube::api::Patch::Apply(&object))
            .await
            .map_err(|e| {
                format!("caBundle of MutatingWebhookConfiguration {CONFIGURATION}: {e}")
            })?;
        self.written = Some(pem.to_string());
        Ok(true)
    }
}
