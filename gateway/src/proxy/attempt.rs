//! The upstream tries of one request: the breaker's admission, which targets were tried,
//! the deadline every try and backoff ends by, and the report of each try's outcome to
//! the breaker and to passive tracking (exactly once a try).
//!
//! A try opens in `upstream_peer` ([`Attempts::begin`]) and ends in whichever hook learns
//! its outcome first: a retryable status in `upstream_response_filter`, a connect failure
//! in `fail_to_connect`, an error in `error_while_proxy`, or the end of the request in
//! `logging`. A try the client broke (it went away, or sent too much) closes without a
//! verdict ([`Attempts::abandon`]).

use crate::metrics::METRICS;
use crate::upstream::{TryEnd, Upstream};
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

    /// A try to `target` starts now.
    pub fn begin(&mut self, target: Option<SocketAddr>) {
        self.target = target;
        if let Some(t) = target {
            self.tried.push(t);
        }
        self.tries += 1;
        self.started = Instant::now();
        self.open = true;
        self.upstream_status = None;
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
    }

    /// Close the current try without a verdict: the client broke it, not the upstream.
    pub fn abandon(&mut self) {
        self.open = false;
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
