//! The daemon's own log: env_logger (`RUST_LOG`, default `info`) to stderr or to
//! `server.error_log`, except that the line Pingora writes at ERROR for every connection the
//! guard cuts at the head deadline is folded: the first of a quiet spell is written, the rest
//! are counted and written as one summary line at most every [`SUMMARY_EVERY`]. Ten thousand
//! slow clients make a handful of lines, and `gateway_client_timeouts_total{phase="header"}`
//! keeps the exact count.
//!
//! Log files ([`LogFile`]: the error log and the access log) follow their path: after
//! [`request_reopen`] (SIGUSR1, or any reload) each opens its path again before its next
//! write, so logrotate can move them away.

use log::{Level, Log, Metadata, Record};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bumped to have every [`LogFile`] open its path again.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Where the daemon's log lines go when `server.error_log` is set; stderr otherwise.
static ERROR_LOG: Mutex<Option<LogFile>> = Mutex::new(None);

/// Have every log file opened again by its path before its next write.
pub fn request_reopen() {
    REOPEN.fetch_add(1, Ordering::AcqRel);
}

/// A file appended to, that opens its path again after [`request_reopen`].
pub struct LogFile {
    path: PathBuf,
    file: File,
    seen: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: open_append(path)?,
            seen: REOPEN.load(Ordering::Acquire),
        })
    }

    fn follow(&mut self) {
        let now = REOPEN.load(Ordering::Acquire);
        if now == self.seen {
            return;
        }
        self.seen = now;
        match open_append(&self.path) {
            Ok(f) => self.file = f,
            // Keep writing where we were rather than lose lines.
            Err(e) => eprintln!("cannot open {} again: {e}", self.path.display()),
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.follow();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Send the daemon's log to `path` from now on.
pub fn set_error_log(path: &Path) -> io::Result<()> {
    let file = LogFile::open(path)?;
    *ERROR_LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

/// env_logger's output: the error log when there is one, else stderr.
struct Output;

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match ERROR_LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match ERROR_LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The error a read gets past the head deadline (guard.rs); Pingora logs it, and the lines
/// are folded here.
pub const HEAD_TIMED_OUT: &str = "request head not received in time";

struct Folding {
    inner: env_logger::Logger,
    folded: AtomicU64,
    /// When the last line about cut connections was written.
    last: Mutex<Option<Instant>>,
}

/// Install the logger; call once, first thing in `main`.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Pipe(Box::new(Output)))
        .build();
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
