//! The injection webhook's answers to real AdmissionReviews (as the API
//! server sends them for a Deployment's pod and for a pod with capture
//! annotations): the AdmissionReview that comes back (uid, JSONPatch),
//! the patch applied to the pod, and the result validated against the
//! Kubernetes schema (`kubernetes-validate --strict`, 1.29 for native
//! sidecars and the newest it knows). Garbage in gets a named refusal.

use base64::Engine;
use isthmus_federation::inject::{Template, webhook};
use serde_json::Value;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn template() -> Template {
    Template {
        image: "ghcr.io/isthmus-mesh/isthmus-gateway:0.1.0".into(),
        pull_policy: "IfNotPresent".into(),
        control_plane: "isthmus-federation.isthmus-system.svc:15010".into(),
        cluster: "eu-west".into(),
        region: "eu-west".into(),
        zone: "eu-west-1a".into(),
        otlp_endpoint: String::new(),
        trace_sampling: None,
    }
}

/// The review's answer and the pod with its patch applied.
fn injected(name: &str) -> (Value, Value) {
    let body = fixture(name);
    let answer = webhook::review(body.as_bytes(), &template());
    let request: Value = serde_json::from_str(&body).unwrap();
    let response = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["uid"], request["request"]["uid"], "{name}");
    assert_eq!(response["allowed"], true, "{name}: {response}");
    assert_eq!(response["patchType"], "JSONPatch");
    let ops = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&ops).unwrap();
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &ops).unwrap();
    (answer, pod)
}

#[test]
fn real_admission_reviews_get_patches_that_make_valid_injected_pods() {
    let required = std::env::var_os("ISTHMUS_REQUIRE_KUBERNETES_VALIDATE").is_some();
    for name in ["deployment-pod.json", "grpc-pod-annotated.json"] {
        let (answer, pod) = injected(name);
        let init = pod["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], "isthmus-init");
        assert_eq!(init[1]["name"], "isthmus-proxy");
        assert_eq!(init[1]["restartPolicy"], "Always");
        assert_eq!(
            pod["metadata"]["annotations"]["isthmus.dev/status"],
            "injected"
        );
        if name == "grpc-pod-annotated.json" {
            // The HTTPS startup probe stays, and the user is told.
            let warnings = answer["response"]["warnings"].as_array().unwrap();
            assert!(warnings[0].as_str().unwrap().contains("HTTPS"));
        }
        // The injected pod is a valid Pod for the API server.
        let yaml = serde_saphyr::to_string(&pod).unwrap();
        for version in ["1.29.0", "1.34.0"] {
            match isthmus_testkit::kubernetes_validate(&yaml, version, "inject-validate") {
                Some((ok, text)) => assert!(ok, "{name} on Kubernetes {version}:\n{text}"),
                None => {
                    assert!(!required, "kubernetes-validate is not installed");
                    eprintln!("skipped the schema check: no kubernetes-validate");
                }
            }
        }
        // A second pass (reinvocation, a re-created pod) changes nothing.
        let mut review: Value = serde_json::from_str(&fixture(name)).unwrap();
        review["request"]["object"] = pod;
        let again = webhook::review(review.to_string().as_bytes(), &template());
        assert_eq!(again["response"]["allowed"], true);
        assert!(
            again["response"]["patch"].is_null(),
            "{name}: patched twice"
        );
    }
}

#[test]
fn a_bad_annotation_refuses_the_pod_with_the_annotations_name() {
    let mut review: Value = serde_json::from_str(&fixture("grpc-pod-annotated.json")).unwrap();
    review["request"]["object"]["metadata"]["annotations"]["isthmus.dev/exclude-inbound-ports"] =
        "http".into();
    let answer = webhook::review(review.to_string().as_bytes(), &template());
    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], review["request"]["uid"]);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("isthmus.dev/exclude-inbound-ports") && message.contains("\"http\""),
        "{message}"
    );
}

#[test]
fn what_is_not_a_pod_creation_passes_and_garbage_is_refused_by_name() {
    // An UPDATE (the webhook is registered for CREATE, but a mistaken
    // configuration must not mutate running pods).
    let mut review: Value = serde_json::from_str(&fixture("deployment-pod.json")).unwrap();
    review["request"]["operation"] = "UPDATE".into();
    review["request"]["oldObject"] = review["request"]["object"].clone();
    let answer = webhook::review(review.to_string().as_bytes(), &template());
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_null());
    for garbage in [
        &b"not json"[..],
        b"{}",
        b"{\"request\": 5}",
        &[0xff, 0xfe][..],
    ] {
        let answer = webhook::review(garbage, &template());
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("not an AdmissionReview"), "{message}");
    }
}
