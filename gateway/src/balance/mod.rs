//! Endpoint selection. `pick` is a pure function over a view of a service's
//! endpoints (their priority, availability, weight and outstanding
//! requests): locality priorities with spill-over first, then the policy
//! (power-of-two-choices least-request, round robin, or ring hash) within
//! the chosen priority. Outlier state and in-flight counters live in
//! `proxy::cluster`; this module only decides.

pub mod locality;
pub mod outlier;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    LeastRequest,
    RoundRobin,
    RingHash,
}

/// What balancing needs to know about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointView {
    /// Locality priority, 0 best.
    pub priority: usize,
    /// Healthy and not ejected.
    pub available: bool,
    pub weight: u32,
    /// Requests (or connections) outstanding.
    pub in_flight: usize,
}

/// A consistent-hash ring over endpoint indices (Ketama style: each
/// endpoint owns points in proportion to its weight).
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

const POINTS_PER_WEIGHT: u32 = 64;

impl Ring {
    /// `keys` are stable endpoint identities (their addresses), `weights`
    /// their weights, index-aligned.
    pub fn build(keys: &[String], weights: &[u32]) -> Self {
        let mut points = Vec::new();
        for (i, (key, w)) in keys.iter().zip(weights).enumerate() {
            for n in 0..(w.max(&1) * POINTS_PER_WEIGHT) {
                points.push((hash_str(&format!("{key}#{n}")), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Endpoint indices in ring order starting at `hash`.
    fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < hash);
        self.points[start..]
            .iter()
            .chain(&self.points[..start])
            .map(|(_, i)| *i)
    }
}

/// FNV-1a followed by a splitmix64 finaliser: stable across processes and
/// versions (unlike std's RandomState), well spread.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub struct PickInput<'a> {
    pub endpoints: &'a [EndpointView],
    /// Endpoints already tried for this request; avoided while others exist.
    pub exclude: &'a [usize],
    pub policy: Policy,
    pub overprovisioning: f64,
    /// The request's hash key, for RingHash.
    pub hash: Option<u64>,
    pub ring: Option<&'a Ring>,
    /// A counter that advances per pick, for RoundRobin.
    pub rr_counter: usize,
}

/// Chooses an endpoint index, or None when the service has no endpoints.
/// When nothing is available the choice ignores health (panic mode), as
/// Envoy does, so a fully ejected service still gets a chance.
pub fn pick<R: Rng + ?Sized>(input: &PickInput<'_>, rng: &mut R) -> Option<usize> {
    let eps = input.endpoints;
    // Fast path, the common case: nothing to avoid, one locality level,
    // everything available. Same choice as below, without the bookkeeping.
    if input.exclude.is_empty()
        && let Some(first) = eps.first()
        && eps
            .iter()
            .all(|e| e.available && e.weight > 0 && e.priority == first.priority)
    {
        if eps.len() == 1 {
            return Some(0);
        }
        let all: Vec<usize> = (0..eps.len()).collect();
        return choose(input, &all, eps, rng);
    }
    let mut candidates: Vec<usize> = (0..eps.len())
        .filter(|i| !input.exclude.contains(i) && eps[*i].weight > 0)
        .collect();
    if candidates.is_empty() {
        candidates = (0..eps.len()).filter(|i| eps[*i].weight > 0).collect();
    }
    if candidates.is_empty() {
        return None;
    }
    let levels = candidates
        .iter()
        .map(|i| eps[*i].priority)
        .max()
        .unwrap_or(0)
        + 1;
    let mut counts = vec![(0usize, 0usize); levels];
    for &i in &candidates {
        let c = &mut counts[eps[i].priority];
        c.1 += 1;
        if eps[i].available {
            c.0 += 1;
        }
    }
    let mut loads = locality::priority_loads(&counts, input.overprovisioning);
    let panic = loads.iter().all(|l| *l <= 0.0);
    if panic {
        let all: Vec<(usize, usize)> = counts.iter().map(|c| (c.1, c.1)).collect();
        loads = locality::priority_loads(&all, input.overprovisioning);
    }
    let level = locality::choose_priority(&loads, rng.random::<f64>())?;
    let set: Vec<usize> = candidates
        .into_iter()
        .filter(|i| eps[*i].priority == level && (panic || eps[*i].available))
        .collect();
    if set.is_empty() {
        return None;
    }
    choose(input, &set, eps, rng)
}

/// Applies the policy within one set of eligible endpoints.
fn choose<R: Rng + ?Sized>(
    input: &PickInput<'_>,
    set: &[usize],
    eps: &[EndpointView],
    rng: &mut R,
) -> Option<usize> {
    match input.policy {
        Policy::RoundRobin => Some(set[input.rr_counter % set.len()]),
        Policy::RingHash => match (input.hash, input.ring) {
            (Some(h), Some(ring)) => ring
                .walk(h)
                .find(|i| set.contains(i))
                .or_else(|| weighted(set, eps, rng)),
            _ => weighted(set, eps, rng),
        },
        Policy::LeastRequest => {
            if set.len() == 1 {
                return Some(set[0]);
            }
            let a = weighted(set, eps, rng)?;
            let rest: Vec<usize> = set.iter().copied().filter(|i| *i != a).collect();
            let b = weighted(&rest, eps, rng)?;
            Some(if eps[b].in_flight < eps[a].in_flight {
                b
            } else {
                a
            })
        }
    }
}

fn weighted<R: Rng + ?Sized>(set: &[usize], eps: &[EndpointView], rng: &mut R) -> Option<usize> {
    let total: u64 = set.iter().map(|i| u64::from(eps[*i].weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for &i in set {
        let w = u64::from(eps[i].weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ep(priority: usize, available: bool, in_flight: usize) -> EndpointView {
        EndpointView {
            priority,
            available,
            weight: 1,
            in_flight,
        }
    }

    fn input<'a>(eps: &'a [EndpointView], policy: Policy) -> PickInput<'a> {
        PickInput {
            endpoints: eps,
            exclude: &[],
            policy,
            overprovisioning: 1.4,
            hash: None,
            ring: None,
            rr_counter: 0,
        }
    }

    fn histogram(
        eps: &[EndpointView],
        inp: impl Fn(usize) -> PickInput<'static>,
        n: usize,
    ) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut h = vec![0; eps.len()];
        for k in 0..n {
            h[pick(&inp(k), &mut rng).unwrap()] += 1;
        }
        h
    }

    fn leak(v: Vec<EndpointView>) -> &'static [EndpointView] {
        Box::leak(v.into_boxed_slice())
    }

    #[test]
    fn round_robin_cycles_through_available_endpoints() {
        let eps = [ep(0, true, 0), ep(0, false, 0), ep(0, true, 0)];
        let mut rng = StdRng::seed_from_u64(1);
        let picks: Vec<usize> = (0..4)
            .map(|k| {
                let mut i = input(&eps, Policy::RoundRobin);
                i.rr_counter = k;
                pick(&i, &mut rng).unwrap()
            })
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let eps = leak(vec![ep(0, true, 10), ep(0, true, 0)]);
        let h = histogram(eps, |_| input(eps, Policy::LeastRequest), 1000);
        assert_eq!(
            h,
            vec![0, 1000],
            "with two endpoints both are always compared"
        );
        let three = leak(vec![ep(0, true, 5), ep(0, true, 0), ep(0, true, 9)]);
        let h = histogram(three, |_| input(three, Policy::LeastRequest), 3000);
        assert_eq!(h[2], 0, "the busiest never wins a comparison");
        assert!(h[1] > h[0], "{h:?}");
    }

    #[test]
    fn local_zone_first_and_spill_over_when_degraded() {
        // Two local (one ejected), two in the region.
        let eps = leak(vec![
            ep(0, true, 0),
            ep(0, false, 0),
            ep(1, true, 0),
            ep(1, true, 0),
        ]);
        let h = histogram(eps, |_| input(eps, Policy::LeastRequest), 10_000);
        // 1/2 healthy * 1.4 = 70% local.
        assert_eq!(h[1], 0);
        assert!((6700..7300).contains(&h[0]), "{h:?}");
        assert!((2700..3300).contains(&(h[2] + h[3])), "{h:?}");

        let healthy = leak(vec![ep(0, true, 0), ep(1, true, 0), ep(2, true, 0)]);
        let h = histogram(healthy, |_| input(healthy, Policy::RoundRobin), 100);
        assert_eq!(h, vec![100, 0, 0]);
    }

    #[test]
    fn everything_down_is_panic_mode_not_failure() {
        let eps = leak(vec![ep(0, false, 0), ep(1, false, 0)]);
        let h = histogram(eps, |_| input(eps, Policy::LeastRequest), 100);
        assert_eq!(h, vec![100, 0], "panic mode still honours priority");
        let none: [EndpointView; 0] = [];
        assert_eq!(
            pick(
                &input(&none, Policy::RoundRobin),
                &mut StdRng::seed_from_u64(0)
            ),
            None
        );
    }

    #[test]
    fn retries_avoid_tried_endpoints_while_others_exist() {
        let eps = leak(vec![ep(0, true, 0), ep(0, true, 0), ep(0, true, 0)]);
        let mut rng = StdRng::seed_from_u64(3);
        for policy in [Policy::LeastRequest, Policy::RoundRobin, Policy::RingHash] {
            for k in 0..50 {
                let mut i = input(eps, policy);
                i.exclude = &[0, 2];
                i.rr_counter = k;
                assert_eq!(pick(&i, &mut rng), Some(1), "{policy:?}");
            }
        }
        let one = leak(vec![ep(0, true, 0)]);
        let mut i = input(one, Policy::LeastRequest);
        i.exclude = &[0];
        assert_eq!(pick(&i, &mut rng), Some(0), "the only endpoint is retried");
    }

    #[test]
    fn retry_fails_over_to_the_next_locality() {
        // The local endpoint was tried; the retry goes to the next priority.
        let eps = leak(vec![ep(0, true, 0), ep(2, true, 0)]);
        let mut i = input(eps, Policy::LeastRequest);
        i.exclude = &[0];
        assert_eq!(pick(&i, &mut StdRng::seed_from_u64(1)), Some(1));
    }

    #[test]
    fn weights_shape_the_choice() {
        let eps = leak(vec![
            EndpointView {
                weight: 3,
                ..ep(0, true, 0)
            },
            EndpointView {
                weight: 1,
                ..ep(0, true, 0)
            },
            EndpointView {
                weight: 0,
                ..ep(0, true, 0)
            },
        ]);
        let mut rng = StdRng::seed_from_u64(11);
        let mut h = [0; 3];
        for _ in 0..8000 {
            h[weighted(&[0, 1, 2], eps, &mut rng).unwrap()] += 1;
        }
        assert_eq!(h[2], 0);
        assert!((5700..6300).contains(&h[0]), "{h:?}");
    }

    #[test]
    fn ring_hash_is_sticky_and_moves_little_when_an_endpoint_goes() {
        let keys: Vec<String> = (0..4).map(|i| format!("10.0.0.{i}:80")).collect();
        let ring = Ring::build(&keys, &[1, 1, 1, 1]);
        let eps = leak(vec![ep(0, true, 0); 4]);
        let mut rng = StdRng::seed_from_u64(5);
        let pick_for = |user: &str, eps: &[EndpointView], rng: &mut StdRng| {
            let mut i = input(eps, Policy::RingHash);
            i.hash = Some(hash_str(user));
            i.ring = Some(&ring);
            pick(&i, rng).unwrap()
        };
        let users: Vec<String> = (0..400).map(|u| format!("user-{u}")).collect();
        let before: Vec<usize> = users.iter().map(|u| pick_for(u, eps, &mut rng)).collect();
        let again: Vec<usize> = users.iter().map(|u| pick_for(u, eps, &mut rng)).collect();
        assert_eq!(before, again, "same key, same endpoint");
        let mut spread = [0; 4];
        for b in &before {
            spread[*b] += 1;
        }
        assert!(spread.iter().all(|c| (50..150).contains(c)), "{spread:?}");
        // Eject endpoint 2: only its users move.
        let mut down = eps.to_vec();
        down[2].available = false;
        for (u, b) in users.iter().zip(&before) {
            let now = pick_for(u, &down, &mut rng);
            if *b != 2 {
                assert_eq!(now, *b, "{u} moved although its endpoint is up");
            } else {
                assert_ne!(now, 2);
            }
        }
    }
}
