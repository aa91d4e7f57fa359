//! `isthmusctl check` (as `linkerd check`, `subctl diagnose`): what is
//! known about a cluster (`Facts`, gathered through its API by `gather`)
//! judged by pure rules (`pre`, `installed`, `across`), each verdict with
//! what to do about it. `--pre` before installing: the API server's
//! version, the permissions the install needs, the CRDs already there, a
//! LoadBalancer hint. After: the control plane and gateway ready, the
//! injector reachable, the CA valid and not near expiry, each link's
//! transport and RTT (UDP blocked → the TCP fallback), the clocks of the
//! clusters checked together.

pub mod gather;

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::link::LinkRow;

/// The oldest Kubernetes with native sidecars (init containers with
/// `restartPolicy: Always`), which injection uses.
pub const MIN_MINOR: u32 = 29;
/// A CA root this close to expiry is a warning.
pub const CA_WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew between clusters that is a warning, and a failure
/// (certificates are backdated a minute; join tokens live minutes).
pub const SKEW_WARN: f64 = 2.0;
pub const SKEW_FAIL: f64 = 30.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The cluster (kubeconfig context) it is about; "" across clusters.
    pub cluster: String,
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// What `gather` learnt of one cluster. `None`: not looked at, or could
/// not be read (the reason is in `errors`).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub context: String,
    /// (minor version, gitVersion), or why the API server did not answer.
    pub version: Option<Result<(u32, String), String>>,
    /// Permissions install needs that the user lacks ("create
    /// customresourcedefinitions").
    pub denied: Vec<String>,
    /// The CRDs Isthmus reads: name → present (with its bundle version).
    pub crds: Vec<(String, Option<String>)>,
    /// The nodes' providerID scheme (kind, aws, gce, azure, ...).
    pub provider: Option<String>,
    /// Deployment → (desired, ready), None when it is missing.
    pub deployments: Vec<(String, Option<(i32, i32)>)>,
    /// The injector's configuration: exists, with a caBundle.
    pub webhook_configured: Option<bool>,
    pub webhook_ca_bundle: bool,
    /// A pod created with dryRun in an injected namespace: injected, or
    /// why not (None: no namespace is labelled for injection).
    pub webhook_dry_run: Option<Result<bool, String>>,
    /// The CA root's expiry, or why it could not be read.
    pub ca_not_after: Option<Result<SystemTime, String>>,
    /// The API server's clock minus ours (seconds), from its Date header.
    pub clock_offset: Option<f64>,
    pub links: Option<Vec<LinkRow>>,
    pub now: Option<SystemTime>,
}

fn check(f: &Facts, name: &str, status: Status, detail: String, fix: &str) -> Check {
    Check {
        cluster: f.context.clone(),
        name: name.into(),
        status,
        detail,
        fix: if status == Status::Ok {
            String::new()
        } else {
            fix.into()
        },
    }
}

fn api(f: &Facts) -> Check {
    match &f.version {
        None => check(f, "API server", Status::Fail, "not asked".into(), ""),
        Some(Err(e)) => check(
            f,
            "API server",
            Status::Fail,
            format!("no answer: {e}"),
            "check the kubeconfig context and that the cluster runs (kubectl --context … version)",
        ),
        Some(Ok((minor, git))) if *minor < MIN_MINOR => check(
            f,
            "Kubernetes version",
            Status::Fail,
            format!("{git}: sidecar injection needs 1.{MIN_MINOR} or later (native sidecars)"),
            "upgrade the cluster (kind: --image kindest/node:v1.33.1)",
        ),
        Some(Ok((_, git))) => check(f, "Kubernetes version", Status::Ok, git.clone(), ""),
    }
}

/// Before installing.
pub fn pre(f: &Facts) -> Vec<Check> {
    let mut out = vec![api(f)];
    if matches!(f.version, Some(Err(_)) | None) {
        return out;
    }
    out.push(if f.denied.is_empty() {
        check(f, "permissions", Status::Ok, "all install needs".into(), "")
    } else {
        check(
            f,
            "permissions",
            Status::Fail,
            format!("missing: {}", f.denied.join(", ")),
            "install as a cluster admin (ClusterRoles, CRDs, webhook configurations)",
        )
    });
    let missing: Vec<&str> = f
        .crds
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let present: Vec<String> = f
        .crds
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n} {v}")))
        .collect();
    out.push(if missing.is_empty() {
        check(f, "CRDs", Status::Ok, present.join(", "), "")
    } else {
        check(
            f,
            "CRDs",
            Status::Warn,
            format!("not yet installed: {}", missing.join(", ")),
            "isthmusctl install --crds installs them (pinned Gateway API and MCS); keep yours with --gateway-api-crds=false / --mcs-crds=false",
        )
    });
    let (status, detail, fix) = match f.provider.as_deref() {
        Some("kind") => (
            Status::Warn,
            "kind: LoadBalancer addresses need cloud-provider-kind (v0.5 or later for UDP)"
                .to_string(),
            "run it on the kind network (e2e/kind/up.sh does), or use MetalLB with a shared IP for TCP and UDP",
        ),
        Some(p @ ("aws" | "gce" | "azure")) => (
            Status::Ok,
            format!("{p}: its load balancers carry TCP and UDP on one Service (Kubernetes 1.26+)"),
            "",
        ),
        Some(p) => (
            Status::Warn,
            format!("{p}: check that its LoadBalancer carries UDP 15443 beside TCP"),
            "without UDP the gateways use the HTTP/2-over-TLS fallback (slower under loss)",
        ),
        None => (
            Status::Warn,
            "no node says which cloud it runs on".to_string(),
            "make sure a LoadBalancer controller gives isthmus-eastwest an address with UDP and TCP 15443",
        ),
    };
    out.push(check(f, "LoadBalancer (UDP)", status, detail, fix));
    out
}

/// After installing.
pub fn installed(f: &Facts) -> Vec<Check> {
    let mut out = vec![api(f)];
    if matches!(f.version, Some(Err(_)) | None) {
        return out;
    }
    for (name, state) in &f.deployments {
        out.push(match state {
            None => check(
                f,
                name,
                Status::Fail,
                "not installed".into(),
                "isthmusctl install --context …",
            ),
            Some((want, ready)) if ready < want || *want == 0 => check(
                f,
                name,
                Status::Fail,
                format!("{ready} of {want} replicas ready"),
                "kubectl -n isthmus-system describe deploy (events) and logs of its pods",
            ),
            Some((want, _)) => check(f, name, Status::Ok, format!("{want} ready"), ""),
        });
    }
    out.push(match (f.webhook_configured, f.webhook_ca_bundle, &f.webhook_dry_run) {
        (Some(false) | None, _, _) => check(
            f,
            "injector",
            Status::Fail,
            "no MutatingWebhookConfiguration isthmus-injector".into(),
            "isthmusctl install --context …",
        ),
        (Some(true), false, _) => check(
            f,
            "injector",
            Status::Fail,
            "its caBundle is empty: the control plane has not written it".into(),
            "check that isthmus-federation runs (its leader writes it) and its logs",
        ),
        (_, _, Some(Err(e))) => check(
            f,
            "injector",
            Status::Fail,
            format!("a test pod (dry run) was refused: {e}"),
            "the API server cannot reach the webhook: kubectl -n isthmus-system get endpointslices -l kubernetes.io/service-name=isthmus-federation",
        ),
        (_, _, Some(Ok(false))) => check(
            f,
            "injector",
            Status::Fail,
            "a test pod (dry run) came back without its sidecar".into(),
            "is the namespace labelled isthmus.dev/inject=enabled and the webhook's failurePolicy Ignore? see the control plane's logs",
        ),
        (_, _, Some(Ok(true))) => check(
            f,
            "injector",
            Status::Ok,
            "a test pod (dry run) gets its sidecar".into(),
            "",
        ),
        (_, _, None) => check(
            f,
            "injector",
            Status::Warn,
            "configured, not tried: no namespace is labelled isthmus.dev/inject=enabled".into(),
            "kubectl label namespace <ns> isthmus.dev/inject=enabled",
        ),
    });
    let now = f.now.unwrap_or_else(SystemTime::now);
    out.push(match &f.ca_not_after {
        None => check(f, "CA", Status::Fail, "not looked at".into(), ""),
        Some(Err(e)) => check(
            f,
            "CA",
            Status::Fail,
            e.clone(),
            "the control plane writes ConfigMap isthmus-system/isthmus-ca-root once it runs",
        ),
        Some(Ok(t)) if *t <= now => check(
            f,
            "CA",
            Status::Fail,
            "the root has expired".into(),
            "rotate the CA (plug in a new root with --ca-cert/--ca-key, or delete Secret isthmus-ca and restart the control plane)",
        ),
        Some(Ok(t)) => {
            let left = t.duration_since(now).unwrap_or_default();
            let days = left.as_secs() / 86_400;
            if left < CA_WARN_BEFORE {
                check(
                    f,
                    "CA",
                    Status::Warn,
                    format!("the root expires in {days} days"),
                    "rotate the CA before it expires",
                )
            } else {
                check(f, "CA", Status::Ok, format!("root valid {days} more days"), "")
            }
        }
    });
    for l in f.links.iter().flatten() {
        let name = format!("link to {}", l.peer);
        out.push(if !l.connected {
            check(
                f,
                &name,
                Status::Fail,
                if l.problem.is_empty() {
                    "not connected".into()
                } else {
                    l.problem.clone()
                },
                "isthmusctl link list; check the peer's gateway address and that UDP or TCP 15443 reaches it",
            )
        } else if l.transport.as_deref() == Some("h2") {
            check(
                f,
                &name,
                Status::Warn,
                format!(
                    "connected over the HTTP/2 fallback (UDP blocked?), RTT {}",
                    rtt(l.rtt_millis)
                ),
                "open UDP 15443 to the peer's load balancer (security groups, firewalls) for QUIC",
            )
        } else {
            check(
                f,
                &name,
                Status::Ok,
                format!(
                    "{} RTT {}, {} services imported",
                    l.transport.as_deref().unwrap_or("?"),
                    rtt(l.rtt_millis),
                    l.imported_services
                ),
                "",
            )
        });
    }
    out
}

fn rtt(ms: Option<f64>) -> String {
    ms.map(|m| format!("{m:.1} ms"))
        .unwrap_or_else(|| "?".into())
}

/// Across the clusters checked together: their clocks.
pub fn across(all: &[Facts]) -> Vec<Check> {
    let offsets: Vec<(&str, f64)> = all
        .iter()
        .filter_map(|f| f.clock_offset.map(|o| (f.context.as_str(), o)))
        .collect();
    let mut worst: Option<(&str, &str, f64)> = None;
    for (i, a) in offsets.iter().enumerate() {
        for b in &offsets[i + 1..] {
            let d = (a.1 - b.1).abs();
            if worst.is_none_or(|w| d > w.2) {
                worst = Some((a.0, b.0, d));
            }
        }
    }
    let Some((a, b, d)) = worst else {
        return Vec::new();
    };
    let status = if d >= SKEW_FAIL {
        Status::Fail
    } else if d >= SKEW_WARN {
        Status::Warn
    } else {
        Status::Ok
    };
    vec![Check {
        cluster: String::new(),
        name: "clock skew".into(),
        status,
        detail: format!("largest between {a} and {b}: {d:.1} s"),
        fix: if status == Status::Ok {
            String::new()
        } else {
            "synchronise the nodes' clocks (NTP): join tokens and certificates are checked against them".into()
        },
    }]
}

/// The verdicts as a table.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let who = if c.cluster.is_empty() {
            String::new()
        } else {
            format!("[{}] ", c.cluster)
        };
        out.push_str(&format!("{mark} {who}{}: {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("       fix: {}\n", c.fix));
        }
    }
    out
}

/// Whether any verdict fails.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

#[cfg(test)]
mod tests;
