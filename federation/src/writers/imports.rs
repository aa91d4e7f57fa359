//! `kube` mode: what this cluster imports, as MCS `ServiceImport` objects
//! (`kubectl get serviceimports -A`), one per clusterset service, in its
//! namespace: its ports, its ClusterSet IP (`spec.ips`, what CoreDNS's
//! `multicluster` plugin answers), the clusters that serve it, and the
//! per-cluster names' ClusterSet IPs (annotation `isthmus.dev/cluster-ips`).
//! They are labelled ours. Imports themselves live in memory (from the
//! sync); the translation reads back only the addresses, so that they
//! outlive a restart (`translate::vips::persisted`). Rewritten when the
//! imports change, deleted when a service is no longer imported.

use std::collections::BTreeMap;

use isthmus_api::model;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::status::FIELD_MANAGER;
use crate::store::{ObjectKey, Resource, Snapshot};
use crate::translate::imports::CLUSTERSET;
use crate::translate::services::Catalog;
use crate::translate::vips::CLUSTER_IPS_ANNOTATION;

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
        // `<svc>.<ns>.svc.clusterset.local` (a headless service's pods'
        // names have more labels: they go in its annotation).
        let Some((svc, ns)) = name
            .strip_suffix(CLUSTERSET)
            .and_then(|n| n.split_once('.'))
            .filter(|(_, ns)| !ns.contains('.'))
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
        let kind = if catalog.headless.contains(name) {
            "Headless"
        } else {
            "ClusterSetIP"
        };
        let mut spec = json!({"type": kind, "ports": ports});
        if !s.vips.is_empty() {
            spec["ips"] = json!(s.vips);
        }
        // The per-cluster and per-pod names' addresses, kept with the
        // clusterset one (`vips::persisted` reads them back).
        let per_cluster: BTreeMap<String, &str> = catalog
            .imported
            .iter()
            .filter(|(_, i)| i.namespace == ns && i.service == svc)
            .filter_map(|(n, i)| {
                let vip = catalog.services.get(n)?.vips.first()?;
                Some((i.annotation_key()?, vip.as_str()))
            })
            .collect();
        let mut metadata =
            json!({"name": svc, "namespace": ns, "labels": {MANAGED_LABEL: MANAGER}});
        if !per_cluster.is_empty() {
            metadata["annotations"] = json!({
                CLUSTER_IPS_ANNOTATION: serde_json::to_string(&per_cluster).expect("strings"),
            });
        }
        out.insert(
            ObjectKey {
                namespace: Some(ns.to_string()),
                name: svc.to_string(),
            },
            json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceImport",
                "metadata": metadata,
                "spec": spec,
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
    mcs: crate::store::kube::Mcs,
}

impl ImportWriter {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: BTreeMap::new(),
            mcs: Default::default(),
        }
    }

    /// Writes ServiceImports in this version (`Mcs::discover`).
    pub fn with_mcs(mut self, mcs: crate::store::kube::Mcs) -> Self {
        self.mcs = mcs;
        self
    }

    /// Forgets what was written (leadership changed hands).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    fn api(&self, ns: &str) -> Api<DynamicObject> {
        let ar = crate::store::kube::api_resource_in("ServiceImport", self.mcs);
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
            object["apiVersion"] = json!(format!(
                "{}/{}",
                crate::store::kube::Mcs::GROUP,
                self.mcs.version()
            ));
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
                vips: vec!["240.240.0.1".into()],
                ..Default::default()
            },
        );
        let imported = |cluster: Option<&str>| crate::translate::vips::Imported {
            namespace: "shop".into(),
            service: "catalog".into(),
            cluster: cluster.map(str::to_string),
            pod: None,
        };
        c.imported
            .insert("catalog.shop.svc.clusterset.local".into(), imported(None));
        c.imported.insert(
            "catalog-eu-central.shop".into(),
            imported(Some("eu-central")),
        );
        c.services
            .insert("catalog.shop".into(), model::Service::default());
        c.exported.insert("catalog.shop".into());
        c.services.insert(
            "catalog-eu-central.shop".into(),
            model::Service {
                vips: vec!["240.240.0.2".into()],
                ..Default::default()
            },
        );
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
        assert_eq!(si["spec"]["ips"], json!(["240.240.0.1"]));
        assert_eq!(
            si["metadata"]["annotations"][CLUSTER_IPS_ANNOTATION],
            r#"{"eu-central":"240.240.0.2"}"#
        );
        assert_eq!(
            si["status"]["clusters"],
            json!([{"cluster": "eu-central"}, {"cluster": "eu-west"}])
        );
    }
}
