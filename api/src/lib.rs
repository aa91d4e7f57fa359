//! isthmus-api: the data-plane configuration model shared by the control
//! plane and the proxies. The model is protobuf (`proto/`), compiled in
//! build.rs with serde impls for the proto3 JSON mapping, so the same
//! messages travel on the discovery stream (`discovery`, a tonic service)
//! and are read from YAML files.
//! No I/O and no Kubernetes types here.
#![forbid(unsafe_code)]

pub mod explain;
pub mod locate;
pub mod protocol;
pub mod resource;
pub mod topology;
pub mod validate;
pub mod yaml;

/// Generated protobuf code.
pub mod config {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/isthmus.config.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/isthmus.config.v1.serde.rs"));
    }
}

/// Generated discovery service (messages, client and server).
pub mod discovery {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/isthmus.discovery.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/isthmus.discovery.v1.serde.rs"));
    }
}

/// Generated CA service (messages, client and server).
pub mod ca {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/isthmus.ca.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/isthmus.ca.v1.serde.rs"));
    }
}

/// Generated federation service (control plane to control plane).
pub mod federation {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/isthmus.federation.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/isthmus.federation.v1.serde.rs"));
    }
}

/// Generated peer liveness (east-west gateway to its sidecars).
pub mod eastwest {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/isthmus.eastwest.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/isthmus.eastwest.v1.serde.rs"));
    }
}

/// The standard gRPC health protocol (a sidecar checks a gRPC app with it).
pub mod grpc_health {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)] // generated code
        include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
    }
}

pub use config::v1 as model;
pub use validate::{Issue, validate};

use locate::PathIndex;

/// A configuration problem located in its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedIssue {
    /// Field path as written in YAML, e.g. `services[0].routes[1].timeout`;
    /// empty when the text is not YAML at all.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for LocatedIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l} column {c}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration text was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.issues))]
pub struct ConfigError {
    pub issues: Vec<LocatedIssue>,
}

fn render(issues: &[LocatedIssue]) -> String {
    match issues {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for i in many {
                s.push_str("\n  ");
                s.push_str(&i.to_string());
            }
            s
        }
    }
}

/// Parses and validates a proxy configuration written in YAML (or JSON, a
/// subset of YAML). Every problem names its field path and line.
pub fn parse_yaml(text: &str) -> Result<model::ProxyConfig, ConfigError> {
    parse(text, true)
}

/// Parses a proxy's bootstrap (node and listeners; the services come from
/// the control plane): only syntax and types are checked here, the whole
/// configuration is validated when the first services arrive.
pub fn parse_bootstrap_yaml(text: &str) -> Result<model::ProxyConfig, ConfigError> {
    parse(text, false)
}

fn parse(text: &str, check: bool) -> Result<model::ProxyConfig, ConfigError> {
    let refused = |e: yaml::YamlError, hint: Option<&str>| ConfigError {
        issues: vec![LocatedIssue {
            line: e.position.map(|p| p.line),
            column: e.position.map(|p| p.column),
            message: with_hint(e.message, hint),
            path: e.path,
        }],
    };
    let value = yaml::to_value(text).map_err(|e| refused(e, None))?;
    let config: model::ProxyConfig = yaml::from_value(&value, text).map_err(|e| {
        let hint = yaml::value_at(&value, &e.path).and_then(serde_json::Value::as_str);
        refused(e, hint)
    })?;
    let issues = if check { validate(&config) } else { Vec::new() };
    if issues.is_empty() {
        return Ok(config);
    }
    let index = PathIndex::build(text);
    Err(ConfigError {
        issues: issues
            .into_iter()
            .map(|i| {
                let pos = index.position(&i.path);
                LocatedIssue {
                    line: pos.map(|p| p.line),
                    column: pos.map(|p| p.column),
                    path: i.path,
                    message: i.message,
                }
            })
            .collect(),
    })
}

/// Adds what to do for mistakes people make with the proto3 JSON mapping.
fn with_hint(message: String, token: Option<&str>) -> String {
    let Some(t) = token else { return message };
    let unit = ["ms", "us", "ns", "m", "h"].iter().find(|u| {
        t.strip_suffix(**u)
            .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
    });
    match unit {
        Some(u) => format!(
            "{message} ({t:?}: durations are seconds with an \"s\" suffix, e.g. \"0.25s\" for 250ms; unit {u:?} is not accepted)"
        ),
        None => message,
    }
}
