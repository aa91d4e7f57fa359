//! `kube` mode: what this cluster imports, as MCS `ServiceImport` objects
//! (`kubectl get serviceimports -A`), one per clusterset service, in its
//! namespace: its ports and the clusters that serve it. They are labelled
//! ours; the translation does not read them back (imports live in memory,
//! from the sync), so they are a view, rewritten when the imports change
//! and deleted when a service is no longer imported.

use std::collections::BTreeMap;

use isthmus_api::model;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::status::FIELD_MANAGER;
use crate::store::{ObjectKey, Resource, Snapshot};
use crate::translate::imports::CLUSTERSET;
use crate::translate::services::Catalog;

/// Marks the ServiceImports this control plane owns.
pub const MANAGED_LABEL: &str = "isthmus.dev/managed-by";
pub const MANAGER: &str = "isthmus-federation";

fn app_protocol(p: i32) -> Option<&'static str> {
    match model::Protocol::try_from(p).ok()? {
        model::Protocol::Http => Some("http"),
        model::Protocol::Http2 => Some("kubernetes.io/h2c"),
        model::Protocol::Grpc => Some("grpc"),
        model::Protocol::Tcp => None,
    }
}

/// The ServiceImports (spec and status) for the clusterset services of
/// `catalog` (pure). `own` is this cluster's name, for local endpoints.
pub fn desired(catalog: &Catalog, own: &str) -> BTreeMap<ObjectKey, Value> {
    let mut out = BTreeMap::new();
    for (name, s) in &catalog.services {
        let Some((svc, ns)) = name
            .strip_suffix(CLUSTERSET)
            .and_then(|n| n.split_once('.'))
        else {
            continue;
        };
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"port": p.port, "protocol": "TCP"});
                if !p.name.is_empty() {
                    port["name"] = json!(p.name);
                }
                if let Some(a) = app_protocol(p.protocol) {
                    port["appProtocol"] = json!(a);
                }
                port
            })
            .collect();
        // The clusters exporting it: we do when our Service is exported
        // (ready endpoints or not), the others through their gateways.
        let mut clusters: Vec<&str> = s
            .endpoints
            .iter()
            .filter(|e| !e.via_cluster.is_empty())
            .map(|e| e.via_cluster.as_str())
            .collect();
        if catalog
            .exported
            .contains(&crate::translate::services::service_name(svc, ns))
        {
            clusters.push(own);
        }
        clusters.sort_unstable();
        clusters.dedup();
        out.insert(
            ObjectKey {
                namespace: Some(ns.to_string()),
                name: svc.to_string(),
            },
            json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceImport",
                "metadata": {"name": svc, "namespace": ns, "labels": {MANAGED_LABEL: MANAGER}},
                "spec": {"type": "ClusterSetIP", "ports": ports},
                "status": {"clusters": clusters.iter().map(|c| json!({"cluster": c})).collect::<Vec<_>>()},
            }),
        );
    }
    out
}

/// Writes what changed since the last write (the leader only).
pub struct ImportWriter {
    client: Client,
    written: BTreeMap<ObjectKey, Value>,
}

impl ImportWriter {
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

    fn api(&self, ns: &str) -> Api<DynamicObject> {
        let ar = crate::store::kube::api_resource("ServiceImport");
        Api::namespaced_with(self.client.clone(), ns, &ar)
    }

    /// Applies the `desired` ServiceImports that changed and deletes ours
    /// that `snap` still has but are no longer desired. Returns how many
    /// objects were written or deleted, and what failed.
    pub async fn write(
        &mut self,
        desired: &BTreeMap<ObjectKey, Value>,
        snap: &Snapshot,
    ) -> (usize, Vec<String>) {
        let (mut n, mut errors) = (0, Vec::new());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for (key, obj) in desired {
            if self.written.get(key) == Some(obj) {
                continue;
            }
            let ns = key.namespace.as_deref().unwrap_or("default");
            let api = self.api(ns);
            let mut object = obj.clone();
            let status = object
                .as_object_mut()
                .and_then(|o| o.remove("status"))
                .unwrap_or(Value::Null);
            let result = async {
                api.patch(&key.name, &params, &Patch::Apply(&object))
                    .await?;
                let mut s = object.clone();
                s["status"] = status;
                s.as_object_mut().map(|o| o.remove("spec"));
                api.patch_status(&key.name, &params, &Patch::Apply(&s))
                    .await
            }
            .await;
            match result {
                Ok(_) => {
                    n += 1;
                    self.written.insert(key.clone(), obj.clone());
                }
                Err(e) => errors.push(format!("ServiceImport {key}: {e}")),
            }
        }
        for (key, r) in snap.of_kind("ServiceImport") {
            let Resource::ServiceImport(si) = r else {
                continue;
            };
            let ours = si
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .is_some_and(|v| v == MANAGER);
            if !ours || desired.contains_key(key) {
                continue;
            }
            let api = self.api(key.namespace.as_deref().unwrap_or("default"));
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => n += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => errors.push(format!("deleting ServiceImport {key}: {e}")),
            }
            self.written.remove(key);
        }
        (n, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_service_import_per_clusterset_service_with_its_clusters() {
        let mut c = Catalog::default();
        let ep = |via: &str| model::Endpoint {
            address: "10.0.0.1".into(),
            via_cluster: via.into(),
            ..Default::default()
        };
        c.services.insert(
            "catalog.shop.svc.clusterset.local".into(),
            model::Service {
                name: "catalog.shop.svc.clusterset.local".into(),
                ports: vec![model::ServicePort {
                    port: 80,
                    name: "http".into(),
                    protocol: model::Protocol::Http as i32,
                    target_port: 8080,
                }],
                endpoints: vec![ep(""), ep("eu-central"), ep("eu-central")],
                ..Default::default()
            },
        );
        c.services
            .insert("catalog.shop".into(), model::Service::default());
        c.exported.insert("catalog.shop".into());
        c.services
            .insert("catalog-eu-central.shop".into(), model::Service::default());
        let d = desired(&c, "eu-west");
        assert_eq!(d.len(), 1, "only clusterset names: {d:?}");
        let (key, si) = d.iter().next().unwrap();
        assert_eq!(
            (key.namespace.as_deref(), key.name.as_str()),
            (Some("shop"), "catalog")
        );
        assert_eq!(si["metadata"]["labels"][MANAGED_LABEL], MANAGER);
        assert_eq!(
            si["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "name": "http", "appProtocol": "http"}])
        );
        assert_eq!(si["spec"]["type"], "ClusterSetIP");
        assert_eq!(
            si["status"]["clusters"],
            json!([{"cluster": "eu-central"}, {"cluster": "eu-west"}])
        );
    }
}
