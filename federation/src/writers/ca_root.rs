//! `kube` mode: the CA root as a ConfigMap (`isthmus-ca-root`, key
//! `root-cert.pem`) in the control plane's namespace and in every
//! namespace labelled `isthmus.dev/inject=enabled`, so that the east-west
//! gateway and injected sidecars can verify the control plane before they
//! hold a certificate (it is their `--ca-roots`). Public data only: the
//! root's private key stays in the Secret `isthmus-ca`. A namespace that
//! loses the label keeps its ConfigMap (pods still running there read it).

use std::collections::{BTreeMap, BTreeSet};

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::imports::{MANAGED_LABEL, MANAGER};
use super::status::FIELD_MANAGER;
use crate::store::{Resource, Snapshot};

pub const CONFIG_MAP: &str = "isthmus-ca-root";
pub const KEY: &str = "root-cert.pem";
/// The namespace label that turns on sidecar injection (and brings the
/// root along).
pub const INJECT_LABEL: &str = "isthmus.dev/inject";

/// Where the root goes (pure): `own`, and each namespace of `snap`
/// labelled for injection.
pub fn namespaces(snap: &Snapshot, own: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([own.to_string()]);
    for (key, r) in snap.of_kind("Namespace") {
        let Resource::Namespace(ns) = r else {
            continue;
        };
        let enabled = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(INJECT_LABEL))
            .is_some_and(|v| v == "enabled");
        if enabled {
            out.insert(key.name.clone());
        }
    }
    out
}

/// Writes the root where it is missing or changed (the leader only).
pub struct RootWriter {
    client: Client,
    /// Namespace → the PEM last written there.
    written: BTreeMap<String, String>,
}

impl RootWriter {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: BTreeMap::new(),
        }
    }

    /// Forgets what was written (leadership changed hands).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Applies the ConfigMap holding `pem` in each of `namespaces` where it
    /// was not written yet. Returns how many were written, and what failed
    /// (retried on the next call).
    pub async fn write(
        &mut self,
        pem: &str,
        namespaces: &BTreeSet<String>,
    ) -> (usize, Vec<String>) {
        let (mut n, mut errors) = (0, Vec::new());
        if pem.is_empty() {
            return (0, errors);
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for ns in namespaces {
            if self.written.get(ns).is_some_and(|w| w == pem) {
                continue;
            }
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(self.client.clone(), ns);
            let object = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CONFIG_MAP,
                    "namespace": ns,
                    "labels": {MANAGED_LABEL: MANAGER},
                },
                "data": {KEY: pem},
            });
            match api.patch(CONFIG_MAP, &params, &Patch::Apply(&object)).await {
                Ok(_) => {
                    n += 1;
                    self.written.insert(ns.clone(), pem.to_string());
                }
                Err(e) => errors.push(format!("ConfigMap {ns}/{CONFIG_MAP}: {e}")),
            }
        }
        (n, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectKey;
    use k8s_openapi::api::core::v1::Namespace;

    fn ns(name: &str, label: Option<&str>) -> (ObjectKey, Resource) {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels =
            label.map(|v| BTreeMap::from([(INJECT_LABEL.to_string(), v.to_string())]));
        (
            ObjectKey {
                namespace: None,
                name: name.into(),
            },
            Resource::Namespace(Box::new(n)),
        )
    }

    #[test]
    fn the_root_goes_to_its_own_namespace_and_every_injected_one() {
        let mut snap = Snapshot::default();
        for (k, r) in [
            ns("shop", Some("enabled")),
            ns("billing", Some("disabled")),
            ns("default", None),
            ns("web", Some("enabled")),
        ] {
            snap.objects
                .insert(("Namespace", k), std::sync::Arc::new(r));
        }
        let got: Vec<String> = namespaces(&snap, "isthmus-system").into_iter().collect();
        assert_eq!(got, ["isthmus-system", "shop", "web"]);
        let got: Vec<String> = namespaces(&Snapshot::default(), "mesh")
            .into_iter()
            .collect();
        assert_eq!(got, ["mesh"]);
    }
}
