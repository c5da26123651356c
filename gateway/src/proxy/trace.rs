//! How a request is told apart: its request id (the client's, when acceptable) and its W3C
//! trace context (continued from a valid `traceparent`, or begun here).

use crate::wire::{TRACEPARENT, X_REQUEST_ID};
use http::HeaderValue;
use pingora::http::RequestHeader;

/// Longest client-sent `X-Request-Id` that is kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The ids of one request.
pub struct Ids {
    pub request_id: HeaderValue,
    /// The trace id (lowercase hex) and flags, kept from the client or made here.
    pub trace_id: [u8; 32],
    pub trace_flags: [u8; 2],
}

impl Default for Ids {
    fn default() -> Ids {
        Ids {
            request_id: HeaderValue::from_static(""),
            trace_id: [b'0'; 32],
            trace_flags: *b"01",
        }
    }
}

impl Ids {
    /// The ids of a request head: the client's request id and trace when valid.
    pub fn of(req: &RequestHeader) -> Ids {
        let request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if acceptable_request_id(v) => v.clone(),
            _ => new_request_id(),
        };
        let (trace_id, trace_flags) = match req
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            Some(kept) => kept,
            None => (random_hex(), *b"01"),
        };
        Ids {
            request_id,
            trace_id,
            trace_flags,
        }
    }

    /// The `traceparent` for one hop upstream: the same trace id, a new parent id.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        tp[3..35].copy_from_slice(&self.trace_id);
        tp[35] = b'-';
        tp[36..52].copy_from_slice(&random_hex::<16>());
        tp[52] = b'-';
        tp[53..55].copy_from_slice(&self.trace_flags);
        HeaderValue::from_bytes(&tp).ok()
    }
}

pub fn new_request_id() -> HeaderValue {
    // 32 lowercase hex digits are always a valid header value.
    HeaderValue::from_bytes(&random_hex::<32>()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn random_hex<const N: usize>() -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    let mut n = fastrand::u128(..);
    for (i, b) in out.iter_mut().enumerate() {
        if i == 32 {
            n = fastrand::u128(..);
        }
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
}

/// The trace id and flags of a valid `traceparent` (version 00), per W3C Trace Context.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    if !hex(trace) || !hex(span) || !hex(flags) || zero(trace) || zero(span) {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(trace);
    Some((t, [flags[0], flags[1]]))
}

fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (trace, flags) = parse_traceparent(good).unwrap();
        assert_eq!(&trace, b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(&flags, b"01");
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
            assert!(parse_traceparent(bad).is_none(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn one_hop_keeps_the_trace_and_its_flags() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )
        .unwrap();
        req.insert_header("x-request-id", "abc").unwrap();
        let ids = Ids::of(&req);
        assert_eq!(ids.request_id, "abc");
        let next = ids.traceparent().unwrap();
        let next = next.as_bytes();
        assert_eq!(&next[..36], b"00-0af7651916cd43dd8448eb211c80319c-");
        assert_ne!(&next[36..52], b"b7ad6b7169203331");
        assert_eq!(&next[52..], b"-00");
        assert!(parse_traceparent(next).is_some());
        // A request id with a space, or too long, is replaced.
        req.insert_header("x-request-id", "a b").unwrap();
        assert_eq!(Ids::of(&req).request_id.len(), 32);
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(Ids::of(&req).request_id.len(), 32);
    }
}
