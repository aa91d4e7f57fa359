//! East-west tunnels over an emulated WAN (issue 5): 64 concurrent request
//! streams of 16 KiB each way, HTTP/3 over QUIC against the HTTP/2-over-TLS
//! fallback, across the same packet-level emulated link (isthmus-e2e's
//! `wan`: TUN devices between two network namespaces), in one run.
//!
//!     cargo bench -p isthmus-gateway --bench wan        (as root)
//!
//! The receiving gateway runs in namespace B with an echo service behind
//! it; the sending side's link in namespace A. Each of 64 workers loops:
//! open a CONNECT stream to the echo service, send 16 KiB, half-close,
//! read the 16 KiB back. After a warm-up, for BENCH_SECS: request latency
//! (open to last byte back) p50/p99, and goodput (payload bytes back per
//! second) as a share of the emulated link's rate. The baseline in the same
//! run: each request on a TCP connection of its own straight to the echo
//! service across the same link (no tunnel, no TLS, no multiplexing).
//!
//! Knobs: BENCH_SECS (10), BENCH_WARMUP_SECS (3), BENCH_RTT_MS (50),
//! BENCH_LOSS_PCT (1), BENCH_RATES_MBIT (20,50,100: the link's cap, one
//! run each), BENCH_QUEUE_KB (256),
//! BENCH_CC (QUIC's congestion control: bbr or cubic; TCP uses BBR in
//! both namespaces where the kernel allows it, and says which it used).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use isthmus_e2e::wan::{self, Direction, Impairment, Wan};
use isthmus_gateway::eastwest::Source;
use isthmus_gateway::eastwest::client::{H2Link, Link, LinkError, PeerLink, Transport};
use isthmus_gateway::eastwest::quic::{self, Congestion};
use isthmus_gateway::eastwest::server;
use isthmus_gateway::eastwest::transport::{LinkTransport, StreamRecv, StreamSend};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_mesh::tls::MeshTls;
use tokio_util::sync::CancellationToken;

use isthmus_testkit::pki;
use isthmus_tests::eastwest::{gateway_identity, receiving_gateway, runtime, tcp_service};

const EU_GW: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest";
const STREAMS: usize = 64;
const SIZE: usize = 16 * 1024;

fn knob(n: &str, d: f64) -> f64 {
    std::env::var(n)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// Echoes every stream back, then closes it.
/// Listens on every address of namespace B (the gateway reaches it on
/// loopback, the direct baseline on `wan::ADDR_B`); returns its port.
async fn echo_server() -> u16 {
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    addr
}

/// The baseline: each request on a TCP connection of its own, straight to
/// the echo service across the same emulated link (no tunnel, no
/// multiplexing, no TLS): what the link gives 64 independent flows.
struct DirectTcp(SocketAddr);

struct TcpSend(tokio::net::tcp::OwnedWriteHalf);
struct TcpRecv(tokio::net::tcp::OwnedReadHalf, Vec<u8>);

impl StreamSend for TcpSend {
    async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(&mut self.0, &data).await
    }
    async fn finish(&mut self) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::shutdown(&mut self.0).await
    }
    fn reset(&mut self) {}
}

impl StreamRecv for TcpRecv {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, &mut self.1).await?;
        Ok((n > 0).then(|| Bytes::copy_from_slice(&self.1[..n])))
    }
}

impl LinkTransport for DirectTcp {
    type Send = TcpSend;
    type Recv = TcpRecv;

    async fn open(&self, _: &str, _: &Source) -> Result<(TcpSend, TcpRecv), LinkError> {
        let s = tokio::net::TcpStream::connect(self.0)
            .await
            .map_err(|e| LinkError::Connect {
                addr: self.0,
                transport: "TCP",
                reason: e.to_string(),
            })?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Ok((TcpSend(w), TcpRecv(r, vec![0; 64 * 1024])))
    }

    fn kind(&self) -> Transport {
        Transport::H2
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// The receiving gateway in namespace B: QUIC and the TCP fallback on
/// `wan::ADDR_B`, routing `echo.bench:9000` to the echo service.
/// Returns the gateway's address and the echo service's port.
async fn gateway_b(
    tls: Arc<MeshTls>,
    cc: Congestion,
    stop: CancellationToken,
) -> (SocketAddr, u16) {
    let echo = SocketAddr::from(([127, 0, 0, 1], echo_server().await));
    let addr = SocketAddr::new(wan::ADDR_B.into(), 15443);
    let peers = server::Peers {
        allowed: vec!["spiffe://us-east.isthmus.local/*".into()],
        exports: vec![],
    };
    let services = vec![tcp_service("echo.bench", 9000, echo)];
    receiving_gateway(tls, services, addr, peers, Sink::Off, cc, &stop).await;
    (addr, echo.port())
}

struct Outcome {
    latencies: Vec<Duration>,
    /// Payload bytes received back inside the measured window.
    bytes: u64,
    secs: f64,
    errors: u64,
}

/// 64 workers of request streams on `link` for `warmup + secs`.
async fn load<T: LinkTransport + 'static>(
    link: Arc<T>,
    warmup: Duration,
    secs: Duration,
) -> Outcome {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + secs);
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0x5a; SIZE]);
    let mut workers = Vec::new();
    for _ in 0..STREAMS {
        let (link, bytes, errors, payload) =
            (link.clone(), bytes.clone(), errors.clone(), payload.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let one = async {
                    let (mut w, mut r) = link
                        .open("echo.bench:9000", &Source::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    w.send(payload.clone()).await.map_err(|e| e.to_string())?;
                    w.finish().await.map_err(|e| e.to_string())?;
                    let mut got = 0;
                    while let Some(b) = r.recv().await.map_err(|e| e.to_string())? {
                        got += b.len();
                        let now = Instant::now();
                        if now >= from && now < until {
                            bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        }
                    }
                    if got == SIZE {
                        Ok(())
                    } else {
                        Err(format!("{got} bytes back"))
                    }
                };
                match one.await {
                    Ok(()) if t >= from => lat.push(t.elapsed()),
                    Ok(()) => {}
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("request failed: {e}");
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    latencies.sort();
    Outcome {
        latencies,
        bytes: bytes.load(Ordering::Relaxed),
        secs: secs.as_secs_f64(),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !isthmus_e2e::is_root() {
        println!("skipped: the WAN benchmark needs root (network namespaces, TUN)");
        return;
    }
    let secs = Duration::from_secs_f64(knob("BENCH_SECS", 10.0));
    let warmup = Duration::from_secs_f64(knob("BENCH_WARMUP_SECS", 3.0));
    let rtt = Duration::from_secs_f64(knob("BENCH_RTT_MS", 50.0) / 1000.0);
    let loss = knob("BENCH_LOSS_PCT", 1.0) / 100.0;
    let rates: Vec<u64> = std::env::var("BENCH_RATES_MBIT")
        .unwrap_or_else(|_| "20,50,100".into())
        .split(',')
        .map(|r| {
            r.trim()
                .parse::<u64>()
                .expect("BENCH_RATES_MBIT: Mbit/s, comma-separated")
                * 1_000_000
        })
        .collect();
    let queue = (knob("BENCH_QUEUE_KB", 256.0) * 1024.0) as u64;
    let cc: Congestion = std::env::var("BENCH_CC")
        .unwrap_or_else(|_| "bbr".into())
        .parse()
        .unwrap();
    let imp = Impairment::wan(rtt, loss).capped(rates[0], queue);
    let w = Wan::new(&format!("ist-bench{}", std::process::id()), imp).unwrap();
    // TCP gets BBR too (the best Linux offers on a lossy path, and the
    // default here); its namespaces may refuse what the host did not allow.
    for ns in [w.a(), w.b()] {
        let _ = ns
            .command("sysctl")
            .args(["-qw", "net.ipv4.tcp_congestion_control=bbr"])
            .output();
    }
    let tcp_cc = w
        .a()
        .command("cat")
        .arg("/proc/sys/net/ipv4/tcp_congestion_control")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let (eu, us) = (
        pki::Ca::new("eu-west.isthmus.local"),
        pki::Ca::new("us-east.isthmus.local"),
    );
    let (eu_tls, us_tls) = (gateway_identity(&eu, &[&us]), gateway_identity(&us, &[&eu]));
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stop.clone();
    let b = w
        .b()
        .spawn("gateway-b", move || {
            runtime().block_on(async move {
                tx.send(gateway_b(eu_tls, cc, st.clone()).await).unwrap();
                st.cancelled().await;
            });
        })
        .unwrap();
    let (gw, echo_port) = rx.recv().unwrap();
    let direct = SocketAddr::new(wan::ADDR_B.into(), echo_port);
    println!(
        "== east-west over an emulated WAN: {} ms RTT, {:.1} % loss each way, capped at {} Mbit/s \
         each way (queue {} KiB); congestion control: QUIC {}, TCP {} ==",
        rtt.as_millis(),
        loss * 100.0,
        rates
            .iter()
            .map(|r| (r / 1_000_000).to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        queue / 1024,
        cc.as_str(),
        tcp_cc
    );
    println!(
        "{STREAMS} concurrent request streams of {} KiB each way; {:?} measured after {:?} warm-up",
        SIZE / 1024,
        secs,
        warmup
    );
    println!(
        "| link | transport | requests | p50 (ms) | p99 (ms) | goodput (Mbit/s) | of the link | errors | link: lost / queue drops |"
    );
    for &rate in &rates {
        w.set(Impairment::wan(rtt, loss).capped(rate, queue));
        let mut results = Vec::new();
        for transport in [
            "QUIC (HTTP/3 CONNECT)",
            "TCP fallback (HTTP/2 CONNECT over TLS)",
            "baseline: direct TCP, a connection per request, no tunnel",
        ] {
            let before = (w.counts(Direction::AtoB), w.counts(Direction::BtoA));
            let tls = us_tls.clone();
            let kind = transport.split_whitespace().next().unwrap_or_default();
            let out = w
                .a()
                .spawn("gateway-a", move || {
                    runtime().block_on(async move {
                        match kind {
                            "QUIC" => {
                                let a = SocketAddr::new(wan::ADDR_A.into(), 0);
                                let ep = quic::endpoint_with(&tls, a, cc).unwrap();
                                let l = PeerLink::connect(&ep, gw, EU_GW).await.unwrap();
                                load(Arc::new(Link::Quic(l)), warmup, secs).await
                            }
                            "TCP" => {
                                let l = H2Link::connect(&tls, gw, EU_GW).await.unwrap();
                                load(Arc::new(Link::H2(l)), warmup, secs).await
                            }
                            _ => load(Arc::new(DirectTcp(direct)), warmup, secs).await,
                        }
                    })
                })
                .unwrap()
                .join()
                .unwrap();
            let after = (w.counts(Direction::AtoB), w.counts(Direction::BtoA));
            let mbit = out.bytes as f64 * 8.0 / out.secs / 1e6;
            let (p50, p99) = (pct(&out.latencies, 0.5), pct(&out.latencies, 0.99));
            println!(
                "| {} Mbit/s | {transport} | {} | {:.0} | {:.0} | {mbit:.2} | {:.0} % | {} | {} / {} |",
                rate / 1_000_000,
                out.latencies.len(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                mbit * 1e6 / rate as f64 * 100.0,
                out.errors,
                (after.0.lost + after.1.lost) - (before.0.lost + before.1.lost),
                (after.0.queue_full + after.1.queue_full)
                    - (before.0.queue_full + before.1.queue_full),
            );
            results.push((p99, mbit));
        }
        let (q, t) = (results[0], results[1]);
        println!(
            "at {} Mbit/s: QUIC p99 / TCP fallback p99: {:.2}x (target <= 0.5x); QUIC goodput {:.0} % of the link (target >= 85 %)",
            rate / 1_000_000,
            q.0.as_secs_f64() / t.0.as_secs_f64().max(1e-9),
            q.1 * 1e6 / rate as f64 * 100.0
        );
    }
    stop.cancel();
    let _ = b.join();
}
