//! The checked-in CRDs in `crds/` are exactly what the Rust types generate,
//! and are valid Kubernetes CRDs with structural schemas.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn checked_in_crds_match_the_types() {
    if let Err(e) = isthmus_federation::crdgen::check(&crds_dir()) {
        panic!("{e}");
    }
}

#[test]
fn drift_is_detected_and_named() {
    let dir = std::env::temp_dir().join(format!("isthmus-crds-{}", std::process::id()));
    isthmus_federation::crdgen::write(&dir).unwrap();
    isthmus_federation::crdgen::check(&dir).unwrap();
    let victim = dir.join("meshes.isthmus.dev.yaml");
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, text.replace("trustDomain", "trustDomian")).unwrap();
    std::fs::write(dir.join("old.isthmus.dev.yaml"), "stale").unwrap();
    let e = isthmus_federation::crdgen::check(&dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("meshes.isthmus.dev.yaml differs"), "{e}");
    assert!(e.contains("old.isthmus.dev.yaml is not generated"), "{e}");
    assert!(e.contains("crdgen"), "the error says how to fix it: {e}");
    isthmus_federation::crdgen::write(&dir).unwrap();
    isthmus_federation::crdgen::check(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every schema node says its type (the structural-schema rule the API
/// server enforces for CRDs), and nothing refers elsewhere.
fn assert_structural(path: &str, schema: &Value) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    assert!(
        !obj.contains_key("$ref"),
        "{path}: $ref is not allowed in a CRD"
    );
    let free = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(
        free || obj.contains_key("type"),
        "{path}: no type: {schema}"
    );
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(&format!("{path}{{}}"), extra);
    }
}

#[test]
fn checked_in_crds_are_valid_custom_resource_definitions() {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(crds_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // third-party/: the pinned CRDs of other APIs (checked by the
        // install tests).
        if name == "kustomization.yaml" || path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{name}: not a CustomResourceDefinition: {e}"));
        // Nothing in the file is unknown to the CRD type: a round trip
        // through it loses no field.
        let raw: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_value(&crd).unwrap(),
            raw,
            "{name}: unknown fields"
        );
        assert_eq!(crd.spec.group, "isthmus.dev");
        assert_eq!(
            name,
            format!("{}.yaml", crd.metadata.name.as_deref().unwrap()),
            "file named after the CRD"
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert!(v.served && v.storage, "{name}");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        let schema = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap_or_else(|| panic!("{name}: no schema"));
        assert_structural(&name, &serde_json::to_value(schema).unwrap());
        kinds.push(crd.spec.names.kind.clone());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "AuthorizationPolicy",
            "ClusterLink",
            "DestinationPolicy",
            "FaultInjection",
            "Mesh",
            "PeerAuthentication",
            "RequestAuthentication"
        ]
    );
}

/// `kubectl kustomize` builds the directory offline, as `kubectl apply -k
/// crds/` would. Needs kubectl; CI sets ISTHMUS_REQUIRE_KUBECTL=1.
#[test]
fn kubectl_builds_the_crd_kustomization() {
    let Some(stdout) = isthmus_testkit::kubectl_kustomize(&crds_dir()) else {
        return;
    };
    for crd in isthmus_federation::crdgen::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(stdout.contains(&format!("name: {name}")), "{name} missing");
    }
    assert_eq!(stdout.matches("kind: CustomResourceDefinition").count(), 7);
}
