//! Claims of a verified token sent upstream in headers (`forward_claims: { sub: X-User-Id }`),
//! for JWT and OAuth2 alike. A header of a forwarded name that the client sent never passes:
//! it is removed whether or not the token carries the claim.

use crate::headers::HeaderTarget;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct ForwardClaims(Vec<(String, HeaderName)>);

impl ForwardClaims {
    /// `(claim, header)` pairs; the error names the claim (`forward_claims.sub`) and the fault.
    pub fn new<'a>(
        pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<ForwardClaims, (String, String)> {
        let mut out = Vec::new();
        for (claim, header) in pairs {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                (
                    format!("forward_claims.{claim}"),
                    format!("invalid header name {header:?}"),
                )
            })?;
            out.push((claim.clone(), name));
        }
        Ok(ForwardClaims(out))
    }

    /// Every configured header, with its value from `claims` (`None` when the claim is
    /// absent or not a string, number or boolean).
    pub fn values<'a>(
        &'a self,
        claims: Option<&'a Value>,
    ) -> impl Iterator<Item = (&'a HeaderName, Option<HeaderValue>)> + 'a {
        self.0.iter().map(move |(claim, header)| {
            let value = claims.and_then(|c| c.get(claim)).and_then(|v| match v {
                Value::String(s) => HeaderValue::from_str(s).ok(),
                Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
                Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
                _ => None,
            });
            (header, value)
        })
    }

    /// Remove each forwarded header, then set the ones the claims give.
    pub fn apply(&self, claims: Option<&Value>, headers: &mut impl HeaderTarget) {
        for (name, value) in self.values(claims) {
            headers.remove_header(name);
            if let Some(v) = value {
                headers.set_header(name, v);
            }
        }
    }
}
