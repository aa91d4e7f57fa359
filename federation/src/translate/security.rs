//! Mesh security for the proxies: the Mesh's default mTLS mode, and per
//! namespace the PeerAuthentication, AuthorizationPolicy and
//! RequestAuthentication objects in the model's form (selectors included:
//! each proxy applies those selecting its own labels). Trust bundles are
//! not resources: the control plane adds its CA's (and, with federation,
//! its peers') when it publishes.
//!
//! A policy that does not validate is reported (Accepted=False) and not
//! sent at all, as an admission webhook would have refused it: sending a
//! DENY policy with its bad rule dropped would allow what it meant to deny.

use std::collections::BTreeMap;

use isthmus_api::model;

use super::Problem;
use crate::resources::authentication::{PeerAuthentication, RequestAuthentication};
use crate::resources::authorization::{self, AuthorizationPolicy, LabelSelector};
use crate::resources::mesh::MtlsMode;
use crate::store::{ObjectKey, Resource, Snapshot};

/// What the discovery stream sends as `security/*` resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecurityCatalog {
    /// Mesh-wide: the default mode (trust bundles added at publish).
    pub mesh: model::Security,
    /// By namespace: that namespace's policies.
    pub namespaces: BTreeMap<String, model::Security>,
    /// The Mesh's trust domain ("" when there is no Mesh yet).
    pub trust_domain: String,
}

fn mode(m: MtlsMode) -> i32 {
    match m {
        MtlsMode::Strict => model::MtlsMode::Strict as i32,
        MtlsMode::Permissive => model::MtlsMode::Permissive as i32,
    }
}

fn selector(s: &Option<LabelSelector>) -> BTreeMap<String, String> {
    s.as_ref()
        .map(|s| s.match_labels.clone().into_iter().collect())
        .unwrap_or_default()
}

fn qualified(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name)
}

pub fn translate(snap: &Snapshot, problems: &mut Vec<Problem>) -> SecurityCatalog {
    let mut out = SecurityCatalog::default();
    if let Some(m) = snap.of_kind("Mesh").find_map(|(_, r)| match r {
        Resource::Mesh(m) => Some(m),
        _ => None,
    }) {
        out.mesh.default_mtls_mode = mode(m.spec.mtls.mode);
        out.trust_domain = m.spec.trust_domain.clone();
    }
    let mut add = |kind: &'static str, key: &ObjectKey, one: model::Security| {
        let issues = isthmus_api::validate::validate_security(&one);
        if !issues.is_empty() {
            problems.push(Problem {
                kind,
                key: key.clone(),
                reason: "Invalid",
                message: format!(
                    "{} (the policy is not applied until fixed)",
                    issues
                        .iter()
                        .map(|i| format!("{}: {}", strip_prefix(&i.path), i.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
            return;
        }
        let ns = out
            .namespaces
            .entry(key.namespace.clone().unwrap_or_default())
            .or_default();
        ns.mtls_policies.extend(one.mtls_policies);
        ns.authorization_policies.extend(one.authorization_policies);
        ns.jwt_policies.extend(one.jwt_policies);
    };
    for (key, r) in snap.of_kind("PeerAuthentication") {
        if let Resource::PeerAuthentication(p) = r {
            add("PeerAuthentication", key, peer(key, p));
        }
    }
    for (key, r) in snap.of_kind("AuthorizationPolicy") {
        if let Resource::AuthorizationPolicy(p) = r {
            add("AuthorizationPolicy", key, authz(key, p));
        }
    }
    for (key, r) in snap.of_kind("RequestAuthentication") {
        if let Resource::RequestAuthentication(p) = r {
            add("RequestAuthentication", key, jwt(key, p));
        }
    }
    out
}

/// `security.authorizationPolicies[0].rules[1]...` → `rules[1]...`: the
/// path inside the object, as its author wrote it.
fn strip_prefix(path: &str) -> &str {
    path.split_once("].")
        .filter(|(head, _)| head.starts_with("security."))
        .map_or(path, |(_, rest)| rest)
}

fn peer(key: &ObjectKey, p: &PeerAuthentication) -> model::Security {
    model::Security {
        mtls_policies: vec![model::MtlsPolicy {
            name: qualified(key),
            selector: selector(&p.spec.selector),
            mode: mode(p.spec.mtls.mode),
        }],
        ..Default::default()
    }
}

fn authz(key: &ObjectKey, p: &AuthorizationPolicy) -> model::Security {
    let action = match p.spec.action {
        authorization::Action::Allow => model::authorization_policy::Action::Allow,
        authorization::Action::Deny => model::authorization_policy::Action::Deny,
    };
    let rules = p
        .spec
        .rules
        .iter()
        .map(|r| model::AuthorizationRule {
            from: r
                .from
                .iter()
                .map(|s| model::AuthorizationSource {
                    principals: s.principals.clone(),
                    namespaces: s.namespaces.clone(),
                    trust_domains: s.trust_domains.clone(),
                    clusters: s.clusters.clone(),
                    request_principals: s.request_principals.clone(),
                })
                .collect(),
            to: r
                .to
                .iter()
                .map(|o| model::AuthorizationOperation {
                    ports: o.ports.iter().map(|p| u32::from(*p)).collect(),
                    methods: o.methods.clone(),
                    paths: o.paths.clone(),
                })
                .collect(),
            when: r
                .when
                .iter()
                .map(|c| model::AuthorizationCondition {
                    key: c.key.clone(),
                    values: c.values.clone(),
                })
                .collect(),
        })
        .collect();
    model::Security {
        authorization_policies: vec![model::AuthorizationPolicy {
            name: qualified(key),
            selector: selector(&p.spec.selector),
            action: action as i32,
            rules,
        }],
        ..Default::default()
    }
}

fn jwt(key: &ObjectKey, p: &RequestAuthentication) -> model::Security {
    model::Security {
        jwt_policies: vec![model::JwtPolicy {
            name: qualified(key),
            selector: selector(&p.spec.selector),
            rules: p
                .spec
                .jwt_rules
                .iter()
                .map(|r| model::JwtRule {
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.clone(),
                    jwks: r.jwks.clone().unwrap_or_default(),
                    jwks_file: r.jwks_file.clone().unwrap_or_default(),
                })
                .collect(),
            excluded_paths: p.spec.excluded_paths.clone(),
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::{merge, parse_file};

    fn parse(yaml: &str) -> Snapshot {
        let (loaded, errors) = parse_file(std::path::Path::new("t.yaml"), yaml);
        assert!(errors.is_empty(), "{errors:?}");
        merge(&Snapshot::default(), loaded, Vec::new()).0
    }

    #[test]
    fn policies_are_grouped_by_namespace_and_bad_ones_are_reported_not_sent() {
        let snap = parse(
            r#"
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata: {name: default}
spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}, mtls: {mode: STRICT}}
---
apiVersion: isthmus.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: legacy, namespace: shop}
spec: {selector: {matchLabels: {app: legacy}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{principals: ["spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"]}], to: [{ports: [8080], methods: [GET], paths: ["/items*"]}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{principals: ["spiffe://*/ns/*/sa/x"]}]}]
---
apiVersion: isthmus.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: jwt, namespace: backend}
spec:
  jwtRules: [{issuer: "https://issuer.example", jwks: "{\"keys\": []}"}]
  excludedPaths: [/healthz]
"#,
        );
        let mut problems = Vec::new();
        let sec = translate(&snap, &mut problems);
        assert_eq!(sec.trust_domain, "eu-west.isthmus.local");
        assert_eq!(sec.mesh.default_mtls_mode(), model::MtlsMode::Strict);
        let shop = &sec.namespaces["shop"];
        assert_eq!(shop.mtls_policies[0].name, "shop/legacy");
        assert_eq!(shop.mtls_policies[0].selector["app"], "legacy");
        assert_eq!(shop.mtls_policies[0].mode(), model::MtlsMode::Permissive);
        assert_eq!(
            shop.authorization_policies.len(),
            1,
            "the broken one is not sent"
        );
        let a = &shop.authorization_policies[0];
        assert_eq!(a.name, "shop/frontend-only");
        assert_eq!(a.rules[0].to[0].ports, [8080]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].kind, "AuthorizationPolicy");
        assert_eq!(problems[0].key.name, "broken");
        assert!(
            problems[0]
                .message
                .starts_with("rules[0].from[0].principals[0]"),
            "{}",
            problems[0].message
        );
        let backend = &sec.namespaces["backend"];
        assert_eq!(backend.jwt_policies[0].excluded_paths, ["/healthz"]);
        assert_eq!(
            backend.jwt_policies[0].rules[0].issuer,
            "https://issuer.example"
        );
    }
}
