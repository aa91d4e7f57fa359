//! The authorization matrix: policies × callers × requests → decision.

use super::*;
use isthmus_api::model::authorization_policy::Action;
use isthmus_api::model::{
    AuthorizationCondition, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource,
};

const FRONTEND: &str = "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend";
const CHECKOUT: &str = "spiffe://eu-west.isthmus.local/ns/shop/sa/checkout";
const OPS: &str = "spiffe://eu-west.isthmus.local/ns/ops/sa/prober";
const REMOTE: &str = "spiffe://us-east.isthmus.local/ns/shop/sa/frontend";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn policy(name: &str, action: Action, rules: Vec<AuthorizationRule>) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.into(),
        selector: Default::default(),
        action: action as i32,
        rules,
    }
}

fn from(src: AuthorizationSource) -> AuthorizationRule {
    AuthorizationRule {
        from: vec![src],
        ..Default::default()
    }
}

fn to(op: AuthorizationOperation) -> AuthorizationRule {
    AuthorizationRule {
        to: vec![op],
        ..Default::default()
    }
}

/// Method, path and headers of an HTTP call.
type HttpCall = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// One caller.
struct Call {
    principal: Option<&'static str>,
    cluster: Option<&'static str>,
    port: u16,
    /// None: opaque TCP.
    http: Option<HttpCall>,
    jwt: Option<Claims>,
}

fn http(principal: Option<&'static str>, method: &'static str, path: &'static str) -> Call {
    Call {
        principal,
        cluster: principal.map(|p| {
            if p.contains("us-east") {
                "us-east"
            } else {
                "eu-west"
            }
        }),
        port: 8080,
        http: Some((method, path, &[])),
        jwt: None,
    }
}

fn tcp(principal: Option<&'static str>, port: u16) -> Call {
    Call {
        http: None,
        port,
        ..http(principal, "", "")
    }
}

fn decide(policies: &[AuthorizationPolicy], call: &Call) -> Decision {
    let compiled = Policies::compile(policies, &Default::default());
    let id = call.principal.map(|p| SpiffeId::parse(p).unwrap());
    let mut headers = HeaderMap::new();
    let http = call.http.map(|(method, path, hs)| {
        for (k, v) in hs {
            headers.append(
                HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        (method, path)
    });
    let attrs = Attributes {
        principal: id.as_ref(),
        source_cluster: call.cluster,
        port: call.port,
        http: http.map(|(method, path)| HttpAttrs {
            method,
            path,
            headers: &headers,
        }),
        jwt: call.jwt.as_ref(),
    };
    compiled.decide(&attrs)
}

fn allowed(policies: &[AuthorizationPolicy], call: &Call) -> bool {
    decide(policies, call).allowed()
}

#[test]
fn no_policy_allows_everything() {
    assert_eq!(decide(&[], &http(None, "GET", "/")), Decision::Allow(None));
    assert!(allowed(&[], &tcp(Some(OPS), 9000)));
}

#[test]
fn allow_policy_makes_the_default_deny() {
    let p = [policy(
        "shop/frontend-only",
        Action::Allow,
        vec![from(AuthorizationSource {
            principals: s(&[FRONTEND]),
            ..Default::default()
        })],
    )];
    assert_eq!(
        decide(&p, &http(Some(FRONTEND), "GET", "/")),
        Decision::Allow(Some(Decider {
            policy: "shop/frontend-only".into(),
            rule: 0
        }))
    );
    assert_eq!(
        decide(&p, &http(Some(CHECKOUT), "GET", "/")),
        Decision::NotAllowed
    );
    assert_eq!(decide(&p, &http(None, "GET", "/")), Decision::NotAllowed);
    assert_eq!(
        decide(&p, &http(None, "GET", "/")).rule(),
        "default-deny".to_string()
    );
    // An ALLOW policy with no rules allows nothing.
    let empty = [policy("shop/nothing", Action::Allow, vec![])];
    assert!(!allowed(&empty, &http(Some(FRONTEND), "GET", "/")));
    // A DENY policy with no rules denies nothing.
    let empty = [policy("shop/nothing", Action::Deny, vec![])];
    assert!(allowed(&empty, &http(Some(FRONTEND), "GET", "/")));
}

#[test]
fn deny_wins_over_allow() {
    let p = [
        policy(
            "shop/allow-shop",
            Action::Allow,
            vec![from(AuthorizationSource {
                namespaces: s(&["shop"]),
                ..Default::default()
            })],
        ),
        policy(
            "shop/no-admin",
            Action::Deny,
            vec![to(AuthorizationOperation {
                paths: s(&["/admin*"]),
                ..Default::default()
            })],
        ),
    ];
    assert!(allowed(&p, &http(Some(FRONTEND), "GET", "/items")));
    let d = decide(&p, &http(Some(FRONTEND), "GET", "/admin/users"));
    assert_eq!(d.rule(), "shop/no-admin#0");
    assert!(!d.allowed());
    assert!(!allowed(&p, &http(Some(OPS), "GET", "/items")));
}

#[test]
fn source_matchers() {
    let cases: &[(AuthorizationSource, &Call, bool)] = &[
        // principal wildcards: suffix, prefix, any
        (
            AuthorizationSource {
                principals: s(&["spiffe://eu-west.isthmus.local/ns/shop/sa/*"]),
                ..Default::default()
            },
            &http(Some(CHECKOUT), "GET", "/"),
            true,
        ),
        (
            AuthorizationSource {
                principals: s(&["spiffe://eu-west.isthmus.local/ns/shop/sa/*"]),
                ..Default::default()
            },
            &http(Some(OPS), "GET", "/"),
            false,
        ),
        (
            AuthorizationSource {
                principals: s(&["*/sa/frontend"]),
                ..Default::default()
            },
            &http(Some(REMOTE), "GET", "/"),
            true,
        ),
        (
            AuthorizationSource {
                principals: s(&["*"]),
                ..Default::default()
            },
            &http(None, "GET", "/"),
            false, // "*" means any authenticated peer
        ),
        (
            AuthorizationSource {
                namespaces: s(&["ops"]),
                ..Default::default()
            },
            &http(Some(OPS), "GET", "/"),
            true,
        ),
        (
            AuthorizationSource {
                trust_domains: s(&["us-east.isthmus.local"]),
                ..Default::default()
            },
            &http(Some(REMOTE), "GET", "/"),
            true,
        ),
        (
            AuthorizationSource {
                trust_domains: s(&["us-east.isthmus.local"]),
                ..Default::default()
            },
            &http(Some(FRONTEND), "GET", "/"),
            false,
        ),
        (
            AuthorizationSource {
                clusters: s(&["eu-west"]),
                ..Default::default()
            },
            &http(Some(FRONTEND), "GET", "/"),
            true,
        ),
        (
            AuthorizationSource {
                clusters: s(&["eu-west"]),
                ..Default::default()
            },
            &http(Some(REMOTE), "GET", "/"),
            false,
        ),
        // all parts of one source must match
        (
            AuthorizationSource {
                namespaces: s(&["shop"]),
                clusters: s(&["eu-west"]),
                ..Default::default()
            },
            &http(Some(REMOTE), "GET", "/"),
            false,
        ),
    ];
    for (i, (src, call, want)) in cases.iter().enumerate() {
        let p = [policy("t/p", Action::Allow, vec![from(src.clone())])];
        assert_eq!(allowed(&p, call), *want, "case {i}: {src:?}");
    }
}

#[test]
fn operation_matchers() {
    let op = |ports: &[u32], methods: &[&str], paths: &[&str]| AuthorizationOperation {
        ports: ports.to_vec(),
        methods: s(methods),
        paths: s(paths),
    };
    let cases: &[(AuthorizationOperation, &Call, bool)] = &[
        (op(&[8080], &[], &[]), &http(None, "GET", "/"), true),
        (op(&[9090], &[], &[]), &http(None, "GET", "/"), false),
        (
            op(&[], &["GET", "HEAD"], &[]),
            &http(None, "GET", "/"),
            true,
        ),
        (op(&[], &["get"], &[]), &http(None, "GET", "/"), true),
        (op(&[], &["POST"], &[]), &http(None, "GET", "/"), false),
        (
            op(&[], &[], &["/items"]),
            &http(None, "GET", "/items"),
            true,
        ),
        (
            op(&[], &[], &["/items"]),
            &http(None, "GET", "/items/1"),
            false,
        ),
        (
            op(&[], &[], &["/items/*"]),
            &http(None, "GET", "/items/1"),
            true,
        ),
        (
            op(&[], &[], &["*.css"]),
            &http(None, "GET", "/a/b.css"),
            true,
        ),
        (op(&[], &["GET"], &["/x"]), &http(None, "POST", "/x"), false),
        // TCP: ports apply, HTTP-only parts make an ALLOW rule not match
        (op(&[9000], &[], &[]), &tcp(None, 9000), true),
        (op(&[9000], &["GET"], &[]), &tcp(None, 9000), false),
        (op(&[], &[], &["/x"]), &tcp(None, 9000), false),
    ];
    for (i, (o, call, want)) in cases.iter().enumerate() {
        let p = [policy("t/p", Action::Allow, vec![to(o.clone())])];
        assert_eq!(allowed(&p, call), *want, "case {i}: {o:?}");
    }
}

#[test]
fn tcp_deny_rules_ignore_http_parts() {
    // A DENY of GET /admin from ops also closes ops' TCP connections:
    // failing closed, as Istio does.
    let p = [policy(
        "t/deny-ops-admin",
        Action::Deny,
        vec![AuthorizationRule {
            from: vec![AuthorizationSource {
                namespaces: s(&["ops"]),
                ..Default::default()
            }],
            to: vec![AuthorizationOperation {
                methods: s(&["GET"]),
                paths: s(&["/admin"]),
                ..Default::default()
            }],
            when: vec![AuthorizationCondition {
                key: "request.headers[x-debug]".into(),
                values: s(&["1"]),
            }],
        }],
    )];
    assert!(!allowed(&p, &tcp(Some(OPS), 9000)));
    assert!(allowed(&p, &tcp(Some(FRONTEND), 9000)));
    assert!(allowed(&p, &http(Some(OPS), "GET", "/admin")), "no x-debug");
    let mut c = http(Some(OPS), "GET", "/admin");
    c.http = Some(("GET", "/admin", &[("x-debug", "1")]));
    assert!(!allowed(&p, &c));
}

#[test]
fn conditions_on_headers_and_claims() {
    let when = |key: &str, values: &[&str]| AuthorizationRule {
        when: vec![AuthorizationCondition {
            key: key.into(),
            values: s(values),
        }],
        ..Default::default()
    };
    let mut c = http(None, "GET", "/");
    c.http = Some(("GET", "/", &[("x-canary", "yes"), ("x-canary", "other")]));
    let p = [policy(
        "t/p",
        Action::Allow,
        vec![when("request.headers[X-Canary]", &["yes"])],
    )];
    assert!(allowed(&p, &c), "any of a repeated header");
    assert!(!allowed(&p, &http(None, "GET", "/")));

    let claims = |v: serde_json::Value| Claims {
        principal: "https://issuer.example/alice".into(),
        claims: v.as_object().unwrap().clone(),
    };
    let p = [policy(
        "t/p",
        Action::Allow,
        vec![when("request.auth.claims[groups]", &["admins"])],
    )];
    let mut c = http(None, "GET", "/");
    c.jwt = Some(claims(serde_json::json!({"groups": ["dev", "admins"]})));
    assert!(allowed(&p, &c), "array claim contains");
    c.jwt = Some(claims(serde_json::json!({"groups": "admins"})));
    assert!(allowed(&p, &c), "string claim");
    c.jwt = Some(claims(serde_json::json!({"groups": ["dev"]})));
    assert!(!allowed(&p, &c));
    c.jwt = None;
    assert!(!allowed(&p, &c), "no token, no claims");

    let p = [policy(
        "t/p",
        Action::Allow,
        vec![from(AuthorizationSource {
            request_principals: s(&["https://issuer.example/*"]),
            ..Default::default()
        })],
    )];
    c.jwt = Some(claims(serde_json::json!({})));
    assert!(allowed(&p, &c));
    c.jwt = None;
    assert!(!allowed(&p, &c));
}

#[test]
fn rules_and_lists_combine_as_documented() {
    // from AND to within a rule; any rule of a policy.
    let p = [policy(
        "t/p",
        Action::Allow,
        vec![
            AuthorizationRule {
                from: vec![AuthorizationSource {
                    namespaces: s(&["ops"]),
                    ..Default::default()
                }],
                to: vec![AuthorizationOperation {
                    paths: s(&["/metrics"]),
                    ..Default::default()
                }],
                ..Default::default()
            },
            from(AuthorizationSource {
                principals: s(&[FRONTEND]),
                ..Default::default()
            }),
        ],
    )];
    assert!(allowed(&p, &http(Some(OPS), "GET", "/metrics")));
    assert!(!allowed(&p, &http(Some(OPS), "GET", "/items")));
    let d = decide(&p, &http(Some(FRONTEND), "GET", "/items"));
    assert_eq!(d.rule(), "t/p#1");
}

#[test]
fn selectors_choose_the_policies_of_a_workload() {
    let mut only_db = policy("t/db", Action::Deny, vec![AuthorizationRule::default()]);
    only_db.selector.insert("app".into(), "db".into());
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    assert!(Policies::compile(std::slice::from_ref(&only_db), &labels("web")).is_empty());
    let compiled = Policies::compile(&[only_db], &labels("db"));
    assert!(!compiled.is_empty());
}
