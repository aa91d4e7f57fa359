//! What the proxy and mesh benchmarks share: processes pinned to a core,
//! their CPU and memory from /proc, the HTTP load (open loop at a fixed
//! rate with due-time latencies, and closed loop for the maximum), the knobs
//! from the environment, and pinning the generator to core 0.
// Each benchmark uses a subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use isthmus_testkit::have;

/// This benchmark's own loopback address, 127.<from the process id>: every
/// server it starts listens there on a port fixed per role (`own`), so no
/// port is picked as "free" and hoped to stay so; the third-party servers
/// (haproxy, nginx, iperf3, sockperf) cannot report a port they chose.
pub fn own_ip() -> std::net::Ipv4Addr {
    let p = std::process::id();
    std::net::Ipv4Addr::new(127, 100 + ((p >> 16) & 0x7f) as u8, (p >> 8) as u8, p as u8)
}

/// `port` at `own_ip()`.
pub fn own(port: u16) -> SocketAddr {
    (own_ip(), port).into()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_isthmus-gateway");

/// The sample app's binary (`cargo build --release -p isthmus-sample`).
pub fn sample_bin() -> String {
    isthmus_testkit::workspace_bin("isthmus-sample")
        .display()
        .to_string()
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn pinned(core: u32, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(core.to_string()).arg(program).args(args);
    c.env("TOKIO_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU ticks of a process and its children (nginx's worker).
/// CPU ticks (user, system) of a process and its children (nginx's worker).
pub fn cpu_split_tree(pid: u32) -> Option<(u64, u64)> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let (mut user, mut sys) = cpu_split(pid)?;
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        let (u, s) = cpu_split(c).unwrap_or((0, 0));
        user += u;
        sys += s;
    }
    Some((user, sys))
}

pub fn cpu_ticks_tree(pid: u32) -> Option<u64> {
    cpu_split_tree(pid).map(|(u, s)| u + s)
}

pub fn cpu_split(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

pub async fn one(client: &Http, target: SocketAddr, body: &Bytes) -> bool {
    let req = http::Request::post(format!("http://{target}/echo"))
        .header("host", "up")
        .body(Full::new(body.clone()))
        .unwrap();
    match client.request(req).await {
        Ok(r) => {
            let ok = r.status() == 200;
            ok && r
                .into_body()
                .collect()
                .await
                .is_ok_and(|b| b.to_bytes().len() == body.len())
        }
        Err(_) => false,
    }
}

pub async fn wait_ready(target: SocketAddr) {
    let c = client();
    let body = Bytes::from(vec![b'x'; 1024]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !one(&c, target, &body).await {
        assert!(Instant::now() < deadline, "{target} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: u64,
    pub sent: u64,
}

/// Open loop at `rate` for `secs`; latencies in ms from each due time.
pub async fn fixed_rate(target: SocketAddr, rate: u64, secs: u64) -> Latency {
    let c = client();
    let body = Bytes::from(vec![b'x'; 1024]);
    // Warm the connection pool.
    for _ in 0..200 {
        one(&c, target, &body).await;
    }
    let n = rate * secs;
    let start = Instant::now() + Duration::from_millis(50);
    let errors = Arc::new(AtomicU64::new(0));
    // Requests are released on time by a plain thread (tokio's timer has
    // millisecond granularity, which would add up to 1 ms to every sample).
    let rt = tokio::runtime::Handle::current();
    let errs = errors.clone();
    let tasks = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::with_capacity(n as usize);
        for i in 0..n {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let (c, body, errors) = (c.clone(), body.clone(), errs.clone());
            tasks.push(rt.spawn(async move {
                if !one(&c, target, &body).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                due.elapsed()
            }));
        }
        tasks
    })
    .await
    .unwrap();
    let mut lat: Vec<f64> = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Latency {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        max: *lat.last().unwrap(),
        errors: errors.load(Ordering::Relaxed),
        sent: n,
    }
}

/// Closed loop with `conc` workers for `secs`: completed requests/s.
pub async fn max_rps(target: SocketAddr, conc: usize, secs: u64) -> f64 {
    let body = Bytes::from(vec![b'x'; 1024]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (body, done) = (body.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while Instant::now() < stop {
                if one(&c, target, &body).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

pub fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A knob from the environment.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Re-executes the benchmark pinned to core 0 (the generator's core) once;
/// returns false when this process should just exit (the `--list` probe of
/// `cargo test --benches`).
pub fn pin_self_to_core_0() -> bool {
    if std::env::args().any(|a| a == "--list") {
        return false;
    }
    if std::env::var_os("BENCH_PINNED").is_none() && have("taskset") {
        let me = std::env::current_exe().unwrap();
        let status = Command::new("taskset")
            .arg("-c")
            .arg("0")
            .arg(me)
            .args(std::env::args().skip(1))
            .env("BENCH_PINNED", "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    true
}

/// iperf3 to `target` for `secs` with `streams`, run as `prefix` + iperf3
/// (e.g. `ip netns exec NS taskset -c 0`, or nothing): Gbit/s received.
pub fn iperf(prefix: &[&str], target: SocketAddr, streams: u32, secs: u64) -> Option<f64> {
    let out = tool(prefix, "iperf3")
        .args([
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
        ])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        .output()
        .ok()?;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(j["end"]["sum_received"]["bits_per_second"].as_f64()? / 1e9)
}

/// sockperf TCP ping-pong of 1 KiB to `target`, run as `prefix` +
/// sockperf: round trip (p50, p99) in µs.
pub fn sockperf(prefix: &[&str], target: SocketAddr, secs: u64) -> Option<(f64, f64)> {
    let out = tool(prefix, "sockperf")
        .args(["ping-pong", "--tcp", "--full-rtt", "-m", "1024"])
        .args([
            "-i",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
        ])
        .args(["-t", &secs.to_string()])
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p} =")))?
            .rsplit('=')
            .next()?
            .trim()
            .parse::<f64>()
            .ok()
    };
    Some((pct("50.000")?, pct("99.000")?))
}

fn tool(prefix: &[&str], program: &str) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}
