//! Automatic bans: an address that earns more than `threshold` refusals (401, 403, 429)
//! within `window` is refused for `ban`.
//!
//! Memory is bounded: at most `max_entries` addresses are tracked. When the table is full,
//! entries whose window has passed and whose ban is over are dropped first; if none can go,
//! a new address is not tracked (bans already given are never dropped to make room).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoBanSettings {
    pub threshold: u32,
    pub window: Duration,
    pub ban: Duration,
    pub max_entries: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Start of the counting window, on the caller's clock.
    window_start: Duration,
    refusals: u32,
    /// Zero when not banned.
    banned_until: Duration,
}

/// One ban currently in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub ip: IpAddr,
    pub remaining: Duration,
}

pub struct AutoBan {
    pub settings: AutoBanSettings,
    table: Mutex<Table>,
}

struct Table {
    entries: HashMap<IpAddr, Entry, foldhash::fast::RandomState>,
    /// When the table was last swept for stale entries.
    swept: Duration,
}

/// How often a full table may be swept (a sweep walks every entry).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl AutoBan {
    pub fn new(settings: AutoBanSettings) -> Self {
        AutoBan {
            settings,
            table: Mutex::new(Table {
                entries: HashMap::default(),
                swept: Duration::ZERO,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` stays banned, if it is banned at `now`.
    pub fn banned(&self, ip: IpAddr, now: Duration) -> Option<Duration> {
        let t = self.lock();
        let e = t.entries.get(&ip)?;
        (e.banned_until > now).then(|| e.banned_until - now)
    }

    /// Count a refusal of `ip`; true when it starts a ban.
    pub fn refused(&self, ip: IpAddr, now: Duration) -> bool {
        let s = self.settings;
        let mut t = self.lock();
        if !t.entries.contains_key(&ip) && t.entries.len() >= s.max_entries {
            if now.saturating_sub(t.swept) < SWEEP_EVERY && t.swept != Duration::ZERO {
                return false;
            }
            t.swept = now.max(Duration::from_nanos(1));
            t.entries.retain(|_, e| {
                e.banned_until > now || now.saturating_sub(e.window_start) < s.window
            });
            if t.entries.len() >= s.max_entries {
                return false;
            }
        }
        let e = t.entries.entry(ip).or_insert(Entry {
            window_start: now,
            refusals: 0,
            banned_until: Duration::ZERO,
        });
        if e.banned_until > now {
            return false;
        }
        if now.saturating_sub(e.window_start) >= s.window {
            e.window_start = now;
            e.refusals = 0;
        }
        e.refusals += 1;
        if e.refusals > s.threshold {
            e.banned_until = now + s.ban;
            e.refusals = 0;
            e.window_start = now + s.ban;
            return true;
        }
        false
    }

    /// Lift the ban of `ip`; whether there was one.
    pub fn lift(&self, ip: IpAddr, now: Duration) -> bool {
        match self.lock().entries.remove(&ip) {
            Some(e) => e.banned_until > now,
            None => false,
        }
    }

    /// Bans in force at `now`, longest first.
    pub fn bans(&self, now: Duration) -> Vec<Ban> {
        let t = self.lock();
        let mut out: Vec<Ban> = t
            .entries
            .iter()
            .filter(|(_, e)| e.banned_until > now)
            .map(|(ip, e)| Ban {
                ip: *ip,
                remaining: e.banned_until - now,
            })
            .collect();
        out.sort_by(|a, b| b.remaining.cmp(&a.remaining).then(a.ip.cmp(&b.ip)));
        out
    }

    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_entries: usize) -> AutoBanSettings {
        AutoBanSettings {
            threshold: 3,
            window: Duration::from_secs(10),
            ban: Duration::from_secs(60),
            max_entries,
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn more_than_threshold_refusals_in_the_window_ban_then_the_ban_ends() {
        let b = AutoBan::new(settings(100));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!b.refused(ip, s(1)));
        assert!(!b.refused(ip, s(2)));
        assert!(!b.refused(ip, s(3)));
        assert_eq!(b.banned(ip, s(3)), None);
        assert!(b.refused(ip, s(4)));
        assert_eq!(b.banned(ip, s(5)), Some(s(59)));
        assert_eq!(
            b.bans(s(5)),
            vec![Ban {
                ip,
                remaining: s(59)
            }]
        );
        // Refusals during the ban do not extend it.
        assert!(!b.refused(ip, s(30)));
        assert_eq!(b.banned(ip, s(64)), None);
        assert!(b.bans(s(64)).is_empty());
    }

    #[test]
    fn refusals_spread_over_windows_do_not_ban() {
        let b = AutoBan::new(settings(100));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..10 {
            assert!(!b.refused(ip, s(i * 4)));
        }
    }

    #[test]
    fn a_full_table_drops_stale_entries_and_never_bans() {
        let b = AutoBan::new(settings(2));
        let banned: IpAddr = "10.0.0.1".parse().unwrap();
        for t in 1..=4 {
            b.refused(banned, s(t));
        }
        assert!(b.banned(banned, s(5)).is_some());
        b.refused("10.0.0.2".parse().unwrap(), s(5));
        // Full: a third address is not tracked while both entries are live.
        b.refused("10.0.0.3".parse().unwrap(), s(6));
        assert_eq!(b.tracked(), 2);
        // Later the stale one goes, the ban stays.
        b.refused("10.0.0.3".parse().unwrap(), s(30));
        assert_eq!(b.tracked(), 2);
        assert!(b.banned(banned, s(30)).is_some());
        assert!(b.lift(banned, s(31)));
        assert_eq!(b.banned(banned, s(31)), None);
    }
}
