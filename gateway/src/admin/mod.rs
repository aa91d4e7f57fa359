//! The admin port (15020): /metrics, /healthz, /readyz, /config_dump and
//! /explain (what the proxy would do with a request: `crate::explain`),
//! plus views a role adds (the east-west gateway's /eastwest), and the
//! app's own probes at /app-health/<container>/<probe> (the injector
//! points the kubelet's probes here). Read-only views of the proxy's
//! state; nothing here changes it.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::proxy::Proxy;
use crate::proxy::body::{RespBody, full};
use crate::proxy::listener::Listeners;

/// A JSON view a role adds to the admin port.
pub type View = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub listeners: Arc<Listeners>,
    pub tasks: tokio_util::task::TaskTracker,
    /// Extra views by path.
    pub views: parking_lot::RwLock<Vec<(&'static str, View)>>,
    /// The app's probes, served at /app-health/<container>/<probe>.
    pub app_probes: parking_lot::RwLock<Option<Arc<crate::health::AppProbes>>>,
}

/// How long an app probe may take (the kubelet gives up at its own
/// timeoutSeconds, 1 s by default).
const APP_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Admin {
    /// Ready: a configuration is loaded, its listeners are bound, and the
    /// proxy is not draining.
    pub fn ready(&self) -> Result<(), String> {
        if self.proxy.drain.is_cancelled() {
            return Err("draining".into());
        }
        if !self.proxy.store.is_loaded() {
            return Err("no configuration yet".into());
        }
        let snap = self.proxy.store.load();
        let missing: Vec<&str> = snap
            .listeners
            .iter()
            .filter(|l| self.listeners.addr(&l.name).is_none())
            .map(|l| l.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!("listeners not bound: {}", missing.join(", ")));
        }
        if let Some(m) = &self.proxy.mesh
            && !m.ready()
        {
            return Err("no workload certificate yet (waiting for the CA)".into());
        }
        Ok(())
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let snap = self.proxy.store.load();
        let mut dump = serde_json::json!({
            "version": snap.version,
            "generation": self.proxy.store.generation(),
            "lastRejected": self.proxy.store.last_error(),
            "listeners": self.listeners.bound().into_iter()
                .map(|(n, a)| (n, serde_json::Value::String(a.to_string())))
                .collect::<serde_json::Map<_, _>>(),
            "config": serde_json::to_value(&snap.source).unwrap_or_default(),
            "upstreams": self.proxy.services.dump(),
            "peerLiveness": self.proxy.services.liveness.dump(),
            "security": self.security_dump(&snap),
        });
        // A role's views are part of the dump too (the east-west gateway's
        // peers and their liveness under "eastwest").
        for (path, view) in self.views.read().iter() {
            dump[path.trim_start_matches('/')] = view();
        }
        dump
    }

    /// `/explain`: the outbound path of a request, or (with `inbound`)
    /// the admission of one from `source`.
    fn explain(&self, ask: &crate::explain::Ask) -> String {
        let snap = self.proxy.store.load();
        let v = match ask.inbound {
            Some(port) => {
                let cluster = crate::proxy::source_cluster(&self.proxy, &snap, ask.source.as_ref());
                serde_json::to_value(crate::explain::inbound(
                    &snap,
                    ask,
                    port,
                    cluster.as_deref(),
                    std::time::SystemTime::now(),
                ))
            }
            None => {
                serde_json::to_value(crate::explain::outbound(&snap, &self.proxy.services, ask))
            }
        };
        serde_json::to_string_pretty(&v.unwrap_or_default()).unwrap_or_default() + "\n"
    }

    fn security_dump(&self, snap: &crate::config::Snapshot) -> serde_json::Value {
        let sec = &snap.security;
        let mesh = self.proxy.mesh.as_ref();
        let mut domains: Vec<String> = mesh
            .and_then(|m| m.trust())
            .map(|t| t.domains().map(str::to_string).collect())
            .unwrap_or_default();
        domains.sort();
        serde_json::json!({
            "identity": mesh.and_then(|m| m.own_id()).map(|i| i.to_string()),
            "certificateGeneration": mesh.map(|m| m.generation()),
            "trustDomains": domains,
            "mtlsMode": format!("{:?}", sec.mode).to_uppercase(),
            "mtlsModeFrom": sec.mode_source,
            "authorization": !sec.authz.is_empty(),
            "requestAuthentication": !sec.jwt.is_empty(),
        })
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<RespBody> {
        let view = self
            .views
            .read()
            .iter()
            .find(|(p, _)| *p == req.uri().path())
            .map(|(_, v)| v.clone());
        let (status, ctype, body) = match req.uri().path() {
            _ if view.is_some() => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&view.expect("a view")()).unwrap_or_default(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.proxy.metrics.encode(),
            ),
            // Requests sent, by destination cluster (the topology page).
            "/stats/edges" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&self.proxy.metrics.edges.snapshot()).unwrap_or_default(),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.ready() {
                Ok(()) => (StatusCode::OK, "text/plain", "ready\n".into()),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                ),
            },
            "/config_dump" => (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&self.config_dump()).unwrap_or_default(),
            ),
            // What this proxy would do with a request (`isthmusctl explain`).
            "/explain" => match crate::explain::Ask::parse(req.uri().query().unwrap_or("")) {
                Ok(ask) => (StatusCode::OK, "application/json", self.explain(&ask)),
                Err(e) => (StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics, /healthz, /readyz, /config_dump or /explain?url=...\n".into(),
            ),
        };
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
        r
    }

    /// `/app-health/<key>`: the app's probe, run now.
    async fn app_health(&self, key: &str) -> Response<RespBody> {
        let probes = self.app_probes.read().clone();
        let result = match probes {
            Some(p) => p.run(key, APP_PROBE_TIMEOUT).await,
            None => None,
        };
        let (status, body) = match result {
            Some(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
            Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            None => (StatusCode::NOT_FOUND, format!("no app probe {key:?}\n")),
        };
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        r
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let stop = self.proxy.hard_stop.clone();
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
            };
            let admin = self.clone();
            let stop = stop.clone();
            // Admin connections are not part of the drain: probes must keep
            // working (and see 503 on /readyz) until the very end.
            self.tasks.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move {
                        let r = match req.uri().path().strip_prefix("/app-health/") {
                            Some(key) => admin.app_health(key).await,
                            None => admin.handle(&req),
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}
