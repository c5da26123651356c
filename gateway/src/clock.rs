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

/// The pause before trying a failed source again (etcd, Consul): 0.2 s, doubling after
/// each failure up to 10 s, and back to 0.2 s once the source answers.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(10);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The source answered.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The pause to wait now; the next one is twice as long.
    pub fn pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        now
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_doubles_to_its_cap_and_starts_over_after_an_answer() {
        let mut b = Backoff::new();
        let pauses: Vec<u64> = (0..8).map(|_| b.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(200));
    }
}
