//! OAuth 2.0 token introspection (RFC 7662) as a chain member: an opaque bearer token is
//! sent to the provider's introspection endpoint, and the request goes on when the answer
//! says `active: true` (and the token has not expired, and carries the required scopes).
//! The answer's claims are the request's identity: they key rate limits and tiers and are
//! forwarded upstream in headers a client cannot spoof, as a verified JWT's are.
//!
//! Cost and safety:
//! - Answers are cached by the SHA-256 of the token (the token itself is never a key, a
//!   label or a log field): an active one for `cache_ttl_secs`, never past its `exp`; an
//!   inactive one for `inactive_ttl_secs`, so a flood of one bad token costs one call.
//!   The cache holds at most `cache_entries` answers.
//! - Concurrent requests with the same token share one call.
//! - Calls are bounded: each by `timeout_ms`, all by `max_calls_per_sec` (a token bucket);
//!   a token not yet known beyond that budget gets 503 with `Retry-After: 1`.
//! - A provider that fails (down, slow, refusing the gateway's client secret, answering
//!   garbage) never hangs a request: `on_provider_error` decides between 503 and the last
//!   active answer of a token whose `exp` has not passed.

use crate::client::{Body, Client, Url};
use crate::config::{ClientAuthMethod, OAuth2Config, OnProviderError};
use crate::metrics::METRICS;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use pingora_prometheus::prometheus::{Histogram, IntCounter};
use plugins::claims::ForwardClaims;
use plugins::policy::Request;
use plugins::scope::Scopes;
use plugins::{Facts, Flow, GatewayError, HeaderTarget, Policy};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// Longest introspection answer read.
const MAX_ANSWER: usize = 64 * 1024;

type Digest = [u8; 32];

/// What the provider said of a token.
#[derive(Clone)]
struct Known {
    /// The answer, when the token is active.
    claims: Option<Arc<Value>>,
    /// Until then (process clock, ms) the answer stands without asking again.
    fresh_until_ms: u64,
    /// The token's `exp` (Unix seconds), when the answer gave one.
    exp: Option<u64>,
}

#[derive(Clone)]
enum Failure {
    /// Over `max_calls_per_sec`.
    Busy,
    /// The provider could not answer.
    Provider,
}

type Lookup = Result<Known, Failure>;

pub struct OAuth2 {
    /// The settings this policy was built from; a reload that keeps them keeps the cache.
    pub cfg: OAuth2Config,
    route: String,
    endpoint: Endpoint,
    ca: Option<Arc<CaType>>,
    /// `Authorization: Basic ...`, with `client_secret_basic`.
    basic: Option<HeaderValue>,
    /// `&client_id=...&client_secret=...`, with `client_secret_post`.
    post: String,
    scopes: Option<Scopes>,
    forward: ForwardClaims,
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<Digest, Arc<OnceCell<Lookup>>>>,
    budget: Mutex<Bucket>,
    client: Client,
    calls_active: IntCounter,
    calls_inactive: IntCounter,
    calls_error: IntCounter,
    calls_busy: IntCounter,
    hits: IntCounter,
    duration: Histogram,
}

/// Where the introspection endpoint is.
pub enum Endpoint {
    Fixed(Url),
    /// Named by an OpenID Connect issuer's discovery document at `doc`, read when first
    /// needed, again every `DISCOVERY_REFRESH` and after a failed call.
    Discovered {
        doc: Url,
        issuer: String,
        found: Mutex<Option<(Url, u64)>>,
    },
}

/// How long a discovered endpoint is used before the document is read again.
const DISCOVERY_REFRESH_MS: u64 = 300_000;

impl Endpoint {
    pub fn discovered(doc: Url, issuer: String) -> Endpoint {
        Endpoint::Discovered {
            doc,
            issuer,
            found: Mutex::new(None),
        }
    }
}

/// The parts the compile step checked: the endpoint, its CA and the client secret.
pub struct OAuth2Source {
    pub endpoint: Endpoint,
    pub ca: Option<Arc<CaType>>,
    pub secret: String,
    /// The required scopes, checked.
    pub scopes: Option<Scopes>,
    pub forward: ForwardClaims,
}

impl OAuth2 {
    pub fn new(route: &str, cfg: &OAuth2Config, source: OAuth2Source) -> OAuth2 {
        let (basic, post) = match cfg.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 section 2.3.1: both form-encoded, then Base64.
                let pair = format!("{}:{}", form(&cfg.client_id), form(&source.secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                (
                    HeaderValue::from_str(&format!("Basic {b64}")).ok(),
                    String::new(),
                )
            }
            ClientAuthMethod::ClientSecretPost => (
                None,
                format!(
                    "&client_id={}&client_secret={}",
                    form(&cfg.client_id),
                    form(&source.secret)
                ),
            ),
        };
        let rate = f64::from(cfg.max_calls_per_sec.max(1));
        let result = |r: &str| METRICS.introspections.with_label_values(&[route, r]);
        OAuth2 {
            cfg: cfg.clone(),
            route: route.to_string(),
            endpoint: source.endpoint,
            ca: source.ca,
            basic,
            post,
            scopes: source.scopes,
            forward: source.forward,
            cache: Mutex::new(Cache::new(cfg.cache_entries)),
            inflight: Mutex::new(HashMap::new()),
            budget: Mutex::new(Bucket {
                tokens: rate,
                rate,
                at: Instant::now(),
            }),
            client: Client::default(),
            calls_active: result("active"),
            calls_inactive: result("inactive"),
            calls_error: result("error"),
            calls_busy: result("busy"),
            hits: METRICS.introspection_cache_hits.with_label_values(&[route]),
            duration: METRICS.introspection_duration.with_label_values(&[route]),
        }
    }

    /// The provider's answer for this token: one call shared by every request that asks
    /// at the same time, its answer cached.
    async fn ask(&self, token: &str, digest: Digest) -> Lookup {
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(digest).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async {
                if !self.take_budget() {
                    self.calls_busy.inc();
                    return Err(Failure::Busy);
                }
                let started = Instant::now();
                let timeout = Duration::from_millis(self.cfg.timeout_ms.max(1));
                let answer = tokio::time::timeout(timeout, self.introspect(token)).await;
                self.duration.observe(started.elapsed().as_secs_f64());
                let known = match answer {
                    Ok(Ok(known)) => known,
                    Ok(Err(e)) => {
                        self.calls_error.inc();
                        log::warn!("oauth2 on route {}: introspection failed: {e}", self.route);
                        return Err(Failure::Provider);
                    }
                    Err(_) => {
                        self.calls_error.inc();
                        log::warn!(
                            "oauth2 on route {}: introspection timed out after {} ms",
                            self.route,
                            self.cfg.timeout_ms
                        );
                        return Err(Failure::Provider);
                    }
                };
                match known.claims {
                    Some(_) => self.calls_active.inc(),
                    None => self.calls_inactive.inc(),
                }
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .put(digest, known.clone());
                Ok(known)
            })
            .await
            .clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&digest);
        }
        result
    }

    /// The introspection endpoint: the configured one, or the one the issuer's discovery
    /// document names (OpenID Connect Discovery 1.0; the document's `issuer` must match).
    async fn endpoint(&self, timeout: Duration) -> Result<Url, String> {
        let (doc, issuer, found) = match &self.endpoint {
            Endpoint::Fixed(url) => return Ok(url.clone()),
            Endpoint::Discovered { doc, issuer, found } => (doc, issuer, found),
        };
        let now = crate::clock::now_ms();
        if let Some((url, at)) = found.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if now < at + DISCOVERY_REFRESH_MS {
                return Ok(url.clone());
            }
        }
        let body = self
            .client
            .get(doc, timeout, self.ca.clone(), MAX_ANSWER)
            .await
            .map_err(|e| format!("discovery: {e}"))?;
        let url = crate::oidc::endpoint(&body, issuer, "introspection_endpoint")?;
        *found.lock().unwrap_or_else(|e| e.into_inner()) = Some((url.clone(), now));
        Ok(url)
    }

    /// One introspection call (RFC 7662 section 2.1).
    async fn introspect(&self, token: &str) -> Result<Known, String> {
        let timeout = Duration::from_millis(self.cfg.timeout_ms.max(1));
        let url = self.endpoint(timeout).await?;
        let result = self.call(&url, token, timeout).await;
        if result.is_err() {
            if let Endpoint::Discovered { found, .. } = &self.endpoint {
                // The endpoint may have moved: read the document again next time.
                *found.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        result
    }

    async fn call(&self, url: &Url, token: &str, timeout: Duration) -> Result<Known, String> {
        let peer = url.peer(timeout, self.ca.clone()).await?;
        let body = format!(
            "token={}&token_type_hint=access_token{}",
            form(token),
            self.post
        );
        let mut req = RequestHeader::build("POST", url.target.as_bytes(), Some(6))
            .map_err(|e| e.to_string())?;
        let fields = [
            (
                http::header::HOST,
                HeaderValue::from_str(&url.host_header()).ok(),
            ),
            (
                http::header::CONTENT_TYPE,
                Some(HeaderValue::from_static(
                    "application/x-www-form-urlencoded",
                )),
            ),
            (
                http::header::ACCEPT,
                Some(HeaderValue::from_static("application/json")),
            ),
            (
                http::header::CONTENT_LENGTH,
                Some(HeaderValue::from(body.len())),
            ),
            (http::header::AUTHORIZATION, self.basic.clone()),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                req.insert_header(name, v).map_err(|e| e.to_string())?;
            }
        }
        let answer = self
            .client
            .call(&peer, req, Some(body.into()), Body::Keep(MAX_ANSWER))
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("the provider answered {}", answer.status));
        }
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        let now = crate::clock::now_ms();
        if v.get("active").and_then(Value::as_bool) != Some(true) {
            return Ok(Known {
                claims: None,
                fresh_until_ms: now + self.cfg.inactive_ttl_secs * 1000,
                exp: None,
            });
        }
        let exp = v.get("exp").and_then(Value::as_u64);
        let mut ttl_ms = self.cfg.cache_ttl_secs * 1000;
        if let Some(exp) = exp {
            ttl_ms = ttl_ms.min(exp.saturating_sub(unix_now()) * 1000);
        }
        Ok(Known {
            claims: Some(Arc::new(v)),
            fresh_until_ms: now + ttl_ms,
            exp,
        })
    }

    fn take_budget(&self) -> bool {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * b.rate).min(b.rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The decision on a token the provider answered for.
    fn decide(&self, known: Known, facts: &mut Facts) -> Flow {
        let Some(claims) = known.claims else {
            return Flow::Respond(invalid("token not active"));
        };
        if known.exp.is_some_and(|exp| exp <= unix_now()) {
            return Flow::Respond(invalid("token expired"));
        }
        if let Some(Err(e)) = self.scopes.as_ref().map(|s| s.check(&claims)) {
            return Flow::Respond(e);
        }
        facts.claims = Some(claims);
        Flow::Continue
    }
}

impl Policy for OAuth2 {
    async fn request(&self, req: &Request<'_>, facts: &mut Facts) -> Flow {
        let Some(token) = bearer(req.headers) else {
            return Flow::Respond(GatewayError::new(401, "missing token").with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            ));
        };
        let digest: Digest = Sha256::digest(token.as_bytes()).into();
        let now = crate::clock::now_ms();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest);
        if let Some(known) = cached.clone().filter(|k| now < k.fresh_until_ms) {
            self.hits.inc();
            return self.decide(known, facts);
        }
        match self.ask(token, digest).await {
            Ok(known) => self.decide(known, facts),
            Err(failure) => {
                let stale = cached.filter(|k| {
                    self.cfg.on_provider_error == OnProviderError::Cached
                        && k.claims.is_some()
                        && k.exp.is_some_and(|exp| exp > unix_now())
                });
                match (stale, failure) {
                    (Some(known), _) => self.decide(known, facts),
                    (None, Failure::Busy) => {
                        Flow::Respond(unavailable("authorization server busy"))
                    }
                    (None, Failure::Provider) => {
                        Flow::Respond(unavailable("authorization server unavailable"))
                    }
                }
            }
        }
    }

    /// A client-sent header of a forwarded claim's name never passes.
    fn upstream_request(&self, facts: &Facts, headers: &mut impl HeaderTarget) {
        self.forward.apply(facts.claims.as_deref(), headers);
    }
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case, RFC 6750 section 2.1).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn invalid(reason: &'static str) -> GatewayError {
    GatewayError::new(401, "invalid token")
        .with_data(serde_json::json!({ "reason": reason }))
        .with_header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
}

fn unavailable(message: &'static str) -> GatewayError {
    GatewayError::new(503, message).with_retry_after(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `application/x-www-form-urlencoded` of one value.
fn form(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

/// Answers by token digest, at most `cap`.
struct Cache {
    map: HashMap<Digest, Known>,
    cap: usize,
}

impl Cache {
    fn new(cap: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn get(&self, digest: &Digest) -> Option<Known> {
        self.map.get(digest).cloned()
    }

    /// When full: answers no longer fresh and of no use when the provider fails go first
    /// (inactive, or past `exp`); if none can go, any one does.
    fn put(&mut self, digest: Digest, known: Known) {
        if self.map.len() >= self.cap && !self.map.contains_key(&digest) {
            let now = crate::clock::now_ms();
            let unix = unix_now();
            self.map.retain(|_, k| {
                now < k.fresh_until_ms
                    || (k.claims.is_some() && k.exp.is_some_and(|exp| exp > unix))
            });
            if self.map.len() >= self.cap {
                if let Some(any) = self.map.keys().next().copied() {
                    self.map.remove(&any);
                }
            }
        }
        self.map.insert(digest, known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_a_token_is_needed() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (v, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            h.insert(http::header::AUTHORIZATION, HeaderValue::from_static(v));
            assert_eq!(bearer(&h), want, "{v:?}");
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form("a b+c/é"), "a+b%2Bc%2F%C3%A9");
    }

    #[test]
    fn a_full_cache_drops_what_is_of_no_more_use_first() {
        let mut c = Cache::new(2);
        let now = crate::clock::now_ms();
        let stale_inactive = Known {
            claims: None,
            fresh_until_ms: now,
            exp: None,
        };
        let fresh = Known {
            claims: Some(Arc::new(Value::Null)),
            fresh_until_ms: now + 60_000,
            exp: None,
        };
        c.put([1; 32], stale_inactive);
        c.put([2; 32], fresh.clone());
        c.put([3; 32], fresh.clone());
        assert!(c.get(&[1; 32]).is_none());
        assert!(c.get(&[2; 32]).is_some() && c.get(&[3; 32]).is_some());
        c.put([4; 32], fresh);
        assert_eq!(c.map.len(), 2, "bounded");
    }
}
