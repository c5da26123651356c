//! Limits shared by every gateway instance: decided in Redis by a Lua script, atomically,
//! on Redis's clock (so the instances' clocks do not matter). The gateway loads each script
//! once and calls it by its SHA; these functions only say what to send and read the reply.

use super::gcra::Gcra;
use super::{Algorithm, Limiter, Subject, Verdict};

/// Sliding window: the counts of this window and the previous one, in two keys that expire
/// by themselves. KEYS[1]: the key prefix; ARGV: window in ms, limit.
/// Returns {allowed, previous count, current count (this request included), ms into window}.
pub const WINDOW_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local index = math.floor(now / window)
local into = now - index * window
local current_key = KEYS[1] .. ':' .. index
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local curr = tonumber(redis.call('GET', current_key) or '0') + 1
if prev * (1 - into / window) + curr > limit + 1e-9 then
  return {0, prev, curr, into}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, window * 2)
return {1, prev, curr, into}
"#;

/// Token and leaky bucket (GCRA): the time at which the bucket is full again, in
/// microseconds of Redis's clock. KEYS[1]: the key; ARGV: interval in µs, capacity in
/// intervals. Returns {allowed, delay µs, full-in µs}, as `gcra::decide`.
pub const BUCKET_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now)
local full_in = start - now + interval
if full_in > capacity * interval then
  return {0, start - now, start - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', now + full_in), 'PX', math.ceil(full_in / 1000) + 1)
return {1, start - now, full_in}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    Window,
    Bucket,
}

impl Script {
    pub fn source(self) -> &'static str {
        match self {
            Script::Window => WINDOW_SCRIPT,
            Script::Bucket => BUCKET_SCRIPT,
        }
    }
}

/// A script call: which script, its one key, its arguments.
pub struct Call {
    pub script: Script,
    pub key: String,
    pub args: [u64; 2],
}

impl Limiter {
    /// The Redis call deciding `subject`; `prefix` names the limit (route and position) so
    /// every instance with the same config counts in the same keys. The key sits in braces,
    /// so a cluster keeps a limit's keys on one node.
    pub fn shared_call(&self, prefix: &str, subject: &Subject) -> Call {
        let key = format!("{prefix}:{{{}}}", subject.key);
        match self.spec.algorithm {
            Algorithm::SlidingWindow => Call {
                script: Script::Window,
                key,
                args: [(self.spec.window.as_millis() as u64).max(1), subject.limit],
            },
            _ => {
                let (interval, capacity) = self.bucket(subject.limit);
                Call {
                    script: Script::Bucket,
                    key,
                    args: [(interval / 1000).max(1), capacity],
                }
            }
        }
    }

    /// Read the script's reply; `None` when it has not the expected shape.
    pub fn shared_verdict(&self, subject: &Subject, reply: &[i64]) -> Option<Verdict> {
        let n = |i: usize| reply.get(i).map(|v| (*v).max(0) as u64);
        match self.spec.algorithm {
            Algorithm::SlidingWindow => {
                let (allowed, prev, curr, into) = (n(0)?, n(1)?, n(2)?, n(3)?);
                let window = self.spec.window.as_millis().max(1) as f64;
                let mut v = self.window_verdict(prev, curr, into as f64 / window, subject.limit);
                v.allowed = allowed == 1;
                Some(v)
            }
            _ => {
                let g = Gcra {
                    allowed: n(0)? == 1,
                    delay_ns: n(1)? * 1000,
                    full_in_ns: n(2)? * 1000,
                };
                Some(self.bucket_verdict(subject.limit, g))
            }
        }
    }
}
