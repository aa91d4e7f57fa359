//! The discovery stream under load, and the control plane's memory.
//!
//! 1. Push: a control plane on a `files` store of 1 000 services (100
//!    namespaces, 10 endpoints each) with 1 000 subscribed proxies (real
//!    tonic streams over loopback, one connection each, 10 per namespace).
//!    Each round changes the Mesh's region, which changes every service
//!    (every proxy gets its whole slice again, the worst case), and times
//!    the file write → the ACK of 99% (and 100%) of the proxies. The
//!    simulated proxies check each resource's bytes against its version
//!    and ACK; they share this machine's 2 cores with the control plane.
//!    Baseline in the same run: the same change with one subscriber.
//! 2. Memory: control-plane RSS with 10 000 services and 100 000 endpoints
//!    minus RSS with the same services and no endpoints, per endpoint
//!    (separate child processes, so allocator history does not mix).
//!
//! `cargo bench -p isthmus-federation --bench discovery`
//! (BENCH_SUBSCRIBERS, BENCH_ROUNDS, BENCH_ENDPOINTS to change the sizes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_api::discovery::v1::discovery_client::DiscoveryClient;
use isthmus_api::discovery::v1::{DiscoveryRequest, Subscription};
use isthmus_api::model;
use isthmus_api::resource;
use isthmus_federation::server::{ControlPlane, Options};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;

/// Counts live heap bytes, so memory is reported as what the control plane
/// holds (next to RSS, which also keeps the allocator's high-water mark).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only adds
// an atomic counter of the bytes currently allocated.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mesh_doc(region: &str) -> String {
    format!(
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: mesh}}\n\
         spec: {{clusterName: bench, trustDomain: bench.local, locality: {{region: {region}}}}}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn store(tag: &str, services: usize, endpoints: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isthmus-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "mesh.yaml", &mesh_doc("r0"));
    write(&dir, "services.yaml", &common::mesh(services, endpoints));
    dir
}

/// VmRSS of this process, bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// This process's CPU time (user + system).
fn cpu() -> Duration {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU time of this process's threads whose name starts with `prefix`
/// (threads that exited are not counted).
fn cpu_of(prefix: &str) -> Duration {
    let mut total = Duration::ZERO;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            total += stat_cpu(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default());
        }
    }
    total
}

fn stat_cpu(s: &str) -> Duration {
    let fields: Vec<&str> = s
        .rsplit_once(") ")
        .map(|x| x.1)
        .unwrap_or("")
        .split(' ')
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// A simulated proxy: subscribes, decodes every resource, ACKs, and
/// reports (generation, when) for every response it acknowledged.
async fn subscriber(
    addr: std::net::SocketAddr,
    i: usize,
    report: mpsc::UnboundedSender<(u64, Instant)>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(DiscoveryRequest {
        subscribe: Some(Subscription {
            node: Some(model::Node {
                name: format!("p{i}"),
                namespace: format!("ns{}", i % 100),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let mut responses = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    // What a proxy holds: name -> version. The bytes are checked against
    // their version (FNV-1a over the body), which proves they arrived
    // whole; decoding and compiling them is the proxy's own CPU, spent on
    // its own machine, measured by the gateway's benchmarks, not here.
    let mut held = BTreeMap::new();
    while let Ok(Some(r)) = responses.message().await {
        for res in &r.resources {
            assert_eq!(resource::version_of(&res.body), res.version, "intact");
            held.insert(res.name.clone(), res.version.clone());
        }
        for n in &r.removed_resources {
            held.remove(n);
        }
        let ack = DiscoveryRequest {
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
        let _ = report.send((r.system_version.parse().unwrap_or(0), Instant::now()));
    }
}

struct Round {
    publish: Duration,
    p99: Duration,
    all: Duration,
}

/// Starts a control plane and `n` subscribers; runs `rounds` changes.
fn push_rounds(n: usize, rounds: usize) -> (Duration, Vec<Round>, (Duration, Duration)) {
    let dir = store("push", 1000, 10);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cp")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("proxies")
        .enable_all()
        .build()
        .unwrap();
    let (cp, addr) = server_rt.block_on(async {
        let mut opts = Options::new(dir.clone());
        opts.poll = Duration::from_millis(5);
        opts.debounce = Duration::ZERO;
        let cp = ControlPlane::start(opts);
        let l = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        cp.serve_discovery(l);
        (cp, addr)
    });
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let t = Instant::now();
    for i in 0..n {
        client_rt.spawn(subscriber(addr, i, report_tx.clone()));
    }
    let wait_for = |reports: &mut mpsc::UnboundedReceiver<(u64, Instant)>, generation: u64| {
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            let (g, at) = reports.blocking_recv().expect("subscribers alive");
            if g >= generation {
                times.push(at);
            }
        }
        times.sort();
        times
    };
    wait_for(&mut reports, 1);
    let connect = t.elapsed();
    let cpu_before = cpu();
    let cp_before = cpu_of("cp");
    let mut out = Vec::new();
    let mut published = cp.published.clone();
    for r in 0..rounds {
        let generation = published.borrow_and_update().generation + 1;
        let t0 = Instant::now();
        write(&dir, "mesh.yaml", &mesh_doc(&format!("r{}", r + 1)));
        let publish = server_rt.block_on(async {
            while published.borrow_and_update().generation < generation {
                published.changed().await.unwrap();
            }
            t0.elapsed()
        });
        let times = wait_for(&mut reports, generation);
        let p99 = times[(n * 99).div_ceil(100) - 1] - t0;
        out.push(Round {
            publish,
            p99,
            all: times[n - 1] - t0,
        });
    }
    let cpu_per_round = (
        (cpu() - cpu_before) / rounds.max(1) as u32,
        (cpu_of("cp") - cp_before) / rounds.max(1) as u32,
    );
    server_rt.block_on(cp.shutdown());
    drop(client_rt);
    let _ = std::fs::remove_dir_all(&dir);
    (connect, out, cpu_per_round)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Child process: load a control plane with `services` services of
/// `endpoints` endpoints each, print its RSS once translated.
fn memory_child(services: usize, endpoints: usize) {
    let dir = store(&format!("mem{endpoints}"), services, endpoints);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = rss();
    if std::env::var("BENCH_STAGES").is_ok() {
        let (loaded, errors) = isthmus_federation::store::files::load_dir(&dir);
        eprintln!(
            "stage parsed docs: rss {} MB live {} MB ({} errors)",
            rss() / 1_000_000,
            live() / 1_000_000,
            errors.len()
        );
        let (snap, _) =
            isthmus_federation::store::files::merge(&Default::default(), loaded, errors);
        eprintln!(
            "stage snapshot: rss {} MB live {} MB",
            rss() / 1_000_000,
            live() / 1_000_000
        );
        let catalog = isthmus_federation::translate::translate(
            &isthmus_federation::translate::Inputs::new(&snap),
        )
        .filled();
        eprintln!(
            "stage catalog: rss {} MB live {} MB",
            rss() / 1_000_000,
            live() / 1_000_000
        );
        let mut catalog = catalog;
        let offer = isthmus_federation::discovery::Offer::build(1, &mut catalog, &[], |_| {});
        eprintln!(
            "stage offer: rss {} MB live {} MB ({} resources)",
            rss() / 1_000_000,
            live() / 1_000_000,
            offer.len()
        );
        drop(catalog);
        eprintln!(
            "stage catalog dropped: rss {} MB live {} MB",
            rss() / 1_000_000,
            live() / 1_000_000
        );
        drop(snap);
        eprintln!(
            "stage snapshot dropped: rss {} MB live {} MB",
            rss() / 1_000_000,
            live() / 1_000_000
        );
    }
    rt.block_on(async {
        let cp = ControlPlane::start(Options::new(dir.clone()));
        let p = cp.published.borrow().clone();
        let eps = p.offer.endpoints();
        assert_eq!(eps, services * endpoints);
        println!("rss {} {} {} {}", before, rss(), eps, live());
        cp.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// (RSS, live heap) of a child holding `services` x `endpoints`.
fn memory_run(services: usize, endpoints: usize) -> (u64, u64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--memory-child",
            &services.to_string(),
            &endpoints.to_string(),
        ])
        .output()
        .expect("child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rss "))
        .unwrap_or_else(|| {
            panic!(
                "child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let f: Vec<u64> = line[4..].split(' ').map(|x| x.parse().unwrap()).collect();
    (f[1], f[3])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        memory_child(args[i + 1].parse().unwrap(), args[i + 2].parse().unwrap());
        return;
    }
    let n = env("BENCH_SUBSCRIBERS", 1000);
    let rounds = env("BENCH_ROUNDS", 20);

    let (_, base, _) = push_rounds(1, rounds);
    let (connect, runs, cpu_round) = push_rounds(n, rounds);
    println!(
        "\n== discovery push: 1000 services / 10 000 endpoints; every service changes; {rounds} rounds =="
    );
    println!(
        "{n} subscribers connected and synced in {:.0} ms",
        ms(connect)
    );
    println!(
        "                                  median      p99      max   (ms, file write -> ...)"
    );
    let row = |label: &str, v: Vec<Duration>| {
        println!(
            "{label:<32}{:>8.1} {:>8.1} {:>8.1}",
            ms(percentile(v.clone(), 0.5)),
            ms(percentile(v.clone(), 0.99)),
            ms(percentile(v, 1.0))
        )
    };
    row(
        "baseline: 1 subscriber ACKed",
        base.iter().map(|r| r.all).collect(),
    );
    row(
        "new generation published",
        runs.iter().map(|r| r.publish).collect(),
    );
    row(
        &format!("99% of {n} ACKed"),
        runs.iter().map(|r| r.p99).collect(),
    );
    row(
        &format!("100% of {n} ACKed"),
        runs.iter().map(|r| r.all).collect(),
    );
    println!(
        "CPU per round: control plane {:.0} ms, whole process (with {n} simulated proxies) {:.0} ms",
        ms(cpu_round.1),
        ms(cpu_round.0)
    );

    let services = 10_000;
    let per = env("BENCH_ENDPOINTS", 10);
    let (rss0, live0) = memory_run(services, 0);
    let (rss1, live1) = memory_run(services, per);
    let endpoints = services * per;
    let each = |a: u64, b: u64| b.saturating_sub(a) as f64 / endpoints as f64;
    println!("\n== control-plane memory, {services} services, files store ==");
    println!("                                      RSS    live heap");
    println!(
        "baseline: no endpoints            {:>7.1} MB {:>7.1} MB",
        rss0 as f64 / 1e6,
        live0 as f64 / 1e6
    );
    println!(
        "{endpoints} endpoints ({per}/service)  {:>7.1} MB {:>7.1} MB",
        rss1 as f64 / 1e6,
        live1 as f64 / 1e6
    );
    println!(
        "per endpoint                      {:>7.0} B  {:>7.0} B",
        each(rss0, rss1),
        each(live0, live1)
    );
}
