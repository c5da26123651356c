//! Header rewriting: a compiled list of headers to set and to remove.

use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;

/// A route's header rules: for the request sent upstream, and for the upstream's answer.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl crate::policy::Policy for HeaderRules {
    fn upstream_request(&self, _: &crate::policy::Facts, headers: &mut impl HeaderTarget) {
        self.request.apply(headers);
    }

    /// The upstream's answers only: the gateway's own answers keep their headers.
    fn response(
        &self,
        _: &crate::policy::Facts,
        reply: crate::policy::Reply,
        headers: &mut impl HeaderTarget,
    ) {
        if reply.proxied {
            self.response.apply(headers);
        }
    }
}

/// Headers to remove, then headers to set (replacing any value already there).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// Compile the config form; `Err` names the offending header.
    pub fn new(set: &BTreeMap<String, String>, remove: &[String]) -> Result<Self, String> {
        let mut ops = HeaderOps::default();
        for name in remove {
            ops.remove.push(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name {name:?}"))?,
            );
        }
        for (name, value) in set {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for header {name:?}"))?;
            ops.set.push((n, v));
        }
        Ok(ops)
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Apply to any header container.
    pub fn apply(&self, target: &mut (impl HeaderTarget + ?Sized)) {
        for name in &self.remove {
            target.remove_header(name);
        }
        for (name, value) in &self.set {
            target.set_header(name, value.clone());
        }
    }
}

/// Something whose headers can be removed and replaced.
pub trait HeaderTarget {
    fn remove_header(&mut self, name: &HeaderName);
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue);
    /// Set a header whose name is static lowercase text (some targets keep it without
    /// copying it).
    fn set_static(&mut self, name: &'static str, value: HeaderValue) {
        self.set_header(&HeaderName::from_static(name), value);
    }
}

impl HeaderTarget for http::HeaderMap {
    fn remove_header(&mut self, name: &HeaderName) {
        self.remove(name);
    }
    fn set_header(&mut self, name: &HeaderName, value: HeaderValue) {
        self.insert(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn remove_then_set() {
        let mut set = BTreeMap::new();
        set.insert("x-env".to_string(), "prod".to_string());
        let ops = HeaderOps::new(&set, &["server".to_string(), "x-env".to_string()]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("server", "x".parse().unwrap());
        h.insert("x-env", "dev".parse().unwrap());
        ops.apply(&mut h);
        assert!(h.get("server").is_none());
        assert_eq!(h.get("x-env").unwrap(), "prod");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(HeaderOps::new(&BTreeMap::new(), &["a b".to_string()]).is_err());
    }
}
