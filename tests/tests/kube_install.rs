//! A cluster installed the way a user installs it, against a fake API
//! server (`isthmus_testkit::kube_api`: no Kubernetes runs here):
//! `isthmusctl install --context` applies everything, then the real
//! `isthmus-federation` runs on what was installed (its Mesh, its Services)
//! with the flags the Deployment gives it, does its work (leader election,
//! its CA and join-token key, the CA root in an injected namespace, status,
//! a join token asked through the mailbox, a certificate for a
//! ServiceAccount token, a ClusterLink's gateway given by name looked up,
//! the injection webhook), and every API call it made is checked against
//! the RBAC that was installed: each allowed, and each granted rule used.
//! `isthmusctl uninstall --context` then removes everything.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use isthmus_ctl::install::{self, control_plane};
use isthmus_testkit::kube_api::{Call, FakeApi};
use serde_json::{Value, json};

const FEDERATION: &str = "federation";
const USER: &str = "isthmusctl";

fn isthmusctl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(isthmus_testkit::workspace_bin("isthmusctl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// POSTs `review` to the webhook at `addr` as the API server does: TLS
/// verified with `ca_bundle` for the Service's DNS name.
async fn admission_call(addr: SocketAddr, ca_bundle: &[u8], review: &str) -> Value {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(ca_bundle) {
        roots.add(der.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls_pki_types::ServerName::try_from("isthmus-federation.isthmus-system.svc").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the webhook's certificate verifies for its Service name");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/inject?timeout=10s")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            review.to_string(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// What a user has in the cluster besides Isthmus: a namespace labelled
/// for injection with a Service, its endpoints, an export, a route and a
/// policy; a link to a peer; a stale ServiceImport of ours; and a request
/// for a join token in the mailbox.
fn workloads(api: &FakeApi) {
    let y = |s: &str| -> Value { serde_saphyr::from_str(s).unwrap() };
    api.put(
        "",
        "namespaces",
        y("metadata: {name: shop, labels: {isthmus.dev/inject: enabled}}"),
    );
    api.put(
        "",
        "services",
        y("metadata: {name: catalog, namespace: shop}\nspec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: 8080}]}"),
    );
    api.put(
        "discovery.k8s.io",
        "endpointslices",
        y("metadata: {name: catalog-1, namespace: shop, labels: {kubernetes.io/service-name: catalog}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.0.5], conditions: {ready: true}}]\nports: [{name: http, port: 8080}]"),
    );
    api.put(
        "multicluster.x-k8s.io",
        "serviceexports",
        y("metadata: {name: catalog, namespace: shop}"),
    );
    api.put(
        "multicluster.x-k8s.io",
        "serviceimports",
        y("metadata: {name: gone, namespace: shop, labels: {isthmus.dev/managed-by: isthmus-federation}}\nspec: {type: ClusterSetIP, ports: [{port: 80, protocol: TCP}]}"),
    );
    api.put(
        "gateway.networking.k8s.io",
        "httproutes",
        y("metadata: {name: catalog, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: catalog}]\n  rules: [{backendRefs: [{name: catalog, port: 80}]}]"),
    );
    // One of each policy and route kind whose status it writes.
    let docs: Vec<Value> = serde_saphyr::from_multiple(
        r#"
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: catalog, namespace: shop}
spec: {targetRef: {name: catalog}, timeout: 5s}
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  action: ALLOW
  rules: [{from: [{principals: ["spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"]}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: catalog, namespace: shop}
spec: {selector: {matchLabels: {app: catalog}}, mtls: {mode: STRICT}}
---
apiVersion: isthmus.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules: [{issuer: "https://issuer.example", jwks: "{\"keys\": []}"}]
---
apiVersion: isthmus.dev/v1alpha1
kind: FaultInjection
metadata: {name: unavailable, namespace: shop}
spec:
  abort: {grpcStatus: 14, percentage: 1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: catalog-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 80}]
  rules: [{backendRefs: [{name: catalog, port: 80}]}]
"#,
    )
    .unwrap();
    for d in docs {
        let (ar, _) = install::apply::api_resource(&d).unwrap();
        api.put(&ar.group, &ar.plural, d);
    }
    // A link to a peer (nothing answers there), with its join token.
    let peer = isthmus_testkit::pki::Ca::new("us-east.isthmus.local");
    api.put(
        "",
        "secrets",
        json!({"metadata": {"name": "link-us-east", "namespace": isthmus_federation::store::LINK_SECRETS_NAMESPACE,
                            "labels": {isthmus_federation::store::LINK_CREDENTIALS_LABEL: "us-east"}},
               "data": {"token": "am9pbi10b2tlbg=="}}),
    );
    api.put(
        "isthmus.dev",
        "clusterlinks",
        json!({"metadata": {"name": "us-east"}, "spec": {
            "peer": "us-east", "region": "us-east", "gateway": {"quic": "localhost:9"},
            "trustDomain": "us-east.isthmus.local", "trustBundle": peer.pem,
            "credentialsSecretRef": {"name": "link-us-east"},
        }}),
    );
    api.put(
        "",
        "secrets",
        json!({"metadata": {"name": isthmus_federation::join::SECRET_NAME, "namespace": install::NAMESPACE},
               "data": {"request.us-east": "MzYwMA=="}}),
    );
}

/// Whether `rule` allows `call`.
fn allows(rule: &Value, call: &Call) -> bool {
    let has = |field: &str, v: &str| {
        rule[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == v || x == "*"))
    };
    let names: Vec<&str> = rule["resourceNames"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    has("apiGroups", &call.group)
        && has("resources", &call.resource)
        && has("verbs", call.verb)
        && (names.is_empty() || call.name.as_deref().is_some_and(|n| names.contains(&n)))
}

/// The rules bound to the control plane's ServiceAccount in `api`, each
/// with the namespace it applies in (None: everywhere).
fn bound_rules(api: &FakeApi) -> Vec<(String, Option<String>, Value)> {
    let sa = json!({"kind": "ServiceAccount", "name": "isthmus-federation", "namespace": install::NAMESPACE});
    let bound = |b: &Value| b["subjects"].as_array().is_some_and(|s| s.contains(&sa));
    let mut out = Vec::new();
    for b in api.all("rbac.authorization.k8s.io", "clusterrolebindings") {
        if !bound(&b) {
            continue;
        }
        let name = b["roleRef"]["name"].as_str().unwrap();
        let role = api
            .get("rbac.authorization.k8s.io", "clusterroles", None, name)
            .unwrap_or_else(|| panic!("ClusterRole {name} is bound but not installed"));
        for r in role["rules"].as_array().unwrap() {
            out.push((format!("ClusterRole {name}"), None, r.clone()));
        }
    }
    for b in api.all("rbac.authorization.k8s.io", "rolebindings") {
        if !bound(&b) {
            continue;
        }
        let ns = b["metadata"]["namespace"].as_str().unwrap();
        let name = b["roleRef"]["name"].as_str().unwrap();
        let role = api
            .get("rbac.authorization.k8s.io", "roles", Some(ns), name)
            .unwrap_or_else(|| panic!("Role {ns}/{name} is bound but not installed"));
        for r in role["rules"].as_array().unwrap() {
            out.push((format!("Role {ns}/{name}"), Some(ns.to_string()), r.clone()));
        }
    }
    out
}

/// Grants made for calls this test's single cluster cannot cause: they
/// need a linked peer that issues this cluster link credentials. The
/// same client code makes this exact call (a merge patch of the one
/// Secret, by name) in federation/src/sync/credentials/tests.rs.
const NEEDS_A_PEER: &[(&str, &str)] = &[("secrets", "patch isthmus-link-credentials")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_runs_on_what_install_applied_with_exactly_the_rbac_it_needs() {
    let api = FakeApi::start().await;
    let dir = isthmus_testkit::temp_dir("kube-install");
    let kubeconfig = api.kubeconfig(&dir, &[FEDERATION, USER]);

    // Install as a user would.
    let (ok, err) = isthmusctl(
        &kubeconfig,
        &["install", "--cluster", "eu-west", "--context", USER],
    );
    assert!(ok, "install failed: {err}");
    let rendered = install::render(&install::Options::new("eu-west")).unwrap();
    for o in &rendered {
        let (ar, _) = install::apply::api_resource(o).unwrap();
        let ns = o["metadata"]["namespace"].as_str();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            api.get(&ar.group, &ar.plural, ns, name).is_some(),
            "{} was not applied",
            install::describe(o)
        );
    }
    assert_eq!(
        api.all("apiextensions.k8s.io", "customresourcedefinitions")
            .len(),
        install::crds::objects(Default::default()).unwrap().len()
    );
    workloads(&api);
    api.accept_token("catalog-token", "shop", "catalog");

    // The control plane, with the Deployment's arguments (listening on
    // loopback ports the kernel picks, the gateway entry an address: no
    // DNS here).
    let deployment = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == control_plane::NAME)
        .unwrap();
    let mut args: Vec<String> = Vec::new();
    for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
    {
        let a = a.as_str().unwrap();
        args.push(match a.split_once('=') {
            Some(("--gateway-entry", _)) => "--gateway-entry=127.0.0.1:15009".into(),
            Some((flag, v)) if v.starts_with("0.0.0.0:") => format!("{flag}=127.0.0.1:0"),
            _ => a.to_string(),
        });
    }
    let child = Command::new(isthmus_testkit::workspace_bin("isthmus-federation"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "isthmus-federation-0")
        .env("POD_NAMESPACE", install::NAMESPACE)
        .env("ISTHMUS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("federation.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(child);
    let log = dir.join("federation.log");
    // Where it listens, as it says (`<what> on <address>`).
    let port = |what: &'static str| {
        let log = log.clone();
        async move {
            isthmus_testkit::eventually(&format!("the control plane's {what} port"), || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let at = text.lines().find_map(|l| {
                    l.strip_prefix(what)?
                        .strip_prefix(" on ")?
                        .parse::<SocketAddr>()
                        .ok()
                });
                async move { at }
            })
            .await
        }
    };
    let discovery = port("discovery").await;
    let webhook = port("injector").await;
    let calls_of = |api: &FakeApi| -> Vec<Call> {
        api.calls()
            .into_iter()
            .filter(|c| c.who == FEDERATION)
            .collect()
    };
    let made = |verb: &str, resource: &str, name: &str| {
        let api = &api;
        let (verb, resource, name) = (verb.to_string(), resource.to_string(), name.to_string());
        move || {
            let hit = calls_of(api).iter().any(|c| {
                c.verb == verb && c.resource == resource && c.name.as_deref() == Some(name.as_str())
            });
            async move { hit.then_some(()) }
        }
    };
    let watch = |what: &str| format!("{what} (log: {})", log.display());
    // The CA root reaches the injected namespace: the leader ran.
    isthmus_testkit::eventually(
        &watch("the CA root ConfigMap"),
        made("patch", "configmaps", "isthmus-ca-root"),
    )
    .await;
    // One namespace after the other: wait for the injected one.
    let root = isthmus_testkit::eventually(&watch("the CA root in shop"), || {
        let got = api.get("", "configmaps", Some("shop"), "isthmus-ca-root");
        async move { got }
    })
    .await;
    let root_pem = root["data"]["root-cert.pem"].as_str().unwrap().to_string();
    assert!(
        api.get(
            "",
            "configmaps",
            Some(install::NAMESPACE),
            "isthmus-ca-root"
        )
        .is_some()
    );
    // The join token asked for in the mailbox is answered.
    isthmus_testkit::eventually(
        &watch("the join token answer"),
        made("patch", "secrets", isthmus_federation::join::SECRET_NAME),
    )
    .await;
    // A workload's certificate, proved with its ServiceAccount token.
    {
        use isthmus_mesh::tls::{MeshTls, Trust, control::ControlPlaneConnector};
        let mesh = std::sync::Arc::new(MeshTls::new(isthmus_mesh::identity::Identity::empty()));
        mesh.set_bootstrap_trust(Trust::from_self_describing_pem(&root_pem).unwrap());
        let opts = isthmus_mesh::identity::Options {
            address: discovery.to_string(),
            token: "catalog-token".into(),
            ttl: Duration::from_secs(3600),
            renew_at: 0.5,
            tls: Some(ControlPlaneConnector::new(
                mesh,
                "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-federation",
            )),
        };
        let creds = isthmus_testkit::eventually(&watch("a certificate"), || {
            let opts = opts.clone();
            async move { isthmus_mesh::identity::fetch(&opts).await.ok() }
        })
        .await;
        assert_eq!(
            creds.spiffe_id,
            "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
        );
    }
    // Status on what it translated, the stale ServiceImport gone, and the
    // Lease renewed.
    isthmus_testkit::eventually(
        &watch("status on the ClusterLink"),
        made("patch", "clusterlinks/status", "us-east"),
    )
    .await;
    // Its gateway is given by name: looked up, and the link accepted.
    isthmus_testkit::eventually(&watch("the ClusterLink accepted"), || {
        let link = api.get("isthmus.dev", "clusterlinks", None, "us-east");
        async move {
            let conditions = link?["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                .then_some(())
        }
    })
    .await;
    isthmus_testkit::eventually(
        &watch("the stale ServiceImport deleted"),
        made("delete", "serviceimports", "gone"),
    )
    .await;
    isthmus_testkit::eventually(
        &watch("the Lease renewed"),
        made("update", "leases", control_plane::NAME),
    )
    .await;
    // The injector: the caBundle is written into the installed
    // configuration, and the API server's call (TLS verified against it,
    // for the Service's name) gets a pod with its sidecar.
    isthmus_testkit::eventually(
        &watch("the injector's caBundle"),
        made(
            "patch",
            "mutatingwebhookconfigurations",
            isthmus_federation::inject::webhook::CONFIGURATION,
        ),
    )
    .await;
    let config = api
        .get(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            isthmus_federation::inject::webhook::CONFIGURATION,
        )
        .unwrap();
    let hook = &config["webhooks"][0];
    assert_eq!(
        hook["rules"][0]["resources"][0], "pods",
        "install's fields kept"
    );
    let bundle = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(hook["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap()
    };
    assert_eq!(String::from_utf8(bundle.clone()).unwrap(), root_pem);
    let review = std::fs::read_to_string(
        root_dir().join("federation/tests/fixtures/admission/deployment-pod.json"),
    )
    .unwrap();
    let answer = admission_call(webhook, &bundle, &review).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    drop(guard);

    // Every call allowed by what was installed...
    let rules = bound_rules(&api);
    let calls: BTreeSet<Call> = calls_of(&api)
        .into_iter()
        .map(|mut c| {
            c.who.clear();
            c
        })
        .collect();
    let denied: Vec<String> = calls
        .iter()
        .filter(|c| {
            !rules
                .iter()
                .any(|(_, ns, r)| (ns.is_none() || *ns == c.namespace) && allows(r, c))
        })
        .map(|c| c.to_string())
        .collect();
    assert!(
        denied.is_empty(),
        "calls the installed RBAC denies:\n  {}",
        denied.join("\n  ")
    );
    // ... and everything granted used (or needing a peer).
    let mut unused = Vec::new();
    for (role, ns, r) in &rules {
        let names: Vec<Option<&str>> = match r["resourceNames"].as_array() {
            Some(a) => a.iter().map(Value::as_str).collect(),
            None => vec![None],
        };
        for group in r["apiGroups"].as_array().unwrap() {
            for resource in r["resources"].as_array().unwrap() {
                for verb in r["verbs"].as_array().unwrap() {
                    for name in &names {
                        let (resource, verb) = (resource.as_str().unwrap(), verb.as_str().unwrap());
                        let used = calls.iter().any(|c| {
                            c.group == group.as_str().unwrap()
                                && c.resource == resource
                                && c.verb == verb
                                && (ns.is_none() || *ns == c.namespace)
                                && name.is_none_or(|n| c.name.as_deref() == Some(n))
                        });
                        let excused = NEEDS_A_PEER.iter().any(|(res, v)| {
                            *res == resource
                                && match name {
                                    Some(n) => *v == format!("{verb} {n}"),
                                    None => *v == verb,
                                }
                        });
                        if !used && !excused {
                            unused.push(format!(
                                "{role}: {verb} {resource}{}",
                                name.map(|n| format!(" named {n}")).unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "granted but never used (grant less, or exercise it here):\n  {}",
        unused.join("\n  ")
    );

    // Uninstall removes what install applied and what the control plane
    // made (the CA root ConfigMaps).
    let (ok, err) = isthmusctl(&kubeconfig, &["uninstall", "--context", USER]);
    assert!(ok, "uninstall failed: {err}");
    for o in &rendered {
        let (ar, _) = install::apply::api_resource(o).unwrap();
        let ns = o["metadata"]["namespace"].as_str();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            api.get(&ar.group, &ar.plural, ns, name).is_none(),
            "{} is still there",
            install::describe(o)
        );
    }
    assert!(
        api.get("", "configmaps", Some("shop"), "isthmus-ca-root")
            .is_none()
    );
    // The CRDs stay unless asked (deleting them deletes users' objects).
    assert!(
        !api.all("apiextensions.k8s.io", "customresourcedefinitions")
            .is_empty()
    );
    let (ok, err) = isthmusctl(&kubeconfig, &["uninstall", "--crds", "--context", USER]);
    assert!(ok, "uninstall --crds failed: {err}");
    assert!(
        api.all("apiextensions.k8s.io", "customresourcedefinitions")
            .is_empty()
    );
}
