//! Peer liveness as a sidecar holds it: which linked clusters' gateways
//! answer now, pushed by this cluster's east-west gateway on its local
//! entry's liveness stream (`isthmus_mesh::headers::PEERS_AUTHORITY`). An
//! endpoint standing for a cluster said down is not chosen (balancing sees
//! it unavailable, as an unhealthy one) until the cluster is up again. This
//! is data-plane state, apart from imports: the control plane's partition
//! policy decides whether the cluster's services stay in the configuration;
//! this decides, within a second, whether traffic goes there.
//!
//! One stream per gateway entry the configuration names (an endpoint's
//! `tunnel` with `via`); a stream that ends forgets what it said (unknown
//! is up: a dead entry fails every via endpoint anyway) and is opened again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use isthmus_api::eastwest::v1::{PeerLiveness, PeerState};
use isthmus_mesh::transport::Connector;
use parking_lot::RwLock;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Snapshot, Store};

/// The largest liveness message read (a state per peer: a few KiB).
const MAX_MESSAGE: usize = 1 << 20;

/// The liveness each gateway entry last said.
#[derive(Debug, Default)]
pub struct Liveness {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    by_entry: HashMap<SocketAddr, BTreeMap<String, PeerState>>,
    /// Per cluster, how many times it came back (down, then up).
    returns: HashMap<String, u64>,
}

impl State {
    /// Whether `cluster` is known down: every entry that speaks of it says
    /// so (unknown is up).
    fn down(&self, cluster: &str) -> bool {
        let mut said = self
            .by_entry
            .values()
            .filter_map(|m| m.get(cluster))
            .peekable();
        said.peek().is_some() && said.all(|p| !p.up)
    }

    /// Applies `change` to what the entries said; a cluster down before and
    /// not after counts a return.
    fn change(
        &mut self,
        change: impl FnOnce(&mut HashMap<SocketAddr, BTreeMap<String, PeerState>>),
    ) {
        let clusters: BTreeSet<String> = self
            .by_entry
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect();
        let was_down: Vec<String> = clusters.into_iter().filter(|c| self.down(c)).collect();
        change(&mut self.by_entry);
        for c in was_down {
            if !self.down(&c) {
                *self.returns.entry(c).or_default() += 1;
            }
        }
    }
}

/// What liveness says of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterLiveness {
    pub down: bool,
    /// How many times it came back up: an endpoint that saw fewer was
    /// ejected, if at all, before the cluster's last return.
    pub returns: u64,
}

impl Liveness {
    /// Whether `cluster` is known down: every entry that speaks of it says
    /// so (unknown is up).
    pub fn down(&self, cluster: &str) -> bool {
        self.state.read().down(cluster)
    }

    /// `down`, and how many times the cluster came back (one read, on the
    /// request path).
    pub fn cluster(&self, cluster: &str) -> ClusterLiveness {
        let st = self.state.read();
        ClusterLiveness {
            down: st.down(cluster),
            returns: st.returns.get(cluster).copied().unwrap_or(0),
        }
    }

    pub(crate) fn set(&self, entry: SocketAddr, peers: BTreeMap<String, PeerState>) {
        self.state.write().change(|by| {
            by.insert(entry, peers);
        });
    }

    fn forget(&self, entry: SocketAddr) {
        self.state.write().change(|by| {
            by.remove(&entry);
        });
    }

    /// For /config_dump: per gateway entry, each peer cluster's state.
    pub fn dump(&self) -> serde_json::Value {
        let st = self.state.read();
        let by = &st.by_entry;
        serde_json::Value::Object(
            by.iter()
                .map(|(entry, peers)| {
                    (
                        entry.to_string(),
                        serde_json::to_value(peers).unwrap_or_default(),
                    )
                })
                .collect(),
        )
    }
}

/// The gateway entries `snap` reaches linked clusters through.
pub fn entries(snap: &Snapshot) -> HashSet<SocketAddr> {
    snap.services
        .values()
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| {
            let t = e.tunnel.as_ref()?;
            t.via.as_ref()?;
            Some(SocketAddr::new(e.ip, t.port))
        })
        .collect()
}

/// Follows every entry the configuration names until `stop`.
pub async fn follow(
    store: Arc<Store>,
    connector: Arc<Connector>,
    liveness: Arc<Liveness>,
    stop: CancellationToken,
) {
    let mut changes = store.subscribe();
    let mut streams: HashMap<SocketAddr, tokio_util::task::AbortOnDropHandle<()>> = HashMap::new();
    loop {
        let wanted = entries(&store.load());
        streams.retain(|entry, _| {
            let keep = wanted.contains(entry);
            if !keep {
                liveness.forget(*entry);
            }
            keep
        });
        for entry in wanted {
            streams.entry(entry).or_insert_with(|| {
                let task = tokio::spawn(subscribe(entry, connector.clone(), liveness.clone()));
                tokio_util::task::AbortOnDropHandle::new(task)
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// One entry's stream, opened again whenever it ends: at once after a
/// stream that said something, with a doubling wait (to 2 s) while none
/// gets through.
async fn subscribe(entry: SocketAddr, connector: Arc<Connector>, liveness: Arc<Liveness>) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut backoff = FIRST;
    loop {
        let mut heard = false;
        match read_stream(entry, &connector, &liveness, &mut heard).await {
            Ok(()) => tracing::debug!(%entry, "liveness stream ended"),
            Err(e) => tracing::debug!(%entry, "liveness stream: {e}"),
        }
        liveness.forget(entry);
        if heard {
            backoff = FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Open(#[from] isthmus_mesh::transport::TunnelError),
    #[error("reading: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

async fn read_stream(
    entry: SocketAddr,
    connector: &Connector,
    liveness: &Liveness,
    heard: &mut bool,
) -> Result<(), StreamError> {
    let mut stream = connector
        .peer_liveness(entry, Duration::from_secs(5))
        .await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(msg) = next_message(&mut buf)? {
            let peers: BTreeMap<String, PeerState> = msg.peers.into_iter().collect();
            let down: Vec<&str> = peers
                .iter()
                .filter(|(_, p)| !p.up)
                .map(|(c, _)| c.as_str())
                .collect();
            tracing::info!(%entry, ?down, "peer liveness");
            liveness.set(entry, peers);
            *heard = true;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("a liveness message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("a liveness message does not decode: {0}")]
    Decode(String),
}

/// The next whole length-delimited message in `buf`, taken out of it; None
/// until one has fully arrived (pure; fuzzed with the protobuf decoders).
pub fn next_message(buf: &mut BytesMut) -> Result<Option<PeerLiveness>, FrameError> {
    let mut peek = &buf[..];
    let len = match prost::decode_length_delimiter(&mut peek) {
        Ok(len) => len,
        // Up to 10 bytes of varint: an incomplete one is not an error yet.
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(e) => return Err(FrameError::Decode(e.to_string())),
    };
    if len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(len));
    }
    let head = buf.len() - peek.len();
    if peek.len() < len {
        return Ok(None);
    }
    let msg = PeerLiveness::decode(&buf[head..head + len])
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    buf.advance(head + len);
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(up: bool) -> PeerState {
        PeerState {
            up,
            reason: if up { String::new() } else { "silent".into() },
            since_unix_ms: 1,
        }
    }

    #[test]
    fn a_cluster_that_comes_back_counts_a_return() {
        let l = Liveness::default();
        let entry: SocketAddr = "127.0.0.1:15009".parse().unwrap();
        let say = |central: bool| {
            [
                ("eu-central".to_string(), state(central)),
                ("us-east".to_string(), state(true)),
            ]
            .into()
        };
        assert_eq!(l.cluster("eu-central"), ClusterLiveness::default());
        l.set(entry, say(true));
        l.set(entry, say(false));
        assert_eq!(
            l.cluster("eu-central"),
            ClusterLiveness {
                down: true,
                returns: 0
            }
        );
        l.set(entry, say(true));
        l.set(entry, say(true));
        assert_eq!(
            l.cluster("eu-central"),
            ClusterLiveness {
                down: false,
                returns: 1
            },
            "one return, however often it is said up"
        );
        assert_eq!(l.cluster("us-east").returns, 0);
        // The only entry that said it was down goes: unknown is up.
        l.set(entry, say(false));
        l.forget(entry);
        assert_eq!(
            l.cluster("eu-central"),
            ClusterLiveness {
                down: false,
                returns: 2
            }
        );
    }

    #[test]
    fn messages_are_read_whole_in_any_pieces() {
        let msgs: Vec<PeerLiveness> = (0..3)
            .map(|i| PeerLiveness {
                peers: [
                    ("eu-central".to_string(), state(i % 2 == 0)),
                    ("us-east".to_string(), state(true)),
                ]
                .into(),
            })
            .collect();
        let wire: Vec<u8> = msgs
            .iter()
            .flat_map(|m| m.encode_length_delimited_to_vec())
            .collect();
        for piece in [1, 2, 3, 7, wire.len()] {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                buf.extend_from_slice(chunk);
                while let Some(m) = next_message(&mut buf).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "pieces of {piece}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_and_garbled_messages_are_refused_by_name() {
        let mut buf = BytesMut::new();
        prost::encode_length_delimiter(MAX_MESSAGE + 1, &mut buf).unwrap();
        assert_eq!(
            next_message(&mut buf),
            Err(FrameError::TooLarge(MAX_MESSAGE + 1))
        );
        let mut buf = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(next_message(&mut buf), Err(FrameError::Decode(_))));
        let mut buf = BytesMut::from(&[0xffu8; 11][..]);
        assert!(matches!(next_message(&mut buf), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_cluster_is_down_only_when_every_entry_that_knows_it_says_so() {
        let l = Liveness::default();
        let a: SocketAddr = "10.0.0.1:15009".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:15009".parse().unwrap();
        assert!(!l.down("eu-central"), "unknown is up");
        l.set(a, [("eu-central".to_string(), state(false))].into());
        assert!(l.down("eu-central"));
        assert!(!l.down("us-east"));
        l.set(b, [("eu-central".to_string(), state(true))].into());
        assert!(!l.down("eu-central"), "another entry still reaches it");
        l.forget(b);
        assert!(l.down("eu-central"));
        l.forget(a);
        assert!(!l.down("eu-central"), "a stream that ended said nothing");
        assert!(l.dump().as_object().unwrap().is_empty());
    }
}
