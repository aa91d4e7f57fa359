//! deploy/control-plane: the RBAC grants what the `kube` store watches and
//! the status writer patches (checked against the code's own list of
//! kinds, so a new kind without RBAC fails here, not in a cluster), and
//! `kubectl kustomize` builds it offline.

use std::path::PathBuf;

use isthmus_federation::store::KINDS;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/control-plane")
}

fn grants(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_covers_every_watched_kind_and_written_status() {
    let text = std::fs::read_to_string(dir().join("rbac.yaml")).unwrap();
    let mut cluster_role = None;
    let mut role = None;
    let mut links_role = None;
    for doc in text.split("\n---\n") {
        if doc.contains("\nkind: ClusterRole\n") {
            cluster_role = Some(serde_saphyr::from_str::<ClusterRole>(doc).unwrap());
        } else if doc.contains("\nkind: Role\n") {
            let r = serde_saphyr::from_str::<Role>(doc).unwrap();
            match r.metadata.namespace.as_deref() {
                Some("isthmus-system") => role = Some(r),
                Some(ns) if ns == isthmus_federation::store::LINK_SECRETS_NAMESPACE => {
                    links_role = Some(r)
                }
                ns => panic!("a Role in {ns:?}"),
            }
        }
    }
    let rules = cluster_role
        .expect("a ClusterRole")
        .rules
        .unwrap_or_default();
    for (_, kind, _) in KINDS.iter().filter(|(_, k, _)| *k != "Secret") {
        let ar = isthmus_federation::store::kube::api_resource(kind);
        for verb in ["list", "watch"] {
            assert!(
                grants(&rules, &ar.group, &ar.plural, verb),
                "{kind}: no {verb} on {}/{}",
                ar.group,
                ar.plural
            );
        }
    }
    for kind in [
        "DestinationPolicy",
        "AuthorizationPolicy",
        "FaultInjection",
        "HTTPRoute",
        "GRPCRoute",
    ] {
        let ar = isthmus_federation::store::kube::api_resource(kind);
        assert!(
            grants(&rules, &ar.group, &format!("{}/status", ar.plural), "patch"),
            "{kind}: status is written, patch on {}/status needed",
            ar.plural
        );
    }
    let role = role
        .expect("a Role for the Lease")
        .rules
        .unwrap_or_default();
    for verb in ["get", "create"] {
        assert!(grants(&role, "", "secrets", verb), "the CA Secret: {verb}");
    }
    // Secrets are listed in the link Secrets' namespace alone; in the
    // control plane's, only the ones it owns are read, by name.
    let links_role = links_role
        .expect("a Role for the link Secrets")
        .rules
        .unwrap_or_default();
    for verb in ["list", "watch"] {
        assert!(
            grants(&links_role, "", "secrets", verb),
            "link credential Secrets: {verb}"
        );
        assert!(
            !grants(&rules, "", "secrets", verb),
            "Secrets must not be readable cluster-wide ({verb})"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(
            role.iter()
                .filter(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
                .filter(|r| r.verbs.iter().any(|v| v == verb))
                .all(|r| r.resource_names.as_ref().is_some_and(|n| !n.is_empty())),
            "{verb} on Secrets in the control plane's namespace is by name only"
        );
    }
    // The Secrets written by name: the link credentials peers issue us,
    // and the join token mailbox (watched by name).
    let named = |name: &str, verb: &str| {
        role.iter().any(|r| {
            r.resources.iter().flatten().any(|x| x == "secrets")
                && r.verbs.iter().any(|v| v == verb)
                && r.resource_names
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| n == name))
        })
    };
    for (name, verbs) in [
        (
            isthmus_federation::sync::credentials::SECRET_NAME,
            &["get", "patch"][..],
        ),
        (
            isthmus_federation::join::SECRET_NAME,
            &["get", "patch", "list", "watch"][..],
        ),
    ] {
        for verb in verbs {
            assert!(named(name, verb), "Secret {name}: {verb}");
        }
    }
    for verb in ["get", "create", "update"] {
        assert!(
            grants(&role, "coordination.k8s.io", "leases", verb),
            "leases: {verb}"
        );
    }
}

#[test]
fn kubectl_builds_the_control_plane_kustomization() {
    let Some(stdout) = isthmus_testkit::kubectl_kustomize(&dir()) else {
        return;
    };
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "Deployment",
        "Service",
    ] {
        assert!(
            stdout.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
    assert!(stdout.contains("- --kube"));
}
