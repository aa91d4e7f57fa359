//! Pods in network namespaces: whether this machine can run them, and the
//! pod the injector makes of the deployment fixture (its init container's
//! capture arguments and its sidecar's environment, as a kubelet runs them).

use k8s_openapi::api::core::v1::{Container, Pod};

/// Whether the namespace tests can run (root and `tools`); with
/// ISTHMUS_REQUIRE_NETNS=1 (CI) a missing piece fails instead.
pub fn can_run(tools: &[&str]) -> bool {
    let required = std::env::var("ISTHMUS_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = ["ip", "iptables-restore"]
        .iter()
        .chain(tools)
        .copied()
        .filter(|c| !isthmus_testkit::have(c))
        .collect();
    if isthmus_e2e::is_root() && missing.is_empty() {
        return true;
    }
    let why = format!("needs root and {missing:?}");
    assert!(!required, "ISTHMUS_REQUIRE_NETNS=1 but {why}");
    eprintln!("skipping: {why}");
    false
}

/// The injector's pod for `federation/tests/fixtures/admission/deployment-pod.json`
/// in cluster `cluster`.
pub fn injected(cluster: &str) -> Pod {
    let review: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../federation/tests/fixtures/admission/deployment-pod.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let t = isthmus_federation::inject::Template {
        cluster: cluster.into(),
        ..Default::default()
    };
    isthmus_federation::inject::mutate(&pod, &t)
        .unwrap()
        .unwrap()
        .pod
}

/// The value of `name` in `c`'s environment.
pub fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}
