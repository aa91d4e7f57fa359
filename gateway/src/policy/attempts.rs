//! The attempt loop's decision, one for every loop that tries endpoints
//! in turn: HTTP requests under a route's retry policy, opaque TCP
//! connects, and the east-west gateway joining a CONNECT to a local
//! endpoint. The loops do the I/O (pick an endpoint that was not tried,
//! attempt, tell the outlier detector, sleep the backoff); this says what
//! comes next from what happened, as plain data.
//!
//! Rules, in order:
//! 1. A success, or an outcome the plan does not retry, is final.
//! 2. No tries left (a route's `attempts` retries after the first try; a
//!    connect plan's total tries) is final: `Exhausted`.
//! 3. An HTTP request whose body cannot be replayed (too large to keep,
//!    not fully sent) is final: `NotReplayable`.
//! 4. Then, and only then, the retry budget is asked (asking spends it):
//!    none left is final, `BudgetExhausted`.
//! 5. Otherwise try again after the backoff: full jitter under the
//!    route's exponential cap for HTTP, none for connects (another
//!    endpoint is tried at once, as Envoy's TCP proxy does).

use std::time::Duration;

use super::retry::{Outcome, RetrySettings};

/// Endpoints tried per TCP connection or east-west CONNECT before it is
/// refused (each another endpoint while there are others).
pub const CONNECT_TRIES: u32 = 3;

/// What the loop retries, and how often.
#[derive(Debug, Clone, Copy)]
pub enum Plan<'a> {
    /// A route's retry policy (none: one try).
    Http(Option<&'a RetrySettings>),
    /// Connect failures only, on other endpoints, at most `tries` in all.
    Connect { tries: u32 },
}

/// Why the loop stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The outcome stands: a success, or nothing the plan retries.
    Final,
    /// The plan's tries are used up.
    Exhausted,
    /// The request body cannot be sent again.
    NotReplayable,
    /// The route's retry budget has nothing left.
    BudgetExhausted,
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop(Stop),
    /// Try another endpoint after this long.
    Retry {
        backoff: Duration,
    },
}

/// Where a loop stands: its plan and the retries made so far.
#[derive(Debug, Clone)]
pub struct Attempts<'a> {
    plan: Plan<'a>,
    retries: u32,
}

impl<'a> Attempts<'a> {
    pub fn new(plan: Plan<'a>) -> Self {
        Self { plan, retries: 0 }
    }

    /// After a failed connect: whether to try another endpoint.
    pub fn retry_connect(&mut self) -> bool {
        matches!(
            self.next(Outcome::ConnectFailure, || true, || true, || 0.0),
            Action::Retry { .. }
        )
    }

    /// Retries decided so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The next step after an attempt ended in `outcome`. The inputs that
    /// cost something are asked only when they decide, in the rules'
    /// order: `replayable` (the request can be sent again), then `budget`
    /// (asking withdraws from it), then `jitter` (in [0, 1)).
    pub fn next(
        &mut self,
        outcome: Outcome,
        replayable: impl FnOnce() -> bool,
        budget: impl FnOnce() -> bool,
        jitter: impl FnOnce() -> f64,
    ) -> Action {
        let backoff = match self.plan {
            Plan::Http(None) => return Action::Stop(Stop::Final),
            Plan::Http(Some(policy)) => {
                if !policy.is_retriable(outcome) {
                    return Action::Stop(Stop::Final);
                }
                if self.retries >= policy.attempts {
                    return Action::Stop(Stop::Exhausted);
                }
                if !replayable() {
                    return Action::Stop(Stop::NotReplayable);
                }
                if !budget() {
                    return Action::Stop(Stop::BudgetExhausted);
                }
                policy.backoff(self.retries, jitter())
            }
            Plan::Connect { tries } => {
                if outcome != Outcome::ConnectFailure {
                    return Action::Stop(Stop::Final);
                }
                if self.retries + 1 >= tries {
                    return Action::Stop(Stop::Exhausted);
                }
                Duration::ZERO
            }
        };
        self.retries += 1;
        Action::Retry { backoff }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::retry::{BudgetSettings, RetryOn};
    use http::StatusCode;

    fn policy(attempts: u32) -> RetrySettings {
        RetrySettings {
            attempts,
            per_try_timeout: None,
            retry_on: RetrySettings::DEFAULT_RETRY_ON.to_vec(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: BudgetSettings::default(),
        }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc_status: None,
        }
    }

    const OUTCOMES: [Outcome; 7] = [
        Outcome::ConnectFailure,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Response {
            status: StatusCode::OK,
            grpc_status: None,
        },
        Outcome::Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            grpc_status: None,
        },
        Outcome::Response {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            grpc_status: None,
        },
        Outcome::Response {
            status: StatusCode::OK,
            grpc_status: Some(14),
        },
    ];

    /// Every outcome, for every state of the inputs: the rules in the
    /// module comment, and the budget asked only when it decides.
    #[test]
    fn http_decisions_follow_the_rules_in_order() {
        let p = policy(2);
        for outcome in OUTCOMES {
            for retries in 0..4u32 {
                for replayable in [false, true] {
                    for budget_left in [false, true] {
                        let mut a = Attempts::new(Plan::Http(Some(&p)));
                        a.retries = retries;
                        let (mut asked_replay, mut asked) = (false, false);
                        let got = a.next(
                            outcome,
                            || {
                                asked_replay = true;
                                replayable
                            },
                            || {
                                asked = true;
                                budget_left
                            },
                            || 0.5,
                        );
                        let want = if !p.is_retriable(outcome) {
                            Action::Stop(Stop::Final)
                        } else if retries >= 2 {
                            Action::Stop(Stop::Exhausted)
                        } else if !replayable {
                            Action::Stop(Stop::NotReplayable)
                        } else if !budget_left {
                            Action::Stop(Stop::BudgetExhausted)
                        } else {
                            Action::Retry {
                                backoff: p.backoff(retries, 0.5),
                            }
                        };
                        assert_eq!(
                            got, want,
                            "{outcome:?} retries={retries} replayable={replayable} budget={budget_left}"
                        );
                        let up_to_replay = p.is_retriable(outcome) && retries < 2;
                        assert_eq!(
                            asked_replay, up_to_replay,
                            "replay asked only when it decides"
                        );
                        assert_eq!(
                            asked,
                            up_to_replay && replayable,
                            "budget asked only when it decides"
                        );
                        let counted = matches!(want, Action::Retry { .. });
                        assert_eq!(a.retries(), retries + u32::from(counted));
                    }
                }
            }
        }
    }

    #[test]
    fn without_a_policy_every_outcome_is_final_and_the_budget_untouched() {
        for outcome in OUTCOMES {
            let mut a = Attempts::new(Plan::Http(None));
            let got = a.next(
                outcome,
                || panic!("no replay without a policy"),
                || panic!("no budget without a policy"),
                || 0.0,
            );
            assert_eq!(got, Action::Stop(Stop::Final));
        }
    }

    #[test]
    fn a_route_retries_exactly_its_attempts_with_growing_capped_backoff() {
        let p = policy(3);
        let mut a = Attempts::new(Plan::Http(Some(&p)));
        let mut backoffs = Vec::new();
        loop {
            match a.next(status(503), || true, || true, || 0.999) {
                Action::Retry { backoff } => backoffs.push(backoff),
                Action::Stop(why) => {
                    assert_eq!(why, Stop::Exhausted);
                    break;
                }
            }
        }
        assert_eq!(backoffs.len(), 3, "3 retries after the first try");
        assert!(backoffs.windows(2).all(|w| w[0] <= w[1]), "{backoffs:?}");
        assert!(backoffs.iter().all(|b| *b <= p.backoff_max), "{backoffs:?}");
        // A retry-on list that does not name the outcome: final at once.
        let only_reset = RetrySettings {
            retry_on: vec![RetryOn::Reset],
            ..policy(3)
        };
        let mut a = Attempts::new(Plan::Http(Some(&only_reset)));
        assert_eq!(
            a.next(status(503), || true, || true, || 0.5),
            Action::Stop(Stop::Final)
        );
    }

    #[test]
    fn connects_retry_connect_failures_only_at_once_up_to_their_tries() {
        for tries in 1..5u32 {
            let mut a = Attempts::new(Plan::Connect { tries });
            let mut made = 1;
            while let Action::Retry { backoff } =
                a.next(Outcome::ConnectFailure, || true, || unreachable!(), || 0.5)
            {
                assert_eq!(backoff, Duration::ZERO);
                made += 1;
            }
            assert_eq!(made, tries, "{tries} tries in all");
        }
        for outcome in OUTCOMES
            .into_iter()
            .filter(|o| *o != Outcome::ConnectFailure)
        {
            let mut a = Attempts::new(Plan::Connect { tries: 3 });
            assert_eq!(
                a.next(outcome, || true, || unreachable!(), || 0.5),
                Action::Stop(Stop::Final),
                "{outcome:?}"
            );
        }
    }
}
