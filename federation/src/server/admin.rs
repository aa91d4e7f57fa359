//! The admin port: the topology page (/ and its data /topology,
//! `server::topology`), /healthz, /readyz, /config_dump (objects, store
//! errors, problems, conditions, proxies, links, policies), /proxy_config?
//! namespace=, /explain?service= (`server::explain`), /links (each ClusterLink's status, as `isthmusctl status`
//! shows), /policies (shared with the cluster set and received, with
//! each cluster's verdict), /proxies (`isthmusctl proxy-status`) and
//! /metrics (Prometheus text, `server::metrics`).

use super::*;

impl ControlPlane {
    /// Serves the admin endpoints on `listener` until `shutdown`.
    pub fn serve_admin(&self, listener: TcpListener) {
        let published = self.published.clone();
        let subscribers = self.subscribers.clone();
        let peers = self.peers.clone();
        let reports = self.reports.clone();
        let metrics = self.metrics.clone();
        let traffic = self.traffic.clone();
        let views = self.views.clone();
        let stop = self.stop.clone();
        let tasks = self.tasks.clone();
        self.tasks
            .spawn(traffic.clone().collect(subscribers.clone(), stop.clone()));
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
                let subscribers = subscribers.clone();
                let (peers, reports, metrics) = (peers.clone(), reports.clone(), metrics.clone());
                let (traffic, views) = (traffic.clone(), views.clone());
                let stop = stop.clone();
                tasks.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let p = published.borrow().clone();
                        let r = admin(
                            &req,
                            &p,
                            &subscribers,
                            &peers,
                            &reports,
                            &metrics,
                            (&traffic, &views),
                        );
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
}

/// Each ClusterLink of `p`'s store, by name, with its status from `peers`.
pub fn link_statuses(
    p: &Published,
    peers: &crate::sync::peers::Peers,
) -> std::collections::BTreeMap<String, crate::resources::link::ClusterLinkStatus> {
    let now = std::time::SystemTime::now();
    p.store
        .snapshot
        .of_kind("ClusterLink")
        .filter_map(|(key, r)| match r {
            crate::store::Resource::ClusterLink(l) => {
                let generation = l.metadata.generation.unwrap_or(0);
                let trust = p
                    .catalog
                    .links
                    .trust
                    .iter()
                    .find(|t| t.cluster == l.spec.peer)
                    .map(|t| t.roots_pem.as_str());
                let status = crate::sync::status::link_status(
                    peers.get(&l.spec.peer).as_ref(),
                    trust,
                    generation,
                    now,
                );
                Some((key.name.clone(), status))
            }
            _ => None,
        })
        .collect()
}

/// Every status condition of the generation: translation's (`Accepted`,
/// `ResolvedRefs`), the proxies' refusals (`Programmed`), and what linked
/// clusters made of the policies we share (`<cluster>.clusters.isthmus.dev/
/// Accepted`, `.../ResolvedRefs`).
pub fn all_conditions(
    p: &Published,
    subscribers: &Subscribers,
    reports: &crate::sync::policies::Reports,
) -> std::collections::BTreeMap<
    (&'static str, crate::store::ObjectKey),
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
> {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut conditions =
        crate::translate::status::conditions(&p.store.snapshot, &p.catalog.problems, &now);
    let refusals = subscribers.refusals();
    for (k, c) in discovery::subscribers::programmed_conditions(&p.store.snapshot, &refusals, &now)
    {
        conditions.entry(k).or_default().push(c);
    }
    let told = reports.linked(&p.store.snapshot);
    for (k, mut c) in crate::sync::policies::conditions(&p.store.snapshot, &told, &now) {
        conditions.entry(k).or_default().append(&mut c);
    }
    conditions
}

/// What this control plane shares with the cluster set and what it
/// received, with every cluster's verdict (`/policies`).
pub fn policies(
    p: &Published,
    reports: &crate::sync::policies::Reports,
) -> crate::sync::policies::View {
    crate::sync::policies::view(
        &crate::sync::policies::shared(&p.store.snapshot),
        &reports.linked(&p.store.snapshot),
        &p.received.results,
    )
}

fn admin(
    req: &Request<hyper::body::Incoming>,
    p: &Published,
    subscribers: &Subscribers,
    peers: &crate::sync::peers::Peers,
    reports: &crate::sync::policies::Reports,
    metrics: &super::metrics::Metrics,
    (traffic, views): (&super::topology::Traffic, &super::topology::Views),
) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        // The topology page and its data.
        "/" | "/topology.html" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::topology::PAGE.to_string(),
        ),
        "/topology" => {
            traffic.watched();
            let own = crate::identity::mesh_cluster_name(&p.store.snapshot).unwrap_or_default();
            let t = super::topology::topology(
                p,
                &own,
                &peers.all(),
                subscribers.list().len(),
                traffic.edges(&own),
                &views.fresh(),
                std::time::SystemTime::now(),
            );
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&t).unwrap_or_default(),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        // Ready once a store generation was translated (always, after start).
        "/readyz" => (
            StatusCode::OK,
            "text/plain",
            format!("generation {}\n", p.generation),
        ),
        // What a proxy in a namespace would be sent: /proxy_config?namespace=shop
        "/proxy_config" => proxy_config(req.uri().query().unwrap_or(""), p),
        // Each ClusterLink's status (what `isthmusctl status` shows).
        "/links" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&link_statuses(p, peers)).unwrap_or_default() + "\n",
        ),
        // Prometheus text: pushes, answers, proxies, links, CA, build.
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(p, subscribers, peers),
        ),
        // Every proxy: synced, stale or refused (`isthmusctl proxy-status`).
        "/proxies" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&serde_json::json!({
                "generation": p.generation,
                "proxies": discovery::subscribers::proxy_status(p.generation, &subscribers.list()),
            }))
            .unwrap_or_default()
                + "\n",
        ),
        // Where a service comes from, who exports it (`isthmusctl explain`).
        "/explain" => explain(req.uri().query().unwrap_or(""), p, peers),
        // Policies shared with the cluster set and received from it.
        "/policies" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&policies(p, reports)).unwrap_or_default() + "\n",
        ),
        "/config_dump" => {
            let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
            for (kind, _) in p.store.snapshot.objects.keys() {
                *kinds.entry(kind).or_default() += 1;
            }
            let conditions: std::collections::BTreeMap<String, Vec<_>> =
                all_conditions(p, subscribers, reports)
                    .into_iter()
                    .map(|((kind, key), c)| (format!("{kind} {key}"), c))
                    .collect();
            let proxies: Vec<serde_json::Value> = subscribers
                .list()
                .into_iter()
                .map(|(id, s)| {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["stream"] = id.into();
                    v
                })
                .collect();
            let dump = serde_json::json!({
                "generation": p.generation,
                "storeGeneration": p.store.generation,
                "objects": kinds,
                "workloads": p.workloads,
                "storeErrors": p.store.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "problems": p.catalog.problems.iter().map(|x| serde_json::json!({
                    "kind": x.kind,
                    "object": x.key.to_string(),
                    "reason": x.reason,
                    "message": x.message,
                })).collect::<Vec<_>>(),
                "conditions": conditions,
                "links": link_statuses(p, peers),
                "policies": policies(p, reports),
                "proxies": proxies,
                "endpoints": p.offer.endpoints(),
                "services": p.catalog.services.keys()
                    .filter_map(|n| Some((n.clone(), p.offer.service(n)?)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
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
            "not found: try / (the topology page), /config_dump, /explain?service=NAME, /links, /policies, /proxies, /metrics, /proxy_config?namespace=NS, /healthz, /readyz\n"
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

fn explain(
    query: &str,
    p: &Published,
    peers: &crate::sync::peers::Peers,
) -> (StatusCode, &'static str, String) {
    let Some(name) = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "text/plain",
            "say which service: /explain?service=NAME (its name in the proxies' configuration)\n"
                .into(),
        );
    };
    let own = crate::identity::mesh_cluster_name(&p.store.snapshot).unwrap_or_default();
    match super::explain::service_origin(p, &peers.all(), &own, &name, std::time::SystemTime::now())
    {
        Some(o) => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&o).unwrap_or_default() + "\n",
        ),
        None => (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no service {name:?} in this control plane's translation\n"),
        ),
    }
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
    let index = crate::translate::proxy::NamespaceIndex::new(&p.catalog);
    let cfg = isthmus_api::model::ProxyConfig {
        node: Some(node.clone()),
        services: crate::translate::proxy::wanted(&p.catalog, &index, &node)
            .into_iter()
            .filter_map(|n| p.offer.service(n))
            .collect(),
        ..Default::default()
    };
    (
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n",
    )
}
