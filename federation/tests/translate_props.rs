//! Properties of translation over generated meshes: whatever the resources
//! (missing backends, zero weights, odd ports, conflicting policies), the
//! output is configuration the sidecar accepts, for the whole catalog and
//! for every proxy's slice of it, and the same input gives the same output.

use std::path::Path;

use isthmus_api::model;
use isthmus_federation::store::Snapshot;
use isthmus_federation::store::files::{merge, parse_file};
use isthmus_federation::translate::{Inputs, proxy::for_proxy, translate};
use proptest::prelude::*;

const NAMES: &[&str] = &["catalog", "reviews", "ratings", "frontend", "ghost"];
const NAMESPACES: &[&str] = &["shop", "backend"];

#[derive(Debug, Clone)]
struct Svc {
    name: usize,
    ns: usize,
    ports: Vec<(u16, usize)>,
    endpoints: Vec<(u8, bool)>,
}

#[derive(Debug, Clone)]
struct Rule {
    path: Option<(usize, usize)>,
    header: bool,
    backends: Vec<(usize, usize, Option<u16>, u32)>,
    timeout: Option<u16>,
}

#[derive(Debug, Clone)]
struct Route {
    parent: usize,
    ns: usize,
    rules: Vec<Rule>,
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        0..NAMES.len() - 1, // "ghost" never exists
        0..NAMESPACES.len(),
        prop::collection::vec(
            (prop::sample::select(vec![80u16, 8080, 9090]), 0..4usize),
            1..3,
        ),
        prop::collection::vec((1u8..250, any::<bool>()), 0..4),
    )
        .prop_map(|(name, ns, ports, endpoints)| Svc {
            name,
            ns,
            ports,
            endpoints,
        })
}

fn route() -> impl Strategy<Value = Route> {
    let rule = (
        prop::option::of((0..3usize, 0..3usize)),
        any::<bool>(),
        prop::collection::vec(
            (
                0..NAMES.len(),
                0..NAMESPACES.len(),
                prop::option::of(prop::sample::select(vec![80u16, 8080, 1234])),
                0u32..4,
            ),
            0..3,
        ),
        prop::option::of(0u16..5000),
    )
        .prop_map(|(path, header, backends, timeout)| Rule {
            path,
            header,
            backends,
            timeout,
        });
    (
        0..NAMES.len(),
        0..NAMESPACES.len(),
        prop::collection::vec(rule, 1..4),
    )
        .prop_map(|(parent, ns, rules)| Route { parent, ns, rules })
}

fn render(svcs: &[Svc], routes: &[Route], policies: &[(usize, usize, u32)]) -> String {
    let protocols = ["http", "grpc", "tcp", "http2"];
    let mut docs = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        let (name, ns) = (NAMES[s.name], NAMESPACES[s.ns]);
        let mut ports: Vec<(u16, usize)> = s.ports.clone();
        ports.sort();
        ports.dedup_by_key(|p| p.0);
        let ports: Vec<String> = ports
            .iter()
            .map(|(p, proto)| format!("{{name: {}-{p}, port: {p}}}", protocols[*proto]))
            .collect();
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{}]}}\n",
            ports.join(", ")
        ));
        let eps: Vec<String> = s
            .endpoints
            .iter()
            .map(|(ip, ready)| {
                format!("{{addresses: [10.0.{i}.{ip}], conditions: {{ready: {ready}}}}}")
            })
            .collect();
        docs.push(format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{}]\n",
            eps.join(", ")
        ));
    }
    for (i, r) in routes.iter().enumerate() {
        let mut rules = String::new();
        for rule in &r.rules {
            let mut m = Vec::new();
            if let Some((kind, v)) = rule.path {
                let kind = ["Exact", "PathPrefix", "RegularExpression"][kind];
                let value = ["/", "/api", "/api/v[0-9]+"][v];
                m.push(format!("path: {{type: {kind}, value: \"{value}\"}}"));
            }
            if rule.header {
                m.push("headers: [{name: x-canary, value: \"yes\"}]".into());
            }
            let backends: Vec<String> = rule
                .backends
                .iter()
                .map(|(n, ns, port, w)| {
                    let port = port.map(|p| format!(", port: {p}")).unwrap_or_default();
                    format!(
                        "{{name: {}, namespace: {}{port}, weight: {w}}}",
                        NAMES[*n], NAMESPACES[*ns]
                    )
                })
                .collect();
            let timeout = rule
                .timeout
                .map(|t| format!(", timeouts: {{request: {t}ms}}"))
                .unwrap_or_default();
            rules.push_str(&format!(
                "    - {{matches: [{{{}}}], backendRefs: [{}]{timeout}}}\n",
                m.join(", "),
                backends.join(", ")
            ));
        }
        docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: {}}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: {}}}]\n  rules:\n{rules}",
            NAMESPACES[r.ns], NAMES[r.parent]
        ));
    }
    for (i, (n, ns, attempts)) in policies.iter().enumerate() {
        docs.push(format!(
            "apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: p{i}, namespace: {}}}\nspec: {{targetRef: {{name: {}}}, timeout: 2s, retry: {{attempts: {attempts}, retryOn: [5xx, bogus]}}, loadBalancer: {{policy: RingHash}}}}\n",
            NAMESPACES[*ns], NAMES[*n]
        ));
    }
    docs.join("---\n")
}

fn snapshot(yaml: &str) -> Snapshot {
    let (loaded, errors) = parse_file(Path::new("gen.yaml"), yaml);
    // Generated documents are well-formed; duplicates are the store's to refuse.
    assert!(errors.is_empty(), "{errors:?}\n{yaml}");
    merge(&Snapshot::default(), loaded, Vec::new()).0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn translation_is_always_accepted_by_the_sidecar(
        svcs in prop::collection::vec(svc(), 0..6),
        routes in prop::collection::vec(route(), 0..4),
        policies in prop::collection::vec((0..NAMES.len(), 0..NAMESPACES.len(), 0u32..4), 0..3),
    ) {
        let yaml = render(&svcs, &routes, &policies);
        let snap = snapshot(&yaml);
        let catalog = translate(&Inputs::new(&snap)).filled();
        let all = model::ProxyConfig {
            services: catalog.services.values().cloned().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate(&all);
        prop_assert!(issues.is_empty(), "{issues:?}\n{yaml}");
        for ns in NAMESPACES {
            let node = model::Node { name: "p".into(), namespace: (*ns).into(), ..Default::default() };
            let cfg = for_proxy(&catalog, &node, Vec::new());
            let issues = isthmus_api::validate(&cfg);
            prop_assert!(issues.is_empty(), "{ns}: {issues:?}\n{yaml}");
        }
        prop_assert_eq!(translate(&Inputs::new(&snapshot(&yaml))).filled(), catalog, "deterministic");
    }
}
