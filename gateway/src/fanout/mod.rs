//! The fan-out (aggregation) service: its own Pingora service on its own listener.
//!
//! A route with `aggregate: NAME` is proxied like any other route (so the edge policies,
//! metrics and logs apply) to this service, naming the aggregate and the route in headers
//! the proxy sets itself. The service calls the aggregate's backends concurrently (at most
//! `max_concurrency` at once) through the same upstream pools and breakers as proxied
//! routes, each within its own timeout and the aggregate's deadline, and merges their JSON
//! into one envelope: `data` holds one key per backend, `failed` lists the backends that
//! failed. A failed required backend fails the whole answer (502, 504 on a timeout); a
//! failed optional one yields `null`, or with `fallback: cache` its last good answer.
//!
//! In a traced request (tracing on, and the proxy's `traceparent` sampled), each backend
//! call is a client span under the proxy's try, and the backend sees that span as its parent.

use crate::aggregate::{template, AggregateBackend};
use crate::client::{Body, CallError, Client};
use crate::metrics::METRICS;
use crate::runtime::RuntimeHandle;
use crate::telemetry::{self, Kind, Open, Parent, Span, TraceParent};
use crate::upstream::TryEnd;
use crate::wire::{TRACEPARENT, X_AGGREGATE, X_REQUEST_ID, X_ROUTE};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::Peer;
use plugins::breaker::Admission;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

static X_AGGREGATE_FAILED: HeaderName = HeaderName::from_static("x-aggregate-failed");

/// A backend answer larger than this is a failure of that backend.
pub const MAX_BACKEND_BODY: usize = 1024 * 1024;
/// Fallback entries kept at most; past it, expired entries go first, then new ones wait.
const MAX_CACHE_ENTRIES: usize = 10_000;

/// What made a backend call fail.
enum Fault {
    /// No answer: the connection failed, or broke.
    Connection,
    /// A 5xx answer.
    ServerError,
    /// An answer the aggregate cannot use (another status, not JSON, too large), or a
    /// request that could not be made: not held against the target.
    Answer,
}

/// How one backend call ended.
enum Outcome {
    Ok(Value),
    Failed(String),
    TimedOut,
}

/// Last good answers for `fallback: cache`, by aggregate, backend and rendered path, in this
/// process; with `server.redis` they are also kept in Redis, read first, so every instance
/// can stand in with an answer any of them saw.
#[derive(Default)]
struct FallbackCache {
    entries: Mutex<HashMap<String, (Instant, Value)>>,
}

impl FallbackCache {
    fn put(&self, key: String, value: Value) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHE_ENTRIES && !map.contains_key(&key) {
            // TTLs differ per aggregate; an hour bounds every sensible one.
            let now = Instant::now();
            map.retain(|_, (at, _)| now.duration_since(*at) < Duration::from_secs(3600));
            if map.len() >= MAX_CACHE_ENTRIES {
                return;
            }
        }
        map.insert(key, (Instant::now(), value));
    }

    fn get(&self, key: &str, ttl: Duration) -> Option<Value> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v.clone())
    }
}

pub struct FanoutApp {
    runtime: RuntimeHandle,
    client: Client,
    cache: FallbackCache,
}

impl FanoutApp {
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self {
            runtime,
            client: Client::default(),
            cache: FallbackCache::default(),
        }
    }

    /// One GET to a target of the backend's upstream, through its breaker.
    async fn call(
        &self,
        b: &AggregateBackend,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        traceparent: Option<HeaderValue>,
        target_seen: &OnceLock<SocketAddr>,
    ) -> Outcome {
        let up = &b.upstream;
        let probe = match up.breaker.as_ref().map(|br| br.try_acquire()) {
            Some(Admission::Rejected { .. }) => {
                return Outcome::Failed("circuit breaker open".into())
            }
            Some(Admission::Allowed { probe }) => probe,
            None => false,
        };
        let Some(target) = up.select(b"", &[], false) else {
            return Outcome::Failed("no healthy target".into());
        };
        if let Some(a) = target.addr.as_inet() {
            let _ = target_seen.set(*a);
        }
        let peer = up.peer(&target);
        let result = self.fetch(&peer, path, headers, traceparent).await;
        if let Some(br) = &up.breaker {
            br.record(result.is_ok(), probe);
        }
        let end = match &result {
            Ok(_) | Err((_, Fault::Answer)) => TryEnd::Ok,
            Err((_, Fault::ServerError)) => TryEnd::Failed,
            Err((_, Fault::Connection)) => TryEnd::PassOver,
        };
        if let Some(a) = target.addr.as_inet() {
            up.record_try(a, end);
        }
        match result {
            Ok(v) => Outcome::Ok(v),
            Err((e, _)) => Outcome::Failed(e),
        }
    }

    /// The error says what failed, for passive tracking and outlier detection.
    async fn fetch(
        &self,
        peer: &pingora::upstreams::peer::HttpPeer,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        traceparent: Option<HeaderValue>,
    ) -> Result<Value, (String, Fault)> {
        let mut req = RequestHeader::build("GET", path.as_bytes(), Some(headers.len() + 2))
            .map_err(|e| (format!("bad request path {path:?}: {e}"), Fault::Answer))?;
        let host = peer.address().to_string();
        req.insert_header(http::header::HOST, host.as_str())
            .map_err(|e| (e.to_string(), Fault::Answer))?;
        for (name, value) in headers {
            let _ = req.insert_header(name.clone(), value.clone());
        }
        if let Some(tp) = traceparent {
            let _ = req.insert_header(TRACEPARENT.clone(), tp);
        }
        let answer = self
            .client
            .call(peer, req, None, Body::Keep(MAX_BACKEND_BODY))
            .await
            .map_err(|e| {
                let fault = match e {
                    CallError::TooLarge(_) => Fault::Answer,
                    _ => Fault::Connection,
                };
                (e.to_string(), fault)
            })?;
        let (status, body) = (answer.status, answer.body);
        if !(200..300).contains(&status) {
            let fault = if status >= 500 {
                Fault::ServerError
            } else {
                Fault::Answer
            };
            return Err((format!("status {status}"), fault));
        }
        serde_json::from_slice(&body)
            .map_err(|e| (format!("answer is not JSON: {e}"), Fault::Answer))
    }

    async fn aggregate(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let rt = self.runtime.load_full();
        let req = session.req_header();
        let name = req
            .headers
            .get(&X_AGGREGATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(agg) = rt.aggregates.get(name) else {
            return envelope(404, "no such aggregate", json!({"aggregate": name}), &[]);
        };
        let route = req
            .headers
            .get(&X_ROUTE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| rt.route_named(r));
        let vars = template::Vars::new(req, route.and_then(|r| r.path_regex.as_ref()));
        let mut forward: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for name in std::iter::once(&X_REQUEST_ID).chain(agg.forward_headers.iter()) {
            if let Some(v) = req.headers.get(name) {
                forward.push((name.clone(), v.clone()));
            }
        }
        let incoming = req.headers.get(&TRACEPARENT);
        let trace = incoming
            .filter(|_| rt.tracing.is_some())
            .and_then(|v| TraceParent::parse(v.as_bytes()))
            .filter(TraceParent::sampled)
            .and_then(|tp| Some((tp, tp.parent()?)));

        let mut paths = Vec::with_capacity(agg.backends.len());
        for b in &agg.backends {
            match b.path.render(&vars) {
                Ok(p) => paths.push(Ok(p)),
                Err(template::RenderError::Missing(e)) => paths.push(Err(e)),
                Err(template::RenderError::DotSegment(e)) => {
                    let data = json!({"backend": b.key, "error": e});
                    return envelope(400, "bad request", data, &[]);
                }
            }
        }

        let deadline = Instant::now() + agg.timeout;
        let slots = Semaphore::new(agg.max_concurrency);
        let calls = agg.backends.iter().zip(paths).map(|(b, path)| {
            let (slots, forward) = (&slots, &forward);
            async move {
                let path = match path {
                    Ok(p) => p,
                    Err(e) => return (Outcome::Failed(e), String::new()),
                };
                let Ok(_slot) = slots.acquire().await else {
                    return (Outcome::Failed("closed".into()), path);
                };
                let left = deadline.saturating_duration_since(Instant::now());
                let budget = b.timeout.map_or(left, |t| t.min(left));
                // The backend's parent: this call's span when traced, else the proxy's try.
                let span = trace.map(|_| Open::now());
                let traceparent = match (&trace, span) {
                    (Some((tp, _)), Some(open)) => Some(telemetry::traceparent(
                        &tp.trace_id,
                        &open.span_id,
                        tp.flags,
                    )),
                    _ => incoming.cloned(),
                };
                let target = OnceLock::new();
                let outcome = match tokio::time::timeout(
                    budget,
                    self.call(b, &path, forward, traceparent, &target),
                )
                .await
                {
                    Ok(o) => o,
                    Err(_) => Outcome::TimedOut,
                };
                if let (Some((_, parent)), Some(open)) = (trace, span) {
                    backend_span(parent, open, &agg.name, b, &path, target.get(), &outcome);
                }
                (outcome, path)
            }
        });
        let outcomes = futures::future::join_all(calls).await;

        let mut data = Map::new();
        let mut failed: Vec<&str> = Vec::new();
        let mut required_failure: Option<(u16, &str, String)> = None;
        for (b, (outcome, path)) in agg.backends.iter().zip(outcomes) {
            let cache_key = format!("{}\u{0}{}\u{0}{path}", agg.name, b.key);
            let (result, value, error) = match outcome {
                Outcome::Ok(v) => {
                    if b.cache {
                        self.cache.put(cache_key.clone(), v.clone());
                        if let Some((_, redis)) = &rt.redis {
                            // Shared with the other instances; the answer does not wait for it.
                            let (redis, key, ttl) =
                                (redis.clone(), cache_key.clone(), agg.cache_ttl);
                            let bytes = v.to_string().into_bytes();
                            tokio::spawn(async move {
                                if let Err(e) = redis.set_ex(&key, &bytes, ttl).await {
                                    log::debug!("aggregate fallback not stored: {e}");
                                }
                            });
                        }
                    }
                    ("ok", v, None)
                }
                Outcome::Failed(e) => ("error", Value::Null, Some((502, e))),
                Outcome::TimedOut => ("timeout", Value::Null, Some((504, "timed out".to_string()))),
            };
            METRICS
                .aggregate_backends
                .with_label_values(&[agg.name.as_str(), b.key.as_str(), result])
                .inc();
            match error {
                None => {
                    data.insert(b.key.clone(), value);
                }
                Some((status, e)) => {
                    failed.push(&b.key);
                    if b.required && required_failure.is_none() {
                        required_failure = Some((status, &b.key, e));
                    }
                    let stale = if b.cache {
                        let shared = match &rt.redis {
                            Some((_, redis)) => match redis.get(&cache_key).await {
                                Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
                                Ok(None) => None,
                                Err(e) => {
                                    log::debug!("aggregate fallback not read: {e}");
                                    None
                                }
                            },
                            None => None,
                        };
                        shared.or_else(|| self.cache.get(&cache_key, agg.cache_ttl))
                    } else {
                        None
                    };
                    data.insert(b.key.clone(), stale.unwrap_or(Value::Null));
                }
            }
        }
        if let Some((status, key, error)) = required_failure {
            let message = if status == 504 {
                "required backend timed out"
            } else {
                "required backend failed"
            };
            return envelope(
                status,
                message,
                json!({"backend": key, "error": error}),
                &failed,
            );
        }
        envelope(200, "ok", Value::Object(data), &failed)
    }
}

/// A backend call's span: the aggregate, the backend, its path and target, and how it ended.
fn backend_span(
    parent: Parent,
    open: Open,
    aggregate: &str,
    b: &AggregateBackend,
    path: &str,
    target: Option<&SocketAddr>,
    outcome: &Outcome,
) {
    let mut attributes: Vec<(&'static str, telemetry::Value)> = vec![
        ("http.request.method", "GET".into()),
        ("url.path", path.to_string().into()),
        ("gateway.aggregate", aggregate.to_string().into()),
        ("gateway.backend", b.key.clone().into()),
        ("gateway.upstream", b.upstream.name.clone().into()),
        ("gateway.required", b.required.into()),
    ];
    if let Some(t) = target {
        attributes.push(("server.address", t.ip().to_string().into()));
        attributes.push(("server.port", i64::from(t.port()).into()));
    }
    let error = match outcome {
        Outcome::Ok(_) => None,
        Outcome::Failed(e) => Some(e.clone()),
        Outcome::TimedOut => Some("timed out".to_string()),
    };
    if let Some(e) = &error {
        let kind = match outcome {
            Outcome::TimedOut => "timeout",
            _ => "failed",
        };
        attributes.push(("error.type", kind.into()));
        attributes.push(("gateway.error", e.clone().into()));
    }
    telemetry::record(Span {
        trace_id: parent.trace_id,
        span_id: open.span_id,
        parent: Some(parent.span_id),
        remote_parent: true,
        name: format!("GET {}", b.key),
        kind: Kind::Client,
        start_ns: open.start_ns,
        end_ns: telemetry::now_ns(),
        attributes,
        error,
    });
}

/// The envelope with the backends that failed, in `failed` and in a header.
fn envelope(status: u16, message: &str, data: Value, failed: &[&str]) -> Response<Vec<u8>> {
    let mut r = plugins::envelope::response(status, message, &data, &[("failed", json!(failed))]);
    if !failed.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&failed.join(", ")) {
            r.headers_mut().insert(X_AGGREGATE_FAILED.clone(), v);
        }
    }
    r
}

#[async_trait]
impl ServeHttp for FanoutApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // A request body is not used; read it so the connection stays in step.
        while let Ok(Some(_)) = session.read_request_body().await {}
        self.aggregate(session).await
    }
}
