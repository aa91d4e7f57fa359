//! Failover across regions without losing a request (issue 19), with
//! real clusters in-process (control plane, east-west gateway, sidecars
//! and sample apps each): eu-west's frontend calls
//! `catalog.shop.svc.clusterset.local`, served by eu-central and us-east,
//! at 100 requests a second over keep-alive connections (GETs and POSTs),
//! while a serving cluster loses its app or its sidecar. No request may
//! fail: a request that reached no application (the remote sidecar could
//! not connect to its app, the remote gateway found no endpoint) moves at
//! once to the other cluster, whatever its method.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use isthmus_testkit::eventually;
use isthmus_tests::bed::{Bed, CLUSTERSET, spec, until_answered_by};
use isthmus_tests::load::{self, Load};

/// eu-west's policy for the catalog it calls: no retries, no outlier
/// detection. Only moves can keep requests from failing.
const NO_RETRIES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: catalog, namespace: shop}
spec:
  targetRef: {name: catalog}
  outlierDetection: {disabled: true}
  retry: {attempts: 0}
"#;

/// Runs the load, does `event` 1 s in, keeps the load 3 s more, and
/// checks that no request failed and that the answers left eu-central.
async fn no_request_lost(bed: &mut Bed, event: impl AsyncFnOnce(&mut Bed)) {
    let out = bed.out().await;
    let l = Load::start(spec(out, 100));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = l.elapsed();
    event(bed).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = l.stop().await;
    let r = load::report(&samples, at, "eu-central");
    let count = |before: bool, c: &str| {
        samples
            .iter()
            .filter(|s| (s.at < at) == before && s.cluster.as_deref() == Some(c))
            .count()
    };
    eprintln!(
        "before: eu-central {} us-east {}; after: eu-central {} us-east {}",
        count(true, "eu-central"),
        count(true, "us-east"),
        count(false, "eu-central"),
        count(false, "us-east")
    );
    let posts = samples
        .iter()
        .filter(|s| s.method == http::Method::POST)
        .count();
    eprintln!(
        "{} requests ({posts} POST), {} failed, answers left eu-central after {:?}, latency after: p99 {:?} max {:?}",
        r.sent,
        r.failed.len(),
        r.failover,
        r.p99_after,
        r.max_after
    );
    assert!(r.sent > 300, "the load ran: {}", r.sent);
    assert!(
        samples
            .iter()
            .any(|s| s.at < at && s.cluster.as_deref() == Some("eu-central")),
        "eu-central served before the event"
    );
    assert!(r.failed.is_empty(), "failed: {:#?}", r.failed);
    assert!(r.failover.is_some(), "answers kept coming from eu-central");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_app_killed_loses_no_request() {
    init_tracing();
    let mut bed = Bed::start("app-killed", "").await;
    no_request_lost(&mut bed, async |bed: &mut Bed| {
        // The app stops listening; its sidecar stays up and answers the
        // callers' sidecars that it could not reach it.
        let app = bed.catalogs[0].running.take().unwrap();
        app.stop().await;
    })
    .await;
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_sidecar_stopped_loses_no_request() {
    init_tracing();
    let mut bed = Bed::start("sidecar-stopped", "").await;
    no_request_lost(&mut bed, async |bed: &mut Bed| {
        // The sidecar drains and goes; eu-central's gateway finds no
        // endpoint to join the callers' streams to.
        let sidecar = bed.catalogs[0].sidecar.take().unwrap();
        sidecar.shutdown(Duration::from_millis(200)).await;
    })
    .await;
    bed.stop().await;
}

/// eu-central's east-west gateway goes: eu-west's gateway loses the
/// peer and refuses streams to it at once; each such request moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_gateway_stopped_loses_no_request() {
    init_tracing();
    let mut bed = Bed::start("gateway-stopped", "").await;
    no_request_lost(&mut bed, async |bed: &mut Bed| {
        bed.clusters[1].stop_gateway().await;
    })
    .await;
    bed.stop().await;
}

/// Health at the source: eu-central's catalog app dies under load. Its
/// sidecar's check fails, eu-central's control plane marks the workload
/// unhealthy and exports a healthy count of 0, and eu-west stops sending
/// there; the app returns on the same port and traffic comes back with the
/// health (the outlier ejection its failures caused ends with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_app_leaves_the_clusterset_and_comes_back_with_its_health() {
    init_tracing();
    let mut bed = Bed::start("health", "").await;
    let central_health = |bed: &Bed| {
        bed.clusters[0].service(CLUSTERSET).and_then(|s| {
            s.endpoints
                .iter()
                .find(|e| e.via_cluster == "eu-central")
                .map(|e| !e.unhealthy)
        })
    };
    assert_eq!(central_health(&bed), Some(true));
    let out = bed.out().await;
    let l = Load::start(spec(out, 100));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let app = bed.catalogs[0].running.take().unwrap();
    let addr = app.addr;
    let killed = Instant::now();
    app.stop().await;
    eventually("eu-central's catalog unhealthy in eu-west", || async {
        (central_health(&bed) == Some(false)).then_some(())
    })
    .await;
    let detected = killed.elapsed();
    let back_at = l.elapsed();
    let returned = Instant::now();
    bed.catalogs[0].running = Some(
        isthmus_sample::serve(
            isthmus_sample::SampleApp::new("catalog", "eu-central", "v1"),
            addr,
        )
        .await
        .unwrap(),
    );
    eventually("eu-central's catalog healthy again in eu-west", || async {
        (central_health(&bed) == Some(true)).then_some(())
    })
    .await;
    let healthy_again = returned.elapsed();
    // Traffic returns with the health, not when an ejection ends (30 s).
    until_answered_by(out, "eu-central").await;
    let traffic_back = returned.elapsed();
    let samples = l.stop().await;
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok()).collect();
    let back = samples
        .iter()
        .filter(|s| s.at > back_at && s.cluster.as_deref() == Some("eu-central"))
        .count();
    eprintln!(
        "{} requests, {} failed; unhealthy in eu-west {detected:?} after the kill; healthy {healthy_again:?} and answering {traffic_back:?} after the return ({back} answers of the load)",
        samples.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    bed.stop().await;
}

/// eu-central's gateway becomes unreachable (its packets dropped: no
/// reset, no close). eu-west's gateway hears nothing for 0.8 s, says the
/// peer is down, and eu-west's sidecars stop choosing eu-central; requests
/// already on the silent link are retried elsewhere. When the path
/// returns, the link is made again and traffic comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_cluster_loses_no_request_and_comes_back() {
    init_tracing();
    let bed = Bed::start_with("partition", "", true, true).await;
    let central_up = |dump: &serde_json::Value| {
        dump["peerLiveness"]
            .as_object()?
            .values()
            .find_map(|peers| peers["eu-central"]["up"].as_bool().or(Some(false)))
    };
    eventually("eu-west's frontend hears eu-central is up", || async {
        (central_up(&bed.frontend_dump().await) == Some(true)).then_some(())
    })
    .await;
    let out = bed.out().await;
    let l = Load::start(spec(out, 100));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let silent = bed.partition.clone().unwrap();
    let at = l.elapsed();
    let cut = Instant::now();
    silent.store(true, Ordering::SeqCst);
    eventually("eu-west's frontend hears eu-central is down", || async {
        (central_up(&bed.frontend_dump().await) == Some(false)).then_some(())
    })
    .await;
    let detected = cut.elapsed();
    // eu-west's gateway says the same in its /config_dump.
    let gateway = bed.clusters[0].gateway.as_ref().unwrap().0.admin_addr();
    let (_, dump) = isthmus_testkit::http(gateway, "admin", "/config_dump")
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let peer = dump["eastwest"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cluster"] == "eu-central")
        .unwrap();
    assert_eq!(peer["liveness"]["up"], false, "{peer}");
    // The load runs on through the partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healed = Instant::now();
    silent.store(false, Ordering::SeqCst);
    eventually(
        "eu-west's frontend hears eu-central is up again",
        || async { (central_up(&bed.frontend_dump().await) == Some(true)).then_some(()) },
    )
    .await;
    let up_again = healed.elapsed();
    until_answered_by(out, "eu-central").await;
    let traffic_back = healed.elapsed();
    let samples = l.stop().await;
    let r = load::report(&samples, at, "eu-central");
    let from_central = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at < to && s.cluster.as_deref() == Some("eu-central"))
            .count()
    };
    eprintln!(
        "answers from eu-central: before the cut {}, in the first second after {}",
        from_central(Duration::ZERO, at),
        from_central(at, at + Duration::from_secs(1))
    );
    assert!(
        from_central(Duration::ZERO, at) > 0,
        "eu-central served before"
    );
    eprintln!(
        "{} requests, {} failed; eu-central down at eu-west's frontend {detected:?} after the cut, up {up_again:?} and answering {traffic_back:?} after the heal; latency after the cut: p99 {:?} max {:?}",
        r.sent,
        r.failed.len(),
        r.p99_after,
        r.max_after
    );
    assert!(r.failed.is_empty(), "failed: {:#?}", r.failed);
    bed.stop().await;
}

/// With retries and outlier detection off, a request that reached no
/// application still moves (GET or POST): nothing else sends it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_application_saw_move_without_a_retry_policy() {
    init_tracing();
    let mut bed = Bed::start("no-retries", NO_RETRIES).await;
    eventually("eu-west's policy at its frontend", || async {
        let dump = bed.frontend_dump().await;
        let svc = dump["config"]["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == CLUSTERSET)?
            .clone();
        (svc["outlierDetection"]["disabled"] == true
            && svc["routes"][0]["retry"] == serde_json::json!({}))
        .then_some(())
    })
    .await;
    no_request_lost(&mut bed, async |bed: &mut Bed| {
        let app = bed.catalogs[0].running.take().unwrap();
        app.stop().await;
    })
    .await;
    bed.stop().await;
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
