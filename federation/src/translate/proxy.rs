//! One proxy's configuration: the slice of the catalog it needs. A proxy
//! gets the services of its own namespace, every service those send to
//! through routes or mirrors (transitively), and the services it declares
//! it calls (`isthmus.dev/calls`, comma separated `<name>.<namespace>`, on
//! its pod). Nothing else: in a large mesh a proxy does not carry every
//! endpoint of the cluster. Services are sent exactly as the catalog has
//! them (the proxy adds short names for its own namespace itself), so one
//! encoding of a service serves every proxy.

use std::collections::{BTreeSet, HashMap, VecDeque};

use isthmus_api::model;

use super::services::Catalog;

/// The pod annotation (copied into the node's labels by registration)
/// naming services outside the proxy's namespace that it calls.
pub const CALLS: &str = "isthmus.dev/calls";

/// The catalog's services by namespace, built once per catalog so that
/// slicing it for a thousand proxies does not scan it a thousand times.
#[derive(Debug, Default)]
pub struct NamespaceIndex {
    by_namespace: HashMap<String, Vec<String>>,
}

impl NamespaceIndex {
    pub fn new(catalog: &Catalog) -> Self {
        let mut by_namespace: HashMap<String, Vec<String>> = HashMap::new();
        for name in catalog.services.keys() {
            // `<name>.<ns>`, or a clusterset `<name>.<ns>.svc.clusterset.local`
            // or `<pod>.<cluster>.<name>.<ns>.svc.clusterset.local`. A
            // pod's own service, `<pod>.<name>.<ns>`, is the east-west
            // gateway's alone (`exported`).
            let ns = match name.strip_suffix(super::imports::CLUSTERSET) {
                Some(set) => set.rsplit_once('.').map(|(_, ns)| ns),
                None => name.split_once('.').map(|(_, ns)| ns),
            };
            if let Some(ns) = ns
                && !ns.contains('.')
            {
                by_namespace
                    .entry(ns.to_string())
                    .or_default()
                    .push(name.clone());
            }
        }
        Self { by_namespace }
    }

    fn of(&self, namespace: &str) -> &[String] {
        self.by_namespace.get(namespace).map_or(&[], Vec::as_slice)
    }
}

/// The names of the services the proxy `node` needs, in name order.
pub fn wanted<'c>(
    catalog: &'c Catalog,
    index: &NamespaceIndex,
    node: &model::Node,
) -> BTreeSet<&'c str> {
    let mut wanted: BTreeSet<&'c str> = BTreeSet::new();
    let add =
        |name: &str, wanted: &mut BTreeSet<&'c str>| match catalog.services.get_key_value(name) {
            Some((k, _)) => wanted.insert(k.as_str()),
            None => false,
        };
    for name in index.of(&node.namespace) {
        add(name, &mut wanted);
    }
    // The east-west gateway routes linked clusters to what we export.
    if super::links::is_gateway(node) {
        for name in &catalog.exported {
            add(name, &mut wanted);
        }
    }
    if let Some(calls) = node.labels.get(CALLS) {
        for c in calls.split(',').map(str::trim) {
            add(c, &mut wanted);
        }
    }
    // Follow routes and mirrors to everything they can send to.
    let mut queue: VecDeque<&str> = wanted.iter().copied().collect();
    while let Some(name) = queue.pop_front() {
        let Some(s) = catalog.services.get(name) else {
            continue;
        };
        for r in &s.routes {
            let targets = r
                .backends
                .iter()
                .map(|b| b.service.as_str())
                .chain(r.mirror.iter().map(|m| m.service.as_str()));
            for t in targets {
                if let Some((k, _)) = catalog.services.get_key_value(t)
                    && wanted.insert(k.as_str())
                {
                    queue.push_back(k.as_str());
                }
            }
        }
    }
    wanted
}

/// The configuration for the proxy `node`, with its listeners.
pub fn for_proxy(
    catalog: &Catalog,
    node: &model::Node,
    listeners: Vec<model::Listener>,
) -> model::ProxyConfig {
    let index = NamespaceIndex::new(catalog);
    let services = wanted(catalog, &index, node)
        .into_iter()
        .map(|name| catalog.services[name].clone())
        .collect();
    model::ProxyConfig {
        version: String::new(),
        node: Some(node.clone()),
        listeners,
        services,
        security: None,
        // Peers of east-west gateways come with ClusterLinks (federation).
        east_west: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, backends: &[&str]) -> model::Service {
        model::Service {
            name: name.into(),
            ports: vec![model::ServicePort {
                port: 80,
                ..Default::default()
            }],
            routes: if backends.is_empty() {
                Vec::new()
            } else {
                vec![model::HttpRoute {
                    name: "r".into(),
                    backends: backends
                        .iter()
                        .map(|b| model::WeightedBackend {
                            service: (*b).into(),
                            port: 0,
                            weight: 1,
                        })
                        .collect(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for s in [
            service("frontend.shop", &[]),
            service("catalog.shop", &["catalog.shop", "catalog-eu-central.shop"]),
            service("catalog-eu-central.shop", &[]),
            service("reviews.shop", &["ratings.backend"]),
            service("ratings.backend", &["stars.backend"]),
            service("stars.backend", &[]),
            service("unrelated.backend", &[]),
            service("payments.billing", &[]),
        ] {
            c.services.insert(s.name.clone(), s);
        }
        c
    }

    fn node(ns: &str, calls: Option<&str>) -> model::Node {
        model::Node {
            name: "p".into(),
            namespace: ns.into(),
            labels: calls
                .map(|c| [(CALLS.to_string(), c.to_string())].into_iter().collect())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn names(cfg: &model::ProxyConfig) -> Vec<&str> {
        cfg.services.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_proxy_gets_its_namespace_and_what_it_can_reach() {
        let cfg = for_proxy(&catalog(), &node("shop", None), Vec::new());
        assert_eq!(
            names(&cfg),
            [
                "catalog-eu-central.shop",
                "catalog.shop",
                "frontend.shop",
                "ratings.backend",
                "reviews.shop",
                "stars.backend",
            ],
            "routes are followed transitively; unrelated namespaces stay out"
        );
        assert!(
            cfg.services.iter().all(|s| s.hosts.is_empty()),
            "services travel as the catalog has them: the proxy adds short names"
        );
        assert!(isthmus_api::validate(&cfg).is_empty());
    }

    #[test]
    fn declared_calls_add_services_and_unknown_ones_are_ignored() {
        let cfg = for_proxy(
            &catalog(),
            &node("billing", Some("unrelated.backend, nope.nowhere")),
            Vec::new(),
        );
        assert_eq!(names(&cfg), ["payments.billing", "unrelated.backend"]);
        let empty = for_proxy(&catalog(), &node("empty", None), Vec::new());
        assert!(empty.services.is_empty());
    }
}
