//! The process clock: time since the process started, for everything that counts time
//! without a wall clock (bans, breakers, retry budgets, passive tracking and outlier
//! ejections, refresh and probe schedules, JWKS refetches, the Redis reconnect pause). One
//! clock, so every such time compares with every other. A leaf: it imports nothing of the
//! gateway.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Time since the process started (since the first call, which `main` makes early).
pub fn uptime() -> Duration {
    START.elapsed()
}

/// Milliseconds since the process started.
pub fn now_ms() -> u64 {
    uptime().as_millis() as u64
}

/// The process clock for the policies that take an injected one (breaker, retry budget).
pub struct ProcessClock;

impl plugins::breaker::Clock for ProcessClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}
