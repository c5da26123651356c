//! The access log: one JSON object a line, written by its own thread so a slow disk never
//! stalls a request. Lines queue in a bounded channel; when it is full a line is dropped
//! and counted rather than blocking the proxy.
//!
//! The file is opened at start (so a bad path is refused before serving), but the writer
//! thread starts only with [`AccessLog::start_writer`], which the daemon calls from a
//! background service: after `-d` has forked, since a thread started before the fork does
//! not exist in the daemon.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const QUEUE: usize = 16 * 1024;

type Writer = (Receiver<String>, Box<dyn Write + Send>);

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    /// The writer's end, until its thread starts.
    pending: Arc<Mutex<Option<Writer>>>,
}

/// The fields of one line.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub client: &'a str,
    /// Who the verified token says the caller is (`sub`, else `client_id`); never the token.
    pub subject: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
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
                    tx: None,
                    dropped,
                    pending,
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            // Opened again by its path after SIGUSR1 or a reload (logrotate).
            path => Box::new(crate::logging::LogFile::open(std::path::Path::new(path))?),
        };
        let (tx, rx) = sync_channel(QUEUE);
        *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((rx, sink));
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
            pending,
        })
    }

    /// Start the writer thread (once; later calls do nothing). Lines written before it
    /// starts wait in the queue.
    pub fn start_writer(&self) -> std::io::Result<()> {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((rx, sink)) = taken {
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_loop(rx, sink))?;
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn write(&self, e: &Entry) {
        let Some(tx) = &self.tx else { return };
        let line = format_line(e, SystemTime::now());
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_loop(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Batch whatever else is already queued, then flush once.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

fn format_line(e: &Entry, now: SystemTime) -> String {
    let mut s = String::with_capacity(320);
    s.push_str("{\"ts\":\"");
    push_rfc3339(&mut s, now);
    s.push('"');
    field(&mut s, "request_id", Some(e.request_id));
    field(&mut s, "trace_id", Some(e.trace_id));
    field(&mut s, "client", Some(e.client));
    field(&mut s, "subject", e.subject);
    field(&mut s, "method", Some(e.method));
    field(&mut s, "host", Some(e.host));
    field(&mut s, "path", Some(e.path));
    field(&mut s, "route", e.route);
    field(&mut s, "upstream", e.upstream);
    field(&mut s, "target", e.target);
    let _ = write!(
        s,
        ",\"status\":{},\"duration_ms\":{:.3},\"bytes_sent\":{}",
        e.status, e.duration_ms, e.bytes_sent
    );
    field(&mut s, "error", e.error);
    s.push_str("}\n");
    s
}

fn field(s: &mut String, key: &str, value: Option<&str>) {
    let _ = write!(s, ",\"{key}\":");
    match value {
        Some(v) => push_json_str(s, v),
        None => s.push_str("null"),
    }
}

fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// UTC time as `2026-11-27T06:45:30.123Z`.
fn push_rfc3339(s: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
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
            client: "127.0.0.1",
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
    }
}
