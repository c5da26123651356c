//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the `/admin/*` API
//! (`GET /admin/config`, `GET /admin/upstreams`, `POST /admin/reload`, `GET /admin/bans`,
//! `DELETE /admin/bans/IP`).
//!
//! When `server.admin_token` (or `admin_token_env`) is set, `/admin/*` needs
//! `Authorization: Bearer TOKEN`; the probes and `/metrics` stay open so that load balancers
//! and Prometheus need no secret. Every answer except `/metrics` is the JSON envelope.

use crate::access_log::AccessLog;
use crate::metrics::{self, METRICS};
use crate::proxy::is_draining;
use crate::reload::{Outcome, Reloader};
use crate::runtime::{Runtime, RuntimeHandle};
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct AdminApp {
    pub runtime: RuntimeHandle,
    pub reloader: Arc<Reloader>,
    pub token: Option<String>,
    pub access_log: AccessLog,
}

/// An answer in the envelope.
fn envelope(status: u16, message: &str, data: Value) -> Response<Vec<u8>> {
    plugins::envelope::response(status, message, &data, &[])
}

/// Set the gauges that mirror live state (target health, breaker states, bans, the config
/// generation), just before a scrape renders them.
fn sample_gauges(rt: &Runtime, access_log_dropped: u64) {
    let m = &*METRICS;
    m.target_healthy.reset();
    m.breaker_state.reset();
    for (name, up) in &rt.upstreams {
        for (addr, _, healthy) in up.targets() {
            m.target_healthy
                .with_label_values(&[name.as_str(), &addr.to_string()])
                .set(i64::from(healthy));
        }
        if let Some(b) = &up.breaker {
            m.breaker_state
                .with_label_values(&[name.as_str()])
                .set(b.state() as i64);
        }
    }
    m.banned_addresses.reset();
    let now = crate::clock::uptime();
    for (scope, bans) in rt.ban_scopes() {
        m.banned_addresses
            .with_label_values(&[scope])
            .set(bans.bans(now).len() as i64);
    }
    m.config_generation.set(rt.generation as i64);
    m.access_log_dropped.set(access_log_dropped as i64);
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| same(given, token.as_bytes()))
    }

    fn upstreams(&self) -> Value {
        let rt = self.runtime.load();
        let mut out = serde_json::Map::new();
        for (name, up) in &rt.upstreams {
            let ejections = up.ejections();
            let targets: Vec<Value> = up
                .targets()
                .into_iter()
                .map(|(addr, weight, healthy)| {
                    let (left_ms, total) = ejections.get(&addr).copied().unwrap_or_default();
                    json!({"addr": addr.to_string(), "weight": weight, "healthy": healthy,
                           "ejected": left_ms > 0, "ejected_for_ms": left_ms, "ejections": total})
                })
                .collect();
            let breaker = up
                .breaker
                .as_ref()
                .map(|b| json!({"state": b.state().as_str(), "transitions": b.transitions()}));
            let retries = up.metrics.retries.get();
            let discovery = up.source_state().map(|s| {
                json!({"type": s.kind, "index": s.index, "targets": s.targets,
                       "last_error": s.last_error})
            });
            out.insert(
                name.clone(),
                json!({"targets": targets, "circuit_breaker": breaker, "retries": retries,
                       "discovery": discovery}),
            );
        }
        Value::Object(out)
    }

    /// Bans in force, by scope.
    fn bans(&self) -> Value {
        let rt = self.runtime.load();
        let now = crate::clock::uptime();
        let mut out = serde_json::Map::new();
        for (scope, bans) in rt.ban_scopes() {
            let list: Vec<Value> = bans
                .bans(now)
                .into_iter()
                .map(|b| json!({"ip": b.ip.to_string(), "remaining_secs": b.remaining.as_secs()}))
                .collect();
            out.insert(scope.to_string(), Value::from(list));
        }
        Value::Object(out)
    }

    /// Lift the bans of one address in every scope.
    fn lift(&self, ip: &str) -> Response<Vec<u8>> {
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
            return envelope(400, "not an IP address", Value::Null);
        };
        let rt = self.runtime.load();
        let now = crate::clock::uptime();
        let lifted: Vec<&str> = rt
            .ban_scopes()
            .filter(|(_, bans)| bans.lift(ip, now))
            .map(|(scope, _)| scope)
            .collect();
        if lifted.is_empty() {
            envelope(404, "not banned", Value::Null)
        } else {
            envelope(
                200,
                "ban lifted",
                json!({"ip": ip.to_string(), "scopes": lifted}),
            )
        }
    }

    fn config(&self) -> Value {
        // Credentials serialize as `<redacted>` (config::Secret).
        let cfg = serde_json::to_value(self.reloader.config()).unwrap_or(Value::Null);
        json!({"reload": self.reloader.status(), "config": cfg})
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let r = self.reloader.clone();
        match tokio::task::spawn_blocking(move || r.reload("admin API")).await {
            Ok(Ok(Outcome::Applied {
                generation,
                needs_upgrade,
            })) => envelope(
                200,
                "reloaded",
                json!({"generation": generation, "needs_upgrade": needs_upgrade}),
            ),
            Ok(Ok(Outcome::Unchanged { generation })) => {
                envelope(200, "unchanged", json!({"generation": generation}))
            }
            Ok(Err(errs)) => envelope(
                422,
                "config refused, the running config stays",
                json!({"errors": errs.0.iter()
                    .map(|e| json!({"path": e.path, "message": e.message}))
                    .collect::<Vec<_>>()}),
            ),
            Err(e) => envelope(500, "reload failed", json!({"error": e.to_string()})),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path.starts_with("/admin/") && !self.authorized(session) {
            let mut r = envelope(401, "admin token required", Value::Null);
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (method, path.as_str()) {
            (Method::GET, "/healthz") => envelope(200, "ok", Value::Null),
            (Method::GET, "/readyz") => {
                if is_draining() {
                    envelope(503, "draining", Value::Null)
                } else {
                    let generation = self.runtime.load().generation;
                    envelope(200, "ready", json!({"generation": generation}))
                }
            }
            (Method::GET, "/metrics") => {
                let (body, content_type) = {
                    sample_gauges(&self.runtime.load(), self.access_log.dropped());
                    metrics::render()
                };
                let len = body.len();
                let mut r = Response::new(body);
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(&content_type) {
                    h.insert(http::header::CONTENT_TYPE, v);
                }
                h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                r
            }
            (Method::GET, "/admin/config") => envelope(200, "ok", self.config()),
            (Method::GET, "/admin/upstreams") => envelope(200, "ok", self.upstreams()),
            (Method::POST, "/admin/reload") => self.reload().await,
            (Method::GET, "/admin/bans") => envelope(200, "ok", self.bans()),
            (Method::DELETE, p) if p.starts_with("/admin/bans/") => {
                self.lift(&p["/admin/bans/".len()..])
            }
            (_, "/healthz" | "/readyz" | "/metrics" | "/admin/config" | "/admin/upstreams")
            | (_, "/admin/reload" | "/admin/bans") => {
                envelope(405, "method not allowed", Value::Null)
            }
            _ => envelope(404, "not found", Value::Null),
        }
    }
}
