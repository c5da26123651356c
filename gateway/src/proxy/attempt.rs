//! The upstream tries of one request: the breaker's admission, which targets were tried,
//! the deadline every try and backoff ends by, and the report of each try's outcome to
//! the breaker and to passive tracking (exactly once a try).
//!
//! A try opens in `upstream_peer` ([`Attempts::begin`]) and ends in whichever hook learns
//! its outcome first: a retryable status in `upstream_response_filter`, a connect failure
//! in `fail_to_connect`, an error in `error_while_proxy`, or the end of the request in
//! `logging`. A try the client broke (it went away, or sent too much) closes without a
//! verdict ([`Attempts::abandon`]).
//!
//! In a traced request each try is a client span under the request's span, ended where
//! the try ends: its target, number, why the try before it failed, the breaker's state,
//! and its status or error.

use crate::metrics::METRICS;
use crate::telemetry::{self, Kind, Open, Parent, Span, Value};
use crate::upstream::{TryEnd, Upstream};
use http::Method;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource};
use plugins::breaker::{Admission, State as BreakerState};
use plugins::envelope::ceil_secs;
use plugins::retry::Failure;
use plugins::GatewayError;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub struct Attempts {
    /// Tries begun so far.
    pub tries: u32,
    /// The targets they went to, in order.
    tried: Vec<SocketAddr>,
    /// The current (or last) try's target.
    pub target: Option<SocketAddr>,
    /// Every try and backoff of this request ends by then.
    pub deadline: Instant,
    /// Wait before the next try.
    backoff: Duration,
    /// The breaker admitted this request on one of its half-open probe slots.
    probe: bool,
    /// The current try's outcome has not been reported yet.
    open: bool,
    /// The current try ended on a status the retry policy names (see
    /// `upstream_response_filter`); the error Pingora raises for it is a retry.
    status_retry: bool,
    /// When the current try started.
    started: Instant,
    /// The status of the current try's answer, once its head arrived.
    pub upstream_status: Option<u16>,
    /// How the last failed try failed (the next try's retry reason).
    failure: Option<Failure>,
    /// In a traced request: the request's span, the tries' parent.
    pub trace: Option<Parent>,
    /// The current try's span, while it is open.
    span: Option<TrySpan>,
}

/// A try's span, from its start to its outcome.
struct TrySpan {
    open: Open,
    name: String,
    attributes: Vec<(&'static str, Value)>,
}

impl Attempts {
    pub fn new(now: Instant) -> Attempts {
        Attempts {
            tries: 0,
            tried: Vec::new(),
            target: None,
            deadline: now,
            backoff: Duration::ZERO,
            probe: false,
            open: false,
            status_retry: false,
            started: now,
            upstream_status: None,
            failure: None,
            trace: None,
            span: None,
        }
    }

    pub fn tried(&self) -> &[SocketAddr] {
        &self.tried
    }

    /// Ask the upstream's breaker to let a try through: the answer to send when it is open.
    pub fn admit(&mut self, up: &Upstream) -> Result<(), GatewayError> {
        let Some(breaker) = &up.breaker else {
            return Ok(());
        };
        match breaker.try_acquire() {
            Admission::Allowed { probe } => {
                self.probe = probe;
                Ok(())
            }
            Admission::Rejected { retry_after } => Err(breaker_open(&up.name, retry_after)),
        }
    }

    /// Before a retry: count it, wait out the backoff, ask the breaker again.
    pub async fn before_retry(&mut self, up: &Upstream) -> Result<(), GatewayError> {
        up.metrics.retries.inc();
        if !self.backoff.is_zero() {
            tokio::time::sleep(self.backoff).await;
        }
        self.admit(up)
    }

    /// A try of `method` to `target` of `up` starts now.
    pub fn begin(&mut self, up: &Upstream, target: Option<SocketAddr>, method: &Method) {
        self.target = target;
        if let Some(t) = target {
            self.tried.push(t);
        }
        self.tries += 1;
        self.started = Instant::now();
        self.open = true;
        self.upstream_status = None;
        let retry_reason = self.failure.take();
        if self.trace.is_some() {
            self.span = Some(self.try_span(up, target, method, retry_reason));
        }
    }

    fn try_span(
        &self,
        up: &Upstream,
        target: Option<SocketAddr>,
        method: &Method,
        retry_reason: Option<Failure>,
    ) -> TrySpan {
        let mut attributes = vec![
            ("http.request.method", Value::Str(method.as_str().into())),
            ("gateway.upstream", Value::Str(up.name.clone())),
            ("gateway.attempt", Value::Int(i64::from(self.tries))),
        ];
        if let Some(t) = target {
            attributes.push(("server.address", Value::Str(t.ip().to_string())));
            attributes.push(("server.port", Value::Int(i64::from(t.port()))));
        }
        if let Some(f) = retry_reason {
            attributes.push(("gateway.retry_reason", Value::Str(failure_text(f))));
        }
        if let Some(b) = &up.breaker {
            let state = if self.probe {
                BreakerState::HalfOpen
            } else {
                b.state()
            };
            attributes.push(("gateway.breaker_state", Value::Static(state.as_str())));
        }
        TrySpan {
            open: Open::now(),
            name: format!("{method} {}", up.name),
            attributes,
        }
    }

    /// The current try's span id, when it is traced (the parent its upstream sees).
    pub fn span_id(&self) -> Option<[u8; 8]> {
        self.span.as_ref().map(|s| s.open.span_id)
    }

    /// The current try failed this way (before [`Attempts::end`]).
    pub fn failed(&mut self, failure: Failure) {
        self.failure = Some(failure);
    }

    /// End the current try's span: its status, or how it failed.
    fn end_span(&mut self, abandoned: bool) {
        let (Some(parent), Some(mut span)) = (self.trace, self.span.take()) else {
            return;
        };
        let error = match (self.upstream_status, self.failure) {
            (Some(status), _) => {
                span.attributes
                    .push(("http.response.status_code", Value::Int(i64::from(status))));
                // Per OpenTelemetry's HTTP conventions a client span fails on 4xx and 5xx.
                (status >= 400).then(|| status.to_string())
            }
            (None, Some(f)) if !abandoned => Some(failure_text(f)),
            // No answer and no failure of the upstream's: the client went away.
            (None, _) => {
                span.attributes
                    .push(("gateway.abandoned", Value::Bool(true)));
                None
            }
        };
        if let Some(e) = &error {
            span.attributes.push(("error.type", Value::Str(e.clone())));
        }
        telemetry::record(Span {
            trace_id: parent.trace_id,
            span_id: span.open.span_id,
            parent: Some(parent.span_id),
            remote_parent: false,
            name: span.name,
            kind: Kind::Client,
            start_ns: span.open.start_ns,
            end_ns: telemetry::now_ns(),
            attributes: span.attributes,
            error,
        });
    }

    /// The current try's answer head arrived with `status`.
    pub fn answered(&mut self, up: &Upstream, status: u16) {
        self.upstream_status = Some(status);
        up.metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// Report the current try's outcome to the breaker and to passive tracking, once.
    pub fn end(&mut self, up: &Upstream, end: TryEnd) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        if let Some(b) = &up.breaker {
            b.record(end == TryEnd::Ok, self.probe);
        }
        if let Some(t) = &self.target {
            up.record_try(t, end);
        }
        self.end_span(false);
    }

    /// Close the current try without a verdict: the client broke it, not the upstream.
    pub fn abandon(&mut self) {
        self.open = false;
        self.end_span(true);
    }

    /// At the request's end: a try still open succeeded unless the upstream failed it.
    pub fn finish(&mut self, up: &Upstream, e: Option<&Error>) {
        if !self.open {
            return;
        }
        let success = match self.upstream_status {
            Some(status) => status < 500,
            None => !e.is_some_and(|e| e.esource() == &ErrorSource::Upstream),
        };
        if !success && self.upstream_status.is_none() {
            self.failure.get_or_insert(Failure::Connect);
        }
        self.end(
            up,
            if success {
                TryEnd::Ok
            } else {
                TryEnd::PassOver
            },
        );
    }

    /// The current try answered `status`: retry it here, before anything reaches the
    /// client, when the policy names it (the target is not passed over for a status).
    pub fn retry_on_status(&mut self, session: &Session, up: &Upstream, status: u16) -> bool {
        if status < 500 || !self.may_retry(session, up, Failure::Status(status)) {
            return false;
        }
        self.failed(Failure::Status(status));
        self.end(up, TryEnd::Failed);
        self.status_retry = true;
        true
    }

    /// Whether the error Pingora raises now is the status retry decided above.
    pub fn take_status_retry(&mut self) -> bool {
        std::mem::take(&mut self.status_retry)
    }

    /// A pooled connection the upstream had already closed gets one more try on a fresh
    /// connection at once, without a backoff.
    pub fn reconnect_now(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// Whether the failed try may be retried, and if so, spend from the budget and choose
    /// the backoff. Retries stop at `attempts`, for non-idempotent methods unless allowed,
    /// once the client has seen a byte, when the breaker is open, and at the deadline.
    pub fn may_retry(&mut self, session: &Session, up: &Upstream, failure: Failure) -> bool {
        let Some(policy) = &up.retry else {
            return false;
        };
        if !policy.retries(failure)
            || self.tries > policy.cfg.attempts
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
        let wait = policy.backoff(self.tries, fastrand::f64());
        if Instant::now() + wait >= self.deadline || !policy.try_spend() {
            return false;
        }
        self.backoff = wait;
        true
    }

    /// What is left of the deadline for the next try (at least a millisecond).
    pub fn time_left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}

/// A failure as a span attribute: `connect`, `timeout` or the status.
fn failure_text(f: Failure) -> String {
    match f {
        Failure::Connect => "connect".into(),
        Failure::Timeout => "timeout".into(),
        Failure::Status(s) => s.to_string(),
    }
}

/// A client that stalled its body: counted, and not the upstream's fault.
pub fn client_body_timeout() {
    METRICS.client_timeouts.with_label_values(&["body"]).inc();
}

fn breaker_open(upstream: &str, retry_after: Duration) -> GatewayError {
    let secs = ceil_secs(retry_after);
    GatewayError::new(503, "circuit breaker open")
        .with_data(serde_json::json!({ "upstream": upstream, "retry_after": secs }))
        .with_retry_after(secs)
}
