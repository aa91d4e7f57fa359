//! Proxy benchmark: the sidecar against a direct connection and against
//! Debian's haproxy and nginx configured as the same plain reverse proxy,
//! in one run on this machine.
//!
//!     apt-get install -y haproxy nginx      # optional baselines
//!     cargo bench -p isthmus-gateway --bench proxy
//!
//! Setup: the upstream (the sample app, `POST /echo`, 1 KiB request and
//! response bodies) and this load generator share core 0; each proxy runs as
//! its own process pinned to core 1 with one worker thread. The load is
//! open-loop at a fixed rate: request i is due at start + i/rate and its
//! latency counts from that due time (coordinated omission included), over
//! keep-alive connections. Reports:
//! - latency p50/p90/p99/max at 1000 rps and the latency each proxy adds
//!   over the direct connection,
//! - maximum throughput with the proxy on one core (closed loop, 32
//!   concurrent connections; the generator and upstream share the other core,
//!   so this is the rate the setup sustains, the same for every proxy),
//! - the sidecar's RSS idle and after the load.
//!
//! Environment: BENCH_SECONDS (default 5) per latency run, BENCH_ROUNDS
//! (default 5) interleaved rounds, BENCH_RATE (default 1000); BENCH_PERF and
//! BENCH_ATTACH profile the sidecar during its maximum-throughput run.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    // The generator runs on core 0 with the upstream; proxies get core 1.
    if !pin_self_to_core_0() {
        return; // `cargo test --benches` probes with --list
    }
    let secs = knob("BENCH_SECONDS", 5);
    let rounds = knob("BENCH_ROUNDS", 5) as usize;
    let rate = knob("BENCH_RATE", 1000);
    let dir = std::env::temp_dir().join(format!("isthmus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Each server's port at this benchmark's own address.
    let upstream = own(20080);
    let _up = Proc(
        pinned(
            0,
            &sample_bin(),
            &["--listen", &upstream.to_string(), "--service", "up"],
        )
        .spawn()
        .unwrap(),
    );
    wait_ready(upstream).await;

    // The sidecar, one worker thread on core 1, access log off (as the
    // baselines log nothing either).
    // BENCH_SIDECAR_THREADS: the sidecar's worker threads (1 = a
    // single-threaded runtime, the default for a one-core sidecar).
    let sidecar_threads = std::env::var("BENCH_SIDECAR_THREADS").unwrap_or_else(|_| "1".into());
    let sidecar_addr = own(20081);
    let admin = own(20082);
    let cfg = dir.join("sidecar.yaml");
    write(
        &cfg,
        &format!(
            "listeners:\n  - {{name: out, address: \"{sidecar_addr}\", http: {{}}}}\n\
             services:\n  - name: up\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"{upstream}\"}}]\n"
        ),
    );
    let sidecar = pinned(
        1,
        BIN,
        &[
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            &admin.to_string(),
            "--access-log",
            "off",
            "--worker-threads",
            &sidecar_threads,
        ],
    )
    .spawn()
    .unwrap();
    let sidecar_pid = sidecar.id();
    let _sidecar = Proc(sidecar);
    // `taskset` execs the program, so the pid is the proxy's own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(sidecar_pid);
    wait_ready(sidecar_addr).await;

    let mut targets: Vec<(&str, SocketAddr, Option<Proc>)> = vec![
        ("direct", upstream, None),
        ("isthmus sidecar", sidecar_addr, None),
    ];
    if have("haproxy") {
        let addr = own(20083);
        let conf = dir.join("haproxy.cfg");
        write(
            &conf,
            &format!(
                "global\n  nbthread 1\n  maxconn 4000\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n\
                 frontend f\n  bind {addr}\n  default_backend b\n\
                 backend b\n  server s1 {upstream}\n"
            ),
        );
        let p = Proc(
            pinned(1, "haproxy", &["-f", conf.to_str().unwrap()])
                .spawn()
                .unwrap(),
        );
        wait_ready(addr).await;
        targets.push(("haproxy", addr, Some(p)));
    } else {
        eprintln!("haproxy not installed: apt-get install -y haproxy for the baseline");
    }
    if have("nginx") {
        let addr = own(20084);
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        write(
            &conf,
            &format!(
                "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
                 \x20 upstream up {{ server {upstream}; keepalive 128; }}\n\
                 \x20 server {{ listen {addr}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off; }} }}\n}}\n"
            ),
        );
        let p = Proc(
            pinned(1, "nginx", &["-c", conf.to_str().unwrap()])
                .spawn()
                .unwrap(),
        );
        wait_ready(addr).await;
        targets.push(("nginx", addr, Some(p)));
    } else {
        eprintln!("nginx not installed: apt-get install -y nginx for the baseline");
    }

    println!(
        "\n== latency at {rate} rps, 1 KiB request and response bodies: {rounds} interleaved rounds of {secs} s per target, median of rounds (ms, from due time) =="
    );
    let mut results: Vec<Vec<Latency>> = targets.iter().map(|_| Vec::new()).collect();
    let pids: Vec<Option<u32>> = targets
        .iter()
        .map(|(name, _, p)| match p {
            Some(p) => Some(p.0.id()),
            None if *name == "isthmus sidecar" => Some(sidecar_pid),
            None => None,
        })
        .collect();
    let mut cpu: Vec<Vec<f64>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (k, (_, addr, _)) in targets.iter().enumerate() {
            let cpu0 = pids[k].and_then(cpu_ticks_tree);
            results[k].push(fixed_rate(*addr, rate, secs).await);
            if let (Some(c0), Some(c1)) = (cpu0, pids[k].and_then(cpu_ticks_tree)) {
                cpu[k].push((c1 - c0) as f64 / 100.0 / secs as f64);
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>7} {:>8}",
        "target", "p50", "p90", "p99", "max", "+p50", "+p99", "cpu%", "errors"
    );
    let mut direct = None;
    for (((name, _, _), rs), cpu) in targets.iter().zip(&results).zip(cpu) {
        let cpu = if cpu.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(cpu) * 100.0)
        };
        let p50 = median(rs.iter().map(|l| l.p50).collect());
        let p90 = median(rs.iter().map(|l| l.p90).collect());
        let p99 = median(rs.iter().map(|l| l.p99).collect());
        let max = median(rs.iter().map(|l| l.max).collect());
        let errors: u64 = rs.iter().map(|l| l.errors).sum();
        let sent: u64 = rs.iter().map(|l| l.sent).sum();
        let (d50, d99) = *direct.get_or_insert((p50, p99));
        println!(
            "{:<16} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>+10.3} {:>+10.3} {:>7} {:>5}/{}",
            name,
            p50,
            p90,
            p99,
            max,
            p50 - d50,
            p99 - d99,
            cpu,
            errors,
            sent
        );
    }
    println!(
        "(cpu%: the proxy's CPU during its rounds, % of one core; at {rate} rps, 1% = 10 ms of CPU per 1000 requests)"
    );
    let loaded_rss = rss_kib(sidecar_pid);

    println!(
        "\n== maximum throughput, proxy pinned to one core, 32 connections, 10 s (requests/s) =="
    );
    println!(
        "{:<16} {:>10} {:>7} {:>7} {:>12}",
        "target", "req/s", "user%", "sys%", "CPU µs/req"
    );
    for (k, (name, addr, _)) in targets.iter().enumerate() {
        // BENCH_PERF=FILE records a CPU profile of the sidecar during its run.
        let perf = match std::env::var("BENCH_PERF") {
            Ok(file) if *name == "isthmus sidecar" => Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "1999",
                    "-g",
                    "-o",
                    &file,
                    "-p",
                    &sidecar_pid.to_string(),
                    "--",
                    "sleep",
                    "8",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok(),
            _ => None,
        };
        // BENCH_ATTACH="CMD {pid}" runs a shell command against the sidecar
        // during its run (e.g. `timeout -s INT 8 strace -c -f -o F -p {pid}`).
        let attach = match std::env::var("BENCH_ATTACH") {
            Ok(cmd) if *name == "isthmus sidecar" => Command::new("sh")
                .arg("-c")
                .arg(cmd.replace("{pid}", &sidecar_pid.to_string()))
                .spawn()
                .ok(),
            _ => None,
        };
        let cpu0 = pids[k].and_then(cpu_split_tree);
        let rps = max_rps(*addr, 32, 10).await;
        let cpu1 = pids[k].and_then(cpu_split_tree);
        if let Some(mut p) = attach {
            let _ = p.wait();
        }
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        match (cpu0, cpu1) {
            (Some((u0, s0)), Some((u1, s1))) => {
                // Ticks are 1/100 s; the run lasts 10 s.
                let (user, sys) = ((u1 - u0) as f64 / 10.0, (s1 - s0) as f64 / 10.0);
                let per_req = (user + sys) / 100.0 / rps * 1e6;
                println!("{name:<16} {rps:>10.0} {user:>7.1} {sys:>7.1} {per_req:>12.1}");
            }
            _ => println!("{name:<16} {rps:>10.0} {:>7} {:>7} {:>12}", "-", "-", "-"),
        }
    }
    let after_max_rss = rss_kib(sidecar_pid);
    println!("\n== sidecar memory (RSS) ==");
    let mb = |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MB", k as f64 / 1024.0));
    println!("idle (config loaded, no traffic): {}", mb(idle_rss));
    println!("after {rate} rps run:             {}", mb(loaded_rss));
    println!("after max-throughput run:      {}", mb(after_max_rss));
    let _ = std::fs::remove_dir_all(&dir);
}
