//! How a request is told apart: its request id (the client's, when acceptable) and its W3C
//! trace context (continued from a valid `traceparent`, or begun here); with tracing on,
//! whether it is traced, and its server span.

use super::{head, Ctx};
use crate::telemetry::{self, Kind, Open, Parent, Span, TraceParent, Tracer, Value};
use crate::wire::{TRACEPARENT, X_REQUEST_ID};
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

/// Longest client-sent `X-Request-Id` that is kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The ids of one request.
pub struct Ids {
    pub request_id: HeaderValue,
    /// The trace id (lowercase hex) and flags, kept from the client or made here.
    pub trace_id: [u8; 32],
    pub trace_flags: [u8; 2],
    /// The caller's span, from a valid `traceparent`.
    pub parent: Option<TraceParent>,
}

impl Default for Ids {
    fn default() -> Ids {
        Ids {
            request_id: HeaderValue::from_static(""),
            trace_id: [b'0'; 32],
            trace_flags: *b"01",
            parent: None,
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
        let parent = req
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        let (trace_id, trace_flags) = match &parent {
            Some(p) => (p.trace_id, p.flags),
            None => (random_hex(), *b"01"),
        };
        Ids {
            request_id,
            trace_id,
            trace_flags,
            parent,
        }
    }

    /// Decide whether this request is traced (the caller's flag, else the tracer's ratio),
    /// and begin its server span if so. A new trace's flags carry the decision upstream.
    pub fn sample(&mut self, tracer: &Tracer) -> Option<Open> {
        let sampled = tracer.sample(self.parent.as_ref().map(TraceParent::sampled));
        if self.parent.is_none() {
            self.trace_flags = if sampled { *b"01" } else { *b"00" };
        }
        sampled.then(Open::now)
    }

    /// The trace id as bytes.
    pub fn trace(&self) -> [u8; 16] {
        telemetry::unhex(&self.trace_id).unwrap_or([0; 16])
    }

    /// Where the server span hangs: under the caller's span, if any.
    pub fn caller(&self) -> Option<Parent> {
        self.parent.as_ref().and_then(TraceParent::parent)
    }

    /// The `traceparent` for one hop upstream: the same trace id, and as parent the try's
    /// span when it is traced (else a new id).
    pub fn traceparent(&self, span: Option<[u8; 8]>) -> HeaderValue {
        let span = span.unwrap_or_else(telemetry::span_id);
        telemetry::traceparent(&self.trace_id, &span, self.trace_flags)
    }
}

/// The request's span, once it ended with `status` (0: nothing was sent), named after its
/// route; attributes per OpenTelemetry's HTTP server conventions, and why the gateway
/// answered itself (`gateway.refusal` for a 4xx of its own: a policy's refusal; a ban says
/// `banned`).
pub fn server_span(
    session: &Session,
    ctx: &Ctx,
    open: Open,
    status: u16,
    e: Option<&pingora::Error>,
) {
    let req = session.req_header();
    let route = ctx.route().map(|r| r.name.as_str());
    let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(14);
    attrs.push((
        "http.request.method",
        Value::Str(req.method.as_str().into()),
    ));
    attrs.push(("url.path", Value::Str(req.uri.path().into())));
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    attrs.push((
        "url.scheme",
        Value::Static(if tls { "https" } else { "http" }),
    ));
    attrs.push((
        "network.protocol.version",
        Value::Static(match req.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        }),
    ));
    if let Some(r) = route {
        attrs.push(("http.route", Value::Str(r.into())));
    }
    if status > 0 {
        attrs.push(("http.response.status_code", Value::Int(i64::from(status))));
    }
    if let Some(ip) = ctx.client_ip.or_else(|| head::peer_ip(session)) {
        attrs.push(("client.address", Value::Str(ip.to_string())));
    }
    if let Ok(Some(host)) = head::request_host(req) {
        attrs.push(("server.address", Value::Str(host.into())));
    }
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attrs.push(("user_agent.original", Value::Str(ua.into())));
    }
    attrs.push((
        "gateway.request_id",
        Value::Str(ctx.ids.request_id.to_str().unwrap_or("").into()),
    ));
    if let Some(up) = ctx.upstream() {
        attrs.push(("gateway.upstream", Value::Str(up.name.clone())));
        attrs.push(("gateway.attempts", Value::Int(i64::from(ctx.attempt.tries))));
    }
    // Why the answer is an error: the gateway's own message, else Pingora's.
    let why = match ctx.error {
        Some(_) if ctx.facts.banned => Some("banned".to_string()),
        Some(m) => Some(m.to_string()),
        None if status >= 500 || status == 0 => e.map(|e| e.etype().as_str().to_string()),
        None => None,
    };
    let error = if status >= 500 || (status == 0 && e.is_some()) {
        attrs.push((
            "error.type",
            Value::Str(if status > 0 {
                status.to_string()
            } else {
                "incomplete".into()
            }),
        ));
        why.clone().or_else(|| Some(status.to_string()))
    } else {
        None
    };
    if let Some(w) = why {
        if (400..500).contains(&status) {
            attrs.push(("gateway.refusal", Value::Str(w)));
        } else if error.is_none() {
            attrs.push(("gateway.error", Value::Str(w)));
        }
    }
    let name = match route {
        Some(r) => format!("{} {r}", req.method),
        None => req.method.to_string(),
    };
    telemetry::record(Span {
        trace_id: ctx.ids.trace(),
        span_id: open.span_id,
        parent: ctx.ids.caller().map(|p| p.span_id),
        remote_parent: true,
        name,
        kind: Kind::Server,
        start_ns: open.start_ns,
        end_ns: telemetry::now_ns(),
        attributes: attrs,
        error,
    });
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

fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let next = ids.traceparent(None);
        let next = next.as_bytes();
        assert_eq!(&next[..36], b"00-0af7651916cd43dd8448eb211c80319c-");
        assert_ne!(&next[36..52], b"b7ad6b7169203331");
        assert_eq!(&next[52..], b"-00");
        assert!(TraceParent::parse(next).is_some());
        // A request id with a space, or too long, is replaced.
        req.insert_header("x-request-id", "a b").unwrap();
        assert_eq!(Ids::of(&req).request_id.len(), 32);
        req.insert_header("x-request-id", "a".repeat(129)).unwrap();
        assert_eq!(Ids::of(&req).request_id.len(), 32);
    }
}
