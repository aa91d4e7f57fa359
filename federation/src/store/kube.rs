//! The `kube` store: a kube-rs watcher per kind the control plane reads,
//! feeding the same `Snapshot` the files store produces. Objects are read
//! as `DynamicObject` and converted one by one, so a malformed custom
//! resource (one that the API server accepted but our types refuse) is
//! reported by name and the rest of its kind still loads; its last good
//! version stays in force, as in the files store. EndpointSlices are
//! converted to their compact form on arrival and `managedFields` dropped.
//!
//! The first `State` is published only once every kind has been listed:
//! proxies must never be sent half a cluster. A kind whose CRD is not
//! installed (404) counts as listed and empty, with a warning; its watcher
//! keeps retrying, so installing the CRD later just works.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource as _};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::files::{DocError, State};
use super::{KINDS, ObjectKey, Resource, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum KubeStoreError {
    #[error(
        "timed out after {waited:?} waiting for the first list of {kinds}: can the API server be reached, and may the control plane's ServiceAccount list and watch them (see deploy/control-plane/rbac.yaml)?"
    )]
    NotSynced { waited: Duration, kinds: String },
}

/// The version of the Multi-Cluster Services API a cluster serves: MCS
/// v0.5 serves v1beta1 (its storage version) beside v1alpha1; older
/// releases only v1alpha1, later ones may drop it. The schemas agree, so
/// only the path and `apiVersion` differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mcs {
    #[default]
    V1alpha1,
    V1beta1,
}

impl Mcs {
    pub const GROUP: &'static str = "multicluster.x-k8s.io";

    pub fn version(self) -> &'static str {
        match self {
            Mcs::V1alpha1 => "v1alpha1",
            Mcs::V1beta1 => "v1beta1",
        }
    }

    /// Asks the API server (group discovery): v1beta1 when it is served,
    /// else v1alpha1 (also when the group is not installed at all: the
    /// store then says the CRDs are missing, by name).
    pub async fn discover(client: &Client) -> Self {
        let req = http::Request::get(format!("/apis/{}", Self::GROUP))
            .body(Vec::new())
            .expect("a static request");
        match client
            .request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup>(req)
            .await
        {
            Ok(g) if g.versions.iter().any(|v| v.version == "v1beta1") => Mcs::V1beta1,
            Ok(_) => Mcs::V1alpha1,
            Err(e) => {
                tracing::debug!("MCS API discovery: {e}; using v1alpha1");
                Mcs::V1alpha1
            }
        }
    }
}

/// Where a kind lives in the API, with MCS kinds in version `mcs`.
pub fn api_resource_in(kind: &str, mcs: Mcs) -> ApiResource {
    let mut ar = api_resource(kind);
    if ar.group == Mcs::GROUP {
        ar.version = mcs.version().to_string();
        ar.api_version = format!("{}/{}", Mcs::GROUP, mcs.version());
    }
    ar
}

/// Where a kind lives in the API (MCS kinds in v1alpha1).
pub fn api_resource(kind: &str) -> ApiResource {
    use crate::resources::gateway_api::{GRPCRoute, HTTPRoute, ReferenceGrant};
    use crate::resources::mcs::{ServiceExport, ServiceImport};
    use crate::resources::{
        AuthorizationPolicy, ClusterLink, DestinationPolicy, FaultInjection, Mesh,
        PeerAuthentication, RequestAuthentication,
    };
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    match kind {
        "Namespace" => ApiResource::erase::<Namespace>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "EndpointSlice" => ApiResource::erase::<EndpointSlice>(&()),
        "Pod" => ApiResource::erase::<Pod>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "Mesh" => ApiResource::erase::<Mesh>(&()),
        "ClusterLink" => ApiResource::erase::<ClusterLink>(&()),
        "DestinationPolicy" => ApiResource::erase::<DestinationPolicy>(&()),
        "AuthorizationPolicy" => ApiResource::erase::<AuthorizationPolicy>(&()),
        "PeerAuthentication" => ApiResource::erase::<PeerAuthentication>(&()),
        "RequestAuthentication" => ApiResource::erase::<RequestAuthentication>(&()),
        "FaultInjection" => ApiResource::erase::<FaultInjection>(&()),
        "ServiceExport" => ApiResource::erase::<ServiceExport>(&()),
        "ServiceImport" => ApiResource::erase::<ServiceImport>(&()),
        "HTTPRoute" => ApiResource::erase::<HTTPRoute>(&()),
        "GRPCRoute" => ApiResource::erase::<GRPCRoute>(&()),
        "ReferenceGrant" => ApiResource::erase::<ReferenceGrant>(&()),
        "Secret" => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
        _ => unreachable!("every entry of KINDS has an API resource"),
    }
}

/// Converts one object of `kind` to a `Resource`, or says why not.
pub fn convert(kind: &str, mut obj: DynamicObject) -> Result<Resource, String> {
    obj.metadata.managed_fields = None;
    let v = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
    fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<Box<T>, String> {
        serde_json::from_value(v)
            .map(Box::new)
            .map_err(|e| e.to_string())
    }
    Ok(match kind {
        "Namespace" => Resource::Namespace(typed(v)?),
        "Service" => Resource::Service(typed(v)?),
        "EndpointSlice" => {
            let s: Box<k8s_openapi::api::discovery::v1::EndpointSlice> = typed(v)?;
            Resource::EndpointSlice(Box::new(super::slice::Slice::from(&*s)))
        }
        "Pod" => Resource::Pod(typed(v)?),
        "ServiceAccount" => Resource::ServiceAccount(typed(v)?),
        "Mesh" => Resource::Mesh(typed(v)?),
        "ClusterLink" => Resource::ClusterLink(typed(v)?),
        "DestinationPolicy" => Resource::DestinationPolicy(typed(v)?),
        "AuthorizationPolicy" => Resource::AuthorizationPolicy(typed(v)?),
        "PeerAuthentication" => Resource::PeerAuthentication(typed(v)?),
        "RequestAuthentication" => Resource::RequestAuthentication(typed(v)?),
        "FaultInjection" => Resource::FaultInjection(typed(v)?),
        "ServiceExport" => {
            let d: Box<crate::resources::mcs::ServiceExportDoc> = typed(v)?;
            Resource::ServiceExport(Box::new((*d).into()))
        }
        "ServiceImport" => Resource::ServiceImport(typed(v)?),
        "HTTPRoute" => Resource::HttpRoute(typed(v)?),
        "GRPCRoute" => Resource::GrpcRoute(typed(v)?),
        "ReferenceGrant" => Resource::ReferenceGrant(typed(v)?),
        "Secret" => Resource::Secret(typed(v)?),
        other => return Err(format!("kind {other} is not read by this store")),
    })
}

#[derive(Default)]
struct Shared {
    objects: Mutex<Objects>,
    changed: Notify,
}

#[derive(Default)]
struct Objects {
    by_kind: BTreeMap<&'static str, BTreeMap<ObjectKey, Arc<Resource>>>,
    /// Objects that did not convert: their last good version (if any)
    /// stays, and the error is reported.
    errors: BTreeMap<(&'static str, ObjectKey), String>,
    synced: BTreeSet<&'static str>,
}

impl Objects {
    fn put(&mut self, kind: &'static str, key: ObjectKey, r: Result<Resource, String>) {
        match r {
            Ok(r) => {
                self.errors.remove(&(kind, key.clone()));
                self.by_kind
                    .entry(kind)
                    .or_default()
                    .insert(key, Arc::new(r));
            }
            Err(e) => {
                tracing::error!(kind, object = %key, "resource skipped, its last good version (if any) stays: {e}");
                self.errors.insert((kind, key), e);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (kind, objects) in &self.by_kind {
            for (k, r) in objects {
                snap.objects.insert((kind, k.clone()), r.clone());
            }
        }
        snap
    }

    fn doc_errors(&self) -> Vec<DocError> {
        self.errors
            .iter()
            .map(|((kind, key), message)| DocError {
                file: Default::default(),
                line: 0,
                kind: Some(kind.to_string()),
                name: Some(key.to_string()),
                message: message.clone(),
            })
            .collect()
    }
}

/// The `kube` store, configured.
pub struct KubeStore {
    pub client: Client,
    /// Quiet time after a change before a new state is published.
    pub debounce: Duration,
    /// How long to wait for the first list of every kind.
    pub sync_timeout: Duration,
    /// The only namespace whose Secrets (ClusterLinks' join tokens,
    /// labelled) are listed and watched: `LINK_SECRETS_NAMESPACE`, which
    /// holds nothing else.
    pub link_secrets_namespace: String,
    /// The MCS version to read (`Mcs::discover`).
    pub mcs: Mcs,
}

impl KubeStore {
    /// Starts a watcher per kind, waits until every kind was listed, and
    /// returns the states (the first one complete) and the task that keeps
    /// publishing them until `stop`.
    pub async fn start(
        self,
        stop: CancellationToken,
    ) -> Result<(watch::Receiver<State>, tokio::task::JoinHandle<()>), KubeStoreError> {
        let shared = Arc::new(Shared::default());
        let mut watchers = Vec::new();
        for &(_, kind, namespaced) in KINDS {
            let ar = api_resource_in(kind, self.mcs);
            let api: Api<DynamicObject> = if kind == "Secret" {
                Api::namespaced_with(self.client.clone(), &self.link_secrets_namespace, &ar)
            } else {
                Api::all_with(self.client.clone(), &ar)
            };
            watchers.push(tokio::spawn(watch_kind(
                api,
                kind,
                namespaced,
                shared.clone(),
                stop.clone(),
            )));
        }
        // Wait for every kind's first list.
        let waited = tokio::time::timeout(self.sync_timeout, async {
            loop {
                let notified = shared.changed.notified();
                if shared.objects.lock().synced.len() == KINDS.len() {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if waited.is_err() {
            let o = shared.objects.lock();
            let missing: Vec<&str> = KINDS
                .iter()
                .map(|(_, k, _)| *k)
                .filter(|k| !o.synced.contains(k))
                .collect();
            stop.cancel();
            return Err(KubeStoreError::NotSynced {
                waited: self.sync_timeout,
                kinds: missing.join(", "),
            });
        }
        let first = {
            let o = shared.objects.lock();
            State {
                generation: 1,
                snapshot: Arc::new(o.snapshot()),
                errors: o.doc_errors(),
            }
        };
        tracing::info!(objects = first.snapshot.objects.len(), "cluster listed");
        let (tx, rx) = watch::channel(first);
        let debounce = self.debounce;
        let task = tokio::spawn(async move {
            let mut generation = 1;
            loop {
                let notified = shared.changed.notified();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = notified => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(debounce) => {}
                }
                generation += 1;
                let next = {
                    let o = shared.objects.lock();
                    State {
                        generation,
                        snapshot: Arc::new(o.snapshot()),
                        errors: o.doc_errors(),
                    }
                };
                tx.send_replace(next);
            }
            for w in watchers {
                w.abort();
            }
        });
        Ok((rx, task))
    }
}

/// Whether a watcher error means the kind does not exist in this cluster.
fn is_not_found(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        _ => return false,
    };
    api.code == 404
}

async fn watch_kind(
    api: Api<DynamicObject>,
    kind: &'static str,
    namespaced: bool,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let key = |o: &DynamicObject| ObjectKey {
        namespace: if namespaced {
            Some(
                o.meta()
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            )
        } else {
            None
        },
        name: o.meta().name.clone().unwrap_or_default(),
    };
    let config = match kind {
        // Link credentials only: the control plane holds no other Secret.
        "Secret" => watcher::Config::default().labels(super::LINK_CREDENTIALS_LABEL),
        _ => watcher::Config::default(),
    };
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Option<Objects> = None;
    let mut warned = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let mut o = shared.objects.lock();
        match event {
            Ok(Event::Init) => buffer = Some(Objects::default()),
            Ok(Event::InitApply(obj)) => {
                let k = key(&obj);
                let r = convert(kind, obj);
                let b = buffer.get_or_insert_with(Objects::default);
                // A bad object keeps its last good version across a relist.
                if r.is_err()
                    && let Some(prev) = o.by_kind.get(kind).and_then(|m| m.get(&k))
                {
                    b.by_kind
                        .entry(kind)
                        .or_default()
                        .insert(k.clone(), prev.clone());
                }
                b.put(kind, k, r);
            }
            Ok(Event::InitDone) => {
                let b = buffer.take().unwrap_or_default();
                o.by_kind
                    .insert(kind, b.by_kind.get(kind).cloned().unwrap_or_default());
                o.errors.retain(|(k, _), _| *k != kind);
                o.errors.extend(b.errors);
                o.synced.insert(kind);
                shared.changed.notify_one();
            }
            Ok(Event::Apply(obj)) => {
                let k = key(&obj);
                o.put(kind, k, convert(kind, obj));
                shared.changed.notify_one();
            }
            Ok(Event::Delete(obj)) => {
                let k = key(&obj);
                if let Some(m) = o.by_kind.get_mut(kind) {
                    m.remove(&k);
                }
                o.errors.remove(&(kind, k));
                shared.changed.notify_one();
            }
            Err(e) if is_not_found(&e) => {
                if !warned {
                    tracing::warn!(
                        kind,
                        "not served by this API server (CRD not installed?); treated as empty until it is"
                    );
                    warned = true;
                }
                if o.synced.insert(kind) {
                    shared.changed.notify_one();
                }
            }
            Err(e) => tracing::warn!(kind, "watch failed, retrying: {e}"),
        }
    }
}

/// Sets fields of the Opaque Secret `namespace/name` and removes others
/// (`None`), with one JSON merge patch (other fields are left as they
/// are); the Secret is made on first use, and a writer that made it first
/// is patched after. Removing fields of a Secret that is not there is done.
pub async fn patch_secret_fields(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    fields: Vec<(String, Option<k8s_openapi::ByteString>)>,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, PostParams};
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    let patch = Patch::Merge(serde_json::json!({ "data": data }));
    let params = PatchParams::default();
    let apply = || api.patch(name, &params, &patch);
    match apply().await {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let set: Vec<_> = fields
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
            if set.is_empty() {
                return Ok(());
            }
            match api
                .create(&PostParams::default(), &opaque_secret(namespace, name, set))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 409 => apply().await.map(drop),
                r => r.map(drop),
            }
        }
        r => r.map(drop),
    }
}

/// An Opaque Secret `namespace/name` holding `data`: what the control
/// plane creates for its own state (CA, token key, link credentials, the
/// join token mailbox).
pub fn opaque_secret(
    namespace: &str,
    name: &str,
    data: impl IntoIterator<Item = (String, k8s_openapi::ByteString)>,
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().collect()),
        ..Default::default()
    }
}
