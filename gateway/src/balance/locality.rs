//! Locality priorities: endpoints in the proxy's own zone come first, then
//! its region, then other regions (in the failover order when one is
//! given). A priority whose healthy share is too low spills its load over
//! to the next (Envoy's priority load with an overprovisioning factor).

/// Where an endpoint runs, relative to the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
}

/// The priority of an endpoint at `ep` for a proxy at `local`: 0 same zone,
/// 1 same region, 2.. other regions in `failover` order, then the rest.
/// An unknown (empty) local region puts everything at priority 0.
pub fn priority(local: &Locality, ep: &Locality, failover: &[String]) -> usize {
    if local.region.is_empty() {
        return 0;
    }
    if ep.region == local.region {
        return if ep.zone == local.zone || local.zone.is_empty() {
            0
        } else {
            1
        };
    }
    match failover.iter().position(|r| *r == ep.region) {
        Some(i) => 2 + i,
        None => 2 + failover.len(),
    }
}

/// Share of traffic (summing to 1) each priority receives, from
/// `(healthy, total)` endpoint counts per priority. Returns all zeros when
/// nothing is healthy anywhere (the caller then ignores health: panic mode).
pub fn priority_loads(counts: &[(usize, usize)], overprovisioning: f64) -> Vec<f64> {
    let health: Vec<f64> = counts
        .iter()
        .map(|&(healthy, total)| {
            if total == 0 {
                0.0
            } else {
                (overprovisioning * healthy as f64 / total as f64).min(1.0)
            }
        })
        .collect();
    let sum: f64 = health.iter().sum();
    if sum <= 0.0 {
        return vec![0.0; counts.len()];
    }
    if sum < 1.0 {
        // Not enough healthy capacity anywhere: spread in proportion.
        return health.iter().map(|h| h / sum).collect();
    }
    let mut left = 1.0;
    health
        .iter()
        .map(|h| {
            let take = h.min(left);
            left -= take;
            take
        })
        .collect()
}

/// Index of the priority chosen by `r` (uniform in [0,1)) under `loads`.
pub fn choose_priority(loads: &[f64], r: f64) -> Option<usize> {
    let mut acc = 0.0;
    let mut last = None;
    for (i, l) in loads.iter().enumerate() {
        if *l <= 0.0 {
            continue;
        }
        acc += l;
        last = Some(i);
        if r < acc {
            return Some(i);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(r: &str, z: &str) -> Locality {
        Locality {
            region: r.into(),
            zone: z.into(),
        }
    }

    #[test]
    fn priorities_by_zone_region_and_failover_order() {
        let me = loc("eu-west", "eu-west-a");
        let fo = vec!["eu-central".to_string(), "us-east".to_string()];
        assert_eq!(priority(&me, &loc("eu-west", "eu-west-a"), &fo), 0);
        assert_eq!(priority(&me, &loc("eu-west", "eu-west-b"), &fo), 1);
        assert_eq!(priority(&me, &loc("eu-central", "x"), &fo), 2);
        assert_eq!(priority(&me, &loc("us-east", "x"), &fo), 3);
        assert_eq!(priority(&me, &loc("ap-south", "x"), &fo), 4);
        assert_eq!(priority(&me, &loc("us-east", "x"), &[]), 2);
        assert_eq!(priority(&loc("", ""), &loc("us-east", "x"), &fo), 0);
        assert_eq!(priority(&loc("eu-west", ""), &loc("eu-west", "b"), &fo), 0);
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn healthy_local_priority_takes_everything() {
        assert!(close(&priority_loads(&[(3, 3), (2, 2)], 1.4), &[1.0, 0.0]));
        // 3 of 4 healthy * 1.4 = 1.05 >= 1: still all local.
        assert!(close(&priority_loads(&[(3, 4), (2, 2)], 1.4), &[1.0, 0.0]));
    }

    #[test]
    fn degraded_priority_spills_over() {
        // 1 of 2 healthy * 1.4 = 0.7 local, 0.3 to the next.
        assert!(close(&priority_loads(&[(1, 2), (2, 2)], 1.4), &[0.7, 0.3]));
        // Nothing healthy locally: all to the next.
        assert!(close(
            &priority_loads(&[(0, 2), (2, 2), (1, 1)], 1.4),
            &[0.0, 1.0, 0.0]
        ));
        // Spill across three levels.
        assert!(close(
            &priority_loads(&[(1, 4), (1, 4), (1, 1)], 1.4),
            &[0.35, 0.35, 0.3]
        ));
    }

    #[test]
    fn too_little_health_everywhere_normalises() {
        let l = priority_loads(&[(1, 10), (1, 10)], 1.4);
        assert!(close(&l, &[0.5, 0.5]));
        assert!(close(&priority_loads(&[(0, 3), (0, 1)], 1.4), &[0.0, 0.0]));
        assert!(close(&priority_loads(&[], 1.4), &[]));
    }

    #[test]
    fn choosing_a_priority_follows_the_loads() {
        let loads = [0.7, 0.0, 0.3];
        assert_eq!(choose_priority(&loads, 0.0), Some(0));
        assert_eq!(choose_priority(&loads, 0.69), Some(0));
        assert_eq!(choose_priority(&loads, 0.7), Some(2));
        assert_eq!(choose_priority(&loads, 0.999_999_999_999), Some(2));
        assert_eq!(choose_priority(&[0.0, 0.0], 0.5), None);
    }
}
