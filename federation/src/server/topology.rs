//! The topology page on the admin port (`/` serves it, `/topology` its
//! data): the clusters this control plane knows (itself and its linked
//! peers), the links with transport, RTT, state and imports, the services
//! exported across the set, and the live traffic from our clusters to
//! each (req/s, 5xx rate, p99), summed from our proxies' `/stats/edges`.
//!
//! Linked clusters send us how they see the set with each ping (their
//! links, and their proxies' traffic while someone looks: `ClusterView`),
//! so each page shows every cluster's links and traffic, not only ours.
//!
//! The page is one embedded file (`topology.html`, no build step); it asks
//! `/topology` twice a second. Proxies are read only while someone looks
//! (a `/topology` here, or a linked cluster's page open, in the last
//! 10 s), once a second, each within 300 ms. `topology`, `own_view` and
//! `traffic` are pure; `Traffic::collect` does the I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use isthmus_api::topology::{
    BOUNDS_MS, ClusterNode, EdgeCounters, LinkEdge, ServiceRow, Topology, TrafficEdge,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::Published;
use crate::discovery::subscribers::Subscribers;
use crate::sync::peers::Peer;
use isthmus_api::federation::v1 as wire;

/// The page, embedded.
pub const PAGE: &str = include_str!("topology.html");

/// How far back traffic rates look.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Proxies are read only this long after the page last asked.
const WATCHED_FOR: Duration = Duration::from_secs(10);
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(300);

/// `cur - prev` per cluster; a counter that went back (the proxy
/// restarted) counts from zero.
pub fn delta(
    prev: Option<&BTreeMap<String, EdgeCounters>>,
    cur: &BTreeMap<String, EdgeCounters>,
) -> BTreeMap<String, EdgeCounters> {
    cur.iter()
        .map(|(cluster, c)| {
            let p = prev.and_then(|p| p.get(cluster));
            let reset = p.is_some_and(|p| p.requests > c.requests);
            let d = match p {
                Some(p) if !reset => EdgeCounters {
                    requests: c.requests - p.requests,
                    errors: c.errors.saturating_sub(p.errors),
                    buckets: c
                        .buckets
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b.saturating_sub(p.buckets.get(i).copied().unwrap_or(0)))
                        .collect(),
                },
                _ => c.clone(),
            };
            (cluster.clone(), d)
        })
        .collect()
}

fn add(into: &mut EdgeCounters, d: &EdgeCounters) {
    into.requests += d.requests;
    into.errors += d.errors;
    if into.buckets.len() < d.buckets.len() {
        into.buckets.resize(d.buckets.len(), 0);
    }
    for (i, b) in d.buckets.iter().enumerate() {
        into.buckets[i] += b;
    }
}

/// The upper bound of the bucket holding quantile `q` (the last bound
/// for the overflow bucket); None without requests.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, b) in buckets.iter().enumerate() {
        seen += b;
        if seen >= rank {
            return Some(
                BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(BOUNDS_MS[BOUNDS_MS.len() - 1]),
            );
        }
    }
    BOUNDS_MS.last().copied()
}

/// Rates from `own` to each cluster over the samples of a window (each a
/// summed delta), spanning `span`.
pub fn traffic(
    own: &str,
    samples: &[BTreeMap<String, EdgeCounters>],
    span: Duration,
) -> Vec<TrafficEdge> {
    let mut sum: BTreeMap<&str, EdgeCounters> = BTreeMap::new();
    for s in samples {
        for (cluster, d) in s {
            add(sum.entry(cluster).or_default(), d);
        }
    }
    let secs = span.as_secs_f64().max(1e-3);
    sum.into_iter()
        .filter(|(_, c)| c.requests > 0)
        .map(|(to, c)| TrafficEdge {
            from: own.to_string(),
            to: to.to_string(),
            requests_per_second: c.requests as f64 / secs,
            error_rate: c.errors as f64 / c.requests as f64,
            p99_ms: quantile_ms(&c.buckets, 0.99),
        })
        .collect()
}

/// The cluster set as this control plane sees it.
pub fn topology(
    p: &Published,
    own: &str,
    peers: &[Peer],
    proxies: usize,
    mut traffic: Vec<TrafficEdge>,
    views: &[(String, wire::ClusterView)],
    now: SystemTime,
) -> Topology {
    let region = |cluster: &str| -> String {
        peers
            .iter()
            .find(|x| x.cluster == cluster)
            .and_then(|x| x.services.values().find_map(|s| s.locality.clone()))
            .map(|l| l.region)
            .unwrap_or_default()
    };
    let own_region = p
        .store
        .snapshot
        .of_kind("Mesh")
        .find_map(|(_, r)| match r {
            crate::store::Resource::Mesh(m) => Some(m.spec.locality.region.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let mut clusters = vec![ClusterNode {
        name: own.to_string(),
        state: "local".into(),
        region: own_region,
        proxies: Some(proxies),
    }];
    let mut links = Vec::new();
    let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // The federation channel's own service is plumbing, not a service.
    let plumbing = format!(".{}", crate::translate::links::GATEWAY_NAMESPACE);
    for name in p
        .catalog
        .exported
        .iter()
        .filter(|n| !n.ends_with(&plumbing))
    {
        services
            .entry(name.clone())
            .or_default()
            .insert(own.to_string());
    }
    let mut sorted: Vec<&Peer> = peers.iter().collect();
    sorted.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    for peer in sorted {
        clusters.push(ClusterNode {
            name: peer.cluster.clone(),
            state: if peer.connected { "up" } else { "down" }.into(),
            region: region(&peer.cluster),
            proxies: None,
        });
        for name in peer.services.keys() {
            services
                .entry(name.clone())
                .or_default()
                .insert(peer.cluster.clone());
        }
        links.push(LinkEdge {
            from: own.to_string(),
            to: peer.cluster.clone(),
            state: if peer.connected {
                "Connected".into()
            } else if peer.withdrawn {
                "Disconnected (imports withdrawn)".into()
            } else {
                "Disconnected".into()
            },
            transport: peer.transport.clone(),
            rtt_ms: peer.rtt.map(|r| r.as_secs_f64() * 1000.0),
            last_sync_seconds: peer
                .last_sync
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs()),
            imports: peer.services.keys().cloned().collect(),
            reason: peer
                .refusal
                .as_ref()
                .filter(|_| !peer.connected)
                .map(|r| format!("{}: {}", r.reason, r.message)),
        });
    }
    // What linked clusters say of their own links and traffic.
    // A cluster we cannot reach says nothing we can trust any more.
    let down: BTreeSet<&str> = peers
        .iter()
        .filter(|p| !p.connected)
        .map(|p| p.cluster.as_str())
        .collect();
    for (from, view) in views
        .iter()
        .filter(|(c, _)| c != own && !down.contains(c.as_str()))
    {
        let known = |cs: &[ClusterNode], n: &str| cs.iter().any(|c| c.name == n);
        if !known(&clusters, from) {
            clusters.push(ClusterNode {
                name: from.clone(),
                state: "up".into(),
                region: String::new(),
                proxies: None,
            });
        }
        for l in view.links.iter().filter(|l| l.peer != *own) {
            if !known(&clusters, &l.peer) {
                clusters.push(ClusterNode {
                    name: l.peer.clone(),
                    // Known only from another cluster's link to it.
                    state: "remote".into(),
                    region: String::new(),
                    proxies: None,
                });
            }
            links.push(LinkEdge {
                from: from.clone(),
                to: l.peer.clone(),
                state: if l.connected {
                    "Connected"
                } else {
                    "Disconnected"
                }
                .into(),
                transport: (!l.transport.is_empty()).then(|| l.transport.clone()),
                rtt_ms: (l.rtt_ms > 0.0 && l.rtt_ms.is_finite()).then_some(l.rtt_ms),
                last_sync_seconds: None,
                imports: Vec::new(),
                reason: None,
            });
        }
        // Another cluster's numbers: JSON has no NaN or infinity, and a
        // page must not go blank for one bad view.
        let sane = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
        traffic.extend(view.traffic.iter().map(|e| TrafficEdge {
            from: from.clone(),
            to: e.to.clone(),
            requests_per_second: sane(e.requests_per_second),
            error_rate: sane(e.error_rate).min(1.0),
            p99_ms: Some(sane(e.p99_ms)).filter(|p| *p > 0.0),
        }));
    }
    Topology {
        cluster: own.to_string(),
        generation: p.generation,
        clusters,
        links,
        traffic,
        services: services
            .into_iter()
            .map(|(name, c)| ServiceRow {
                name,
                clusters: c.into_iter().collect(),
            })
            .collect(),
    }
}

/// How we see the set, for the clusters we link to (sent with each ping):
/// our links as their tasks hold them, our traffic, whether our page is
/// open.
pub fn own_view(peers: &[Peer], traffic: Vec<TrafficEdge>, watching: bool) -> wire::ClusterView {
    let mut links: Vec<wire::LinkView> = peers
        .iter()
        .map(|p| wire::LinkView {
            peer: p.cluster.clone(),
            connected: p.connected,
            transport: p.transport.clone().unwrap_or_default(),
            rtt_ms: p.rtt.map_or(0.0, |r| r.as_secs_f64() * 1000.0),
        })
        .collect();
    links.sort_by(|a, b| a.peer.cmp(&b.peer));
    wire::ClusterView {
        links,
        traffic: traffic
            .into_iter()
            .map(|e| wire::EdgeView {
                to: e.to,
                requests_per_second: e.requests_per_second,
                error_rate: e.error_rate,
                p99_ms: e.p99_ms.unwrap_or(0.0),
            })
            .collect(),
        watching,
    }
}

/// How long a linked cluster's view counts (it sends one a second).
pub const VIEW_TTL: Duration = Duration::from_secs(5);

/// The views linked clusters sent, by cluster.
#[derive(Default)]
pub struct Views {
    by_cluster: Mutex<BTreeMap<String, (Instant, wire::ClusterView)>>,
}

impl Views {
    pub fn set(&self, cluster: &str, view: wire::ClusterView) {
        self.by_cluster
            .lock()
            .insert(cluster.to_string(), (Instant::now(), view));
    }

    /// `cluster`'s stream ended: its view goes with it.
    pub fn remove(&self, cluster: &str) {
        self.by_cluster.lock().remove(cluster);
    }

    /// The views heard within `VIEW_TTL`, by cluster name.
    pub fn fresh(&self) -> Vec<(String, wire::ClusterView)> {
        let mut all = self.by_cluster.lock();
        all.retain(|_, (at, _)| at.elapsed() < VIEW_TTL);
        all.iter()
            .map(|(c, (_, v))| (c.clone(), v.clone()))
            .collect()
    }
}

/// Our proxies' traffic, read while the page is watched.
#[derive(Default)]
pub struct Traffic {
    watched: Mutex<Option<Instant>>,
    /// A linked cluster's page is open (its view said so).
    peer_watched: Mutex<Option<Instant>>,
    /// Each proxy's last counters, by stream.
    last: Mutex<HashMap<u64, BTreeMap<String, EdgeCounters>>>,
    /// (when, the summed deltas of that round), newest last.
    window: Mutex<VecDeque<(Instant, BTreeMap<String, EdgeCounters>)>>,
}

impl Traffic {
    /// The page asked: read the proxies for a while.
    pub fn watched(&self) {
        *self.watched.lock() = Some(Instant::now());
    }

    /// A linked cluster's page is open: read the proxies for a while.
    pub fn peer_watched(&self) {
        *self.peer_watched.lock() = Some(Instant::now());
    }

    /// Our own page was asked for lately.
    pub fn watched_here(&self) -> bool {
        self.watched
            .lock()
            .is_some_and(|t| t.elapsed() < WATCHED_FOR)
    }

    fn is_watched(&self) -> bool {
        self.watched_here()
            || self
                .peer_watched
                .lock()
                .is_some_and(|t| t.elapsed() < WATCHED_FOR)
    }

    /// The rates from `own` over the window.
    pub fn edges(&self, own: &str) -> Vec<TrafficEdge> {
        let w = self.window.lock();
        let (Some(first), Some(last)) = (w.front(), w.back()) else {
            return Vec::new();
        };
        if w.len() < 2 {
            return Vec::new();
        }
        // The first round's deltas are since the round before it, which
        // is not in the window: count from the second.
        let samples: Vec<BTreeMap<String, EdgeCounters>> =
            w.iter().skip(1).map(|(_, s)| s.clone()).collect();
        traffic(own, &samples, last.0 - first.0)
    }

    /// Reads every proxy's `/stats/edges` once a second while watched.
    pub async fn collect(
        self: std::sync::Arc<Self>,
        subscribers: std::sync::Arc<Subscribers>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SCRAPE_EVERY) => {}
            }
            if !self.is_watched() {
                self.window.lock().clear();
                self.last.lock().clear();
                continue;
            }
            let targets: Vec<(u64, SocketAddr)> = subscribers
                .list()
                .into_iter()
                .filter_map(|(id, s)| Some((id, s.admin.as_deref()?.parse().ok()?)))
                .collect();
            let reads = targets.into_iter().map(|(id, addr)| async move {
                let r = tokio::time::timeout(SCRAPE_TIMEOUT, get_edges(addr)).await;
                (id, r.ok().flatten())
            });
            let results = futures_util::future::join_all(reads).await;
            let mut round: BTreeMap<String, EdgeCounters> = BTreeMap::new();
            {
                let mut last = self.last.lock();
                let live: BTreeSet<u64> = results.iter().map(|(id, _)| *id).collect();
                last.retain(|id, _| live.contains(id));
                for (id, cur) in results {
                    let Some(cur) = cur else { continue };
                    for (cluster, d) in delta(last.get(&id), &cur) {
                        // A proxy seen for the first time brings its
                        // whole history: not this round's traffic.
                        if last.contains_key(&id) {
                            add(round.entry(cluster).or_default(), &d);
                        }
                    }
                    last.insert(id, cur);
                }
            }
            let now = Instant::now();
            let mut w = self.window.lock();
            w.push_back((now, round));
            while w
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            {
                w.pop_front();
            }
        }
    }
}

/// GET /stats/edges from a proxy's admin port.
async fn get_edges(addr: SocketAddr) -> Option<BTreeMap<String, EdgeCounters>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/stats/edges")
        .header(http::header::HOST, "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(requests: u64, errors: u64, buckets: &[u64]) -> EdgeCounters {
        let mut b = buckets.to_vec();
        b.resize(BOUNDS_MS.len() + 1, 0);
        EdgeCounters {
            requests,
            errors,
            buckets: b,
        }
    }

    fn map(v: &[(&str, EdgeCounters)]) -> BTreeMap<String, EdgeCounters> {
        v.iter().map(|(k, c)| (k.to_string(), c.clone())).collect()
    }

    #[test]
    fn deltas_follow_counters_and_survive_a_restart() {
        let prev = map(&[("eu-central", c(10, 1, &[5, 5]))]);
        let cur = map(&[
            ("eu-central", c(15, 2, &[6, 9])),
            ("us-east", c(3, 0, &[3])),
        ]);
        let d = delta(Some(&prev), &cur);
        assert_eq!(d["eu-central"], c(5, 1, &[1, 4]));
        assert_eq!(d["us-east"], c(3, 0, &[3]), "new cluster: all of it");
        // The proxy restarted: its counters start over.
        let restarted = map(&[("eu-central", c(2, 0, &[2]))]);
        assert_eq!(delta(Some(&cur), &restarted)["eu-central"], c(2, 0, &[2]));
    }

    #[test]
    fn rates_error_share_and_p99_over_the_window() {
        // 2 s: 100 requests to eu-central (99 fast, 1 slow, 5 errors).
        let s1 = map(&[("eu-central", c(50, 5, &[0, 0, 0, 50]))]);
        let s2 = map(&[("eu-central", c(50, 0, &[0, 0, 0, 49, 0, 0, 0, 0, 0, 1]))]);
        let t = traffic("eu-west", &[s1, s2], Duration::from_secs(2));
        assert_eq!(t.len(), 1);
        let e = &t[0];
        assert_eq!((e.from.as_str(), e.to.as_str()), ("eu-west", "eu-central"));
        assert_eq!(e.requests_per_second, 50.0);
        assert_eq!(e.error_rate, 0.05);
        assert_eq!(
            e.p99_ms,
            Some(10.0),
            "the 99th of 100 is in the 10 ms bucket"
        );
        // A quiet window has no edges.
        assert!(
            traffic(
                "eu-west",
                &[map(&[("x", c(0, 0, &[]))])],
                Duration::from_secs(1)
            )
            .is_empty()
        );
    }

    #[test]
    fn our_view_lists_our_links_and_traffic_for_our_peers() {
        let peer = |name: &str, connected: bool, rtt: Option<u64>| Peer {
            cluster: name.into(),
            connected,
            transport: connected.then(|| "quic".to_string()),
            rtt: rtt.map(Duration::from_millis),
            ..Default::default()
        };
        let v = own_view(
            &[
                peer("us-east", false, None),
                peer("eu-central", true, Some(3)),
            ],
            vec![TrafficEdge {
                from: "eu-west".into(),
                to: "eu-central".into(),
                requests_per_second: 5.0,
                error_rate: 0.0,
                p99_ms: None,
            }],
            true,
        );
        assert_eq!(v.links.len(), 2);
        assert_eq!(
            (
                v.links[0].peer.as_str(),
                v.links[0].connected,
                v.links[0].transport.as_str(),
                v.links[0].rtt_ms
            ),
            ("eu-central", true, "quic", 3.0)
        );
        assert_eq!(
            (
                v.links[1].peer.as_str(),
                v.links[1].connected,
                v.links[1].rtt_ms
            ),
            ("us-east", false, 0.0)
        );
        assert_eq!(
            (v.traffic[0].to.as_str(), v.traffic[0].p99_ms),
            ("eu-central", 0.0)
        );
        assert!(v.watching);
    }

    /// Linked clusters' views join the page: their links (not the ones
    /// to us: ours say it), their traffic; a cluster we cannot reach is
    /// left out, and numbers JSON cannot carry do not blank the page.
    #[tokio::test]
    async fn linked_clusters_views_join_the_page() {
        let dir = isthmus_testkit::temp_dir("topology-views");
        std::fs::write(
            dir.join("mesh.yaml"),
            "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\n\
             spec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}}\n",
        )
        .unwrap();
        let cp = super::super::ControlPlane::start(super::super::Options::new(&dir));
        let p = cp
            .published
            .clone()
            .wait_for(|p| p.generation > 0)
            .await
            .unwrap()
            .clone();
        let peer = |name: &str, connected: bool| Peer {
            cluster: name.into(),
            connected,
            ..Default::default()
        };
        let link = |to: &str, connected: bool| wire::LinkView {
            peer: to.into(),
            connected,
            transport: "quic".into(),
            rtt_ms: f64::NAN,
        };
        let views = vec![
            (
                "eu-central".to_string(),
                wire::ClusterView {
                    links: vec![
                        link("eu-west", true),
                        link("us-east", true),
                        link("ap-south", false),
                    ],
                    traffic: vec![wire::EdgeView {
                        to: "us-east".into(),
                        requests_per_second: f64::NAN,
                        error_rate: 7.0,
                        p99_ms: f64::INFINITY,
                    }],
                    watching: false,
                },
            ),
            (
                "us-east".to_string(),
                wire::ClusterView {
                    links: vec![link("eu-central", true)],
                    ..Default::default()
                },
            ),
        ];
        let t = topology(
            &p,
            "eu-west",
            &[peer("eu-central", true), peer("us-east", false)],
            3,
            Vec::new(),
            &views,
            SystemTime::now(),
        );
        let edges: Vec<(&str, &str, &str)> = t
            .links
            .iter()
            .map(|l| (l.from.as_str(), l.to.as_str(), l.state.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("eu-west", "eu-central", "Connected"),
                ("eu-west", "us-east", "Disconnected"),
                ("eu-central", "us-east", "Connected"),
                ("eu-central", "ap-south", "Disconnected"),
            ],
            "ours first; eu-central's except its link to us; nothing from us-east (down)"
        );
        assert!(t.links[2].rtt_ms.is_none(), "a NaN RTT is no RTT");
        let states: Vec<(&str, &str)> = t
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("eu-west", "local"),
                ("eu-central", "up"),
                ("us-east", "down"),
                ("ap-south", "remote")
            ]
        );
        let e = &t.traffic[0];
        assert_eq!(
            (
                e.from.as_str(),
                e.requests_per_second,
                e.error_rate,
                e.p99_ms
            ),
            ("eu-central", 0.0, 1.0, None)
        );
        serde_json::to_string(&t).expect("the page's data is JSON");
        cp.shutdown().await;
    }

    #[test]
    fn quantiles_take_the_bucket_bound() {
        assert_eq!(quantile_ms(&[], 0.99), None);
        assert_eq!(quantile_ms(&[1], 0.99), Some(1.0));
        let mut overflow = vec![0; BOUNDS_MS.len() + 1];
        overflow[BOUNDS_MS.len()] = 1;
        assert_eq!(quantile_ms(&overflow, 0.5), Some(30000.0));
    }
}
