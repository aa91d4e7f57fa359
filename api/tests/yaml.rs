//! Parsing and validating proxy configurations from YAML: every error names
//! the field and its line.

use isthmus_api::parse_yaml;

const GOOD: &str = r#"
version: "7"
node: {name: fe, namespace: shop}
listeners:
  - name: out
    address: 127.0.0.1:15001
    http: {}
services:
  - name: catalog.shop
    ports: [{port: 80}]
    endpoints: [{address: 127.0.0.1:8080}]
    routes:
      - name: api
        matches: [{path: {prefix: /api}, method: GET}]
        timeout: 1.5s
"#;

fn err(yaml: &str) -> isthmus_api::LocatedIssue {
    let e = parse_yaml(yaml).unwrap_err();
    assert!(!e.issues.is_empty());
    e.issues[0].clone()
}

#[test]
fn a_valid_file_parses() {
    let c = parse_yaml(GOOD).unwrap();
    assert_eq!(c.version, "7");
    let t = c.services[0].routes[0].timeout.as_ref().unwrap();
    assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
}

#[test]
fn the_shipped_example_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gateway/examples/sidecar.yaml"
    ))
    .unwrap();
    if let Err(e) = parse_yaml(&text) {
        panic!("gateway/examples/sidecar.yaml: {e}");
    }
}

#[test]
fn unknown_field_names_field_and_line() {
    let y = GOOD.replace(
        "        timeout: 1.5s",
        "        timeout: 1.5s\n        timout: 2s",
    );
    let i = err(&y);
    assert_eq!(i.line, Some(16));
    assert!(i.message.contains("unknown field `timout`"), "{i}");
    assert!(i.path.starts_with("services[0].routes[0]"), "{i}");
}

#[test]
fn bad_duration_gets_a_hint() {
    let i = err(&GOOD.replace("1.5s", "250ms"));
    assert_eq!(i.line, Some(15));
    assert_eq!(i.path, "services[0].routes[0].timeout");
    assert!(i.message.contains("0.25s"), "{i}");
}

#[test]
fn semantic_errors_name_field_and_line() {
    let y = GOOD.replace("address: 127.0.0.1:8080", "address: not-an-ip");
    let i = err(&y);
    assert_eq!(i.path, "services[0].endpoints[0].address");
    assert_eq!(i.line, Some(11));
    assert!(i.message.contains("not ip or ip:port"), "{i}");

    let y = GOOD.replace("{prefix: /api}", "{regex: \"(\"}");
    let i = err(&y);
    assert_eq!(i.path, "services[0].routes[0].matches[0].path.regex");
    assert_eq!(i.line, Some(14));
}

#[test]
fn references_and_ranges_are_checked() {
    let y = format!(
        "{GOOD}        backends: [{{service: nope.shop, weight: 1}}]\n        fault: {{abort: {{httpStatus: 99, percentage: 150}}}}\n        retry: {{retryOn: [sometimes]}}\n"
    );
    let e = parse_yaml(&y).unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    assert!(
        paths.contains(&"services[0].routes[0].backends[0].service"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"services[0].routes[0].fault.abort.httpStatus"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"services[0].routes[0].fault.abort.percentage"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"services[0].routes[0].retry.retryOn[0]"),
        "{paths:?}"
    );
    assert!(e.issues.iter().all(|i| i.line.is_some()), "{e}");
    assert!(e.to_string().starts_with("4 problems:"), "{e}");
}

#[test]
fn duplicates_and_missing_kinds() {
    let y = GOOD.replace("    http: {}\n", "");
    let i = err(&y);
    assert_eq!(i.path, "listeners[0]");
    assert!(i.message.contains("http, tcp, transparent or inbound"));
    let y = format!("{GOOD}  - name: catalog.shop\n    ports: [{{port: 81}}]\n");
    let i = err(&y);
    assert_eq!(i.path, "services[1].name");
    assert_eq!(i.line, Some(16));
}

#[test]
fn absurd_durations_are_refused() {
    let i = err(&GOOD.replace("1.5s", "99999999999s"));
    assert_eq!(i.path, "services[0].routes[0].timeout");
    assert!(i.message.contains("365 days"), "{i}");
}

#[test]
fn not_yaml_at_all() {
    let i = err("listeners: [unclosed\n");
    assert!(i.line.is_some(), "{i}");
    let i = err("- just\n- a list\n");
    assert!(!i.message.is_empty());
}

#[test]
fn endpoints_via_another_cluster_need_the_gateway_port_and_the_remote_identity() {
    let good = GOOD.replace(
        "endpoints: [{address: 127.0.0.1:8080}]",
        "endpoints: [{address: 10.0.0.9, tunnelPort: 15009, viaCluster: us-east, \
         identity: \"spiffe://us-east.isthmus.local\"}]",
    );
    let c = parse_yaml(&good).unwrap();
    assert_eq!(c.services[0].endpoints[0].via_cluster, "us-east");
    // Standing for a service named otherwise there (`reviews-us-east`
    // stands for `reviews.shop` in us-east).
    let renamed = good.replace(
        "viaCluster: us-east,",
        "viaCluster: us-east, viaService: reviews.shop,",
    );
    let c = parse_yaml(&renamed).unwrap();
    assert_eq!(c.services[0].endpoints[0].via_service, "reviews.shop");
    // One pod of a headless service there.
    let pod = good.replace(
        "viaCluster: us-east,",
        "viaCluster: us-east, viaService: db-0.db.shop,",
    );
    assert_eq!(
        parse_yaml(&pod).unwrap().services[0].endpoints[0].via_service,
        "db-0.db.shop"
    );
    for (yaml, path) in [
        (
            good.replace(
                "viaCluster: us-east,",
                "viaCluster: us-east, viaService: reviews,",
            ),
            "services[0].endpoints[0].viaService",
        ),
        (
            good.replace(
                "viaCluster: us-east,",
                "viaCluster: us-east, viaService: a.db-0.db.shop,",
            ),
            "services[0].endpoints[0].viaService",
        ),
        (
            GOOD.replace(
                "endpoints: [{address: 127.0.0.1:8080}]",
                "endpoints: [{address: 127.0.0.1:8080, viaService: reviews.shop}]",
            ),
            "services[0].endpoints[0].viaService",
        ),
    ] {
        let e = parse_yaml(&yaml).unwrap_err();
        assert!(e.issues.iter().any(|i| i.path == path), "{path}: {e}");
    }
    let bad = GOOD.replace(
        "endpoints: [{address: 127.0.0.1:8080}]",
        "endpoints: [{address: \"10.0.0.9:80\", viaCluster: US_East}]",
    );
    let e = parse_yaml(&bad).unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    for p in [
        "services[0].endpoints[0].viaCluster",
        "services[0].endpoints[0].tunnelPort",
        "services[0].endpoints[0].identity",
        "services[0].endpoints[0].address",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    // That cluster's own target ports are allowed, one per service port.
    let own = good.replace(
        "viaCluster: us-east,",
        "viaCluster: us-east, ports: [{port: 80, targetPort: 9080}],",
    );
    assert!(parse_yaml(&own).is_ok());
    let twice = GOOD
        .replace("ports: [{port: 80", "ports: [{port: 81, targetPort: 9080}, {port: 80")
        .replace(
            "endpoints: [{address: 127.0.0.1:8080}]",
            "endpoints: [{address: 10.0.0.9, tunnelPort: 15009, viaCluster: us-east, identity: \"spiffe://us-east.isthmus.local\", ports: [{port: 80, targetPort: 9080}, {port: 81, targetPort: 9080}]}]",
        );
    let e = parse_yaml(&twice).unwrap_err();
    assert!(
        e.issues
            .iter()
            .any(|i| i.path == "services[0].endpoints[0].ports"),
        "{e}"
    );
}

#[test]
fn east_west_peers_are_checked() {
    let good = format!(
        "{GOOD}eastWest:\n  peers:\n    - {{cluster: us-east, udp: \"10.0.2.1:15443\", tcp: \"10.0.2.1:15443\", \
         identity: \"spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest\"}}\n"
    );
    let c = parse_yaml(&good).unwrap();
    assert_eq!(c.east_west.unwrap().peers[0].cluster, "us-east");
    let bad = format!(
        "{GOOD}eastWest:\n  peers:\n    - {{cluster: US, udp: nowhere, tcp: \"10.0.2.1:15443\", identity: x}}\n"
    );
    let e = parse_yaml(&bad).unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    for p in [
        "eastWest.peers[0].cluster",
        "eastWest.peers[0].udp",
        "eastWest.peers[0].identity",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    assert!(e.issues.iter().all(|i| i.line.is_some()), "{e}");
}
