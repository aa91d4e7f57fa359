use super::*;

fn ok_cluster(name: &str) -> Facts {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    Facts {
        context: name.into(),
        version: Some(Ok((33, "v1.33.1".into()))),
        crds: vec![(
            "httproutes.gateway.networking.k8s.io".into(),
            Some("v1.6.1".into()),
        )],
        provider: Some("aws".into()),
        deployments: vec![
            ("isthmus-federation".into(), Some((2, 2))),
            ("isthmus-eastwest".into(), Some((2, 2))),
        ],
        webhook_configured: Some(true),
        webhook_ca_bundle: true,
        webhook_dry_run: Some(Ok(true)),
        ca_not_after: Some(Ok(now + Duration::from_secs(365 * 86_400))),
        clock_offset: Some(0.2),
        links: Some(vec![LinkRow {
            name: "us-east".into(),
            peer: "us-east".into(),
            gateway: "1.2.3.4:15443".into(),
            connected: true,
            transport: Some("quic".into()),
            rtt_millis: Some(80.5),
            last_sync: None,
            imported_services: 2,
            problem: String::new(),
        }]),
        now: Some(now),
        ..Default::default()
    }
}

fn by_name<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

#[test]
fn a_healthy_cluster_passes_everything() {
    let f = ok_cluster("eu-west");
    for checks in [pre(&f), installed(&f)] {
        assert!(!failed(&checks), "{}", table(&checks));
        assert!(
            checks
                .iter()
                .all(|c| c.fix.is_empty() || c.status != Status::Ok)
        );
    }
    let all = installed(&f);
    assert_eq!(by_name(&all, "link to us-east").status, Status::Ok);
    assert!(by_name(&all, "link to us-east").detail.contains("80.5 ms"));
}

/// A broken fact: what, how it is broken, the check that says so, how.
type Case = (&'static str, fn(&mut Facts), &'static str, Status);

#[test]
fn each_problem_fails_or_warns_with_a_fix() {
    let cases: Vec<Case> = vec![
        (
            "old",
            |f| f.version = Some(Ok((28, "v1.28.9".into()))),
            "Kubernetes version",
            Status::Fail,
        ),
        (
            "down",
            |f| f.version = Some(Err("connection refused".into())),
            "API server",
            Status::Fail,
        ),
        (
            "rights",
            |f| f.denied = vec!["create clusterroles".into()],
            "permissions",
            Status::Fail,
        ),
        (
            "crds",
            |f| f.crds = vec![("serviceexports.multicluster.x-k8s.io".into(), None)],
            "CRDs",
            Status::Warn,
        ),
        (
            "kind",
            |f| f.provider = Some("kind".into()),
            "LoadBalancer (UDP)",
            Status::Warn,
        ),
        (
            "unready",
            |f| f.deployments[1].1 = Some((2, 1)),
            "isthmus-eastwest",
            Status::Fail,
        ),
        (
            "missing",
            |f| f.deployments[0].1 = None,
            "isthmus-federation",
            Status::Fail,
        ),
        (
            "no hook",
            |f| f.webhook_configured = Some(false),
            "injector",
            Status::Fail,
        ),
        (
            "no bundle",
            |f| f.webhook_ca_bundle = false,
            "injector",
            Status::Fail,
        ),
        (
            "refused",
            |f| f.webhook_dry_run = Some(Err("x509".into())),
            "injector",
            Status::Fail,
        ),
        (
            "uninjected",
            |f| f.webhook_dry_run = Some(Ok(false)),
            "injector",
            Status::Fail,
        ),
        (
            "untried",
            |f| f.webhook_dry_run = None,
            "injector",
            Status::Warn,
        ),
        (
            "expiring",
            |f| f.ca_not_after = Some(Ok(f.now.unwrap() + Duration::from_secs(86_400))),
            "CA",
            Status::Warn,
        ),
        (
            "expired",
            |f| f.ca_not_after = Some(Ok(f.now.unwrap() - Duration::from_secs(1))),
            "CA",
            Status::Fail,
        ),
        (
            "no root",
            |f| f.ca_not_after = Some(Err("no ConfigMap".into())),
            "CA",
            Status::Fail,
        ),
        (
            "fallback",
            |f| f.links.as_mut().unwrap()[0].transport = Some("h2".into()),
            "link to us-east",
            Status::Warn,
        ),
        (
            "down link",
            |f| {
                let l = &mut f.links.as_mut().unwrap()[0];
                l.connected = false;
                l.problem = "Unreachable: no answer".into();
            },
            "link to us-east",
            Status::Fail,
        ),
    ];
    for (what, change, name, want) in cases {
        let mut f = ok_cluster("eu-west");
        change(&mut f);
        let checks: Vec<Check> = pre(&f).into_iter().chain(installed(&f)).collect();
        let c = checks
            .iter()
            .find(|c| c.name == name && c.status != Status::Ok)
            .unwrap_or_else(|| panic!("{what}: {name} is ok:\n{}", table(&checks)));
        assert_eq!(c.status, want, "{what}: {c:?}");
        assert!(!c.fix.is_empty(), "{what}: no fix in {c:?}");
        assert_eq!(failed(&checks), want == Status::Fail, "{what}");
    }
}

#[test]
fn clocks_are_compared_across_clusters() {
    let mut a = ok_cluster("eu-west");
    let mut b = ok_cluster("us-east");
    assert_eq!(across(&[a.clone(), b.clone()])[0].status, Status::Ok);
    b.clock_offset = Some(-4.0);
    let c = &across(&[a.clone(), b.clone()])[0];
    assert_eq!(c.status, Status::Warn);
    assert!(
        c.detail.contains("eu-west and us-east") && c.detail.contains("4.2 s"),
        "{c:?}"
    );
    a.clock_offset = Some(40.0);
    assert_eq!(across(&[a.clone(), b])[0].status, Status::Fail);
    assert!(across(&[a]).is_empty(), "one cluster: nothing to compare");
}
