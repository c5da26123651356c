//! Backend path templates: `/users/{path.id}/orders?limit={query.limit}&u={header.x-user}`,
//! and `{claim.sub}` from the request's verified JWT.
//! Values are percent-encoded, so a request cannot smuggle `/`, `?` or `&` into a path, and a
//! value that would make a `.` or `..` segment of the path is refused: values never add or
//! remove segments, nor start a query.

use pingora::http::RequestHeader;
use regex::Regex;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Query(String),
    Path(String),
    Header(String),
    Claim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

/// Why a template could not be filled from a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderError {
    /// The request lacks a variable: this backend's call fails.
    Missing(String),
    /// A value would climb out of its segment: the whole request is refused (400).
    DotSegment(String),
}

/// The values a template can draw on, taken from one request.
pub struct Vars {
    query: HashMap<String, String>,
    path: HashMap<String, String>,
    headers: HashMap<String, String>,
    claims: HashMap<String, String>,
}

impl Vars {
    pub fn new(req: &RequestHeader, route_regex: Option<&Regex>) -> Vars {
        let mut query = HashMap::new();
        for pair in req.uri.query().unwrap_or("").split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                query.entry(decode(k)).or_insert_with(|| decode(v));
            } else if !pair.is_empty() {
                query.entry(decode(pair)).or_insert_with(String::new);
            }
        }
        let mut path = HashMap::new();
        if let Some(re) = route_regex {
            if let Some(caps) = re.captures(req.uri.path()) {
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        path.insert(name.to_string(), m.as_str().to_string());
                    }
                }
            }
        }
        let headers = req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        // Claims verified by the proxy (scalars only).
        let claims = req
            .headers
            .get(&crate::wire::X_CLAIMS)
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.as_bytes()).ok())
            .and_then(|v| match v {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| match v {
                        serde_json::Value::String(s) => Some((k, s)),
                        serde_json::Value::Number(n) => Some((k, n.to_string())),
                        serde_json::Value::Bool(b) => Some((k, b.to_string())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Vars {
            query,
            path,
            headers,
            claims,
        }
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        if !s.starts_with('/') {
            return Err("must start with /".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {s:?}"))?
                + open;
            let var = &rest[open + 1..close];
            let part = match var.split_once('.') {
                Some(("query", n)) if !n.is_empty() => Part::Query(n.to_string()),
                Some(("path", n)) if !n.is_empty() => Part::Path(n.to_string()),
                Some(("header", n)) if !n.is_empty() => Part::Header(n.to_ascii_lowercase()),
                Some(("claim", n)) if !n.is_empty() => Part::Claim(n.to_string()),
                _ => {
                    return Err(format!(
                        "{{{var}}} is not {{query.NAME}}, {{path.NAME}}, {{header.NAME}} or {{claim.NAME}}"
                    ))
                }
            };
            parts.push(part);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray }} in {s:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let text: String = parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                _ => "x",
            })
            .collect();
        if has_dot_segment(&text) {
            return Err(format!("{s:?} has a . or .. segment"));
        }
        Ok(Template(parts))
    }

    /// The path for one request; a variable the request lacks is an error, and so is a
    /// value that makes a dot segment.
    pub fn render(&self, vars: &Vars) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.0 {
            let (map, name, what) = match part {
                Part::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Part::Query(n) => (&vars.query, n, "query parameter"),
                Part::Path(n) => (&vars.path, n, "path parameter"),
                Part::Header(n) => (&vars.headers, n, "header"),
                Part::Claim(n) => (&vars.claims, n, "verified claim"),
            };
            let value = map.get(name).ok_or_else(|| {
                RenderError::Missing(format!("the request has no {what} {name:?}"))
            })?;
            encode_into(&mut out, value);
        }
        // Values cannot hold `/` (it is encoded), so a dot segment is one or two values
        // (and no text) between two slashes.
        if has_dot_segment(&out) {
            return Err(RenderError::DotSegment(
                "a value would make a . or .. path segment".into(),
            ));
        }
        Ok(out)
    }
}

/// Whether the path part (before any `?`) has a `.` or `..` segment.
fn has_dot_segment(s: &str) -> bool {
    let path = s.split('?').next().unwrap_or("");
    path.split('/').any(|seg| seg == "." || seg == "..")
}

fn encode_into(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hex(b[i + 1])? * 16 + hex(b[i + 2])?))
            .flatten();
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn renders_query_path_and_header_values_encoded() {
        let t = Template::parse("/users/{path.id}/orders?q={query.q}&u={header.X-User}").unwrap();
        let re = Regex::new("^/home/(?P<id>[^/]+)$").unwrap();
        let r = req("/home/4%202?q=a%2Fb&x=1", &[("x-user", "al ice")]);
        let vars = Vars::new(&r, Some(&re));
        assert_eq!(
            t.render(&vars).unwrap(),
            "/users/4%25202/orders?q=a%2Fb&u=al%20ice"
        );
        let missing = Template::parse("/p/{query.nope}").unwrap();
        assert!(matches!(
            missing.render(&vars),
            Err(RenderError::Missing(e)) if e.contains("query parameter \"nope\"")
        ));
    }

    #[test]
    fn values_never_make_dot_segments() {
        let t = Template::parse("/profile/{query.id}/x{query.id}?q={query.id}").unwrap();
        for bad in ["..", ".", "%2E%2E", "%2e"] {
            let r = req(&format!("/home?id={bad}"), &[]);
            assert!(
                matches!(
                    t.render(&Vars::new(&r, None)),
                    Err(RenderError::DotSegment(_))
                ),
                "{bad}"
            );
        }
        let two = Template::parse("/p/{query.a}{query.b}/z").unwrap();
        let r = req("/home?a=.&b=.", &[]);
        assert!(matches!(
            two.render(&Vars::new(&r, None)),
            Err(RenderError::DotSegment(_))
        ));
        for ok in ["...", ".a", "a..", "%2F.."] {
            let r = req(&format!("/home?id={ok}"), &[]);
            let path = t.render(&Vars::new(&r, None)).unwrap();
            assert_eq!(path.matches('/').count(), 3, "{ok} -> {path}");
        }
        assert!(Template::parse("/a/../{query.x}").is_err());
        assert!(Template::parse("/a/./b").is_err());
        assert!(Template::parse("/a/b?x=..").is_ok());
    }

    #[test]
    fn bad_templates() {
        assert!(Template::parse("users").is_err());
        assert!(Template::parse("/a/{query.x").is_err());
        assert!(Template::parse("/a/{claims.x}").is_err());
        assert!(Template::parse("/a/{claim.sub}").is_ok());
        assert!(Template::parse("/a/}").is_err());
    }
}
