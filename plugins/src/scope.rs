//! Scopes a route requires of a token (RFC 6749 section 3.3): read from its space-separated
//! `scope` claim or its `scp` list, whether the token is a verified JWT or an introspection
//! answer. A token without them is refused with 403 and the RFC 6750 challenge.

use crate::envelope::GatewayError;
use http::HeaderValue;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Scopes {
    required: Vec<String>,
    /// `Bearer error="insufficient_scope", scope="..."`.
    challenge: HeaderValue,
}

impl Scopes {
    /// `None` when nothing is required. A scope is printable ASCII without spaces, quotes
    /// or backslashes; the error names the first one that is not.
    pub fn new(required: &[String]) -> Result<Option<Scopes>, (usize, String)> {
        if required.is_empty() {
            return Ok(None);
        }
        for (i, s) in required.iter().enumerate() {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok {
                return Err((
                    i,
                    "a scope is printable ASCII without spaces or quotes (RFC 6749 section 3.3)"
                        .into(),
                ));
            }
        }
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", scope=\"{}\"",
            required.join(" ")
        );
        let challenge =
            HeaderValue::from_str(&challenge).map_err(|_| (0, "invalid scope".into()))?;
        Ok(Some(Scopes {
            required: required.to_vec(),
            challenge,
        }))
    }

    /// 403 `insufficient scope`, naming the missing ones, when `claims` lack any.
    pub fn check(&self, claims: &Value) -> Result<(), GatewayError> {
        let missing: Vec<&str> = self
            .required
            .iter()
            .map(String::as_str)
            .filter(|s| !grants(claims, s))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(GatewayError::new(403, "insufficient scope")
            .with_data(serde_json::json!({ "missing": missing }))
            .with_header(http::header::WWW_AUTHENTICATE, self.challenge.clone()))
    }
}

/// Whether the claims grant `scope`: in the space-separated `scope`, or the `scp` list.
pub fn grants(claims: &Value, scope: &str) -> bool {
    let in_string = claims
        .get("scope")
        .and_then(Value::as_str)
        .is_some_and(|s| s.split(' ').any(|x| x == scope));
    let in_list = claims
        .get("scp")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(scope)));
    in_string || in_list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_from_a_string_or_a_list() {
        let a = json!({ "scope": "read write" });
        assert!(grants(&a, "read") && grants(&a, "write") && !grants(&a, "rea"));
        let b = json!({ "scp": ["read"] });
        assert!(grants(&b, "read") && !grants(&b, "write"));
    }

    #[test]
    fn a_missing_scope_is_named_with_the_challenge() {
        let s = Scopes::new(&["read".into(), "write".into()])
            .unwrap()
            .unwrap();
        assert!(s.check(&json!({ "scope": "write read admin" })).is_ok());
        let e = s.check(&json!({ "scope": "read" })).unwrap_err();
        assert_eq!(e.status.as_u16(), 403);
        assert_eq!(e.data["missing"], json!(["write"]));
        assert_eq!(
            e.headers[0].1,
            "Bearer error=\"insufficient_scope\", scope=\"read write\""
        );
        assert!(Scopes::new(&[]).unwrap().is_none());
        assert_eq!(Scopes::new(&["a b".into()]).unwrap_err().0, 0);
    }
}
