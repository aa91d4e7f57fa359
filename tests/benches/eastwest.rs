//! East-west tunnel benchmark (issue 5, loopback part): bulk throughput
//! through the gateways' CONNECT streams, HTTP/3 over QUIC against the
//! HTTP/2-over-TLS fallback, against a direct TCP connection, in one run;
//! and the gateway's memory per open stream.
//!
//!     cargo bench -p isthmus-gateway --bench eastwest
//!
//! In one process (a 2-worker runtime): the receiving gateway (QUIC and TCP
//! listeners), a link from a sending side, and a discard service behind
//! the receiving gateway that answers the byte count at the end of each
//! stream. Each figure: BENCH_MB MiB (default 256) through 1 stream, and
//! through 16 streams at once (BENCH_MB/16 each); median of BENCH_ROUNDS
//! (default 3). BENCH_CC: QUIC's congestion control (bbr, the default, or
//! cubic). BENCH_CHUNK_KB: the size of each write (64 KiB). BENCH_ONLY=quic
//! (or fallback, direct) runs one path, for a profile (no ratio then).
//! The WAN figures are `benches/wan.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use isthmus_gateway::eastwest::client::{Link, LinkRecv, LinkSend};
use isthmus_gateway::eastwest::{quic, server};
use isthmus_gateway::telemetry::accesslog::Sink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki;
use isthmus_tests::eastwest::{gateway_identity, receiving_gateway, tcp_service};

const EU_GW: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";

/// Reads to the end, then answers the number of bytes read (8 bytes).
async fn discard_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// The size of each write into a stream: BENCH_CHUNK_KB, 64 KiB unless
/// told (the gateway's splice reads up to 256 KiB at a time under load).
fn chunk_size() -> usize {
    std::env::var("BENCH_CHUNK_KB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(64)
        * 1024
}

async fn through_link(link: &Link, bytes: u64) {
    let (mut w, mut r): (LinkSend, LinkRecv) = link.open("sink.bench:9000").await.unwrap();
    let chunk = Bytes::from(vec![0x5a; chunk_size()]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.send(chunk.slice(..n)).await.unwrap();
        left -= n as u64;
    }
    w.finish().await.unwrap();
    let mut got = Vec::new();
    while let Some(b) = r.recv().await.unwrap() {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, bytes.to_be_bytes(), "the sink saw every byte");
}

async fn direct(addr: SocketAddr, bytes: u64) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let chunk = vec![0x5a; chunk_size()];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, bytes.to_be_bytes());
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let knob = |n: &str, d: u64| {
        std::env::var(n)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let mb = knob("BENCH_MB", 256);
    let rounds = knob("BENCH_ROUNDS", 3) as usize;
    let bytes = mb * 1024 * 1024;
    let (eu, us) = (
        pki::Ca::new("eu-west.isthmus.local"),
        pki::Ca::new("us-east.isthmus.local"),
    );
    let sink = discard_server().await;
    let eu_tls = gateway_identity(&eu, &[&us]);
    let peers = server::Peers {
        allowed: vec!["spiffe://us-east.isthmus.local/*".into()],
        exports: vec![],
    };
    let stop = CancellationToken::new();
    let cc: quic::Congestion = std::env::var("BENCH_CC")
        .unwrap_or_else(|_| "bbr".into())
        .parse()
        .unwrap();
    let services = vec![tcp_service("sink.bench", 9000, sink)];
    let local = "127.0.0.1:0".parse().unwrap();
    let r = receiving_gateway(eu_tls, services, local, peers, Sink::Off, cc, &stop).await;
    let (udp, tcp) = (r.udp, r.tcp);
    let us_tls = gateway_identity(&us, &[&eu]);
    let us_ep = quic::endpoint_with(&us_tls, "127.0.0.1:0".parse().unwrap(), cc).unwrap();
    let quic_link = Arc::new(
        Link::race(&us_ep, &us_tls, udp, tcp, EU_GW, Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let h2_link = Arc::new(
        Link::race(
            &us_ep,
            &us_tls,
            hole.local_addr().unwrap(),
            tcp,
            EU_GW,
            Duration::from_millis(100),
        )
        .await
        .unwrap(),
    );
    println!(
        "== bulk throughput on loopback, {mb} MiB per run, median of {rounds}; QUIC congestion control {} ==",
        cc.as_str()
    );
    println!("| path | 1 stream (Gbit/s) | 16 streams (Gbit/s) |");
    let gbps = |secs: f64| bytes as f64 * 8.0 / secs / 1e9;
    let mut results = Vec::new();
    for name in [
        "direct TCP",
        "QUIC (HTTP/3 CONNECT)",
        "TCP fallback (HTTP/2 CONNECT over TLS)",
    ] {
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let key = match name {
            "direct TCP" => "direct",
            n if n.starts_with("QUIC") => "quic",
            _ => "fallback",
        };
        if !only.is_empty() && only != key {
            results.push((name, f64::NAN, f64::NAN));
            continue;
        }
        let (mut one, mut many) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            match name {
                "direct TCP" => direct(sink, bytes).await,
                n if n.starts_with("QUIC") => through_link(&quic_link, bytes).await,
                _ => through_link(&h2_link, bytes).await,
            }
            one.push(gbps(t.elapsed().as_secs_f64()));
            let t = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let (q, h) = (quic_link.clone(), h2_link.clone());
                let per = bytes / 16;
                let name = name.to_string();
                tasks.push(tokio::spawn(async move {
                    match name.as_str() {
                        "direct TCP" => direct(sink, per).await,
                        n if n.starts_with("QUIC") => through_link(&q, per).await,
                        _ => through_link(&h, per).await,
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            many.push(gbps(t.elapsed().as_secs_f64()));
        }
        let (one, many) = (median(one), median(many));
        println!("| {name} | {one:.2} | {many:.2} |");
        results.push((name, one, many));
    }
    let q = results[1].1 / results[2].1;
    let q16 = results[1].2 / results[2].2;
    println!(
        "QUIC / TCP fallback: {q:.2}x (1 stream, target >= 0.6x), {q16:.2}x (16 streams, target >= 0.8x)"
    );
    if let Link::Quic(l) = &*quic_link {
        let st = l.stats();
        println!(
            "QUIC path: MTU {} bytes, {} datagrams sent in {} system calls, {} lost",
            st.path.current_mtu, st.udp_tx.datagrams, st.udp_tx.ios, st.path.lost_packets
        );
    }

    // Memory per open stream: 1000 idle CONNECT streams on the QUIC link.
    let before = rss_kib();
    let mut open = Vec::new();
    for _ in 0..1000 {
        open.push(quic_link.open("sink.bench:9000").await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib();
    println!(
        "\n== memory: 1000 open CONNECT streams (both gateways in this process) ==\n\
         RSS {} KiB -> {} KiB: {:.1} KiB per stream (sending + receiving side, discard connections included)",
        before,
        after,
        (after.saturating_sub(before)) as f64 / 1000.0
    );
    drop(open);
    stop.cancel();
}
