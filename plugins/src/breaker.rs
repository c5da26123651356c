//! The circuit breaker of one upstream: closed, open, half-open.
//!
//! Closed: requests flow; failures are counted in a row and in a sliding window of one-second
//! buckets. The breaker opens after `consecutive_failures` failures in a row, or when at
//! least `min_requests` were seen in the last `window_secs` and `failure_rate` of them
//! failed. Open: every request is refused at once until `open_secs` have passed. Half-open:
//! `half_open_requests` probes are let through; when all of them succeed the breaker
//! closes, when any fails it opens again.
//!
//! The hot path reads one atomic state and updates counters with atomics; a mutex is taken
//! only to change state, so concurrent requests never wait on each other.

use crate::window::Window;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub window_secs: u32,
    pub min_requests: u32,
    pub open: Duration,
    pub half_open_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window_secs: 10,
            min_requests: 20,
            open: Duration::from_secs(30),
            half_open_requests: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` when this request is one of the half-open probes.
    Allowed { probe: bool },
    /// Refused; the breaker stays open for about this long.
    Rejected { retry_after: Duration },
}

/// Milliseconds on a monotonic clock; tests supply their own.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Called on every state change with (from, to).
pub type TransitionHook = Box<dyn Fn(State, State) + Send + Sync>;

pub struct Breaker {
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    state: AtomicU8,
    consecutive: AtomicU32,
    /// (requests, failures) per second.
    window: Window,
    /// When the breaker last opened (clock ms).
    opened_at: AtomicU64,
    probes_admitted: AtomicU32,
    probes_succeeded: AtomicU32,
    transitions: AtomicU64,
    change: Mutex<()>,
    on_transition: Option<TransitionHook>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::with_clock(cfg, Arc::new(MonotonicClock::default()))
    }

    pub fn with_clock(cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Breaker {
            window: Window::new(cfg.window_secs),
            cfg,
            clock,
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probes_admitted: AtomicU32::new(0),
            probes_succeeded: AtomicU32::new(0),
            transitions: AtomicU64::new(0),
            change: Mutex::new(()),
            on_transition: None,
        }
    }

    /// Report every state change (for logs and metrics).
    pub fn on_transition(mut self, hook: TransitionHook) -> Self {
        self.on_transition = Some(hook);
        self
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// State changes since creation.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Ask to send one request upstream.
    pub fn try_acquire(&self) -> Admission {
        match self.state() {
            State::Closed => Admission::Allowed { probe: false },
            State::Open => {
                let now = self.clock.now_ms();
                let until =
                    self.opened_at.load(Ordering::Acquire) + self.cfg.open.as_millis() as u64;
                if now < until {
                    return Admission::Rejected {
                        retry_after: Duration::from_millis(until - now),
                    };
                }
                self.transition(State::Open, State::HalfOpen);
                self.admit_probe()
            }
            State::HalfOpen => self.admit_probe(),
        }
    }

    fn admit_probe(&self) -> Admission {
        let n = self.probes_admitted.fetch_add(1, Ordering::AcqRel);
        if n < self.cfg.half_open_requests {
            Admission::Allowed { probe: true }
        } else {
            Admission::Rejected {
                retry_after: Duration::from_secs(1),
            }
        }
    }

    /// Report the outcome of a request that [`Self::try_acquire`] allowed.
    pub fn record(&self, success: bool, probe: bool) {
        match self.state() {
            State::Closed if !probe => self.record_closed(success),
            State::HalfOpen if probe => {
                if !success {
                    self.transition(State::HalfOpen, State::Open);
                } else {
                    let ok = self.probes_succeeded.fetch_add(1, Ordering::AcqRel) + 1;
                    if ok >= self.cfg.half_open_requests {
                        self.transition(State::HalfOpen, State::Closed);
                    }
                }
            }
            // Late answers of requests admitted under an earlier state do not count.
            _ => {}
        }
    }

    fn record_closed(&self, success: bool) {
        let now = self.clock.now_ms();
        self.window.add(now, 1, u32::from(!success));
        // The rate is judged on every outcome: a window can reach `min_requests` on a
        // success with the failures already over the rate (Resilience4j does the same).
        let in_a_row = if success {
            self.consecutive.store(0, Ordering::Release);
            0
        } else {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        };
        if in_a_row >= self.cfg.consecutive_failures || self.rate_exceeded(now) {
            self.transition(State::Closed, State::Open);
        }
    }

    fn rate_exceeded(&self, now_ms: u64) -> bool {
        let (total, failed) = self.window.sum(now_ms);
        total >= self.cfg.min_requests.max(1) as u64
            && failed as f64 >= self.cfg.failure_rate * total as f64
    }

    /// Move from `from` to `to` if the breaker is still in `from`.
    fn transition(&self, from: State, to: State) {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        if self.state() != from {
            return;
        }
        match to {
            State::Open => {
                self.opened_at.store(self.clock.now_ms(), Ordering::Release);
            }
            State::HalfOpen => {
                self.probes_admitted.store(0, Ordering::Release);
                self.probes_succeeded.store(0, Ordering::Release);
            }
            State::Closed => {
                self.consecutive.store(0, Ordering::Release);
                self.window.clear();
            }
        }
        self.state.store(to as u8, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_transition {
            hook(from, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestClock = ManualClock;

    fn breaker(cfg: BreakerConfig) -> (Breaker, Arc<TestClock>) {
        let clock = Arc::new(TestClock::default());
        (Breaker::with_clock(cfg, clock.clone()), clock)
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window_secs: 10,
            min_requests: 10,
            open: Duration::from_secs(5),
            half_open_requests: 2,
        }
    }

    const GO: Admission = Admission::Allowed { probe: false };
    const PROBE: Admission = Admission::Allowed { probe: true };

    #[test]
    fn opens_after_consecutive_failures_and_success_resets_the_run() {
        let (b, _) = breaker(cfg());
        b.record(false, false);
        b.record(false, false);
        b.record(true, false);
        b.record(false, false);
        b.record(false, false);
        assert_eq!(b.state(), State::Closed);
        b.record(false, false);
        assert_eq!(b.state(), State::Open);
        assert!(
            matches!(b.try_acquire(), Admission::Rejected { retry_after } if retry_after == Duration::from_secs(5))
        );
    }

    #[test]
    fn opens_on_failure_rate_once_min_requests_seen() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 100,
            ..cfg()
        });
        // 9 requests, alternating: rate 4/9 and too few requests.
        for i in 0..9 {
            b.record(i % 2 == 0, false);
            clock.advance(100);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(false, false); // 10 requests, 5 failed: 50%
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn a_success_that_reaches_min_requests_is_judged_too() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 3,
            ..cfg()
        });
        // 6 failures in 9, never more than 2 in a row: too few requests to judge.
        for ok in [false, false, true, false, false, true, false, false, true] {
            b.record(ok, false);
            clock.advance(100);
        }
        assert_eq!(b.state(), State::Closed);
        // The 10th is a success: 6 of 10 failed, over 50%.
        b.record(true, false);
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let (b, clock) = breaker(BreakerConfig {
            consecutive_failures: 100,
            min_requests: 13,
            ..cfg()
        });
        for _ in 0..6 {
            b.record(false, false);
            b.record(true, false);
        }
        assert_eq!(b.state(), State::Closed, "12 requests: below min_requests");
        // Had the 12 stayed in the window, a 13th failure would make 7 of 13 and open it.
        clock.advance(11_000);
        b.record(false, false);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_open_admits_exactly_the_probes_then_closes() {
        let (b, clock) = breaker(cfg());
        for _ in 0..3 {
            b.record(false, false);
        }
        assert_eq!(b.state(), State::Open);
        clock.advance(4_999);
        assert!(matches!(b.try_acquire(), Admission::Rejected { .. }));
        clock.advance(1);
        assert_eq!(b.try_acquire(), PROBE);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.try_acquire(), PROBE);
        assert!(matches!(b.try_acquire(), Admission::Rejected { .. }));
        b.record(true, true);
        assert_eq!(b.state(), State::HalfOpen);
        // A late answer from before the breaker opened does not count.
        b.record(true, false);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(true, true);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.try_acquire(), GO);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_full_period() {
        let (b, clock) = breaker(cfg());
        for _ in 0..3 {
            b.record(false, false);
        }
        clock.advance(5_000);
        assert_eq!(b.try_acquire(), PROBE);
        b.record(false, true);
        assert_eq!(b.state(), State::Open);
        clock.advance(4_000);
        assert!(matches!(b.try_acquire(), Admission::Rejected { .. }));
        clock.advance(1_000);
        assert_eq!(b.try_acquire(), PROBE);
    }

    #[test]
    fn transitions_are_reported() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let clock = Arc::new(TestClock::default());
        let b = Breaker::with_clock(cfg(), clock.clone()).on_transition(Box::new(move |a, z| {
            s.lock().unwrap().push((a, z));
        }));
        for _ in 0..3 {
            b.record(false, false);
        }
        clock.advance(5_000);
        b.try_acquire();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(State::Closed, State::Open), (State::Open, State::HalfOpen)]
        );
    }
}
