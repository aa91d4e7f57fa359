//! Memory per held connection (issue 24 §2): applications keep pools of
//! idle keep-alive connections to their sidecar. N clients each open a
//! connection to the proxy's explicit listener, make one request through
//! it to the upstream, and keep the connection open; the proxy's RSS is
//! read from /proc before and with all N held. The sidecar beside
//! Debian's haproxy in the same run, same upstream, same client.
//!
//!     apt-get install -y haproxy            # the baseline
//!     cargo bench -p isthmus-gateway --bench connections
//!
//! Setup: the upstream (the sample app) and this client on core 0, each
//! proxy its own process on core 1 with one worker thread. Environment:
//! BENCH_CONNECTIONS (default 8000): N. A proxy holds two descriptors per
//! held connection (the client's and its upstream's), so N is bounded by
//! half the open-files limit (`ulimit -n`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// Opens `n` connections to `target`, each makes one GET and stays open:
/// the held connections and how many got no answer within 20 s.
async fn hold(target: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(async move {
            // A few hundred at a time, as pools fill.
            tokio::time::sleep(Duration::from_millis((i / 200) as u64 * 5)).await;
            let mut s = TcpStream::connect(target).await.ok()?;
            s.write_all(b"GET /items HTTP/1.1\r\nHost: up\r\n\r\n")
                .await
                .ok()?;
            // The head and a content-length body; keep-alive, so read
            // exactly that.
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let r = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await;
                let n = match r {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                    Ok(Ok(n)) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        return head.starts_with("HTTP/1.1 200").then_some(s);
                    }
                }
            }
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r.ok().flatten() {
            Some(s) => held.push(s),
            None => failed += 1,
        }
    }
    (held, failed)
}

/// RSS once it stops moving (allocator settling, and the sidecar's heap
/// trim, every 2 s), in KiB.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut last = rss_kib(pid).unwrap_or(0);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid).unwrap_or(0);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    if !pin_self_to_core_0() {
        return; // `cargo test --benches` probes with --list
    }
    let n = knob("BENCH_CONNECTIONS", 8000) as usize;
    let dir = std::env::temp_dir().join(format!("isthmus-bench-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = own(20180);
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

    let mut proxies: Vec<(&str, SocketAddr, Proc)> = Vec::new();
    let sidecar_addr = own(20181);
    let cfg = dir.join("sidecar.yaml");
    write(
        &cfg,
        &format!(
            "listeners:\n  - {{name: out, address: \"{sidecar_addr}\", http: {{}}}}\n\
             services:\n  - name: up\n    ports: [{{port: 80}}]\n    endpoints: [{{address: \"{upstream}\"}}]\n"
        ),
    );
    let admin = own(20182).to_string();
    let sidecar = pinned(
        1,
        BIN,
        &[
            "sidecar",
            "--config",
            cfg.to_str().unwrap(),
            "--admin",
            &admin,
            "--access-log",
            "off",
            "--worker-threads",
            "1",
        ],
    )
    .spawn()
    .unwrap();
    proxies.push(("isthmus sidecar", sidecar_addr, Proc(sidecar)));
    if have("haproxy") {
        let addr = own(20183);
        let conf = dir.join("haproxy.cfg");
        write(
            &conf,
            &format!(
                "global\n  nbthread 1\n  maxconn {}\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  option http-keep-alive\n  http-reuse always\n\
                 frontend f\n  bind {addr}\n  default_backend b\n\
                 backend b\n  server s1 {upstream}\n",
                n + 100
            ),
        );
        let p = pinned(1, "haproxy", &["-f", conf.to_str().unwrap()])
            .spawn()
            .unwrap();
        proxies.push(("haproxy", addr, Proc(p)));
    } else {
        eprintln!("haproxy not installed: apt-get install -y haproxy for the baseline");
    }

    println!(
        "\n== memory per held keep-alive connection: {n} connections, one request each, held open =="
    );
    println!(
        "{:<16} {:>12} {:>12} {:>16} {:>11} {:>9}",
        "proxy", "RSS before", "RSS held", "per connection", "unanswered", "took"
    );
    for (name, addr, p) in &proxies {
        wait_ready(*addr).await;
        // One warm-up request (pools, lazily made state), then idle.
        let (warm, _) = hold(*addr, 1).await;
        drop(warm);
        let pid = p.0.id();
        let before = settled_rss(pid).await;
        let started = Instant::now();
        let (held, failed) = hold(*addr, n).await;
        let took = started.elapsed();
        let after = settled_rss(pid).await;
        let per = (after.saturating_sub(before) as f64 * 1024.0) / held.len().max(1) as f64;
        println!(
            "{:<16} {:>9.1} MB {:>9.1} MB {:>13.2} KB {:>11} {:>7.1} s",
            name,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per / 1000.0,
            failed,
            took.as_secs_f64()
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
