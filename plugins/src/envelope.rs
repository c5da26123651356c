//! The one JSON envelope for every response the gateway answers itself:
//! `{"code": STATUS, "message": "...", "data": ...}`.

use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

/// A response the gateway generates instead of proxying.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub message: &'static str,
    pub data: Value,
    /// Extra response headers (Retry-After, WWW-Authenticate, ...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl GatewayError {
    pub fn new(status: u16, message: &'static str) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
            data: Value::Null,
            headers: Vec::new(),
        }
    }

    /// 403 with the reason in `data`.
    pub fn forbidden(reason: &'static str) -> Self {
        Self::new(403, "forbidden").with_data(serde_json::json!({ "reason": reason }))
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// `Retry-After: SECS` (at least 1).
    pub fn with_retry_after(self, secs: u64) -> Self {
        self.with_header(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The envelope as JSON bytes.
    pub fn body(&self) -> Vec<u8> {
        body(self.status.as_u16(), self.message, &self.data, &[])
    }
}

/// Whole seconds in `d`, rounded up (what a `Retry-After` says).
pub fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The envelope's bytes: `{"code", "message", "data"}` and `more` fields beside them. The
/// one writer of the envelope, for the proxy, the admin API and the fan-out service.
pub fn body(code: u16, message: &str, data: &Value, more: &[(&str, Value)]) -> Vec<u8> {
    let mut v = serde_json::Map::new();
    v.insert("code".into(), code.into());
    v.insert("message".into(), message.into());
    v.insert("data".into(), data.clone());
    for (k, val) in more {
        v.insert((*k).into(), val.clone());
    }
    // Serializing a Value built from plain strings and numbers cannot fail.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// An answer in the envelope as an `http::Response`, JSON type and length set. Built field
/// by field rather than with `Response::builder`, whose error case could only turn into an
/// empty 200.
pub fn response(
    status: u16,
    message: &str,
    data: &Value,
    more: &[(&str, Value)],
) -> http::Response<Vec<u8>> {
    let body = body(status, message, data, more);
    let len = body.len();
    let mut r = http::Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape() {
        let e = GatewayError::new(429, "rate limit exceeded")
            .with_data(serde_json::json!({"retry_after": 1}));
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 429, "message": "rate limit exceeded", "data": {"retry_after": 1}})
        );
    }
}
