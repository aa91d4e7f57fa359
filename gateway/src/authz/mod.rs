//! Authorization decisions (pure): the workload's AuthorizationPolicies,
//! compiled once per configuration, applied to one connection or request.
//!
//! Semantics (Istio's): a DENY rule that matches denies, whatever ALLOW
//! says; when there is any ALLOW policy, a request must match one of their
//! rules; with no policy at all everything is allowed. A rule matches when
//! every part present matches (`from` AND `to` AND `when`), a list when any
//! entry does. For opaque TCP there is no method, path, header or token: an
//! ALLOW rule that names any of them never matches a TCP connection, and a
//! DENY rule is applied without them, so both err on the side of refusing.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use isthmus_api::model;

use isthmus_mesh::SpiffeId;

/// A string pattern: `*`, `prefix*`, `*suffix` or an exact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub fn new(s: &str) -> Self {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

fn patterns(v: &[String]) -> Vec<Pattern> {
    v.iter().map(|s| Pattern::new(s)).collect()
}

#[derive(Debug, Clone, Default)]
struct Source {
    principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    trust_domains: Vec<Pattern>,
    clusters: Vec<Pattern>,
    request_principals: Vec<Pattern>,
}

#[derive(Debug, Clone, Default)]
struct Operation {
    ports: Vec<u16>,
    methods: Vec<String>,
    paths: Vec<Pattern>,
}

#[derive(Debug, Clone)]
enum Key {
    Header(HeaderName),
    Claim(String),
}

#[derive(Debug, Clone)]
struct Condition {
    key: Key,
    values: Vec<Pattern>,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Policy {
    name: Arc<str>,
    rules: Vec<Rule>,
}

/// The policies selecting one workload.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    allow: Vec<Policy>,
    deny: Vec<Policy>,
}

/// A verified JWT: `iss/sub` and its claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub principal: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The HTTP side of a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// What a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The mTLS peer, when the connection came over the mesh transport.
    pub principal: Option<&'a SpiffeId>,
    /// The cluster the peer's trust domain belongs to.
    pub source_cluster: Option<&'a str>,
    /// The destination (application) port.
    pub port: u16,
    /// None for opaque TCP.
    pub http: Option<HttpAttrs<'a>>,
    pub jwt: Option<&'a Claims>,
}

/// Which policy and rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    pub policy: Arc<str>,
    pub rule: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy applies (`None`) or an ALLOW rule matched.
    Allow(Option<Decider>),
    /// A DENY rule matched.
    Deny(Decider),
    /// ALLOW policies exist and none matched.
    NotAllowed,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// For the access log and metrics: `<policy>#<rule>`, `default-deny`
    /// or `none`.
    pub fn rule(&self) -> String {
        match self {
            Decision::Allow(Some(d)) | Decision::Deny(d) => format!("{}#{}", d.policy, d.rule),
            Decision::Allow(None) => "none".into(),
            Decision::NotAllowed => "default-deny".into(),
        }
    }

    /// The policy that decided (a metric label).
    pub fn policy(&self) -> &str {
        match self {
            Decision::Allow(Some(d)) | Decision::Deny(d) => &d.policy,
            Decision::Allow(None) => "none",
            Decision::NotAllowed => "default-deny",
        }
    }
}

/// Whether `selector` (pod labels) selects a workload with `labels`; an
/// empty selector selects all.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Policies {
    /// Compiles the policies among `all` that select a workload with `labels`.
    pub fn compile(all: &[model::AuthorizationPolicy], labels: &BTreeMap<String, String>) -> Self {
        let mut out = Policies::default();
        for p in all.iter().filter(|p| selects(&p.selector, labels)) {
            let policy = Policy {
                name: p.name.as_str().into(),
                rules: p.rules.iter().map(compile_rule).collect(),
            };
            match p.action() {
                model::authorization_policy::Action::Allow => out.allow.push(policy),
                model::authorization_policy::Action::Deny => out.deny.push(policy),
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Decides for one connection (TCP) or request (HTTP).
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        for p in &self.deny {
            if let Some(rule) = p.rules.iter().position(|r| r.matches(a, true)) {
                return Decision::Deny(Decider {
                    policy: p.name.clone(),
                    rule,
                });
            }
        }
        if self.allow.is_empty() {
            return Decision::Allow(None);
        }
        for p in &self.allow {
            if let Some(rule) = p.rules.iter().position(|r| r.matches(a, false)) {
                return Decision::Allow(Some(Decider {
                    policy: p.name.clone(),
                    rule,
                }));
            }
        }
        Decision::NotAllowed
    }
}

fn compile_rule(r: &model::AuthorizationRule) -> Rule {
    Rule {
        from: r
            .from
            .iter()
            .map(|s| Source {
                principals: patterns(&s.principals),
                namespaces: patterns(&s.namespaces),
                trust_domains: patterns(&s.trust_domains),
                clusters: patterns(&s.clusters),
                request_principals: patterns(&s.request_principals),
            })
            .collect(),
        to: r
            .to
            .iter()
            .map(|o| Operation {
                ports: o
                    .ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
                methods: o.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                paths: patterns(&o.paths),
            })
            .collect(),
        when: r
            .when
            .iter()
            .filter_map(|c| {
                let inner = |prefix: &str| {
                    c.key
                        .strip_prefix(prefix)
                        .and_then(|k| k.strip_suffix(']'))
                        .map(str::to_string)
                };
                let key = if let Some(h) = inner("request.headers[") {
                    Key::Header(HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()?)
                } else {
                    Key::Claim(inner("request.auth.claims[")?)
                };
                Some(Condition {
                    key,
                    values: patterns(&c.values),
                })
            })
            .collect(),
    }
}

/// Present list → any entry matches `v` (absent `v` matches nothing).
fn any(list: &[Pattern], v: Option<&str>) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|p| p.matches(v)))
}

impl Rule {
    /// `deny`: evaluating for a DENY policy, where HTTP-only parts are left
    /// out for TCP (the rule matches more); for ALLOW they make the rule
    /// not match TCP (it matches less).
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let from = self.from.is_empty() || self.from.iter().any(|s| s.matches(a, deny));
        let to = self.to.is_empty() || self.to.iter().any(|o| o.matches(a, deny));
        let when = self.when.iter().all(|c| c.matches(a, deny));
        from && to && when
    }
}

impl Source {
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let p = a.principal;
        let request_principal = if a.http.is_none() && deny {
            true
        } else {
            any(
                &self.request_principals,
                a.jwt.map(|c| c.principal.as_str()),
            )
        };
        any(&self.principals, p.map(SpiffeId::as_str))
            && any(&self.namespaces, p.and_then(SpiffeId::namespace))
            && any(&self.trust_domains, p.map(SpiffeId::trust_domain))
            && any(&self.clusters, a.source_cluster)
            && request_principal
    }
}

impl Operation {
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let port = self.ports.is_empty() || self.ports.contains(&a.port);
        let http_parts = !self.methods.is_empty() || !self.paths.is_empty();
        let http = match a.http {
            Some(h) => {
                (self.methods.is_empty() || self.methods.iter().any(|m| m == h.method))
                    && any(&self.paths, Some(h.path))
            }
            None => deny || !http_parts,
        };
        port && http
    }
}

impl Condition {
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        match &self.key {
            Key::Header(name) => match a.http {
                Some(h) => h
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| self.values.iter().any(|p| p.matches(v))),
                None => deny,
            },
            Key::Claim(claim) => match (a.http, a.jwt) {
                (None, _) => deny,
                (Some(_), None) => false,
                (Some(_), Some(c)) => match c.claims.get(claim) {
                    Some(serde_json::Value::String(s)) => self.values.iter().any(|p| p.matches(s)),
                    Some(serde_json::Value::Array(items)) => items.iter().any(|i| {
                        i.as_str()
                            .is_some_and(|s| self.values.iter().any(|p| p.matches(s)))
                    }),
                    Some(other @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_))) => {
                        let s = other.to_string();
                        self.values.iter().any(|p| p.matches(&s))
                    }
                    _ => false,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests;
