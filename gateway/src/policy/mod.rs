//! Per-request policies decided apart from doing: retry conditions, backoff,
//! the retry budget, the attempt loop's next step (`attempts`, shared by
//! HTTP, TCP and the east-west gateway), the local rate limit and fault
//! injection. Pure state
//! machines; the current time and random numbers are arguments.

pub mod attempts;
pub mod fault;
pub mod ratelimit;
pub mod retry;
