use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn files_keep_credentials_across_restarts_privately() {
    let dir = std::env::temp_dir().join(format!("isthmus-credentials-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = CredentialStore::dir(&dir);
    assert_eq!(store.load("eu-central").await.unwrap(), None);
    store.save("eu-central", "v1.a").await.unwrap();
    store.save("us-east", "v1.b").await.unwrap();
    store.save("eu-central", "v1.c").await.unwrap();
    // A restarted control plane (a new store) reads what was written.
    let again = CredentialStore::dir(&dir);
    assert_eq!(
        again.load("eu-central").await.unwrap().as_deref(),
        Some("v1.c")
    );
    assert_eq!(
        again.load("us-east").await.unwrap().as_deref(),
        Some("v1.b")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("ca/links/eu-central"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "readable by the control plane alone");
    again.forget("eu-central").await.unwrap();
    again.forget("eu-central").await.unwrap();
    assert_eq!(
        CredentialStore::dir(&dir).load("eu-central").await.unwrap(),
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fake API server holding at most one Secret, `isthmus-link-credentials`
/// in isthmus-system: GET, merge PATCH and POST, each request recorded.
fn api() -> (kube::Client, Arc<parking_lot::Mutex<Vec<String>>>) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Full<Bytes>>>();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        let mut held: Option<Value> = None;
        while let Some((req, send)) = handle.next_request().await {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let body = req.into_body().collect_bytes().await.unwrap();
            let body: Option<Value> = serde_json::from_slice(&body).ok();
            seen.lock().push(format!("{method} {path}"));
            let named =
                path == "/api/v1/namespaces/isthmus-system/secrets/isthmus-link-credentials";
            let collection = path == "/api/v1/namespaces/isthmus-system/secrets";
            let (status, answer) = match (method.as_str(), &mut held) {
                ("GET" | "PATCH", None) if named => (404, not_found()),
                ("GET", Some(s)) if named => (200, s.clone()),
                ("PATCH", Some(s)) if named => {
                    let patch = body.unwrap();
                    let data = s["data"].as_object_mut().unwrap();
                    for (k, v) in patch["data"].as_object().unwrap() {
                        if v.is_null() {
                            data.remove(k);
                        } else {
                            data.insert(k.clone(), v.clone());
                        }
                    }
                    (200, s.clone())
                }
                ("POST", None) if collection => {
                    held = body;
                    (201, held.clone().unwrap())
                }
                _ => (405, not_found()),
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap(),
            );
        }
        Ok::<_, Infallible>(())
    });
    (kube::Client::new(mock, "isthmus-system"), log)
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn kube_keeps_credentials_in_one_named_secret_a_field_per_peer() {
    let (client, log) = api();
    let store = CredentialStore::secret(client.clone(), "isthmus-system");
    assert_eq!(store.load("eu-central").await.unwrap(), None);
    store.save("eu-central", "v1.a").await.unwrap();
    store.save("us-east", "v1.b").await.unwrap();
    store.forget("eu-central").await.unwrap();
    store.save("us-east", "v1.b").await.unwrap(); // held already: no request
    let again = CredentialStore::secret(client, "isthmus-system");
    assert_eq!(
        again.load("us-east").await.unwrap().as_deref(),
        Some("v1.b")
    );
    assert_eq!(again.load("eu-central").await.unwrap(), None);
    let secret = "/api/v1/namespaces/isthmus-system/secrets/isthmus-link-credentials";
    assert_eq!(
        *log.lock(),
        [
            format!("GET {secret}"),
            // The first save makes the Secret.
            format!("PATCH {secret}"),
            "POST /api/v1/namespaces/isthmus-system/secrets".to_string(),
            format!("PATCH {secret}"),
            format!("PATCH {secret}"),
            format!("GET {secret}"),
            format!("GET {secret}"),
        ],
        "named requests only: nothing lists Secrets"
    );
}
