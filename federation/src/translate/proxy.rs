//! One proxy's configuration: the slice of the catalog it needs. A proxy
//! gets the services of its own namespace (reachable by short name too),
//! every service those send to through routes or mirrors (transitively),
//! and the services it declares it calls (`isthmus.dev/calls`, comma
//! separated `<name>.<namespace>`, on its pod). Nothing else: in a large
//! mesh a proxy does not carry every endpoint of the cluster.

use std::collections::{BTreeSet, VecDeque};

use isthmus_api::model;

use super::services::Catalog;

/// The pod annotation (copied into the node's labels by registration)
/// naming services outside the proxy's namespace that it calls.
pub const CALLS: &str = "isthmus.dev/calls";

/// The configuration for the proxy `node`, with its listeners.
pub fn for_proxy(
    catalog: &Catalog,
    node: &model::Node,
    listeners: Vec<model::Listener>,
) -> model::ProxyConfig {
    let suffix = format!(".{}", node.namespace);
    let mut wanted: BTreeSet<&str> = catalog
        .services
        .keys()
        .filter(|n| n.ends_with(&suffix) && !n[..n.len() - suffix.len()].contains('.'))
        .map(String::as_str)
        .collect();
    if let Some(calls) = node.labels.get(CALLS) {
        wanted.extend(
            calls
                .split(',')
                .map(str::trim)
                .filter(|c| catalog.services.contains_key(*c)),
        );
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
                if catalog.services.contains_key(t) && wanted.insert(t) {
                    queue.push_back(t);
                }
            }
        }
    }
    let services = wanted
        .into_iter()
        .map(|name| {
            let mut s = catalog.services[name].clone();
            if let Some(short) = name.strip_suffix(&suffix) {
                s.hosts.insert(0, short.to_string());
            }
            s
        })
        .collect();
    model::ProxyConfig {
        version: String::new(),
        node: Some(node.clone()),
        listeners,
        services,
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
        let catalog = cfg
            .services
            .iter()
            .find(|s| s.name == "catalog.shop")
            .unwrap();
        assert_eq!(
            catalog.hosts[0], "catalog",
            "short names in its own namespace"
        );
        let ratings = cfg
            .services
            .iter()
            .find(|s| s.name == "ratings.backend")
            .unwrap();
        assert!(
            ratings.hosts.iter().all(|h| h != "ratings"),
            "not from another namespace"
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
