use super::*;

#[test]
fn checks_parse_as_written_or_are_refused_by_name() {
    let ok = |t: &str, port: u16, probe: Probe| {
        assert_eq!(Check::parse(t), Ok(Check { port, probe }), "{t}");
    };
    ok("8080", 8080, Probe::Tcp);
    ok("8080=tcp", 8080, Probe::Tcp);
    ok(
        "8080=http:/healthz?full=1",
        8080,
        Probe::Http {
            path: "/healthz?full=1".into(),
        },
    );
    ok(
        "9090=grpc",
        9090,
        Probe::Grpc {
            service: String::new(),
        },
    );
    ok(
        "9090=grpc:shop.Catalog",
        9090,
        Probe::Grpc {
            service: "shop.Catalog".into(),
        },
    );
    for bad in [
        "",
        "0",
        "70000",
        "x",
        "8080=",
        "8080=udp",
        "8080=http",
        "8080=http:healthz",
        "8080=http:/a b",
        "8080=grpc:",
        "=tcp",
    ] {
        let e = Check::parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("PORT[=tcp|http:/PATH|grpc[:SERVICE]]"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn settings_that_cannot_work_are_refused() {
    assert!(Settings::default().validate().is_ok());
    let s = Settings::default();
    for bad in [
        Settings {
            timeout: Duration::from_secs(1),
            ..s
        },
        Settings {
            interval: Duration::ZERO,
            ..s
        },
        Settings {
            unhealthy_after: 0,
            ..s
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

/// Every sequence of results up to 6 long: the port's health is what a
/// reference reading of the thresholds says after each result, and a
/// change is reported exactly when it changes.
#[test]
fn thresholds_decide_exhaustively() {
    let s = Settings {
        unhealthy_after: 3,
        healthy_after: 2,
        ..Settings::default()
    };
    for len in 0..=6u32 {
        for bits in 0..(1u32 << len) {
            let results: Vec<bool> = (0..len).map(|i| bits & (1 << i) != 0).collect();
            let mut h = PortHealth::default();
            let mut want: Option<bool> = None;
            let mut run = 0u32;
            for (i, &ok) in results.iter().enumerate() {
                let before = h.healthy();
                let changed = h.observe(ok, &s);
                // Reference: the first result decides; then a flip needs
                // `unhealthy_after` failures / `healthy_after` successes in
                // a row.
                match want {
                    None => want = Some(ok),
                    Some(w) if w == ok => run = 0,
                    Some(w) => {
                        run += 1;
                        let needed = if ok { 2 } else { 3 };
                        if run >= needed {
                            want = Some(!w);
                            run = 0;
                        }
                    }
                }
                assert_eq!(
                    h.healthy(),
                    want.unwrap_or(true),
                    "{results:?} after {}",
                    i + 1
                );
                assert_eq!(
                    changed,
                    before != h.healthy(),
                    "{results:?} after {}",
                    i + 1
                );
            }
        }
    }
}

async fn failing_ports(
    checks: Vec<Check>,
    until: impl Fn(&BTreeSet<u16>) -> bool,
) -> BTreeSet<u16> {
    let (tx, mut rx) = watch::channel(BTreeSet::new());
    let task = tokio::spawn(run(
        "127.0.0.1".parse().unwrap(),
        checks,
        Settings {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(20),
            ..Settings::default()
        },
        tx,
    ));
    let got = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| until(s)))
        .await
        .expect("health settles")
        .unwrap()
        .clone();
    task.abort();
    got
}

/// Real probes: a listening port passes TCP, a closed one fails; HTTP
/// passes on 2xx and fails on 5xx; gRPC health passes on SERVING and fails
/// when the server is not a gRPC health server.
#[tokio::test]
async fn probes_tell_live_ports_from_dead_ones() {
    let app = isthmus_sample::SampleApp::new("catalog", "c", "v1");
    let up = isthmus_sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = up.addr.port();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let check = |port, probe| Check { port, probe };
    let got = failing_ports(
        vec![
            check(port, Probe::Tcp),
            check(closed, Probe::Tcp),
            check(
                port,
                Probe::Http {
                    path: "/status/200".into(),
                },
            ),
        ],
        |s| !s.is_empty(),
    )
    .await;
    assert_eq!(got, BTreeSet::from([closed]));
    let got = failing_ports(
        vec![check(
            port,
            Probe::Http {
                path: "/status/503".into(),
            },
        )],
        |s| !s.is_empty(),
    )
    .await;
    assert_eq!(got, BTreeSet::from([port]));
    // The sample app's gRPC echo is no health service: Check fails.
    let got = failing_ports(
        vec![check(
            port,
            Probe::Grpc {
                service: String::new(),
            },
        )],
        |s| !s.is_empty(),
    )
    .await;
    assert_eq!(got, BTreeSet::from([port]));
    up.stop().await;
}

/// A gRPC server that answers grpc.health.v1 passes; its NOT_SERVING
/// fails.
#[tokio::test]
async fn grpc_health_checks_read_the_serving_status() {
    use isthmus_api::grpc_health::v1::health_check_response::ServingStatus;
    use isthmus_api::grpc_health::v1::health_server::{Health, HealthServer};
    use isthmus_api::grpc_health::v1::{HealthCheckRequest, HealthCheckResponse};
    struct Fixed;
    #[tonic::async_trait]
    impl Health for Fixed {
        async fn check(
            &self,
            req: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
            let status = if req.into_inner().service == "sick" {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            Ok(tonic::Response::new(HealthCheckResponse {
                status: status as i32,
            }))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let svc = HealthServer::new(Fixed);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper::service::service_fn(move |req| {
                                tower_service::Service::call(&mut svc.clone(), req)
                            }),
                        )
                        .await;
            });
        }
    });
    let grpc = |service: &str| Check {
        port,
        probe: Probe::Grpc {
            service: service.into(),
        },
    };
    // Beside a closed port: only the closed one fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let got = failing_ports(
        vec![
            grpc(""),
            Check {
                port: closed,
                probe: Probe::Tcp,
            },
        ],
        |s| !s.is_empty(),
    )
    .await;
    assert_eq!(got, BTreeSet::from([closed]), "SERVING passes");
    let got = failing_ports(vec![grpc("sick")], |s| !s.is_empty()).await;
    assert_eq!(got, BTreeSet::from([port]));
    server.abort();
}
