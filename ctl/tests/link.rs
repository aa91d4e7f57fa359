//! `isthmusctl link create` on two `files` store directories (the sample
//! mesh's eu-west and eu-central): the manifests it writes carry the
//! linked cluster's name, locality, trust domain and CA, and a join token
//! that cluster's control plane accepts; the ClusterLink becomes the
//! gateway's peer when applied. Mistakes are refused by name.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_ctl::link::{LinkError, Options, create};
use isthmus_federation::identity::ca::Ca;
use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::join::token_subject;
use isthmus_federation::store::files::{merge, parse_file};
use isthmus_federation::store::{Resource, Snapshot};

use isthmus_testkit::temp_dir;

fn cluster_dir(tag: &str, golden: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../federation/tests/golden")
        .join(golden)
        .join("mesh.yaml");
    std::fs::copy(src, dir.join("mesh.yaml")).unwrap();
    dir
}

fn options() -> Options {
    Options {
        gateway: Some("10.0.3.1:15443".into()),
        gateway_tcp: None,
        ttl: Duration::from_secs(3600),
        join_wait: Duration::from_secs(5),
        partition: Default::default(),
    }
}

#[test]
fn link_create_writes_a_link_and_a_token_the_peer_accepts() {
    let (a, b) = (
        cluster_dir("link-a", "eu-west"),
        cluster_dir("link-b", "eu-central"),
    );
    let ca = Ca::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let now = SystemTime::now();
    let yaml = create(&a, &b, &options(), now).unwrap();

    // Applied in eu-west (the files store reads the ClusterLink; it does
    // not keep Secrets): a peer gateway and a trusted domain.
    let (loaded, errors) = parse_file(Path::new("link.yaml"), &yaml);
    let (snap, _) = merge(&Snapshot::default(), loaded, errors);
    let mut problems = Vec::new();
    let links = isthmus_federation::translate::links::translate(&snap, None, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let peer = &links.east_west.peers[0];
    assert_eq!(peer.cluster, "eu-central");
    assert_eq!(peer.udp, "10.0.3.1:15443");
    assert_eq!(
        peer.identity,
        "spiffe://eu-central.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest"
    );
    assert_eq!(links.trust[0].roots_pem, ca.bundle_pem());
    let Some(Resource::ClusterLink(link)) = snap.of_kind("ClusterLink").next().map(|(_, r)| r)
    else {
        panic!("no ClusterLink in {yaml}");
    };
    assert_eq!(link.spec.region, "eu-central");
    assert_eq!(
        link.spec.credentials_secret_ref.name,
        "isthmus-link-eu-central"
    );

    // The Secret's token: eu-central's control plane accepts it for
    // eu-west, until it expires.
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("a Secret");
    let token = secret["stringData"]["token"]
        .as_str()
        .expect("a token in the Secret");
    let key = TokenKey::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let id = key.verify(token, now).unwrap();
    assert_eq!(
        id.to_string(),
        format!(
            "spiffe://eu-central.isthmus.local/ns/isthmus-system/sa/{}",
            token_subject("eu-west")
        )
    );
    assert!(
        key.verify(token, now + Duration::from_secs(3601)).is_err(),
        "short-lived"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn mistakes_are_refused_by_name() {
    let (a, b) = (
        cluster_dir("link-ma", "eu-west"),
        cluster_dir("link-mb", "eu-central"),
    );
    let now = SystemTime::now();
    // eu-central's control plane never ran: no CA to trust yet.
    let e = create(&a, &b, &options(), now).unwrap_err();
    assert!(matches!(e, LinkError::NoCa { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("start that cluster's control plane once")
    );
    // A cluster with itself; two clusters sharing a trust domain.
    Ca::load_or_create(&a, "eu-west.isthmus.local").unwrap();
    assert!(matches!(
        create(&a, &a, &options(), now),
        Err(LinkError::SameCluster(_))
    ));
    let twin = cluster_dir("link-twin", "eu-west");
    std::fs::write(
        twin.join("mesh.yaml"),
        std::fs::read_to_string(twin.join("mesh.yaml"))
            .unwrap()
            .replace("clusterName: eu-west", "clusterName: eu-west-2"),
    )
    .unwrap();
    assert!(matches!(
        create(&twin, &a, &options(), now),
        Err(LinkError::SameTrustDomain { .. })
    ));
    // No Mesh; a token lifetime out of bounds.
    let empty = temp_dir("link-empty");
    assert!(matches!(
        create(&empty, &a, &options(), now),
        Err(LinkError::NoMesh { .. })
    ));
    let long = Options {
        ttl: Duration::from_secs(7 * 24 * 3600),
        ..options()
    };
    assert!(matches!(
        create(&twin, &a, &long, now),
        Err(LinkError::Ttl(_))
    ));
    for d in [a, b, twin, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_command_line_writes_the_manifests() {
    let (a, b) = (
        cluster_dir("link-cli-a", "eu-west"),
        cluster_dir("link-cli-b", "eu-central"),
    );
    Ca::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let out = a.join("link-eu-central.yaml");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args([
            "link",
            "create",
            "--gateway",
            "10.0.3.1:15443",
            "--partition",
            "fail-closed",
        ])
        .arg("--from")
        .arg(&a)
        .arg("--to")
        .arg(&b)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let yaml = std::fs::read_to_string(&out).unwrap();
    assert!(
        yaml.contains("kind: ClusterLink") && yaml.contains("kind: Secret"),
        "{yaml}"
    );
    assert!(yaml.contains("FailClosed"), "{yaml}");
    // A bad flag is an error, not a panic.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args([
            "link",
            "create",
            "--gateway",
            "gw:15443",
            "--from",
            "x",
            "--to",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// A mocked API server holding objects by path: GET answers them (404 for
/// the rest), POST to a collection stores what was sent, a merge PATCH
/// edits a held object (nulls remove fields); the requests are recorded.
mod api {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type RespBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    fn merge(into: &mut Value, patch: &Value) {
        match (into.as_object_mut(), patch.as_object()) {
            (Some(into), Some(patch)) => {
                for (k, v) in patch {
                    if v.is_null() {
                        into.remove(k);
                    } else {
                        merge(into.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *into = patch.clone(),
        }
    }

    pub fn serve(routes: BTreeMap<String, Value>) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            let mut objects = routes;
            while let Some((req, send)) = handle.next_request().await {
                let path = req.uri().path().to_string();
                let method = req.method().clone();
                log.lock().unwrap().push(format!("{method} {path}"));
                let b = req.into_body().collect_bytes().await.unwrap();
                let sent = serde_json::from_slice::<Value>(&b).ok();
                let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": "not found"});
                let (status, v) = match (method.as_str(), sent) {
                    ("POST", Some(body)) => {
                        let name = body["metadata"]["name"].as_str().unwrap_or_default();
                        objects.insert(format!("{path}/{name}"), body.clone());
                        (201, body)
                    }
                    ("PATCH", Some(patch)) => match objects.get_mut(&path) {
                        Some(held) => {
                            merge(held, &patch);
                            (200, held.clone())
                        }
                        None => (404, not_found),
                    },
                    _ => match objects.get(&path) {
                        Some(v) => (200, v.clone()),
                        None => (404, not_found),
                    },
                };
                let (tx, rx) = mpsc::channel(1);
                tx.try_send(Ok(Frame::data(Bytes::from(v.to_string()))))
                    .unwrap();
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(StreamBody::new(ReceiverStream::new(rx)))
                        .unwrap(),
                );
            }
        });
        (kube::Client::new(mock, "default"), asked)
    }

    pub fn meshes(name: &str) -> Value {
        json!({"apiVersion": "isthmus.dev/v1alpha1", "kind": "MeshList", "metadata": {},
               "items": [{"apiVersion": "isthmus.dev/v1alpha1", "kind": "Mesh",
                          "metadata": {"name": "default"},
                          "spec": {"clusterName": name, "trustDomain": format!("{name}.isthmus.local"),
                                   "locality": {"region": name, "zone": format!("{name}-a")}}}]})
    }

    pub fn secret(name: &str, field: &str, value: &[u8]) -> Value {
        use base64::Engine;
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "namespace": "isthmus-system"},
               "data": {field: base64::engine::general_purpose::STANDARD.encode(value)}})
    }
}

#[tokio::test]
async fn link_create_asks_the_peers_control_plane_for_a_join_token() {
    use isthmus_federation::join;
    use std::collections::BTreeMap;
    const MESHES: &str = "/apis/isthmus.dev/v1alpha1/meshes";
    const SECRETS: &str = "/api/v1/namespaces/isthmus-system/secrets";
    let dir = temp_dir("link-kube-ca");
    let ca = Ca::load_or_create(&dir, "eu-central.isthmus.local").unwrap();
    let key = Arc::new(TokenKey::new(&[7u8; 32], "eu-central.isthmus.local"));
    let (a, _) = api::serve(BTreeMap::from([(
        MESHES.to_string(),
        api::meshes("eu-west"),
    )]));
    let central = || {
        api::serve(BTreeMap::from([
            (MESHES.to_string(), api::meshes("eu-central")),
            (
                format!("{SECRETS}/isthmus-ca"),
                api::secret("isthmus-ca", "ca.crt", ca.bundle_pem().as_bytes()),
            ),
            // Its gateway's LoadBalancer, as cloud-provider-kind fills it.
            (
                "/api/v1/namespaces/isthmus-system/services/isthmus-eastwest".to_string(),
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "isthmus-eastwest", "namespace": "isthmus-system"},
                    "spec": {"type": "LoadBalancer", "ports": [
                        {"name": "quic", "port": 15443, "protocol": "UDP"},
                        {"name": "tls", "port": 15443, "protocol": "TCP"}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.7"}]}}}),
            ),
        ]))
    };
    // No --gateway: it comes from eu-central's LoadBalancer Service.
    let options = || isthmus_ctl::link::Options {
        gateway: None,
        ..options()
    };
    let now = SystemTime::now();
    let create = |b: kube::Client| {
        let a = a.clone();
        async move {
            isthmus_ctl::link::create_kube(
                (&a, "kind-eu-west"),
                (&b, "kind-eu-central"),
                "isthmus-system",
                &options(),
                now,
            )
            .await
        }
    };
    // eu-central's control plane answers its mailbox, as its watch would.
    let (b, asked) = central();
    let answering = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move {
            loop {
                join::serve_once(&b, "isthmus-system", &key, SystemTime::now())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let yaml = create(b.clone()).await.unwrap();
    answering.abort();
    let asked = asked.lock().unwrap().clone();
    let mailbox = format!("{SECRETS}/{}", join::SECRET_NAME);
    assert!(
        asked.iter().all(|r| !r.contains("isthmus-join-token-key")),
        "the signing key is never read: {asked:?}"
    );
    for expected in [
        format!("GET {MESHES}"),
        format!("GET {SECRETS}/isthmus-ca"),
        format!("POST {SECRETS}"),
        format!("PATCH {mailbox}"),
    ] {
        assert!(asked.contains(&expected), "{expected} in {asked:?}");
    }
    let (loaded, errors) = parse_file(Path::new("link.yaml"), &yaml);
    let (snap, _) = merge(&Snapshot::default(), loaded, errors);
    let mut problems = Vec::new();
    let links = isthmus_federation::translate::links::translate(&snap, None, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(links.east_west.peers[0].cluster, "eu-central");
    assert_eq!(links.east_west.peers[0].udp, "172.18.0.7:15443");
    assert_eq!(links.trust[0].roots_pem, ca.bundle_pem());
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let token = docs.iter().find(|d| d["kind"] == "Secret").unwrap()["stringData"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    // eu-central's control plane checks it with its own key; the answer
    // was taken out of the mailbox.
    assert_eq!(
        key.verify(&token, now).unwrap().service_account(),
        Some("link-eu-west")
    );
    let left = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(b, "isthmus-system")
        .get(join::SECRET_NAME)
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    assert!(left.is_empty(), "{:?}", left.keys());

    // Nobody answers (no control plane with --federation): said by name.
    let (b, _) = central();
    let quick = isthmus_ctl::link::Options {
        join_wait: Duration::from_millis(300),
        ..options()
    };
    let err = isthmus_ctl::link::create_kube(
        (&a, "kind-eu-west"),
        (&b, "kind-eu-central"),
        "isthmus-system",
        &quick,
        now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LinkError::Join { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("isthmus-system/isthmus-join-tokens"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_join_token_key_secret_is_made_once_and_read_back() {
    use isthmus_federation::identity::token::{SECRET_NAME, TokenKey};
    use std::collections::BTreeMap;
    const SECRETS: &str = "/api/v1/namespaces/isthmus-system/secrets";
    // Absent: made (POST) with 32 random bytes.
    let (client, asked) = api::serve(BTreeMap::new());
    let key = TokenKey::load_or_create_secret(
        client,
        "isthmus-system",
        SECRET_NAME,
        "eu-central.isthmus.local",
    )
    .await
    .unwrap();
    assert_eq!(
        *asked.lock().unwrap(),
        [
            format!("GET {SECRETS}/{SECRET_NAME}"),
            format!("POST {SECRETS}")
        ]
    );
    let token = key.issue(
        "isthmus-system",
        "link-eu-west",
        SystemTime::now(),
        Duration::from_secs(60),
    );
    // Present: read, not made again, and it checks the same tokens.
    let bytes = [9u8; 32];
    let (client, asked) = api::serve(BTreeMap::from([(
        format!("{SECRETS}/{SECRET_NAME}"),
        api::secret(SECRET_NAME, "token-key", &bytes),
    )]));
    let read = TokenKey::load_or_create_secret(
        client,
        "isthmus-system",
        SECRET_NAME,
        "eu-central.isthmus.local",
    )
    .await
    .unwrap();
    assert_eq!(asked.lock().unwrap().len(), 1);
    let theirs = TokenKey::new(&bytes, "eu-central.isthmus.local");
    let t = theirs.issue(
        "isthmus-system",
        "link-eu-west",
        SystemTime::now(),
        Duration::from_secs(60),
    );
    assert!(read.verify(&t, SystemTime::now()).is_ok());
    assert!(
        read.verify(&token, SystemTime::now()).is_err(),
        "a different key"
    );
}
