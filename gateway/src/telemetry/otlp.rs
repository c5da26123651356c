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

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, VARINT);
    varint(out, v);
}

/// A nested message: written on its own, then copied in after its length.
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes(out, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`; `AnyValue { string_value = 1; bool_value =
/// 2; int_value = 3 }`.
pub fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        bytes(kv, 1, key.as_bytes());
        message(kv, 2, |any| match value {
            Value::Str(s) => bytes(any, 1, s.as_bytes()),
            Value::Static(s) => bytes(any, 1, s.as_bytes()),
            Value::Bool(b) => uint(any, 2, u64::from(*b)),
            Value::Int(i) => uint(any, 3, *i as u64),
        });
    });
}

/// `Resource { repeated KeyValue attributes = 1 }`.
pub fn resource(attributes: &[(String, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in attributes {
        key_value(&mut out, 1, k, v);
    }
    out
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }` with one
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }` holding
/// one `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }`.
pub fn export_request(resource: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + spans.len() * 320);
    message(&mut out, 1, |rs| {
        bytes(rs, 1, resource);
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes(scope, 1, b"gateway");
                bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for span in spans {
                message(ss, 2, |s| write_span(s, span));
            }
        });
    });
    out
}

/// `Span`: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7 and end 8
/// (fixed64), attributes 9, status 15 (`message = 2; code = 3`), flags 16 (fixed32).
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
        message(out, 15, |st| {
            bytes(st, 2, msg.as_bytes());
            uint(st, 3, 2);
        });
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
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
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
