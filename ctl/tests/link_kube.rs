//! Links on Kubernetes, against a fake API server: a peer's gateway
//! address read from its LoadBalancer Service (an IP, a cloud hostname,
//! none yet), and `isthmusctl link list` / `link delete` run as a user
//! runs them (`--context`).

use std::process::Command;

use isthmus_ctl::link::{LinkError, gateway_of};
use isthmus_testkit::kube_api::FakeApi;
use serde_json::{Value, json};

fn client(api: &FakeApi) -> kube::Client {
    let config = kube::Config::new(format!("http://{}", api.addr).parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn gateway_service(status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "isthmus-eastwest", "namespace": "isthmus-system"},
           "spec": {"type": "LoadBalancer", "ports": [
               {"name": "quic", "port": 15443, "protocol": "UDP"},
               {"name": "tls", "port": 15443, "protocol": "TCP"}]},
           "status": status})
}

#[tokio::test]
async fn a_peers_gateway_is_where_its_load_balancer_says() {
    let api = FakeApi::start().await;
    let c = client(&api);
    let err = gateway_of(&c, "kind-b", "isthmus-system")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("isthmusctl install"), "{err}");
    // Not provisioned yet: say how to wait for it, or what to give.
    api.put("", "services", gateway_service(json!({})));
    let err = gateway_of(&c, "kind-b", "isthmus-system")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::NoLoadBalancer { .. }));
    let text = err.to_string();
    assert!(
        text.contains("get svc isthmus-eastwest -w") && text.contains("--gateway"),
        "{text}"
    );
    api.put(
        "",
        "services",
        gateway_service(json!({"loadBalancer": {"ingress": [{"ip": "172.18.0.7"}]}})),
    );
    assert_eq!(
        gateway_of(&c, "kind-b", "isthmus-system").await.unwrap(),
        "172.18.0.7:15443"
    );
    // A cloud load balancer gives a name: kept as host:port, the control
    // plane resolves it.
    api.put(
        "",
        "services",
        gateway_service(
            json!({"loadBalancer": {"ingress": [{"hostname": "a1b2-33.elb.us-east-1.amazonaws.com"}]}}),
        ),
    );
    assert_eq!(
        gateway_of(&c, "kind-b", "isthmus-system").await.unwrap(),
        "a1b2-33.elb.us-east-1.amazonaws.com:15443"
    );
}

fn isthmusctl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_list_shows_each_links_state_and_link_delete_removes_it() {
    let api = FakeApi::start().await;
    let dir = isthmus_testkit::temp_dir("link-list");
    let kubeconfig = api.kubeconfig(&dir, &["kind-eu-west"]);
    let link = |peer: &str, status: Value| {
        json!({"apiVersion": "isthmus.dev/v1alpha1", "kind": "ClusterLink",
               "metadata": {"name": peer},
               "spec": {"peer": peer, "region": peer, "gateway": {"quic": format!("{peer}.example.com:15443")},
                        "trustDomain": format!("{peer}.isthmus.local"), "trustBundle": "",
                        "credentialsSecretRef": {"name": format!("isthmus-link-{peer}"), "namespace": "isthmus-links"}},
               "status": status})
    };
    api.put(
        "isthmus.dev",
        "clusterlinks",
        link(
            "us-east",
            json!({"connected": true, "transport": "quic", "rttMillis": 81.4,
                   "importedServices": ["catalog.shop", "reviews.shop"],
                   "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                                   "lastTransitionTime": "2026-12-07T02:00:00Z"}]}),
        ),
    );
    api.put(
        "isthmus.dev",
        "clusterlinks",
        link(
            "eu-central",
            json!({"connected": false,
                   "conditions": [{"type": "Connected", "status": "False", "reason": "Unreachable",
                                   "message": "no answer from eu-central.example.com:15443",
                                   "lastTransitionTime": "2026-12-07T02:00:00Z"}]}),
        ),
    );
    api.put(
        "",
        "secrets",
        json!({"metadata": {"name": "isthmus-link-us-east", "namespace": "isthmus-links"}}),
    );
    let out = isthmusctl(&kubeconfig, &["link", "list", "--context", "kind-eu-west"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let line = |peer: &str| {
        table
            .lines()
            .find(|l| l.starts_with(peer))
            .unwrap_or_else(|| panic!("{peer} in\n{table}"))
            .to_string()
    };
    let us = line("us-east");
    assert!(
        us.contains("yes") && us.contains("quic") && us.contains("81.4ms"),
        "{us}"
    );
    let eu = line("eu-central");
    assert!(
        eu.contains(" no ") && eu.contains("Unreachable: no answer"),
        "{eu}"
    );
    let out = isthmusctl(
        &kubeconfig,
        &["link", "list", "--context", "kind-eu-west", "--json"],
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[1]["importedServices"], 2);

    let out = isthmusctl(
        &kubeconfig,
        &["link", "delete", "--context", "kind-eu-west", "us-east"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        api.get("isthmus.dev", "clusterlinks", None, "us-east")
            .is_none()
    );
    assert!(
        api.get("", "secrets", Some("isthmus-links"), "isthmus-link-us-east")
            .is_none()
    );
    assert!(
        api.get("isthmus.dev", "clusterlinks", None, "eu-central")
            .is_some()
    );
    // Unlinking what is not linked says so.
    let out = isthmusctl(
        &kubeconfig,
        &["link", "delete", "--context", "kind-eu-west", "us-east"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("there is none"), "{err}");
}
