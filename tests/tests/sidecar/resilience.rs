//! Resilience: retries on another endpoint, the retry budget, timeouts,
//! fault injection, mirroring, rate limits, circuit breaking, and how a
//! broken upstream is reported.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use isthmus_sample::{self as sample, SampleApp};
use isthmus_tests::sidecar::*;

#[tokio::test]
async fn retries_go_to_a_different_endpoint() {
    let bad = SampleApp::new("catalog", "c", "bad");
    bad.fail_status.store(503, Ordering::SeqCst);
    let good = SampleApp::new("catalog", "c", "good");
    let sb = sample::serve(bad.clone(), LOCAL).await.unwrap();
    let sg = sample::serve(good.clone(), LOCAL).await.unwrap();
    let extra = "    loadBalancer: {policy: ROUND_ROBIN}\n    outlierDetection: {disabled: true}\n    routes:\n      - name: r\n        retry: {attempts: 1, retryOn: [5xx], backoffBase: 0.001s}\n";
    let mut env = start(&config(&[service(
        "catalog",
        "HTTP",
        &[sb.addr, sg.addr],
        extra,
    )]))
    .await;
    let out = env.addr("out");
    let client = h1();
    for _ in 0..10 {
        let (st, _, b) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(json(&b)["version"], "good");
    }
    assert_eq!(good.hits(), 10);
    assert!(
        bad.hits() >= 3,
        "round robin sends some first attempts to the bad one"
    );
    assert_eq!(
        env.metric(
            "isthmus_retries_total",
            &["destination_service=\"catalog\""]
        )
        .await,
        bad.hits() as f64,
        "every failure was retried exactly once"
    );
    let e = env.log_entry(|e| e.attempts == 2).await;
    assert_eq!(e.response_code, 200);

    // A POST with a body is replayed on the retry.
    bad.hits.store(0, Ordering::SeqCst);
    for _ in 0..4 {
        let (st, _, _) = send(&client, request(out, "catalog", "/echo", &[], "payload")).await;
        assert_eq!(st, 200);
    }
    assert!(bad.hits() >= 1);
    assert_eq!(good.last_header("content-length").as_deref(), Some("7"));
}

#[tokio::test]
async fn retry_budget_caps_retries() {
    let bad = SampleApp::new("catalog", "c", "bad");
    bad.fail_status.store(503, Ordering::SeqCst);
    let sb = sample::serve(bad.clone(), LOCAL).await.unwrap();
    let extra = "    outlierDetection: {disabled: true}\n    routes:\n      - name: r\n        retry: {attempts: 3, retryOn: [5xx], backoffBase: 0.001s, budget: {retryRatio: 0.5, minRetriesPerSecond: 0, ttl: 60s}}\n";
    let env = start(&config(&[service("catalog", "HTTP", &[sb.addr], extra)])).await;
    let out = env.addr("out");
    let client = h1();
    for _ in 0..10 {
        let (st, _, _) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 503);
    }
    // 10 requests at ratio 0.5 allow at most 5 retries (not 30).
    let retries = env.metric("isthmus_retries_total", &[]).await;
    assert!((4.0..=5.0).contains(&retries), "{retries}");
    assert_eq!(bad.hits() as f64, 10.0 + retries);
    assert!(
        env.metric("isthmus_retry_budget_exhausted_total", &[])
            .await
            >= 5.0
    );
}

#[tokio::test]
async fn connect_failure_is_retried_then_reported_with_a_reason() {
    let dead1 = std::net::TcpListener::bind(LOCAL)
        .unwrap()
        .local_addr()
        .unwrap();
    let dead2 = std::net::TcpListener::bind(LOCAL)
        .unwrap()
        .local_addr()
        .unwrap();
    let mut env = start(&config(&[service(
        "gone",
        "HTTP",
        &[dead1, dead2],
        "    outlierDetection: {disabled: true}\n",
    )]))
    .await;
    let (st, h, body) = get(env.addr("out"), "gone", "/", &[]).await;
    assert_eq!(st, 503);
    assert_eq!(h["x-isthmus-flags"], "UF");
    assert!(body.contains("connection to 127.0.0.1"), "{body}");
    let e = env.log_entry(|e| e.response_code == 503).await;
    assert_eq!(e.response_flags, "UF");
    assert_eq!(
        e.attempts, 4,
        "a move to the other endpoint (no application saw it), then the default policy's 2 retries"
    );
    assert_eq!(env.metric("isthmus_moves_total", &[]).await, 1.0);
    assert!(e.reason.unwrap().contains("failed"));
    assert_eq!(
        env.metric(
            "isthmus_errors_total",
            &["kind=\"upstream_connect_failure\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn upstream_reset_before_headers_is_a_502() {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s); // close without answering
        }
    });
    let mut env = start(&config(&[service(
        "rude",
        "HTTP",
        &[addr],
        "    routes: [{name: r, retry: {attempts: 0}}]\n",
    )]))
    .await;
    let (st, h, _) = get(env.addr("out"), "rude", "/", &[]).await;
    assert_eq!(st, 502);
    assert_eq!(h["x-isthmus-flags"], "UR");
    let e = env.log_entry(|e| e.response_code == 502).await;
    assert!(e.reason.is_some());
    server.abort();
}

#[tokio::test]
async fn per_try_and_route_timeouts() {
    let slow = SampleApp::new("slow", "c", "v1");
    slow.delay_ms.store(2000, Ordering::SeqCst);
    let s = sample::serve(slow.clone(), LOCAL).await.unwrap();
    let extra = "    outlierDetection: {disabled: true}\n    routes:\n      - name: per-try\n        matches: [{path: {prefix: /try}}]\n        retry: {attempts: 1, perTryTimeout: 0.1s, retryOn: [reset], backoffBase: 0.001s}\n      - name: total\n        timeout: 0.2s\n        retry: {attempts: 0}\n";
    let env = start(&config(&[service("slow", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let t = Instant::now();
    let (st, h, _) = get(out, "slow", "/try", &[]).await;
    assert_eq!(st, 504);
    assert_eq!(h["x-isthmus-flags"], "UT");
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "did not wait for the slow upstream"
    );
    assert_eq!(slow.hits(), 2, "the per-try timeout was retried once");
    let (st, _, body) = get(out, "slow", "/", &[]).await;
    assert_eq!(st, 504);
    assert!(body.contains("route timeout"), "{body}");
}

#[tokio::test]
async fn fault_injection_aborts_and_delays() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let extra = "    routes:\n\
      \x20     - name: abort\n        matches: [{path: {prefix: /abort}}]\n        fault: {abort: {httpStatus: 418, percentage: 100}}\n\
      \x20     - name: grpc-abort\n        matches: [{path: {prefix: /grpc}}]\n        fault: {abort: {grpcStatus: 8, percentage: 100}}\n\
      \x20     - name: delay\n        matches: [{path: {prefix: /delay}}]\n        fault: {delay: {fixedDelay: 0.3s, percentage: 100}}\n\
      \x20     - name: never\n        fault: {abort: {httpStatus: 500, percentage: 0}}\n";
    let mut env = start(&config(&[service("catalog", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let (st, h, _) = get(out, "catalog", "/abort", &[]).await;
    assert_eq!(st, 418);
    assert_eq!(h["x-isthmus-flags"], "FI");
    let (st, h, _) = get(
        out,
        "catalog",
        "/grpc",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h["grpc-status"], "8");
    assert_eq!(app.hits(), 0, "aborted requests never reach the app");
    let t = Instant::now();
    let (st, _, _) = get(out, "catalog", "/delay", &[]).await;
    assert_eq!(st, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let (st, _, _) = get(out, "catalog", "/x", &[]).await;
    assert_eq!(st, 200);
    let e = env.log_entry(|e| e.response_flags == "FI").await;
    assert_eq!(e.response_code, 418);
}

#[tokio::test]
async fn mirror_gets_a_copy_and_never_slows_the_request() {
    let main = SampleApp::new("catalog", "c", "main");
    let shadow = SampleApp::new("catalog", "c", "shadow");
    shadow.delay_ms.store(3000, Ordering::SeqCst);
    let sm = sample::serve(main.clone(), LOCAL).await.unwrap();
    let ss = sample::serve(shadow.clone(), LOCAL).await.unwrap();
    // A 1s route timeout: if the mirror delayed the request it would fail.
    let extra =
        "    routes:\n      - name: r\n        timeout: 1s\n        mirror: {service: shadow}\n";
    let env = start(&config(&[
        service("catalog", "HTTP", &[sm.addr], extra),
        service("shadow", "HTTP", &[ss.addr], ""),
    ]))
    .await;
    let (st, _, b) = send(
        &h1(),
        request(env.addr("out"), "catalog:80", "/m", &[], "body-to-copy"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(json(&b)["version"], "main");
    eventually("mirror received the copy", || async { shadow.hits() == 1 }).await;
    assert_eq!(
        shadow.last_header("host").as_deref(),
        Some("catalog-shadow:80")
    );
    assert_eq!(shadow.last_header("content-length").as_deref(), Some("12"));
}

#[tokio::test]
async fn local_rate_limit_answers_429() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let extra = "    routes:\n      - name: limited\n        rateLimit: {requestsPerSecond: 0.01, burst: 3}\n";
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(get(out, "catalog", "/", &[]).await.0.as_u16());
    }
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
    assert_eq!(
        env.metric("isthmus_rate_limited_total", &["route=\"limited\""])
            .await,
        2.0
    );
}

#[tokio::test]
async fn circuit_breaker_sheds_beyond_max_requests() {
    let slow = SampleApp::new("catalog", "c", "v1");
    slow.delay_ms.store(1500, Ordering::SeqCst);
    let s = sample::serve(slow.clone(), LOCAL).await.unwrap();
    let extra = "    connectionPool: {maxRequests: 1}\n";
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let first = tokio::spawn(async move { get(out, "catalog", "/", &[]).await });
    eventually("first request reached the app", || async {
        slow.hits() == 1
    })
    .await;
    let (st, h, body) = get(out, "catalog", "/", &[]).await;
    assert_eq!(st, 503);
    assert_eq!(h["x-isthmus-flags"], "UO");
    assert!(body.contains("circuit breaker"), "{body}");
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(
        env.metric(
            "isthmus_errors_total",
            &["kind=\"circuit_breaker_overflow\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        env.metric(
            "isthmus_circuit_breaker_sheds_total",
            &["destination_service=\"catalog\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn connections_retire_after_max_requests_per_connection() {
    let app = SampleApp::new("catalog", "c", "v1");
    let s = sample::serve(app.clone(), LOCAL).await.unwrap();
    let extra = "    connectionPool: {maxRequestsPerConnection: 2}\n";
    let mut env = start(&config(&[service("catalog", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let client = h1();
    let mut peers = Vec::new();
    for _ in 0..6 {
        let (st, _, b) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200);
        peers.push(json(&b)["peer"].as_str().unwrap().to_string());
    }
    let distinct: std::collections::HashSet<_> = peers.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "two requests per upstream connection: {peers:?}"
    );
    assert_eq!(peers[0], peers[1]);
    assert_ne!(peers[1], peers[2]);
    // The access log counts request bytes of bodies read whole.
    send(&client, request(out, "catalog", "/echo", &[], "12345")).await;
    let e = env.log_entry(|e| e.path.as_deref() == Some("/echo")).await;
    assert_eq!(e.bytes_received, 5);
    assert_eq!(e.bytes_sent, 5);
}

#[tokio::test]
async fn circuit_breaker_pending_limit_with_one_connection() {
    let slow = SampleApp::new("catalog", "c", "v1");
    slow.delay_ms.store(1000, Ordering::SeqCst);
    let s = sample::serve(slow.clone(), LOCAL).await.unwrap();
    let extra = "    connectionPool: {maxConnections: 1, maxPendingRequests: 1}\n    routes: [{name: r, retry: {attempts: 0}}]\n";
    let env = start(&config(&[service("catalog", "HTTP", &[s.addr], extra)])).await;
    let out = env.addr("out");
    let a = tokio::spawn(async move { get(out, "catalog", "/", &[]).await.0 });
    eventually("first request in flight", || async { slow.hits() == 1 }).await;
    // Second waits for the only connection (pending = 1); third is shed.
    let b = tokio::spawn(async move { get(out, "catalog", "/", &[]).await.0 });
    eventually("second request pending", || async {
        env.sidecar.proxy.services.dump()["catalog"]["activeRequests"] == 2
    })
    .await;
    let (st, _, body) = get(out, "catalog", "/", &[]).await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("max pending requests"), "{body}");
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(
        b.await.unwrap(),
        200,
        "the pending request got the connection when it was free"
    );
}

/// `isthmus-unprocessed` is believed only from a sidecar reached over
/// mTLS: an application (here a plain upstream) that sends it gets no
/// move (its 503 stands with no retry policy), and the header never
/// reaches the client.
#[tokio::test]
async fn an_application_cannot_claim_its_request_reached_no_application() {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nisthmus-unprocessed: UF\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let good = SampleApp::new("catalog", "c", "good");
    let sg = sample::serve(good.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service(
        "catalog",
        "HTTP",
        &[addr, sg.addr],
        "    loadBalancer: {policy: ROUND_ROBIN}\n    outlierDetection: {disabled: true}\n    routes: [{name: r, retry: {attempts: 0}}]\n",
    )]))
    .await;
    let out = env.addr("out");
    let client = h1();
    let mut refused = 0;
    for _ in 0..10 {
        let (st, h, _) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert!(!h.contains_key("isthmus-unprocessed"), "{h:?}");
        if st == 503 {
            refused += 1;
        } else {
            assert_eq!(st, 200);
        }
    }
    assert_eq!(refused, 5, "round robin: every other request, not moved");
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    assert_eq!(good.hits(), 5);
    assert_eq!(env.metric("isthmus_moves_total", &[]).await, 0.0);
    server.abort();
}

/// An HTTP/2 upstream that refuses a stream (RST_STREAM REFUSED_STREAM)
/// did not process it (RFC 9113 §8.7): the request moves to another
/// endpoint whatever the route's retry policy (here none).
#[tokio::test]
async fn a_refused_http2_stream_moves_to_another_endpoint() {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let refuser = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = refused.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let good = SampleApp::new("catalog", "c", "good");
    let sg = sample::serve(good.clone(), LOCAL).await.unwrap();
    let env = start(&config(&[service(
        "catalog",
        "HTTP2",
        &[refuser, sg.addr],
        "    loadBalancer: {policy: ROUND_ROBIN}\n    outlierDetection: {disabled: true}\n    routes: [{name: r, retry: {attempts: 0}}]\n",
    )]))
    .await;
    let out = env.addr("out");
    let client = h1();
    for _ in 0..10 {
        let (st, _, body) = send(&client, request(out, "catalog", "/", &[], "")).await;
        assert_eq!(st, 200, "{body}");
    }
    let refused = refused.load(Ordering::SeqCst);
    assert!(
        refused >= 3,
        "round robin sent some first tries there: {refused}"
    );
    assert_eq!(good.hits(), 10);
    assert_eq!(
        env.metric("isthmus_moves_total", &[]).await,
        refused as f64,
        "each refused stream moved once"
    );
    server.abort();
}
