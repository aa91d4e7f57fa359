//! Routing: host, path, header and method matches, weighted splits,
//! trace context, unknown hosts.

use isthmus_sample::{self as sample, SampleApp};
use isthmus_tests::sidecar::*;

#[tokio::test]
async fn routes_by_host_path_header_and_method() {
    let v1 = SampleApp::new("reviews", "eu-west", "v1");
    let v2 = SampleApp::new("reviews", "us-east", "v2");
    let admin = SampleApp::new("admin", "eu-west", "v1");
    let s1 = sample::serve(v1.clone(), LOCAL).await.unwrap();
    let s2 = sample::serve(v2.clone(), LOCAL).await.unwrap();
    let s3 = sample::serve(admin.clone(), LOCAL).await.unwrap();
    let routes = "    routes:\n\
      \x20     - name: canary\n        matches: [{headers: [{name: x-canary, exact: always}]}]\n        backends: [{service: reviews-v2, weight: 1}]\n\
      \x20     - name: admin-post\n        matches: [{path: {exact: /admin}, method: POST}]\n        backends: [{service: admin, weight: 1}]\n\
      \x20     - name: items\n        matches: [{path: {regex: \"/items/[0-9]+\"}}]\n        backends: [{service: reviews-v2, weight: 1}]\n\
      \x20     - name: stable\n        backends: [{service: reviews-v1, weight: 1}]\n";
    let env = start(&config(&[
        service(
            "reviews",
            "HTTP",
            &[],
            &format!("    hosts: [reviews.example.com, \"*.wild.example\"]\n{routes}"),
        ),
        service("reviews-v1", "HTTP", &[s1.addr], ""),
        service("reviews-v2", "HTTP", &[s2.addr], ""),
        service("admin", "HTTP", &[s3.addr], ""),
    ]))
    .await;
    let out = env.addr("out");
    let version = |body: &str| json(body)["version"].as_str().unwrap().to_string();

    let (st, _, b) = get(out, "reviews", "/", &[]).await;
    assert_eq!(st, 200);
    assert_eq!(version(&b), "v1");
    let (_, _, b) = get(out, "reviews:80", "/", &[("x-canary", "always")]).await;
    assert_eq!(version(&b), "v2");
    let (_, _, b) = get(out, "reviews.example.com", "/items/42", &[]).await;
    assert_eq!(version(&b), "v2");
    let (_, _, b) = get(out, "a.wild.example", "/items/x", &[]).await;
    assert_eq!(version(&b), "v1", "regex must match the whole path");
    let (_, _, b) = send(
        &h1(),
        request(out, "reviews.example.com", "/admin", &[], "x"),
    )
    .await;
    assert_eq!(json(&b)["service"], "admin");
    let (_, _, b) = get(out, "reviews", "/admin", &[]).await;
    assert_eq!(
        version(&b),
        "v1",
        "GET /admin does not match the POST route"
    );

    let (st, h, b) = get(out, "nowhere", "/", &[]).await;
    assert_eq!(st, 404);
    assert!(b.contains("no service for host"), "{b}");
    assert_eq!(h["x-isthmus-flags"], "NR");
    let (st, _, _) = get(out, "reviews:81", "/", &[]).await;
    assert_eq!(st, 404, "a port the service does not have");
}

#[tokio::test]
async fn query_params_and_header_modifiers_end_to_end() {
    // A canary for opted-in users (?canary=true on /api): the condition
    // is kept, never widened to all of /api; headers edited both ways.
    let v1 = SampleApp::new("catalog", "eu-west", "v1");
    let v2 = SampleApp::new("catalog", "eu-west", "v2");
    let s1 = sample::serve(v1.clone(), LOCAL).await.unwrap();
    let s2 = sample::serve(v2.clone(), LOCAL).await.unwrap();
    let routes = "    routes:\n\
      \x20     - name: opted-in\n        matches: [{path: {prefix: /api}, queryParams: [{name: canary, exact: \"true\"}]}]\n        backends: [{service: catalog-v2, weight: 1}]\n\
      \x20       requestHeaders: {set: [{name: x-env, value: canary}], add: [{name: x-tag, value: b}], remove: [x-debug]}\n\
      \x20       responseHeaders: {add: [{name: x-served-by, value: canary}], remove: [content-type]}\n\
      \x20     - name: stable\n        backends: [{service: catalog-v1, weight: 1}]\n";
    let env = start(&config(&[
        service("catalog", "HTTP", &[], routes),
        service("catalog-v1", "HTTP", &[s1.addr], ""),
        service("catalog-v2", "HTTP", &[s2.addr], ""),
    ]))
    .await;
    let out = env.addr("out");
    let version = |body: &str| json(body)["version"].as_str().unwrap().to_string();
    for (path, want) in [
        ("/api/items?canary=true", "v2"),
        ("/api/items?x=1&canary=%74rue", "v2"),
        ("/api/items", "v1"),
        ("/api/items?canary=false", "v1"),
        ("/other?canary=true", "v1"),
    ] {
        let (st, h, b) = get(
            out,
            "catalog",
            path,
            &[("x-env", "prod"), ("x-tag", "a"), ("x-debug", "1")],
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(version(&b), want, "{path}");
        if want == "v2" {
            assert_eq!(h["x-served-by"], "canary");
            assert!(!h.contains_key("content-type"), "removed from the response");
            assert_eq!(v2.last_header("x-env").as_deref(), Some("canary"));
            assert_eq!(v2.last_header("x-debug"), None);
            let tags = v2.last_headers.lock().clone().unwrap();
            let tags: Vec<_> = tags.get_all("x-tag").iter().collect();
            assert_eq!(tags, ["a", "b"], "added beside the caller's");
        } else {
            assert!(!h.contains_key("x-served-by"), "{path}");
            assert_eq!(v1.last_header("x-env").as_deref(), Some("prod"));
        }
    }
}

#[tokio::test]
async fn redirects_and_rewrites_end_to_end() {
    let app = SampleApp::new("catalog", "eu-west", "v1");
    let s1 = sample::serve(app.clone(), LOCAL).await.unwrap();
    let routes = "    routes:\n\
      \x20     - name: moved\n        matches: [{path: {prefix: /old}}]\n\
      \x20       redirect: {scheme: https, path: {prefix: /new}, statusCode: 301}\n\
      \x20     - name: v1\n        matches: [{path: {prefix: /v1}}]\n        backends: [{service: catalog-v1, weight: 1}]\n\
      \x20       rewrite: {hostname: catalog.internal, path: {prefix: /v2}}\n\
      \x20     - name: rest\n        backends: [{service: catalog-v1, weight: 1}]\n";
    let env = start(&config(&[
        service("catalog", "HTTP", &[], routes),
        service("catalog-v1", "HTTP", &[s1.addr], ""),
    ]))
    .await;
    let out = env.addr("out");
    let (st, h, _) = get(out, "catalog", "/old/items?page=2", &[]).await;
    assert_eq!(st, 301);
    assert_eq!(h["location"], "https://catalog/new/items?page=2");
    assert_eq!(app.hits(), 0, "a redirect is answered by the sidecar");
    let (st, _, b) = get(out, "catalog", "/v1/items?page=2", &[]).await;
    assert_eq!(st, 200);
    assert_eq!(json(&b)["path"], "/v2/items?page=2");
    assert_eq!(json(&b)["host"], "catalog.internal");
    let (_, _, b) = get(out, "catalog", "/v1x", &[]).await;
    assert_eq!(json(&b)["path"], "/v1x", "whole segments only");
}

#[tokio::test]
async fn weighted_split_follows_weights_and_zero_gets_nothing() {
    let a = SampleApp::new("a", "c", "a");
    let b = SampleApp::new("b", "c", "b");
    let c = SampleApp::new("c", "c", "c");
    let (sa, sb, sc) = (
        sample::serve(a.clone(), LOCAL).await.unwrap(),
        sample::serve(b.clone(), LOCAL).await.unwrap(),
        sample::serve(c.clone(), LOCAL).await.unwrap(),
    );
    let routes = "    routes:\n      - name: split\n        backends: [{service: a, weight: 75}, {service: b, weight: 25}, {service: c, weight: 0}]\n";
    let env = start(&config(&[
        service("front", "HTTP", &[], routes),
        service("a", "HTTP", &[sa.addr], ""),
        service("b", "HTTP", &[sb.addr], ""),
        service("c", "HTTP", &[sc.addr], ""),
    ]))
    .await;
    let out = env.addr("out");
    let client = h1();
    for _ in 0..400 {
        let (st, _, _) = send(&client, request(out, "front", "/", &[], "")).await;
        assert_eq!(st, 200);
    }
    // Binomial(400, 0.25): mean 100, sd ~8.7; 60..140 is beyond 4.5 sd.
    assert!((60..140).contains(&b.hits()), "b got {}", b.hits());
    assert_eq!(a.hits() + b.hits(), 400);
    assert_eq!(c.hits(), 0);
}

#[tokio::test]
async fn trace_context_is_propagated_with_a_new_span_and_logged() {
    let app = SampleApp::new("catalog", "eu-west", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let mut env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let out = env.addr("out");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    get(out, "catalog", "/", &[("traceparent", tp)]).await;
    let seen = app.last_header("traceparent").unwrap();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "a new span id per hop: {seen}"
    );
    assert!(seen.ends_with("-01"));
    assert!(app.last_header("x-request-id").is_some());
    let e = env.log_entry(|e| e.trace_id.is_some()).await;
    assert_eq!(
        e.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(e.response_code, 200);
    assert_eq!(e.destination_service.as_deref(), Some("catalog"));
    assert_eq!(e.upstream_host, Some(s.addr.to_string()));
    assert_eq!(e.direction, "outbound");

    // Without one, a new trace starts.
    get(out, "catalog", "/", &[("traceparent", "garbage")]).await;
    let seen = app.last_header("traceparent").unwrap();
    assert!(!seen.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(seen.len(), 55);
}
