//! `impl ProxyHttp`: the phases of a proxied request, each a short table of contents.
//!
//! Each hook below says when Pingora calls it and what Pingora does when it is not
//! implemented (as Pingora's own `proxy_trait.rs` does), then what the gateway does there.
//! The work lives beside this file, one concern a module:
//!
//! - `head`: framing and size checks, the normal path, the host to route by, keep-alive;
//! - `trace`: the request id and the W3C trace context;
//! - the route's policies: [`crate::policy`] (the chain) on [`plugins::Policy`];
//! - `attempt`: the upstream tries (breaker, retries, passive tracking) as one type;
//! - `forward`: the target and headers sent upstream, the aggregate hand-off, the mirror;
//! - `answer`: every answer the gateway writes itself, in the envelope.

mod answer;
mod attempt;
mod forward;
mod head;
mod trace;

use crate::access_log::{AccessLog, Entry};
use crate::metrics::METRICS;
use crate::mirror::{self, Mirrorer, MAX_MIRROR_BODY};
use crate::router::RequestView;
use crate::runtime::{Route, Runtime, RuntimeHandle};
use crate::telemetry;
use crate::upstream::{TryEnd, Upstream};
use answer::{respond, status_error};
use async_trait::async_trait;
use attempt::Attempts;
use bytes::Bytes;
use http::header::{HeaderValue, ACCESS_CONTROL_REQUEST_METHOD};
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use plugins::cors::ORIGIN;
use plugins::policy::{Outcome, Request};
use plugins::retry::Failure;
use plugins::{Facts, Flow, GatewayError};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use trace::Ids;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

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

/// Per-request state, one field a concern.
pub struct Ctx {
    /// The config snapshot this request uses from start to end.
    rt: Arc<Runtime>,
    /// Request id and trace context.
    ids: Ids,
    /// A traced request's own span, open until the request ends.
    span: Option<telemetry::Open>,
    start: Instant,
    /// The client's address (behind trusted proxies: from X-Forwarded-For).
    client_ip: Option<IpAddr>,
    /// The route chosen, and which upstream of its split serves (0 without a split).
    route: Option<usize>,
    arm: usize,
    /// What the policies found (claims, quota, CORS origin, bans).
    facts: Facts,
    /// The request body as it passes.
    body: Body,
    /// The upstream tries.
    attempt: Attempts,
    /// Why the gateway answered itself, for the access log.
    error: Option<&'static str>,
    /// The answer for an error that `upstream_peer` or a body check raises, when it is not
    /// the default one for its status.
    fail_hint: Option<GatewayError>,
}

#[derive(Default)]
struct Body {
    /// Bytes received so far.
    bytes: u64,
    /// Collected for the mirror, when this request is mirrored.
    mirror: Option<Vec<u8>>,
    mirror_done: bool,
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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// Called when a request starts, before any other hook. The context holds the config
    /// snapshot the whole request uses.
    fn new_ctx(&self) -> Ctx {
        let now = Instant::now();
        Ctx {
            rt: self.runtime.load_full(),
            ids: Ids::default(),
            span: None,
            start: now,
            client_ip: None,
            route: None,
            arm: 0,
            facts: Facts::default(),
            body: Body::default(),
            attempt: Attempts::new(now),
            error: None,
            fail_hint: None,
        }
    }

    /// Called once at start: the modules every request runs. By default Pingora adds its
    /// response compression module, disabled, which still builds a context and runs its
    /// hooks on every request. Here: none, since the gateway compresses nothing (response
    /// compression, when it lands, is a module added here).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Called for a request head Pingora's parser refused, before any other hook; by
    /// default Pingora answers a bare 400. Here: the envelope, 431 for too many or too
    /// large header fields, 414 for a target over 64 KiB, 400 otherwise; the connection
    /// closes after it.
    fn invalid_request_response(&self, e: &Error) -> (ResponseHeader, Bytes) {
        let err = head::invalid_request_error(e);
        log::debug!("request head refused by the parser: {e}");
        METRICS
            .invalid_requests
            .with_label_values(&[err.status.as_str()])
            .inc();
        let close = (http::header::CONNECTION, HeaderValue::from_static("close"));
        match answer::envelope(err, trace::new_request_id(), std::iter::once(close)) {
            Ok(answer) => answer,
            // Building a header from fixed parts does not fail; if it ever did, Pingora's own.
            Err(_) => (
                pingora::protocols::http::ServerSession::generate_error(400),
                Bytes::new(),
            ),
        }
    }

    /// Called first on every request head, before the downstream modules; does nothing by
    /// default. Here: the request id and trace context, so every answer can carry them,
    /// and with tracing on, whether this request is traced.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.ids = Ids::of(session.req_header());
        if let Some(tracer) = &ctx.rt.tracing {
            ctx.span = ctx.ids.sample(tracer);
            ctx.attempt.trace = ctx.span.map(|s| s.as_parent(ctx.ids.trace()));
        }
        Ok(())
    }

    /// Called once the head is read; returning `true` means the response was written here
    /// and the request ends. Does nothing by default. Here: the head checks, the server's
    /// policies, routing, the route's policies (see [`crate::policy`]), then what the
    /// upstream tries need.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let flow = match self.admit(session, ctx).await {
            Flow::Continue => match self.prepare_tries(session, ctx) {
                Ok(()) => return Ok(false),
                Err(e) => Flow::Respond(e),
            },
            decided => decided,
        };
        match flow {
            Flow::Respond(err) => respond(session, ctx, err).await?,
            Flow::Answer(status, headers) => answer::plain(session, ctx, status, headers).await?,
            Flow::Continue => {}
        }
        Ok(true)
    }

    /// Called on every piece of the request body as it goes upstream; does nothing by
    /// default. Here: counted against `max_body_bytes` (a chunked body has no length up
    /// front), and collected for the mirror up to its size limit.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body.bytes += chunk.len() as u64;
            let max = ctx.rt.limits.max_body_bytes;
            if ctx.body.bytes > max {
                ctx.fail_hint = Some(head::too_large(max));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        let Some(buf) = ctx.body.mirror.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body {
            if buf.len() + chunk.len() > MAX_MIRROR_BODY {
                ctx.body.mirror = None;
                if let Some(route) = ctx.route() {
                    mirror::count(&route.name, "too_large");
                }
                return Ok(());
            }
            buf.extend_from_slice(chunk);
        }
        ctx.body.mirror_done |= end_of_stream;
        Ok(())
    }

    /// Called before every try to choose where it goes; the one hook Pingora requires.
    /// Here: a healthy target of the route's upstream. On a retry: wait out the backoff,
    /// ask the breaker again, and prefer a target this request has not tried. Each try
    /// gets at most what is left of the request's deadline.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(idx) = ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let up = ctx.rt.routes[idx].upstream(ctx.arm);
        let retry = ctx.attempt.tries > 0;
        if retry {
            if let Err(answer) = ctx.attempt.before_retry(up).await {
                ctx.fail_hint = Some(answer);
                return Error::e_explain(ErrorType::HTTPStatus(503), "breaker open");
            }
        }
        let tried = ctx.attempt.tried();
        let selected = match &up.hash_key {
            None => up.select(b"", tried, retry),
            Some(key) => {
                forward::with_key(session, ctx.client_ip, key, |k| up.select(k, tried, retry))
            }
        };
        let Some(backend) = selected else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy target");
        };
        let mut peer = up.peer(&backend);
        let left = ctx.attempt.time_left();
        for t in [
            &mut peer.options.connection_timeout,
            &mut peer.options.read_timeout,
        ] {
            *t = t.map(|d| d.min(left));
        }
        ctx.attempt.begin(
            up,
            backend.addr.as_inet().copied(),
            &session.req_header().method,
        );
        Ok(Box::new(peer))
    }

    /// Called before every try's head goes upstream; does nothing by default. Here: the
    /// target in origin form, the forwarding headers, the aggregate hand-off, then the
    /// route's policies (forwarded claims, header rules).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let authority = forward::target(route, upstream_request)?;
        forward::forwarding_headers(session, ctx, authority.as_ref(), upstream_request)?;
        forward::aggregate_hand_off(route, ctx, upstream_request)?;
        route
            .chain
            .upstream_request(&ctx.facts, &mut forward::ReqHeaders(upstream_request));
        Ok(())
    }

    /// Called when the upstream's answer head arrives, before `response_filter`; does
    /// nothing by default. Here: the try's status and duration noted; a status the retry
    /// policy names is retried, before anything reaches the client.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        let Some(idx) = ctx.route else {
            return Ok(());
        };
        let up = ctx.rt.routes[idx].upstream(ctx.arm);
        ctx.attempt.answered(up, status);
        if ctx.attempt.retry_on_status(session, up, status) {
            return Error::e_explain(ErrorType::HTTPStatus(status), "retrying on upstream status");
        }
        Ok(())
    }

    /// Called on the answer head before it goes to the client; does nothing by default.
    /// Here: the route's policies (header rules, CORS, quota), the request id, and a
    /// closing connection while draining.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if is_draining() {
            session.set_keepalive(None);
        }
        ctx.policies_see(upstream_response, true);
        upstream_response.insert_header(&crate::wire::X_REQUEST_ID, ctx.ids.request_id.clone())?;
        Ok(())
    }

    /// Called when a try cannot connect; by default the error is returned as it is (not
    /// retried). Here: counted against the breaker and the target (passed over), and
    /// retried as the policy allows.
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
        let Some(idx) = ctx.route else { return e };
        let up = ctx.rt.routes[idx].upstream(ctx.arm);
        ctx.attempt.failed(failure);
        ctx.attempt.end(up, TryEnd::PassOver);
        let retry = ctx.attempt.may_retry(session, up, failure);
        e.set_retry(retry);
        e
    }

    /// Called on an error after the connection was made (a timeout, a reset, a broken
    /// answer); by default a reused connection's failure is retried once on a new one.
    /// Here: the status retry decided above goes through; a failure the client caused
    /// closes the try without a verdict; an upstream failure counts and is retried as the
    /// policy allows, else once on a fresh connection as Pingora does.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if ctx.attempt.take_status_retry() {
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream || ctx.body.bytes > ctx.rt.limits.max_body_bytes
        {
            // The client went away, sent garbage or too much: not the upstream's fault.
            ctx.attempt.abandon();
            e.set_retry(false);
            return e;
        }
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
            _ => Failure::Connect,
        };
        let Some(idx) = ctx.route else { return e };
        let up = ctx.rt.routes[idx].upstream(ctx.arm);
        ctx.attempt.failed(failure);
        ctx.attempt.end(up, TryEnd::PassOver);
        if ctx.attempt.may_retry(session, up, failure) {
            e.set_retry(true);
        } else if session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
        {
            ctx.attempt.reconnect_now();
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Called on any error that ends the request; by default Pingora writes a bare error
    /// page. Here: the answer in the envelope, if nothing was sent yet.
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
            // The client stalled its body: its fault, not the upstream's (the try was
            // closed without a verdict in error_while_proxy).
            attempt::client_body_timeout();
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

    /// Called once when the request ends, answered or not; does nothing by default. Here:
    /// the last try's outcome, the mirror's copy, the policies' logging phase (bans learn
    /// from refusals), metrics, the request's span and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(stream) = session.as_downstream().stream() {
            crate::guard::request_done(stream);
        }
        if let Some(idx) = ctx.route {
            ctx.attempt.finish(ctx.rt.routes[idx].upstream(ctx.arm), e);
        }
        if let Some(body) = ctx.body.mirror.take() {
            if ctx.body.mirror_done || !head::request_has_body(session.req_header()) {
                forward::send_mirror(&self.mirrorer, session, ctx, body);
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let outcome = Outcome {
            status,
            client_ip: ctx.client_ip,
        };
        ctx.rt.chain.logging(&ctx.facts, &outcome);
        if let Some(route) = ctx.route() {
            route.chain.logging(&ctx.facts, &outcome);
        }
        self.count(session, ctx, status);
        if let Some(span) = ctx.span.take() {
            trace::server_span(session, ctx, span, status, e);
        }
        if self.access_log.enabled() {
            self.log_access(session, e, ctx, status);
        }
    }
}

impl Gateway {
    /// The head checks, the server's policies, routing and the route's policies:
    /// `Continue` when the request may go upstream.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Flow {
        if let Err(e) = head::admit_head(session, &ctx.rt.limits) {
            return Flow::Respond(e);
        }
        let req = session.req_header();
        let mut buf = [0u8; head::MAX_HOST_LEN];
        let host = match head::route_host(req, &mut buf) {
            Ok(h) => h,
            Err(e) => return Flow::Respond(e),
        };
        ctx.client_ip = head::peer_ip(session).map(|peer| {
            let xff = req
                .headers
                .get(&X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            plugins::ipfilter::client_ip(peer, xff, &ctx.rt.trusted_proxies)
        });
        // A CORS preflight is routed as the request it announces.
        let preflight = (req.method == Method::OPTIONS && req.headers.contains_key(&ORIGIN))
            .then(|| req.headers.get(ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let view = Request {
            method: &req.method,
            path: req.uri.path(),
            headers: &req.headers,
            client_ip: ctx.client_ip,
            preflight: preflight.as_ref(),
        };
        let Ctx {
            rt, facts, route, ..
        } = ctx;
        if !rt.chain.is_empty() {
            if let decided @ (Flow::Respond(_) | Flow::Answer(..)) =
                rt.chain.request(&view, facts).await
            {
                return decided;
            }
        }
        *route = rt.router.find(&RequestView {
            host,
            path: view.path,
            method: view.preflight.unwrap_or(view.method),
            headers: view.headers,
        });
        match *route {
            Some(idx) if rt.routes[idx].chain.is_empty() => Flow::Continue,
            Some(idx) => rt.routes[idx].chain.request(&view, facts).await,
            None => Flow::Respond(status_error(404)),
        }
    }

    /// Once admitted: the split's arm, the mirror's share, the deadline, the breaker's
    /// admission, the client's body timeout, and what a retry needs of the body.
    fn prepare_tries(&self, session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
        let Some(idx) = ctx.route else {
            return Err(status_error(404));
        };
        let route = &ctx.rt.routes[idx];
        if route.arms.len() > 1 {
            ctx.arm = match &route.sticky {
                Some(key) => {
                    forward::with_key(session, ctx.client_ip, key, |k| route.pick(Some(k)))
                }
                None => route.pick(None),
            };
        }
        if route
            .mirror
            .as_ref()
            .is_some_and(|m| fastrand::f64() < m.share)
        {
            ctx.body.mirror = Some(Vec::new());
        }
        let up = route.upstream(ctx.arm);
        ctx.attempt.deadline = ctx.start + up.deadline;
        ctx.attempt.admit(up)?;
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
        Ok(())
    }

    /// `gateway_requests_total` and `gateway_request_duration_seconds`.
    fn count(&self, session: &Session, ctx: &Ctx, status: u16) {
        let req = session.req_header();
        let elapsed = ctx.start.elapsed().as_secs_f64();
        match ctx.route() {
            Some(r) => {
                r.requests.count(&req.method, status);
                r.duration.observe(elapsed);
            }
            None => {
                crate::metrics::NO_ROUTE.count(&req.method, status);
                METRICS
                    .request_duration
                    .with_label_values(&["-"])
                    .observe(elapsed);
            }
        }
    }

    fn log_access(&self, session: &Session, e: Option<&Error>, ctx: &Ctx, status: u16) {
        let req = session.req_header();
        let client = ctx.client_ip.or_else(|| head::peer_ip(session));
        let host = head::request_host(req).ok().flatten().unwrap_or("");
        // Why Pingora ended the request, when the gateway did not say (rare).
        let error = match ctx.error {
            Some(_) => None,
            None => e.map(|e| e.to_string()),
        };
        let route = ctx.route();
        self.access_log.write(&Entry {
            request_id: ctx.ids.request_id.to_str().unwrap_or(""),
            trace_id: std::str::from_utf8(&ctx.ids.trace_id).unwrap_or(""),
            client,
            subject: ctx.facts.claims.as_deref().and_then(|c| {
                c.get("sub")
                    .or_else(|| c.get("client_id"))
                    .and_then(serde_json::Value::as_str)
            }),
            method: req.method.as_str(),
            host,
            path: req.uri.path(),
            route: route.map(|r| r.name.as_str()),
            upstream: ctx.upstream().map(|u| u.name.as_str()),
            target: ctx.attempt.target,
            status,
            duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
            bytes_sent: session.body_bytes_sent(),
            error: ctx.error.or(error.as_deref()),
        });
    }
}
