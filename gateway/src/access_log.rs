//! The access log: one JSON object a line, written by its own thread so a slow disk never
//! stalls a request.
//!
//! Cost per request: a line is formatted into a buffer the worker thread reuses (no
//! allocation), then appended to the shared batch under a short lock; nothing wakes the
//! writer. The writer thread wakes every `FLUSH_EVERY` (or when `FLUSH_BYTES` wait), takes
//! the whole batch and writes it at once. A batch that grows past `MAX_PENDING` (the disk
//! cannot keep up) drops lines and counts them rather than blocking the proxy.
//!
//! The file is opened at start (so a bad path is refused before serving), but the writer
//! thread starts only with [`AccessLog::start_writer`], which the daemon calls from a
//! background service: after `-d` has forked, since a thread started before the fork does
//! not exist in the daemon.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The writer wakes at least this often when lines wait.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// ... and at once when this much waits.
const FLUSH_BYTES: usize = 64 * 1024;
/// Lines beyond this much waiting are dropped and counted.
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    dropped: Arc<AtomicU64>,
    /// The sink, until the writer thread starts.
    pending: Arc<Mutex<Option<Box<dyn Write + Send>>>>,
}

struct Shared {
    /// Lines waiting for the writer.
    batch: Mutex<Vec<u8>>,
    /// The writer thread, woken when a batch is large.
    writer: OnceLock<std::thread::Thread>,
}

thread_local! {
    /// Where a worker thread formats its lines.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// The fields of one line.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub client: Option<std::net::IpAddr>,
    /// Who the verified token says the caller is (`sub`, else `client_id`); never the token.
    pub subject: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<std::net::SocketAddr>,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_sent: usize,
    pub error: Option<&'a str>,
}

impl AccessLog {
    /// `stdout`, `off`, or a file path (appended to).
    pub fn open(dest: &str) -> std::io::Result<AccessLog> {
        let dropped = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(Mutex::new(None));
        let sink: Box<dyn Write + Send> = match dest {
            "off" => {
                return Ok(AccessLog {
                    shared: None,
                    dropped,
                    pending,
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            // Opened again by its path after SIGUSR1 or a reload (logrotate).
            path => Box::new(crate::logging::LogFile::open(std::path::Path::new(path))?),
        };
        *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
        Ok(AccessLog {
            shared: Some(Arc::new(Shared {
                batch: Mutex::new(Vec::with_capacity(FLUSH_BYTES * 2)),
                writer: OnceLock::new(),
            })),
            dropped,
            pending,
        })
    }

    /// Start the writer thread (once; later calls do nothing). Lines written before it
    /// starts wait in the batch.
    pub fn start_writer(&self) -> std::io::Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sink) = taken {
            let shared2 = shared.clone();
            let t = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_loop(shared2, sink))?;
            let _ = shared.writer.set(t.thread().clone());
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn write(&self, e: &Entry) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            format_into(&mut line, e, SystemTime::now());
            let mut batch = shared.batch.lock().unwrap_or_else(|p| p.into_inner());
            let before = batch.len();
            if before + line.len() > MAX_PENDING {
                drop(batch);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            batch.extend_from_slice(line.as_bytes());
            let large = before < FLUSH_BYTES && batch.len() >= FLUSH_BYTES;
            drop(batch);
            if large {
                if let Some(t) = shared.writer.get() {
                    t.unpark();
                }
            }
        });
    }
}

fn write_loop(shared: Arc<Shared>, mut sink: Box<dyn Write + Send>) {
    let mut taken = Vec::with_capacity(FLUSH_BYTES * 2);
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        {
            let mut batch = shared.batch.lock().unwrap_or_else(|p| p.into_inner());
            if batch.is_empty() {
                continue;
            }
            std::mem::swap(&mut *batch, &mut taken);
        }
        let _ = sink.write_all(&taken);
        let _ = sink.flush();
        taken.clear();
        // After a burst, give the memory back.
        if taken.capacity() > MAX_PENDING / 8 {
            taken.shrink_to(FLUSH_BYTES * 2);
        }
    }
}

#[cfg(test)]
fn format_line(e: &Entry, now: SystemTime) -> String {
    let mut s = String::new();
    format_into(&mut s, e, now);
    s
}

fn format_into(s: &mut String, e: &Entry, now: SystemTime) {
    s.push_str("{\"ts\":\"");
    push_rfc3339(s, now);
    s.push('"');
    field(s, "request_id", Some(e.request_id));
    // Lowercase hex, nothing to escape.
    raw(s, "trace_id", e.trace_id);
    s.push_str(",\"client\":\"");
    if let Some(ip) = e.client {
        s.push_str(plugins::ipfilter::IpText::new(ip).as_str());
    }
    s.push('"');
    field(s, "subject", e.subject);
    // A method is an HTTP token: no quote, backslash or control character.
    raw(s, "method", e.method);
    field(s, "host", Some(e.host));
    field(s, "path", Some(e.path));
    field(s, "route", e.route);
    field(s, "upstream", e.upstream);
    s.push_str(",\"target\":");
    match e.target {
        Some(t) => {
            s.push('"');
            if t.is_ipv6() {
                s.push('[');
            }
            s.push_str(plugins::ipfilter::IpText::new(t.ip()).as_str());
            if t.is_ipv6() {
                s.push(']');
            }
            s.push(':');
            s.push_str(itoa::Buffer::new().format(t.port()));
            s.push('"');
        }
        None => s.push_str("null"),
    }
    let mut n = itoa::Buffer::new();
    s.push_str(",\"status\":");
    s.push_str(n.format(e.status));
    // Milliseconds with three decimals, from whole microseconds.
    let us = (e.duration_ms * 1000.0).round().max(0.0) as u64;
    s.push_str(",\"duration_ms\":");
    s.push_str(n.format(us / 1000));
    push_millis(s, (us % 1000) as u32);
    s.push_str(",\"bytes_sent\":");
    s.push_str(n.format(e.bytes_sent));
    field(s, "error", e.error);
    s.push_str("}\n");
}

/// A field whose value needs no escaping.
fn raw(s: &mut String, key: &str, value: &str) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":\"");
    s.push_str(value);
    s.push('"');
}

fn field(s: &mut String, key: &str, value: Option<&str>) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    match value {
        Some(v) => push_json_str(s, v),
        None => s.push_str("null"),
    }
}

fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    // Runs of plain bytes are copied whole; only ASCII is escaped, so every cut is on a
    // character boundary.
    let mut start = 0;
    for (i, b) in v.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        s.push_str(&v[start..i]);
        if escaped.is_empty() {
            let _ = write!(s, "\\u{b:04x}");
        } else {
            s.push_str(escaped);
        }
        start = i + 1;
    }
    s.push_str(&v[start..]);
    s.push('"');
}

thread_local! {
    /// The date and time to the second of the last line this thread wrote, formatted.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// UTC time as `2026-11-27T06:45:30.123Z`; the part to the second is formatted once a
/// second per thread.
fn push_rfc3339(s: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    STAMP.with(|stamp| {
        let Ok(mut stamp) = stamp.try_borrow_mut() else {
            return format_rfc3339(s, secs, millis);
        };
        if stamp.0 != secs {
            stamp.1.clear();
            format_rfc3339(&mut stamp.1, secs, 0);
            // Keep `YYYY-MM-DDTHH:MM:SS` only.
            stamp.1.truncate(19);
            stamp.0 = secs;
        }
        s.push_str(&stamp.1);
        push_millis(s, millis);
        s.push('Z');
    })
}

/// `.` then three digits.
fn push_millis(s: &mut String, millis: u32) {
    let m = millis.min(999);
    s.push('.');
    for d in [m / 100, m / 10 % 10, m % 10] {
        s.push(char::from(b'0' + d as u8));
    }
}

fn format_rfc3339(s: &mut String, secs: u64, millis: u32) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis
    );
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn line_is_json_with_escapes() {
        let e = Entry {
            request_id: "abc",
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            client: Some("127.0.0.1".parse().unwrap()),
            subject: None,
            method: "GET",
            host: "h",
            path: "/a\"b\n",
            route: Some("r"),
            upstream: None,
            target: None,
            status: 404,
            duration_ms: 1.5,
            bytes_sent: 10,
            error: None,
        };
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let line = format_line(&e, t);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["status"], 404);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["ts"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v["duration_ms"], 1.5);
        // The same second again (the cached part), another millisecond, a short duration.
        let e = Entry {
            duration_ms: 0.0042,
            ..e
        };
        let line = format_line(&e, t + Duration::from_millis(5));
        assert!(
            line.contains("\"ts\":\"2026-11-18T11:06:40.128Z\""),
            "{line}"
        );
        assert!(line.contains("\"duration_ms\":0.004,"), "{line}");
        let e = Entry {
            path: "/é\u{1}x",
            client: Some("2001:db8::1".parse().unwrap()),
            target: Some("[::1]:8080".parse().unwrap()),
            ..e
        };
        let v: serde_json::Value = serde_json::from_str(&format_line(&e, t)).unwrap();
        assert_eq!(v["path"], "/é\u{1}x");
        assert_eq!(v["client"], "2001:db8::1");
        assert_eq!(v["target"], "[::1]:8080");
        let line = format_line(&e, t + Duration::from_secs(86_400));
        assert!(
            line.contains("\"ts\":\"2026-11-19T11:06:40.123Z\""),
            "{line}"
        );
    }
}
