//! Peer gateways as configured and as they fare: their links, failures
//! in a row and the backoff after them (`backoff`, pure), the silence
//! that counts as a dead QUIC link, the re-probe of QUIC from the
//! fallback; static peers merged with the control plane's (`merge_peers`).

use super::*;

/// How long QUIC gets before the TCP fallback races it.
pub const HEAD_START: Duration = Duration::from_millis(300);

/// A peer gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer cluster's name.
    pub cluster: String,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// Its gateway's SPIFFE ID.
    pub identity: String,
}

pub(super) struct PeerState {
    pub(super) cfg: PeerConfig,
    pub(super) link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// The last failure to link, and when the current link was made.
    pub(super) last_error: Mutex<Option<String>>,
    /// Whether that failure was one of trust (certificates refused).
    pub(super) last_untrusted: std::sync::atomic::AtomicBool,
    /// Failed attempts in a row, and when the next may be made.
    pub(super) retry: Mutex<(u32, Option<Instant>)>,
    pub(super) linked_at: Mutex<Option<std::time::SystemTime>>,
    /// When QUIC was last tried while on the fallback.
    pub(super) probed: Mutex<Instant>,
    pub(super) probing: std::sync::atomic::AtomicBool,
}

/// Default interval between QUIC re-probes of a link on the fallback.
pub const REPROBE: Duration = Duration::from_secs(30);

impl PeerState {
    pub(super) fn new(cfg: PeerConfig) -> Arc<Self> {
        Arc::new(PeerState {
            cfg,
            link: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
            last_untrusted: std::sync::atomic::AtomicBool::new(false),
            retry: Mutex::new((0, None)),
            linked_at: Mutex::new(None),
            probed: Mutex::new(Instant::now()),
            probing: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// The peers to link with: the static ones, then those of the config
/// (which win for a cluster both name). Entries that do not parse were
/// refused by validation already; they are skipped here (pure).
pub fn merge_peers(
    fixed: &[PeerConfig],
    config: Option<&isthmus_api::model::EastWest>,
) -> Vec<PeerConfig> {
    let mut out: Vec<PeerConfig> = fixed.to_vec();
    for p in config.map(|e| e.peers.as_slice()).unwrap_or_default() {
        let (Ok(udp), Ok(tcp)) = (p.udp.parse(), p.tcp.parse()) else {
            continue;
        };
        let peer = PeerConfig {
            cluster: p.cluster.clone(),
            udp,
            tcp,
            identity: p.identity.clone(),
        };
        match out.iter_mut().find(|o| o.cluster == peer.cluster) {
            Some(o) => *o = peer,
            None => out.push(peer),
        }
    }
    out
}

/// How long a QUIC link may stay silent after a CONNECT before it is
/// taken for dead: a live peer acknowledges within a round trip (and
/// its keep-alives come every `quic::KEEP_ALIVE`).
pub const SILENCE: Duration = Duration::from_secs(2);

/// First and longest wait between attempts to link to an unreachable peer.
/// The longest is short: a peer that returns is linked with, and its
/// cluster's traffic back, within a second (two handshake attempts a
/// second to a dead peer cost a few datagrams).
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The wait after `failures` failed attempts in a row (pure): 200 ms
/// doubling up to 500 ms, each spread by ±20 % (`jitter` in [0, 1)) so the
/// gateways of a cluster do not retry in step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(BACKOFF_MAX)
        .mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}
