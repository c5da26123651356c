//! The daemon's own log: env_logger (`RUST_LOG`, default `info`), except that the line Pingora
//! writes at ERROR for every connection the guard cuts at the head deadline is folded: the
//! first of a quiet spell is written, the rest are counted and written as one summary line at
//! most every [`SUMMARY_EVERY`]. Ten thousand slow clients make a handful of lines, and
//! `gateway_client_timeouts_total{phase="header"}` keeps the exact count.

use crate::guard::HEAD_TIMED_OUT;
use log::{Level, Log, Metadata, Record};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

struct Folding {
    inner: env_logger::Logger,
    folded: AtomicU64,
    /// When the last line about cut connections was written.
    last: Mutex<Option<Instant>>,
}

/// Install the logger; call once, first thing in `main`.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let logger = Folding {
        inner,
        folded: AtomicU64::new(0),
        last: Mutex::new(None),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

impl Folding {
    fn is_head_timeout(record: &Record) -> bool {
        record.level() == Level::Error
            && record.target().starts_with("pingora")
            && record.args().to_string().contains(HEAD_TIMED_OUT)
    }

    /// Count one cut connection; say so when the last line is old enough.
    fn fold(&self) {
        self.folded.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < SUMMARY_EVERY) {
            return;
        }
        *last = Some(now);
        // Every cut since the last line, this one included.
        let n = self.folded.swap(0, Ordering::Relaxed);
        drop(last);
        log::warn!(
            "{n} client connection(s) closed: {HEAD_TIMED_OUT} (client_header_timeout_ms); \
             the next such lines are summed at most every {}s",
            SUMMARY_EVERY.as_secs()
        );
    }
}

impl Log for Folding {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if Self::is_head_timeout(record) {
            self.fold();
        } else {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}
