//! Mesh benchmark (issue 4): what a sidecar pair costs, in plaintext and
//! over the mTLS transport (client sidecar -> server sidecar's 15008-style
//! tunnel listener), against a direct connection, in one run.
//!
//!     apt-get install -y iperf3 sockperf
//!     cargo bench -p isthmus-gateway --bench mesh
//!
//! Setup: a test CA issues the two sidecars' SPIFFE certificates, written
//! as files (`--cert-file`, `--key-file`, `--ca-roots`). The load generator,
//! the upstream (the sample app, `POST /echo`, 1 KiB bodies) and the
//! iperf3/sockperf servers run on core 0; the sidecars run on core 1, one
//! worker thread each: the client side is one sidecar per mode (plaintext,
//! mTLS) so each mode's CPU is its own; the server side is one sidecar with
//! a plaintext inbound listener per port and one tunnel listener.
//! Reports, each next to the direct baseline:
//! - HTTP at a fixed rate (open loop, latency from each due time):
//!   p50/p90/p99, what the pair adds, and the pair's CPU per 1000 rps;
//! - new mesh connections per second (TCP + TLS 1.3 with client
//!   certificates + HTTP/2 + one CONNECT) against new plaintext connections
//!   (TCP + one HTTP request), 16 at a time;
//! - opaque TCP through the pair: iperf3 throughput (1 and 4 streams) and
//!   sockperf 1 KiB ping-pong round trip p50/p99.
//!
//! Environment: BENCH_SECONDS (default 5), BENCH_ROUNDS (default 5),
//! BENCH_RATE (default 1000), BENCH_SIDECAR_CORE (default 1; 0 puts the
//! sidecars on the generator's core, which shows what crossing cores costs
//! on this VM).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;
use isthmus_testkit::pki;

fn addr(port: u16) -> SocketAddr {
    own(port)
}

fn spawn_sidecar(cfg: &std::path::Path, admin: u16, files: &[std::path::PathBuf; 3]) -> Proc {
    Proc(
        pinned(
            knob("BENCH_SIDECAR_CORE", 1) as u32,
            BIN,
            &[
                "sidecar",
                "--config",
                cfg.to_str().unwrap(),
                "--admin",
                &addr(admin).to_string(),
                "--access-log",
                "off",
                "--worker-threads",
                "1",
                "--cert-file",
                files[0].to_str().unwrap(),
                "--key-file",
                files[1].to_str().unwrap(),
                "--ca-roots",
                files[2].to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// New connections per second, `conc` at a time for `secs`, each made by
/// `f` and dropped.
async fn rate_of<F, Fut>(conc: usize, secs: u64, f: F) -> (f64, u64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let f = Arc::new(f);
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (f, done, failed) = (f.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                if f().await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        done.load(Ordering::Relaxed) as f64 / secs as f64,
        failed.load(Ordering::Relaxed),
    )
}

/// One new mesh connection: TCP, TLS with our certificate, HTTP/2, one
/// CONNECT answered 200.
async fn mesh_connection(
    tls: Arc<rustls::ClientConfig>,
    tunnel: SocketAddr,
    target: SocketAddr,
) -> bool {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let Ok(tcp) = tokio::net::TcpStream::connect(tunnel).await else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::IpAddress(tunnel.ip().into());
    let Ok(s) = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    let Ok((mut send, conn)) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(s))
        .await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = http::Request::connect(target.to_string())
        .body(Empty::new())
        .unwrap();
    send.send_request(req)
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// One new plaintext connection with one request.
async fn plain_connection(target: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(target).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    if s.write_all(b"GET / HTTP/1.1\r\nhost: up\r\nconnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    if !pin_self_to_core_0() {
        return;
    }
    let secs = knob("BENCH_SECONDS", 5);
    let rounds = knob("BENCH_ROUNDS", 5) as usize;
    let rate = knob("BENCH_RATE", 1000);
    let dir = std::env::temp_dir().join(format!("isthmus-bench-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Upstreams on core 0: the sample app, iperf3 and sockperf servers.
    // Every server at this benchmark's own address, a port per role.
    let ip_own = own_ip();
    let (up, ip, sp) = (20080, 20081, 20082);
    let _up = Proc(
        pinned(
            0,
            &sample_bin(),
            &["--listen", &addr(up).to_string(), "--service", "up"],
        )
        .spawn()
        .unwrap(),
    );
    let tools = have("iperf3") && have("sockperf");
    let _servers = tools.then(|| {
        (
            Proc(
                pinned(
                    0,
                    "iperf3",
                    &["-s", "-B", &ip_own.to_string(), "-p", &ip.to_string()],
                )
                .spawn()
                .unwrap(),
            ),
            Proc(
                pinned(
                    0,
                    "sockperf",
                    &[
                        "server",
                        "--tcp",
                        "-i",
                        &ip_own.to_string(),
                        "-p",
                        &sp.to_string(),
                    ],
                )
                .spawn()
                .unwrap(),
            ),
        )
    });
    wait_ready(addr(up)).await;

    // Identities.
    let ca = pki::Ca::new("bench.isthmus.local");
    let server_files = ca.write_files(&ca.issue("shop", "up"), &dir, "server");
    let client_files = ca.write_files(&ca.issue("shop", "frontend"), &dir, "client");
    let server_id = "spiffe://bench.isthmus.local/ns/shop/sa/up";

    // The server sidecar: a tunnel listener for all three ports, a
    // plaintext inbound listener per port.
    let (tunnel, in_http, in_iperf, in_sock) = (20083, 20084, 20085, 20086);
    let server_cfg = dir.join("server.yaml");
    std::fs::write(
        &server_cfg,
        format!(
            "listeners:\n\
             \x20 - {{name: tunnel, address: \"{ip_own}:{tunnel}\", tunnel: {{appAddress: \"{ip_own}\", ports: [{{port: {up}}}, {{port: {ip}, protocol: TCP}}, {{port: {sp}, protocol: TCP}}]}}}}\n\
             \x20 - {{name: in-http, address: \"{ip_own}:{in_http}\", inbound: {{appAddress: \"{ip_own}\", ports: [{{port: {up}}}]}}}}\n\
             \x20 - {{name: in-iperf, address: \"{ip_own}:{in_iperf}\", inbound: {{appAddress: \"{ip_own}\", ports: [{{port: {ip}, protocol: TCP}}]}}}}\n\
             \x20 - {{name: in-sock, address: \"{ip_own}:{in_sock}\", inbound: {{appAddress: \"{ip_own}\", ports: [{{port: {sp}, protocol: TCP}}]}}}}\n\
             services: []\n"
        ),
    )
    .unwrap();
    let server_admin = 20087;
    let server = spawn_sidecar(&server_cfg, server_admin, &server_files);

    // The client sidecars: plaintext to the inbound listeners, or mTLS
    // through the tunnel listener.
    let client = |mode: &str, http: u16, iperf_l: u16, sock_l: u16, admin: u16| {
        let endpoint = |target: u16, plain: u16| {
            if mode == "plain" {
                format!("{{address: \"{ip_own}:{plain}\"}}")
            } else if mode == "single" {
                format!("{{address: \"{ip_own}:{target}\"}}")
            } else {
                format!(
                    "{{address: \"{ip_own}\", ports: [{{port: 80, targetPort: {target}}}], tunnelPort: {tunnel}, identity: \"{server_id}\"}}"
                )
            }
        };
        let cfg = dir.join(format!("client-{mode}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listeners:\n\
                 \x20 - {{name: out, address: \"{ip_own}:{http}\", http: {{}}}}\n\
                 \x20 - {{name: iperf, address: \"{ip_own}:{iperf_l}\", tcp: {{service: iperf}}}}\n\
                 \x20 - {{name: sock, address: \"{ip_own}:{sock_l}\", tcp: {{service: sock}}}}\n\
                 services:\n\
                 \x20 - {{name: up, ports: [{{port: 80}}], endpoints: [{e_up}]}}\n\
                 \x20 - {{name: iperf, ports: [{{port: 80, protocol: TCP}}], endpoints: [{e_ip}]}}\n\
                 \x20 - {{name: sock, ports: [{{port: 80, protocol: TCP}}], endpoints: [{e_sp}]}}\n",
                e_up = endpoint(up, in_http),
                e_ip = endpoint(ip, in_iperf),
                e_sp = endpoint(sp, in_sock),
            ),
        )
        .unwrap();
        (spawn_sidecar(&cfg, admin, &client_files), admin)
    };
    let (p_http, p_iperf, p_sock) = (20090, 20091, 20092);
    let (m_http, m_iperf, m_sock) = (20093, 20094, 20095);
    let (s_http, s_iperf, s_sock) = (20096, 20097, 20098);
    let (plain_client, _) = client("plain", p_http, p_iperf, p_sock, 20099);
    let (mtls_client, _) = client("mtls", m_http, m_iperf, m_sock, 20100);
    let (single, _) = client("single", s_http, s_iperf, s_sock, 20101);
    wait_ready(addr(p_http)).await;
    wait_ready(addr(m_http)).await;
    wait_ready(addr(s_http)).await;
    let pids = |c: &Proc| (c.0.id(), server.0.id());

    // HTTP at a fixed rate, interleaved rounds.
    println!(
        "== HTTP, {rate} rps open loop, 1 KiB bodies, {rounds} rounds x {secs} s (median of rounds) =="
    );
    // (name, address, the sidecars' pids whose CPU counts)
    type Target<'a> = (&'a str, SocketAddr, Option<(u32, u32)>);
    let targets: [Target; 4] = [
        ("direct", addr(up), None),
        // For reference, one sidecar alone (client side, straight to the
        // app); pid 0 counts nothing.
        (
            "one sidecar (reference)",
            addr(s_http),
            Some((single.0.id(), 0)),
        ),
        (
            "plaintext sidecar pair",
            addr(p_http),
            Some(pids(&plain_client)),
        ),
        ("mTLS sidecar pair", addr(m_http), Some(pids(&mtls_client))),
    ];
    let mut samples: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    let mut errors = vec![0u64; targets.len()];
    for _ in 0..rounds {
        for (i, (_, target, procs)) in targets.iter().enumerate() {
            let before =
                procs.map(|(a, b)| cpu_ticks_tree(a).unwrap_or(0) + cpu_ticks_tree(b).unwrap_or(0));
            let t0 = Instant::now();
            let l = fixed_rate(*target, rate, secs).await;
            let cpu = procs.zip(before).map(|((a, b), before)| {
                let ticks =
                    cpu_ticks_tree(a).unwrap_or(0) + cpu_ticks_tree(b).unwrap_or(0) - before;
                // ticks are 1/100 s: % of a core over the run, per 1000 rps.
                ticks as f64 / t0.elapsed().as_secs_f64() * 1000.0 / rate as f64
            });
            errors[i] += l.errors;
            samples[i].push((l.p50, l.p90, l.p99, cpu.unwrap_or(f64::NAN)));
        }
    }
    println!(
        "| {:<24} | {:>7} | {:>7} | {:>7} | {:>9} | {:>9} | {:>22} | errors |",
        "target (ms)", "p50", "p90", "p99", "added p50", "added p99", "CPU, % core / 1000 rps"
    );
    let mut direct = (0.0, 0.0);
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let s = &samples[i];
        let p50 = median(s.iter().map(|x| x.0).collect());
        let p90 = median(s.iter().map(|x| x.1).collect());
        let p99 = median(s.iter().map(|x| x.2).collect());
        let cpu = median(s.iter().map(|x| x.3).collect());
        if i == 0 {
            direct = (p50, p99);
        }
        let (a50, a99) = if i == 0 {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("+{:.3}", p50 - direct.0),
                format!("+{:.3}", p99 - direct.1),
            )
        };
        let cpu = if cpu.is_nan() {
            "—".into()
        } else {
            format!("{cpu:.1}")
        };
        println!(
            "| {name:<24} | {p50:>7.3} | {p90:>7.3} | {p99:>7.3} | {a50:>9} | {a99:>9} | {cpu:>22} | {} |",
            errors[i]
        );
    }

    // New connections per second.
    println!("\n== new connections, 16 at a time, {secs} s ==");
    let identity = isthmus_mesh::identity::Identity::fixed(ca.issue("shop", "bench"));
    let mesh = Arc::new(isthmus_mesh::tls::MeshTls::new(identity));
    let tls = mesh.client.clone();
    let before = cpu_ticks_tree(server.0.id()).unwrap_or(0);
    let t0 = Instant::now();
    let (mesh_rate, mesh_failed) = rate_of(16, secs, move || {
        mesh_connection(tls.clone(), addr(tunnel), addr(up))
    })
    .await;
    let mesh_cpu = (cpu_ticks_tree(server.0.id()).unwrap_or(0) - before) as f64
        / 100.0
        / t0.elapsed().as_secs_f64();
    let before = cpu_ticks_tree(server.0.id()).unwrap_or(0);
    let t0 = Instant::now();
    let (plain_rate, plain_failed) =
        rate_of(16, secs, move || plain_connection(addr(in_http))).await;
    let plain_cpu = (cpu_ticks_tree(server.0.id()).unwrap_or(0) - before) as f64
        / 100.0
        / t0.elapsed().as_secs_f64();
    println!("| kind | connections/s | server sidecar CPU (cores) | failed |");
    println!(
        "| plaintext: TCP + one HTTP request to the inbound listener | {plain_rate:.0} | {plain_cpu:.2} | {plain_failed} |"
    );
    println!(
        "| mTLS: TCP + TLS 1.3 (mutual) + HTTP/2 + one CONNECT to the tunnel | {mesh_rate:.0} | {mesh_cpu:.2} | {mesh_failed} |"
    );

    // Opaque TCP with real tools.
    if !tools {
        println!("\n(iperf3/sockperf not installed: apt-get install -y iperf3 sockperf)");
        return;
    }
    println!(
        "\n== opaque TCP: iperf3 ({secs} s) and sockperf 1 KiB ping-pong round trip ({secs} s) =="
    );
    println!(
        "| path | iperf3 1 stream (Gbit/s) | iperf3 4 streams (Gbit/s) | sockperf RTT p50 (µs) | p99 (µs) |"
    );
    for (name, ipt, spt) in [
        ("direct", addr(ip), addr(sp)),
        ("one sidecar (reference)", addr(s_iperf), addr(s_sock)),
        ("plaintext sidecar pair", addr(p_iperf), addr(p_sock)),
        ("mTLS sidecar pair", addr(m_iperf), addr(m_sock)),
    ] {
        let one = iperf(&[], ipt, 1, secs);
        let four = iperf(&[], ipt, 4, secs);
        let rtt = sockperf(&[], spt, secs);
        let f = |v: Option<f64>| v.map_or("failed".into(), |v| format!("{v:.2}"));
        println!(
            "| {name} | {} | {} | {} | {} |",
            f(one),
            f(four),
            rtt.map_or("failed".into(), |r| format!("{:.1}", r.0)),
            rtt.map_or("failed".into(), |r| format!("{:.1}", r.1)),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
