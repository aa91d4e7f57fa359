//! Requests this proxy sent, by the cluster of the endpoint that took
//! them: counts, failures (5xx, or a gRPC error) and a latency histogram, served as JSON at
//! `/stats/edges` for the control plane's topology page (it sums its
//! proxies' counters into cluster-to-cluster rates). Lock-free on the
//! request path once a cluster is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isthmus_api::topology::{BOUNDS_MS, EdgeCounters};
use parking_lot::RwLock;

use super::metrics::Label;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Per bucket (not cumulative), one more than `BOUNDS_MS`.
    buckets: [AtomicU64; BOUNDS_MS.len() + 1],
}

/// Outbound requests by destination cluster.
#[derive(Default)]
pub struct Edges {
    by_cluster: RwLock<HashMap<Label, Arc<Counters>>>,
}

impl Edges {
    /// Counts one request that ended after `took`, sent to an endpoint of
    /// `cluster`; `failed`: answered 5xx, or a gRPC error.
    pub fn observe(&self, cluster: &Label, failed: bool, took: Duration) {
        let counters = {
            let known = self.by_cluster.read().get(cluster).cloned();
            match known {
                Some(c) => c,
                None => self
                    .by_cluster
                    .write()
                    .entry(cluster.clone())
                    .or_default()
                    .clone(),
            }
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = took.as_secs_f64() * 1000.0;
        let i = BOUNDS_MS.partition_point(|b| *b < ms);
        counters.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every cluster's counters as they stand.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, EdgeCounters> {
        self.by_cluster
            .read()
            .iter()
            .map(|(cluster, c)| {
                (
                    cluster.to_string(),
                    EdgeCounters {
                        requests: c.requests.load(Ordering::Relaxed),
                        errors: c.errors.load(Ordering::Relaxed),
                        buckets: c
                            .buckets
                            .iter()
                            .map(|b| b.load(Ordering::Relaxed))
                            .collect(),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_cluster_with_errors_and_buckets() {
        let e = Edges::default();
        let west: Label = "eu-west".into();
        let east: Label = "us-east".into();
        e.observe(&west, false, Duration::from_micros(500));
        e.observe(&west, true, Duration::from_millis(7));
        e.observe(&east, false, Duration::from_secs(60));
        let s = e.snapshot();
        assert_eq!((s["eu-west"].requests, s["eu-west"].errors), (2, 1));
        assert_eq!(s["eu-west"].buckets[0], 1, "0.5 ms is under 1 ms");
        assert_eq!(s["eu-west"].buckets[3], 1, "7 ms is under 10 ms");
        assert_eq!(s["us-east"].buckets[BOUNDS_MS.len()], 1, "60 s overflows");
        assert_eq!(s["us-east"].buckets.len(), BOUNDS_MS.len() + 1);
    }
}
