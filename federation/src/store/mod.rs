//! Where resources come from. A store keeps the current set of resources as
//! an immutable `Snapshot` and says when it changed; translation reads
//! snapshots and never the source. Two sources: `files` (a directory of
//! Kubernetes YAML, the embedded default) and, next, `kube` (the API).

pub mod files;
pub mod kube;
pub mod registry;
pub mod slice;
pub mod vip_state;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};

use crate::resources::gateway_api::{GRPCRoute, HTTPRoute, ReferenceGrant};
use crate::resources::mcs::{ServiceExport, ServiceImport};
use crate::resources::{
    AuthorizationPolicy, ClusterLink, DestinationPolicy, FaultInjection, Mesh, PeerAuthentication,
    RequestAuthentication,
};

/// An object's identity within its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// None for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One resource of a kind the control plane reads. Variants are boxed:
/// Kubernetes types are hundreds of bytes inline, and every object would
/// otherwise pay for the largest (an EndpointSlice would cost what a
/// Service does).
#[derive(Clone, Debug)]
pub enum Resource {
    Namespace(Box<Namespace>),
    Service(Box<Service>),
    /// Kept compact (`slice::Slice`), converted on arrival.
    EndpointSlice(Box<slice::Slice>),
    Pod(Box<Pod>),
    ServiceAccount(Box<ServiceAccount>),
    Mesh(Box<Mesh>),
    ClusterLink(Box<ClusterLink>),
    DestinationPolicy(Box<DestinationPolicy>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    RequestAuthentication(Box<RequestAuthentication>),
    FaultInjection(Box<FaultInjection>),
    ServiceExport(Box<ServiceExport>),
    ServiceImport(Box<ServiceImport>),
    HttpRoute(Box<HTTPRoute>),
    GrpcRoute(Box<GRPCRoute>),
    ReferenceGrant(Box<ReferenceGrant>),
    /// Only link credentials (`LINK_CREDENTIALS_LABEL`): the join tokens
    /// ClusterLinks refer to. No other Secret is read.
    Secret(Box<k8s_openapi::api::core::v1::Secret>),
}

/// The label every Secret the control plane reads carries (`isthmusctl link
/// create` sets it; in `kube` mode Secrets are watched with this selector
/// only, so the control plane never holds other Secrets).
pub const LINK_CREDENTIALS_LABEL: &str = "isthmus.dev/link-credentials";

/// The namespace holding ClusterLinks' join-token Secrets and nothing else
/// (`kube` mode): the control plane lists and watches Secrets there only,
/// so that grant reads no other Secret (in its own namespace it may get
/// only the Secrets it owns, by name).
pub const LINK_SECRETS_NAMESPACE: &str = "isthmus-links";

/// Kind names as written in YAML, with their apiVersion and whether they
/// are namespaced.
pub const KINDS: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "Service", true),
    ("discovery.k8s.io/v1", "EndpointSlice", true),
    ("v1", "Pod", true),
    ("v1", "ServiceAccount", true),
    ("isthmus.dev/v1alpha1", "Mesh", false),
    ("isthmus.dev/v1alpha1", "ClusterLink", false),
    ("isthmus.dev/v1alpha1", "DestinationPolicy", true),
    ("isthmus.dev/v1alpha1", "AuthorizationPolicy", true),
    ("isthmus.dev/v1alpha1", "PeerAuthentication", true),
    ("isthmus.dev/v1alpha1", "RequestAuthentication", true),
    ("isthmus.dev/v1alpha1", "FaultInjection", true),
    ("multicluster.x-k8s.io/v1alpha1", "ServiceExport", true),
    ("multicluster.x-k8s.io/v1alpha1", "ServiceImport", true),
    ("gateway.networking.k8s.io/v1", "HTTPRoute", true),
    ("gateway.networking.k8s.io/v1", "GRPCRoute", true),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", true),
    ("v1", "Secret", true),
];

/// Other API versions read as the same kind (the schemas agree): MCS
/// v1beta1 beside v1alpha1.
pub const ALSO_READ: &[(&str, &str)] = &[
    ("multicluster.x-k8s.io/v1beta1", "ServiceExport"),
    ("multicluster.x-k8s.io/v1beta1", "ServiceImport"),
];

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Service(_) => "Service",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::Pod(_) => "Pod",
            Resource::ServiceAccount(_) => "ServiceAccount",
            Resource::Mesh(_) => "Mesh",
            Resource::ClusterLink(_) => "ClusterLink",
            Resource::DestinationPolicy(_) => "DestinationPolicy",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::PeerAuthentication(_) => "PeerAuthentication",
            Resource::RequestAuthentication(_) => "RequestAuthentication",
            Resource::FaultInjection(_) => "FaultInjection",
            Resource::ServiceExport(_) => "ServiceExport",
            Resource::ServiceImport(_) => "ServiceImport",
            Resource::HttpRoute(_) => "HTTPRoute",
            Resource::GrpcRoute(_) => "GRPCRoute",
            Resource::ReferenceGrant(_) => "ReferenceGrant",
            Resource::Secret(_) => "Secret",
        }
    }
}

/// Everything the store holds at one moment, by kind and key.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub objects: BTreeMap<(&'static str, ObjectKey), Arc<Resource>>,
    /// The file each object came from (`files` store only), so a document
    /// that cannot even be identified still keeps its file's last good
    /// objects.
    pub origins: BTreeMap<(&'static str, ObjectKey), std::path::PathBuf>,
}

impl Snapshot {
    /// Objects of one kind, in key order.
    pub fn of_kind<'a>(
        &'a self,
        kind: &'static str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Resource)> + 'a {
        // Keys sort by kind first: a range, not a scan of everything.
        let first = ObjectKey {
            namespace: None,
            name: String::new(),
        };
        self.objects
            .range((kind, first)..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|((_, key), r)| (key, r.as_ref()))
    }

    pub fn get(&self, kind: &'static str, key: &ObjectKey) -> Option<&Resource> {
        self.objects.get(&(kind, key.clone())).map(Arc::as_ref)
    }
}
