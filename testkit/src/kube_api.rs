//! A fake Kubernetes API server for tests: plain HTTP on loopback, objects
//! kept in memory, every request recorded as the call RBAC would
//! authorize (verb, API group, resource and subresource, namespace, name)
//! with the bearer token that made it. Real clients talk to it through a
//! kubeconfig it writes (`isthmusctl --context`, `isthmus-federation
//! --kube` with `KUBECONFIG`).
//!
//! It does what those clients need and no more: pods/proxy (a GET relayed
//! to the pod's `status.podIP`), get, list (label and
//! `metadata.name` field selectors), watch (held open, no events), create,
//! update, delete, patch (server-side apply creates, and is then recorded
//! as a create as well, as the API server authorizes it; merge semantics
//! for the rest; `/status` patches the status), TokenReviews of the tokens
//! it was told, SelfSubjectAccessReviews (allowed unless denied), pods
//! created with `dryRun` through an admission function, `/version`, and
//! CRDs established as soon as they are written.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// One API request as an authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    /// The bearer token that made it ("" without one).
    pub who: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// "" for the core group.
    pub group: String,
    /// The resource, with `/subresource` when there is one.
    pub resource: String,
    pub namespace: Option<String>,
    /// The object's name (for list and watch: a `metadata.name` field
    /// selector's, as RBAC authorizes them).
    pub name: Option<String>,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " named {n}")?;
        }
        Ok(())
    }
}

/// group, resource (without subresource), namespace, name.
type Key = (String, String, Option<String>, String);

/// What a dry-run pod creation answers (an admission chain's result).
pub type PodAdmission = Box<dyn Fn(Value) -> Value + Send + Sync>;

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    calls: Vec<Call>,
    version: u64,
    /// TokenReview: token → (namespace, service account).
    tokens: BTreeMap<String, (String, String)>,
    /// SelfSubjectAccessReviews of these resources are denied.
    denied: std::collections::BTreeSet<String>,
    /// Pods created with dryRun go through this (an injector).
    admission: Option<PodAdmission>,
}

/// The running fake; stops when dropped.
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request's target, parsed from its path.
struct Target {
    group: String,
    resource: String,
    sub: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let owned = |s: &&str| s.to_string();
    let t = |namespace: Option<String>, r: &[&str]| Target {
        group: group.clone(),
        resource: r.first().map(owned).unwrap_or_default(),
        name: r.get(1).map(owned),
        sub: r.get(2).map(owned),
        namespace,
    };
    Some(match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => t(Some(ns.to_string()), r),
        r => t(None, r),
    })
}

/// GET `target` from `addr` (plain HTTP/1.1): the status and body.
async fn relay(addr: &str, target: &str) -> Option<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = Request::get(target)
        .header("host", addr)
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((code, body))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Server-side apply, as far as these tests need it: objects merge,
/// lists of objects with a `name` merge by name (containers, webhooks,
/// ports), other lists and values are replaced.
pub fn apply_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                apply_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().all(|x| x["name"].is_string())
                && t.iter().all(|x| x["name"].is_string()) =>
        {
            for item in p {
                match t.iter_mut().find(|x| x["name"] == item["name"]) {
                    Some(existing) => apply_merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    // `k=v`, `k==v`, or `k` (the label is there).
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => {
                obj["metadata"]["labels"][k].as_str() == Some(v.trim_start_matches('='))
            }
            None => obj["metadata"]["labels"][term].is_string(),
        })
}

/// A body that never ends: a watch with nothing to say.
struct Pending;

impl Body for Pending {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

type Resp = Response<BoxBody<Bytes, Infallible>>;

fn reply(code: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("a response")
}

fn status(code: StatusCode, reason: &str, message: String) -> Resp {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

impl FakeApi {
    /// Starts on a loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// Adds (or replaces) an object; its group and plural `resource` say
    /// where it lives.
    pub fn put(&self, group: &str, resource: &str, mut obj: Value) {
        let mut s = self.state.lock().expect("fake API state");
        s.version += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let key = (
            group.to_string(),
            resource.to_string(),
            obj["metadata"]["namespace"].as_str().map(str::to_string),
            obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        s.objects.insert(key, obj);
    }

    /// An object, if held.
    pub fn get(&self, group: &str, resource: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("fake API state");
        s.objects
            .get(&(
                group.to_string(),
                resource.to_string(),
                ns.map(str::to_string),
                name.to_string(),
            ))
            .cloned()
    }

    /// Every object of a resource.
    pub fn all(&self, group: &str, resource: &str) -> Vec<Value> {
        let s = self.state.lock().expect("fake API state");
        s.objects
            .iter()
            .filter(|((g, r, _, _), _)| g == group && r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// TokenReviews of `token` say it is ServiceAccount `ns/sa`.
    pub fn accept_token(&self, token: &str, ns: &str, sa: &str) {
        let mut s = self.state.lock().expect("fake API state");
        s.tokens.insert(token.into(), (ns.into(), sa.into()));
    }

    /// SelfSubjectAccessReviews for `resource` answer not allowed.
    pub fn deny(&self, resource: &str) {
        let mut s = self.state.lock().expect("fake API state");
        s.denied.insert(resource.into());
    }

    /// Pods created with `dryRun` come back as `admit` makes them (what
    /// the API server's admission chain, a webhook, would do).
    pub fn admit_pods(&self, admit: PodAdmission) {
        let mut s = self.state.lock().expect("fake API state");
        s.admission = Some(admit);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("fake API state").calls.clone()
    }

    /// A kubeconfig with one context per token in `users` (the context
    /// is named as the token), all pointing here.
    pub fn kubeconfig(&self, dir: &Path, users: &[&str]) -> PathBuf {
        let mut text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n",
            self.addr
        );
        text.push_str("users:\n");
        for u in users {
            text.push_str(&format!("- name: {u}\n  user:\n    token: {u}\n"));
        }
        text.push_str("contexts:\n");
        for u in users {
            text.push_str(&format!(
                "- name: {u}\n  context:\n    cluster: fake\n    user: {u}\n    namespace: default\n"
            ));
        }
        text.push_str(&format!(
            "current-context: {}\n",
            users.first().unwrap_or(&"")
        ));
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("writing the kubeconfig");
        path
    }
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let who = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let apply = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path == "/version" {
        return reply(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"}),
        );
    }
    let Some(t) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {path}"),
        );
    };
    let watch = query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1");
    let field_name = query_param(&query, "fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string));
    let verb: &'static str = match (&method, &t.name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => "unknown",
    };
    // pods/proxy: the GET goes on to the pod's IP (its status.podIP) and
    // port, as the API server's proxy does.
    if t.resource == "pods" && t.sub.as_deref() == Some("proxy") {
        let (name, port) = t
            .name
            .as_deref()
            .and_then(|n| n.split_once(':'))
            .unwrap_or((t.name.as_deref().unwrap_or_default(), "80"));
        let ip = {
            let mut s = state.lock().expect("fake API state");
            s.calls.push(Call {
                who: who.clone(),
                verb: "get",
                group: String::new(),
                resource: "pods/proxy".into(),
                namespace: t.namespace.clone(),
                name: t.name.clone(),
            });
            s.objects
                .get(&(
                    String::new(),
                    "pods".to_string(),
                    t.namespace.clone(),
                    name.to_string(),
                ))
                .and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
        };
        let Some(ip) = ip else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("pods \"{name}\" not found"),
            );
        };
        let rest = path.split_once("/proxy").map_or("/", |(_, r)| r);
        let rest = if rest.is_empty() { "/" } else { rest };
        let target = if query.is_empty() {
            rest.to_string()
        } else {
            format!("{rest}?{query}")
        };
        return match relay(&format!("{ip}:{port}"), &target).await {
            Some((code, body)) => Response::builder()
                .status(code)
                .body(Full::new(body).map_err(|never| match never {}).boxed())
                .expect("a response"),
            None => status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("error trying to reach service: dial tcp {ip}:{port}"),
            ),
        };
    }
    let mut s = state.lock().expect("fake API state");
    s.calls.push(Call {
        who,
        verb,
        group: t.group.clone(),
        resource: match &t.sub {
            Some(sub) => format!("{}/{sub}", t.resource),
            None => t.resource.clone(),
        },
        namespace: t.namespace.clone(),
        name: t.name.clone().or_else(|| field_name.clone()),
    });
    s.version += 1;
    let version = s.version.to_string();
    let key = |name: &str| {
        (
            t.group.clone(),
            t.resource.clone(),
            t.namespace.clone(),
            name.to_string(),
        )
    };
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", t.resource),
        )
    };
    match verb {
        "watch" => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Pending.boxed())
            .expect("a response"),
        "list" => {
            let selector = query_param(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((g, r, ns, name), _)| {
                    *g == t.group
                        && *r == t.resource
                        && (t.namespace.is_none() || *ns == t.namespace)
                        && field_name.as_ref().is_none_or(|f| f == name)
                })
                .map(|(_, v)| v)
                .filter(|v| labels_match(v, &selector))
                .cloned()
                .collect();
            reply(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}),
            )
        }
        "get" => {
            let name = t.name.clone().unwrap_or_default();
            match s.objects.get(&key(&name)) {
                Some(o) => reply(StatusCode::OK, o),
                None => not_found(&name),
            }
        }
        "create" if t.resource == "selfsubjectaccessreviews" => {
            let resource = body["spec"]["resourceAttributes"]["resource"]
                .as_str()
                .unwrap_or_default();
            let mut review = body.clone();
            review["status"] = json!({"allowed": !s.denied.contains(resource)});
            reply(StatusCode::CREATED, &review)
        }
        "create"
            if t.resource == "pods"
                && query_param(&query, "dryRun").is_some_and(|d| d == "All") =>
        {
            let mut pod = body.clone();
            if let Some(admit) = &s.admission {
                pod = admit(pod);
            }
            pod["metadata"]["name"] = json!(format!(
                "{}dryrun",
                pod["metadata"]["generateName"].as_str().unwrap_or_default()
            ));
            reply(StatusCode::CREATED, &pod)
        }
        "create" if t.resource == "tokenreviews" => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let mut review = body.clone();
            review["status"] = match s.tokens.get(token) {
                Some((ns, sa)) => json!({"authenticated": true, "user": {
                    "username": format!("system:serviceaccount:{ns}:{sa}"),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
                }, "audiences": body["spec"]["audiences"]}),
                None => json!({"authenticated": false, "error": "unknown token"}),
            };
            reply(StatusCode::CREATED, &review)
        }
        "create" => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if s.objects.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", t.resource),
                );
            }
            let mut obj = body.clone();
            stamp(&mut obj, &t, &version);
            s.objects.insert(key(&name), obj.clone());
            reply(StatusCode::CREATED, &obj)
        }
        "update" => {
            let name = t.name.clone().unwrap_or_default();
            if !s.objects.contains_key(&key(&name)) {
                return not_found(&name);
            }
            let mut obj = body.clone();
            stamp(&mut obj, &t, &version);
            s.objects.insert(key(&name), obj.clone());
            reply(StatusCode::OK, &obj)
        }
        "patch" => {
            let name = t.name.clone().unwrap_or_default();
            let (code, mut obj) = match (s.objects.get(&key(&name)), &t.sub) {
                (Some(o), _) => (StatusCode::OK, o.clone()),
                (None, None) if apply => {
                    // An apply that creates is authorized as a create too.
                    let mut create = s.calls.last().expect("recorded above").clone();
                    create.verb = "create";
                    s.calls.push(create);
                    (StatusCode::CREATED, json!({}))
                }
                _ => return not_found(&name),
            };
            match t.sub.as_deref() {
                Some("status") => merge(&mut obj["status"], &body["status"]),
                _ => {
                    let status = obj.get("status").cloned();
                    if apply {
                        apply_merge(&mut obj, &body);
                    } else {
                        merge(&mut obj, &body);
                    }
                    // The main resource does not change status.
                    if let Some(st) = status {
                        obj["status"] = st;
                    }
                }
            }
            stamp(&mut obj, &t, &version);
            s.objects.insert(key(&name), obj.clone());
            reply(code, &obj)
        }
        "delete" => {
            let name = t.name.clone().unwrap_or_default();
            match s.objects.remove(&key(&name)) {
                Some(o) => reply(StatusCode::OK, &o),
                None => not_found(&name),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}

/// What the server sets on a written object: its version, uid and
/// namespace, and an Established condition on a CRD.
fn stamp(obj: &mut Value, t: &Target, version: &str) {
    obj["metadata"]["resourceVersion"] = json!(version);
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("uid-{version}"));
    }
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if t.resource == "customresourcedefinitions" {
        obj["status"] = json!({"conditions": [
            {"type": "NamesAccepted", "status": "True"},
            {"type": "Established", "status": "True"},
        ]});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_as_rbac_sees_them() {
        let t = parse_path("/api/v1/namespaces/shop/secrets/x").unwrap();
        assert_eq!((t.group.as_str(), t.resource.as_str()), ("", "secrets"));
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert_eq!(t.name.as_deref(), Some("x"));
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!((t.resource.as_str(), t.namespace), ("namespaces", None));
        let t = parse_path("/api/v1/namespaces/shop").unwrap();
        assert_eq!(t.resource, "namespaces");
        assert_eq!(t.name.as_deref(), Some("shop"));
        let t = parse_path("/apis/isthmus.dev/v1alpha1/clusterlinks/b/status").unwrap();
        assert_eq!(t.group, "isthmus.dev");
        assert_eq!(t.sub.as_deref(), Some("status"));
        assert_eq!(t.namespace, None);
        let t = parse_path("/apis/apps/v1/namespaces/a/deployments").unwrap();
        assert_eq!((t.resource.as_str(), t.name), ("deployments", None));
        assert_eq!(
            percent_decode("metadata.name%3Disthmus-join-tokens"),
            "metadata.name=isthmus-join-tokens"
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut a = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut a, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(a, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
