//! Rate limits: a sliding window on pingora-limits' `Rate` estimator, token and leaky
//! buckets (GCRA), and concurrency on pingora-limits' `Inflight`.
//!
//! A [`Limiter`] is one `rate_limit` entry of a route. It decides locally, in bounded memory,
//! or prepares the call of a Lua script that decides in Redis for every gateway instance at
//! once ([`shared`]); both stores give the same [`Verdict`], which turns into the response
//! headers and the 429 answer.

pub mod gcra;
pub mod shared;

use crate::GatewayError;
use gcra::{Gcra, GcraTable};
use http::{HeaderMap, HeaderName, HeaderValue};
pub use pingora_limits::inflight::Guard;
use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    SlidingWindow,
    TokenBucket,
    LeakyBucket,
    Concurrency,
}

impl Algorithm {
    pub fn parse(s: &str) -> Result<Algorithm, String> {
        Ok(match s {
            "sliding_window" => Algorithm::SlidingWindow,
            "token_bucket" => Algorithm::TokenBucket,
            "leaky_bucket" => Algorithm::LeakyBucket,
            "concurrency" => Algorithm::Concurrency,
            _ => {
                return Err(format!(
                    "unknown algorithm {s:?}: sliding_window, token_bucket, leaky_bucket or concurrency"
                ))
            }
        })
    }
}

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (behind trusted proxies: from X-Forwarded-For).
    Ip,
    /// A request header; requests without it are counted by client address.
    Header(HeaderName),
    /// A claim of the verified JWT; requests without it are counted by client address.
    Claim(String),
    /// One count for the whole route.
    Route,
}

impl LimitKey {
    /// `ip`, `route`, `header:NAME` or `claim:NAME` (the grammar of [`crate::key`]).
    pub fn parse(s: &str) -> Result<LimitKey, String> {
        use crate::key::{Form, Key};
        match Key::parse(s, &[Form::Ip, Form::Route, Form::Header, Form::Claim])? {
            Key::Ip => Ok(LimitKey::Ip),
            Key::Route => Ok(LimitKey::Route),
            Key::Header(name) => Ok(LimitKey::Header(name)),
            Key::Claim(name) => Ok(LimitKey::Claim(name)),
            Key::Path => Err(format!("unknown key {s:?}")),
        }
    }
}

/// Limits chosen by the value of a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    pub claim: String,
    pub limits: HashMap<String, u64>,
    /// For requests without the claim (no token); default: the limit's own `limit`.
    pub anonymous: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    pub algorithm: Algorithm,
    pub key: LimitKey,
    /// Requests per window (sliding window, buckets) or in flight (concurrency); also the
    /// limit of a tier value the tiers do not list.
    pub limit: u64,
    pub window: Duration,
    /// Token bucket: its size (default `limit`). Leaky bucket: requests that may wait (default 0).
    pub burst: Option<u64>,
    pub tiers: Option<Tiers>,
    /// How many keys the local state holds at most.
    pub max_keys: usize,
    pub headers: QuotaHeaders,
}

/// The parts of a request that keys and tiers are drawn from.
pub struct RequestKeys<'a> {
    pub ip: Option<IpAddr>,
    pub headers: &'a HeaderMap,
    pub claims: Option<&'a Value>,
}

/// Whom a request counts against, and the limit that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Tier and key, e.g. `gold|c:alice` or `-|ip:10.0.0.1`.
    pub key: String,
    pub limit: u64,
}

/// Which quota headers a limit's answers carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum QuotaHeaders {
    /// `RateLimit-*` and `X-RateLimit-*`.
    #[default]
    #[serde(rename = "both")]
    Both,
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` only.
    #[serde(rename = "ratelimit")]
    RateLimit,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` only.
    #[serde(rename = "x-ratelimit")]
    XRateLimit,
    /// None: the limit stays silent (a 429 still carries `Retry-After`).
    #[serde(rename = "none")]
    None,
}

/// The outcome of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the quota is whole again (window end, bucket full).
    pub reset: Duration,
    /// When rejected: until a retry can pass.
    pub retry_after: Duration,
    /// Leaky bucket: how long the request waits before it goes on.
    pub delay: Duration,
    /// The headers that tell the quota.
    pub headers: QuotaHeaders,
}

pub struct Limiter {
    pub spec: LimitSpec,
    local: Local,
    epoch: Instant,
}

enum Local {
    Window(Rate),
    Buckets(GcraTable),
    Concurrency(Inflight),
}

/// Hashes per key of the window's count-min sketch.
const SKETCH_HASHES: usize = 4;

impl Limiter {
    pub fn new(spec: LimitSpec) -> Limiter {
        let local = match spec.algorithm {
            Algorithm::SlidingWindow => Local::Window(Rate::new_with_estimator_config(
                spec.window,
                SKETCH_HASHES,
                spec.max_keys.max(64),
            )),
            Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                Local::Buckets(GcraTable::new(spec.max_keys))
            }
            Algorithm::Concurrency => Local::Concurrency(Inflight::new()),
        };
        Limiter {
            spec,
            local,
            epoch: Instant::now(),
        }
    }

    /// The key and limit that apply to this request.
    pub fn subject(&self, req: &RequestKeys) -> Subject {
        let claim = |name: &str| -> Option<String> {
            match req.claims?.get(name)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let (tier, limit): (std::borrow::Cow<str>, u64) = match &self.spec.tiers {
            None => ("-".into(), self.spec.limit),
            Some(t) => match claim(&t.claim) {
                Some(v) => match t.limits.get(&v) {
                    Some(l) => (v.into(), *l),
                    None => ("-".into(), self.spec.limit),
                },
                None => ("anonymous".into(), t.anonymous.unwrap_or(self.spec.limit)),
            },
        };
        let mut key = String::with_capacity(tier.len() + 48);
        key.push_str(&tier);
        key.push('|');
        let by_ip = |key: &mut String| match req.ip {
            Some(ip) => {
                key.push_str("ip:");
                key.push_str(crate::ipfilter::IpText::new(ip).as_str());
            }
            None => key.push_str("ip:-"),
        };
        match &self.spec.key {
            LimitKey::Route => key.push_str("route"),
            LimitKey::Ip => by_ip(&mut key),
            LimitKey::Header(name) => match req.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) => {
                    key.push_str("h:");
                    key.push_str(v);
                }
                None => by_ip(&mut key),
            },
            LimitKey::Claim(name) => match claim(name) {
                Some(v) => {
                    key.push_str("c:");
                    key.push_str(&v);
                }
                None => by_ip(&mut key),
            },
        }
        Subject { key, limit }
    }

    /// Decide with this instance's own counters. With a concurrency limit the guard keeps
    /// the request counted until it is dropped.
    pub fn check_local(&self, subject: &Subject) -> (Verdict, Option<Guard>) {
        match &self.local {
            Local::Window(rate) => {
                let key = subject.key.as_bytes();
                let curr = rate.observe(&key, 1).max(0) as u64;
                let (prev, frac) = rate.rate_with(&key, |c| {
                    (c.prev_samples.max(0) as u64, c.current_interval_fraction)
                });
                let v = self.window_verdict(prev, curr, frac, subject.limit);
                if !v.allowed {
                    rate.observe(&key, -1);
                }
                (v, None)
            }
            Local::Buckets(table) => {
                let now = self.epoch.elapsed().as_nanos() as u64;
                let (interval, capacity) = self.bucket(subject.limit);
                let g = table.take(subject.key.as_bytes(), interval, capacity, now);
                (self.bucket_verdict(subject.limit, g), None)
            }
            Local::Concurrency(inflight) => {
                let (guard, count) = inflight.incr(subject.key.as_bytes(), 1);
                let count = count.max(0) as u64;
                let allowed = count <= subject.limit;
                let v = Verdict {
                    allowed,
                    limit: subject.limit,
                    remaining: subject.limit.saturating_sub(count),
                    reset: Duration::ZERO,
                    retry_after: Duration::from_secs(1),
                    delay: Duration::ZERO,
                    headers: self.spec.headers,
                };
                // A rejected request stops counting at once (the guard's drop).
                (v, allowed.then_some(guard))
            }
        }
    }

    /// Nanoseconds between two requests at the limit's rate, and the capacity in intervals.
    fn bucket(&self, limit: u64) -> (u64, u64) {
        let limit = limit.max(1);
        let interval = (self.spec.window.as_nanos() as u64 / limit).max(1);
        let capacity = match self.spec.algorithm {
            Algorithm::LeakyBucket => self.spec.burst.unwrap_or(0) + 1,
            _ => self.spec.burst.unwrap_or(limit).max(1),
        };
        (interval, capacity)
    }

    fn bucket_verdict(&self, limit: u64, g: Gcra) -> Verdict {
        let (interval, capacity) = self.bucket(limit);
        let span = capacity.saturating_mul(interval);
        let leaky = self.spec.algorithm == Algorithm::LeakyBucket;
        Verdict {
            allowed: g.allowed,
            limit: if leaky { limit } else { capacity },
            remaining: span.saturating_sub(g.full_in_ns) / interval,
            reset: Duration::from_nanos(g.full_in_ns),
            retry_after: Duration::from_nanos(
                (g.full_in_ns + interval).saturating_sub(span).max(1),
            ),
            delay: if leaky && g.allowed {
                Duration::from_nanos(g.delay_ns)
            } else {
                Duration::ZERO
            },
            headers: self.spec.headers,
        }
    }

    /// The sliding-window decision from the previous window's count, the current one's (this
    /// request included) and how far into the current window we are.
    fn window_verdict(&self, prev: u64, curr: u64, frac: f64, limit: u64) -> Verdict {
        let window = self.spec.window;
        let frac = frac.clamp(0.0, 1.0);
        let estimate = prev as f64 * (1.0 - frac) + curr as f64;
        // A hair of slack so that float rounding never refuses the last allowed request.
        let allowed = estimate <= limit as f64 + 1e-9;
        let reset = window.mul_f64(1.0 - frac);
        // Without this request, how much of the window must pass until one more fits.
        let curr_before = curr.saturating_sub(1) as f64;
        let room = limit.saturating_sub(1) as f64;
        let wait = if curr_before <= room && prev > 0 {
            (1.0 - (room - curr_before) / prev as f64 - frac).max(0.0)
        } else if curr_before <= room {
            0.0
        } else {
            (1.0 - frac) + (1.0 - room / curr_before).max(0.0)
        };
        let used = if allowed { estimate } else { estimate - 1.0 };
        Verdict {
            allowed,
            limit,
            remaining: (limit as f64 - used.ceil()).max(0.0) as u64,
            reset,
            // When the current window alone is full, one more fits only a little way into the
            // next one; Retry-After never asks for more than a window (a client that comes
            // back a bit early is told the little that is left).
            retry_after: window.mul_f64(wait.min(1.0)),
            delay: Duration::ZERO,
            headers: self.spec.headers,
        }
    }
}

use crate::envelope::ceil_secs as secs;

impl Verdict {
    /// Of several limits, the one whose quota is nearest to running out speaks for all.
    pub fn tighter(self, other: Verdict) -> Verdict {
        if other.remaining < self.remaining {
            other
        } else {
            self
        }
    }

    /// `RateLimit-Limit/-Remaining/-Reset` and the same as `X-RateLimit-*`, as the limit's
    /// `headers` setting chooses.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        self.header_fields()
            .map(|(name, value)| (HeaderName::from_static(name), value))
    }

    /// The same, with the names as static text (what Pingora's headers take without
    /// copying the name).
    pub fn header_fields(&self) -> impl Iterator<Item = (&'static str, HeaderValue)> {
        let (draft, x) = match self.headers {
            QuotaHeaders::Both => (true, true),
            QuotaHeaders::RateLimit => (true, false),
            QuotaHeaders::XRateLimit => (false, true),
            QuotaHeaders::None => (false, false),
        };
        let (l, r, s) = (
            HeaderValue::from(self.limit),
            HeaderValue::from(self.remaining),
            HeaderValue::from(secs(self.reset)),
        );
        [
            ("ratelimit-limit", l.clone()),
            ("ratelimit-remaining", r.clone()),
            ("ratelimit-reset", s.clone()),
            ("x-ratelimit-limit", l),
            ("x-ratelimit-remaining", r),
            ("x-ratelimit-reset", s),
        ]
        .into_iter()
        .enumerate()
        .filter(move |(i, _)| if *i < 3 { draft } else { x })
        .map(|(_, field)| field)
    }

    /// The 429 answer: the envelope with `retry_after`, `Retry-After` and the quota headers.
    pub fn rejection(&self) -> GatewayError {
        let retry = secs(self.retry_after).max(1);
        let mut e = GatewayError::new(429, "rate limit exceeded")
            .with_data(serde_json::json!({ "retry_after": retry, "limit": self.limit }))
            .with_retry_after(retry);
        e.headers.extend(self.headers());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: Algorithm, limit: u64, burst: Option<u64>) -> LimitSpec {
        LimitSpec {
            algorithm,
            key: LimitKey::Ip,
            limit,
            window: Duration::from_secs(1),
            burst,
            tiers: None,
            max_keys: 1024,
            headers: QuotaHeaders::Both,
        }
    }

    fn subject(key: &str, limit: u64) -> Subject {
        Subject {
            key: key.into(),
            limit,
        }
    }

    #[test]
    fn sliding_window_passes_the_limit_then_refuses() {
        let l = Limiter::new(spec(Algorithm::SlidingWindow, 5, None));
        let s = subject("-|ip:1.2.3.4", 5);
        let got: Vec<(bool, u64)> = (0..7)
            .map(|_| {
                let v = l.check_local(&s).0;
                (v.allowed, v.remaining)
            })
            .collect();
        assert_eq!(
            got,
            [
                (true, 4),
                (true, 3),
                (true, 2),
                (true, 1),
                (true, 0),
                (false, 0),
                (false, 0)
            ]
        );
        // Refused requests do not count: another key is untouched.
        assert!(l.check_local(&subject("-|ip:5.6.7.8", 5)).0.allowed);
    }

    #[test]
    fn window_estimate_weighs_the_previous_window() {
        // 10 in the previous window, 30% into this one: 7 still count.
        let l = Limiter::new(spec(Algorithm::SlidingWindow, 10, None));
        let v = l.window_verdict(10, 3, 0.3, 10);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        let v = l.window_verdict(10, 4, 0.3, 10);
        assert!(!v.allowed);
        // One more fits once the previous window weighs 6: at 40%.
        let wait = v.retry_after.as_secs_f64();
        assert!((wait - 0.1).abs() < 1e-6, "{wait}");
        let v = l.window_verdict(0, 11, 0.5, 10);
        assert!(!v.allowed);
        assert_eq!(v.reset, Duration::from_millis(500));
        // The window is full from its start: never more than a window to wait.
        for (curr, frac, limit) in [(11, 0.0, 10), (2, 0.01, 1), (2, 0.99, 1)] {
            let v = l.window_verdict(0, curr, frac, limit);
            assert!(!v.allowed);
            assert!(
                v.retry_after <= l.spec.window,
                "{curr} {frac}: {:?}",
                v.retry_after
            );
            assert!(v.reset <= l.spec.window);
        }
    }

    #[test]
    fn concurrency_counts_until_the_guard_drops() {
        let l = Limiter::new(spec(Algorithm::Concurrency, 2, None));
        let s = subject("route", 2);
        let (a, ga) = l.check_local(&s);
        let (b, gb) = l.check_local(&s);
        let (c, gc) = l.check_local(&s);
        assert!(a.allowed && b.allowed && !c.allowed);
        assert!(gc.is_none());
        drop(ga);
        assert!(l.check_local(&s).0.allowed);
        drop(gb);
    }

    #[test]
    fn token_bucket_headers_and_rejection() {
        let l = Limiter::new(spec(Algorithm::TokenBucket, 2, Some(2)));
        let s = subject("k", 2);
        assert_eq!(l.check_local(&s).0.remaining, 1);
        assert_eq!(l.check_local(&s).0.remaining, 0);
        let v = l.check_local(&s).0;
        assert!(!v.allowed);
        // 2 a second: the next token is at most half a second away.
        assert!(v.retry_after <= Duration::from_millis(500));
        let e = v.rejection();
        assert_eq!(e.status.as_u16(), 429);
        let names: Vec<&str> = e.headers.iter().map(|(n, _)| n.as_str()).collect();
        for h in [
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(names.contains(&h), "{h} missing from {names:?}");
        }
    }

    #[test]
    fn leaky_bucket_delays_within_the_queue() {
        let l = Limiter::new(spec(Algorithm::LeakyBucket, 10, Some(2)));
        let s = subject("k", 10);
        let v: Vec<Verdict> = (0..4).map(|_| l.check_local(&s).0).collect();
        assert!(v[0].allowed && v[0].delay < Duration::from_millis(5));
        assert!(v[1].allowed && v[1].delay > Duration::from_millis(90));
        assert!(v[2].allowed && v[2].delay > Duration::from_millis(190));
        assert!(!v[3].allowed);
    }

    #[test]
    fn tiers_by_claim_and_keys_fall_back_to_the_address() {
        let mut s = spec(Algorithm::SlidingWindow, 5, None);
        s.key = LimitKey::Claim("sub".into());
        s.tiers = Some(Tiers {
            claim: "tier".into(),
            limits: HashMap::from([("gold".into(), 100), ("silver".into(), 10)]),
            anonymous: Some(1),
        });
        let l = Limiter::new(s);
        let headers = HeaderMap::new();
        let claims = serde_json::json!({"sub": "alice", "tier": "gold"});
        let ip = Some("10.0.0.1".parse().unwrap());
        let req = |claims| RequestKeys {
            ip,
            headers: &headers,
            claims,
        };
        assert_eq!(l.subject(&req(Some(&claims))), subject("gold|c:alice", 100));
        let bronze = serde_json::json!({"sub": "bob", "tier": "bronze"});
        assert_eq!(l.subject(&req(Some(&bronze))), subject("-|c:bob", 5));
        assert_eq!(l.subject(&req(None)), subject("anonymous|ip:10.0.0.1", 1));
    }

    #[test]
    fn keys_parse() {
        assert_eq!(LimitKey::parse("ip"), Ok(LimitKey::Ip));
        assert!(matches!(
            LimitKey::parse("header:x-api-key"),
            Ok(LimitKey::Header(_))
        ));
        assert!(LimitKey::parse("claim:").is_err());
        assert!(LimitKey::parse("header:bad name").is_err());
        assert!(LimitKey::parse("cookie").is_err());
    }
}
