//! What the control plane may do through the API, and nothing more: a
//! test records every call it makes (kube-rs over a mock API server) and
//! checks each is granted here, and that each rule here is used.
//!
//! - cluster-wide: read what it translates, write status on it, write the
//!   ServiceImports of what it imports, review ServiceAccount tokens (the
//!   CA), and put the CA root (a ConfigMap of one name) into injected
//!   namespaces;
//! - in its own namespace: its Lease and, by name, its own Secrets;
//! - in `isthmus-links`: the link Secrets `isthmusctl link create` writes
//!   (the only Secrets it may list).
//!
//! The east-west gateway's ServiceAccount has no role: it talks to the
//! control plane, not to the API.
//!
//! One role is for someone else: CoreDNS (`kube-system/coredns`) may read
//! ServiceImports, so that its `multicluster` plugin can answer
//! `clusterset.local` from their ClusterSet IPs (README, "DNS without the
//! sidecar"); it grants nothing until the plugin is enabled.

use serde_json::{Value, json};

use super::{NAMESPACE, meta};
use isthmus_federation::store::LINK_SECRETS_NAMESPACE;

pub const SERVICE_ACCOUNT: &str = "isthmus-federation";
/// The east-west gateway's (its SPIFFE ID names it).
pub const GATEWAY_SERVICE_ACCOUNT: &str =
    isthmus_federation::translate::links::GATEWAY_SERVICE_ACCOUNT;

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn named(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs})
}

/// The kinds the control plane reads, by API group (status writes below).
fn read_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["namespaces", "services", "pods", "serviceaccounts"],
            &["list", "watch"],
        ),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
        ),
        rule(
            &["isthmus.dev"],
            &[
                "meshes",
                "clusterlinks",
                "destinationpolicies",
                "authorizationpolicies",
                "peerauthentications",
                "requestauthentications",
                "faultinjections",
            ],
            &["list", "watch"],
        ),
        rule(
            &["multicluster.x-k8s.io"],
            &["serviceexports", "serviceimports"],
            &["list", "watch"],
        ),
        rule(
            &["gateway.networking.k8s.io"],
            &["httproutes", "grpcroutes", "referencegrants"],
            &["list", "watch"],
        ),
    ]
}

fn cluster_role() -> Value {
    let mut rules = read_rules();
    rules.extend([
        // Conditions on what it translates.
        rule(
            &["isthmus.dev"],
            &[
                "clusterlinks/status",
                "destinationpolicies/status",
                "authorizationpolicies/status",
                "peerauthentications/status",
                "requestauthentications/status",
                "faultinjections/status",
            ],
            &["patch"],
        ),
        rule(
            &["multicluster.x-k8s.io"],
            &["serviceexports/status", "serviceimports/status"],
            &["patch"],
        ),
        rule(
            &["gateway.networking.k8s.io"],
            &["httproutes/status", "grpcroutes/status"],
            &["patch"],
        ),
        // The ServiceImports of what this cluster imports (labelled ours;
        // server-side apply creates them, so create as well as patch).
        rule(
            &["multicluster.x-k8s.io"],
            &["serviceimports"],
            &["create", "patch", "delete"],
        ),
        // The CA checks proxies' ServiceAccount tokens.
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        // The CA root in every injected namespace: one ConfigMap name
        // (create cannot be limited by name; patch is).
        rule(&[""], &["configmaps"], &["create"]),
        named(
            &[""],
            &["configmaps"],
            &[isthmus_federation::writers::ca_root::CONFIG_MAP],
            &["patch"],
        ),
        // The injector's caBundle, in the configuration install wrote.
        named(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            &[isthmus_federation::inject::webhook::CONFIGURATION],
            &["get", "patch"],
        ),
    ]);
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(SERVICE_ACCOUNT, None),
        "rules": rules,
    })
}

fn own_namespace_role() -> Value {
    use isthmus_federation::{identity::token, join, sync::credentials};
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(SERVICE_ACCOUNT, Some(NAMESPACE)),
        "rules": [
            // Leader election: one Lease.
            rule(&["coordination.k8s.io"], &["leases"], &["create"]),
            named(&["coordination.k8s.io"], &["leases"], &[SERVICE_ACCOUNT], &["get", "update"]),
            // Its Secrets, made on first start: the CA root (isthmus-ca),
            // the key signing join tokens, the credentials peers issue
            // it; and the mailbox where `isthmusctl link create` asks it
            // for join tokens (watched by name).
            rule(&[""], &["secrets"], &["create"]),
            named(
                &[""],
                &["secrets"],
                &["isthmus-ca", token::SECRET_NAME, credentials::SECRET_NAME, join::SECRET_NAME],
                &["get"],
            ),
            named(&[""], &["secrets"], &[credentials::SECRET_NAME, join::SECRET_NAME], &["patch"]),
            named(&[""], &["secrets"], &[join::SECRET_NAME], &["list", "watch"]),
        ],
    })
}

fn links_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(SERVICE_ACCOUNT, Some(LINK_SECRETS_NAMESPACE)),
        "rules": [rule(&[""], &["secrets"], &["list", "watch"])],
    })
}

fn binding(kind: &str, namespace: Option<&str>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": meta(SERVICE_ACCOUNT, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": SERVICE_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
    })
}

fn service_account(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(name, Some(NAMESPACE)),
    })
}

/// CoreDNS's ServiceAccount, where kubeadm and kind put it.
pub const COREDNS: (&str, &str) = ("kube-system", "coredns");
pub const COREDNS_ROLE: &str = "isthmus-coredns-multicluster";

/// Read access to ServiceImports for CoreDNS's `multicluster` plugin.
pub fn coredns_objects() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta(COREDNS_ROLE, None),
            "rules": [rule(&["multicluster.x-k8s.io"], &["serviceimports"], &["get", "list", "watch"])],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta(COREDNS_ROLE, None),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": COREDNS_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": COREDNS.1, "namespace": COREDNS.0}],
        }),
    ]
}

/// The ServiceAccounts, roles and bindings.
pub fn objects() -> Vec<Value> {
    vec![
        service_account(SERVICE_ACCOUNT),
        service_account(GATEWAY_SERVICE_ACCOUNT),
        cluster_role(),
        binding("ClusterRole", None),
        own_namespace_role(),
        binding("Role", Some(NAMESPACE)),
        links_role(),
        binding("Role", Some(LINK_SECRETS_NAMESPACE)),
    ]
    .into_iter()
    .chain(coredns_objects())
    .collect()
}
