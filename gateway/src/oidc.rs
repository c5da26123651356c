//! OpenID Connect Discovery 1.0, as the JWT and OAuth2 policies use it: where an issuer's
//! document is, and an endpoint it names, trusted only when the document names the same
//! issuer (section 4.3).

use crate::client::Url;
use serde_json::Value;

/// `ISSUER/.well-known/openid-configuration`.
pub fn document_url(issuer: &str) -> Result<Url, String> {
    let doc = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    Url::parse(&doc, &doc)
}

/// The URL the document `doc` gives under `key` (`jwks_uri`, `introspection_endpoint`),
/// when the document is `issuer`'s.
pub fn endpoint(doc: &[u8], issuer: &str, key: &str) -> Result<Url, String> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| format!("discovery document: {e}"))?;
    let named = v.get("issuer").and_then(Value::as_str);
    if named != Some(issuer) {
        return Err(format!(
            "the discovery document names issuer {named:?}, not {issuer:?}"
        ));
    }
    let at = v
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the discovery document names no {key}"))?;
    Url::parse(at, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_must_name_its_issuer() {
        let doc = br#"{"issuer":"https://a.test","jwks_uri":"https://a.test/keys"}"#;
        assert_eq!(
            endpoint(doc, "https://a.test", "jwks_uri").unwrap().target,
            "/keys"
        );
        assert!(endpoint(doc, "https://a.test/", "jwks_uri").is_err());
        assert!(endpoint(doc, "https://a.test", "introspection_endpoint").is_err());
        assert_eq!(
            document_url("https://a.test/").unwrap().target,
            "/.well-known/openid-configuration"
        );
    }
}
