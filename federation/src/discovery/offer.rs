//! One translated generation as the discovery stream offers it: every
//! catalog service encoded once (`isthmus_api::resource`), shared by every
//! stream that sends it, and the per-proxy choice of what to send.
//!
//! Endpoints live here only, encoded (~40 bytes each): building the offer
//! strips them from the catalog, which keeps what slicing needs (routes)
//! at a fraction of the memory. Admin views decode them back.

use std::collections::{BTreeSet, HashMap};

use isthmus_api::discovery::v1::Resource;
use isthmus_api::{model, resource};

use crate::translate::proxy::{NamespaceIndex, wanted};
use crate::translate::services::Catalog;

#[derive(Debug, Default)]
pub struct Offer {
    generation: u64,
    /// By resource name (`service/<name>.<namespace>`).
    resources: HashMap<String, Resource>,
    index: NamespaceIndex,
    endpoints: usize,
}

impl Offer {
    /// Encodes every service of `catalog` and strips the endpoints from
    /// it (they are in the offer now), service by service, so the two
    /// copies never coexist in full. `fill` gives a service its endpoints
    /// first (`Endpoints::fill`), for catalogs built without them.
    pub fn build(
        generation: u64,
        catalog: &mut Catalog,
        trust: &[model::TrustBundle],
        fill: impl Fn(&mut model::Service),
    ) -> Self {
        let mut endpoints = 0;
        let mut resources: HashMap<String, Resource> = catalog
            .services
            .values_mut()
            .map(|s| {
                fill(s);
                let r = resource::service(s);
                endpoints += s.endpoints.len();
                s.endpoints = Vec::new();
                (r.name.clone(), r)
            })
            .collect();
        let mut mesh = catalog.security.mesh.clone();
        // Our own domain(s), then those of the linked clusters.
        mesh.trust_bundles = trust.to_vec();
        for t in &catalog.links.trust {
            if !mesh
                .trust_bundles
                .iter()
                .any(|o| o.trust_domain == t.trust_domain)
            {
                mesh.trust_bundles.push(t.clone());
            }
        }
        let r = resource::security(resource::SECURITY_MESH.to_string(), &mesh);
        resources.insert(r.name.clone(), r);
        for (ns, s) in &catalog.security.namespaces {
            let r = resource::security(resource::security_ns_name(ns), s);
            resources.insert(r.name.clone(), r);
        }
        let mut east_west = catalog.links.east_west.clone();
        east_west.exports = catalog.exported.iter().cloned().collect();
        let r = resource::east_west(&east_west);
        resources.insert(r.name.clone(), r);
        Self {
            generation,
            resources,
            index: NamespaceIndex::new(catalog),
            endpoints,
        }
    }

    /// A service as sent (with its endpoints), decoded from the offer.
    pub fn service(&self, name: &str) -> Option<model::Service> {
        let r = self.resources.get(&resource::service_name(name))?;
        match resource::decode(r) {
            Ok(resource::Decoded::Service(s)) => Some(*s),
            _ => None,
        }
    }

    /// Every resource's version, by name (the same on every replica that
    /// read the same resources).
    pub fn versions(&self) -> std::collections::BTreeMap<&str, &str> {
        self.resources
            .iter()
            .map(|(n, r)| (n.as_str(), r.version.as_str()))
            .collect()
    }

    /// Endpoints over all services.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// The resource names the proxy `node` needs.
    pub fn wanted(&self, catalog: &Catalog, node: &model::Node) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = wanted(catalog, &self.index, node)
            .into_iter()
            .map(resource::service_name)
            .collect();
        names.insert(resource::SECURITY_MESH.to_string());
        let ns = resource::security_ns_name(&node.namespace);
        if self.resources.contains_key(&ns) {
            names.insert(ns);
        }
        if crate::translate::links::is_gateway(node) {
            names.insert(resource::EAST_WEST.to_string());
        }
        names
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

impl super::stream::Available for Offer {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }
}
