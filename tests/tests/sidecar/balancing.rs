//! Balancing: locality priorities with failover, outlier ejection, ring
//! hash stickiness, health flags.

use std::sync::atomic::Ordering;

use isthmus_sample::{self as sample, SampleApp};
use isthmus_tests::sidecar::*;

fn located(name: &str, eps: &[(std::net::SocketAddr, &str, &str, bool)], extra: &str) -> String {
    let mut s = format!("  - name: {name}\n    ports: [{{port: 80}}]\n    endpoints:\n");
    for (a, region, zone, unhealthy) in eps {
        s.push_str(&format!(
            "      - {{address: \"{a}\", locality: {{region: {region}, zone: {zone}}}, unhealthy: {unhealthy}}}\n"
        ));
    }
    s.push_str(extra);
    s
}

#[tokio::test]
async fn local_zone_first_then_fail_over_when_ejected() {
    let local = SampleApp::new("catalog", "eu-west", "local");
    let remote = SampleApp::new("catalog", "us-east", "remote");
    let sick = SampleApp::new("catalog", "eu-west", "sick");
    let sl = sample::serve(local.clone(), LOCAL).await.unwrap();
    let sr = sample::serve(remote.clone(), LOCAL).await.unwrap();
    let ss = sample::serve(sick.clone(), LOCAL).await.unwrap();
    let extra = "    outlierDetection: {consecutiveGatewayErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 100}\n";
    let env = start(&config(&[located(
        "catalog",
        &[
            (sl.addr, "eu-west", "eu-west-a", false),
            (sr.addr, "us-east", "us-east-a", false),
            (ss.addr, "eu-west", "eu-west-b", true),
        ],
        extra,
    )]))
    .await;
    let out = env.addr("out");
    let client = h1();
    for _ in 0..20 {
        let (st, _, b) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200);
        assert_eq!(json(&b)["version"], "local");
    }
    assert_eq!(remote.hits(), 0);
    assert_eq!(sick.hits(), 0, "an endpoint marked unhealthy gets nothing");

    // The local endpoint starts failing: retries go elsewhere at once, and
    // after two gateway errors it is ejected.
    local.fail_status.store(503, Ordering::SeqCst);
    for _ in 0..20 {
        let (st, _, b) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200, "the client never sees the failure: {b}");
        assert_eq!(json(&b)["version"], "remote");
    }
    assert_eq!(
        local.hits(),
        22,
        "ejected after 2 consecutive gateway errors"
    );
    assert_eq!(
        env.metric(
            "isthmus_outlier_ejections_total",
            &["destination_service=\"catalog\""]
        )
        .await,
        1.0
    );
    let dump = env.sidecar.proxy.services.dump();
    assert_eq!(
        dump["catalog"]["endpoints"][sl.addr.to_string()]["ejected"],
        true
    );
}

/// Three instances of one app in the proxy's own zone, and their endpoints.
async fn three_local_instances() -> (
    Vec<sample::Running>,
    Vec<(std::net::SocketAddr, &'static str, &'static str, bool)>,
) {
    let mut servers = Vec::new();
    for i in 0..3 {
        let app = SampleApp::new("cart", "c", &format!("v{i}"));
        servers.push(sample::serve(app, LOCAL).await.unwrap());
    }
    let eps = servers
        .iter()
        .map(|s| (s.addr, "eu-west", "eu-west-a", false))
        .collect();
    (servers, eps)
}

#[tokio::test]
async fn ring_hash_keeps_a_key_on_one_endpoint() {
    let (_servers, eps) = three_local_instances().await;
    let extra = "    loadBalancer: {policy: RING_HASH, hashKey: {header: x-user}}\n";
    let env = start(&config(&[located("cart", &eps, extra)])).await;
    let out = env.addr("out");
    let client = h1();
    let mut owners = std::collections::HashSet::new();
    for user in 0..30 {
        let id = format!("user-{user}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let (_, _, b) = send(&client, request(out, "cart", "/", &[("x-user", &id)], "")).await;
            seen.insert(json(&b)["instance"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{id} moved between endpoints: {seen:?}");
        owners.extend(seen);
    }
    assert_eq!(owners.len(), 3, "keys spread over all endpoints");
}

#[tokio::test]
async fn ring_hash_on_a_cookie_and_on_the_source_ip() {
    let (_servers, eps) = three_local_instances().await;
    let cookie = located(
        "cart",
        &eps,
        "    loadBalancer: {policy: RING_HASH, hashKey: {cookie: session}}\n",
    );
    let source = located(
        "cart-ip",
        &eps,
        "    loadBalancer: {policy: RING_HASH, hashKey: {sourceIp: true}}\n",
    );
    let env = start(&config(&[cookie, source])).await;
    let out = env.addr("out");
    let client = h1();
    let mut owners = std::collections::HashSet::new();
    for user in 0..20 {
        let c = format!("theme=dark; session=s{user}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let (_, _, b) = send(&client, request(out, "cart", "/", &[("cookie", &c)], "")).await;
            seen.insert(json(&b)["instance"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "session s{user} moved: {seen:?}");
        owners.extend(seen);
    }
    assert!(owners.len() >= 2, "sessions spread: {owners:?}");
    // One client address: always the same endpoint, over new connections.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let (_, _, b) = send(&h1(), request(out, "cart-ip", "/", &[], "")).await;
        seen.insert(json(&b)["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}
