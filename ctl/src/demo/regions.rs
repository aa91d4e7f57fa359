//! `--scenario regions`: every way a region fails, one after the other
//! while the traffic flows, each healed before the next. us-east's
//! frontend calls catalog, served by eu-west and eu-central (both remote);
//! eu-central loses its app, its sidecar, its endpoint's packets, its
//! gateway, its gateway's packets, its control plane; then eu-west's
//! frontend loses its local catalog. For each the demo says how many
//! requests failed (no GET may; a POST only if it was sent before the
//! traffic had left the broken path), how long until the answers left
//! the broken cluster and how long until they came back once it was
//! healed. Packet drops need `--netns` (iptables in the cluster's
//! namespace); on loopback those steps are skipped, saying so.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::Demo;
use super::mesh::{CATALOG, CLUSTERS, Cluster};
use super::net;
use super::scenario::{Watch, secs};
use super::traffic::Answer;

/// What breaks, and is healed afterwards.
#[derive(Debug, Clone)]
pub(super) enum Fault {
    /// Processes SIGKILLed, then started again.
    Kill(Vec<String>),
    /// Every packet to the workload at this address dropped.
    Silence(Cluster, Ipv4Addr),
    /// Every WAN packet of the cluster dropped.
    Partition(Cluster),
}

impl Fault {
    async fn apply(&self, demo: &Demo, on: bool) -> anyhow::Result<()> {
        match self {
            Fault::Kill(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                if on {
                    demo.kill(&names).await
                } else {
                    demo.restart(&names).await
                }
            }
            Fault::Silence(c, ip) => net::silence(c, *ip, on),
            Fault::Partition(c) => net::partition(c, on),
        }
    }

    fn needs_netns(&self) -> bool {
        !matches!(self, Fault::Kill(_))
    }
}

struct Step {
    name: &'static str,
    /// Whose frontend's calls to catalog are watched.
    frontend: Cluster,
    /// The cluster whose catalog breaks.
    broken: Cluster,
    fault: Fault,
    /// Nothing should change: the broken cluster keeps serving.
    no_effect: bool,
}

fn steps() -> Vec<Step> {
    let [west, central, east] = CLUSTERS;
    let kill = |names: &[&str]| {
        Fault::Kill(
            names
                .iter()
                .map(|n| format!("{}/{n}", central.name))
                .collect(),
        )
    };
    let IpAddr::V4(catalog_ip) = central.ip(CATALOG.host) else {
        unreachable!("the demo's addresses are IPv4")
    };
    let remote = |name, fault, no_effect| Step {
        name,
        frontend: east,
        broken: central,
        fault,
        no_effect,
    };
    vec![
        remote("remote app killed", kill(&["catalog"]), false),
        remote("remote sidecar killed", kill(&["catalog-sidecar"]), false),
        remote(
            "remote endpoint silent",
            Fault::Silence(central, catalog_ip),
            false,
        ),
        remote("remote gateway killed", kill(&["gateway"]), false),
        remote(
            "remote gateway partitioned",
            Fault::Partition(central),
            false,
        ),
        remote(
            "remote control plane killed",
            kill(&["control-plane"]),
            true,
        ),
        Step {
            name: "local endpoint killed",
            frontend: west,
            broken: west,
            fault: Fault::Kill(vec![
                format!("{}/catalog", west.name),
                format!("{}/catalog-sidecar", west.name),
            ]),
            no_effect: false,
        },
    ]
}

/// The answers of one period, as the step judges them.
#[derive(Debug, Default)]
struct Seen {
    answers: Vec<Answer>,
}

impl Seen {
    fn failed(&self, idempotent: bool) -> Vec<&Answer> {
        self.answers
            .iter()
            .filter(|a| a.error.is_some() && a.idempotent == idempotent)
            .collect()
    }

    fn count(&self, idempotent: bool) -> usize {
        self.answers
            .iter()
            .filter(|a| a.idempotent == idempotent)
            .count()
    }

    fn served_by(&self, cluster: &str) -> usize {
        self.answers
            .iter()
            .filter(|a| a.served_by.as_deref() == Some(cluster))
            .count()
    }

    /// From `from` until every later request went elsewhere, succeeded
    /// and took no longer than `normal` (zero when none was answered by
    /// `broken`, failed or was slow): how long the fault was felt.
    fn felt(&self, broken: &str, from: Instant, normal: Duration) -> Duration {
        self.answers
            .iter()
            .filter(|a| {
                a.error.is_some() || a.served_by.as_deref() == Some(broken) || a.latency > normal
            })
            .map(|a| a.sent().saturating_duration_since(from))
            .max()
            .unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.answers
            .iter()
            .map(|a| a.latency)
            .max()
            .unwrap_or_default()
    }

    fn p99(&self) -> Duration {
        let mut l: Vec<Duration> = self.answers.iter().map(|a| a.latency).collect();
        l.sort_unstable();
        l.get((l.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    fn errors(&self) -> String {
        let mut e: Vec<&str> = self
            .answers
            .iter()
            .filter_map(|a| a.error.as_deref())
            .collect();
        e.sort_unstable();
        e.dedup();
        e.join("; ")
    }
}

/// Everything `watch` sees for `period`.
async fn collect(watch: &mut Watch, period: Duration) -> Seen {
    let deadline = tokio::time::Instant::now() + period;
    let mut seen = Seen::default();
    while let Some(a) = watch.next(deadline).await {
        seen.answers.push(a);
    }
    seen
}

/// Until an answer from `cluster` (its request sent after `watch.since`):
/// everything seen until then, and when that request left.
async fn until_back(watch: &mut Watch, cluster: &str, within: Duration) -> (Seen, Option<Instant>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Seen::default();
    while let Some(a) = watch.next(deadline).await {
        let back = a.served_by.as_deref() == Some(cluster);
        let at = a.sent();
        seen.answers.push(a);
        if back {
            return (seen, Some(at));
        }
    }
    (seen, None)
}

/// How long the fault stays before it is healed.
const OUTAGE: Duration = Duration::from_secs(4);

pub async fn run(demo: &Demo) -> anyhow::Result<()> {
    demo.say(
        "regions: us-east's frontend calls catalog (eu-west and eu-central, both remote); \
         eu-central fails every way, then eu-west's own catalog"
            .into(),
    );
    let mut problems = Vec::new();
    for step in steps() {
        if step.fault.needs_netns() && !demo.netns {
            demo.say(format!(
                "  {}: skipped (dropping packets needs --netns)",
                step.name
            ));
            continue;
        }
        if let Err(e) = run_step(demo, &step).await {
            demo.say(format!("  {}: {e:#}", step.name));
            problems.push(format!("{}: {e:#}", step.name));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

async fn run_step(demo: &Demo, step: &Step) -> anyhow::Result<()> {
    let (frontend, broken) = (step.frontend.name, step.broken.name);
    let mut watch = Watch::new(demo, frontend, "catalog");
    // Steady first: the cluster to break serves, nothing fails; the
    // latency then is what "normal" means (twice its p99, 100 ms more at
    // least).
    let (_, steady) = watch
        .until_run(20, Duration::from_secs(60), |a| a.error.is_none())
        .await;
    anyhow::ensure!(
        steady.is_some(),
        "{frontend}'s calls to catalog did not succeed 20 times in a row within 60 s, before anything \
         was broken: see {frontend}'s frontend-sidecar.log (its access log) in the demo's directory"
    );
    let (_, serving) = watch
        .until_served_by(1, Duration::from_secs(30), broken)
        .await;
    anyhow::ensure!(
        serving.is_some(),
        "{broken} did not serve {frontend}'s calls to catalog within 30 s, before anything was broken: \
         is it still out after the previous step? See {frontend}'s /config_dump (endpoint state)"
    );
    let before = collect(&mut watch, Duration::from_secs(1)).await;
    let normal = (before.p99() * 2).max(before.p99() + Duration::from_millis(100));

    let broke = Instant::now();
    watch.since = broke;
    step.fault.apply(demo, true).await?;
    let during = collect(&mut watch, OUTAGE).await;
    let left = during.felt(broken, broke, normal);

    let healed = Instant::now();
    watch.since = healed;
    step.fault.apply(demo, false).await?;
    let (mut after, back) = until_back(&mut watch, broken, Duration::from_secs(60)).await;
    after
        .answers
        .extend(collect(&mut watch, Duration::from_secs(1)).await.answers);

    let lost_gets = during.failed(true).len() + after.failed(true).len();
    // A POST may fail only if it was on its way before the traffic left.
    let late_posts = during
        .failed(false)
        .iter()
        .filter(|a| a.sent() > broke + left)
        .count()
        + after.failed(false).len();
    let effect = if step.no_effect {
        format!(
            "{broken} kept serving ({} answers)",
            during.served_by(broken)
        )
    } else {
        format!(
            "felt for {} (answers late, from {broken} or failed)",
            secs(left)
        )
    };
    demo.say(format!(
        "  {}: {} of {} GETs failed, {} of {} POSTs; {effect}; p99 {:.0} ms, max {:.0} ms; back {}{}",
        step.name,
        lost_gets,
        during.count(true) + after.count(true),
        during.failed(false).len() + after.failed(false).len(),
        during.count(false) + after.count(false),
        during.p99().as_secs_f64() * 1000.0,
        during.max().as_secs_f64() * 1000.0,
        back.map_or("never (60 s)".to_string(), |b| format!(
            "{} after it was healed",
            secs(b.saturating_duration_since(healed))
        )),
        if lost_gets + late_posts > 0 {
            format!(" (errors: {} {})", during.errors(), after.errors())
        } else {
            String::new()
        }
    ));
    anyhow::ensure!(lost_gets == 0, "{lost_gets} GETs failed");
    anyhow::ensure!(
        late_posts == 0,
        "{late_posts} POSTs failed that were sent after the traffic had left {broken}"
    );
    anyhow::ensure!(back.is_some(), "{broken} did not serve again");
    if step.no_effect {
        anyhow::ensure!(
            during.served_by(broken) > 0,
            "{broken} stopped serving: its control plane should not matter to traffic"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(sent_ms: u64, ms: u64, by: Option<&str>, idempotent: bool) -> (Instant, Answer) {
        let t0 = Instant::now();
        let a = Answer {
            at: t0 + Duration::from_millis(sent_ms + ms),
            frontend: "us-east",
            service: "catalog",
            idempotent,
            served_by: by.map(str::to_string),
            latency: Duration::from_millis(ms),
            error: by.is_none().then(|| "HTTP 503".to_string()),
            verified: None,
        };
        (t0, a)
    }

    #[test]
    fn a_fault_is_felt_until_the_last_bad_request_was_sent() {
        let (t0, a) = answer(100, 10, Some("eu-central"), true);
        let mut seen = Seen {
            answers: vec![a, answer(0, 5, Some("eu-west"), true).1],
        };
        let normal = Duration::from_millis(50);
        let felt = seen.felt("eu-central", t0, normal);
        assert!(felt >= Duration::from_millis(99) && felt < Duration::from_millis(110));
        seen.answers.push(answer(300, 10, None, false).1);
        assert!(seen.felt("eu-central", t0, normal) >= Duration::from_millis(299));
        // A late answer from elsewhere still counts.
        seen.answers.push(answer(500, 60, Some("eu-west"), true).1);
        assert!(seen.felt("eu-central", t0, normal) >= Duration::from_millis(499));
        assert_eq!((seen.failed(false).len(), seen.failed(true).len()), (1, 0));
        assert_eq!((seen.count(true), seen.count(false)), (3, 1));
        assert_eq!(seen.served_by("eu-west"), 2);
        assert_eq!(
            Seen::default().felt("eu-central", t0, normal),
            Duration::ZERO
        );
    }

    #[test]
    fn every_step_breaks_catalog_where_it_runs() {
        for s in steps() {
            assert!(s.broken.app("catalog").is_some(), "{}", s.name);
            assert!(s.frontend == s.broken || s.frontend.app("catalog").is_none());
        }
        let netns: Vec<&str> = steps()
            .into_iter()
            .filter(|s| s.fault.needs_netns())
            .map(|s| s.name)
            .collect();
        assert_eq!(
            netns,
            ["remote endpoint silent", "remote gateway partitioned"]
        );
    }
}
