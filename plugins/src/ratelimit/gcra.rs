//! Token and leaky buckets as one state per key: the theoretical arrival time (GCRA).
//!
//! A bucket that refills `limit` tokens per `window` spaces requests `interval = window /
//! limit` apart. Its whole state is the time at which it would be full again (`tat`): a
//! request at `now` is let through when `max(tat, now) + interval - now` stays within the
//! bucket's capacity, and moves `tat` on by one interval. A leaky bucket is the same state;
//! the request simply waits `max(tat, now) - now` before it goes on.
//!
//! The keys live in a fixed table of small sets, so memory is bounded however many distinct
//! keys arrive. A key that is not in the table takes a free slot, a slot whose bucket has
//! refilled completely (forgetting it loses nothing), or else the slot nearest to refilled.

use std::hash::BuildHasher;
use std::sync::Mutex;

/// Slots per set.
const WAYS: usize = 4;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0 marks a free slot.
    key: u64,
    /// Nanoseconds (on the table's clock) at which the bucket is full again.
    tat: u64,
}

pub struct GcraTable {
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    hasher: foldhash::fast::RandomState,
}

/// What one request did to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub allowed: bool,
    /// How long the request waits before it goes on (leaky bucket); 0 for a token bucket.
    pub delay_ns: u64,
    /// Until the bucket is full again, after this request.
    pub full_in_ns: u64,
}

impl GcraTable {
    /// A table that holds about `max_keys` buckets.
    pub fn new(max_keys: usize) -> Self {
        let sets = max_keys.div_ceil(WAYS).max(1);
        GcraTable {
            sets: (0..sets)
                .map(|_| Mutex::new([Slot::default(); WAYS]))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Take one request out of `key`'s bucket at `now_ns`. `capacity` is how many intervals
    /// of credit the bucket holds: the burst of a token bucket, or the queue depth plus one
    /// of a leaky bucket.
    pub fn take(&self, key: &[u8], interval_ns: u64, capacity: u64, now_ns: u64) -> Gcra {
        let hash = self.hasher.hash_one(key) | 1;
        let set = &self.sets[(hash % self.sets.len() as u64) as usize];
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match set.iter().position(|s| s.key == hash) {
            Some(i) => i,
            None => {
                // A free or refilled slot; else the one closest to refilled.
                let i = set
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| if s.key == 0 { 0 } else { s.tat })
                    .map_or(0, |(i, _)| i);
                set[i] = Slot { key: hash, tat: 0 };
                i
            }
        };
        let r = decide(set[slot].tat, interval_ns, capacity, now_ns);
        if r.allowed {
            set[slot].tat = now_ns + r.full_in_ns;
        }
        r
    }
}

/// The GCRA decision on a bucket whose state is `tat`: shared by the local table and the
/// Redis script so both stores behave alike.
pub fn decide(tat: u64, interval_ns: u64, capacity: u64, now_ns: u64) -> Gcra {
    let start = tat.max(now_ns);
    let full_in = start - now_ns + interval_ns;
    if full_in > capacity.saturating_mul(interval_ns) {
        return Gcra {
            allowed: false,
            delay_ns: start - now_ns,
            full_in_ns: start - now_ns,
        };
    }
    Gcra {
        allowed: true,
        delay_ns: start - now_ns,
        full_in_ns: full_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn token_bucket_lets_the_burst_through_then_the_rate() {
        let t = GcraTable::new(16);
        // 10 a second (100 ms apart), burst 3.
        let now = 1_000 * MS;
        let ok: Vec<bool> = (0..5)
            .map(|_| t.take(b"k", 100 * MS, 3, now).allowed)
            .collect();
        assert_eq!(ok, [true, true, true, false, false]);
        // One interval later, one more token.
        assert!(t.take(b"k", 100 * MS, 3, now + 100 * MS).allowed);
        assert!(!t.take(b"k", 100 * MS, 3, now + 100 * MS).allowed);
        // Other keys have their own bucket.
        assert!(t.take(b"other", 100 * MS, 3, now).allowed);
    }

    #[test]
    fn leaky_bucket_queues_with_growing_delays() {
        let t = GcraTable::new(16);
        let now = 1_000 * MS;
        // Queue depth 2: capacity 3 intervals.
        let delays: Vec<Option<u64>> = (0..4)
            .map(|_| {
                let r = t.take(b"k", 100 * MS, 3, now);
                r.allowed.then_some(r.delay_ns / MS)
            })
            .collect();
        assert_eq!(delays, [Some(0), Some(100), Some(200), None]);
    }

    #[test]
    fn bounded_table_forgets_refilled_buckets_first() {
        let t = GcraTable::new(4); // one set of four
        let now = 1_000 * MS;
        // "busy" empties its bucket (capacity 1).
        assert!(t.take(b"busy", 1_000 * MS, 1, now).allowed);
        // Many other keys pass through after their buckets refilled.
        for i in 0..50u32 {
            let later = now + 10 * MS + u64::from(i) * 10 * MS;
            assert!(t.take(&i.to_be_bytes(), MS, 1, later).allowed);
        }
        // "busy" is still remembered: its bucket is not refilled yet.
        assert!(!t.take(b"busy", 1_000 * MS, 1, now + 500 * MS).allowed);
    }

    #[test]
    fn full_in_reports_when_the_bucket_refills() {
        let r = decide(0, 100 * MS, 5, 1_000 * MS);
        assert_eq!((r.allowed, r.full_in_ns), (true, 100 * MS));
        let r = decide(1_400 * MS, 100 * MS, 5, 1_000 * MS);
        assert_eq!((r.allowed, r.full_in_ns), (true, 500 * MS));
        let r = decide(1_500 * MS, 100 * MS, 5, 1_000 * MS);
        assert!(!r.allowed);
    }
}
