//! `isthmusctl check` as a user runs it, against fake API servers: before
//! installing (`--pre`), after installing with everything up, and with
//! things broken — each verdict with its fix, the exit status 1 when one
//! fails, `-o json`.

use std::process::{Command, Output};

use isthmus_testkit::kube_api::FakeApi;
use serde_json::{Value, json};

fn isthmusctl(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

fn checks(out: &Output) -> Vec<Value> {
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn verdict<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {all:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_checks_say_what_is_missing_and_fail_without_rights() {
    let api = FakeApi::start().await;
    let dir = isthmus_testkit::temp_dir("check-pre");
    let kc = api.kubeconfig(&dir, &["kind-a"]);
    api.put(
        "",
        "nodes",
        json!({"metadata": {"name": "a-control-plane"}, "spec": {"providerID": "kind://docker/a/a-control-plane"}}),
    );
    let out = isthmusctl(
        &kc,
        &["check", "--pre", "--context", "kind-a", "-o", "json"],
    );
    assert!(out.status.success(), "warnings only: {:?}", checks(&out));
    let all = checks(&out);
    assert_eq!(verdict(&all, "Kubernetes version")["detail"], "v1.33.1");
    assert_eq!(verdict(&all, "permissions")["status"], "ok");
    let crds = verdict(&all, "CRDs");
    assert_eq!(crds["status"], "warn");
    assert!(crds["fix"].as_str().unwrap().contains("install --crds"));
    let lb = verdict(&all, "LoadBalancer (UDP)");
    assert!(
        lb["detail"]
            .as_str()
            .unwrap()
            .contains("cloud-provider-kind")
    );
    // Without the right to make ClusterRoles: a failure, exit status 1.
    api.deny("clusterroles");
    let out = isthmusctl(&kc, &["check", "--pre", "--context", "kind-a"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("FAIL [kind-a] permissions: missing: create clusterroles"),
        "{table}"
    );
    assert!(table.contains("fix: install as a cluster admin"), "{table}");
}

/// What a running installation shows: deployments ready, the CA root and
/// the webhook's caBundle written, an injected namespace whose test pod
/// the injector mutates, a link up.
fn running(api: &FakeApi, ready: i32) {
    // A root as the control plane makes it (ten years).
    let (ca, _) = isthmus_federation::identity::Ca::generate("eu-west.isthmus.local").unwrap();
    api.put(
        "",
        "configmaps",
        json!({"metadata": {"name": "isthmus-ca-root", "namespace": "isthmus-system"},
               "data": {"root-cert.pem": ca.bundle_pem()}}),
    );
    for name in ["isthmus-federation", "isthmus-eastwest"] {
        let mut d = api
            .get("apps", "deployments", Some("isthmus-system"), name)
            .unwrap();
        d["status"] = json!({"replicas": 2, "readyReplicas": ready});
        api.put("apps", "deployments", d);
    }
    let mut hook = api
        .get(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            "isthmus-injector",
        )
        .unwrap();
    hook["webhooks"][0]["clientConfig"]["caBundle"] = json!("Zm9v");
    api.put(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        hook,
    );
    api.put(
        "",
        "namespaces",
        json!({"metadata": {"name": "shop", "labels": {"isthmus.dev/inject": "enabled"}}}),
    );
    api.admit_pods(Box::new(|pod| {
        use isthmus_federation::inject;
        let p = serde_json::from_value(pod.clone()).unwrap();
        let t = inject::Template {
            cluster: "eu-west".into(),
            ..Default::default()
        };
        match inject::mutate(&p, &t) {
            Ok(Ok(i)) => serde_json::to_value(i.pod).unwrap(),
            _ => pod,
        }
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_is_checked_end_to_end_and_its_problems_named() {
    let api = FakeApi::start().await;
    let dir = isthmus_testkit::temp_dir("check-post");
    let kc = api.kubeconfig(&dir, &["kind-a"]);
    let out = isthmusctl(
        &kc,
        &["install", "--cluster", "eu-west", "--context", "kind-a"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Before anything runs: the control plane's absence is what is said.
    let out = isthmusctl(&kc, &["check", "--context", "kind-a", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let all = checks(&out);
    assert_eq!(
        verdict(&all, "isthmus-federation")["detail"],
        "0 of 2 replicas ready"
    );
    assert!(
        verdict(&all, "CA")["detail"]
            .as_str()
            .unwrap()
            .contains("no ConfigMap isthmus-system/isthmus-ca-root")
    );
    assert!(
        verdict(&all, "injector")["detail"]
            .as_str()
            .unwrap()
            .contains("caBundle is empty")
    );
    running(&api, 2);
    api.put(
        "isthmus.dev",
        "clusterlinks",
        json!({"metadata": {"name": "us-east"},
               "spec": {"peer": "us-east", "region": "us-east", "gateway": {"quic": "10.0.0.3:15443"},
                        "trustDomain": "us-east.isthmus.local", "trustBundle": "",
                        "credentialsSecretRef": {"name": "isthmus-link-us-east"}},
               "status": {"connected": true, "transport": "h2", "rttMillis": 12.0}}),
    );
    let out = isthmusctl(&kc, &["check", "--context", "kind-a", "-o", "json"]);
    let all = checks(&out);
    assert!(out.status.success(), "{all:#?}");
    assert_eq!(
        verdict(&all, "injector")["detail"],
        "a test pod (dry run) gets its sidecar"
    );
    assert_eq!(verdict(&all, "CA")["status"], "ok");
    // The link works, over the TCP fallback: UDP is blocked somewhere.
    let link = verdict(&all, "link to us-east");
    assert_eq!(link["status"], "warn");
    assert!(link["fix"].as_str().unwrap().contains("UDP 15443"));
    // Two clusters checked together: their clocks compared (the fake
    // answers with this machine's clock).
    let out = isthmusctl(
        &kc,
        &[
            "check",
            "--context",
            "kind-a",
            "--context",
            "kind-a",
            "-o",
            "json",
        ],
    );
    let all = checks(&out);
    assert_eq!(verdict(&all, "clock skew")["status"], "ok");
    // A gateway replica down: a failure naming it.
    running(&api, 1);
    let out = isthmusctl(&kc, &["check", "--context", "kind-a"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("FAIL [kind-a] isthmus-eastwest: 1 of 2 replicas ready"),
        "{table}"
    );
    // A context that does not exist: said, not a crash.
    let out = isthmusctl(&kc, &["check", "--context", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("FAIL [nowhere] API server"), "{table}");
}
