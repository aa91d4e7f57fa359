//! The control plane process (`isthmus-federation run`): watches the store,
//! translates every new snapshot, reports problems, and serves its state on
//! the admin port (`/config_dump`, `/proxy_config?namespace=NS`, `/healthz`,
//! `/readyz`). The discovery
//! stream to proxies is the next piece; it will read the same `Published`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::files::{FileWatcher, State};
use crate::translate::{services::Catalog, translate};

#[derive(Debug, Clone)]
pub struct Options {
    /// The `files` store directory.
    pub store_dir: PathBuf,
    pub poll: Duration,
    pub debounce: Duration,
}

/// The translation of one store generation.
#[derive(Debug, Default)]
pub struct Published {
    pub generation: u64,
    pub catalog: Catalog,
    pub store: State,
}

/// A running control plane.
pub struct ControlPlane {
    pub published: watch::Receiver<Arc<Published>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl ControlPlane {
    /// Loads the store, translates, and keeps doing so on every change.
    pub fn start(opts: Options) -> Self {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (mut states, watcher) = FileWatcher {
            dir: opts.store_dir,
            poll: opts.poll,
            debounce: opts.debounce,
        }
        .start(stop.clone());
        let first = publish(&states.borrow_and_update());
        let (tx, published) = watch::channel(first);
        tasks.spawn(async move {
            let _watcher = watcher;
            while states.changed().await.is_ok() {
                let next = publish(&states.borrow_and_update());
                tx.send_replace(next);
            }
        });
        Self {
            published,
            tasks,
            stop,
        }
    }

    /// Serves the admin endpoints on `listener` until `shutdown`.
    pub fn serve_admin(&self, listener: TcpListener) {
        let published = self.published.clone();
        let stop = self.stop.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let published = published.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let r = admin(&req, &published.borrow());
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn publish(state: &State) -> Arc<Published> {
    let catalog = translate(&state.snapshot);
    for p in &catalog.problems {
        tracing::warn!(kind = p.kind, object = %p.key, reason = p.reason, "{}", p.message);
    }
    tracing::info!(
        generation = state.generation,
        services = catalog.services.len(),
        problems = catalog.problems.len(),
        "configuration translated"
    );
    Arc::new(Published {
        generation: state.generation,
        catalog,
        store: state.clone(),
    })
}

fn admin(req: &Request<hyper::body::Incoming>, p: &Published) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Ready once a store generation was translated (always, after start).
        "/readyz" => (
            StatusCode::OK,
            "text/plain",
            format!("generation {}\n", p.generation),
        ),
        // What a proxy in a namespace would be sent: /proxy_config?namespace=shop
        "/proxy_config" => proxy_config(req.uri().query().unwrap_or(""), p),
        "/config_dump" => {
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for (kind, _) in p.store.snapshot.objects.keys() {
                *kinds.entry(kind).or_default() += 1;
            }
            let dump = serde_json::json!({
                "generation": p.generation,
                "objects": kinds,
                "storeErrors": p.store.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "problems": p.catalog.problems.iter().map(|x| serde_json::json!({
                    "kind": x.kind,
                    "object": x.key.to_string(),
                    "reason": x.reason,
                    "message": x.message,
                })).collect::<Vec<_>>(),
                "conditions": crate::translate::status::conditions(
                    &p.store.snapshot,
                    &p.catalog.problems,
                    &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ),
                )
                .into_iter()
                .map(|((kind, key), c)| (format!("{kind} {key}"), c))
                .collect::<std::collections::BTreeMap<_, _>>(),
                "services": p.catalog.services,
            });
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n",
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /config_dump, /proxy_config?namespace=NS, /healthz, /readyz\n"
                .to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn proxy_config(query: &str, p: &Published) -> (StatusCode, &'static str, String) {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let Some(namespace) = param("namespace") else {
        return (
            StatusCode::BAD_REQUEST,
            "text/plain",
            "say which proxy: /proxy_config?namespace=NS[&name=N][&calls=svc.ns,...]\n".into(),
        );
    };
    let mut node = isthmus_api::model::Node {
        name: param("name").unwrap_or_else(|| "preview".into()),
        namespace,
        ..Default::default()
    };
    if let Some(calls) = param("calls") {
        node.labels.insert(
            crate::translate::proxy::CALLS.into(),
            calls.replace("%2C", ","),
        );
    }
    let cfg = crate::translate::proxy::for_proxy(&p.catalog, &node, Vec::new());
    (
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n",
    )
}
