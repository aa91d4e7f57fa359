//! The CRDs `install --crds` renders: ours (generated from the Rust types,
//! as in `crds/`) and, pinned, those of the APIs we read but do not own
//! (`crds/third-party/`, copied verbatim from their releases): Gateway API
//! (HTTPRoute, GRPCRoute, ReferenceGrant) and Multi-Cluster Services
//! (ServiceExport, ServiceImport). A cluster that already has those from
//! another install keeps its own (`--gateway-api-crds=false`,
//! `--mcs-crds=false`).

use serde_json::Value;

use super::InstallError;

pub const GATEWAY_API_VERSION: &str = "v1.6.1";
pub const MCS_API_VERSION: &str = "v0.5.0";

/// (file, text) of the pinned Gateway API CRDs.
pub const GATEWAY_API: &[(&str, &str)] = &[
    (
        "gateway-api-v1.6.1/httproutes.yaml",
        include_str!("../../../crds/third-party/gateway-api-v1.6.1/httproutes.yaml"),
    ),
    (
        "gateway-api-v1.6.1/grpcroutes.yaml",
        include_str!("../../../crds/third-party/gateway-api-v1.6.1/grpcroutes.yaml"),
    ),
    (
        "gateway-api-v1.6.1/referencegrants.yaml",
        include_str!("../../../crds/third-party/gateway-api-v1.6.1/referencegrants.yaml"),
    ),
];

/// (file, text) of the pinned MCS CRDs.
pub const MCS_API: &[(&str, &str)] = &[
    (
        "mcs-api-v0.5.0/serviceexports.yaml",
        include_str!("../../../crds/third-party/mcs-api-v0.5.0/serviceexports.yaml"),
    ),
    (
        "mcs-api-v0.5.0/serviceimports.yaml",
        include_str!("../../../crds/third-party/mcs-api-v0.5.0/serviceimports.yaml"),
    ),
];

/// Which CRDs to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Which {
    pub gateway_api: bool,
    pub mcs: bool,
}

impl Default for Which {
    fn default() -> Self {
        Self {
            gateway_api: true,
            mcs: true,
        }
    }
}

fn parse(file: &str, text: &str) -> Result<Value, InstallError> {
    isthmus_api::yaml::to_value(text).map_err(|e| InstallError::Yaml {
        what: format!("crds/third-party/{file}"),
        reason: e.to_string(),
    })
}

/// The CRDs, ours first.
pub fn objects(which: Which) -> Result<Vec<Value>, InstallError> {
    let mut out = Vec::new();
    for crd in isthmus_federation::crdgen::crds() {
        let mut v = serde_json::to_value(&crd).map_err(|e| InstallError::Yaml {
            what: crd.metadata.name.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        v["metadata"]["labels"] = super::labels("isthmus-crds");
        out.push(v);
    }
    let mut third: Vec<&(&str, &str)> = Vec::new();
    if which.gateway_api {
        third.extend(GATEWAY_API);
    }
    if which.mcs {
        third.extend(MCS_API);
    }
    for (file, text) in third {
        out.push(parse(file, text)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name, group and served versions of a CRD.
    fn served(crd: &Value) -> (String, String, Vec<String>) {
        let versions = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["served"] == true)
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        (
            crd["spec"]["names"]["kind"].as_str().unwrap().to_string(),
            crd["spec"]["group"].as_str().unwrap().to_string(),
            versions,
        )
    }

    #[test]
    fn every_custom_kind_the_control_plane_watches_is_served_by_a_rendered_crd() {
        let crds: Vec<_> = objects(Which::default())
            .unwrap()
            .iter()
            .map(served)
            .collect();
        for (api_version, kind, _) in isthmus_federation::store::KINDS {
            let Some((group, version)) = api_version.split_once('/') else {
                continue; // core
            };
            if !group.contains('.') || group.ends_with(".k8s.io") && !group.contains("x-k8s") {
                // Built in (discovery.k8s.io); gateway.networking.k8s.io is a CRD.
                if group != "gateway.networking.k8s.io" {
                    continue;
                }
            }
            assert!(
                crds.iter()
                    .any(|(k, g, vs)| k == kind && g == group && vs.iter().any(|v| v == version)),
                "{kind} {api_version}: no rendered CRD serves it"
            );
        }
        let versions = |c: &[(&str, &str)], v: &str| {
            c.iter()
                .all(|(f, t)| f.contains(v) && (!t.contains("bundle-version") || t.contains(v)))
        };
        assert!(versions(GATEWAY_API, GATEWAY_API_VERSION));
        assert!(versions(MCS_API, MCS_API_VERSION));
    }

    #[test]
    fn third_party_crds_can_be_left_out() {
        let all = objects(Which::default()).unwrap().len();
        let ours = isthmus_federation::crdgen::crds().len();
        assert_eq!(all, ours + GATEWAY_API.len() + MCS_API.len());
        let none = objects(Which {
            gateway_api: false,
            mcs: false,
        })
        .unwrap();
        assert_eq!(none.len(), ours);
        assert!(none.iter().all(|c| c["spec"]["group"] == "isthmus.dev"));
    }
}
