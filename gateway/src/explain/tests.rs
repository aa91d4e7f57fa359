//! The three questions operators ask, each against a compiled
//! configuration and live state: why did this request take the canary
//! (header match, weights), why did it leave the region (local endpoints
//! down), and why was it refused (the deciding rule).

use super::*;
use crate::proxy::service_state::ServiceStates;
use crate::telemetry::metrics::Metrics;

fn snap(yaml: &str) -> Snapshot {
    crate::config::compile::compile(&isthmus_api::parse_yaml(yaml).unwrap()).unwrap()
}

fn states() -> ServiceStates {
    ServiceStates::new(
        tokio_util::task::TaskTracker::new(),
        crate::pool::SocketOptions::default(),
        Arc::new(Metrics::default()),
        None,
    )
}

/// Five gateway errors from endpoint `idx`: outlier detection ejects it.
fn eject(states: &ServiceStates, spec: &Arc<crate::config::ServiceSpec>, idx: usize) {
    for _ in 0..5 {
        states.get(spec).observe(
            spec,
            idx,
            crate::balance::outlier::Observation::GatewayError,
            &Metrics::default(),
            crate::telemetry::metrics::Direction::Outbound,
        );
    }
}

fn ask(query: &str) -> Ask {
    Ask::parse(query).unwrap()
}

/// The demo's canary as a frontend in eu-west holds it: `x-canary:
/// always` to us-east, else 90/10 between the two regions' reviews.
const CANARY: &str = r#"
node: {name: frontend, namespace: shop, cluster: eu-west, locality: {region: eu-west, zone: eu-west-a}}
services:
  - name: reviews.shop.svc.clusterset.local
    hosts: [reviews.shop.svc.clusterset.local]
    vips: [240.0.0.7]
    ports: [{port: 80, targetPort: 9080}]
    endpoints:
      - {address: 127.0.1.21, locality: {region: eu-west, zone: eu-west-a}}
    routes:
      - name: shop/reviews-canary/rule-0
        matches: [{headers: [{name: x-canary, exact: always}]}]
        backends: [{service: reviews-us-east.shop, weight: 1}]
      - name: shop/reviews-canary/rule-1
        matches: [{path: {prefix: /api}}]
        backends: [{service: reviews-eu-west.shop, weight: 90}, {service: reviews-us-east.shop, weight: 10}]
  - name: reviews-eu-west.shop
    ports: [{port: 80, targetPort: 9080}]
    endpoints:
      - {address: 127.0.1.21, locality: {region: eu-west, zone: eu-west-a}}
  - name: reviews-us-east.shop
    ports: [{port: 80, targetPort: 9080}]
    endpoints:
      - {address: 127.0.1.9, tunnelPort: 15009, viaCluster: us-east, viaService: reviews.shop,
         identity: "spiffe://us-east.isthmus.local", locality: {region: us-east}}
"#;

#[test]
fn the_canary_header_takes_the_first_rule_and_its_one_backend() {
    let s = snap(CANARY);
    let q = "url=http%3A%2F%2Freviews.shop.svc.clusterset.local%2Fapi%3Fx%3D1&header=x-canary%3A%20always";
    let out = outbound(&s, &states(), &ask(q));
    assert_eq!(out.error, None);
    let svc = out.service.as_ref().unwrap();
    assert_eq!(svc.name, "reviews.shop.svc.clusterset.local");
    assert_eq!((svc.port, svc.resolved_by.as_str()), (80, "host"));
    assert_eq!(svc.vips, ["240.0.0.7:80"]);
    assert!(out.routes[0].matched, "{:?}", out.routes);
    assert_eq!(out.routes[0].why, [r#"match 1 holds: x-canary="always""#]);
    let route = out.route.as_ref().unwrap();
    assert_eq!(route.name, "shop/reviews-canary/rule-0");
    assert!(!route.default);
    assert_eq!(route.backends.len(), 1);
    let b = &route.backends[0];
    assert_eq!(
        (b.service.as_str(), b.share),
        ("reviews-us-east.shop", 100.0)
    );
    assert_eq!(b.endpoints[0].cluster, "us-east");
    assert_eq!(b.endpoints[0].via.as_deref(), Some("reviews.shop"));
    assert_eq!(b.chosen.as_deref(), Some("127.0.1.9:9080"));
}

#[test]
fn without_the_header_the_weights_decide_and_the_first_rule_says_why_not() {
    let s = snap(CANARY);
    let q = "url=http://reviews.shop.svc.clusterset.local/api/1";
    let out = outbound(&s, &states(), &ask(q));
    assert!(!out.routes[0].matched);
    assert_eq!(
        out.routes[0].why,
        [r#"match 1: header x-canary is absent, wanted "always""#]
    );
    assert!(out.routes[1].matched);
    let route = out.route.unwrap();
    assert_eq!(route.name, "shop/reviews-canary/rule-1");
    let shares: Vec<(&str, u32, f64)> = route
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight, b.share))
        .collect();
    assert_eq!(
        shares,
        [
            ("reviews-eu-west.shop", 90, 90.0),
            ("reviews-us-east.shop", 10, 10.0)
        ]
    );
    // A wrong header value and a path outside both rules: the default.
    let q = "url=http://reviews.shop.svc.clusterset.local/other&header=x-canary:never";
    let out = outbound(&s, &states(), &ask(q));
    assert_eq!(
        out.routes[0].why,
        [r#"match 1: header x-canary is "never", wanted "always""#]
    );
    assert_eq!(
        out.routes[1].why,
        ["match 1: path /other is not under the prefix /api"]
    );
    let route = out.route.unwrap();
    assert!(route.default);
    assert_eq!(
        route.backends[0].service,
        "reviews.shop.svc.clusterset.local"
    );
}

/// catalog seen from eu-west: its own endpoint first, eu-central's
/// through our gateway after.
const FAILOVER: &str = r#"
node: {name: frontend, namespace: shop, cluster: eu-west, locality: {region: eu-west, zone: eu-west-a}}
services:
  - name: catalog.shop.svc.clusterset.local
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - {address: 127.0.1.20, unhealthy: WEST_DOWN, locality: {region: eu-west, zone: eu-west-a}}
      - {address: 127.0.1.9, tunnelPort: 15009, viaCluster: eu-central, viaService: catalog.shop,
         identity: "spiffe://eu-central.isthmus.local", locality: {region: eu-central}}
"#;

#[test]
fn a_local_endpoint_down_sends_everything_to_the_other_region() {
    let q = "url=http://catalog.shop.svc.clusterset.local/";
    let up = snap(&FAILOVER.replace("WEST_DOWN", "false"));
    let out = outbound(&up, &states(), &ask(q));
    let b = &out.route.unwrap().backends[0];
    let prios: Vec<(usize, &str, bool)> = b
        .endpoints
        .iter()
        .map(|e| (e.priority, e.cluster.as_str(), e.available))
        .collect();
    assert_eq!(prios, [(0, "", true), (2, "eu-central", true)]);
    assert_eq!(b.priority_shares, [1.0, 0.0, 0.0]);
    assert_eq!(b.chosen.as_deref(), Some("127.0.1.20:8080"));

    let down = snap(&FAILOVER.replace("WEST_DOWN", "true"));
    let out = outbound(&down, &states(), &ask(q));
    let b = &out.route.unwrap().backends[0];
    assert!(!b.endpoints[0].healthy && !b.endpoints[0].available);
    assert_eq!(b.priority_shares, [0.0, 0.0, 1.0]);
    assert_eq!(b.chosen.as_deref(), Some("127.0.1.9:8080"));
}

#[test]
fn an_ejected_local_endpoint_is_named_as_such() {
    let s = snap(&FAILOVER.replace("WEST_DOWN", "false"));
    let states = states();
    let spec = s.services["catalog.shop.svc.clusterset.local"].clone();
    eject(&states, &spec, 0);
    let out = outbound(
        &s,
        &states,
        &ask("url=http://catalog.shop.svc.clusterset.local/"),
    );
    let b = &out.route.unwrap().backends[0];
    assert!(b.endpoints[0].healthy && b.endpoints[0].ejected && !b.endpoints[0].available);
    assert_eq!(b.chosen.as_deref(), Some("127.0.1.9:8080"));
}

#[test]
fn an_unknown_host_or_port_says_so() {
    let s = snap(CANARY);
    let out = outbound(&s, &states(), &ask("url=http://nope.shop/"));
    assert!(
        out.error
            .unwrap()
            .contains("no service named \"nope.shop\"")
    );
    let out = outbound(
        &s,
        &states(),
        &ask("url=http://reviews.shop.svc.clusterset.local:81/"),
    );
    assert_eq!(
        out.error.as_deref(),
        Some("service reviews.shop.svc.clusterset.local has no port 81")
    );
}

#[test]
fn bad_questions_are_named() {
    assert_eq!(Ask::parse("").unwrap_err(), AskError::NoUrl);
    assert_eq!(
        Ask::parse("url=/relative").unwrap_err(),
        AskError::BadUrl("/relative".into())
    );
    assert!(matches!(
        Ask::parse("url=http://a/&header=novalue").unwrap_err(),
        AskError::BadHeader(_)
    ));
    assert!(matches!(
        Ask::parse("url=http://a/&method=G%20T").unwrap_err(),
        AskError::BadMethod(_)
    ));
    assert!(matches!(
        Ask::parse("url=http://a/&inbound=x").unwrap_err(),
        AskError::BadPort(_)
    ));
    assert!(matches!(
        Ask::parse("url=http://a/&inbound=80&source=bob").unwrap_err(),
        AskError::BadSource(_)
    ));
}

/// catalog's sidecar: STRICT, frontends may GET anything but /admin.
const CATALOG: &str = r#"
node: {name: catalog, namespace: shop, cluster: eu-west, labels: {app: catalog}}
security:
  defaultMtlsMode: STRICT
  authorizationPolicies:
    - name: AuthorizationPolicy/shop/no-admin
      action: DENY
      rules: [{to: [{paths: ["/admin*"]}]}]
    - name: AuthorizationPolicy/shop/frontends
      selector: {app: catalog}
      rules:
        - from: [{principals: ["spiffe://eu-west.isthmus.local/ns/shop/sa/frontend"]}]
          to: [{methods: [GET]}]
"#;

#[test]
fn a_denied_request_names_the_rule_and_an_allowed_one_too() {
    let s = snap(CATALOG);
    let now = SystemTime::now();
    let from = "source=spiffe%3A%2F%2Feu-west.isthmus.local%2Fns%2Fshop%2Fsa%2Ffrontend";
    let denied = inbound(
        &s,
        &ask(&format!(
            "url=http://catalog.shop/admin/users&inbound=8080&{from}"
        )),
        8080,
        Some("eu-west"),
        now,
    );
    assert_eq!(denied.mtls_mode, "STRICT");
    assert_eq!(
        (
            denied.decision.as_str(),
            denied.rule.as_str(),
            denied.status
        ),
        ("deny", "AuthorizationPolicy/shop/no-admin#0", 403)
    );
    let allowed = inbound(
        &s,
        &ask(&format!(
            "url=http://catalog.shop/items&inbound=8080&{from}"
        )),
        8080,
        Some("eu-west"),
        now,
    );
    assert_eq!(
        (
            allowed.decision.as_str(),
            allowed.rule.as_str(),
            allowed.status
        ),
        ("allow", "AuthorizationPolicy/shop/frontends#0", 200)
    );
    assert!(allowed.authentication.starts_with("not required"));
    // Another caller: no ALLOW rule takes it.
    let other = inbound(
        &s,
        &ask(
            "url=http://catalog.shop/items&inbound=8080&source=spiffe://eu-west.isthmus.local/ns/shop/sa/batch",
        ),
        8080,
        Some("eu-west"),
        now,
    );
    assert_eq!((other.rule.as_str(), other.status), ("default-deny", 403));
}

/// Two linked clusters behind our gateway's one entry share an address:
/// the choice names the endpoint by its place, not its address.
#[test]
fn the_choice_is_one_endpoint_even_when_two_share_the_gateways_address() {
    let s = snap(
        r#"
node: {name: frontend, namespace: shop, cluster: us-east, locality: {region: us-east}}
services:
  - name: catalog.shop.svc.clusterset.local
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - {address: 127.0.3.2, tunnelPort: 15009, viaCluster: eu-central, viaService: catalog.shop,
         identity: "spiffe://eu-central.isthmus.local", locality: {region: eu-central}}
      - {address: 127.0.3.2, tunnelPort: 15009, viaCluster: eu-west, viaService: catalog.shop,
         identity: "spiffe://eu-west.isthmus.local", locality: {region: eu-west}}
"#,
    );
    let states = states();
    let spec = s.services["catalog.shop.svc.clusterset.local"].clone();
    eject(&states, &spec, 0);
    let out = outbound(
        &s,
        &states,
        &ask("url=http://catalog.shop.svc.clusterset.local/"),
    );
    let b = &out.route.unwrap().backends[0];
    assert_eq!(b.endpoints[0].address, b.endpoints[1].address);
    assert!(b.endpoints[0].ejected);
    assert_eq!(b.chosen_index, Some(1));
    assert_eq!(b.endpoints[1].cluster, "eu-west");
}
