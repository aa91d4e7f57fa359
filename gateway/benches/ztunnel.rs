//! Our mTLS sidecar pair beside Istio's ztunnel pair (issue 24 §1), in one
//! run, one layout: two network namespaces joined by a veth; the client
//! tools' connections to the server's address are redirected by iptables
//! to the client proxy's transparent listener (15001), which carries them
//! over mTLS HTTP/2 CONNECT to the server proxy's 15008, which connects to
//! the application. Direct (no rules, no proxies) is the baseline.
//!
//!     apt-get install -y iperf3 sockperf protobuf-compiler
//!     gateway/benches/ztunnel/build.sh           # once, ~13 min: target/ztunnel/ztunnel
//!     cargo bench -p isthmus-gateway --bench ztunnel
//!
//! Both proxies of a pair on core 1, one worker thread each; the
//! applications and the load on core 0. Rounds are interleaved (direct,
//! ours, ztunnel, ...) and each figure is the median over the rounds.
//! Reports: sockperf 1 KiB TCP ping-pong round trip p50/p99, iperf3 with
//! 1 and 4 streams, and HTTP (`POST /echo`, 1 KiB bodies) at a fixed rate,
//! open loop, latency from each due time. HTTP is declared HTTP in our
//! sidecars (they route it per request, as for any HTTP service); ztunnel
//! carries it as bytes.
//!
//! Needs root (namespaces, iptables); without ztunnel's binary, ours and
//! direct only, saying so. Environment: BENCH_SECONDS (default 5),
//! BENCH_ROUNDS (default 3), BENCH_RATE (default 1000), ZTUNNEL (the
//! binary, default target/ztunnel/ztunnel), BENCH_LOG_DIR (each process's
//! output in a file there), BENCH_MESHES (`isthmus`, `ztunnel` or both:
//! which pairs run beside direct).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;
use isthmus_testkit::pki;

const CLIENT_IP: &str = "10.77.0.1";
const SERVER_IP: &str = "10.77.0.2";
const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const TUNNEL_PORT: u16 = 15008;
const CAPTURE_PORT: u16 = 15001;
const TRUST_DOMAIN: &str = "bench.isthmus.local";

/// The two namespaces, removed on drop (with everything in them).
struct Lab {
    client: String,
    server: String,
}

impl Lab {
    fn new() -> Self {
        let id = std::process::id();
        let lab = Lab {
            client: format!("zb{id}c"),
            server: format!("zb{id}s"),
        };
        run(&["ip", "netns", "add", &lab.client]);
        run(&["ip", "netns", "add", &lab.server]);
        let (vc, vs) = (format!("zb{id}vc"), format!("zb{id}vs"));
        run(&[
            "ip",
            "link",
            "add",
            &vc,
            "netns",
            &lab.client,
            "type",
            "veth",
            "peer",
            "name",
            &vs,
            "netns",
            &lab.server,
        ]);
        for (ns, dev, ip) in [(&lab.client, &vc, CLIENT_IP), (&lab.server, &vs, SERVER_IP)] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }

    /// `program` in namespace `ns`, pinned to `core`.
    fn spawn(
        &self,
        ns: &str,
        core: u32,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            ns,
            "taskset",
            "-c",
            &core.to_string(),
            program,
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // BENCH_LOG_DIR: each process's output in a file there.
        if let Some(dir) = std::env::var_os("BENCH_LOG_DIR") {
            let name = Path::new(program).file_name().unwrap().to_string_lossy();
            let path = Path::new(&dir).join(format!("{name}-{ns}.log"));
            let f = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            c.stdout(f.try_clone().unwrap()).stderr(f);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        Proc(
            c.spawn()
                .unwrap_or_else(|e| panic!("cannot start {program}: {e}")),
        )
    }

    /// The client namespace's connections to the server's application
    /// ports go to the client proxy (the proxies' own connections go to
    /// 15008, which is not redirected).
    fn capture(&self, on: bool) {
        let ports = format!("{HTTP_PORT},{IPERF_PORT},{SOCKPERF_PORT}");
        let rule = [
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            SERVER_IP,
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ];
        let mut args = vec!["ip", "netns", "exec", &self.client, "iptables", "-t", "nat"];
        args.push(if on { "-A" } else { "-D" });
        args.extend(rule);
        run(&args);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[derive(Clone, Copy, PartialEq)]
enum Mesh {
    Direct,
    Isthmus,
    Ztunnel,
}

impl Mesh {
    fn key(self) -> &'static str {
        match self {
            Mesh::Direct => "direct",
            Mesh::Isthmus => "isthmus",
            Mesh::Ztunnel => "ztunnel",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mesh::Direct => "direct",
            Mesh::Isthmus => "isthmus pair",
            Mesh::Ztunnel => "ztunnel pair",
        }
    }
}

/// One round's figures for one mesh.
#[derive(Default)]
struct Figures {
    rtt: Vec<(f64, f64)>,
    one: Vec<f64>,
    four: Vec<f64>,
    http: Vec<(f64, f64, u64)>,
}

/// Runs the load generator of this benchmark inside the client namespace
/// (this same binary, `BENCH_ROLE=http`): the HTTP figures as one line.
fn http_in(lab: &Lab, rate: u64, secs: u64) -> Option<(f64, f64, u64)> {
    let me = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client, "taskset", "-c", "0"])
        .arg(me)
        .env("BENCH_ROLE", "http")
        .env("BENCH_PINNED", "1")
        .env("BENCH_TARGET", format!("{SERVER_IP}:{HTTP_PORT}"))
        .env("BENCH_RATE", rate.to_string())
        .env("BENCH_SECONDS", secs.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    Some((
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
    ))
}

/// `BENCH_ROLE=http`: the open-loop HTTP load, printed as `p50 p99 errors`.
fn http_role() {
    let target: SocketAddr = std::env::var("BENCH_TARGET").unwrap().parse().unwrap();
    let rate = knob("BENCH_RATE", 1000);
    let secs = knob("BENCH_SECONDS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let l = rt.block_on(fixed_rate(target, rate, secs));
    println!("{} {} {}", l.p50, l.p99, l.errors);
}

/// Our pair: the client sidecar's transparent listener sends the server's
/// three ports through the server sidecar's tunnel listener.
fn start_isthmus(lab: &Lab, dir: &Path, files: &(Vec<PathBuf>, Vec<PathBuf>)) -> Vec<Proc> {
    let server_id = format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/server");
    let client_cfg = dir.join("isthmus-client.yaml");
    write(
        &client_cfg,
        &format!(
            "listeners:\n\
             \x20 - {{name: capture, address: \"127.0.0.1:{CAPTURE_PORT}\", transparent: {{}}}}\n\
             services:\n\
             \x20 - name: app.bench\n    vips: [{SERVER_IP}]\n    ports: [{{port: {HTTP_PORT}, protocol: HTTP}}, {{port: {IPERF_PORT}, protocol: TCP}}, {{port: {SOCKPERF_PORT}, protocol: TCP}}]\n    endpoints: [{{address: \"{SERVER_IP}\", tunnelPort: {TUNNEL_PORT}, identity: \"{server_id}\"}}]\n"
        ),
    );
    let server_cfg = dir.join("isthmus-server.yaml");
    write(
        &server_cfg,
        &format!(
            "listeners:\n\
             \x20 - {{name: tunnel, address: \"{SERVER_IP}:{TUNNEL_PORT}\", tunnel: {{appAddress: \"{SERVER_IP}\", ports: [{{port: {HTTP_PORT}}}, {{port: {IPERF_PORT}, protocol: TCP}}, {{port: {SOCKPERF_PORT}, protocol: TCP}}]}}}}\n\
             services: []\n"
        ),
    );
    let sidecar = |ns: &str, cfg: &Path, f: &[PathBuf]| {
        lab.spawn(
            ns,
            1,
            BIN,
            &[
                "sidecar",
                "--config",
                cfg.to_str().unwrap(),
                "--admin",
                "127.0.0.1:15020",
                "--access-log",
                "off",
                "--worker-threads",
                "1",
                "--cert-file",
                f[0].to_str().unwrap(),
                "--key-file",
                f[1].to_str().unwrap(),
                "--ca-roots",
                f[2].to_str().unwrap(),
            ],
            &[],
        )
    };
    vec![
        sidecar(&lab.server, &server_cfg, &files.1),
        sidecar(&lab.client, &client_cfg, &files.0),
    ]
}

/// ztunnel's pair, standalone: its fake CA, workloads from a local file,
/// one dedicated proxy per namespace.
fn start_ztunnel(lab: &Lab, dir: &Path, bin: &Path) -> Vec<Proc> {
    let workloads = dir.join("ztunnel-workloads.yaml");
    let workload = |name: &str, ip: &str| {
        format!(
            "- uid: cluster1//v1/Pod/bench/{name}\n  name: {name}\n  namespace: bench\n  serviceAccount: {name}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: {name}\n  network: \"\"\n  services: {{}}\n"
        )
    };
    write(
        &workloads,
        &format!(
            "workloads:\n{}{}policies: []\nservices: []\n",
            workload("client", CLIENT_IP),
            workload("server", SERVER_IP)
        ),
    );
    let z = |ns: &str, name: &str| {
        let info = format!("bench/{name}/{name}");
        lab.spawn(
            ns,
            1,
            bin.to_str().unwrap(),
            &[],
            &[
                ("FAKE_CA", "true"),
                ("LOCAL_XDS_PATH", workloads.to_str().unwrap()),
                ("PROXY_MODE", "dedicated"),
                ("PROXY_WORKLOAD_INFO", &info),
                ("ENABLE_ORIG_SRC", "false"),
                ("ZTUNNEL_WORKER_THREADS", "1"),
                ("XDS_ADDRESS", ""),
                ("CA_ADDRESS", ""),
            ],
        )
    };
    vec![z(&lab.server, "server"), z(&lab.client, "client")]
}

/// Waits until an HTTP request through the capture is answered.
fn wait_through(lab: &Lab) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if http_in(lab, 50, 1).is_some_and(|(_, _, errors)| errors == 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("http") {
        return http_role();
    }
    if !pin_self_to_core_0() {
        return;
    }
    let missing: Vec<&str> = ["ip", "iptables", "iperf3", "sockperf", "taskset"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    if !isthmus_e2e::is_root() || !missing.is_empty() {
        println!("skipping: the ztunnel comparison needs root and {missing:?}");
        return;
    }
    let ztunnel = std::env::var_os("ZTUNNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ztunnel/ztunnel")
        });
    let mut meshes = vec![Mesh::Direct, Mesh::Isthmus];
    if ztunnel.exists() {
        meshes.push(Mesh::Ztunnel);
    } else {
        println!(
            "ztunnel is not built ({}): gateway/benches/ztunnel/build.sh builds it once; ours and direct only",
            ztunnel.display()
        );
    }
    // BENCH_MESHES: a subset (e.g. `isthmus` to profile it); direct stays
    // first, as the baseline.
    if let Ok(only) = std::env::var("BENCH_MESHES") {
        meshes.retain(|m| *m == Mesh::Direct || only.split(',').any(|o| m.key() == o));
    }
    let secs = knob("BENCH_SECONDS", 5);
    let rounds = knob("BENCH_ROUNDS", 3) as usize;
    let rate = knob("BENCH_RATE", 1000);
    let dir = std::env::temp_dir().join(format!("isthmus-bench-ztunnel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let lab = Lab::new();
    let http = format!("{SERVER_IP}:{HTTP_PORT}");
    let _apps = [
        lab.spawn(
            &lab.server,
            0,
            &sample_bin(),
            &["--listen", &http, "--service", "up"],
            &[("TOKIO_WORKER_THREADS", "1")],
        ),
        lab.spawn(
            &lab.server,
            0,
            "iperf3",
            &["-s", "-B", SERVER_IP, "-p", &IPERF_PORT.to_string()],
            &[],
        ),
        lab.spawn(
            &lab.server,
            0,
            "sockperf",
            &[
                "server",
                "--tcp",
                "-i",
                SERVER_IP,
                "-p",
                &SOCKPERF_PORT.to_string(),
            ],
            &[],
        ),
    ];
    assert!(
        wait_through(&lab),
        "the application never answered directly"
    );

    let ca = pki::Ca::new(TRUST_DOMAIN);
    let files = (
        ca.write_files(&ca.issue("bench", "client"), &dir, "client")
            .to_vec(),
        ca.write_files(&ca.issue("bench", "server"), &dir, "server")
            .to_vec(),
    );

    let mut figures: Vec<Figures> = meshes.iter().map(|_| Figures::default()).collect();
    for round in 0..rounds {
        for (i, mesh) in meshes.iter().enumerate() {
            let procs = match mesh {
                Mesh::Direct => vec![],
                Mesh::Isthmus => start_isthmus(&lab, &dir, &files),
                Mesh::Ztunnel => start_ztunnel(&lab, &dir, &ztunnel),
            };
            if *mesh != Mesh::Direct {
                lab.capture(true);
            }
            if !wait_through(&lab) {
                println!(
                    "round {round}: {} never carried a request; skipped",
                    mesh.name()
                );
            } else {
                let f = &mut figures[i];
                // The tools run in the client namespace, on the load's core.
                let client = ["ip", "netns", "exec", &lab.client, "taskset", "-c", "0"];
                let sock: SocketAddr = format!("{SERVER_IP}:{SOCKPERF_PORT}").parse().unwrap();
                let ipt: SocketAddr = format!("{SERVER_IP}:{IPERF_PORT}").parse().unwrap();
                if let Some(r) = sockperf(&client, sock, secs) {
                    f.rtt.push(r);
                }
                if let Some(g) = iperf(&client, ipt, 1, secs) {
                    f.one.push(g);
                }
                if let Some(g) = iperf(&client, ipt, 4, secs) {
                    f.four.push(g);
                }
                if let Some(h) = http_in(&lab, rate, secs) {
                    f.http.push(h);
                }
            }
            if *mesh != Mesh::Direct {
                lab.capture(false);
            }
            drop(procs);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!("\n== mesh pair, one layout ({rounds} interleaved rounds of {secs} s, medians) ==");
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "", "RTT p50", "RTT p99", "iperf3 x1", "iperf3 x4", "HTTP p50", "HTTP p99", "errors"
    );
    let direct_rtt = (
        median(figures[0].rtt.iter().map(|r| r.0).collect()),
        median(figures[0].rtt.iter().map(|r| r.1).collect()),
    );
    let direct_http = (
        median(figures[0].http.iter().map(|h| h.0).collect()),
        median(figures[0].http.iter().map(|h| h.1).collect()),
    );
    for (mesh, f) in meshes.iter().zip(&figures) {
        let (p50, p99) = (
            median(f.rtt.iter().map(|r| r.0).collect()),
            median(f.rtt.iter().map(|r| r.1).collect()),
        );
        let (h50, h99) = (
            median(f.http.iter().map(|h| h.0).collect()),
            median(f.http.iter().map(|h| h.1).collect()),
        );
        println!(
            "{:<14} {:>7.1} µs {:>7.1} µs {:>7.2} Gb/s {:>7.2} Gb/s {:>7.3} ms {:>7.3} ms {:>8}",
            mesh.name(),
            p50,
            p99,
            median(f.one.clone()),
            median(f.four.clone()),
            h50,
            h99,
            f.http.iter().map(|h| h.2).sum::<u64>()
        );
        if *mesh != Mesh::Direct {
            println!(
                "{:<14} {:>+7.1} µs {:>+7.1} µs {:>12} {:>12} {:>+7.3} ms {:>+7.3} ms",
                "  added",
                p50 - direct_rtt.0,
                p99 - direct_rtt.1,
                "",
                "",
                h50 - direct_http.0,
                h99 - direct_http.1
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
