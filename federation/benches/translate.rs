//! Translation time for a large cluster: 10 000 Services in 100 namespaces,
//! 3 endpoints each, 1 000 HTTPRoutes and 1 000 DestinationPolicies.
//! Baseline in the same run: reading the same resources as the files store
//! does (YAML → typed snapshot), the step translation follows.
//!
//! `cargo bench -p isthmus-federation --bench translate`
//! (BENCH_SERVICES to change the size).

use std::path::Path;
use std::time::{Duration, Instant};

use isthmus_api::model;
use isthmus_federation::store::Snapshot;
use isthmus_federation::store::files::{merge, parse_file};
use isthmus_federation::translate::proxy::{NamespaceIndex, for_proxy, wanted};
use isthmus_federation::translate::{Inputs, translate};

mod common;
use common::mesh;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let services: usize = std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let yaml = mesh(services, 3);
    let runs = 5;
    let mut load = Vec::new();
    let mut snap = Snapshot::default();
    for _ in 0..runs {
        let t = Instant::now();
        let (loaded, errors) = parse_file(Path::new("bench.yaml"), &yaml);
        assert!(errors.is_empty(), "{errors:?}");
        snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        load.push(t.elapsed());
    }
    let mut full = Vec::new();
    let mut catalog = translate(&Inputs::new(&snap)).filled();
    for _ in 0..runs {
        let t = Instant::now();
        catalog = translate(&Inputs::new(&snap)).filled();
        full.push(t.elapsed());
    }
    assert_eq!(catalog.services.len(), services);
    assert!(catalog.problems.is_empty(), "{:?}", &catalog.problems[..3]);
    let node = model::Node {
        name: "p".into(),
        namespace: "ns7".into(),
        ..Default::default()
    };
    // A proxy's slice as the discovery stream cuts it: the namespace index
    // is built once per generation, then each proxy's wanted set.
    let index = NamespaceIndex::new(&catalog);
    let mut slice = Vec::new();
    let mut wanted_len = 0;
    for _ in 0..runs {
        let t = Instant::now();
        wanted_len = wanted(&catalog, &index, &node).len();
        slice.push(t.elapsed());
    }
    let cfg = for_proxy(&catalog, &node, Vec::new());
    assert_eq!(cfg.services.len(), wanted_len);
    println!(
        "\n== translation, {services} services / {} endpoints / {} routes / {} policies, median of {runs} ==",
        services * 3,
        services / 10,
        services / 10
    );
    println!(
        "baseline: read the YAML into a snapshot   {:>10.1} ms",
        median(load).as_secs_f64() * 1e3
    );
    println!(
        "translate the whole cluster               {:>10.1} ms",
        median(full).as_secs_f64() * 1e3
    );
    println!(
        "one proxy's slice ({} services)           {:>10.3} ms",
        cfg.services.len(),
        median(slice).as_secs_f64() * 1e3
    );
}
