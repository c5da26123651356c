//! CORS: preflight requests answered by the gateway, and the `Access-Control-*` headers on
//! answers to allowed origins.

use http::{HeaderName, HeaderValue, Method};

#[derive(Debug, Clone)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), subdomain wildcards
    /// (`https://*.example.com`), or `*`.
    origins: Vec<String>,
    methods: Vec<Method>,
    /// Lowercase request header names a preflight may ask for; empty allows none beyond
    /// the CORS-safelisted ones.
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
}

impl crate::policy::Policy for Cors {
    /// A preflight is answered here (204, or 403 with the reason); an actual request from
    /// an allowed origin is noted, so its answer carries the `Access-Control-*` headers.
    fn request(
        &self,
        req: &crate::policy::Request<'_>,
        facts: &mut crate::policy::Facts,
    ) -> impl std::future::Future<Output = crate::policy::Flow> + Send {
        use crate::policy::Flow;
        let flow = match req.headers.get(&ORIGIN) {
            None => Flow::Continue,
            Some(origin) => {
                let o = origin.to_str().unwrap_or("");
                match req.preflight {
                    Some(method) => {
                        let asked = req
                            .headers
                            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                            .and_then(|v| v.to_str().ok());
                        match self.preflight(o, method.as_str(), asked) {
                            Preflight::Allowed(headers) => Flow::Answer(204, headers),
                            Preflight::Refused(reason) => {
                                Flow::Respond(crate::GatewayError::forbidden(reason))
                            }
                        }
                    }
                    None => {
                        if self.origin_allowed(o) {
                            facts.cors_origin = Some(origin.clone());
                        }
                        Flow::Continue
                    }
                }
            }
        };
        std::future::ready(flow)
    }

    fn response(
        &self,
        facts: &crate::policy::Facts,
        _: crate::policy::Reply,
        headers: &mut impl crate::HeaderTarget,
    ) {
        if let Some(origin) = &facts.cors_origin {
            for (name, value) in self.response_headers(origin.to_str().unwrap_or("")) {
                headers.set_header(&name, value);
            }
        }
    }
}

/// What to send back for a preflight.
pub enum Preflight {
    /// 204 with these headers.
    Allowed(Vec<(HeaderName, HeaderValue)>),
    Refused(&'static str),
}

pub static ORIGIN: HeaderName = http::header::ORIGIN;

impl Cors {
    pub fn new(
        origins: &[String],
        methods: &[String],
        headers: &[String],
        expose: &[String],
        credentials: bool,
        max_age_secs: u64,
    ) -> Result<Cors, String> {
        let mut ms = Vec::new();
        for m in methods {
            ms.push(Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}"))?);
        }
        if ms.is_empty() {
            ms = vec![Method::GET, Method::HEAD, Method::POST];
        }
        let join = |v: &[String]| v.join(", ");
        let hv = |s: String| HeaderValue::from_str(&s).map_err(|_| format!("invalid value {s:?}"));
        Ok(Cors {
            origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            allow_methods: hv(ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "))?,
            methods: ms,
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_headers: if headers.is_empty() {
                None
            } else {
                Some(hv(join(headers))?)
            },
            expose: if expose.is_empty() {
                None
            } else {
                Some(hv(join(expose))?)
            },
            credentials,
            max_age: HeaderValue::from(max_age_secs),
        })
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|o| {
            if o == "*" || *o == origin {
                return true;
            }
            // https://*.example.com matches https://a.example.com and https://a.b.example.com
            match o.split_once("*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_suffix(domain))
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => false,
            }
        })
    }

    /// Answer a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Preflight {
        if !self.origin_allowed(origin) {
            return Preflight::Refused("origin not allowed");
        }
        if !self
            .methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(method))
        {
            return Preflight::Refused("method not allowed");
        }
        for h in request_headers.unwrap_or("").split(',') {
            let h = h.trim().to_ascii_lowercase();
            if !h.is_empty() && !self.headers.contains(&h) {
                return Preflight::Refused("header not allowed");
            }
        }
        let mut out = self.origin_headers(origin);
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        ));
        if let Some(h) = &self.allow_headers {
            out.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
        }
        out.push((http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        Preflight::Allowed(out)
    }

    /// Headers for an actual request's answer; empty when the origin is not allowed.
    pub fn response_headers(&self, origin: &str) -> Vec<(HeaderName, HeaderValue)> {
        if !self.origin_allowed(origin) {
            return vec![(http::header::VARY, HeaderValue::from_static("Origin"))];
        }
        let mut out = self.origin_headers(origin);
        if let Some(e) = &self.expose {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
        }
        out
    }

    fn origin_headers(&self, origin: &str) -> Vec<(HeaderName, HeaderValue)> {
        // The origin is echoed (never `*`), so credentials work and caches key on it.
        let mut out = Vec::with_capacity(4);
        if let Ok(v) = HeaderValue::from_str(origin) {
            out.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, v));
        }
        if self.credentials {
            out.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        out.push((http::header::VARY, HeaderValue::from_static("Origin")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(
            &[
                "https://app.example.com".into(),
                "https://*.example.org".into(),
            ],
            &["GET".into(), "POST".into()],
            &["authorization".into(), "content-type".into()],
            &["x-request-id".into()],
            true,
            600,
        )
        .unwrap()
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let c = cors();
        assert!(c.origin_allowed("https://app.example.com"));
        assert!(c.origin_allowed("https://a.b.example.org"));
        assert!(!c.origin_allowed("https://example.org"));
        assert!(!c.origin_allowed("http://a.example.org"));
        assert!(!c.origin_allowed("https://evil.com"));
        assert!(!c.origin_allowed("https://app.example.com.evil.com"));
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let c = cors();
        let Preflight::Allowed(h) = c.preflight(
            "https://app.example.com",
            "POST",
            Some("Authorization, Content-Type"),
        ) else {
            panic!("refused")
        };
        let get = |n: HeaderName| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "https://app.example.com"
        );
        assert_eq!(get(http::header::ACCESS_CONTROL_MAX_AGE).unwrap(), "600");
        assert_eq!(
            get(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS).unwrap(),
            "true"
        );
        assert!(matches!(
            c.preflight("https://app.example.com", "DELETE", None),
            Preflight::Refused("method not allowed")
        ));
        assert!(matches!(
            c.preflight("https://app.example.com", "GET", Some("x-secret")),
            Preflight::Refused("header not allowed")
        ));
        assert!(matches!(
            c.preflight("https://evil.com", "GET", None),
            Preflight::Refused("origin not allowed")
        ));
    }
}
