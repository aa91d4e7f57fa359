//! DNS proxy benchmark: the sidecar's DNS proxy against the resolver it
//! forwards to, in one run.
//!
//!     apt-get install -y dnsmasq-base       # the upstream resolver
//!     cargo bench -p isthmus-gateway --bench dns
//!
//! Setup: dnsmasq (answering `*.example.test` from memory, no upstream of
//! its own) stands in for the cluster's DNS; the sidecar runs with a
//! configuration of BENCH_NAMES (default 10 000) imported services, each
//! with a ClusterSet IP, `--dns` on and dnsmasq as its upstream. Each runs
//! pinned to core 1 with one worker; this client, on core 0, sends one UDP
//! query at a time (closed loop) and times each answer. Targets are
//! measured in interleaved rounds (BENCH_ROUNDS, default 5, of
//! BENCH_QUERIES, default 5000, queries each) and the median round is
//! reported:
//! - a clusterset name, answered by the sidecar;
//! - a forwarded name, through the sidecar to dnsmasq;
//! - the same name asked of dnsmasq directly (the baseline).
//!
//! Memory: the DNS table's own heap for those names (built in this process
//! under a counting allocator), and the sidecar's RSS with the same
//! configuration with and without `--dns`, and with no services (RSS moves
//! with what the allocator kept from parsing, so the table's bytes are
//! the figure; the RSS says what a sidecar with that many services takes).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

mod common;
use common::*;

/// Counts the bytes live on the heap (for the table's size).
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts.
#[allow(unsafe_code)] // a GlobalAlloc is an unsafe trait; this one forwards to System
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap bytes of the DNS table for `cfg_yaml`'s services.
fn table_bytes(cfg_yaml: &str) -> isize {
    let cfg = isthmus_api::parse_yaml(cfg_yaml).expect("the configuration parses");
    let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
    let t = isthmus_gateway::dns::table::Table::build(&cfg, "cluster.local");
    let after = LIVE.load(std::sync::atomic::Ordering::Relaxed);
    assert!(!t.is_empty());
    after - before
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = id;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    q.to_vec().unwrap()
}

/// `n` queries for `name` to `server`, one at a time: each latency in µs.
fn measure(server: SocketAddr, name: &str, n: usize) -> Vec<f64> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let q = query(name, i as u16);
        let t = Instant::now();
        s.send(&q).unwrap();
        let len = s.recv(&mut buf).expect("an answer within 2 s");
        out.push(t.elapsed().as_secs_f64() * 1e6);
        let r = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(r.metadata.id, i as u16);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(r.answers.len(), 1, "{name}");
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A configuration of `n` imported services with ClusterSet IPs.
fn config(n: usize) -> String {
    let mut s = String::from("services:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - name: svc{i}.ns{}.svc.clusterset.local\n    vips: [\"240.240.{}.{}\"]\n    ports: [{{port: 80}}]\n",
            i % 50,
            i / 250,
            i % 250 + 1
        ));
    }
    s
}

/// The sidecar on core 1 with `cfg`, DNS at `dns` (None: off); waits until
/// its admin answers and returns it with its pid.
async fn sidecar(
    cfg: &std::path::Path,
    admin: SocketAddr,
    dns: Option<(SocketAddr, SocketAddr)>,
) -> (Proc, u32) {
    let mut args = vec![
        "sidecar".to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--admin".into(),
        admin.to_string(),
        "--access-log".into(),
        "off".into(),
        "--worker-threads".into(),
        "1".into(),
    ];
    if let Some((at, upstream)) = dns {
        args.extend([
            "--dns".into(),
            at.to_string(),
            "--dns-upstream".into(),
            upstream.to_string(),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = pinned(1, BIN, &refs).spawn().unwrap();
    let pid = p.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        isthmus_testkit::http(admin, "admin", "/readyz").await,
        Some((200, _))
    ) {
        assert!(Instant::now() < deadline, "the sidecar never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The configuration is loaded before the admin port answers; give the
    // allocator a moment to settle before reading the RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (Proc(p), pid)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if !pin_self_to_core_0() {
        return;
    }
    if !have("dnsmasq") {
        eprintln!("dnsmasq not installed: apt-get install -y dnsmasq-base");
        return;
    }
    let names = knob("BENCH_NAMES", 10_000) as usize;
    let rounds = knob("BENCH_ROUNDS", 5) as usize;
    let queries = knob("BENCH_QUERIES", 5000) as usize;
    let dir = std::env::temp_dir().join(format!("isthmus-bench-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let upstream = own(20153);
    let _dnsmasq = Proc(
        pinned(
            1,
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={}", upstream.ip()),
                &format!("--port={}", upstream.port()),
                "--address=/example.test/192.0.2.1",
                &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
                "--user=root",
            ],
        )
        .spawn()
        .unwrap(),
    );
    let cfg = dir.join("sidecar.yaml");
    write(&cfg, &config(names));
    let empty = dir.join("empty.yaml");
    write(&empty, "services: []\n");
    let dns = own(20053);
    let (proxy, proxy_pid) = sidecar(&cfg, own(20020), Some((dns, upstream))).await;
    // Both answer before anything is timed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::panic::catch_unwind(|| measure(upstream, "a.example.test", 1)).is_err() {
        assert!(Instant::now() < deadline, "dnsmasq never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let local = format!("svc{}.ns7.svc.clusterset.local", names / 2 / 50 * 50 + 7);
    let targets = [
        ("clusterset name, sidecar", dns, local.as_str()),
        (
            "forwarded name, sidecar -> dnsmasq",
            dns,
            "www.example.test",
        ),
        ("same name, dnsmasq directly", upstream, "www.example.test"),
    ];
    // Warm-up, then interleaved rounds.
    for (_, at, name) in &targets {
        measure(*at, name, 500);
    }
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, (_, at, name)) in targets.iter().enumerate() {
            let mut v = measure(*at, name, queries);
            results[i].push((percentile(&mut v, 0.5), percentile(&mut v, 0.99)));
        }
    }
    let proxy_rss = rss_kib(proxy_pid).unwrap_or(0);
    drop(proxy);
    let (off, off_pid) = sidecar(&cfg, own(20021), None).await;
    let off_rss = rss_kib(off_pid).unwrap_or(0);
    drop(off);
    let (bare, bare_pid) = sidecar(&empty, own(20022), Some((own(20054), upstream))).await;
    let bare_rss = rss_kib(bare_pid).unwrap_or(0);
    drop(bare);

    println!(
        "DNS answer latency, one query at a time over UDP ({rounds} rounds of {queries}, median round; {names} names configured):"
    );
    println!("{:<38} {:>10} {:>10}", "target", "p50 µs", "p99 µs");
    for (i, (what, _, _)) in targets.iter().enumerate() {
        let mut p50: Vec<f64> = results[i].iter().map(|r| r.0).collect();
        let mut p99: Vec<f64> = results[i].iter().map(|r| r.1).collect();
        println!(
            "{what:<38} {:>10.1} {:>10.1}",
            percentile(&mut p50, 0.5),
            percentile(&mut p99, 0.5)
        );
    }
    let bytes = table_bytes(&config(names));
    println!(
        "DNS table: {} KiB for {names} names ({} bytes a name, its three forms included)",
        bytes / 1024,
        bytes / names as isize
    );
    println!("sidecar RSS:");
    println!("  {names} names, DNS on:   {proxy_rss} KiB");
    println!("  {names} names, DNS off:  {off_rss} KiB");
    println!("  no services, DNS on:  {bare_rss} KiB");
    let _ = std::fs::remove_dir_all(&dir);
}
