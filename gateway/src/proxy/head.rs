//! The request head before routing: framing and size checks, the path in its normal form,
//! the host the router looks at, keep-alive rules, and the answer to a head Pingora's
//! parser refused.

use crate::guard::Framing;
use crate::path::PathOptions;
use crate::runtime::{KeepaliveRule, RequestLimits};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora::http::RequestHeader;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::Session;
use pingora::Error;
use plugins::GatewayError;
use std::borrow::Cow;
use std::net::IpAddr;

/// Longest host name the router looks at; longer Host headers are refused.
pub const MAX_HOST_LEN: usize = 255;

/// The request head's framing and size: refuse what two parsers could read differently
/// (RFC 9112 section 6.3) and what is larger than the configured bounds.
fn check_head(
    req: &RequestHeader,
    framing: Framing,
    limits: &RequestLimits,
) -> Result<(), GatewayError> {
    let h = &req.headers;
    if framing.bad_request_line {
        return Err(GatewayError::new(400, "invalid request line"));
    }
    // As sent, before Pingora's parser reconciled them.
    if framing.content_length > 0 && framing.transfer_encoding > 0 {
        return Err(GatewayError::new(
            400,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if framing.content_length > 1 {
        return Err(GatewayError::new(400, "more than one Content-Length"));
    }
    if h.len() > limits.max_headers {
        return Err(GatewayError::new(431, "too many header fields")
            .with_data(serde_json::json!({ "max_headers": limits.max_headers })));
    }
    let size = h
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + req.method.as_str().len()
        + 12;
    if size > limits.max_header_bytes {
        return Err(GatewayError::new(431, "request header fields too large")
            .with_data(serde_json::json!({ "max_header_bytes": limits.max_header_bytes })));
    }
    let mut lengths = h.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(GatewayError::new(400, "more than one Content-Length"));
    }
    let mut codings = h.get_all(TRANSFER_ENCODING).iter();
    let coding = codings.next();
    if codings.next().is_some() {
        return Err(GatewayError::new(400, "more than one Transfer-Encoding"));
    }
    match (length, coding) {
        (Some(_), Some(_)) => Err(GatewayError::new(
            400,
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(len), None) => {
            let digits = len.as_bytes();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(GatewayError::new(400, "invalid Content-Length"));
            }
            let n: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            if n > limits.max_body_bytes {
                return Err(too_large(limits.max_body_bytes));
            }
            Ok(())
        }
        (None, Some(te)) if !te.as_bytes().eq_ignore_ascii_case(b"chunked") => {
            Err(GatewayError::new(
                400,
                "unsupported Transfer-Encoding: only chunked is accepted",
            ))
        }
        _ => Ok(()),
    }
}

/// Put the request's path in its normal form (see [`crate::path`]) in place, before anything
/// reads it: routing, the route's policies, the upstream request, the mirror and the access
/// log all see the one path. A target the client sent in absolute form is rewritten to
/// origin form here, so its raw bytes are not what goes upstream.
fn normalize_target(session: &mut Session, opts: &PathOptions) -> Result<(), GatewayError> {
    let req = session.req_header();
    if !req.raw_path_is_utf8() {
        return Err(bad_path("request target is not UTF-8"));
    }
    let path = match crate::path::normalize(req.uri.path(), opts) {
        Ok(Cow::Borrowed(_)) if req.raw_path() == path_and_query(req).as_bytes() => return Ok(()),
        Ok(p) => p.into_owned(),
        Err(e) => return Err(bad_path(e.reason())),
    };
    let mut target = path;
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = req.uri.scheme().cloned();
    parts.authority = req.uri.authority().cloned();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(target)
            .map_err(|_| bad_path("invalid request target"))?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|_| bad_path("invalid request target"))?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

fn bad_path(reason: &'static str) -> GatewayError {
    GatewayError::new(400, "invalid path").with_data(serde_json::json!({ "reason": reason }))
}

pub fn too_large(max: u64) -> GatewayError {
    GatewayError::new(413, "request body too large")
        .with_data(serde_json::json!({ "max_body_bytes": max }))
}

/// Before anything reads the request: the connection's keep-alive rule, the head's framing
/// and size checks, and the path in its normal form.
pub fn admit_head(session: &mut Session, limits: &RequestLimits) -> Result<(), GatewayError> {
    let head = session
        .as_downstream()
        .stream()
        .and_then(crate::guard::head_info);
    if let Some(h) = head {
        apply_keepalive(session, h.keepalive);
    }
    let framing = head.map(|h| h.framing).unwrap_or_default();
    check_head(session.req_header(), framing, limits)?;
    normalize_target(session, &limits.paths)
}

/// The host to route by, lowercased into `buf` when it has capitals: `""` for an HTTP/1.0
/// request without one; an error for a missing (HTTP/1.1), repeated or too long Host.
pub fn route_host<'a>(
    req: &'a RequestHeader,
    buf: &'a mut [u8; MAX_HOST_LEN],
) -> Result<&'a str, GatewayError> {
    let host = match request_host(req) {
        Ok(Some(h)) if h.len() <= MAX_HOST_LEN => h,
        Ok(Some(_)) => return Err(GatewayError::new(400, "Host header too long")),
        Ok(None) if req.version == Version::HTTP_11 => {
            return Err(GatewayError::new(400, "missing Host header"))
        }
        Ok(None) => "",
        Err(msg) => return Err(GatewayError::new(400, msg)),
    };
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(host);
    }
    let lower = &mut buf[..host.len()];
    lower.copy_from_slice(host.as_bytes());
    lower.make_ascii_lowercase();
    // Lowercasing ASCII letters keeps the bytes valid UTF-8.
    Ok(std::str::from_utf8(lower).unwrap_or(""))
}

/// The host a request names, from the URI authority (h2, absolute-form) or the Host header.
pub fn request_host(req: &RequestHeader) -> Result<Option<&str>, &'static str> {
    if let Some(h) = req.uri.host() {
        return Ok(Some(h));
    }
    let mut values = req.headers.get_all(HOST).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    let s = v.to_str().map_err(|_| "invalid Host header")?;
    // Strip a port; keep IPv6 literals in brackets whole.
    let host = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => &s[..=end],
            None => return Err("invalid Host header"),
        }
    } else {
        s.rsplit_once(':').map_or(s, |(h, _)| h)
    };
    Ok(Some(host))
}

/// Bound how many requests an HTTP/1 connection serves, or turn keep-alive off, by the rule
/// the guard looked up when the connection was accepted. The idle time between requests is
/// the guard's too (it costs no timer per request), so Pingora's own keep-alive timeout is
/// left off. The request count travels with the connection from one request to the next
/// (Pingora decrements it), so it is set on the first request only; a connection the client
/// asked to close stays closed.
fn apply_keepalive(session: &mut Session, rule: KeepaliveRule) {
    let ds = session.as_downstream_mut();
    if ds.get_keepalive().is_none() {
        return;
    }
    if rule.timeout_secs == 0 {
        ds.set_keepalive(None);
        return;
    }
    if rule.requests > 0 && ds.get_keepalive_reuses_remaining().is_none() {
        ds.set_keepalive_reuses_remaining(Some(rule.requests - 1));
    }
}

/// The answer to a head the parser refused: its status from the cause.
pub fn invalid_request_error(e: &Error) -> GatewayError {
    let cause = e.root_cause().to_string();
    let context = e.context.as_ref().map(|c| c.as_str()).unwrap_or("");
    if cause.contains("too many headers") {
        GatewayError::new(431, "too many header fields")
    } else if context.contains("larger than") || cause.contains("larger than") {
        GatewayError::new(431, "request header fields too large")
    } else if context.starts_with("invalid uri") && context.len() > u16::MAX as usize {
        // The http crate's URI holds at most 64 KiB.
        GatewayError::new(414, "request target too long")
    } else {
        GatewayError::new(400, "malformed request")
    }
}

pub fn request_has_body(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.contains_key(TRANSFER_ENCODING) || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

pub fn path_and_query(req: &RequestHeader) -> &str {
    req.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// The socket peer's address (not the client behind trusted proxies).
pub fn peer_ip(session: &Session) -> Option<IpAddr> {
    match session.client_addr()? {
        PingoraAddr::Inet(a) => Some(a.ip()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::ErrorType;
    use std::time::Duration;

    const LIMITS: RequestLimits = RequestLimits {
        max_body_bytes: 100,
        max_header_bytes: 200,
        max_headers: 4,
        client_body_timeout: Duration::from_secs(1),
        paths: crate::path::PathOptions {
            merge_slashes: true,
            escaped_slashes: crate::path::EscapedSlashes::Reject,
        },
    };

    fn head(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn verdict(headers: &[(&str, &str)], framing: Framing) -> Result<(), (u16, &'static str)> {
        check_head(&head(headers), framing, &LIMITS).map_err(|e| (e.status.as_u16(), e.message))
    }

    #[test]
    fn head_checks_at_their_edges() {
        let none = Framing::default();
        assert_eq!(verdict(&[("content-length", "100")], none), Ok(()));
        assert_eq!(
            verdict(&[("content-length", "101")], none),
            Err((413, "request body too large"))
        );
        for bad in ["", "+1", "-1", "1 ", "0x10", "99999999999999999999"] {
            assert_eq!(
                verdict(&[("content-length", bad)], none),
                Err((400, "invalid Content-Length")),
                "{bad:?}"
            );
        }
        assert_eq!(
            verdict(&[("content-length", "1"), ("content-length", "1")], none),
            Err((400, "more than one Content-Length"))
        );
        assert_eq!(verdict(&[("transfer-encoding", "Chunked")], none), Ok(()));
        assert_eq!(
            verdict(&[("transfer-encoding", "gzip, chunked")], none).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            verdict(
                &[("content-length", "1"), ("transfer-encoding", "chunked")],
                none
            ),
            Err((400, "both Content-Length and Transfer-Encoding"))
        );
        // As sent, before Pingora dropped the Content-Length of a chunked request.
        let both = Framing {
            content_length: 1,
            transfer_encoding: 1,
            bad_request_line: false,
        };
        assert_eq!(
            verdict(&[("transfer-encoding", "chunked")], both),
            Err((400, "both Content-Length and Transfer-Encoding"))
        );
        let line = Framing {
            bad_request_line: true,
            ..Framing::default()
        };
        assert_eq!(verdict(&[], line), Err((400, "invalid request line")));
        // Four fields pass, five do not; the byte bound counts names, values and the line.
        let four = [("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")];
        assert_eq!(verdict(&four, none), Ok(()));
        let five = [("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")];
        assert_eq!(verdict(&five, none), Err((431, "too many header fields")));
        let long = "v".repeat(200);
        assert_eq!(
            verdict(&[("a", &long)], none),
            Err((431, "request header fields too large"))
        );
    }

    #[test]
    fn invalid_heads_get_their_status_from_the_cause() {
        let too_many = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: ...",
            std::io::Error::other("too many headers"),
        );
        assert_eq!(invalid_request_error(&too_many).status.as_u16(), 431);
        let large = Error::explain(
            ErrorType::InvalidHTTPHeader,
            "Request header larger than 1048575",
        );
        assert_eq!(invalid_request_error(&large).status.as_u16(), 431);
        let long = Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("invalid uri /{}", "a".repeat(70_000)),
        );
        assert_eq!(invalid_request_error(&long).status.as_u16(), 414);
        let other = Error::explain(ErrorType::InvalidHTTPHeader, "invalid method");
        assert_eq!(invalid_request_error(&other).status.as_u16(), 400);
    }
}
