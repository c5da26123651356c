//! Retry policy of one upstream: which failures are retried, how long to wait before each
//! retry (exponential backoff with full jitter), and a budget that caps retries to a share
//! of live traffic so a dead upstream does not multiply the load sent to it.

use crate::breaker::Clock;
use crate::window::Window;
use std::sync::Arc;
use std::time::Duration;

/// Failures a policy can retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made (refused, reset during connect, TLS failure).
    Connect,
    /// Connecting or waiting for the response took longer than the upstream's timeouts.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try.
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub on_connect_failure: bool,
    pub on_timeout: bool,
    pub on_status: Vec<u16>,
    pub idempotent_only: bool,
    /// Retries may add at most this share on top of the requests of the last 10 seconds.
    pub budget_ratio: f64,
}

/// Retries always allowed per budget window, so that a quiet upstream can still retry.
pub const BUDGET_MIN_RETRIES: u64 = 10;
/// Length of the budget window in seconds.
pub const BUDGET_WINDOW_SECS: u32 = 10;

pub struct RetryPolicy {
    pub cfg: RetryConfig,
    /// (requests, retries) per second.
    window: Window,
    clock: Arc<dyn Clock>,
}

impl RetryPolicy {
    pub fn new(cfg: RetryConfig, clock: Arc<dyn Clock>) -> Self {
        RetryPolicy {
            cfg,
            window: Window::new(BUDGET_WINDOW_SECS),
            clock,
        }
    }

    /// Whether this kind of failure is one the policy retries.
    pub fn retries(&self, failure: Failure) -> bool {
        match failure {
            Failure::Connect => self.cfg.on_connect_failure,
            Failure::Timeout => self.cfg.on_timeout,
            Failure::Status(s) => self.cfg.on_status.contains(&s),
        }
    }

    /// Whether a request of this method may be retried at all.
    pub fn method_allowed(&self, idempotent: bool) -> bool {
        idempotent || !self.cfg.idempotent_only
    }

    /// Count one request (first tries only) toward the budget.
    pub fn record_request(&self) {
        self.window.add(self.clock.now_ms(), 1, 0);
    }

    /// Take one retry from the budget; `false` when the budget is spent.
    pub fn try_spend(&self) -> bool {
        let now = self.clock.now_ms();
        let (requests, retries) = self.window.sum(now);
        let allowed = ((requests as f64 * self.cfg.budget_ratio) as u64).max(BUDGET_MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        self.window.add(now, 0, 1);
        true
    }

    /// The wait before retry number `retry` (1-based): uniformly random in
    /// `[0, min(max, base * 2^(retry-1))]`; `unit` is a random number in `[0, 1)`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .cfg
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let cap = exp.min(self.cfg.max);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock as TestClock;

    fn policy() -> (RetryPolicy, Arc<TestClock>) {
        let clock = Arc::new(TestClock::default());
        let cfg = RetryConfig {
            attempts: 2,
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            on_connect_failure: true,
            on_timeout: true,
            on_status: vec![502, 503, 504],
            idempotent_only: true,
            budget_ratio: 0.2,
        };
        (RetryPolicy::new(cfg, clock.clone()), clock)
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let (p, _) = policy();
        assert_eq!(
            p.backoff(1, 0.999_999),
            Duration::from_millis(25).mul_f64(0.999_999)
        );
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(5, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(40, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(50));
    }

    #[test]
    fn budget_caps_retries_to_a_share_of_requests() {
        let (p, clock) = policy();
        for _ in 0..200 {
            p.record_request();
        }
        let spent = (0..200).filter(|_| p.try_spend()).count();
        assert_eq!(spent, 40, "20% of 200");
        // Quiet traffic still gets the minimum.
        clock.set(60_000);
        p.record_request();
        let spent = (0..50).filter(|_| p.try_spend()).count();
        assert_eq!(spent as u64, BUDGET_MIN_RETRIES);
    }

    #[test]
    fn conditions_and_methods() {
        let (p, _) = policy();
        assert!(p.retries(Failure::Connect));
        assert!(p.retries(Failure::Status(503)));
        assert!(!p.retries(Failure::Status(500)));
        assert!(p.method_allowed(true));
        assert!(!p.method_allowed(false));
    }
}
