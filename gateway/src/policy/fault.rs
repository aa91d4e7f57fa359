//! Fault injection: delay and abort, each applied to a percentage of
//! requests.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortStatus {
    Http(u16),
    /// Answered as a trailers-only gRPC response with this grpc-status.
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(AbortStatus, f64)>,
}

/// What fault injection does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<AbortStatus>,
}

impl Fault {
    /// `r_delay` and `r_abort` are independent uniforms in [0, 1).
    pub fn decide(&self, r_delay: f64, r_abort: f64) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .and_then(|(d, pct)| (r_delay * 100.0 < pct).then_some(d)),
            abort: self
                .abort
                .and_then(|(s, pct)| (r_abort * 100.0 < pct).then_some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_select_the_right_share() {
        let f = Fault {
            delay: Some((Duration::from_millis(5), 25.0)),
            abort: Some((AbortStatus::Http(503), 100.0)),
        };
        let n = 1000;
        let delayed = (0..n)
            .filter(|i| f.decide(*i as f64 / n as f64, 0.5).delay.is_some())
            .count();
        assert_eq!(delayed, 250);
        assert_eq!(f.decide(0.99, 0.999).abort, Some(AbortStatus::Http(503)));
        let never = Fault {
            delay: Some((Duration::from_secs(1), 0.0)),
            abort: Some((AbortStatus::Grpc(14), 0.0)),
        };
        assert_eq!(never.decide(0.0, 0.0), FaultDecision::default());
    }
}
