//! The compiled route table: host -> path (exact, prefix, regex) -> method and header matchers.
//!
//! Built once per config. A lookup costs a few hash probes, not a scan of the routes:
//! the host picks at most three tables (exact host, each wildcard suffix, any host); in a
//! table an exact path is one probe, prefixes are one probe per distinct prefix length,
//! and all regexes of the table run as one `RegexSet`. The candidates that survive the
//! method and header checks are ranked: priority, then host (exact > wildcard > any), then
//! path kind (exact > regex > prefix), then the longer prefix, then the route with more
//! method and header conditions, then the earlier route.

use crate::config::{HeaderMatchConfig, PathMatch, RouteConfig};
use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};
use std::collections::HashMap as StdHashMap;

/// Route keys are short strings looked up on every request; foldhash is several times
/// cheaper than SipHash for them, and the keys come from the operator's config, not from
/// clients, so hash flooding is not a concern.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// What a request offers to the router.
pub struct RequestView<'a> {
    /// Lowercase host without port.
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

enum HeaderCond {
    Exact(Vec<u8>),
    Regex(Regex),
    Present(bool),
}

struct Entry {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderCond)>,
    priority: i32,
}

impl Entry {
    fn admits(&self, req: &RequestView) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        self.headers.iter().all(|(name, cond)| {
            let value = req.headers.get(name);
            match cond {
                HeaderCond::Present(want) => value.is_some() == *want,
                HeaderCond::Exact(v) => value.is_some_and(|h| h.as_bytes() == v.as_slice()),
                HeaderCond::Regex(re) => value
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|s| re.is_match(s)),
            }
        })
    }
}

#[derive(Default)]
struct TableBuilder {
    exact: HashMap<String, Vec<u32>>,
    prefix: HashMap<String, Vec<u32>>,
    regex: Vec<(String, u32)>,
}

struct Table {
    exact: HashMap<String, Vec<u32>>,
    prefix: HashMap<String, Vec<u32>>,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
    regex: Option<(RegexSet, Vec<u32>)>,
}

impl TableBuilder {
    fn build(self) -> Result<Table, regex::Error> {
        let mut prefix_lens: Vec<usize> = self.prefix.keys().map(|k| k.len()).collect();
        prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        prefix_lens.dedup();
        let regex = if self.regex.is_empty() {
            None
        } else {
            let set = RegexSet::new(self.regex.iter().map(|(p, _)| p))?;
            Some((set, self.regex.into_iter().map(|(_, i)| i).collect()))
        };
        Ok(Table {
            exact: self.exact,
            prefix: self.prefix,
            prefix_lens,
            regex,
        })
    }
}

/// Rank of a candidate; the greatest wins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: i32,
    host: u8,
    kind: u8,
    prefix_len: usize,
    /// Method and header conditions: the more specific route wins.
    conditions: usize,
    /// Earlier routes win ties, so the index is stored negated.
    order: i64,
}

const KIND_PREFIX: u8 = 1;
const KIND_REGEX: u8 = 2;
const KIND_EXACT: u8 = 3;
const HOST_ANY: u8 = 1;
const HOST_WILDCARD: u8 = 2;
const HOST_EXACT: u8 = 3;

pub struct Router {
    entries: Vec<Entry>,
    exact_hosts: HashMap<String, Table>,
    /// Keyed by the suffix with its leading dot: `*.example.com` -> `.example.com`.
    wildcard_hosts: HashMap<String, Table>,
    any_host: Table,
}

impl Router {
    /// Compile the routes of a validated config. Route `i` of the slice is returned as `i`.
    pub fn new(routes: &[RouteConfig]) -> Result<Router, String> {
        let mut entries = Vec::with_capacity(routes.len());
        let mut exact_hosts: HashMap<String, TableBuilder> = HashMap::default();
        let mut wildcard_hosts: HashMap<String, TableBuilder> = HashMap::default();
        let mut any_host = TableBuilder::default();

        for (i, r) in routes.iter().enumerate() {
            let idx = u32::try_from(i).map_err(|_| "too many routes".to_string())?;
            let m = &r.matcher;
            let mut methods = Vec::new();
            for name in &m.methods {
                let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("routes[{i}]: invalid method {name:?}"))?;
                methods.push(method);
            }
            let mut headers = Vec::new();
            for (name, rule) in &m.headers {
                let hn = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("routes[{i}]: invalid header name {name:?}"))?;
                let cond = match rule {
                    HeaderMatchConfig::Exact(v) => HeaderCond::Exact(v.as_bytes().to_vec()),
                    HeaderMatchConfig::Rule(r) => match (&r.regex, r.present) {
                        (Some(re), None) => HeaderCond::Regex(
                            Regex::new(re).map_err(|e| format!("routes[{i}]: {e}"))?,
                        ),
                        (None, Some(p)) => HeaderCond::Present(p),
                        _ => return Err(format!("routes[{i}].match.headers.{name}: no rule")),
                    },
                };
                headers.push((hn, cond));
            }
            entries.push(Entry {
                methods,
                headers,
                priority: r.priority,
            });

            let path = match &m.path {
                None => PathMatch::Prefix("/"),
                Some(p) => p
                    .get()
                    .ok_or_else(|| format!("routes[{i}].match.path: no single matcher"))?,
            };
            let add = |t: &mut TableBuilder| match path {
                PathMatch::Prefix(p) => t.prefix.entry(p.to_string()).or_default().push(idx),
                PathMatch::Exact(p) => t.exact.entry(p.to_string()).or_default().push(idx),
                PathMatch::Regex(re) => t.regex.push((re.to_string(), idx)),
            };
            if m.hosts.is_empty() || m.hosts.iter().any(|h| h == "*") {
                add(&mut any_host);
            }
            for h in &m.hosts {
                let h = h.to_ascii_lowercase();
                if h == "*" {
                    continue;
                }
                if let Some(suffix) = h.strip_prefix('*') {
                    add(wildcard_hosts.entry(suffix.to_string()).or_default());
                } else {
                    add(exact_hosts.entry(h).or_default());
                }
            }
        }

        let build = |m: HashMap<String, TableBuilder>| -> Result<HashMap<String, Table>, String> {
            m.into_iter()
                .map(|(k, t)| Ok((k, t.build().map_err(|e| e.to_string())?)))
                .collect()
        };
        Ok(Router {
            entries,
            exact_hosts: build(exact_hosts)?,
            wildcard_hosts: build(wildcard_hosts)?,
            any_host: any_host.build().map_err(|e| e.to_string())?,
        })
    }

    /// The index of the best route for this request, if any matches.
    pub fn find(&self, req: &RequestView) -> Option<usize> {
        let mut best: Option<(Rank, u32)> = None;
        if !self.exact_hosts.is_empty() {
            if let Some(t) = self.exact_hosts.get(req.host) {
                self.search(t, HOST_EXACT, req, &mut best);
            }
        }
        if !self.wildcard_hosts.is_empty() {
            // Every suffix that starts at a dot: a.b.example.com -> .b.example.com, .example.com, .com
            for (pos, _) in req.host.match_indices('.') {
                if let Some(t) = self.wildcard_hosts.get(&req.host[pos..]) {
                    self.search(t, HOST_WILDCARD, req, &mut best);
                }
            }
        }
        self.search(&self.any_host, HOST_ANY, req, &mut best);
        best.map(|(_, i)| i as usize)
    }

    fn search(&self, t: &Table, host: u8, req: &RequestView, best: &mut Option<(Rank, u32)>) {
        let mut consider = |idx: u32, kind: u8, prefix_len: usize| {
            let entry = &self.entries[idx as usize];
            let rank = Rank {
                priority: entry.priority,
                host,
                kind,
                prefix_len,
                conditions: entry.headers.len() + usize::from(!entry.methods.is_empty()),
                order: -(idx as i64),
            };
            if best.is_some_and(|(b, _)| b >= rank) {
                return;
            }
            if entry.admits(req) {
                *best = Some((rank, idx));
            }
        };
        if let Some(list) = t.exact.get(req.path) {
            for &i in list {
                consider(i, KIND_EXACT, 0);
            }
        }
        if let Some((set, ids)) = &t.regex {
            for m in set.matches(req.path).iter() {
                consider(ids[m], KIND_REGEX, 0);
            }
        }
        for &len in &t.prefix_lens {
            if len > req.path.len() || !req.path.is_char_boundary(len) {
                continue;
            }
            if let Some(list) = t.prefix.get(&req.path[..len]) {
                for &i in list {
                    consider(i, KIND_PREFIX, len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn router(yaml: &str) -> (Router, Vec<String>) {
        let cfg = parse(yaml).expect("parse");
        let names = cfg.routes.iter().map(|r| r.name.clone()).collect();
        (Router::new(&cfg.routes).expect("router"), names)
    }

    fn find(
        r: &(Router, Vec<String>),
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        r.0.find(&RequestView {
            host,
            path,
            method: &m,
            headers: &h,
        })
        .map(|i| r.1[i].clone())
    }

    #[test]
    fn precedence() {
        let r = router(
            r#"
routes:
  - { name: root, upstream: u }
  - { name: api, upstream: u, match: { path: { prefix: /api/ } } }
  - { name: api-users, upstream: u, match: { path: { prefix: /api/users } } }
  - { name: api-re, upstream: u, match: { path: { regex: "^/api/users/[0-9]+$" } } }
  - { name: api-exact, upstream: u, match: { path: { exact: /api/users/42 } } }
  - { name: boosted, upstream: u, priority: 5, match: { path: { prefix: /api/users/9 } } }
  - { name: post-only, upstream: u, match: { path: { exact: /form }, methods: [POST] } }
  - { name: canary, upstream: u, match: { path: { exact: /form }, headers: { x-canary: "true" } } }
  - { name: host, upstream: u, match: { hosts: [api.example.com], path: { prefix: /api/ } } }
  - { name: wild, upstream: u, match: { hosts: ["*.example.com"], path: { prefix: /api/ } } }
"#,
        );
        assert_eq!(find(&r, "x", "GET", "/", &[]).as_deref(), Some("root"));
        assert_eq!(find(&r, "x", "GET", "/api/x", &[]).as_deref(), Some("api"));
        assert_eq!(
            find(&r, "x", "GET", "/api/users/abc", &[]).as_deref(),
            Some("api-users")
        );
        assert_eq!(
            find(&r, "x", "GET", "/api/users/7", &[]).as_deref(),
            Some("api-re")
        );
        assert_eq!(
            find(&r, "x", "GET", "/api/users/42", &[]).as_deref(),
            Some("api-exact")
        );
        assert_eq!(
            find(&r, "x", "GET", "/api/users/99", &[]).as_deref(),
            Some("boosted")
        );
        assert_eq!(find(&r, "x", "GET", "/form", &[]).as_deref(), Some("root"));
        assert_eq!(
            find(&r, "x", "POST", "/form", &[]).as_deref(),
            Some("post-only")
        );
        assert_eq!(
            find(&r, "x", "GET", "/form", &[("x-canary", "true")]).as_deref(),
            Some("canary")
        );
        assert_eq!(
            find(&r, "api.example.com", "GET", "/api/x", &[]).as_deref(),
            Some("host")
        );
        assert_eq!(
            find(&r, "a.b.example.com", "GET", "/api/x", &[]).as_deref(),
            Some("wild")
        );
        // The wildcard does not cover the bare domain.
        assert_eq!(
            find(&r, "example.com", "GET", "/api/x", &[]).as_deref(),
            Some("api")
        );
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = router(
            "routes:\n  - { name: a, upstream: u, match: { hosts: [a.test], path: { exact: /x } } }\n",
        );
        assert_eq!(find(&r, "a.test", "GET", "/x", &[]).as_deref(), Some("a"));
        assert_eq!(find(&r, "b.test", "GET", "/x", &[]), None);
        assert_eq!(find(&r, "a.test", "GET", "/y", &[]), None);
    }

    #[test]
    fn header_regex_and_absence() {
        let r = router(
            r#"
routes:
  - { name: plain, upstream: u }
  - { name: v2, upstream: u, match: { headers: { x-version: { regex: "^2\\." } } } }
  - { name: anon, upstream: u, match: { headers: { authorization: { present: false } }, path: { exact: /me } } }
"#,
        );
        assert_eq!(
            find(&r, "h", "GET", "/", &[("x-version", "2.1")]).as_deref(),
            Some("v2")
        );
        assert_eq!(
            find(&r, "h", "GET", "/", &[("x-version", "1.9")]).as_deref(),
            Some("plain")
        );
        assert_eq!(find(&r, "h", "GET", "/me", &[]).as_deref(), Some("anon"));
        assert_eq!(
            find(&r, "h", "GET", "/me", &[("authorization", "x")]).as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn prefix_respects_utf8_boundaries() {
        let r = router("routes:\n  - { name: a, upstream: u, match: { path: { prefix: /ab } } }\n");
        assert_eq!(find(&r, "h", "GET", "/é", &[]), None);
    }
}
