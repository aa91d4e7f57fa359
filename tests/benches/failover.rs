//! Failover benchmark (issue 19): three clusters in-process
//! (`isthmus_tests::bed`), eu-west's frontend calling the catalog that
//! eu-central and us-east serve at 100 requests a second (GETs, every
//! third a POST) over keep-alive connections. Each scenario hits
//! eu-central 2 s in, heals it 4 s later, and runs 4 s more; it runs with
//! health at the source and peer liveness on, then off (the baseline, same
//! run). Printed per scenario: failed requests, time to fail over (from
//! the event until the last disturbed request ended: failed, or slower
//! than 250 ms) and time to recover (from the heal to the first answer
//! from eu-central); `before` counts eu-central's answers before the
//! event (it served its share).
//!
//! `cargo bench -p isthmus-tests --bench failover` (BENCH_ROUNDS=n repeats
//! each scenario, the table shows every round; BENCH_SCENARIOS=partitioned
//! runs only the scenarios whose names contain a word given; BENCH_DEBUG=1
//! prints every request around the event).

use std::sync::atomic::Ordering;
use std::time::Duration;

use isthmus_tests::bed::{Bed, spec};
use isthmus_tests::cluster::repoint_link;
use isthmus_tests::load::{Load, Sample};

const RATE: u32 = 100;
const BEFORE: Duration = Duration::from_secs(2);
const DOWN: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(4);
/// A request slower than this was disturbed by the event.
const DISTURBED: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    AppKilled,
    GatewayStopped,
    Partitioned,
    ControlPlaneStopped,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::AppKilled => "remote app killed",
            Self::GatewayStopped => "remote gateway stopped",
            Self::Partitioned => "remote gateway partitioned",
            Self::ControlPlaneStopped => "remote control plane stopped",
        }
    }

    async fn hit(self, bed: &mut Bed) -> Option<std::net::SocketAddr> {
        match self {
            Self::AppKilled => {
                let app = bed.catalogs[0].running.take().expect("the app runs");
                let addr = app.addr;
                app.stop().await;
                Some(addr)
            }
            Self::GatewayStopped => {
                let quic = bed.clusters[1].quic();
                bed.clusters[1].stop_gateway().await;
                Some(quic)
            }
            Self::Partitioned => {
                let p = bed.partition.as_ref().expect("a relay");
                p.store(true, Ordering::SeqCst);
                None
            }
            Self::ControlPlaneStopped => {
                bed.clusters[1].stop_control_plane().await;
                None
            }
        }
    }

    async fn heal(self, bed: &mut Bed, was: Option<std::net::SocketAddr>) {
        match self {
            Self::AppKilled => {
                let addr = was.expect("the app's address");
                bed.catalogs[0].running = Some(
                    isthmus_sample::serve(
                        isthmus_sample::SampleApp::new("catalog", "eu-central", "v1"),
                        addr,
                    )
                    .await
                    .expect("the app restarts on its port"),
                );
            }
            Self::GatewayStopped => {
                bed.clusters[1].start_gateway().await;
                let (west, central) = bed.clusters.split_at(1);
                repoint_link(&west[0], &central[0], was.expect("the old address"));
            }
            Self::Partitioned => {
                let p = bed.partition.as_ref().expect("a relay");
                p.store(false, Ordering::SeqCst);
            }
            Self::ControlPlaneStopped => bed.clusters[1].start_control_plane(),
        }
    }
}

struct Outcome {
    sent: usize,
    /// Answers from eu-central before the event (it served).
    served_before: usize,
    failed_get: usize,
    failed_post: usize,
    failover: Duration,
    recovery: Option<Duration>,
}

fn judge(samples: &[Sample], hit: Duration, healed: Duration) -> Outcome {
    let failed = |m: &http::Method| samples.iter().filter(|s| !s.ok() && s.method == *m).count();
    let failover = samples
        .iter()
        .filter(|s| s.at >= hit && (!s.ok() || s.latency > DISTURBED))
        .map(|s| s.at + s.latency - hit)
        .max()
        .unwrap_or_default();
    let recovery = samples
        .iter()
        .filter(|s| s.at >= healed && s.cluster.as_deref() == Some("eu-central"))
        .map(|s| s.at + s.latency - healed)
        .min();
    Outcome {
        sent: samples.len(),
        served_before: samples
            .iter()
            .filter(|s| s.at < hit && s.cluster.as_deref() == Some("eu-central"))
            .count(),
        failed_get: failed(&http::Method::GET),
        failed_post: failed(&http::Method::POST),
        failover,
        recovery,
    }
}

async fn run(scenario: Scenario, features: bool, round: u32) -> Outcome {
    let test = format!(
        "bench-{}-{}-{round}",
        scenario.name().replace(' ', "-"),
        if features { "on" } else { "off" }
    );
    let mut bed = Bed::start_with(&test, "", scenario == Scenario::Partitioned, features).await;
    let out = bed.out().await;
    let load = Load::start(spec(out, RATE));
    tokio::time::sleep(BEFORE).await;
    let hit = load.elapsed();
    let was = scenario.hit(&mut bed).await;
    tokio::time::sleep(DOWN).await;
    // A heal's own time (a gateway's start) counts in the recovery.
    let healed = load.elapsed();
    scenario.heal(&mut bed, was).await;
    tokio::time::sleep(AFTER).await;
    let samples = load.stop().await;
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for s in samples.iter().filter(|s| {
            s.at + Duration::from_millis(300) >= hit && s.at < hit + Duration::from_secs(2)
        }) {
            eprintln!(
                "{:?} {:?} {:?} {:?} {:?}",
                s.at, s.method, s.result, s.cluster, s.latency
            );
        }
    }
    bed.stop().await;
    judge(&samples, hit, healed)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!(
        "failover at {RATE} req/s (GET, every third a POST): hit {} in, healed {} later; features = health at the source + peer liveness",
        secs(BEFORE),
        secs(DOWN)
    );
    println!(
        "{:<30} {:<9} {:>6} {:>8} {:>16} {:>10} {:>10}",
        "scenario", "features", "sent", "before", "failed GET/POST", "failover", "recovery"
    );
    // BENCH_SCENARIOS=partitioned,app: only the scenarios whose names
    // contain one of these.
    let only: Vec<String> = std::env::var("BENCH_SCENARIOS")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    for scenario in [
        Scenario::AppKilled,
        Scenario::GatewayStopped,
        Scenario::Partitioned,
        Scenario::ControlPlaneStopped,
    ]
    .into_iter()
    .filter(|s| only.is_empty() || only.iter().any(|o| s.name().contains(o.as_str())))
    {
        for round in 0..rounds {
            for features in [true, false] {
                let o = rt.block_on(run(scenario, features, round));
                println!(
                    "{:<30} {:<9} {:>6} {:>8} {:>16} {:>10} {:>10}",
                    scenario.name(),
                    if features { "on" } else { "off" },
                    o.sent,
                    o.served_before,
                    format!("{}/{}", o.failed_get, o.failed_post),
                    secs(o.failover),
                    o.recovery
                        .map(secs)
                        .unwrap_or_else(|| format!("> {}", secs(AFTER))),
                );
            }
        }
    }
}
