//! A sliding window of one-second buckets holding two counters each, updated with atomics.
//! The breaker counts (requests, failures) in it, the retry budget (requests, retries).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

struct Bucket {
    second: AtomicU64,
    a: AtomicU32,
    b: AtomicU32,
}

pub struct Window {
    buckets: Box<[Bucket]>,
}

const EMPTY: u64 = u64::MAX;

impl Window {
    pub fn new(secs: u32) -> Self {
        let buckets = (0..secs.max(1))
            .map(|_| Bucket {
                second: AtomicU64::new(EMPTY),
                a: AtomicU32::new(0),
                b: AtomicU32::new(0),
            })
            .collect();
        Window { buckets }
    }

    /// Add to the counters of the bucket for `now_ms`.
    pub fn add(&self, now_ms: u64, a: u32, b: u32) {
        let second = now_ms / 1000;
        let bucket = &self.buckets[(second % self.buckets.len() as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The bucket last counted an older second: start it afresh. A count that races
            // with this reset may be lost; the window is an estimate, not a ledger.
            bucket.a.store(0, Ordering::Release);
            bucket.b.store(0, Ordering::Release);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::AcqRel);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::AcqRel);
        }
    }

    /// Sums of both counters over the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64) -> (u64, u64) {
        let now = now_ms / 1000;
        let len = self.buckets.len() as u64;
        let (mut a, mut b) = (0, 0);
        for bucket in self.buckets.iter() {
            let s = bucket.second.load(Ordering::Acquire);
            if s != EMPTY && s <= now && s + len > now {
                a += bucket.a.load(Ordering::Acquire) as u64;
                b += bucket.b.load(Ordering::Acquire) as u64;
            }
        }
        (a, b)
    }

    pub fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.second.store(EMPTY, Ordering::Release);
            bucket.a.store(0, Ordering::Release);
            bucket.b.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out() {
        let w = Window::new(3);
        w.add(0, 1, 0);
        w.add(1_500, 1, 1);
        w.add(2_999, 1, 0);
        assert_eq!(w.sum(2_999), (3, 1));
        assert_eq!(w.sum(3_000), (2, 1));
        w.add(3_000, 5, 5);
        assert_eq!(w.sum(3_000), (7, 6));
        assert_eq!(w.sum(10_000), (0, 0));
    }
}
