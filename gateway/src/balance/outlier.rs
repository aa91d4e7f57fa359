//! Outlier detection: an endpoint that returns consecutive 5xx or gateway
//! errors is ejected for a time that grows with each repeat; a cap limits
//! the share of a service's endpoints ejected at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierSettings {
    /// 0 disables.
    pub consecutive_5xx: u32,
    /// 0 disables.
    pub consecutive_gateway_errors: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub enabled: bool,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            enabled: true,
        }
    }
}

impl OutlierSettings {
    /// How many of `total` endpoints may be ejected at once: the percentage,
    /// but always at least one.
    pub fn max_ejected(&self, total: usize) -> usize {
        ((total * self.max_ejection_percent as usize) / 100).max(1)
    }
}

/// What an attempt told us about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Success,
    /// 500 or 501 or any 5xx other than the gateway codes.
    ServerError,
    /// Connect failure, reset, timeout, 502, 503, 504.
    GatewayError,
}

impl Observation {
    pub fn from_status(status: u16) -> Self {
        match status {
            502..=504 => Self::GatewayError,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl OutlierState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// The endpoint's own health check says it is back (health at the
    /// source, or a linked cluster's healthy count): the ejection ends now
    /// and the error streaks start over, as Envoy un-ejects on a passing
    /// active health check. The ejection count stays, so a flapping
    /// endpoint is still ejected for longer each time.
    pub fn health_returned(&mut self) {
        self.ejected_until = None;
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
    }

    /// Records an observation; returns true when it ejects the endpoint.
    /// `may_eject` says whether the service is below its ejection cap; it
    /// is asked only when this observation would eject.
    pub fn observe(
        &mut self,
        o: Observation,
        now: Instant,
        s: &OutlierSettings,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        if !s.enabled {
            return false;
        }
        match o {
            Observation::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                // A long healthy stretch after the last ejection forgets it.
                if let Some(until) = self.ejected_until
                    && now.saturating_duration_since(until) >= s.max_ejection_time
                {
                    self.ejected_until = None;
                    self.times_ejected = 0;
                }
                return false;
            }
            Observation::ServerError => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway = 0;
            }
            Observation::GatewayError => {
                // Gateway errors are 5xx too.
                self.consecutive_5xx += 1;
                self.consecutive_gateway += 1;
            }
        }
        let tripped = (s.consecutive_5xx > 0 && self.consecutive_5xx >= s.consecutive_5xx)
            || (s.consecutive_gateway_errors > 0
                && self.consecutive_gateway >= s.consecutive_gateway_errors);
        if !tripped || self.is_ejected(now) || !may_eject() {
            return false;
        }
        self.times_ejected += 1;
        let time = s
            .base_ejection_time
            .saturating_mul(self.times_ejected)
            .min(s.max_ejection_time.max(s.base_ejection_time));
        // A far-future end (absurd settings) means ejected until restart.
        self.ejected_until = Some(
            now.checked_add(time)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        );
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> OutlierSettings {
        OutlierSettings {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
            enabled: true,
        }
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets_the_count() {
        let t = Instant::now();
        let mut o = OutlierState::default();
        assert!(!o.observe(Observation::ServerError, t, &s(), || true));
        assert!(!o.observe(Observation::ServerError, t, &s(), || true));
        assert!(!o.observe(Observation::Success, t, &s(), || true));
        assert!(!o.observe(Observation::ServerError, t, &s(), || true));
        assert!(!o.observe(Observation::ServerError, t, &s(), || true));
        assert!(o.observe(Observation::ServerError, t, &s(), || true));
        assert!(o.is_ejected(t + Duration::from_secs(9)));
        assert!(!o.is_ejected(t + Duration::from_secs(10)));
    }

    #[test]
    fn gateway_errors_trip_their_own_threshold() {
        let t = Instant::now();
        let mut o = OutlierState::default();
        assert!(!o.observe(Observation::GatewayError, t, &s(), || true));
        assert!(o.observe(Observation::GatewayError, t, &s(), || true));
    }

    #[test]
    fn ejection_time_grows_with_repeats_up_to_the_max() {
        let mut t = Instant::now();
        let mut o = OutlierState::default();
        let mut times = vec![];
        for _ in 0..4 {
            o.observe(Observation::GatewayError, t, &s(), || true);
            assert!(o.observe(Observation::GatewayError, t, &s(), || true));
            let mut d = Duration::ZERO;
            while o.is_ejected(t + d) {
                d += Duration::from_secs(1);
            }
            times.push(d.as_secs());
            t += d;
        }
        assert_eq!(times, vec![10, 20, 25, 25]);
        assert_eq!(o.times_ejected(), 4);
    }

    #[test]
    fn cap_prevents_ejection_and_a_healthy_stretch_forgets() {
        let t = Instant::now();
        let mut o = OutlierState::default();
        o.observe(Observation::GatewayError, t, &s(), || false);
        assert!(!o.observe(Observation::GatewayError, t, &s(), || false));
        assert!(!o.is_ejected(t));
        // Now allowed: the next error ejects.
        assert!(o.observe(Observation::GatewayError, t, &s(), || true));
        let after = t + Duration::from_secs(10) + Duration::from_secs(25);
        o.observe(Observation::Success, after, &s(), || true);
        assert_eq!(o.times_ejected(), 0);
    }

    #[test]
    fn disabled_never_ejects_and_cap_is_at_least_one() {
        let t = Instant::now();
        let off = OutlierSettings {
            enabled: false,
            ..s()
        };
        let mut o = OutlierState::default();
        for _ in 0..10 {
            assert!(!o.observe(Observation::GatewayError, t, &off, || true));
        }
        let d = OutlierSettings::default();
        assert_eq!(d.max_ejected(3), 1);
        assert_eq!(d.max_ejected(30), 3);
        assert_eq!(s().max_ejected(5), 2);
        assert_eq!(Observation::from_status(503), Observation::GatewayError);
        assert_eq!(Observation::from_status(500), Observation::ServerError);
        assert_eq!(Observation::from_status(404), Observation::Success);
    }

    #[test]
    fn a_returned_health_check_ends_the_ejection_but_keeps_the_count() {
        let s = OutlierSettings {
            consecutive_gateway_errors: 1,
            ..OutlierSettings::default()
        };
        let t0 = Instant::now();
        let mut o = OutlierState::default();
        assert!(o.observe(Observation::GatewayError, t0, &s, || true));
        assert!(o.is_ejected(t0));
        o.health_returned();
        assert!(!o.is_ejected(t0));
        assert_eq!(o.times_ejected(), 1);
        assert!(o.observe(Observation::GatewayError, t0, &s, || true));
        assert!(
            o.is_ejected(t0 + s.base_ejection_time),
            "the second ejection lasts twice as long"
        );
    }
}
