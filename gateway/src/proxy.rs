//! `impl ProxyHttp`: the phases of a proxied request, and nothing else.
//! Routing, target selection and header rules live in their own modules; this file adapts
//! Pingora's `Session` to them and is the only place that writes gateway responses.

use crate::access_log::{AccessLog, Entry};
use crate::guard::Framing;
use crate::metrics::METRICS;
use crate::mirror::{self, Mirrorer, MAX_MIRROR_BODY};
use crate::path::PathOptions;
use crate::ratelimit;
use crate::router::RequestView;
use crate::runtime::{KeepaliveRule, RequestLimits, Route, Runtime, RuntimeHandle};
use crate::upstream::{HashKey, TryEnd, Upstream};
use crate::wire::{TRACEPARENT, X_AGGREGATE, X_CLAIMS, X_REQUEST_ID, X_ROUTE};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING,
};
use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD};
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use plugins::breaker::{Admission, State as BreakerState};
use plugins::cors::{Preflight, ORIGIN};
use plugins::ratelimit::{Guard, RequestKeys, Verdict};
use plugins::retry::Failure;
use plugins::{GatewayError, HeaderTarget};
use std::borrow::Cow;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Longest client-sent `X-Request-Id` that is kept; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest host name the router looks at; longer Host headers are refused.
const MAX_HOST_LEN: usize = 255;

/// Set once the process starts to shut down or hand its sockets to a new process: from then
/// on every response closes its connection, so clients move to the new process between
/// requests instead of losing one to a connection closed under them.
static DRAINING: AtomicBool = AtomicBool::new(false);

pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

pub fn start_draining() {
    if !DRAINING.swap(true, Ordering::Relaxed) {
        log::info!("draining: responses now close their connections");
    }
}

pub struct Gateway {
    runtime: RuntimeHandle,
    access_log: AccessLog,
    mirrorer: Arc<Mirrorer>,
}

impl Gateway {
    pub fn new(runtime: RuntimeHandle, access_log: AccessLog) -> Self {
        Self {
            runtime,
            access_log,
            mirrorer: Arc::new(Mirrorer::default()),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    /// The config snapshot this request uses from start to end.
    rt: Arc<Runtime>,
    route: Option<usize>,
    /// Which upstream of the route's split serves this request (0 without a split).
    arm: usize,
    /// The client's address (behind trusted proxies: from X-Forwarded-For).
    client_ip: Option<IpAddr>,
    /// The request's Origin, when the route's CORS policy allows it.
    cors_origin: Option<HeaderValue>,
    /// Claims of the verified JWT.
    claims: Option<Arc<serde_json::Value>>,
    /// Request body bytes received so far.
    body_bytes: u64,
    /// Refused for a ban already in force (does not count toward another).
    banned: bool,
    /// The rate-limit quota nearest to running out, for the response headers.
    quota: Option<Verdict>,
    /// Concurrency-limit slots this request holds until it ends.
    _inflight: Vec<Guard>,
    /// The request body collected for the mirror, when this request is mirrored.
    mirror_body: Option<Vec<u8>>,
    mirror_body_done: bool,
    request_id: HeaderValue,
    start: Instant,
    target: Option<SocketAddr>,
    /// Why the gateway answered itself, for the access log.
    error: Option<&'static str>,
    /// The answer for an error that `upstream_peer` raises, when it is not the default one.
    fail_hint: Option<GatewayError>,
    /// Upstream tries made so far, and the targets they went to.
    tries: u32,
    tried: Vec<SocketAddr>,
    /// This request holds one of the breaker's half-open probe slots.
    probe: bool,
    /// The current try's outcome has not been reported to the breaker yet.
    attempt_open: bool,
    /// The current try is being retried because of its status (see upstream_response_filter).
    status_retry: bool,
    /// Wait before the next try.
    backoff: Duration,
    upstream_status: Option<u16>,
    /// Every try and backoff of this request ends by then.
    deadline: Instant,
    /// When the current try started.
    try_start: Instant,
    /// W3C trace context: the trace id (hex) and flags kept from the client or made here.
    trace_id: [u8; 32],
    trace_flags: [u8; 2],
}

impl Ctx {
    fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.rt.routes[i])
    }

    /// The upstream serving this request: the route's, or its arm of a split.
    fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.route().map(|r| r.upstream(self.arm))
    }
}

/// Run `f` on the bytes of a hash key (`header:NAME`, `ip`, `path`) of this request. `ip` is
/// the client's address as resolved through `server.trusted_proxies`, not the socket peer:
/// behind a load balancer every request would hash alike.
fn with_key<R>(
    session: &Session,
    client: Option<IpAddr>,
    key: &HashKey,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    match key {
        HashKey::Header(name) => f(session
            .req_header()
            .headers
            .get(name)
            .map_or(b"", |v| v.as_bytes())),
        HashKey::Path => f(session.req_header().uri.path().as_bytes()),
        HashKey::Ip => match client {
            Some(ip) => f(plugins::ipfilter::IpText::new(ip).as_str().as_bytes()),
            None => f(b""),
        },
    }
}

fn new_request_id() -> HeaderValue {
    // 32 lowercase hex digits are always a valid header value.
    HeaderValue::from_bytes(&random_hex::<32>()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn random_hex<const N: usize>() -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    let mut n = fastrand::u128(..);
    for (i, b) in out.iter_mut().enumerate() {
        if i == 32 {
            n = fastrand::u128(..);
        }
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
}

/// The trace id and flags of a valid `traceparent` (version 00), per W3C Trace Context.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    if !hex(trace) || !hex(span) || !hex(flags) || zero(trace) || zero(span) {
        return None;
    }
    let mut t = [0u8; 32];
    t.copy_from_slice(trace);
    Some((t, [flags[0], flags[1]]))
}

fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// The host a request names, from the URI authority (h2, absolute-form) or the Host header.
fn request_host(req: &RequestHeader) -> Result<Option<&str>, &'static str> {
    if let Some(h) = req.uri.host() {
        return Ok(Some(h));
    }
    let mut values = req.headers.get_all(HOST).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    let s = v.to_str().map_err(|_| "invalid Host header")?;
    // Strip a port; keep IPv6 literals in brackets whole.
    let host = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => &s[..=end],
            None => return Err("invalid Host header"),
        }
    } else {
        s.rsplit_once(':').map_or(s, |(h, _)| h)
    };
    Ok(Some(host))
}

/// Wraps a Pingora header so `plugins::HeaderOps` can edit it.
struct ReqHeaders<'a>(&'a mut RequestHeader);
struct RespHeaders<'a>(&'a mut ResponseHeader);

impl HeaderTarget for ReqHeaders<'_> {
    fn remove_header(&mut self, name: &HeaderName) {
        self.0.remove_header(name);
    }
    fn set_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.0.insert_header(name.clone(), value.clone());
    }
}

impl HeaderTarget for RespHeaders<'_> {
    fn remove_header(&mut self, name: &HeaderName) {
        self.0.remove_header(name);
    }
    fn set_header(&mut self, name: &HeaderName, value: &HeaderValue) {
        let _ = self.0.insert_header(name.clone(), value.clone());
    }
}

/// Write a gateway-generated response in the JSON envelope.
async fn respond(session: &mut Session, ctx: &mut Ctx, err: GatewayError) -> Result<()> {
    ctx.error = Some(err.message);
    let status = err.status;
    let quota = ctx.quota.filter(|_| status != 429);
    let more = cors_headers(ctx)
        .into_iter()
        .chain(quota.into_iter().flat_map(|q| q.headers()));
    let (resp, body) = envelope(err, ctx.request_id.clone(), more)?;
    // A body the client already started sending would otherwise be read as the next
    // request on this connection; close instead of guessing where it ends.
    let has_body = request_has_body(session.req_header());
    // After a malformed request nothing on this connection can be trusted.
    if has_body || status == http::StatusCode::BAD_REQUEST || is_draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// An answer of the gateway in the envelope: its head (status, JSON type, length, request
/// id, the error's own fields, then `more`) and its body.
fn envelope(
    err: GatewayError,
    request_id: HeaderValue,
    more: impl Iterator<Item = (HeaderName, HeaderValue)>,
) -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(err.body());
    let mut resp = ResponseHeader::build(err.status, Some(4 + err.headers.len()))?;
    resp.insert_header(CONTENT_TYPE, JSON.clone())?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    resp.insert_header("x-request-id", request_id)?;
    for (name, value) in err.headers.into_iter().chain(more) {
        resp.insert_header(name, value)?;
    }
    Ok((resp, body))
}

/// The request head's framing and size: refuse what two parsers could read differently
/// (RFC 9112 section 6.3) and what is larger than the configured bounds.
fn check_head(
    req: &RequestHeader,
    framing: Framing,
    limits: &RequestLimits,
) -> Result<(), GatewayError> {
    let h = &req.headers;
    if framing.bad_request_line {
        return Err(GatewayError::new(400, "invalid request line"));
    }
    // As sent, before Pingora's parser reconciled them.
    if framing.content_length > 0 && framing.transfer_encoding > 0 {
        return Err(GatewayError::new(
            400,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if framing.content_length > 1 {
        return Err(GatewayError::new(400, "more than one Content-Length"));
    }
    if h.len() > limits.max_headers {
        return Err(GatewayError::new(431, "too many header fields")
            .with_data(serde_json::json!({ "max_headers": limits.max_headers })));
    }
    let size = h
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + req.method.as_str().len()
        + 12;
    if size > limits.max_header_bytes {
        return Err(GatewayError::new(431, "request header fields too large")
            .with_data(serde_json::json!({ "max_header_bytes": limits.max_header_bytes })));
    }
    let mut lengths = h.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(GatewayError::new(400, "more than one Content-Length"));
    }
    let mut codings = h.get_all(TRANSFER_ENCODING).iter();
    let coding = codings.next();
    if codings.next().is_some() {
        return Err(GatewayError::new(400, "more than one Transfer-Encoding"));
    }
    match (length, coding) {
        (Some(_), Some(_)) => Err(GatewayError::new(
            400,
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(len), None) => {
            let digits = len.as_bytes();
            if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(GatewayError::new(400, "invalid Content-Length"));
            }
            let n: u64 = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            if n > limits.max_body_bytes {
                return Err(too_large(limits.max_body_bytes));
            }
            Ok(())
        }
        (None, Some(te)) if !te.as_bytes().eq_ignore_ascii_case(b"chunked") => {
            Err(GatewayError::new(
                400,
                "unsupported Transfer-Encoding: only chunked is accepted",
            ))
        }
        _ => Ok(()),
    }
}

/// Put the request's path in its normal form (see [`crate::path`]) in place, before anything
/// reads it: routing, the route's policies, the upstream request, the mirror and the access
/// log all see the one path. A target the client sent in absolute form is rewritten to
/// origin form here, so its raw bytes are not what goes upstream.
fn normalize_target(session: &mut Session, opts: &PathOptions) -> Result<(), GatewayError> {
    let req = session.req_header();
    if !req.raw_path_is_utf8() {
        return Err(bad_path("request target is not UTF-8"));
    }
    let path = match crate::path::normalize(req.uri.path(), opts) {
        Ok(Cow::Borrowed(_)) if req.raw_path() == path_and_query(req).as_bytes() => return Ok(()),
        Ok(p) => p.into_owned(),
        Err(e) => return Err(bad_path(e.reason())),
    };
    let mut target = path;
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = req.uri.scheme().cloned();
    parts.authority = req.uri.authority().cloned();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(target)
            .map_err(|_| bad_path("invalid request target"))?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|_| bad_path("invalid request target"))?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

fn bad_path(reason: &'static str) -> GatewayError {
    GatewayError::new(400, "invalid path").with_data(serde_json::json!({ "reason": reason }))
}

fn too_large(max: u64) -> GatewayError {
    GatewayError::new(413, "request body too large")
        .with_data(serde_json::json!({ "max_body_bytes": max }))
}

/// How long the address stays banned, when it is.
fn banned(bans: Option<&plugins::autoban::AutoBan>, ip: Option<IpAddr>) -> Option<Duration> {
    bans?.banned(ip?, crate::clock::uptime())
}

fn ban_answer(left: Duration) -> GatewayError {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    GatewayError::new(403, "forbidden")
        .with_data(serde_json::json!({ "reason": "address banned", "retry_after": secs }))
        .with_header(RETRY_AFTER.clone(), HeaderValue::from(secs.max(1)))
}

fn forbidden(reason: &'static str) -> GatewayError {
    GatewayError::new(403, "forbidden").with_data(serde_json::json!({ "reason": reason }))
}

/// CORS headers for an answer to an allowed origin.
fn cors_headers(ctx: &Ctx) -> Vec<(HeaderName, HeaderValue)> {
    match (ctx.route().and_then(|r| r.cors.as_ref()), &ctx.cors_origin) {
        (Some(cors), Some(origin)) => cors.response_headers(origin.to_str().unwrap_or("")),
        _ => Vec::new(),
    }
}

/// 204 to an allowed CORS preflight, answered by the gateway.
async fn answer_preflight(
    session: &mut Session,
    ctx: &mut Ctx,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    if request_has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

fn request_has_body(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.contains_key(TRANSFER_ENCODING) || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// Bound how many requests an HTTP/1 connection serves, or turn keep-alive off, by the rule
/// the guard looked up when the connection was accepted. The idle time between requests is
/// the guard's too (it costs no timer per request), so Pingora's own keep-alive timeout is
/// left off. The request count travels with the connection from one request to the next
/// (Pingora decrements it), so it is set on the first request only; a connection the client
/// asked to close stays closed.
fn apply_keepalive(session: &mut Session, rule: KeepaliveRule) {
    let ds = session.as_downstream_mut();
    if ds.get_keepalive().is_none() {
        return;
    }
    if rule.timeout_secs == 0 {
        ds.set_keepalive(None);
        return;
    }
    if rule.requests > 0 && ds.get_keepalive_reuses_remaining().is_none() {
        ds.set_keepalive_reuses_remaining(Some(rule.requests - 1));
    }
}

/// The answer to a head the parser refused: its status from the cause.
fn invalid_request_error(e: &Error) -> GatewayError {
    let cause = e.root_cause().to_string();
    let context = e.context.as_ref().map(|c| c.as_str()).unwrap_or("");
    if cause.contains("too many headers") {
        GatewayError::new(431, "too many header fields")
    } else if context.contains("larger than") || cause.contains("larger than") {
        GatewayError::new(431, "request header fields too large")
    } else if context.starts_with("invalid uri") && context.len() > u16::MAX as usize {
        // The http crate's URI holds at most 64 KiB.
        GatewayError::new(414, "request target too long")
    } else {
        GatewayError::new(400, "malformed request")
    }
}

fn status_error(code: u16) -> GatewayError {
    match code {
        400 => GatewayError::new(400, "bad request"),
        404 => GatewayError::new(404, "no route"),
        408 => GatewayError::new(408, "request timed out"),
        413 => GatewayError::new(413, "request body too large"),
        502 => GatewayError::new(502, "upstream failed"),
        503 => GatewayError::new(503, "no healthy upstream target")
            .with_header(RETRY_AFTER.clone(), HeaderValue::from_static("1")),
        504 => GatewayError::new(504, "upstream timed out"),
        _ => GatewayError::new(code, "gateway error"),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let now = Instant::now();
        Ctx {
            rt: self.runtime.load_full(),
            route: None,
            arm: 0,
            client_ip: None,
            cors_origin: None,
            claims: None,
            body_bytes: 0,
            banned: false,
            quota: None,
            _inflight: Vec::new(),
            mirror_body: None,
            mirror_body_done: false,
            request_id: HeaderValue::from_static(""),
            start: now,
            target: None,
            error: None,
            fail_hint: None,
            tries: 0,
            tried: Vec::new(),
            probe: false,
            attempt_open: false,
            status_retry: false,
            backoff: Duration::ZERO,
            upstream_status: None,
            deadline: now,
            try_start: now,
            trace_id: [b'0'; 32],
            trace_flags: *b"01",
        }
    }

    /// A request head Pingora's parser refused (before any other hook): answered in the
    /// envelope like every other error of the gateway, 431 for too many or too large header
    /// fields, 414 for a target over 64 KiB, 400 otherwise; the connection closes after it.
    fn invalid_request_response(&self, e: &Error) -> (ResponseHeader, Bytes) {
        let err = invalid_request_error(e);
        log::debug!("request head refused by the parser: {e}");
        METRICS
            .invalid_requests
            .with_label_values(&[err.status.as_str()])
            .inc();
        let close = (http::header::CONNECTION, HeaderValue::from_static("close"));
        match envelope(err, new_request_id(), std::iter::once(close)) {
            Ok(answer) => answer,
            // Building a header from fixed parts does not fail; if it ever did, Pingora's own.
            Err(_) => (
                pingora::protocols::http::ServerSession::generate_error(400),
                Bytes::new(),
            ),
        }
    }

    /// Runs first: settle the request id so every later answer can carry it.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.request_id = match session.req_header().headers.get(&X_REQUEST_ID) {
            Some(v) if acceptable_request_id(v) => v.clone(),
            _ => new_request_id(),
        };
        match session
            .req_header()
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            Some((trace, flags)) => {
                ctx.trace_id = trace;
                ctx.trace_flags = flags;
            }
            None => ctx.trace_id = random_hex(),
        }
        Ok(())
    }

    /// Framing and size checks, then the route lookup and the route's policies. Answers
    /// 400, 404, 413, 431 and the policies' refusals itself.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let head = session
            .as_downstream()
            .stream()
            .and_then(crate::guard::head_info);
        if let Some(h) = head {
            apply_keepalive(session, h.keepalive);
        }
        let framing = head.map(|h| h.framing).unwrap_or_default();
        let req = session.req_header();
        if let Err(e) = check_head(req, framing, &ctx.rt.limits) {
            respond(session, ctx, e).await?;
            return Ok(true);
        }
        if let Err(e) = normalize_target(session, &ctx.rt.limits.paths) {
            respond(session, ctx, e).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let host = match request_host(req) {
            Ok(Some(h)) if h.len() <= MAX_HOST_LEN => h,
            Ok(Some(_)) => {
                respond(session, ctx, GatewayError::new(400, "Host header too long")).await?;
                return Ok(true);
            }
            Ok(None) if req.version == Version::HTTP_11 => {
                respond(session, ctx, GatewayError::new(400, "missing Host header")).await?;
                return Ok(true);
            }
            Ok(None) => "",
            Err(msg) => {
                respond(session, ctx, GatewayError::new(400, msg)).await?;
                return Ok(true);
            }
        };
        let mut lower = [0u8; MAX_HOST_LEN];
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let buf = &mut lower[..host.len()];
            buf.copy_from_slice(host.as_bytes());
            buf.make_ascii_lowercase();
            // Lowercasing ASCII letters keeps the bytes valid UTF-8.
            std::str::from_utf8(buf).unwrap_or("")
        } else {
            host
        };
        ctx.client_ip = client_ip(session).map(|peer| {
            let xff = req
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            plugins::ipfilter::client_ip(peer, xff, &ctx.rt.trusted_proxies)
        });
        if let (Some(filter), Some(ip)) = (&ctx.rt.ip_filter, ctx.client_ip) {
            if let Err(reason) = filter.check(ip) {
                respond(session, ctx, forbidden(reason)).await?;
                return Ok(true);
            }
        }
        if let Some(left) = banned(ctx.rt.autoban.as_deref(), ctx.client_ip) {
            ctx.banned = true;
            respond(session, ctx, ban_answer(left)).await?;
            return Ok(true);
        }
        // A CORS preflight is routed as the request it announces.
        let preflight = (req.method == Method::OPTIONS && req.headers.contains_key(&ORIGIN))
            .then(|| req.headers.get(ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let view = RequestView {
            host,
            path: req.uri.path(),
            method: preflight.as_ref().unwrap_or(&req.method),
            headers: &req.headers,
        };
        ctx.route = ctx.rt.router.find(&view);
        let Some(idx) = ctx.route else {
            respond(session, ctx, status_error(404)).await?;
            return Ok(true);
        };
        // Borrow the route through the `rt` field alone, so other fields stay writable.
        let route = &ctx.rt.routes[idx];
        if let (Some(filter), Some(ip)) = (&route.ip_filter, ctx.client_ip) {
            if let Err(reason) = filter.check(ip) {
                respond(session, ctx, forbidden(reason)).await?;
                return Ok(true);
            }
        }
        if let Some(left) = banned(route.autoban.as_deref(), ctx.client_ip) {
            ctx.banned = true;
            respond(session, ctx, ban_answer(left)).await?;
            return Ok(true);
        }
        if let Some(cors) = &route.cors {
            let origin = session.req_header().headers.get(&ORIGIN).cloned();
            if let Some(origin) = origin {
                let o = origin.to_str().unwrap_or("");
                if let Some(method) = &preflight {
                    let asked = session
                        .req_header()
                        .headers
                        .get(ACCESS_CONTROL_REQUEST_HEADERS)
                        .and_then(|v| v.to_str().ok());
                    match cors.preflight(o, method.as_str(), asked) {
                        Preflight::Allowed(headers) => {
                            answer_preflight(session, ctx, headers).await?;
                        }
                        Preflight::Refused(reason) => {
                            respond(session, ctx, forbidden(reason)).await?;
                        }
                    }
                    return Ok(true);
                }
                if cors.origin_allowed(o) {
                    ctx.cors_origin = Some(origin);
                }
            }
        }
        let route = &ctx.rt.routes[idx];
        if let Some(jwt) = &route.jwt {
            let auth = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let mut verdict = jwt.verify(auth);
            if let (Err(e), Some((_, jwks))) = (&verdict, &route.jwks) {
                // Keys from a URL may have rotated: fetch them again (rate-limited) and retry.
                if jwt.refetch_may_help(e) && jwks.refetch().await {
                    verdict = jwt.verify(auth);
                }
            }
            match verdict {
                Ok(claims) => ctx.claims = claims,
                Err(e) => {
                    respond(session, ctx, e).await?;
                    return Ok(true);
                }
            }
        }
        if !ctx.rt.routes[idx].limits.is_empty() {
            let rt = ctx.rt.clone();
            let keys = RequestKeys {
                ip: ctx.client_ip,
                headers: &session.req_header().headers,
                claims: ctx.claims.as_deref(),
            };
            let store = rt.redis.as_ref().map(|(_, s)| &**s);
            match ratelimit::check(&rt.routes[idx].limits, store, &keys).await {
                Ok(admitted) => {
                    ctx.quota = admitted.quota;
                    ctx._inflight = admitted.guards;
                    if !admitted.delay.is_zero() {
                        // A leaky bucket releases the request at its rate.
                        tokio::time::sleep(admitted.delay).await;
                    }
                }
                Err(e) => {
                    respond(session, ctx, e).await?;
                    return Ok(true);
                }
            }
        }
        let route = &ctx.rt.routes[idx];
        if route.arms.len() > 1 {
            ctx.arm = match &route.sticky {
                Some(key) => with_key(session, ctx.client_ip, key, |k| route.pick(Some(k))),
                None => route.pick(None),
            };
        }
        if route
            .mirror
            .as_ref()
            .is_some_and(|m| fastrand::f64() < m.share)
        {
            ctx.mirror_body = Some(Vec::new());
        }
        let up = route.upstream(ctx.arm);
        ctx.deadline = ctx.start + up.deadline;
        if let Some(breaker) = &up.breaker {
            match breaker.try_acquire() {
                Admission::Allowed { probe } => ctx.probe = probe,
                Admission::Rejected { retry_after } => {
                    let err = breaker_open(&up.name, retry_after);
                    respond(session, ctx, err).await?;
                    return Ok(true);
                }
            }
        }
        // A client that stalls its body gets 408, before the upstream's read timeout
        // would blame the upstream (Pingora times each body read with this).
        session
            .as_downstream_mut()
            .set_read_timeout(Some(ctx.rt.limits.client_body_timeout));
        if let Some(policy) = &up.retry {
            policy.record_request();
            if !policy.cfg.idempotent_only {
                // Keep the start of the body so a retry can send it again.
                session.as_mut().enable_retry_buffering();
            }
        }
        Ok(false)
    }

    /// Counts the body against `max_body_bytes` (a chunked body has no length up front)
    /// and collects the body of a mirrored request, up to the mirror's size limit.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.rt.limits.max_body_bytes {
                ctx.fail_hint = Some(too_large(ctx.rt.limits.max_body_bytes));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        if let Some(buf) = ctx.mirror_body.as_mut() {
            if let Some(chunk) = body {
                if buf.len() + chunk.len() > MAX_MIRROR_BODY {
                    ctx.mirror_body = None;
                    if let Some(route) = ctx.route() {
                        mirror::count(&route.name, "too_large");
                    }
                    return Ok(());
                }
                buf.extend_from_slice(chunk);
            }
            if end_of_stream {
                ctx.mirror_body_done = true;
            }
        }
        Ok(())
    }

    /// Pick a healthy target of the route's upstream. On a retry: wait out the backoff,
    /// ask the breaker again, and prefer a target this request has not tried.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(idx) = ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let up = ctx.rt.routes[idx].upstream(ctx.arm);
        if ctx.tries > 0 {
            up.metrics.retries.inc();
            if !ctx.backoff.is_zero() {
                tokio::time::sleep(ctx.backoff).await;
            }
            if let Some(breaker) = &up.breaker {
                match breaker.try_acquire() {
                    Admission::Allowed { probe } => ctx.probe = probe,
                    Admission::Rejected { retry_after } => {
                        ctx.fail_hint = Some(breaker_open(&up.name, retry_after));
                        return Error::e_explain(ErrorType::HTTPStatus(503), "breaker open");
                    }
                }
            }
        }
        let retry = ctx.tries > 0;
        let selected = match &up.hash_key {
            None => up.select(b"", &ctx.tried, retry),
            Some(key) => with_key(session, ctx.client_ip, key, |k| {
                up.select(k, &ctx.tried, retry)
            }),
        };
        let Some(backend) = selected else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy target");
        };
        let mut peer = up.peer(&backend);
        // Each try gets at most what is left of the request's deadline.
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        let left = left.max(Duration::from_millis(1));
        for t in [
            &mut peer.options.connection_timeout,
            &mut peer.options.read_timeout,
        ] {
            *t = t.map(|d| d.min(left));
        }
        ctx.target = backend.addr.as_inet().copied();
        if let Some(t) = ctx.target {
            ctx.tried.push(t);
        }
        ctx.tries += 1;
        ctx.try_start = Instant::now();
        ctx.attempt_open = true;
        ctx.upstream_status = None;
        Ok(Box::new(peer))
    }

    /// Path rewrite, forwarding headers, the route's request header rules.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route() else {
            return Ok(());
        };

        // h2 and absolute-form requests carry the authority in the URI; an HTTP/1.1
        // upstream wants it in Host and an origin-form target.
        let authority = upstream_request.uri.authority().cloned();
        if let Some(a) = &authority {
            if !upstream_request.headers.contains_key(HOST) {
                upstream_request.insert_header(HOST, a.as_str())?;
            }
        }
        let strip = route
            .strip_prefix
            .as_deref()
            .filter(|p| upstream_request.uri.path().starts_with(p));
        if strip.is_some() || authority.is_some() {
            let path = upstream_request.uri.path();
            let path = match strip {
                Some(p) => &path[p.len()..],
                None => path,
            };
            let mut target = String::with_capacity(path.len() + 64);
            if !path.starts_with('/') {
                target.push('/');
            }
            target.push_str(path);
            if let Some(q) = upstream_request.uri.query() {
                target.push('?');
                target.push_str(q);
            }
            let uri = target
                .parse()
                .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad request target"))?;
            upstream_request.set_uri(uri);
        }

        // Header names as static strings: Pingora keeps their case as given, without
        // copying them (it copies the text of a HeaderName that is not a standard one).
        if let Some(ip) = client_ip(session) {
            let prev = upstream_request.headers.get(&X_FORWARDED_FOR);
            let mut v = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
            if let Some(prev) = prev {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(plugins::ipfilter::IpText::new(ip).as_str().as_bytes());
            if let Ok(xff) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                upstream_request.insert_header("x-forwarded-for", xff)?;
            }
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream_request.insert_header(
            "x-forwarded-proto",
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        )?;
        let host = authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| session.req_header().headers.get(HOST).cloned());
        if let Some(h) = host {
            upstream_request.insert_header("x-forwarded-host", h)?;
        }
        upstream_request.insert_header("x-request-id", ctx.request_id.clone())?;
        // Only the proxy names the aggregate, route and claims to the fan-out service. One
        // look at the names is cheaper than three lookups, and almost never finds one.
        if upstream_request
            .headers
            .keys()
            .any(|n| n.as_str().starts_with("x-gateway-"))
        {
            for name in [&X_AGGREGATE, &X_ROUTE, &X_CLAIMS] {
                upstream_request.remove_header(name);
            }
        }
        if let Some(agg) = &route.aggregate {
            upstream_request.insert_header(X_AGGREGATE.clone(), agg.clone())?;
            upstream_request.insert_header(X_ROUTE.clone(), route.name.as_str())?;
            if let Some(claims) = &ctx.claims {
                if let Ok(v) = HeaderValue::from_bytes(claims.to_string().as_bytes()) {
                    upstream_request.insert_header(X_CLAIMS.clone(), v)?;
                }
            }
        }
        // Forwarded claims: a client-sent header of the same name never passes.
        if let Some(jwt) = &route.jwt {
            for (name, value) in jwt.forwarded(ctx.claims.as_deref()) {
                upstream_request.remove_header(name);
                if let Some(v) = value {
                    upstream_request.insert_header(name.clone(), v)?;
                }
            }
        }
        // The gateway is one hop of the trace: same trace id, a new parent id.
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        tp[3..35].copy_from_slice(&ctx.trace_id);
        tp[35] = b'-';
        tp[36..52].copy_from_slice(&random_hex::<16>());
        tp[52] = b'-';
        tp[53..55].copy_from_slice(&ctx.trace_flags);
        if let Ok(v) = HeaderValue::from_bytes(&tp) {
            upstream_request.insert_header("traceparent", v)?;
        }

        route
            .request_headers
            .apply(&mut ReqHeaders(upstream_request));
        Ok(())
    }

    /// Note the upstream's status; a status the retry policy names is retried here,
    /// before anything reaches the client.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(up) = ctx.upstream() {
            up.metrics
                .duration
                .observe(ctx.try_start.elapsed().as_secs_f64());
        }
        if status >= 500 && self.may_retry(session, ctx, Failure::Status(status)) {
            self.end_attempt(ctx, false, false);
            ctx.status_retry = true;
            return Error::e_explain(ErrorType::HTTPStatus(status), "retrying on upstream status");
        }
        Ok(())
    }

    /// The route's response header rules; the request id goes back to the client.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if is_draining() {
            session.set_keepalive(None);
        }
        if let Some(route) = ctx.route() {
            route
                .response_headers
                .apply(&mut RespHeaders(upstream_response));
        }
        for (name, value) in cors_headers(ctx) {
            upstream_response.insert_header(name, value)?;
        }
        if let Some(q) = &ctx.quota {
            for (name, value) in q.header_fields() {
                upstream_response.insert_header(name, value)?;
            }
        }
        upstream_response.insert_header("x-request-id", ctx.request_id.clone())?;
        Ok(())
    }

    /// A connect failure counts against the breaker and the target; retried per policy.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failure = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => Failure::Timeout,
            _ => Failure::Connect,
        };
        self.end_attempt(ctx, false, true);
        let retry = self.may_retry(session, ctx, failure);
        e.set_retry(retry);
        e
    }

    /// An error after the connection was made: a timeout, a reset, a broken response.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            // Decided, counted and budgeted in upstream_response_filter.
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream || ctx.body_bytes > ctx.rt.limits.max_body_bytes
        {
            // The client went away, sent garbage or too much: not the upstream's fault.
            ctx.attempt_open = false;
            e.set_retry(false);
            return e;
        }
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
            _ => Failure::Connect,
        };
        self.end_attempt(ctx, false, true);
        if self.may_retry(session, ctx, failure) {
            e.set_retry(true);
        } else if session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
        {
            // A pooled connection the upstream had already closed: one more try on a fresh
            // connection, as Pingora does by default.
            ctx.backoff = Duration::ZERO;
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Any error that ends the request: answer in the envelope if nothing was sent yet.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let code = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => *code,
            (
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout,
                ErrorSource::Upstream,
            ) => 504,
            (_, ErrorSource::Upstream) => 502,
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => 0,
            (ReadTimedout, ErrorSource::Downstream) => 408,
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if code == 408 {
            // The client stalled its body: its fault, not the upstream's (the attempt was
            // closed without a verdict in error_while_proxy).
            METRICS.client_timeouts.with_label_values(&["body"]).inc();
        }
        if code > 0 && session.response_written().is_none() {
            // The request may be mid-body; never reuse the connection after a failure.
            session.set_keepalive(None);
            let answer = ctx.fail_hint.take().unwrap_or_else(|| status_error(code));
            if let Err(write_err) = respond(session, ctx, answer).await {
                log::debug!("cannot send error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora logs every failed request at ERROR. A client that went away mid-request (a
    /// load test ending, a browser tab closed) is not the gateway's error: counted in
    /// `gateway_client_disconnects_total` and the access log, not written to the error log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        let gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if gone {
            METRICS.client_disconnects.inc();
        }
        gone
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(stream) = session.as_downstream().stream() {
            crate::guard::request_done(stream);
        }
        if ctx.attempt_open {
            let success = match ctx.upstream_status {
                Some(status) => status < 500,
                None => !e.is_some_and(|e| e.esource() == &ErrorSource::Upstream),
            };
            self.end_attempt(ctx, success, !success);
        }
        if let Some(body) = ctx.mirror_body.take() {
            if ctx.mirror_body_done || !request_has_body(session.req_header()) {
                self.send_mirror(session, ctx, body);
            }
        }
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if matches!(status, 401 | 403 | 429) && !ctx.banned {
            if let Some(ip) = ctx.client_ip {
                let now = crate::clock::uptime();
                let scopes = [
                    (ctx.rt.autoban.as_ref(), "server"),
                    (
                        ctx.route().and_then(|r| r.autoban.as_ref()),
                        ctx.route().map_or("-", |r| r.name.as_str()),
                    ),
                ];
                for (bans, scope) in scopes {
                    if bans.is_some_and(|b| b.refused(ip, now)) {
                        METRICS.auto_bans.with_label_values(&[scope]).inc();
                        log::warn!("auto_ban: {ip} banned ({scope}) after repeated refusals");
                    }
                }
            }
        }
        let route_label = ctx.route().map_or("-", |r| r.name.as_str());
        ctx.route()
            .map_or(&*crate::metrics::NO_ROUTE, |r| &r.requests)
            .count(&req.method, status);
        let elapsed = ctx.start.elapsed().as_secs_f64();
        match ctx.route() {
            Some(r) => r.duration.observe(elapsed),
            None => METRICS
                .request_duration
                .with_label_values(&[route_label])
                .observe(elapsed),
        }
        if !self.access_log.enabled() {
            return;
        }
        let client = ctx
            .client_ip
            .or_else(|| client_ip(session))
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let host = request_host(req).ok().flatten().unwrap_or("");
        let target = ctx.target.map(|t| t.to_string());
        let error = e.map(|e| e.to_string());
        let route = ctx.route();
        self.access_log.write(&Entry {
            request_id: ctx.request_id.to_str().unwrap_or(""),
            trace_id: std::str::from_utf8(&ctx.trace_id).unwrap_or(""),
            client: &client,
            method: req.method.as_str(),
            host,
            path: req.uri.path(),
            route: route.map(|r| r.name.as_str()),
            upstream: ctx.upstream().map(|u| u.name.as_str()),
            target: target.as_deref(),
            status,
            duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent(),
            error: ctx.error.or(error.as_deref()),
        });
    }
}

impl Gateway {
    /// Copy the request to the route's shadow upstream: origin-form target, `Host` with
    /// `-shadow` appended (as Envoy does, so the shadow can tell copies apart), the whole
    /// body with its length.
    fn send_mirror(&self, session: &Session, ctx: &Ctx, body: Vec<u8>) {
        let Some(route) = ctx.route() else { return };
        let Some(mirror) = &route.mirror else { return };
        let orig = session.req_header();
        let Ok(mut req) =
            RequestHeader::build(orig.method.clone(), path_and_query(orig).as_bytes(), None)
        else {
            return;
        };
        for (name, value) in orig.headers.iter() {
            if name != HOST && name != TRANSFER_ENCODING && name != CONTENT_LENGTH {
                let _ = req.append_header(name.clone(), value.clone());
            }
        }
        let host = request_host(orig).ok().flatten().unwrap_or("");
        let _ = req.insert_header(HOST, format!("{host}-shadow"));
        let _ = req.insert_header(CONTENT_LENGTH, body.len());
        let _ = req.insert_header(X_REQUEST_ID.clone(), ctx.request_id.clone());
        self.mirrorer
            .send(&route.name, mirror.upstream.clone(), req, body);
    }

    /// Report the outcome of the current try to the breaker; a failure may also put the
    /// target aside for a moment (passive tracking).
    fn end_attempt(&self, ctx: &mut Ctx, success: bool, passive: bool) {
        if !std::mem::take(&mut ctx.attempt_open) {
            return;
        }
        let Some(up) = ctx.upstream() else { return };
        if let Some(b) = &up.breaker {
            b.record(success, ctx.probe);
        }
        if let Some(t) = &ctx.target {
            let end = match (success, passive) {
                (true, _) => TryEnd::Ok,
                (false, false) => TryEnd::Failed,
                (false, true) => TryEnd::PassOver,
            };
            up.record_try(t, end);
        }
    }

    /// Whether the failed try may be retried, and if so, spend from the budget and choose
    /// the backoff. Retries stop at `attempts`, for non-idempotent methods unless allowed,
    /// once the client has seen a byte, when the breaker is open, and at the deadline.
    fn may_retry(&self, session: &Session, ctx: &mut Ctx, failure: Failure) -> bool {
        let Some(up) = ctx.upstream() else {
            return false;
        };
        let Some(policy) = &up.retry else {
            return false;
        };
        if !policy.retries(failure)
            || ctx.tries > policy.cfg.attempts
            || !policy.method_allowed(session.req_header().method.is_idempotent())
            || session.response_written().is_some()
            || session.as_ref().retry_buffer_truncated()
            || up
                .breaker
                .as_ref()
                .is_some_and(|b| b.state() == BreakerState::Open)
        {
            return false;
        }
        let wait = policy.backoff(ctx.tries, fastrand::f64());
        if Instant::now() + wait >= ctx.deadline || !policy.try_spend() {
            return false;
        }
        ctx.backoff = wait;
        true
    }
}

fn path_and_query(req: &RequestHeader) -> &str {
    req.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn breaker_open(upstream: &str, retry_after: Duration) -> GatewayError {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    GatewayError::new(503, "circuit breaker open")
        .with_data(serde_json::json!({ "upstream": upstream, "retry_after": secs }))
        .with_header(RETRY_AFTER.clone(), HeaderValue::from(secs.max(1)))
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    match session.client_addr()? {
        PingoraAddr::Inet(a) => Some(a.ip()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_body_bytes: 100,
        max_header_bytes: 200,
        max_headers: 4,
        client_body_timeout: Duration::from_secs(1),
        paths: crate::path::PathOptions {
            merge_slashes: true,
            escaped_slashes: crate::path::EscapedSlashes::Reject,
        },
    };

    fn head(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn verdict(headers: &[(&str, &str)], framing: Framing) -> Result<(), (u16, &'static str)> {
        check_head(&head(headers), framing, &LIMITS).map_err(|e| (e.status.as_u16(), e.message))
    }

    #[test]
    fn head_checks_at_their_edges() {
        let none = Framing::default();
        assert_eq!(verdict(&[("content-length", "100")], none), Ok(()));
        assert_eq!(
            verdict(&[("content-length", "101")], none),
            Err((413, "request body too large"))
        );
        for bad in ["", "+1", "-1", "1 ", "0x10", "99999999999999999999"] {
            assert_eq!(
                verdict(&[("content-length", bad)], none),
                Err((400, "invalid Content-Length")),
                "{bad:?}"
            );
        }
        assert_eq!(
            verdict(&[("content-length", "1"), ("content-length", "1")], none),
            Err((400, "more than one Content-Length"))
        );
        assert_eq!(verdict(&[("transfer-encoding", "Chunked")], none), Ok(()));
        assert_eq!(
            verdict(&[("transfer-encoding", "gzip, chunked")], none).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            verdict(
                &[("content-length", "1"), ("transfer-encoding", "chunked")],
                none
            ),
            Err((400, "both Content-Length and Transfer-Encoding"))
        );
        // As sent, before Pingora dropped the Content-Length of a chunked request.
        let both = Framing {
            content_length: 1,
            transfer_encoding: 1,
            bad_request_line: false,
        };
        assert_eq!(
            verdict(&[("transfer-encoding", "chunked")], both),
            Err((400, "both Content-Length and Transfer-Encoding"))
        );
        let line = Framing {
            bad_request_line: true,
            ..Framing::default()
        };
        assert_eq!(verdict(&[], line), Err((400, "invalid request line")));
        // Four fields pass, five do not; the byte bound counts names, values and the line.
        let four = [("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")];
        assert_eq!(verdict(&four, none), Ok(()));
        let five = [("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")];
        assert_eq!(verdict(&five, none), Err((431, "too many header fields")));
        let long = "v".repeat(200);
        assert_eq!(
            verdict(&[("a", &long)], none),
            Err((431, "request header fields too large"))
        );
    }

    #[test]
    fn traceparent_parsing() {
        let good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (trace, flags) = parse_traceparent(good).unwrap();
        assert_eq!(&trace, b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(&flags, b"01");
        for bad in [
            &b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            b"00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            b"",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn invalid_heads_get_their_status_from_the_cause() {
        let too_many = Error::because(
            ErrorType::InvalidHTTPHeader,
            "buf: ...",
            std::io::Error::other("too many headers"),
        );
        assert_eq!(invalid_request_error(&too_many).status.as_u16(), 431);
        let large = Error::explain(
            ErrorType::InvalidHTTPHeader,
            "Request header larger than 1048575",
        );
        assert_eq!(invalid_request_error(&large).status.as_u16(), 431);
        let long = Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("invalid uri /{}", "a".repeat(70_000)),
        );
        assert_eq!(invalid_request_error(&long).status.as_u16(), 414);
        let other = Error::explain(ErrorType::InvalidHTTPHeader, "invalid method");
        assert_eq!(invalid_request_error(&other).status.as_u16(), 400);
    }
}
