//! A packet-level WAN emulator between network namespaces.
//!
//! `Sites` joins N namespaces: site `i` has a TUN device `wan0` with
//! address 10.77.0.`i+1`/24. A userspace loop reads each IP packet a site
//! sends and writes it into the site it is addressed to, after that
//! (from, to) link has treated it; `Wan` is the two-site case (A is
//! 10.77.0.1, B 10.77.0.2). Each link does:
//!
//! 1. UDP black-hole: UDP packets dropped (a firewall blocking QUIC);
//! 2. random loss with probability `loss`;
//! 3. a bandwidth cap: the packet waits for the link to be free, then for
//!    its own serialization time; a drop-tail queue bounds the backlog;
//! 4. one-way delay plus uniform jitter, never reordering.
//!
//! Each link (each direction) has its own `Impairment` and counters; both
//! can be changed while traffic flows. The decision is the pure `Shaper`,
//! unit-tested; the loop around it only moves packets.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::netns::{Netns, NetnsError};
use crate::tun::{self, Tun};

/// Namespace A's address on the emulated link (`site_addr(0)`).
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Namespace B's address on the emulated link (`site_addr(1)`).
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The TUN device's name in both namespaces.
pub const DEVICE: &str = "wan0";

/// What the link does to packets in one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// One-way delay (an RTT of 2× this when both directions have it).
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ±`jitter`; packets
    /// never overtake each other.
    pub jitter: Duration,
    /// Probability that a packet is dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Bandwidth cap in bits per second; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// The drop-tail queue in front of a capped link, in bytes.
    pub queue_bytes: u64,
    /// Drop every UDP packet.
    pub blackhole_udp: bool,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            queue_bytes: 1 << 20,
            blackhole_udp: false,
        }
    }
}

impl Impairment {
    /// Half of `rtt` each way, `loss` each way, no cap.
    pub fn wan(rtt: Duration, loss: f64) -> Self {
        Self {
            delay: rtt / 2,
            loss,
            ..Self::default()
        }
    }

    /// With a bandwidth cap and a queue of `queue_bytes`.
    pub fn capped(self, rate_bps: u64, queue_bytes: u64) -> Self {
        Self {
            rate_bps: Some(rate_bps),
            queue_bytes,
            ..self
        }
    }
}

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Written to the other side at this instant.
    Deliver(Instant),
    Lost,
    QueueFull,
    BlackHoled,
}

/// The emulated link in one direction, as a pure decision per packet.
pub struct Shaper {
    /// When the capped link has sent everything admitted so far.
    link_free: Instant,
    /// The last delivery time handed out (order is kept).
    last: Instant,
    rng: SmallRng,
}

/// The IP protocol number of an IPv4 or IPv6 packet (UDP is 17).
pub fn ip_protocol(packet: &[u8]) -> Option<u8> {
    match packet.first()? >> 4 {
        4 => packet.get(9).copied(),
        6 => packet.get(6).copied(),
        _ => None,
    }
}

const UDP: u8 = 17;

impl Shaper {
    pub fn new(seed: u64, now: Instant) -> Self {
        Self {
            link_free: now,
            last: now,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Decides the fate of a packet of `len` bytes (protocol `proto`)
    /// arriving `now`.
    pub fn admit(
        &mut self,
        imp: &Impairment,
        len: usize,
        proto: Option<u8>,
        now: Instant,
    ) -> Verdict {
        if imp.blackhole_udp && proto == Some(UDP) {
            return Verdict::BlackHoled;
        }
        if imp.loss > 0.0 && self.rng.random::<f64>() < imp.loss {
            return Verdict::Lost;
        }
        let sent = match imp.rate_bps {
            Some(rate) if rate > 0 => {
                let start = self.link_free.max(now);
                let backlog = bytes_in(start - now, rate);
                if backlog + len as u64 > imp.queue_bytes {
                    return Verdict::QueueFull;
                }
                self.link_free =
                    start + Duration::from_nanos(len as u64 * 8 * 1_000_000_000 / rate);
                self.link_free
            }
            _ => now,
        };
        let mut at = sent + imp.delay;
        if !imp.jitter.is_zero() {
            let j = imp.jitter.as_nanos() as i64;
            let d = self.rng.random_range(-j..=j);
            at = if d >= 0 {
                at + Duration::from_nanos(d as u64)
            } else {
                at.checked_sub(Duration::from_nanos(d.unsigned_abs()))
                    .unwrap_or(at)
                    .max(sent)
            };
        }
        let at = at.max(self.last);
        self.last = at;
        Verdict::Deliver(at)
    }
}

/// Bytes a link of `rate` bits/s sends in `d`.
fn bytes_in(d: Duration, rate: u64) -> u64 {
    (d.as_nanos() * u128::from(rate) / 8 / 1_000_000_000) as u64
}

/// Counters of one direction.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    queue_full: AtomicU64,
    black_holed: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub delivered: u64,
    /// IP bytes delivered (headers included).
    pub bytes: u64,
    pub lost: u64,
    pub queue_full: u64,
    pub black_holed: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets ({} bytes) delivered, {} lost, {} queue drops, {} UDP black-holed",
            self.delivered, self.bytes, self.lost, self.queue_full, self.black_holed
        )
    }
}

/// A → B or B → A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AtoB = 0,
    BtoA = 1,
}

impl Direction {
    /// (from, to) site indexes.
    fn sites(self) -> (usize, usize) {
        match self {
            Direction::AtoB => (0, 1),
            Direction::BtoA => (1, 0),
        }
    }
}

/// The impairment and counters of every (from, to) pair, row-major.
struct Shared {
    n: usize,
    impairment: Vec<RwLock<Impairment>>,
    counters: Vec<Counters>,
}

impl Shared {
    fn pair(&self, from: usize, to: usize) -> usize {
        assert!(from < self.n && to < self.n, "no such site");
        from * self.n + to
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open the TUN device in {ns}: {source} (needs root and /dev/net/tun)")]
    Tun { ns: String, source: std::io::Error },
    #[error("cannot start the emulator thread: {0}")]
    Thread(std::io::Error),
    #[error("a WAN joins 2 to {MAX_SITES} sites, not {0}")]
    Sites(usize),
}

/// The most sites one WAN joins (addresses 10.77.0.1 up).
pub const MAX_SITES: usize = 200;

/// Site `i`'s address on the WAN: 10.77.0.`i + 1` (A is 0, B is 1).
pub fn site_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, (i + 1) as u8)
}

/// The site a packet is addressed to (None: not a WAN address).
fn destination(packet: &[u8], n: usize) -> Option<usize> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    let dst = packet.get(16..20)?;
    if dst[..3] != [10, 77, 0] || dst[3] == 0 {
        return None;
    }
    let i = usize::from(dst[3]) - 1;
    (i < n).then_some(i)
}

/// Namespaces ("sites") joined by one emulated WAN, torn down on drop.
/// Site `i` has the TUN device `wan0` with `site_addr(i)`/24; a packet
/// one site sends to another's address crosses the (from, to) link,
/// impaired its own way.
pub struct Sites {
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    namespaces: Vec<Netns>,
}

impl Sites {
    /// Creates a namespace per name (as given) and the WAN between
    /// them, every link impaired as `impairment(from, to)` says.
    pub fn new(
        names: &[String],
        impairment: impl Fn(usize, usize) -> Impairment,
    ) -> Result<Self, WanError> {
        let n = names.len();
        if !(2..=MAX_SITES).contains(&n) {
            return Err(WanError::Sites(n));
        }
        let mut namespaces = Vec::new();
        let mut devices = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::create(name)?;
            let tun_err = |source| WanError::Tun {
                ns: ns.name().into(),
                source,
            };
            let f = ns
                .spawn("tun-open", || tun::open(DEVICE))?
                .join()
                .map_err(|_| tun_err(std::io::Error::other("the opening thread panicked")))?
                .map_err(tun_err)?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", site_addr(i)),
                "dev",
                DEVICE,
            ])?;
            ns.ip(&["link", "set", DEVICE, "txqueuelen", "10000", "up"])?;
            namespaces.push(ns);
            devices.push(f);
        }
        let shared = Arc::new(Shared {
            n,
            impairment: (0..n * n)
                .map(|p| RwLock::new(impairment(p / n, p % n)))
                .collect(),
            counters: (0..n * n).map(|_| Counters::default()).collect(),
        });
        let stop = Arc::new(tokio::sync::Notify::new());
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("wan-emulator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(async move {
                    let Ok(tuns) = devices
                        .into_iter()
                        .map(|f| Tun::new(f).map(Arc::new))
                        .collect::<std::io::Result<Vec<_>>>()
                    else {
                        return;
                    };
                    let mut tasks = tokio::task::JoinSet::new();
                    for from in 0..n {
                        let mut links = Vec::new();
                        for (to, tun) in tuns.iter().enumerate() {
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            if to != from {
                                tasks.spawn(deliver(rx, tun.clone(), s.clone(), from, to));
                            }
                            links.push(tx);
                        }
                        tasks.spawn(route(tuns[from].clone(), links, s.clone(), from));
                    }
                    tokio::select! {
                        _ = st.notified() => {}
                        // A device failed: the WAN is gone.
                        _ = tasks.join_next() => {}
                    }
                });
            })
            .map_err(WanError::Thread)?;
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
            namespaces,
        })
    }

    /// Site `i`'s namespace.
    pub fn ns(&self, i: usize) -> &Netns {
        &self.namespaces[i]
    }

    pub fn len(&self) -> usize {
        self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Changes the link from site `from` to site `to`.
    pub fn set(&self, from: usize, to: usize, impairment: Impairment) {
        *self.shared.impairment[self.shared.pair(from, to)]
            .write()
            .expect("impairment lock") = impairment;
    }

    pub fn impairment(&self, from: usize, to: usize) -> Impairment {
        *self.shared.impairment[self.shared.pair(from, to)]
            .read()
            .expect("impairment lock")
    }

    pub fn counts(&self, from: usize, to: usize) -> Counts {
        let c = &self.shared.counters[self.shared.pair(from, to)];
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            delivered: l(&c.delivered),
            bytes: l(&c.bytes),
            lost: l(&c.lost),
            queue_full: l(&c.queue_full),
            black_holed: l(&c.black_holed),
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The TUN devices went with the thread; the namespaces go next.
    }
}

/// Two namespaces joined by the emulated link (`Sites` of two, A and B);
/// torn down on drop.
pub struct Wan {
    sites: Sites,
}

impl Wan {
    /// Creates namespaces `<prefix>-a` and `<prefix>-b` and the link
    /// between them, impaired the same way in both directions.
    pub fn new(prefix: &str, impairment: Impairment) -> Result<Self, WanError> {
        let names = [format!("{prefix}-a"), format!("{prefix}-b")];
        Ok(Self {
            sites: Sites::new(&names, |_, _| impairment)?,
        })
    }

    pub fn a(&self) -> &Netns {
        self.sites.ns(0)
    }

    pub fn b(&self) -> &Netns {
        self.sites.ns(1)
    }

    /// Changes both directions.
    pub fn set(&self, impairment: Impairment) {
        for d in [Direction::AtoB, Direction::BtoA] {
            self.set_direction(d, impairment);
        }
    }

    pub fn set_direction(&self, d: Direction, impairment: Impairment) {
        let (from, to) = d.sites();
        self.sites.set(from, to, impairment);
    }

    pub fn impairment(&self, d: Direction) -> Impairment {
        let (from, to) = d.sites();
        self.sites.impairment(from, to)
    }

    pub fn counts(&self, d: Direction) -> Counts {
        let (from, to) = d.sites();
        self.sites.counts(from, to)
    }
}

/// Reads every packet site `from` sends and hands it, with the instant
/// its link delivers it, to the link toward its destination (packets to
/// no site are dropped); returns when the device fails.
async fn route(
    tun: Arc<Tun>,
    links: Vec<tokio::sync::mpsc::UnboundedSender<(Instant, Vec<u8>)>>,
    shared: Arc<Shared>,
    from: usize,
) {
    let mut shapers: Vec<Shaper> = (0..shared.n)
        .map(|to| Shaper::new(0x15_7e_u64 + (from * shared.n + to) as u64, Instant::now()))
        .collect();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = tun.recv(&mut buf).await else {
            return;
        };
        let packet = &buf[..n];
        let Some(to) = destination(packet, shared.n).filter(|&to| to != from) else {
            continue;
        };
        let pair = shared.pair(from, to);
        let counters = &shared.counters[pair];
        let imp = *shared.impairment[pair].read().expect("impairment lock");
        match shapers[to].admit(&imp, n, ip_protocol(packet), Instant::now()) {
            Verdict::Deliver(at) => {
                let _ = links[to].send((at, packet.to_vec()));
            }
            Verdict::Lost => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::QueueFull => {
                counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::BlackHoled => {
                counters.black_holed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes the packets of the (from, to) link into site `to` when due
/// (in order: the shaper never reorders); returns when the device fails.
async fn deliver(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    tun: Arc<Tun>,
    shared: Arc<Shared>,
    from: usize,
    to: usize,
) {
    let counters = &shared.counters[shared.pair(from, to)];
    while let Some((at, p)) = rx.recv().await {
        // A packet already due goes at once (a timer would wait a tick).
        if at > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        if tun.send(&p).await.is_err() {
            return;
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
    }
}

/// A number and the unit after it (`25ms` -> 25.0, "ms"), or `example`
/// in the error.
fn number_and_unit<'a>(s: &'a str, example: &str) -> Result<(f64, &'a str), String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number with a unit, like {example}"))?;
    Ok((n, unit))
}

/// Parses a duration: `25ms`, `1.5s`, `250us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s, "25ms")?;
    let scale = match unit {
        "" if n == 0.0 => 0.0,
        "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        _ => return Err(format!("{s:?}: use s, ms or us")),
    };
    Ok(Duration::from_secs_f64(n * scale))
}

/// Parses a rate in bits per second: `20mbit`, `1gbit`, `500kbit`, `9600bit`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (n, unit) = number_and_unit(&s, "20mbit")?;
    let scale = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(format!("{s:?}: use bit, kbit, mbit or gbit")),
    };
    Ok((n * scale) as u64)
}

/// Parses a size in bytes: `256k`, `1m`, `1500`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, scale) = match s.strip_suffix('k') {
        Some(n) => (n, 1024),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 1024 * 1024),
            None => (s.as_str(), 1),
        },
    };
    num.parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("{s:?} is not a size like 256k"))
}

/// Applies one control command to an impairment (the `isthmus-wan`
/// console): `rtt 50ms`, `delay 25ms`, `jitter 2ms`, `loss 1` (percent),
/// `rate 20mbit` or `rate off`, `queue 256k`, `udp block` or `udp pass`.
pub fn apply_command(imp: &mut Impairment, line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let (Some(what), Some(value), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("{line:?}: expected `<setting> <value>`"));
    };
    match what {
        "rtt" => imp.delay = parse_duration(value)? / 2,
        "delay" => imp.delay = parse_duration(value)?,
        "jitter" => imp.jitter = parse_duration(value)?,
        "loss" => {
            let p: f64 = value
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("{value:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("loss {p} is not within 0-100 %"));
            }
            imp.loss = p / 100.0;
        }
        "rate" if value == "off" => imp.rate_bps = None,
        "rate" => imp.rate_bps = Some(parse_rate(value)?),
        "queue" => imp.queue_bytes = parse_size(value)?,
        "udp" => {
            imp.blackhole_udp = match value {
                "block" => true,
                "pass" => false,
                _ => return Err(format!("udp {value:?}: use block or pass")),
            }
        }
        _ => {
            return Err(format!(
                "unknown setting {what:?}: rtt, delay, jitter, loss, rate, queue, udp"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver(t) => t,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn delay_alone_shifts_every_packet() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1, t0);
        let imp = Impairment::wan(50 * MS, 0.0);
        assert_eq!(at(s.admit(&imp, 1500, Some(6), t0)), t0 + 25 * MS);
        assert_eq!(at(s.admit(&imp, 1500, Some(17), t0 + MS)), t0 + 26 * MS);
    }

    #[test]
    fn a_capped_link_serializes_and_drops_at_the_tail() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1, t0);
        // 8 Mbit/s: 1000 bytes take 1 ms; the queue holds 3000 bytes.
        let imp = Impairment::default().capped(8_000_000, 3000);
        assert_eq!(at(s.admit(&imp, 1000, None, t0)), t0 + MS);
        assert_eq!(at(s.admit(&imp, 1000, None, t0)), t0 + 2 * MS);
        assert_eq!(at(s.admit(&imp, 1000, None, t0)), t0 + 3 * MS);
        // 3000 bytes are waiting: the next one does not fit.
        assert_eq!(s.admit(&imp, 1000, None, t0), Verdict::QueueFull);
        // Once one has gone out, there is room again.
        assert_eq!(at(s.admit(&imp, 1000, None, t0 + MS)), t0 + 4 * MS);
        // An idle link starts afresh.
        assert_eq!(at(s.admit(&imp, 1000, None, t0 + 100 * MS)), t0 + 101 * MS);
    }

    #[test]
    fn loss_drops_about_the_asked_share() {
        let t0 = Instant::now();
        let mut s = Shaper::new(7, t0);
        let imp = Impairment::wan(Duration::ZERO, 0.01);
        let lost = (0..100_000)
            .filter(|_| s.admit(&imp, 100, None, t0) == Verdict::Lost)
            .count();
        assert!((800..1200).contains(&lost), "{lost} of 100000 lost at 1 %");
        let none = Impairment::default();
        assert!((0..10_000).all(|_| s.admit(&none, 100, None, t0) != Verdict::Lost));
    }

    #[test]
    fn jitter_varies_delay_but_never_reorders() {
        let t0 = Instant::now();
        let mut s = Shaper::new(3, t0);
        let imp = Impairment {
            delay: 20 * MS,
            jitter: 5 * MS,
            ..Impairment::default()
        };
        let mut last = t0;
        let mut spread = (Duration::MAX, Duration::ZERO);
        for i in 0..1000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            let t = at(s.admit(&imp, 100, None, now));
            assert!(t >= last, "packet {i} overtook its predecessor");
            last = t;
            let d = t - now;
            spread = (spread.0.min(d), spread.1.max(d));
        }
        assert!(spread.0 >= 15 * MS && spread.1 <= 25 * MS, "{spread:?}");
        assert!(spread.1 - spread.0 >= 5 * MS, "jitter varies: {spread:?}");
    }

    #[test]
    fn udp_black_hole_spares_tcp() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1, t0);
        let imp = Impairment {
            blackhole_udp: true,
            ..Impairment::default()
        };
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[9] = 17;
        assert_eq!(ip_protocol(&v4), Some(17));
        assert_eq!(s.admit(&imp, 20, ip_protocol(&v4), t0), Verdict::BlackHoled);
        v4[9] = 6;
        assert!(matches!(
            s.admit(&imp, 20, ip_protocol(&v4), t0),
            Verdict::Deliver(_)
        ));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 17;
        assert_eq!(ip_protocol(&v6), Some(17));
        assert_eq!(ip_protocol(&[]), None);
    }

    #[test]
    fn packets_go_to_the_site_they_are_addressed_to() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        let to = |v4: &mut [u8; 20], dst: [u8; 4]| {
            v4[16..20].copy_from_slice(&dst);
            destination(&v4[..], 3)
        };
        assert_eq!(to(&mut v4, [10, 77, 0, 1]), Some(0));
        assert_eq!(to(&mut v4, [10, 77, 0, 3]), Some(2));
        assert_eq!(site_addr(2).octets(), [10, 77, 0, 3]);
        // Beyond the sites, outside the WAN's range, the network address.
        assert_eq!(to(&mut v4, [10, 77, 0, 4]), None);
        assert_eq!(to(&mut v4, [10, 78, 0, 1]), None);
        assert_eq!(to(&mut v4, [10, 77, 0, 0]), None);
        // Not IPv4, or cut short.
        assert_eq!(destination(&[0x60; 40], 3), None);
        assert_eq!(destination(&v4[..12], 3), None);
        assert_eq!(destination(&[], 3), None);
    }

    #[test]
    fn parses_durations_rates_and_sizes() {
        assert_eq!(parse_duration("25ms"), Ok(25 * MS));
        assert_eq!(parse_duration("1.5s"), Ok(1500 * MS));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("25").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_rate("20mbit"), Ok(20_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert!(parse_rate("20mb").is_err());
        assert_eq!(parse_size("256k"), Ok(256 * 1024));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn console_commands_change_the_impairment() {
        let mut i = Impairment::default();
        for c in [
            "rtt 50ms",
            "jitter 2ms",
            "loss 1%",
            "rate 20mbit",
            "queue 64k",
            "udp block",
        ] {
            apply_command(&mut i, c).unwrap();
        }
        assert_eq!(i.delay, 25 * MS);
        assert_eq!(i.jitter, 2 * MS);
        assert!((i.loss - 0.01).abs() < 1e-12);
        assert_eq!(i.rate_bps, Some(20_000_000));
        assert_eq!(i.queue_bytes, 64 * 1024);
        assert!(i.blackhole_udp);
        apply_command(&mut i, "rate off").unwrap();
        apply_command(&mut i, "udp pass").unwrap();
        assert_eq!((i.rate_bps, i.blackhole_udp), (None, false));
        for bad in ["loss 150", "udp maybe", "speed 1", "rtt", "rtt 1ms 2ms"] {
            assert!(apply_command(&mut i, bad).is_err(), "{bad}");
        }
    }
}
