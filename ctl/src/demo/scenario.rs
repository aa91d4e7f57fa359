//! The scenarios `--scenario` runs by itself while the traffic flows:
//! the cross-cluster canary (SCENARIOS.md 3) and failover across regions
//! (2). Each step changes one thing (a file in a store, a process), then
//! waits on the answers the frontends see (never on a timer) and says
//! what happened and how long it took. A step whose outcome is wrong
//! fails the scenario (the demo then exits non-zero).

use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::Demo;
use super::mesh::{self, CLUSTERS, Cluster};
use super::traffic::{self, Answer, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A canary written once in eu-west and shared with the cluster set
    /// shifts every cluster's reviews to v2 in us-east step by step (10,
    /// 50, 100 %), checks `x-canary: always`, then rolls back.
    Canary,
    /// eu-west's catalog stops (eu-central takes over), then eu-central's
    /// gateway (nothing left: fast errors), then both come back.
    Failover,
    /// Every way a region can fail, one after the other, each healed
    /// before the next: a remote app, sidecar, gateway or control plane
    /// killed, a remote endpoint silent and a remote gateway partitioned
    /// (--netns), a local endpoint killed. No GET may fail.
    Regions,
    /// Random kills of apps, sidecars, gateways and control planes under
    /// load (--chaos-rounds), then a table of failed requests and
    /// recovery times.
    Chaos,
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Answers of `frontend` to `service` from now on.
pub(super) struct Watch {
    feed: broadcast::Receiver<Answer>,
    frontend: &'static str,
    service: &'static str,
    /// Answers to requests sent before this are old news.
    pub(super) since: Instant,
}

impl Watch {
    pub(super) fn new(demo: &Demo, frontend: &'static str, service: &'static str) -> Self {
        Self {
            feed: demo.stats.feed.subscribe(),
            frontend,
            service,
            since: Instant::now(),
        }
    }

    pub(super) async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Answer> {
        loop {
            match tokio::time::timeout_at(deadline, self.feed.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Ok(a))
                    if a.frontend == self.frontend
                        && a.service == self.service
                        && a.sent() >= self.since =>
                {
                    return Some(a);
                }
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Waits until `n` answers in a row satisfy `pred`; returns the
    /// answers seen until then, and the first of the run (None: deadline).
    pub(super) async fn until_run(
        &mut self,
        n: usize,
        within: Duration,
        pred: impl Fn(&Answer) -> bool,
    ) -> (Window, Option<Instant>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Window::default();
        let mut run: Vec<Instant> = Vec::new();
        while let Some(a) = self.next(deadline).await {
            seen.record(&a);
            if pred(&a) {
                run.push(a.at);
                if run.len() >= n {
                    return (seen, Some(run[0]));
                }
            } else {
                run.clear();
            }
        }
        (seen, None)
    }

    /// `until_run` of answers from `cluster`.
    pub(super) async fn until_served_by(
        &mut self,
        n: usize,
        within: Duration,
        cluster: &str,
    ) -> (Window, Option<Instant>) {
        self.until_run(n, within, |a| a.served_by.as_deref() == Some(cluster))
            .await
    }

    /// Everything seen during `period`.
    pub(super) async fn during(&mut self, period: Duration) -> Window {
        let deadline = tokio::time::Instant::now() + period;
        let mut w = Window::default();
        while let Some(a) = self.next(deadline).await {
            w.record(&a);
        }
        w
    }
}

fn served(w: &Window, cluster: &str) -> u64 {
    w.served.get(cluster).copied().unwrap_or(0)
}

pub async fn run(demo: &Demo, scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Canary => canary(demo).await,
        Scenario::Failover => failover(demo).await,
        Scenario::Regions => super::regions::run(demo).await,
        Scenario::Chaos => super::chaos::run(demo).await,
    }
}

async fn canary(demo: &Demo) -> anyhow::Result<()> {
    let west = Cluster::by_name("eu-west").expect("sample mesh");
    let route = demo.store(&west).join("reviews-canary.yaml");
    demo.say(format!(
        "canary: every frontend calls reviews.shop.svc.clusterset.local; an HTTPRoute written once in eu-west ({}), shared with the cluster set, sends a share to v2 in us-east (reviews-us-east) and the rest to v1 in eu-west (reviews-eu-west)",
        route.display()
    ));
    let mut watches: Vec<Watch> = CLUSTERS
        .iter()
        .map(|c| Watch::new(demo, c.name, "reviews"))
        .collect();
    for weight in [10u32, 50, 100] {
        let written = Instant::now();
        demo.write(&route, &mesh::canary_route(weight))?;
        let mut applied = Vec::new();
        for c in CLUSTERS {
            applied.push(split_applied(c, weight).await?);
        }
        let last = applied.iter().max().copied().unwrap_or(written);
        let mut seen = Vec::new();
        for w in &mut watches {
            w.since = last;
        }
        // The three frontends side by side, over the same 3 s.
        let windows = futures_util::future::join_all(
            watches.iter_mut().map(|w| w.during(Duration::from_secs(3))),
        )
        .await;
        for (c, (w, at)) in CLUSTERS.iter().zip(windows.iter().zip(&applied)) {
            let n = w.requests().max(1);
            let share = served(w, "us-east") * 100 / n;
            seen.push(format!(
                "{} {} ({share} % v2, {} errors)",
                c.name,
                secs(at.duration_since(written)),
                w.errors
            ));
            let ok = if weight == 100 {
                share == 100
            } else {
                share.abs_diff(u64::from(weight)) <= 20
            };
            anyhow::ensure!(
                ok && w.errors == 0 && w.requests() > 0,
                "weight {weight}: {}'s frontend saw {share} % on us-east with {} errors in {} requests",
                c.name,
                w.errors,
                w.requests()
            );
        }
        demo.say(format!(
            "  weights {}/{weight}: in each frontend sidecar after the write, and the next 3 s: {}",
            100 - weight,
            seen.join("; "),
        ));
        if weight == 10 {
            // At 10 %, a header still sends everything to the canary,
            // from every cluster.
            let mut said = Vec::new();
            for c in CLUSTERS {
                let target = mesh::targets(&c).remove(1);
                let mut always = Window::default();
                for _ in 0..20 {
                    let r = traffic::once(&demo.via(&c), &target, &[("x-canary", "always")]).await;
                    always.record(&Answer {
                        at: Instant::now(),
                        frontend: c.name,
                        service: "reviews",
                        idempotent: true,
                        served_by: r.as_ref().ok().map(|s| s.cluster.clone()),
                        latency: Duration::ZERO,
                        verified: None,
                        error: r.err(),
                    });
                }
                anyhow::ensure!(
                    served(&always, "us-east") == 20,
                    "x-canary: always from {} did not reach us-east every time: {:?}",
                    c.name,
                    always
                );
                said.push(format!("{} {}", c.name, served(&always, "us-east")));
            }
            demo.say(format!(
                "  x-canary: always -> us-east, of 20 requests each: {}",
                said.join(", ")
            ));
        }
    }
    // From 100 % on us-east, deleting the one file brings every cluster
    // back to its nearest reviews.
    let removed = Instant::now();
    std::fs::remove_file(&route)?;
    let mut applied = Vec::new();
    for c in CLUSTERS {
        applied.push(split_applied(c, 0).await?);
    }
    let last = applied.iter().max().copied().unwrap_or(removed);
    for w in &mut watches {
        w.since = last;
    }
    let windows = futures_util::future::join_all(
        watches.iter_mut().map(|w| w.during(Duration::from_secs(3))),
    )
    .await;
    let mut seen = Vec::new();
    for (c, (w, at)) in CLUSTERS.iter().zip(windows.iter().zip(&applied)) {
        seen.push(format!(
            "{} {} (eu-west {}, us-east {})",
            c.name,
            secs(at.duration_since(removed)),
            served(w, "eu-west"),
            served(w, "us-east")
        ));
        anyhow::ensure!(
            w.errors == 0 && w.requests() > 0,
            "rollback: {}'s frontend: {w:?}",
            c.name
        );
    }
    let home = &windows[0];
    anyhow::ensure!(
        served(home, "us-east") == 0,
        "rollback: eu-west's frontend still reaches us-east: {home:?}"
    );
    demo.say(format!(
        "  rolled back (one file deleted in eu-west): {}",
        seen.join("; ")
    ));
    Ok(())
}

/// The share of reviews' traffic the frontend sidecar of `c` sends to
/// us-east, from its /config_dump: the weights of its last route on
/// reviews' clusterset service.
fn canary_share(dump: &serde_json::Value) -> Option<u32> {
    let services = dump["config"]["services"].as_array()?;
    let reviews = services
        .iter()
        .find(|s| s["name"] == "reviews.shop.svc.clusterset.local")?;
    let Some(route) = reviews["routes"].as_array().and_then(|r| r.last()) else {
        return Some(0);
    };
    let backends = route["backends"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // A zero weight is left out of the JSON (proto3 default).
    let weight = |b: &serde_json::Value| b["weight"].as_u64().unwrap_or(0);
    let total: u64 = backends.iter().map(weight).sum();
    if total == 0 {
        return Some(0);
    }
    let canary: u64 = backends
        .iter()
        .filter(|b| b["service"] == "reviews-us-east.shop")
        .map(weight)
        .sum();
    u32::try_from(canary * 100 / total).ok()
}

/// When the frontend sidecar of `c` has the canary at `weight` percent.
async fn split_applied(c: Cluster, weight: u32) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dump) = super::admin_get(c.frontend_admin(), "/config_dump").await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&dump)
            && canary_share(&v) == Some(weight)
        {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the frontend sidecar in {} did not get the canary at {weight} % within 30 s",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failover(demo: &Demo) -> anyhow::Result<()> {
    demo.say(
        "failover: eu-west's frontend calls catalog.shop.svc.clusterset.local (eu-west's own first, then eu-central's)"
            .into(),
    );
    let mut watch = Watch::new(demo, "eu-west", "catalog");
    let (_, home) = watch
        .until_served_by(10, Duration::from_secs(30), "eu-west")
        .await;
    anyhow::ensure!(
        home.is_some(),
        "catalog was not served by eu-west to begin with"
    );

    // 1. eu-west's catalog stops: app and sidecar, as a pod's node dies.
    let stopped = Instant::now();
    watch.since = stopped;
    demo.kill(&["eu-west/catalog", "eu-west/catalog-sidecar"])
        .await?;
    let (seen, steady) = watch
        .until_served_by(20, Duration::from_secs(30), "eu-central")
        .await;
    let steady = steady.ok_or_else(|| {
        anyhow::anyhow!("eu-central did not take catalog over within 30 s: {seen:?}")
    })?;
    demo.say(format!(
        "  1. eu-west's catalog killed: all answers from eu-central {} later; meanwhile {} requests, {} failed{}",
        secs(steady.duration_since(stopped)),
        seen.requests(),
        seen.errors,
        seen.last_error
            .as_ref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    ));

    // 2. eu-central's gateway stops too: no catalog is left anywhere.
    let stopped = Instant::now();
    watch.since = stopped;
    demo.kill(&["eu-central/gateway"]).await?;
    let (seen, failing) = watch
        .until_run(10, Duration::from_secs(30), |a| a.error.is_some())
        .await;
    let failing = failing.ok_or_else(|| {
        anyhow::anyhow!("with eu-central's gateway down, catalog still answered: {seen:?}")
    })?;
    let errors = watch.during(Duration::from_secs(3)).await;
    demo.say(format!(
        "  2. eu-central's gateway killed: no catalog left; requests fail {} later, in {} (p50) with: {}",
        secs(failing.duration_since(stopped)),
        errors
            .percentile(50.0)
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into()),
        errors.last_error.as_deref().unwrap_or("-"),
    ));

    // 3. The gateway returns: eu-central serves again.
    let restarted = Instant::now();
    watch.since = restarted;
    demo.restart(&["eu-central/gateway"]).await?;
    let (_, back) = watch
        .until_served_by(10, Duration::from_secs(60), "eu-central")
        .await;
    let back = back.ok_or_else(|| {
        anyhow::anyhow!("eu-central did not serve again within 60 s of its gateway's restart")
    })?;
    demo.say(format!(
        "  3. eu-central's gateway restarted: eu-central answers again {} later",
        secs(back.duration_since(restarted))
    ));

    // 4. eu-west's catalog returns: traffic goes home.
    let restarted = Instant::now();
    watch.since = restarted;
    demo.restart(&["eu-west/catalog", "eu-west/catalog-sidecar"])
        .await?;
    let (seen, home) = watch
        .until_served_by(20, Duration::from_secs(60), "eu-west")
        .await;
    let home =
        home.ok_or_else(|| anyhow::anyhow!("catalog did not come back to eu-west within 60 s"))?;
    demo.say(format!(
        "  4. eu-west's catalog restarted: traffic back in eu-west {} later ({} failed meanwhile)",
        secs(home.duration_since(restarted)),
        seen.errors
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_share_is_read_from_the_last_route() {
        let dump = |routes: serde_json::Value| {
            serde_json::json!({"config": {"services": [
                {"name": "catalog.shop", "routes": []},
                {"name": "reviews.shop.svc.clusterset.local", "routes": routes},
            ]}})
        };
        let split = serde_json::json!([
            {"name": "header", "backends": [{"service": "reviews-us-east.shop", "weight": 1}]},
            {"name": "split", "backends": [
                {"service": "reviews-eu-west.shop", "weight": 90},
                {"service": "reviews-us-east.shop", "weight": 10}
            ]}
        ]);
        assert_eq!(canary_share(&dump(split)), Some(10));
        assert_eq!(canary_share(&dump(serde_json::json!([]))), Some(0));
        assert_eq!(canary_share(&serde_json::json!({})), None);
    }
}
