//! `--scenario chaos`: random kills under load. Each round SIGKILLs one
//! process of one cluster (an app, an app's sidecar, a gateway or a
//! control plane; never a frontend's sidecar, where the traffic starts),
//! leaves it down for 1 to 4 s, starts it again and waits until its
//! cluster serves again. Every failed request of the round is judged: a
//! request that had no path left (the only cluster serving its name had
//! lost the app, or the way out or in was the dead gateway) was bound to
//! fail; any other failure is the mesh's. The table at the end says, per
//! round, what was killed, for how long, the failures of each kind and
//! the recovery time; the scenario fails if a GET that had a path failed.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::sync::broadcast;

use super::Demo;
use super::mesh::{self, CLUSTERS, Cluster, Target};
use super::traffic::Answer;

/// What a round kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    ControlPlane,
    Gateway,
    App(&'static str),
    Sidecar(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Victim {
    pub cluster: Cluster,
    pub kind: Kind,
}

impl Victim {
    /// The process's name in the demo.
    pub fn process(&self) -> String {
        let what = match self.kind {
            Kind::ControlPlane => "control-plane".to_string(),
            Kind::Gateway => "gateway".to_string(),
            Kind::App(s) => s.to_string(),
            Kind::Sidecar(s) => format!("{s}-sidecar"),
        };
        format!("{}/{what}", self.cluster.name)
    }

    /// Whether an answer from `a` shows the victim's cluster doing again
    /// what it did: serving the killed app's service, or (its gateway)
    /// serving another cluster's frontend.
    fn serves_again(&self, a: &Answer) -> bool {
        let by_it = a.served_by.as_deref() == Some(self.cluster.name);
        match self.kind {
            Kind::ControlPlane => true,
            Kind::Gateway => by_it && a.frontend != self.cluster.name,
            Kind::App(s) | Kind::Sidecar(s) => by_it && a.service == s,
        }
    }
}

/// Every process a round may kill.
pub(super) fn victims() -> Vec<Victim> {
    let mut out = Vec::new();
    for cluster in CLUSTERS {
        out.push(Victim {
            cluster,
            kind: Kind::ControlPlane,
        });
        out.push(Victim {
            cluster,
            kind: Kind::Gateway,
        });
        for app in cluster.apps() {
            out.push(Victim {
                cluster,
                kind: Kind::App(app.service),
            });
            out.push(Victim {
                cluster,
                kind: Kind::Sidecar(app.service),
            });
        }
    }
    out
}

/// The clusters that could still answer `frontend`'s calls to `target`
/// while `victim` is down: those serving the name (every cluster running
/// the service for a clusterset name, the frontend's own for a local
/// one) whose app still runs, and, for another cluster, with both
/// gateways on the way up.
pub(super) fn paths_left(
    frontend: &Cluster,
    target: &Target,
    victim: &Victim,
) -> Vec<&'static str> {
    let clusterset = target.host.ends_with(".svc.clusterset.local");
    CLUSTERS
        .iter()
        .filter(|c| c.app(target.service).is_some())
        .filter(|c| clusterset || c.name == frontend.name)
        .filter(|c| {
            let here = victim.cluster.name == c.name;
            let app_down = matches!(victim.kind, Kind::App(s) | Kind::Sidecar(s) if here && s == target.service);
            let gateway_down = |x: &str| victim.kind == Kind::Gateway && victim.cluster.name == x;
            let unreachable = c.name != frontend.name && (gateway_down(c.name) || gateway_down(frontend.name));
            !app_down && !unreachable
        })
        .map(|c| c.name)
        .collect()
}

/// One round's outcome.
#[derive(Debug, Default)]
struct Round {
    killed: String,
    down: Duration,
    /// Failed GETs that had a path left: the mesh lost them.
    lost_gets: u64,
    /// Failed POSTs and gRPC calls that had a path left.
    lost_other: u64,
    /// Failures with no path left (bound to happen).
    no_path: u64,
    requests: u64,
    /// From the restart until the cluster served again.
    recovered: Option<Duration>,
}

const ROUNDS_HEADER: &str = "round  killed                         down  requests  failed GET  failed POST/gRPC  no path left  recovered";

fn row(i: usize, r: &Round) -> String {
    format!(
        "{:>5}  {:<29} {:>5.1} s {:>9} {:>11} {:>17} {:>13}  {}",
        i + 1,
        r.killed,
        r.down.as_secs_f64(),
        r.requests,
        r.lost_gets,
        r.lost_other,
        r.no_path,
        r.recovered.map_or("not within 60 s".into(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    )
}

/// Judges an answer seen while `victim` was down (or coming back).
fn judge(r: &mut Round, a: &Answer, victim: &Victim) {
    r.requests += 1;
    if a.error.is_none() {
        return;
    }
    let frontend = Cluster::by_name(a.frontend).expect("a demo cluster");
    let target = mesh::targets(&frontend)
        .into_iter()
        .find(|t| t.service == a.service)
        .expect("a demo target");
    if paths_left(&frontend, &target, victim).is_empty() {
        r.no_path += 1;
    } else if a.idempotent {
        r.lost_gets += 1;
    } else {
        r.lost_other += 1;
    }
}

pub async fn run(demo: &Demo) -> anyhow::Result<()> {
    let seed = demo.chaos.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let mut rng = SmallRng::seed_from_u64(seed);
    demo.say(format!(
        "chaos: {} rounds of random kills under load (--chaos-seed {seed} repeats them)",
        demo.chaos.rounds
    ));
    let all = victims();
    let mut rounds = Vec::new();
    for _ in 0..demo.chaos.rounds {
        let victim = all[rng.random_range(0..all.len())];
        let down = Duration::from_millis(rng.random_range(1000..4000));
        let round = one_round(demo, victim, down).await?;
        demo.say(format!("  {}", row(rounds.len(), &round)));
        rounds.push(round);
    }
    let mut table = format!(
        "chaos, {} rounds (seed {seed})\n{ROUNDS_HEADER}\n",
        rounds.len()
    );
    for (i, r) in rounds.iter().enumerate() {
        table.push_str(&row(i, r));
        table.push('\n');
    }
    let sum = |f: fn(&Round) -> u64| rounds.iter().map(f).sum::<u64>();
    table.push_str(&format!(
        "total: {} requests, {} failed GETs and {} failed POSTs/gRPC calls that had a path left, {} with none\n",
        sum(|r| r.requests),
        sum(|r| r.lost_gets),
        sum(|r| r.lost_other),
        sum(|r| r.no_path)
    ));
    print!("{table}");
    anyhow::ensure!(
        sum(|r| r.lost_gets) == 0,
        "{} GETs failed although another cluster could serve them",
        sum(|r| r.lost_gets)
    );
    anyhow::ensure!(
        rounds.iter().all(|r| r.recovered.is_some()),
        "a killed process's cluster did not serve again within 60 s"
    );
    Ok(())
}

async fn one_round(demo: &Demo, victim: Victim, down: Duration) -> anyhow::Result<Round> {
    let mut feed = demo.stats.feed.subscribe();
    let mut round = Round {
        killed: victim.process(),
        down,
        ..Round::default()
    };
    let killed = Instant::now();
    demo.kill(&[&round.killed]).await?;
    drain(&mut feed, tokio::time::Instant::now() + down, |a| {
        if a.sent() >= killed {
            judge(&mut round, a, &victim);
        }
        false
    })
    .await;
    let restarted = Instant::now();
    demo.restart(&[&round.killed]).await?;
    let mut back = None;
    drain(
        &mut feed,
        tokio::time::Instant::now() + Duration::from_secs(60),
        |a| {
            if a.sent() >= killed {
                judge(&mut round, a, &victim);
            }
            if a.sent() >= restarted && victim.serves_again(a) {
                back = Some(a.sent().saturating_duration_since(restarted));
            }
            back.is_some()
        },
    )
    .await;
    round.recovered = back;
    // A second more: what the return itself costs.
    drain(
        &mut feed,
        tokio::time::Instant::now() + Duration::from_secs(1),
        |a| {
            judge(&mut round, a, &victim);
            false
        },
    )
    .await;
    Ok(round)
}

/// Hands every answer to `f` until it says done or the deadline passes.
async fn drain(
    feed: &mut broadcast::Receiver<Answer>,
    deadline: tokio::time::Instant,
    mut f: impl FnMut(&Answer) -> bool,
) {
    loop {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Ok(a)) => {
                if f(&a) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> Cluster {
        Cluster::by_name(name).unwrap()
    }

    fn target(frontend: &str, service: &str) -> Target {
        mesh::targets(&cluster(frontend))
            .into_iter()
            .find(|t| t.service == service)
            .unwrap()
    }

    fn victim(c: &str, kind: Kind) -> Victim {
        Victim {
            cluster: cluster(c),
            kind,
        }
    }

    #[test]
    fn which_paths_a_kill_leaves() {
        let left = |f: &str, svc: &str, v: Victim| paths_left(&cluster(f), &target(f, svc), &v);
        // catalog runs in eu-west and eu-central.
        let v = victim("eu-central", Kind::App("catalog"));
        assert_eq!(left("us-east", "catalog", v), ["eu-west"]);
        let v = victim("eu-central", Kind::Sidecar("catalog"));
        assert_eq!(left("eu-central", "catalog", v), ["eu-west"]);
        // Another service's app: every path stays.
        let v = victim("eu-central", Kind::App("inventory"));
        assert_eq!(left("us-east", "catalog", v), ["eu-west", "eu-central"]);
        // inventory runs only in eu-central: its gateway is the only way in.
        let v = victim("eu-central", Kind::Gateway);
        assert!(left("us-east", "inventory", v).is_empty());
        assert_eq!(left("eu-central", "inventory", v), ["eu-central"]);
        // A frontend's own gateway is its only way out.
        let v = victim("us-east", Kind::Gateway);
        assert!(left("us-east", "catalog", v).is_empty());
        assert_eq!(left("us-east", "reviews", v), ["us-east"]);
        let v = victim("eu-west", Kind::Gateway);
        assert_eq!(left("eu-west", "catalog", v), ["eu-west"]);
        // reviews runs in eu-west and us-east, called by its clusterset
        // name: eu-west's v1 down leaves us-east's v2 to everyone.
        let v = victim("eu-west", Kind::App("reviews"));
        assert_eq!(left("eu-west", "reviews", v), ["us-east"]);
        assert_eq!(left("eu-central", "reviews", v), ["us-east"]);
        // A control plane takes no path away.
        let v = victim("eu-central", Kind::ControlPlane);
        assert_eq!(left("eu-west", "inventory", v), ["eu-central"]);
    }

    #[test]
    fn every_process_but_the_frontends_may_be_killed() {
        let names: Vec<String> = victims().iter().map(Victim::process).collect();
        assert!(names.contains(&"eu-central/inventory-sidecar".to_string()));
        assert!(names.contains(&"us-east/control-plane".to_string()));
        assert!(!names.iter().any(|n| n.contains("frontend")));
        let apps: usize = CLUSTERS.iter().map(|c| c.apps().len()).sum();
        assert_eq!(names.len(), 2 * CLUSTERS.len() + 2 * apps);
    }

    #[test]
    fn failures_are_judged_by_the_paths_left() {
        let answer = |frontend: &'static str, service: &'static str, idempotent| Answer {
            at: Instant::now(),
            frontend,
            service,
            idempotent,
            served_by: None,
            latency: Duration::ZERO,
            error: Some("HTTP 503".into()),
            verified: None,
        };
        let v = victim("eu-central", Kind::Gateway);
        let mut r = Round::default();
        judge(&mut r, &answer("us-east", "inventory", false), &v);
        judge(&mut r, &answer("us-east", "catalog", true), &v);
        judge(&mut r, &answer("eu-west", "reviews", false), &v);
        assert_eq!(
            (r.no_path, r.lost_gets, r.lost_other, r.requests),
            (1, 1, 1, 3)
        );
    }
}
