//! The attempt loop's decision, one for every loop that tries endpoints
//! in turn: HTTP requests under a route's retry policy, opaque TCP
//! connects, and the east-west gateway joining a CONNECT to a local
//! endpoint. The loops do the I/O (pick an endpoint that was not tried,
//! attempt, tell the outlier detector, sleep the backoff); this says what
//! comes next from what happened, as plain data.
//!
//! Rules, in order:
//! 0. An HTTP attempt that reached no application (a connect failure, or
//!    an answer that says no application saw the request: our gateway
//!    refusing the CONNECT, the remote sidecar unable to reach its app)
//!    *moves*: it is sent at once to an endpoint not tried yet (another
//!    cluster or pod, never the one that just failed), whatever its method
//!    and whatever the route's policy, since no application saw it. At
//!    most `MOVES` per request, each asked of the moves budget; when the
//!    request cannot be sent again, nothing else is left, or the moves are
//!    spent, the route's rules below decide it as any other outcome.
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

/// Moves per HTTP request (rule 0): with three clusters serving a
/// service, two lost at once still leave the request a live one.
pub const MOVES: u32 = 2;

/// What the loop retries, and how often.
#[derive(Debug, Clone, Copy)]
pub enum Plan<'a> {
    /// A route's retry policy (none: one try, plus moves).
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
    /// Try again (another endpoint if there is one) after this long.
    Retry {
        backoff: Duration,
    },
    /// Send at once to the endpoint `Ask::another_endpoint` found.
    Move,
}

/// What the loop knows, asked only when it decides, in the rules' order:
/// some answers cost something (a pick, a withdrawal from a budget).
pub trait Ask {
    /// The request can be sent again (HTTP: its body was kept whole).
    fn replayable(&mut self) -> bool;
    /// An endpoint not tried yet can be chosen; the loop keeps it for the
    /// next try.
    fn another_endpoint(&mut self) -> bool;
    /// The moves budget allows one more (asking spends it).
    fn move_budget(&mut self) -> bool;
    /// The route's retry budget allows one more (asking spends it).
    fn budget(&mut self) -> bool;
    /// Uniform in [0, 1), for the backoff's jitter.
    fn jitter(&mut self) -> f64;
}

/// The inputs of a connect plan: nothing to replay, no budget, no jitter.
struct ConnectAsk;

impl Ask for ConnectAsk {
    fn replayable(&mut self) -> bool {
        true
    }
    fn another_endpoint(&mut self) -> bool {
        true
    }
    fn move_budget(&mut self) -> bool {
        true
    }
    fn budget(&mut self) -> bool {
        true
    }
    fn jitter(&mut self) -> f64 {
        0.0
    }
}

/// Where a loop stands: its plan and the retries and moves made so far.
#[derive(Debug, Clone)]
pub struct Attempts<'a> {
    plan: Plan<'a>,
    retries: u32,
    moves: u32,
}

impl<'a> Attempts<'a> {
    pub fn new(plan: Plan<'a>) -> Self {
        Self {
            plan,
            retries: 0,
            moves: 0,
        }
    }

    /// After a failed connect: whether to try another endpoint.
    pub fn retry_connect(&mut self) -> bool {
        matches!(
            self.next(Outcome::ConnectFailure, &mut ConnectAsk),
            Action::Retry { .. }
        )
    }

    /// Retries decided so far (moves not counted).
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Moves decided so far.
    pub fn moves(&self) -> u32 {
        self.moves
    }

    /// The next step after an attempt ended in `outcome` (the rules in the
    /// module comment).
    pub fn next(&mut self, outcome: Outcome, ask: &mut impl Ask) -> Action {
        if let Plan::Http(_) = self.plan
            && outcome.reached_no_application()
            && self.moves < MOVES
            && ask.replayable()
            && ask.another_endpoint()
            && ask.move_budget()
        {
            self.moves += 1;
            return Action::Move;
        }
        let backoff = match self.plan {
            Plan::Http(None) => return Action::Stop(Stop::Final),
            Plan::Http(Some(policy)) => {
                if !policy.is_retriable(outcome) {
                    return Action::Stop(Stop::Final);
                }
                if self.retries >= policy.attempts {
                    return Action::Stop(Stop::Exhausted);
                }
                if !ask.replayable() {
                    return Action::Stop(Stop::NotReplayable);
                }
                if !ask.budget() {
                    return Action::Stop(Stop::BudgetExhausted);
                }
                policy.backoff(self.retries, ask.jitter())
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

    const OUTCOMES: [Outcome; 8] = [
        Outcome::ConnectFailure,
        Outcome::Unprocessed,
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

    /// Answers as scripted and records what was asked, in order.
    #[derive(Default)]
    struct Script {
        replayable: bool,
        another: bool,
        move_budget: bool,
        budget: bool,
        asked: Vec<&'static str>,
    }

    impl Script {
        fn all(yes: bool) -> Self {
            Self {
                replayable: yes,
                another: yes,
                move_budget: yes,
                budget: yes,
                asked: Vec::new(),
            }
        }
    }

    impl Ask for Script {
        fn replayable(&mut self) -> bool {
            self.asked.push("replayable");
            self.replayable
        }
        fn another_endpoint(&mut self) -> bool {
            self.asked.push("another");
            self.another
        }
        fn move_budget(&mut self) -> bool {
            self.asked.push("move_budget");
            self.move_budget
        }
        fn budget(&mut self) -> bool {
            self.asked.push("budget");
            self.budget
        }
        fn jitter(&mut self) -> f64 {
            self.asked.push("jitter");
            0.5
        }
    }

    /// Every outcome, for every state of the inputs, with and without a
    /// route policy: the rules in the module comment, and each input asked
    /// only when it decides, in the rules' order.
    #[test]
    fn http_decisions_follow_the_rules_in_order() {
        let p = policy(2);
        for route in [None, Some(&p)] {
            for outcome in OUTCOMES {
                for moves in 0..=MOVES {
                    for retries in 0..4u32 {
                        for bits in 0..16u8 {
                            let mut ask = Script {
                                replayable: bits & 1 != 0,
                                another: bits & 2 != 0,
                                move_budget: bits & 4 != 0,
                                budget: bits & 8 != 0,
                                asked: Vec::new(),
                            };
                            let mut a = Attempts::new(Plan::Http(route));
                            a.retries = retries;
                            a.moves = moves;
                            let got = a.next(outcome, &mut ask);
                            let case = format!(
                                "{outcome:?} policy={} moves={moves} retries={retries} replayable={} another={} move_budget={} budget={}",
                                route.is_some(),
                                ask.replayable,
                                ask.another,
                                ask.move_budget,
                                ask.budget
                            );
                            // Rule 0, and what it asked.
                            let mut asked = Vec::new();
                            let may_move = outcome.reached_no_application() && moves < MOVES;
                            if may_move {
                                asked.push("replayable");
                                if ask.replayable {
                                    asked.push("another");
                                    if ask.another {
                                        asked.push("move_budget");
                                    }
                                }
                            }
                            let moved =
                                may_move && ask.replayable && ask.another && ask.move_budget;
                            let want = if moved {
                                Action::Move
                            } else {
                                match route {
                                    None => Action::Stop(Stop::Final),
                                    Some(p) if !p.is_retriable(outcome) => {
                                        Action::Stop(Stop::Final)
                                    }
                                    Some(_) if retries >= 2 => Action::Stop(Stop::Exhausted),
                                    Some(p) => {
                                        asked.push("replayable");
                                        if !ask.replayable {
                                            Action::Stop(Stop::NotReplayable)
                                        } else {
                                            asked.push("budget");
                                            if !ask.budget {
                                                Action::Stop(Stop::BudgetExhausted)
                                            } else {
                                                asked.push("jitter");
                                                Action::Retry {
                                                    backoff: p.backoff(retries, 0.5),
                                                }
                                            }
                                        }
                                    }
                                }
                            };
                            assert_eq!(got, want, "{case}");
                            assert_eq!(ask.asked, asked, "asked, in order: {case}");
                            assert_eq!(a.moves(), moves + u32::from(moved), "{case}");
                            let retried = matches!(want, Action::Retry { .. });
                            assert_eq!(a.retries(), retries + u32::from(retried), "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn without_a_policy_only_requests_no_application_saw_are_sent_again() {
        for outcome in OUTCOMES {
            let mut a = Attempts::new(Plan::Http(None));
            let got = a.next(outcome, &mut Script::all(true));
            let want = if outcome.reached_no_application() {
                Action::Move
            } else {
                Action::Stop(Stop::Final)
            };
            assert_eq!(got, want, "{outcome:?}");
        }
    }

    /// A request no application saw moves `MOVES` times at once, then the
    /// route's policy takes over with its own count and backoff.
    #[test]
    fn moves_come_first_and_then_the_routes_retries() {
        let p = policy(1);
        let mut a = Attempts::new(Plan::Http(Some(&p)));
        let mut ask = Script::all(true);
        let mut actions = Vec::new();
        loop {
            match a.next(Outcome::ConnectFailure, &mut ask) {
                Action::Stop(why) => {
                    assert_eq!(why, Stop::Exhausted);
                    break;
                }
                action => actions.push(action),
            }
        }
        assert_eq!(actions.len() as u32, MOVES + 1, "{actions:?}");
        assert!(actions[..MOVES as usize].iter().all(|a| *a == Action::Move));
        assert!(matches!(actions[MOVES as usize], Action::Retry { .. }));
    }

    #[test]
    fn a_route_retries_exactly_its_attempts_with_growing_capped_backoff() {
        let p = policy(3);
        let mut a = Attempts::new(Plan::Http(Some(&p)));
        let mut backoffs = Vec::new();
        let mut ask = Script::all(true);
        loop {
            ask.asked.clear();
            match a.next(status(503), &mut ask) {
                Action::Retry { backoff } => backoffs.push(backoff),
                Action::Move => panic!("a 503 from an application does not move"),
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
            a.next(status(503), &mut Script::all(true)),
            Action::Stop(Stop::Final)
        );
    }

    #[test]
    fn connects_retry_connect_failures_only_at_once_up_to_their_tries() {
        for tries in 1..5u32 {
            let mut a = Attempts::new(Plan::Connect { tries });
            let mut made = 1;
            while let Action::Retry { backoff } = a.next(Outcome::ConnectFailure, &mut ConnectAsk) {
                assert_eq!(backoff, Duration::ZERO);
                made += 1;
            }
            assert_eq!(made, tries, "{tries} tries in all");
            assert_eq!(a.moves(), 0, "connect plans retry, they do not move");
        }
        for outcome in OUTCOMES
            .into_iter()
            .filter(|o| *o != Outcome::ConnectFailure)
        {
            let mut a = Attempts::new(Plan::Connect { tries: 3 });
            assert_eq!(
                a.next(outcome, &mut ConnectAsk),
                Action::Stop(Stop::Final),
                "{outcome:?}"
            );
        }
    }
}
