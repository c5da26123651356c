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

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The envelope as JSON bytes.
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "data": self.data,
        });
        // Serializing a Value built from plain strings and numbers cannot fail.
        serde_json::to_vec(&v).unwrap_or_default()
    }
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
