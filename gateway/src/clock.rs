//! The process clock: time since the process started, for what counts time without a wall
//! clock (bans, rate-limit windows, JWKS refresh). A leaf: it imports nothing of the gateway.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Time since the process started (since the first call, which `main` makes early).
pub fn uptime() -> Duration {
    START.elapsed()
}
