//! `install --context` and `uninstall --context`: the rendered objects
//! through the API, as `kubectl apply --server-side` would (field
//! manager `isthmusctl`), CRDs first and waited for until established;
//! and deleted in reverse, with what the control plane made at run time
//! (the CA root ConfigMaps in injected namespaces, the ServiceImports).

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::describe;

pub const FIELD_MANAGER: &str = "isthmusctl";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{object}: {what} failed: {source} (does this context's user have the rights? `isthmusctl check --pre --context …` lists what is missing)"
    )]
    Api {
        object: String,
        what: &'static str,
        source: kube::Error,
    },
    #[error("{object}: no apiVersion/kind/name")]
    Malformed { object: String },
    #[error(
        "CRD {name} is not established after {secs}s: see `kubectl get crd {name} -o yaml` (conditions)"
    )]
    NotEstablished { name: String, secs: u64 },
}

/// The API resource of an object (the kinds `install` renders and ours;
/// a plural is the lowercase kind with `s`, `es` after `s`/`sh`, `ies`
/// for a final `y`).
pub fn api_resource(object: &Value) -> Option<(ApiResource, bool)> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let lower = kind.to_ascii_lowercase();
    let plural = if lower.ends_with('s') || lower.ends_with("sh") {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let namespaced = object["metadata"]["namespace"].is_string();
    Some((ApiResource::from_gvk_with_plural(&gvk, &plural), namespaced))
}

fn api_for(client: &Client, object: &Value) -> Result<(Api<DynamicObject>, String), ApplyError> {
    let malformed = || ApplyError::Malformed {
        object: describe(object),
    };
    let (ar, namespaced) = api_resource(object).ok_or_else(malformed)?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(malformed)?
        .to_string();
    let api = if namespaced {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    Ok((api, name))
}

/// Server-side applies each object in order; returns what was applied.
pub async fn apply(client: &Client, objects: &[Value]) -> Result<Vec<String>, ApplyError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut done = Vec::new();
    for o in objects {
        let (api, name) = api_for(client, o)?;
        api.patch(&name, &params, &Patch::Apply(o))
            .await
            .map_err(|source| ApplyError::Api {
                object: describe(o),
                what: "apply",
                source,
            })?;
        done.push(describe(o));
    }
    Ok(done)
}

/// Waits until every CRD of `crds` is Established (polled each `every`).
pub async fn wait_established(
    client: &Client,
    crds: &[Value],
    timeout: Duration,
    every: Duration,
) -> Result<(), ApplyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    for crd in crds {
        let (api, name) = api_for(client, crd)?;
        loop {
            let got = api.get(&name).await.map_err(|source| ApplyError::Api {
                object: describe(crd),
                what: "reading",
                source,
            })?;
            let established = got.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApplyError::NotEstablished {
                    name,
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(every).await;
        }
    }
    Ok(())
}

/// What the control plane makes at run time outside what `install`
/// renders: (apiVersion, kind) listed by its label in every namespace.
pub const MADE_AT_RUN_TIME: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("multicluster.x-k8s.io/v1alpha1", "ServiceImport"),
];

/// Deletes `objects` in reverse order (gone already is fine). Returns
/// what was deleted.
pub async fn delete(client: &Client, objects: &[Value]) -> Result<Vec<String>, ApplyError> {
    let mut done = Vec::new();
    for o in objects.iter().rev() {
        let (api, name) = api_for(client, o)?;
        let r = api
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ());
        gone(&mut done, r, describe(o))?;
    }
    Ok(done)
}

fn gone(
    done: &mut Vec<String>,
    r: Result<(), kube::Error>,
    what: String,
) -> Result<(), ApplyError> {
    match r {
        Ok(()) => {
            done.push(what);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ApplyError::Api {
            object: what,
            what: "delete",
            source,
        }),
    }
}

/// Deletes what the control plane made at run time (labelled
/// `isthmus.dev/managed-by`), after the control plane is gone (it would
/// make them again).
pub async fn delete_made_at_run_time(client: &Client) -> Result<Vec<String>, ApplyError> {
    use isthmus_federation::writers::imports::{MANAGED_LABEL, MANAGER};
    let mut done = Vec::new();
    for (api_version, kind) in MADE_AT_RUN_TIME {
        let probe = serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
        let (ar, _) = api_resource(&probe).expect("a kind");
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let listed = all
            .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}={MANAGER}")))
            .await;
        let items = match listed {
            Ok(l) => l.items,
            // No MCS CRDs (never installed, or removed first): nothing.
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(source) => {
                return Err(ApplyError::Api {
                    object: format!("{kind}s labelled {MANAGED_LABEL}={MANAGER}"),
                    what: "list",
                    source,
                });
            }
        };
        for item in items {
            let (Some(ns), Some(name)) = (item.metadata.namespace, item.metadata.name) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
            let r = api
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
            gone(&mut done, r, format!("{kind} {ns}/{name}"))?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_of_the_kinds_we_write() {
        let plural = |api_version: &str, kind: &str| {
            let o = serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": {}});
            api_resource(&o).unwrap().0.plural
        };
        assert_eq!(plural("isthmus.dev/v1alpha1", "Mesh"), "meshes");
        assert_eq!(
            plural("isthmus.dev/v1alpha1", "DestinationPolicy"),
            "destinationpolicies"
        );
        assert_eq!(
            plural("policy/v1", "PodDisruptionBudget"),
            "poddisruptionbudgets"
        );
        assert_eq!(plural("v1", "Namespace"), "namespaces");
        assert_eq!(
            plural(
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration"
            ),
            "mutatingwebhookconfigurations"
        );
        let o = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}});
        assert_eq!(api_resource(&o).unwrap().0.group, "apps");
    }
}
