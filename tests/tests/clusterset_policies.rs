//! Policies shared with the cluster set (issue 22), three real clusters
//! linked every way (control planes, CAs, east-west gateways over QUIC):
//! eu-west writes a canary route and a DENY policy once, labelled
//! `isthmus.dev/clusterset: "true"`; both take effect in eu-central and
//! us-east (the route with each cluster's own services: `reviews-us-east`
//! is us-east's own reviews there too; `ratings` does not exist in
//! us-east, which reports it to eu-west, and only us-east does);
//! eu-central's catalog sidecar enforces the DENY on us-east's frontend;
//! each cluster's verdict reaches eu-west; a route made in eu-central wins
//! there; between two clusters' routes of one name the oldest wins in the
//! third, with a conflict reported to both; deleting the file in eu-west
//! rolls it all back.

use std::time::{Duration, Instant};

use isthmus_api::federation::v1::{PolicyResult, PolicyState};
use isthmus_api::model;
use isthmus_federation::store::ObjectKey;
use isthmus_testkit::{eventually, http};
use isthmus_tests::cluster::{Cluster, link};

/// Every cluster: a `reviews` Service (the route's parent), exported.
const REVIEWS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: reviews, namespace: shop}
"#;

/// eu-west and eu-central (not us-east): a local `ratings`.
const RATINGS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
"#;

/// What eu-west shares: a canary of reviews to us-east's and to the local
/// ratings, and a DENY of us-east's frontend on the catalog.
const SHARED: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: shop
  labels: {isthmus.dev/clusterset: "true"}
  creationTimestamp: "2026-02-01T00:00:00Z"
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
    - backendRefs:
        - {name: reviews, port: 80, weight: 80}
        - {name: reviews-us-east, port: 80, weight: 10}
        - {name: ratings, port: 80, weight: 10}
---
apiVersion: isthmus.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: no-us-east-frontend
  namespace: shop
  labels: {isthmus.dev/clusterset: "true"}
spec:
  selector: {matchLabels: {app: catalog}}
  action: DENY
  rules:
    - from: [{principals: ["spiffe://us-east.isthmus.local/ns/shop/sa/frontend"]}]
"#;

/// A route of the same name made elsewhere: to reviews alone.
fn own_canary(shared: bool, created: &str) -> String {
    let label = if shared {
        "labels: {isthmus.dev/clusterset: \"true\"}"
    } else {
        "labels: {}"
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: shop
  {label}
  creationTimestamp: "{created}"
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews}}]
  rules: [{{backendRefs: [{{name: reviews, port: 80}}]}}]
"#
    )
}

/// The backends of `cluster`'s reviews route (none: no route).
fn backends(c: &Cluster) -> Option<Vec<(String, u32)>> {
    let s = c.service("reviews.shop")?;
    let r = s
        .routes
        .iter()
        .find(|r| r.name.contains("reviews-canary"))?;
    Some(
        r.backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect(),
    )
}

/// What `from` told `origin` of the policy `kind shop/name`.
fn report(origin: &Cluster, kind: &str, name: &str, from: &str) -> Option<PolicyResult> {
    let key = ObjectKey {
        namespace: Some("shop".into()),
        name: name.into(),
    };
    let reports = &origin.cp.as_ref()?.reports;
    reports.of(kind, &key).remove(from)
}

fn state(r: &PolicyResult) -> PolicyState {
    PolicyState::try_from(r.state).unwrap_or(PolicyState::Refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_written_once_applies_in_every_cluster() {
    let mut west = Cluster::new("policies", "eu-west");
    let mut central = Cluster::new("policies", "eu-central");
    let mut east = Cluster::new("policies", "us-east");
    for c in [&mut west, &mut central, &mut east] {
        c.start_control_plane();
        c.start_gateway().await;
        c.write("reviews.yaml", REVIEWS);
    }
    // eu-central: its catalog, exported.
    central.write("catalog.yaml", isthmus_tests::bed::SHOP);
    for c in [&west, &central] {
        c.write("ratings.yaml", RATINGS);
    }
    for (a, b) in [(&west, &central), (&west, &east), (&central, &east)] {
        link(a, b, Duration::from_secs(600), "5m");
        link(b, a, Duration::from_secs(600), "5m");
    }
    let (catalog, _, meshed) = central.start_meshed_catalog().await;
    use model::listener::Kind;
    let frontend = east
        .start_frontend(vec![model::Listener {
            name: "out".into(),
            address: "127.0.0.1:0".into(),
            kind: Some(Kind::Http(model::HttpOutbound {})),
        }])
        .await;
    let out = eventually("frontend listener", || async {
        frontend.listener_addr("out")
    })
    .await;
    let call = || async move {
        http(out, "catalog-eu-central.shop", "/items")
            .await
            .map(|(s, _)| s)
    };
    eventually("us-east reaches eu-central's catalog", || async {
        call().await.filter(|s| *s == 200)
    })
    .await;
    for (c, peer) in [(&central, "us-east"), (&west, "us-east")] {
        eventually(&format!("{} imports reviews-us-east", c.name), || async {
            c.service("reviews-us-east.shop")
                .map(|_| ())
                .filter(|_| c.statuses().get(peer).is_some_and(|s| s.connected))
        })
        .await;
    }

    // Written once, in eu-west.
    let written = Instant::now();
    west.write("shared.yaml", SHARED);
    let canary = vec![
        ("reviews.shop".to_string(), 80),
        ("reviews-us-east.shop".to_string(), 10),
        ("ratings.shop".to_string(), 10),
    ];
    // us-east has no ratings: that share answers as a missing backend
    // does (500); reviews-us-east is its own reviews.
    let missing = canary[..2].to_vec();
    let mut took = Vec::new();
    for (c, want) in [(&central, canary.clone()), (&east, missing)] {
        eventually(&format!("{} applies eu-west's canary", c.name), || {
            let want = want.clone();
            async move { backends(c).filter(|b| *b == want) }
        })
        .await;
        took.push((c.name, written.elapsed()));
    }
    eprintln!("propagated (write in eu-west → route in the control plane): {took:?}");
    // us-east has no ratings: reported to eu-west by us-east, and by no
    // one else.
    let east_says = eventually("us-east's verdict reaches eu-west", || async {
        report(&west, "HTTPRoute", "reviews-canary", "us-east")
    })
    .await;
    assert_eq!(state(&east_says), PolicyState::Accepted);
    assert_eq!(east_says.reason, "BackendNotFound", "{east_says:?}");
    assert!(east_says.message.contains("ratings"), "{east_says:?}");
    let central_says = eventually("eu-central's verdict reaches eu-west", || async {
        report(&west, "HTTPRoute", "reviews-canary", "eu-central")
    })
    .await;
    assert_eq!(
        (state(&central_says), central_says.reason.as_str()),
        (PolicyState::Accepted, ""),
        "{central_says:?}"
    );
    // As the author sees it on the route (status in kube mode,
    // /config_dump in files mode): one verdict per cluster.
    let conditions = {
        let cp = west.cp.as_ref().unwrap();
        let p = cp.published.borrow().clone();
        isthmus_federation::server::all_conditions(&p, &cp.subscribers, &cp.reports)
    };
    let on_route: Vec<(String, String, String)> = conditions[&(
        "HTTPRoute",
        ObjectKey {
            namespace: Some("shop".into()),
            name: "reviews-canary".into(),
        },
    )]
        .iter()
        .filter(|c| c.type_.contains('/'))
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        on_route,
        [
            t(
                "eu-central.clusters.isthmus.dev/Accepted",
                "True",
                "Accepted"
            ),
            t(
                "eu-central.clusters.isthmus.dev/ResolvedRefs",
                "True",
                "ResolvedRefs"
            ),
            t("us-east.clusters.isthmus.dev/Accepted", "True", "Accepted"),
            t(
                "us-east.clusters.isthmus.dev/ResolvedRefs",
                "False",
                "BackendNotFound"
            ),
        ]
    );
    // What `isthmusctl status` shows on each side (/policies).
    let view = |c: &Cluster| {
        let cp = c.cp.as_ref().unwrap();
        let p = cp.published.borrow().clone();
        isthmus_federation::server::policies(&p, &cp.reports)
    };
    let shared = &view(&west).shared["HTTPRoute shop/reviews-canary"];
    assert_eq!(shared["us-east"].reason, "BackendNotFound", "{shared:?}");
    assert_eq!(shared["eu-central"].state, "Accepted", "{shared:?}");
    let received = &view(&central).received["HTTPRoute shop/reviews-canary"];
    assert_eq!(received["eu-west"].state, "Accepted", "{received:?}");
    // Received policies are not eu-central's problems.
    let problems = central
        .cp
        .as_ref()
        .unwrap()
        .published
        .borrow()
        .catalog
        .problems
        .clone();
    assert!(
        problems.iter().all(|p| p.key.name != "reviews-canary"),
        "{problems:?}"
    );

    // The DENY, enforced by eu-central's catalog sidecar.
    eventually(
        "us-east's frontend is refused by eu-west's policy",
        || async { call().await.filter(|s| *s == 403) },
    )
    .await;
    for from in ["eu-central", "us-east"] {
        let r = eventually(&format!("{from} accepts the DENY"), || async {
            report(&west, "AuthorizationPolicy", "no-us-east-frontend", from)
        })
        .await;
        assert_eq!(state(&r), PolicyState::Accepted, "{r:?}");
    }

    // A route of that name made in eu-central wins there.
    central.write("canary.yaml", &own_canary(false, "2026-03-01T00:00:00Z"));
    eventually("eu-central's own route applies there", || async {
        backends(&central).filter(|b| *b == [("reviews.shop".to_string(), 1)])
    })
    .await;
    let r = eventually("eu-central says it overrides", || async {
        report(&west, "HTTPRoute", "reviews-canary", "eu-central")
            .filter(|r| state(r) == PolicyState::Overridden)
    })
    .await;
    assert_eq!(r.reason, "LocalOverride");

    // Now us-east shares one of that name too, older than eu-west's:
    // eu-central (its own deleted) applies us-east's and both hear of it.
    std::fs::remove_file(central.dir.join("canary.yaml")).unwrap();
    east.write("canary.yaml", &own_canary(true, "2026-01-01T00:00:00Z"));
    eventually("eu-central applies the oldest", || async {
        backends(&central).filter(|b| *b == [("reviews.shop".to_string(), 1)])
    })
    .await;
    let lost = eventually("eu-west hears its route lost in eu-central", || async {
        report(&west, "HTTPRoute", "reviews-canary", "eu-central")
            .filter(|r| state(r) == PolicyState::Conflicted)
    })
    .await;
    assert!(lost.message.contains("us-east"), "{lost:?}");
    let won = eventually("us-east hears its route won in eu-central", || async {
        report(&east, "HTTPRoute", "reviews-canary", "eu-central")
            .filter(|r| state(r) == PolicyState::Accepted && !r.message.is_empty())
    })
    .await;
    assert!(won.message.contains("eu-west"), "{won:?}");
    // And each keeps its own: eu-west its route, us-east its own.
    assert_eq!(backends(&west), Some(canary.clone()));
    let r = eventually("eu-west overrides us-east's", || async {
        report(&east, "HTTPRoute", "reviews-canary", "eu-west")
            .filter(|r| state(r) == PolicyState::Overridden)
    })
    .await;
    assert_eq!(r.reason, "LocalOverride");

    // Rollback is one delete.
    std::fs::remove_file(east.dir.join("canary.yaml")).unwrap();
    std::fs::remove_file(west.dir.join("shared.yaml")).unwrap();
    for c in [&west, &central, &east] {
        eventually(&format!("{} has no canary", c.name), || async {
            backends(c).is_none().then_some(())
        })
        .await;
    }
    eventually("us-east's frontend is served again", || async {
        call().await.filter(|s| *s == 200)
    })
    .await;

    frontend.shutdown(Duration::from_millis(200)).await;
    catalog.shutdown(Duration::from_millis(200)).await;
    meshed.running.stop().await;
    for c in [&mut west, &mut central, &mut east] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
}

/// Whether `c` applies an authorization policy named `name` in shop.
fn authz(c: &Cluster, name: &str) -> bool {
    let Some(cp) = c.cp.as_ref() else {
        return false;
    };
    let p = cp.published.borrow();
    p.catalog.security.namespaces.get("shop").is_some_and(|s| {
        s.authorization_policies
            .iter()
            .any(|a| a.name.contains(name))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_policies_follow_the_partition_but_a_deny_stays() {
    for mode in ["FailStatic", "FailClosed"] {
        let test = format!("partition-{mode}");
        let mut west = Cluster::new(&test, "eu-west");
        let mut central = Cluster::new(&test, "eu-central");
        for c in [&mut west, &mut central] {
            c.start_control_plane();
            c.start_gateway().await;
            c.write("reviews.yaml", REVIEWS);
        }
        link(&west, &central, Duration::from_secs(600), "5m");
        link(&central, &west, Duration::from_secs(600), "1s");
        if mode == "FailClosed" {
            let file = central.dir.join("link-eu-west.yaml");
            let yaml = std::fs::read_to_string(&file).unwrap();
            assert!(yaml.contains("FailStatic"), "{yaml}");
            central.write(
                "link-eu-west.yaml",
                &yaml.replace("FailStatic", "FailClosed"),
            );
        }
        west.write("shared.yaml", SHARED);
        eventually(&format!("{mode}: eu-central applies both"), || async {
            (backends(&central).is_some() && authz(&central, "no-us-east-frontend")).then_some(())
        })
        .await;

        // eu-west's control plane goes away.
        west.stop_control_plane().await;
        let dropped = Instant::now();
        eventually(
            &format!("{mode}: eu-central sees the link down"),
            || async { (!central.status("eu-west").connected).then_some(()) },
        )
        .await;
        if mode == "FailStatic" {
            assert!(
                backends(&central).is_some() || dropped.elapsed() >= Duration::from_secs(1),
                "the route is kept until the TTL"
            );
        }
        eventually(&format!("{mode}: the route is withdrawn"), || async {
            backends(&central).is_none().then_some(())
        })
        .await;
        let gone_after = dropped.elapsed();
        assert!(
            authz(&central, "no-us-east-frontend"),
            "{mode}: a withdrawn DENY would widen access: it stays"
        );
        eprintln!("{mode}: route withdrawn {gone_after:?} after the drop; the DENY stays");
        if mode == "FailStatic" {
            // The TTL counts from the last time eu-west was heard.
            assert!(gone_after >= Duration::from_millis(500), "{gone_after:?}");
        }

        // eu-west is back without the file: its full state takes the DENY.
        std::fs::remove_file(west.dir.join("shared.yaml")).unwrap();
        west.start_control_plane();
        eventually(
            &format!("{mode}: the DENY goes once eu-west says so"),
            || async { (!authz(&central, "no-us-east-frontend")).then_some(()) },
        )
        .await;
        for c in [&mut west, &mut central] {
            c.stop.cancel();
            c.stop_control_plane().await;
        }
    }
}
