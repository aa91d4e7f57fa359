//! Retries: which outcomes are retriable, how long to back off, and the
//! budget that caps retries to a share of live requests (Linkerd's retry
//! budget), so retries cannot multiply load during an outage.

use std::time::{Duration, Instant};

use http::StatusCode;

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived with this status and, for gRPC, this grpc-status
    /// (from the headers of a trailers-only response).
    Response {
        status: StatusCode,
        grpc_status: Option<u32>,
    },
    /// The connection could not be established.
    ConnectFailure,
    /// An answer that says no application saw the request: the remote
    /// sidecar (over the mesh transport) could not reach its app, or was
    /// draining (`isthmus-unprocessed`).
    Unprocessed,
    /// The upstream reset or closed before sending response headers.
    Reset,
    /// The per-try timeout expired.
    Timeout,
}

impl Outcome {
    /// No application saw the request: sending it elsewhere is safe for
    /// any method.
    pub fn reached_no_application(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::Unprocessed)
    }
}

/// A condition from `retryOn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx, connect failure, reset or per-try timeout.
    ServerError,
    /// 502, 503, 504, connect failure, reset, per-try timeout.
    GatewayError,
    ConnectFailure,
    /// Reset or per-try timeout.
    Reset,
    /// 409.
    Retriable4xx,
    Grpc(u32),
    /// Exactly this HTTP status (Gateway API retry codes).
    Status(u16),
}

impl RetryOn {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "5xx" => Self::ServerError,
            "gateway-error" => Self::GatewayError,
            "connect-failure" => Self::ConnectFailure,
            "reset" => Self::Reset,
            "retriable-4xx" => Self::Retriable4xx,
            "cancelled" => Self::Grpc(1),
            "deadline-exceeded" => Self::Grpc(4),
            "resource-exhausted" => Self::Grpc(8),
            "internal" => Self::Grpc(13),
            "unavailable" => Self::Grpc(14),
            code => match code.parse::<u16>() {
                Ok(c) if (100..600).contains(&c) && code.len() == 3 => Self::Status(c),
                _ => return None,
            },
        })
    }

    fn covers(self, o: Outcome) -> bool {
        use Outcome::*;
        match (self, o) {
            (_, ConnectFailure) => {
                !matches!(self, Self::Retriable4xx | Self::Grpc(_) | Self::Status(_))
            }
            // The remote sidecar's 503 (gRPC: unavailable) for a connect
            // failure to its app.
            (Self::Status(503) | Self::Grpc(14), Unprocessed) => true,
            (_, Unprocessed) => {
                !matches!(self, Self::Retriable4xx | Self::Grpc(_) | Self::Status(_))
            }
            (Self::Status(code), Response { status, .. }) => status.as_u16() == code,
            (Self::ServerError | Self::GatewayError | Self::Reset, Reset | Timeout) => true,
            (Self::ServerError, Response { status, .. }) => status.is_server_error(),
            (Self::GatewayError, Response { status, .. }) => {
                matches!(status.as_u16(), 502..=504)
            }
            (Self::Retriable4xx, Response { status, .. }) => status == StatusCode::CONFLICT,
            (Self::Grpc(code), Response { grpc_status, .. }) => grpc_status == Some(code),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<RetryOn>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget: BudgetSettings,
}

impl RetrySettings {
    pub const DEFAULT_RETRY_ON: &[RetryOn] = &[
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
        RetryOn::Grpc(14),
    ];

    pub fn is_retriable(&self, o: Outcome) -> bool {
        self.retry_on.iter().any(|c| c.covers(o))
    }

    /// Exponential backoff with full jitter: uniform in
    /// [0, min(max, base * 2^retry)]. `retry` counts from 0; `r` in [0, 1).
    pub fn backoff(&self, retry: u32, r: f64) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.backoff_max);
        cap.mul_f64(r.clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    pub retry_ratio: f64,
    pub min_retries_per_second: u32,
    pub ttl: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl BudgetSettings {
    /// The budget of moves (requests no application saw, sent to another
    /// endpoint): one per request over the window, plus 10 a second, so
    /// the loss of a cluster that carried half a route's traffic (half its
    /// requests moved) is absorbed twice over, while a mesh where every
    /// endpoint refuses sends at most twice its load.
    pub const MOVES: Self = Self {
        retry_ratio: 1.0,
        min_retries_per_second: 10,
        ttl: Duration::from_secs(10),
    };
}

/// Counts requests and retries over a sliding window of `ttl` (in ten
/// buckets, so memory stays constant at any rate); a retry is allowed while
/// retries in the window stay under
/// `min_retries_per_second * ttl + retry_ratio * requests`.
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    origin: Option<Instant>,
    /// (bucket epoch, requests, retries), indexed by epoch % BUCKETS.
    buckets: [(u64, u64, u64); BUCKETS],
}

const BUCKETS: usize = 10;

impl RetryBudget {
    pub fn new(settings: BudgetSettings) -> Self {
        Self {
            settings,
            origin: None,
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let width = (self.settings.ttl / BUCKETS as u32).max(Duration::from_micros(1));
        (now.saturating_duration_since(origin).as_nanos() / width.as_nanos()) as u64
    }

    fn current(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let e = self.epoch(now);
        let b = &mut self.buckets[e as usize % BUCKETS];
        if b.0 != e {
            *b = (e, 0, 0);
        }
        b
    }

    fn totals(&mut self, now: Instant) -> (u64, u64) {
        let e = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 <= e && e - b.0 < BUCKETS as u64)
            .fold((0, 0), |(q, r), b| (q + b.1, r + b.2))
    }

    /// Records an original request.
    pub fn deposit(&mut self, now: Instant) {
        self.current(now).1 += 1;
    }

    /// Takes a retry out of the budget, if there is one left.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = f64::from(self.settings.min_retries_per_second)
            * self.settings.ttl.as_secs_f64()
            + self.settings.retry_ratio * requests as f64;
        if (retries as f64) < allowed.floor() {
            self.current(now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(conds: &[&str]) -> RetrySettings {
        RetrySettings {
            attempts: 2,
            per_try_timeout: None,
            retry_on: conds.iter().map(|c| RetryOn::parse(c).unwrap()).collect(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: BudgetSettings::default(),
        }
    }

    fn resp(code: u16, grpc: Option<u32>) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc_status: grpc,
        }
    }

    #[test]
    fn conditions_cover_the_right_outcomes() {
        let table: &[(&str, Outcome, bool)] = &[
            ("5xx", resp(500, None), true),
            ("5xx", resp(503, None), true),
            ("5xx", resp(404, None), false),
            ("5xx", Outcome::ConnectFailure, true),
            ("5xx", Outcome::Reset, true),
            ("5xx", Outcome::Timeout, true),
            ("gateway-error", resp(500, None), false),
            ("gateway-error", resp(502, None), true),
            ("gateway-error", resp(504, None), true),
            ("gateway-error", Outcome::ConnectFailure, true),
            ("connect-failure", Outcome::ConnectFailure, true),
            ("connect-failure", Outcome::Reset, false),
            ("connect-failure", resp(503, None), false),
            ("reset", Outcome::Reset, true),
            ("reset", resp(502, None), false),
            ("connect-failure", Outcome::Unprocessed, true),
            ("gateway-error", Outcome::Unprocessed, true),
            ("503", Outcome::Unprocessed, true),
            ("500", Outcome::Unprocessed, false),
            ("unavailable", Outcome::Unprocessed, true),
            ("retriable-4xx", Outcome::Unprocessed, false),
            ("503", resp(503, None), true),
            ("503", resp(500, None), false),
            ("503", Outcome::ConnectFailure, false),
            ("503", Outcome::Reset, false),
            ("429", resp(429, None), true),
            ("retriable-4xx", resp(409, None), true),
            ("retriable-4xx", resp(400, None), false),
            ("retriable-4xx", Outcome::ConnectFailure, false),
            ("unavailable", resp(200, Some(14)), true),
            ("unavailable", resp(200, Some(13)), false),
            ("unavailable", resp(200, None), false),
            ("internal", resp(200, Some(13)), true),
            ("cancelled", resp(200, Some(1)), true),
            ("deadline-exceeded", resp(200, Some(4)), true),
            ("resource-exhausted", resp(200, Some(8)), true),
            ("unavailable", Outcome::ConnectFailure, false),
        ];
        for (cond, outcome, want) in table {
            assert_eq!(
                settings(&[cond]).is_retriable(*outcome),
                *want,
                "{cond} {outcome:?}"
            );
        }
        assert!(RetryOn::parse("bogus").is_none());
        for known in isthmus_api::validate::RETRY_ON {
            assert!(
                RetryOn::parse(known).is_some(),
                "{known} is validated but not parsed"
            );
        }
    }

    #[test]
    fn backoff_grows_exponentially_caps_and_jitters() {
        let s = settings(&["5xx"]);
        assert_eq!(
            s.backoff(0, 0.999_999),
            Duration::from_millis(25).mul_f64(0.999_999)
        );
        assert_eq!(s.backoff(1, 0.5), Duration::from_millis(25));
        assert_eq!(s.backoff(2, 0.5), Duration::from_millis(50));
        assert_eq!(
            s.backoff(10, 0.5),
            Duration::from_millis(125),
            "capped at max"
        );
        assert_eq!(s.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(s.backoff(u32::MAX, 1.0), Duration::from_millis(250));
    }

    #[test]
    fn budget_allows_min_rate_plus_ratio_and_expires() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(BudgetSettings {
            retry_ratio: 0.2,
            min_retries_per_second: 1,
            ttl: Duration::from_secs(10),
        });
        // 10 free retries (1/s over 10s) before any request.
        for _ in 0..10 {
            assert!(b.try_withdraw(t0));
        }
        assert!(!b.try_withdraw(t0));
        // 100 requests add 20 more.
        for _ in 0..100 {
            b.deposit(t0);
        }
        for _ in 0..20 {
            assert!(b.try_withdraw(t0));
        }
        assert!(!b.try_withdraw(t0));
        // After the window everything has expired: only the 10 free ones.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..10 {
            assert!(b.try_withdraw(later));
        }
        assert!(!b.try_withdraw(later));
    }

    #[test]
    fn budget_window_slides_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(BudgetSettings {
            retry_ratio: 1.0,
            min_retries_per_second: 0,
            ttl: Duration::from_secs(10),
        });
        b.deposit(t0);
        b.deposit(t0 + Duration::from_secs(5));
        assert!(b.try_withdraw(t0 + Duration::from_secs(5)));
        assert!(b.try_withdraw(t0 + Duration::from_secs(5)));
        assert!(!b.try_withdraw(t0 + Duration::from_secs(5)));
        // At 10s the first request left the window, and so did nothing else:
        // 1 request, 2 retries: nothing allowed.
        assert!(!b.try_withdraw(t0 + Duration::from_secs(10)));
        // At 15s both requests and both retries have left it.
        b.deposit(t0 + Duration::from_secs(15));
        assert!(b.try_withdraw(t0 + Duration::from_secs(15)));
        assert!(!b.try_withdraw(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn zero_budget_never_retries() {
        let mut b = RetryBudget::new(BudgetSettings {
            retry_ratio: 0.0,
            min_retries_per_second: 0,
            ttl: Duration::from_secs(1),
        });
        let t = Instant::now();
        b.deposit(t);
        assert!(!b.try_withdraw(t));
    }
}
