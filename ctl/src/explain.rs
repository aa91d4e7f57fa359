//! `isthmusctl explain`: one routing decision end to end, from live state.
//! The control plane says which proxy is the caller and where its admin
//! port is (`/proxies`); the caller's sidecar says what it would do with
//! the request (`/explain`: service, routes, split, endpoints, choice);
//! the control plane says where each service comes from and how its
//! exporters' links fare (`/explain?service=`); the destination's sidecar
//! says what its policies make of this caller (`/explain?inbound=`).
//! Fetching is here; the deciding was done where the state lives, and
//! `render` only prints.
//!
//! The admin ports are reached directly (`--admin`, the demo), or in a
//! cluster through the API server (`--context`): the pods' `proxy`
//! subresource carries each GET to the pod's admin port (0.0.0.0:15020 in
//! every pod we run), so nothing is port-forwarded or left open, and RBAC's
//! `get pods/proxy` in the namespaces asked about is what it takes. With
//! several control plane replicas, the one the caller's proxy is connected
//! to answers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use isthmus_api::explain::{Inbound, Outbound, ServiceOrigin};
use isthmus_federation::discovery::subscribers::ProxyStatus;
use serde::{Deserialize, Serialize};

use crate::status::{Proxies, admin_get};

/// What to explain.
pub struct Question {
    /// `<namespace>/<name>` of the calling workload.
    pub from: String,
    pub url: String,
    pub method: String,
    /// `name: value` each.
    pub headers: Vec<String>,
}

/// The whole answer, as `-o json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub from: String,
    /// Its SPIFFE ID (the caller the destination's policies see).
    pub identity: Option<String>,
    pub outbound: Outbound,
    /// The control plane's view of the service and of each backend.
    pub origins: Vec<ServiceOrigin>,
    /// For each backend's chosen endpoint: its sidecar's admission, or why
    /// it was not asked.
    pub policies: Vec<PolicyStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStep {
    pub backend: String,
    pub endpoint: String,
    pub inbound: Option<Inbound>,
    pub note: Option<String>,
}

const WITHIN: Duration = Duration::from_secs(5);

/// How the admin ports are reached.
pub enum Reach {
    /// Their addresses, as proxies report them (the demo).
    Direct { control_plane: SocketAddr },
    /// Through a cluster's API server (pods/proxy).
    Kube {
        client: kube::Client,
        /// The control plane's namespace.
        namespace: String,
        /// Its admin port.
        admin_port: u16,
        /// The control plane pod answering (set once found).
        pod: parking_lot::Mutex<Option<String>>,
    },
}

impl Reach {
    pub fn kube(client: kube::Client, namespace: &str, admin_port: u16) -> Self {
        Self::Kube {
            client,
            namespace: namespace.to_string(),
            admin_port,
            pod: parking_lot::Mutex::new(None),
        }
    }

    /// GET `path` on pod `ns/name`'s port through the API server.
    async fn pod_get(
        client: &kube::Client,
        ns: &str,
        name: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<String> {
        let uri = format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy{path}");
        let req = http::Request::get(&uri).body(Vec::new())?;
        tokio::time::timeout(WITHIN, client.request_text(req))
            .await
            .with_context(|| format!("the API server did not answer {uri} within {WITHIN:?}"))?
            .with_context(|| format!("GET {uri} through the API server"))
    }

    /// The control plane pods (app=isthmus-federation), running ones.
    async fn control_planes(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<String>> {
        use k8s_openapi::api::core::v1::Pod;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=isthmus-federation"))
            .await
            .with_context(|| format!("listing the control plane's pods in {namespace}"))?;
        let names: Vec<String> = list
            .items
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Running")
            })
            .filter_map(|p| p.metadata.name)
            .collect();
        anyhow::ensure!(
            !names.is_empty(),
            "no running control plane pod (app=isthmus-federation) in {namespace}: is Isthmus installed (isthmusctl check)?"
        );
        Ok(names)
    }

    /// The proxies of the control plane, and, in a cluster, of each
    /// replica until one has `from` (it answers from then on).
    pub async fn proxies(&self, from: Option<&str>) -> anyhow::Result<Proxies> {
        match self {
            Reach::Direct { control_plane } => {
                serde_json::from_str(&admin_get(*control_plane, "/proxies", WITHIN).await?)
                    .context("/proxies is not the proxies' status")
            }
            Reach::Kube {
                client,
                namespace,
                admin_port,
                pod,
            } => {
                let mut all = Proxies {
                    generation: 0,
                    proxies: Vec::new(),
                };
                for name in Self::control_planes(client, namespace).await? {
                    let body =
                        Self::pod_get(client, namespace, &name, *admin_port, "/proxies").await?;
                    let p: Proxies = serde_json::from_str(&body)
                        .context("/proxies is not the proxies' status")?;
                    all.generation = all.generation.max(p.generation);
                    let has = from.is_some_and(|f| p.proxies.iter().any(|x| x.proxy == f));
                    all.proxies.extend(p.proxies);
                    if has {
                        *pod.lock() = Some(name);
                        break;
                    }
                }
                Ok(all)
            }
        }
    }

    /// GET `path` on the control plane (the replica that answered for the
    /// caller).
    async fn control_plane(&self, path: &str) -> anyhow::Result<String> {
        match self {
            Reach::Direct { control_plane } => admin_get(*control_plane, path, WITHIN).await,
            Reach::Kube {
                client,
                namespace,
                admin_port,
                pod,
            } => {
                let held = pod.lock().clone();
                let name = match held {
                    Some(n) => n,
                    None => Self::control_planes(client, namespace).await?.remove(0),
                };
                Self::pod_get(client, namespace, &name, *admin_port, path).await
            }
        }
    }

    /// GET `path` on a proxy's admin port.
    async fn proxy(&self, p: &ProxyStatus, path: &str) -> anyhow::Result<String> {
        let at = admin_of(p)?;
        match self {
            Reach::Direct { .. } => admin_get(at, path, WITHIN)
                .await
                .with_context(|| format!("asking {}'s sidecar at {at}", p.proxy)),
            Reach::Kube { client, .. } => {
                let (ns, name) = p
                    .proxy
                    .split_once('/')
                    .context("a proxy's name is not <namespace>/<pod>")?;
                Self::pod_get(client, ns, name, at.port(), path).await
            }
        }
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn request_query(q: &Question, extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = vec![("url", &q.url), ("method", &q.method)];
    pairs.extend(q.headers.iter().map(|h| ("header", h.as_str())));
    pairs.extend_from_slice(extra);
    query(&pairs)
}

fn admin_of(p: &ProxyStatus) -> anyhow::Result<SocketAddr> {
    p.admin
        .as_deref()
        .context(
            "the proxy did not tell the control plane its admin address (a sidecar older than \
             explain): upgrade it",
        )?
        .parse()
        .context("the proxy's admin address is not ip:port")
}

/// Asks everything.
pub async fn explain(reach: &Reach, q: &Question) -> anyhow::Result<Explanation> {
    let proxies = reach.proxies(Some(&q.from)).await?;
    let caller = proxies
        .proxies
        .iter()
        .find(|p| p.proxy == q.from)
        .with_context(|| {
            let names: Vec<&str> = proxies.proxies.iter().map(|p| p.proxy.as_str()).collect();
            format!(
                "no proxy {} is connected to this control plane (it has: {})",
                q.from,
                names.join(", ")
            )
        })?;
    let body = reach
        .proxy(caller, &format!("/explain?{}", request_query(q, &[])))
        .await?;
    let outbound: Outbound =
        serde_json::from_str(&body).context("the sidecar's /explain is not an explanation")?;
    let identity = caller.identity.clone();
    let mut origins = Vec::new();
    let mut names: Vec<String> = outbound.service.iter().map(|s| s.name.clone()).collect();
    for b in outbound.route.iter().flat_map(|r| &r.backends) {
        if !names.contains(&b.service) {
            names.push(b.service.clone());
        }
    }
    for name in names {
        // A service the control plane did not make (a sidecar's own
        // file) has no origin: nothing to add.
        if let Ok(body) = reach
            .control_plane(&format!("/explain?{}", query(&[("service", &name)])))
            .await
            && let Ok(o) = serde_json::from_str::<ServiceOrigin>(&body)
        {
            origins.push(o);
        }
    }
    let mut policies = Vec::new();
    for b in outbound.route.iter().flat_map(|r| &r.backends) {
        let Some(chosen) = &b.chosen else { continue };
        let Some(ep) = b.chosen_index.and_then(|i| b.endpoints.get(i)) else {
            continue;
        };
        let mut step = PolicyStep {
            backend: b.service.clone(),
            endpoint: chosen.clone(),
            inbound: None,
            note: None,
        };
        if !ep.cluster.is_empty() {
            step.note = Some(format!(
                "decided by the destination's sidecar in {} (its policies, and the ones \
                 shared with the cluster set): run explain against {}'s control plane",
                ep.cluster, ep.cluster
            ));
            policies.push(step);
            continue;
        }
        let addr: SocketAddr = chosen
            .parse()
            .context("an endpoint address is not ip:port")?;
        let dest = proxies
            .proxies
            .iter()
            .find(|p| p.address.as_deref() == Some(&addr.ip().to_string()) && p.admin.is_some());
        match dest {
            None => {
                step.note = Some(format!(
                    "no sidecar of this cluster is registered at {}: not in the mesh, so no \
                     policy of ours applies there",
                    addr.ip()
                ))
            }
            Some(d) => {
                let port = addr.port().to_string();
                let extra = [
                    ("inbound", port.as_str()),
                    ("source", identity.as_deref().unwrap_or("")),
                ];
                let body = reach
                    .proxy(d, &format!("/explain?{}", request_query(q, &extra)))
                    .await?;
                step.inbound = Some(
                    serde_json::from_str(&body)
                        .context("the destination's /explain is not an admission")?,
                );
            }
        }
        policies.push(step);
    }
    Ok(Explanation {
        from: q.from.clone(),
        identity,
        outbound,
        origins,
        policies,
    })
}

fn yes(b: bool, y: &'static str, n: &'static str) -> &'static str {
    if b { y } else { n }
}

/// The explanation as numbered steps, each naming what decided it.
pub fn render(e: &Explanation) -> String {
    use std::fmt::Write;
    let o = &e.outbound;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} from {} ({}, config {})",
        o.method, o.url, e.from, o.cluster, o.version
    );
    let Some(svc) = &o.service else {
        let _ = writeln!(
            s,
            "1. name      {}",
            o.error.as_deref().unwrap_or("not resolved")
        );
        return s;
    };
    let _ = writeln!(
        s,
        "1. name      {} port {} ({}), resolved by {}; VIPs {}",
        svc.name,
        svc.port,
        svc.protocol,
        svc.resolved_by,
        if svc.vips.is_empty() {
            "none".into()
        } else {
            svc.vips.join(", ")
        }
    );
    let _ = writeln!(s, "2. origin");
    if e.origins.is_empty() {
        let _ = writeln!(s, "   (the control plane did not make these services)");
    }
    for origin in &e.origins {
        let _ = writeln!(s, "   {}: {}", origin.service, origin.source);
        for x in &origin.exporters {
            let sync = x
                .last_sync_seconds
                .map(|t| format!(", heard {t} s ago"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "     exported by {:<11} {} ready endpoint{}, link {}{}{}",
                x.cluster,
                x.endpoints,
                yes(x.endpoints == 1, "", "s"),
                x.link,
                sync,
                yes(x.stale, ", STALE (kept past the link's loss)", "")
            );
        }
        for p in &origin.policies {
            let _ = writeln!(s, "     shaped by {p}");
        }
    }
    let _ = writeln!(s, "3. routes");
    if o.routes.is_empty() {
        let _ = writeln!(s, "   (none: the service's default route)");
    }
    let mut taken = false;
    for r in &o.routes {
        let verdict = match (r.matched, taken) {
            (true, false) => "MATCH",
            (true, true) => "also ",
            (false, _) => "skip ",
        };
        let _ = writeln!(
            s,
            "   {verdict} {}: {}{}",
            r.name,
            r.why.join("; "),
            yes(r.matched && taken, " (an earlier route took it)", "")
        );
        taken |= r.matched;
    }
    let Some(route) = &o.route else {
        return s;
    };
    let _ = writeln!(
        s,
        "4. route     {}{}{}{}{}",
        route.name,
        yes(route.default, " (default: no route matched)", ""),
        route
            .timeout
            .as_ref()
            .map(|t| format!(", timeout {t}"))
            .unwrap_or_default(),
        route
            .retries
            .as_ref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default(),
        route
            .fault
            .as_ref()
            .map(|t| format!(", fault {t}"))
            .unwrap_or_default(),
    );
    for b in &route.backends {
        let _ = writeln!(
            s,
            "   backend   {} weight {} = {:.1} %{}",
            b.service,
            b.weight,
            b.share,
            yes(b.known, "", " (UNKNOWN to this proxy: 503)")
        );
    }
    let _ = writeln!(s, "5. endpoints");
    for b in &route.backends {
        let shares: Vec<String> = b
            .priority_shares
            .iter()
            .enumerate()
            .filter(|(_, x)| **x > 0.0)
            .map(|(i, x)| format!("priority {i} {:.0} %", x * 100.0))
            .collect();
        let _ = writeln!(
            s,
            "   {} ({}): {}",
            b.service,
            b.policy,
            if shares.is_empty() {
                "no endpoint".into()
            } else {
                shares.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "     {:<22} {:<11} {:<22} {:>4} {:<9} {:<8} {:<7} {:>8}",
            "ADDRESS", "CLUSTER", "LOCALITY", "PRIO", "HEALTH", "OUTLIER", "LINK", "INFLIGHT"
        );
        for (i, ep) in b.endpoints.iter().enumerate() {
            let cluster = if ep.cluster.is_empty() {
                o.cluster.as_str()
            } else {
                ep.cluster.as_str()
            };
            let _ = writeln!(
                s,
                "     {:<22} {:<11} {:<22} {:>4} {:<9} {:<8} {:<7} {:>8}{}",
                ep.address,
                cluster,
                ep.locality,
                ep.priority,
                yes(ep.healthy, "healthy", "unhealthy"),
                yes(ep.ejected, "ejected", "-"),
                yes(
                    ep.cluster_down,
                    "down",
                    yes(ep.cluster.is_empty(), "local", "up")
                ),
                ep.in_flight,
                yes(b.chosen_index == Some(i), "  <- now", "")
            );
        }
    }
    let _ = writeln!(
        s,
        "6. policy    as {}",
        e.identity
            .as_deref()
            .unwrap_or("(no identity: plaintext caller)")
    );
    for p in &e.policies {
        match (&p.inbound, &p.note) {
            (Some(i), _) => {
                let by = match i.rule.as_str() {
                    "none" => "(no AuthorizationPolicy selects it)".to_string(),
                    "default-deny" => "(ALLOW policies select it and none matches)".to_string(),
                    rule => format!("by {rule}"),
                };
                let _ = writeln!(
                    s,
                    "   {} at {} ({}): mTLS {} (from {}), JWT {}, authorization {} {by} -> {}",
                    p.backend,
                    p.endpoint,
                    i.proxy,
                    i.mtls_mode,
                    i.mtls_mode_from,
                    i.authentication,
                    i.decision.to_uppercase(),
                    if i.status == 200 {
                        "passed to the app".to_string()
                    } else {
                        format!("answered {}", i.status)
                    }
                );
            }
            (None, note) => {
                let _ = writeln!(
                    s,
                    "   {} at {}: {}",
                    p.backend,
                    p.endpoint,
                    note.as_deref().unwrap_or("")
                );
            }
        }
    }
    let verdict: Vec<String> = route
        .backends
        .iter()
        .filter(|b| b.share > 0.0)
        .map(|b| {
            let Some(chosen) = &b.chosen else {
                return format!("{} {:.0} % -> no endpoint (503)", b.service, b.share);
            };
            let refused = e
                .policies
                .iter()
                .filter(|p| p.backend == b.service)
                .find_map(|p| p.inbound.as_ref().filter(|i| i.status != 200));
            match refused {
                Some(i) => format!(
                    "{} {:.0} % -> {chosen}, refused there with {} ({})",
                    b.service, b.share, i.status, i.rule
                ),
                None => format!("{} {:.0} % -> {chosen}", b.service, b.share),
            }
        })
        .collect();
    let verdict = if verdict.is_empty() {
        "no backend takes requests (every weight is 0: 500)".to_string()
    } else {
        verdict.join("\n              ")
    };
    let _ = writeln!(s, "7. now       {verdict}");
    s
}
