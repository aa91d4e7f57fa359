//! `isthmusctl demo`: three local clusters (eu-west, eu-central, us-east)
//! as real processes, each on its own loopback range with its own `files`
//! store directory, control plane, east-west gateway and the sample mesh
//! with sidecars; linked with `link create`; traffic from every frontend;
//! a live table; and, with `--scenario`, a canary or a failover run by
//! itself. Ctrl-C stops every process.
//!
//! - `mesh`: the sample mesh as data (addresses, YAML, arguments);
//! - `net`: where the clusters live: this host's loopback, or network
//!   namespaces joined by the WAN emulator (`--netns`);
//! - `procs`: the child processes;
//! - `traffic`: the frontends' requests and what they saw;
//! - `table`: the live table;
//! - `scenario`: the scripted scenarios (canary, failover), and
//!   `regions` (every way a region fails) and `chaos` (random kills).

mod chaos;
pub mod kube;
pub mod mesh;
mod net;
mod procs;
mod regions;
mod scenario;
mod table;
mod traffic;

use parking_lot::Mutex;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use isthmus_federation::identity::Ca;
use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::resources::link::{ClusterLinkStatus, PartitionMode, PartitionPolicy};
use tokio_util::sync::CancellationToken;

use mesh::{CLUSTERS, Cluster};
pub use scenario::Scenario;
use traffic::Stats;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the clusters' store directories and logs go (default: a new
    /// directory under the system's temp dir). Kept afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run scenarios by themselves while the traffic flows, one after
    /// the other (`canary,failover`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Stop when the scenarios are done (exit status: whether they went as
    /// expected), instead of running on until Ctrl-C.
    #[arg(long, requires = "scenario")]
    pub exit_after_scenario: bool,
    /// Stop after this many seconds of traffic.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Requests per second from each frontend to each service.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Where `isthmus-gateway`, `isthmus-federation` and `isthmus-sample` are (default: beside
    /// isthmusctl, e.g. target/release).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Run each cluster in a network namespace of its own
    /// (`isthmus-<cluster>`), joined by a packet-level WAN emulator: 20 ms
    /// RTT within Europe, 80 ms to us-east. Needs root. Partitions and
    /// silent endpoints (iptables) are only possible this way.
    #[arg(long)]
    pub netns: bool,
    /// With --netns: the share of packets each WAN link loses, in percent.
    #[arg(long, default_value_t = 0.0, requires = "netns")]
    pub wan_loss: f64,
    #[command(flatten)]
    pub chaos: ChaosArgs,
    /// Run the sidecars without health at the source and without peer
    /// liveness (`--no-health-checks --no-peer-liveness`): the baseline
    /// the failover scenarios are measured against.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// `--scenario chaos`: how many processes to kill, one after the other.
    #[arg(long = "chaos-rounds", default_value_t = 20)]
    pub rounds: u32,
    /// `--scenario chaos`: the seed of the random choices (default: the
    /// time; the scenario prints it so that a run can be repeated).
    #[arg(long = "chaos-seed")]
    pub seed: Option<u64>,
}

/// The running demo, as the scenarios see it.
pub struct Demo {
    dir: PathBuf,
    /// The clusters run in network namespaces (`--netns`).
    netns: bool,
    chaos: ChaosArgs,
    stats: Arc<Stats>,
    procs: tokio::sync::Mutex<procs::Procs>,
    narration: Mutex<Vec<String>>,
    tty: bool,
}

impl Demo {
    fn store(&self, c: &Cluster) -> PathBuf {
        self.dir.join(c.name).join("store")
    }

    /// How the demo, as `c`'s frontend application, reaches its sidecar:
    /// by name through capture in the cluster's namespace (`--netns`),
    /// else at the explicit listener with a Host header.
    fn via(&self, c: &Cluster) -> traffic::Via {
        if self.netns {
            traffic::Via::Capture {
                ns: net::namespace(c),
                mark: net::APP_MARK,
                dns: net::DNS_SERVER,
            }
        } else {
            traffic::Via::Listener(c.frontend())
        }
    }

    /// Says what happened: printed now, and kept under the live table.
    fn say(&self, line: String) {
        let stamped = format!("[{}] {line}", clock());
        if !self.tty {
            println!("{stamped}");
        }
        self.narration.lock().push(stamped);
    }

    /// Replaces a store file at once (no half-written file is ever read).
    fn write(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    async fn kill(&self, names: &[&str]) -> anyhow::Result<()> {
        let mut p = self.procs.lock().await;
        for n in names {
            p.kill(n).await?;
            self.say(format!("     killed {n}"));
        }
        Ok(())
    }

    async fn restart(&self, names: &[&str]) -> anyhow::Result<()> {
        let mut p = self.procs.lock().await;
        for n in names {
            p.restart(n)?;
            self.say(format!("     started {n} again"));
        }
        Ok(())
    }
}

fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let d = s.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        d / 3600,
        d / 60 % 60,
        d % 60,
        s.subsec_millis()
    )
}

/// GET `path` on an admin port: the body of a 200 (None: no answer yet).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    crate::status::admin_get(addr, path, Duration::from_millis(800))
        .await
        .ok()
}

async fn links_of(c: &Cluster) -> Option<std::collections::BTreeMap<String, ClusterLinkStatus>> {
    crate::status::fetch(c.control_plane_admin(), Duration::from_millis(800))
        .await
        .ok()
}

/// Polls `check` until it holds (or the deadline), saying what it waits for.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => {
                eprintln!(
                    "  {what}: ready after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(e) => e,
        };
        anyhow::ensure!(
            start.elapsed() < within,
            "{what}: not ready after {} s: {last}",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes each cluster's store and run files; returns the processes to start.
fn prepare(
    dir: &Path,
    bins: &Path,
    netns: bool,
    baseline: bool,
) -> anyhow::Result<Vec<(String, procs::Spec)>> {
    let gateway = procs::find(bins, "isthmus-gateway")?;
    let federation = procs::find(bins, "isthmus-federation")?;
    let sample = procs::find(bins, "isthmus-sample")?;
    let mut specs = Vec::new();
    let now = SystemTime::now();
    for c in CLUSTERS {
        let store = dir.join(c.name).join("store");
        let run = dir.join(c.name).join("run");
        let logs = dir.join(c.name).join("logs");
        for d in [&store, &run, &logs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(store.join("mesh.yaml"), c.mesh_yaml())?;
        std::fs::write(store.join("services.yaml"), c.services_yaml())?;
        let _ = std::fs::remove_file(store.join("reviews-canary.yaml"));
        let td = c.trust_domain();
        let ca = Ca::load_or_create(&store, &td)?;
        let roots = run.join("ca-roots.pem");
        std::fs::write(&roots, ca.bundle_pem())?;
        let roots = roots.display().to_string();
        let tokens = TokenKey::load_or_create(&store, &td)?;
        let token = |ns: &str, sa: &str| tokens.issue(ns, sa, now, Duration::from_secs(24 * 3600));
        let file = |name: &str, text: String| -> anyhow::Result<String> {
            let p = run.join(name);
            std::fs::write(&p, text)?;
            Ok(p.display().to_string())
        };
        let spec = |program: &PathBuf, log: &str, mut args: Vec<String>| procs::Spec {
            program: program.clone(),
            args: {
                if baseline && *program == gateway && args[0] == "sidecar" {
                    args.extend(["--no-health-checks".into(), "--no-peer-liveness".into()]);
                }
                args
            },
            log: logs.join(format!("{log}.log")),
            netns: netns.then(|| net::namespace(&c)),
        };
        let name = |p: &str| format!("{}/{p}", c.name);
        specs.push((
            name("control-plane"),
            spec(
                &federation,
                "control-plane",
                c.control_plane_args(&store.display().to_string()),
            ),
        ));
        let ew = file("eastwest.yaml", c.eastwest_yaml(net::gateway(&c, netns)))?;
        let gw_boot = file("gateway.bootstrap.yaml", "listeners: []\n".into())?;
        specs.push((
            name("gateway"),
            spec(
                &gateway,
                "gateway",
                c.gateway_args(
                    &token("isthmus-system", "isthmus-eastwest"),
                    &roots,
                    &ew,
                    &gw_boot,
                ),
            ),
        ));
        let fe_boot = file("frontend.bootstrap.yaml", c.frontend_bootstrap(netns))?;
        specs.push((
            name("frontend"),
            spec(
                &gateway,
                "frontend-sidecar",
                c.frontend_args(&token("shop", "frontend"), &roots, &fe_boot, netns),
            ),
        ));
        for app in c.apps() {
            specs.push((
                name(app.service),
                spec(&sample, app.service, c.app_args(&app)),
            ));
            let boot = file(
                &format!("{}.bootstrap.yaml", app.service),
                c.app_bootstrap(&app),
            )?;
            specs.push((
                name(&format!("{}-sidecar", app.service)),
                spec(
                    &gateway,
                    &format!("{}-sidecar", app.service),
                    c.app_sidecar_args(&app, &token("shop", app.service), &roots, &boot),
                ),
            ));
        }
    }
    Ok(specs)
}

/// Links every cluster with every other (`isthmusctl link create`, both
/// ways), the manifests dropped in the linking cluster's store.
fn link_all(dir: &Path, netns: bool) -> anyhow::Result<()> {
    for from in CLUSTERS {
        for to in CLUSTERS.iter().filter(|c| c.name != from.name) {
            let yaml = isthmus_ctl::link::create(
                &dir.join(from.name).join("store"),
                &dir.join(to.name).join("store"),
                &isthmus_ctl::link::Options {
                    gateway: Some(net::gateway(to, netns).to_string()),
                    gateway_tcp: None,
                    ttl: Duration::from_secs(3600),
                    join_wait: Duration::from_secs(30),
                    partition: PartitionPolicy {
                        mode: PartitionMode::FailStatic,
                        staleness_ttl: "30s".into(),
                    },
                },
                SystemTime::now(),
            )?;
            std::fs::write(
                dir.join(from.name)
                    .join("store")
                    .join(format!("link-{}.yaml", to.name)),
                yaml,
            )?;
        }
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bins = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("isthmusctl's directory")?
            .to_path_buf(),
    };
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("isthmus-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    // Namespaces of their own, or this host's loopback, where another
    // demo on the same addresses would answer in our place.
    let namespaces = if args.netns {
        Some(net::Namespaces::create(args.wan_loss)?)
    } else {
        for c in CLUSTERS {
            std::net::TcpListener::bind(c.discovery()).with_context(|| {
                format!(
                    "{} is taken (is another demo running?): the demo needs 127.0.{}.0/24",
                    c.discovery(),
                    c.index
                )
            })?;
        }
        None
    };
    let specs = prepare(&dir, &bins, args.netns, args.baseline)?;
    let tty = std::io::stdout().is_terminal();
    let demo = Demo {
        dir: dir.clone(),
        netns: args.netns,
        chaos: args.chaos.clone(),
        stats: Stats::new(),
        procs: Default::default(),
        narration: Mutex::new(Vec::new()),
        tty,
    };
    eprintln!(
        "Isthmus demo: three clusters on this machine, files in {}",
        dir.display()
    );
    for c in CLUSTERS {
        let (place, run) = if args.netns {
            let ns = net::namespace(&c);
            (
                format!("namespace {ns} (WAN {}), ", net::wan_ip(&c)),
                format!("ip netns exec {ns} "),
            )
        } else {
            (String::new(), String::new())
        };
        eprintln!(
            "  {:<10} {place}127.0.{}.0/24  store {}  (edit it live)\n             topology page: http://{}/{}\n             control plane admin: {run}curl -s {}/links   frontend: {run}curl -s -H 'Host: catalog.shop.svc.clusterset.local' {}/",
            c.name,
            c.index,
            demo.store(&c).display(),
            c.control_plane_admin(),
            if args.netns {
                "  (inside its namespace)"
            } else {
                ""
            },
            c.control_plane_admin(),
            c.frontend(),
        );
    }
    eprintln!("  logs in {}/<cluster>/logs/", dir.display());
    {
        let mut p = demo.procs.lock().await;
        for (name, spec) in specs {
            p.start(&name, spec)?;
        }
    }
    let result = drive(&demo, &args).await;
    if let Err(e) = &result {
        eprintln!("demo: {e:#}");
    }
    eprintln!("stopping every process");
    let (clean, killed) = demo
        .procs
        .lock()
        .await
        .shutdown(Duration::from_secs(5))
        .await;
    eprintln!(
        "stopped: {clean} exited cleanly, {killed} killed after 5 s; files kept in {}",
        dir.display()
    );
    if let Some(n) = namespaces {
        let (delivered, lost) = n.packets();
        eprintln!(
            "the WAN carried {delivered} packets and lost {lost}; its namespaces are deleted"
        );
    }
    result
}

/// Waits for the clusters, links them, runs traffic, the table and the
/// scenario until the end.
async fn drive(demo: &Demo, args: &Args) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    // Ctrl-C or SIGTERM, from the start; the guard ends the watch on return.
    let _end = stop.clone().drop_guard();
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = interrupted() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        })
    };
    tokio::select! {
        r = start(demo) => r?,
        () = stop.cancelled() => anyhow::bail!("interrupted while starting"),
    }
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for c in CLUSTERS {
        for t in mesh::targets(&c) {
            workers.spawn(traffic::run(
                c.name,
                demo.via(&c),
                t,
                args.rate,
                demo.stats.clone(),
                stop.clone(),
            ));
        }
    }
    let scenario = async {
        if args.scenario.is_empty() {
            return None;
        }
        for s in &args.scenario {
            let r = scenario::run(demo, *s).await;
            match &r {
                Ok(()) => demo.say(format!("scenario {s:?}: done, as expected")),
                Err(e) => demo.say(format!("scenario {s:?}: FAILED: {e:#}")),
            }
            if r.is_err() {
                return Some(r);
            }
        }
        Some(Ok(()))
    };
    let table = table_loop(demo, args, started, &stop);
    tokio::pin!(scenario);
    tokio::pin!(table);
    let mut outcome = None;
    loop {
        tokio::select! {
            r = &mut scenario, if outcome.is_none() => {
                outcome = Some(r.unwrap_or(Ok(())));
                if args.exit_after_scenario {
                    break;
                }
            }
            () = &mut table => break,
        }
    }
    stop.cancel();
    let _ = signals.await;
    while workers.join_next().await.is_some() {}
    match outcome {
        Some(r) => r,
        None if args.exit_after_scenario => anyhow::bail!("interrupted before the scenario ended"),
        None => Ok(()),
    }
}

/// Ctrl-C or SIGTERM (only Ctrl-C where SIGTERM cannot be watched).
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Until stopped (or `--seconds`): the table every second on a terminal
/// (redrawn in place), every 5 s otherwise; processes that died.
async fn table_loop(demo: &Demo, args: &Args, started: Instant, stop: &CancellationToken) {
    let period = if demo.tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    demo.stats.take();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (name, status, log) in demo.procs.lock().await.exited() {
            demo.say(format!("{name} exited ({status}); see {}", log.display()));
        }
        let windows = demo.stats.take();
        let mut links = Vec::new();
        for c in CLUSTERS {
            links.push((c.name, links_of(&c).await));
        }
        let text = table::render(started.elapsed(), period, &windows, &links);
        if demo.tty {
            let narration = demo.narration.lock().clone();
            let tail: Vec<&String> = narration.iter().rev().take(14).rev().collect();
            let mut screen = format!("\x1b[H\x1b[2J{text}");
            for l in tail {
                screen.push_str(l);
                screen.push('\n');
            }
            print!("{screen}");
        } else {
            println!("{text}");
        }
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            return;
        }
    }
}

/// Control planes up, clusters linked, every frontend answered.
async fn start(demo: &Demo) -> anyhow::Result<()> {
    for c in CLUSTERS {
        wait_for(
            &format!("{} control plane", c.name),
            Duration::from_secs(30),
            || async move {
                admin_get(c.control_plane_admin(), "/readyz")
                    .await
                    .map(|_| ())
                    .ok_or_else(|| format!("no answer on {}", c.control_plane_admin()))
            },
        )
        .await?;
    }
    eprintln!("linking every cluster with every other (isthmusctl link create, both ways)");
    link_all(&demo.dir, demo.netns)?;
    for c in CLUSTERS {
        wait_for(
            &format!("{}'s links", c.name),
            Duration::from_secs(60),
            || async move {
                let links = links_of(&c).await.ok_or("control plane not answering")?;
                let down: Vec<String> = links
                    .iter()
                    .filter(|(_, s)| !s.connected)
                    .map(|(p, s)| format!("{p}: {}", table::link_line(s)))
                    .collect();
                if links.len() == CLUSTERS.len() - 1 && down.is_empty() {
                    Ok(())
                } else {
                    Err(down.join("; "))
                }
            },
        )
        .await?;
    }
    for c in CLUSTERS {
        for t in mesh::targets(&c) {
            let what = format!("{} frontend -> {}", c.name, t.host);
            let t = &t;
            wait_for(&what, Duration::from_secs(60), || async move {
                traffic::once(&demo.via(&c), t, &[]).await.map(|_| ())
            })
            .await?;
        }
    }
    Ok(())
}
