//! The OTLP wire format of a batch of spans: an `ExportTraceServiceRequest` in protocol
//! buffers, written directly (field numbers from opentelemetry-proto's
//! `collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`). Only what the gateway sends
//! is written: one resource, one instrumentation scope, spans with attributes and a status.
//! The tests decode it with the protocol's own definitions.

use super::{Kind, Span, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

// Every message is written once, straight into the output: its length is computed first
// (the `*_len` functions), so nothing is written twice or into a buffer of its own.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// The head of a length-delimited field of `n` bytes.
fn len_head(out: &mut Vec<u8>, field: u32, n: usize) {
    tag(out, field, LEN);
    varint(out, n as u64);
}

/// A length-delimited field of `n` bytes, head included.
fn len_field(field: u32, n: usize) -> usize {
    tag_len(field) + varint_len(n as u64) + n
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    len_head(out, field, b.len());
    out.extend_from_slice(b);
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, VARINT);
    varint(out, v);
}

/// `AnyValue { string_value = 1; bool_value = 2; int_value = 3 }`.
fn any_len(value: &Value) -> usize {
    match value {
        Value::Str(s) => len_field(1, s.len()),
        Value::Static(s) => len_field(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
    }
}

/// `KeyValue { key = 1; AnyValue value = 2 }`.
fn key_value_len(key: &str, value: &Value) -> usize {
    len_field(1, key.len()) + len_field(2, any_len(value))
}

pub fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    len_head(out, field, key_value_len(key, value));
    bytes(out, 1, key.as_bytes());
    len_head(out, 2, any_len(value));
    match value {
        Value::Str(s) => bytes(out, 1, s.as_bytes()),
        Value::Static(s) => bytes(out, 1, s.as_bytes()),
        Value::Bool(b) => uint(out, 2, u64::from(*b)),
        Value::Int(i) => uint(out, 3, *i as u64),
    }
}

/// `Resource { repeated KeyValue attributes = 1 }`.
pub fn resource(attributes: &[(String, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in attributes {
        key_value(&mut out, 1, k, v);
    }
    out
}

/// `InstrumentationScope { name = 1; version = 2 }`.
const SCOPE_NAME: &[u8] = b"gateway";
const SCOPE_VERSION: &[u8] = env!("CARGO_PKG_VERSION").as_bytes();

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }` with one
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }` holding
/// one `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }`.
pub fn export_request(resource: &[u8], spans: &[Span]) -> Vec<u8> {
    let span_lens: Vec<usize> = spans.iter().map(span_len).collect();
    let scope = len_field(1, SCOPE_NAME.len()) + len_field(2, SCOPE_VERSION.len());
    let scope_spans =
        len_field(1, scope) + span_lens.iter().map(|n| len_field(2, *n)).sum::<usize>();
    let resource_spans = len_field(1, resource.len()) + len_field(2, scope_spans);
    let total = len_field(1, resource_spans);
    let mut out = Vec::with_capacity(total);
    len_head(&mut out, 1, resource_spans);
    bytes(&mut out, 1, resource);
    len_head(&mut out, 2, scope_spans);
    len_head(&mut out, 1, scope);
    bytes(&mut out, 1, SCOPE_NAME);
    bytes(&mut out, 2, SCOPE_VERSION);
    for (span, n) in spans.iter().zip(span_lens) {
        len_head(&mut out, 2, n);
        write_span(&mut out, span);
    }
    debug_assert_eq!(out.len(), total);
    out
}

fn status_len(msg: &str) -> usize {
    len_field(2, msg.len()) + 2
}

/// `Span`: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7 and end 8
/// (fixed64), attributes 9, status 15 (`message = 2; code = 3`), flags 16 (fixed32).
fn span_len(span: &Span) -> usize {
    len_field(1, 16)
        + len_field(2, 8)
        + span.parent.map_or(0, |_| len_field(4, 8))
        + len_field(5, span.name.len())
        + 2
        + 2 * 9
        + span
            .attributes
            .iter()
            .map(|(k, v)| len_field(9, key_value_len(k, v)))
            .sum::<usize>()
        + span
            .error
            .as_ref()
            .map_or(0, |m| len_field(15, status_len(m)))
        + tag_len(16)
        + 4
}

fn write_span(out: &mut Vec<u8>, span: &Span) {
    bytes(out, 1, &span.trace_id);
    bytes(out, 2, &span.span_id);
    if let Some(parent) = &span.parent {
        bytes(out, 4, parent);
    }
    bytes(out, 5, span.name.as_bytes());
    uint(
        out,
        6,
        match span.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
    );
    tag(out, 7, FIXED64);
    out.extend_from_slice(&span.start_ns.to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&span.end_ns.to_le_bytes());
    for (k, v) in &span.attributes {
        key_value(out, 9, k, v);
    }
    if let Some(msg) = &span.error {
        len_head(out, 15, status_len(msg));
        bytes(out, 2, msg.as_bytes());
        uint(out, 3, 2);
    }
    // The W3C flags (sampled), and whether the parent is known to be in another process
    // (bit 8: the next bit is set; bit 9: remote).
    let remote = match (&span.parent, span.remote_parent) {
        (Some(_), true) => 0x300,
        (Some(_), false) => 0x100,
        (None, _) => 0,
    };
    tag(out, 16, FIXED32);
    out.extend_from_slice(&(0x01u32 | remote).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_base_128_little_endian() {
        for (v, want) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn lengths_are_computed_as_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
        let long = "x".repeat(300);
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            remote_parent: true,
            name: long.clone(),
            kind: Kind::Server,
            start_ns: 1,
            end_ns: u64::MAX,
            attributes: vec![
                ("a", Value::Str(long.clone())),
                ("b", Value::Int(-5)),
                ("c", Value::Bool(true)),
                ("d", Value::Static("e")),
            ],
            error: Some(long),
        };
        let mut out = Vec::new();
        write_span(&mut out, &span);
        assert_eq!(out.len(), span_len(&span));
        // export_request checks its own total in debug builds.
        let all = export_request(
            &resource(&[("k".into(), Value::Static("v"))]),
            &[span.clone(), span],
        );
        assert!(all.len() > 2 * out.len());
    }

    #[test]
    fn a_negative_int_is_ten_bytes_as_protobuf_writes_int64() {
        let mut out = Vec::new();
        key_value(&mut out, 1, "k", &Value::Int(-1));
        // field 1 LEN, kv len, key (3 bytes), value field 2 LEN, any len, int tag + 10 bytes
        assert_eq!(out.len(), 2 + 3 + 2 + 1 + 10);
        assert_eq!(&out[out.len() - 11..out.len() - 10], &[0x18]);
    }
}
