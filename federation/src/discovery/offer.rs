//! One translated generation as the discovery stream offers it: every
//! catalog service encoded once (`isthmus_api::resource`), shared by every
//! stream that sends it, and the per-proxy choice of what to send.

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
}

impl Offer {
    pub fn new(generation: u64, catalog: &Catalog) -> Self {
        Self {
            generation,
            resources: catalog
                .services
                .values()
                .map(|s| {
                    let r = resource::service(s);
                    (r.name.clone(), r)
                })
                .collect(),
            index: NamespaceIndex::new(catalog),
        }
    }

    /// The resource names the proxy `node` needs.
    pub fn wanted(&self, catalog: &Catalog, node: &model::Node) -> BTreeSet<String> {
        wanted(catalog, &self.index, node)
            .into_iter()
            .map(resource::service_name)
            .collect()
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
