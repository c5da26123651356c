//! Per-target state of passive tracking and outlier detection (Envoy's `consecutive_5xx`).
//!
//! - Passive tracking: a target that just failed to connect, timed out or broke a connection
//!   is passed over for `failure_eject_ms`.
//! - Outlier detection: a target whose tries end in a 5xx answer or such a failure
//!   `consecutive_5xx` times in a row is ejected: passed over for `base_ejection_ms` times the
//!   number of its ejections in a row (up to `max_ejection_ms`; an ejection more than
//!   `max_ejection_ms` after the last one ended starts the count again). At most
//!   `max_ejection_percent` of the targets (and at least one) are ejected at a time; a target
//!   over the share is ejected as soon as another comes back.
//!
//! Either way a passed-over target still serves when no other healthy one is left.
//!
//! Concurrency: every field is an atomic, updated without a lock by the requests that report
//! outcomes; two requests that cross the threshold together may both eject (the second
//! finds the target already ejected and extends nothing). The clock is the upstream's,
//! in milliseconds.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// 0 turns outlier detection off.
    pub consecutive_5xx: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u8,
}

/// One target's state; kept across DNS refreshes for targets that stay.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Passed over by new requests until then (passive tracking or an ejection).
    pub until: AtomicU64,
    /// Failed tries in a row.
    failures: AtomicU32,
    /// Ejections in a row, and when the last one ends.
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    /// Ejections so far, for the admin API.
    pub ejected_total: AtomicU64,
}

/// What [`TargetState::failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    /// Ejected for this many milliseconds.
    Ejected(u64),
    /// Past the threshold, but the share of ejected targets is reached.
    Held,
}

impl TargetState {
    /// Whether this target is passed over now.
    pub fn passed_over(&self, now_ms: u64) -> bool {
        self.until.load(Ordering::Relaxed) > now_ms
    }

    /// Whether this target is ejected by outlier detection now.
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Milliseconds of ejection left.
    pub fn ejected_for_ms(&self, now_ms: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Passive tracking: pass the target over until `end`.
    pub fn pass_over_until(&self, end: u64) {
        self.until.fetch_max(end, Ordering::Relaxed);
    }

    /// A try that succeeded ends the run of failures; whether there was one.
    pub fn succeeded(&self) -> bool {
        self.failures.swap(0, Ordering::Relaxed) > 0
    }

    /// A try that failed. `ejected_now` is how many targets of the pool are ejected at this
    /// moment (this one not counted), `pool` how many there are. Also says whether this
    /// failure started a run (the first of a row), since an ejection ends one.
    pub fn failed(
        &self,
        s: &OutlierSettings,
        now_ms: u64,
        ejected_now: usize,
        pool: usize,
    ) -> (Recorded, bool) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let started = n == 1;
        if s.consecutive_5xx == 0 || n < s.consecutive_5xx || self.ejected(now_ms) {
            return (Recorded::Nothing, started);
        }
        let allowed = (pool * usize::from(s.max_ejection_percent) / 100).max(1);
        if ejected_now >= allowed {
            return (Recorded::Held, started);
        }
        let last_end = self.ejected_until.load(Ordering::Relaxed);
        let in_a_row = if last_end > 0 && now_ms.saturating_sub(last_end) <= s.max_ejection_ms {
            self.ejections.load(Ordering::Relaxed).saturating_add(1)
        } else {
            1
        };
        let ms = s
            .base_ejection_ms
            .saturating_mul(u64::from(in_a_row))
            .min(s.max_ejection_ms.max(s.base_ejection_ms));
        self.ejections.store(in_a_row, Ordering::Relaxed);
        self.ejected_until.store(now_ms + ms, Ordering::Relaxed);
        self.pass_over_until(now_ms + ms);
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        (Recorded::Ejected(ms), started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: OutlierSettings = OutlierSettings {
        consecutive_5xx: 3,
        base_ejection_ms: 1000,
        max_ejection_ms: 5000,
        max_ejection_percent: 50,
    };

    #[test]
    fn ejected_after_the_threshold_in_a_row_only() {
        let t = TargetState::default();
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Nothing);
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Nothing);
        t.succeeded();
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Nothing);
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Nothing);
        assert!(!t.passed_over(0));
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Ejected(1000));
        assert!(t.passed_over(999) && t.ejected(999));
        assert!(!t.passed_over(1000) && !t.ejected(1000));
    }

    #[test]
    fn repeated_ejections_grow_up_to_the_max_and_are_forgotten() {
        let t = TargetState::default();
        let mut now = 0;
        for want in [1000, 2000, 3000, 4000, 5000, 5000] {
            for _ in 0..2 {
                let _ = t.failed(&S, now, 0, 4);
            }
            assert_eq!(t.failed(&S, now, 0, 4).0, Recorded::Ejected(want));
            now += want;
        }
        // Long after the last one ended, the count starts again.
        now += 5001;
        for _ in 0..2 {
            let _ = t.failed(&S, now, 0, 4);
        }
        assert_eq!(t.failed(&S, now, 0, 4).0, Recorded::Ejected(1000));
    }

    #[test]
    fn never_more_than_the_share_but_always_one() {
        let t = TargetState::default();
        for _ in 0..2 {
            let _ = t.failed(&S, 0, 0, 2);
        }
        // Two targets at 50%: one may be out; it is.
        assert_eq!(t.failed(&S, 0, 1, 2).0, Recorded::Held);
        assert!(!t.passed_over(0));
        // The other came back: the next failure ejects.
        assert_eq!(t.failed(&S, 0, 0, 2).0, Recorded::Ejected(1000));
        // One target at 10%: still one may be out.
        let one = OutlierSettings {
            max_ejection_percent: 10,
            ..S
        };
        let u = TargetState::default();
        for _ in 0..2 {
            let _ = u.failed(&one, 0, 0, 1);
        }
        assert_eq!(u.failed(&one, 0, 0, 1).0, Recorded::Ejected(1000));
        let off = OutlierSettings {
            consecutive_5xx: 0,
            ..S
        };
        let v = TargetState::default();
        for _ in 0..10 {
            assert_eq!(v.failed(&off, 0, 0, 2).0, Recorded::Nothing);
        }
    }
}
