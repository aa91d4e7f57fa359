//! Lifecycle: live reloads (valid and invalid), connections surviving a
//! reload, drain on shutdown, admin endpoints.

use std::sync::atomic::Ordering;
use std::time::Duration;

use isthmus_sample::{self as sample, SampleApp};
use isthmus_tests::sidecar::*;

#[tokio::test]
async fn reload_shifts_traffic_and_an_invalid_file_keeps_the_last_good_config() {
    let v1 = SampleApp::new("reviews", "c", "v1");
    let v2 = SampleApp::new("reviews", "c", "v2");
    let s1 = sample::serve(v1.clone(), LOCAL).await.unwrap();
    let s2 = sample::serve(v2.clone(), LOCAL).await.unwrap();
    let with_weights = |w1: u32, w2: u32| {
        config(&[
            service(
                "reviews",
                "HTTP",
                &[],
                &format!(
                    "    routes:\n      - name: split\n        backends: [{{service: v1, weight: {w1}}}, {{service: v2, weight: {w2}}}]\n"
                ),
            ),
            service("v1", "HTTP", &[s1.addr], ""),
            service("v2", "HTTP", &[s2.addr], ""),
        ])
    };
    let env = start(&with_weights(1, 0)).await;
    let out = env.addr("out");
    let client = h1();
    let version = |b: String| json(&b)["version"].as_str().unwrap().to_string();
    assert_eq!(
        version(send(&client, request(out, "reviews", "/", &[], "")).await.2),
        "v1"
    );

    // The same keep-alive connection keeps working across the reload.
    env.reload(&with_weights(0, 1)).await;
    assert_eq!(
        version(send(&client, request(out, "reviews", "/", &[], "")).await.2),
        "v2"
    );

    // An invalid edit: refused, reported with its line, old config stays.
    let generation = env.sidecar.store().generation();
    let broken = with_weights(1, 0).replace("service: v1", "service: missing");
    std::fs::write(&env.path, &broken).unwrap();
    let admin = env.sidecar.admin_addr();
    eventually("rejection reported", || async {
        let (_, _, dump) = get(admin, "admin", "/config_dump", &[]).await;
        json(&dump)["lastRejected"]
            .as_str()
            .is_some_and(|r| r.contains("backends[0].service"))
    })
    .await;
    let (_, _, dump) = get(admin, "admin", "/config_dump", &[]).await;
    let why = json(&dump)["lastRejected"].as_str().unwrap().to_string();
    assert!(why.contains("line "), "{why}");
    assert_eq!(env.sidecar.store().generation(), generation);
    assert_eq!(
        version(send(&client, request(out, "reviews", "/", &[], "")).await.2),
        "v2"
    );
    assert_eq!(
        env.metric("isthmus_config_reloads_total", &["result=\"rejected\""])
            .await,
        1.0
    );
    assert_eq!(
        env.metric("isthmus_config_reloads_total", &["result=\"applied\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn listeners_follow_the_config() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let base = config(&[service("catalog", "HTTP", &[s.addr], "")]);
    let env = start(&base).await;
    let out = env.addr("out");
    let with_second = base.replace(
        "listeners:\n",
        "listeners:\n  - {name: second, address: \"127.0.0.1:0\", http: {}}\n",
    );
    env.reload(&with_second).await;
    eventually("second listener bound", || async {
        env.sidecar.listener_addr("second").is_some()
    })
    .await;
    assert_eq!(
        env.addr("out"),
        out,
        "an unchanged listener keeps its socket"
    );
    let second = env.addr("second");
    assert_eq!(get(second, "catalog", "/", &[]).await.0, 200);
    env.reload(&base).await;
    eventually("second listener closed", || async {
        tokio::net::TcpStream::connect(second).await.is_err()
    })
    .await;
    assert_eq!(get(out, "catalog", "/", &[]).await.0, 200);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let slow = SampleApp::new("catalog", "c", "v1");
    slow.delay_ms.store(700, Ordering::SeqCst);
    let s = sample::serve(slow.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let out = env.addr("out");
    let admin = env.sidecar.admin_addr();
    assert_eq!(get(admin, "admin", "/readyz", &[]).await.0, 200);
    let in_flight = tokio::spawn(async move { get(out, "catalog", "/", &[]).await.0 });
    eventually("request reached the app", || async { slow.hits() == 1 }).await;
    let Env {
        sidecar, log, file, ..
    } = env;
    drop((log, file));
    let shutdown = tokio::spawn(sidecar.shutdown(Duration::from_secs(10)));
    eventually("listener closed", || async {
        tokio::net::TcpStream::connect(out).await.is_err()
    })
    .await;
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request finished"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn admin_endpoints() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], "")])).await;
    let admin = env.sidecar.admin_addr();
    get(env.addr("out"), "catalog", "/", &[]).await;
    assert_eq!(get(admin, "a", "/healthz", &[]).await.0, 200);
    assert_eq!(get(admin, "a", "/readyz", &[]).await.0, 200);
    assert_eq!(get(admin, "a", "/nope", &[]).await.0, 404);
    let (_, _, dump) = get(admin, "a", "/config_dump", &[]).await;
    let dump = json(&dump);
    assert_eq!(dump["config"]["services"][0]["name"], "catalog");
    assert!(
        dump["listeners"]["out"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    eventually("request metric", || async {
        env.metric(
            "isthmus_requests_total",
            &[
                "direction=\"outbound\"",
                "source_workload=\"tester\"",
                "destination_service=\"catalog\"",
                "response_code=\"200\"",
            ],
        )
        .await
            == 1.0
    })
    .await;
    let m = env.metrics().await;
    assert!(m.contains("isthmus_request_duration_seconds_bucket"), "{m}");
}
