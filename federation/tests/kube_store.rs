//! The `kube` store, leader election and status writer against a mocked
//! API server (kube `Client` over a `tower_test` mock): the tests assert the
//! requests made (lists and watches of every kind, Lease reads and writes,
//! status patches) and answer them as an API server would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use isthmus_federation::translate::{Inputs, translate};

type RespBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<RespBody>>;

fn client() -> (kube::Client, Handle) {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    (kube::Client::new(mock, "default"), handle)
}

/// A body that is complete at once.
fn body(v: &Value) -> RespBody {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Ok(Frame::data(Bytes::from(v.to_string()))))
        .unwrap();
    StreamBody::new(ReceiverStream::new(rx))
}

/// A body that stays open; lines are sent through the sender (watch events).
fn open_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, RespBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, StreamBody::new(ReceiverStream::new(rx)))
}

fn respond(status: StatusCode, b: RespBody) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(b)
        .unwrap()
}

fn not_found(path: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": format!("the server could not find the requested resource ({path})"),
           "reason": "NotFound", "code": 404})
}

async fn body_json(req: Request<Body>) -> Value {
    let b = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&b).unwrap_or(Value::Null)
}

/// Every list path the store must read, with the items the mock serves.
fn cluster() -> BTreeMap<&'static str, Vec<Value>> {
    let mut m: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for p in [
        "/api/v1/namespaces",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/pods",
        "/api/v1/serviceaccounts",
        "/apis/isthmus.dev/v1alpha1/meshes",
        "/apis/isthmus.dev/v1alpha1/clusterlinks",
        "/apis/isthmus.dev/v1alpha1/destinationpolicies",
        "/apis/isthmus.dev/v1alpha1/authorizationpolicies",
        "/apis/isthmus.dev/v1alpha1/peerauthentications",
        "/apis/isthmus.dev/v1alpha1/requestauthentications",
        "/apis/isthmus.dev/v1alpha1/faultinjections",
        "/apis/multicluster.x-k8s.io/v1alpha1/serviceexports",
        "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports",
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
        "/api/v1/namespaces/isthmus-links/secrets",
    ] {
        m.insert(p, Vec::new());
    }
    m.get_mut("/api/v1/services").unwrap().push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "catalog", "namespace": "shop", "resourceVersion": "10",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }));
    m.get_mut("/apis/discovery.k8s.io/v1/endpointslices")
        .unwrap()
        .push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "catalog-1", "namespace": "shop", "resourceVersion": "11",
                         "labels": {"kubernetes.io/service-name": "catalog"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.1"], "zone": "eu-west-a"}]
        }));
    m.get_mut("/apis/isthmus.dev/v1alpha1/meshes").unwrap().push(json!({
        "apiVersion": "isthmus.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "mesh", "resourceVersion": "12"},
        "spec": {"clusterName": "eu-west", "trustDomain": "eu-west.local", "locality": {"region": "eu-west"}}
    }));
    // Accepted by the API server (it only knows the CRD schema: a string),
    // refused by our types: reported, the rest loads.
    m.get_mut("/apis/isthmus.dev/v1alpha1/destinationpolicies")
        .unwrap()
        .push(json!({
            "apiVersion": "isthmus.dev/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": "bad", "namespace": "shop", "resourceVersion": "13"},
            "spec": {"targetRef": {"name": "catalog"}, "timeout": "soon"}
        }));
    m
}

/// What a mock API server saw: (method, URI, content type, body).
type Recorded = Arc<Mutex<Vec<(String, String, String, Value)>>>;

/// A mock API server that answers every request 200 with the body it was
/// sent, and records each.
fn echoing_api() -> (kube::Client, Recorded, tokio::task::JoinHandle<()>) {
    let (client, mut handle) = client();
    let requests = Recorded::default();
    let seen = requests.clone();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let ctype = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let b = body_json(req).await;
            seen.lock().unwrap().push((method, uri, ctype, b.clone()));
            send.send_response(respond(StatusCode::OK, body(&b)));
        }
    });
    (client, requests, server)
}

fn list_of(path: &str, items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "100", "_path": path}, "items": items})
}

#[tokio::test]
async fn lists_and_watches_every_kind_and_reports_bad_objects() {
    let (client, mut handle) = client();
    let fixtures = cluster();
    let listed = Arc::new(Mutex::new(Vec::<String>::new()));
    type Events = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<(String, Events)>();
    let server = {
        let listed = listed.clone();
        tokio::spawn(async move {
            // Open watch bodies are kept so the watches stay open.
            let mut open = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.method(), http::Method::GET, "the store only reads");
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                if path.ends_with("grpcroutes") {
                    // Gateway API's GRPCRoute CRD not installed here.
                    send.send_response(respond(StatusCode::NOT_FOUND, body(&not_found(&path))));
                    continue;
                }
                let Some(items) = fixtures.get(path.as_str()) else {
                    panic!("unexpected request {path}?{query}");
                };
                if path.ends_with("/secrets") {
                    // Link credentials only, never every Secret.
                    assert!(
                        query.contains("labelSelector=isthmus.dev%2Flink-credentials"),
                        "{path}?{query}"
                    );
                }
                if query.contains("watch=true") {
                    let (tx, b) = open_body();
                    let _ = watch_tx.send((path.clone(), tx.clone()));
                    open.push(tx);
                    send.send_response(respond(StatusCode::OK, b));
                } else {
                    listed.lock().unwrap().push(path.clone());
                    send.send_response(respond(StatusCode::OK, body(&list_of(&path, items))));
                }
            }
        })
    };
    let stop = CancellationToken::new();
    let (mut states, task) = isthmus_federation::store::kube::KubeStore {
        client,
        debounce: Duration::from_millis(10),
        sync_timeout: Duration::from_secs(30),
        link_secrets_namespace: "isthmus-links".into(),
        mcs: Default::default(),
    }
    .start(stop.clone())
    .await
    .expect("every kind listed (grpcroutes absent counts as empty)");

    let mut wanted: Vec<&str> = cluster()
        .keys()
        .copied()
        .filter(|p| !p.ends_with("grpcroutes"))
        .collect();
    wanted.sort();
    let mut got = listed.lock().unwrap().clone();
    got.sort();
    got.dedup();
    assert_eq!(got, wanted, "one list per kind");

    let state = states.borrow_and_update().clone();
    let snap = &state.snapshot;
    assert_eq!(snap.objects.len(), 3, "{:?}", snap.objects.keys());
    let key = |ns: Option<&str>, name: &str| isthmus_federation::store::ObjectKey {
        namespace: ns.map(str::to_string),
        name: name.into(),
    };
    let Some(isthmus_federation::store::Resource::Service(svc)) =
        snap.get("Service", &key(Some("shop"), "catalog"))
    else {
        panic!("the Service is in the snapshot")
    };
    assert!(
        svc.metadata.managed_fields.is_none(),
        "managedFields dropped"
    );
    assert_eq!(state.errors.len(), 1);
    let err = state.errors[0].to_string();
    assert!(
        err.starts_with("DestinationPolicy shop/bad: ") && err.contains("soon"),
        "named, without a file: {err}"
    );
    let catalog = translate(&Inputs::new(snap)).filled();
    let c = &catalog.services["catalog.shop"];
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].address, "10.1.0.1");
    assert_eq!(c.endpoints[0].locality.as_ref().unwrap().region, "eu-west");

    // Watch events. Which watches are open (all of them, eventually):
    let mut watches: BTreeMap<String, Events> = BTreeMap::new();
    let mut watch_of = async |path: &str| -> Events {
        while !watches.contains_key(path) {
            let (p, tx) = watch_rx.recv().await.expect("watches opened");
            watches.insert(p, tx);
        }
        watches[path].clone()
    };
    let send = |events: Events, kind: &'static str, object: Value| async move {
        let e = json!({"type": kind, "object": object});
        events
            .send(Ok(Frame::data(Bytes::from(format!("{e}\n")))))
            .await
            .unwrap();
    };
    type States = tokio::sync::watch::Receiver<isthmus_federation::store::files::State>;
    async fn wait_for(
        states: &mut States,
        what: &str,
        f: &dyn Fn(&isthmus_federation::store::files::State) -> bool,
    ) -> isthmus_federation::store::files::State {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                states.changed().await.unwrap();
                let s = states.borrow_and_update().clone();
                if f(&s) {
                    return s;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
    }

    // A new Service appears in a new generation.
    send(
        watch_of("/api/v1/services").await,
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "101"},
               "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    let s = wait_for(&mut states, "the new Service", &|s| {
        s.snapshot
            .get("Service", &key(Some("shop"), "reviews"))
            .is_some()
    })
    .await;
    assert!(s.generation >= 2);

    // A good policy, then a bad edit of it: reported, and the good one stays.
    let policies = watch_of("/apis/isthmus.dev/v1alpha1/destinationpolicies").await;
    let policy = |timeout: &str, rv: &str| {
        json!({"apiVersion": "isthmus.dev/v1alpha1", "kind": "DestinationPolicy",
               "metadata": {"name": "good", "namespace": "shop", "resourceVersion": rv},
               "spec": {"targetRef": {"name": "catalog"}, "timeout": timeout}})
    };
    send(policies.clone(), "ADDED", policy("2s", "102")).await;
    wait_for(&mut states, "the good policy", &|s| {
        s.snapshot
            .get("DestinationPolicy", &key(Some("shop"), "good"))
            .is_some()
    })
    .await;
    send(policies.clone(), "MODIFIED", policy("whenever", "103")).await;
    let s = wait_for(&mut states, "the bad edit reported", &|s| {
        s.errors
            .iter()
            .any(|e| e.to_string().starts_with("DestinationPolicy shop/good"))
    })
    .await;
    let Some(isthmus_federation::store::Resource::DestinationPolicy(p)) = s
        .snapshot
        .get("DestinationPolicy", &key(Some("shop"), "good"))
    else {
        panic!("the last good version stays")
    };
    assert_eq!(p.metadata.resource_version.as_deref(), Some("102"));
    // Deleted: gone, and so is its error.
    send(policies, "DELETED", policy("whenever", "104")).await;
    wait_for(&mut states, "the policy deleted", &|s| {
        s.snapshot
            .get("DestinationPolicy", &key(Some("shop"), "good"))
            .is_none()
            && !s.errors.iter().any(|e| e.to_string().contains("shop/good"))
    })
    .await;

    stop.cancel();
    let _ = task.await;
    server.abort();
}

#[tokio::test]
async fn leader_election_creates_follows_and_takes_over_by_the_rules() {
    use isthmus_federation::writers::leader::Elector;
    let (client, mut handle) = client();
    let elector = Elector {
        api: kube::Api::namespaced(client, "isthmus-system"),
        lease: "isthmus-federation".into(),
        identity: "cp-0".into(),
        duration: Duration::from_secs(15),
    };
    const LEASE: &str =
        "/apis/coordination.k8s.io/v1/namespaces/isthmus-system/leases/isthmus-federation";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/isthmus-system/leases";

    // No Lease: create it, held by us.
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", LEASE));
        send.send_response(respond(StatusCode::NOT_FOUND, body(&not_found(LEASE))));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("POST", LEASES));
        let mut lease = body_json(req).await;
        assert_eq!(lease["spec"]["holderIdentity"], "cp-0");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        assert!(lease["spec"]["renewTime"].is_string());
        lease["metadata"]["resourceVersion"] = "1".into();
        send.send_response(respond(StatusCode::CREATED, body(&lease)));
        handle
    });
    assert!(elector.step().await.unwrap(), "we lead");
    let mut handle = server.await.unwrap();

    // Held by cp-1, renewed just now: follow, and write nothing.
    let now = k8s_openapi::jiff::Timestamp::now();
    let held = |renewed: k8s_openapi::jiff::Timestamp| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "isthmus-federation", "namespace": "isthmus-system", "resourceVersion": "7"},
               "spec": {"holderIdentity": "cp-1", "leaseDurationSeconds": 15,
                        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                        "leaseTransitions": 2}})
    };
    let lease_now = held(now);
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        send.send_response(respond(StatusCode::OK, body(&lease_now)));
        handle
    });
    assert!(!elector.step().await.unwrap(), "cp-1 leads");
    let mut handle = server.await.unwrap();

    // Held by cp-1 but not renewed for a minute: take over, with the
    // resourceVersion read; a 409 (someone else was faster) means follow.
    let stale = held(now - k8s_openapi::jiff::SignedDuration::from_secs(60));
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        send.send_response(respond(StatusCode::OK, body(&stale)));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("PUT", LEASE));
        let lease = body_json(req).await;
        assert_eq!(
            lease["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
        assert_eq!(lease["spec"]["holderIdentity"], "cp-0");
        assert_eq!(lease["spec"]["leaseTransitions"], 3);
        send.send_response(respond(
            StatusCode::CONFLICT,
            body(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": "the object has been modified", "reason": "Conflict", "code": 409})),
        ));
    });
    assert!(!elector.step().await.unwrap(), "lost the race: follow");
    server.await.unwrap();
}

#[tokio::test]
async fn status_is_applied_to_policies_and_merged_into_route_parents() {
    use isthmus_federation::store::files::{merge, parse_file};
    use isthmus_federation::writers::status::StatusWriter;
    let yaml = r#"apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: ghost, namespace: shop, generation: 2}
spec: {targetRef: {name: nowhere}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop, resourceVersion: "42", generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog}]
  rules: [{backendRefs: [{name: catalog, port: 80}]}]
status:
  parents:
    - parentRef: {group: gateway.networking.k8s.io, kind: Gateway, name: edge}
      controllerName: example.com/other
      conditions: []
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
"#;
    let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let (snap, _) = merge(&Default::default(), loaded, Vec::new());
    let catalog = translate(&Inputs::new(&snap)).filled();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let conditions =
        isthmus_federation::translate::status::conditions(&snap, &catalog.problems, &now);

    let (client, requests, server) = echoing_api();
    let mut writer = StatusWriter::new(client);
    let (n, errors) = writer.write(&snap, &conditions).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(n, 3);
    let reqs = requests.lock().unwrap().clone();
    let (m, uri, ctype, b) = reqs
        .iter()
        .find(|r| r.1.contains("destinationpolicies"))
        .expect("policy status written");
    assert_eq!(m, "PATCH");
    let (path, query) = uri.split_once('?').unwrap();
    assert_eq!(
        path,
        "/apis/isthmus.dev/v1alpha1/namespaces/shop/destinationpolicies/ghost/status"
    );
    let mut query: Vec<&str> = query.split('&').filter(|q| !q.is_empty()).collect();
    query.sort();
    assert_eq!(
        query,
        ["fieldManager=isthmus-federation", "force=true"],
        "server-side apply of the status subresource, forced, as our field manager"
    );
    assert_eq!(ctype, "application/apply-patch+yaml");
    assert_eq!(b["kind"], "DestinationPolicy");
    let c = &b["status"]["conditions"][0];
    assert_eq!(
        (c["type"].as_str(), c["status"].as_str()),
        (Some("Accepted"), Some("False"))
    );
    assert_eq!(c["reason"], "TargetNotFound");
    assert_eq!(c["observedGeneration"], 2);

    let (m, uri, ctype, b) = reqs
        .iter()
        .find(|r| r.1.contains("httproutes"))
        .expect("route status written");
    assert_eq!(m, "PATCH");
    assert_eq!(
        uri.trim_end_matches('?'),
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/split/status"
    );
    assert_eq!(ctype, "application/merge-patch+json");
    assert_eq!(b["metadata"]["resourceVersion"], "42");
    let parents = b["status"]["parents"].as_array().unwrap();
    assert_eq!(
        parents.len(),
        2,
        "the other controller's entry is kept: {b}"
    );
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    assert_eq!(parents[1]["controllerName"], "isthmus.dev/mesh");
    assert_eq!(parents[1]["parentRef"]["name"], "catalog");
    let types: Vec<&str> = parents[1]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "ResolvedRefs"]);

    // MCS conditions on the ServiceExport, applied like a policy's.
    let (_, uri, ctype, b) = reqs
        .iter()
        .find(|r| r.1.contains("serviceexports"))
        .expect("export status written");
    assert!(
        uri.starts_with(
            "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/catalog/status?"
        ),
        "{uri}"
    );
    assert_eq!(ctype, "application/apply-patch+yaml");
    let types: Vec<(&str, &str)> = b["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(types, [("Valid", "True"), ("Conflict", "False")]);

    // Nothing changed: nothing written again.
    let (n, _) = writer.write(&snap, &conditions).await;
    assert_eq!(n, 0);
    assert_eq!(requests.lock().unwrap().len(), 3);
    server.abort();
}

#[tokio::test]
async fn cluster_links_get_their_runtime_status_beside_their_conditions() {
    use isthmus_federation::resources::link::ClusterLinkStatus;
    use isthmus_federation::store::files::{merge, parse_file};
    use isthmus_federation::writers::status::StatusWriter;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let yaml = r#"apiVersion: isthmus.dev/v1alpha1
kind: ClusterLink
metadata: {name: eu-central, generation: 4}
spec:
  peer: eu-central
  region: eu-central
  gateway: {quic: "10.0.0.2:15443"}
  trustDomain: eu-central.isthmus.local
  trustBundle: ""
  credentialsSecretRef: {name: link-eu-central}
"#;
    let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let (snap, _) = merge(&Default::default(), loaded, Vec::new());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = isthmus_federation::translate::status::conditions(&snap, &[], &now);
    let status = |rtt: f64| ClusterLinkStatus {
        connected: true,
        transport: Some("quic".into()),
        rtt_millis: Some(rtt),
        last_sync: Some(now.clone()),
        imported_services: vec!["catalog.shop".into()],
        credential_expiry: None,
        trust_bundle: None,
        stale_seconds: None,
        conditions: vec![Condition {
            type_: "Connected".into(),
            status: "True".into(),
            reason: "Connected".into(),
            message: "importing 1 services from eu-central".into(),
            observed_generation: Some(4),
            last_transition_time: now.clone(),
        }],
    };

    let (client, mut handle) = client();
    let requests = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let server = {
        let requests = requests.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let uri = req.uri().to_string();
                let b = body_json(req).await;
                requests.lock().unwrap().push((uri, b.clone()));
                send.send_response(respond(StatusCode::OK, body(&b)));
            }
        })
    };
    let mut writer = StatusWriter::new(client);
    let links = |rtt| BTreeMap::from([("eu-central".to_string(), status(rtt))]);
    writer.set_links(links(0.42));
    let (n, errors) = writer.write(&snap, &conditions).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(n, 1);
    let (uri, b) = requests.lock().unwrap()[0].clone();
    assert!(
        uri.starts_with("/apis/isthmus.dev/v1alpha1/clusterlinks/eu-central/status?"),
        "{uri}"
    );
    let st = &b["status"];
    assert_eq!(st["connected"], true);
    assert_eq!(st["transport"], "quic");
    assert_eq!(st["rttMillis"], 0.42);
    assert_eq!(st["importedServices"], json!(["catalog.shop"]));
    let types: Vec<&str> = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "Connected"]);

    // An RTT that moves by microseconds is not worth a write; a
    // disconnection is.
    writer.set_links(links(0.43));
    assert_eq!(writer.write(&snap, &conditions).await.0, 0);
    let mut down = status(0.43);
    down.connected = false;
    down.stale_seconds = Some(3);
    writer.set_links(BTreeMap::from([("eu-central".to_string(), down)]));
    assert_eq!(writer.write(&snap, &conditions).await.0, 1);
    let (_, b) = requests.lock().unwrap()[1].clone();
    assert_eq!(b["status"]["connected"], false);
    assert_eq!(b["status"]["staleSeconds"], 3);
    server.abort();
}

#[tokio::test]
async fn imports_are_written_as_service_imports_and_stale_ones_deleted() {
    use isthmus_api::model;
    use isthmus_federation::store::files::{merge, parse_file};
    use isthmus_federation::translate::imports::{Entry, Summary};
    use isthmus_federation::writers::imports::{ImportWriter, desired};
    let local = r#"apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west, zone: eu-west-a}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
"#;
    let stale = r#"---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: old, namespace: shop, labels: {isthmus.dev/managed-by: isthmus-federation}}
spec: {type: ClusterSetIP, ports: [{port: 80, protocol: TCP}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: someone-elses, namespace: shop}
spec: {type: ClusterSetIP, ports: [{port: 80, protocol: TCP}]}
"#;
    let snapshot = |yaml: &str| {
        let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        merge(&Default::default(), loaded, Vec::new()).0
    };
    let snap = snapshot(&format!("{local}{stale}"));
    let summary = Summary {
        cluster: "eu-central".into(),
        namespace: "shop".into(),
        name: "catalog".into(),
        ports: vec![model::ServicePort {
            port: 80,
            target_port: 9080,
            ..Default::default()
        }],
        healthy: 2,
        locality: model::Locality {
            region: "eu-central".into(),
            zone: "eu-central-a".into(),
        },
        trust_domain: "eu-central.isthmus.local".into(),
        exported_at: 0,
        headless: false,
        hostnames: Vec::new(),
    };
    let entry = Entry {
        ip: "10.0.0.2".parse().unwrap(),
        port: 15009,
    };
    let catalog = translate(&Inputs {
        imports: std::slice::from_ref(&summary),
        gateway_entry: Some(entry),
        ..Inputs::new(&snap)
    })
    .filled();
    let wanted = desired(&catalog, "eu-west");
    // What the API server would keep of them: everything, in both served
    // versions of the pinned MCS CRD (nothing pruned, nothing refused).
    let crd = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crds/third-party/mcs-api-v0.5.0/serviceimports.yaml"),
    )
    .unwrap();
    for version in ["v1alpha1", "v1beta1"] {
        let schema = isthmus_testkit::crd_schema::schema(&crd, version);
        for si in wanted.values() {
            let p = isthmus_testkit::crd_schema::problems(&schema, si);
            assert!(p.is_empty(), "{version}: {p:?}\n{si:#}");
        }
    }
    // A headless import (a StatefulSet's pods named) fits them too.
    let headless = Summary {
        name: "db".into(),
        headless: true,
        hostnames: vec!["db-0".into(), "db-1".into()],
        ..summary.clone()
    };
    let with_db = translate(&Inputs {
        imports: &[summary.clone(), headless],
        gateway_entry: Some(entry),
        ..Inputs::new(&snap)
    })
    .filled();
    let db = desired(&with_db, "eu-west");
    let db = &db[&isthmus_federation::store::ObjectKey {
        namespace: Some("shop".into()),
        name: "db".into(),
    }];
    assert_eq!(db["spec"]["type"], "Headless", "{db}");
    for version in ["v1alpha1", "v1beta1"] {
        let schema = isthmus_testkit::crd_schema::schema(&crd, version);
        let p = isthmus_testkit::crd_schema::problems(&schema, db);
        assert!(p.is_empty(), "{version}: {p:?}\n{db:#}");
    }
    let si = &wanted.values().next().unwrap();
    let ip: std::net::Ipv4Addr = si["spec"]["ips"][0].as_str().unwrap().parse().unwrap();
    assert!(ip.octets()[..2] == [240, 240], "a ClusterSet IP: {si}");
    assert!(
        si["metadata"]["annotations"]["isthmus.dev/cluster-ips"]
            .as_str()
            .unwrap()
            .contains("eu-central"),
        "{si}"
    );

    let (client, mut handle) = client();
    let requests = Arc::new(Mutex::new(Vec::<(String, String, Value)>::new()));
    let server = {
        let requests = requests.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (method, uri) = (req.method().to_string(), req.uri().path().to_string());
                let b = body_json(req).await;
                requests.lock().unwrap().push((method, uri, b.clone()));
                send.send_response(respond(StatusCode::OK, body(&b)));
            }
        })
    };
    let mut writer = ImportWriter::new(client);
    let (n, errors) = writer.write(&wanted, &snap).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(n, 2, "catalog written, old deleted");
    let reqs = requests.lock().unwrap().clone();
    let base = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports";
    let seen: Vec<(&str, &str)> = reqs
        .iter()
        .map(|(m, u, _)| (m.as_str(), u.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("PATCH", format!("{base}/catalog").as_str()),
            ("PATCH", format!("{base}/catalog/status").as_str()),
            ("DELETE", format!("{base}/old").as_str()),
        ],
        "someone else's ServiceImport is left alone"
    );
    assert_eq!(reqs[0].2["spec"]["ports"][0]["port"], 80);
    assert_eq!(
        reqs[1].2["status"]["clusters"],
        json!([{"cluster": "eu-central"}, {"cluster": "eu-west"}])
    );
    // Written once: nothing again while the imports stay the same.
    let (n, _) = writer.write(&wanted, &snapshot(local)).await;
    assert_eq!(n, 0);
    server.abort();
}

/// A cluster serving MCS v1beta1 (MCS v0.5 and later) is read and written
/// in v1beta1: discovery decides, and the body's apiVersion follows.
#[tokio::test]
async fn mcs_v1beta1_is_used_where_the_cluster_serves_it() {
    use isthmus_federation::store::kube::Mcs;
    use isthmus_federation::writers::imports::ImportWriter;
    let (client, mut handle) = client();
    let requests = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
    let served = Arc::new(Mutex::new(vec!["v1beta1", "v1alpha1"]));
    let server = {
        let (requests, served) = (requests.clone(), served.clone());
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let path = req.uri().path().to_string();
                let b = body_json(req).await;
                requests.lock().unwrap().push((path.clone(), b.clone()));
                let versions = served.lock().unwrap().clone();
                if path == "/apis/multicluster.x-k8s.io" {
                    if versions.is_empty() {
                        send.send_response(respond(StatusCode::NOT_FOUND, body(&not_found(&path))));
                        continue;
                    }
                    let vs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("multicluster.x-k8s.io/{v}"), "version": v}))
                        .collect();
                    send.send_response(respond(
                        StatusCode::OK,
                        body(&json!({"kind": "APIGroup", "apiVersion": "v1", "name": "multicluster.x-k8s.io",
                                     "versions": vs, "preferredVersion": vs[0]})),
                    ));
                } else {
                    send.send_response(respond(StatusCode::OK, body(&b)));
                }
            }
        })
    };
    assert_eq!(Mcs::discover(&client).await, Mcs::V1beta1);
    *served.lock().unwrap() = vec!["v1alpha1"];
    assert_eq!(Mcs::discover(&client).await, Mcs::V1alpha1);
    served.lock().unwrap().clear();
    assert_eq!(Mcs::discover(&client).await, Mcs::V1alpha1, "not installed");

    let wanted = std::collections::BTreeMap::from([(
        isthmus_federation::store::ObjectKey {
            namespace: Some("shop".into()),
            name: "catalog".into(),
        },
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
               "metadata": {"name": "catalog", "namespace": "shop"},
               "spec": {"type": "ClusterSetIP", "ips": ["240.240.0.1"], "ports": [{"port": 80, "protocol": "TCP"}]},
               "status": {"clusters": [{"cluster": "eu-central"}]}}),
    )]);
    let mut writer = ImportWriter::new(client).with_mcs(Mcs::V1beta1);
    let (n, errors) = writer
        .write(&wanted, &isthmus_federation::store::Snapshot::default())
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(n, 1);
    let reqs = requests.lock().unwrap().clone();
    let writes: Vec<(&str, &Value)> = reqs[3..]
        .iter()
        .map(|(p, b)| (p.as_str(), &b["apiVersion"]))
        .collect();
    let base = "/apis/multicluster.x-k8s.io/v1beta1/namespaces/shop/serviceimports/catalog";
    assert_eq!(
        writes,
        [
            (base, &json!("multicluster.x-k8s.io/v1beta1")),
            (
                format!("{base}/status").as_str(),
                &json!("multicluster.x-k8s.io/v1beta1")
            ),
        ]
    );
    assert_eq!(reqs[3].1["spec"]["ips"], json!(["240.240.0.1"]));
    server.abort();
}

#[tokio::test]
async fn service_account_tokens_are_reviewed_by_the_api_server() {
    use isthmus_federation::identity::service::{AUDIENCE, Authenticator};
    let (client, mut handle) = client();
    let auth = Authenticator::TokenReview {
        client,
        trust_domain: "eu-west.isthmus.local".into(),
        audiences: vec![AUDIENCE.into()],
    };
    let server = tokio::spawn(async move {
        let answers = [
            json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop:catalog"}}),
            json!({"authenticated": false, "error": "token has expired"}),
            json!({"authenticated": true, "user": {"username": "alice@example.com"}}),
        ];
        for status in answers {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(
                (req.method().as_str(), req.uri().path()),
                ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
            );
            let mut review = body_json(req).await;
            assert_eq!(review["spec"]["token"], "the-pods-token");
            assert_eq!(review["spec"]["audiences"], json!(["isthmus"]));
            review["status"] = status;
            send.send_response(respond(StatusCode::CREATED, body(&review)));
        }
    });
    let id = auth.authenticate("the-pods-token").await.unwrap();
    assert_eq!(
        id.to_string(),
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
    );
    let e = auth.authenticate("the-pods-token").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("token has expired"), "{e}");
    let e = auth.authenticate("the-pods-token").await.unwrap_err();
    assert!(e.message().contains("not to a ServiceAccount"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn the_root_ca_is_kept_in_a_secret_and_a_creation_race_is_lost_gracefully() {
    use isthmus_federation::identity::Ca;
    const SECRET: &str = "/api/v1/namespaces/isthmus-system/secrets/isthmus-ca";
    const SECRETS: &str = "/api/v1/namespaces/isthmus-system/secrets";
    let (client, mut handle) = client();
    // No Secret: generate and create it. Then a second replica finds none,
    // loses the create race (409) and loads the winner's.
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", SECRET));
        send.send_response(respond(StatusCode::NOT_FOUND, body(&not_found(SECRET))));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("POST", SECRETS));
        let mut created = body_json(req).await;
        assert_eq!(created["type"], "Opaque");
        assert!(created["data"]["ca.key"].is_string() && created["data"]["ca.crt"].is_string());
        created["metadata"]["resourceVersion"] = "1".into();
        send.send_response(respond(StatusCode::CREATED, body(&created)));
        // The second replica.
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(respond(StatusCode::NOT_FOUND, body(&not_found(SECRET))));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::POST);
        send.send_response(respond(
            StatusCode::CONFLICT,
            body(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": "secrets \"isthmus-ca\" already exists", "reason": "AlreadyExists", "code": 409})),
        ));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", SECRET));
        send.send_response(respond(StatusCode::OK, body(&created)));
    });
    let first = Ca::load_or_create_secret(
        client.clone(),
        "isthmus-system",
        "isthmus-ca",
        "eu-west.isthmus.local",
    )
    .await
    .unwrap();
    let second = Ca::load_or_create_secret(
        client,
        "isthmus-system",
        "isthmus-ca",
        "eu-west.isthmus.local",
    )
    .await
    .unwrap();
    assert_eq!(
        first.bundle_pem(),
        second.bundle_pem(),
        "one root for all replicas"
    );
    server.await.unwrap();
}

/// A policy shared with the cluster set: each linked cluster's verdict
/// is written where its author looks — one `status.parents` entry per
/// cluster on a route, per-cluster conditions on our policies — in shapes
/// the CRDs accept.
#[tokio::test]
async fn each_clusters_verdict_is_written_on_the_shared_policy() {
    use isthmus_api::federation::v1::{PolicyResult, PolicyState};
    use isthmus_federation::store::files::{merge, parse_file};
    use isthmus_federation::writers::status::StatusWriter;
    let yaml = r#"apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop, resourceVersion: "7", generation: 2, labels: {isthmus.dev/clusterset: "true"}}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 80}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-batch, namespace: shop, generation: 1, labels: {isthmus.dev/clusterset: "true"}}
spec:
  action: DENY
  rules: [{from: [{namespaces: [batch]}]}]
"#;
    let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
    assert!(errors.is_empty(), "{errors:?}");
    let (snap, _) = merge(&Default::default(), loaded, Vec::new());
    let catalog = translate(&Inputs::new(&snap)).filled();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let result = |kind: &str, name: &str, state: PolicyState, reason: &str| PolicyResult {
        kind: kind.into(),
        namespace: "shop".into(),
        name: name.into(),
        generation: 2,
        state: state as i32,
        reason: reason.into(),
        message: "said by that cluster".into(),
    };
    let reports = BTreeMap::from([
        (
            "us-east".to_string(),
            vec![
                result(
                    "HTTPRoute",
                    "canary",
                    PolicyState::Accepted,
                    "BackendNotFound",
                ),
                result(
                    "AuthorizationPolicy",
                    "deny-batch",
                    PolicyState::Accepted,
                    "",
                ),
            ],
        ),
        (
            "eu-central".to_string(),
            vec![result(
                "HTTPRoute",
                "canary",
                PolicyState::Overridden,
                "LocalOverride",
            )],
        ),
    ]);
    let mut conditions =
        isthmus_federation::translate::status::conditions(&snap, &catalog.problems, &now);
    for (k, mut c) in isthmus_federation::sync::policies::conditions(&snap, &reports, &now) {
        conditions.entry(k).or_default().append(&mut c);
    }

    let (client, requests, server) = echoing_api();
    let (n, errors) = StatusWriter::new(client).write(&snap, &conditions).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(n, 2);
    let reqs = requests.lock().unwrap().clone();
    let body_of = |what: &str| {
        reqs.iter()
            .find(|r| r.1.contains(what))
            .map(|r| r.3.clone())
            .unwrap_or_else(|| panic!("{what} not written: {reqs:?}"))
    };
    let crd = |file: &str| {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap()
    };

    // The route: ours, then one entry per cluster.
    let route = body_of("httproutes/canary");
    let parents = route["status"]["parents"].as_array().unwrap();
    let by: Vec<(&str, Vec<(&str, &str)>)> = parents
        .iter()
        .map(|p| {
            let c = p["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
                .collect();
            (p["controllerName"].as_str().unwrap(), c)
        })
        .collect();
    assert_eq!(
        by,
        [
            (
                "isthmus.dev/cluster/eu-central",
                vec![("Accepted", "False"), ("ResolvedRefs", "True")]
            ),
            (
                "isthmus.dev/cluster/us-east",
                vec![("Accepted", "True"), ("ResolvedRefs", "False")]
            ),
            (
                "isthmus.dev/mesh",
                vec![("Accepted", "True"), ("ResolvedRefs", "True")]
            ),
        ]
    );
    let schema = isthmus_testkit::crd_schema::schema(
        &crd("../crds/third-party/gateway-api-v1.6.1/httproutes.yaml"),
        "v1",
    );
    let object = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "canary", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}]},
        "status": route["status"],
    });
    let p = isthmus_testkit::crd_schema::problems(&schema, &object);
    assert!(p.is_empty(), "{p:?}\n{object:#}");

    // Our policy: per-cluster condition types beside its own.
    let policy = body_of("authorizationpolicies/deny-batch");
    let types: Vec<&str> = policy["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "us-east.clusters.isthmus.dev/Accepted"]);
    let schema = isthmus_testkit::crd_schema::schema(
        &crd("../crds/authorizationpolicies.isthmus.dev.yaml"),
        "v1alpha1",
    );
    // (The generated schema leaves apiVersion, kind and metadata to the
    // API server.)
    let object = json!({"spec": {"action": "DENY"}, "status": policy["status"]});
    let p = isthmus_testkit::crd_schema::problems(&schema, &object);
    assert!(p.is_empty(), "{p:?}\n{object:#}");
    server.abort();
}
