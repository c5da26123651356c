//! Traces: the spans of sampled requests, exported over OTLP/HTTP (protocol buffers) to a
//! collector named by `server.tracing`.
//!
//! The proxy makes one server span a request and one client span an upstream try; the
//! fan-out service one client span a backend call. A finished span goes into one bounded
//! queue ([`record`]: a short lock and a push); a background service ([`Exporter`]) takes
//! the queue every `flush_ms` (or as soon as a batch is full), encodes it ([`otlp`]) and
//! posts it. A full queue drops spans and counts them; a collector that is down or slow
//! costs the export task its timeout and the batch, never a request. With tracing off no
//! span is made, and nothing here runs.
//!
//! Sampling is parent-based: a request that carries a valid `traceparent` is traced when its
//! sampled flag is set; a new trace is sampled with probability `sample_ratio`, and the
//! decision travels upstream in the flag. A leaf: it imports only the client, the metrics
//! and the config's settings (through [`Tracer::new`]'s caller).

mod export;
mod otlp;

pub use export::Exporter;

use crate::client::Url;
use crate::metrics::METRICS;
use http::{HeaderName, HeaderValue};
use pingora::protocols::tls::CaType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The compiled `server.tracing`: the sampler and where spans go.
pub struct Tracer {
    /// Probability that a request without a sampled parent starts a trace.
    pub sample_ratio: f64,
    pub export: ExportSettings,
}

pub struct ExportSettings {
    pub url: Url,
    /// Sent with every export (an API key, a tenant).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The encoded `Resource` (service.name, service.version, the configured attributes).
    pub resource: Vec<u8>,
    /// Spans a request to the collector carries at most.
    pub batch: usize,
    /// Spans waiting at most; past it new ones are dropped.
    pub queue: usize,
    /// The longest a span waits before an export.
    pub flush: Duration,
    /// One export's bound (connect, send, answer).
    pub timeout: Duration,
    pub ca: Option<Arc<CaType>>,
}

impl Tracer {
    /// `resource`: attributes beyond `service.name` and `service.version`.
    pub fn new(
        sample_ratio: f64,
        service_name: &str,
        resource: &[(String, String)],
        export: ExportSettings,
    ) -> Tracer {
        let mut attrs = vec![
            ("service.name".to_string(), Value::Str(service_name.into())),
            (
                "service.version".to_string(),
                Value::Static(env!("CARGO_PKG_VERSION")),
            ),
            ("telemetry.sdk.name".to_string(), Value::Static("gateway")),
            ("telemetry.sdk.language".to_string(), Value::Static("rust")),
        ];
        for (k, v) in resource {
            attrs.retain(|(have, _)| have != k);
            attrs.push((k.clone(), Value::Str(v.clone())));
        }
        Tracer {
            sample_ratio,
            export: ExportSettings {
                resource: otlp::resource(&attrs),
                ..export
            },
        }
    }

    /// Whether a request is traced: its parent's decision when it has a parent, else a draw.
    pub fn sample(&self, parent_sampled: Option<bool>) -> bool {
        match parent_sampled {
            Some(s) => s,
            None => self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The gateway serving a client's request.
    Server,
    /// The gateway calling an upstream.
    Client,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Static(&'static str),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Static(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    /// The parent is another process's span (from a `traceparent`).
    pub remote_parent: bool,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Set: the span's status is an error, with this message.
    pub error: Option<String>,
}

/// Where a span belongs: its trace and its parent span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// A span begun and not yet finished: its id and start.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    pub span_id: [u8; 8],
    pub start_ns: u64,
}

impl Open {
    pub fn now() -> Open {
        Open {
            span_id: span_id(),
            start_ns: now_ns(),
        }
    }

    /// This span as the parent of the next ones in `trace_id`.
    pub fn as_parent(&self, trace_id: [u8; 16]) -> Parent {
        Parent {
            trace_id,
            span_id: self.span_id,
        }
    }
}

/// A new span id (never all zeros).
pub fn span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// The bytes of lowercase or uppercase hex text (`None` on any other character).
pub fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(text[2 * i])? << 4) | digit(text[2 * i + 1])?;
    }
    Some(out)
}

/// A valid W3C `traceparent` (version 00), as its hex fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 32],
    pub span_id: [u8; 16],
    pub flags: [u8; 2],
}

impl TraceParent {
    /// Per W3C Trace Context: lowercase hex, no all-zero id.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
        let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
        if !hex(trace) || !hex(span) || !hex(flags) || zero(trace) || zero(span) {
            return None;
        }
        let mut tp = TraceParent {
            trace_id: [0; 32],
            span_id: [0; 16],
            flags: [flags[0], flags[1]],
        };
        tp.trace_id.copy_from_slice(trace);
        tp.span_id.copy_from_slice(span);
        Some(tp)
    }

    /// The sampled flag (the flags' lowest bit).
    pub fn sampled(&self) -> bool {
        matches!(
            self.flags[1],
            b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
        )
    }

    /// Where a span of this request belongs: the trace, under the caller's span.
    pub fn parent(&self) -> Option<Parent> {
        Some(Parent {
            trace_id: unhex(&self.trace_id)?,
            span_id: unhex(&self.span_id)?,
        })
    }
}

/// The `traceparent` for a hop whose parent is `span_id`.
pub fn traceparent(trace_id: &[u8; 32], span_id: &[u8; 8], flags: [u8; 2]) -> HeaderValue {
    let mut tp = [0u8; 55];
    tp[..3].copy_from_slice(b"00-");
    tp[3..35].copy_from_slice(trace_id);
    tp[35] = b'-';
    hex_into(span_id, &mut tp[36..52]);
    tp[52] = b'-';
    tp[53..55].copy_from_slice(&flags);
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&tp).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The spans waiting for the exporter.
struct Queue {
    spans: Mutex<Vec<Span>>,
    /// Spans held at most (the running config's `queue_spans`, set by the exporter).
    limit: AtomicUsize,
    /// A queue this long wakes the exporter early.
    batch: AtomicUsize,
    wake: tokio::sync::Notify,
}

static QUEUE: LazyLock<Queue> = LazyLock::new(|| Queue {
    spans: Mutex::new(Vec::new()),
    limit: AtomicUsize::new(DEFAULT_QUEUE),
    batch: AtomicUsize::new(DEFAULT_BATCH),
    wake: tokio::sync::Notify::new(),
});

pub const DEFAULT_QUEUE: usize = 8192;
pub const DEFAULT_BATCH: usize = 512;

/// Hand a finished span to the exporter; dropped (and counted) when the queue is full.
pub fn record(span: Span) {
    let q = &*QUEUE;
    let len = {
        let mut spans = q.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() >= q.limit.load(Ordering::Relaxed) {
            drop(spans);
            METRICS
                .trace_spans_dropped
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        spans.push(span);
        spans.len()
    };
    if len == q.batch.load(Ordering::Relaxed) {
        q.wake.notify_one();
    }
}

/// Everything queued so far.
fn take_queued() -> Vec<Span> {
    std::mem::take(&mut *QUEUE.spans.lock().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = [0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd];
        let mut text = [0u8; 16];
        hex_into(&id, &mut text);
        assert_eq!(&text, b"0af7651916cd43dd");
        assert_eq!(unhex::<8>(&text), Some(id));
        assert_eq!(unhex::<8>(b"0AF7651916CD43DD"), Some(id));
        assert_eq!(unhex::<8>(b"0af7651916cd43dg"), None);
        assert_eq!(unhex::<8>(b"0af7"), None);
    }

    #[test]
    fn traceparent_parsing() {
        let good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tp = TraceParent::parse(good).unwrap();
        assert_eq!(&tp.trace_id, b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(&tp.span_id, b"b7ad6b7169203331");
        assert!(tp.sampled());
        let parent = tp.parent().unwrap();
        assert_eq!(
            parent.span_id,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert_eq!(
            traceparent(&tp.trace_id, &parent.span_id, tp.flags).as_bytes(),
            good
        );
        assert!(
            !TraceParent::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02")
                .unwrap()
                .sampled()
        );
        for bad in [
            &b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            b"",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn the_parent_decides_when_there_is_one() {
        let settings = || ExportSettings {
            url: Url::parse("http://127.0.0.1:4318/v1/traces", "").unwrap(),
            headers: Vec::new(),
            resource: Vec::new(),
            batch: 1,
            queue: 1,
            flush: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            ca: None,
        };
        let never = Tracer::new(0.0, "g", &[], settings());
        let always = Tracer::new(1.0, "g", &[], settings());
        assert!(never.sample(Some(true)));
        assert!(!always.sample(Some(false)));
        assert!((0..1000).all(|_| !never.sample(None)));
        assert!((0..1000).all(|_| always.sample(None)));
        let half = Tracer::new(0.5, "g", &[], settings());
        let n = (0..10_000).filter(|_| half.sample(None)).count();
        assert!((4000..6000).contains(&n), "{n}");
    }
}
